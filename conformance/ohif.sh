#!/usr/bin/env bash
# OHIF 3.13.2 (npm @ohif/app, its prebuilt dist/) in headless Chromium (Debian
# `chromium` + npm `playwright-core`) against a real cloudpacs. Not part of
# tests/run-all.sh yet (see conformance/CONFORMANCE.md §8).
#
#   conformance/ohif.sh          # env: CLOUDPACS_BIN as in run.sh
#
# Stores native, RLE, JPEG baseline multi-frame, JPEG-LS and JPEG 2000 samples,
# opens each study through the viewer route with ?token=<reader API key> (OHIF's
# way to send a Bearer header without an IdP), and requires every DICOMweb request
# to succeed, at least one frame per study, and no CORS error. Screenshots and the
# request report stay in target/conformance-ohif/.
# Installs (idempotent): apt chromium; npm pack @ohif/app@3.13.2 and playwright-core
# into target/ohif.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
HERE="$REPO/conformance"
start=$(date +%s)
step() { printf '\n== ohif: %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }
die() { echo "ohif: FAILED: $*" >&2; exit 1; }
OHIF_VERSION=3.13.2
PW_VERSION=1.65.1

step "installs"
eval "$(tests/setup-python.sh)"
PY=$CLOUDPACS_TEST_PYTHON
if ! command -v chromium >/dev/null; then
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >&2
fi
CACHE="$REPO/target/ohif"
mkdir -p "$CACHE"
if [ ! -f "$CACHE/package/dist/index.html" ] || ! grep -q "\"version\": \"$OHIF_VERSION\"" "$CACHE/package/package.json"; then
    (cd "$CACHE" && rm -rf package && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null \
        && tar xzf "ohif-app-$OHIF_VERSION.tgz" && rm "ohif-app-$OHIF_VERSION.tgz")
fi
if [ ! -f "$CACHE/node_modules/playwright-core/package.json" ] \
    || ! grep -q "\"version\": \"$PW_VERSION\"" "$CACHE/node_modules/playwright-core/package.json"; then
    npm install --silent --prefix "$CACHE" "playwright-core@$PW_VERSION" >&2
fi

if [ -z "${CLOUDPACS_BIN:-}" ]; then
    cargo build --quiet
    CLOUDPACS_BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/cloudpacs"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cloudpacs-ohif.XXXXXX")
OUT="$REPO/target/conformance-ohif"
rm -rf "$OUT"; mkdir -p "$OUT"
PIDS=()
cleanup() {
    rc=$?
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ "$rc" = 0 ] && rm -rf "$WORK" || echo "ohif: logs kept in $WORK" >&2
    printf 'ohif: %s in %ss (screenshots in %s)\n' "$([ "$rc" = 0 ] && echo passed || echo FAILED)" \
        "$(( $(date +%s) - start ))" "$OUT"
}
trap cleanup EXIT
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

step "start cloudpacs and OHIF"
CP_PORT=$(free_port)
OHIF_PORT=$(free_port)
"$CLOUDPACS_BIN" serve --data-dir "$WORK/data" --listen "127.0.0.1:$CP_PORT" \
    --cors-origins "http://127.0.0.1:$OHIF_PORT" > "$WORK/cloudpacs.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$CP_PORT/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$CP_PORT/readyz" >/dev/null || die "cloudpacs did not start (see $WORK/cloudpacs.log)"
key() {
    "$CLOUDPACS_BIN" key create --hospital default --role "$1" --name ohif --json --data-dir "$WORK/data" \
        | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])'
}
WRITER=$(key writer)
READER=$(key reader)
ROOT="http://127.0.0.1:$CP_PORT/dicom-web"
sed "s#http://127.0.0.1:18080/dicom-web#$ROOT#g" "$HERE/ohif-app-config.js" > "$WORK/app-config.js"
"$PY" "$HERE/serve_ohif.py" --dist "$CACHE/package/dist" --config "$WORK/app-config.js" --port "$OHIF_PORT" \
    > "$WORK/ohif-server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$OHIF_PORT/" >/dev/null && break; sleep 0.1; done

step "store samples"
STUDIES=$("$PY" - "$ROOT" "$CLOUDPACS_TEST_DATA" "$WRITER" <<'EOF'
import sys
import pydicom
from dicomweb_client.api import DICOMwebClient
root, corpus, key = sys.argv[1:]
files = ["CT_small.dcm", "MR_small_RLE.dcm", "examples_ybr_color.dcm",
         "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]
dss = [pydicom.dcmread(f"{corpus}/files/{f}") for f in files]
DICOMwebClient(url=root, headers={"Authorization": f"Bearer {key}"}).store_instances(dss)
print(" ".join(ds.StudyInstanceUID for ds in dss))
EOF
)

step "OHIF viewer in headless Chromium"
# shellcheck disable=SC2086  # one argument per study UID
NODE_PATH="$CACHE/node_modules" node "$HERE/ohif_probe.cjs" "http://127.0.0.1:$OHIF_PORT" "$OUT" "$READER" $STUDIES
