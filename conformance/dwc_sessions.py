#!/usr/bin/env python3
"""Python dicomweb-client 0.61 through requests Sessions, as third-party tools use it
(run by conformance/run.sh; tests/clients/dwc_qido.py and dwc_wado.py cover the `headers=`
form in `cargo test`).

For each session, in its own hospital:
  dwc_bearer  requests.Session with a default `Authorization: Bearer <key>` header
  dwc_basic   session_utils.create_session_from_user_pass(hospital id, key) (HTTP Basic)
it stores the pydicom corpus plus a generated set (one request over the 1 MB chunk
size, so chunked), searches with filters, includefield, fuzzy PN matching and
get_remaining paging, and, for the WADO-RS features the server routes, retrieves study
and series metadata, instances and frames and compares them with what was sent.
"""
import argparse
import io
import json
import os

import numpy as np
import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from common import Cloudpacs, check_holdings, corpus, fail, log, main_wrapper, sha256

CT = "1.2.840.10008.5.1.4.1.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"


def generated_set(tag):
    """3 studies x 2 series x 2 instances, 4-frame 16-bit native pixels, accented names."""
    out = []
    names = ["Müller^Jürgen", "Doe^Jane", "O'Neil^Seán"]
    for s, name in enumerate(names):
        study = generate_uid(entropy_srcs=[tag, "study", str(s)])
        for r in range(2):
            series = generate_uid(entropy_srcs=[tag, "series", str(s), str(r)])
            for i in range(2):
                ds = Dataset()
                ds.file_meta = FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.file_meta.MediaStorageSOPClassUID = CT
                ds.SOPClassUID = CT
                ds.SOPInstanceUID = generate_uid(entropy_srcs=[tag, "sop", str(s), str(r), str(i)])
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
                ds.PatientName, ds.PatientID = name, f"CONF-{s}"
                ds.StudyDate, ds.StudyTime = f"2024010{s + 1}", "101500"
                ds.AccessionNumber, ds.StudyID = f"ACC{s}", str(s)
                ds.StudyDescription = f"conformance study {s}"
                ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", r + 1, i + 1
                ds.SeriesDescription = f"series {r}"
                ds.Rows = ds.Columns = 16
                ds.NumberOfFrames = 4
                ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
                ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
                rng = np.random.default_rng([s, r, i])
                ds.PixelData = rng.integers(0, 4096, size=(4, 16, 16), dtype=np.uint16).tobytes()
                out.append(ds)
    return out


def part10(ds):
    """A new dataset as a Part-10 file (preamble, DICM, file meta)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def wire_bytes(ds):
    """Exactly what store_instances sends for a dataset (dicomweb-client 0.61: dcmwrite(b, ds))."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds)
    return buf.getvalue()


