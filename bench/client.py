"""The benchmark client: one implementation for every server (Python stdlib only).

Latency = wall clock from sending the request to having the whole body
(time.perf_counter), on keep-alive connections (http.client). Percentiles are
linearly interpolated. MB = 10^6 bytes.
"""
from __future__ import annotations

import concurrent.futures
import http.client
import itertools
import json
import multiprocessing as mp
import os
import random
import re
import subprocess
import threading
import time
import urllib.parse

import dicomgen

# --------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------


def pct(values, p):
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summary_ms(seconds):
    ms = [s * 1000.0 for s in seconds]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "min": min(ms), "p50": pct(ms, 50), "p95": pct(ms, 95),
            "p99": pct(ms, 99), "max": max(ms), "mean": sum(ms) / len(ms)}


# --------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------
class Http:
    """One keep-alive connection to base_url (http://host:port/prefix)."""

    def __init__(self, base_url: str, headers: dict | None = None, timeout: float = 600):
        u = urllib.parse.urlsplit(base_url)
        self.host, self.port = u.hostname, u.port
        self.prefix = u.path.rstrip("/")
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.conn = None

    def _connect(self):
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self.conn.connect()
        import socket
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None

    def request(self, method, path, body=None, headers=None, sink=False, absolute=False):
        """-> (status, response headers, body bytes or byte count, seconds, ttfb seconds).
        sink=True reads the body in 1 MB chunks and returns only its length."""
        h = dict(self.headers)
        h.update(headers or {})
        url = path if absolute else self.prefix + path
        for attempt in (0, 1):
            if self.conn is None:
                self._connect()
            t0 = time.perf_counter()
            try:
                self.conn.request(method, url, body=body, headers=h)
                resp = self.conn.getresponse()
                ttfb = time.perf_counter() - t0
                if sink:
                    n = 0
                    while True:
                        chunk = resp.read(1 << 20)
                        if not chunk:
                            break
                        n += len(chunk)
                    data = n
                else:
                    data = resp.read()
                dt = time.perf_counter() - t0
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # a keep-alive connection the server closed while idle: retry once
                self.close()
                if attempt or not isinstance(body, (bytes, type(None))):
                    raise
                continue
            if resp.will_close:
                self.close()
            return resp.status, resp.headers, data, dt, ttfb
        raise RuntimeError("unreachable")


def multipart_parts(content_type: str, body: bytes):
    """Payloads of a multipart/related body."""
    m = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not m:
        return [body]
    b = b"--" + m.group(1).encode()
    out = []
    for chunk in body.split(b)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, payload = chunk.partition(b"\r\n\r\n")
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        out.append(payload)
    return out


