#!/usr/bin/env bash
# cluster.sh: how soon a change written through the Admin API is served, in a cluster on etcd
# and on one node on the embedded store; and what a stream of changes costs the requests of a
# node that holds ROUTES (10,000) routes.
#
# Layout (2 cores): etcd (one member, its data in the run's temporary directory, on disk),
# node A (traditional: Admin API and proxy), nodes C and D (control_plane: Admin API only, for
# routes10k), the upstream (nginx on :1980) and the load (pylon-loadgen, wrk) share CPU 0;
# node B (data_plane: proxy only) has CPU 1 to itself. A, B and C follow the same etcd prefix;
# D another one, which B does not see.
# Every node: one worker, access log off, every listener on a free port. Before each round
# the configuration is put back as it was (one POST /pylon/admin/config with prune=true), so
# that the routes a round adds do not make the next one's configuration larger.
#
#   propagation  WRITES new routes PUT one after the other through A; for each, the time from
#                just before the PUT until B answers 200 for it instead of 404 (pylon-loadgen
#                propagation polls B back to back on one kept-alive connection), and the
#                PUT's own time
#   embedded     the same on node E alone, traditional on the embedded store, pinned to CPU 1:
#                it takes the writes and serves them
#   routes10k    ROUTES routes (bench/gen-routes.py, /hello one of them) applied through A in
#                one POST /pylon/admin/config, then:
#                - CHANGES new routes through A, served on B, as in propagation; the same
#                  through C (10k-propagation-cp), which compiles no snapshot of its own
#                - then, with A stopped (it would compile every change on the load's core
#                  and take from wrk and the upstream what the test is about B):
#                  wrk -t1 -cCONNS -dDURATION --latency on B's /hello
#                  quiet   nothing else
#                  churn   a stream of changes to one route through C, one every EVERY s for
#                          the whole wrk window (pylon-loadgen churn)
#                  unseen  the same stream through D, whose prefix (with ROUTES routes too) B
#                          does not follow: what the changes cost etcd, a control plane and the
#                          load's core, without B; churn against unseen is what B's share costs
#                  apply   `pylon config apply` of a document that changes APPLY routes (not
#                          /hello) through C, two seconds into the window: B serves it as one
#                          new version
#                  the order reverses from round to round
#
# Each measurement prints the load's figures, how many times the serving node published a new
# configuration meanwhile and the median time that took (its `configuration published ...
# publish_ms=` log lines), how busy the serving node's process was, and how many cores other
# processes on the machine took; then medians over ROUNDS.
#
# usage: bench/cluster.sh [TEST...]       (default: propagation embedded routes10k)
# env:   ROUTES (routes10k's route count, default 10000), APPLY (routes the apply changes,
#        default 10000, at most ROUTES - 1), ROUNDS (default 3),
#        WRITES (default 500), CHANGES (default 100), DEADLINE (s a write may
#        take to be served, default 5), DURATION (wrk's whole seconds, default 10), CONNS
#        (default 50), EVERY (s between changes during wrk, default 0.1),
#        SKIP_BUILD=1 (use the release binaries already in CARGO_TARGET_DIR or target/),
#        PYLON, LOADGEN (binaries to use instead of those),
#        KEEP=1 (leave the temporary directory: node configs, logs, etcd's data),
#        OTHERS_MAX (default 0.15), RETRIES (default 3): a measurement during which processes
#        not started here used more than OTHERS_MAX cores is run again, up to RETRIES times;
#        before each, up to QUIET_WAIT s (default 60) are spent waiting for a quiet second
# needs: etcd (3.4 or later), nginx, wrk, python3, curl, taskset
set -euo pipefail
cd "$(dirname "$0")/.."
routes=${ROUTES:-10000} apply=${APPLY:-10000} rounds=${ROUNDS:-3} writes=${WRITES:-500} changes=${CHANGES:-100} deadline=${DEADLINE:-5}
dur=${DURATION:-10} conns=${CONNS:-50} every=${EVERY:-0.1}
retries=${RETRIES:-3} others_max=${OTHERS_MAX:-0.15} quiet_wait=${QUIET_WAIT:-60}
tests=("$@"); [[ ${#tests[@]} -gt 0 ]] || tests=(propagation embedded routes10k)
target=${CARGO_TARGET_DIR:-target}
for t in etcd nginx wrk python3 curl taskset; do
  command -v $t >/dev/null || { echo "cluster: $t missing (apt-get install etcd-server nginx-light wrk curl)" >&2; exit 2; }
done
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release -p pylon-cli -p pylon-loadgen
pylon=${PYLON:-$target/release/pylon} loadgen=${LOADGEN:-$target/release/pylon-loadgen}
ncpu=$(nproc); pin_load=0; pin_proxy=$(( ncpu > 1 ? 1 : 0 ))
key=bench-key
tmp=$(mktemp -d); pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [[ -n ${KEEP:-} ]]; then echo "cluster: kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
die() { echo "cluster: $*" >&2; exit 1; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
etcd_client=$(free_port) etcd_peer=$(free_port)
# Large transactions allowed: the ROUTES routes are applied in one.
taskset -c $pin_load etcd --name bench --data-dir "$tmp/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "bench=http://127.0.0.1:$etcd_peer" \
  --max-txn-ops $((routes * 2 + 8)) --max-request-bytes $((64 << 20)) --logger zap --log-level warn > "$tmp/etcd.log" 2>&1 & pids+=($!)
sed "s#PREFIX#$tmp#g" bench/protocols-upstream-nginx.conf > "$tmp/upstream.conf"
taskset -c $pin_load nginx -c "$tmp/upstream.conf" -p "$tmp" & pids+=($!)
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$etcd_client/health" && break; sleep 0.1; done
curl -fs -o /dev/null "http://127.0.0.1:$etcd_client/health" || { tail -n 20 "$tmp/etcd.log" >&2; die "etcd did not start"; }
curl -fs -o /dev/null http://127.0.0.1:1980/hello || { sleep 0.5; curl -fsS -o /dev/null http://127.0.0.1:1980/hello || die "the upstream did not start"; }

declare -A proxy admin control node_pid
# start_node NAME CPU ROLE SOURCE [PREFIX]: pylon in $tmp/NAME, pinned to CPU, on etcd under
# PREFIX (default /pylon-bench) when SOURCE is etcd; fills in its addresses.
start_node() {
  local dir=$tmp/$1 etcd=""; mkdir -p "$dir"
  # config.etcd only on etcd: with another source it is an error.
  # The timeout leaves room for applying ROUTES routes in one transaction.
  [[ $4 != etcd ]] || etcd="  etcd: {endpoints: [\"http://127.0.0.1:$etcd_client\"], prefix: ${5:-/pylon-bench}, timeout: 30}"
  cat > "$dir/node.yaml" <<EOF
deployment: {role: $3}
proxy:
  listen: ["127.0.0.1:0"]
  workers: 1
  https: {listen: ["127.0.0.1:0"]}
access_log: {enabled: false}
control: {listen: "127.0.0.1:0"}
metrics: {listen: "127.0.0.1:0"}
admin:
  listen: "127.0.0.1:0"
  admin_key: [{name: admin, key: $key, role: admin}]
config:
  source: $4
  data_dir: data
$etcd
# Each new configuration logs how long compiling and publishing it took.
log: {level: "warn,pylon_proxy::publish=info"}
EOF
  taskset -c "$2" "$pylon" run -c "$dir/node.yaml" > "$dir/out" 2> "$dir/log" & pids+=($!)
  node_pid[$1]=$!
  for _ in $(seq 100); do
    grep -qs ' worker(s); ' "$dir/out" && break
    kill -0 "${node_pid[$1]}" 2>/dev/null || break
    sleep 0.1
  done
  grep -q ' worker(s); ' "$dir/out" || { cat "$dir/out" >&2; tail -n 20 "$dir/log" >&2; die "node $1 did not start"; }
  proxy[$1]=$(sed -n 's#^pylon: proxy listening on http://##p' "$dir/out" | head -1)
  admin[$1]=$(sed -n 's#^pylon: admin API listening on http://##p' "$dir/out" | head -1)
  control[$1]=$(sed -n 's#^pylon: control API listening on http://##p' "$dir/out" | head -1)
}
# admin_call NODE METHOD PATH CURL-ARGS...: the answer's body.
admin_call() {
  local body
  body=$(curl -sS --fail-with-body -X "$2" -H "X-API-KEY: $key" "http://${admin[$1]}$3" "${@:4}") ||
    die "$2 $3 on node $1 failed: $body"
  printf '%s\n' "$body"
}
json_field() { python3 -c "import json, sys; print(json.load(sys.stdin)$1)"; }
# wait_serving NODE REVISION: until NODE serves REVISION or a later one.
wait_serving() {
  local serving=0
  for _ in $(seq 600); do
    serving=$(curl -fs "http://${control[$1]}/v1/status" | json_field '["serving_revision"]') || serving=0
    (( serving >= $2 )) && return 0
    sleep 0.1
  done
  die "node $1 serves revision $serving, not $2"
}
# reset WRITER SERVER FILE: the configuration becomes FILE's, nothing else (prune), and SERVER
# serves it.
reset() {
  local revision
  revision=$(admin_call "$1" POST "/pylon/admin/config?dry_run=false&prune=true" \
    --data-binary @"$3" | json_field '["revision"]')
  wait_serving "$2" "$revision"
}
# The routes of propagation and embedded go to this upstream.
printf 'upstreams:\n  - id: bench\n    nodes:\n      "127.0.0.1:1980": 1\n' > "$tmp/base.yaml"

ticks() { # user+system ticks of process $1, with those of the children it has waited for
  local l; l=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  l=${l##*) }; read -ra a <<< "$l"; echo $((a[11] + a[12] + a[13] + a[14])); }
busy_ticks() { # non-idle ticks of all CPUs
  local cpu user nice system idle iowait irq softirq steal rest
  read -r cpu user nice system idle iowait irq softirq steal rest < /proc/stat
  echo $((user + nice + system + irq + softirq + steal)); }
ours_ticks() { # this script (with every load it has waited for), what it started, PIDs $@
  local s p c; s=$(ticks $$)
  for p in "${pids[@]}" "$@"; do for c in $p $(pgrep -P "$p"); do s=$((s + $(ticks "$c"))); done; done; echo $s; }
others_cores() { # cores other processes took since busy $1 and ours $2 were read, $3 µs ago
  python3 -c "print(max(0, ($(busy_ticks) - $1) - ($(ours_ticks "${@:4}") - $2)) / $(getconf CLK_TCK) / (($EPOCHREALTIME * 1e6 - $3) / 1e6))"; }
wait_quiet() { # up to QUIET_WAIT s for a second in which other processes stay under OTHERS_MAX
  local a0 o0 t0 i; for i in $(seq "$quiet_wait"); do
    a0=$(busy_ticks); o0=$(ours_ticks); t0=${EPOCHREALTIME/./}; sleep 1
    python3 -c "import sys; sys.exit(0 if $(others_cores "$a0" "$o0" "$t0") <= $others_max else 1)" && return 0
  done; return 0; }

results=$tmp/results; : > "$results"
# measure TEST NODE CMD...: runs the load CMD on CPU 0 while NODE serves; prints and records
# one line: TEST, the load's key=value figures, NODE's publications meanwhile and its CPU, and
# the cores other processes took. $also: PIDs started here for the measurement (not others).
measure() {
  local test=$1 node=$2; shift 2
  local log=$tmp/$node/log out=$tmp/load.out lines c0 a0 o0 t0 span
  lines=$(wc -l < "$log"); c0=$(ticks "${node_pid[$node]}")
  a0=$(busy_ticks); o0=$(ours_ticks ${also:-}); t0=${EPOCHREALTIME/./}
  taskset -c $pin_load "$@" > "$out" 2>&1 || { cat "$out" >&2; die "$test: the load failed"; }
  span=$(( ${EPOCHREALTIME/./} - t0 ))
  python3 - "$test" "$out" "$log" "$lines" "$(( $(ticks "${node_pid[$node]}") - c0 ))" \
    "$span" "$(getconf CLK_TCK)" "$(others_cores "$a0" "$o0" "$t0" ${also:-})" <<'PY' | tee -a "$results"
import re, statistics, sys
test, out, log, lines, node_ticks, span, tck, others = sys.argv[1:]
text = open(out).read()
figures = {}
if m := re.search(r"Requests/sec:\s+([\d.]+)", text):  # wrk
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    figures["rps"] = float(m.group(1))
    for q, v, u in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)$", text, re.M):
        figures[f"p{q}_ms"] = round(float(v) * unit[u], 3)
    if m := re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", text, re.M):
        figures["max_ms"] = round(float(m.group(1)) * unit[m.group(2)], 3)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    figures["non2xx"] = int(non2xx.group(1)) if non2xx else 0
else:  # pylon-loadgen: one line of key=value
    for k, v in re.findall(r"(\w+)=(\S+)", text):
        figures[k] = v
# The serving node's publications during the load, ANSI colours or not.
published = [re.sub(r"\x1b\[[0-9;]*m", "", l) for l in open(log).read().splitlines()[int(lines):]]
times = [float(m.group(1)) for l in published if "configuration published" in l
         for m in [re.search(r"publish_ms=([\d.]+)", l)] if m]
figures["publishes"] = len(times)
figures["publish_ms"] = round(statistics.median(times), 3) if times else "nan"
figures["node_busy"] = round(int(node_ticks) / int(tck) / (int(span) / 1e6), 2)
figures["others"] = round(float(others), 2)
print(test + "\t" + " ".join(f"{k}={v}" for k, v in figures.items()))
PY
}
# measured TEST NODE CMD...: measure, again while other processes took too much of the machine.
# `@TRY@` in CMD becomes the try's number (fresh route names for each try). With $alongside set
# to a command, it runs from half a second before the load, with the try's name as its last
# argument; the key=value line it prints is recorded as TEST-writes.
measured() {
  local try line cmd stream
  for try in $(seq $((retries + 1))); do
    wait_quiet
    cmd=("${@:3}"); cmd=("${cmd[@]//@TRY@/$try}")
    stream=""
    if [[ -n ${alongside:-} ]]; then
      $alongside "$1-$try" > "$tmp/alongside.out" 2>&1 & stream=$!
      sleep 0.5
    fi
    also=$stream measure "$1" "$2" "${cmd[@]}" > "$tmp/line"
    [[ -z $stream ]] || wait "$stream" || die "$1: $alongside failed: $(cat "$tmp/alongside.out")"
    line=$(cat "$tmp/line")
    if python3 -c "import sys; sys.exit(0 if ${line##*others=} <= $others_max else 1)" || (( try > retries )); then
      echo "$line"
      [[ -z $stream ]] || echo "$1-writes	$(cat "$tmp/alongside.out")" | tee -a "$results"
      return
    fi
    sed -i '$d' "$results"
    echo "$line	(disturbed: other processes took ${line##*others=} cores; again)"
  done
}
propagate() { # TEST WRITER SERVER COUNT ROUND
  measured "$1" "$3" "$loadgen" propagation "${admin[$2]}" "${proxy[$3]}" --key "$key" \
    --count "$4" --deadline "$deadline" --run "$1-$5-@TRY@"
}

want() { [[ " ${tests[*]} " == *" $1 "* ]]; }
if want propagation || want routes10k; then
  start_node a $pin_load traditional etcd
  start_node b $pin_proxy data_plane etcd
fi
want embedded && start_node e $pin_proxy traditional embedded
want routes10k && start_node c $pin_load control_plane etcd
want routes10k && start_node d $pin_load control_plane etcd /pylon-bench-unseen
echo "layout: CPU $pin_load: etcd, nodes A, C and D, upstream, load; CPU $pin_proxy: node B (node E when it serves)"
for r in $(seq "$rounds"); do
  if want propagation; then reset a b "$tmp/base.yaml"; propagate propagation a b "$writes" "$r"; fi
  if want embedded; then reset e e "$tmp/base.yaml"; propagate embedded e e "$writes" "$r"; fi
done
# The streams of changes measured alongside B's load.
churn_via() { # NODE RUN
  taskset -c $pin_load "$loadgen" churn "${admin[$1]}" --key "$key" --interval "$every" \
    --duration $((dur + 1)) --run "$2"
}
churn_seen() { churn_via c "$1"; }
churn_unseen() { churn_via d "$1"; }
# APPLY routes changed, through C, two seconds into the load (each apply adds another method
# to them than the last one did, so that it changes them all again); B's publications during
# the load are in the measurement's own line.
apply_all() {
  local applies method document output t0
  applies=$(cat "$tmp/applies" 2>/dev/null || echo 0); echo $((applies + 1)) > "$tmp/applies"
  method=$( (( applies % 2 )) && echo PATCH || echo PUT ) document=$tmp/routes10k-$method.yaml
  [[ -s $document ]] || python3 bench/gen-routes.py "$routes" |
    awk -v n="$apply" -v m="$method" '/^  - id: r/ { i++ } i <= n { sub(/methods: \[GET, POST\]/, "methods: [GET, POST, " m "]") } 1' > "$document"
  sleep 2; t0=${EPOCHREALTIME/./}
  output=$(taskset -c $pin_load "$pylon" config apply --admin "${admin[c]}" --api-key "$key" "$document")
  echo "changes=$(grep -c . <<< "$output") apply_ms=$(( (${EPOCHREALTIME/./} - t0) / 1000 ))"
}

if want routes10k; then
  python3 bench/gen-routes.py "$routes" > "$tmp/routes10k.yaml"
  # What propagation left goes first (its retries add routes): one transaction deleting them
  # and writing the ROUTES routes would pass etcd's --max-txn-ops.
  want propagation && reset a b "$tmp/base.yaml"
  for r in $(seq "$rounds"); do
    reset a b "$tmp/routes10k.yaml"
    propagate 10k-propagation a b "$changes" "$r"
    reset a b "$tmp/routes10k.yaml"
    propagate 10k-propagation-cp c b "$changes" "$r"
  done
  reset c b "$tmp/routes10k.yaml"
  admin_call d POST "/pylon/admin/config?dry_run=false&prune=true" --data-binary @"$tmp/routes10k.yaml" > /dev/null
  kill "${node_pid[a]}"; wait "${node_pid[a]}" 2>/dev/null || true
  curl -fsS -o /dev/null "http://${proxy[b]}/hello" || die "B does not serve /hello"
  wrk_b=(wrk -t1 -c"$conns" -d"${dur}s" --latency "http://${proxy[b]}/hello")
  order=(quiet churn unseen apply)
  for r in $(seq "$rounds"); do
    for m in "${order[@]}"; do
      case $m in
        quiet) measured 10k-wrk-quiet b "${wrk_b[@]}" ;;
        churn) alongside=churn_seen measured 10k-wrk-churn b "${wrk_b[@]}" ;;
        unseen) alongside=churn_unseen measured 10k-wrk-unseen b "${wrk_b[@]}" ;;
        apply) alongside=apply_all measured 10k-wrk-apply b "${wrk_b[@]}" ;;
      esac
    done
    order=("${order[3]}" "${order[2]}" "${order[1]}" "${order[0]}")
  done
fi

python3 - "$results" "$routes" <<'PY'
import re, statistics, sys
routes = f"{int(sys.argv[2]):,} routes"
rows = {}
for line in open(sys.argv[1]):
    test, figures = line.rstrip("\n").split("\t", 1)
    values = {}
    for k, v in re.findall(r"(\w+)=(\S+)", figures):
        try:
            values[k] = float(v)
        except ValueError:
            pass
    rows.setdefault(test, []).append(values)
def med(test, key):
    got = [r[key] for r in rows.get(test, []) if key in r]
    return statistics.median(got) if got else float("nan")
print(f"\nmedians over rounds (ms unless said):")
for test, label in [("propagation", "etcd, written on A, served on B"),
                    ("embedded", "embedded store, one node"),
                    ("10k-propagation", f"{routes}, etcd, A to B"),
                    ("10k-propagation-cp", f"{routes}, etcd, C to B")]:
    if test in rows:
        print(f"  {test:18s} delay p50 {med(test, 'delay_p50_ms'):8.2f} p99 {med(test, 'delay_p99_ms'):8.2f}"
              f" max {med(test, 'delay_max_ms'):8.2f}   PUT p50 {med(test, 'put_p50_ms'):7.2f}"
              f" p99 {med(test, 'put_p99_ms'):7.2f}   publish {med(test, 'publish_ms'):7.2f}"
              f"   missed {med(test, 'missed'):.0f}   ({label})")
for test in ("10k-wrk-quiet", "10k-wrk-churn", "10k-wrk-unseen", "10k-wrk-apply"):
    if test in rows:
        print(f"  {test:18s} req/s {med(test, 'rps'):9.0f}   p50 {med(test, 'p50_ms'):7.3f}"
              f" p99 {med(test, 'p99_ms'):7.3f} max {med(test, 'max_ms'):7.2f}   B busy {med(test, 'node_busy'):.2f}"
              f"   publishes {med(test, 'publishes'):.0f} at {med(test, 'publish_ms'):.2f}")
for during, base in [("churn", "quiet"), ("unseen", "quiet"), ("churn", "unseen"), ("apply", "quiet")]:
    c, q = f"10k-wrk-{during}", f"10k-wrk-{base}"
    if c in rows and q in rows:
        print(f"  {during + '/' + base:18s} p50 {med(c, 'p50_ms') / med(q, 'p50_ms'):.2f}"
              f"   p99 {med(c, 'p99_ms') / med(q, 'p99_ms'):.2f}   req/s {med(c, 'rps') / med(q, 'rps'):.2f}")
for t, via in [("10k-wrk-churn-writes", "C"), ("10k-wrk-unseen-writes", "D")]:
    if t in rows:
        print(f"  {t[8:]:18s} {med(t, 'writes'):.0f} per run through {via}, PUT p50 {med(t, 'put_p50_ms'):.2f}"
              f" p99 {med(t, 'put_p99_ms'):.2f}")
if "10k-wrk-apply-writes" in rows:
    t = "10k-wrk-apply-writes"
    print(f"  apply              {med(t, 'changes'):.0f} changes in one apply through C, {med(t, 'apply_ms'):.0f} ms")
PY
