#!/usr/bin/env bash
# Instructions per request on the cache-hit path, counted by callgrind: wikigate against the
# bare hyper server of benches/load.sh. Instruction counts do not drift with machine noise the
# way req/s does, so this is the number to watch when changing the hot path.
#
#   benches/callgrind.sh            # about 2 minutes; REQUESTS_FOR=10 (seconds of load)
#   CLIENT=gzip benches/callgrind.sh   # a client that asks for gzip (the bare server sends gzip)
#   LEVEL=warn benches/callgrind.sh    # the access log off (default: info, the documented default)
#
# Prints user-space instructions per request for each server and writes the callgrind profiles
# (target/callgrind.{bare,wikigate}.out) for callgrind_annotate. Kernel time (the syscalls that
# dominate the bare server) is not counted.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS_FOR=${REQUESTS_FOR:-10}
ACCEPT=()
BARE_CODING=()
if [ "${CLIENT:-plain}" = gzip ]; then
    ACCEPT=(-H "Accept-Encoding: gzip, deflate")
    BARE_CODING=(gzip)
fi
source benches/load/lib.sh
install_missing wrk:wrk valgrind:valgrind curl:curl

# Two builds, the binary last: built together with the example, the binary would get the
# dev-dependencies' features too (tokio's test-util: a mockable clock, a lock per clock read),
# which `cargo build --release` does not give it.
cargo build --profile profiling --quiet --example load_rig
cargo build --profile profiling --quiet --bin wikigate
BIN=target/profiling/wikigate
RIG=target/profiling/examples/load_rig

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

UPSTREAM_PORT=$(free_port) CONTROL_PORT=$(free_port) BARE_PORT=$(free_port)
GATE_PORT=$(free_port) ADMIN_PORT=$(free_port)
"$RIG" fake "127.0.0.1:$UPSTREAM_PORT" "127.0.0.1:$CONTROL_PORT" $SHAPE >/dev/null 2>&1 &
PIDS+=($!)
wait_for "http://127.0.0.1:$CONTROL_PORT/"
curl -s -m 2 -H "Authorization: $AUTH" "http://127.0.0.1:$UPSTREAM_PORT$TARGET" >"$WORK/body.json"
write_config "$WORK/wikigate.toml" "$GATE_PORT" "$ADMIN_PORT" "$UPSTREAM_PORT" 1h "${LEVEL:-info}"

# count NAME PORT COMMAND…: runs COMMAND under callgrind, zeroes the counters after a warm-up,
# loads it for REQUESTS_FOR seconds, and prints instructions per request.
count() {
    local name=$1 port=$2
    shift 2
    local out="target/callgrind.$name.out"
    rm -f "$out"*
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$WORK/$name.log" 2>&1 &
    local pid=$!
    PIDS+=($pid)
    # Not the measured target: its entry is stored by the measured client, in the coding that
    # client asks for (a plain request first would store identity, and serve gzip clients
    # identity from then on).
    wait_for "http://127.0.0.1:$port/"
    wrk -t1 -c4 -d2s -H "Authorization: $AUTH" "${ACCEPT[@]}" "http://127.0.0.1:$port$TARGET" >/dev/null
    callgrind_control --zero "$pid" >/dev/null 2>&1
    local requests
    requests=$(wrk -t1 -c4 -d"${REQUESTS_FOR}s" -H "Authorization: $AUTH" "${ACCEPT[@]}" "http://127.0.0.1:$port$TARGET" |
        awk '/requests in/ {print $1}')
    callgrind_control --dump "$pid" >/dev/null 2>&1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local instructions
    instructions=$(cat "$out".* | awk '/^summary:/ {s += $2} END {print s}')
    printf '%-10s %8d requests  %10.0f instructions per request\n' \
        "$name" "$requests" "$(awk -v i="$instructions" -v r="$requests" 'BEGIN {print i / r}')"
}

count bare "$BARE_PORT" "$RIG" bare "127.0.0.1:$BARE_PORT" "$WORK/body.json" "${BARE_CODING[@]}"
count wikigate "$GATE_PORT" "$BIN" serve --config "$WORK/wikigate.toml"
echo "profiles: target/callgrind.{bare,wikigate}.out.* (callgrind_annotate --inclusive=yes FILE)"
