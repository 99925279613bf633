//! Machinery shared by the structural ops: element-generic data movement, axis and parameter helpers.
//!
//! Structural ops move elements without looking at them, so they are written once over [`Elem`] and
//! serve both f32 activations (run time) and i64 shape arithmetic (plan time, via [`Op::eval`]).

use std::any::Any;
use std::borrow::Cow;
use std::fmt::Debug;

use pith_format::ir::ElemType;
use pith_kernels::Kernels;

use crate::error::OpError;
use crate::ops::{Arg, AxisList, ExecCtx, NodeLayouts, Op, OpResult, Out, Prepared};
use crate::tensor::Tensor;

/// An element type a structural op can move.
pub(crate) trait Elem: Copy + Default + PartialEq + Debug + Send + Sync + 'static {
    /// The argument's data as this element type.
    fn read<'a>(arg: &Arg<'a>) -> OpResult<Cow<'a, [Self]>>;
    /// Converts a float attribute (e.g. Pad's `value`).
    fn from_f32(v: f32) -> Self;
    /// Wraps owned elements into a tensor.
    fn tensor(shape: Vec<usize>, data: Vec<Self>) -> Tensor;
    /// The elements as f32 values, if that is their type (for the kernels' vector paths).
    fn as_f32s(_data: &[Self]) -> Option<&[f32]> {
        None
    }
    /// Mutably, as [`Elem::as_f32s`].
    fn as_f32s_mut(_data: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

impl Elem for f32 {
    fn read<'a>(arg: &Arg<'a>) -> OpResult<Cow<'a, [f32]>> {
        arg.f32s()
    }
    fn from_f32(v: f32) -> f32 {
        v
    }
    fn tensor(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor::from_f32(shape, data)
    }
    fn as_f32s(data: &[f32]) -> Option<&[f32]> {
        Some(data)
    }
    fn as_f32s_mut(data: &mut [f32]) -> Option<&mut [f32]> {
        Some(data)
    }
}

impl Elem for i64 {
    fn read<'a>(arg: &Arg<'a>) -> OpResult<Cow<'a, [i64]>> {
        arg.i64s()
    }
    fn from_f32(v: f32) -> i64 {
        v as i64
    }
    fn tensor(shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        Tensor::from_i64(shape, data)
    }
}

/// A structural op: output shapes from input shapes and parameters, then an element-generic copy.
pub(crate) trait Move: Send + Sync + Debug {
    /// True for inputs that carry elements of the output's type; the others are i64 parameters.
    fn is_data(&self, input: usize) -> bool {
        input == 0
    }

