//! Backward rules, one per op kind: given a node's inputs, outputs and the gradients of its
//! outputs, the gradients of the inputs that need one.
//!
//! Linear resize has its own rule ([`resize`]). Layout ops (reshape, transpose, concat, pad,
//! slice, nearest resize, ...) share one rule, [`gather`]: their forward pass, run by the runtime on index-valued probes, tells which
//! input element each output element copies, and the gradient flows back along that map.

mod conv;
mod dense;
mod gather;
mod pointwise;
mod pool;
mod resize;

use pith_format::ir::{Node, OpKind};
use pith_kernels::Isa;
use pith_runtime::ops::Op;
use pith_runtime::Tensor;

/// One node's view of a forward pass and the gradients reaching it.
pub(super) struct NodeArgs<'a> {
    /// The node.
    pub node: &'a Node,
    /// Its op as the runtime built it.
    pub op: &'a dyn Op,
    /// Input values (`None` for an omitted optional input).
    pub inputs: Vec<Option<&'a Tensor>>,
    /// Output values.
    pub outputs: Vec<Option<&'a Tensor>>,
    /// Gradient of each output (`None`: nothing downstream depends on it).
    pub d_out: Vec<Option<&'a [f32]>>,
    /// Which inputs need a gradient.
    pub need: Vec<bool>,
    /// The kernel path of the forward pass, which the products of the backward pass take too.
    pub isa: Isa,
}

impl<'a> NodeArgs<'a> {
    /// Input `i`, which must be present.
    fn input(&self, i: usize) -> Result<&'a Tensor, String> {
        self.inputs.get(i).copied().flatten().ok_or_else(|| format!("input {i} is missing"))
    }

    /// Input `i` as f32 data.
    fn f32_input(&self, i: usize) -> Result<&'a [f32], String> {
        self.input(i)?.as_f32().ok_or_else(|| format!("input {i} is not f32"))
    }

    /// Output `i`, which must have been computed.
    fn output(&self, i: usize) -> Result<&'a Tensor, String> {
        self.outputs.get(i).copied().flatten().ok_or_else(|| format!("output {i} is missing"))
    }

    /// Gradient of the first output (zeros when nothing reached it).
    fn d_y(&self) -> Result<std::borrow::Cow<'a, [f32]>, String> {
        let n = self.output(0)?.numel();
        Ok(match self.d_out.first().copied().flatten() {
            Some(d) => std::borrow::Cow::Borrowed(d),
            None => std::borrow::Cow::Owned(vec![0.0; n]),
        })
    }

    /// Whether input `i` needs a gradient.
    fn needs(&self, i: usize) -> bool {
        self.need.get(i).copied().unwrap_or(false)
    }
}

/// Gradients of a node's inputs, by input position (`None` where not needed).
pub(super) type Grads = Vec<Option<Vec<f32>>>;

/// The backward rule of `a.node`; an error names what is not supported.
pub(super) fn backward(a: &NodeArgs<'_>) -> Result<Grads, String> {
    use OpKind::*;
    match a.node.op {
        Conv => conv::conv(a),
        ConvTranspose => conv::conv_transpose(a),
        Gemm => dense::gemm(a),
        MatMul => dense::matmul_2d(a),
        BatchNormalization => pointwise::batch_norm(a),
        Add | Sub | Mul | Div | PRelu => pointwise::binary(a),
        Relu | LeakyRelu | Clip | Sigmoid | HardSigmoid | HardSwish | Tanh | Sqrt => pointwise::unary(a),
        Softmax => pointwise::softmax(a),
        MaxPool | AveragePool => pool::window(a),
        GlobalAveragePool => pool::global_average(a),
        Resize => {
            let mode = pith_runtime::ops::attrs::string(a.node, "mode", "nearest").map_err(|e| e.0)?;
            match mode.as_str() {
                "nearest" => gather::gather(a, &[0]),
                "linear" => resize::linear(a),
                _ => Err(format!("no backward rule for Resize mode '{mode}' (nearest and linear only)")),
            }
        }
        Concat => gather::gather(a, &(0..a.inputs.len()).collect::<Vec<_>>()),
        Slice | Split | Reshape | Flatten | Transpose | Squeeze | Unsqueeze | Pad | Identity | Gather
        | Cast => gather::gather(a, &[0]),
        Shape => Ok(vec![None; a.inputs.len()]),
        Pow | ReduceMean | Constant => Err("no backward rule for this op".into()),
    }
}

/// Per-element offsets into an input of shape `from` broadcast (numpy rules) to `to`.
pub(super) fn broadcast_offsets(from: &[usize], to: &[usize]) -> Result<Vec<usize>, String> {
    if from.len() > to.len() {
        return Err(format!("cannot broadcast {from:?} to {to:?}"));
    }
    let pad = to.len() - from.len();
    let mut strides = vec![0usize; to.len()];
    let mut s = 1;
    for i in (0..from.len()).rev() {
        let (f, t) = (from[i], to[pad + i]);
        if f != t && f != 1 {
            return Err(format!("cannot broadcast {from:?} to {to:?}"));
        }
        strides[pad + i] = if f == 1 { 0 } else { s };
        s *= f;
    }
    let n: usize = to.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut index = vec![0usize; to.len()];
    let mut off = 0usize;
    for _ in 0..n {
        out.push(off);
        for d in (0..to.len()).rev() {
            index[d] += 1;
            off += strides[d];
            if index[d] < to[d] {
                break;
            }
            off -= strides[d] * to[d];
            index[d] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
