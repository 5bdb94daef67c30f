#!/usr/bin/env bash
# Times `pull` with many patterns against a listener serving many tensors, the
# case where a per-pattern or per-name scan turns quadratic. One listener
# serves one safetensors file of N tiny tensors; the puller names every one of
# them, as N exact names, N prefix globs (`layers.7.w*`) and N globs with a
# class (`layers.7.[w]eigh?`), and every other one (`halves`: the listener
# builds a file of those), for --list, --out and --stdout.
#
#   bash scripts/pull-scale.sh            # N=20000
#   N=5000 bash scripts/pull-scale.sh
#   TENSOR_IROH_BIN=path/to/tensor-iroh bash scripts/pull-scale.sh   # another build
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-20000}
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

python3 - "$N" "$WORK" <<'EOF'
import json, struct, sys
n, work = int(sys.argv[1]), sys.argv[2]
header = {f"layers.{i}.weight": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
          for i in range(n)}
text = json.dumps(header).encode()
text += b" " * (-len(text) % 8)
with open(f"{work}/many.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + bytes(4 * n))
with open(f"{work}/exact", "w") as f:
    f.write("\n".join(f"layers.{i}.weight" for i in range(n)))
with open(f"{work}/globs", "w") as f:
    f.write("\n".join(f"layers.{i}.w*" for i in range(n)))
with open(f"{work}/halves", "w") as f:
    f.write("\n".join(f"layers.{i}.weight" for i in range(0, n, 2)))
with open(f"{work}/classes", "w") as f:
    f.write("\n".join(f"layers.{i}.[w]eigh?" for i in range(n)))
EOF

"$TENSOR_IROH_BIN" listen --relay disabled --serve "$WORK/many.safetensors" \
    >"$WORK/ticket" 2>/dev/null &
LISTENER_PID=$!
for _ in $(seq 200); do
    [ -s "$WORK/ticket" ] && break
    sleep 0.1
done
TICKET=$(head -n1 "$WORK/ticket")

# Runs one pull and prints how long it took; a failed pull stops the script.
timed() {
    local label=$1
    shift
    local start end
    start=$(date +%s.%N)
    "$TENSOR_IROH_BIN" pull --relay disabled --timeout 600 "$TICKET" "$@" >"$WORK/stdout" 2>"$WORK/out.log" \
        || { echo "$label failed:"; tail -n 3 "$WORK/out.log"; exit 1; }
    end=$(date +%s.%N)
    printf '%-28s %8.2f s\n' "$label" "$(echo "$end - $start" | bc)"
}

echo "pull with $N patterns against $N served tensors ($TENSOR_IROH_BIN)"
for kind in exact halves globs classes; do
    mapfile -t patterns <"$WORK/$kind"
    timed "$kind --list" --list "${patterns[@]}"
    rm -rf "$WORK/w"
    timed "$kind --out" --out "$WORK/w" "${patterns[@]}"
    timed "$kind --stdout" --stdout "${patterns[@]}"
done
