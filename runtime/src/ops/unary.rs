//! Element-wise unary ops: `Sqrt`, `Relu`, `LeakyRelu`, `Clip`, `Sigmoid`, `HardSigmoid`,
//! `HardSwish`, `Tanh`. The activations share their definitions with the kernels' fused epilogues.

use pith_format::ir::{ElemType, Node, OpKind};
use pith_kernels::Activation;

use pith_format::TensorView;

use super::binary::PARALLEL_MIN_ELEMENTS;
use super::{attrs, Arg, ExecCtx, Op, OpResult, Out};
use crate::op_bail;
use crate::plan::ConstantFn;

/// The function a unary op applies.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Sqrt,
    Tanh,
    /// `Clip` with bounds from inputs 1 and 2 (opset 11+), falling back to these attribute bounds.
    Clip {
        min: f32,
        max: f32,
    },
    /// An activation the kernels can also fuse.
    Act(Activation),
}

/// An element-wise unary op.
#[derive(Debug)]
struct Unary {
    func: Func,
}

/// Builds the op for a unary node.
pub fn build(node: &Node) -> OpResult<Box<dyn Op>> {
    Ok(Box::new(Unary { func: build_func(node)? }))
}

/// The function of a unary node.
fn build_func(node: &Node) -> OpResult<Func> {
    Ok(match node.op {
        OpKind::Sqrt => Func::Sqrt,
        OpKind::Tanh => Func::Tanh,
        OpKind::Relu => Func::Act(Activation::Relu),
        OpKind::LeakyRelu => Func::Act(Activation::LeakyRelu(attrs::float(node, "alpha", 0.01)?)),
        OpKind::Sigmoid => Func::Act(Activation::Sigmoid),
        OpKind::HardSigmoid => Func::Act(Activation::HardSigmoid {
            alpha: attrs::float(node, "alpha", 0.2)?,
            beta: attrs::float(node, "beta", 0.5)?,
        }),
        OpKind::HardSwish => Func::Act(Activation::HardSwish),
        OpKind::Clip => Func::Clip {
            min: attrs::float(node, "min", f32::NEG_INFINITY)?,
            max: attrs::float(node, "max", f32::INFINITY)?,
        },
        other => op_bail!("{} is not a unary op", other.onnx_name()),
    })
}

/// The activation a conv's epilogue may apply instead of running `node`, when `node` is a unary
/// activation the kernels implement and (for `Clip`) its bounds are constant scalars.
pub fn fusable_activation(node: &Node, constant: &ConstantFn<'_>) -> Option<Activation> {
    let Ok(op) = build_func(node) else { return None };
    match op {
        Func::Act(a) => Some(a),
        Func::Clip { min, max } => {
            let bound = |i: usize, default: f32| -> Option<f32> {
                match node.inputs.get(i) {
                    Some(Some(id)) => match constant(*id)? {
                        TensorView::F32([x]) => Some(*x),
                        _ => None,
                    },
                    _ => Some(default),
                }
            };
            Some(Activation::Clip { min: bound(1, min)?, max: bound(2, max)? })
        }
        Func::Sqrt | Func::Tanh => None,
    }
}

/// Clip bound from optional input `i` (a scalar), or `default`.
fn bound(inputs: &[Option<Arg<'_>>], i: usize, default: f32) -> OpResult<f32> {
    match inputs.get(i) {
        Some(Some(a)) => {
            let v = a.f32s()?;
            match v.as_ref() {
                [x] => Ok(*x),
                _ => op_bail!("Clip bound (input {i}) must be a scalar, has {} values", v.len()),
            }
        }
        _ => Ok(default),
    }
}

impl Op for Unary {
    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        let Some(Some(x)) = inputs.first() else {
            op_bail!("missing input");
        };
        if x.elem != ElemType::F32 {
            op_bail!("expects a float input");
        }
        Ok(vec![(ElemType::F32, x.shape.to_vec())])
    }

    fn run(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        _scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        let Some(Some(x)) = inputs.first() else {
            op_bail!("missing input");
        };
        let x = x.f32s()?;
        let y = &mut *outputs[0].data;
        let act = match self.func {
            Func::Sqrt => {
                map(&x, y, ctx, f32::sqrt);
                return Ok(());
            }
            Func::Tanh => {
                map(&x, y, ctx, f32::tanh);
                return Ok(());
            }
            Func::Clip { min, max } => {
                Activation::Clip { min: bound(inputs, 1, min)?, max: bound(inputs, 2, max)? }
            }
            Func::Act(a) => a,
        };
        ctx.kernels.for_each_part(y, PARALLEL_MIN_ELEMENTS, |start, part| {
            part.copy_from_slice(&x[start..start + part.len()]);
            ctx.kernels.activate(act, part);
        });
        Ok(())
    }
}

