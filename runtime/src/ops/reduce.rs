//! ONNX `Softmax` (opset 13 per-axis semantics, or the legacy flatten-to-2-D semantics when the
//! compressor marks the node with `coerce_2d = 1`) and `ReduceMean`.

use std::borrow::Cow;

use pith_format::ir::{ElemType, Node, OpKind};
use pith_kernels::exp_neg_abs;

use super::pool::lane_sum;
use super::{attrs, Arg, AxisList, ExecCtx, Op, OpResult, Out};
use crate::op_bail;

/// Outputs from which a softmax over contiguous rows splits its rows over the threads (each
/// value an exponential and a division: about 1 ns at 16 lanes, so a part of 8192 values takes
/// several microseconds against a hand-over of one).
const SOFTMAX_SPLIT_MIN: usize = 1 << 13;

/// ONNX `Softmax`.
#[derive(Debug)]
struct Softmax {
    axis: i64,
    coerce_2d: bool,
}

/// ONNX `ReduceMean`.
#[derive(Debug)]
struct ReduceMean {
    /// Axes from the attribute (opset < 18); input 1 takes precedence when present.
    axes: Option<Vec<i64>>,
    keepdims: bool,
    noop_with_empty_axes: bool,
}

/// Builds the op for a `Softmax` or `ReduceMean` node.
pub fn build(node: &Node) -> OpResult<Box<dyn Op>> {
    match node.op {
        OpKind::Softmax => {
            let coerce_2d = attrs::int(node, "coerce_2d", 0)? == 1;
            Ok(Box::new(Softmax {
                axis: attrs::int(node, "axis", if coerce_2d { 1 } else { -1 })?,
                coerce_2d,
            }))
        }
        OpKind::ReduceMean => Ok(Box::new(ReduceMean {
            axes: attrs::ints(node, "axes")?,
            keepdims: attrs::int(node, "keepdims", 1)? != 0,
            noop_with_empty_axes: attrs::int(node, "noop_with_empty_axes", 0)? != 0,
        })),
        other => op_bail!("{} is not a reduction", other.onnx_name()),
    }
}

/// Normalises a possibly negative axis against `rank`.
fn norm_axis(axis: i64, rank: usize) -> OpResult<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if !(0..r.max(1)).contains(&a) {
        op_bail!("axis {axis} is out of range for rank {rank}");
    }
    Ok(a as usize)
}

fn first<'a, 'b>(inputs: &'b [Option<Arg<'a>>]) -> OpResult<&'b Arg<'a>> {
    match inputs.first() {
        Some(Some(x)) if x.elem == ElemType::F32 => Ok(x),
        Some(Some(_)) => op_bail!("expects a float input"),
        _ => op_bail!("missing input"),
    }
}

impl Softmax {
    /// `(outer, n, inner)`: softmax runs over `n` elements `inner` apart, `outer * inner` times.
    fn split(&self, shape: &[usize]) -> OpResult<(usize, usize, usize)> {
        let axis = norm_axis(self.axis, shape.len())?;
        let outer = shape[..axis].iter().product();
        let tail: usize = shape[axis..].iter().product();
        if self.coerce_2d {
            Ok((outer, tail, 1))
        } else {
            let n = shape.get(axis).copied().unwrap_or(1);
            Ok((outer, n, tail.checked_div(n).unwrap_or(0)))
        }
    }
}

