#!/usr/bin/env bash
# The test command: installs the Python packages the interop tests load files
# with, then runs every test against a release build (the one `bench` uses),
# and closes with one line counting all tests.
#
# Tests that need root (network namespaces, tc, a tmpfs mount) are
# `#[ignore = "needs root: ..."]`: they run here too where this machine can
# make namespaces, shape their links and mount a tmpfs, and are otherwise
# listed as skipped, with the reason, before the closing line.
#
# Arguments go to `cargo test`; those after `--` go to the test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check numpy safetensors ml_dtypes 2>&1 \
    | grep -v "Running pip as the 'root' user" || true

# Why the tests that need root cannot run here; nothing if they can.
root_tests_blocked() {
    if [ "$(id -u)" != 0 ]; then
        echo "not root"
        return
    fi
    local tool
    for tool in ip tc mount umount; do
        if ! command -v "$tool" >/dev/null; then
            echo "\`$tool\` is not installed"
            return
        fi
    done
    local ns="ti-probe-$$" error
    if ! error=$(ip netns add "$ns" 2>&1); then
        echo "\`ip netns add\` fails: $error"
        return
    fi
    if ! error=$(ip -n "$ns" link add tiprobe0 type veth peer name tiprobe1 2>&1); then
        echo "a veth pair cannot be made: $error"
    elif ! error=$(tc -n "$ns" qdisc add dev tiprobe0 root tbf rate 1mbit burst 4096 latency 10ms 2>&1); then
        echo "\`tc\` cannot shape a link: $error"
    fi
    ip netns del "$ns"
    local dir
    dir=$(mktemp -d)
    if ! error=$(mount -t tmpfs -o size=1m tmpfs "$dir" 2>&1); then
        echo "a tmpfs cannot be mounted: $error"
    else
        umount "$dir"
    fi
    rmdir "$dir"
}

cargo_args=()
test_args=()
after_dashes=0
for arg in "$@"; do
    if [ "$after_dashes" = 0 ] && [ "$arg" = "--" ]; then
        after_dashes=1
    elif [ "$after_dashes" = 0 ]; then
        cargo_args+=("$arg")
    else
        test_args+=("$arg")
    fi
done

blocked=$(root_tests_blocked | head -n 1)
if [ -z "$blocked" ]; then
    case " ${test_args[*]-} " in
        *" --ignored "* | *" --include-ignored "*) ;;
        *) test_args+=(--include-ignored) ;;
    esac
    echo "running the tests that need root too: namespaces, tc and tmpfs work here"
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --no-fail-fast ${cargo_args[@]+"${cargo_args[@]}"} \
    -- ${test_args[@]+"${test_args[@]}"} 2>&1 | tee "$log" || status=$?

# Every ignored test, under its reason, with the file it is in.
skipped=$(awk '
    /^ *Running / { file = $2 }
    / \.\.\. ignored/ {
        reason = $0
        sub(/.* \.\.\. ignored,? ?/, "", reason)
        if (reason == "") reason = "no reason given"
        names[reason] = names[reason] "\n    " file ": " $2
        count[reason]++
    }
    END { for (r in count) printf "%d skipped: %s%s\n", count[r], r, names[r] }
' "$log")
if [ -n "$skipped" ]; then
    echo
    if [ -n "$blocked" ]; then
        echo "skipped tests (the ones needing root cannot run here: $blocked):"
    else
        echo "skipped tests:"
    fi
    echo "$skipped"
fi
awk '/^test result:/ { passed += $4; failed += $6; ignored += $8 }
     END { printf "%d passed, %d failed, %d ignored\n", passed, failed, ignored }' "$log"
exit "$status"
