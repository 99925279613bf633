//! A model graph run forward through the runtime's ops with every value kept, and backward
//! through [`super::grad`].

use pith_format::ir::{self, ElemType, TensorData, ValueId};
use pith_kernels::{Isa, Kernels};
use pith_runtime::ops::{self, Arg, ArgData, ExecCtx, Op};
use pith_runtime::Tensor;

use super::grad::{self, NodeArgs};
use super::FinetuneError;
use crate::work::concrete_shape;

/// A graph ready to run forward and backward; trainable constants are supplied per call.
pub(super) struct Net<'m> {
    model: &'m ir::Model,
    ops: Vec<Box<dyn Op>>,
    /// Non-trainable constants decoded to f32 / i64, by value id.
    consts: Vec<Option<Tensor>>,
    /// The parameter slot of each trainable value.
    slot: Vec<Option<usize>>,
    /// Whether a value depends on a trainable constant (its gradient is needed).
    needs_grad: Vec<bool>,
    /// The kernels of both passes, on the caller's thread (samples run in parallel).
    ctx: ExecCtx,
}

/// Every value of one forward pass, by value id.
pub(super) struct Trace {
    values: Vec<Option<Tensor>>,
}

impl<'m> Net<'m> {
    /// Builds every op of `model` to run on the kernel path `isa`; `trainable` lists the values
    /// passed as parameters (in slot order) instead of read from the model's constants.
    pub fn new(model: &'m ir::Model, trainable: &[ValueId], isa: Isa) -> Result<Net<'m>, FinetuneError> {
        let kernels = Kernels::with_isa(isa, 1)
            .map_err(|e| FinetuneError::Model(format!("cannot set up the {} kernels: {e}", isa.name)))?;
        let n_values = model.graph.values.len();
        let mut slot = vec![None; n_values];
        for (i, &v) in trainable.iter().enumerate() {
            slot[v as usize] = Some(i);
        }
        let mut consts: Vec<Option<Tensor>> = vec![None; n_values];
        for c in &model.constants {
            if slot[c.value as usize].is_none() {
                consts[c.value as usize] = Some(decode_constant(model, c)?);
            }
        }
        let ops = model
            .graph
            .nodes
            .iter()
            .map(|n| {
                ops::build(n).map_err(|e| FinetuneError::Unsupported {
                    node: n.name.clone(),
                    op: n.op.onnx_name().to_string(),
                    msg: e.0,
                })
            })
            .collect::<Result<_, _>>()?;
        let mut needs_grad: Vec<bool> = slot.iter().map(Option::is_some).collect();
        for node in &model.graph.nodes {
            if node.inputs.iter().flatten().any(|&v| needs_grad[v as usize]) {
                for &o in &node.outputs {
                    needs_grad[o as usize] = model.graph.values[o as usize].elem == ElemType::F32;
                }
            }
        }
        Ok(Net { model, ops, consts, slot, needs_grad, ctx: ExecCtx { kernels } })
    }

    /// The value `id` of a forward pass in progress.
    fn value<'a>(
        &'a self,
        id: ValueId,
        values: &'a [Option<Tensor>],
        params: &'a [Tensor],
    ) -> Option<&'a Tensor> {
        match self.slot[id as usize] {
            Some(s) => params.get(s),
            None => self.consts[id as usize].as_ref().or(values[id as usize].as_ref()),
        }
    }

    /// Runs sample `sample` (`inputs` by name) forward, keeping every value.
    pub fn forward(
        &self,
        sample: usize,
        inputs: &[(String, Tensor)],
        params: &[Tensor],
    ) -> Result<Trace, FinetuneError> {
        let g = &self.model.graph;
        let mut values: Vec<Option<Tensor>> = vec![None; g.values.len()];
        for &id in &g.inputs {
            let name = &g.values[id as usize].name;
            let t = inputs
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| FinetuneError::Model(format!("sample {sample} has no input '{name}'")))?;
            values[id as usize] = Some(t.1.clone());
        }
        for (node, op) in g.nodes.iter().zip(&self.ops) {
            let fail = |msg: String| FinetuneError::Forward { node: node.name.clone(), sample, msg };
            let outs = {
                let args: Vec<Option<Arg<'_>>> = node
                    .inputs
                    .iter()
                    .map(|v| {
                        v.map(|v| {
                            self.value(v, &values, params)
                                .map(known)
                                .ok_or_else(|| fail(format!("input value {v} is not computed")))
                        })
                        .transpose()
                    })
                    .collect::<Result<_, _>>()?;
                // f32 results on the chosen kernels; shape arithmetic (integer results) as
                // the planner evaluates it.
                let run = match ops::run_owned(op.as_ref(), &args, &self.ctx).map_err(|e| fail(e.0))? {
                    Some(outs) => Some(outs),
                    None => op.eval(&args).map_err(|e| fail(e.0))?,
                };
                run.ok_or_else(|| fail("the op could not run on known inputs".into()))?
            };
            if outs.len() != node.outputs.len() {
                return Err(fail(format!("{} outputs for {} declared", outs.len(), node.outputs.len())));
            }
            for (&id, t) in node.outputs.iter().zip(outs) {
                values[id as usize] = Some(t);
            }
        }
        Ok(Trace { values })
    }

    /// Runs sample `sample` forward and returns its graph outputs.
    pub fn run(
        &self,
        sample: usize,
        inputs: &[(String, Tensor)],
        params: &[Tensor],
    ) -> Result<Vec<Tensor>, FinetuneError> {
        let trace = self.forward(sample, inputs, params)?;
        self.model
            .graph
            .outputs
            .iter()
            .map(|&o| {
                self.value(o, &trace.values, params)
                    .cloned()
                    .ok_or_else(|| FinetuneError::Model(format!("output value {o} was not computed")))
            })
            .collect()
    }

    /// The f32 graph outputs of a forward pass, in graph order.
    pub fn outputs<'t>(&self, trace: &'t Trace) -> Vec<&'t [f32]> {
        self.model
            .graph
            .outputs
            .iter()
            .map(|&o| trace.values[o as usize].as_ref().and_then(Tensor::as_f32).unwrap_or(&[]))
            .collect()
    }

    /// Back-propagates `d_outputs` (one gradient per graph output, in graph order) through the
    /// pass `trace`; returns the gradient of every parameter slot (zeros where none reached it).
    pub fn backward(
        &self,
        sample: usize,
        trace: &Trace,
        params: &[Tensor],
        d_outputs: Vec<Vec<f32>>,
    ) -> Result<Vec<Vec<f32>>, FinetuneError> {
        let g = &self.model.graph;
        let mut grads: Vec<Option<Vec<f32>>> = vec![None; g.values.len()];
        for (&o, d) in g.outputs.iter().zip(d_outputs) {
            accumulate(&mut grads[o as usize], d);
        }
        for (node, op) in g.nodes.iter().zip(&self.ops).rev() {
            let d_out: Vec<Option<Vec<f32>>> =
                node.outputs.iter().map(|&o| grads[o as usize].take()).collect();
            let need: Vec<bool> =
                node.inputs.iter().map(|v| v.is_some_and(|v| self.needs_grad[v as usize])).collect();
            if d_out.iter().all(Option::is_none) || !need.iter().any(|&n| n) {
                continue;
            }
            let value = |v: ValueId| self.value(v, &trace.values, params);
            let args = NodeArgs {
                node,
                op: op.as_ref(),
                inputs: node.inputs.iter().map(|v| v.and_then(value)).collect(),
                outputs: node.outputs.iter().map(|&o| value(o)).collect(),
                d_out: d_out.iter().map(|d| d.as_deref()).collect(),
                need: need.clone(),
                isa: self.ctx.kernels.isa(),
            };
            let d_in = grad::backward(&args).map_err(|msg| {
                let op = node.op.onnx_name().to_string();
                FinetuneError::Unsupported { node: format!("{} (sample {sample})", node.name), op, msg }
            })?;
            for ((v, d), need) in node.inputs.iter().zip(d_in).zip(need) {
                if let (Some(v), Some(d), true) = (v, d, need) {
                    accumulate(&mut grads[*v as usize], d);
                }
            }
        }
        Ok(params
            .iter()
            .enumerate()
            .map(|(s, p)| {
                let id = self.slot.iter().position(|&x| x == Some(s));
                id.and_then(|id| grads[id].take()).unwrap_or_else(|| vec![0.0; p.numel()])
            })
            .collect())
    }
}

