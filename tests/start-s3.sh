#!/usr/bin/env bash
# Start an S3-compatible server on a free loopback port for the tests,
# installing it first when missing, and print the `export` lines the tests
# read (stdout holds only those; progress goes to stderr).
#
#   eval "$(tests/start-s3.sh)"              # s3s-fs 0.14.1 (what every CI run uses)
#   CLOUDPACS_TEST_S3_BACKEND=garage eval "$(tests/start-s3.sh)"   # Garage 2.5.0
#   tests/start-s3.sh stop                   # stop it (uses the exported PID and dir)
#
# Every start gets its own data folder and port, so parallel runs never meet.
# Servers are installed with `cargo install --root "$CLOUDPACS_TEST_TOOLS"`
# (default ~/.local/cloudpacs-test) once; later starts take well under a second.
#   s3s-fs 0.14.1: ~3.5 min to build on 2 cores; verifies SigV4 signatures.
#     (Pinned: newer releases need a newer Rust than the project's.)
#   garage 2.5.0: 20-35 min to build on 2 cores; a real distributed store,
#     single node here, region "garage".
set -euo pipefail

BACKEND="${CLOUDPACS_TEST_S3_BACKEND:-s3s}"
ROOT="${CLOUDPACS_TEST_TOOLS:-$HOME/.local/cloudpacs-test}"
BUCKET=cloudpacs-test
# Fixed throwaway credentials of a loopback-only test server. Garage wants key
# ids "GK" + 24 hex digits and 64-hex-digit secrets; s3s-fs takes anything.
ACCESS_KEY=GK0123456789abcdef01234567
SECRET_KEY=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
log() { echo "[start-s3] $*" >&2; }

if [ "${1:-start}" = "stop" ]; then
    if [ -n "${CLOUDPACS_TEST_S3_PID:-}" ]; then
        if kill "$CLOUDPACS_TEST_S3_PID" 2>/dev/null; then
            # Wait until it is gone before its folder is removed.
            for _ in $(seq 1 50); do kill -0 "$CLOUDPACS_TEST_S3_PID" 2>/dev/null || break; sleep 0.1; done
            log "stopped pid $CLOUDPACS_TEST_S3_PID"
        fi
    fi
    if [ -n "${CLOUDPACS_TEST_S3_STATE:-}" ] && [ -d "$CLOUDPACS_TEST_S3_STATE" ]; then
        rm -rf "$CLOUDPACS_TEST_S3_STATE"
    fi
    exit 0
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() { # until 127.0.0.1:$1 accepts connections (~30 s at most)
    for _ in $(seq 1 150); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.2
    done
    log "the server did not open port $1; see $STATE/server.log"
    return 1
}
install() { # crate version binary
    local bin="$ROOT/bin/$3"
    if [ ! -x "$bin" ] || ! grep -q "^\"$1 $2 " "$ROOT/.crates.toml" 2>/dev/null; then
        log "installing $1 $2 into $ROOT (cargo install, once)..."
        # Its own temporary target dir: never the project's (nor its lock).
        env -u CARGO_TARGET_DIR cargo install "$1@$2" --locked --root "$ROOT" "${@:4}" >&2
    fi
    echo "$bin"
}

mkdir -p "$ROOT"
STATE="$(mktemp -d "${TMPDIR:-/tmp}/cloudpacs-s3.XXXXXX")"
PORT="$(free_port)"
REGION=us-east-1
DATA_DIR=
case "$BACKEND" in
    s3s)
        BIN="$(install s3s-fs 0.14.1 s3s-fs --features binary)"
        DATA_DIR="$STATE/data"
        mkdir -p "$DATA_DIR/$BUCKET" # s3s-fs: a bucket is a folder
        "$BIN" --host 127.0.0.1 --port "$PORT" --access-key "$ACCESS_KEY" \
            --secret-key "$SECRET_KEY" "$DATA_DIR" >"$STATE/server.log" 2>&1 &
        PID=$!
        wait_port "$PORT"
        ;;
    garage)
        BIN="$(install garage 2.5.0 garage)"
        REGION=garage # must equal s3_region below: Garage checks it in signatures
        RPC_PORT="$(free_port)"
        cat >"$STATE/garage.toml" <<EOF
metadata_dir = "$STATE/meta"
data_dir = "$STATE/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$PORT"
root_domain = ".s3.garage.localhost"
EOF
        chmod 600 "$STATE/garage.toml" # Garage refuses a world-readable secret
        G=("$BIN" -c "$STATE/garage.toml")
        "${G[@]}" server >"$STATE/server.log" 2>&1 &
        PID=$!
        wait_port "$PORT"
        for _ in $(seq 1 50); do "${G[@]}" status >/dev/null 2>&1 && break; sleep 0.2; done
        NODE="$("${G[@]}" node id -q 2>/dev/null | cut -d@ -f1)"
        "${G[@]}" layout assign -z dc1 -c 1G "$NODE" >&2
        "${G[@]}" layout apply --version 1 >&2
        "${G[@]}" key import --yes -n ci "$ACCESS_KEY" "$SECRET_KEY" >&2
        # The bucket-per-hospital test creates buckets through the S3 API.
        "${G[@]}" key allow --create-bucket ci >&2
        "${G[@]}" bucket create "$BUCKET" >&2
        "${G[@]}" bucket allow --read --write --owner "$BUCKET" --key ci >&2
        ;;
    *)
        log "unknown CLOUDPACS_TEST_S3_BACKEND=$BACKEND (s3s|garage)"
        exit 2
        ;;
esac
log "$BACKEND on 127.0.0.1:$PORT (pid $PID), bucket $BUCKET, state in $STATE"
cat <<EOF
export CLOUDPACS_TEST_S3=required
export CLOUDPACS_TEST_S3_ENDPOINT=http://127.0.0.1:$PORT
export CLOUDPACS_TEST_S3_BUCKET=$BUCKET
export CLOUDPACS_TEST_S3_DATA_DIR=$DATA_DIR
export CLOUDPACS_TEST_S3_PID=$PID
export CLOUDPACS_TEST_S3_STATE=$STATE
export AWS_REGION=$REGION
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
EOF
