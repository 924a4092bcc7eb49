#!/usr/bin/env bash
# The proxy benchmarks of BENCHMARKS.md: Pylon with one worker against nginx with one worker,
# the same load, side by side, in one run each (../shared/bench/proxy-bench); first with one
# route, then with 10,000 routes loaded.
# needs: nginx, wrk (apt-get install nginx-light wrk), python3
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${PROXY_BENCH:-../shared/bench/proxy-bench}
cargo build --release -p pylon-cli
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cp bench/pylon-node.yaml "$tmp/node.yaml"

echo "== one route (/* -> 127.0.0.1:1980)"
cp bench/routes.yaml "$tmp/routes.yaml"
"$bench" http://127.0.0.1:9080 -- ./target/release/pylon run -c "$tmp/node.yaml"

echo "== 10,000 routes (/hello is one exact route among them)"
python3 bench/gen-routes.py 10000 > "$tmp/routes.yaml"
"$bench" http://127.0.0.1:9080 -- ./target/release/pylon run -c "$tmp/node.yaml"