impl Op for Softmax {
    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        let x = first(inputs)?;
        self.split(x.shape)?;
        Ok(vec![(ElemType::F32, x.shape.to_vec())])
    }

    fn scratch_len(&self, inputs: &[Option<Arg<'_>>]) -> usize {
        // A running maximum and sum per position along the inner axes.
        match first(inputs).and_then(|x| self.split(x.shape)) {
            Ok((_, _, inner)) if inner > 1 => 2 * inner,
            _ => 0,
        }
    }

    fn run(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        let x_arg = first(inputs)?;
        let (_, n, inner) = self.split(x_arg.shape)?;
        let x = x_arg.f32s()?;
        let y = &mut *outputs[0].data;
        if n == 0 || inner == 0 {
            return Ok(());
        }
        // Every loop below runs along contiguous memory and vectorises: `exp_neg_abs` is
        // `exp` for the arguments here (each at most 0 once the maximum is taken off; NaN and
        // infinities as `exp` gives them), where libm's `expf` is a call per element (a softmax
        // over 32 channels of 96×96 took 2.7 ms on it, over rows of 96 1.9 ms).
        if inner == 1 {
            // Contiguous rows: on the kernels' vectors (a softmax over 40 rows of 6625 classes,
            // PP-OCRv3's recognizer, took 0.55 ms on the runtime's 4-lane baseline build).
            // Rows split over the threads (the recognizer's 40 rows took 0.21 ms on one).
            ctx.kernels.for_each_rows(y, n, SOFTMAX_SPLIT_MIN, |start, part| {
                for (xs, ys) in x[start..].chunks_exact(n).zip(part.chunks_exact_mut(n)) {
                    ctx.kernels.softmax_row(xs, ys);
                }
            });
            return Ok(());
        }
        if scratch.len() < 2 * inner {
            op_bail!("softmax needs {} scratch elements, got {}", 2 * inner, scratch.len());
        }
        let (max, sum) = scratch[..2 * inner].split_at_mut(inner);
        for (xs, ys) in x.chunks_exact(n * inner).zip(y.chunks_exact_mut(n * inner)) {
            max.fill(f32::NEG_INFINITY);
            for row in xs.chunks_exact(inner) {
                max.iter_mut().zip(row).for_each(|(m, &v)| *m = m.max(v));
            }
            sum.fill(0.0);
            for (yr, xr) in ys.chunks_exact_mut(inner).zip(xs.chunks_exact(inner)) {
                for (((e, &v), &m), s) in yr.iter_mut().zip(xr).zip(&*max).zip(sum.iter_mut()) {
                    *e = exp_neg_abs(v - m);
                    *s += *e;
                }
            }
            for yr in ys.chunks_exact_mut(inner) {
                yr.iter_mut().zip(&*sum).for_each(|(e, &s)| *e /= s);
            }
        }
        Ok(())
    }
}

impl ReduceMean {
    /// Per-axis "is reduced" flags (none set when the op is an identity).
    fn reduced(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<AxisList<bool>> {
        let x = first(inputs)?;
        let rank = x.shape.len();
        let axes: Cow<'_, [i64]> = match inputs.get(1) {
            Some(Some(a)) => a.i64s()?,
            _ => Cow::Borrowed(self.axes.as_deref().unwrap_or_default()),
        };
        if axes.is_empty() && self.noop_with_empty_axes {
            return Ok(smallvec::smallvec![false; rank]);
        }
        let mut reduced: AxisList<bool> = smallvec::smallvec![axes.is_empty(); rank];
        for &a in axes.iter() {
            let a = norm_axis(a, rank)?;
            if reduced[a] {
                op_bail!("axis {a} is listed twice");
            }
            reduced[a] = true;
        }
        Ok(reduced)
    }
}

