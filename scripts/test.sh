#!/usr/bin/env bash
# The project's one test command (README, .ci/run): formatting, lints, then every test in release mode
# (the end-to-end tests run real models; unoptimised builds would crawl).
# Needs only a Rust toolchain: no Python, no GPU, no network beyond crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings

echo "== cargo test (release)"
cargo test --workspace --release
