#!/usr/bin/env python3
"""Does low-rank factorisation pay on these models? A weight-space study, no Pith needed.

For every dense (Gemm/MatMul) and 1x1 ungrouped Conv weight of at least 4096 elements, seen as an
M x K matrix, it prints the smallest rank r whose truncated SVD has relative Frobenius error at most
0.05, 0.10 and 0.20, and r(M+K)/(MK): the parameters of the two thin factors as a fraction of the
original. Below 1 the factorisation is smaller at that error *before* quantisation; the factors
would then be codebook-coded like any weight, adding their own error, so a layer only gains when
the fraction is well below 1 at the error its codebook reaches anyway (about 0.1 at 4 bits).

    python3 benches/lowrank_study.py tests/data/models/ppocr_v4_det.onnx tests/data/models/blazeface_short_range.onnx

Needs numpy and onnx.
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




for path in sys.argv[1:]:
    print(path)
    for name, w in weights(path):
        M, K = w.shape
        if M * K < 4096: continue
        s = np.linalg.svd(w, compute_uv=False)
        e2 = np.cumsum((s ** 2)[::-1])[::-1] / (s ** 2).sum()  # e2[r] = rel err^2 keeping r components
        out = []
        for target in (0.05, 0.10, 0.20):
            r = next((r for r in range(len(s) + 1) if (e2[r] if r < len(s) else 0) <= target ** 2), len(s))
            out.append((target, r, r * (M + K) / (M * K)))
        print(f"  {name[:40]:40s} {M:4d}x{K:<4d} " + "  ".join(f"err<={t:.2f}: rank {r:3d} ({f:.2f} of params)" for t, r, f in out))
