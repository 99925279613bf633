//! Session-time graph rewrite: an activation that only post-processes a convolution's (or a
//! `BatchNormalization`'s, or an element-wise `Add`/`Sub`/`Mul`/`Div`'s) output is folded into
//! that node, which then applies it
//! while the output tile is still in cache. This saves one full read and write of the activation
//! tensor per fused pair (PP-OCRv4 det follows most convolutions with `HardSwish`; BlazeFace
//! follows each residual `Add` with `Relu`).
//!
//! A pair `y = Conv(..); z = Act(y)` fuses when `y` is read by that activation only, is not a
//! graph output, and the activation is one the kernels implement (`Relu`, `LeakyRelu`, `Sigmoid`,
//! `HardSigmoid`, `HardSwish`, `Clip` with constant scalar bounds, `PRelu` with one constant
//! slope). The producer then writes `z` directly and the activation node disappears; `y` is no
//! longer produced. A `PRelu` with a constant slope per channel fuses into a convolution (only):
//! the slope becomes the Conv's fifth input ([`PRELU_SLOPE_INPUT`]), which its kernels apply
//! channel by channel in their epilogue. A fused `HardSwish`
//! also takes the scalar `Mul` and `Add` that follow it on the same terms (PP-LCNetV3's
//! learnable affine block, 14 pairs in PP-OCRv4 det), and a squeeze-excite residual
//! `Add(x, Mul(x, s))` whose gate `s` is a fused `HardSigmoid` becomes `Mul(x, s + 1)`, the `+ 1`
//! in the gate's epilogue (PP-OCRv4 det's 8 RSE blocks).
//!
//! Before that, a residual `z = Add(Conv(..), r)` (either operand order) fuses the same way when
//! the convolution's output is read by that `Add` only and is not a graph output: the Conv takes
//! `r` as a fourth input, adds it in its epilogue and writes `z`, at the `Add`'s place in the node
//! order (where `r` is known to be computed). BlazeFace's blocks (`Relu(Add(Conv, Pad(x)))`) and
//! PP-OCRv4's residual and FPN adds then run as one pass over their output. A residual whose shape
//! differs from the convolution's is still added (by broadcasting, after the convolution).
//!
//! Two more rewrites frame those: first a `BatchNormalization` after a `ConvTranspose` folds into
//! it ([`fuse_batch_norms`]: the kernel scales each output channel's decoded weights); last, an
//! `Add` whose operand an element-wise op or a `Resize` writes for it alone folds into that op,
//! which takes the other operand as one more input (an element-wise op reads it through a nearest
//! upsampling by whole factors when that is where it comes from): [`fuse_binary_addends`],
//! PP-OCRv4 det's and BlazeFace full range's FPN adds. Outside sessions
//! with int8 activations, a product that only a 1×1 convolution reads becomes that
//! convolution's sixth input ([`fuse_input_scales`]): a squeeze-excite gate then scales the
//! filters' columns as they are decoded, and the gated tensor is never written.

use pith_format::ir::{Dim, Graph, Node, OpKind, ValueId};
use pith_kernels::Activation;

use crate::ops::unary;
use crate::plan::ConstantFn;

/// A graph with activations folded into their producers (convolutions, element-wise ops), and
/// each node's fused activation.
#[derive(Debug, Clone)]
pub struct Fused {
    /// The rewritten graph (same values, inputs and outputs; fewer nodes).
    pub graph: Graph,
    /// Per node of `graph`: the activation its op applies to its output (`None` for most).
    pub activations: Vec<Activation>,
}

/// The value of constant `id` when it holds exactly one f32 or f16 value, of any rank.
fn single_value(id: ValueId, constant: &ConstantFn<'_>) -> Option<f32> {
    use pith_format::TensorView;
    match constant(id)? {
        TensorView::F32([x]) => Some(*x),
        TensorView::F16([x]) => Some(x.to_f32()),
        _ => None,
    }
}

/// The value of constant `id` when it is one f32 of rank at most 1 (so broadcasting it against
/// an activation keeps the activation's shape).
fn scalar_constant(graph: &Graph, id: ValueId, constant: &ConstantFn<'_>) -> Option<f32> {
    let rank = graph.values.get(id as usize)?.shape.as_ref().map_or(0, Vec::len);
    (rank <= 1).then(|| single_value(id, constant)).flatten()
}

