#!/usr/bin/env python3
"""Writes a standalone routes file with N routes for the router-scale benchmark.

Most routes are prefixes and parameter paths under distinct services, a third of them bound to
hosts; the benchmark path /hello is one exact route among them, defined last so that it is not
the first thing any structure would find. Every route goes to 127.0.0.1:1980.

With `prometheus` after N, every route has the prometheus plugin (bench/metrics-scrape.sh)."""
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
plugins = "\n    plugins: {prometheus: {}}" if sys.argv[2:] == ["prometheus"] else ""
print("upstreams:\n  - id: bench\n    nodes:\n      \"127.0.0.1:1980\": 1\nroutes:")
for i in range(n - 1):
    uri = f"/api/v{i % 3}/svc{i}/*" if i % 2 else f"/api/users/{i}/:id/profile"
    host = f"\n    hosts: [\"svc{i}.example.com\"]" if i % 3 == 0 else ""
    print(f"  - id: r{i}\n    uri: {uri}{host}\n    methods: [GET, POST]\n    upstream_id: bench{plugins}")
print(f"  - id: hello\n    uri: /hello\n    upstream_id: bench{plugins}\n#END")
