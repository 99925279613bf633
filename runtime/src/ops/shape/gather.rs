//! Gather: picking slices along one axis by plan-time integer indices.

use std::borrow::Cow;

use pith_format::ir::Node;

use super::common::{input, norm_axis, param, Elem, Move, Mover};
use crate::error::OpError;
use crate::ops::{attrs, Arg, Op, OpResult};

/// ONNX Gather.
#[derive(Debug)]
pub(crate) struct Gather {
    axis: i64,
}

/// Builds Gather.
pub(crate) fn build_gather(node: &Node) -> OpResult<Box<dyn Op>> {
    Mover::boxed(Gather { axis: attrs::int(node, "axis", 0)? })
}

impl Gather {
    /// Normalised axis and the indices as given, every one checked against the extent (negative
    /// ones count from the end: see [`wrap`]).
    fn indices<'a>(&self, inputs: &[Option<Arg<'a>>]) -> OpResult<(usize, Cow<'a, [i64]>)> {
        let shape = input(inputs, 0)?.shape;
        let axis = norm_axis(self.axis, shape.len())?;
        let dim = shape[axis];
        let raw =
            param(inputs, 1, "indices")?.ok_or_else(|| OpError("input 'indices' is required".into()))?;
        if let Some(&i) = raw.iter().find(|&&i| wrap(i, dim).is_none()) {
            return Err(OpError(format!("index {i} is out of range for extent {dim} of axis {axis}")));
        }
        Ok((axis, raw))
    }
}

/// Index `i` of an axis of extent `dim` (negative: from the end), if in range.
fn wrap(i: i64, dim: usize) -> Option<usize> {
    let j = if i < 0 { i.checked_add(dim as i64)? } else { i };
    usize::try_from(j).ok().filter(|&j| j < dim)
}

impl Move for Gather {
    fn shapes(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<Vec<usize>>> {
        let (axis, _) = self.indices(inputs)?;
        let shape = input(inputs, 0)?.shape;
        let idx_shape = input(inputs, 1)?.shape;
        Ok(vec![[&shape[..axis], idx_shape, &shape[axis + 1..]].concat()])
    }

    fn apply<T: Elem>(&self, inputs: &[Option<Arg<'_>>], src: &[&[T]], dst: &mut [&mut [T]]) -> OpResult<()> {
        let (axis, idx) = self.indices(inputs)?;
        let shape = input(inputs, 0)?.shape;
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let dim = shape[axis];
        let mut pos = 0;
        for o in 0..outer {
            for &i in idx.iter() {
                // Checked by `indices`.
                let s = (o * dim + wrap(i, dim).unwrap_or(0)) * inner;
                dst[0][pos..pos + inner].copy_from_slice(&src[0][s..s + inner]);
                pos += inner;
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

    #[test]
    fn gathers_along_each_axis_like_a_reference_loop() {
        let x = iota(&[3, 4, 2]);
        let idx = Tensor::from_i64(vec![2, 2], vec![0, -1, 1, 0]);
        for axis in [0i64, 1, -1] {
            let a = if axis < 0 { axis + 3 } else { axis } as usize;
            let op = build_gather(&node(OpKind::Gather, 2, 1, vec![("axis", Attr::Int(axis))])).unwrap();
            let got = run(&*op, &[act(&x), known(&idx)]).unwrap().remove(0);
            let want_shape = [&x.shape[..a], &[2, 2][..], &x.shape[a + 1..]].concat();
            assert_eq!(got.shape, want_shape);
            for (i, &v) in got.as_f32().unwrap().iter().enumerate() {
                let o = unravel(i, &want_shape);
                let k = idx.as_i64().unwrap()[o[a] * 2 + o[a + 1]];
                let k = if k < 0 { k + x.shape[a] as i64 } else { k } as usize;
                let m = [&o[..a], &[k][..], &o[a + 2..]].concat();
                assert_eq!(v, x.as_f32().unwrap()[ravel(&m, &x.shape)], "axis {axis}");
            }
        }
    }

    #[test]
    fn scalar_index_of_a_shape_vector() {
        // The Shape -> Gather(scalar) -> Unsqueeze idiom of exported models.
        let op = build_gather(&node(OpKind::Gather, 2, 1, vec![])).unwrap();
        let (shape, i) = (ints(&[1, 3, 224, 320]), Tensor::from_i64(vec![], vec![-2]));
        let got = eval(&*op, &[known(&shape), known(&i)]).unwrap().remove(0);
        assert_eq!(got, Tensor::from_i64(vec![], vec![224]));
    }

    #[test]
    fn refuses_out_of_range_and_unknown_indices() {
        let op = build_gather(&node(OpKind::Gather, 2, 1, vec![])).unwrap();
        let x = iota(&[3]);
        for bad in [3, -4] {
            let i = ints(&[bad]);
            assert!(op.infer(&[act(&x), known(&i)]).is_err(), "{bad}");
        }
        assert!(op.infer(&[act(&x), unknown(&[1])]).is_err());
        let f = iota(&[1]);
        assert!(op.infer(&[act(&x), act(&f)]).is_err(), "float indices");
    }
}
