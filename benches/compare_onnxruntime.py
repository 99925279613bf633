#!/usr/bin/env python3
"""Pith against onnxruntime (and LiteRT, MNN when installed) on the same model, input shape and threads.

Usage, from the repository root after `cargo build --release -p pith-cli`:

    python3 benches/compare_onnxruntime.py blazeface --bits 4 --threads 1
    python3 benches/compare_onnxruntime.py ppocr --bits f32 --threads 2 --rounds 7 --iters 10
    python3 benches/compare_onnxruntime.py blazeface --tflite other_build.tflite
    python3 benches/compare_onnxruntime.py --onnx mobilenetv2.onnx --input input=1x3x224x224
    python3 benches/compare_onnxruntime.py blazeface --int8 --threads 2
    python3 benches/compare_onnxruntime.py --onnx mobilenetv2.onnx --input input=1x3x224x224 --bf16

Arguments:
    model           blazeface (1x3x128x128) or ppocr (PP-OCRv4 det, 1x3xHxW; --hw, default 320x640);
                    untuned: blazeface_full (192x192), blazeface_back (256x256), ppocr_v3
                    (PP-OCRv3 det, --hw, default 320x640), ppocr_cls (direction classifier, 48x192),
                    ppocr_rec (PP-OCRv3 text recognizer, 48x320)
    --onnx PATH     any other ONNX model instead (with --input): e.g. the MobileNetV2 that
                    `benches/make_untuned_model.py` writes, a model the kernels were not tuned for
    --input N=SHAPE its input name and shape, e.g. input=1x3x224x224 (with --onnx)
    --bits B        weight format Pith runs with: 1..8 (codebook bits), f16 or f32 (default 4)
    --threads N     threads for every runtime (default 1)
    --rounds R      alternating rounds (default 5): each round times Pith, then onnxruntime, then the
                    optional runtimes, --iters inferences each, so all see the same machine load
    --iters K       timed inferences per runtime and round (default 20), after a warm-up
    --hw HxW        PP-OCR input height x width (default 320x640; 736x1472 is a full page)
    --pith PATH     the pith binary (default target/release/pith)
    --tflite PATH   a .tflite for LiteRT (default for blazeface: the bundled original,
                    tests/data/models/blazeface_short_range.tflite, that the ONNX file was
                    converted from; PP-OCRv4 det and --onnx models have none)
    --bf16          also time Pith with bf16 products in its 1x1 layers (`pith bench --bf16`:
                    weights and inputs rounded to bf16, sums in f32; x86 with AVX-512 BF16)
    --int8          also time Pith with int8 activations (`pith bench --int8`: dynamic-range
                    quantized 1x1 convolutions and 4-bit GEMVs on int8 dot products; GEMVs
                    only on x86 without AVX-512 VNNI) and onnxruntime on the model
                    its `quantize_dynamic` writes (int8 weights, activations quantized at run time)

The model is first compressed with `pith compress` into --work-dir (default: a temporary folder).
Pith is timed by `pith bench` (a subprocess; load and warm-up excluded, the median of its timed
runs); the others in this process with the same warm-up. Each runtime's time is the median over
rounds of its per-round median; the table gives it with the spread over rounds (min..max) and
the ratio Pith / runtime (below 1: Pith is faster); below it, for each Pith variant against each
runtime, the median of the per-round ratios and the ratio of the fastest rounds, steadier on a
host whose speed drifts. Each turn starts after a 0.25 s pause, so
the previous runtime's idle worker threads have stopped spinning. Inputs are random: the timed graphs have no
data-dependent work. onnxruntime runs the original f32 ONNX model with all graph optimisations,
intra_op_num_threads = N and sequential execution. LiteRT (`pip install ai-edge-litert`) and MNN
(`pip install MNN`, whose `mnnconvert` converts the ONNX file) are skipped with a message when
not installed. Needs numpy and onnxruntime.
"""

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Pause before each runtime's turn (seconds): longer than any pool's spin-before-park time.
SETTLE_S = 0.25

# Bundled model: ONNX file, input name, default (and for the face models only) height x width,
# the original .tflite (if any). The last five are the models nothing was tuned for.
MODELS = {
    "blazeface": ("blazeface_short_range.onnx", "input", (128, 128), "blazeface_short_range.tflite"),
    "ppocr": ("ppocr_v4_det.onnx", "x", (320, 640), None),
    "blazeface_full": ("blazeface_full_range.onnx", "input", (192, 192), "blazeface_full_range.tflite"),
    "blazeface_back": ("blazeface_back.onnx", "input", (256, 256), "blazeface_back.tflite"),
    "ppocr_v3": ("ppocr_v3_det.onnx", "x", (320, 640), None),
    "ppocr_cls": ("ppocr_mobile_v2_cls.onnx", "x", (48, 192), None),
    "ppocr_rec": ("ppocr_v3_rec.onnx", "x", (48, 320), None),
}


