#!/usr/bin/env bash
# What plugins cost: the same load (../shared/bench/proxy-bench: wrk, one Pylon worker, beside
# nginx with one worker in the same run) on three routes of one Pylon:
#   bare    no plugins
#   chain   key-auth + proxy-rewrite (a templated header) + request-id + cors
#   jwt     jwt-auth with RS256, the same token on every request (verified once, then cached)
#   waf     waf with its shipped rules, on a GET with a browser's headers
#   limit   limit-count (policy local) by client address, with a count no run reaches
#   apisix  APISIX's benchmark scenario: limit-count (policy local) + prometheus, against
#           nginx (the goal: at most 1.15 times nginx's CPU per request)
#   limit-redis  the same count in Redis (policy redis; a redis-server on CPU 0, with the load),
#           and how many Redis calls each request cost (the script's calls over its count)
# Each run prints its ratios to nginx; the chain's, jwt's, waf's and limit's CPU per request
# over the bare route's is the figure BENCHMARKS.md quotes.
# Then a 16 KB form POST (bench/form-post.lua) to the bare, the waf and the mirror routes of
# one Pylon (one worker on CPU 1; wrk and an nginx upstream on CPU 0), ROUNDS times each,
# alternating: Pylon's CPU per request and wrk's median latency on each, and the waf's and the
# mirror's (which copies every request, body and all, to the same nginx) over the bare route's.
# needs: nginx, wrk (apt-get install nginx-light wrk), python3, openssl, redis-server
set -euo pipefail
cd "$(dirname "$0")/.."
bench=${PROXY_BENCH:-../shared/bench/proxy-bench}
cargo build --release -p pylon-cli
tmp=$(mktemp -d)
taskset -c 0 redis-server --port 6399 --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp" \
  > "$tmp/redis.log" 2>&1 & redis=$!
trap 'kill $redis 2>/dev/null; rm -rf "$tmp"' EXIT
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
run waf /waf ""
run limit /limit ""
run apisix /apisix ""
run limit-redis /limit-redis ""
redis_calls=$(redis-cli -p 6399 info commandstats | awk -F'[=,]' '/^cmdstat_eval(sha)?:/ {n += $2} END {print n + 0}')
redis_counted=$(redis-cli -p 6399 --scan --pattern 'pylon:limit-count:*' | xargs -r redis-cli -p 6399 get)

ratio() { sed -n 's/.*ratio subject\/nginx: .*cpu_per_req=\([0-9.]*\).*/\1/p' "$tmp/$1.out"; }

# The 16 KB form POST.
echo "== 16 KB form POST, bare and waf"
sed "s#PREFIX#$tmp#g" bench/protocols-upstream-nginx.conf > "$tmp/upstream.conf"
taskset -c 0 nginx -c "$tmp/upstream.conf" -p "$tmp" & upstream=$!
taskset -c 1 ./target/release/pylon run -c "$tmp/node.yaml" > "$tmp/pylon.out" 2>&1 & pylon=$!
trap 'kill $upstream $pylon $redis 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:9080/bare && break; sleep 0.1; done
ticks() { local s=0 t l; for t in /proc/$1/task/*/stat; do l=$(cat "$t"); l=${l##*) }; read -ra a <<< "$l"; s=$((s + a[11] + a[12])); done; echo $s; }
post() { # path: Pylon's CPU microseconds per request, and the median latency in ms
  local c0 c1 out
  c0=$(ticks "$pylon")
  out=$(taskset -c 0 wrk -t1 -c"${CONNS:-50}" -d"${DURATION:-8}s" --latency -s bench/form-post.lua "http://127.0.0.1:9080$1")
  c1=$(ticks "$pylon")
  python3 -c "
import re, sys
out = sys.argv[1]
n = int(re.search(r'(\d+) requests in', out).group(1))
assert not re.search(r'Non-2xx or 3xx responses', out), out
value, unit = re.search(r'50%\s+([\d.]+)(us|ms|s)', out).groups()
p50 = float(value) * {'us': 1e-3, 'ms': 1, 's': 1e3}[unit]
print(f'{($c1 - $c0) / $(getconf CLK_TCK) * 1e6 / n:.2f} {p50:.3f}')" "$out"
}
: > "$tmp/post"
for r in $(seq "${ROUNDS:-3}"); do
  line="round $r:"
  for route in bare waf mirror; do
    read -r cpu p50 <<< "$(post /$route)"
    line="$line $route $cpu us/req $p50 ms,"
  done
  echo "${line%,}" | tee -a "$tmp/post"
done
curl -fs http://127.0.0.1:9090/v1/status | python3 -c "import json, sys; print('proxy_mirror:', json.load(sys.stdin)['proxy_mirror'])"

python3 - "$(ratio bare)" "$(ratio chain)" "$(ratio jwt)" "$(ratio waf)" "$(ratio limit)" \
  "$(ratio limit-redis)" "$(ratio apisix)" "$redis_calls" "$redis_counted" "$tmp/post" <<'PY'
import re, statistics, sys
bare, chain, jwt, waf, limit, limit_redis, apisix = map(float, sys.argv[1:8])
redis_calls, redis_counted = int(sys.argv[8]), int(sys.argv[9])
rounds = [{route: (float(cpu), float(p50))
           for route, cpu, p50 in re.findall(r"(\w+) ([\d.]+) us/req ([\d.]+) ms", line)}
          for line in open(sys.argv[10])]
cpu = {route: statistics.median(r[route][0] for r in rounds) for route in rounds[0]}
p50 = {route: statistics.median(r[route][1] for r in rounds) for route in rounds[0]}
print(f"\ncpu per request over the bare route's (each against nginx in its own run):")
print(f"  chain (key-auth + proxy-rewrite + request-id + cors): {chain / bare:.3f}")
print(f"  jwt-auth RS256, repeated token:                      {jwt / bare:.3f}")
print(f"  waf, shipped rules, GET:                             {waf / bare:.3f}")
print(f"  limit-count, policy local:                           {limit / bare:.3f}")
print(f"  limit-count against nginx (its own run):             {limit:.3f}")
print(f"  limit-count + prometheus (APISIX's scenario):       {apisix / bare:.3f}"
      f" ({apisix:.3f} of nginx's in its run; goal at most 1.15)")
print(f"  limit-count, policy redis:                           {limit_redis / bare:.3f}"
      f" ({limit_redis:.3f} of nginx's in its run)")
print(f"  Redis calls per request (policy redis):              {redis_calls / redis_counted:.4f}"
      f" ({redis_calls} script calls, {redis_counted} requests counted)")
print("16 KB form POST, medians of the rounds:")
for route in cpu:
    print(f"  {route:6} {cpu[route]:7.2f} us/req ({cpu[route] / cpu['bare']:.3f} of bare),"
          f" median latency {p50[route]:.3f} ms")
PY
