#!/usr/bin/env bash
# The test command: installs the Python packages the interop tests load files
# with, then runs every test against a release build (the one `bench` uses).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check numpy safetensors ml_dtypes 2>&1 \
    | grep -v "Running pip as the 'root' user" || true
cargo test --release "$@"
