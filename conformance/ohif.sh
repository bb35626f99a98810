#!/usr/bin/env bash
# OHIF 3.13.2 (npm @ohif/app, its prebuilt dist/) in headless Chromium (Debian
# `chromium` + npm `playwright-core`) against a real cloudpacs; run by
# conformance/run.sh (so by tests/run-all.sh) unless CONFORMANCE_OHIF=0.
#
#   conformance/ohif.sh          # env: CLOUDPACS_BIN as in run.sh
#
# Stores native, RLE, JPEG baseline multi-frame, JPEG-LS and JPEG 2000 samples.
# OHIF logs in through an OpenID Connect provider (conformance/oidc_provider.py:
# authorization code + PKCE) whose keys cloudpacs discovers from --oidc-issuer;
# the study list must show every study, and each study must open with its
# frames. A second OHIF without OIDC opens a study through the viewer route with
# ?token=<reader API key>. Every DICOMweb request must carry the Bearer token and
# succeed, with no CORS error (conformance/ohif_probe.cjs). Screenshots and the
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
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >&2
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

step "start the identity provider, cloudpacs and OHIF"
CP_PORT=$(free_port)
OHIF_PORT=$(free_port)
OHIF_TOKEN_PORT=$(free_port)
IDP_PORT=$(free_port)
IDP="http://127.0.0.1:$IDP_PORT"
openssl genrsa -out "$WORK/idp-key.pem" 2048 2>/dev/null
"$PY" "$HERE/oidc_provider.py" --port "$IDP_PORT" --key "$WORK/idp-key.pem" \
    --audience cloudpacs --hospital default --roles reader > "$WORK/idp.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do curl -sf "$IDP/.well-known/openid-configuration" >/dev/null && break; sleep 0.1; done
curl -sf "$IDP/.well-known/openid-configuration" >/dev/null || die "the identity provider did not start (see $WORK/idp.log)"
"$CLOUDPACS_BIN" serve --data-dir "$WORK/data" --listen "127.0.0.1:$CP_PORT" \
    --cors-origins "http://127.0.0.1:$OHIF_PORT,http://127.0.0.1:$OHIF_TOKEN_PORT" \
    --oidc-issuer "$IDP" --oidc-audience cloudpacs > "$WORK/cloudpacs.log" 2>&1 &
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
# Two OHIF builds: one logging in through the provider, one without (?token=).
sed "s#http://127.0.0.1:18080/dicom-web#$ROOT#g" "$HERE/ohif-app-config.js" > "$WORK/app-config-token.js"
OIDC="oidc: [{ authority: '$IDP', client_id: 'ohif-viewer', redirect_uri: '/callback', response_type: 'code', scope: 'openid profile', post_logout_redirect_uri: '/' }],"
sed "s#^  routerBasename: null,#  routerBasename: null, $OIDC#" "$WORK/app-config-token.js" > "$WORK/app-config-oidc.js"
grep -q "authority: '$IDP'" "$WORK/app-config-oidc.js" || die "could not add oidc to the OHIF config"
for variant in "oidc $OHIF_PORT" "token $OHIF_TOKEN_PORT"; do
    set -- $variant
    "$PY" "$HERE/serve_ohif.py" --dist "$CACHE/package/dist" --config "$WORK/app-config-$1.js" \
        --port "$2" > "$WORK/ohif-server-$1.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$2/" >/dev/null && break; sleep 0.1; done
done

step "store samples"
"$PY" - "$ROOT" "$CLOUDPACS_TEST_DATA" "$WRITER" "$READER" "$OUT" "$OHIF_PORT" "$OHIF_TOKEN_PORT" \
    > "$WORK/plan.json" <<'EOF'
import json, sys
import pydicom
from dicomweb_client.api import DICOMwebClient
root, corpus, writer, reader, out, oidc_port, token_port = sys.argv[1:]
files = ["CT_small.dcm", "MR_small_RLE.dcm", "examples_ybr_color.dcm",
         "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]
dss = [pydicom.dcmread(f"{corpus}/files/{f}") for f in files]
DICOMwebClient(url=root, headers={"Authorization": f"Bearer {writer}"}).store_instances(dss)
print(json.dumps({
    "oidcBase": f"http://127.0.0.1:{oidc_port}", "tokenBase": f"http://127.0.0.1:{token_port}",
    "dicomwebRoot": root, "outDir": out, "token": reader,
    "studies": [{"uid": ds.StudyInstanceUID, "modality": ds.Modality} for ds in dss],
}))
EOF

step "OHIF in headless Chromium"
NODE_PATH="$CACHE/node_modules" node "$HERE/ohif_probe.cjs" "$WORK/plan.json"
# cloudpacs checked the provider's tokens with keys it discovered and fetched itself
grep -q '"path": "/jwks", "status": 200' "$WORK/idp.log" || die "cloudpacs never fetched the provider's keys"
grep -q '"path": "/token", "status": 200' "$WORK/idp.log" || die "OHIF never obtained a token"
