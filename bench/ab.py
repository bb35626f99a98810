#!/usr/bin/env python3
"""A/B of two cloudpacs binaries on the STOW loads of the benchmark, alternating.

This machine's speed drifts between runs (bench/ANALYSIS.md, "slow and fast
state"), so two binaries are compared in alternating pairs, each run on a fresh
server (SQLite, embedded default) with the same client as bench/run.py:

    python3 bench/ab.py --a target/ab/old --b target/release/cloudpacs --pairs 4
    python3 bench/ab.py ... --load small      # the 1k-study scale set, 100/request

Each run starts after the page cache is warmed as in bench/run.py (--warm); a run
whose CPU per instance is twice the others' still met cold pages: compare runs of
the same state.

Prints one line per run (instances/s, server CPU ms per instance, request p50)
and the means. Uses the dataset of bench/run.sh (/tmp/cloudpacs-bench/data,
generated when missing). Not part of the CI test run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import client  # noqa: E402
import run  # noqa: E402


def jobs_for(load, manifest):
    if load == "clinical":
        return run.clinical_stow_jobs(manifest["clinical"]["studies"])
    return [("file", b["path"]) for b in manifest["scale"]["bodies"] if b["to"] <= 1000]


def one(binary, work, load, jobs, data, warm_mib):
    server = run.Cloudpacs(work, binary).start()
    try:
        run.settle()
        r = client.stow(server.info(), jobs, data, 4, load,
                        before=lambda: client.warm_page_cache(os.path.dirname(work), warm_mib))
    finally:
        server.stop()
    if r["instances_failed"]:
        raise RuntimeError("%d instances failed: %s" % (r["instances_failed"], r["statuses"]))
    cpu = r["host"].get("server_cpu_s") or 0.0
    return {"inst_s": r["instances_per_s"], "cpu_ms": 1000 * cpu / r["instances_ok"],
            "p50_ms": r["request_ms"]["p50"], "p95_ms": r["request_ms"]["p95"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="binary A")
    ap.add_argument("--b", required=True, help="binary B")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--load", choices=["clinical", "small"], default="clinical")
    ap.add_argument("--data", default="/tmp/cloudpacs-bench/data")
    ap.add_argument("--work", default="/tmp/cloudpacs-bench/ab")
    ap.add_argument("--warm", type=int, default=1200, metavar="MIB",
                    help="write and delete MIB MiB right before each run (client.warm_page_cache; 0: no)")
    a = ap.parse_args(argv)
    if not os.path.exists(os.path.join(a.data, "manifest.json")):
        import subprocess
        subprocess.run([sys.executable, os.path.join(HERE, "dicomgen.py"), a.data,
                        "--scale-studies", "1000"], check=True)
    with open(os.path.join(a.data, "manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    jobs = jobs_for(a.load, manifest)
    runs = {"A": [], "B": []}
    for k in range(a.pairs):
        order = ("A", "B") if k % 2 == 0 else ("B", "A")
        for name in order:
            binary = a.a if name == "A" else a.b
            # a fresh folder per run, named apart from the last one: removing the
            # old data right before a run slows its inode allocation (run.settle)
            r = one(binary, os.path.join(a.work, "%s%d" % (name, k)), a.load, jobs, a.data, a.warm)
            runs[name].append(r)
            print("[%s] pair %d %s: %7.0f inst/s  %.2f ms CPU/inst  p50 %.1f ms  p95 %.1f ms" % (
                time.strftime("%H:%M:%S"), k, name, r["inst_s"], r["cpu_ms"], r["p50_ms"], r["p95_ms"]),
                flush=True)
    for name in ("A", "B"):
        rs = runs[name]
        print("%s mean: %7.0f inst/s  %.2f ms CPU/inst  p50 %.1f ms" % (
            name, statistics.mean(r["inst_s"] for r in rs), statistics.mean(r["cpu_ms"] for r in rs),
            statistics.mean(r["p50_ms"] for r in rs)))


if __name__ == "__main__":
    main()
