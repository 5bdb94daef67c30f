#!/usr/bin/env bash
# Runs tensor-iroh and its predecessor (tensor_iroh 0.1.1a3, pip) on the same
# files in one go, on this machine, and prints a markdown table of the numbers
# and their ratios. Both tools run as two processes over loopback.
#
#   bash scripts/bench-compare.sh     # 1 GiB file; BIG_MIB and RUNS (default 3) change it
#
# Timing: ours is the whole `send` process, start to exit, and includes
# validating, hashing, connecting and the receiver's fsync, against a listener
# that has received one file before; the predecessor's is from its first
# send_tensor call to its last one returning (its start-up and connection
# excluded, which favours it). Each is the median of RUNS runs.
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

send_once() { # FILE SAMPLE -> seconds for the whole send process; with SAMPLE=1 also
               # the peak RssAnon (KiB) of sender and listener, sampled every 20 ms
    local file=$1 sample=$2 peak_send=0 peak_listen=0 rss
    rm -f out/*
    # Settle earlier writes (the generated inputs, the last copy) so no run
    # pays for another's writeback.
    sync
    local t0; t0=$(now)
    "$BIN" send "$TICKET" "$file" --relay disabled --quiet &
    local pid=$!
    if [ "$sample" = 1 ]; then
        while kill -0 "$pid" 2>/dev/null; do
            rss=$(rss_anon_kib "$pid"); [ "${rss:-0}" -gt "$peak_send" ] && peak_send=$rss
            rss=$(rss_anon_kib "$LISTENER_PID"); [ "${rss:-0}" -gt "$peak_listen" ] && peak_listen=$rss
            sleep 0.02
        done
    fi
    wait "$pid"
    local seconds; seconds=$(elapsed "$t0" "$(now)")
    cmp -s "$file" "out/$(basename "$file")" || { echo "MISMATCH: $file" >&2; exit 1; }
    echo "$seconds $peak_send $peak_listen"
}

median() { printf '%s\n' "$@" | sort -g | sed -n "$((($# + 1) / 2))p"; }

# The first big run warms the listener up (a listener normally runs for long;
# the predecessor's timing excludes its start-up too) and gives the memory
# peaks. Timed runs are not sampled: on two cores the sampler's processes
# would slow the transfer. Each size is timed RUNS times, ours, the bare stream
# and the predecessor's in turn, so a machine that slows down or speeds up
# during the script weighs on all of them alike; the median counts.
RUNS=${RUNS:-3}
read -r _ send_rss listen_rss < <(send_once big.safetensors 1)
python3 -c "import numpy as np; np.save('tiny.npy', np.zeros(1024, dtype=np.float32))"
read -r ours_tiny _ _ < <(send_once tiny.npy 0)

# --- the predecessor -------------------------------------------------------------
predecessor() { # FILE COUNT -> seconds from its first send_tensor to its last returning
    local file=$1 count=$2 attempt
    # Its sender fails now and then (an error from its node); such a run is
    # retried, and said on stderr, rather than counted.
    for attempt in 1 2 3; do
        RUST_LOG=off python3 "$OLDPWD/scripts/predecessor.py" receive "$count" > receive.out 2> receive.err &
        local receiver=$!
        sync
        while ! grep -q '^node' receive.out; do sleep 0.05; done
        local addr; addr=$(grep '^node' receive.out | head -1)
        if RUST_LOG=off python3 "$OLDPWD/scripts/predecessor.py" send "$addr" "$file" > send.out 2> send.err \
            && grep -q '^{"seconds"' send.out; then
            # Its node can exit non-zero at shutdown; what counts is what it received.
            wait "$receiver" || true
            # Its node may print more after the timing line; a receiver that died
            # before its count line received nothing that counts.
            local seconds received
            seconds=$(grep '^{"seconds"' send.out | tail -1 | sed -E 's/.*"seconds": ([0-9.e-]+).*/\1/')
            received=$(grep '^{"received"' receive.out | tail -1 | sed -E 's/.*"received": ([0-9]+).*/\1/')
            echo "$seconds ${received:-0}"
            return
        fi
        echo "predecessor run $attempt failed: $(tail -1 send.err)" >&2
        kill "$receiver" 2>/dev/null; wait "$receiver" 2>/dev/null || true
    done
    echo "the predecessor failed three times in a row" >&2
    exit 1
}

