#!/usr/bin/env bash
# How long a scrape of the metrics listener takes with ROUTES (10000) routes, every one with
# the prometheus plugin and requested once, so that each has its series: SCRAPES (5) scrapes
# with curl, each one's time, their median, and the size of the answer. Nothing listens on
# the routes' upstream: each request is a 502, counted as any other status.
# PYLON=path/to/pylon runs that binary instead of building a release one.
# needs: python3, curl
set -euo pipefail
cd "$(dirname "$0")/.."
routes=${ROUTES:-10000}
pylon=${PYLON:-./target/release/pylon}
[[ -n ${PYLON:-} ]] || cargo build --release -p pylon-cli
tmp=$(mktemp -d)
python3 bench/gen-routes.py "$routes" prometheus > "$tmp/routes.yaml"
cat > "$tmp/node.yaml" <<YAML
proxy: {listen: ["127.0.0.1:0"], workers: 1, https: {listen: []}, handoff_socket: ""}
access_log: {enabled: false}
control: {listen: "127.0.0.1:0"}
metrics: {listen: "127.0.0.1:0"}
log: {level: warn}
config: {source: yaml, file: routes.yaml}
YAML
"$pylon" run -c "$tmp/node.yaml" > "$tmp/out" 2> "$tmp/log" & pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 300); do grep -qs ' worker(s); ' "$tmp/out" && break; sleep 0.1; done
grep -q ' worker(s); ' "$tmp/out" || { cat "$tmp/out" "$tmp/log" >&2; exit 1; }
proxy=$(sed -n 's#^pylon: proxy listening on http://##p' "$tmp/out")
metrics=$(sed -n 's#^pylon: metrics listening on http://##p' "$tmp/out")

# One request to each route, on one keep-alive connection: the paths and hosts
# bench/gen-routes.py gives them.
python3 - "$proxy" "$routes" <<'PY'
import http.client, sys
host, port = sys.argv[1].rsplit(":", 1)
n = int(sys.argv[2])
conn = http.client.HTTPConnection(host, int(port))
for i in range(n - 1):
    path = f"/api/v{i % 3}/svc{i}/x" if i % 2 else f"/api/users/{i}/1/profile"
    headers = {"Host": f"svc{i}.example.com"} if i % 3 == 0 else {}
    conn.request("GET", path, headers=headers)
    conn.getresponse().read()
conn.request("GET", "/hello")
conn.getresponse().read()
PY

for _ in $(seq "${SCRAPES:-5}"); do
  curl -fso "$tmp/scrape" -w '%{time_total}\n' "http://$metrics"
done > "$tmp/times"
python3 - "$tmp/times" "$tmp/scrape" <<'PY'
import statistics, sys
times = [float(t) * 1e3 for t in open(sys.argv[1])]
text = open(sys.argv[2]).read()
series = sum(1 for line in text.splitlines() if line.startswith("apisix_http_status{"))
print("scrapes (ms):", " ".join(f"{t:.1f}" for t in times))
print(f"median {statistics.median(times):.1f} ms; {series} apisix_http_status series, {len(text)} bytes")
PY
