#!/usr/bin/env python3
"""Writes MobileNetV2 (width 1.0, 224x224, 1000 classes) or MobileNetV3-Small as an ONNX file with
seeded random weights: a model nobody tuned Pith's kernels for, to time with
`compare_onnxruntime.py --onnx`.

Usage, from the repository root:

    python3 benches/make_untuned_model.py /tmp/mobilenetv2.onnx
    python3 benches/make_untuned_model.py --v3-small /tmp/mobilenetv3_small.onnx
    python3 benches/compare_onnxruntime.py --onnx /tmp/mobilenetv2.onnx --input input=1x3x224x224

The graph is what exporters emit for torchvision's `mobilenet_v2` (opset 13): Conv without bias
followed by BatchNormalization and Clip(0, 6) (ReLU6), inverted residual blocks (1x1 expansion,
3x3 depthwise, 1x1 linear projection, Add when the shape is kept), GlobalAveragePool, Flatten and
Gemm. MobileNetV3-Small (opset 14) adds what V2 lacks: HardSwish activations, 5x5 depthwise
filters and squeeze-excite blocks (GlobalAveragePool, two 1x1 convs over a 1x1 plane, HardSigmoid,
a broadcast Mul). Weights are He-initialised from a fixed seed and BatchNorm statistics are random around
(mean 0, variance 1), so activations keep a sane range; speed does not depend on the values.
Needs numpy and onnx.
"""

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper.
BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class Builder:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, kind):
        self.n += 1
        return f"{kind}_{self.n}"

    def const(self, kind, array):
        name = self.name(kind)
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def model(self, name, opset):
        """The checked model of the nodes so far: 1x3x224x224 "input" to 1x1000 "logits"."""
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
            self.inits,
        )
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="pith-benches")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model

    def add(self, x, y):
        """A residual connection: x + y."""
        out = self.name("add")
        self.nodes.append(helper.make_node("Add", [x, y], [out]))
        return out

    def conv_bn(self, x, cin, cout, k, stride, groups, relu6, act=None):
        fan_in = cin // groups * k * k
        w = self.rng.normal(0, np.sqrt(2.0 / fan_in), (cout, cin // groups, k, k))
        conv = self.name("conv")
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.const("w", w)],
                [conv],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[k // 2] * 4,
                group=groups,
            )
        )
        bn = self.name("bn")
        scale = self.rng.uniform(0.5, 1.5, cout)
        bias = self.rng.normal(0, 0.1, cout)
        mean = self.rng.normal(0, 0.1, cout)
        var = self.rng.uniform(0.5, 1.5, cout)
        ins = [conv] + [self.const(k, v) for k, v in (("s", scale), ("b", bias), ("m", mean), ("v", var))]
        self.nodes.append(helper.make_node("BatchNormalization", ins, [bn], epsilon=1e-5))
        if act is not None:
            out = self.name(act.lower())
            self.nodes.append(helper.make_node(act, [bn], [out]))
            return out
        if not relu6:
            return bn
        out = self.name("relu6")
        lo, hi = self.const("lo", np.array(0.0)), self.const("hi", np.array(6.0))
        self.nodes.append(helper.make_node("Clip", [bn, lo, hi], [out]))
        return out


def mobilenet_v2(seed=20261201):
    b = Builder(seed)
    x = b.conv_bn("input", 3, 32, 3, 2, 1, True)
    cin = 32
    for t, c, n, s in BLOCKS:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = x if t == 1 else b.conv_bn(x, cin, hidden, 1, 1, 1, True)
            y = b.conv_bn(y, hidden, hidden, 3, stride, hidden, True)
            y = b.conv_bn(y, hidden, c, 1, 1, 1, False)
            if stride == 1 and cin == c:
                y = b.add(x, y)
            x, cin = y, c
    x = b.conv_bn(x, cin, 1280, 1, 1, 1, True)
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"]))
    b.nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], axis=1))
    w = b.rng.normal(0, np.sqrt(1.0 / 1280), (1000, 1280))
    fc_w, fc_b = b.const("fc_w", w), b.const("fc_b", np.zeros(1000))
    b.nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["logits"], transB=1))
    return b.model("mobilenet_v2", 13)


