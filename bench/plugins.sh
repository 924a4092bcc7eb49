#!/usr/bin/env bash
# What plugins cost: the same load (../shared/bench/proxy-bench: wrk, one Pylon worker, beside
# nginx with one worker in the same run) on three routes of one Pylon:
#   bare    no plugins
#   chain   key-auth + proxy-rewrite (a templated header) + request-id + cors
#   jwt     jwt-auth with RS256, the same token on every request (verified once, then cached)
# Each run prints its ratios to nginx; the chain's and jwt's CPU per request over the bare
# route's is the figure BENCHMARKS.md quotes.
# needs: nginx, wrk (apt-get install nginx-light wrk), python3, openssl
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${PROXY_BENCH:-../shared/bench/proxy-bench}
cargo build --release -p pylon-cli
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cp bench/pylon-node.yaml "$tmp/node.yaml"

# An RS256 key pair and one token for the consumer, valid for a day.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/key.pem" 2>/dev/null
openssl pkey -in "$tmp/key.pem" -pubout -out "$tmp/pub.pem"
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
header=$(printf '{"alg":"RS256","typ":"JWT"}' | b64url)
payload=$(printf '{"key":"bench-user","exp":%d}' $(( $(date +%s) + 86400 )) | b64url)
signature=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$tmp/key.pem" | b64url)
token="$header.$payload.$signature"

python3 bench/plugin-routes.py "$tmp/pub.pem" > "$tmp/routes.yaml"
./target/release/pylon validate "$tmp/routes.yaml"

run() { # name path header
  echo "== $1"
  PATH_=$2 HEADER=$3 "$bench" http://127.0.0.1:9080 -- ./target/release/pylon run -c "$tmp/node.yaml" | tee "$tmp/$1.out"
}
run bare /bare ""
run chain /chain "apikey: bench-key"
run jwt /jwt "Authorization: Bearer $token"

ratio() { sed -n 's/.*ratio subject\/nginx: .*cpu_per_req=\([0-9.]*\).*/\1/p' "$tmp/$1.out"; }
python3 - "$(ratio bare)" "$(ratio chain)" "$(ratio jwt)" <<'PY'
import sys
bare, chain, jwt = map(float, sys.argv[1:])
print(f"\ncpu per request over the bare route's (each against nginx in its own run):")
print(f"  chain (key-auth + proxy-rewrite + request-id + cors): {chain / bare:.3f}")
print(f"  jwt-auth RS256, repeated token:                      {jwt / bare:.3f}")
PY
