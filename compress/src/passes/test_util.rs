//! Helpers to build small working graphs in unit tests.

use pith_format::ir::{ElemType, Node, OpKind, ValueId};
use pith_runtime::Tensor;

use crate::work::WorkModel;

/// Adds a graph input of unknown shape.
pub(crate) fn input(w: &mut WorkModel, name: &str) -> ValueId {
    let id = w.add_value(name.into(), ElemType::F32, None);
    w.graph.inputs.push(id);
    id
}

/// Adds an intermediate f32 value.
pub(crate) fn act(w: &mut WorkModel, name: &str) -> ValueId {
    w.add_value(name.into(), ElemType::F32, None)
}

/// Adds an f32 constant.
pub(crate) fn constant(w: &mut WorkModel, name: &str, shape: &[usize], data: Vec<f32>) -> ValueId {
    w.add_const(name, Tensor::from_f32(shape.to_vec(), data))
}

/// Appends a node.
pub(crate) fn push(
    w: &mut WorkModel,
    name: &str,
    op: OpKind,
    inputs: &[Option<ValueId>],
    outputs: &[ValueId],
) {
    w.graph.nodes.push(Node {
        name: name.into(),
        op,
        inputs: inputs.to_vec(),
        outputs: outputs.to_vec(),
        attrs: Vec::new(),
    });
}

/// 1x1 convolution of one pixel: `y[o] = sum_i w[o][i] x[i] + b[o]`.
pub(crate) fn conv1x1(w: &[f32], b: &[f32], x: &[f32]) -> Vec<f32> {
    let cin = x.len();
    b.iter().enumerate().map(|(o, bo)| bo + (0..cin).map(|i| w[o * cin + i] * x[i]).sum::<f32>()).collect()
}