# The bare stream moves as many bytes as the big file, so both see the same
# connection warm-up and the same length of run.
raw_once() { # -> MB/s of one bare-stream transfer of the big file's size
    "$BIN" bench "$TICKET" --raw --sizes "$BIG_BYTES" --iters 1 --json --relay disabled \
        | python3 -c "import json, sys; r = json.loads(sys.stdin.readlines()[-1]); print(r['size_bytes'] / r['p50_us'])"
}
big_times=(); small_times=(); raw_rates=()
old_big_times=(); old_small_times=(); old_big_received=256; old_small_received=2000
for _ in $(seq "$RUNS"); do
    read -r t _ _ < <(send_once big.safetensors 0); big_times+=("$t")
    read -r t _ _ < <(send_once small.safetensors 0); small_times+=("$t")
    raw_rates+=("$(raw_once)")
    read -r t got < <(predecessor big.safetensors 256)
    old_big_times+=("$t"); [ "$got" -lt "$old_big_received" ] && old_big_received=$got
    read -r t got < <(predecessor small.safetensors 2000)
    old_small_times+=("$t"); [ "$got" -lt "$old_small_received" ] && old_small_received=$got
done
ours_big=$(median "${big_times[@]}")
ours_small=$(median "${small_times[@]}")
raw=$(median "${raw_rates[@]}")
file_json=$("$BIN" bench "$TICKET" --sizes 4K --iters 500 --json --relay disabled)
kill "$LISTENER_PID"; LISTENER_PID=
old_big=$(median "${old_big_times[@]}")
old_small=$(median "${old_small_times[@]}")
echo "runs (s): ours big ${big_times[*]}, small ${small_times[*]}; raw MB/s ${raw_rates[*]}; predecessor big ${old_big_times[*]}, small ${old_small_times[*]}" >&2

python3 - "$BIG_BYTES" "$SMALL_BYTES" "$ours_big" "$old_big" "$ours_small" "$old_small" \
    "$send_rss" "$listen_rss" "$ticket_s" "$ours_tiny" "$raw" "$file_json" \
    "$old_big_received" "$old_small_received" <<'EOF'
import json, sys
(big, small, ours_big, old_big, ours_small, old_small, send_rss, listen_rss,
 ticket_s, ours_tiny, raw, file_json, old_big_received, old_small_received) = sys.argv[1:]
big, small = int(big), int(small)
ours_big, old_big, ours_small, old_small = map(float, (ours_big, old_big, ours_small, old_small))
raw = float(raw)
warm = json.loads(file_json.splitlines()[-1])["p50_us"]
mbs = lambda b, s: b / 1e6 / s
print(f"| measurement | tensor-iroh | predecessor | ratio |")
print(f"|---|---|---|---|")
print(f"| {big / 2**20:.0f} MiB file, 256 tensors, file to file | {ours_big:.2f} s ({mbs(big, ours_big):.0f} MB/s) | {old_big:.2f} s ({mbs(big, old_big):.0f} MB/s), fewest arrived in a run: {old_big_received}/256 | {old_big / ours_big:.2f}x faster |")
print(f"| same, vs `bench --raw` (bare iroh stream, as many bytes, median) | {mbs(big, ours_big):.0f} MB/s | raw {raw:.0f} MB/s | {mbs(big, ours_big) / raw:.2f}x of raw |")
print(f"| 2000 tensors x 4 KiB, one file | {ours_small:.3f} s | {old_small:.3f} s, fewest arrived: {old_small_received}/2000 | {old_small / ours_small:.1f}x faster |")
print(f"| anonymous memory (RssAnon peak) during the big file | sender {int(send_rss) / 1024:.0f} MiB, listener {int(listen_rss) / 1024:.0f} MiB | | |")
print(f"| ticket on stdout after `listen` starts (relays off) | {float(ticket_s) * 1000:.0f} ms | | |")
print(f"| 4 KiB file, `send` process start to exit | {float(ours_tiny) * 1000:.0f} ms | | |")
print(f"| warm 4 KiB round trip, p50 (`bench`, two processes) | {warm:.0f} us | | |")
EOF
