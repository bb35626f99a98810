#!/usr/bin/env bash
# The side-by-side benchmark (issue #8): cloudpacs (SQLite and PostgreSQL) vs.
# Orthanc 1.10 + DICOMweb 1.7, same machine, same data, same client, one run.
#
#   bench/run.sh            # full run (~30 min): writes bench/RESULTS.md
#   bench/run.sh --quick    # smoke test (a few minutes): writes target/bench/RESULTS-quick.md
#   bench/run.sh [run.py options]   e.g. --servers cloudpacs --steps 1000,10000
#
# Needs: cargo, python3 (stdlib only), wrk, Orthanc + DICOMweb plugin (Debian
# packages, installed with apt when missing; the packaged service is never
# used), PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres) for
# cloudpacs-pg. Generated data goes to /tmp/cloudpacs-bench (cached between
# runs), raw results to target/bench/results.json. Everything it starts is
# stopped by PID; the PostgreSQL database it creates is dropped.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}

if ! command -v Orthanc >/dev/null || [ ! -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
        || ! command -v wrk >/dev/null; then
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq orthanc orthanc-dicomweb wrk
fi
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    echo "== cargo build --release" >&2
    cargo build --release --quiet
fi
quick=0
user_out=
prev=
for a in "$@"; do
    [ "$a" = --quick ] && quick=1
    [ "$prev" = --out ] && user_out=$a
    prev=$a
done
mkdir -p target/bench
out=target/bench/results.json
md=bench/RESULTS.md
if [ $quick = 1 ]; then out=target/bench/results-quick.json; md=target/bench/RESULTS-quick.md; fi
# --out FILE.json: the report goes beside it, as FILE.md
if [ -n "$user_out" ]; then out=$user_out; md=${user_out%.json}.md; fi
df -h /tmp | tail -1 >&2
BENCH_COMMAND="bench/run.sh $*" python3 bench/run.py --bin "$CARGO_TARGET_DIR/release/cloudpacs" --out "$out" "$@"
python3 bench/report.py "$out" > "$md"
echo "== wrote $md" >&2