def time_calls(fn, iters):
    """Median milliseconds of `iters` calls of fn, after a short warm-up."""
    for _ in range(max(1, min(5, iters // 10))):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


class Pith:
    """`pith bench` on a .pith file, one subprocess per round."""

    def __init__(self, binary, pith_model, input_name, shape, threads, precision=None):
        self.name = f"pith-{precision}" if precision else "pith"
        self.cmd = [
            binary, "bench", pith_model,
            "--shape", f"{input_name}={'x'.join(map(str, shape))}",
            "--threads", str(threads),
        ] + ([f"--{precision}"] if precision else [])

        # Each run's `core_round_trip_ns` (printed at several threads): the host's state.
        self.round_trips = []

    def median_ms(self, iters):
        out = subprocess.run(self.cmd + ["--iters", str(iters)], check=True, capture_output=True, text=True)
        m = re.search(r"median_ms=([0-9.]+)", out.stdout)
        if not m:
            raise RuntimeError(f"unexpected `pith bench` output: {out.stdout!r}")
        trip = re.search(r"core_round_trip_ns=([0-9.]+)", out.stderr)
        if trip:
            self.round_trips.append(float(trip.group(1)))
        return float(m.group(1))


class OnnxRuntime:
    def __init__(self, onnx_path, input_name, x, threads, name="onnxruntime"):
        import onnxruntime as ort

        self.name = name

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        self.feeds = {input_name: x}
        self.version = ort.__version__

    def median_ms(self, iters):
        return time_calls(lambda: self.session.run(None, self.feeds), iters)


class LiteRT:
    name = "litert"

    def __init__(self, tflite_path, x, threads):
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_path=tflite_path, num_threads=threads)
        detail = self.interp.get_input_details()[0]
        # TFLite models are NHWC; the ONNX conversion is NCHW.
        data = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).astype(detail["dtype"])
        if tuple(detail["shape"]) != data.shape:
            self.interp.resize_tensor_input(detail["index"], data.shape)
        self.interp.allocate_tensors()
        self.interp.set_tensor(detail["index"], data)

    def median_ms(self, iters):
        return time_calls(self.interp.invoke, iters)


@contextlib.contextmanager
def c_stdout_to_stderr():
    """Sends native code's stdout (MNN prints a banner on import) to stderr, keeping the table clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


class Mnn:
    name = "mnn"

    def __init__(self, onnx_path, work_dir, x, threads):
        with c_stdout_to_stderr():
            self._load(onnx_path, work_dir, x, threads)

    def _load(self, onnx_path, work_dir, x, threads):
        import MNN

        converter = shutil.which("mnnconvert")
        if converter is None:
            raise RuntimeError("the MNN package's `mnnconvert` is not on PATH")
        mnn_path = os.path.join(work_dir, os.path.basename(onnx_path) + ".mnn")
        subprocess.run(
            [converter, "-f", "ONNX", "--modelFile", onnx_path, "--MNNModel", mnn_path, "--bizCode", "pith"],
            check=True, capture_output=True,
        )
        self.interp = MNN.Interpreter(mnn_path)
        self.session = self.interp.createSession({"numThread": threads})
        inp = self.interp.getSessionInput(self.session)
        self.interp.resizeTensor(inp, x.shape)
        self.interp.resizeSession(self.session)
        tmp = MNN.Tensor(x.shape, MNN.Halide_Type_Float, x, MNN.Tensor_DimensionType_Caffe)
        inp.copyFrom(tmp)

    def median_ms(self, iters):
        return time_calls(lambda: self.interp.runSession(self.session), iters)


def optional(name, make):
    """Builds an optional runtime, or prints why it is skipped."""
    try:
        return make()
    except ImportError as e:
        print(f"{name}: skipped, not installed ({e})", file=sys.stderr)
    except Exception as e:  # a runtime that cannot load the model is reported, not fatal
        print(f"{name}: skipped ({type(e).__name__}: {e})", file=sys.stderr)
    return None


def parse_hw(s):
    h, _, w = s.partition("x")
    return int(h), int(w)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="?", choices=sorted(MODELS))
    p.add_argument("--onnx", default=None)
    p.add_argument("--input", default=None)
    p.add_argument("--bits", default="4")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--hw", type=parse_hw, default=None)
    p.add_argument("--pith", default=os.path.join(ROOT, "target", "release", "pith"))
    p.add_argument("--tflite", default=None)
    p.add_argument("--work-dir", default=None)
    p.add_argument("--int8", action="store_true")
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args()
    if args.rounds < 1 or args.iters < 1 or args.threads < 1:
        p.error("--rounds, --iters and --threads must be at least 1")
    if not os.path.exists(args.pith):
        p.error(f"{args.pith} not found: run `cargo build --release -p pith-cli` first")

    if (args.model is None) == (args.onnx is None):
        p.error("give either a bundled model name or --onnx PATH")
    if args.onnx is not None:
        name, _, dims = (args.input or "").partition("=")
        if not name or not dims:
            p.error("--onnx needs --input NAME=SHAPE, e.g. input=1x3x224x224")
        onnx_path, input_name = args.onnx, name
        shape = tuple(int(d) for d in dims.split("x"))
        args.model = os.path.splitext(os.path.basename(onnx_path))[0]
    else:
        file, input_name, default_hw, tflite = MODELS[args.model]
        onnx_path = os.path.join(ROOT, "tests", "data", "models", file)
        if args.tflite is None and tflite is not None:
            args.tflite = os.path.join(ROOT, "tests", "data", "models", tflite)
        h, w = args.hw or default_hw
        if args.model.startswith("blazeface") and (h, w) != default_hw:
            p.error(f"{args.model} takes {default_hw[0]}x{default_hw[1]} only")
        shape = (1, 3, h, w)

    work_dir = args.work_dir or tempfile.mkdtemp(prefix="pith-compare-")
    os.makedirs(work_dir, exist_ok=True)
    try:
        compare(args, onnx_path, input_name, shape, work_dir)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)


def compare(args, onnx_path, input_name, shape, work_dir):
    """Compresses, builds every runtime, times them in alternating rounds, prints the table."""
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    pith_model = os.path.join(work_dir, f"{args.model}_{args.bits}.pith")
    compress = [args.pith, "compress", onnx_path, "-o", pith_model, "--bits", args.bits]
    if subprocess.run(compress, stdout=subprocess.DEVNULL).returncode != 0:
        sys.exit(f"`{' '.join(compress)}` failed (its error is above)")

    runtimes = [
        Pith(args.pith, pith_model, input_name, shape, args.threads),
        OnnxRuntime(onnx_path, input_name, x, args.threads),
    ]
    if args.bf16:
        runtimes.insert(1, Pith(args.pith, pith_model, input_name, shape, args.threads, precision="bf16"))
    if args.int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from compare_compression import constants_to_initializers

        runtimes.insert(1, Pith(args.pith, pith_model, input_name, shape, args.threads, precision="int8"))
        # The quantiser only quantises initializers; PP-OCRv4 det keeps its weights in Constants.
        plain = os.path.join(work_dir, f"{args.model}_initializers.onnx")
        constants_to_initializers(onnx_path, plain)
        int8_path = os.path.join(work_dir, f"{args.model}_ort_int8.onnx")
        quantize_dynamic(plain, int8_path, weight_type=QuantType.QInt8)
        runtimes.append(OnnxRuntime(int8_path, input_name, x, args.threads, name="onnxruntime-int8"))
    if args.tflite:
        runtimes.append(optional("litert", lambda: LiteRT(args.tflite, x, args.threads)))
    else:
        print("litert: skipped, no .tflite for this model (pass --tflite PATH)", file=sys.stderr)
    runtimes.append(optional("mnn", lambda: Mnn(onnx_path, work_dir, x, args.threads)))
    runtimes = [r for r in runtimes if r is not None]

    rounds = {r.name: [] for r in runtimes}
    for i in range(args.rounds):
        for r in runtimes:
            # Idle thread pools (onnxruntime's and Pith's) spin for a while after their last run
            # before they park: let them park, so no runtime shares the cores with another's.
            time.sleep(SETTLE_S)
            rounds[r.name].append(r.median_ms(args.iters))
        done = "  ".join(f"{n}={v[-1]:.2f}ms" for n, v in rounds.items())
        print(f"round {i + 1}/{args.rounds}: {done}", file=sys.stderr)

    piths = [n for n in rounds if n.startswith("pith")]
    ort_version = next(r.version for r in runtimes if r.name == "onnxruntime")
    print(f"model={args.model} input={'x'.join(map(str, shape))} pith_weights={args.bits} "
          f"threads={args.threads} rounds={args.rounds} iters={args.iters} onnxruntime={ort_version}")
    print(f"{'runtime':<17} {'median_ms':>10} {'min..max over rounds':>22}"
          + "".join(f" {p + '/runtime':>18}" for p in piths))
    for name, v in rounds.items():
        med = statistics.median(v)
        spread = f"{min(v):.2f}..{max(v):.2f}"
        ratios = "".join(f" {statistics.median(rounds[p]) / med:>18.2f}" for p in piths)
        print(f"{name:<17} {med:>10.2f} {spread:>22}{ratios}")
    # On a host whose speed drifts (other guests, vCPUs moved onto one core's SMT siblings), the
    # runtimes of one round saw the same host: the median of the per-round ratios, and the ratio
    # of the fastest rounds, are steadier than the ratio of the medians above.
    for p in piths:
        for name, v in rounds.items():
            if name == p:
                continue
            per_round = statistics.median(a / b for a, b in zip(rounds[p], v))
            print(f"{p}/{name}: per-round median {per_round:.2f}, fastest rounds {min(rounds[p]) / min(v):.2f}")
    # Two threads hand work over through shared cache lines; on 2-vCPU cloud hosts how long that
    # takes moved between about 80 and 400 ns, and two-thread times with it (`pith bench`).
    trips = [t for r in runtimes for t in getattr(r, "round_trips", [])]
    if trips:
        print(f"core round trip (pith bench, per round): {' '.join(f'{t:.0f}' for t in trips)} ns")


if __name__ == "__main__":
    main()
