#!/usr/bin/env python3
"""Python dicomweb-client 0.61 against a running cloudpacs: store_instances,
then search_for_studies/series/instances with filters, fields and
get_remaining=True paging. Exits non-zero with the client's own error.

Usage: dwc_qido.py BASE_URL CORPUS_DIR API_KEY  (sent as Bearer and, in a second client, as Basic)
"""
import json
import os
import sys

import pydicom
from dicomweb_client.api import DICOMwebClient

base, corpus, key = sys.argv[1], sys.argv[2], sys.argv[3]
manifest = json.load(open(os.path.join(corpus, "manifest.json")))
# every readable, non-colliding file with UIDs: the same set the server stores
picked = [e for e in manifest if e["dicom"] and not e["collides"] and e["study_uid"] and e["series_uid"]
          and e["sop_instance_uid"] and e["source"] not in ("SC_rgb_jpeg.dcm",) and e["frames"] is not None]
client = DICOMwebClient(url=base, headers={"Authorization": f"Bearer {key}"})
datasets = [pydicom.dcmread(os.path.join(corpus, e["file"])) for e in picked]
stored = 0
for i in range(0, len(datasets), 10):
    resp = client.store_instances(datasets[i:i + 10])
    failed = resp.get(0x00081198)
    assert failed is None or len(failed.value) == 0, f"failures: {failed}"
    stored += len(resp.ReferencedSOPSequence)
assert stored == len(datasets), (stored, len(datasets))

studies = {e["study_uid"] for e in picked}
found = client.search_for_studies(limit=7, get_remaining=True)
got = {s["0020000D"]["Value"][0] for s in found}
assert got == studies, f"get_remaining paging: {len(got)} of {len(studies)}"
assert len(found) == len(studies), "no duplicates across pages"

one = picked[0]
hits = client.search_for_studies(search_filters={"StudyInstanceUID": one["study_uid"]},
                                 fields=["StudyDescription", "00080060"])
assert len(hits) == 1 and hits[0]["0020000D"]["Value"][0] == one["study_uid"], hits

series = client.search_for_series(study_instance_uid=one["study_uid"])
want = {e["series_uid"] for e in picked if e["study_uid"] == one["study_uid"]}
assert {s["0020000E"]["Value"][0] for s in series} == want, series

instances = client.search_for_instances(study_instance_uid=one["study_uid"], series_instance_uid=one["series_uid"],
                                        get_remaining=True, limit=2)
want = {e["sop_instance_uid"] for e in picked if e["series_uid"] == one["series_uid"]}
assert {i["00080018"]["Value"][0] for i in instances} == want, instances

all_instances = client.search_for_instances(get_remaining=True, limit=50)
assert len(all_instances) == len(picked), (len(all_instances), len(picked))

ct = client.search_for_series(search_filters={"Modality": "CT"}, get_remaining=True)
want = {e["series_uid"] for e, d in zip(picked, datasets) if getattr(d, "Modality", None) == "CT"}
assert {s["0020000E"]["Value"][0] for s in ct} == want, (len(ct), len(want))

# HTTP Basic (user = hospital id, password = key), as Orthanc's Username/Password sends it
import requests
session = requests.Session()
session.auth = ("default", key)
basic = DICOMwebClient(url=base, session=session)
assert len(basic.search_for_studies(limit=3)) == 3
unauthenticated = DICOMwebClient(url=base)
try:
    unauthenticated.search_for_studies()
    raise SystemExit("a request without credentials was answered")
except requests.HTTPError as e:
    assert e.response.status_code == 401, e

print(f"dicomweb-client: stored {stored}, {len(studies)} studies found with get_remaining paging, "
      f"series/instance searches match")