/// A `PRelu` whose slope is one constant value (PyTorch's `nn.PReLU()` default) as the
/// `LeakyRelu` it is, when `producer` makes its input. The slope's rank must not exceed the
/// input's, so broadcasting it keeps the input's shape: the input's declared rank, else the
/// least its producer gives (3 for a convolution, 2 for a BatchNormalization, else 1). A slope per
/// channel is [`channel_prelu`]'s.
fn scalar_prelu(
    graph: &Graph,
    node: &Node,
    producer: &Node,
    constant: &ConstantFn<'_>,
) -> Option<Activation> {
    let [Some(x), Some(slope)] = node.inputs.as_slice() else { return None };
    if node.op != OpKind::PRelu {
        return None;
    }
    let rank = |id: ValueId| graph.values.get(id as usize).and_then(|v| v.shape.as_ref().map(Vec::len));
    let least = match producer.op {
        OpKind::Conv | OpKind::ConvTranspose => 3,
        OpKind::BatchNormalization => 2,
        _ => 1,
    };
    if rank(*slope)? > rank(*x).unwrap_or(least) {
        return None;
    }
    single_value(*slope, constant).map(Activation::LeakyRelu)
}

/// Input index of a fused Conv's per-channel PRelu slope (after data, weights, bias and the
/// residual, which may be absent).
pub const PRELU_SLOPE_INPUT: usize = 4;

/// The slope of a `PRelu` with one constant slope per output channel of the convolution
/// `producer`: a constant of `[C, 1, 1]` or `[1, C, 1, 1]` values (how ONNX broadcasts a slope
/// per channel of an NCHW tensor), C being the convolution's filters (its weight's first
/// dimension).
fn channel_prelu(graph: &Graph, node: &Node, producer: &Node, constant: &ConstantFn<'_>) -> Option<ValueId> {
    let [Some(_), Some(slope)] = node.inputs.as_slice() else { return None };
    if node.op != OpKind::PRelu || producer.op != OpKind::Conv {
        return None;
    }
    // A value's shape, when every dimension is known.
    let shape = |id: ValueId| -> Option<Vec<u64>> {
        let dims = graph.values.get(id as usize)?.shape.as_ref()?;
        dims.iter().map(|d| if let Dim::Fixed(n) = d { Some(*n) } else { None }).collect()
    };
    let filters = *shape(producer.inputs.get(1).copied().flatten()?)?.first()?;
    let per_channel = match shape(*slope)?.as_slice() {
        [c, 1, 1] | [1, c, 1, 1] => *c == filters,
        _ => false,
    };
    // Only f32 / f16 constants (the kernels take f32 slopes).
    let numeric =
        matches!(constant(*slope)?, pith_format::TensorView::F32(_) | pith_format::TensorView::F16(_));
    (per_channel && numeric && filters > 1).then_some(*slope)
}

/// Rewrites `graph`: BatchNormalizations into the transposed convolutions before them, residual
/// adds into convolutions, then activations into their producers, addends into element-wise ops
/// and, when `input_scales` is set, squeeze-excite products into the 1×1 convolutions that read
/// them ([`fuse_input_scales`]; sessions with int8 activations leave them, as their 1×1 kernels
/// do not decode filters).
pub fn fuse(graph: &Graph, constant: &ConstantFn<'_>, input_scales: bool) -> Fused {
    let graph = fuse_batch_norms(graph, constant);
    let fused =
        fuse_binary_addends(fuse_activations(&fuse_residual_adds(&graph, constant), constant), constant);
    if input_scales {
        fuse_input_scales(fused)
    } else {
        fused
    }
}

/// Input index of a fused Conv's per-input-channel factor (after data, weights, bias, residual
/// and PRelu slope, which may be absent).
pub const INPUT_SCALE_INPUT: usize = 5;

