#!/usr/bin/env python3
"""Side-by-side benchmark: cloudpacs (SQLite, PostgreSQL) and Orthanc 1.10 + DICOMweb 1.7.

Normally started through bench/run.sh (which builds the release binary first).
Starts every server on loopback, loads the same data through STOW into each, measures
with the same client (bench/client.py), stops what it started, and writes
results.json (+ RESULTS.md through bench/report.py).

Phases run server after server inside each phase (orthanc, cloudpacs, cloudpacs-pg),
so the servers are measured minutes apart under the same machine load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import client  # noqa: E402
import dicomgen  # noqa: E402

REPO = os.path.dirname(HERE)
ORTHANC_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def log(*a):
    print("[%s]" % time.strftime("%H:%M:%S"), *a, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_http(url, pid, seconds=60):
    end = time.time() + seconds
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if pid and not os.path.exists("/proc/%d" % pid):
            raise RuntimeError("server exited at start (%s)" % url)
        time.sleep(0.2)
    raise RuntimeError("server not up: %s" % url)


def du(paths):
    alloc = apparent = files = 0
    for p in paths:
        for root, _d, fs in os.walk(p):
            for f in fs:
                try:
                    st = os.lstat(os.path.join(root, f))
                except OSError:
                    continue
                alloc += st.st_blocks * 512
                apparent += st.st_size
                files += 1
    return {"allocated_bytes": alloc, "apparent_bytes": apparent, "files": files}


# --------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------
_last_wipe = [0.0]


def wipe(path):
    """Remove a server's data of an earlier run (the time is kept for settle())."""
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)
        _last_wipe[0] = time.time()


def settle():
    """ext4 without a journal (this machine's) allocates new inodes slowly while
    many were deleted in the last 60 s (or 360 s while their inode table is not
    written back): it skips each recently freed inode, reading its table block
    (`recently_deleted` in perf). A STOW right after the wipe read 789 inst/s
    instead of 1,823. So: write everything back, then wait out the minute."""
    os.sync()
    left = _last_wipe[0] + 65 - time.time()
    if left > 0:
        log("waiting %.0f s after the wipe (ext4 inode allocation)" % left)
        time.sleep(left)


