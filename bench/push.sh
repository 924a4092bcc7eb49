#!/usr/bin/env bash
# push.sh: the push gateway (a stream route with `protocol: pylon-push`) on a Redis this script
# starts, with devices from the simulator (pylon-devices). Pylon runs one worker on CPU 1; Redis,
# the devices and the load run on CPU 0.
#
#   memory     scripts/rss-per-connection.py: RSS per idle device at CONNECTIONS devices, over
#              plain TCP, WebSocket and TLS (the RSS script starts its own Pylon, with two
#              workers, and Redis)
#   broadcast  DEVICES devices connected; one message to all of them (`all: true`, the
#              broadcast rate high enough not to hold it): milliseconds from the POST to the
#              first and the last device's delivery, each of ROUNDS rounds
#   unicast    UNICAST_DEVICES devices connected; wrk posts messages to one device each
#              (round robin over the devices) for DURATION s with CONNS connections: pushes
#              accepted per second, pushes the devices received per second, Pylon's CPU per
#              push and the Redis commands per push (delivery and acknowledgement included)
#
# usage: bench/push.sh [memory] [broadcast] [unicast]     (default: all three)
# env:   CONNECTIONS (default 19000), DEVICES (default 10000), UNICAST_DEVICES (default 1000),
#        ROUNDS (default 3), DURATION (whole s, default 8), CONNS (default 20),
#        SKIP_BUILD=1 (use the release binaries in CARGO_TARGET_DIR or target/),
#        PYLON, DEVICES_BIN (binaries to use instead), KEEP=1 (leave the temp directory)
# needs: redis-server, wrk, curl, python3, openssl, taskset; `ulimit -n` above CONNECTIONS
set -euo pipefail
cd "$(dirname "$0")/.."
tests=("$@"); [[ ${#tests[@]} -gt 0 ]] || tests=(memory broadcast unicast)
connections=${CONNECTIONS:-19000} devices=${DEVICES:-10000} unicast_devices=${UNICAST_DEVICES:-1000}
rounds=${ROUNDS:-3} dur=${DURATION:-8} conns=${CONNS:-20}
for t in redis-server redis-cli wrk curl python3 openssl taskset; do
  command -v $t >/dev/null || { echo "push: $t missing (apt-get install redis-server wrk curl openssl)" >&2; exit 2; }
done
target=${CARGO_TARGET_DIR:-target}
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release -p pylon-cli -p pylon-devices
pylon=${PYLON:-$target/release/pylon} devices_bin=${DEVICES_BIN:-$target/release/pylon-devices}
ncpu=$(nproc); pin_load=0; pin_proxy=$(( ncpu > 1 ? 1 : 0 ))
tmp=$(mktemp -d); pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3
  if [[ -n ${KEEP:-} ]]; then echo "push: kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

wants() { [[ " ${tests[*]} " == *" $1 "* ]]; }

if wants memory; then
  for transport in tcp ws tls; do
    echo "== memory ($transport): $connections idle devices"
    python3 scripts/rss-per-connection.py "$pylon" "$connections" --push "$transport"
  done
fi

wants broadcast || wants unicast || exit 0

redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c $pin_load redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$tmp" >/dev/null 2>&1 &
pids+=($!)
cat > "$tmp/node.yaml" <<YAML
proxy:
  listen: ["127.0.0.1:0"]
  workers: 1
  max_connections_per_worker: 20000
  https:
    listen: []
  handoff_socket: ""
  stream:
    tcp:
      - addr: "127.0.0.1:0"
access_log:
  enabled: false
log:
  level: warn
config:
  source: yaml
  file: $tmp/routes.yaml
YAML
cat > "$tmp/routes.yaml" <<YAML
routes:
  - id: push
    uri: /push
    plugins:
      key-auth: {}
      device-push: {stream_route_id: devices}
consumers:
  - username: backend
    plugins: {key-auth: {key: push-key}}
  - username: phone
    plugins: {key-auth: {key: device-key}}
stream_routes:
  - id: devices
    plugins: {key-auth: {}}
    protocol:
      name: pylon-push
      conf:
        redis: {policy: redis, redis_host: 127.0.0.1, redis_port: $redis_port}
        delivery: {broadcast_rate: 1000000}
#END
YAML
taskset -c $pin_proxy "$pylon" run -c "$tmp/node.yaml" > "$tmp/pylon.out" 2>"$tmp/pylon.err" &
pids+=($!)
for _ in $(seq 100); do grep -q " worker(s); " "$tmp/pylon.out" 2>/dev/null && break; sleep 0.1; done
http=$(sed -n 's#^pylon: proxy listening on http://##p' "$tmp/pylon.out" | head -1)
stream=$(sed -n 's#^pylon: stream listening on tcp://##p' "$tmp/pylon.out" | head -1)
[[ -n $http && -n $stream ]] || { echo "push: pylon did not start" >&2; cat "$tmp/pylon.err" >&2; exit 1; }

post() {
  curl -s -o /dev/null -w '%{http_code}' "http://$http/push" -H 'apikey: push-key' \
    -H 'content-type: application/json' -d "$1"
}

if wants broadcast; then
  echo "== broadcast: one message to $devices devices"
  for round in $(seq "$rounds"); do
    id="bench-$round-$$"
    mkfifo "$tmp/go-$round"
    taskset -c $pin_load "$devices_bin" --addr "$stream" --app bcast --count "$devices" \
      --prefix "r$round-" --token device-key --expect-id "$id" --timeout-secs 60 \
      < "$tmp/go-$round" > "$tmp/broadcast-$round.out" 2>"$tmp/broadcast-$round.err" &
    devices_pid=$!
    exec 3>"$tmp/go-$round"
    for _ in $(seq 600); do grep -q '"connected"' "$tmp/broadcast-$round.out" && break; sleep 0.1; done
    head -1 "$tmp/broadcast-$round.out"
    echo go >&3
    status=$(post "{\"id\": \"$id\", \"app_id\": \"bcast\", \"all\": true, \"data\": {\"round\": $round}}")
    [[ $status == 202 ]] || { echo "push: the broadcast got $status" >&2; exit 1; }
    wait "$devices_pid" || true
    exec 3>&-
    tail -1 "$tmp/broadcast-$round.out"
  done
fi

if wants unicast; then
  echo "== unicast: messages to single devices of $unicast_devices, $conns connections, ${dur}s"
  cat > "$tmp/unicast.lua" <<LUA
local n = 0
wrk.method = "POST"
wrk.headers["apikey"] = "push-key"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  local body = string.format('{"app_id": "uni", "device_id": "u-%d", "data": {"n": %d}}', n % $unicast_devices, n)
  return wrk.format(nil, "/push", nil, body)
end
LUA
  taskset -c $pin_load "$devices_bin" --addr "$stream" --app uni --count "$unicast_devices" \
    --prefix u- --token device-key --count-pushes $(( dur + 4 )) > "$tmp/unicast.out" 2>"$tmp/unicast.err" &
  devices_pid=$!
  for _ in $(seq 300); do grep -q '"connected"' "$tmp/unicast.out" && break; sleep 0.1; done
  head -1 "$tmp/unicast.out"
  redis_commands() { redis-cli -p "$redis_port" info stats | sed -n 's/^total_commands_processed:\([0-9]*\).*/\1/p'; }
  cpu_before=$(awk '{print $14 + $15}' "/proc/${pids[1]}/stat") commands_before=$(redis_commands)
  taskset -c $pin_load wrk -t1 -c"$conns" -d"${dur}s" -s "$tmp/unicast.lua" "http://$http/push" \
    > "$tmp/wrk.out"
  cpu_after=$(awk '{print $14 + $15}' "/proc/${pids[1]}/stat") commands_after=$(redis_commands)
  grep -E "Requests/sec|Non-2xx|Latency" "$tmp/wrk.out"
  wait "$devices_pid" || true
  grep '"per_second"' "$tmp/unicast.out" || tail -3 "$tmp/unicast.out"
  pushes=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$tmp/wrk.out")
  ticks=$(getconf CLK_TCK)
  echo "pylon CPU over the run: $(( (cpu_after - cpu_before) * 1000 / ticks )) ms," \
    "$(( (cpu_after - cpu_before) * 1000000 / ticks / pushes )) us per push accepted;" \
    "Redis commands per push: $(python3 -c "print(f'{($commands_after - $commands_before) / $pushes:.2f}')")"
fi
