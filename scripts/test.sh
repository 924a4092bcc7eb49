#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests.
# The store's and discovery's tests run real etcd servers (`etcd` and `etcdctl` on the PATH),
# discovery's DNS tests a real dnsmasq, the Redis client's and rate limits' tests real Redis
# servers, a Redis Cluster and a Sentinel (`redis-server` and `redis-cli`), and the metrics
# tests check every scrape with `promtool` and have a real Prometheus scrape the gateway: they
# are installed here with apt-get when missing (Debian's etcd-server, etcd-client,
# dnsmasq-base, the binary without the system service the dnsmasq package would start,
# redis-server, and prometheus, which ships promtool).
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    missing+=(etcd-server etcd-client)
fi
if ! command -v dnsmasq >/dev/null && [ ! -x /usr/sbin/dnsmasq ]; then
    missing+=(dnsmasq-base)
fi
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    missing+=(redis-server)
fi
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    missing+=(prometheus)
fi
if [ ${#missing[@]} -gt 0 ]; then
    sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
