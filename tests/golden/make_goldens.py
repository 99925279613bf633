#!/usr/bin/env python3
"""Generates the reference data of Pith's end-to-end tests with onnxruntime.

Run from anywhere (paths are relative to this file):

    python3 tests/golden/make_goldens.py

Versions used for the committed data: Python 3, numpy 2.4.6, onnx 1.23.2, onnxruntime 1.32.0,
Pillow 13.0.0. CI never runs this script; it only reads what it wrote. Seeds are fixed and
onnxruntime runs single-threaded with graph optimisations disabled, so re-running it rewrites the
same bytes (up to onnxruntime/numpy version changes).

What it writes (under tests/data/):

* ``ops/<case>/model.onnx`` + ``input.<name>.npy`` + ``output.<name>.npy``: one small model per
  operator feature, built with ``onnx.helper`` (opset 13 unless the case is about another opset),
  random float32 inputs, and onnxruntime's outputs. ``<name>`` is the ONNX value name with every
  character outside ``[A-Za-z0-9_]`` replaced by ``_``. Arrays are float32, C order. The whole
  ``ops/`` folder is rewritten, so removed cases do not linger.
* ``golden/blazeface/``: ``input.input.npy`` (astronaut.png, MediaPipe-style preprocessing: resized
  to 128x128 with Pillow's bilinear filter - the image is square, so the letterbox adds no padding -
  RGB, scaled to [-1, 1], NCHW) and the model's ``output.regressors.npy`` /
  ``output.classificators.npy``.
* ``golden/blazeface_camera/``: the same for camera.png (greyscale, replicated to RGB).
* ``golden/blazeface_full_range/`` and ``golden/blazeface_back/``: astronaut.png for the full-range
  (192x192) and back-camera (256x256) BlazeFace models, preprocessed the same way at their size.
* ``golden/ppocr/``: ``input.x.npy`` (page.png, PaddleOCR-style preprocessing: resized so both
  sides are multiples of 32 - 384x191 becomes 384x192, Pillow bilinear - RGB / 255, ImageNet
  mean/std normalisation, NCHW; the page is grey, so RGB vs BGR channel order makes no difference)
  and ``output.sigmoid_0_tmp_0.npy``.
* ``golden/ppocr_v3/``: PP-OCRv3 det on the same ``input.x.npy`` as ``golden/ppocr/``.
* ``golden/ppocr_cls/`` and ``golden/ppocr_cls_flipped/``: the direction classifier on page.png's
  first text line (cropped at x 4..294, y 9..35), upright and turned 180°, PaddleOCR-style
  (scaled to 48 px high and at most 192 wide, to [-1, 1], zero-padded to 192 columns, NCHW).
* ``golden/ppocr_rec/``: the PP-OCRv3 text recognizer on the same line, PaddleOCR-style (scaled
  to 48 px high and at most 320 wide, to [-1, 1], zero-padded to 320 columns, NCHW); its output is
  the per-step probabilities over the 6625 classes of its character set.
* ``bad/unknown_op.onnx``: a valid ONNX model using an operator Pith does not support (Erf).
"""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "data"))
OPS = os.path.join(DATA, "ops")
GOLDEN = os.path.join(DATA, "golden")
BAD = os.path.join(DATA, "bad")
MODELS = os.path.join(DATA, "models")
IMAGES = os.path.join(DATA, "images")
# camera.png (scikit-image "cameraman") is not bundled with the tests; it only feeds the second
# BlazeFace golden. Point PITH_EXTRA_IMAGES at a folder holding it; without it that golden is kept.
EXTRA_IMAGES = os.environ.get("PITH_EXTRA_IMAGES", "/work/shared/images")

F = TensorProto.FLOAT
I64 = TensorProto.INT64