/// Rewrites every `y = Conv(Mul(a, b))` whose product the convolution alone reads (not a graph
/// output, no fused activation or addend) into `Conv(a)` with `b` as its input
/// [`INPUT_SCALE_INPUT`], when the convolution is 1×1 (stride 1, unpadded, ungrouped). When the
/// session plans, a product of data and one factor per channel of each image (`[N, C, 1, 1]`, a
/// squeeze-excite gate, either operand order) into a layer over more than one pixel folds into
/// the filters the kernels decode (`W (s ⊙ x) = (W diag(s)) x`), so the gated tensor is never
/// written and read back (MobileNetV3-Small's nine products took 2.5 % of its time at one
/// thread); any other product the convolution computes into its scratch, as `Mul` would have.
pub fn fuse_input_scales(fused: Fused) -> Fused {
    let Fused { graph, activations } = fused;
    let readers = readers(&graph);
    let mut producer = vec![None; graph.values.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        for &o in &node.outputs {
            if let Some(p) = producer.get_mut(o as usize) {
                *p = Some(i);
            }
        }
    }
    let fixed = |id: ValueId| fixed_shape(&graph, id);
    let mut nodes: Vec<Option<Node>> = graph.nodes.iter().cloned().map(Some).collect();
    let mut fused = 0;
    for (c, conv) in graph.nodes.iter().enumerate() {
        if conv.op != OpKind::Conv || conv.inputs.len() > INPUT_SCALE_INPUT || !is_plain_pointwise(conv) {
            continue;
        }
        let Some(Some(v)) = conv.inputs.first().copied() else { continue };
        let Some(m) = producer.get(v as usize).copied().flatten() else { continue };
        let mul = &graph.nodes[m];
        let [Some(a), Some(b)] = mul.inputs[..] else { continue };
        if mul.op != OpKind::Mul
            || activations[m] != Activation::None
            || readers[v as usize] != 1
            || graph.outputs.contains(&v)
            || nodes[m].is_none()
        {
            continue;
        }
        // A 1×1 filter bank (activation shapes are known only when the session plans; the
        // convolution then checks that the product is a per-channel one, and computes any
        // other itself).
        let w = conv.inputs.get(1).copied().flatten().and_then(fixed);
        if !w.is_some_and(|w| matches!(w[..], [_, _, 1, 1])) {
            continue;
        }
        let mut conv = conv.clone();
        conv.inputs[0] = Some(a);
        conv.inputs.resize(INPUT_SCALE_INPUT, None);
        conv.inputs.push(Some(b));
        nodes[c] = Some(conv);
        nodes[m] = None;
        fused += 1;
    }
    if fused > 0 {
        log::debug!("fused {fused} per-channel product(s) into 1x1 convolutions");
    }
    let activations = nodes.iter().zip(activations).filter(|(n, _)| n.is_some()).map(|(_, a)| a).collect();
    Fused { graph: with_nodes(&graph, nodes.into_iter().flatten().collect()), activations }
}

/// Whether `conv`'s attributes make it a 1×1 layer as the kernels' pointwise path takes it:
/// ungrouped, stride 1, unpadded, undilated (its weight's shape is checked apart).
fn is_plain_pointwise(conv: &Node) -> bool {
    use pith_format::ir::Attr;
    conv.attrs.iter().all(|(name, attr)| match (name.as_str(), attr) {
        ("group", Attr::Int(g)) => *g == 1,
        ("strides" | "dilations" | "kernel_shape", Attr::Ints(v)) => v.iter().all(|&x| x == 1),
        ("pads", Attr::Ints(v)) => v.iter().all(|&x| x == 0),
        ("auto_pad", Attr::Str(s)) => matches!(s.as_str(), "NOTSET" | "VALID" | ""),
        _ => true,
    })
}

/// Attribute set on an element-wise node whose third input (a fused addend, see
/// [`fuse_binary_addends`]) is the input of a nearest upsampling that was folded away: how many
/// times each of its elements repeats along the last two axes.
pub const ADDEND_REPEAT: &str = "pith.addend_repeat";

