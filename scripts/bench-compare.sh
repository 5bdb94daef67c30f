#!/usr/bin/env bash
# Runs tensor-iroh and its predecessor (tensor_iroh 0.1.1a3, pip) on the same
# files in one go, on this machine, and prints a markdown table of the numbers
# and their ratios. Both tools run as two processes over loopback.
#
#   bash scripts/bench-compare.sh            # 1 GiB file (set BIG_MIB to change)
#
# Timing: ours is the whole `send` process, start to exit, and includes
# validating, hashing, connecting and the receiver's fsync; the predecessor's is
# from its first send_tensor call to its last one returning (its start-up and
# connection excluded, which favours it).
set -euo pipefail
cd "$(dirname "$0")/.."

BIG_MIB=${BIG_MIB:-1024}
python3 -m pip install --quiet --disable-pip-version-check numpy safetensors tensor_iroh==0.1.1a3 2>&1 \
    | grep -v "Running pip as the 'root' user" || true
cargo build --release --quiet
BIN=$PWD/target/release/tensor-iroh
# On disk, not tmpfs: the receiver's writes and fsync are part of the job.
WORK=$(mktemp -d "$PWD/target/bench-compare.XXXXXX")
LISTENER_PID=
cleanup() {
    [ -n "$LISTENER_PID" ] && kill "$LISTENER_PID" 2>/dev/null
    pkill -f "predecessor.py receive" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"

python3 - "$BIG_MIB" <<'EOF'
import json, os, sys

def write_safetensors(path, tensors):
    header, offset = {}, 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for *_, data in tensors:
            f.write(data)

big_mib = int(sys.argv[1])
# 128 bf16 tensors fill the size but for 128 f32 tensors of 16 KiB; random bytes.
bf16_bytes = ((big_mib << 20) - 128 * 16384) // 128
big = []
for i in range(128):
    big.append((f"layers.{i}.weight", "BF16", [bf16_bytes // 2], os.urandom(bf16_bytes)))
    big.append((f"layers.{i}.bias", "F32", [4096], os.urandom(16384)))
write_safetensors("big.safetensors", big)
write_safetensors("small.safetensors", [(f"t{i}", "F32", [1024], os.urandom(4096)) for i in range(2000)])
EOF
BIG_BYTES=$(stat -c %s big.safetensors)
SMALL_BYTES=$(stat -c %s small.safetensors)

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.3f}')"; }
rss_anon_kib() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# --- tensor-iroh ---------------------------------------------------------------
mkdir out
start=$(now)
"$BIN" listen --out out --relay disabled --quiet > listen.out &
LISTENER_PID=$!
while [ ! -s listen.out ]; do sleep 0.005; done
ticket_s=$(elapsed "$start" "$(now)")
TICKET=$(head -1 listen.out)

send_timed() { # FILE -> seconds for the whole send process, and peak RssAnon of both sides
    local file=$1 peak_send=0 peak_listen=0 rss
    rm -f out/*
    local t0; t0=$(now)
    "$BIN" send "$TICKET" "$file" --relay disabled --quiet &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        rss=$(rss_anon_kib "$pid"); [ "${rss:-0}" -gt "$peak_send" ] && peak_send=$rss
        rss=$(rss_anon_kib "$LISTENER_PID"); [ "${rss:-0}" -gt "$peak_listen" ] && peak_listen=$rss
        sleep 0.02
    done
    wait "$pid"
    local seconds; seconds=$(elapsed "$t0" "$(now)")
    cmp -s "$file" "out/$(basename "$file")" || { echo "MISMATCH: $file" >&2; exit 1; }
    echo "$seconds $peak_send $peak_listen"
}

read -r ours_big send_rss listen_rss < <(send_timed big.safetensors)
read -r ours_small _ _ < <(send_timed small.safetensors)
python3 -c "import numpy as np; np.save('tiny.npy', np.zeros(1024, dtype=np.float32))"
read -r ours_tiny _ _ < <(send_timed tiny.npy)
raw_json=$("$BIN" bench "$TICKET" --raw --sizes 256M --iters 3 --json --relay disabled)
file_json=$("$BIN" bench "$TICKET" --sizes 4K --iters 500 --json --relay disabled)
kill "$LISTENER_PID"; LISTENER_PID=

# --- the predecessor -------------------------------------------------------------
predecessor() { # FILE COUNT -> seconds from its first send_tensor to its last returning
    local file=$1 count=$2
    RUST_LOG=off python3 "$OLDPWD/scripts/predecessor.py" receive "$count" > receive.out 2> receive.err &
    local receiver=$!
    while ! grep -q '^node' receive.out; do sleep 0.05; done
    local addr; addr=$(grep '^node' receive.out | head -1)
    local seconds
    seconds=$(RUST_LOG=off python3 "$OLDPWD/scripts/predecessor.py" send "$addr" "$file" 2> send.err \
        | python3 -c "import json,sys; print(json.loads(sys.stdin.readlines()[-1])['seconds'])")
    # Its node can exit non-zero at shutdown; what counts is what it received.
    wait "$receiver" || true
    echo "$seconds $(grep '^{"received"' receive.out | python3 -c "import json,sys; print(json.load(sys.stdin)['received'])")"
}
read -r old_big old_big_received < <(predecessor big.safetensors 256)
read -r old_small old_small_received < <(predecessor small.safetensors 2000)

python3 - "$BIG_BYTES" "$SMALL_BYTES" "$ours_big" "$old_big" "$ours_small" "$old_small" \
    "$send_rss" "$listen_rss" "$ticket_s" "$ours_tiny" "$raw_json" "$file_json" \
    "$old_big_received" "$old_small_received" <<'EOF'
import json, sys
(big, small, ours_big, old_big, ours_small, old_small, send_rss, listen_rss,
 ticket_s, ours_tiny, raw_json, file_json, old_big_received, old_small_received) = sys.argv[1:]
big, small = int(big), int(small)
ours_big, old_big, ours_small, old_small = map(float, (ours_big, old_big, ours_small, old_small))
raw = json.loads(raw_json.splitlines()[-1])["mb_per_s"]
warm = json.loads(file_json.splitlines()[-1])["p50_us"]
mbs = lambda b, s: b / 1e6 / s
print(f"| measurement | tensor-iroh | predecessor | ratio |")
print(f"|---|---|---|---|")
print(f"| {big / 2**20:.0f} MiB file, 256 tensors, file to file | {ours_big:.2f} s ({mbs(big, ours_big):.0f} MB/s) | {old_big:.2f} s ({mbs(big, old_big):.0f} MB/s), {old_big_received}/256 arrived | {old_big / ours_big:.2f}x faster |")
print(f"| same, vs `bench --raw` (bare iroh stream, 256 MiB) | {mbs(big, ours_big):.0f} MB/s | raw {raw:.0f} MB/s | {mbs(big, ours_big) / raw:.2f}x of raw |")
print(f"| 2000 tensors x 4 KiB, one file | {ours_small:.3f} s | {old_small:.3f} s, {old_small_received}/2000 arrived | {old_small / ours_small:.1f}x faster |")
print(f"| anonymous memory (RssAnon peak) during the big file | sender {int(send_rss) / 1024:.0f} MiB, listener {int(listen_rss) / 1024:.0f} MiB | | |")
print(f"| ticket on stdout after `listen` starts (relays off) | {float(ticket_s) * 1000:.0f} ms | | |")
print(f"| 4 KiB file, `send` process start to exit | {float(ours_tiny) * 1000:.0f} ms | | |")
print(f"| warm 4 KiB round trip, p50 (`bench`, two processes) | {warm:.0f} us | | |")
EOF
