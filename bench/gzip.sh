#!/usr/bin/env bash
# gzip.sh: the cost of compressing a 100 KB JSON response, Pylon's `gzip` plugin against
# nginx's gzip at the same level, side by side in one run. An nginx upstream serves the file
# (bench/data/items.json, made by this script) on CPU 0 with wrk; nginx (one worker, gzip on,
# gzip_comp_level LEVEL) and Pylon (one worker, gzip with comp_level LEVEL) each proxy it on
# CPU 1; wrk asks for gzip. For each: requests/s and the proxy's CPU microseconds per request;
# then Pylon's over nginx's. Medians over ROUNDS.
# usage: bench/gzip.sh   env: LEVEL (default 1), PYLON_LEVEL (Pylon's, default LEVEL: encoders
#                              differ in what a level trades), ROUNDS (3), DURATION (8 s),
#                              CONNS (50), SKIP_BUILD=1
# needs: nginx, wrk, python3, curl, taskset
set -euo pipefail
cd "$(dirname "$0")/.."
level=${LEVEL:-1} pylon_level=${PYLON_LEVEL:-${LEVEL:-1}} rounds=${ROUNDS:-3} dur=${DURATION:-8} conns=${CONNS:-50}
for t in nginx wrk python3 curl taskset; do
  command -v $t >/dev/null || { echo "gzip: $t missing (apt-get install nginx-light wrk curl)" >&2; exit 2; }
done
[[ -n ${SKIP_BUILD:-} ]] || cargo build --release -p pylon-cli
pylon=${CARGO_TARGET_DIR:-target}/release/pylon
tmp=$(mktemp -d); pids=()
chmod 755 "$tmp"  # nginx's workers, not root, read the file
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$tmp"; }
trap cleanup EXIT

# About 100 KB of JSON, as an API would send: records with ids, names, prices and tags.
python3 - "$tmp/items.json" <<'PY'
import json, sys
items = [{"id": i, "name": f"item {i}", "sku": f"SKU-{i * 7919 % 100000:05d}", "price": round(i * 1.37, 2),
          "tags": ["sale", "new"] if i % 3 == 0 else ["stock"], "in_stock": i % 5 != 0}
         for i in range(915)]
open(sys.argv[1], "w").write(json.dumps({"items": items, "total": len(items)}))
PY
cat > "$tmp/upstream.conf" <<NGINX
worker_processes 1; daemon off; pid $tmp/upstream.pid; error_log $tmp/upstream.err warn;
events { worker_connections 16384; }
http {
  access_log off; types { application/json json; }
  server {
    listen 127.0.0.1:1980 reuseport backlog=4096; keepalive_requests 10000000;
    location / { root $tmp; try_files /items.json =404; default_type application/json; }
  }
}
NGINX
cat > "$tmp/proxy.conf" <<NGINX
worker_processes 1; daemon off; pid $tmp/proxy.pid; error_log $tmp/proxy.err warn;
events { worker_connections 16384; }
http {
  access_log off;
  upstream up { server 127.0.0.1:1980; keepalive 320; keepalive_requests 10000000; }
  server {
    listen 127.0.0.1:9081 reuseport backlog=4096; keepalive_requests 10000000;
    gzip on; gzip_comp_level $level; gzip_types application/json; gzip_min_length 20;
    gzip_proxied any; gzip_http_version 1.1;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
cat > "$tmp/routes.yaml" <<YAML
routes:
  - id: items
    uri: /*
    upstream: {nodes: {"127.0.0.1:1980": 1}}
    plugins: {gzip: {types: [application/json], comp_level: $pylon_level}}
YAML
sed "s#file: routes.yaml#file: $tmp/routes.yaml#" bench/pylon-node.yaml > "$tmp/node.yaml"
taskset -c 0 nginx -c "$tmp/upstream.conf" -p "$tmp" & pids+=($!)
taskset -c 1 nginx -c "$tmp/proxy.conf" -p "$tmp" & pids+=($!)
taskset -c 1 "$pylon" run -c "$tmp/node.yaml" > "$tmp/pylon.log" 2>&1 & pids+=($!); pylon_pid=$!
for url in http://127.0.0.1:1980/ http://127.0.0.1:9081/ http://127.0.0.1:9080/; do
  for _ in $(seq 100); do curl -fs -o /dev/null "$url" && break; sleep 0.1; done
  encoding=$(curl -fsS -o /dev/null -H "Accept-Encoding: gzip" -w '%header{content-encoding}' "$url")
  [[ $url == *1980* || $encoding == gzip ]] || { echo "gzip: $url did not compress" >&2; exit 1; }
done
sizes=$(for p in 9081 9080; do curl -fsS -H "Accept-Encoding: gzip" "http://127.0.0.1:$p/" | wc -c; done | tr '\n' ' ')
echo "body: $(wc -c < "$tmp/items.json") bytes; gzipped by nginx and Pylon: $sizes bytes"

ticks() { local s=0 p t l; for p in "$@"; do for t in /proc/$p/task/*/stat; do l=$(cat "$t" 2>/dev/null) || continue; l=${l##*) }; read -ra a <<< "$l"; s=$((s + a[11] + a[12])); done; done; echo $s; }
run() { # name port pids...
  local c0 c1 out
  c0=$(ticks "${@:3}")
  out=$(taskset -c 0 wrk -t1 -c"$conns" -d"${dur}s" -H "Accept-Encoding: gzip" "http://127.0.0.1:$2/")
  c1=$(ticks "${@:3}")
  python3 - "$1" "$out" "$((c1 - c0))" "$(getconf CLK_TCK)" <<'PY' | tee -a "$tmp/results"
import re, sys
name, out, ticks, tck = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
assert "Non-2xx" not in out, out
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
n = int(re.search(r"(\d+) requests in", out).group(1))
print(f"{name}\t{rps:.0f}\t{ticks / tck * 1e6 / n:.2f}")
PY
}
echo -e "name\treq/s\tcpu_us/req"
nginx_worker=$(pgrep -P "${pids[1]}" | head -1)
for _ in $(seq "$rounds"); do
  run nginx 9081 "$nginx_worker"
  run pylon 9080 "$pylon_pid"
done
python3 - "$tmp/results" "$level" "$pylon_level" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rps, cpu = line.split("\t")
    rows.setdefault(name, []).append((float(rps), float(cpu)))
med = {k: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v)) for k, v in rows.items()}
for k, (rps, cpu) in med.items():
    print(f"  {k:6s} req/s={rps:.0f} cpu/req={cpu:.1f}us")
print(f"gzip level {sys.argv[2]} (Pylon's {sys.argv[3]}), pylon/nginx: cpu_per_req={med['pylon'][1] / med['nginx'][1]:.3f}"
      f" throughput={med['pylon'][0] / med['nginx'][0]:.3f}")
PY
