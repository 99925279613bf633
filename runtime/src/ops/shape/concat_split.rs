//! Concat and Split: joining and cutting along one axis.

use pith_format::ir::Node;

use super::common::{input, norm_axis, param, Elem, Move, Mover};
use crate::error::OpError;
use crate::ops::{attrs, Arg, AxisList, Op, OpResult};

/// ONNX Concat.
#[derive(Debug)]
pub(crate) struct Concat {
    axis: i64,
}

/// Builds Concat.
pub(crate) fn build_concat(node: &Node) -> OpResult<Box<dyn Op>> {
    let axis = match node.attr("axis") {
        Some(_) => attrs::int(node, "axis", 0)?,
        None => return Err(OpError("attribute 'axis' is required".into())),
    };
    Mover::boxed(Concat { axis })
}

impl Concat {
    /// Normalised axis and the shape of the first input.
    fn axis<'b>(&self, inputs: &'b [Option<Arg<'_>>]) -> OpResult<(usize, &'b [usize])> {
        let first = input(inputs, 0)?.shape;
        Ok((norm_axis(self.axis, first.len())?, first))
    }
}

impl Move for Concat {
    fn is_data(&self, _input: usize) -> bool {
        true
    }

    fn shapes(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<Vec<usize>>> {
        let (axis, first) = self.axis(inputs)?;
        let mut out = first.to_vec();
        out[axis] = 0;
        for (i, a) in inputs.iter().enumerate() {
            let a = a.as_ref().ok_or_else(|| OpError(format!("input {i} is missing")))?;
            let compatible = a.shape.len() == out.len()
                && a.shape.iter().zip(&out).enumerate().all(|(d, (x, y))| d == axis || x == y);
            if !compatible {
                return Err(OpError(format!(
                    "input {i} has shape {:?}, incompatible with {:?} on axis {axis}",
                    a.shape,
                    input(inputs, 0)?.shape
                )));
            }
            out[axis] += a.shape[axis];
        }
        Ok(vec![out])
    }

    fn apply<T: Elem>(&self, inputs: &[Option<Arg<'_>>], src: &[&[T]], dst: &mut [&mut [T]]) -> OpResult<()> {
        let (axis, shape) = self.axis(inputs)?;
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let mut pos = 0;
        for o in 0..outer {
            for (s, len) in src.iter().zip(inputs.iter().flatten().map(|a| a.shape[axis] * inner)) {
                dst[0][pos..pos + len].copy_from_slice(&s[o * len..(o + 1) * len]);
                pos += len;
            }
        }
        Ok(())
    }
}

/// ONNX Split.
#[derive(Debug)]
pub(crate) struct Split {
    axis: i64,
    /// Sizes from the `split` attribute (opset < 13).
    split_attr: Option<Vec<i64>>,
    /// `num_outputs` (opset 18), else the node's output count.
    outputs: usize,
    /// Whether `num_outputs` was given (uneven splits allowed then).
    num_outputs_attr: bool,
}

/// Builds Split.
pub(crate) fn build_split(node: &Node) -> OpResult<Box<dyn Op>> {
    let num = attrs::int(node, "num_outputs", -1)?;
    if num != -1 && num != node.outputs.len() as i64 {
        return Err(OpError(format!("num_outputs is {num} but the node has {} outputs", node.outputs.len())));
    }
    if node.outputs.is_empty() {
        return Err(OpError("Split needs at least one output".into()));
    }
    Mover::boxed(Split {
        axis: attrs::int(node, "axis", 0)?,
        split_attr: attrs::ints(node, "split")?,
        outputs: node.outputs.len(),
        num_outputs_attr: num != -1,
    })
}

impl Split {
    /// Normalised axis, outer extent, inner extent and the size of every piece along the axis.
    fn layout(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<(usize, AxisList<usize>)> {
        let shape = input(inputs, 0)?.shape;
        let axis = norm_axis(self.axis, shape.len())?;
        let dim = shape[axis];
        let sizes: AxisList<i64> = match (param(inputs, 1, "split")?, &self.split_attr) {
            (Some(s), _) => s.iter().copied().collect(),
            (None, Some(s)) => s.iter().copied().collect(),
            (None, None) if self.num_outputs_attr => {
                // Opset 18: ceil-sized pieces, the last one smaller.
                let piece = dim.div_ceil(self.outputs);
                (0..self.outputs).map(|k| dim.saturating_sub(k * piece).min(piece) as i64).collect()
            }
            (None, None) => {
                if dim % self.outputs != 0 {
                    return Err(OpError(format!(
                        "cannot split extent {dim} into {} equal parts",
                        self.outputs
                    )));
                }
                smallvec::smallvec![(dim / self.outputs) as i64; self.outputs]
            }
        };
        if sizes.len() != self.outputs {
            return Err(OpError(format!("{} split sizes for {} outputs", sizes.len(), self.outputs)));
        }
        if sizes.iter().any(|&s| s < 0) || sizes.iter().sum::<i64>() != dim as i64 {
            return Err(OpError(format!(
                "split sizes {sizes:?} do not add up to extent {dim} of axis {axis}"
            )));
        }
        Ok((axis, sizes.into_iter().map(|s| s as usize).collect()))
    }
}

impl Move for Split {
    fn shapes(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<Vec<usize>>> {
        let (axis, sizes) = self.layout(inputs)?;
        let shape = input(inputs, 0)?.shape;
        Ok(sizes
            .into_iter()
            .map(|s| {
                let mut o = shape.to_vec();
                o[axis] = s;
                o
            })
            .collect())
    }

    fn apply<T: Elem>(&self, inputs: &[Option<Arg<'_>>], src: &[&[T]], dst: &mut [&mut [T]]) -> OpResult<()> {
        let (axis, sizes) = self.layout(inputs)?;
        let shape = input(inputs, 0)?.shape;
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let mut pos = 0;
        for o in 0..outer {
            for (d, &s) in dst.iter_mut().zip(&sizes) {
                let len = s * inner;
                d[o * len..(o + 1) * len].copy_from_slice(&src[0][pos..pos + len]);
                pos += len;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::test_util::*;
    use super::*;
    use crate::tensor::Tensor;
    use pith_format::ir::{Attr, OpKind};

    /// Reference concat by multi-index.
    fn concat_ref(parts: &[&Tensor], axis: usize) -> Tensor {
        let mut shape = parts[0].shape.clone();
        shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
        let n: usize = shape.iter().product();
        let mut out = vec![0.0; n];
        for (i, o) in out.iter_mut().enumerate() {
            let mut idx = unravel(i, &shape);
            let mut k = 0;
            while idx[axis] >= parts[k].shape[axis] {
                idx[axis] -= parts[k].shape[axis];
                k += 1;
            }
            *o = parts[k].as_f32().unwrap()[ravel(&idx, &parts[k].shape)];
        }
        Tensor::from_f32(shape, out)
    }

    #[test]
    fn concat_matches_reference_on_every_axis() {
        let a = iota(&[2, 3, 4]);
        for axis in -3i64..3 {
            let ax = if axis < 0 { axis + 3 } else { axis } as usize;
            let mut bs = a.shape.clone();
            bs[ax] = 1;
            let b = Tensor::from_f32(
                bs.clone(),
                (0..bs.iter().product::<usize>()).map(|i| 50.0 + i as f32).collect(),
            );
            let op = build_concat(&node(OpKind::Concat, 2, 1, vec![("axis", Attr::Int(axis))])).unwrap();
            let got = run(&*op, &[act(&a), act(&b)]).unwrap();
            assert_eq!(got[0], concat_ref(&[&a, &b], ax), "axis {axis}");
        }
    }

    #[test]
    fn concat_of_integers_at_plan_time() {
        let op = build_concat(&node(OpKind::Concat, 3, 1, vec![("axis", Attr::Int(0))])).unwrap();
        let (a, b, c) = (ints(&[1, 2]), ints(&[]), ints(&[-1]));
        let got = eval(&*op, &[known(&a), known(&b), known(&c)]).unwrap();
        assert_eq!(got[0], ints(&[1, 2, -1]));
    }

    #[test]
    fn concat_refuses_mismatched_shapes_and_types() {
        let op = build_concat(&node(OpKind::Concat, 2, 1, vec![("axis", Attr::Int(1))])).unwrap();
        let (a, b) = (iota(&[2, 3]), iota(&[3, 3]));
        assert!(op.infer(&[act(&a), act(&b)]).is_err());
        let i = iota_i64(&[2, 3]);
        assert!(op.infer(&[act(&a), known(&i)]).is_err());
        assert!(build_concat(&node(OpKind::Concat, 2, 1, vec![])).is_err());
    }

    #[test]
    fn split_equal_attr_input_and_num_outputs() {
        let x = iota(&[2, 6]);
        // Equal split along axis 1 into 3.
        let op = build_split(&node(OpKind::Split, 1, 3, vec![("axis", Attr::Int(-1))])).unwrap();
        let got = run(&*op, &[act(&x)]).unwrap();
        assert_eq!(got[1], Tensor::from_f32(vec![2, 2], vec![2.0, 3.0, 8.0, 9.0]));
        // Sizes from the attribute.
        let op = build_split(&node(
            OpKind::Split,
            1,
            2,
            vec![("axis", Attr::Int(1)), ("split", attr_ints(&[1, 5]))],
        ))
        .unwrap();
        let got = run(&*op, &[act(&x)]).unwrap();
        assert_eq!(got[0], Tensor::from_f32(vec![2, 1], vec![0.0, 6.0]));
        assert_eq!(got[1].shape, vec![2, 5]);
        assert_eq!(got[1].as_f32().unwrap()[5], 7.0);
        // Sizes from input 1, splitting integers at plan time.
        let op = build_split(&node(OpKind::Split, 2, 2, vec![])).unwrap();
        let (v, s) = (ints(&[1, 2, 3, 4, 5]), ints(&[3, 2]));
        let got = eval(&*op, &[known(&v), known(&s)]).unwrap();
        assert_eq!(got, vec![ints(&[1, 2, 3]), ints(&[4, 5])]);
        // num_outputs with an uneven extent: 7 -> 3, 3, 1.
        let op = build_split(&node(OpKind::Split, 1, 3, vec![("num_outputs", Attr::Int(3))])).unwrap();
        let v = ints(&[0, 1, 2, 3, 4, 5, 6]);
        let got = eval(&*op, &[known(&v)]).unwrap();
        assert_eq!(got, vec![ints(&[0, 1, 2]), ints(&[3, 4, 5]), ints(&[6])]);
    }

    #[test]
    fn split_refuses_bad_sizes() {
        let x = iota(&[5]);
        let op = build_split(&node(OpKind::Split, 1, 2, vec![])).unwrap();
        assert!(op.infer(&[act(&x)]).is_err(), "5 is not divisible by 2");
        let op = build_split(&node(OpKind::Split, 2, 2, vec![])).unwrap();
        let s = ints(&[2, 2]);
        assert!(op.infer(&[act(&x), known(&s)]).is_err(), "sizes sum to 4");
        let s = ints(&[6, -1]);
        assert!(op.infer(&[act(&x), known(&s)]).is_err(), "negative size");
        assert!(build_split(&node(OpKind::Split, 1, 2, vec![("num_outputs", Attr::Int(3))])).is_err());
    }
}
