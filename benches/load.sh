#!/usr/bin/env bash
# The load benchmark: wikigate's cache-hit path against the ceiling (a bare hyper server answering
# the same body), against nginx proxy_cache and against HAProxy's cache, with wrk, on loopback; for a client that asks for
# gzip (as every HTTP library does; the upstream answers like Atlassian's edge) and for one that
# does not.
#
#   benches/load.sh            # about 16 minutes on 2 cores
#
# wikigate runs three times over: at the documented defaults (the access log on, one line per
# request, in the pretty format), with the access log in JSON, and with it off; nginx keeps a
# buffered access log (`buffer=64k flush=1s`), as its reference configuration would; HAProxy
# runs without a log (the comparison its issue asked for) and with its HTTP log to standard
# output (`log stdout`, as in a container). Logs go to files in the work directory.
#
# Each row gives the server's CPU per request (user + system time of its process, nginx's
# workers included, over the requests of the measured runs): what a hit costs the machine,
# whatever the core count.
#
# The rows of a table run in turn: RUNS rounds, each running every row once, so that a slow
# spell of the machine (it is a VM with neighbours) falls on every server alike.
#
# Environment: DURATION (seconds per run, 10), RUNS (runs per figure, median taken, 3),
# CONNECTIONS (64), MODES ("shared pinned"), KEEP=1 keeps the work directory.
#
# Every run is bounded (wrk -d, curl -m, timeouts on start-up) and everything started is stopped
# on exit. Installs wrk, nginx and HAProxy from Debian when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
CONNECTIONS=${CONNECTIONS:-64}
MODES=${MODES:-shared pinned}
EXPIRY_TTL=2
# TARGET (the current user with the expansions a profile shows: a 1.2 KB answer), AUTH.
source benches/load/lib.sh

install_missing wrk:wrk nginx:nginx-light haproxy:haproxy curl:curl taskset:util-linux
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

# Two builds, the binary last: built together with the example, the binary would get the
# dev-dependencies' features too (tokio's test-util: a mockable clock, a lock per clock read),
# which `cargo build --release` does not give it.
cargo build --release --quiet --example load_rig
cargo build --release --quiet --bin wikigate
BIN=target/release/wikigate
RIG=target/release/examples/load_rig

