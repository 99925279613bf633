#!/usr/bin/env python3
"""Size and reading fidelity of Pith's compression settings on the PP-OCRv3 text recognizer,
against onnxruntime's dynamic int8 quantisation.

Usage, from the repository root after `cargo build --release -p pith-cli`:

    python3 benches/compare_recognizer.py
    python3 benches/compare_recognizer.py --setting "auto 0.9995=--bits auto {calib} --min-fidelity 0.9995"

Every row is one model file judged on the held-out lines of tests/data/images/page.png (the crops
of tests/compression.rs; none is in the calibration set tests/data/calib/ppocr_rec), each
preprocessed as PaddleOCR does (48 px high, at least 320 wide, zero-padded, BGR, [-1, 1]):

* size: bytes of the model file, and the ratio against the fp32 ONNX file;
* cosine: the smallest cosine, over the lines, between the file's output and onnxruntime's fp32
  output;
* readings: lines whose greedy CTC reading equals onnxruntime fp32's, of the lines; the last line
  (cut by the scan's edge) the fp32 model itself misreads, and it is counted apart.

Settings are `LABEL=ARGS` passed to `pith compress` (`{calib}` expands to the calibration
flags). Needs numpy, pillow, onnx and onnxruntime.
"""

import argparse
import os
import shlex
import subprocess
import tempfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
ONNX = os.path.join(DATA, "models", "ppocr_v3_rec.onnx")
CALIB = "--calib tests/data/calib/ppocr_rec --preprocess ppocr-rec"
# (x0, y0, x1, y1) crops of page.png, as tests/compression.rs's PAGE_LINES; the last is unstable.
LINES = [(4, 9, 294, 35), (2, 44, 381, 69), (2, 66, 381, 90), (2, 113, 176, 144), (14, 162, 244, 191)]
DEFAULT_SETTINGS = [
    "8-bit=--bits 8",
    "4-bit=--bits 4",
    "auto=--bits auto {calib}",
    "auto, reading=--bits auto {calib} --task reading",
    "auto, reading, Huffman=--bits auto {calib} --task reading --entropy huffman",
]


def line_input(img: Image.Image) -> np.ndarray:
    inner = int(np.ceil(48 * img.width / img.height))
    arr = np.asarray(img.convert("RGB").resize((inner, 48), Image.BILINEAR), np.float32)[:, :, ::-1]
    out = np.zeros((48, max(320, inner), 3), np.float32)
    out[:, :inner] = arr / 127.5 - 1.0
    return out.transpose(2, 0, 1)[None].copy()


def reading(p: np.ndarray) -> list:
    best, out, prev = p.reshape(-1, p.shape[-1]).argmax(1), [], None
    for c in best:
        if c != 0 and c != prev:
            out.append(int(c))
        prev = c
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", action="append", help="LABEL=ARGS for pith compress (repeatable)")
    ap.add_argument("--pith", default=os.path.join(ROOT, "target", "release", "pith"))
    args = ap.parse_args()
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    work = tempfile.mkdtemp(prefix="pith-rec-")
    page = Image.open(os.path.join(DATA, "images", "page.png"))
    inputs = []
    for k, box in enumerate(LINES):
        path = os.path.join(work, f"line{k}.npy")
        np.save(path, line_input(page.crop(box)))
        inputs.append(path)
    ort_run = lambda model: [ort.InferenceSession(model).run(None, {"x": np.load(p)})[0] for p in inputs]
    reference = ort_run(ONNX)
    onnx_bytes = os.path.getsize(ONNX)

    def row(label: str, size: int, outs: list) -> None:
        cos = min(cosine(r, o) for r, o in zip(reference, outs))
        same = [reading(r) == reading(o) for r, o in zip(reference, outs)]
        print(
            f"| {label} | {size:,} | {onnx_bytes / size:.2f}× | {cos:.4f} | "
            f"{sum(same[:-1])}/{len(same) - 1} (+ unstable line: {'kept' if same[-1] else 'changed'}) |"
        )

    print("| setting | bytes | vs fp32 ONNX | held-out cosine (min of 5 lines) | readings kept |")
    print("|---|---|---|---|---|")
    for per_channel in (False, True):
        q = os.path.join(work, f"int8_{per_channel}.onnx")
        quantize_dynamic(ONNX, q, weight_type=QuantType.QInt8, per_channel=per_channel)
        label = f"onnxruntime `quantize_dynamic` int8{' per-channel' if per_channel else ''}"
        row(label, os.path.getsize(q), ort_run(q))
    for setting in args.setting or DEFAULT_SETTINGS:
        label, flags = setting.split("=", 1)
        out = os.path.join(work, "model.pith")
        cmd = [args.pith, "compress", ONNX, "-o", out] + shlex.split(flags.replace("{calib}", CALIB))
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        outs = []
        for k, p in enumerate(inputs):
            d = os.path.join(work, f"out{k}")
            subprocess.run([args.pith, "run", out, "--input", f"x={p}", "--output-dir", d], check=True, capture_output=True)
            outs.append(np.load(os.path.join(d, sorted(f for f in os.listdir(d) if f.endswith(".npy"))[0])))
        row(f"`{flags}`", os.path.getsize(out), outs)


if __name__ == "__main__":
    main()
