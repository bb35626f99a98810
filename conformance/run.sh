#!/usr/bin/env bash
# The conformance suite with real clients: Orthanc (Debian orthanc 1.10 +
# orthanc-dicomweb 1.7) and Python dicomweb-client 0.61 against a real
# cloudpacs binary, each on free loopback ports, on a fresh temporary index.
#
#   conformance/run.sh
#
# Environment:
#   CLOUDPACS_BIN     the server binary (default: built with `cargo build`,
#                     ${CARGO_TARGET_DIR:-target}/debug/cloudpacs)
#   CONFORMANCE_WADO  WADO-RS features the clients must exercise, comma-separated
#                     among instance,metadata,frames, or none; auto (default) =
#                     the ones src/dicomweb/mod.rs routes (so they are required
#                     as soon as they exist, and a regression fails the suite)
#   CONFORMANCE_KEEP  1 = keep the work folder (logs, configs) after success
#   CONFORMANCE_OHIF  0 = skip the OHIF viewer part (conformance/ohif.sh)
#
# Installs what is missing (idempotent): apt `orthanc orthanc-dicomweb`, the
# Python venv of tests/setup-python.sh. Never starts the Debian service.
# Stops exactly what it started (by PID). Fails with the client's own error.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
HERE="$REPO/conformance"
start=$(date +%s)
step() { printf '\n== conformance: %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }
die() { echo "conformance: FAILED: $*" >&2; exit 1; }

step "Python venv and corpus"
eval "$(tests/setup-python.sh)"
PY=$CLOUDPACS_TEST_PYTHON
CORPUS=$CLOUDPACS_TEST_DATA

step "Orthanc"
ORTHANC_PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
if ! command -v Orthanc >/dev/null || [ ! -f "$ORTHANC_PLUGIN" ]; then
    echo "installing orthanc orthanc-dicomweb (apt)" >&2
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq >&2
    # policy-rc.d in containers keeps the packaged service from starting;
    # the suite never uses it either way.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq orthanc orthanc-dicomweb >&2
fi
Orthanc --version | sed -n 1p

step "cloudpacs binary"
if [ -z "${CLOUDPACS_BIN:-}" ]; then
    cargo build --quiet
    CLOUDPACS_BIN="${CARGO_TARGET_DIR:-$REPO/target}/debug/cloudpacs"
fi
[ -x "$CLOUDPACS_BIN" ] || die "CLOUDPACS_BIN=$CLOUDPACS_BIN is not an executable"
"$CLOUDPACS_BIN" --help | grep hospital >/dev/null || die "$CLOUDPACS_BIN is not a cloudpacs binary with the hospital command"
echo "$CLOUDPACS_BIN"

# WADO-RS features the clients must exercise: "instance" (retrieve), "metadata",
# "frames". auto = those src/dicomweb/mod.rs routes; "none" = none.
WADO=${CONFORMANCE_WADO:-auto}
if [ "$WADO" = auto ]; then
    WADO=
    route() { grep -Eq "\"$1\" *, *get\(" src/dicomweb/mod.rs; }
    if route '/studies/\{study\}/series/\{series\}/instances/\{[a-z_]+\}'; then WADO+=instance,; fi
    if route '/studies/\{study\}/series/\{series\}/metadata'; then WADO+=metadata,; fi
    if route '/studies/\{study\}/series/\{series\}/instances/\{[a-z_]+\}/frames/\{[a-z_]+\}'; then WADO+=frames,; fi
    WADO=${WADO%,}
    WADO=${WADO:-none}
fi
echo "WADO-RS features checked: $WADO"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cloudpacs-conformance.XXXXXX")
PIDS=()
cleanup() {
    rc=$?
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    if [ "$rc" != 0 ]; then
        echo "conformance: logs kept in $WORK (cloudpacs.log, orthanc/orthanc.log)" >&2
        grep '^E' "$WORK/orthanc/orthanc.log" 2>/dev/null | head -n 15 >&2 || true
    elif [ "${CONFORMANCE_KEEP:-0}" = 1 ]; then
        echo "conformance: work folder kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    printf 'conformance: %s in %ss\n' "$([ "$rc" = 0 ] && echo passed || echo FAILED)" "$(( $(date +%s) - start ))"
}
trap cleanup EXIT

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

step "start cloudpacs"
CP_PORT=$(free_port)
CP_DATA="$WORK/cloudpacs"
mkdir -p "$CP_DATA"
"$CLOUDPACS_BIN" serve --data-dir "$CP_DATA" --listen "127.0.0.1:$CP_PORT" > "$WORK/cloudpacs.log" 2>&1 &
PIDS+=($!)
CP_PID=$!
for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$CP_PORT/healthz" >/dev/null; then break; fi
    kill -0 "$CP_PID" 2>/dev/null || { cat "$WORK/cloudpacs.log" >&2; die "cloudpacs exited at start"; }
    sleep 0.1
done
curl -sf "http://127.0.0.1:$CP_PORT/readyz" >/dev/null || die "cloudpacs not ready on port $CP_PORT"
echo "cloudpacs pid $CP_PID on 127.0.0.1:$CP_PORT"

# One hospital per client case, each with a writer key: every case is
# checked against an index that only it wrote to.
hospital() {
    local out id
    out=$("$CLOUDPACS_BIN" hospital create --name "$1" --json --data-dir "$CP_DATA")
    id=$("$PY" -c 'import json,sys; print(json.load(sys.stdin)["hospitalId"])' <<<"$out")
    out=$("$CLOUDPACS_BIN" key create --hospital "$id" --role writer --name conformance --json --data-dir "$CP_DATA")
    "$PY" -c 'import json,sys; k=json.load(sys.stdin)["apiKey"]; print(sys.argv[1], k)' "$id" <<<"$out"
}
CASES="$WORK/cases.json"
{
    echo '{'
    sep=
    for name in basic_chunked bearer_chunked basic_plain bearer_plain lua_autoforward dwc_bearer dwc_basic; do
        read -r id key < <(hospital "conformance $name")
        printf '%s"%s": {"hospital": "%s", "key": "%s"}\n' "$sep" "$name" "$id" "$key"
        sep=,
    done
    echo '}'
} > "$CASES"

step "start Orthanc"
OR_PORT=$(free_port)
OR_NAME="cloudpacs-conformance-$$"
port_busy "$OR_PORT" && die "port $OR_PORT already in use"
mkdir -p "$WORK/orthanc/db"
"$PY" "$HERE/orthanc_config.py" "$CASES" "http://127.0.0.1:$CP_PORT" "$OR_NAME" "$OR_PORT" "$WORK/orthanc" \
    > "$WORK/orthanc/orthanc.json"
Orthanc --verbose "$WORK/orthanc/orthanc.json" > "$WORK/orthanc/orthanc.log" 2>&1 &
PIDS+=($!)
OR_PID=$!
for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$OR_PORT/system" 2>/dev/null | grep "\"$OR_NAME\"" >/dev/null; then break; fi
    kill -0 "$OR_PID" 2>/dev/null || { tail -n 20 "$WORK/orthanc/orthanc.log" >&2; die "Orthanc exited at start"; }
    sleep 0.1
done
curl -sf "http://127.0.0.1:$OR_PORT/system" | grep "\"$OR_NAME\"" >/dev/null \
    || die "no Orthanc named $OR_NAME on port $OR_PORT (see $WORK/orthanc/orthanc.log)"
grep -q "Registering plugin 'dicom-web'" "$WORK/orthanc/orthanc.log" || die "the DICOMweb plugin did not load"
echo "Orthanc pid $OR_PID on 127.0.0.1:$OR_PORT ($(curl -sf "http://127.0.0.1:$OR_PORT/system" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["Version"])'))"

step "Orthanc -> cloudpacs (STOW push, Lua auto-forward, QIDO, retrieve)"
"$PY" "$HERE/orthanc_suite.py" --orthanc "http://127.0.0.1:$OR_PORT" --cloudpacs "http://127.0.0.1:$CP_PORT" \
    --cases "$CASES" --corpus "$CORPUS" --wado "$WADO"

step "Python dicomweb-client, Bearer and Basic sessions"
"$PY" "$HERE/dwc_sessions.py" --cloudpacs "http://127.0.0.1:$CP_PORT" --cases "$CASES" \
    --corpus "$CORPUS" --wado "$WADO"

kill -0 "$CP_PID" 2>/dev/null || die "cloudpacs died during the run"

if [ "${CONFORMANCE_OHIF:-1}" != 0 ]; then
    step "OHIF viewer in headless Chromium (conformance/ohif.sh)"
    CLOUDPACS_BIN="$CLOUDPACS_BIN" "$HERE/ohif.sh"
fi
step "all clients passed"
