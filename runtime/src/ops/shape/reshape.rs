//! Ops that change only the shape: Reshape, Flatten, Squeeze, Unsqueeze, Identity.
//!
//! Their elements keep row-major order, so running them is one copy.

use pith_format::ir::{Node, OpKind};

use super::common::{input, norm_axes, param, Elem, Move, Mover};
use crate::error::OpError;
use crate::ops::{attrs, Arg, Op, OpResult};

/// Which reshaping op, with its parameters.
#[derive(Debug)]
pub(crate) enum Reshaper {
    /// ONNX Reshape; the target shape is input 1.
    Reshape {
        /// `allowzero`: a 0 in the target means 0 rather than "copy this extent".
        allow_zero: bool,
    },
    /// ONNX Flatten.
    Flatten {
        /// First axis of the second output dimension.
        axis: i64,
    },
    /// ONNX Squeeze; axes from the attribute (opset < 13) or input 1.
    Squeeze {
        /// Attribute axes.
        axes: Option<Vec<i64>>,
    },
    /// ONNX Unsqueeze; axes from the attribute (opset < 13) or input 1.
    Unsqueeze {
        /// Attribute axes.
        axes: Option<Vec<i64>>,
    },
    /// ONNX Identity.
    Identity,
}

/// Builds Reshape, Flatten, Squeeze, Unsqueeze or Identity.
pub(crate) fn build(node: &Node) -> OpResult<Box<dyn Op>> {
    let r = match node.op {
        OpKind::Reshape => Reshaper::Reshape { allow_zero: attrs::int(node, "allowzero", 0)? != 0 },
        OpKind::Flatten => Reshaper::Flatten { axis: attrs::int(node, "axis", 1)? },
        OpKind::Squeeze => Reshaper::Squeeze { axes: attrs::ints(node, "axes")? },
        OpKind::Unsqueeze => Reshaper::Unsqueeze { axes: attrs::ints(node, "axes")? },
        OpKind::Identity => Reshaper::Identity,
        other => return Err(OpError(format!("{} is not a reshaping op", other.onnx_name()))),
    };
    Mover::boxed(r)
}

/// The output shape of ONNX Reshape of `shape` to `target`.
fn reshape_target(shape: &[usize], target: &[i64], allow_zero: bool) -> OpResult<Vec<usize>> {
    let numel: usize = shape.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            -1 if infer_at.is_some() => {
                return Err(OpError(format!("target shape {target:?} has more than one -1")))
            }
            -1 => {
                infer_at = Some(i);
                out.push(1);
            }
            0 if !allow_zero => match shape.get(i) {
                Some(&d) => out.push(d),
                None => {
                    return Err(OpError(format!(
                        "target shape {target:?} copies extent {i}, but the input {shape:?} has rank {}",
                        shape.len()
                    )))
                }
            },
            t if t < 0 => return Err(OpError(format!("target shape {target:?} has extent {t}"))),
            t => out.push(t as usize),
        }
    }
    if let Some(i) = infer_at {
        let known: usize = out.iter().product();
        if numel.checked_rem(known) != Some(0) {
            return Err(OpError(format!("cannot reshape {shape:?} ({numel} elements) to {target:?}")));
        }
        out[i] = numel / known;
    }
    if out.iter().product::<usize>() != numel {
        return Err(OpError(format!("cannot reshape {shape:?} ({numel} elements) to {target:?}")));
    }
    Ok(out)
}

