#!/usr/bin/env python3
"""Orthanc 1.10 + DICOMweb 1.7 as a client of cloudpacs (run by conformance/run.sh).

1. Upload the multi-study corpus into Orthanc (REST POST /instances).
2. Push all of it with POST /dicom-web/servers/{name}/stow (Synchronous) through four
   "Servers" entries: HTTP Basic / Bearer header x chunked / Content-Length bodies.
3. The Lua OnStableStudy script forwards every study through a fifth entry (explicit
   /tenants/{id}/dicom-web/ root); wait for its jobs and require them all to succeed.
4. Each case has its own hospital: check it holds exactly Orthanc's studies and
   instances (QIDO) and, with WADO-RS, the same bytes (SHA-256).
5. Orthanc queries cloudpacs with its DICOMweb client (/servers/{name}/get and /qido),
   and, with WADO-RS, retrieves studies back into Orthanc (/servers/{name}/retrieve).
"""
import argparse
import json
import os
import time

import requests

from common import Cloudpacs, check_holdings, corpus, fail, log, main_wrapper, sha256

SYNC_CASES = ("basic_chunked", "bearer_chunked", "basic_plain", "bearer_plain")
LUA_PRIORITY = 17  # see orthanc_config.py


class Orthanc:
    def __init__(self, url):
        self.url = url
        self.s = requests.Session()

    def call(self, method, path, expect=(200,), **kw):
        r = self.s.request(method, self.url + path, timeout=300, **kw)
        if r.status_code not in expect:
            fail(f"Orthanc {method} {path}: HTTP {r.status_code}: {r.text[:500]}")
        return r

    def get(self, path):
        return self.call("GET", path).json()

    def post(self, path, body, expect=(200,)):
        return self.call("POST", path, expect=expect, data=json.dumps(body)).json()


def upload(orthanc, corpus_dir):
    """Upload the corpus; returns {study_uid: {sop: (series, sha256)}} as Orthanc holds it."""
    files = corpus(corpus_dir)
    rejected = []
    for e in files:
        data = open(os.path.join(corpus_dir, e["file"]), "rb").read()
        r = orthanc.s.post(orthanc.url + "/instances", data=data)
        if r.status_code != 200:
            rejected.append((e["source"], r.status_code, r.text[:120].replace("\n", " ")))
    if rejected:
        log(f"  Orthanc refused {len(rejected)} corpus files (not pushed): {rejected}")
    held = {}
    orthanc_ids = {}
    for sid in orthanc.get("/studies"):
        st = orthanc.get(f"/studies/{sid}")["MainDicomTags"]["StudyInstanceUID"]
        orthanc_ids[st] = sid
        held[st] = {}
        for inst in orthanc.get(f"/studies/{sid}/instances"):
            tags = orthanc.get(f"/instances/{inst['ID']}/simplified-tags")
            data = orthanc.call("GET", f"/instances/{inst['ID']}/file").content
            held[st][tags["SOPInstanceUID"]] = (tags["SeriesInstanceUID"], sha256(data))
    by_sop = {e["sop_instance_uid"]: e for e in files}
    for st, sops in held.items():
        for sop, (_, digest) in sops.items():
            if by_sop[sop]["sha256"] != digest:
                fail(f"Orthanc changed the bytes of {by_sop[sop]['source']} on upload")
    n = sum(len(s) for s in held.values())
    if len(held) < 10 or n < len(files) * 0.9:
        fail(f"only {n} of {len(files)} corpus instances ({len(held)} studies) made it into Orthanc")
    log(f"  uploaded into Orthanc: {len(held)} studies, {n} instances (bytes unchanged)")
    return held, orthanc_ids


def push_sync(orthanc, case, study_ids, n_instances):
    t = time.time()
    r = orthanc.s.post(f"{orthanc.url}/dicom-web/servers/{case}/stow",
                       data=json.dumps({"Resources": study_ids, "Synchronous": True}), timeout=300)
    if r.status_code != 200:
        fail(f"Orthanc /dicom-web/servers/{case}/stow: HTTP {r.status_code}: {r.text[:500]} "
             f"(the reason is in the Orthanc log)")
    answer = r.json()
    if int(answer.get("InstancesCount", -1)) != n_instances:
        fail(f"Orthanc /servers/{case}/stow sent {answer} instead of {n_instances} instances")
    log(f"  {case}: Orthanc STOW of {n_instances} instances in one request: ok ({time.time() - t:.1f}s)")


