//! Session-time graph rewrite: an activation that only post-processes a convolution's (or an
//! element-wise `Add`/`Sub`/`Mul`/`Div`'s) output is folded into that node, which then applies it
//! while the output tile is still in cache. This saves one full read and write of the activation
//! tensor per fused pair (PP-OCRv4 det follows most convolutions with `HardSwish`; BlazeFace
//! follows each residual `Add` with `Relu`).
//!
//! A pair `y = Conv(..); z = Act(y)` fuses when `y` is read by that activation only, is not a
//! graph output, and the activation is one the kernels implement (`Relu`, `LeakyRelu`, `Sigmoid`,
//! `HardSigmoid`, `HardSwish`, `Clip` with constant scalar bounds). The producer then writes `z`
//! directly and the activation node disappears; `y` is no longer produced.
//!
//! Before that, a residual `z = Add(Conv(..), r)` (either operand order) fuses the same way when
//! the convolution's output is read by that `Add` only and is not a graph output: the Conv takes
//! `r` as a fourth input, adds it in its epilogue and writes `z`, at the `Add`'s place in the node
//! order (where `r` is known to be computed). BlazeFace's blocks (`Relu(Add(Conv, Pad(x)))`) and
//! PP-OCRv4's residual and FPN adds then run as one pass over their output. A residual whose shape
//! differs from the convolution's is still added (by broadcasting, after the convolution).

use pith_format::ir::{Graph, Node, OpKind, ValueId};
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

/// Rewrites `graph`: residual adds into convolutions, then activations into their producers.
pub fn fuse(graph: &Graph, constant: &ConstantFn<'_>) -> Fused {
    fuse_activations(&fuse_residual_adds(graph), constant)
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
/// node with `r` as its fourth input, placed where the `Add` was.
pub fn fuse_residual_adds(graph: &Graph) -> Graph {
    let readers = readers(graph);
    let mut conv_of = vec![None; graph.values.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        if node.op == OpKind::Conv && node.outputs.len() == 1 && node.inputs.len() <= 3 {
            if let Some(slot) = conv_of.get_mut(node.outputs[0] as usize) {
                *slot = Some(i);
            }
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
        let Some((i, r)) = found else { continue };
        let mut conv = nodes[i].take().expect("checked above");
        conv.inputs.resize(3, None);
        conv.inputs.push(Some(r));
        conv.outputs[0] = add.outputs[0];
        nodes[j] = Some(conv);
        fused += 1;
    }
    if fused > 0 {
        log::debug!("fused {fused} residual Add(s) into convolutions");
    }
    Graph {
        values: graph.values.clone(),
        nodes: nodes.into_iter().flatten().collect(),
        inputs: graph.inputs.clone(),
        outputs: graph.outputs.clone(),
    }
}

/// Rewrites `graph`, fusing every eligible producer–activation pair.
pub fn fuse_activations(graph: &Graph, constant: &ConstantFn<'_>) -> Fused {
    let readers = readers(graph);
    // producer_of[v] = index of the fusable producer whose sole output v is, if any.
    let mut producer_of = vec![None; graph.values.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        let producer = matches!(
            node.op,
            OpKind::Conv | OpKind::ConvTranspose | OpKind::Add | OpKind::Sub | OpKind::Mul | OpKind::Div
        );
        if producer && node.outputs.len() == 1 {
            if let Some(slot) = producer_of.get_mut(node.outputs[0] as usize) {
                *slot = Some(i);
            }
        }
    }
    let mut activation = vec![Activation::None; graph.nodes.len()];
    let mut new_output: Vec<Option<ValueId>> = vec![None; graph.nodes.len()];
    let mut dropped = vec![false; graph.nodes.len()];
    for (j, node) in graph.nodes.iter().enumerate() {
        let Some(Some(y)) = node.inputs.first() else { continue };
        let Some(Some(producer)) = producer_of.get(*y as usize) else { continue };
        if readers[*y as usize] != 1 || graph.outputs.contains(y) || node.outputs.len() != 1 {
            continue;
        }
        if activation[*producer] != Activation::None {
            continue;
        }
        if let Some(act) = unary::fusable_activation(node, constant) {
            activation[*producer] = act;
            new_output[*producer] = Some(node.outputs[0]);
            dropped[j] = true;
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
        nodes.push(node);
        activations.push(activation[i]);
    }
    let fused = graph.nodes.len() - nodes.len();
    if fused > 0 {
        log::debug!("fused {fused} activation(s) into their producers");
    }
    let graph = Graph {
        values: graph.values.clone(),
        nodes,
        inputs: graph.inputs.clone(),
        outputs: graph.outputs.clone(),
    };
    Fused { graph, activations }
}
