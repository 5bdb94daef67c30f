#!/usr/bin/env bash
# Fan-out benchmark (issue #16): how long `send T1 --to T2 ...` takes to put one
# .safetensors file on 1, 4 and 8 receivers when every machine's upload is
# capped, on a star of network namespaces:
#
#              fo<PID>-br (a bridge, nothing else)
#             /      |      \
#   fo<PID>-s   fo<PID>-r1 ... fo<PID>-rN     one namespace per machine,
#   10.79.0.2   10.79.0.11     10.79.0.(10+N)  each joined by a veth pair
#
# tc tbf caps what leaves each machine (the veth end inside its namespace, so
# its upload); what the bridge hands a machine is not capped. With the upload
# as the only bottleneck, a sender that uploads a full copy to each receiver
# (tensor-iroh 0.3) takes about N times as long for N receivers; one that
# sends each chunk out once and lets receivers pass it on takes about as long
# as for one.
#
#   bash scripts/fanout.sh                       # 256 MiB, 200mbit, 1 4 8 receivers
#   bash scripts/fanout.sh --kill                # and: kill a forwarding receiver, rerun
#   bash scripts/fanout.sh --sources --receivers "" --rate 100mbit   # pull T1 vs pull T1 T2
#   bash scripts/fanout.sh --bin /path/tensor-iroh --receivers "1 4" --runs 3 --json
#
# Options: --bin PATH (or TENSOR_IROH_BIN; otherwise `cargo build --release`,
# honouring CARGO_TARGET_DIR), --size-mib N (256), --rate RATE (200mbit; tc
# units kbit/mbit/gbit), --receivers "LIST" (1 4 8), --runs N (1: each case
# N times, medians reported), --kill, --sources (a pull of the file served by
# two capped listeners, from the first alone and from both at once: the second
# machine's upload should nearly halve the time), --compress MODE (passed to
# send; default: send's own default), --json (one JSON line per case on stdout; the table then
# goes to stderr), --keep (leave the work directory for inspection).
#
# Needs root, `ip netns` and tc (with tbf): without them it says so in one line
# and exits 2. Everything it makes (namespaces, processes, files) is removed on
# exit, Ctrl-C included.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=256
RATE=200mbit
RECEIVERS="1 4 8"
RUNS=1
KILL=0
SOURCES=0
JSON=0
KEEP=0
COMPRESS=
BIN=${TENSOR_IROH_BIN:-}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case $1 in
        --bin) BIN=$2; shift 2 ;;
        --size-mib) SIZE_MIB=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --receivers) RECEIVERS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --compress) COMPRESS=$2; shift 2 ;;
        --kill) KILL=1; shift ;;
        --sources) SOURCES=1; shift ;;
        --json) JSON=1; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "fanout.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

# Names unique to this run, so two runs (or the tests' own namespaces) never meet.
TAG=fo$$
BRIDGE_NS=$TAG-br
SENDER_NS=$TAG-s
SENDER_IP=10.79.0.2
PORT=7000
# Chunk size of the protocol: a receiver records each checked chunk in its
# `.NAME.ID.tensor-iroh-chunks` file, which is how --kill sees its progress.
CHUNK=$((8 << 20))
FILE_NAME=fanout.safetensors

WORK=
NAMESPACES=()

log() { echo "$*" >&2; }

# The JSON-less table goes to stdout, unless stdout carries JSON.
out() {
    if [ "$JSON" = 1 ]; then echo "$*" >&2; else echo "$*"; fi
}

cleanup() {
    local pid ns
    # Processes first: a namespace with a process in it outlives `ip netns del`.
    # The jobs still running are ours and not yet reaped (so their ids cannot
    # have been reused); reaped here, quietly: bash would report each "Killed".
    for pid in $(jobs -p); do
        { kill -9 "$pid" && wait "$pid"; } 2>/dev/null || true
    done
    for ns in "${NAMESPACES[@]}"; do
        # Anything still inside was started by this script (the names are ours).
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            kill -9 "$pid" 2>/dev/null || true
        done
        ip netns del "$ns" 2>/dev/null || true
    done
    if [ -n "$WORK" ]; then
        if [ "$KEEP" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# One line and exit 2 when this machine cannot run the bench.
cannot() {
    echo "fanout.sh: $*" >&2
    exit 2
}

# --- the rate cap ----------------------------------------------------------

# Bytes per second of a tc rate such as 200mbit, 1gbit, 500kbit.
rate_bytes_per_second() {
    local number unit
    number=${1%%[a-zA-Z]*}
    unit=${1#"$number"}
    case ${unit,,} in
        kbit) echo $((number * 1000 / 8)) ;;
        mbit) echo $((number * 1000000 / 8)) ;;
        gbit) echo $((number * 1000000000 / 8)) ;;
        *) cannot "--rate $1: give a whole number of kbit, mbit or gbit" ;;
    esac
}