/// When value `r` is the output of a `Resize` that only `r`'s one reader needs and that repeats
/// each element a whole number of times along the last two axes of a rank-4 tensor (constant
/// scales `[1, 1, f, g]`, a mode that makes it a repeat: see
/// [`crate::ops::resize::repeats_at_whole_scales`]): that node, its input and `[f, g]`.
fn repeating_resize(
    graph: &Graph,
    r: ValueId,
    producer: &[Option<usize>],
    readers: &[usize],
    constant: &ConstantFn<'_>,
) -> Option<(usize, ValueId, [i64; 2])> {
    let k = producer.get(r as usize).copied().flatten()?;
    let node = &graph.nodes[k];
    if node.op != OpKind::Resize || readers[r as usize] != 1 || graph.outputs.contains(&r) {
        return None;
    }
    // Data, roi (ignored by these modes), scales; no sizes.
    let (Some(x), Some(scales)) =
        (node.inputs.first().copied().flatten(), node.inputs.get(2).copied().flatten())
    else {
        return None;
    };
    if node.inputs.get(3).copied().flatten().is_some() || !crate::ops::resize::repeats_at_whole_scales(node) {
        return None;
    }
    let pith_format::TensorView::F32(&[1.0, 1.0, f, g]) = constant(scales)? else { return None };
    let whole = |v: f32| ((1.0..=64.0).contains(&v) && v.fract() == 0.0).then_some(v as i64);
    Some((k, x, [whole(f)?, whole(g)?]))
}

/// What an `Add` hands to the element-wise node before it: that node, the addend and how often
/// each of the addend's elements repeats along the last two axes (a folded upsampling), if it does.
type TakenAdd = (usize, ValueId, Option<[i64; 2]>);

/// Rewrites every `Add(p, r)` (either operand order) whose operand `p` an element-wise `Mul`,
/// `Add`, `Sub` or `Div` with no fused activation writes for that `Add` alone (not a graph
/// output) into that node with `r` as its third input, placed where the `Add` was (where `r` is
/// known to be computed) and taking the `Add`'s activation: `act(a (op) b + r)` in one pass
/// instead of writing `p` and reading it back. When `r` is a nearest upsampling by whole factors
/// that nothing else reads, the node reads its input instead, each element repeated
/// ([`ADDEND_REPEAT`]), and the upsampled map is never written. PP-OCRv4 det's neck adds each
/// upsampled map to a squeeze-excite product over 96 channels (1.2 Mi elements at 320×640: the
/// largest `Add` took 0.7 ms at one thread, its upsampling 0.24). Likewise an `Add` with no
/// activation whose operand `p` a `Resize` (opset 11 or later) writes for it alone: the Resize
/// takes `r` as its fifth input (after roi, scales and sizes) and adds it to its output (as it
/// blends each row, in linear mode): BlazeFace full range's three bilinear upsamplings in its head.
pub fn fuse_binary_addends(fused: Fused, constant: &ConstantFn<'_>) -> Fused {
    let Fused { graph, activations } = fused;
    let readers = readers(&graph);
    let mut producer = vec![None; graph.values.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        if let [out] = node.outputs[..] {
            if let Some(slot) = producer.get_mut(out as usize) {
                *slot = Some(i);
            }
        }
    }
    let elementwise = |op: OpKind| matches!(op, OpKind::Mul | OpKind::Add | OpKind::Sub | OpKind::Div);
    // Per node: moved to the place of the Add that took it; or, for such an Add, the producer
    // that takes its place and the addend.
    let mut moved = vec![false; graph.nodes.len()];
    let mut takes: Vec<Option<TakenAdd>> = vec![None; graph.nodes.len()];
    for (j, node) in graph.nodes.iter().enumerate() {
        let ([Some(x), Some(y)], [_]) = (node.inputs.as_slice(), node.outputs.as_slice()) else { continue };
        if node.op != OpKind::Add {
            continue;
        }
        for (p, r) in [(*x, *y), (*y, *x)] {
            let Some(i) = producer.get(p as usize).copied().flatten() else { continue };
            let producer_node = &graph.nodes[i];
            // A Resize or MatMul applies no activation: it takes only an Add that has none.
            let takes_addend = (elementwise(producer_node.op) && producer_node.inputs.len() == 2)
                || (crate::ops::resize::takes_addend(producer_node) && activations[j] == Activation::None)
                || (activations[j] == Activation::None && matmul_bias(&graph, producer_node, r, constant));
            let eligible = takes_addend
                && activations[i] == Activation::None
                && readers[p as usize] == 1
                && !graph.outputs.contains(&p)
                && !moved[i]
                && takes[i].is_none();
            if eligible {
                moved[i] = true;
                // An addend that is a nearest upsampling: its input, repeated as it is read (by
                // element-wise ops; a Resize reads its addend as it is, a MatMul its bias).
                let folds = !matches!(producer_node.op, OpKind::Resize | OpKind::MatMul);
                let (r, repeat) = match repeating_resize(&graph, r, &producer, &readers, constant) {
                    Some((k, source, repeat)) if folds && !moved[k] => {
                        moved[k] = true;
                        (source, Some(repeat))
                    }
                    _ => (r, None),
                };
                takes[j] = Some((i, r, repeat));
                break;
            }
        }
    }
    let mut nodes = Vec::with_capacity(graph.nodes.len());
    let mut acts = Vec::with_capacity(graph.nodes.len());
    for (j, node) in graph.nodes.iter().enumerate() {
        if moved[j] {
            continue;
        }
        match takes[j] {
            Some((i, r, repeat)) => {
                let mut fused = graph.nodes[i].clone();
                if fused.op == OpKind::Resize {
                    // After its optional roi, scales and sizes.
                    fused.inputs.resize(crate::ops::resize::ADDEND_INPUT, None);
                }
                fused.inputs.push(Some(r));
                fused.outputs = node.outputs.clone();
                if let Some(repeat) = repeat {
                    fused
                        .attrs
                        .push((ADDEND_REPEAT.to_string(), pith_format::ir::Attr::Ints(repeat.to_vec())));
                }
                nodes.push(fused);
            }
            None => nodes.push(node.clone()),
        }
        acts.push(activations[j]);
    }
    let taken = graph.nodes.len() - nodes.len();
    if taken > 0 {
        log::debug!("fused {taken} Add(s) into the element-wise op before them");
    }
    Fused { graph: with_nodes(&graph, nodes), activations: acts }
}

