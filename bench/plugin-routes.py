#!/usr/bin/env python3
"""The routes of the plugin benchmarks (bench/plugins.sh, bench/instructions.sh), as a
standalone configuration (JSON is YAML: a PEM key's newlines need no indentation games):

  bare   no plugins
  chain  key-auth + proxy-rewrite (a header from $consumer_name) + request-id + cors
  jwt    jwt-auth RS256, when the consumer's public key (a PEM file) is given
  waf    waf with its shipped rules (query, headers, cookies and up to 64 KB of body)
  mirror proxy-mirror copying every request, body and all, to the upstream itself
  limit  limit-count (policy local) by client address, with a count no run reaches
  limit-redis  the same count kept in Redis (policy redis, 127.0.0.1:6399), one key for all
  apisix APISIX's benchmark route: limit-count (policy local) + prometheus

usage: plugin-routes.py [PUBLIC_KEY_PEM] > routes.yaml
"""
import json
import sys

upstream = {"nodes": {"127.0.0.1:1980": 1}}
routes = [
    {"id": "bare", "uri": "/bare", "upstream": upstream},
    {"id": "chain", "uri": "/chain", "upstream": upstream, "plugins": {
        "key-auth": {},
        "proxy-rewrite": {"headers": {"set": {"X-Consumer": "$consumer_name"}}},
        "request-id": {},
        "cors": {},
    }},
    {"id": "waf", "uri": "/waf", "upstream": upstream, "plugins": {"waf": {}}},
    {"id": "mirror", "uri": "/mirror", "upstream": upstream, "plugins": {
        "proxy-mirror": {"host": "http://127.0.0.1:1980"},
    }},
    {"id": "limit", "uri": "/limit", "upstream": upstream, "plugins": {
        "limit-count": {"count": 1000000000, "time_window": 3600},
    }},
    {"id": "apisix", "uri": "/apisix", "upstream": upstream, "plugins": {
        "limit-count": {"count": 1000000000, "time_window": 3600},
        "prometheus": {},
    }},
    {"id": "limit-redis", "uri": "/limit-redis", "upstream": upstream, "plugins": {
        "limit-count": {"count": 1000000000, "time_window": 3600, "key_type": "constant",
                        "key": "bench", "policy": "redis", "redis_host": "127.0.0.1",
                        "redis_port": 6399},
    }},
]
consumer_plugins = {"key-auth": {"key": "bench-key"}}
if len(sys.argv) > 1:
    routes.append({"id": "jwt", "uri": "/jwt", "upstream": upstream, "plugins": {"jwt-auth": {}}})
    with open(sys.argv[1]) as key:
        consumer_plugins["jwt-auth"] = {
            "key": "bench-user", "algorithm": "RS256", "public_key": key.read(),
        }
print(json.dumps({
    "routes": routes,
    "consumers": [{"username": "bench-user", "plugins": consumer_plugins}],
}, indent=1))
