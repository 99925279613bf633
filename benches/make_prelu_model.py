#!/usr/bin/env python3
"""Writes a MediaPipe-style stack of convolutions with per-channel PReLU activations as an ONNX
file with seeded random weights, to time the fused per-channel PRelu with `compare_onnxruntime.py
--onnx` (MediaPipe's face and hand landmark models follow most convolutions with a PReLU whose
slope has one value per channel; the bundled models use ReLU / HardSwish).

Usage, from the repository root:

    python3 benches/make_prelu_model.py /tmp/prelu.onnx [--channels 32] [--size 64] [--blocks 8]
    python3 benches/compare_onnxruntime.py --onnx /tmp/prelu.onnx --input x=1x32x64x64

Each block is a 3x3 depthwise convolution and a 1x1 convolution over `channels` channels at
`size`x`size`, each with a bias and followed by `PRelu` with a `[C, 1, 1]` slope drawn in
[-0.5, 0.5] (opset 13). Needs numpy and onnx.
"""

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(channels, size, blocks):
    """The model: `blocks` pairs of (depthwise 3x3, pointwise 1x1) convolutions, each + PRelu."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "x"
    for i in range(blocks):
        for kind, k, fan_in, scale in (("dw", 3, 1, 0.3), ("pw", 1, channels, 0.15)):
            name = f"{kind}{i}"
            w = (rng.standard_normal((channels, fan_in, k, k)) * scale).astype(np.float32)
            b = (rng.standard_normal(channels) * 0.1).astype(np.float32)
            slope = rng.uniform(-0.5, 0.5, (channels, 1, 1)).astype(np.float32)
            inits += [
                numpy_helper.from_array(w, name + "_w"),
                numpy_helper.from_array(b, name + "_b"),
                numpy_helper.from_array(slope, name + "_slope"),
            ]
            group = channels if kind == "dw" else 1
            nodes.append(helper.make_node(
                "Conv", [x, name + "_w", name + "_b"], [name + "_conv"],
                kernel_shape=[k, k], pads=[k // 2] * 4, group=group,
            ))
            nodes.append(helper.make_node("PRelu", [name + "_conv", name + "_slope"], [name + "_out"]))
            x = name + "_out"
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        nodes, "prelu_blocks",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=8)
    args = parser.parse_args()
    onnx.save(build(args.channels, args.size, args.blocks), args.out)


if __name__ == "__main__":
    main()