/// Attribute set on a `ConvTranspose` that took the `BatchNormalization` after it: that node's
/// epsilon; its four parameters are the ConvTranspose's inputs 3 to 6.
pub const BATCH_NORM_EPSILON: &str = "pith.batch_norm_epsilon";

/// Value `id`'s shape when every dimension is known.
fn fixed_shape(graph: &Graph, id: ValueId) -> Option<Vec<u64>> {
    let dims = graph.values.get(id as usize)?.shape.as_ref()?;
    dims.iter().map(|d| if let Dim::Fixed(n) = d { Some(*n) } else { None }).collect()
}

/// Whether `Add(matmul, bias)` can hand `bias` to `matmul` as a third input (see
/// [`crate::ops::gemm::MATMUL_BIAS_INPUT`]): a `MatMul` by a constant `[K, N]` matrix (a dense
/// layer: the kernel starts each output from its bias) and a constant of `N` values that
/// broadcasts along the last axis only. A transformer's dense layers write `MatMul` then `Add`
/// (PP-OCRv3's recognizer: 13 of them, its 40 × 6625 head's Add alone 71 µs at 1 thread).
fn matmul_bias(graph: &Graph, matmul: &Node, bias: ValueId, constant: &ConstantFn<'_>) -> bool {
    let [Some(_), Some(w)] = matmul.inputs[..] else { return false };
    if matmul.op != OpKind::MatMul || constant(w).is_none() || constant(bias).is_none() {
        return false;
    }
    match (fixed_shape(graph, w).as_deref(), fixed_shape(graph, bias).as_deref()) {
        (Some(&[_, n]), Some(b)) => b.last() == Some(&n) && b[..b.len() - 1].iter().all(|&d| d == 1),
        _ => false,
    }
}