/// Axes from the attribute or from integer input 1.
fn axes_of(attr: &Option<Vec<i64>>, inputs: &[Option<Arg<'_>>]) -> OpResult<Option<Vec<i64>>> {
    match param(inputs, 1, "axes")? {
        Some(a) => Ok(Some(a.into_owned())),
        None => Ok(attr.clone()),
    }
}

impl Move for Reshaper {
    fn shapes(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<Vec<usize>>> {
        let shape = input(inputs, 0)?.shape;
        let out = match self {
            Reshaper::Reshape { allow_zero } => {
                let target =
                    param(inputs, 1, "shape")?.ok_or_else(|| OpError("input 'shape' is required".into()))?;
                reshape_target(shape, &target, *allow_zero)?
            }
            Reshaper::Flatten { axis } => {
                let r = shape.len() as i64;
                if *axis < -r || *axis > r {
                    return Err(OpError(format!("axis {axis} is out of range for rank {r}")));
                }
                let a = if *axis < 0 { axis + r } else { *axis } as usize;
                vec![shape[..a].iter().product(), shape[a..].iter().product()]
            }
            Reshaper::Squeeze { axes } => match axes_of(axes, inputs)? {
                None => shape.iter().copied().filter(|&d| d != 1).collect(),
                Some(axes) => {
                    let axes = norm_axes(&axes, shape.len())?;
                    if let Some(&a) = axes.iter().find(|&&a| shape[a] != 1) {
                        return Err(OpError(format!("cannot squeeze axis {a} of extent {}", shape[a])));
                    }
                    let keep = |(i, _): &(usize, &usize)| !axes.contains(i);
                    shape.iter().enumerate().filter(keep).map(|(_, &d)| d).collect()
                }
            },
            Reshaper::Unsqueeze { axes } => {
                let axes = axes_of(axes, inputs)?.ok_or_else(|| OpError("axes are required".into()))?;
                let rank = shape.len() + axes.len();
                let axes = norm_axes(&axes, rank)?;
                let mut rest = shape.iter();
                (0..rank).map(|i| if axes.contains(&i) { 1 } else { *rest.next().unwrap_or(&1) }).collect()
            }
            Reshaper::Identity => shape.to_vec(),
        };
        Ok(vec![out])
    }

    fn apply<T: Elem>(
        &self,
        _inputs: &[Option<Arg<'_>>],
        src: &[&[T]],
        dst: &mut [&mut [T]],
    ) -> OpResult<()> {
        dst[0].copy_from_slice(src[0]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::test_util::*;
    use super::*;
    use crate::tensor::Tensor;
    use pith_format::ir::Attr;

    fn shape_of(
        op: OpKind,
        attrs: Vec<(&str, Attr)>,
        x: &[usize],
        p: Option<&[i64]>,
    ) -> OpResult<Vec<usize>> {
        let n = node(op, 2, 1, attrs);
        let o = build(&n)?;
        let p = p.map(ints);
        let x = iota(x);
        let inputs = [act(&x), p.as_ref().and_then(known)];
        let got = run(&*o, &inputs)?.remove(0);
        // Data keeps its row-major order.
        assert_eq!(got.as_f32(), x.as_f32());
        Ok(got.shape)
    }

    #[test]
    fn reshape_zero_minus_one_and_allowzero() {
        let r = |x: &[usize], t: &[i64]| shape_of(OpKind::Reshape, vec![], x, Some(t));
        assert_eq!(r(&[2, 3, 4], &[0, -1]).unwrap(), vec![2, 12]);
        assert_eq!(r(&[2, 3, 4], &[-1, 4, 1]).unwrap(), vec![6, 4, 1]);
        assert_eq!(r(&[2, 3, 4], &[24]).unwrap(), vec![24]);
        assert_eq!(r(&[1], &[]).unwrap(), Vec::<usize>::new());
        assert!(r(&[2, 3, 4], &[5, -1]).is_err(), "24 is not divisible by 5");
        assert!(r(&[2, 3, 4], &[7, 3]).is_err(), "wrong element count");
        assert!(r(&[2, 3, 4], &[-1, -1]).is_err());
        assert!(r(&[2, 3], &[0, 0, 0]).is_err(), "copies a missing extent");
        assert!(r(&[2, 3], &[-2, 3]).is_err());
        let az = vec![("allowzero", Attr::Int(1))];
        assert_eq!(shape_of(OpKind::Reshape, az.clone(), &[0, 3], Some(&[3, 0])).unwrap(), vec![3, 0]);
        assert!(shape_of(OpKind::Reshape, az, &[2, 3], Some(&[0, 6])).is_err());
    }

    #[test]
    fn reshape_needs_a_known_target() {
        let o = build(&node(OpKind::Reshape, 2, 1, vec![])).unwrap();
        let x = iota(&[4]);
        assert!(o.infer(&[act(&x), unknown(&[1])]).is_err());
        assert!(o.infer(&[act(&x), None]).is_err());
    }

    #[test]
    fn flatten_axes() {
        let f = |axis| shape_of(OpKind::Flatten, vec![("axis", Attr::Int(axis))], &[2, 3, 4], None);
        assert_eq!(f(1).unwrap(), vec![2, 12]);
        assert_eq!(f(0).unwrap(), vec![1, 24]);
        assert_eq!(f(3).unwrap(), vec![24, 1]);
        assert_eq!(f(-1).unwrap(), vec![6, 4]);
        assert!(f(4).is_err());
        assert!(f(-4).is_err());
    }

    #[test]
    fn squeeze_and_unsqueeze() {
        let sq = |a: Option<&[i64]>, x: &[usize]| shape_of(OpKind::Squeeze, vec![], x, a);
        assert_eq!(sq(None, &[1, 3, 1, 2]).unwrap(), vec![3, 2]);
        assert_eq!(sq(Some(&[-2]), &[1, 3, 1, 2]).unwrap(), vec![1, 3, 2]);
        assert!(sq(Some(&[1]), &[1, 3, 1, 2]).is_err(), "extent 3");
        let attr = vec![("axes", attr_ints(&[0]))];
        assert_eq!(shape_of(OpKind::Squeeze, attr, &[1, 5], None).unwrap(), vec![5]);

        let un = |a: &[i64], x: &[usize]| shape_of(OpKind::Unsqueeze, vec![], x, Some(a));
        assert_eq!(un(&[0, 3], &[2, 3]).unwrap(), vec![1, 2, 3, 1]);
        assert_eq!(un(&[-1], &[2, 3]).unwrap(), vec![2, 3, 1]);
        assert!(un(&[1], &[]).is_err(), "axis 1 is out of range for rank 1");
        assert!(un(&[0, 0], &[2]).is_err());
        let attr = vec![("axes", attr_ints(&[1]))];
        assert_eq!(shape_of(OpKind::Unsqueeze, attr, &[4], None).unwrap(), vec![4, 1]);
        assert!(shape_of(OpKind::Unsqueeze, vec![], &[4], None).is_err(), "no axes");
    }

    #[test]
    fn integer_shapes_at_plan_time() {
        let o = build(&node(OpKind::Unsqueeze, 2, 1, vec![])).unwrap();
        let (v, a) = (Tensor::from_i64(vec![], vec![7]), ints(&[0]));
        assert_eq!(eval(&*o, &[known(&v), known(&a)]).unwrap()[0], ints(&[7]));
        let o = build(&node(OpKind::Identity, 1, 1, vec![])).unwrap();
        assert_eq!(eval(&*o, &[known(&v)]).unwrap()[0], v);
        // An activation is deferred to run time.
        assert!(o.eval(&[unknown(&[3])]).unwrap().is_none());
    }
}
