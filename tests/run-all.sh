#!/usr/bin/env bash
# The whole test suite, from a fresh clone: formatting, lints, the Rust tests
# on SQLite and on PostgreSQL, the S3 tests against s3s-fs, then
# conformance/run.sh (Orthanc and Python dicomweb-client against the real
# binary). Installs what it needs (idempotent).
#   tests/run-all.sh
# S3: tests/start-s3.sh installs s3s-fs 0.14.1 once (~3.5 min) and starts it
# on a free loopback port; it is stopped at exit. (Garage: tests/s3-garage.sh.)
# PostgreSQL: CLOUDPACS_TEST_PG (default postgres://postgres@127.0.0.1:5432);
# each run creates fresh databases and drops them afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

step "test fixtures (Python venv with pydicom)"
eval "$(tests/setup-python.sh)"

step "S3 test server (s3s-fs)"
eval "$(tests/start-s3.sh)"
cleanup_s3() { tests/start-s3.sh stop; }
trap cleanup_s3 EXIT

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --all-targets -- -D warnings

step "tests on SQLite + local folder"
cargo test --all

step "tests on PostgreSQL"
PG=${CLOUDPACS_TEST_PG:-postgres://postgres@127.0.0.1:5432}
if ! pg_isready -q -d "$PG/postgres" 2>/dev/null; then
    echo "PostgreSQL is not answering at $PG; starting the local cluster" >&2
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
    for _ in $(seq 1 30); do pg_isready -q -d "$PG/postgres" && break; sleep 1; done
fi
run_db="cloudpacs_run_$(date +%s)_$$"
drop_test_dbs() {
    psql -qtA -d "$PG/postgres" -c "SELECT datname FROM pg_database WHERE datname LIKE 'cloudpacs_test_%' OR datname = '$run_db'" \
        | while read -r db; do [ -n "$db" ] && psql -q -d "$PG/postgres" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"; done
}
trap 'drop_test_dbs; cleanup_s3' EXIT
psql -q -d "$PG/postgres" -c "CREATE DATABASE $run_db"
TEST_DATABASE_URL="$PG/$run_db" cargo test --all

step "conformance suite with real clients (Orthanc, dicomweb-client)"
conformance/run.sh

step "all passed"
