// OHIF 3.13 (prebuilt @ohif/app dist) in headless Debian Chromium via playwright-core,
// against cloudpacs. Run by conformance/ohif.sh.
//
//   node ohif_probe.cjs OHIF_BASE OUT_DIR TOKEN STUDY_UID...
//
// For each study: open /viewer?StudyInstanceUIDs=<uid>&token=<TOKEN> (OHIF sends
// "Authorization: Bearer TOKEN" on every DICOMweb request), wait for the frames,
// take a screenshot. Fails (exit 1, with the reasons) unless, for every study, at
// least one frame request was made, every DICOMweb request answered 2xx/304, no
// request failed in the browser (CORS included) and the console shows no CORS error.
const { chromium } = require('playwright-core');
const fs = require('fs');

(async () => {
  const [base, outDir, token, ...studies] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
           '--disable-dev-shm-usage', '--enable-unsafe-swiftshader'],
  });
  const ohifOrigin = new URL(base).origin;
  const problems = [];
  const report = [];
  for (const uid of studies) {
    const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    const reqs = [], failed = [], consoleErrors = [];
    page.on('console', m => { if (m.type() === 'error') consoleErrors.push(m.text().slice(0, 300)); });
    page.on('requestfailed', r => {
      if (new URL(r.url()).origin !== ohifOrigin) failed.push(`${r.url()}: ${r.failure()?.errorText}`);
    });
    page.on('requestfinished', async r => {
      if (new URL(r.url()).origin === ohifOrigin || r.method() === 'OPTIONS') return;
      const resp = await r.response();
      reqs.push({ url: r.url(), status: resp?.status() });
    });
    const q = `StudyInstanceUIDs=${encodeURIComponent(uid)}&token=${encodeURIComponent(token)}`;
    await page.goto(`${base}/viewer?${q}`, { waitUntil: 'networkidle', timeout: 60000 }).catch(() => {});
    await page.waitForTimeout(5000);
    await page.screenshot({ path: `${outDir}/ohif-${uid}.png` });
    const frames = reqs.filter(r => r.url.includes('/frames/'));
    const bad = reqs.filter(r => !(r.status >= 200 && r.status < 300) && r.status !== 304);
    const cors = consoleErrors.filter(e => /CORS|Access-Control/i.test(e));
    if (frames.length === 0) problems.push(`${uid}: no frame request`);
    for (const r of bad) problems.push(`${uid}: HTTP ${r.status} ${r.url}`);
    for (const f of failed) problems.push(`${uid}: request failed: ${f}`);
    for (const c of cors) problems.push(`${uid}: console: ${c}`);
    report.push({ uid, requests: reqs.length, frames: frames.length, bad, failed, consoleErrors });
    console.log(`  OHIF ${uid}: ${reqs.length} DICOMweb requests, ${frames.length} frames, ` +
                `${bad.length} non-2xx, ${failed.length} failed`);
    await page.close();
  }
  fs.writeFileSync(`${outDir}/ohif-probe.json`, JSON.stringify(report, null, 1));
  await browser.close();
  if (problems.length) {
    console.error('FAILED:\n  ' + problems.join('\n  '));
    process.exit(1);
  }
})();
