//! Operator implementations for the CPU backend.
//!
//! Each ONNX operator is parsed from its [`Node`] once at session creation into a value implementing
//! [`Op`]. The planner calls [`Op::infer`] (shapes) and [`Op::eval`] (plan-time values such as shape
//! arithmetic) once per input-shape set; the executor calls [`Op::run`] on every inference. An op
//! whose run derives much from its inputs' shapes alone (a convolution's geometry) does that once
//! per plan in [`Op::prepare`] and runs with it through [`Op::run_prepared`], as TFLite's kernels
//! split `Prepare` from `Invoke`.

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;

use pith_format::ir::{ElemType, Node, OpKind};
use pith_format::TensorView;
use pith_kernels::{Activation, Kernels, Layout};

use crate::error::OpError;
use crate::tensor::{Tensor, TensorBuf};

pub mod attrs;
pub mod binary;
pub mod conv;
pub mod gemm;
pub mod norm;
pub mod pool;
pub mod reduce;
pub mod resize;
pub mod shape_ops;
pub mod unary;

/// Result type of op code.
pub type OpResult<T> = Result<T, OpError>;

/// What an op derived once for a plan ([`Op::prepare`]), handed back to each of its runs.
pub type Prepared = Arc<dyn Any + Send + Sync>;

/// Most axes a [`AxisList`] list keeps on the stack.
pub(crate) const INLINE_RANK: usize = 8;

/// A per-axis list (extents, strides, axes, odometer indices): on the stack up to rank
/// [`INLINE_RANK`], so that an op's run over tensors of the usual ranks allocates nothing;
/// higher ranks spill to the heap.
pub(crate) type AxisList<T> = smallvec::SmallVec<[T; INLINE_RANK]>;

/// Where an argument's data lives.
#[derive(Debug, Clone, Copy)]
pub enum ArgData<'a> {
    /// An f32 activation in the session's arena.
    Act(&'a [f32]),
    /// A constant from the model file, in its stored encoding (zero-copy).
    Const(TensorView<'a>),
    /// A value computed at plan time (shape arithmetic and the like).
    Known(&'a Tensor),
}

/// One input of an op: its shape, element type and, where available, its data.
///
/// At plan time activations have `data == None`; at run time every present input has data.
#[derive(Debug, Clone, Copy)]
pub struct Arg<'a> {
    /// Concrete extents.
    pub shape: &'a [usize],
    /// Element type.
    pub elem: ElemType,
    /// Data, when available.
    pub data: Option<ArgData<'a>>,
}

impl<'a> Arg<'a> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The data as f32, borrowed where the storage is already f32, decoded otherwise.
    pub fn f32s(&self) -> OpResult<Cow<'a, [f32]>> {
        match self.data {
            None => Err(OpError("value is not known at plan time".into())),
            Some(ArgData::Act(d)) => Ok(Cow::Borrowed(d)),
            Some(ArgData::Const(TensorView::F32(d))) => Ok(Cow::Borrowed(d)),
            Some(ArgData::Const(TensorView::I64(d))) => Ok(Cow::Owned(d.iter().map(|&v| v as f32).collect())),
            Some(ArgData::Const(view)) => {
                let mut out = vec![0.0; view.numel()];
                let rows = self.shape.first().copied().unwrap_or(1).max(1);
                let row_len = out.len() / rows;
                for r in 0..rows {
                    view.decode_row(rows, r, &mut out[r * row_len..(r + 1) * row_len]);
                }
                Ok(Cow::Owned(out))
            }
            Some(ArgData::Known(t)) => match &t.buf {
                TensorBuf::F32(d) => Ok(Cow::Borrowed(d)),
                TensorBuf::I64(d) => Ok(Cow::Owned(d.iter().map(|&v| v as f32).collect())),
            },
        }
    }

    /// The data as i64 (shape arithmetic); f32 data is refused.
    pub fn i64s(&self) -> OpResult<Cow<'a, [i64]>> {
        match self.data {
            Some(ArgData::Const(TensorView::I64(d))) => Ok(Cow::Borrowed(d)),
            Some(ArgData::Known(Tensor { buf: TensorBuf::I64(d), .. })) => Ok(Cow::Borrowed(d)),
            None => Err(OpError("integer value is not known at plan time".into())),
            Some(_) => Err(OpError("expected an integer tensor".into())),
        }
    }

    /// True when the data is available (always at run time; constants and plan-time values while planning).
    pub fn is_known(&self) -> bool {
        self.data.is_some()
    }
}

