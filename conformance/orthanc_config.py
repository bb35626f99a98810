#!/usr/bin/env python3
"""Write the configuration of the suite's throw-away Orthanc (1.10 + DICOMweb 1.7) to stdout.

Usage: orthanc_config.py CASES_JSON CLOUDPACS_ORIGIN NAME HTTP_PORT WORKDIR

One DicomWeb "Servers" entry per Orthanc case of CASES_JSON (written by run.sh:
{case: {hospital, key}}), each pointing at cloudpacs with that hospital's writer key:
  basic_*   Username = hospital id, Password = key (HTTP Basic)
  bearer_*  HttpHeaders Authorization: Bearer <key>
  *_plain   ChunkedTransfers false (Content-Length bodies); the others chunked
  lua_autoforward  Bearer, chunked, through the explicit /tenants/{id}/dicom-web/ root,
            used by the Lua OnStableStudy script written next to the config.
"""
import json
import os
import sys

# Jobs the Lua script submits carry this priority, so the suite can tell them
# from the jobs of its own synchronous /stow calls.
LUA_PRIORITY = 17


def main(cases_path, origin, name, port, work):
    cases = json.load(open(cases_path))
    servers = {}
    for case in ("basic_chunked", "bearer_chunked", "basic_plain", "bearer_plain"):
        c = cases[case]
        entry = {
            "Url": f"{origin}/dicom-web/",
            "ChunkedTransfers": case.endswith("_chunked"),
            "HasDelete": False,
            "HasWadoRsUniversalTransferSyntax": True,
            "Timeout": 60,
        }
        if case.startswith("basic_"):
            entry["Username"] = c["hospital"]
            entry["Password"] = c["key"]
        else:
            entry["HttpHeaders"] = {"Authorization": f"Bearer {c['key']}"}
        servers[case] = entry
    lua = cases["lua_autoforward"]
    servers["lua_autoforward"] = {
        "Url": f"{origin}/tenants/{lua['hospital']}/dicom-web/",
        "HttpHeaders": {"Authorization": f"Bearer {lua['key']}"},
        "ChunkedTransfers": True,
        "HasWadoRsUniversalTransferSyntax": True,
        "Timeout": 60,
    }
    script = os.path.join(work, "autoforward.lua")
    with open(script, "w") as f:
        f.write(f"""-- Forward every stable study to cloudpacs with STOW-RS (asynchronous job).
function OnStableStudy(studyId, tags, metadata)
  -- JSON by hand: Lua 5.3 DumpJson writes 17 as 17.0, which the plugin refuses
  local answer = RestApiPost('/dicom-web/servers/lua_autoforward/stow',
      '{{"Resources": ["' .. studyId .. '"], "Synchronous": false, "Priority": {LUA_PRIORITY}}}')
  print('conformance: auto-forward of study ' .. studyId .. ': ' .. answer)
end
""")
    config = {
        "Name": name,
        "StorageDirectory": os.path.join(work, "db"),
        "IndexDirectory": os.path.join(work, "db"),
        "HttpPort": int(port),
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpTimeout": 60,
        # synchronous /stow calls fail (connection closed) when their job has to wait
        # for a free worker behind the Lua jobs: enough workers for all of them
        "ConcurrentJobs": 64,
        # keep every finished job visible under /jobs (default: the last 10)
        "JobsHistorySize": 1000,
        "StableAge": 2,
        "LuaScripts": [script],
        "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Servers": servers},
    }
    json.dump(config, sys.stdout, indent=2)


if __name__ == "__main__":
    main(*sys.argv[1:])