class Orthanc:
    name = "orthanc"
    label = "Orthanc 1.10 + DICOMweb 1.7"

    def __init__(self, work):
        self.work = os.path.join(work, "orthanc")
        wipe(self.work)
        os.makedirs(os.path.join(self.work, "storage"))
        os.makedirs(os.path.join(self.work, "index"))
        self.port = free_port()
        # Orthanc's and the plugin's defaults, except ports/paths/name, Explorer and WebDAV
        # off, and no DICOM listener (not used). Same as shared/bench/BASELINE-ORTHANC.md.
        self.config = {
            "Name": "OrthancBench", "StorageDirectory": self.work + "/storage",
            "IndexDirectory": self.work + "/index", "StorageCompression": False,
            "MaximumStorageSize": 0, "MaximumPatientCount": 0, "MaximumStorageCacheSize": 128,
            "Plugins": [ORTHANC_PLUGIN], "ConcurrentJobs": 2, "HttpServerEnabled": True,
            "OrthancExplorerEnabled": False, "HttpPort": self.port, "HttpDescribeErrors": True,
            "HttpCompressionEnabled": True, "WebDavEnabled": False, "DicomServerEnabled": False,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "SslEnabled": False,
            "HttpThreadsCount": 50, "KeepAlive": True, "TcpNoDelay": True,
            "HttpRequestTimeout": 30, "StableAge": 60, "StoreMD5ForAttachments": True,
            "LimitFindResults": 0, "LimitFindInstances": 0, "StorageAccessOnFind": "Always",
            "CaseSensitivePN": False, "OverwriteInstances": False, "SyncStorageArea": True,
            "MallocArenaMax": 5, "SaveJobs": False,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True,
                         "WadoRoot": "/wado", "Ssl": False, "StudiesMetadata": "Full",
                         "SeriesMetadata": "Full"},
        }

    def start(self):
        cfg = os.path.join(self.work, "orthanc.json")
        with open(cfg, "w") as fh:
            json.dump(self.config, fh, indent=1)
        self.proc = subprocess.Popen(["Orthanc", "--logfile=" + self.work + "/orthanc.log", cfg],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http("http://127.0.0.1:%d/system" % self.port, self.proc.pid)
        self.version = json.loads(urllib.request.urlopen(
            "http://127.0.0.1:%d/system" % self.port).read()).get("Version")
        return self

    def info(self):
        return {"name": self.name, "label": self.label, "pid": self.proc.pid,
                "base": "http://127.0.0.1:%d/dicom-web" % self.port, "prefix": "/dicom-web",
                "host": "127.0.0.1", "port": self.port, "headers": {},
                "floor_path": "/system"}

    def disk(self):
        return {"storage": du([self.work + "/storage"]), "index": du([self.work + "/index"])}

    def stop(self):
        stop_proc(self.proc)


class Cloudpacs:
    def __init__(self, work, binary, pg_url=None):
        self.pg_url = pg_url
        self.name = "cloudpacs-pg" if pg_url else "cloudpacs"
        self.label = "cloudpacs (PostgreSQL)" if pg_url else "cloudpacs (SQLite, embedded default)"
        self.bin = binary
        self.dir = os.path.join(work, self.name)
        wipe(self.dir)
        os.makedirs(self.dir)
        self.port = free_port()

    def _db_args(self):
        a = ["--data-dir", self.dir]
        if self.pg_url:
            a += ["--database-url", self.pg_url]
        return a

    def start(self):
        self.log = open(os.path.join(self.dir, "server.log"), "ab")
        self.proc = subprocess.Popen([self.bin, "serve", "--listen", "127.0.0.1:%d" % self.port]
                                     + self._db_args(), stdout=self.log, stderr=self.log)
        wait_http("http://127.0.0.1:%d/readyz" % self.port, self.proc.pid)
        out = subprocess.run([self.bin, "key", "create", "--hospital", "default", "--role",
                              "writer", "--name", "bench", "--json"] + self._db_args(),
                             capture_output=True, text=True, check=True).stdout
        self.key = json.loads(out)["apiKey"]
        self.version = subprocess.run([self.bin, "--version"], capture_output=True,
                                      text=True).stdout.strip()
        return self

    def info(self):
        return {"name": self.name, "label": self.label, "pid": self.proc.pid,
                "base": "http://127.0.0.1:%d/dicom-web" % self.port, "prefix": "/dicom-web",
                "host": "127.0.0.1", "port": self.port,
                "headers": {"Authorization": "Bearer " + self.key}, "floor_path": "/healthz"}

    def disk(self):
        d = {"blobs": du([os.path.join(self.dir, "blobs")])}
        if self.pg_url:
            db = self.pg_url.rsplit("/", 1)[1]
            out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc",
                                  "select pg_database_size('%s')" % db],
                                 capture_output=True, text=True).stdout.strip()
            d["index"] = {"allocated_bytes": int(out or 0), "what": "pg_database_size"}
        else:
            d["index"] = {"allocated_bytes": sum(
                os.lstat(os.path.join(self.dir, f)).st_blocks * 512
                for f in os.listdir(self.dir) if f.startswith("index.sqlite"))}
        return d

    def stop(self):
        stop_proc(self.proc)
        self.log.close()


def clinical_stow_jobs(studies):
    """The clinical set's single-frame instances, 10 per STOW request, series by series."""
    jobs = []
    for st in studies:
        for se in st["series"]:
            paths = [x["path"] for x in se["instances"] if x["frames"] == 1]
            jobs += [("parts", paths[k:k + 10]) for k in range(0, len(paths), 10)]
    return jobs