    /// Output shapes. Parameter inputs must be known.
    fn shapes(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<Vec<usize>>>;

    /// Fills `dst` (one slice per output, sized by [`Move::shapes`]) from `src` (one slice per input;
    /// empty for parameter and absent inputs).
    fn apply<T: Elem>(&self, inputs: &[Option<Arg<'_>>], src: &[&[T]], dst: &mut [&mut [T]]) -> OpResult<()>;

    /// [`Move::apply`] at run time, where `kernels` (the session's path) may move the elements
    /// faster; by default the same as `apply`.
    fn apply_on<T: Elem>(
        &self,
        _kernels: &Kernels,
        inputs: &[Option<Arg<'_>>],
        src: &[&[T]],
        dst: &mut [&mut [T]],
    ) -> OpResult<()> {
        self.apply(inputs, src, dst)
    }

    /// What every run of a plan can reuse (see [`Op::prepare`]); `None` (the default): nothing.
    fn prepare(&self, _inputs: &[Option<Arg<'_>>]) -> OpResult<Option<Prepared>> {
        Ok(None)
    }

    /// [`Move::apply_on`] with what [`Move::prepare`] made for the same plan; it must check that
    /// the inputs have the shapes it saw. By default the same as `apply_on`.
    fn apply_prepared<T: Elem>(
        &self,
        _prepared: &(dyn Any + Send + Sync),
        kernels: &Kernels,
        inputs: &[Option<Arg<'_>>],
        src: &[&[T]],
        dst: &mut [&mut [T]],
    ) -> OpResult<()> {
        self.apply_on(kernels, inputs, src, dst)
    }
}

/// Adapts a [`Move`] into an [`Op`] for both element types.
#[derive(Debug)]
pub(crate) struct Mover<M>(pub M);

impl<M: Move> Mover<M> {
    /// Boxes `m` as an op.
    pub(crate) fn boxed(m: M) -> OpResult<Box<dyn Op>>
    where
        M: 'static,
    {
        Ok(Box::new(Mover(m)))
    }

    fn elem(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<ElemType> {
        let elem = input(inputs, 0)?.elem;
        for (i, a) in inputs.iter().enumerate() {
            if let Some(a) = a {
                if self.0.is_data(i) && a.elem != elem {
                    return Err(OpError(format!("input {i} is {:?} but input 0 is {elem:?}", a.elem)));
                }
            }
        }
        Ok(elem)
    }

    fn compute<T: Elem>(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<Tensor>> {
        let shapes = self.0.shapes(inputs)?;
        let src = self.read_data::<T>(inputs)?;
        let src_refs: Vec<&[T]> = src.iter().map(|c| &**c).collect();
        let mut bufs: Vec<Vec<T>> = shapes.iter().map(|s| vec![T::default(); s.iter().product()]).collect();
        {
            let mut dst: Vec<&mut [T]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            self.0.apply(inputs, &src_refs, &mut dst)?;
        }
        Ok(shapes.into_iter().zip(bufs).map(|(s, b)| T::tensor(s, b)).collect())
    }

    fn read_data<'a, T: Elem>(&self, inputs: &[Option<Arg<'a>>]) -> OpResult<Vec<Cow<'a, [T]>>> {
        inputs
            .iter()
            .enumerate()
            .map(|(i, a)| match a {
                Some(a) if self.0.is_data(i) => T::read(a),
                _ => Ok(Cow::Borrowed(&[][..])),
            })
            .collect()
    }
}

impl<M: Move> Op for Mover<M> {
    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        let elem = self.elem(inputs)?;
        Ok(self.0.shapes(inputs)?.into_iter().map(|s| (elem, s)).collect())
    }

    fn eval(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Option<Vec<Tensor>>> {
        let data_known = inputs
            .iter()
            .enumerate()
            .all(|(i, a)| !self.0.is_data(i) || a.as_ref().is_none_or(Arg::is_known));
        if !data_known {
            return Ok(None);
        }
        match self.elem(inputs)? {
            ElemType::F32 => self.compute::<f32>(inputs).map(Some),
            ElemType::I64 => self.compute::<i64>(inputs).map(Some),
        }
    }

    fn prepare(
        &self,
        inputs: &[Option<Arg<'_>>],
        _ctx: &ExecCtx,
        layouts: NodeLayouts,
    ) -> OpResult<Option<Prepared>> {
        if layouts.all_planar() {
            self.0.prepare(inputs)
        } else {
            Ok(None)
        }
    }

    fn run_prepared(
        &self,
        prepared: &(dyn Any + Send + Sync),
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
        layouts: NodeLayouts,
    ) -> OpResult<()> {
        if !layouts.all_planar() {
            return self.run_laid_out(inputs, outputs, scratch, ctx, layouts);
        }
        self.move_f32(inputs, outputs, |src, dst| {
            self.0.apply_prepared(prepared, &ctx.kernels, inputs, src, dst)
        })
    }

    fn run(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        _scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        self.move_f32(inputs, outputs, |src, dst| self.0.apply_on(&ctx.kernels, inputs, src, dst))
    }
}

impl<M: Move> Mover<M> {
    /// Runs `apply` on the f32 data of `inputs` (empty for parameters) and `outputs`.
    fn move_f32(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        apply: impl FnOnce(&[&[f32]], &mut [&mut [f32]]) -> OpResult<()>,
    ) -> OpResult<()> {
        if inputs.len() > INLINE_ARGS || outputs.len() > INLINE_ARGS {
            let src = self.read_data::<f32>(inputs)?;
            let src_refs: Vec<&[f32]> = src.iter().map(|c| &**c).collect();
            let mut dst: Vec<&mut [f32]> = outputs.iter_mut().map(|o| &mut *o.data).collect();
            return apply(&src_refs, &mut dst);
        }
        // The usual few inputs and outputs: their lists on the stack, so a run allocates nothing
        // (an activation's data is borrowed; an f16 constant's is decoded, which allocates).
        let mut src: [Cow<'_, [f32]>; INLINE_ARGS] = Default::default();
        for (i, (slot, a)) in src.iter_mut().zip(inputs).enumerate() {
            if let Some(a) = a.as_ref().filter(|_| self.0.is_data(i)) {
                *slot = f32::read(a)?;
            }
        }
        let src_refs: [&[f32]; INLINE_ARGS] = std::array::from_fn(|i| &*src[i]);
        let n_out = outputs.len();
        let mut dst: [&mut [f32]; INLINE_ARGS] = Default::default();
        for (d, o) in dst.iter_mut().zip(outputs.iter_mut()) {
            *d = &mut *o.data;
        }
        apply(&src_refs[..inputs.len()], &mut dst[..n_out])
    }
}

/// Most inputs and outputs whose lists a structural op's run keeps on the stack.
const INLINE_ARGS: usize = 8;

/// Input `i`, which must be present.
pub(crate) fn input<'b, 'a>(inputs: &'b [Option<Arg<'a>>], i: usize) -> OpResult<&'b Arg<'a>> {
    inputs.get(i).and_then(Option::as_ref).ok_or_else(|| OpError(format!("missing input {i}")))
}

/// Integer parameter input `i` (`None` when absent); it must be known at plan time.
pub(crate) fn param<'a>(
    inputs: &[Option<Arg<'a>>],
    i: usize,
    what: &str,
) -> OpResult<Option<Cow<'a, [i64]>>> {
    match inputs.get(i).and_then(Option::as_ref) {
        None => Ok(None),
        Some(a) if a.elem != ElemType::I64 => {
            Err(OpError(format!("input '{what}' must be an integer tensor")))
        }
        Some(a) if !a.is_known() => {
            Err(OpError(format!("input '{what}' must be known at plan time (it depends on run-time data)")))
        }
        Some(a) => a.i64s().map(Some),
    }
}

/// Normalises a possibly negative axis against `rank`.
pub(crate) fn norm_axis(axis: i64, rank: usize) -> OpResult<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(OpError(format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// Normalises a list of axes, refusing duplicates.
pub(crate) fn norm_axes(axes: &[i64], rank: usize) -> OpResult<AxisList<usize>> {
    let mut out = smallvec::smallvec![0; axes.len()];
    norm_axes_into(axes, rank, &mut out)?;
    Ok(out)
}

/// [`norm_axes`] into `out` (as long as `axes`), allocating nothing.
pub(crate) fn norm_axes_into(axes: &[i64], rank: usize, out: &mut [usize]) -> OpResult<()> {
    for (i, &a) in axes.iter().enumerate() {
        let a = norm_axis(a, rank)?;
        if out[..i].contains(&a) {
            return Err(OpError(format!("axis {a} is repeated")));
        }
        out[i] = a;
    }
    Ok(())
}

/// Row-major strides of `shape`, in elements.
pub(crate) fn strides(shape: &[usize]) -> AxisList<usize> {
    let mut s: AxisList<usize> = smallvec::smallvec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// `dst[i] = src[base + Σ idx[d] * strides[d]]` for every multi-index `idx` of `shape`, in row-major order.
///
/// Serves Transpose (permuted strides) and Slice (scaled, possibly negative strides). The caller
/// guarantees every addressed element is inside `src`.
pub(crate) fn strided_copy<T: Copy>(
    src: &[T],
    base: isize,
    strides: &[isize],
    shape: &[usize],
    dst: &mut [T],
) {
    debug_assert_eq!(dst.len(), shape.iter().product::<usize>());
    if dst.is_empty() {
        return;
    }
    let Some((&inner, outer_shape)) = shape.split_last() else {
        dst[0] = src[base as usize];
        return;
    };
    let step = strides[shape.len() - 1];
    let mut idx: AxisList<usize> = smallvec::smallvec![0; outer_shape.len()];
    let mut off = base;
    for chunk in dst.chunks_exact_mut(inner) {
        if step == 1 {
            let s = off as usize;
            chunk.copy_from_slice(&src[s..s + inner]);
        } else {
            for (j, d) in chunk.iter_mut().enumerate() {
                *d = src[(off + j as isize * step) as usize];
            }
        }
        for d in (0..outer_shape.len()).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < outer_shape[d] {
                break;
            }
            off -= strides[d] * outer_shape[d] as isize;
            idx[d] = 0;
        }
    }
}

/// `perm` as a batch of 2-D transposes, when it keeps some leading axes and swaps the two groups
/// of axes after them (NCHW to NHWC is `[0, 2, 3, 1]`: the batch, then `C` with `H, W`): `(batch,
/// rows, cols)` of the source viewed as `[batch][rows][cols]`, which becomes `[batch][cols][rows]`.
pub(crate) fn as_batched_transpose(shape: &[usize], perm: &[usize]) -> Option<(usize, usize, usize)> {
    let rank = perm.len();
    let kept = perm.iter().enumerate().take_while(|&(i, &p)| i == p).count();
    if kept == rank {
        return None;
    }
    // After the kept axes: q, q + 1, .., rank - 1, then kept, .., q - 1.
    let q = perm[kept];
    let rotated = (q..rank).chain(kept..q);
    if q <= kept || !perm[kept..].iter().copied().eq(rotated) {
        return None;
    }
    let size = |axes: std::ops::Range<usize>| shape[axes].iter().product::<usize>();
    Some((size(0..kept), size(kept..q), size(q..rank)))
}

/// `dst[b][c][r] = src[b][r][c]` for `batch` matrices of `rows × cols`. With `kernels` (at run
/// time) f32 values go through the session path's [`pith_kernels::Isa::transpose`], whose vector
/// forms move whole tiles through registers; otherwise (plan-time i64 shapes too) the scalar
/// block copy, which reads and writes both sides a few lines at a time instead of one side
/// element by element a row apart (BlazeFace's NCHW-to-NHWC head transposes took 0.7 ns per
/// element that way).
pub(crate) fn batched_transpose<T: Elem>(
    kernels: Option<&Kernels>,
    src: &[T],
    batch: usize,
    rows: usize,
    cols: usize,
    dst: &mut [T],
) {
    let len = rows * cols;
    if len == 0 {
        return;
    }
    let one = |s: &[T], d: &mut [T]| match (kernels, T::as_f32s(s), T::as_f32s_mut(d)) {
        (Some(k), Some(s), Some(d)) => (k.isa().transpose)(s, rows, cols, d),
        _ => pith_kernels::arch::scalar::transpose_part(s, rows, cols, 0..rows, 0..cols, d),
    };
    for (s, d) in src.chunks_exact(len).zip(dst.chunks_exact_mut(len)).take(batch) {
        one(s, d);
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Building op arguments in unit tests.
    use super::*;
    use crate::ops::ArgData;
    use pith_format::ir::{Attr, Node, OpKind};

    /// A node of `op` with `n_in` inputs, `n_out` outputs and these attributes.
    pub fn node(op: OpKind, n_in: usize, n_out: usize, attrs: Vec<(&str, Attr)>) -> Node {
        Node {
            name: "n".into(),
            op,
            inputs: (0..n_in as u32).map(Some).collect(),
            outputs: (100..100 + n_out as u32).collect(),
            attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    /// A known argument over `t`.
    pub fn known(t: &Tensor) -> Option<Arg<'_>> {
        Some(Arg { shape: &t.shape, elem: t.elem(), data: Some(ArgData::Known(t)) })
    }

    /// An activation argument over `t` (data present, as at run time).
    pub fn act(t: &Tensor) -> Option<Arg<'_>> {
        Some(Arg { shape: &t.shape, elem: ElemType::F32, data: Some(ArgData::Act(t.as_f32().unwrap())) })
    }

    /// An activation argument with no data (as at plan time).
    pub fn unknown(shape: &[usize]) -> Option<Arg<'_>> {
        Some(Arg { shape, elem: ElemType::F32, data: None })
    }

    /// Runs `op` through the run-time path (f32 outputs, arena-style buffers).
    pub fn run(op: &dyn Op, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<Tensor>> {
        let shapes = op.infer(inputs)?;
        let mut bufs: Vec<Vec<f32>> =
            shapes.iter().map(|(_, s)| vec![f32::NAN; s.iter().product()]).collect();
        {
            let mut outs: Vec<Out<'_>> =
                shapes.iter().zip(bufs.iter_mut()).map(|((_, s), b)| Out { shape: s, data: b }).collect();
            op.run(inputs, &mut outs, &mut [], &ExecCtx::default())?;
        }
        Ok(shapes.into_iter().zip(bufs).map(|((_, s), b)| Tensor::from_f32(s, b)).collect())
    }

    /// Plan-time evaluation that must produce values.
    pub fn eval(op: &dyn Op, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<Tensor>> {
        Ok(op.eval(inputs)?.expect("eval deferred"))
    }

    /// An f32 tensor 0, 1, 2, ... of `shape`.
    pub fn iota(shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_f32(shape.to_vec(), (0..n).map(|i| i as f32).collect())
    }

    /// An i64 tensor 0, 1, 2, ... of `shape`.
    pub fn iota_i64(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_i64(shape.to_vec(), (0..n as i64).collect())
    }

    /// A 1-D i64 tensor.
    pub fn ints(v: &[i64]) -> Tensor {
        Tensor::from_i64(vec![v.len()], v.to_vec())
    }

    /// Multi-index of flat position `i` in `shape`.
    pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            idx[d] = i % shape[d];
            i /= shape[d];
        }
        idx
    }

    /// Flat position of multi-index `idx` in `shape`.
    pub fn ravel(idx: &[usize], shape: &[usize]) -> usize {
        idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
    }

    /// The attribute list form of integers.
    pub fn attr_ints(v: &[i64]) -> Attr {
        Attr::Ints(v.to_vec())
    }
}