# tbf as tests/common/long_link.rs sets it: a 100 ms queue (one
# bandwidth-delay product at a long round trip, the classic router buffer),
# a bucket of 2 ms of the rate but at least 16 KiB, since iroh hands the
# kernel GSO batches of up to ten datagrams (~15 kB) that tbf would otherwise
# have to cut up.
RATE_BPS=$(rate_bytes_per_second "$RATE")
BURST=$((RATE_BPS / 500))
[ "$BURST" -ge 16384 ] || BURST=16384

# --- topology --------------------------------------------------------------

receiver_ns() { echo "$TAG-r$1"; }
receiver_ip() { echo "10.79.0.$((10 + $1))"; }

# A machine: its namespace, lo up, eth0 joined by a veth pair to port PORT of
# the bridge, and its upload capped by tbf on eth0.
add_machine() {
    local ns=$1 ip=$2 port=$3
    # A chain, not `set -e`: callers test the status, which turns -e off here.
    ip netns add "$ns" || return 1
    NAMESPACES+=("$ns")
    ip -n "$ns" link set lo up &&
        # Both ends made directly in their namespaces: nothing touches the host's.
        ip link add eth0 netns "$ns" type veth peer name "$port" netns "$BRIDGE_NS" &&
        ip -n "$ns" addr add "$ip/24" dev eth0 &&
        ip -n "$ns" link set eth0 up &&
        ip -n "$BRIDGE_NS" link set "$port" master br0 &&
        ip -n "$BRIDGE_NS" link set "$port" up &&
        tc -n "$ns" qdisc add dev eth0 root tbf rate "$RATE" burst "$BURST" latency 100ms
}

# The bridge's namespace, the sender's and COUNT receivers'. Any failure here
# means this machine cannot run the bench (exit 2, one line).
make_star() {
    local count=$1 i
    [ "$(id -u)" = 0 ] || cannot "needs root (network namespaces and tc)"
    command -v ip >/dev/null || cannot "needs ip (iproute2)"
    command -v tc >/dev/null || cannot "needs tc (iproute2)"
    ip netns add "$BRIDGE_NS" 2>"$WORK/star.err" ||
        cannot "cannot make a network namespace: $(tr '\n' ' ' <"$WORK/star.err")"
    NAMESPACES+=("$BRIDGE_NS")
    {
        ip -n "$BRIDGE_NS" link set lo up &&
            ip -n "$BRIDGE_NS" link add br0 type bridge forward_delay 0 stp_state 0 &&
            ip -n "$BRIDGE_NS" link set br0 up
    } 2>"$WORK/star.err" || cannot "cannot make a bridge: $(tr '\n' ' ' <"$WORK/star.err")"
    # add_machine runs in this shell (it records the namespaces it makes);
    # its errors go to a file for the one line.
    if ! add_machine "$SENDER_NS" "$SENDER_IP" ps 2>"$WORK/star.err"; then
        cannot "cannot make a machine namespace with a veth pair and tbf: $(tr '\n' ' ' <"$WORK/star.err")"
    fi
    for i in $(seq "$count"); do
        add_machine "$(receiver_ns "$i")" "$(receiver_ip "$i")" "pr$i" 2>"$WORK/star.err" ||
            cannot "cannot make receiver namespace $i: $(tr '\n' ' ' <"$WORK/star.err")"
    done
    # The bridge forwards at once (no STP), but check that the far end answers:
    # a TCP connection to a closed port there is refused (no ping here).
    local answer
    answer=$(ip netns exec "$SENDER_NS" timeout 3 bash -c "exec 3<>/dev/tcp/$(receiver_ip "$count")/9" 2>&1 || true)
    [[ $answer == *refused* ]] ||
        cannot "the sender's namespace cannot reach receiver $count across the bridge: $answer"
}