/// Rewrites every `BatchNormalization(ConvTranspose(..))` whose transposed convolution output has
/// no other use, whose parameters are constants with one value per output channel, into one
/// `ConvTranspose` that scales each channel's decoded weights and shifts its bias (see
/// [`pith_kernels::Kernels::conv_transpose2d`]), so its output is written once instead of being
/// read and written again (PP-OCRv4 det's head: 0.48 ms of 22 at 320×640, one thread). The
/// compressor folds a BatchNormalization into a `Conv`'s weights; into a `ConvTranspose`'s it
/// would scale values across the codebook rows, which run along input channels.
pub fn fuse_batch_norms(graph: &Graph, constant: &ConstantFn<'_>) -> Graph {
    use pith_format::ir::Attr;
    let readers = readers(graph);
    let producer: std::collections::HashMap<ValueId, usize> =
        graph.nodes.iter().enumerate().flat_map(|(i, n)| n.outputs.iter().map(move |&v| (v, i))).collect();
    // A value's shape, when every dimension is known.
    let shape = |id: ValueId| -> Option<Vec<u64>> {
        let dims = graph.values.get(id as usize)?.shape.as_ref()?;
        dims.iter().map(|d| if let Dim::Fixed(n) = d { Some(*n) } else { None }).collect()
    };
    let mut nodes = graph.nodes.clone();
    let mut dropped = vec![false; nodes.len()];
    for (j, bn) in graph.nodes.iter().enumerate() {
        let (OpKind::BatchNormalization, [Some(y), params @ ..], [out]) =
            (bn.op, bn.inputs.as_slice(), bn.outputs.as_slice())
        else {
            continue;
        };
        let Some(&p) = producer.get(y) else { continue };
        let deconv = &graph.nodes[p];
        if deconv.op != OpKind::ConvTranspose
            || deconv.outputs.len() != 1
            || deconv.inputs.len() > 3
            || readers[*y as usize] != 1
            || graph.outputs.contains(y)
            || dropped[p]
        {
            continue;
        }
        let group = match deconv.attr("group") {
            None => 1,
            Some(Attr::Int(g)) if *g >= 1 => *g as u64,
            Some(_) => continue,
        };
        let Some(Some(w)) = deconv.inputs.get(1) else { continue };
        let Some(channels) = shape(*w).and_then(|s| Some(s.get(1)? * group)) else { continue };
        let eps = match bn.attr("epsilon") {
            None => 1e-5,
            Some(Attr::Float(e)) => *e,
            Some(_) => continue,
        };
        let per_channel = |v: &Option<ValueId>| {
            v.and_then(constant).is_some_and(|t| {
                t.numel() as u64 == channels
                    && matches!(t, pith_format::TensorView::F32(_) | pith_format::TensorView::F16(_))
            })
        };
        if params.len() != 4 || !params.iter().all(per_channel) {
            continue;
        }
        let fused = &mut nodes[p];
        fused.inputs.resize(3, None);
        fused.inputs.extend_from_slice(params);
        fused.attrs.push((BATCH_NORM_EPSILON.to_string(), Attr::Float(eps)));
        fused.outputs = vec![*out];
        dropped[j] = true;
    }
    with_nodes(graph, nodes.into_iter().zip(dropped).filter(|(_, d)| !d).map(|(n, _)| n).collect())
}

/// Attribute set on a fused Conv whose residual (fourth input) holds only the first channels of
/// its output, the rest being zero: a channel-padding `Pad` was dropped in front of it.
pub const RESIDUAL_CHANNEL_PAD: &str = "pith.residual_channel_pad";

/// If node `n` is a `Pad` that only appends zero channels (axis 1 of a rank-4 tensor), its data
/// input.
fn channel_pad_source(node: &Node, constant: &ConstantFn<'_>) -> Option<ValueId> {
    use pith_format::ir::Attr;
    use pith_format::TensorView;
    if node.op != OpKind::Pad || node.inputs.len() > 3 || node.outputs.len() != 1 {
        return None;
    }
    let mode_constant = match node.attr("mode") {
        None => true,
        Some(Attr::Str(m)) => m == "constant",
        Some(_) => false,
    };
    let value_zero = match node.attr("value") {
        None => true,
        Some(Attr::Float(v)) => *v == 0.0,
        Some(_) => false,
    };
    let fill_zero = match node.inputs.get(2).copied().flatten() {
        None => true,
        Some(v) => matches!(constant(v), Some(TensorView::F32(&[x])) if x == 0.0),
    };
    let pads: Vec<i64> = match (node.inputs.get(1).copied().flatten(), node.attr("pads")) {
        (Some(v), _) => match constant(v)? {
            TensorView::I64(p) => p.to_vec(),
            _ => return None,
        },
        (None, Some(Attr::Ints(p))) => p.clone(),
        _ => return None,
    };
    let channels_only =
        pads.len() == 8 && pads[5] > 0 && pads.iter().enumerate().all(|(i, &p)| i == 5 || p == 0);
    (mode_constant && value_zero && fill_zero && channels_only).then_some(node.inputs[0]).flatten()
}

