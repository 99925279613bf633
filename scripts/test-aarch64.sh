#!/usr/bin/env bash
# Cross-builds pith-kernels for aarch64 and runs its tests under qemu-user, so the NEON kernel path
# (kernels/src/arch/neon/) is tested on an x86-64 Debian 12 machine with no Arm hardware; then the
# runtime's tests and the models' end-to-end tests against onnxruntime's goldens on the same path.
#
# rustup here ships only the x86-64 std; the aarch64 std comes from Debian's rustc-web packages, so
# this step builds with Debian's /usr/bin/rustc (a separate target dir keeps host builds intact).
# The tests run twice: under qemu's default CPU ("max": NEON + dotprod + i8mm) and under
# QEMU_CPU=cortex-a53 (NEON without dotprod), covering both sides of every feature check.
#
# Installs what it needs (apt, ~1.2 GB, idempotent). Env: CARGO_TARGET_DIR_AARCH64 overrides the
# target dir (default target/aarch64). Pitfalls: the runner must be plain `qemu-aarch64` (with
# `-L /usr/aarch64-linux-gnu` every threaded test hangs); rustup's rustc cannot find the arm64 core.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
t0=$SECONDS
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo

need_update=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $SUDO dpkg --add-architecture arm64
  need_update=1
fi
pkgs=(rustc-web cargo-web libstd-rust-web-dev libstd-rust-web-dev:arm64 libc6:arm64
      gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user rust-web-clippy)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
elif [ "$need_update" = 1 ]; then
  $SUDO apt-get update -q
fi

export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_AARCH64:-target/aarch64}"
echo "aarch64 cross: $($RUSTC -V), runner $(qemu-aarch64 --version | head -1), target dir $CARGO_TARGET_DIR"

# The test that prints which kernel paths `Isa::available()` offers (the whole-kernel tests run
# under each of them) and whether the CPU has dotprod.
PATHS_TEST=arch::neon::tests::reports_available_paths
log=$(mktemp)
trap 'rm -f "$log"' EXIT

t1=$SECONDS
echo "-- clippy (aarch64, -D warnings)"
/usr/bin/cargo-clippy clippy --release --target "$TARGET" -p pith-kernels --all-targets -- -D warnings

run() {
  echo "-- cargo test under qemu cpu: $1"
  cargo test --release --target "$TARGET" -p pith-kernels 2>&1 | tee "$log"
  local passed
  passed=$(grep -o '[0-9]* passed' "$log" | awk '{s += $1} END {print s + 0}')
  local paths
  paths=$(cargo test --release --target "$TARGET" -p pith-kernels --lib -q -- --exact "$PATHS_TEST" \
    --nocapture 2>&1 | grep '^kernel paths')
  summary+=("$1: $passed tests passed; $paths")
}

# The spine's end-to-end tests on the NEON path: the runtime's own tests, every op case, bad
# input, and both bundled models against onnxruntime's goldens (f32 weights within float
# tolerance; with the full CPU also 8-bit weights and int8 activations keeping the faces and the
# text boxes, and the same bits at 1-4 threads in f32 and int8). The compression tests and the 8-bit cosine / 4-bit report tests stay on x86: under
# qemu their k-means takes minutes. Further arguments go to the bad-input test binary (the
# second CPU skips its two mutation sweeps, about 150 s of each pass under qemu: they run f32
# sessions, whose NEON kernels are the same with or without dotprod, and the first CPU runs them).
run_end_to_end() {
  local cpu=$1 models_filter=$2
  shift 2
  echo "-- end-to-end tests under qemu cpu: $cpu"
  : > "$log"
  cargo test --release --target "$TARGET" -p pith-runtime 2>&1 | tee -a "$log"
  cargo test --release --target "$TARGET" -p pith-tests --test ops 2>&1 | tee -a "$log"
  cargo test --release --target "$TARGET" -p pith-tests --test bad_input -- "$@" 2>&1 | tee -a "$log"
  # shellcheck disable=SC2086 # the filter is several test-name patterns
  cargo test --release --target "$TARGET" -p pith-tests --test models -- $models_filter 2>&1 | tee -a "$log"
  local passed
  passed=$(grep -o '[0-9]* passed' "$log" | awk '{s += $1} END {print s + 0}')
  summary+=("$cpu: $passed end-to-end tests passed (runtime, ops, bad input, models: $models_filter)")
}

