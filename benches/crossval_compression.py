#!/usr/bin/env python3
"""Held-out fidelity of compression settings by k-fold cross-validation over the calibration set.

compare_compression.py judges a setting on one held-out image per model, which makes a verdict
on a small change mostly noise. This script splits the bundled calibration images into K folds;
for each fold it compresses with the other folds as `--calib`, and judges the file on the
fold's own images (which it never saw) and on the tests' held-out image. Per setting it prints
the cosine of every held-out image against the f32 `.pith` (the smallest over the model's
outputs), their mean and minimum, and the task check through `pith detect` (same number of
detections, smallest IoU of a one-to-one match).

Usage, from the repository root after `cargo build --release -p pith-cli`:

    python3 benches/crossval_compression.py blazeface --setting "4=--bits 4" --setting "auto=--bits auto"
    python3 benches/crossval_compression.py ppocr --folds 3 --setting "auto=--bits auto"

Each setting's `--calib` and `--preprocess` are added by the script. Needs numpy and pillow.
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_compression import DATA, MODELS, ROOT, Pith, cosine, min_matched_iou  # noqa: E402

PREPROCESS = {"blazeface": "blazeface", "ppocr": "ppocr-det"}


def blazeface_input(path):
    """Letterboxed 128x128, [-1, 1], black padding (close to the runtime's preprocessing)."""
    img = Image.open(path).convert("RGB")
    side = max(img.size)
    canvas = Image.new("RGB", (side, side))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    x = np.asarray(canvas.resize((128, 128), Image.BILINEAR), dtype=np.float32) / 127.5 - 1.0
    return x.transpose(2, 0, 1)[None].copy()


def ppocr_input(path, limit=480):
    """Longer side at most `limit`, both sides multiples of 32, ImageNet normalisation."""
    img = Image.open(path).convert("RGB")
    scale = min(1.0, limit / max(img.size))
    w, h = (max(32, int(round(v * scale / 32)) * 32) for v in img.size)
    x = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(2, 0, 1)[None].copy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--setting", action="append", required=True, help="LABEL=ARGS for `pith compress`")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--pith", default=os.path.join(ROOT, "target", "release", "pith"))
    args = ap.parse_args()

    spec = MODELS[args.model]
    onnx = os.path.join(DATA, "models", spec["onnx"])
    calib = os.path.join(DATA, "calib", args.model)
    images = sorted(f for f in os.listdir(calib) if f.lower().endswith((".png", ".jpg", ".jpeg")))
    extra = os.path.join(DATA, "images", spec["image"])
    to_input = blazeface_input if args.model == "blazeface" else ppocr_input
    work = tempfile.mkdtemp(prefix="pith-crossval-")
    pith = Pith(args.pith, work)
    try:
        reference = os.path.join(work, "f32.pith")
        pith.compress(onnx, reference, "--bits f32")
        inputs = {name: to_input(os.path.join(calib, name)) for name in images}
        inputs[spec["image"]] = to_input(extra)
        paths = {name: os.path.join(calib, name) for name in images}
        paths[spec["image"]] = extra
        ref_out = {name: pith.run(reference, "input" if args.model == "blazeface" else "x", x)
                   for name, x in inputs.items()}
        ref_det = {name: pith.detect(spec["task"], reference, p) for name, p in paths.items()}
        for setting in args.setting:
            label, _, flags = setting.partition("=")
            cosines, ious, sizes = {}, {}, []
            for fold in range(args.folds):
                held = [n for i, n in enumerate(images) if i % args.folds == fold]
                train_dir = os.path.join(work, f"train{fold}")
                shutil.rmtree(train_dir, ignore_errors=True)
                os.makedirs(train_dir)
                for n in images:
                    if n not in held:
                        os.symlink(paths[n], os.path.join(train_dir, n))
                model = os.path.join(work, f"{label}.{fold}.pith")
                pith.compress(onnx, model, f"{flags} --calib {shlex.quote(train_dir)} "
                              f"--preprocess {PREPROCESS[args.model]}")
                sizes.append(os.path.getsize(model))
                for name in held + [spec["image"]]:
                    out = pith.run(model, "input" if args.model == "blazeface" else "x", inputs[name])
                    cos = min(cosine(out[k], ref_out[name][k]) for k in ref_out[name])
                    got = pith.detect(spec["task"], model, paths[name])
                    key = name if name in held else f"{name}#{fold}"
                    cosines[key] = cos
                    ious[key] = (len(ref_det[name]), len(got), min_matched_iou(ref_det[name], got))
            cos = np.array(list(cosines.values()))
            failed = [k for k, (r, g, m) in ious.items() if r != g or (r and m < 0.9)]
            print(f"{label}: bytes {min(sizes)}-{max(sizes)} (mean {sum(sizes) / len(sizes):.0f}), held-out cosine mean {cos.mean():.4f} "
                  f"min {cos.min():.4f} (n={len(cos)}); task failures {len(failed)}: {', '.join(failed)}")
            for k in sorted(cosines):
                r, g, m = ious[k]
                print(f"    {k:28s} cosine {cosines[k]:.4f}  detections {g}/{r}  min IoU {m:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