/// An argument holding a computed tensor.
fn known(t: &Tensor) -> Arg<'_> {
    Arg { shape: &t.shape, elem: t.elem(), data: Some(ArgData::Known(t)) }
}

/// Adds `d` into the gradient slot `acc`.
fn accumulate(acc: &mut Option<Vec<f32>>, d: Vec<f32>) {
    match acc {
        Some(a) => a.iter_mut().zip(d).for_each(|(a, d)| *a += d),
        None => *acc = Some(d),
    }
}

/// A constant decoded to an f32 or i64 tensor.
fn decode_constant(model: &ir::Model, c: &ir::Constant) -> Result<Tensor, FinetuneError> {
    let shape = model.graph.values[c.value as usize]
        .shape
        .as_deref()
        .and_then(concrete_shape)
        .ok_or_else(|| FinetuneError::Model(format!("constant {} has no fixed shape", c.value)))?;
    Ok(match &c.data {
        TensorData::I64(v) => Tensor::from_i64(shape, v.clone()),
        data => {
            let n: usize = shape.iter().product();
            let rows = shape.first().copied().unwrap_or(1).max(1);
            let mut out = vec![0.0f32; n];
            if n > 0 {
                let row_len = n / rows;
                for r in 0..rows {
                    data.view().decode_row(rows, r, &mut out[r * row_len..(r + 1) * row_len]);
                }
            }
            Tensor::from_f32(shape, out)
        }
    })
}
