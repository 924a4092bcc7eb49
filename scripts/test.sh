#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests.
# The store's tests run real etcd servers (`etcd` and `etcdctl` on the PATH): they are
# installed here with apt-get when missing (Debian's etcd-server and etcd-client). Other
# servers later tests need (Redis) will be installed the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server etcd-client
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