# --------------------------------------------------------------------------------------
# server-side sampling: RSS and CPU from /proc
# --------------------------------------------------------------------------------------
def _status_kb(pid, key):
    try:
        with open("/proc/%d/status" % pid) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_s(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def host_cpu():
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    idle = f[3] + f[4]
    return sum(f) / os.sysconf("SC_CLK_TCK"), (sum(f) - idle) / os.sysconf("SC_CLK_TCK")


def self_cpu_s():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Sampler:
    """Samples a server's RSS every 50 ms during a phase; records CPU used by the server,
    this client and everything else on the host."""

    def __init__(self, pid, reset_peak=False):
        self.pid = pid
        self.peak_kb = 0
        self._stop = threading.Event()
        if reset_peak and pid:
            try:  # resets VmHWM (Linux >= 4.0)
                with open("/proc/%d/clear_refs" % pid, "w") as fh:
                    fh.write("5")
            except OSError:
                pass

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.cpu0 = proc_cpu_s(self.pid) if self.pid else None
        self.self0 = self_cpu_s()
        self.host0 = host_cpu()
        self.load0 = open("/proc/loadavg").read().split()[0]
        self.rss0 = _status_kb(self.pid, "VmRSS") if self.pid else None
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()
        return self

    def _run(self):
        while not self._stop.wait(0.05):
            r = _status_kb(self.pid, "VmRSS") if self.pid else None
            if r and r > self.peak_kb:
                self.peak_kb = r

    def __exit__(self, *exc):
        self._stop.set()
        self.th.join()
        wall = time.perf_counter() - self.t0
        h1 = host_cpu()
        busy = h1[1] - self.host0[1]
        server = (proc_cpu_s(self.pid) - self.cpu0) if self.pid else 0.0
        client = self_cpu_s() - self.self0
        self.result = {
            "wall_s": wall,
            "server_cpu_s": server,
            "server_cores": server / wall if wall else None,
            "client_cores": client / wall if wall else None,
            "other_cores": max(0.0, busy - server - client) / wall if wall else None,
            "host_busy_cores": busy / wall if wall else None,
            "loadavg_1m_start": float(self.load0),
            "rss_start_mib": (self.rss0 or 0) / 1024,
            "rss_peak_sampled_mib": self.peak_kb / 1024,
            "vm_hwm_mib": (_status_kb(self.pid, "VmHWM") or 0) / 1024 if self.pid else None,
        }
        return False


# --------------------------------------------------------------------------------------
# STOW
# --------------------------------------------------------------------------------------
STOW_CT = 'multipart/related; type="application/dicom"; boundary=%s' % dicomgen.BOUNDARY


# Request bodies of the running stow(), built before its clock starts and
# inherited by the forked workers: the client's CPU competes with the server's
# on the same cores, so it does nothing during the timed part but send.
_BODIES = []


def _body(job, data_dir):
    """A job's multipart body: ("file", path) is a prebuilt body, ("parts", [paths])
    the instances to join, ("built", i) the body stow() built from such a job."""
    if job[0] == "built":
        return _BODIES[job[1]]
    if job[0] == "file":
        with open(os.path.join(data_dir, job[1]), "rb") as fh:
            return fh.read()
    parts = []
    for p in job[1]:
        with open(os.path.join(data_dir, p), "rb") as fh:
            parts.append(fh.read())
    return dicomgen.multipart(parts)


def _stow_worker(args):
    base, headers, jobs, data_dir = args
    h = Http(base, headers)
    out = []
    for job in jobs:
        # a prebuilt body file is read here (the scale set does not fit in memory)
        body = _body(job, data_dir)
        st, hd, data, dt, _ = h.request("POST", "/studies", body=body, headers={
            "Content-Type": STOW_CT, "Accept": "application/dicom+json"})
        ok = failed = 0
        try:
            doc = json.loads(data)
            ok = len(doc.get("00081199", {}).get("Value", []))
            failed = len(doc.get("00081198", {}).get("Value", []))
        except ValueError:
            pass
        out.append((st, dt, len(body), ok, failed))
    h.close()
    return out


def stow(server, jobs, data_dir, concurrency=4, label="", before=None):
    """Send jobs (see _body) from `concurrency` processes, round-robin. Bodies joined
    from instance files are built before the clock starts; then `before()`, if given."""
    global _BODIES
    _BODIES = [_body(j, data_dir) if j[0] == "parts" else None for j in jobs]
    if before:
        before()
    jobs = [("built", i) if j[0] == "parts" else j for i, j in enumerate(jobs)]
    chunks = [jobs[i::concurrency] for i in range(concurrency)]
    try:
        with Sampler(server.get("pid")) as s:
            t0 = time.perf_counter()
            with mp.get_context("fork").Pool(concurrency) as pool:
                res = pool.map(_stow_worker, [(server["base"], server["headers"], c, data_dir)
                                             for c in chunks])
            wall = time.perf_counter() - t0
    finally:
        _BODIES = []
    flat = [r for chunk in res for r in chunk]
    n_ok = sum(r[3] for r in flat)
    nbytes = sum(r[2] for r in flat)
    statuses = {}
    for r in flat:
        statuses[str(r[0])] = statuses.get(str(r[0]), 0) + 1
    return {"label": label, "requests": len(flat), "instances_ok": n_ok,
            "instances_failed": sum(r[4] for r in flat), "bytes": nbytes, "wall_s": wall,
            "instances_per_s": n_ok / wall if wall else None, "mb_per_s": nbytes / 1e6 / wall,
            "statuses": statuses, "request_ms": summary_ms([r[1] for r in flat]),
            "host": s.result}


def stow_stream(server, parts_iter, total_bytes, label=""):
    """One STOW request whose body is generated while it is sent (the 2 GB test)."""
    head = b"--%s\r\nContent-Type: application/dicom\r\n\r\n" % dicomgen.BOUNDARY.encode()

    def body():
        for p in parts_iter:
            yield head
            yield p
            yield b"\r\n"
        yield b"--%s--\r\n" % dicomgen.BOUNDARY.encode()

    h = Http(server["base"], server["headers"], timeout=3600)
    with Sampler(server.get("pid"), reset_peak=True) as s:
        st, _, data, dt, _ = h.request("POST", "/studies", body=body(), headers={
            "Content-Type": STOW_CT, "Accept": "application/dicom+json",
            "Content-Length": str(total_bytes)})
    h.close()
    try:
        doc = json.loads(data)
        ok = len(doc.get("00081199", {}).get("Value", []))
    except ValueError:
        ok = None
    return {"label": label, "status": st, "bytes": total_bytes, "seconds": dt,
            "mb_per_s": total_bytes / 1e6 / dt, "instances_ok": ok, "host": s.result}


# --------------------------------------------------------------------------------------
# QIDO
# --------------------------------------------------------------------------------------
def qido_mix(studies, counted, rnd: random.Random):
    """Query generators: name -> () -> (path, expected count). Parameters are drawn from
    `studies` (the loaded scale studies, dicts from dicomgen.scale_study); expected counts
    are computed over `counted` (every study on the server)."""
    n_loaded = len(counted)
    by_pid, by_month, by_mod, by_name = {}, {}, {}, {}
    for st in counted:
        by_pid.setdefault(st["patient_id"], []).append(st)
        by_month[st["study_date"][:6]] = by_month.get(st["study_date"][:6], 0) + 1
        by_mod[st["modality"]] = by_mod.get(st["modality"], 0) + 1
        last = st["patient_name"].split("^")[0]
        by_name[last[:3]] = by_name.get(last[:3], 0) + 1
    pids = sorted({st["patient_id"] for st in studies})
    all_pids = sorted(by_pid)

    def q(path, expected):
        return path, expected

    def exact_patientid():
        p = rnd.choice(pids)
        return q("/studies?PatientID=%s" % p, len(by_pid[p]))

    def exact_accession():
        st = rnd.choice(studies)
        return q("/studies?AccessionNumber=%s" % st["accession"], 1)

    def exact_studyuid():
        st = rnd.choice(studies)
        return q("/studies?StudyInstanceUID=%s" % st["study_uid"], 1)

    def prefix_patientid():
        p = rnd.choice(pids)[:-1]  # PAT001234* : up to 10 patients
        n = sum(len(by_pid[x]) for x in all_pids if x.startswith(p))
        return q("/studies?PatientID=%s*&limit=25" % p, min(25, n))

    def prefix_patientname():
        pre = rnd.choice(studies)["patient_name"][:3]
        if not pre.isascii():
            pre = "DOE"
        n = by_name.get(pre, 0)
        return q("/studies?PatientName=%s*&limit=25" % pre, min(25, n))

    def date_range_month():
        m = rnd.choice(studies)["study_date"][:6]
        return q("/studies?StudyDate=%s01-%s31&limit=50" % (m, m), min(50, by_month[m]))

    def modality_limit():
        m = rnd.choice(studies)["modality"]
        return q("/studies?ModalitiesInStudy=%s&limit=25" % m, min(25, by_mod[m]))

    def paging_offset():
        off = rnd.randrange(0, max(1, n_loaded - 25))
        return q("/studies?limit=25&offset=%d" % off, min(25, n_loaded - off))

    def series_of_study():
        st = rnd.choice(studies)
        return q("/studies/%s/series" % st["study_uid"], len(st["series"]))

    def instances_of_series():
        st = rnd.choice(studies)
        se = rnd.choice(st["series"])
        return q("/studies/%s/series/%s/instances" % (st["study_uid"], se["series_uid"]),
                 len(se["instances"]))

    return {f.__name__: f for f in (exact_patientid, exact_accession, exact_studyuid,
                                     prefix_patientid, prefix_patientname, date_range_month,
                                     modality_limit, paging_offset, series_of_study,
                                     instances_of_series)}


def qido(server, studies, counted, reps=60, warmup=3, seed=1, max_s=240):
    """Interleaved by type; the same request sequence for every server (seeded). Stops
    early (after at least 20 rounds) when a round-robin pass takes past max_s."""
    rnd = random.Random(seed)
    mix = qido_mix(studies, counted, rnd)
    n_loaded = len(counted)
    h = Http(server["base"], server["headers"])
    times = {k: [] for k in mix}
    counts = {k: [] for k in mix}
    sizes = {k: [] for k in mix}
    mismatches = {k: 0 for k in mix}
    examples = {}
    errors = {}
    t_start = time.perf_counter()
    with Sampler(server.get("pid")) as s:
        for i in range(warmup + reps):
            if i >= warmup + 20 and time.perf_counter() - t_start > max_s:
                break
            for name, gen in mix.items():
                path, expected = gen()
                st, hd, data, dt, _ = h.request("GET", path, headers={"Accept": "application/dicom+json"})
                if i < warmup:
                    continue
                examples.setdefault(name, path)
                if st not in (200, 204):
                    errors[name] = errors.get(name, 0) + 1
                    continue
                n = len(json.loads(data)) if st == 200 and data else 0
                times[name].append(dt)
                counts[name].append(n)
                sizes[name].append(len(data))
                ok = n == expected
                if not ok:
                    mismatches[name] += 1
    h.close()
    out = {"studies_loaded": n_loaded, "reps": reps, "host": s.result, "types": {}}
    allt = []
    for k in mix:
        allt += times[k]
        out["types"][k] = dict(summary_ms(times[k]),
                               mean_results=(sum(counts[k]) / len(counts[k])) if counts[k] else None,
                               mean_bytes=(sum(sizes[k]) / len(sizes[k])) if sizes[k] else None,
                               mismatches=mismatches[k], errors=errors.get(k, 0),
                               example=examples.get(k))
    out["all"] = summary_ms(allt)
    out["server_cpu_ms_per_query"] = 1000 * s.result["server_cpu_s"] / max(1, len(allt))
    return out


# --------------------------------------------------------------------------------------
# WADO
# --------------------------------------------------------------------------------------
def timed_loop(fn, reps, max_s, min_reps=5):
    out = []
    t0 = time.perf_counter()
    for i in range(reps):
        out.append(fn(i))
        if i + 1 >= min_reps and time.perf_counter() - t0 > max_s:
            break
    return out


def metadata(server, targets, reps=10, max_s=60):
    """targets: name -> path. First call separately (cold), then p50 of the rest."""
    h = Http(server["base"], server["headers"])
    out = {}
    with Sampler(server.get("pid")) as s:
        for name, path in targets.items():
            res = []

            def one(_i):
                st, hd, data, dt, ttfb = h.request("GET", path, headers={"Accept": "application/dicom+json"})
                items = len(json.loads(data)) if st == 200 else None
                res.append((st, len(data), items))
                return dt

            first = one(0)
            times = timed_loop(one, reps, max_s, min_reps=3)
            out[name] = dict(summary_ms(times), first_ms=first * 1000, status=res[-1][0],
                             bytes=res[-1][1], items=res[-1][2], path=path)
    h.close()
    out["host"] = s.result
    return out


RETRIEVE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def retrieve(server, targets, reps=5, max_s=60):
    h = Http(server["base"], server["headers"])
    out = {}
    with Sampler(server.get("pid")) as s:
        for name, (path, expected_bytes) in targets.items():
            res = []

            def one(_i):
                st, hd, n, dt, ttfb = h.request("GET", path, headers={"Accept": RETRIEVE_ACCEPT}, sink=True)
                res.append((st, n, dt, ttfb))
                return dt

            times = timed_loop(one, reps, max_s, min_reps=2)
            med = pct(times, 50)
            out[name] = dict(summary_ms(times), status=res[-1][0], bytes=res[-1][1],
                             expected_min_bytes=expected_bytes,
                             mb_per_s=res[-1][1] / 1e6 / med if med else None,
                             ttfb_ms=pct([r[3] for r in res], 50) * 1000, path=path)
    h.close()
    out["host"] = s.result
    return out


def retrieve_big(server, path, label=""):
    h = Http(server["base"], server["headers"], timeout=3600)
    with Sampler(server.get("pid"), reset_peak=True) as s:
        st, hd, n, dt, ttfb = h.request("GET", path, headers={"Accept": RETRIEVE_ACCEPT}, sink=True)
    h.close()
    return {"label": label, "status": st, "bytes": n, "seconds": dt, "mb_per_s": n / 1e6 / dt,
            "ttfb_ms": ttfb * 1000, "host": s.result}


FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def frames(server, mf, singles, mf_reps=200, sf_reps=300, max_s=60, conc=4, conc_s=10, seed=2):
    """mf = (instance path, n frames, frame bytes); singles = [(instance path, frame bytes)]."""
    rnd = random.Random(seed)
    h = Http(server["base"], server["headers"])
    out = {}
    bad = [0]

    def get(path, expected):
        st, hd, data, dt, _ = h.request("GET", path, headers={"Accept": FRAME_ACCEPT})
        parts = multipart_parts(hd.get("Content-Type"), data) if st == 200 else []
        if st != 200 or len(parts) != 1 or len(parts[0]) != expected:
            bad[0] += 1
        return dt

    with Sampler(server.get("pid")) as s:
        if mf:
            path, nframes, fbytes = mf
            cold = get("%s/frames/%d" % (path, nframes // 2), fbytes)
            bad[0] = 0
            times = timed_loop(lambda i: get("%s/frames/%d" % (path, rnd.randint(1, nframes)), fbytes),
                               mf_reps, max_s, min_reps=10)
            out["multiframe"] = dict(summary_ms(times), cold_ms=cold * 1000, bad=bad[0], frames=nframes)
        bad[0] = 0
        times = timed_loop(lambda i: get("%s/frames/1" % rnd.choice(singles)[0], singles[0][1]),
                           sf_reps, max_s, min_reps=10)
        out["single"] = dict(summary_ms(times), bad=bad[0])
    out["host"] = s.result
    h.close()

    # concurrent: `conc` threads fetching random single frames for conc_s seconds
    results = []
    lock = threading.Lock()

    def worker(k):
        r = random.Random(seed + k)
        hh = Http(server["base"], server["headers"])
        mine = []
        end = time.perf_counter() + conc_s
        while time.perf_counter() < end:
            p, fb = r.choice(singles)
            st, hd, data, dt, _ = hh.request("GET", "%s/frames/1" % p, headers={"Accept": FRAME_ACCEPT})
            mine.append((dt, len(data), st))
        hh.close()
        with lock:
            results.extend(mine)

    with Sampler(server.get("pid")) as s2:
        ths = [threading.Thread(target=worker, args=(k,)) for k in range(conc)]
        t0 = time.perf_counter()
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        wall = time.perf_counter() - t0
    out["concurrent"] = dict(summary_ms([r[0] for r in results]), threads=conc,
                             frames_per_s=len(results) / wall,
                             mb_per_s=sum(r[1] for r in results) / 1e6 / wall,
                             errors=sum(1 for r in results if r[2] != 200), host=s2.result)
    return out


def floor(server, path, reps=300):
    h = Http(server["base"], server["headers"])
    times = [h.request("GET", path, absolute=True)[3] for _ in range(reps)]
    h.close()
    return summary_ms(times)


_durable_runs = itertools.count()


def warm_page_cache(workdir, mib):
    """Write and delete `mib` MiB, so that the next writes of ~`mib` MiB into the page
    cache get pages the host already backs. This machine is a VM whose kernel hands
    every free 2 MiB block back to the host at once (virtio-balloon free page
    reporting, `page_reporting.min_free_ms=0`); the first write to such a page later
    faults on the host: page-cache writes ran at 175 MB/s into that memory and at
    6.3 GB/s into pages freed a second before, which are handed back after 2-3 s.
    A host whose memory is in use (a busy archive's page cache) recycles warm pages.
    Called right before each timed load, the same for every server
    (bench/ANALYSIS.md, "STOW")."""
    if mib <= 0:
        return
    path = os.path.join(workdir, "warm-%d.bin" % os.getpid())
    chunk = b"\1" * (4 << 20)
    with open(path, "wb") as fh:
        for _ in range(max(1, mib // 4)):
            fh.write(chunk)
    os.remove(path)


def durable_files(workdir, count, size, writers=4, per_folder=25, warm_mib=0):
    """What one durable file per instance costs on this file system, without any
    archive: `writers` threads (the STOW clients' concurrency) each write files of
    `size` bytes as a store must before acknowledging them: create, write, fsync,
    rename into place, and one fsync of each folder of `per_folder` files. What
    any archive that keeps each instance in its own durable file (Orthanc with
    SyncStorageArea, cloudpacs's folder store) has to pay, before parsing or
    indexing; from Python, so a low estimate of what the file system allows
    (the system calls release the GIL)."""
    root = os.path.join(workdir, "durable-files-%d-%d" % (os.getpid(), next(_durable_runs)))
    data = os.urandom(size)
    per_writer = count // writers

    def write_files(w):
        for b in range(0, per_writer, per_folder):
            folder = os.path.join(root, "w%d" % w, "f%d" % b)
            os.makedirs(folder)
            for i in range(min(per_folder, per_writer - b)):
                tmp, dest = os.path.join(folder, ".%d.tmp" % i), os.path.join(folder, "%d" % i)
                fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, dest)
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    warm_page_cache(workdir, warm_mib)
    t0, c0 = time.perf_counter(), os.times()
    with concurrent.futures.ThreadPoolExecutor(writers) as pool:
        list(pool.map(write_files, range(writers)))  # raises a writer's error
    wall, c1 = time.perf_counter() - t0, os.times()
    n = per_writer * writers
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return {"files": n, "bytes_per_file": size, "writers": writers, "wall_s": wall,
            "files_per_s": n / wall, "mb_per_s": n * size / 1e6 / wall,
            "cpu_ms_per_file": 1000 * cpu / n}


# --------------------------------------------------------------------------------------
# wrk: a compiled client for the frame latencies
# --------------------------------------------------------------------------------------
WRK_LUA = """
local paths = {}
for line in io.lines("%(list)s") do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i], {["Accept"] = '%(accept)s'%(auth)s})
end
"""


def wrk(server, paths, seconds=10, conns=1, workdir="/tmp"):
    """Latency distribution of GETs cycling through `paths` (server paths), from wrk."""
    lst = os.path.join(workdir, "wrk-%s.txt" % server["name"])
    with open(lst, "w") as fh:
        for p in paths:
            fh.write(server["prefix"] + p + "\n")
    auth = server["headers"].get("Authorization")
    lua = os.path.join(workdir, "wrk-%s.lua" % server["name"])
    with open(lua, "w") as fh:
        fh.write(WRK_LUA % {"list": lst, "accept": FRAME_ACCEPT,
                            "auth": (', ["Authorization"] = "%s"' % auth) if auth else ""})
    cmd = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--timeout", "30s", "--latency",
           "-s", lua, "http://%s:%d" % (server["host"], server["port"])]
    try:
        txt = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": str(e)}

    def ms(v, unit):
        return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]

    out = {"cmd": " ".join(cmd[:-3]) + " -s <script> URL"}
    for p in ("50", "90", "99"):
        m = re.search(r"^\s+%s(?:\.000)?%%\s+([\d.]+)(us|ms|s|m)\s*$" % p, txt, re.M)
        if m:
            out["p%s" % p] = ms(m.group(1), m.group(2))
    m = re.search(r"(\d+) requests in", txt)
    out["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", txt)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", txt)
    out["rps"] = float(m.group(1)) if m else None
    return out
