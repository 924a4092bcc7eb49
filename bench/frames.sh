#!/usr/bin/env bash
# frames.sh: the framed-protocol gateway (a stream route with `protocol: pylon-frames`, the
# documented layout: 0x09, a 20-byte header, the body, 0x0A). Each frame of command 4097
# becomes POST /im/send through Pylon's HTTP pipeline to nginx on :1980, and its answer comes
# back as a frame. Pylon runs one worker on CPU 1; nginx and the load on CPU 0.
#
#   frames-1, frames-10, frames-100   pylon-loadgen frames: CONNS connections, each keeping
#                                     1, 10 or 100 frames in flight; answers/s
#   http1                             the same route asked over HTTP/1.1 (wrk, CONNS kept
#                                     connections): what the frames are measured against
#
# For each run it prints the rate and Pylon's CPU time per frame or request (over the whole
# run, warm-up included); then the medians over ROUNDS and each frames rate against http1.
#
# usage: bench/frames.sh
# env:   DURATION (whole s, default 8), WARMUP (whole s, default 1), ROUNDS (default 3),
#        CONNS (default 10), SIZE (body bytes, default 32),
#        SKIP_BUILD=1 (use the release binaries already in CARGO_TARGET_DIR or target/),
#        PYLON, LOADGEN (binaries to use instead of those), KEEP=1 (leave the temp directory)
# needs: nginx (nginx-light), wrk, python3, curl, taskset
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${DURATION:-8} warm=${WARMUP:-1} rounds=${ROUNDS:-3} conns=${CONNS:-10} size=${SIZE:-32}
for t in nginx wrk python3 curl taskset; do
  command -v $t >/dev/null || { echo "frames: $t missing (apt-get install nginx-light wrk curl)" >&2; exit 2; }
done
target=${CARGO_TARGET_DIR:-target}
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release -p pylon-cli -p pylon-loadgen
pylon=${PYLON:-$target/release/pylon} loadgen=${LOADGEN:-$target/release/pylon-loadgen}
ncpu=$(nproc); pin_load=0; pin_proxy=$(( ncpu > 1 ? 1 : 0 ))
tmp=$(mktemp -d); pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3
  if [[ -n ${KEEP:-} ]]; then echo "frames: kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

sed "s#PREFIX#$tmp#g" bench/protocols-upstream-nginx.conf > "$tmp/upstream.conf"
cat > "$tmp/node.yaml" <<YAML
proxy:
  listen: ["127.0.0.1:9080"]
  workers: 1
  https:
    listen: []
  stream:
    tcp:
      - addr: "127.0.0.1:9100"
access_log:
  enabled: false
log:
  level: warn
config:
  source: yaml
  file: $tmp/routes.yaml
YAML
cat > "$tmp/routes.yaml" <<'YAML'
routes:
  - id: im
    uri: /im/send
    upstream:
      nodes:
        "127.0.0.1:1980": 1
stream_routes:
  - id: frames
    protocol:
      name: pylon-frames
      conf:
        layout:
          start: "09"
          end: "0a"
          header_length: 20
          body_length: {offset: 0, width: 4}
          command: {offset: 4, width: 2}
          sequence: {offset: 6, width: 4}
          fields:
            version: {offset: 10, width: 1}
            flags: {offset: 11, width: 1}
            user_id: {offset: 12, width: 4}
        max_in_flight: 100
        commands:
          "4097": {uri: /im/send}
YAML
taskset -c $pin_load nginx -c "$tmp/upstream.conf" -p "$tmp" & pids+=($!)
taskset -c $pin_proxy "$pylon" run -c "$tmp/node.yaml" > "$tmp/pylon.log" 2>&1 & pids+=($!); pylon_pid=$!
for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:9080/im/send && break; sleep 0.1; done
probe=$(taskset -c $pin_load "$loadgen" frames 127.0.0.1:9100 --conns 1 --duration 1 --warmup 0 --size "$size")
[[ $probe == *"errors=0"* && $probe != *"done=0"* ]] || { echo "frames: the gateway does not answer frames: $probe" >&2; cat "$tmp/pylon.log" >&2; exit 1; }

ticks() { local s=0 t l; for t in /proc/$1/task/*/stat; do l=$(cat "$t" 2>/dev/null) || continue; l=${l##*) }; read -ra a <<< "$l"; s=$((s + a[11] + a[12])); done; echo $s; }
run() { # name command...
  local name=$1 c0 c1 out; shift
  c0=$(ticks "$pylon_pid")
  out=$(taskset -c $pin_load "$@" 2>&1)
  c1=$(ticks "$pylon_pid")
  python3 - "$name" "$out" "$((c1 - c0))" "$(getconf CLK_TCK)" "$dur" "$warm" <<'PY' | tee -a "$tmp/results"
import re, sys
name, out, ticks, tck, dur, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
    rate = float(m.group(1)); ops = rate * dur
    assert "Non-2xx" not in out, out
else:
    rate = float(re.search(r"rate=([\d.]+)", out).group(1))
    assert "errors=0" in out, out
    ops = rate * (dur + warm)
print(f"{name}\t{rate:.0f}\t{ticks / tck * 1e6 / ops:.2f}")
PY
}
echo -e "name\trate/s\tcpu_us/op"
for _ in $(seq "$rounds"); do
  run http1 wrk -t1 -c"$conns" -d"${dur}s" http://127.0.0.1:9080/im/send
  for k in 1 10 100; do
    run "frames-$k" "$loadgen" frames 127.0.0.1:9100 --conns "$conns" --inflight "$k" --size "$size" --duration "$dur" --warmup "$warm"
  done
done
python3 - "$tmp/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rate, cpu = line.split("\t")
    rows.setdefault(name, []).append((float(rate), float(cpu)))
median = {n: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for n, v in rows.items()}
http_rate, http_cpu = median["http1"]
for name, (rate, cpu) in median.items():
    print(f"median {name:10s} {rate:9.0f}/s {cpu:7.2f} cpu_us/op   rate {rate / http_rate:.2f}x http1, cpu {cpu / http_cpu:.2f}x")
PY
