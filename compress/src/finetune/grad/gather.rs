//! The backward rule of every op whose outputs copy input elements (or constants): reshape,
//! transpose, concat, split, slice, pad, gather, nearest resize, ...
//!
//! The runtime runs the op twice on probes whose elements are their own (1-based) positions,
//! once positive and once negated. An output element that copies input element `i` reads
//! `i + 1` and `-(i + 1)`; a constant (padding) reads the same value twice. Anything else (an
//! interpolation) is refused, so the rule never silently mis-routes a gradient.

use pith_runtime::ops::{Arg, ArgData};
use pith_runtime::Tensor;

use super::{Grads, NodeArgs};

/// Largest probe position an f32 holds exactly.
const MAX_PROBE: usize = 1 << 24;

/// Gradients of the inputs listed in `data` (the others are shapes, indices or parameters).
pub(super) fn gather(a: &NodeArgs<'_>, data: &[usize]) -> Result<Grads, String> {
    let probed: Vec<usize> = data.iter().copied().filter(|&s| a.needs(s)).collect();
    let mut offset = vec![0usize; a.inputs.len()];
    let mut total = 0usize;
    for &s in &probed {
        let t = a.input(s)?;
        if t.as_f32().is_none() {
            return Err(format!("input {s} is not f32"));
        }
        offset[s] = total;
        total += t.numel();
    }
    if total >= MAX_PROBE {
        return Err(format!("{total} input elements are too many to trace (at most {MAX_PROBE})"));
    }
    let probe = |sign: f32| -> Result<Vec<Tensor>, String> {
        let tensors: Vec<Option<Tensor>> = (0..a.inputs.len())
            .map(|s| {
                probed.contains(&s).then(|| {
                    let t = a.inputs[s].expect("probed inputs are present");
                    let v = (0..t.numel()).map(|i| sign * (offset[s] + i + 1) as f32).collect();
                    Tensor::from_f32(t.shape.clone(), v)
                })
            })
            .collect();
        let args: Vec<Option<Arg<'_>>> = a
            .inputs
            .iter()
            .zip(&tensors)
            .map(|(orig, probe)| {
                probe.as_ref().or(*orig).map(|t| Arg {
                    shape: &t.shape,
                    elem: t.elem(),
                    data: Some(ArgData::Known(t)),
                })
            })
            .collect();
        a.op.eval(&args).map_err(|e| e.0)?.ok_or_else(|| "the op could not run on the probes".to_string())
    };
    let (pos, neg) = (probe(1.0)?, probe(-1.0)?);
    let mut grads: Vec<Vec<f32>> =
        probed.iter().map(|&s| vec![0.0; a.inputs[s].map_or(0, Tensor::numel)]).collect();
    for (o, d) in a.d_out.iter().enumerate() {
        let Some(d) = d else { continue };
        let (Some(p), Some(n)) = (pos.get(o).and_then(Tensor::as_f32), neg.get(o).and_then(Tensor::as_f32))
        else {
            return Err(format!("output {o} is not f32"));
        };
        for ((&p, &n), &g) in p.iter().zip(n).zip(d.iter()) {
            if p > 0.0 && n == -p && p.fract() == 0.0 {
                let i = p as usize - 1;
                // The probed input holding global position i (offsets ascend with slots).
                let k = probed.iter().rposition(|&s| offset[s] <= i).ok_or("probe position out of range")?;
                grads[k][i - offset[probed[k]]] += g;
            } else if p != n {
                return Err("the op mixes input elements (not a pure copy); no backward rule".into());
            }
        }
    }
    let mut out: Grads = vec![None; a.inputs.len()];
    for (k, s) in probed.into_iter().enumerate() {
        out[s] = Some(std::mem::take(&mut grads[k]));
    }
    Ok(out)
}