/// `y = f(x)` element by element, split over the session's threads when large.
fn map(x: &[f32], y: &mut [f32], ctx: &ExecCtx, f: impl Fn(f32) -> f32 + Sync) {
    ctx.kernels.for_each_part(y, PARALLEL_MIN_ELEMENTS, |start, part| {
        for (o, &v) in part.iter_mut().zip(&x[start..]) {
            *o = f(v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::testing::{act, node, run, values};
    use pith_format::ir::Attr;

    /// Operator, attributes, and the formula it must match.
    type Case = (OpKind, Vec<(&'static str, Attr)>, fn(f32) -> f32);

    #[test]
    fn each_op_matches_its_formula() {
        let x: Vec<f32> = values(1, 37).iter().map(|v| v * 8.0).collect();
        let shape = [37];
        let cases: Vec<Case> = vec![
            (OpKind::Sqrt, vec![], |v| v.sqrt()),
            (OpKind::Tanh, vec![], |v| v.tanh()),
            (OpKind::Relu, vec![], |v| if v > 0.0 { v } else { 0.0 }),
            (OpKind::LeakyRelu, vec![], |v| if v < 0.0 { 0.01 * v } else { v }),
            (OpKind::LeakyRelu, vec![("alpha", Attr::Float(0.5))], |v| if v < 0.0 { 0.5 * v } else { v }),
            (OpKind::Sigmoid, vec![], |v| 1.0 / (1.0 + (-v).exp())),
            (OpKind::HardSigmoid, vec![], |v| (0.2 * v + 0.5).clamp(0.0, 1.0)),
            (
                OpKind::HardSigmoid,
                vec![("alpha", Attr::Float(1.0 / 6.0)), ("beta", Attr::Float(0.25))],
                |v| (v / 6.0 + 0.25).clamp(0.0, 1.0),
            ),
            (OpKind::HardSwish, vec![], |v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0),
            (OpKind::Clip, vec![("min", Attr::Float(-1.0)), ("max", Attr::Float(2.0))], |v| {
                v.clamp(-1.0, 2.0)
            }),
            (OpKind::Clip, vec![], |v| v),
        ];
        for (kind, attrs, f) in cases {
            let op = build(&node(kind, 1, attrs)).unwrap();
            let got = run(&*op, &[act(&shape, &x)]).unwrap();
            for (i, (&g, &v)) in got[0].1.iter().zip(&x).enumerate() {
                let w = f(v);
                assert!(
                    (g - w).abs() <= 1e-6 * (1.0 + w.abs()) || (g.is_nan() && w.is_nan()),
                    "{kind:?} x[{i}]={v}: got {g}, want {w}"
                );
            }
        }
    }

    #[test]
    fn clip_bounds_from_inputs_override_and_may_be_omitted() {
        let x = [-3.0f32, -0.5, 0.5, 3.0];
        let op = build(&node(OpKind::Clip, 3, vec![])).unwrap();
        let got = run(&*op, &[act(&[4], &x), act(&[], &[0.0]), act(&[], &[1.0])]).unwrap();
        assert_eq!(got[0].1, vec![0.0, 0.0, 0.5, 1.0]);
        let got = run(&*op, &[act(&[4], &x), None, act(&[], &[1.0])]).unwrap();
        assert_eq!(got[0].1, vec![-3.0, -0.5, 0.5, 1.0]);
        assert!(run(&*op, &[act(&[4], &x), act(&[2], &[0.0, 1.0]), None]).is_err());
    }
}
