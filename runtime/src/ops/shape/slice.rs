//! Slice and Transpose: strided views copied out with [`strided_copy`].

use std::borrow::Cow;

use pith_format::ir::Node;
use pith_kernels::Kernels;

use super::common::{
    as_batched_transpose, batched_transpose, input, norm_axes, norm_axes_into, param, strided_copy, strides,
    Elem, Move, Mover,
};
use crate::error::OpError;
use crate::ops::{attrs, Arg, AxisList, Op, OpResult};

/// ONNX Slice (attribute form of opset < 10, input form of opset 10+).
#[derive(Debug)]
pub(crate) struct Slice {
    /// Parameters from attributes (opset < 10), else read from inputs 1..=4.
    attrs: Option<SliceAttrs>,
}

/// The attribute form of Slice's parameters.
#[derive(Debug)]
struct SliceAttrs {
    starts: Vec<i64>,
    ends: Vec<i64>,
    axes: Option<Vec<i64>>,
}

/// Builds Slice.
pub(crate) fn build_slice(node: &Node) -> OpResult<Box<dyn Op>> {
    let attrs = match (attrs::ints(node, "starts")?, attrs::ints(node, "ends")?) {
        (Some(starts), Some(ends)) => Some(SliceAttrs { starts, ends, axes: attrs::ints(node, "axes")? }),
        (None, None) => None,
        _ => return Err(OpError("attributes 'starts' and 'ends' go together".into())),
    };
    Mover::boxed(Slice { attrs })
}

/// Where a slice starts and how it strides, per input axis.
struct SliceLayout {
    out_shape: AxisList<usize>,
    base: isize,
    strides: AxisList<isize>,
}

