#!/usr/bin/env bash
# grpc-transcode.sh: what transcoding costs. The same unary call (bench.Echo/Say, a 7-byte
# message) through Pylon (1 worker) two ways, side by side in one run, to the same gRPC
# upstream (pylon-loadgen grpc-echo, which answers each call with its own message):
#
#   grpc        h2load sends the call as gRPC (h2c): Pylon proxies it as it is
#   transcode   h2load POSTs {"text":"hello"} as JSON (h2c): grpc-transcode makes the call
#               and answers the reply as JSON
#
# For each run it prints the rate and Pylon's CPU time per request; then the medians over
# ROUNDS and the ratio transcode/grpc. The load generator and the upstream are pinned to
# CPU 0, Pylon to CPU 1.
#
# usage: bench/grpc-transcode.sh
# env:   DURATION (whole s, default 8), WARMUP (whole s, default 1), ROUNDS (default 3),
#        CONNS (default 50), STREAMS (default 10),
#        SKIP_BUILD=1 (use the release binaries already in CARGO_TARGET_DIR or target/),
#        PYLON, LOADGEN (binaries to use instead of those), KEEP=1 (leave the temp directory)
# needs: h2load (nghttp2-client), python3, curl, taskset
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${DURATION:-8} warm=${WARMUP:-1} rounds=${ROUNDS:-3} conns=${CONNS:-50} streams=${STREAMS:-10}
for t in h2load python3 curl taskset; do
  command -v $t >/dev/null || { echo "grpc-transcode: $t missing (apt-get install nghttp2-client curl)" >&2; exit 2; }
done
target=${CARGO_TARGET_DIR:-target}
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release -p pylon-cli -p pylon-loadgen
pylon=${PYLON:-$target/release/pylon} loadgen=${LOADGEN:-$target/release/pylon-loadgen}
ncpu=$(nproc); pin_load=0; pin_proxy=$(( ncpu > 1 ? 1 : 0 ))
tmp=$(mktemp -d); pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3
  if [[ -n ${KEEP:-} ]]; then echo "grpc-transcode: kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# The call as gRPC: an uncompressed frame of 7 bytes, `text` (field 1) = "hello".
printf '\x00\x00\x00\x00\x07\x0a\x05hello' > "$tmp/call.grpc"
printf '{"text":"hello"}' > "$tmp/call.json"
cat > "$tmp/routes.yaml" <<'YAML'
protos:
  - id: bench
    content: |
      syntax = "proto3";
      package bench;
      message Msg { string text = 1; }
      service Echo { rpc Say (Msg) returns (Msg); }
upstreams:
  - id: echo
    scheme: grpc
    nodes: {"127.0.0.1:1990": 1}
routes:
  - id: grpc
    uri: /bench.Echo/Say
    upstream_id: echo
  - id: transcode
    uri: /say
    upstream_id: echo
    plugins: {grpc-transcode: {proto_id: bench, service: bench.Echo, method: Say}}
YAML
sed "s#file: routes.yaml#file: $tmp/routes.yaml#" bench/pylon-node.yaml > "$tmp/node.yaml"
taskset -c $pin_load "$loadgen" grpc-echo 127.0.0.1:1990 > "$tmp/echo.log" 2>&1 & pids+=($!)
taskset -c $pin_proxy "$pylon" run -c "$tmp/node.yaml" > "$tmp/pylon.log" 2>&1 & pids+=($!); pylon_pid=$!
answer=""
for _ in $(seq 100); do
  answer=$(curl -fsS --http2-prior-knowledge -d @"$tmp/call.json" http://127.0.0.1:9080/say 2>/dev/null) && break
  sleep 0.1
done
[[ $answer == '{"text":"hello"}' ]] || { echo "grpc-transcode: /say answered '$answer'" >&2; cat "$tmp/pylon.log" >&2; exit 1; }

ticks() { local s=0 t l; for t in /proc/$1/task/*/stat; do l=$(cat "$t" 2>/dev/null) || continue; l=${l##*) }; read -ra a <<< "$l"; s=$((s + a[11] + a[12])); done; echo $s; }
run() { # name path body content-type
  local c0 c1 out
  c0=$(ticks "$pylon_pid")
  out=$(taskset -c $pin_load h2load -c"$conns" -m"$streams" -D"$dur" --warm-up-time="$warm" \
    -d "$3" -H "content-type: $4" -H "te: trailers" "http://127.0.0.1:9080$2")
  c1=$(ticks "$pylon_pid")
  python3 - "$1" "$out" "$((c1 - c0))" "$(getconf CLK_TCK)" <<'PY' | tee -a "$tmp/results"
import re, sys
name, out, ticks, tck = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
ok = int(re.search(r"status codes: (\d+) 2xx", out).group(1))
assert done > 0 and ok == done, out
print(f"{name}\t{rps:.0f}\t{ticks / tck * 1e6 / done:.2f}")
PY
}
echo -e "name\treq/s\tcpu_us/req"
for _ in $(seq "$rounds"); do
  run grpc /bench.Echo/Say "$tmp/call.grpc" application/grpc
  run transcode /say "$tmp/call.json" application/json
done
python3 - "$tmp/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rps, cpu = line.split("\t")
    rows.setdefault(name, []).append((float(rps), float(cpu)))
median = {n: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for n, v in rows.items()}
for name, (rps, cpu) in median.items():
    print(f"median {name}\t{rps:.0f} req/s\t{cpu:.2f} cpu_us/req")
(g, gc), (t, tc) = median["grpc"], median["transcode"]
print(f"transcode/grpc: {t / g:.2f}x the rate, {tc / gc:.2f}x the CPU per request")
PY
