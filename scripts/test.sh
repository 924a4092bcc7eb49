#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests.
# The store's and discovery's tests run real etcd servers (`etcd` and `etcdctl` on the PATH),
# and discovery's DNS tests a real dnsmasq: they are installed here with apt-get when missing
# (Debian's etcd-server, etcd-client and dnsmasq-base, the binary without the system service
# the dnsmasq package would start). The metrics tests check every scrape with `promtool` and
# have a real Prometheus scrape the gateway (Debian's prometheus, which ships both). Other
# servers later tests need (Redis) will be installed the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    missing+=(etcd-server etcd-client)
fi
if ! command -v dnsmasq >/dev/null && [ ! -x /usr/sbin/dnsmasq ]; then
    missing+=(dnsmasq-base)
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