WORK=$(mktemp -d)
PIDS=()
stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}
cleanup() {
    stop_all
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

upstream_count() { curl -s -m 2 "http://127.0.0.1:$CONTROL_PORT/"; }

# The process serving each port (nginx: its master, whose workers are its children).
declare -A SERVER
# cpu_ticks PID: user + system time of PID and its children (nginx's workers), in clock ticks.
cpu_ticks() {
    local total=0 pid
    for pid in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# start_servers PIN TTL: the fake upstream, the bare server, wikigate and nginx, on the server
# core when PIN is set.
start_servers() {
    local pin=$1 ttl=$2 workers=2 run=()
    if [ -n "$pin" ]; then run=(taskset -c 0); workers=1; fi
    UPSTREAM_PORT=$(free_port) CONTROL_PORT=$(free_port) BARE_PORT=$(free_port) BARE_GZIP_PORT=$(free_port)
    GATE_PORT=$(free_port) ADMIN_PORT=$(free_port) CACHE_PORT=$(free_port) PASS_PORT=$(free_port)
    JSON_PORT=$(free_port) JSON_ADMIN_PORT=$(free_port) QUIET_PORT=$(free_port) QUIET_ADMIN_PORT=$(free_port)
    HAPROXY_PORT=$(free_port) HAPROXY_LOG_PORT=$(free_port)

    "${run[@]}" "$RIG" fake "127.0.0.1:$UPSTREAM_PORT" "127.0.0.1:$CONTROL_PORT" $SHAPE >"$WORK/fake.log" 2>&1 &
    PIDS+=($!)
    wait_for "http://127.0.0.1:$CONTROL_PORT/"
    curl -s -m 2 -H "Authorization: $AUTH" "http://127.0.0.1:$UPSTREAM_PORT$TARGET" >"$WORK/body.json"

    "${run[@]}" "$RIG" bare "127.0.0.1:$BARE_PORT" "$WORK/body.json" >"$WORK/bare.log" 2>&1 &
    PIDS+=($!) SERVER[$BARE_PORT]=$!
    "${run[@]}" "$RIG" bare "127.0.0.1:$BARE_GZIP_PORT" "$WORK/body.json" gzip >"$WORK/bare-gzip.log" 2>&1 &
    PIDS+=($!) SERVER[$BARE_GZIP_PORT]=$!

    write_config "$WORK/wikigate.toml" "$GATE_PORT" "$ADMIN_PORT" "$UPSTREAM_PORT" "$ttl"
    "${run[@]}" "$BIN" serve --config "$WORK/wikigate.toml" >"$WORK/wikigate.log" 2>&1 &
    PIDS+=($!) SERVER[$GATE_PORT]=$!
    write_config "$WORK/json.toml" "$JSON_PORT" "$JSON_ADMIN_PORT" "$UPSTREAM_PORT" "$ttl" info json
    "${run[@]}" "$BIN" serve --config "$WORK/json.toml" >"$WORK/wikigate-json.log" 2>&1 &
    PIDS+=($!) SERVER[$JSON_PORT]=$!
    write_config "$WORK/quiet.toml" "$QUIET_PORT" "$QUIET_ADMIN_PORT" "$UPSTREAM_PORT" "$ttl" warn
    "${run[@]}" "$BIN" serve --config "$WORK/quiet.toml" >"$WORK/wikigate-quiet.log" 2>&1 &
    PIDS+=($!) SERVER[$QUIET_PORT]=$!

    local user=""
    [ "$(id -u)" -eq 0 ] && user="user root root;"
    rm -rf "$WORK"/nginx-*
    sed -e "s|@USER@|$user|" -e "s|@WORKERS@|$workers|" -e "s|@DIR@|$WORK|g" \
        -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|" -e "s|@CACHE_PORT@|$CACHE_PORT|" \
        -e "s|@PASS_PORT@|$PASS_PORT|" -e "s|@TTL@|$ttl|" \
        benches/load/nginx.conf.in >"$WORK/nginx.conf"
    "${run[@]}" "$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 &
    PIDS+=($!) SERVER[$CACHE_PORT]=$! SERVER[$PASS_PORT]=$!

    local seconds=3600 name port log
    [ "$ttl" = 1h ] || seconds=${ttl%s}
    for name in haproxy haproxy-log; do
        port=$HAPROXY_PORT log=""
        [ "$name" = haproxy-log ] && port=$HAPROXY_LOG_PORT log='    log stdout format raw local0\n    option httplog'
        sed -e "s|@THREADS@|$workers|" -e "s|@HAPROXY_PORT@|$port|" -e "s|@LOG@|$log|" \
            -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|" -e "s|@TTL_SECONDS@|$seconds|g" \
            benches/load/haproxy.cfg.in >"$WORK/$name.cfg"
        "${run[@]}" "$HAPROXY" -db -f "$WORK/$name.cfg" >"$WORK/$name.log" 2>&1 &
        PIDS+=($!) SERVER[$port]=$!
    done

    for port in $BARE_PORT $BARE_GZIP_PORT $GATE_PORT $JSON_PORT $QUIET_PORT $CACHE_PORT $PASS_PORT $HAPROXY_PORT $HAPROXY_LOG_PORT; do
        wait_for "http://127.0.0.1:$port/"
    done
}

# load PIN PORT [wrk args…] → prints "req/s p50 p99 errors" for one run.
load() {
    local pin=$1 port=$2 run=() threads=2
    shift 2
    if [ -n "$pin" ]; then run=(taskset -c 1); threads=1; fi
    "${run[@]}" wrk -t"$threads" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 2s \
        -s benches/load/report.lua -H "Authorization: $AUTH" "$@" \
        "http://127.0.0.1:$port$TARGET" | awk '/^RESULT/ {print $2, $3, $4, $5}'
}

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }

# run_row PIN PORT ARGS: one run of a row (ARGS: the name of an array of wrk arguments).
run_row() {
    local -n wrk_args=$3
    load "$1" "$2" "${wrk_args[@]}"
}

# measure PIN ROW…: each ROW "name|port|args" (args: the name of an array of wrk arguments). A
# warm-up per row, then RUNS rounds in which every row runs once, in turn, so that a slow spell
# of the machine falls on every row alike rather than on one server's runs. Appends one line
# per row to $WORK/rows: the medians of req/s, p50 and p99, and over its measured runs the
# upstream requests made, errors, and the server's CPU per request.
measure() {
    local pin=$1
    shift
    local rows=("$@") i name port args
    local -a ticks=() upstream=() results=()
    for i in "${!rows[@]}"; do
        IFS='|' read -r name port args <<<"${rows[$i]}"
        DURATION=1 run_row "$pin" "$port" "$args" >/dev/null
        ticks[$i]=0 upstream[$i]=0 results[$i]=""
    done
    for _ in $(seq "$RUNS"); do
        for i in "${!rows[@]}"; do
            IFS='|' read -r name port args <<<"${rows[$i]}"
            local t0 u0 result
            t0=$(cpu_ticks "${SERVER[$port]}")
            u0=$(upstream_count)
            result=$(run_row "$pin" "$port" "$args")
            ticks[$i]=$((ticks[$i] + $(cpu_ticks "${SERVER[$port]}") - t0))
            upstream[$i]=$((upstream[$i] + $(upstream_count) - u0))
            results[$i]+="$result"$'\n'
        done
    done
    for i in "${!rows[@]}"; do
        IFS='|' read -r name port args <<<"${rows[$i]}"
        local runs=${results[$i]%$'\n'}
        # The server's CPU per request (µs): its time over the requests of the measured runs.
        local cpu
        cpu=$(awk -v t="${ticks[$i]}" -v us="$TICK_US" -v d="$DURATION" '{n += $1 * d} END {printf "%.2f", n ? t * us / n : 0}' <<<"$runs")
        local rps p50 p99 errors
        rps=$(cut -d' ' -f1 <<<"$runs" | median)
        p50=$(cut -d' ' -f2 <<<"$runs" | median)
        p99=$(cut -d' ' -f3 <<<"$runs" | median)
        errors=$(awk '{s += $4} END {print s}' <<<"$runs")
        echo "$name|$rps|$p50|$p99|${upstream[$i]}|$errors|$cpu" >>"$WORK/rows"
    done
}

# print_table TITLE: the rows measured since the last table; ratios against the first row.
print_table() {
    local title=$1
    echo
    echo "## $title — wrk -c$CONNECTIONS, ${DURATION}s × $RUNS (median; the rows' runs interleaved), GET $TARGET with Authorization"
    echo
    awk -F'|' '
        NR == 1 { base_rps = $2; base_p99 = $4 }
        { rows[NR] = $0 }
        END {
            printf "| %-32s | %9s | %6s | %8s | %8s | %9s | %8s | %6s | %12s |\n", "system", "req/s", "ratio", "p50 µs", "p99 µs", "p99 ratio", "upstream", "errors", "CPU µs/req"
            printf "|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n", "----------------------------------", "-----------", "--------", "----------", "----------", "-----------", "----------", "--------", "--------------"
            for (i = 1; i <= NR; i++) {
                split(rows[i], f, "|")
                printf "| %-32s | %9d | %6.2f | %8.0f | %8.0f | %9.2f | %8d | %6d | %12.2f |\n", f[1], f[2], f[2] / base_rps, f[3], f[4], f[4] / base_p99, f[5], f[6], f[7]
            }
        }' "$WORK/rows"
    : >"$WORK/rows"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "wikigate $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $("$NGINX" -v 2>&1), $("$HAPROXY" -v 2>&1 | head -1 | cut -d' ' -f1-3), $(wrk -v 2>&1 | head -1)"

GZIP=(-H "Accept-Encoding: gzip, deflate")
PLAIN=()
NO_STORE=(-H "Cache-Control: no-store")
for mode in $MODES; do
    pin=""; [ "$mode" = pinned ] && pin=1
    where="both cores shared (wrk 2 threads)"
    [ "$mode" = pinned ] && where="server pinned to core 0, wrk (1 thread) to core 1"
    start_servers "$pin" 1h
    : >"$WORK/rows"
    measure "$pin" \
        "bare hyper, gzip body (ceiling)|$BARE_GZIP_PORT|GZIP" \
        "wikigate hit, defaults (log on)|$GATE_PORT|GZIP" \
        "wikigate hit, JSON access log|$JSON_PORT|GZIP" \
        "wikigate hit, log off|$QUIET_PORT|GZIP" \
        "nginx proxy_cache hit (log)|$CACHE_PORT|GZIP" \
        "HAProxy cache hit (no log)|$HAPROXY_PORT|GZIP" \
        "HAProxy cache hit (log)|$HAPROXY_LOG_PORT|GZIP"
    print_table "gzip client, $where"
    measure "$pin" \
        "bare hyper, plain body (ceiling)|$BARE_PORT|PLAIN" \
        "wikigate hit, defaults (log on)|$GATE_PORT|PLAIN" \
        "wikigate hit, JSON access log|$JSON_PORT|PLAIN" \
        "wikigate hit, log off|$QUIET_PORT|PLAIN" \
        "nginx proxy_cache hit (log)|$CACHE_PORT|PLAIN" \
        "HAProxy cache hit (no log)|$HAPROXY_PORT|PLAIN" \
        "HAProxy cache hit (log)|$HAPROXY_LOG_PORT|PLAIN" \
        "wikigate miss (no-store), defaults|$GATE_PORT|NO_STORE" \
        "nginx pass-through|$PASS_PORT|PLAIN"
    print_table "plain client, $where"
    stop_all
done

# Expiry under load: the entry expires every EXPIRY_TTL seconds while 64 connections ask for
# it. Each expiry should cost one upstream request.
start_servers "" "${EXPIRY_TTL}s"
echo
echo "## expiry under load — TTL ${EXPIRY_TTL}s, wrk -c$CONNECTIONS for ${DURATION}s"
echo
echo "| system | upstream requests | expiries (at most) | per expiry |"
echo "|---|---|---|---|"
for entry in "wikigate:$GATE_PORT" "nginx proxy_cache (lock on):$CACHE_PORT" "HAProxy cache:$HAPROXY_PORT"; do
    name=${entry%:*} port=${entry##*:}
    curl -s -o /dev/null -m 2 -H "Authorization: $AUTH" "http://127.0.0.1:$port$TARGET"
    before=$(upstream_count)
    started=$(date +%s.%N)
    load "" "$port" >/dev/null
    upstream=$(($(upstream_count) - before))
    # The entry stored just before the run expires every EXPIRY_TTL seconds: a run of L
    # seconds spans at most floor(L / TTL) + 1 expiries.
    expiries=$(awk -v s="$started" -v e="$(date +%s.%N)" -v t="$EXPIRY_TTL" 'BEGIN {print int((e - s) / t) + 1}')
    echo "| $name | $upstream | $expiries | $(awk -v u="$upstream" -v n="$expiries" 'BEGIN {printf "%.1f", u / n}') |"
done