/// One f32 output buffer of an op at run time.
#[derive(Debug)]
pub struct Out<'a> {
    /// Extents decided by the planner.
    pub shape: &'a [usize],
    /// The output elements, to be fully written.
    pub data: &'a mut [f32],
}

/// Per-run context handed to every op.
///
/// The default runs the best kernel path on the caller's thread (plan-time evaluation, tests).
#[derive(Debug, Clone, Default)]
pub struct ExecCtx {
    /// The session's kernel set: instruction-set path and worker threads, chosen once at session
    /// creation. Its thread pool is shared by every op.
    pub kernels: Kernels,
}

impl ExecCtx {
    /// Worker threads ops may use (1 = run on the caller's thread).
    pub fn threads(&self) -> usize {
        self.kernels.threads()
    }
}

/// How an op can take channel-blocked activations ([`Layout::Blocked`], see [`crate::layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockedUse {
    /// Input 0 and output 0 each in either layout, independently; input `residual`, if any, in
    /// the output's layout (a 1×1 convolution).
    Free {
        /// The input added to the output, which must share its layout.
        residual: Option<usize>,
    },
    /// Input `input` and output 0 both blocked or both planar: a depthwise convolution (input 0),
    /// or a product with a per-channel factor (a squeeze-excite gate) at either input.
    Tied {
        /// The input that shares the output's layout (the op's other inputs stay planar).
        input: usize,
        /// Multiply-adds the op saves by running blocked, for the rule that keeps a blocked region
        /// only where it pays: a depthwise convolution's output elements times its taps, else 0.
        gain: usize,
    },
    /// Input 0 in either layout, every output planar, at the same cost either way (a global
    /// average pool, whose one-pixel planes are laid out alike in both layouts).
    Reads,
}

/// The layouts of one node's inputs and outputs at run time: bit `i` set when input (output) `i`
/// is [`Layout::Blocked`]. The default is every value planar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeLayouts {
    /// Blocked inputs.
    pub inputs: u32,
    /// Blocked outputs.
    pub outputs: u32,
}

impl NodeLayouts {
    /// Input `i`'s layout.
    pub fn input(&self, i: usize) -> Layout {
        if i < 32 && self.inputs >> i & 1 == 1 {
            Layout::Blocked
        } else {
            Layout::Planar
        }
    }

    /// Output `i`'s layout.
    pub fn output(&self, i: usize) -> Layout {
        if i < 32 && self.outputs >> i & 1 == 1 {
            Layout::Blocked
        } else {
            Layout::Planar
        }
    }

    /// Whether every input and output is planar.
    pub fn all_planar(&self) -> bool {
        self.inputs == 0 && self.outputs == 0
    }
}

/// An operator ready to run.
pub trait Op: Send + Sync + std::fmt::Debug {
    /// Output element types and shapes for these inputs (data present only where known at plan time).
    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>>;