# Bytes that left the sender's machine so far (its eth0, after tbf).
sender_tx_bytes() {
    ip netns exec "$SENDER_NS" cat /sys/class/net/eth0/statistics/tx_bytes
}

# Bytes that arrived at receiver I's machine so far.
receiver_rx_bytes() {
    ip netns exec "$(receiver_ns "$1")" cat /sys/class/net/eth0/statistics/rx_bytes
}

# Busy and total jiffies of the whole machine, for the CPU share of a case.
cpu_jiffies() {
    awk '/^cpu / { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6; exit }' /proc/stat
}

# Sets CHILD_CPU to the CPU seconds (user + system) of the children this
# shell has reaped so far: the listeners and the send, once waited for. Call
# it in this shell, not in $(...): a subshell counts its own children, none.
CHILD_CPU=0
children_cpu_seconds() {
    times >"$WORK/times"
    CHILD_CPU=$(tail -n1 "$WORK/times" | tr 'ms' '  ' | awk '{ print $1 * 60 + $2 + $3 * 60 + $4 }')
}

# --- listeners --------------------------------------------------------------

LISTENER_PID=()
TICKET=()
ENDPOINT=()

# Starts receiver I's listener on its fixed key, address and port, writing into
# DIR, admitting only the sender, with any further arguments (--serve);
# waits for its ticket (the `listening` line), at most 20 s.
start_listener() {
    local i=$1 dir=$2 log_base=$3 line
    shift 3
    mkdir -p "$dir"
    # `ip netns exec` execs the command, so $! is the listener itself (kill -9
    # in --kill hits it, not a wrapper).
    ip netns exec "$(receiver_ns "$i")" "$BIN" listen --relay disabled --json \
        --bind "$(receiver_ip "$i"):$PORT" --key "$WORK/keys/r$i.key" \
        --allow "$SENDER_ID" --out "$dir" "$@" \
        >"$log_base.out" 2>"$log_base.err" &
    LISTENER_PID[i]=$!
    for _ in $(seq 400); do
        [ -s "$log_base.out" ] && break
        kill -0 "${LISTENER_PID[i]}" 2>/dev/null ||
            { log "listener $i exited at start:"; tail -n3 "$log_base.err" >&2; exit 1; }
        sleep 0.05
    done
    line=$(head -n1 "$log_base.out")
    TICKET[i]=$(sed -n 's/.*"ticket":"\([^"]*\)".*/\1/p' <<<"$line")
    ENDPOINT[i]=$(sed -n 's/.*"endpoint_id":"\([^"]*\)".*/\1/p' <<<"$line")
    [ -n "${TICKET[i]}" ] || { log "listener $i printed no ticket within 20 s: $line"; exit 1; }
}

stop_listener() {
    local i=$1
    kill "${LISTENER_PID[i]}" 2>/dev/null || true
    wait "${LISTENER_PID[i]}" 2>/dev/null || true
}

# --- sending and checking ---------------------------------------------------

SEND_RC=0
SEND_SECONDS=0
SEND_TX=0
SEND_CPU=0

# Starts, in the background, the send of the file from the sender's namespace
# to receivers 1..COUNT (the first ticket, then one --to for each other), its
# output in LOG_BASE.{out,err}. finish_send waits for it and sets SEND_RC,
# SEND_SECONDS, SEND_TX (bytes that left the sender's machine) and SEND_CPU
# (% of both cores busy, whole machine).
start_send() {
    local count=$1 log_base=$2 i
    local args=(send --relay disabled --key "$WORK/keys/sender.key" --json)
    [ -z "$COMPRESS" ] || args+=(--compress "$COMPRESS")
    args+=("${TICKET[1]}")
    for i in $(seq 2 "$count"); do args+=(--to "${TICKET[i]}"); done
    SEND_TX0=$(sender_tx_bytes)
    read -r SEND_BUSY0 SEND_TOTAL0 < <(cpu_jiffies)
    SEND_START=$(date +%s.%N)
    # A bound so a hung build cannot hang the bench: 5x the time a full copy
    # per receiver takes, plus a minute.
    timeout -s KILL $((SIZE_MIB * 1048576 * count * 5 / RATE_BPS + 60)) \
        ip netns exec "$SENDER_NS" "$BIN" "${args[@]}" "$SOURCE" \
        >"$log_base.out" 2>"$log_base.err" &
    SEND_PID=$!
}

