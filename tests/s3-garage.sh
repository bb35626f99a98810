#!/usr/bin/env bash
# The S3 tests (blob-store contract, failure injection, STOW on S3, and the
# two-replica test when PostgreSQL is given) against Garage 2.5.0, the
# production-like S3-compatible store. Not part of tests/run-all.sh: the
# first run builds Garage (`cargo install garage@2.5.0 --locked`, 20-35 min
# on 2 cores); later runs start it in about a second.
#   tests/s3-garage.sh
#   TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/SOME_DB tests/s3-garage.sh   # + replicas
# Garage differences the code already handles: its region is "garage" (it
# checks the region in signatures) and it refuses the SDK's default
# streaming checksums (the store sends checksums only when required).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(CLOUDPACS_TEST_S3_BACKEND=garage tests/start-s3.sh)"
trap 'tests/start-s3.sh stop' EXIT
cargo test --test store_contract --test replicas -- --nocapture
