"""Helpers shared by the conformance scripts: the corpus, a multipart/related
reader that does not trust the server, and the checks of what cloudpacs holds."""
import hashlib
import json
import os
import re
import sys
import time

import requests


class Failure(Exception):
    """A conformance failure; its message is the client's own error text."""


def fail(msg):
    raise Failure(msg)


def log(msg):
    print(msg, flush=True)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def corpus(corpus_dir):
    """The files of the pydicom corpus every client stores (as tests/clients/dwc_qido.py):
    readable, non-colliding, with all UIDs and frames the generator could extract."""
    manifest = json.load(open(os.path.join(corpus_dir, "manifest.json")))
    return [
        e for e in manifest
        if e["dicom"] and not e["collides"] and e["study_uid"] and e["series_uid"]
        and e["sop_instance_uid"] and e["source"] not in ("SC_rgb_jpeg.dcm",) and e["frames"] is not None
    ]


def multipart_parts(resp):
    """(headers, body) of each part of a multipart/related response, strictly framed."""
    ctype = resp.headers.get("Content-Type", "")
    if not ctype.lower().startswith("multipart/related"):
        fail(f"{resp.request.method} {resp.url}: Content-Type {ctype!r} is not multipart/related")
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    if not m:
        fail(f"{resp.url}: no boundary in {ctype!r}")
    delim = b"--" + m.group(1).encode()
    body = resp.content
    if not body.startswith(delim):
        fail(f"{resp.url}: body does not start with the boundary (OHIF reads it from the first line)")
    parts = []
    for chunk in body.split(b"\r\n" + delim):
        if chunk.startswith(delim):
            chunk = chunk[len(delim):]
        if chunk.startswith(b"--"):
            break
        if not chunk.startswith(b"\r\n"):
            fail(f"{resp.url}: malformed delimiter line")
        head, sep, data = chunk[2:].partition(b"\r\n\r\n")
        if not sep:
            fail(f"{resp.url}: part without header/body separator")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        parts.append((headers, data))
    return parts


class Cloudpacs:
    """Direct DICOMweb calls to cloudpacs as one hospital, to check what arrived."""

    def __init__(self, origin, hospital, key, tenant_path=False):
        self.root = f"{origin}/tenants/{hospital}/dicom-web" if tenant_path else f"{origin}/dicom-web"
        self.s = requests.Session()
        self.s.headers["Authorization"] = f"Bearer {key}"

    def qido(self, path, **params):
        r = self.s.get(self.root + path, params=params, headers={"Accept": "application/dicom+json"})
        if r.status_code != 200:
            fail(f"QIDO {r.url}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()

    def retrieve_instance(self, st, se, sop):
        r = self.s.get(f"{self.root}/studies/{st}/series/{se}/instances/{sop}",
                       headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        if r.status_code != 200:
            fail(f"WADO-RS {r.url}: HTTP {r.status_code}: {r.text[:300]}")
        parts = multipart_parts(r)
        if len(parts) != 1:
            fail(f"WADO-RS {r.url}: {len(parts)} parts for one instance")
        return parts[0][1]


def check_holdings(cp, expected, wado, label):
    """cloudpacs (as one hospital) holds exactly `expected` {study: {sop: (series, sha256)}}:
    same studies, per-study instance counts and SOP Instance UIDs by QIDO, and, with WADO,
    the same bytes (SHA-256) by WADO-RS retrieve."""
    studies = cp.qido("/studies", limit="1000", includefield="00201208")
    got = {s["0020000D"]["Value"][0]: int(s["00201208"]["Value"][0]) for s in studies}
    want = {st: len(sops) for st, sops in expected.items()}
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        wrong = sorted(st for st in set(got) & set(want) if got[st] != want[st])
        fail(f"{label}: QIDO studies differ: missing {missing}, unexpected {extra}, "
             f"wrong counts {[(st, got[st], want[st]) for st in wrong]}")
    n = 0
    for st, sops in expected.items():
        inst = cp.qido(f"/studies/{st}/instances", limit="1000")
        got_sops = {i["00080018"]["Value"][0]: i["0020000E"]["Value"][0] for i in inst}
        want_sops = {sop: se for sop, (se, _) in sops.items()}
        if got_sops != want_sops:
            fail(f"{label}: study {st}: instances by QIDO {sorted(got_sops)} != {sorted(want_sops)}")
        if wado:
            for sop, (se, digest) in sops.items():
                data = cp.retrieve_instance(st, se, sop)
                if sha256(data) != digest:
                    fail(f"{label}: instance {sop}: retrieved bytes differ (sha256 {sha256(data)} != {digest})")
                n += 1
    total = sum(want.values())
    how = f", {n} retrieved byte-identical (SHA-256)" if wado else " (byte check skipped: no WADO-RS yet)"
    log(f"  {label}: {len(want)} studies, {total} instances by QIDO{how}")


def main_wrapper(main):
    t0 = time.time()
    try:
        main()
    except Failure as e:
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    log(f"  ({time.time() - t0:.1f}s)")
