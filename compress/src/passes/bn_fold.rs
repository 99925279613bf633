//! Folds `BatchNormalization` into the `Conv` feeding it. (Not into a `ConvTranspose`: see
//! `affine::folded`, the same per-output-channel scaling.)
//!
//! `BN(Conv(x, w, b))` with per-channel `s = gamma / sqrt(var + eps)` equals
//! `Conv(x, w * s, (b - mean) * s + beta)`, scaling each output-channel row of `w`.

use pith_format::ir::{Attr, OpKind, ValueId};
use pith_runtime::Tensor;

use crate::work::WorkModel;

/// Folds every foldable Conv → BatchNormalization pair; returns how many were folded.
///
/// A pair folds when the Conv output feeds only the BN (and is not a graph output), the BN has a
/// single output, and the weight, optional bias and all four BN parameters are f32 constants with
/// one entry per output channel. New constants are created, so weights shared with other nodes
/// are left intact.
pub(crate) fn fold_batch_norms(work: &mut WorkModel) -> usize {
    let mut doomed = Vec::new();
    let producers = work.producers();
    let consumers = work.consumers();
    for n in 0..work.graph.nodes.len() {
        let bn = &work.graph.nodes[n];
        if bn.op != OpKind::BatchNormalization || bn.outputs.len() != 1 || bn.inputs.len() != 5 {
            continue;
        }
        let Some(y) = bn.inputs[0] else { continue };
        let Some(c) = producers[y as usize] else { continue };
        if work.graph.nodes[c].op != OpKind::Conv
            || consumers[y as usize].len() != 1
            || work.is_output(y)
            || doomed.contains(&c)
        {
            continue;
        }
        let Some(fused) = fused_params(work, c, n) else {
            continue;
        };
        let conv_name = work.graph.nodes[c].name.clone();
        let w_name = format!("{}.bn_folded_weight", conv_name);
        let b_name = format!("{}.bn_folded_bias", conv_name);
        let w = work.add_const(&w_name, fused.0);
        let b = work.add_const(&b_name, fused.1);
        let z = work.graph.nodes[n].outputs[0];
        let conv = &mut work.graph.nodes[c];
        conv.inputs.truncate(1);
        conv.inputs.extend([Some(w), Some(b)]);
        conv.outputs = vec![z];
        doomed.push(n);
    }
    work.remove_nodes(&doomed);
    doomed.len()
}

