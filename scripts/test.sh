#!/usr/bin/env bash
# The project's one test command (README, .ci/run): formatting, lints, library docs, every test in release mode
# (the end-to-end tests run real models; unoptimised builds would crawl), then the NEON kernels
# cross-built for aarch64 and tested under qemu-user.
# Needs a Rust toolchain (1.89+) and, for the aarch64 step, Debian 12 with apt: scripts/test-aarch64.sh
# installs the cross toolchain and qemu itself (~1.2 GB, once). No Python, no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings

echo "== cargo doc -D warnings (the library crates: broken or private intra-doc links)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -q -p pith-format -p pith-kernels -p pith-runtime -p pith-compress

echo "== cargo test (release)"
cargo test --workspace --release

# The end-to-end tests run the CPU's default path; run them on the other x86 paths as well (the
# issue asks fidelity on every path, and the paths choose their kernels differently: a
# thread-count rule once held on one only). NEON runs them under qemu below.
paths=(scalar)
if grep -qw avx512f /proc/cpuinfo && grep -qw avx2 /proc/cpuinfo; then paths+=(avx2); fi
for path in "${paths[@]}"; do
  echo "== the models and ops tests on the $path path"
  # (--workspace: the same features as the run above, so nothing is rebuilt)
  PITH_KERNEL=$path cargo test --workspace --release --test models --test ops
done

echo "== aarch64: NEON kernels cross-built and tested under qemu-user"
./scripts/test-aarch64.sh
