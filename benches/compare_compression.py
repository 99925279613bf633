#!/usr/bin/env python3
"""Size and fidelity of Pith's compression settings against onnxruntime's dynamic int8 quantisation.

Usage, from the repository root after `cargo build --release -p pith-cli`:

    python3 benches/compare_compression.py                 # both models, default settings
    python3 benches/compare_compression.py blazeface --setting "3-bit=--bits 3"

Every row is one model file judged on the held-out image of the tests (never in a calibration set):
BlazeFace on tests/data/images/astronaut.png, PP-OCRv4 and PP-OCRv3 det on tests/data/images/page.png, each fed
the preprocessed input stored with the goldens (tests/data/golden/*/input.*.npy).

* size: bytes of the model file, and the ratio against the fp32 ONNX file;
* cosine: the smallest cosine similarity, over the model's outputs, between its output and
  onnxruntime's fp32 output on the held-out input;
* task: for Pith rows, `pith detect` on the held-out image against `pith detect` with f32 weights:
  the number of detections of each, and the smallest IoU of a greedy one-to-one match (boxes as
  axis-aligned rectangles); and the compressor's task-check rule: the firm detections (scoring at
  least 0.05 above the threshold) kept, their smallest IoU, and any new firm one. onnxruntime's int8 model is judged by cosine only (the decoders live in
  Pith).

Settings are `LABEL=ARGS` passed to `pith compress` (repeat --setting; defaults below). onnxruntime's
row is `quantize_dynamic` with int8 weights (per-tensor and per-channel). Needs numpy, onnx and
onnxruntime.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
MODELS = {
    "blazeface": {
        "onnx": "blazeface_short_range.onnx",
        "golden": "blazeface",
        "image": "astronaut.png",
        "task": "faces",
        "calib": "--calib tests/data/calib/blazeface --preprocess blazeface",
    },
    "ppocr": {
        "onnx": "ppocr_v4_det.onnx",
        "golden": "ppocr",
        "image": "page.png",
        "task": "text",
        "calib": "--calib tests/data/calib/ppocr --preprocess ppocr-det",
    },
    # Detectors nothing was tuned for (thirty-ninth session), judged like the bundled ones.
    "blazeface_full_range": {
        "onnx": "blazeface_full_range.onnx",
        "golden": "blazeface_full_range",
        "image": "astronaut.png",
        "task": "faces",
        "calib": "--calib tests/data/calib/blazeface --preprocess blazeface",
    },
    "blazeface_back": {
        "onnx": "blazeface_back.onnx",
        "golden": "blazeface_back",
        "image": "astronaut.png",
        "task": "faces",
        "calib": "--calib tests/data/calib/blazeface --preprocess blazeface",
    },
    "ppocr_v3": {
        "onnx": "ppocr_v3_det.onnx",
        "golden": "ppocr_v3",
        "image": "page.png",
        "task": "text",
        "calib": "--calib tests/data/calib/ppocr --preprocess ppocr-det",
    },
}
DEFAULT_SETTINGS = [
    "8-bit=--bits 8",
    "4-bit=--bits 4",
    "auto=--bits auto {calib}",
    "auto+huffman=--bits auto --entropy huffman {calib}",
]


def golden_input(model):
    folder = os.path.join(DATA, "golden", MODELS[model]["golden"])
    name = next(f for f in sorted(os.listdir(folder)) if f.startswith("input."))
    return name.split(".")[1], np.load(os.path.join(folder, name))


def cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))


def constants_to_initializers(src, dst):
    """Moves `Constant` nodes into initializers (onnxruntime's quantiser only quantises initializers;
    PP-OCRv4 det stores its weights in Constant nodes)."""
    import onnx

    m = onnx.load(src)
    keep = []
    for node in m.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            value.name = node.output[0]
            m.graph.initializer.append(value)
        else:
            keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    onnx.save(m, dst)


def ort_outputs(path, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


# A detection scoring less than this above its task's threshold (BlazeFace 0.5, DB boxes 0.6) is
# borderline, as in the compressor's task check: it may appear, vanish or move.
BORDERLINE = 0.05
THRESHOLD = {"faces": 0.5, "text": 0.6}


def boxes_of(detections, task):
    """(box, score) per detection, boxes as axis-aligned (x0, y0, x1, y1)."""
    out = []
    for d in detections:
        if task == "faces":
            out.append((tuple(d["bbox"]), d["score"]))
        else:
            pts = np.asarray(d["points"], dtype=np.float64)
            out.append(((pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()), d["score"]))
    return out


def firm_judgement(ref, got, task, min_iou=0.9):
    """The task check's rule on the held-out image: every firm reference detection takes the
    distinct candidate of best IoU (kept when it reaches `min_iou`), each borderline one then takes
    a remaining candidate at IoU >= `min_iou` if there is one, and no firm candidate may be left.
    "kept/firm, smallest firm IoU[, n new]"."""
    firm = lambda score: score >= THRESHOLD[task] + BORDERLINE  # noqa: E731
    left = list(got)
    worst, kept, total = 1.0, 0, sum(firm(s) for _, s in ref)
    for box, score in ref:
        if not firm(score):
            continue
        if not left:
            worst = 0.0
            continue
        best = max(range(len(left)), key=lambda i: iou(box, left[i][0]))
        overlap = iou(box, left.pop(best)[0])
        worst, kept = min(worst, overlap), kept + (overlap >= min_iou)
    for box, score in ref:
        if not firm(score) and left:
            best = max(range(len(left)), key=lambda i: iou(box, left[i][0]))
            if iou(box, left[best][0]) >= min_iou:
                left.pop(best)
    extra = sum(firm(s) for _, s in left)
    return f"{kept}/{total}, {worst:.3f}" + (f", {extra} new" if extra else "")


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def min_matched_iou(ref, got):
    """Smallest IoU of a greedy one-to-one matching (0 when the counts differ or nothing matches)."""
    if len(ref) != len(got):
        return 0.0
    left, worst = list(got), 1.0
    for r in ref:
        if not left:
            return 0.0
        best = max(range(len(left)), key=lambda i: iou(r, left[i]))
        worst = min(worst, iou(r, left.pop(best)))
    return worst


class Pith:
    def __init__(self, binary, work):
        self.binary, self.work = binary, work

    def compress(self, onnx, out, args):
        cmd = [self.binary, "compress", onnx, "-o", out] + shlex.split(args)
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)

    def run(self, model, input_name, x):
        npy = os.path.join(self.work, "input.npy")
        np.save(npy, x)
        out_dir = tempfile.mkdtemp(dir=self.work)
        cmd = [self.binary, "run", model, "--input", f"{input_name}={npy}", "--output-dir", out_dir]
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        return {f[:-4]: np.load(os.path.join(out_dir, f)) for f in os.listdir(out_dir) if f.endswith(".npy")}

    def detect(self, task, model, image):
        out = subprocess.run(
            [self.binary, "detect", task, model, image], check=True, cwd=ROOT, capture_output=True, text=True
        )
        doc = json.loads(out.stdout)
        key = "faces" if task == "faces" else "text_boxes"
        return boxes_of(doc[key], task)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help=f"any of {', '.join(MODELS)} (default: all)")
    ap.add_argument("--setting", action="append", help="LABEL=ARGS for `pith compress` (repeatable)")
    ap.add_argument("--pith", default=os.path.join(ROOT, "target", "release", "pith"))
    args = ap.parse_args()
    settings = args.setting or DEFAULT_SETTINGS
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}: choose from {list(MODELS)}")
    args.models = args.models or list(MODELS)

    from onnxruntime.quantization import QuantType, quantize_dynamic

    work = tempfile.mkdtemp(prefix="pith-compare-")
    pith = Pith(args.pith, work)
    for model in args.models:
        spec = MODELS[model]
        onnx = os.path.join(DATA, "models", spec["onnx"])
        image = os.path.join(DATA, "images", spec["image"])
        onnx_bytes = os.path.getsize(onnx)
        input_name, x = golden_input(model)
        reference = ort_outputs(onnx, {input_name: x})
        print(f"\n{model}: {spec['onnx']} ({onnx_bytes} bytes), held-out image {spec['image']}")
        print(
            f"| {'setting':<28} | {'bytes':>9} | {'vs ONNX':>7} | {'cosine':>8} | {'task (dets, min IoU)':>22} "
            f"| {'firm dets, min IoU':>20} |"
        )
        print(f"|{'-' * 30}|{'-' * 11}|{'-' * 9}|{'-' * 10}|{'-' * 24}|{'-' * 22}|")

        def row(label, size, cos, task, firm="-"):
            print(
                f"| {label:<28} | {size:>9} | {onnx_bytes / size:>6.2f}x | {cos:>8.5f} | {task:>22} | {firm:>20} |"
            )

        row("onnx fp32", onnx_bytes, 1.0, "-")
        plain = os.path.join(work, f"{model}_initializers.onnx")
        constants_to_initializers(onnx, plain)
        for per_channel in (False, True):
            q = os.path.join(work, f"{model}_int8_{int(per_channel)}.onnx")
            quantize_dynamic(plain, q, weight_type=QuantType.QInt8, per_channel=per_channel)
            outs = ort_outputs(q, {input_name: x})
            cos = min(cosine(reference[k], outs[k]) for k in reference)
            label = f"ort dynamic int8{' per-ch' if per_channel else ''}"
            row(label, os.path.getsize(q), cos, "-")

        ref_pith = os.path.join(work, f"{model}_f32.pith")
        pith.compress(onnx, ref_pith, "--bits f32")
        ref_boxes = pith.detect(spec["task"], ref_pith, image)
        for setting in settings:
            label, _, cargs = setting.partition("=")
            out = os.path.join(work, f"{model}_{label.replace('/', '_')}.pith")
            try:
                pith.compress(onnx, out, cargs.format(calib=spec["calib"]))
            except subprocess.CalledProcessError as e:
                print(f"| {label:<28} | pith compress failed (exit {e.returncode})", file=sys.stdout)
                continue
            outs = pith.run(out, input_name, x)
            cos = min(cosine(reference[k], outs[k]) for k in reference)
            found = pith.detect(spec["task"], out, image)
            boxes, ref_only = [b for b, _ in found], [b for b, _ in ref_boxes]
            task = f"{len(boxes)}/{len(ref_only)}, {min_matched_iou(ref_only, boxes):.3f}"
            row(f"pith {label}", os.path.getsize(out), cos, task, firm_judgement(ref_boxes, found, spec["task"]))


if __name__ == "__main__":
    main()