def stop_proc(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def psql(sql, db="postgres"):
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-qc", sql],
                   check=True, capture_output=True)


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------
def machine():
    cpu = ""
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_mib": mem, "kernel": platform.release(),
            "python": platform.python_version()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", REPO + "/target"),
                                                  "release", "cloudpacs"))
    ap.add_argument("--data", default="/tmp/cloudpacs-bench/data", help="generated dataset (cached)")
    ap.add_argument("--work", default="/tmp/cloudpacs-bench/work", help="server data (wiped)")
    ap.add_argument("--out", default=os.path.join(REPO, "target", "bench", "results.json"))
    ap.add_argument("--servers", default="orthanc,cloudpacs,cloudpacs-pg")
    ap.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432",
                    help="PostgreSQL server (a database cloudpacs_bench_<pid> is created and dropped)")
    ap.add_argument("--steps", default=None, help="scale steps in studies (default 1000,10000,100000)")
    ap.add_argument("--orthanc-max", type=int, default=10000, help="largest scale step for Orthanc")
    ap.add_argument("--pg-max", type=int, default=None,
                    help="largest scale step for cloudpacs-pg (default: the largest step)")
    ap.add_argument("--big-slices", type=int, default=None, help="slices of the big study (4000 = 2.1 GB)")
    ap.add_argument("--big-servers", default="cloudpacs,cloudpacs-pg")
    ap.add_argument("--qido-reps", type=int, default=None)
    ap.add_argument("--phases", default="clinical,scale,big")
    ap.add_argument("--warm-mib", type=int, default=1200,
                    help="MiB written and deleted right before each timed load (client.warm_page_cache; 0: no)")
    a = ap.parse_args(argv)
    q = a.quick
    steps = [int(x) for x in (a.steps or ("500,2000" if q else "1000,10000,100000")).split(",")]
    big_slices = a.big_slices if a.big_slices is not None else (200 if q else 4000)
    qreps = a.qido_reps or (15 if q else 1000)
    pg_max = a.pg_max if a.pg_max is not None else max(steps)
    phases = a.phases.split(",")

    log("dataset: %s" % a.data)
    gen = [sys.executable, os.path.join(HERE, "dicomgen.py"), a.data, "--scale-studies", str(max(steps))]
    if q:
        gen.append("--quick")
    subprocess.run(gen, check=True)
    with open(os.path.join(a.data, "manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    cfg = manifest["config"]
    seed = cfg["seed"]

    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
               "argv": sys.argv[1:],
               "command": os.environ.get("BENCH_COMMAND", "bench/run.py " + " ".join(sys.argv[1:])), "quick": q, "dataset": cfg, "steps": steps,
               "orthanc_max": a.orthanc_max, "pg_max": pg_max,
               "big_slices": big_slices, "qido_reps": qreps, "warm_mib": a.warm_mib,
               "servers": {}, "phases": {}}
    os.makedirs(os.path.dirname(a.out), exist_ok=True)

    def save():
        with open(a.out + ".tmp", "w") as fh:
            json.dump(results, fh, indent=1, default=str)
        os.replace(a.out + ".tmp", a.out)

    os.makedirs(a.work, exist_ok=True)
    wanted = a.servers.split(",")
    servers = []
    pg_db = None
    try:
        if "orthanc" in wanted:
            servers.append(Orthanc(a.work).start())
        if "cloudpacs" in wanted:
            servers.append(Cloudpacs(a.work, a.bin).start())
        if "cloudpacs-pg" in wanted:
            pg_db = "cloudpacs_bench_%d" % os.getpid()
            psql("CREATE DATABASE %s" % pg_db)
            servers.append(Cloudpacs(a.work, a.bin, pg_url="%s/%s" % (a.pg, pg_db)).start())
        for s in servers:
            results["servers"][s.name] = {"label": s.label, "version": s.version,
                                          "pid": s.proc.pid}
            log("started %s (%s) pid %d port %d" % (s.name, s.version, s.proc.pid, s.port))
        info = {s.name: s.info() for s in servers}
        P = results["phases"]
        settle()

        def each(phase, fn, only=None):
            P.setdefault(phase, {})
            for s in servers:
                if only and s.name not in only:
                    continue
                log("%s: %s" % (phase, s.name))
                try:
                    P[phase][s.name] = fn(info[s.name])
                except Exception as e:  # keep going: one failed phase must not lose the run
                    log("  FAILED: %r" % e)
                    P[phase][s.name] = {"error": repr(e)}
                save()

        each("floor", lambda i: client.floor(i, i["floor_path"]))

        def durable_files(name, count, size):
            """The file system's own cost of a set's instances: the bound of any STOW."""
            log("durable files (%s): %d x %d bytes" % (name, count, size))
            P.setdefault("durable_files", {})[name] = max(
                (client.durable_files(a.work, count, size, writers=w, warm_mib=a.warm_mib)
                 for w in (4, 16)),
                key=lambda x: x["files_per_s"])
            save()

        def warm():
            client.warm_page_cache(a.work, a.warm_mib)

        clin = manifest["clinical"]["studies"]
        if "clinical" in phases:
            jobs, mf_job, mf_bytes = clinical_stow_jobs(clin), None, 0
            for st in clin:
                for se in st["series"]:
                    for x in se["instances"]:
                        if x["frames"] > 1:
                            mf_job, mf_bytes = ("parts", [x["path"]]), x["size"]
            sizes = [x["size"] for st in clin for se in st["series"] for x in se["instances"] if x["frames"] == 1]
            durable_files("clinical", len(sizes), sum(sizes) // max(1, len(sizes)))
            each("stow_clinical", lambda i: client.stow(i, jobs, a.data, 4, "clinical single-frame, 10/request",
                                                        before=warm))
            if mf_job:
                each("stow_multiframe", lambda i: client.stow(i, [mf_job], a.data, 1, "600-frame instance",
                                                              before=warm))
            big_ct = next(st for st in clin if st["kind"] == "ct-big-series")
            ct = [st for st in clin if st["kind"] == "ct"]
            mf = next((st for st in clin if st["kind"] == "multiframe"), None)

            def ipath(st, se, x):
                return "/studies/%s/series/%s/instances/%s" % (st["study_uid"], se["series_uid"], x["sop_uid"])

            se_big = big_ct["series"][0]
            md = {"study_%d" % len(se_big["instances"]): "/studies/%s/metadata" % big_ct["study_uid"],
                  "series_%d" % len(se_big["instances"]): "/studies/%s/series/%s/metadata" % (big_ct["study_uid"], se_big["series_uid"])}
            if mf:
                md["multiframe_study"] = "/studies/%s/metadata" % mf["study_uid"]
            each("metadata", lambda i: client.metadata(i, md, reps=5 if q else 15, max_s=60))
            se100 = ct[0]["series"][0]
            rt = {"series_%d" % len(se100["instances"]): ("/studies/%s/series/%s" % (ct[0]["study_uid"], se100["series_uid"]),
                                                          sum(x["size"] for x in se100["instances"])),
                  "series_%d" % len(se_big["instances"]): ("/studies/%s/series/%s" % (big_ct["study_uid"], se_big["series_uid"]),
                                                           sum(x["size"] for x in se_big["instances"]))}
            each("retrieve", lambda i: client.retrieve(i, rt, reps=3 if q else 5, max_s=60))
            singles = [(ipath(st, se, x), 512 * 512 * 2) for st in ct + [big_ct] for se in st["series"]
                       for x in se["instances"]]
            mfx = None
            if mf:
                se = mf["series"][0]
                x = se["instances"][0]
                mfx = (ipath(mf, se, x), x["frames"], x["rows"] * x["cols"] * 2)
            each("frames", lambda i: client.frames(i, mfx, singles, mf_reps=50 if q else 300,
                                                   sf_reps=50 if q else 300, max_s=20 if q else 60,
                                                   conc_s=5 if q else 10))
            import random as _r
            rr = _r.Random(3)
            if mfx:
                mf_paths = ["%s/frames/%d" % (mfx[0], rr.randint(1, mfx[1])) for _ in range(500)]
                each("wrk_multiframe", lambda i: client.wrk(i, mf_paths, seconds=5 if q else 10, workdir=a.work))
            sf_paths = ["%s/frames/1" % rr.choice(singles)[0] for _ in range(500)]
            each("wrk_single", lambda i: client.wrk(i, sf_paths, seconds=5 if q else 10, workdir=a.work))

        if "scale" in phases:
            log("scale: computing study attributes")
            scale_all = [dicomgen.scale_study(seed, k, cfg["scale_series"], cfg["scale_instances"])
                         for k in range(max(steps))]
            bodies = manifest["scale"]["bodies"]
            prev = 0
            n_clin = len(clin) if "clinical" in phases else 0
            first = [b for b in bodies if b["to"] <= steps[0]]
            n_inst = sum(b["instances"] for b in first)
            durable_files("scale", n_inst, sum(b["bytes"] for b in first) // max(1, n_inst))
            for n in steps:
                jobs = [("file", b["path"]) for b in bodies if prev <= b["from"] and b["to"] <= n]
                only = [s.name for s in servers
                        if not (s.name == "orthanc" and n > a.orthanc_max)
                        and not (s.name == "cloudpacs-pg" and n > pg_max)]
                label = "scale %d..%d (%d studies/request)" % (prev, n, cfg["scale_batch"])
                each("stow_scale_%d" % n, lambda i: client.stow(i, jobs, a.data, 4, label, before=warm), only)
                if pg_db and "cloudpacs-pg" in only:
                    # What autovacuum does some minutes after a bulk load (visibility map,
                    # statistics), done now so that the searches below do not run during it.
                    t0 = time.time()
                    psql("VACUUM ANALYZE", db=pg_db)
                    # and write the load's dirty pages now, not during the searches
                    psql("CHECKPOINT", db=pg_db)
                    P.setdefault("vacuum_%d" % n, {})["cloudpacs-pg"] = {"seconds": time.time() - t0}
                    log("vacuum analyze + checkpoint after %d studies: %.1f s" % (n, time.time() - t0))
                # Every server's load written back before any searches (a load's
                # writeback ran during the next server's searches otherwise).
                os.sync()
                loaded = scale_all[:n]
                counted = loaded + (clin if n_clin else [])
                each("qido_%d" % n, lambda i: qido_run(i, loaded, counted, qreps), only)
                prev = n

        if "big" in phases and big_slices:
            st = dicomgen.big_study(seed, big_slices)
            size = 0
            head = len(b"--%s\r\nContent-Type: application/dicom\r\n\r\n" % dicomgen.BOUNDARY.encode())
            for p in dicomgen.big_study_parts(seed, big_slices):
                size += head + len(p) + 2
            size += len(b"--%s--\r\n" % dicomgen.BOUNDARY.encode())
            only = a.big_servers.split(",")
            each("big_stow", lambda i: client.stow_stream(
                i, dicomgen.big_study_parts(seed, big_slices), size,
                "one STOW request, %d slices, %.2f GB" % (big_slices, size / 1e9)), only)
            each("big_retrieve", lambda i: client.retrieve_big(
                i, "/studies/%s" % st["study_uid"], "study retrieve, %d instances" % big_slices), only)

        for s in servers:
            results["servers"][s.name]["disk"] = s.disk()
            results["servers"][s.name]["vm_hwm_end_mib"] = (client._status_kb(s.proc.pid, "VmHWM") or 0) / 1024
            results["servers"][s.name]["rss_end_mib"] = (client._status_kb(s.proc.pid, "VmRSS") or 0) / 1024
        results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        save()
    finally:
        for s in servers:
            try:
                s.stop()
            except Exception as e:  # noqa: BLE001
                log("stop %s: %r" % (s.name, e))
        if pg_db:
            try:
                psql("DROP DATABASE IF EXISTS %s" % pg_db)
            except subprocess.CalledProcessError as e:
                log("could not drop %s: %s" % (pg_db, e))
    log("results: %s" % a.out)
    return 0


def qido_run(info, loaded, counted, reps):
    return client.qido(info, loaded, counted, reps=reps)


if __name__ == "__main__":
    sys.exit(main())