def sanitize(name: str) -> str:
    """File-name form of an ONNX value name (the Rust tests apply the same mapping)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def save_npy(path: str, arr: np.ndarray) -> None:
    # Not np.ascontiguousarray: it turns 0-d (scalar) arrays into 1-d ones.
    np.save(path, np.asarray(arr, dtype=np.float32, order="C"))


def run_ort(model_bytes: bytes, feeds: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return list(zip(names, sess.run(names, feeds)))


# ----------------------------------------------------------------------------------------------
# Per-op cases
# ----------------------------------------------------------------------------------------------

CASES: list[str] = []
RNG = np.random.default_rng(20261123)


def rand(*shape: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    return RNG.uniform(lo, hi, size=shape).astype(np.float32)


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(size=shape).astype(np.float32)


def init(name: str, arr) -> TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def i64(name: str, values) -> TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


def f32(name: str, values) -> TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def const_node(name: str, arr: np.ndarray) -> onnx.NodeProto:
    """A Constant node producing `name` (weights stored in the graph, not as initializers)."""
    return helper.make_node(
        "Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(arr, name)
    )


def case(
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    outputs: list[str],
    inits: list[TensorProto] = (),
    opset: int = 13,
    dims: dict[str, list] | None = None,
) -> None:
    """Builds, checks, runs and saves one op case.

    `dims` overrides an input's declared shape (e.g. with dim_param strings for dynamic dims).
    """
    assert name not in CASES, name
    dims = dims or {}
    for i, n in enumerate(nodes):
        if not n.name:
            n.name = f"{n.op_type.lower()}_{i}"
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(k, F, dims.get(k, list(v.shape))) for k, v in inputs.items()],
        [helper.make_tensor_value_info(o, F, None) for o in outputs],
        initializer=list(inits),
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="pith-goldens"
    )
    model.ir_version = 8
    # Declare the outputs' shapes as ONNX shape inference derives them (symbolic where dynamic).
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    for out, inf in zip(model.graph.output, inferred.graph.output):
        out.CopyFrom(inf)
    if not all(o.type.tensor_type.HasField("shape") for o in model.graph.output):
        # Inference lost the rank (data-dependent Reshape): declare symbolic dims of ORT's rank.
        ranks = {k: v.ndim for k, v in run_ort(model.SerializeToString(), inputs)}
        for o in model.graph.output:
            if not o.type.tensor_type.HasField("shape"):
                dims_o = [f"{sanitize(o.name)}_d{i}" for i in range(ranks[o.name])]
                o.CopyFrom(helper.make_tensor_value_info(o.name, F, dims_o))
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    results = run_ort(data, inputs)
    out_dir = os.path.join(OPS, name)
    os.makedirs(out_dir)
    with open(os.path.join(out_dir, "model.onnx"), "wb") as f:
        f.write(data)
    for k, v in inputs.items():
        save_npy(os.path.join(out_dir, f"input.{sanitize(k)}.npy"), v)
    for k, v in results:
        assert v.dtype == np.float32, (name, k, v.dtype)
        assert np.all(np.isfinite(v)), (name, k)
        save_npy(os.path.join(out_dir, f"output.{sanitize(k)}.npy"), v)
    CASES.append(name)


def node(op: str, ins: list[str], outs: list[str], **attrs) -> onnx.NodeProto:
    return helper.make_node(op, ins, outs, **attrs)


def unary(name: str, op: str, x: np.ndarray, opset: int = 13, **attrs) -> None:
    case(name, [node(op, ["x"], ["y"], **attrs)], {"x": x}, ["y"], opset=opset)


def conv_cases() -> None:
    def conv(name, x_shape, w_shape, bias=True, const_nodes=False, **attrs):
        w = randn(*w_shape) * 0.3
        ins = ["x", "w"] + (["b"] if bias else [])
        nodes, inits = [], []
        tensors = {"w": w}
        if bias:
            tensors["b"] = randn(w_shape[0])
        for k, v in tensors.items():
            if const_nodes:
                nodes.append(const_node(k, v))
            else:
                inits.append(init(k, v))
        nodes.append(node("Conv", ins, ["y"], **attrs))
        case(name, nodes, {"x": randn(*x_shape)}, ["y"], inits)

    conv("conv_basic_3ch_7x5", [1, 3, 7, 5], [4, 3, 3, 3], pads=[1, 1, 1, 1])
    conv("conv_no_pad", [1, 3, 7, 5], [5, 3, 3, 2])
    conv("conv_groups", [1, 4, 6, 5], [6, 2, 3, 3], group=2, pads=[1, 1, 1, 1])
    conv("conv_depthwise_stride2", [1, 5, 9, 7], [5, 1, 3, 3], group=5, strides=[2, 2],
         pads=[1, 1, 1, 1])
    conv("conv_depthwise_5x5", [1, 6, 8, 11], [6, 1, 5, 5], group=6, pads=[2, 2, 2, 2])
    conv("conv_strides_dilations", [1, 3, 11, 9], [4, 3, 3, 3], strides=[2, 1],
         dilations=[2, 3], pads=[1, 2, 1, 2])
    conv("conv_asym_pads", [1, 3, 7, 5], [4, 3, 3, 3], pads=[0, 1, 2, 1])
    conv("conv_same_upper", [1, 3, 7, 6], [4, 3, 4, 3], auto_pad="SAME_UPPER", strides=[2, 2])
    conv("conv_same_lower", [1, 3, 7, 6], [4, 3, 4, 3], auto_pad="SAME_LOWER", strides=[2, 2])
    conv("conv_valid", [1, 3, 9, 8], [2, 3, 3, 3], auto_pad="VALID", strides=[2, 2])
    conv("conv_no_bias", [1, 3, 7, 5], [4, 3, 3, 3], bias=False, pads=[1, 1, 1, 1])
    conv("conv_1x1", [1, 8, 5, 7], [5, 8, 1, 1])
    conv("conv_1x1_stride2", [1, 6, 7, 9], [4, 6, 1, 1], strides=[2, 2])
    conv("conv_batch2", [2, 3, 6, 5], [3, 3, 3, 3], pads=[1, 1, 1, 1])
    conv("conv_wide_channels", [1, 19, 9, 10], [21, 19, 3, 3], pads=[1, 1, 1, 1])
    conv("conv_kernel_shape_attr", [1, 3, 6, 7], [2, 3, 2, 2], kernel_shape=[2, 2],
         strides=[2, 2])
    conv("conv_weights_constant_nodes", [1, 3, 7, 5], [4, 3, 3, 3], const_nodes=True,
         pads=[1, 1, 1, 1])


def conv_transpose_cases() -> None:
    def convt(name, x_shape, w_shape, bias=True, **attrs):
        group = attrs.get("group", 1)
        inits = [init("w", randn(*w_shape) * 0.3)]
        ins = ["x", "w"]
        if bias:
            inits.append(init("b", randn(w_shape[1] * group)))
            ins.append("b")
        case(name, [node("ConvTranspose", ins, ["y"], **attrs)], {"x": randn(*x_shape)}, ["y"],
             inits)

    convt("convtranspose_stride2_k2", [1, 4, 5, 3], [4, 3, 2, 2], strides=[2, 2])
    convt("convtranspose_output_padding", [1, 3, 4, 5], [3, 2, 3, 3], strides=[2, 2],
          pads=[1, 1, 1, 1], output_padding=[1, 1])
    convt("convtranspose_groups", [1, 4, 3, 5], [4, 3, 3, 3], group=2, strides=[2, 2],
          pads=[1, 0, 0, 1])
    convt("convtranspose_no_bias_stride1", [1, 2, 5, 4], [2, 3, 3, 2], bias=False,
          pads=[1, 0, 1, 1])
    convt("convtranspose_asym_stride", [2, 3, 4, 3], [3, 2, 3, 3], strides=[3, 2],
          pads=[0, 1, 2, 0])


def gemm_cases() -> None:
    case("gemm_basic", [node("Gemm", ["a", "b", "c"], ["y"])], {"a": randn(3, 5)}, ["y"],
         [init("b", randn(5, 4)), init("c", randn(4))])
    case("gemm_trans_alpha_beta", [node("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1,
                                        alpha=0.7, beta=1.3)],
         {"a": randn(5, 3)}, ["y"], [init("b", randn(4, 5)), init("c", randn(3, 1))])
    case("gemm_transb_scalar_c", [node("Gemm", ["a", "b", "c"], ["y"], transB=1, beta=0.5)],
         {"a": randn(2, 7)}, ["y"], [init("b", randn(6, 7)), init("c", randn(1))])
    case("gemm_full_c", [node("Gemm", ["a", "b", "c"], ["y"], transA=1)],
         {"a": randn(4, 3), "c": randn(3, 5)}, ["y"], [init("b", randn(4, 5))])
    case("gemm_no_c", [node("Gemm", ["a", "b"], ["y"], alpha=2.0)], {"a": randn(3, 6)}, ["y"],
         [init("b", randn(6, 2))])
    case("gemm_both_inputs", [node("Gemm", ["a", "b"], ["y"], transB=1)],
         {"a": randn(3, 4), "b": randn(5, 4)}, ["y"])


def matmul_cases() -> None:
    case("matmul_2d", [node("MatMul", ["a", "b"], ["y"])], {"a": randn(3, 7), "b": randn(7, 5)},
         ["y"])
    case("matmul_batched", [node("MatMul", ["a", "b"], ["y"])],
         {"a": randn(2, 3, 4, 5), "b": randn(2, 3, 5, 6)}, ["y"])
    case("matmul_batch_broadcast", [node("MatMul", ["a", "b"], ["y"])],
         {"a": randn(2, 1, 4, 5), "b": randn(3, 5, 2)}, ["y"])
    case("matmul_const_b", [node("MatMul", ["a", "b"], ["y"])], {"a": randn(6, 9)}, ["y"],
         [init("b", randn(9, 4))])
    case("matmul_batched_const_b", [node("MatMul", ["a", "b"], ["y"])], {"a": randn(2, 3, 5)},
         ["y"], [init("b", randn(5, 7))])


def batchnorm_cases() -> None:
    def bn_inits(c):
        return [init("scale", rand(c, lo=0.5, hi=1.5)), init("bias", randn(c)),
                init("mean", randn(c)), init("var", rand(c, lo=0.2, hi=2.0))]

    case("batchnorm_standalone",
         [node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["y"], epsilon=1e-3)],
         {"x": randn(2, 3, 4, 5)}, ["y"], bn_inits(3))
    case("batchnorm_after_add",
         [node("Add", ["x", "z"], ["s"]),
          node("BatchNormalization", ["s", "scale", "bias", "mean", "var"], ["y"])],
         {"x": randn(1, 4, 3, 5), "z": randn(1, 4, 3, 5)}, ["y"], bn_inits(4))
    case("batchnorm_after_conv",
         [node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
          node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"], epsilon=1e-5)],
         {"x": randn(1, 3, 6, 5)}, ["y"], bn_inits(4) + [init("w", randn(4, 3, 3, 3) * 0.3)])


def binary_cases() -> None:
    def bin2(name, op, a, b, b_const=False, a_const=False):
        ins, inits = {}, []
        for nm, v, c in (("a", a, a_const), ("b", b, b_const)):
            if c:
                inits.append(init(nm, v))
            else:
                ins[nm] = v
        case(name, [node(op, ["a", "b"], ["y"])], ins, ["y"], inits)

    bin2("add_same_shape", "Add", randn(2, 3, 4), randn(2, 3, 4))
    bin2("add_scalar_const", "Add", randn(2, 3, 5), np.array(0.75, np.float32), b_const=True)
    bin2("add_per_channel", "Add", randn(1, 3, 4, 5), randn(1, 3, 1, 1), b_const=True)
    bin2("add_rank_mismatch", "Add", randn(2, 3, 4, 5), randn(4, 5))
    bin2("add_both_broadcast", "Add", randn(3, 1, 5), randn(1, 4, 1))
    bin2("sub_broadcast", "Sub", randn(2, 3, 4), randn(3, 1))
    bin2("sub_const_lhs", "Sub", np.array([1.5], np.float32), randn(2, 5), a_const=True)
    bin2("mul_per_channel", "Mul", randn(1, 4, 3, 5), randn(4, 1, 1), b_const=True)
    bin2("mul_both_broadcast", "Mul", randn(2, 1, 3, 1), randn(1, 4, 1, 5))
    bin2("div_rank_mismatch", "Div", randn(2, 3, 4), rand(4, lo=0.5, hi=2.0))
    bin2("div_const_numerator", "Div", np.array(1.0, np.float32), rand(3, 5, lo=0.5, hi=2.0),
         a_const=True)
    bin2("div_scalar_const", "Div", randn(3, 4, 5), np.array(6.0, np.float32), b_const=True)
    bin2("pow_scalar_exponent", "Pow", rand(3, 7, lo=0.1, hi=2.0), np.array(2.0, np.float32),
         b_const=True)
    bin2("pow_sqrt_exponent", "Pow", rand(2, 3, 5, lo=0.1, hi=3.0), np.array(0.5, np.float32),
         b_const=True)
    bin2("pow_tensor_broadcast", "Pow", rand(2, 3, 4, lo=0.2, hi=2.0), rand(4, lo=-1.5, hi=1.5))
    bin2("pow_negative_base_int_exponent", "Pow", randn(3, 5), np.array(3.0, np.float32),
         b_const=True)
    case("add_constant_node_scalar",
         [const_node("k", np.array(-0.25, np.float32)), node("Add", ["x", "k"], ["y"])],
         {"x": randn(2, 3, 3)}, ["y"])


def unary_cases() -> None:
    unary("sqrt_positive", "Sqrt", rand(2, 3, 5, lo=0.01, hi=4.0))
    unary("relu", "Relu", randn(2, 3, 4, 5))
    case("prelu_per_channel", [node("PRelu", ["x", "slope"], ["y"])], {"x": randn(1, 3, 4, 5)},
         ["y"], [init("slope", rand(3, 1, 1, lo=0.0, hi=0.5))])
    case("prelu_single_slope", [node("PRelu", ["x", "slope"], ["y"])], {"x": randn(2, 7)}, ["y"],
         [init("slope", np.array([0.2], np.float32))])
    unary("leaky_relu", "LeakyRelu", randn(3, 4, 5), alpha=0.13)
    unary("leaky_relu_default_alpha", "LeakyRelu", randn(2, 9))
    case("clip_inputs_opset13", [node("Clip", ["x", "lo", "hi"], ["y"])], {"x": randn(2, 3, 5)},
         ["y"], [f32("lo", -0.5), f32("hi", 0.8)])
    case("clip_relu6_opset11", [node("Clip", ["x", "lo", "hi"], ["y"])],
         {"x": randn(2, 3, 5) * 5.0}, ["y"], [f32("lo", 0.0), f32("hi", 6.0)], opset=11)
    case("clip_min_only", [node("Clip", ["x", "lo", ""], ["y"])], {"x": randn(3, 6)}, ["y"],
         [f32("lo", -0.3)])
    case("clip_max_only", [node("Clip", ["x", "", "hi"], ["y"])], {"x": randn(3, 6)}, ["y"],
         [f32("hi", 0.4)])
    unary("clip_attrs_opset6", "Clip", randn(3, 4, 5), opset=6, min=-0.6, max=0.3)
    unary("sigmoid", "Sigmoid", randn(2, 3, 4) * 4.0)
    unary("hard_sigmoid_default", "HardSigmoid", randn(3, 5) * 4.0)
    unary("hard_sigmoid_ppocr", "HardSigmoid", randn(2, 3, 5) * 4.0, alpha=0.1666667, beta=0.5)
    unary("hard_swish_opset14", "HardSwish", randn(2, 3, 7) * 4.0, opset=14)
    unary("tanh", "Tanh", randn(2, 5, 3) * 2.0)


def pool_cases() -> None:
    unary("maxpool_2x2_s2", "MaxPool", randn(1, 3, 8, 6), kernel_shape=[2, 2], strides=[2, 2])
    unary("maxpool_pads", "MaxPool", randn(1, 2, 7, 5), kernel_shape=[3, 3], strides=[2, 2],
          pads=[1, 1, 1, 1])
    unary("maxpool_asym_pads", "MaxPool", randn(1, 2, 6, 5), kernel_shape=[2, 2], strides=[2, 2],
          pads=[0, 0, 1, 1])
    unary("maxpool_ceil_mode", "MaxPool", randn(1, 2, 7, 8), kernel_shape=[3, 3], strides=[2, 2],
          ceil_mode=1)
    unary("maxpool_same_upper", "MaxPool", randn(1, 3, 7, 6), kernel_shape=[2, 3], strides=[2, 2],
          auto_pad="SAME_UPPER")
    unary("maxpool_dilations", "MaxPool", randn(1, 2, 7, 7), kernel_shape=[2, 2], strides=[1, 1],
          dilations=[2, 2])
    unary("maxpool_3x3_s1_same", "MaxPool", randn(2, 3, 5, 6), kernel_shape=[3, 3],
          pads=[1, 1, 1, 1])
    unary("avgpool_include_pad", "AveragePool", randn(1, 3, 7, 5), kernel_shape=[3, 3],
          strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    unary("avgpool_exclude_pad", "AveragePool", randn(1, 3, 7, 5), kernel_shape=[3, 3],
          strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0)
    unary("avgpool_ceil_mode", "AveragePool", randn(1, 2, 7, 8), kernel_shape=[3, 3], strides=[2, 2],
          ceil_mode=1)
    unary("avgpool_ceil_mode_include_pad", "AveragePool", randn(1, 2, 6, 7), kernel_shape=[2, 2],
          strides=[2, 2], pads=[1, 0, 0, 1], ceil_mode=1, count_include_pad=1)
    unary("avgpool_2x2", "AveragePool", randn(2, 3, 6, 4), kernel_shape=[2, 2], strides=[2, 2])
    unary("global_average_pool", "GlobalAveragePool", randn(1, 5, 7, 3))
    unary("global_average_pool_batch2", "GlobalAveragePool", randn(2, 3, 4, 9))


def resize_cases() -> None:
    def resize(name, x, *, scales=None, sizes=None, opset=13, roi_const=False, **attrs):
        inits = []
        roi = ""
        if roi_const or opset < 13:
            inits.append(f32("roi", np.zeros(0, np.float32)))
            roi = "roi"
        if scales is not None:
            inits.append(f32("scales", scales))
            ins = ["x", roi, "scales"]
        else:
            if opset < 13:
                inits.append(f32("scales", np.zeros(0, np.float32)))
                ins = ["x", roi, "scales", "sizes"]
            else:
                ins = ["x", roi, "", "sizes"]
            inits.append(i64("sizes", sizes))
        case(name, [node("Resize", ins, ["y"], **attrs)], {"x": x}, ["y"], inits, opset=opset)

    resize("resize_nearest_asymmetric_floor_x2", randn(1, 3, 4, 5), scales=[1, 1, 2, 2],
           mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    resize("resize_nearest_ppocr_opset11", randn(1, 2, 3, 5), scales=[1, 1, 2, 2], opset=11,
           mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    resize("resize_nearest_asymmetric_floor_x4", randn(1, 2, 3, 2), scales=[1, 1, 4, 4],
           roi_const=True, mode="nearest", coordinate_transformation_mode="asymmetric",
           nearest_mode="floor")
    resize("resize_nearest_half_pixel_round_prefer_floor_sizes", randn(1, 2, 4, 3),
           sizes=[1, 2, 7, 5], mode="nearest", coordinate_transformation_mode="half_pixel",
           nearest_mode="round_prefer_floor")
    resize("resize_nearest_default_attrs_down", randn(1, 2, 7, 9), sizes=[1, 2, 3, 4])
    resize("resize_linear_half_pixel_x2", randn(1, 2, 4, 5), scales=[1, 1, 2, 2], mode="linear",
           coordinate_transformation_mode="half_pixel")
    resize("resize_linear_half_pixel_frac_scales", randn(1, 2, 4, 4), scales=[1, 1, 1.5, 1.75],
           mode="linear", coordinate_transformation_mode="half_pixel")
    resize("resize_linear_align_corners_sizes", randn(1, 2, 4, 5), sizes=[1, 2, 7, 9],
           mode="linear", coordinate_transformation_mode="align_corners")
    resize("resize_linear_asymmetric_scales", randn(1, 3, 3, 4), scales=[1, 1, 2, 3],
           mode="linear", coordinate_transformation_mode="asymmetric")
    resize("resize_linear_half_pixel_down_sizes", randn(1, 2, 8, 9), sizes=[1, 2, 5, 4],
           mode="linear", coordinate_transformation_mode="half_pixel")


def shape_cases() -> None:
    case("concat_axis1_with_const", [node("Concat", ["a", "b", "c"], ["y"], axis=1)],
         {"a": randn(1, 2, 3, 4), "b": randn(1, 3, 3, 4)}, ["y"], [init("c", randn(1, 1, 3, 4))])
    case("concat_negative_axis", [node("Concat", ["a", "b"], ["y"], axis=-1)],
         {"a": randn(2, 3, 2), "b": randn(2, 3, 5)}, ["y"])

    def slc(name, x, starts, ends, axes=None, steps=None):
        inits = [i64("starts", starts), i64("ends", ends)]
        ins = ["x", "starts", "ends"]
        if axes is not None:
            inits.append(i64("axes", axes))
            ins.append("axes")
        if steps is not None:
            if axes is None:
                ins.append("")
            inits.append(i64("steps", steps))
            ins.append("steps")
        case(name, [node("Slice", ins, ["y"])], {"x": x}, ["y"], inits)

    slc("slice_basic", randn(3, 6, 5), [1, 0, 1], [3, 4, 5])
    slc("slice_axes_subset_unordered", randn(2, 5, 4, 7), [1, 2], [6, 5], axes=[3, 1])
    slc("slice_negative_steps", randn(4, 7, 5), [-1, 5], [-1000, 0], axes=[0, 1], steps=[-1, -2])
    slc("slice_steps_and_negative_axes", randn(2, 9, 8), [1, -7], [9, 2 ** 62], axes=[-2, -1],
        steps=[3, 2])
    slc("slice_clamped_ends", randn(3, 4), [-100, 2], [100, 2 ** 63 - 1], axes=[0, 1])

    case("split_equal_opset13", [node("Split", ["x"], ["y0", "y1", "y2"], axis=1)],
         {"x": randn(2, 6, 3)}, ["y0", "y1", "y2"])
    case("split_sizes_opset13", [node("Split", ["x", "split"], ["y0", "y1", "y2"], axis=-1)],
         {"x": randn(2, 3, 6)}, ["y0", "y1", "y2"], [i64("split", [2, 3, 1])])
    case("split_attr_opset11", [node("Split", ["x"], ["y0", "y1"], axis=0, split=[1, 3])],
         {"x": randn(4, 5)}, ["y0", "y1"], opset=11)

    case("reshape_zero_and_minus_one", [node("Reshape", ["x", "shape"], ["y"])],
         {"x": randn(2, 3, 4, 5)}, ["y"], [i64("shape", [0, -1, 5])])
    case("reshape_then_relu", [node("Reshape", ["x", "shape"], ["r"]), node("Relu", ["r"], ["y"])],
         {"x": randn(6, 5)}, ["y"], [i64("shape", [3, 0, 2, -1])])
    case("flatten_axis2", [node("Flatten", ["x"], ["y"], axis=2)], {"x": randn(2, 3, 4, 5)}, ["y"])
    case("flatten_default", [node("Flatten", ["x"], ["y"])], {"x": randn(3, 2, 5)}, ["y"])
    case("transpose_nchw_to_nhwc", [node("Transpose", ["x"], ["y"], perm=[0, 2, 3, 1])],
         {"x": randn(2, 3, 4, 5)}, ["y"])
    case("transpose_default_reverse", [node("Transpose", ["x"], ["y"])], {"x": randn(3, 4, 5)},
         ["y"])
    case("squeeze_axes_input", [node("Squeeze", ["x", "axes"], ["y"])], {"x": randn(1, 3, 1, 5)},
         ["y"], [i64("axes", [0, -2])])
    case("squeeze_all_ones", [node("Squeeze", ["x"], ["y"])], {"x": randn(1, 4, 1, 1)}, ["y"])
    case("squeeze_attr_opset11", [node("Squeeze", ["x"], ["y"], axes=[2])],
         {"x": randn(3, 2, 1)}, ["y"], opset=11)
    case("unsqueeze_axes_input", [node("Unsqueeze", ["x", "axes"], ["y"])],
         {"x": randn(3, 5)}, ["y"], [i64("axes", [0, -1])])
    case("unsqueeze_attr_opset11", [node("Unsqueeze", ["x"], ["y"], axes=[1])],
         {"x": randn(2, 3)}, ["y"], opset=11)

    def pad(name, x, pads, mode, value=None):
        inits = [i64("pads", pads)]
        ins = ["x", "pads"]
        if value is not None:
            inits.append(f32("value", value))
            ins.append("value")
        case(name, [node("Pad", ins, ["y"], mode=mode)], {"x": x}, ["y"], inits)

    pad("pad_constant_value", randn(1, 2, 3, 4), [0, 0, 1, 2, 0, 1, 2, 0], "constant", 0.5)
    pad("pad_constant_default_zero", randn(2, 3, 4), [0, 1, 0, 1, 2, 3], "constant")
    pad("pad_channels_blazeface", randn(1, 3, 4, 4), [0, 0, 0, 0, 0, 5, 0, 0], "constant")
    pad("pad_reflect", randn(1, 2, 4, 5), [0, 0, 2, 1, 0, 0, 1, 3], "reflect")
    pad("pad_edge", randn(1, 2, 3, 4), [0, 0, 1, 3, 0, 0, 2, 1], "edge")

    case("softmax_opset13_axis1", [node("Softmax", ["x"], ["y"], axis=1)],
         {"x": randn(2, 4, 3, 5) * 3.0}, ["y"])
    case("softmax_opset13_default_axis", [node("Softmax", ["x"], ["y"])],
         {"x": randn(3, 7) * 3.0}, ["y"])
    case("softmax_opset11_axis1_coerced_2d", [node("Softmax", ["x"], ["y"], axis=1)],
         {"x": randn(2, 3, 2, 4) * 3.0}, ["y"], opset=11)
    case("reduce_mean_keepdims", [node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=1)],
         {"x": randn(2, 3, 4, 5)}, ["y"])
    case("reduce_mean_no_keepdims", [node("ReduceMean", ["x"], ["y"], axes=[-2], keepdims=0)],
         {"x": randn(2, 3, 4)}, ["y"])
    case("reduce_mean_all_axes", [node("ReduceMean", ["x"], ["y"], keepdims=0)],
         {"x": randn(3, 4, 2)}, ["y"])
    case("cast_float_to_float", [node("Cast", ["x"], ["c"], to=F), node("Relu", ["c"], ["y"])],
         {"x": randn(2, 5)}, ["y"])
    case("cast_shape_to_float",
         [node("Shape", ["x"], ["s"]), node("Cast", ["s"], ["sf"], to=F),
          node("ReduceMean", ["x"], ["m"], axes=[0, 1, 2], keepdims=0),
          node("Mul", ["m", "sf"], ["y"])],
         {"x": randn(2, 3, 4)}, ["y"])
    case("gather_f32_axis1", [node("Gather", ["x", "idx"], ["y"], axis=1)],
         {"x": randn(3, 5, 2)}, ["y"], [i64("idx", [4, 0, -1, 2])])
    case("identity", [node("Identity", ["x"], ["i"]), node("Sigmoid", ["i"], ["y"])],
         {"x": randn(2, 3, 4)}, ["y"])
    case("identity_graph_output", [node("Identity", ["x"], ["y"])], {"x": randn(3, 2)}, ["y"])

    # Flatten via Shape -> Gather -> Unsqueeze -> Concat -> Reshape on dynamic dims.
    case("dynamic_shape_gather_concat_reshape",
         [node("Shape", ["x"], ["s"]),
          node("Gather", ["s", "zero"], ["n"], axis=0),
          node("Unsqueeze", ["n", "axes0"], ["n1"]),
          node("Concat", ["n1", "minus_one"], ["shape"], axis=0),
          node("Reshape", ["x", "shape"], ["r"]),
          node("Relu", ["r"], ["y"])],
         {"x": randn(2, 3, 5, 4)}, ["y"],
         [i64("zero", 0), i64("axes0", [0]), i64("minus_one", [-1])],
         dims={"x": ["N", 3, "H", "W"]})
    # FPN-style: resize one map to the spatial size of another, both dynamic.
    case("dynamic_resize_to_shape_of",
         [node("Shape", ["a"], ["sa"]), node("Shape", ["b"], ["sb"]),
          node("Slice", ["sa", "s0", "s2"], ["nc"]),
          node("Slice", ["sb", "s2", "s4"], ["hw"]),
          node("Concat", ["nc", "hw"], ["sizes"], axis=0),
          node("Resize", ["a", "", "", "sizes"], ["ra"], mode="nearest",
               coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
          node("Add", ["ra", "b"], ["y"])],
         {"a": randn(1, 2, 3, 4), "b": randn(1, 2, 6, 8)}, ["y"],
         [i64("s0", [0]), i64("s2", [2]), i64("s4", [4])],
         dims={"a": [1, 2, "h", "w"], "b": [1, 2, "h2", "w2"]})


def block_cases() -> None:
    """Small multi-op blocks shaped like the real models (fusion and folding opportunities)."""
    c = 4
    case("block_conv_bn_relu_maxpool",
         [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
          node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["n"]),
          node("Relu", ["n"], ["r"]),
          node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
         {"x": randn(1, 3, 9, 8)}, ["y"],
         [init("w", randn(c, 3, 3, 3) * 0.3), init("b", randn(c)),
          init("scale", rand(c, lo=0.5, hi=1.5)), init("bias", randn(c)), init("mean", randn(c)),
          init("var", rand(c, lo=0.2, hi=2.0))])
    case("block_squeeze_excite_hardswish",
         [node("GlobalAveragePool", ["x"], ["g"]),
          node("Conv", ["g", "w1", "b1"], ["c1"]),
          node("Relu", ["c1"], ["r1"]),
          node("Conv", ["r1", "w2", "b2"], ["c2"]),
          node("HardSigmoid", ["c2"], ["h"], alpha=0.1666667, beta=0.5),
          node("Mul", ["x", "h"], ["m"]),
          node("HardSigmoid", ["m"], ["hs"], alpha=0.1666667, beta=0.5),
          node("Mul", ["m", "hs"], ["y"])],
         {"x": randn(1, 8, 5, 6) * 2.0}, ["y"],
         [init("w1", randn(2, 8, 1, 1) * 0.5), init("b1", randn(2)),
          init("w2", randn(8, 2, 1, 1) * 0.5), init("b2", randn(8))])
    case("block_blazeface_residual",
         [node("Conv", ["x", "dw", "dwb"], ["d"], group=3, pads=[1, 1, 1, 1], strides=[2, 2]),
          node("Conv", ["d", "pw", "pwb"], ["p"]),
          node("MaxPool", ["x"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
          node("Pad", ["mp", "pads"], ["pp"], mode="constant"),
          node("Add", ["p", "pp"], ["s"]),
          node("Relu", ["s"], ["y"])],
         {"x": randn(1, 3, 8, 6)}, ["y"],
         [init("dw", randn(3, 1, 3, 3) * 0.4), init("dwb", randn(3)),
          init("pw", randn(5, 3, 1, 1) * 0.5), init("pwb", randn(5)),
          i64("pads", [0, 0, 0, 0, 0, 2, 0, 0])])
    # PP-OCRv4 det's head: the BatchNormalization and Relu fold into the ConvTranspose at run time.
    case("block_convtranspose_bn_relu",
         [node("ConvTranspose", ["x", "w", "b"], ["t"], strides=[2, 2]),
          node("BatchNormalization", ["t", "scale", "bias", "mean", "var"], ["n"]),
          node("Relu", ["n"], ["y"])],
         {"x": randn(1, 4, 5, 6)}, ["y"],
         [init("w", randn(4, 3, 2, 2) * 0.5), init("b", randn(3)),
          init("scale", rand(3, lo=0.5, hi=1.5)), init("bias", randn(3)), init("mean", randn(3)),
          init("var", rand(3, lo=0.2, hi=2.0))])
    # PP-OCRv4 det's neck: maps upsampled to one size and concatenated along channels, which the
    # planner writes in place.
    case("block_upsample_concat",
         [node("Conv", ["x", "w"], ["c"]),
          node("Resize", ["c", "", "scales"], ["u"], mode="nearest"),
          node("Relu", ["z"], ["r"]),
          node("Concat", ["u", "r"], ["y"], axis=1)],
         {"x": randn(1, 3, 3, 4), "z": randn(1, 2, 6, 8)}, ["y"],
         [init("w", randn(5, 3, 1, 1) * 0.5), f32("scales", [1, 1, 2, 2])])
    # PP-OCRv4 det's FPN adds: a product and the Add after it (and its Relu) in one pass; the
    # second output's addend broadcasts.
    case("block_scale_add_upsampled",
         [node("Mul", ["x", "s"], ["m"]),
          node("Resize", ["u", "", "scales"], ["r"], mode="nearest"),
          node("Add", ["m", "r"], ["a"]),
          node("Relu", ["a"], ["y"]),
          node("Mul", ["x", "x"], ["q"]),
          node("Add", ["c", "q"], ["z"])],
         {"x": randn(1, 4, 6, 8), "u": randn(1, 4, 3, 4)}, ["y", "z"],
         [init("s", randn(1, 4, 1, 1)), f32("scales", [1, 1, 2, 2]), init("c", randn(1, 4, 1, 1))])

    # MobileNetV2's inverted residuals over 14x14 with whole 16-channel blocks: the runtime runs
    # this chain channel-blocked (NCHW16c) where the CPU has the kernels, entering at the first
    # 1x1 layer (planar input), keeping a residual blocked, and leaving at the last 1x1 layer
    # (a graph output) and at a side branch's 1x1 layer before a stride-2 depthwise layer into
    # 7x7 (planar). A second chain from x (1x1, one depthwise layer, a wide 1x1) does not pay for
    # its conversions and stays planar. Appended last: earlier cases keep their data.
    case("block_inverted_residuals_blocked",
         [node("Conv", ["x", "wa", "ba"], ["a"]),
          node("Conv", ["a", "we1", "be1"], ["e1"]),
          node("Clip", ["e1", "lo", "hi"], ["e1r"]),
          node("Conv", ["e1r", "wd1", "bd1"], ["d1"], group=96, pads=[1, 1, 1, 1]),
          node("HardSwish", ["d1"], ["d1h"]),
          node("Conv", ["d1h", "wp1", "bp1"], ["p1"]),
          node("Add", ["p1", "a"], ["s1"]),
          node("Conv", ["s1", "we2", "be2"], ["e2"]),
          node("Clip", ["e2", "lo", "hi"], ["e2r"]),
          node("Conv", ["e2r", "wd2", "bd2"], ["d2"], group=96, pads=[1, 1, 1, 1]),
          node("Clip", ["d2", "lo", "hi"], ["d2r"]),
          node("Conv", ["d2r", "wp2", "bp2"], ["y"]),
          node("Conv", ["s1", "we3", "be3"], ["e3"]),
          node("Conv", ["e3", "wd3", "bd3"], ["d3"], group=64, pads=[1, 1, 1, 1], strides=[2, 2]),
          node("Clip", ["d3", "lo", "hi"], ["y2"]),
          node("Conv", ["x", "wf1", "bf1"], ["f1"]),
          node("Conv", ["f1", "wf2", "bf2"], ["f2"], group=64, pads=[1, 1, 1, 1]),
          node("Conv", ["f2", "wf3", "bf3"], ["y3"])],
         {"x": randn(1, 32, 14, 14)}, ["y", "y2", "y3"],
         [init("wa", randn(32, 32, 1, 1) * 0.2), init("ba", randn(32) * 0.1),
          init("we1", randn(96, 32, 1, 1) * 0.2), init("be1", randn(96) * 0.1),
          init("wd1", randn(96, 1, 3, 3) * 0.3), init("bd1", randn(96) * 0.1),
          init("wp1", randn(32, 96, 1, 1) * 0.1), init("bp1", randn(32) * 0.1),
          init("we2", randn(96, 32, 1, 1) * 0.2), init("be2", randn(96) * 0.1),
          init("wd2", randn(96, 1, 3, 3) * 0.3), init("bd2", randn(96) * 0.1),
          init("wp2", randn(16, 96, 1, 1) * 0.1), init("bp2", randn(16) * 0.1),
          init("we3", randn(64, 32, 1, 1) * 0.2), init("be3", randn(64) * 0.1),
          init("wd3", randn(64, 1, 3, 3) * 0.3), init("bd3", randn(64) * 0.1),
          init("wf1", randn(64, 32, 1, 1) * 0.2), init("bf1", randn(64) * 0.1),
          init("wf2", randn(64, 1, 3, 3) * 0.3), init("bf2", randn(64) * 0.1),
          init("wf3", randn(256, 64, 1, 1) * 0.1), init("bf3", randn(256) * 0.1),
          f32("lo", 0.0), f32("hi", 6.0)],
         opset=14)
    # MobileNetV3's squeeze-excite block over 14x14 with a 5x5 depthwise layer: blocked from the
    # expansion to the gated products (the pool reads the depthwise output blocked, a product
    # keeps its layout with the gate first or second; the first folds into the projection at run
    # time), leaving at the projection into 40 channels (not whole blocks) with its residual, and
    # at a pool of the second product.
    # Appended last: earlier cases keep their data.
    case("block_squeeze_excite_blocked",
         [node("Conv", ["x", "we", "be"], ["e"]),
          node("HardSwish", ["e"], ["eh"]),
          node("Conv", ["eh", "wd", "bd"], ["d"], group=96, pads=[2, 2, 2, 2]),
          node("HardSwish", ["d"], ["dh"]),
          node("GlobalAveragePool", ["dh"], ["g"]),
          node("Conv", ["g", "w1", "b1"], ["c1"]),
          node("Relu", ["c1"], ["r1"]),
          node("Conv", ["r1", "w2", "b2"], ["c2"]),
          node("HardSigmoid", ["c2"], ["h"], alpha=0.1666667, beta=0.5),
          node("Mul", ["dh", "h"], ["m"]),
          node("Conv", ["m", "wp", "bp"], ["p"]),
          node("Add", ["p", "x"], ["y"]),
          node("Mul", ["h", "dh"], ["m2"]),
          node("GlobalAveragePool", ["m2"], ["y2"])],
         {"x": randn(1, 40, 14, 14)}, ["y", "y2"],
         [init("we", randn(96, 40, 1, 1) * 0.2), init("be", randn(96) * 0.1),
          init("wd", randn(96, 1, 5, 5) * 0.2), init("bd", randn(96) * 0.1),
          init("w1", randn(24, 96, 1, 1) * 0.3), init("b1", randn(24) * 0.1),
          init("w2", randn(96, 24, 1, 1) * 0.3), init("b2", randn(96) * 0.1),
          init("wp", randn(40, 96, 1, 1) * 0.1), init("bp", randn(40) * 0.1)],
         opset=14)
    # MobileNets' last stage over 7x7, from one 14x14 region: depthwise layers over 7x7 run
    # blocked where their multiply-adds pay for the weights of their 1x1 neighbours over 7x7
    # (chain a: a stride-2 layer into 7x7 and a 5x5 one; chain c: a 32-channel stream between two
    # 1x1 layers, then a 5x5 layer), and planar where they do not (chain b: after a stride-2
    # layer into 7x7 that pays, a 160-channel stream s into a 3x3 layer between 160-channel 1x1
    # layers, as in MobileNetV2; s stays planar too, for a 1x1 layer that reads it feeds the 3x3
    # layer). Appended last: earlier cases keep their data.
    case("block_small_planes_blocked",
         [node("Conv", ["x", "wa1", "ba1"], ["a1"]),
          node("HardSwish", ["a1"], ["a1h"]),
          node("Conv", ["a1h", "wa2", "ba2"], ["a2"], group=64, pads=[2, 2, 2, 2]),
          node("HardSwish", ["a2"], ["a2h"]),
          node("Conv", ["a2h", "wa3", "ba3"], ["a3"], group=64, pads=[1, 1, 1, 1], strides=[2, 2]),
          node("Clip", ["a3", "lo", "hi"], ["a3r"]),
          node("Conv", ["a3r", "wa4", "ba4"], ["a4"], group=64, pads=[2, 2, 2, 2]),
          node("HardSwish", ["a4"], ["a4h"]),
          node("Conv", ["a4h", "wy1", "by1"], ["y1"]),
          node("Conv", ["a4h", "wc1", "bc1"], ["c1"]),
          node("Conv", ["c1", "wc2", "bc2"], ["c2"]),
          node("HardSwish", ["c2"], ["c2h"]),
          node("Conv", ["c2h", "wc3", "bc3"], ["c3"], group=64, pads=[2, 2, 2, 2]),
          node("Conv", ["c3", "wy3", "by3"], ["y3"]),
          node("Conv", ["a2h", "wb1", "bb1"], ["b1"]),
          node("Clip", ["b1", "lo", "hi"], ["b1r"]),
          node("Conv", ["b1r", "wb2", "bb2"], ["b2"], group=96, pads=[2, 2, 2, 2], strides=[2, 2]),
          node("Clip", ["b2", "lo", "hi"], ["b2r"]),
          node("Conv", ["b2r", "ws", "bs"], ["s"]),
          node("Conv", ["s", "wb3", "bb3"], ["b3"]),
          node("Clip", ["b3", "lo", "hi"], ["b3r"]),
          node("Conv", ["b3r", "wb4", "bb4"], ["b4"], group=256, pads=[1, 1, 1, 1]),
          node("Clip", ["b4", "lo", "hi"], ["b4r"]),
          node("Conv", ["b4r", "wd1", "bd1"], ["d1"]),
          node("Conv", ["d1", "wy2", "by2"], ["y2"])],
         {"x": randn(1, 32, 14, 14)}, ["y1", "y2", "y3"],
         [init("wa1", randn(64, 32, 1, 1) * 0.2), init("ba1", randn(64) * 0.1),
          init("wa2", randn(64, 1, 5, 5) * 0.2), init("ba2", randn(64) * 0.1),
          init("wa3", randn(64, 1, 3, 3) * 0.3), init("ba3", randn(64) * 0.1),
          init("wa4", randn(64, 1, 5, 5) * 0.2), init("ba4", randn(64) * 0.1),
          init("wy1", randn(16, 64, 1, 1) * 0.1), init("by1", randn(16) * 0.1),
          init("wc1", randn(32, 64, 1, 1) * 0.1), init("bc1", randn(32) * 0.1),
          init("wc2", randn(64, 32, 1, 1) * 0.2), init("bc2", randn(64) * 0.1),
          init("wc3", randn(64, 1, 5, 5) * 0.2), init("bc3", randn(64) * 0.1),
          init("wy3", randn(16, 64, 1, 1) * 0.1), init("by3", randn(16) * 0.1),
          init("wb1", randn(96, 64, 1, 1) * 0.2), init("bb1", randn(96) * 0.1),
          init("wb2", randn(96, 1, 5, 5) * 0.2), init("bb2", randn(96) * 0.1),
          init("ws", randn(160, 96, 1, 1) * 0.1), init("bs", randn(160) * 0.1),
          init("wb3", randn(256, 160, 1, 1) * 0.1), init("bb3", randn(256) * 0.1),
          init("wb4", randn(256, 1, 3, 3) * 0.3), init("bb4", randn(256) * 0.1),
          init("wd1", randn(160, 256, 1, 1) * 0.1), init("bd1", randn(160) * 0.1),
          init("wy2", randn(16, 160, 1, 1) * 0.1), init("by2", randn(16) * 0.1),
          f32("lo", 0.0), f32("hi", 6.0)],
         opset=14)

    # Channel-blocked regions over 56x56 (the largest blocked planes): a stride-1 inverted
    # residual block there stays planar, for its 1x1 edges over a plane above 28x28 count twice
    # against its depthwise gain (e1 and d1 would be blocked if they counted once); the stride-2
    # block after it starts a region that runs through 28x28 (e2 at 56x56, d2, p2, e3, d3), left
    # by p3 into the graph output. Appended last: earlier cases keep their data.
    case("block_large_planes_blocked",
         [node("Conv", ["x", "we1", "be1"], ["e1"]),
          node("Clip", ["e1", "lo", "hi"], ["e1r"]),
          node("Conv", ["e1r", "wd1", "bd1"], ["d1"], group=96, pads=[1, 1, 1, 1]),
          node("Clip", ["d1", "lo", "hi"], ["d1r"]),
          node("Conv", ["d1r", "wp1", "bp1"], ["p1"]),
          node("Add", ["p1", "x"], ["s"]),
          node("Conv", ["s", "we2", "be2"], ["e2"]),
          node("Clip", ["e2", "lo", "hi"], ["e2r"]),
          node("Conv", ["e2r", "wd2", "bd2"], ["d2"], group=96, pads=[2, 2, 2, 2], strides=[2, 2]),
          node("Clip", ["d2", "lo", "hi"], ["d2r"]),
          node("Conv", ["d2r", "wp2", "bp2"], ["p2"]),
          node("Conv", ["p2", "we3", "be3"], ["e3"]),
          node("Clip", ["e3", "lo", "hi"], ["e3r"]),
          node("Conv", ["e3r", "wd3", "bd3"], ["d3"], group=192, pads=[2, 2, 2, 2]),
          node("Clip", ["d3", "lo", "hi"], ["d3r"]),
          node("Conv", ["d3r", "wp3", "bp3"], ["y"])],
         {"x": randn(1, 24, 56, 56)}, ["y"],
         [init("we1", randn(96, 24, 1, 1) * 0.2), init("be1", randn(96) * 0.1),
          init("wd1", randn(96, 1, 3, 3) * 0.3), init("bd1", randn(96) * 0.1),
          init("wp1", randn(24, 96, 1, 1) * 0.1), init("bp1", randn(24) * 0.1),
          init("we2", randn(96, 24, 1, 1) * 0.2), init("be2", randn(96) * 0.1),
          init("wd2", randn(96, 1, 5, 5) * 0.2), init("bd2", randn(96) * 0.1),
          init("wp2", randn(32, 96, 1, 1) * 0.1), init("bp2", randn(32) * 0.1),
          init("we3", randn(192, 32, 1, 1) * 0.2), init("be3", randn(192) * 0.1),
          init("wd3", randn(192, 1, 5, 5) * 0.2), init("bd3", randn(192) * 0.1),
          init("wp3", randn(16, 192, 1, 1) * 0.1), init("bp3", randn(16) * 0.1),
          f32("lo", 0.0), f32("hi", 6.0)],
         opset=14)

def make_op_cases() -> None:
    if os.path.isdir(OPS):
        shutil.rmtree(OPS)
    os.makedirs(OPS)
    conv_cases()
    conv_transpose_cases()
    gemm_cases()
    matmul_cases()
    batchnorm_cases()
    binary_cases()
    unary_cases()
    pool_cases()
    resize_cases()
    shape_cases()
    block_cases()


# ----------------------------------------------------------------------------------------------
# Whole-model goldens
# ----------------------------------------------------------------------------------------------


def load_rgb(path: str) -> Image.Image:
    return Image.open(path).convert("RGB")


def blazeface_input(img: Image.Image, side: int = 128) -> np.ndarray:
    """MediaPipe-style: side x side RGB in [-1, 1], NCHW. Only square images (letterbox = resize)."""
    assert img.width == img.height, "letterboxing of non-square images is not implemented here"
    arr = np.asarray(img.resize((side, side), Image.BILINEAR), dtype=np.float32)
    arr = arr / 127.5 - 1.0
    return arr.transpose(2, 0, 1)[None].copy()


def ppocr_input(img: Image.Image) -> np.ndarray:
    """PaddleOCR DetResizeForTest + NormalizeImage + ToCHW: sides rounded to multiples of 32."""
    w = max(32, int(round(img.width / 32)) * 32)
    h = max(32, int(round(img.height / 32)) * 32)
    arr = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    arr = (arr - mean) / std
    return arr.transpose(2, 0, 1)[None].astype(np.float32).copy()


def cls_input(line: Image.Image) -> np.ndarray:
    """PaddleOCR ClsResizeImg: a text line scaled to 48 px high (width at most 192), to [-1, 1],
    zero-padded on the right to 192 columns, NCHW."""
    w = min(192, int(np.ceil(48 * line.width / line.height)))
    arr = np.asarray(line.resize((w, 48), Image.BILINEAR), dtype=np.float32) / 127.5 - 1.0
    out = np.zeros((48, 192, 3), np.float32)
    out[:, :w] = arr
    return out.transpose(2, 0, 1)[None].copy()


def rec_input(line: Image.Image, width: int = 320) -> np.ndarray:
    """PaddleOCR RecResizeImg at its default 3x48x320: a text line scaled to 48 px high (width at
    most 320), to [-1, 1], zero-padded on the right to 320 columns, NCHW."""
    w = min(width, int(np.ceil(48 * line.width / line.height)))
    arr = np.asarray(line.resize((w, 48), Image.BILINEAR), dtype=np.float32) / 127.5 - 1.0
    out = np.zeros((48, width, 3), np.float32)
    out[:, :w] = arr
    return out.transpose(2, 0, 1)[None].copy()


def model_golden(folder: str, model: str, input_name: str, x: np.ndarray) -> None:
    out_dir = os.path.join(GOLDEN, folder)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    with open(os.path.join(MODELS, model), "rb") as f:
        data = f.read()
    save_npy(os.path.join(out_dir, f"input.{sanitize(input_name)}.npy"), x)
    for name, v in run_ort(data, {input_name: x}):
        save_npy(os.path.join(out_dir, f"output.{sanitize(name)}.npy"), v)
        print(f"  {folder}: {name} {v.shape} min {v.min():.4f} max {v.max():.4f}")


def make_model_goldens() -> None:
    os.makedirs(GOLDEN, exist_ok=True)
    bf = "blazeface_short_range.onnx"
    model_golden("blazeface", bf, "input",
                 blazeface_input(load_rgb(os.path.join(IMAGES, "astronaut.png"))))
    astronaut = load_rgb(os.path.join(IMAGES, "astronaut.png"))
    model_golden("blazeface_full_range", "blazeface_full_range.onnx", "input", blazeface_input(astronaut, 192))
    model_golden("blazeface_back", "blazeface_back.onnx", "input", blazeface_input(astronaut, 256))
    camera = os.path.join(EXTRA_IMAGES, "camera.png")
    if os.path.isfile(camera):
        model_golden("blazeface_camera", bf, "input", blazeface_input(load_rgb(camera)))
    else:
        print(f"  {camera} not found: keeping golden/blazeface_camera as it is")
    page = load_rgb(os.path.join(IMAGES, "page.png"))
    model_golden("ppocr", "ppocr_v4_det.onnx", "x", ppocr_input(page))
    model_golden("ppocr_v3", "ppocr_v3_det.onnx", "x", ppocr_input(page))
    # The page's first text line (the box PP-OCRv4 det finds there), upright and turned 180°.
    line = page.crop((4, 9, 294, 35))
    model_golden("ppocr_cls", "ppocr_mobile_v2_cls.onnx", "x", cls_input(line))
    model_golden("ppocr_cls_flipped", "ppocr_mobile_v2_cls.onnx", "x", cls_input(line.rotate(180)))
    model_golden("ppocr_rec", "ppocr_v3_rec.onnx", "x", rec_input(line))
    write_rec_keys()


def write_rec_keys() -> None:
    """The recognizer's character set (its ONNX metadata entry `character`, one character per line,
    PaddleOCR's `ppocr_keys_v1.txt` format) as `pith detect text --charset` reads it."""
    model = onnx.load(os.path.join(MODELS, "ppocr_v3_rec.onnx"))
    chars = next(p.value for p in model.metadata_props if p.key == "character")
    with open(os.path.join(MODELS, "ppocr_v3_rec_keys.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write(chars + "\n")


def make_bad() -> None:
    os.makedirs(BAD, exist_ok=True)
    graph = helper.make_graph(
        [node("Relu", ["x"], ["r"], name="first_relu"),
         node("Erf", ["r"], ["y"], name="mystery_erf")],
        "unknown_op",
        [helper.make_tensor_value_info("x", F, [1, 4])],
        [helper.make_tensor_value_info("y", F, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="pith-goldens")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    with open(os.path.join(BAD, "unknown_op.onnx"), "wb") as f:
        f.write(model.SerializeToString())


def main() -> None:
    make_op_cases()
    print(f"{len(CASES)} op cases written to {OPS}")
    make_model_goldens()
    make_bad()


if __name__ == "__main__":
    main()
