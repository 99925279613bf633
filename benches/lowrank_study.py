#!/usr/bin/env python3
"""Does low-rank factorisation pay on these models? A weight-space study, no Pith needed.

For every dense (Gemm/MatMul) and 1x1 ungrouped Conv weight of at least 4096 elements, seen as an
M x K matrix, it prints the smallest rank r whose truncated SVD has relative Frobenius error at most
0.05, 0.10 and 0.20, and r(M+K)/(MK): the parameters of the two thin factors as a fraction of the
original. Below 1 the factorisation is smaller at that error *before* quantisation; the factors
would then be codebook-coded like any weight, adding their own error, so a layer only gains when
the fraction is well below 1 at the error its codebook reaches anyway (about 0.1 at 4 bits).

    python3 benches/lowrank_study.py tests/data/models/ppocr_v4_det.onnx tests/data/models/blazeface_short_range.onnx

With `--calib DIR` (the bundled calibration images of one model, `tests/data/calib/ppocr` or
`.../blazeface`, preprocessed as `crossval_compression.py` does) it judges each rank on the layer's
output instead: the error of `W x` over the images' activations, the truncated SVD of `W L` with `L`
the Cholesky factor of their Gram matrix (the best rank-r layer for that error), next to the
weight-space figure. Layers whose input is a pooled vector (squeeze-excite) get one sample per
image, so their Gram matrix has the calibration set's rank, not theirs.

    python3 benches/lowrank_study.py tests/data/models/ppocr_v4_det.onnx --calib tests/data/calib/ppocr

Needs numpy and onnx (and onnxruntime and pillow with `--calib`).
"""

import sys

import numpy as np
import onnx
from onnx import numpy_helper


def weights(path):
    """(name, M x K matrix) of every dense and 1x1 ungrouped Conv weight of `path`."""
    m = onnx.load(path)
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in consts:
            w = consts[n.input[1]].astype(np.float64)
            if w.ndim == 4 and w.shape[2:] == (1, 1) and dict((a.name, a.i) for a in n.attribute).get("group", 1) == 1:
                yield n.input[1], w.reshape(w.shape[0], -1)
            elif w.ndim == 2:
                yield n.input[1], w




def input_grams(path, calib):
    """Gram matrix of each 1x1 Conv weight's input over the images in `calib`, by weight name."""
    import os

    import onnxruntime as ort

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from crossval_compression import blazeface_input, ppocr_input

    model = onnx.load(path)
    inputs = {n.input[1]: n.input[0] for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1}
    outputs = {o.name for o in model.graph.output}
    for name in sorted(set(inputs.values()) - outputs):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    to_input = blazeface_input if "blazeface" in calib else ppocr_input
    grams = {}
    for f in sorted(os.listdir(calib)):
        if not f.lower().endswith((".png", ".jpg", ".jpeg")):
            continue
        values = dict(zip(names, session.run(None, {session.get_inputs()[0].name: to_input(os.path.join(calib, f))})))
        for weight, value in inputs.items():
            x = values[value].astype(np.float64)
            x = x.reshape(x.shape[1], -1)
            grams[weight] = grams.get(weight, 0) + x @ x.T
    return grams


def ranks(s, targets):
    """(target, smallest rank whose truncation error is at most target) from singular values s."""
    e2 = np.cumsum((s ** 2)[::-1])[::-1] / (s ** 2).sum()  # e2[r] = rel err^2 keeping r components
    return [(t, next((r for r in range(len(s) + 1) if (e2[r] if r < len(s) else 0) <= t ** 2), len(s)))
            for t in targets]


args = sys.argv[1:]
calib = None
if "--calib" in args:
    i = args.index("--calib")
    calib = args[i + 1]
    del args[i:i + 2]
for path in args:
    print(path)
    grams = input_grams(path, calib) if calib else {}
    for name, w in weights(path):
        if w.shape[0] * w.shape[1] < 4096:
            continue
        if calib and name in grams:
            M, K = w.shape
            g = grams[name]
            g = g + 1e-9 * np.trace(g) / K * np.eye(K)
            s_out = np.linalg.svd(w @ np.linalg.cholesky(g), compute_uv=False)
            s_w = np.linalg.svd(w, compute_uv=False)
            print(f"  {name[:40]:40s} {M:4d}x{K:<4d} " + "  ".join(
                f"out.err<={t:.2f}: rank {r:3d} ({r * (M + K) / (M * K):.2f} of params; weights {rw * (M + K) / (M * K):.2f})"
                for (t, r), (_, rw) in zip(ranks(s_out, (0.02, 0.05, 0.10)), ranks(s_w, (0.02, 0.05, 0.10)))))
            continue
        if calib:
            continue
        M, K = w.shape
        s = np.linalg.svd(w, compute_uv=False)
        e2 = np.cumsum((s ** 2)[::-1])[::-1] / (s ** 2).sum()  # e2[r] = rel err^2 keeping r components
        out = []
        for target in (0.05, 0.10, 0.20):
            r = next((r for r in range(len(s) + 1) if (e2[r] if r < len(s) else 0) <= target ** 2), len(s))
            out.append((target, r, r * (M + K) / (M * K)))
        print(f"  {name[:40]:40s} {M:4d}x{K:<4d} " + "  ".join(f"err<={t:.2f}: rank {r:3d} ({f:.2f} of params)" for t, r, f in out))