    /// Plan-time evaluation. The planner calls it when every present input is known, and when any
    /// output is I64 (shape arithmetic must be known at plan time). `Ok(None)` defers the op to run time
    /// and is only acceptable for all-f32 outputs. The default runs [`Op::run`] into owned buffers when
    /// every input is known and every output is f32.
    fn eval(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Option<Vec<Tensor>>> {
        run_owned(self, inputs, &ExecCtx::default())
    }

    /// f32 scratch elements ONE worker thread of [`Op::run`] needs for these input shapes; `run`
    /// receives [`ExecCtx::threads`] times as many, so multi-threaded kernels get a share each.
    fn scratch_len(&self, _inputs: &[Option<Arg<'_>>]) -> usize {
        0
    }

    /// Whether, and how, this op can read and write channel-blocked activations for these inputs
    /// on `kernels` (see [`crate::layout`]); `None` (the default): planar only.
    fn blocked_use(&self, _inputs: &[Option<Arg<'_>>], _kernels: &Kernels) -> Option<BlockedUse> {
        None
    }

    /// [`Op::run`] with some inputs or outputs in the blocked layout, as `layouts` says (only
    /// ever called on an op whose [`Op::blocked_use`] allowed it). The default runs planar.
    fn run_laid_out(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
        layouts: NodeLayouts,
    ) -> OpResult<()> {
        if !layouts.all_planar() {
            return Err(OpError("this operator has no channel-blocked form".into()));
        }
        self.run(inputs, outputs, scratch, ctx)
    }

    /// What every run of this plan can reuse (shapes, kernel geometry, decoded constants), given
    /// the inputs as the plan knows them (shapes; data of constants and plan-time values) and
    /// the node's layouts; `None` (the default): nothing, runs go through [`Op::run_laid_out`].
    fn prepare(
        &self,
        _inputs: &[Option<Arg<'_>>],
        _ctx: &ExecCtx,
        _layouts: NodeLayouts,
    ) -> OpResult<Option<Prepared>> {
        Ok(None)
    }

    /// [`Op::run_laid_out`] with what [`Op::prepare`] made for the same plan (inputs of the
    /// shapes it saw, the same layouts). The default ignores it.
    fn run_prepared(
        &self,
        _prepared: &(dyn Any + Send + Sync),
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
        layouts: NodeLayouts,
    ) -> OpResult<()> {
        self.run_laid_out(inputs, outputs, scratch, ctx, layouts)
    }

    /// Computes the f32 outputs. Every present input has data.
    fn run(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()>;
}

/// Runs `op` on known inputs into owned f32 tensors with `ctx`'s kernels: [`Op::eval`]'s default
/// with a chosen kernel set (the compressor's fine-tuning runs the portable path through it).
/// `Ok(None)` when an input is not known or an output is not f32.
pub fn run_owned<O: Op + ?Sized>(
    op: &O,
    inputs: &[Option<Arg<'_>>],
    ctx: &ExecCtx,
) -> OpResult<Option<Vec<Tensor>>> {
    if !inputs.iter().flatten().all(Arg::is_known) {
        return Ok(None);
    }
    let shapes = op.infer(inputs)?;
    if shapes.iter().any(|(e, _)| *e != ElemType::F32) {
        return Ok(None);
    }
    let mut bufs: Vec<Vec<f32>> = shapes.iter().map(|(_, s)| vec![0.0; s.iter().product()]).collect();
    let mut scratch = vec![0.0; op.scratch_len(inputs) * ctx.threads()];
    {
        let mut outs: Vec<Out<'_>> =
            shapes.iter().zip(bufs.iter_mut()).map(|((_, s), b)| Out { shape: s, data: b }).collect();
        op.run(inputs, &mut outs, &mut scratch, ctx)?;
    }
    Ok(Some(shapes.into_iter().zip(bufs).map(|((_, s), b)| Tensor::from_f32(s, b)).collect()))
}

/// Parses a node into a runnable op, checking its attributes.
pub fn build(node: &Node) -> OpResult<Box<dyn Op>> {
    build_fused(node, Activation::None)
}

/// [`build`] for a node whose output then goes through `activation` (see [`crate::fuse`]); only
/// convolutions and element-wise `Add`, `Sub`, `Mul`, `Div` take one.
pub fn build_fused(node: &Node, activation: Activation) -> OpResult<Box<dyn Op>> {
    use OpKind::*;
    if activation != Activation::None
        && !matches!(node.op, Conv | ConvTranspose | BatchNormalization | Add | Sub | Mul | Div)
    {
        return Err(OpError(format!("{} cannot apply a fused activation", node.op.onnx_name())));
    }
    match node.op {
        Conv => conv::build_conv(node, activation),
        ConvTranspose => conv::build_conv_transpose(node, activation),
        Gemm => gemm::build_gemm(node),
        MatMul => gemm::build_matmul(node),
        BatchNormalization => norm::build_batch_norm(node, activation),
        Add | Sub | Mul | Div | Pow | PRelu => binary::build(node, activation),
        Sqrt | Relu | LeakyRelu | Clip | Sigmoid | HardSigmoid | HardSwish | Tanh => unary::build(node),
        MaxPool | AveragePool | GlobalAveragePool => pool::build(node),
        Resize => resize::build(node),
        Softmax | ReduceMean => reduce::build(node),
        Concat | Slice | Split | Reshape | Flatten | Transpose | Squeeze | Unsqueeze | Pad | Cast | Shape
        | Gather | Identity => shape_ops::build(node),
        Constant => Err(OpError("Constant nodes must be folded into constants by the compressor".into())),
    }
}
