#!/usr/bin/env bash
# Instructions per request, counted by callgrind: a figure that does not move with the noise
# of a shared machine, for comparing two builds or a route with and without plugins. One
# Pylon worker serves the bare, the chain and the waf routes of bench/plugin-routes.py (key-auth +
# proxy-rewrite + request-id + cors; waf with its shipped rules); one keep-alive client sends 500, then 2,500 requests
# to each, and the difference of the two counts over 2,000 is the figure (start-up cancels
# out).
# Counts user-space instructions only: the kernel's share of a request (most of its CPU
# time, see BENCHMARKS.md) is not in them.
#
# usage: bench/instructions.sh [BINARY...]   (default: ./target/release/pylon, built first)
# env:   ROUTES (default "bare chain waf"; any route of bench/plugin-routes.py, e.g. apisix)
# needs: valgrind, nginx (apt-get install valgrind nginx-light), python3, curl
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -eq 0 ]]; then
    cargo build --release -p pylon-cli
    set -- ./target/release/pylon
fi
for t in valgrind nginx python3 curl; do
    command -v $t >/dev/null || { echo "instructions.sh: $t missing" >&2; exit 2; }
done
tmp=$(mktemp -d)
upstream=""
cleanup() { [[ -n $upstream ]] && kill "$upstream" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
sed "s#PREFIX#$tmp#g" bench/protocols-upstream-nginx.conf > "$tmp/upstream.conf"
nginx -c "$tmp/upstream.conf" -p "$tmp" & upstream=$!
cp bench/pylon-node.yaml "$tmp/node.yaml"
python3 bench/plugin-routes.py > "$tmp/routes.yaml"

count() { # binary path header requests -> instructions of the whole run
    local out=$tmp/callgrind.out
    valgrind --tool=callgrind --callgrind-out-file="$out" "$1" run -c "$tmp/node.yaml" \
        > "$tmp/pylon.log" 2>&1 &
    local pid=$!
    for _ in $(seq 300); do
        curl -fs -o /dev/null -H "$3" "http://127.0.0.1:9080$2" && break
        sleep 0.2
    done
    python3 - "$2" "$3" "$4" <<'PY'
import http.client, sys
path, header, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
name, value = header.split(":", 1)
conn = http.client.HTTPConnection("127.0.0.1", 9080)
for _ in range(n):
    conn.request("GET", path, headers={name.strip(): value.strip()})
    response = conn.getresponse()
    response.read()
    assert response.status == 200, response.status
PY
    kill -INT "$pid"
    wait "$pid" || true
    sed -n 's/^summary: //p' "$out"*
    rm -f "$out"*
}

printf '%-40s %-6s %s\n' binary route instructions/request
for binary in "$@"; do
    for route in ${ROUTES:-bare chain waf}; do
        header="apikey: bench-key"
        few=$(count "$binary" "/$route" "$header" 500)
        many=$(count "$binary" "/$route" "$header" 2500)
        printf '%-40s %-6s %d\n' "$binary" "$route" $(( (many - few) / 2000 ))
    done
done
