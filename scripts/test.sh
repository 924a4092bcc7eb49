#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests.
# The tests need nothing but the Rust toolchain for now; servers that later tests need
# (etcd, Redis) are installed here with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