/// `graph` with its nodes replaced by `nodes` (the same values, inputs and outputs).
fn with_nodes(graph: &Graph, nodes: Vec<Node>) -> Graph {
    Graph {
        values: graph.values.clone(),
        nodes,
        inputs: graph.inputs.clone(),
        outputs: graph.outputs.clone(),
    }
}

/// How many inputs of `graph`'s nodes read each value.
fn readers(graph: &Graph) -> Vec<usize> {
    let mut readers = vec![0usize; graph.values.len()];
    for node in &graph.nodes {
        for &v in node.inputs.iter().flatten() {
            if let Some(r) = readers.get_mut(v as usize) {
                *r += 1;
            }
        }
    }
    readers
}

/// Rewrites every `Add(Conv(..), r)` whose convolution output has no other use into one Conv
/// node with `r` as its fourth input, placed where the `Add` was. When `r` is a `Pad` that only
/// appends zero channels and has no other reader, the Pad is dropped too: the Conv takes its input
/// and is marked [`RESIDUAL_CHANNEL_PAD`].
pub fn fuse_residual_adds(graph: &Graph, constant: &ConstantFn<'_>) -> Graph {
    let readers = readers(graph);
    let mut conv_of = vec![None; graph.values.len()];
    let mut pad_of = vec![None; graph.values.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        let Some(&out) = node.outputs.first().filter(|&&o| (o as usize) < graph.values.len()) else {
            continue;
        };
        if node.op == OpKind::Conv && node.outputs.len() == 1 && node.inputs.len() <= 3 {
            conv_of[out as usize] = Some(i);
        } else if let Some(source) = channel_pad_source(node, constant) {
            pad_of[out as usize] = Some((i, source));
        }
    }
    let mut nodes: Vec<Option<Node>> = graph.nodes.iter().cloned().map(Some).collect();
    let mut fused = 0;
    for (j, add) in graph.nodes.iter().enumerate() {
        let [Some(a), Some(b)] = add.inputs[..] else { continue };
        if add.op != OpKind::Add || add.outputs.len() != 1 || a == b {
            continue;
        }
        // Either operand may be the convolution's; take the first that qualifies.
        let found = [(a, b), (b, a)].into_iter().find_map(|(y, r)| {
            let i = conv_of.get(y as usize).copied().flatten()?;
            let sole_use = readers[y as usize] == 1 && !graph.outputs.contains(&y);
            (sole_use && nodes[i].is_some()).then_some((i, r))
        });
        let Some((i, mut r)) = found else { continue };
        let mut conv = nodes[i].take().expect("checked above");
        if let Some((pad, source)) = pad_of[r as usize] {
            if readers[r as usize] == 1 && !graph.outputs.contains(&r) && nodes[pad].is_some() {
                nodes[pad] = None;
                r = source;
                conv.attrs.push((RESIDUAL_CHANNEL_PAD.to_string(), pith_format::ir::Attr::Int(1)));
            }
        }
        conv.inputs.resize(3, None);
        conv.inputs.push(Some(r));
        conv.outputs[0] = add.outputs[0];
        nodes[j] = Some(conv);
        fused += 1;
    }
    if fused > 0 {
        log::debug!("fused {fused} residual Add(s) into convolutions");
    }
    with_nodes(graph, nodes.into_iter().flatten().collect())
}