/// The folded (weight, bias) for Conv node `c` and BN node `n`, when every parameter is usable.
fn fused_params(work: &WorkModel, c: usize, n: usize) -> Option<(Tensor, Tensor)> {
    let conv = &work.graph.nodes[c];
    let bn = &work.graph.nodes[n];
    let f32_const = |v: Option<&Option<ValueId>>| -> Option<&Tensor> {
        let t = work.consts.get(&(*v?)?)?;
        t.as_f32().map(|_| t)
    };
    let w = f32_const(conv.inputs.get(1))?;
    let channels = *w.shape.first()?;
    let per_channel = |t: &Tensor| t.numel() == channels;
    let bias = match conv.inputs.get(2) {
        Some(Some(_)) => Some(f32_const(conv.inputs.get(2)).filter(|t| per_channel(t))?),
        _ => None,
    };
    let params: Vec<&[f32]> = (1..5)
        .map(|i| f32_const(bn.inputs.get(i)).filter(|t| per_channel(t))?.as_f32())
        .collect::<Option<_>>()?;
    let eps = match bn.attr("epsilon") {
        Some(Attr::Float(e)) => *e as f64,
        None => 1e-5,
        Some(_) => return None,
    };
    let (gamma, beta, mean, var) = (params[0], params[1], params[2], params[3]);
    let scale: Vec<f64> = (0..channels).map(|o| gamma[o] as f64 / (var[o] as f64 + eps).sqrt()).collect();
    if scale.iter().any(|s| !s.is_finite()) {
        return None;
    }
    let w_data = w.as_f32()?;
    let row = w_data.len() / channels.max(1);
    let new_w: Vec<f32> =
        w_data.iter().enumerate().map(|(i, &v)| (v as f64 * scale[i / row]) as f32).collect();
    let new_b: Vec<f32> = (0..channels)
        .map(|o| {
            let b = bias.map_or(0.0, |t| t.as_f32().expect("checked f32")[o] as f64);
            ((b - mean[o] as f64) * scale[o] + beta[o] as f64) as f32
        })
        .collect();
    Some((Tensor::from_f32(w.shape.clone(), new_w), Tensor::from_f32(vec![channels], new_b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_util::*;

    #[test]
    fn folded_conv_matches_conv_then_bn() {
        let mut w = WorkModel::default();
        let x = input(&mut w, "x");
        let wd = vec![0.5, -1.0, 2.0, 0.25, -0.75, 1.5];
        let bd = vec![0.1, -0.2, 0.3];
        let (gamma, beta) = (vec![1.5, 0.5, -2.0], vec![0.0, 1.0, -1.0]);
        let (mean, var) = (vec![0.2, -0.1, 0.4], vec![0.9, 2.0, 0.01]);
        let wv = constant(&mut w, "w", &[3, 2, 1, 1], wd.clone());
        let bv = constant(&mut w, "b", &[3], bd.clone());
        let pv: Vec<_> = [&gamma, &beta, &mean, &var]
            .iter()
            .enumerate()
            .map(|(i, d)| Some(constant(&mut w, &format!("p{i}"), &[3], d.to_vec())))
            .collect();
        let y = act(&mut w, "y");
        let z = act(&mut w, "z");
        push(&mut w, "conv", OpKind::Conv, &[Some(x), Some(wv), Some(bv)], &[y]);
        let mut bn_inputs = vec![Some(y)];
        bn_inputs.extend(pv);
        push(&mut w, "bn", OpKind::BatchNormalization, &bn_inputs, &[z]);
        w.graph.nodes[1].attrs = vec![("epsilon".into(), Attr::Float(1e-3))];
        w.graph.outputs.push(z);

        assert_eq!(fold_batch_norms(&mut w), 1);
        assert_eq!(w.graph.nodes.len(), 1);
        let conv = &w.graph.nodes[0];
        assert_eq!(conv.outputs, vec![z]);
        let fw = w.consts[&conv.inputs[1].unwrap()].as_f32().unwrap().to_vec();
        let fb = w.consts[&conv.inputs[2].unwrap()].as_f32().unwrap().to_vec();
        // The original weight is untouched (it may be shared).
        assert_eq!(w.consts[&wv].as_f32().unwrap(), &wd[..]);

        for x in [[1.0f32, 2.0], [-0.5, 0.25], [3.0, -4.0]] {
            let y = conv1x1(&wd, &bd, &x);
            let fused = conv1x1(&fw, &fb, &x);
            for o in 0..3 {
                let bn = (y[o] - mean[o]) / (var[o] + 1e-3f32).sqrt() * gamma[o] + beta[o];
                assert!((bn - fused[o]).abs() < 1e-4, "{bn} vs {}", fused[o]);
            }
        }
    }

    #[test]
    fn conv_with_second_consumer_is_not_folded() {
        let mut w = WorkModel::default();
        let x = input(&mut w, "x");
        let wv = constant(&mut w, "w", &[1, 1, 1, 1], vec![2.0]);
        let p: Vec<_> = (0..4).map(|i| Some(constant(&mut w, &format!("p{i}"), &[1], vec![1.0]))).collect();
        let (y, z, r) = (act(&mut w, "y"), act(&mut w, "z"), act(&mut w, "r"));
        push(&mut w, "conv", OpKind::Conv, &[Some(x), Some(wv)], &[y]);
        let mut bn_inputs = vec![Some(y)];
        bn_inputs.extend(p);
        push(&mut w, "bn", OpKind::BatchNormalization, &bn_inputs, &[z]);
        push(&mut w, "relu", OpKind::Relu, &[Some(y)], &[r]);
        assert_eq!(fold_batch_norms(&mut w), 0);
        assert_eq!(w.graph.nodes.len(), 3);
    }
}