finish_send() {
    local busy1 total1
    SEND_RC=0
    wait "$SEND_PID" || SEND_RC=$?
    SEND_SECONDS=$(echo "$(date +%s.%N) - $SEND_START" | bc -l)
    SEND_TX=$(($(sender_tx_bytes) - SEND_TX0))
    read -r busy1 total1 < <(cpu_jiffies)
    SEND_CPU=$(((busy1 - SEND_BUSY0) * 100 / (total1 - SEND_TOTAL0 + 1)))
}

# The hash of a file (BLAKE3 when b3sum is there, else SHA-256).
digest() {
    if command -v b3sum >/dev/null; then b3sum --no-names "$1"; else sha256sum "$1" | cut -d' ' -f1; fi
}

# "yes" when each receiver's DIR_BASE<i> (for the given receivers) holds the
# file under its name, identical to the source, and nothing else stored.
copies_identical() {
    local dir_base=$1 i ok=yes stored
    shift
    for i in "$@"; do
        stored=$(find "$dir_base$i" -maxdepth 1 -type f -name '*.safetensors' | wc -l)
        if [ ! -f "$dir_base$i/$FILE_NAME" ] || [ "$stored" != 1 ] ||
            [ "$(digest "$dir_base$i/$FILE_NAME")" != "$SOURCE_DIGEST" ]; then
            ok=no
            log "  receiver $i: copy missing, extra or different ($stored stored)"
        fi
    done
    echo "$ok"
}

