# Shared by benches/load.sh and benches/callgrind.sh (sourced, from the repository root).

TARGET="/wiki/rest/api/user/current?expand=operations,personalSpace"
# SHAPE=plain makes the fake upstream answer plain JSON; by default it answers like Atlassian's
# edge (gzip when asked, the XSRF cookie, per-request ids).
SHAPE=${SHAPE:-}
# The first demo user of the fake site (src/fake/site.rs): alice@example.com with her API token.
AUTH="Basic $(printf '%s' 'alice@example.com:alice-api-token' | base64 -w0)"

# install_missing COMMAND:PACKAGE…: apt-installs the packages whose command is missing.
install_missing() {
    local need=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || need+=("${pair##*:}")
    done
    if [ ${#need[@]} -gt 0 ]; then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo=sudo
        $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}" >/dev/null
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for URL: until it answers at all (30 s at most: callgrind starts slowly).
wait_for() {
    for _ in $(seq 300); do
        curl -s -o /dev/null -m 2 -H "Authorization: $AUTH" "$1" && return 0
        sleep 0.1
    done
    echo "not answering: $1" >&2
    # What the servers said, to tell which one and why.
    tail -n 5 "${WORK:-/nonexistent}"/*.log >&2 2>/dev/null || true
    exit 1
}

# write_config FILE GATE_PORT ADMIN_PORT UPSTREAM_PORT TTL [LEVEL [FORMAT]]: wikigate's config
# for a run: the documented defaults (level info: one access-log line per request, pretty)
# unless told otherwise ("warn" turns the access log off).
write_config() {
    cat >"$1" <<CONFIG
[server]
listen = "127.0.0.1:$2"
[admin]
listen = "127.0.0.1:$3"
[upstream]
url = "http://127.0.0.1:$4"
[cache.routes]
current = { ttl = "$5" }
[log]
level = "${6:-info}"
format = "${7:-pretty}"
CONFIG
}