impl Slice {
    fn layout(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<SliceLayout> {
        let shape = input(inputs, 0)?.shape;
        let (starts, ends, axes, steps): (Cow<'_, [i64]>, Cow<'_, [i64]>, _, _) = match &self.attrs {
            Some(a) => {
                (Cow::Borrowed(&a.starts), Cow::Borrowed(&a.ends), a.axes.as_deref().map(Cow::Borrowed), None)
            }
            None => {
                let need = |i, what| {
                    param(inputs, i, what)?.ok_or_else(|| OpError(format!("input '{what}' is required")))
                };
                (need(1, "starts")?, need(2, "ends")?, param(inputs, 3, "axes")?, param(inputs, 4, "steps")?)
            }
        };
        let axes = match axes {
            Some(a) => norm_axes(&a, shape.len())?,
            None if starts.len() > shape.len() => {
                return Err(OpError(format!(
                    "{} starts without axes for an input of rank {}",
                    starts.len(),
                    shape.len()
                )));
            }
            None => (0..starts.len()).collect(),
        };
        // Absent steps are all 1.
        let steps_len = steps.as_ref().map_or(starts.len(), |s| s.len());
        let step = |k: usize| steps.as_ref().map_or(1, |s| s[k]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps_len != starts.len() {
            return Err(OpError(format!(
                "starts, ends, axes and steps have different lengths ({}, {}, {}, {})",
                starts.len(),
                ends.len(),
                axes.len(),
                steps_len
            )));
        }
        let in_strides = strides(shape);
        let mut out_shape: AxisList<usize> = shape.iter().copied().collect();
        let mut strides: AxisList<isize> = in_strides.iter().map(|&s| s as isize).collect();
        let mut base = 0isize;
        for k in 0..axes.len() {
            let (axis, step) = (axes[k], step(k));
            if step == 0 {
                return Err(OpError(format!("step of axis {axis} is zero")));
            }
            let dim = shape[axis] as i64;
            let wrap = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
            let (start, end) = (wrap(starts[k]), wrap(ends[k]));
            // In i128: a step near i64's limits must not overflow the count.
            let (start, count) = if step > 0 {
                let (s, e) = (start.clamp(0, dim), end.clamp(0, dim));
                (s, if e > s { (i128::from(e - s) + i128::from(step) - 1) / i128::from(step) } else { 0 })
            } else {
                // Negative steps walk down from start (at most dim-1) to just above end (at least -1).
                let s = start.max(0).min(dim - 1);
                let e = end.max(-1).min(dim - 1);
                (s, if s > e { (i128::from(s - e) - i128::from(step) - 1) / -i128::from(step) } else { 0 })
            };
            out_shape[axis] = count as usize;
            if count > 0 {
                base += start as isize * in_strides[axis] as isize;
            }
            // Saturating: a step past the axis takes one element, whose stride is never used.
            strides[axis] = (in_strides[axis] as isize).saturating_mul(step as isize);
        }
        Ok(SliceLayout { out_shape, base, strides })
    }
}

impl Move for Slice {
    fn shapes(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<Vec<usize>>> {
        Ok(vec![self.layout(inputs)?.out_shape.to_vec()])
    }

    fn apply<T: Elem>(&self, inputs: &[Option<Arg<'_>>], src: &[&[T]], dst: &mut [&mut [T]]) -> OpResult<()> {
        let l = self.layout(inputs)?;
        strided_copy(src[0], l.base, &l.strides, &l.out_shape, dst[0]);
        Ok(())
    }
}

/// ONNX Transpose.
#[derive(Debug)]
pub(crate) struct Transpose {
    perm: Option<Vec<i64>>,
}

/// Builds Transpose.
pub(crate) fn build_transpose(node: &Node) -> OpResult<Box<dyn Op>> {
    Mover::boxed(Transpose { perm: attrs::ints(node, "perm")? })
}

impl Transpose {
    fn perm(&self, rank: usize) -> OpResult<AxisList<usize>> {
        let mut perm = smallvec::smallvec![0; rank];
        self.perm_into(&mut perm)?;
        Ok(perm)
    }

    /// The permutation for the input's rank (`out.len()`), into `out`.
    fn perm_into(&self, out: &mut [usize]) -> OpResult<()> {
        let rank = out.len();
        let perm = match &self.perm {
            None => {
                out.iter_mut().enumerate().for_each(|(i, p)| *p = rank - 1 - i);
                return Ok(());
            }
            Some(p) => p,
        };
        if perm.len() != rank {
            return Err(OpError(format!("perm {perm:?} does not match rank {rank}")));
        }
        norm_axes_into(perm, rank, out)
    }

    /// The copy, with the kernels' transposes for batched ones when `kernels` is given.
    fn transpose<T: Elem>(
        &self,
        kernels: Option<&Kernels>,
        inputs: &[Option<Arg<'_>>],
        src: &[&[T]],
        dst: &mut [&mut [T]],
    ) -> OpResult<()> {
        let shape = input(inputs, 0)?.shape;
        // The layout changes between NCHW and NHWC of a detector's heads are batched transposes.
        let perm = self.perm(shape.len())?;
        if let Some((batch, rows, cols)) = as_batched_transpose(shape, &perm) {
            batched_transpose(kernels, src[0], batch, rows, cols, dst[0]);
            return Ok(());
        }
        let in_strides = strides(shape);
        let out_shape: AxisList<usize> = perm.iter().map(|&p| shape[p]).collect();
        let st: AxisList<isize> = perm.iter().map(|&p| in_strides[p] as isize).collect();
        strided_copy(src[0], 0, &st, &out_shape, dst[0]);
        Ok(())
    }
}

impl Move for Transpose {
    fn shapes(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<Vec<usize>>> {
        let shape = input(inputs, 0)?.shape;
        Ok(vec![self.perm(shape.len())?.iter().map(|&p| shape[p]).collect()])
    }

    fn apply<T: Elem>(&self, inputs: &[Option<Arg<'_>>], src: &[&[T]], dst: &mut [&mut [T]]) -> OpResult<()> {
        self.transpose(None, inputs, src, dst)
    }

    fn apply_on<T: Elem>(
        &self,
        kernels: &Kernels,
        inputs: &[Option<Arg<'_>>],
        src: &[&[T]],
        dst: &mut [&mut [T]],
    ) -> OpResult<()> {
        self.transpose(Some(kernels), inputs, src, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::test_util::*;
    use super::*;
    use crate::tensor::Tensor;
    use pith_format::ir::{Attr, OpKind};

    /// Reference 1-axis slice by explicit index list.
    fn pick(x: &Tensor, axis: usize, idx: &[usize]) -> Tensor {
        let mut shape = x.shape.clone();
        shape[axis] = idx.len();
        let n = shape.iter().product();
        let data = (0..n)
            .map(|i| {
                let mut m = unravel(i, &shape);
                m[axis] = idx[m[axis]];
                x.as_f32().unwrap()[ravel(&m, &x.shape)]
            })
            .collect();
        Tensor::from_f32(shape, data)
    }

    fn slice(x: &Tensor, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> Tensor {
        let op = build_slice(&node(OpKind::Slice, 5, 1, vec![])).unwrap();
        let (s, e, a, st) = (ints(starts), ints(ends), ints(axes), ints(steps));
        run(&*op, &[act(x), known(&s), known(&e), known(&a), known(&st)]).unwrap().remove(0)
    }

    #[test]
    fn slice_positive_negative_and_clamped() {
        let x = iota(&[3, 5, 4]);
        assert_eq!(slice(&x, &[1], &[4], &[1], &[1]), pick(&x, 1, &[1, 2, 3]));
        assert_eq!(slice(&x, &[0], &[i64::MAX], &[-1], &[2]), pick(&x, 2, &[0, 2]));
        assert_eq!(slice(&x, &[-1], &[i64::MIN], &[1], &[-1]), pick(&x, 1, &[4, 3, 2, 1, 0]));
        assert_eq!(slice(&x, &[10], &[0], &[1], &[-2]), pick(&x, 1, &[4, 2]));
        assert_eq!(slice(&x, &[-2], &[-1], &[0], &[1]), pick(&x, 0, &[1]));
        assert_eq!(slice(&x, &[3], &[1], &[2], &[1]).shape, vec![3, 5, 0]);
        // Two axes at once equals two single-axis slices.
        let both = slice(&x, &[1, 3], &[3, 0], &[0, 2], &[1, -1]);
        assert_eq!(both, pick(&pick(&x, 0, &[1, 2]), 2, &[3, 2, 1]));
    }

    #[test]
    fn slice_attribute_form_and_plan_time_integers() {
        let op = build_slice(&node(
            OpKind::Slice,
            1,
            1,
            vec![("starts", attr_ints(&[1])), ("ends", attr_ints(&[-1]))],
        ))
        .unwrap();
        let v = ints(&[5, 6, 7, 8]);
        assert_eq!(eval(&*op, &[known(&v)]).unwrap()[0], ints(&[6, 7]));
    }

    #[test]
    fn slice_refuses_bad_parameters() {
        let x = iota(&[4]);
        let op = build_slice(&node(OpKind::Slice, 5, 1, vec![])).unwrap();
        let (s, e, a, z) = (ints(&[0]), ints(&[2]), ints(&[1]), ints(&[0]));
        assert!(op.infer(&[act(&x), known(&s), known(&e), known(&a), None]).is_err(), "axis");
        assert!(op.infer(&[act(&x), known(&s), known(&e), None, known(&z)]).is_err(), "step 0");
        let two = ints(&[0, 1]);
        assert!(op.infer(&[act(&x), known(&two), known(&e), None, None]).is_err(), "lengths");
        let f = iota(&[1]);
        assert!(op.infer(&[act(&x), act(&f), known(&e), None, None]).is_err(), "f32 starts");
        assert!(op.infer(&[act(&x), known(&s), unknown(&[1]), None, None]).is_err());
        // More starts than axes without an axes input (a 1-D input): an error, not a panic.
        let (s2, e2) = (ints(&[0, 0]), ints(&[2, 2]));
        let err = op.infer(&[act(&x), known(&s2), known(&e2), None, None]).unwrap_err();
        assert!(err.to_string().contains("rank 1"), "{err}");
    }

    #[test]
    fn slice_steps_at_the_limits_take_one_element() {
        let x = iota(&[3, 5, 4]);
        assert_eq!(slice(&x, &[1], &[5], &[1], &[i64::MAX]), pick(&x, 1, &[1]));
        assert_eq!(slice(&x, &[3], &[i64::MIN], &[1], &[i64::MIN]), pick(&x, 1, &[3]));
        assert_eq!(slice(&x, &[i64::MIN], &[i64::MAX], &[2], &[i64::MAX - 1]), pick(&x, 2, &[0]));
    }

    #[test]
    fn transpose_matches_reference() {
        let x = iota(&[2, 3, 4, 5]);
        for perm in [[0, 2, 3, 1], [3, 2, 1, 0], [1, 0, 3, 2], [0, 1, 2, 3]] {
            let op =
                build_transpose(&node(OpKind::Transpose, 1, 1, vec![("perm", Attr::Ints(perm.to_vec()))]))
                    .unwrap();
            let got = run(&*op, &[act(&x)]).unwrap().remove(0);
            let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p as usize]).collect();
            assert_eq!(got.shape, shape);
            for (i, &v) in got.as_f32().unwrap().iter().enumerate() {
                let o = unravel(i, &shape);
                let mut m = vec![0; 4];
                for (d, &p) in perm.iter().enumerate() {
                    m[p as usize] = o[d];
                }
                assert_eq!(v, x.as_f32().unwrap()[ravel(&m, &x.shape)]);
            }
        }
        // Default: reverse the axes.
        let op = build_transpose(&node(OpKind::Transpose, 1, 1, vec![])).unwrap();
        let m = iota_i64(&[2, 3]);
        let got = eval(&*op, &[known(&m)]).unwrap().remove(0);
        assert_eq!(got, Tensor::from_i64(vec![3, 2], vec![0, 3, 1, 4, 2, 5]));
    }

    #[test]
    fn batched_transposes_match_the_strided_copy() {
        // Odd sizes leave partial blocks on both sides, an empty axis leaves nothing to copy;
        // the last two perms are not batched.
        let cases: [(&[usize], &[i64]); 8] = [
            (&[2, 13, 9, 11], &[0, 2, 3, 1]),
            (&[2, 0, 3, 4], &[0, 2, 3, 1]),
            (&[3, 5, 17, 2], &[0, 3, 1, 2]),
            (&[19, 8], &[1, 0]),
            (&[2, 3, 9, 10], &[0, 1, 3, 2]),
            (&[4, 3, 2, 5], &[2, 3, 0, 1]),
            (&[4, 3, 2, 5], &[0, 2, 1, 3]),
            (&[4, 3, 2, 5], &[3, 1, 2, 0]),
        ];
        for (shape, perm) in cases {
            let x = iota(shape);
            let axes: Vec<usize> = perm.iter().map(|&p| p as usize).collect();
            let batched = as_batched_transpose(shape, &axes).is_some();
            assert_eq!(batched, perm != [0, 2, 1, 3] && perm != [3, 1, 2, 0], "{perm:?}");
            let op =
                build_transpose(&node(OpKind::Transpose, 1, 1, vec![("perm", Attr::Ints(perm.to_vec()))]))
                    .unwrap();
            let got = run(&*op, &[act(&x)]).unwrap().remove(0);
            let out_shape: Vec<usize> = axes.iter().map(|&p| shape[p]).collect();
            let in_strides = strides(shape);
            let st: Vec<isize> = axes.iter().map(|&p| in_strides[p] as isize).collect();
            let mut want = vec![0.0f32; out_shape.iter().product()];
            strided_copy(x.as_f32().unwrap(), 0, &st, &out_shape, &mut want);
            assert_eq!(got.shape, out_shape);
            assert_eq!(got.as_f32().unwrap(), &want[..], "{shape:?} {perm:?}");
        }
    }

    #[test]
    fn transpose_refuses_bad_perm() {
        let x = iota(&[2, 3]);
        for perm in [vec![0], vec![0, 0], vec![0, 2]] {
            let op =
                build_transpose(&node(OpKind::Transpose, 1, 1, vec![("perm", Attr::Ints(perm))])).unwrap();
            assert!(op.infer(&[act(&x)]).is_err());
        }
    }
}
