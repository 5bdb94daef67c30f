#!/usr/bin/env bash
# The test command: installs the Python packages the interop tests load files
# with, then runs every test against a release build (the one `bench` uses),
# and closes with one line counting all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check numpy safetensors ml_dtypes 2>&1 \
    | grep -v "Running pip as the 'root' user" || true
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