# MobileNetV3-Small blocks: (kernel, expansion channels, output channels, squeeze-excite,
# activation, stride), as in the paper's Table 2.
V3_SMALL = [
    (3, 16, 16, True, "Relu", 2),
    (3, 72, 24, False, "Relu", 2),
    (3, 88, 24, False, "Relu", 1),
    (5, 96, 40, True, "HardSwish", 2),
    (5, 240, 40, True, "HardSwish", 1),
    (5, 240, 40, True, "HardSwish", 1),
    (5, 120, 48, True, "HardSwish", 1),
    (5, 144, 48, True, "HardSwish", 1),
    (5, 288, 96, True, "HardSwish", 2),
    (5, 576, 96, True, "HardSwish", 1),
    (5, 576, 96, True, "HardSwish", 1),
]


def squeeze_excite(b, x, channels):
    """x * HardSigmoid(W2 Relu(W1 GlobalAveragePool(x))), squeezing to a quarter (multiple of 8)."""
    squeezed = max(8, (channels // 4 + 4) // 8 * 8)
    pool = b.name("se_pool")
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], [pool]))
    y = pool
    for cin, cout, act in ((channels, squeezed, "Relu"), (squeezed, channels, "HardSigmoid")):
        w = b.rng.normal(0, np.sqrt(2.0 / cin), (cout, cin, 1, 1))
        conv = b.name("se_conv")
        b.nodes.append(helper.make_node("Conv", [y, b.const("w", w), b.const("b", np.zeros(cout))], [conv]))
        y = b.name(act.lower())
        attrs = {"alpha": 1.0 / 6.0, "beta": 0.5} if act == "HardSigmoid" else {}
        b.nodes.append(helper.make_node(act, [conv], [y], **attrs))
    out = b.name("se_mul")
    b.nodes.append(helper.make_node("Mul", [x, y], [out]))
    return out


def mobilenet_v3_small(seed=20261202):
    b = Builder(seed)
    x = b.conv_bn("input", 3, 16, 3, 2, 1, False, "HardSwish")
    cin = 16
    for k, hidden, c, se, act, stride in V3_SMALL:
        y = x if hidden == cin else b.conv_bn(x, cin, hidden, 1, 1, 1, False, act)
        y = b.conv_bn(y, hidden, hidden, k, stride, hidden, False, act)
        if se:
            y = squeeze_excite(b, y, hidden)
        y = b.conv_bn(y, hidden, c, 1, 1, 1, False)
        if stride == 1 and cin == c:
            y = b.add(x, y)
        x, cin = y, c
    x = b.conv_bn(x, cin, 576, 1, 1, 1, False, "HardSwish")
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"]))
    b.nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], axis=1))
    prev = "flat"
    for i, (cin, cout) in enumerate(((576, 1024), (1024, 1000))):
        w = b.rng.normal(0, np.sqrt(1.0 / cin), (cout, cin))
        out = "logits" if i == 1 else "fc1"
        b.nodes.append(helper.make_node("Gemm", [prev, b.const("fc_w", w), b.const("fc_b", np.zeros(cout))], [out], transB=1))
        if i == 0:
            b.nodes.append(helper.make_node("HardSwish", ["fc1"], ["fc1_act"]))
            prev = "fc1_act"
    return b.model("mobilenet_v3_small", 14)


if __name__ == "__main__":
    args = sys.argv[1:]
    v3 = "--v3-small" in args
    paths = [a for a in args if a != "--v3-small"]
    if len(paths) != 1:
        sys.exit(__doc__)
    onnx.save(mobilenet_v3_small() if v3 else mobilenet_v2(), paths[0])
    print(f"wrote {paths[0]}")
