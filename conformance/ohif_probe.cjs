// OHIF 3.13 (prebuilt @ohif/app dist) in headless Debian Chromium via playwright-core,
// against cloudpacs. Run by conformance/ohif.sh.
//
//   node ohif_probe.cjs PLAN_JSON
//
// PLAN_JSON: {oidcBase, tokenBase, dicomwebRoot, outDir, token, studies: [{uid, modality}]}
//
// 1. oidcBase serves OHIF configured with an OpenID Connect provider: open the study
//    list "/", which logs in through the provider (authorization code + PKCE), and
//    require every stored study in the list; then open each study in the viewer
//    in the same tab (the session is kept) and wait for its frames.
// 2. tokenBase serves OHIF without OIDC: open the first study through
//    /viewer?StudyInstanceUIDs=<uid>&token=<reader API key>.
// Every page: every DICOMweb request must carry "Authorization: Bearer" and answer
// 2xx/304, nothing may fail in the browser (CORS included), the console shows no
// CORS error, and each study makes at least one frame request. Screenshots and
// ohif-probe.json go to outDir. Exit 1 with the reasons otherwise.
const { chromium } = require('playwright-core');
const fs = require('fs');

const plan = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const problems = [];
const report = [];

// Record what one visit does: DICOMweb requests, failures, console errors.
function watch(page) {
  const seen = { reqs: [], failed: [], consoleErrors: [] };
  page.on('console', m => { if (m.type() === 'error') seen.consoleErrors.push(m.text().slice(0, 300)); });
  page.on('requestfailed', r => {
    if (r.url().startsWith(plan.dicomwebRoot)) seen.failed.push(`${r.url()}: ${r.failure()?.errorText}`);
  });
  page.on('requestfinished', async r => {
    if (!r.url().startsWith(plan.dicomwebRoot) || r.method() === 'OPTIONS') return;
    const resp = await r.response();
    const auth = (await r.allHeaders())['authorization'] || '';
    seen.reqs.push({ url: r.url(), status: resp?.status(), bearer: auth.startsWith('Bearer ') });
  });
  return seen;
}

// Judge a visit; `frames`: whether frame requests are required.
function judge(name, seen, frames) {
  const bad = seen.reqs.filter(r => !(r.status >= 200 && r.status < 300) && r.status !== 304);
  const noAuth = seen.reqs.filter(r => !r.bearer);
  const frameReqs = seen.reqs.filter(r => r.url.includes('/frames/'));
  const cors = seen.consoleErrors.filter(e => /CORS|Access-Control/i.test(e));
  if (seen.reqs.length === 0) problems.push(`${name}: no DICOMweb request`);
  if (frames && frameReqs.length === 0) problems.push(`${name}: no frame request`);
  for (const r of bad) problems.push(`${name}: HTTP ${r.status} ${r.url}`);
  for (const r of noAuth) problems.push(`${name}: no Authorization: Bearer on ${r.url}`);
  for (const f of seen.failed) problems.push(`${name}: request failed: ${f}`);
  for (const c of cors) problems.push(`${name}: console: ${c}`);
  report.push({ name, requests: seen.reqs.length, frames: frameReqs.length, bad, noAuth: noAuth.length,
                failed: seen.failed, consoleErrors: seen.consoleErrors });
  console.log(`  OHIF ${name}: ${seen.reqs.length} DICOMweb requests, ${frameReqs.length} frames, ` +
              `${bad.length} non-2xx, ${noAuth.length} without Bearer, ${seen.failed.length} failed`);
}

async function visit(page, url) {
  await page.goto(url, { waitUntil: 'networkidle', timeout: 60000 }).catch(() => {});
  await page.waitForTimeout(4000);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
           '--disable-dev-shm-usage', '--enable-unsafe-swiftshader'],
  });
  const viewport = { viewport: { width: 1200, height: 800 } };

  // 1. OpenID Connect: the study list, then each study in the same tab.
  const page = await browser.newPage(viewport);
  let seen = watch(page);
  await visit(page, `${plan.oidcBase}/`);
  // after the login round trip, wait for the list's "1-N of N"
  await page.waitForFunction(() => /\b1-\d+ of \d+\b/.test(document.body.innerText), null,
                             { timeout: 60000 }).catch(() => {});
  await page.screenshot({ path: `${plan.outDir}/ohif-study-list.png` });
  const text = await page.locator('body').innerText();
  if (!new URL(page.url()).href.startsWith(plan.oidcBase)) {
    problems.push(`study list: ended on ${page.url()}, not on OHIF (login failed?)`);
  }
  // OHIF 3.13's list shows "1-N of N", one row per study: patient name, date, modalities
  const shown = /\b1-(\d+) of (\d+)\b/.exec(text);
  const distinct = new Set(plan.studies.map(s => s.uid)).size;
  if (!shown || Number(shown[2]) !== distinct) {
    problems.push(`study list: expected "1-${distinct} of ${distinct}", saw ${shown ? shown[0] : 'no count'}`);
  }
  for (const s of plan.studies) {
    if (!text.includes(s.modality)) problems.push(`study list: modality ${s.modality} (${s.uid}) not shown`);
  }
  judge('study list (OIDC)', seen, false);
  for (const s of plan.studies) {
    seen.reqs.length = 0; seen.failed.length = 0; seen.consoleErrors.length = 0;
    await visit(page, `${plan.oidcBase}/viewer?StudyInstanceUIDs=${encodeURIComponent(s.uid)}`);
    await page.screenshot({ path: `${plan.outDir}/ohif-${s.uid}.png` });
    judge(`viewer ${s.uid} (OIDC)`, seen, true);
  }
  await page.close();

  // 2. No identity provider: the viewer route with ?token=<API key>.
  const tokenPage = await browser.newPage(viewport);
  seen = watch(tokenPage);
  const first = plan.studies[0];
  const q = `StudyInstanceUIDs=${encodeURIComponent(first.uid)}&token=${encodeURIComponent(plan.token)}`;
  await visit(tokenPage, `${plan.tokenBase}/viewer?${q}`);
  await tokenPage.screenshot({ path: `${plan.outDir}/ohif-token-${first.uid}.png` });
  judge(`viewer ${first.uid} (?token=)`, seen, true);

  fs.writeFileSync(`${plan.outDir}/ohif-probe.json`, JSON.stringify(report, null, 1));
  await browser.close();
  if (problems.length) {
    console.error('FAILED:\n  ' + problems.join('\n  '));
    process.exit(1);
  }
})();