median() {
    tr ' ' '\n' <<<"$*" | grep . | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# --- the cases --------------------------------------------------------------

# One send of the file to COUNT fresh receivers: sets CASE to (seconds, bytes
# out of the sender's machine, machine busy %, exit code, identical, CPU
# seconds of the sender and listeners). Not in a subshell: the processes it
# starts must stay known to cleanup and their CPU time to `times`.
CASE=()
run_case() {
    local count=$1 run=$2 base i identical cpu0 cpu1 first
    base=$WORK/case-$count-$run
    children_cpu_seconds
    cpu0=$CHILD_CPU
    for i in $(seq "$count"); do
        start_listener "$i" "$base/out$i" "$base/r$i"
    done
    start_send "$count" "$base/send"
    finish_send
    for i in $(seq "$count"); do stop_listener "$i"; done
    children_cpu_seconds
    cpu1=$CHILD_CPU
    [ "$SEND_RC" = 0 ] || { log "  send exited $SEND_RC:"; tail -n3 "$base/send.err" >&2; }
    identical=$(copies_identical "$base/out" $(seq "$count"))
    # The copies are checked: free the disk for the next case.
    [ "$KEEP" = 1 ] || rm -rf "$base"/out*
    # The first receiver done (the send's `file` events): with a full copy per
    # receiver the flows share the uplink unevenly, and one finishes early.
    first=$(grep '"event":"file"' "$base/send.out" | sed -n 's/.*"seconds":\([0-9.]*\).*/\1/p' | sort -g | head -n1)
    CASE=("$SEND_SECONDS" "$SEND_TX" "$SEND_CPU" "$SEND_RC" "$identical" "$(echo "$cpu1 - $cpu0" | bc -l)" "${first:-0}")
}

# The table: each receiver count RUNS times, medians.
scaling() {
    local count run seconds=() ratios=() tx=() busy=() ours=() firsts=() rcs=() identical
    local s r t b o f per_copy all
    local -A one_by_run=()
    out ""
    out "$(printf '%-9s %8s %7s %8s %9s %8s %8s %8s %6s %5s %s' receivers seconds ratio first \
        "MB/s/copy" "MB/s all" uplink/x "cpu-s" "busy%" exit identical)"
    for count in $RECEIVERS; do
        seconds=() ratios=() tx=() busy=() ours=() firsts=() rcs=() identical=yes
        for run in $(seq "$RUNS"); do
            log "$count receiver(s), run $run/$RUNS ..."
            run_case "$count" "$run"
            seconds+=("${CASE[0]}")
            tx+=("${CASE[1]}")
            busy+=("${CASE[2]}")
            rcs+=("${CASE[3]}")
            [ "${CASE[4]}" = yes ] || identical=no
            ours+=("${CASE[5]}")
            firsts+=("${CASE[6]}")
            [ "$count" != 1 ] || one_by_run[$run]=${CASE[0]}
            # Ratio to the one-receiver time of the same run: the machine drifts.
            if [ -n "${one_by_run[$run]:-}" ]; then
                ratios+=("$(echo "${CASE[0]} / ${one_by_run[$run]}" | bc -l)")
            fi
            log "  $(printf '%.2f s, sender sent %.2f copies, %.1f CPU-s, machine %d%% busy, exit %s, identical %s' \
                "${CASE[0]}" "$(echo "${CASE[1]} / $SOURCE_BYTES" | bc -l)" "${CASE[5]}" \
                "${CASE[2]}" "${CASE[3]}" "${CASE[4]}")"
        done
        s=$(median "${seconds[@]}")
        r=$( ((${#ratios[@]})) && median "${ratios[@]}" || echo "")
        t=$(echo "$(median "${tx[@]}") / $SOURCE_BYTES" | bc -l)
        b=$(median "${busy[@]}")
        o=$(median "${ours[@]}")
        f=$(median "${firsts[@]}")
        per_copy=$(echo "$SOURCE_BYTES / $s / 1000000" | bc -l)
        all=$(echo "$per_copy * $count" | bc -l)
        out "$(printf '%-9s %8.2f %7s %8.2f %9.1f %8.1f %8.2f %8.1f %6.0f %5s %s' "$count" "$s" \
            "$( [ -n "$r" ] && printf '%.2fx' "$r" || echo -)" "$f" "$per_copy" "$all" "$t" "$o" "$b" \
            "$(tr ' ' ',' <<<"${rcs[*]}")" "$identical")"
        if [ "$JSON" = 1 ]; then
            printf '{"case":"fanout","receivers":%d,"runs":%d,"size_bytes":%d,"rate":"%s","seconds":%.3f,"seconds_each":[%s],"ratio_to_one":%s,"first_copy_seconds":%.3f,"mb_per_s_per_copy":%.2f,"mb_per_s_all":%.2f,"sender_uplink_copies":%.3f,"cpu_seconds":%.2f,"machine_busy_percent":%.0f,"exit_codes":[%s],"identical":%s}\n' \
                "$count" "$RUNS" "$SOURCE_BYTES" "$RATE" "$s" "$(tr ' ' ',' <<<"${seconds[*]}")" \
                "$( [ -n "$r" ] && printf '%.3f' "$r" || echo null)" "$f" "$per_copy" "$all" "$t" "$o" "$b" \
                "$(tr ' ' ',' <<<"${rcs[*]}")" "$( [ "$identical" = yes ] && echo true || echo false)"
        fi
    done
    out "(ratio: to the 1-receiver time of the same run; first: when the first receiver had its"
    out " copy (the send's own timer); uplink/x: bytes that left the sender's"
    out " machine / file size; cpu-s: CPU seconds of the send and all listeners; busy%: both cores,"
    out " whole machine, others' work included, during the send)"
}

# Bytes of the file that have arrived at receiver I in DIR: its checked chunks
# (the listener reserves the whole partial file at the start, so the partial
# file's size says nothing), or, where there is no chunk record, the bytes its
# machine received.
arrived_at() {
    local i=$1 dir=$2 record lines
    record=$(find "$dir" -maxdepth 1 -name ".$FILE_NAME.*.tensor-iroh-chunks" 2>/dev/null | head -n1)
    if [ -n "$record" ]; then
        lines=$(wc -l <"$record" 2>/dev/null || echo 0)
        echo $((lines * CHUNK))
    else
        echo $(($(receiver_rx_bytes "$i") - RX0))
    fi
}

# Four receivers; the 2nd (which forwards to others in a tree) is killed with
# SIGKILL once a third of the file has arrived at it. Then it is restarted on
# the same key, address and --out, and the same send is run again.
kill_case() {
    local base=$WORK/kill count=4 victim=2 i arrived=0 killed_at=- named=no first_rc first_s others
    local rx_at_kill=0
    local survivors=(1 3 4)
    log "kill: 4 receivers, receiver $victim killed at a third ..."
    for i in $(seq "$count"); do
        start_listener "$i" "$base/out$i" "$base/r$i"
    done
    RX0=$(receiver_rx_bytes "$victim")
    start_send "$count" "$base/send1"
    # Poll every 50 ms; give up waiting if the send ends first.
    while kill -0 "$SEND_PID" 2>/dev/null; do
        arrived=$(arrived_at "$victim" "$base/out$victim")
        if [ "$arrived" -ge $((SOURCE_BYTES / 3)) ]; then
            # Reaped at once, quietly: bash would otherwise report "Killed".
            { kill -9 "${LISTENER_PID[victim]}" && wait "${LISTENER_PID[victim]}"; } 2>/dev/null || true
            killed_at=$(echo "$(date +%s.%N) - $SEND_START" | bc -l)
            rx_at_kill=$(($(receiver_rx_bytes "$victim") - RX0))
            break
        fi
        sleep 0.05
    done
    finish_send
    first_rc=$SEND_RC
    first_s=$SEND_SECONDS
    for i in "${survivors[@]}"; do stop_listener "$i"; done
    others=$(copies_identical "$base/out" "${survivors[@]}")
    # Named: the dead receiver's endpoint id (or its first 10 characters, as
    # logs shorten it) or its ticket's start appears in what the send printed.
    if grep -qiF -e "${ENDPOINT[victim]}" -e "${ENDPOINT[victim]:0:10}" -e "${TICKET[victim]:0:24}" \
        "$base/send1.out" "$base/send1.err"; then
        named=yes
    fi

    # The rerun: the same listener back (same key, address, --out, so the
    # same ticket), and every listener up again, the others holding the file.
    for i in $(seq "$count"); do
        start_listener "$i" "$base/out$i" "$base/r$i-rerun"
    done
    start_send "$count" "$base/send2"
    finish_send
    for i in $(seq "$count"); do stop_listener "$i"; done
    local all
    all=$(copies_identical "$base/out" $(seq "$count"))

    out ""
    if [ "$killed_at" = - ]; then
        out "receiver $victim of $count was NOT killed: the send ended before a third had arrived at it"
    else
        out "$(printf 'kill -9 of receiver %d of %d at a third of the file (%.1f s in; %d MiB checked, %d MiB received by its machine):' \
            "$victim" "$count" "$killed_at" $((arrived >> 20)) $((rx_at_kill >> 20)))"
    fi
    out "$(printf '  send: exit %s after %.2f s; the other copies intact: %s; the dead receiver named in its output: %s' \
        "$first_rc" "$first_s" "$others" "$named")"
    out "$(printf '  rerun after restarting it: exit %s after %.2f s, sender sent %.2f copies; all %d copies identical: %s' \
        "$SEND_RC" "$SEND_SECONDS" "$(echo "$SEND_TX / $SOURCE_BYTES" | bc -l)" "$count" "$all")"
    log "  the send's last lines:"
    tail -n4 "$base/send1.err" | sed 's/^/    /' >&2
    if [ "$JSON" = 1 ]; then
        printf '{"case":"kill","receivers":%d,"killed":%d,"killed_after_seconds":%s,"arrived_bytes_at_kill":%d,"rx_bytes_at_kill":%d,"exit_code":%d,"seconds":%.3f,"others_identical":%s,"dead_named":%s,"rerun_exit_code":%d,"rerun_seconds":%.3f,"rerun_sender_uplink_copies":%.3f,"rerun_identical":%s}\n' \
            "$count" "$victim" "$( [ "$killed_at" = - ] && echo null || printf '%.3f' "$killed_at")" "$arrived" "$rx_at_kill" \
            "$first_rc" "$first_s" "$( [ "$others" = yes ] && echo true || echo false)" \
            "$( [ "$named" = yes ] && echo true || echo false)" "$SEND_RC" "$SEND_SECONDS" \
            "$(echo "$SEND_TX / $SOURCE_BYTES" | bc -l)" "$( [ "$all" = yes ] && echo true || echo false)"
    fi
    [ "$KEEP" = 1 ] || rm -rf "$base"/out*
}

# The file served by receivers 1 and 2 (each upload capped), pulled into the
# sender's namespace from receiver 1 alone, then from both at once.
sources_case() {
    local base=$WORK/sources count i rc seconds start ratio
    local -A took=() codes=() same=()
    for count in 1 2; do
        log "pull from $count source(s) ..."
        for i in $(seq "$count"); do
            start_listener "$i" "$base/in$i" "$base/s$count-r$i" --serve "$SOURCE"
        done
        local args=(pull --relay disabled --key "$WORK/keys/sender.key" --json)
        [ -z "$COMPRESS" ] || args+=(--compress "$COMPRESS")
        for i in $(seq "$count"); do args+=("${TICKET[i]}"); done
        args+=(--out "$base/pulled$count")
        start=$(date +%s.%N)
        rc=0
        timeout -s KILL $((SIZE_MIB * 1048576 * 5 / RATE_BPS + 60)) \
            ip netns exec "$SENDER_NS" "$BIN" "${args[@]}" \
            >"$base/pull$count.out" 2>"$base/pull$count.err" || rc=$?
        seconds=$(echo "$(date +%s.%N) - $start" | bc -l)
        for i in $(seq "$count"); do stop_listener "$i"; done
        [ "$rc" = 0 ] || { log "  pull exited $rc:"; tail -n3 "$base/pull$count.err" >&2; }
        took[$count]=$seconds
        codes[$count]=$rc
        same[$count]=no
        [ "$(digest "$base/pulled$count/$FILE_NAME" 2>/dev/null)" != "$SOURCE_DIGEST" ] || same[$count]=yes
        log "  $(printf '%.2f s, exit %s, identical %s' "$seconds" "$rc" "${same[$count]}")"
        [ "$KEEP" = 1 ] || rm -rf "$base/pulled$count"
    done
    ratio=$(echo "${took[1]} / ${took[2]}" | bc -l)
    out ""
    out "$(printf 'pull of the file from 1 source: %.2f s; from 2 at once: %.2f s (%.2fx faster); exits %s,%s; identical %s,%s' \
        "${took[1]}" "${took[2]}" "$ratio" "${codes[1]}" "${codes[2]}" "${same[1]}" "${same[2]}")"
    if [ "$JSON" = 1 ]; then
        printf '{"case":"sources","size_bytes":%d,"rate":"%s","one_source_seconds":%.3f,"two_sources_seconds":%.3f,"speedup":%.3f,"exit_codes":[%s,%s],"identical":%s}\n' \
            "$SOURCE_BYTES" "$RATE" "${took[1]}" "${took[2]}" "$ratio" "${codes[1]}" "${codes[2]}" \
            "$( [ "${same[1]}${same[2]}" = yesyes ] && echo true || echo false)"
    fi
}

# --- main --------------------------------------------------------------------

main() {
    local most=0 count
    for count in $RECEIVERS; do [ "$count" -le "$most" ] || most=$count; done
    [ "$KILL" = 0 ] || [ "$most" -ge 4 ] || most=4
    [ "$SOURCES" = 0 ] || [ "$most" -ge 2 ] || most=2
    [ "$most" -ge 1 ] || cannot "no receivers to send to"
    [ "$most" -le 200 ] || cannot "at most 200 receivers (one /24)"
    command -v bc >/dev/null || cannot "needs bc"
    command -v python3 >/dev/null || cannot "needs python3 (to write the .safetensors file)"

    WORK=$(mktemp -d /tmp/fanout.XXXXXX)
    make_star "$most"

    if [ -z "$BIN" ]; then
        log "building (cargo build --release) ..."
        cargo build --release --quiet
        BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/tensor-iroh
    fi
    BIN=$(realpath "$BIN")

    # One F32 tensor of random bits: nothing for --compress to shrink, so the
    # link sets the pace, and no two runs' files could be confused.
    SOURCE=$WORK/$FILE_NAME
    python3 - "$SOURCE" "$SIZE_MIB" <<'EOF_PY'
import json, struct, sys
import numpy as np
path, mib = sys.argv[1], int(sys.argv[2])
n = mib << 20
header = {"weight": {"dtype": "F32", "shape": [n // 4096, 1024], "data_offsets": [0, n]}}
text = json.dumps(header).encode()
text += b" " * (-len(text) % 8)
rng = np.random.default_rng()
with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text)
    for start in range(0, n, 16 << 20):
        f.write(rng.bytes(min(16 << 20, n - start)))
EOF_PY
    SOURCE_BYTES=$(stat -c %s "$SOURCE")
    SOURCE_DIGEST=$(digest "$SOURCE")

    mkdir -p "$WORK/keys"
    SENDER_ID=$("$BIN" id --key "$WORK/keys/sender.key")

    out "fan-out of a ${SIZE_MIB} MiB .safetensors, every upload capped at $RATE (tbf, burst $BURST B, 100 ms queue),"
    out "$("$BIN" --version), $(nproc) cores, $RUNS run(s) per case"
    [ -z "$RECEIVERS" ] || scaling
    [ "$KILL" = 0 ] || kill_case
    [ "$SOURCES" = 0 ] || sources_case
}

main "$@"
