#!/usr/bin/env python3
"""Deterministic synthetic DICOM for the cloudpacs benchmark (Python stdlib only).

Every object is a pure function of (seed, kind, index): the same arguments give
byte-identical files and the same UIDs, and object i of a set never depends on
how many objects were asked for (so the first 1,000 studies of the 100,000-study
"scale" set are the 1,000-study scale set).

Sets
  clinical   written to DIR/clinical/ with manifest.json:
             - CT study A: one series of --ct-big-series slices (default 500),
               512x512 16-bit (the "500-instance series" of the metadata target)
             - --ct-studies CT studies of --ct-slices slices (default 5 x 100)
             - one Enhanced CT instance of --mf-frames frames (default 600) 512x512,
               with one per-frame functional group item per frame
             - MR (20 x 256^2), CR (2 x 1024^2), US (3 x 480x640 RGB)
  scale      written to DIR/scale/ as ready-to-send STOW bodies
             (multipart/related, --scale-batch studies per body): N studies x
             2 series x 2 instances of 64x64, modality mix CT:5 MR:3 CR:1 US:1.
             The attributes of study i come from scale_study(seed, i).
  big        never written: big_study_parts(seed, n) yields the Part-10 bytes of a
             one-study CT of n 512x512 slices (4,000 slices = 2.1 GB) for the
             streaming STOW/retrieve memory test.

Usage
  python3 bench/dicomgen.py DIR [--quick] [--scale-studies 100000] ...
  python3 bench/dicomgen.py --verify FILE.dcm   # parse with pydicom, if installed

Transfer syntax: Explicit VR Little Endian everywhere.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import struct
import sys
import time

EXPLICIT_LE = "1.2.840.10008.1.2.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
SOP_CLASS = {"CT": CT_IMAGE, "MR": MR_IMAGE, "CR": CR_IMAGE, "US": US_IMAGE}
IMPL_UID = "1.2.826.0.1.3680043.10.1555.1"  # an implementation class UID for this tool
BOUNDARY = "cloudpacs-bench-7d1e4f"
DEFAULT_SEED = 20261128

LAST = ["DOE", "SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA", "MILLER", "DAVIS",
        "RODRIGUEZ", "MARTINEZ", "HERNANDEZ", "LOPEZ", "GONZALEZ", "WILSON", "ANDERSON",
        "THOMAS", "TAYLOR", "MOORE", "JACKSON", "DOEBLER", "MARTIN", "LEE", "PEREZ",
        "THOMPSON", "WHITE", "HARRIS", "SANCHEZ", "CLARK", "LEWIS", "ROBINSON", "WALKER",
        "YOUNG", "ALLEN", "KING", "WRIGHT", "SCOTT", "TORRES", "NGUYEN", "HILL", "M\u00dcLLER",
        "DUBOIS", "ROSSI", "JANSSENS", "PEETERS"]
FIRST = ["JOHN", "JANE", "ANNA", "PETER", "MARIA", "JAMES", "LINDA", "ROBERT", "SARAH",
         "MICHAEL", "EMMA", "DAVID", "OLIVIA", "DANIEL", "SOPHIA", "PAUL", "LUCAS",
         "CHLO\u00c9", "HANS", "YUKI"]
DESCRIPTIONS = {
    "CT": ["CT CHEST W/O CONTRAST", "CT ABDOMEN PELVIS W CONTRAST", "CT HEAD W/O CONTRAST",
           "CT ANGIO CHEST", "CT SPINE LUMBAR"],
    "MR": ["MR BRAIN W/WO CONTRAST", "MR KNEE LEFT", "MR LUMBAR SPINE", "MR CARDIAC"],
    "CR": ["XR CHEST PA AND LATERAL", "XR HAND 3 VIEWS", "XR PELVIS AP"],
    "US": ["US ABDOMEN COMPLETE", "US THYROID", "US OB 2ND TRIMESTER"],
}
BODY = {"CT": "CHEST", "MR": "BRAIN", "CR": "CHEST", "US": "ABDOMEN"}
MANUFACTURERS = ["SIEMENS", "GE MEDICAL SYSTEMS", "Philips", "TOSHIBA", "FUJIFILM"]
INSTITUTIONS = ["General Hospital", "University Medical Center", "City Clinic"]
REFERRING = ["WELBY^MARCUS", "HOUSE^GREGORY", "GREY^MEREDITH", "KILDARE^JAMES"]
SCALE_MIX = [("CT", 5), ("MR", 3), ("CR", 1), ("US", 1)]

# --------------------------------------------------------------------------------------
# A minimal Explicit VR Little Endian encoder
# --------------------------------------------------------------------------------------
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
# (tag) -> VR for every attribute this generator writes
VR = {
    0x00020001: "OB", 0x00020002: "UI", 0x00020003: "UI", 0x00020010: "UI",
    0x00020012: "UI", 0x00020013: "SH",
    0x00080005: "CS", 0x00080008: "CS", 0x00080016: "UI", 0x00080018: "UI",
    0x00080020: "DA", 0x00080021: "DA", 0x00080023: "DA", 0x0008002A: "DT",
    0x00080030: "TM", 0x00080031: "TM", 0x00080033: "TM", 0x00080050: "SH",
    0x00080060: "CS", 0x00080070: "LO", 0x00080080: "LO", 0x00080090: "PN",
    0x00081030: "LO", 0x0008103E: "LO", 0x00089205: "CS",
    0x00100010: "PN", 0x00100020: "LO", 0x00100021: "LO", 0x00100030: "DA",
    0x00100040: "CS", 0x00101010: "AS",
    0x00180015: "CS", 0x00180020: "CS", 0x00180021: "CS", 0x00180050: "DS",
    0x00180060: "DS", 0x00180080: "DS", 0x00180081: "DS", 0x00180087: "DS",
    0x00181151: "IS", 0x00181210: "SH", 0x00181164: "DS", 0x00185101: "CS",
    0x0020000D: "UI", 0x0020000E: "UI", 0x00200010: "SH", 0x00200011: "IS",
    0x00200012: "IS", 0x00200013: "IS", 0x00200032: "DS", 0x00200037: "DS",
    0x00200052: "UI", 0x00201040: "LO", 0x00201041: "DS",
    0x00209056: "SH", 0x00209057: "UL", 0x00209111: "SQ", 0x00209113: "SQ",
    0x00209116: "SQ", 0x00209157: "UL", 0x00209164: "UI", 0x00209165: "AT",
    0x00209167: "AT", 0x00209221: "SQ", 0x00209222: "SQ", 0x00209311: "CS",
    0x00280002: "US", 0x00280004: "CS", 0x00280006: "US", 0x00280008: "IS",
    0x00280010: "US", 0x00280011: "US", 0x00280030: "DS", 0x00280100: "US",
    0x00280101: "US", 0x00280102: "US", 0x00280103: "US", 0x00281050: "DS",
    0x00281051: "DS", 0x00281052: "DS", 0x00281053: "DS", 0x00281054: "LO",
    0x00289110: "SQ", 0x00289132: "SQ", 0x00289145: "SQ", 0x00289108: "CS",
    0x52009229: "SQ", 0x52009230: "SQ", 0x7FE00010: "OW",
}
PAD_NUL = {"UI", "OB", "UN"}


def _value_bytes(vr: str, value) -> bytes:
    if vr == "SQ":
        out = bytearray()
        for item in value:
            body = encode_dataset(item)
            out += struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
        return bytes(out)
    if vr in ("US", "UL", "SS", "SL", "FL", "FD", "AT"):
        fmt = {"US": "H", "UL": "I", "SS": "h", "SL": "i", "FL": "f", "FD": "d"}.get(vr)
        vals = value if isinstance(value, (list, tuple)) else [value]
        if vr == "AT":
            return b"".join(struct.pack("<HH", v >> 16, v & 0xFFFF) for v in vals)
        return struct.pack("<%d%s" % (len(vals), fmt), *vals)
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
    else:
        if isinstance(value, (list, tuple)):
            value = "\\".join(str(v) for v in value)
        b = str(value).encode("latin-1")
    if len(b) % 2:
        b += b"\0" if vr in PAD_NUL else b" "
    return b


def encode_element(tag: int, value, vr: str | None = None) -> bytes:
    vr = vr or VR[tag]
    v = _value_bytes(vr, value)
    if vr in LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(v)) + v
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(v)) + v


def encode_dataset(elements: dict) -> bytes:
    return b"".join(encode_element(t, elements[t]) for t in sorted(elements))


def part10(elements: dict, pixel: bytes | None = None, pixel_vr: str = "OW") -> bytes:
    """A Part-10 file: preamble, file meta group, data set (PixelData appended last)."""
    meta_body = encode_dataset({
        0x00020001: b"\x00\x01",
        0x00020002: elements[0x00080016],
        0x00020003: elements[0x00080018],
        0x00020010: EXPLICIT_LE,
        0x00020012: IMPL_UID,
        0x00020013: "CPBENCH_GEN_1",
    })
    head = b"\0" * 128 + b"DICM" + encode_element(0x00020000, len(meta_body), "UL") + meta_body
    body = encode_dataset(elements)
    if pixel is None:
        return head + body
    return head + body + struct.pack("<HH2sHI", 0x7FE0, 0x0010, pixel_vr.encode(), 0,
                                     len(pixel)) + pixel


# --------------------------------------------------------------------------------------
# Deterministic attributes
# --------------------------------------------------------------------------------------
def uid(seed: int, *key) -> str:
    """2.25.<128-bit> from a hash of the key: stable across runs and Python versions."""
    h = hashlib.sha256(("%d/" % seed + "/".join(str(k) for k in key)).encode()).digest()
    return "2.25." + str(int.from_bytes(h[:16], "big") >> 1)


def rng(seed: int, *key) -> random.Random:
    return random.Random("%d/" % seed + "/".join(str(k) for k in key))


def _date(r: random.Random, y0=2015, y1=2024) -> str:
    return "%04d%02d%02d" % (r.randint(y0, y1), r.randint(1, 12), r.randint(1, 28))


def patient(seed: int, p: int) -> dict:
    r = rng(seed, "patient", p)
    return {"patient_id": "PAT%07d" % p,
            "patient_name": "%s^%s" % (r.choice(LAST), r.choice(FIRST)),
            "patient_birth_date": _date(r, 1930, 2014),
            "patient_sex": r.choice("MFO")}


def study_attrs(seed: int, kind: str, i: int, modality: str, p: int) -> dict:
    r = rng(seed, kind, "study", i)
    st = patient(seed, p)
    d = DESCRIPTIONS[modality]
    st.update({
        "study_uid": uid(seed, kind, "study", i),
        "study_date": _date(r), "study_time": "%02d%02d%02d" % (r.randint(7, 19), r.randint(0, 59), r.randint(0, 59)),
        "accession": "%s%08d" % ("A" if kind == "scale" else kind[:1].upper(), i),
        "study_id": str(i + 1), "study_description": r.choice(d), "modality": modality,
        "manufacturer": r.choice(MANUFACTURERS), "institution": r.choice(INSTITUTIONS),
        "referring": r.choice(REFERRING),
    })
    return st


def scale_modality(seed: int, i: int) -> str:
    r = rng(seed, "scale", "mod", i)
    x = r.randrange(sum(w for _, w in SCALE_MIX))
    for m, w in SCALE_MIX:
        if x < w:
            return m
        x -= w
    return "CT"


def scale_study(seed: int, i: int, series: int = 2, instances: int = 2) -> dict:
    """Study i of the scale set (attributes + UIDs), two studies per patient."""
    m = scale_modality(seed, i)
    st = study_attrs(seed, "scale", i, m, i // 2)
    st["series"] = [{"series_uid": uid(seed, "scale", "series", i, s), "modality": m,
                     "series_number": s + 1,
                     "instances": [uid(seed, "scale", "inst", i, s, k) for k in range(instances)]}
                    for s in range(series)]
    return st


def common(st: dict, se_uid: str, se_num: int, modality: str, sop_class: str, sop_uid: str,
           inst_num: int) -> dict:
    return {
        0x00080005: "ISO_IR 100", 0x00080008: ["ORIGINAL", "PRIMARY", "AXIAL"],
        0x00080016: sop_class, 0x00080018: sop_uid,
        0x00080020: st["study_date"], 0x00080021: st["study_date"], 0x00080023: st["study_date"],
        0x00080030: st["study_time"], 0x00080031: st["study_time"], 0x00080033: st["study_time"],
        0x00080050: st["accession"], 0x00080060: modality, 0x00080070: st["manufacturer"],
        0x00080080: st["institution"], 0x00080090: st["referring"],
        0x00081030: st["study_description"], 0x0008103E: "%s SERIES %d" % (modality, se_num),
        0x00100010: st["patient_name"], 0x00100020: st["patient_id"], 0x00100021: "BENCH",
        0x00100030: st["patient_birth_date"], 0x00100040: st["patient_sex"],
        0x00180015: BODY[modality],
        0x0020000D: st["study_uid"], 0x0020000E: se_uid, 0x00200010: st["study_id"],
        0x00200011: se_num, 0x00200013: inst_num,
    }


def gray(elements: dict, rows: int, cols: int, frames: int = 1) -> None:
    elements.update({0x00280002: 1, 0x00280004: "MONOCHROME2", 0x00280010: rows,
                     0x00280011: cols, 0x00280100: 16, 0x00280101: 12, 0x00280102: 11,
                     0x00280103: 0, 0x00281050: 40, 0x00281051: 400, 0x00281052: -1024,
                     0x00281053: 1})
    if frames > 1:
        elements[0x00280008] = frames


_MASK12 = bytes(b & 0x0F for b in range(256))


def gray_pixels(r: random.Random, n_pixels: int) -> bytes:
    """Deterministic 12-bit noise (stored in 16 bits)."""
    b = bytearray(r.randbytes(2 * n_pixels))
    b[1::2] = bytes(b[1::2]).translate(_MASK12)
    return bytes(b)


def image(seed: int, kind: str, st: dict, se_uid: str, se_num: int, modality: str, sop_uid: str,
          idx: int, rows: int, cols: int, pixels: bytes | None = None) -> bytes:
    e = common(st, se_uid, se_num, modality, SOP_CLASS[modality], sop_uid, idx + 1)
    r = rng(seed, kind, "px", sop_uid)
    if modality in ("CT", "MR"):
        z = round(-200.0 + idx * 1.25, 3)
        e.update({0x00180050: "1.25", 0x00200032: ["-179.2", "-179.2", str(z)],
                  0x00200037: ["1", "0", "0", "0", "1", "0"], 0x00201041: str(z),
                  0x00280030: ["0.7", "0.7"], 0x00200052: uid(seed, kind, "for", se_uid)})
        if modality == "CT":
            e.update({0x00180060: "120", 0x00181210: "STANDARD"})
        else:
            e.update({0x00180020: "SE", 0x00180021: "NONE", 0x00180080: "500", 0x00180081: "12",
                      0x00180087: "3"})
    if modality == "US":
        e.update({0x00280002: 3, 0x00280004: "RGB", 0x00280006: 0, 0x00280010: rows,
                  0x00280011: cols, 0x00280100: 8, 0x00280101: 8, 0x00280102: 7, 0x00280103: 0})
        return part10(e, pixels if pixels is not None else r.randbytes(rows * cols * 3), "OB")
    gray(e, rows, cols)
    return part10(e, pixels if pixels is not None else gray_pixels(r, rows * cols))


def enhanced_ct(seed: int, st: dict, se_uid: str, sop_uid: str, frames: int, rows: int,
                cols: int) -> bytes:
    e = common(st, se_uid, 1, "CT", ENHANCED_CT, sop_uid, 1)
    e[0x00080008] = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    dim_uid = uid(seed, "mf", "dim", sop_uid)
    e.update({
        0x0008002A: st["study_date"] + st["study_time"], 0x00089205: "MONOCHROME",
        0x00200052: uid(seed, "mf", "for", sop_uid), 0x00201040: "",
        0x00209221: [{0x00209164: dim_uid}],
        0x00209222: [{0x00209164: dim_uid, 0x00209165: 0x00209057, 0x00209167: 0x00209111}],
        0x00209311: "3D",
        0x52009229: [{
            0x00289110: [{0x00280030: ["0.7", "0.7"], 0x00180050: "1"}],
            0x00209116: [{0x00200037: ["1", "0", "0", "0", "1", "0"]}],
            0x00289145: [{0x00281052: -1024, 0x00281053: 1, 0x00281054: "HU"}],
            0x00289132: [{0x00281050: 40, 0x00281051: 400}],
        }],
        0x52009230: [{
            0x00209111: [{0x00209056: "1", 0x00209057: f + 1, 0x00209157: [f + 1]}],
            0x00209113: [{0x00200032: ["-179.2", "-179.2", "%.1f" % (-300.0 + f)]}],
        } for f in range(frames)],
    })
    gray(e, rows, cols, frames)  # window/rescale live in the functional groups here
    for k in (0x00281050, 0x00281051, 0x00281052, 0x00281053):
        e.pop(k, None)
    r = rng(seed, "mf", "px")
    frame = rows * cols
    base = gray_pixels(r, frame + 4096)
    pix = b"".join(base[2 * (f % 2048):2 * (f % 2048) + 2 * frame] for f in range(frames))
    return part10(e, pix)


# --------------------------------------------------------------------------------------
# Sets
# --------------------------------------------------------------------------------------
def clinical_plan(seed: int, big_series: int, ct_studies: int, ct_slices: int, mf_frames: int):
    """(study dict, [(series_uid, modality, [(sop_uid, rows, cols, bpp, frames)])]) per study."""
    plan = []
    p0 = 900000
    k = 0

    def add(modality, n, rows, cols, kind_desc, series_n=1):
        nonlocal k
        st = study_attrs(seed, "clinical", k, modality, p0 + k // 2)
        st["kind"] = kind_desc
        series = []
        for s in range(series_n):
            se = uid(seed, "clinical", "series", k, s)
            series.append({"series_uid": se, "modality": modality, "series_number": s + 1,
                           "instances": [{"sop_uid": uid(seed, "clinical", "inst", k, s, j),
                                          "rows": rows, "cols": cols,
                                          "bpp": 3 if modality == "US" else 2, "frames": 1}
                                         for j in range(n)]})
        st["series"] = series
        plan.append(st)
        k += 1

    if big_series:
        add("CT", big_series, 512, 512, "ct-big-series")
    for _ in range(ct_studies):
        add("CT", ct_slices, 512, 512, "ct")
    add("MR", 20, 256, 256, "mr")
    add("CR", 2, 1024, 1024, "cr")
    add("US", 3, 480, 640, "us")
    if mf_frames:
        add("CT", 1, 512, 512, "multiframe")
        plan[-1]["series"][0]["instances"][0]["frames"] = mf_frames
        plan[-1]["study_description"] = "CT ENHANCED MULTIFRAME VOLUME"
    return plan


def write_clinical(out: str, seed: int, big_series: int, ct_studies: int, ct_slices: int,
                   mf_frames: int) -> dict:
    plan = clinical_plan(seed, big_series, ct_studies, ct_slices, mf_frames)
    total = 0
    n = 0
    for si, st in enumerate(plan):
        for se in st["series"]:
            for j, inst in enumerate(se["instances"]):
                if inst["frames"] > 1:
                    data = enhanced_ct(seed, st, se["series_uid"], inst["sop_uid"], inst["frames"],
                                       inst["rows"], inst["cols"])
                else:
                    data = image(seed, "clinical", st, se["series_uid"], se["series_number"],
                                 se["modality"], inst["sop_uid"], j, inst["rows"], inst["cols"])
                rel = "clinical/s%02d/%04d.dcm" % (si, j)
                path = os.path.join(out, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as fh:
                    fh.write(data)
                inst["path"] = rel
                inst["size"] = len(data)
                total += len(data)
                n += 1
    return {"studies": plan, "n_instances": n, "bytes": total}


def multipart(parts) -> bytes:
    out = bytearray()
    for p in parts:
        out += b"--%s\r\nContent-Type: application/dicom\r\n\r\n" % BOUNDARY.encode()
        out += p
        out += b"\r\n"
    out += b"--%s--\r\n" % BOUNDARY.encode()
    return bytes(out)


def scale_instances(seed: int, i: int, series: int, instances: int):
    st = scale_study(seed, i, series, instances)
    for se in st["series"]:
        for j, sop in enumerate(se["instances"]):
            m = se["modality"]
            yield image(seed, "scale", st, se["series_uid"], se["series_number"], m, sop, j, 64, 64)


def write_scale(out: str, seed: int, studies: int, batch: int, series: int, instances: int) -> dict:
    d = os.path.join(out, "scale")
    os.makedirs(d, exist_ok=True)
    bodies = []
    total = 0
    t0 = time.time()
    for b0 in range(0, studies, batch):
        b1 = min(studies, b0 + batch)
        path = os.path.join(d, "b%07d-%07d.mpr" % (b0, b1))
        n = (b1 - b0) * series * instances
        if not os.path.exists(path):
            parts = [p for i in range(b0, b1) for p in scale_instances(seed, i, series, instances)]
            body = multipart(parts)
            with open(path + ".tmp", "wb") as fh:
                fh.write(body)
            os.replace(path + ".tmp", path)
        size = os.path.getsize(path)
        total += size
        bodies.append({"from": b0, "to": b1, "path": os.path.relpath(path, out), "instances": n,
                       "bytes": size})
        if b1 % 10000 == 0:
            print("  scale: %d/%d studies (%.0fs)" % (b1, studies, time.time() - t0), flush=True)
    return {"studies": studies, "batch": batch, "series": series, "instances": instances,
            "bodies": bodies, "bytes": total}


def big_study(seed: int, n: int) -> dict:
    st = study_attrs(seed, "big", 0, "CT", 990000)
    st["series"] = [{"series_uid": uid(seed, "big", "series", s), "modality": "CT",
                     "series_number": s + 1,
                     "instances": [uid(seed, "big", "inst", s, j) for j in range(1000)]}
                    for s in range((n + 999) // 1000)]
    st["series"][-1]["instances"] = st["series"][-1]["instances"][:n - 1000 * (len(st["series"]) - 1)]
    return st


def big_study_parts(seed: int, n: int):
    """The n Part-10 slices of the big study; pixels vary per slice but come from one
    buffer (generation must not slow the upload down)."""
    st = big_study(seed, n)
    base = gray_pixels(rng(seed, "big", "px"), 512 * 512 + 8192)
    for se in st["series"]:
        for j, sop in enumerate(se["instances"]):
            off = 2 * (j % 4096)
            yield image(seed, "big", st, se["series_uid"], se["series_number"], "CT", sop, j, 512,
                        512, pixels=base[off:off + 2 * 512 * 512])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    ap.add_argument("--ct-big-series", type=int, default=None)
    ap.add_argument("--ct-studies", type=int, default=None)
    ap.add_argument("--ct-slices", type=int, default=None)
    ap.add_argument("--mf-frames", type=int, default=None)
    ap.add_argument("--scale-studies", type=int, default=None)
    ap.add_argument("--scale-batch", type=int, default=25, help="studies per STOW body")
    ap.add_argument("--scale-series", type=int, default=2)
    ap.add_argument("--scale-instances", type=int, default=2)
    ap.add_argument("--verify", metavar="FILE", help="parse FILE with pydicom and print it")
    a = ap.parse_args(argv)
    if a.verify:
        import pydicom  # only for this check
        ds = pydicom.dcmread(a.verify)
        print(ds)
        return 0
    if not a.out_dir:
        ap.error("out_dir is required")
    q = a.quick
    cfg = {
        "seed": a.seed,
        "ct_big_series": a.ct_big_series if a.ct_big_series is not None else (50 if q else 500),
        "ct_studies": a.ct_studies if a.ct_studies is not None else (2 if q else 5),
        "ct_slices": a.ct_slices if a.ct_slices is not None else (20 if q else 100),
        "mf_frames": a.mf_frames if a.mf_frames is not None else (60 if q else 600),
        "scale_studies": a.scale_studies if a.scale_studies is not None else (2000 if q else 100000),
        "scale_batch": a.scale_batch, "scale_series": a.scale_series,
        "scale_instances": a.scale_instances,
    }
    out = os.path.abspath(a.out_dir)
    os.makedirs(out, exist_ok=True)
    mpath = os.path.join(out, "manifest.json")
    if os.path.exists(mpath):
        with open(mpath, encoding="utf-8") as fh:
            old = json.load(fh)
        if old.get("config") == cfg:
            print("dataset up to date: %s" % out)
            return 0
        print("dataset parameters changed: regenerating %s" % out, file=sys.stderr)
        for root, _dirs, files in os.walk(out):
            for f in files:
                if f.endswith((".dcm", ".mpr")):
                    os.unlink(os.path.join(root, f))
    t0 = time.time()
    clinical = write_clinical(out, a.seed, cfg["ct_big_series"], cfg["ct_studies"],
                              cfg["ct_slices"], cfg["mf_frames"])
    print("clinical: %d instances, %.0f MB (%.0fs)" % (clinical["n_instances"], clinical["bytes"] / 1e6,
                                                     time.time() - t0), flush=True)
    scale = write_scale(out, a.seed, cfg["scale_studies"], cfg["scale_batch"], cfg["scale_series"],
                        cfg["scale_instances"])
    print("scale: %d studies, %.0f MB (%.0fs)" % (cfg["scale_studies"], scale["bytes"] / 1e6,
                                                time.time() - t0), flush=True)
    manifest = {"generator": "bench/dicomgen.py", "config": cfg, "boundary": BOUNDARY,
                "clinical": clinical, "scale": scale}
    with open(mpath + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, ensure_ascii=False, indent=1)
    os.replace(mpath + ".tmp", mpath)
    return 0


if __name__ == "__main__":
    sys.exit(main())