def wait_lua_jobs(orthanc, n_studies, timeout=180):
    """Wait until the Lua script submitted one job per study and all ended; fail on any failure."""
    deadline = time.time() + timeout
    while True:
        jobs = [j for j in orthanc.get("/jobs?expand")
                if j.get("Type") == "DicomWebStowClient" and j.get("Priority") == LUA_PRIORITY]
        failed = [j for j in jobs if j["State"] == "Failure"]
        if failed:
            j = failed[0]
            fail(f"Lua auto-forward job {j['ID']} failed: {j.get('ErrorDescription')}: "
                 f"{j['Content'].get('FunctionErrorDescription')} / {j['Content'].get('FunctionErrorDetails')}")
        done = [j for j in jobs if j["State"] == "Success"]
        if len(done) >= n_studies:
            log(f"  lua_autoforward: {len(done)} OnStableStudy jobs succeeded")
            return
        if time.time() > deadline:
            states = sorted((j["ID"], j["State"]) for j in jobs)
            fail(f"Lua auto-forward: {len(done)} of {n_studies} jobs succeeded after {timeout}s: {states}")
        time.sleep(0.5)


def orthanc_queries(orthanc, expected):
    """Orthanc's DICOMweb client queries cloudpacs: /get (raw GET) and /qido."""
    studies = set(expected)
    for case in ("bearer_chunked", "basic_plain"):
        answer = orthanc.post(f"/dicom-web/servers/{case}/get",
                              {"Uri": "/studies", "Arguments": {"limit": "1000"}})
        got = {s["0020000D"]["Value"][0] for s in answer}
        if got != studies:
            fail(f"Orthanc /servers/{case}/get /studies: {len(got)} studies, expected {len(studies)}")
        st = sorted(studies)[0]
        answer = orthanc.post(f"/dicom-web/servers/{case}/get",
                              {"Uri": f"/studies/{st}/series", "Arguments": {}})
        want = {se for se, _ in expected[st].values()}
        if {s["0020000E"]["Value"][0] for s in answer} != want:
            fail(f"Orthanc /servers/{case}/get /studies/{st}/series: {answer}")
        answer = orthanc.post(f"/dicom-web/servers/{case}/qido",
                              {"Uri": "/studies", "Arguments": {"StudyInstanceUID": st}})
        # /qido answers in Orthanc's own format: {tag: {Name, vr, Value (a string)}}
        if len(answer) != 1 or answer[0]["0020000D"].get("Value") != st:
            fail(f"Orthanc /servers/{case}/qido StudyInstanceUID={st}: {answer}")
        log(f"  {case}: Orthanc queried cloudpacs (/get studies and series, /qido): ok")


def orthanc_retrieves(orthanc, expected, orthanc_ids):
    """Delete two studies from Orthanc, pull them back from cloudpacs with WADO-RS, compare bytes."""
    for case, st in zip(("bearer_chunked", "basic_plain"), sorted(expected)[:2]):
        orthanc.call("DELETE", f"/studies/{orthanc_ids[st]}")
        answer = orthanc.post(f"/dicom-web/servers/{case}/retrieve",
                              {"Resources": [{"Study": st}], "Synchronous": True})
        got = {}
        lookup = orthanc.call("POST", "/tools/lookup", data=st).json()
        if not lookup:
            fail(f"Orthanc /servers/{case}/retrieve of study {st} stored nothing: {answer}")
        for inst in orthanc.get(f"/studies/{lookup[0]['ID']}/instances"):
            tags = orthanc.get(f"/instances/{inst['ID']}/simplified-tags")
            data = orthanc.call("GET", f"/instances/{inst['ID']}/file").content
            got[tags["SOPInstanceUID"]] = (tags["SeriesInstanceUID"], sha256(data))
        if got != expected[st]:
            fail(f"Orthanc /servers/{case}/retrieve of study {st}: got {got}, expected {expected[st]}")
        log(f"  {case}: Orthanc retrieved study {st} ({len(got)} instances) byte-identical")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--orthanc", required=True)
    ap.add_argument("--cloudpacs", required=True)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--wado", required=True, help="instance,metadata,frames or none")
    a = ap.parse_args()
    wado = "instance" in a.wado.split(",")
    cases = json.load(open(a.cases))
    orthanc = Orthanc(a.orthanc)

    expected, orthanc_ids = upload(orthanc, a.corpus)
    n = sum(len(s) for s in expected.values())
    study_ids = [orthanc_ids[st] for st in sorted(expected)]
    for case in SYNC_CASES:
        push_sync(orthanc, case, study_ids, n)
    wait_lua_jobs(orthanc, len(expected))
    for case in SYNC_CASES + ("lua_autoforward",):
        c = cases[case]
        check_holdings(Cloudpacs(a.cloudpacs, c["hospital"], c["key"], tenant_path=case.startswith("lua")),
                       expected, wado, case)
    orthanc_queries(orthanc, expected)
    if wado:
        orthanc_retrieves(orthanc, expected, orthanc_ids)
    else:
        log("  Orthanc /servers/{name}/retrieve: skipped (no WADO-RS retrieve yet)")


if __name__ == "__main__":
    main_wrapper(main)
