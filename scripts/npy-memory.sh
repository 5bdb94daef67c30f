#!/usr/bin/env bash
# Measures what a listener holds while a puller streams non-native .npy files
# (column-major, big-endian) into a safetensors stream with `pull --stdout`,
# which converts them on the listener. For each file: the peak RssAnon of the
# listener (sampled from /proc/PID/status), the time and rate of the pull, and
# whether the values arrived equal (numpy).
#
#   bash scripts/npy-memory.sh                 # 256 MiB files
#   MIB=512 bash scripts/npy-memory.sh
#   TENSOR_IROH_BIN=path/to/tensor-iroh bash scripts/npy-memory.sh   # another build
set -euo pipefail
cd "$(dirname "$0")/.."

MIB=${MIB:-256}
if [ -z "${TENSOR_IROH_BIN:-}" ]; then
    cargo build --release --quiet
    TENSOR_IROH_BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/tensor-iroh
fi
WORK=$(mktemp -d)
LISTENER_PID=
cleanup() {
    if [ -n "$LISTENER_PID" ]; then kill "$LISTENER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# name, dtype, shape, order: square-ish matrices, a tall thin and a wide flat
# one (rows of several MiB: the costliest case, one read per element), and 3-D.
python3 - "$MIB" "$WORK" <<'EOF_PY'
import sys
import numpy as np
mib, work = int(sys.argv[1]), sys.argv[2]
n8 = mib * 2**20 // 8
n4 = mib * 2**20 // 4
side = 1 << (n8.bit_length() - 1) // 2
cases = {
    "fortran-f8": ("<f8", (side, n8 // side), "F"),
    "big-endian-f4": (">f4", (n4 // 4096, 4096), "C"),
    "fortran-big-endian-f8": (">f8", (side, n8 // side), "F"),
    "fortran-tall-f8": ("<f8", (n8 // 2, 2), "F"),
    "fortran-wide-f8": ("<f8", (1024, n8 // 1024), "F"),
    "fortran-3d-f4": ("<f4", (64, n4 // (64 * 256), 256), "F"),
}
for name, (dtype, shape, order) in cases.items():
    count = int(np.prod(shape))
    data = np.arange(count, dtype=np.float64).astype(dtype).reshape(shape, order=order)
    np.save(f"{work}/{name}.npy", data)
EOF_PY

"$TENSOR_IROH_BIN" listen --relay disabled --serve "$WORK" >"$WORK/ticket" 2>"$WORK/listen.log" &
LISTENER_PID=$!
for _ in $(seq 200); do
    [ -s "$WORK/ticket" ] && break
    sleep 0.1
done
TICKET=$(head -n1 "$WORK/ticket")

rss_anon_kib() {
    awk '/^RssAnon:/ { print $2 }' "/proc/$LISTENER_PID/status"
}

echo "pull --stdout of ${MIB} MiB .npy files ($TENSOR_IROH_BIN)"
printf '%-24s %14s %14s %10s %10s  %s\n' file "RssAnon before" "RssAnon peak" seconds "MB/s" values
for npy in "$WORK"/*.npy; do
    name=$(basename "$npy" .npy)
    before=$(rss_anon_kib)
    peak_file="$WORK/peak"
    echo "$before" >"$peak_file"
    (
        peak=$before
        while kill -0 "$LISTENER_PID" 2>/dev/null; do
            now=$(rss_anon_kib)
            if [ "$now" -gt "$peak" ]; then
                peak=$now
                echo "$peak" >"$peak_file"
            fi
            sleep 0.02
        done
    ) &
    SAMPLER=$!
    start=$(date +%s.%N)
    "$TENSOR_IROH_BIN" pull --relay disabled --timeout 600 "$TICKET" "$name" --stdout \
        >"$WORK/stream.safetensors" 2>"$WORK/pull.log" \
        || { echo "$name failed:"; tail -n 3 "$WORK/pull.log"; kill "$SAMPLER"; exit 1; }
    end=$(date +%s.%N)
    kill "$SAMPLER"
    wait "$SAMPLER" 2>/dev/null || true
    seconds=$(echo "$end - $start" | bc)
    values=$(python3 - "$WORK" "$name" <<'EOF_PY'
import sys
import numpy as np
from safetensors.numpy import load_file
work, name = sys.argv[1:]
got = load_file(f"{work}/stream.safetensors")[name]
want = np.load(f"{work}/{name}.npy")
print("equal" if got.shape == want.shape and np.array_equal(got, want) else "DIFFERENT")
EOF_PY
)
    printf '%-24s %11d MiB %11d MiB %10.2f %10.1f  %s\n' "$name" $((before / 1024)) \
        $(($(cat "$peak_file") / 1024)) "$seconds" \
        "$(echo "$MIB * 1.048576 / $seconds" | bc -l)" "$values"
    rm -f "$WORK/stream.safetensors"
done