impl Op for ReduceMean {
    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        let reduced = self.reduced(inputs)?;
        let shape = first(inputs)?
            .shape
            .iter()
            .zip(&reduced)
            .filter_map(|(&d, &r)| match (r, self.keepdims) {
                (false, _) => Some(d),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect();
        Ok(vec![(ElemType::F32, shape)])
    }

    fn run(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        _scratch: &mut [f32],
        _ctx: &ExecCtx,
    ) -> OpResult<()> {
        let reduced = self.reduced(inputs)?;
        let x_arg = first(inputs)?;
        let x = x_arg.f32s()?;
        let shape = x_arg.shape;
        let y = &mut *outputs[0].data;
        y.fill(0.0);
        if !x.is_empty() {
            sum_into(&x, shape, &reduced, y);
        }
        let count: usize = shape.iter().zip(&reduced).filter(|(_, &r)| r).map(|(&d, _)| d).product();
        let inv = 1.0 / count as f32;
        y.iter_mut().for_each(|v| *v *= inv);
        Ok(())
    }
}

/// Adds every element of `x` (of `shape`) into `y` at its index with the `reduced` axes dropped.
/// The trailing axes that share the last axis's role form contiguous runs: a reduced run is
/// summed (in lanes that vectorise) into one output, a kept run added to as many outputs; an
/// odometer walks the axes before it run by run. (Element by element, a mean over a
/// 32 × 96 × 96 map took 2.7 ns a value on a Xeon, each add waiting for the one before.)
fn sum_into(x: &[f32], shape: &[usize], reduced: &[bool], y: &mut [f32]) {
    let rank = shape.len();
    let Some(&last) = reduced.last() else {
        // A scalar: its own mean.
        y[0] += x[0];
        return;
    };
    let split = (0..rank).rev().take_while(|&d| reduced[d] == last).last().unwrap_or(rank);
    let run: usize = shape[split..].iter().product();
    // Output stride of every outer axis (0 on reduced ones).
    let mut strides: AxisList<usize> = smallvec::smallvec![0; split];
    let mut s = if last { 1 } else { run };
    for d in (0..split).rev() {
        if !reduced[d] {
            strides[d] = s;
            s *= shape[d];
        }
    }
    let mut idx: AxisList<usize> = smallvec::smallvec![0; split];
    let mut off = 0;
    for part in x.chunks_exact(run) {
        if last {
            y[off] += lane_sum(part);
        } else {
            y[off..off + run].iter_mut().zip(part).for_each(|(o, &v)| *o += v);
        }
        for d in (0..split).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < shape[d] {
                break;
            }
            off -= strides[d] * shape[d];
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::testing::{act, assert_close, node, run, run_with, values};
    use crate::ops::ArgData;
    use crate::tensor::Tensor;
    use pith_format::ir::Attr;

    /// Softmax over groups of `n` elements `inner` apart, written plainly.
    fn reference_softmax(x: &[f32], outer: usize, n: usize, inner: usize) -> Vec<f32> {
        let mut y = vec![0.0; x.len()];
        for o in 0..outer {
            for i in 0..inner {
                let idx: Vec<usize> = (0..n).map(|k| (o * n + k) * inner + i).collect();
                let denom: f64 = idx.iter().map(|&j| (x[j] as f64).exp()).sum();
                for &j in &idx {
                    y[j] = ((x[j] as f64).exp() / denom) as f32;
                }
            }
        }
        y
    }

    #[test]
    fn softmax_per_axis_and_legacy_2d() {
        let shape = [2, 3, 5];
        let x: Vec<f32> = values(1, 30).iter().map(|v| v * 20.0).collect();
        for (attrs, (outer, n, inner)) in [
            (vec![], (6, 5, 1)),
            (vec![("axis", Attr::Int(1))], (2, 3, 5)),
            (vec![("axis", Attr::Int(-3))], (1, 2, 15)),
            (vec![("coerce_2d", Attr::Int(1))], (2, 15, 1)),
            (vec![("coerce_2d", Attr::Int(1)), ("axis", Attr::Int(2))], (6, 5, 1)),
        ] {
            let op = build(&node(OpKind::Softmax, 1, attrs)).unwrap();
            let got = run(&*op, &[act(&shape, &x)]).unwrap();
            assert_close(&got[0].1, &reference_softmax(&x, outer, n, inner));
        }
        let op = build(&node(OpKind::Softmax, 1, vec![("axis", Attr::Int(3))])).unwrap();
        assert!(op.infer(&[act(&shape, &x)]).is_err());
        // Longer rows (whole 16-lane chunks and a remainder) with -inf entries, which weigh 0,
        // over the contiguous axis and over a strided one.
        let shape = [2, 37, 19];
        let mut x: Vec<f32> = values(3, 2 * 37 * 19).iter().map(|v| v * 30.0).collect();
        x[5] = f32::NEG_INFINITY;
        x[19 * 7 + 3] = f32::NEG_INFINITY;
        for (axis, (outer, n, inner)) in [(2, (74, 19, 1)), (1, (2, 37, 19))] {
            let op = build(&node(OpKind::Softmax, 1, vec![("axis", Attr::Int(axis))])).unwrap();
            let got = run(&*op, &[act(&shape, &x)]).unwrap();
            let want = reference_softmax(&x, outer, n, inner);
            assert_close(&got[0].1, &want);
            assert_eq!((got[0].1[5], got[0].1[19 * 7 + 3]), (0.0, 0.0));
        }
    }

    #[test]
    fn softmax_rows_split_over_threads_give_the_one_thread_bits() {
        // 700 rows of 37 (more than two parts of SOFTMAX_SPLIT_MIN): parts of whole rows.
        let shape = [700, 37];
        let x: Vec<f32> = values(9, 700 * 37).iter().map(|v| v * 12.0).collect();
        assert!(x.len() >= 2 * SOFTMAX_SPLIT_MIN);
        let op = build(&node(OpKind::Softmax, 1, vec![("axis", Attr::Int(1))])).unwrap();
        let one = run(&*op, &[act(&shape, &x)]).unwrap();
        let ctx = ExecCtx { kernels: pith_kernels::Kernels::new(2).unwrap() };
        let two = run_with(&*op, &[act(&shape, &x)], &ctx).unwrap();
        assert_eq!(one, two);
        assert_close(&one[0].1, &reference_softmax(&x, 700, 37, 1));
    }

    #[test]
    fn reduce_mean_axes_keepdims_and_empty_axes() {
        let shape = [2, 3, 4];
        let x = values(2, 24);
        let at = |i: usize, j: usize, k: usize| x[(i * 3 + j) * 4 + k];
        // Mean over axes (0, 2), keepdims.
        let op = build(&node(OpKind::ReduceMean, 1, vec![("axes", Attr::Ints(vec![0, -1]))])).unwrap();
        let got = run(&*op, &[act(&shape, &x)]).unwrap();
        assert_eq!(got[0].0, vec![1, 3, 1]);
        let want: Vec<f32> = (0..3)
            .map(|j| {
                (0..2).flat_map(|i| (0..4).map(move |k| (i, k))).map(|(i, k)| at(i, j, k)).sum::<f32>() / 8.0
            })
            .collect();
        assert_close(&got[0].1, &want);
        // Axes from input 1, no keepdims.
        let axes = Tensor::from_i64(vec![1], vec![1]);
        let axes_arg = Some(Arg { shape: &[1], elem: ElemType::I64, data: Some(ArgData::Known(&axes)) });
        let op = build(&node(OpKind::ReduceMean, 2, vec![("keepdims", Attr::Int(0))])).unwrap();
        let got = run(&*op, &[act(&shape, &x), axes_arg]).unwrap();
        assert_eq!(got[0].0, vec![2, 4]);
        let want: Vec<f32> = (0..8).map(|t| (0..3).map(|j| at(t / 4, j, t % 4)).sum::<f32>() / 3.0).collect();
        assert_close(&got[0].1, &want);
        // No axes: everything, unless noop_with_empty_axes.
        let op = build(&node(OpKind::ReduceMean, 1, vec![])).unwrap();
        let got = run(&*op, &[act(&shape, &x)]).unwrap();
        assert_eq!(got[0].0, vec![1, 1, 1]);
        assert_close(&got[0].1, &[x.iter().sum::<f32>() / 24.0]);
        let op = build(&node(OpKind::ReduceMean, 1, vec![("noop_with_empty_axes", Attr::Int(1))])).unwrap();
        let got = run(&*op, &[act(&shape, &x)]).unwrap();
        assert_eq!(got[0], (shape.to_vec(), x.clone()));
        let op = build(&node(OpKind::ReduceMean, 1, vec![("axes", Attr::Ints(vec![1, -2]))])).unwrap();
        assert!(op.infer(&[act(&shape, &x)]).unwrap_err().0.contains("twice"));
    }

    #[test]
    fn reduce_mean_over_long_runs_matches_the_definition() {
        // Runs of 37 and 74 values (whole 16-lane chunks and a remainder) reduced, kept, or
        // reduced around kept axes: each output the mean of its inputs, by an index walk.
        let shape = [2, 3, 2, 37];
        let x = values(5, shape.iter().product());
        for axes in [vec![3], vec![2, 3], vec![0, 1], vec![0, 2], vec![1, 3], vec![0, 1, 2, 3]] {
            let op = build(&node(OpKind::ReduceMean, 1, vec![("axes", Attr::Ints(axes.clone()))])).unwrap();
            let got = run(&*op, &[act(&shape, &x)]).unwrap();
            let out: Vec<usize> =
                (0..4).map(|d| if axes.contains(&(d as i64)) { 1 } else { shape[d] }).collect();
            assert_eq!(got[0].0, out);
            let mut want = vec![0.0f32; out.iter().product()];
            for (i, &v) in x.iter().enumerate() {
                let idx = [i / 222, i / 74 % 3, i / 37 % 2, i % 37];
                let o = (0..4).fold(0, |o, d| o * out[d] + if out[d] == 1 { 0 } else { idx[d] });
                want[o] += v;
            }
            let count = (x.len() / want.len()) as f32;
            want.iter_mut().for_each(|w| *w /= count);
            assert_close(&got[0].1, &want);
        }
    }
}