/// Rewrites `graph`, fusing every eligible producer–activation pair.
pub fn fuse_activations(graph: &Graph, constant: &ConstantFn<'_>) -> Fused {
    let readers = readers(graph);
    // producer_of[v] = index of the fusable producer whose sole output v is, if any.
    let mut producer_of = vec![None; graph.values.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        let producer = matches!(
            node.op,
            OpKind::Conv
                | OpKind::ConvTranspose
                | OpKind::BatchNormalization
                | OpKind::Add
                | OpKind::Sub
                | OpKind::Mul
                | OpKind::Div
        );
        if producer && node.outputs.len() == 1 {
            if let Some(slot) = producer_of.get_mut(node.outputs[0] as usize) {
                *slot = Some(i);
            }
        }
    }
    let mut activation = vec![Activation::None; graph.nodes.len()];
    // A per-channel PRelu slope fused into a Conv (which then takes no other activation).
    let mut slope: Vec<Option<ValueId>> = vec![None; graph.nodes.len()];
    let mut new_output: Vec<Option<ValueId>> = vec![None; graph.nodes.len()];
    let mut dropped = vec![false; graph.nodes.len()];
    for (j, node) in graph.nodes.iter().enumerate() {
        if node.outputs.len() != 1 {
            continue;
        }
        // The fusable producer of `y`, when `y` feeds this node only.
        let sole_producer = |y: ValueId, producer_of: &[Option<usize>]| -> Option<usize> {
            let p = producer_of.get(y as usize).copied().flatten()?;
            (readers[y as usize] == 1 && !graph.outputs.contains(&y)).then_some(p)
        };
        let mut fused = None;
        if let Some(Some(y)) = node.inputs.first() {
            let unfused = |p: &usize| activation[*p] == Activation::None && slope[*p].is_none();
            if let Some(p) = sole_producer(*y, &producer_of).filter(unfused) {
                let act = unary::fusable_activation(node, constant)
                    .or_else(|| scalar_prelu(graph, node, &graph.nodes[p], constant));
                fused = act.map(|act| (p, act));
                if fused.is_none() {
                    // The slope rides along as an input; the producer's activation stays None.
                    slope[p] = channel_prelu(graph, node, &graph.nodes[p], constant);
                    fused = slope[p].map(|_| (p, Activation::None));
                }
            }
        }
        // A scalar Mul / Add after a fused HardSwish (PP-LCNetV3's learnable affine block).
        if fused.is_none() && matches!(node.op, OpKind::Mul | OpKind::Add) && node.inputs.len() == 2 {
            for k in 0..2 {
                let (Some(y), Some(c)) = (node.inputs[k], node.inputs[1 - k]) else { continue };
                let Some(p) = sole_producer(y, &producer_of) else { continue };
                let Some(c) = scalar_constant(graph, c, constant) else { continue };
                if let Some(act) = activation[p].then_scalar(node.op == OpKind::Add, c) {
                    fused = Some((p, act));
                    break;
                }
            }
        }
        if let Some((p, act)) = fused {
            activation[p] = act;
            new_output[p] = Some(node.outputs[0]);
            producer_of[node.outputs[0] as usize] = Some(p);
            dropped[j] = true;
            continue;
        }
        // A squeeze-excite residual `x + x * s` with a fused HardSigmoid gate `s`: the gate's
        // producer adds 1 and the Mul writes the sum, `x * (s + 1)`, in one pass.
        if node.op == OpKind::Add && node.inputs.len() == 2 {
            for k in 0..2 {
                let (Some(x), Some(m)) = (node.inputs[k], node.inputs[1 - k]) else { continue };
                let Some(mul) = sole_producer(m, &producer_of) else { continue };
                let mul_node = &graph.nodes[mul];
                if mul_node.op != OpKind::Mul || activation[mul] != Activation::None || dropped[mul] {
                    continue;
                }
                let gate = match mul_node.inputs.as_slice() {
                    [Some(a), Some(g)] if *a == x => *g,
                    [Some(g), Some(a)] if *a == x => *g,
                    _ => continue,
                };
                let Some(p) = sole_producer(gate, &producer_of) else { continue };
                let Some(act) = activation[p].then_scalar(true, 1.0) else { continue };
                if !matches!(act, Activation::HardSigmoidPlus { .. }) {
                    continue;
                }
                activation[p] = act;
                new_output[mul] = Some(node.outputs[0]);
                producer_of[node.outputs[0] as usize] = Some(mul);
                dropped[j] = true;
                break;
            }
        }
    }
    let mut nodes = Vec::with_capacity(graph.nodes.len());
    let mut activations = Vec::with_capacity(graph.nodes.len());
    for (i, node) in graph.nodes.iter().enumerate() {
        if dropped[i] {
            continue;
        }
        let mut node: Node = node.clone();
        if let Some(z) = new_output[i] {
            node.outputs[0] = z;
        }
        if let Some(s) = slope[i] {
            node.inputs.resize(PRELU_SLOPE_INPUT, None);
            node.inputs.push(Some(s));
        }
        nodes.push(node);
        activations.push(activation[i]);
    }
    let fused = graph.nodes.len() - nodes.len();
    if fused > 0 {
        log::debug!("fused {fused} activation(s) into their producers");
    }
    Fused { graph: with_nodes(graph, nodes), activations }
}