def run_session(name, client, cp, corpus_dir, files, wado):
    # the corpus files as read from disk, and the generated set as Part-10 files
    blobs = [open(os.path.join(corpus_dir, e["file"]), "rb").read() for e in files]
    gen = [part10(ds) for ds in generated_set(name)]
    datasets = [pydicom.dcmread(io.BytesIO(b)) for b in blobs + gen]
    # dicomweb-client re-encodes each dataset with pydicom: those bytes must arrive
    wire = {ds.SOPInstanceUID: sha256(wire_bytes(ds)) for ds in datasets}
    expected = {}
    for ds in datasets:
        expected.setdefault(ds.StudyInstanceUID, {})[ds.SOPInstanceUID] = (ds.SeriesInstanceUID, wire[ds.SOPInstanceUID])
    sizes = {ds.SOPInstanceUID: len(wire_bytes(ds)) for ds in datasets}
    stored = 0
    big = []
    for ds in datasets:
        big.append(ds)
        # batches over the client's 1 MB chunk size are sent with Transfer-Encoding: chunked
        if sum(sizes[d.SOPInstanceUID] for d in big) > 1_200_000 or ds is datasets[-1]:
            resp = client.store_instances(big)
            failed = resp.get(0x00081198)
            if failed is not None and len(failed.value):
                fail(f"{name}: store_instances: FailedSOPSequence {failed}")
            stored += len(resp.ReferencedSOPSequence)
            big = []
    if stored != len(datasets):
        fail(f"{name}: store_instances acknowledged {stored} of {len(datasets)}")
    log(f"  {name}: store_instances: {stored} instances acknowledged")

    check_holdings(cp, expected, "instance" in wado, f"{name} (direct check)")

    # QIDO through the client
    studies = client.search_for_studies(limit=5, get_remaining=True, fields=["StudyDescription", "00201208"])
    if {s["0020000D"]["Value"][0] for s in studies} != set(expected) or len(studies) != len(expected):
        fail(f"{name}: search_for_studies(get_remaining=True): {len(studies)} studies, expected {len(expected)}")
    jurgen = client.search_for_studies(search_filters={"PatientName": "jur mul"}, fuzzymatching=True)
    gen_names = [str(pydicom.dcmread(io.BytesIO(b)).PatientName) for b in gen]
    want = {pydicom.dcmread(io.BytesIO(b)).StudyInstanceUID for b, n in zip(gen, gen_names) if n.startswith("Müller")}
    if {s["0020000D"]["Value"][0] for s in jurgen} != want:
        fail(f"{name}: fuzzy PatientName 'jur mul': {jurgen}")
    conf = client.search_for_studies(search_filters={"PatientID": "CONF-*", "StudyDate": "20240101-20240102"},
                                     fields=["StudyDescription"])
    if len(conf) != 2 or not all(s["00081030"]["Value"][0].startswith("conformance study") for s in conf):
        fail(f"{name}: PatientID wildcard + StudyDate range with includefield: {conf}")
    st0 = sorted(want)[0]
    series = client.search_for_series(study_instance_uid=st0, fields=["SeriesDescription"])
    if sorted(s["0008103E"]["Value"][0] for s in series) != ["series 0", "series 1"]:
        fail(f"{name}: search_for_series({st0}): {series}")
    insts = client.search_for_instances(study_instance_uid=st0, get_remaining=True, limit=1,
                                        fields=["NumberOfFrames"])
    if len(insts) != 4 or {i["00280008"]["Value"][0] for i in insts} != {4}:
        fail(f"{name}: search_for_instances(get_remaining, includefield NumberOfFrames): {insts}")
    log(f"  {name}: search_for_studies/series/instances (paging, filters, fuzzy PN, includefield): ok")

    by_sop = {e["sop_instance_uid"]: e for e in files}
    if "metadata" in wado:
        meta = client.retrieve_study_metadata(st0)
        if {m["00080018"]["Value"][0] for m in meta} != set(expected[st0]):
            fail(f"{name}: retrieve_study_metadata({st0}): {len(meta)} instances")
        se0 = next(iter(expected[st0].values()))[0]
        meta = client.retrieve_series_metadata(st0, se0)
        if {m["00080018"]["Value"][0] for m in meta} != {s for s, (se, _) in expected[st0].items() if se == se0}:
            fail(f"{name}: retrieve_series_metadata: {len(meta)} instances")
        log(f"  {name}: retrieve_study_metadata / retrieve_series_metadata: ok")
    if "instance" in wado:
        n = 0
        for ds in datasets[:10] + datasets[-3:]:
            got = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            if got.SOPInstanceUID != ds.SOPInstanceUID or getattr(got, "PixelData", None) != getattr(ds, "PixelData", None):
                fail(f"{name}: retrieve_instance {ds.SOPInstanceUID} differs from what was stored")
            n += 1
        log(f"  {name}: retrieve_instance: {n} instances identical")
    if "frames" in wado:
        n = 0
        for ds in datasets:
            e = by_sop.get(ds.SOPInstanceUID)
            if e is None or not e["frames"]:
                continue
            k = len(e["frames"])
            numbers = sorted({1, k})
            if e["transfer_syntax"] == DEFLATED:
                # documented: frames of a deflated data set need transcoding -> 406
                try:
                    client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                    ds.SOPInstanceUID, frame_numbers=[1])
                    fail(f"{name}: frames of deflated {e['source']} were served")
                except requests.HTTPError as err:
                    if err.response.status_code != 406:
                        fail(f"{name}: frames of deflated {e['source']}: {err}")
                continue
            frames = client.retrieve_instance_frames(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                                     frame_numbers=numbers,
                                                     media_types=(("application/octet-stream", "*"),)
                                                     if not e["encapsulated"] else None)
            got = [sha256(f) for f in frames]
            want_f = [e["frames"][i - 1]["sha256"] for i in numbers]
            if got != want_f:
                fail(f"{name}: retrieve_instance_frames {e['source']} frames {numbers}: bytes differ")
            n += 1
        log(f"  {name}: retrieve_instance_frames: {n} instances, first/last frame identical")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cloudpacs", required=True)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--wado", required=True, help="instance,metadata,frames or none")
    a = ap.parse_args()
    wado = set(a.wado.split(","))
    cases = json.load(open(a.cases))
    files = corpus(a.corpus)
    url = f"{a.cloudpacs}/dicom-web"

    c = cases["dwc_bearer"]
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {c['key']}"})
    run_session("dwc_bearer", DICOMwebClient(url=url, session=session),
                Cloudpacs(a.cloudpacs, c["hospital"], c["key"]), a.corpus, files, wado)

    c = cases["dwc_basic"]
    session = create_session_from_user_pass(c["hospital"], c["key"])
    run_session("dwc_basic", DICOMwebClient(url=url, session=session),
                Cloudpacs(a.cloudpacs, c["hospital"], c["key"]), a.corpus, files, wado)

    # a wrong password on a Basic session is refused with the client's HTTPError
    bad = DICOMwebClient(url=url, session=create_session_from_user_pass(c["hospital"], c["key"] + "x"))
    try:
        bad.search_for_studies()
        fail("a Basic session with a wrong key was answered")
    except requests.HTTPError as e:
        if e.response.status_code != 401:
            fail(f"wrong key: {e}")
    log("  dwc_basic: a wrong key is refused with 401")


if __name__ == "__main__":
    main_wrapper(main)
