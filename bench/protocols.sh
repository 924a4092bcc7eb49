#!/usr/bin/env bash
# protocols.sh: TLS, HTTP/2 and WebSocket through Pylon (1 worker) and nginx (1 worker), the
# same load through each, side by side in one run, as ../shared/bench/proxy-bench does for
# HTTP/1.1. The load generators, the upstream (nginx on :1980) and the WebSocket echo (:1981)
# are pinned to CPU 0; each proxy to CPU 1. One ECDSA P-256 certificate, made here with
# openssl, is served by both.
#
#   tls13-full     TLS 1.3 handshakes/s: pylon-loadgen tls, HS_CONNS connections, each doing
#                  handshake + GET /hello (Connection: close) + close, no session reuse
#                  (the client offers suites in a browser's order: AES-128-GCM-SHA256 first)
#   tls13-resumed  the same, each connection resuming its task's previous session (ticket)
#   tls12-full     TLS 1.2 handshakes/s (ECDHE-ECDSA)
#   tls12-resumed  TLS 1.2 resumed by session id
#   https          requests/s over kept-alive TLS connections: wrk -t1 -cCONNS https://
#   h2             h2load -cCONNS -mSTREAMS over TLS (ALPN h2)
#   h2c            h2load -cCONNS -mSTREAMS, h2c with prior knowledge
#   tls13-full-aes256  (not run by default) tls13-full with AES-256-GCM-SHA384 first
#   ws             WebSocket echo messages/s: pylon-loadgen ws, CONNS connections, each sending
#                  a WS_SIZE-byte binary message and waiting for its echo; "direct" is the
#                  echo server without a proxy (the ceiling)
#   tcp            L4 proxy (stream route; nginx's stream module) echo messages/s: pylon-loadgen
#                  tcp, CONNS kept connections, each sending WS_SIZE bytes and waiting for
#                  them back from the TCP echo on :1982
#   tcp-conn       the same with a new connection per message (HS_CONNS at once): connections/s,
#                  and the proxy's CPU per connection
#
# For each run it prints the rate, the proxy's CPU time per operation, how busy its core was
# (a proxy at ~100 % is saturated, so its rate is what one core does), how busy the load
# generator's process and the whole load core were (near 1.0: the load side, not the proxy,
# set the rate; then compare CPU per operation), and how many cores other processes on the
# machine took meanwhile; then
# medians over ROUNDS and the ratios Pylon/nginx.
#
# usage: bench/protocols.sh [TEST...]      (default: all of the above; h2 and h2c are skipped,
#                                           with a note, while Pylon does not answer h2 there)
# env:   DURATION (whole s, default 8), WARMUP (whole s, default 1), ROUNDS (default 3), CONNS (default 50),
#        HS_CONNS (default 64), STREAMS (default 10), WS_SIZE (default 64),
#        SKIP_BUILD=1 (use the release binaries already in CARGO_TARGET_DIR or target/),
#        PYLON, LOADGEN (binaries to use instead of those),
#        KEEP=1 (leave the temporary directory, with the configs and logs),
#        OTHERS_MAX (default 0.15), RETRIES (default 3): a measurement during which processes
#        not started here used more than OTHERS_MAX cores is run again, up to RETRIES times;
#        before each, up to QUIET_WAIT s (default 60) are spent waiting for a quiet second
# needs: nginx with ssl and http2 (nginx-light) and its stream module (libnginx-mod-stream),
#        wrk, h2load (nghttp2-client), openssl, python3, curl, taskset
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${DURATION:-8} warm=${WARMUP:-1} rounds=${ROUNDS:-3} conns=${CONNS:-50}
hs_conns=${HS_CONNS:-64} streams=${STREAMS:-10} ws_size=${WS_SIZE:-64}
retries=${RETRIES:-3} others_max=${OTHERS_MAX:-0.15} quiet_wait=${QUIET_WAIT:-60}
tests=("$@"); [[ ${#tests[@]} -gt 0 ]] || tests=(tls13-full tls13-resumed tls12-full tls12-resumed https h2 h2c ws tcp tcp-conn)
target=${CARGO_TARGET_DIR:-target}
for t in nginx wrk h2load openssl python3 curl taskset; do
  command -v $t >/dev/null || { echo "protocols: $t missing (apt-get install nginx-light wrk nghttp2-client openssl curl)" >&2; exit 2; }
done
[[ -f /usr/lib/nginx/modules/ngx_stream_module.so ]] || { echo "protocols: nginx's stream module missing (apt-get install libnginx-mod-stream)" >&2; exit 2; }
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release -p pylon-cli -p pylon-loadgen
pylon=${PYLON:-$target/release/pylon} loadgen=${LOADGEN:-$target/release/pylon-loadgen}
ncpu=$(nproc); pin_load=0; pin_proxy=$(( ncpu > 1 ? 1 : 0 ))
tmp=$(mktemp -d); pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [[ -n ${KEEP:-} ]]; then echo "protocols: kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# One certificate for both servers.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
  -subj /CN=bench.test -addext "subjectAltName=DNS:bench.test,IP:127.0.0.1" \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
for f in protocols-upstream-nginx.conf protocols-nginx.conf; do sed "s#PREFIX#$tmp#g" "bench/$f" > "$tmp/$f"; done
cp bench/protocols-node.yaml "$tmp/node.yaml"
{
  printf 'routes:\n'
  printf '  - id: bench\n    uri: /*\n    upstream:\n      nodes:\n        "127.0.0.1:1980": 1\n'
  printf '  - id: ws\n    uri: /ws\n    enable_websocket: true\n    upstream:\n      nodes:\n        "127.0.0.1:1981": 1\n'
  printf 'stream_routes:\n  - id: tcp\n    upstream:\n      nodes:\n        "127.0.0.1:1982": 1\n'
  printf 'ssls:\n  - id: bench\n    snis: ["bench.test"]\n    cert: |\n'
  sed 's/^/      /' "$tmp/cert.pem"
  printf '    key: |\n'
  sed 's/^/      /' "$tmp/key.pem"
  printf '#END\n'
} > "$tmp/routes.yaml"

taskset -c $pin_load nginx -c "$tmp/protocols-upstream-nginx.conf" -p "$tmp" & pids+=($!)
taskset -c $pin_load "$loadgen" ws-echo 127.0.0.1:1981 2> "$tmp/echo.log" & pids+=($!)
taskset -c $pin_load "$loadgen" tcp-echo 127.0.0.1:1982 2> "$tmp/tcp-echo.log" & pids+=($!)
taskset -c $pin_proxy nginx -c "$tmp/protocols-nginx.conf" -p "$tmp" & pids+=($!); nginx_pid=$!
taskset -c $pin_proxy "$pylon" run -c "$tmp/node.yaml" > "$tmp/pylon.log" 2>&1 & pids+=($!); pylon_pid=$!
wait_up() { # curl arguments
  for _ in $(seq 100); do curl -fsk --http1.1 -o /dev/null "$@" && return 0; sleep 0.1; done
  echo "protocols: $* never answered 200" >&2; tail -n 20 "$tmp/pylon.log" "$tmp/peer.err" >&2; exit 1
}
wait_up http://127.0.0.1:1980/hello
wait_up https://127.0.0.1:9444/hello; wait_up https://127.0.0.1:9443/hello
wait_up http://127.0.0.1:9081/hello; wait_up http://127.0.0.1:9080/hello
nginx_worker=$(pgrep -P $nginx_pid | head -1)
# h2 and h2c are measured only where Pylon answers them.
speaks() { [[ $(curl -sk -o /dev/null -w '%{http_version} %{response_code}' --max-time 2 "$@") == "2 200" ]]; }
has_h2=1; speaks --http2 https://127.0.0.1:9443/hello || has_h2=""
has_h2c=1; speaks --http2-prior-knowledge http://127.0.0.1:9080/hello || has_h2c=""

cpu_ticks() { # user+system ticks of a process's threads
  local s=0 l t; for t in /proc/$1/task/*/stat; do l=$(cat "$t" 2>/dev/null) || continue; l=${l##*) }; read -ra a <<< "$l"; s=$((s + a[11] + a[12])); done; echo $s; }
busy_ticks() { # non-idle ticks of all CPUs, or with an argument of that CPU
  local cpu user nice system idle iowait irq softirq steal rest
  while read -r cpu user nice system idle iowait irq softirq steal rest; do
    [[ $cpu == cpu${1:-} ]] && { echo $((user + nice + system + irq + softirq + steal)); return; }
  done < /proc/stat; }
ours_ticks() { # ticks of every process this script started, and of the load PID $1
  local s=0 p c; for p in "${pids[@]}" $1; do for c in $p $(pgrep -P "$p"); do s=$((s + $(cpu_ticks "$c"))); done; done; echo $s; }
wait_quiet() { # up to QUIET_WAIT s for a second in which other processes stay under OTHERS_MAX
  local a0 o0 i; for i in $(seq "$quiet_wait"); do
    a0=$(busy_ticks); o0=$(ours_ticks ""); sleep 1
    python3 -c "import sys; sys.exit(0 if ($(busy_ticks) - $a0 - $(ours_ticks "") + $o0) / $(getconf CLK_TCK) <= $others_max else 1)" && return 0
  done; return 0; }
sleep_until() { # a time in µs since the epoch, as ${EPOCHREALTIME/./}
  local left=$(( $1 - ${EPOCHREALTIME/./} ))
  (( left > 0 )) && sleep "$(printf '%d.%06d' $((left / 1000000)) $((left % 1000000)))"; return 0; }
# measure TEST WHO PID-or-empty WARMUP COMMAND...: runs the load on CPU 0, reads the proxy's CPU
# ticks at the start and the end of the measured window, prints one result line.
measure() {
  local test=$1 who=$2 pid=$3 w=$4; shift 4
  local out=$tmp/out c0=0 c1=0 l0 l1 t0 t1
  local start=${EPOCHREALTIME/./}
  taskset -c $pin_load "$@" > "$out" 2>&1 & local load=$!
  # The CPU readings bracket the load's window, less 0.3 s at its end: the load exits then.
  sleep_until $((start + w * 1000000))
  t0=${EPOCHREALTIME/./}; [[ -n $pid ]] && c0=$(cpu_ticks "$pid"); l0=$(cpu_ticks $load)
  local all0 ours0 all1 ours1 z0 z1; all0=$(busy_ticks); ours0=$(ours_ticks $load); z0=$(busy_ticks $pin_load)
  sleep_until $((start + (w + dur) * 1000000 - 300000))
  t1=${EPOCHREALTIME/./}; [[ -n $pid ]] && c1=$(cpu_ticks "$pid"); l1=$(cpu_ticks $load)
  all1=$(busy_ticks); ours1=$(ours_ticks $load); z1=$(busy_ticks $pin_load)
  wait $load || { echo "protocols: $test/$who: load failed:" >&2; cat "$out" >&2; }
  python3 - "$test" "$who" "$c0" "$c1" "$l0" "$l1" "$(getconf CLK_TCK)" "$t0" "$t1" "$out" \
    $(( (all1 - all0) - (ours1 - ours0) )) $((z1 - z0)) <<'PY'
import re, sys
test, who, c0, c1, l0, l1, tck, t0, t1, path, others, core0 = sys.argv[1:]
c0, c1, l0, l1, tck, span = int(c0), int(c1), int(l0), int(l1), int(tck), (int(t1) - int(t0)) / 1e6
out = open(path).read()
extra = ""
if m := re.search(r"Requests/sec:\s+([\d.]+)", out):            # wrk
    rate = float(m.group(1))
    errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    extra = f"non2xx={errs.group(1) if errs else 0}" + (f" socket_errors={sock.group(1)}" if sock else "")
elif m := re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", out):  # h2load
    rate = float(m.group(1))
    st = re.search(r"requests: .*", out); codes = re.search(r"status codes: .*", out)
    extra = (st.group(0) if st else "") + "; " + (codes.group(0) if codes else "")
elif m := re.search(r"rate=([\d.]+)", out):                      # pylon-loadgen
    rate = float(m.group(1))
    extra = out.strip().splitlines()[-1].split(" ", 1)[1] if " " in out.strip() else ""
else:
    rate = float("nan"); extra = "unparsed: " + out.strip().replace("\n", " | ")[-200:]
busy = (c1 - c0) / tck / span if c1 > c0 else float("nan")
cpu = busy * 1e6 / rate if rate > 0 else float("nan")
others = max(0, int(others)) / tck / span
load = f"{(l1 - l0) / tck / span:.2f}/{int(core0) / tck / span:.2f}"
print(f"{test}\t{who}\t{rate:.0f}\t{cpu:.2f}\t{busy:.2f}\t{load}\t{others:.2f}\t{extra}")
PY
}
# load TEST TARGET (nginx|pylon|direct): the command line for one test against one target.
load() {
  local tls_addr http_addr h2c_url tcp_addr
  case $2 in
    nginx) tls_addr=127.0.0.1:9444 http_addr=127.0.0.1:9081 h2c_url=http://127.0.0.1:9083/hello tcp_addr=127.0.0.1:9101 ;;
    pylon) tls_addr=127.0.0.1:9443 http_addr=127.0.0.1:9080 h2c_url=http://127.0.0.1:9080/hello tcp_addr=127.0.0.1:9100 ;;
    direct) tls_addr="" http_addr=127.0.0.1:1981 h2c_url="" tcp_addr=127.0.0.1:1982 ;;
  esac
  local lg=("$loadgen" tls "$tls_addr" --sni bench.test --conns "$hs_conns" --duration "$dur" --warmup "$warm")
  case $1 in
    tls13-full) echo "$warm" "${lg[@]}" --tls 1.3 ;;
    tls13-full-aes256) echo "$warm" "${lg[@]}" --tls 1.3 --suites rustls ;;
    tls13-resumed) echo "$warm" "${lg[@]}" --tls 1.3 --resume ;;
    tls12-full) echo "$warm" "${lg[@]}" --tls 1.2 ;;
    tls12-resumed) echo "$warm" "${lg[@]}" --tls 1.2 --resume ;;
    https) echo 0 wrk -t1 -c"$conns" -d"${dur}s" "https://$tls_addr/hello" ;;
    h2) echo "$warm" h2load -t1 -c"$conns" -m"$streams" -D"$dur" --warm-up-time="$warm" "https://$tls_addr/hello" ;;
    h2c) echo "$warm" h2load -t1 -c"$conns" -m"$streams" -D"$dur" --warm-up-time="$warm" "$h2c_url" ;;
    ws) echo "$warm" "$loadgen" ws "$http_addr" --path /ws --conns "$conns" --size "$ws_size" --duration "$dur" --warmup "$warm" ;;
    tcp) echo "$warm" "$loadgen" tcp "$tcp_addr" --conns "$conns" --size "$ws_size" --duration "$dur" --warmup "$warm" ;;
    tcp-conn) echo "$warm" "$loadgen" tcp "$tcp_addr" --reconnect --conns "$hs_conns" --size "$ws_size" --duration "$dur" --warmup "$warm" ;;
  esac
}
results=$tmp/results; : > "$results"
echo -e "test\ttarget\trate/s\tcpu_us/op\tbusy\tload/cpu$pin_load\tothers\tdetails"
for r in $(seq "$rounds"); do
  for test in "${tests[@]}"; do
    case $test in
      h2) [[ -n $has_h2 ]] || { [[ $r == 1 ]] && echo "h2: skipped, Pylon does not answer h2 over TLS"; continue; } ;;
      h2c) [[ -n $has_h2c ]] || { [[ $r == 1 ]] && echo "h2c: skipped, Pylon does not answer h2c with prior knowledge"; continue; } ;;
    esac
    # Alternate which goes first, so a slow drift of the machine's load favours neither.
    order=(nginx pylon); (( r % 2 == 0 )) && order=(pylon nginx)
    [[ $test == ws || $test == tcp ]] && order=(direct "${order[@]}")
    for who in "${order[@]}"; do
      case $who in nginx) pid=$nginx_worker ;; pylon) pid=$pylon_pid ;; direct) pid="" ;; esac
      read -ra cmd <<< "$(load "$test" "$who")"
      for try in $(seq $((retries + 1))); do
        wait_quiet
        line=$(measure "$test" "$who" "$pid" "${cmd[@]}")
        others=$(cut -f7 <<< "$line")
        if python3 -c "import sys; sys.exit(0 if $others <= $others_max else 1)" || (( try > retries )); then
          echo "$line" | tee -a "$results"; break
        fi
        echo "$line	(disturbed: other processes used $others cores; again)"
      done
    done
  done
done
python3 - "$results" <<'PY'
import statistics as st, sys
rows = {}
for line in open(sys.argv[1]):
    test, who, rate, cpu, busy, *_ = line.rstrip("\n").split("\t")
    rows.setdefault(test, {}).setdefault(who, []).append((float(rate), float(cpu), float(busy)))
print("\nmedians over rounds (rate/s, proxy CPU µs per operation, proxy core busy):")
print(f"  {'test':17s} {'nginx':>9s} {'pylon':>9s} {'ratio':>6s}   {'cpu nginx':>9s} {'cpu pylon':>9s} {'ratio':>6s}   busy n/p")
for test, by in rows.items():
    med = {w: [st.median(c) for c in zip(*v)] for w, v in by.items()}
    n, p = med.get("nginx"), med.get("pylon")
    if not n or not p or not n[0] or not n[1] or n[1] != n[1]:
        print(f"  {test:17s} incomplete: {med}")
        continue
    direct = f"   (direct {med['direct'][0]:.0f})" if "direct" in med else ""
    print(f"  {test:17s} {n[0]:9.0f} {p[0]:9.0f} {p[0]/n[0]:6.3f}   {n[1]:9.2f} {p[1]:9.2f} {p[1]/n[1]:6.3f}   {n[2]:.2f}/{p[2]:.2f}{direct}")
PY