summary=()
run "max (neon, dotprod, i8mm)"
QEMU_CPU=cortex-a53 run "cortex-a53 (neon, no dotprod)"
run_end_to_end "max (neon, dotprod, i8mm)" "f32_matches 8bit_finds int8_activations same_bits_on_any_thread_count"
# Steady runs allocate nothing on the NEON path either (f32 and int8 kernels; the f32 ones are
# the same on both CPUs): the detectors and every op case (the other bundled models take minutes
# under qemu; PP-OCRv4 det with f16 biases again tests the runtime's work, the same on x86).
echo "-- allocation tests under qemu cpu: max"
cargo test --release --target "$TARGET" -p pith-tests --test allocations -- \
  --skip other_bundled_models --skip f16_biases 2>&1 | tee "$log"
summary+=("max (neon): $(grep -o '[0-9]* passed' "$log" | awk '{s += $1} END {print s + 0}') allocation tests passed")
QEMU_CPU=cortex-a53 run_end_to_end "cortex-a53 (neon, no dotprod)" "f32_matches" \
  --skip mutated_op_models --skip resealed_mutated_pith_files

# `pith compress --reproducible` promises the same bytes on every machine: compress BlazeFace on
# two of its calibration images under qemu and natively, and compare; once with the width search
# and task check, once at 4 bits with a few fine-tuning steps.
reproducible() {
  local label=$1
  shift
  echo "-- compress --reproducible $label: aarch64 (qemu) against this host"
  local dir
  dir=$(mktemp -d)
  mkdir "$dir/calib"
  cp tests/data/calib/blazeface/grace.png tests/data/calib/blazeface/camera.png "$dir/calib/"
  local args=(compress tests/data/models/blazeface_short_range.onnx "$@"
              --calib "$dir/calib" --preprocess blazeface --reproducible)
  "$native" "${args[@]}" -o "$dir/native.pith" > /dev/null
  qemu-aarch64 "$CARGO_TARGET_DIR/$TARGET/release/pith" "${args[@]}" -o "$dir/aarch64.pith" > /dev/null
  if cmp -s "$dir/native.pith" "$dir/aarch64.pith"; then
    summary+=("compress --reproducible $label: the same $(stat -c %s "$dir/native.pith") bytes on aarch64 and $(uname -m)")
    rm -rf "$dir"
  else
    echo "compress --reproducible $label wrote different files on aarch64 and $(uname -m): $dir" >&2
    exit 1
  fi
}
native=target/release/pith
(unset RUSTC RUSTDOC CARGO_TARGET_DIR; cargo build --release -q -p pith-cli)
cargo build --release --target "$TARGET" -p pith-cli
reproducible "(width search)" --bits auto --min-fidelity 0.99
reproducible "(fine-tuned)" --bits 4 --finetune 5

# What the runtime adds to an app: the smallest embedding (runtime/examples/run_model.rs), built
# for aarch64 in release and stripped, run under qemu on a 4-bit BlazeFace.
echo "-- an app embedding the runtime: aarch64 size, one run under qemu"
cargo build --release --target "$TARGET" -p pith-runtime --example run_model
app=$(mktemp -d)
aarch64-linux-gnu-strip -o "$app/run_model" "$CARGO_TARGET_DIR/$TARGET/release/examples/run_model"
"$native" compress tests/data/models/blazeface_short_range.onnx --bits 4 -o "$app/face.pith" > /dev/null
qemu-aarch64 "$app/run_model" "$app/face.pith" | tee "$app/out"
grep -qx 'regressors: \[1, 896, 16\]' "$app/out"
summary+=("an app embedding the runtime (runtime/examples/run_model.rs, release, stripped): $(stat -c %s "$app/run_model") bytes on aarch64")
rm -rf "$app"
echo "== aarch64 summary: $((SECONDS - t0)) s in all ($((t1 - t0)) s install check, $((SECONDS - t1)) s build + clippy + tests)"
printf '  %s\n' "${summary[@]}"
