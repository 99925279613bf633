//! Folds a constant per-channel (or scalar) `Mul` or `Add` on a convolution's output into the
//! convolution's weight and bias.
//!
//! PP-OCRv4's backbone follows most convolutions with a "learnable affine block", `y = s·x + t`
//! with scalar `s` and `t`, exported as `Mul` then `Add`: two full passes over the activation each
//! time. `Mul(Conv(x, w, b), s)` equals `Conv(x, w·s, b·s)` and `Add(Conv(x, w, b), t)` equals
//! `Conv(x, w, b + t)` when `s`, `t` are scalars or hold one value per output channel
//! (shape `[C, 1, 1]` or `[1, C, 1, 1]`), so both disappear before the weights are encoded.

use pith_format::ir::{OpKind, ValueId};
use pith_runtime::Tensor;

use crate::work::WorkModel;

/// Folds every foldable `Mul` / `Add` into the `Conv` (or single-group `ConvTranspose`) feeding
/// it; returns how many were folded.
///
/// Runs to a fixed point, so `Conv → Mul → Add` folds both. A node folds when the Conv output
/// feeds only it (and is not a graph output), its other operand is an f32 constant broadcasting
/// per output channel, and the conv's weight (rank 4) and optional bias are f32 constants. New
/// constants are created, so weights shared with other nodes are left intact.
pub(crate) fn fold_affine(work: &mut WorkModel) -> usize {
    to_fixed_point(work, fold_output_once)
}

/// Repeats `sweep` until it folds nothing; returns the total folded.
fn to_fixed_point(work: &mut WorkModel, sweep: fn(&mut WorkModel) -> usize) -> usize {
    let mut total = 0;
    loop {
        match sweep(work) {
            0 => return total,
            n => total += n,
        }
    }
}

/// `Some(true)` for `Mul`, `Some(false)` for `Add`: the two affine ops these passes fold.
fn affine_op(op: OpKind) -> Option<bool> {
    match op {
        OpKind::Mul => Some(true),
        OpKind::Add => Some(false),
        _ => None,
    }
}

/// Gives conv node `c` a new weight (when `w` is `Some`) and bias, as new constants named after
/// the conv (`tag` says which fold made them), so weights shared with other nodes stay intact.
fn set_conv_params(work: &mut WorkModel, c: usize, tag: &str, w: Option<Tensor>, bias: Tensor) {
    let name = work.graph.nodes[c].name.clone();
    let w = match w {
        Some(w) => Some(work.add_const(&format!("{name}.{tag}_weight"), w)),
        None => work.graph.nodes[c].inputs[1],
    };
    let bias = work.add_const(&format!("{name}.{tag}_bias"), bias);
    let conv = &mut work.graph.nodes[c];
    conv.inputs.truncate(1);
    conv.inputs.extend([w, Some(bias)]);
}

/// One sweep of [`fold_affine`]: folds each candidate node whose conv was not already rewritten
/// in this sweep.
fn fold_output_once(work: &mut WorkModel) -> usize {
    let producers = work.producers();
    let consumers = work.consumers();
    let mut doomed = Vec::new();
    let mut touched = Vec::new();
    for n in 0..work.graph.nodes.len() {
        let node = &work.graph.nodes[n];
        let Some(is_mul) = affine_op(node.op) else { continue };
        if node.outputs.len() != 1 || node.inputs.len() != 2 {
            continue;
        }
        let (Some(a), Some(b)) = (node.inputs[0], node.inputs[1]) else { continue };
        // The activation operand comes from a conv; the other is the constant.
        let Some((y, k, c)) = [(a, b), (b, a)].into_iter().find_map(|(y, k)| {
            let c = producers[y as usize]?;
            let op = work.graph.nodes[c].op;
            let conv = op == OpKind::Conv || op == OpKind::ConvTranspose;
            (conv && work.consts.contains_key(&k)).then_some((y, k, c))
        }) else {
            continue;
        };
        if consumers[y as usize].len() != 1 || work.is_output(y) || touched.contains(&c) {
            continue;
        }
        let Some((w, bias)) = folded(work, c, k, is_mul) else { continue };
        set_conv_params(work, c, "affine", w, bias);
        work.graph.nodes[c].outputs = vec![work.graph.nodes[n].outputs[0]];
        doomed.push(n);
        touched.push(c);
    }
    work.remove_nodes(&doomed);
    doomed.len()
}

/// Folds every constant per-channel `Mul` / `Add` whose result only feeds a pointwise convolution
/// (1×1 kernel, one group, no padding) into that convolution; returns how many were folded.
///
/// With `a` the activation: `Conv(a·s)` is `Conv` with `W[m][c]·s[c]`, and `Conv(a + t)` is
/// `Conv` with bias `b[m] + Σ_c W[m][c]·t[c]`. This is exact only without padding (a padded
/// border would see `t`, not 0), hence the pointwise restriction. Runs to a fixed point, so
/// `Mul → Add → Conv` folds both (PP-OCRv4 puts such an affine block after each HardSwish).
pub(crate) fn fold_affine_into_pointwise(work: &mut WorkModel) -> usize {
    to_fixed_point(work, fold_input_once)
}

/// One sweep of [`fold_affine_into_pointwise`].
fn fold_input_once(work: &mut WorkModel) -> usize {
    let consumers = work.consumers();
    let mut doomed = Vec::new();
    let mut touched = Vec::new();
    for n in 0..work.graph.nodes.len() {
        let node = &work.graph.nodes[n];
        let Some(is_mul) = affine_op(node.op) else { continue };
        let ([Some(a), Some(b)], [z]) = (&node.inputs[..], &node.outputs[..]) else { continue };
        let (a, b, z) = (*a, *b, *z);
        let Some((x, k)) = [(a, b), (b, a)]
            .into_iter()
            .find(|(x, k)| work.consts.contains_key(k) && !work.consts.contains_key(x))
        else {
            continue;
        };
        let [c] = consumers[z as usize][..] else { continue };
        let conv = &work.graph.nodes[c];
        if conv.op != OpKind::Conv
            || conv.inputs.first() != Some(&Some(z))
            || work.is_output(z)
            || touched.contains(&c)
            || !is_pointwise(conv)
        {
            continue;
        }
        let Some((w, bias)) = folded_into_input(work, c, k, is_mul) else { continue };
        set_conv_params(work, c, "input_affine", w, bias);
        work.graph.nodes[c].inputs[0] = Some(x);
        doomed.push(n);
        touched.push(c);
    }
    work.remove_nodes(&doomed);
    doomed.len()
}

/// A 1×1, single-group, unpadded `Conv` (any stride): a per-input-channel affine map of its
/// input commutes into its weight and bias exactly.
fn is_pointwise(conv: &pith_format::ir::Node) -> bool {
    use pith_format::ir::Attr;
    let ints = |name: &str| match conv.attr(name) {
        Some(Attr::Ints(v)) => Some(v.clone()),
        _ => None,
    };
    let no_pads = ints("pads").is_none_or(|p| p.iter().all(|&x| x == 0));
    let auto_pad = match conv.attr("auto_pad") {
        None => true,
        Some(Attr::Str(s)) => s == "NOTSET" || s == "VALID",
        Some(_) => false,
    };
    group_one(conv) && no_pads && auto_pad
}

/// The node has one group (no `group` attribute, or 1).
fn group_one(conv: &pith_format::ir::Node) -> bool {
    match conv.attr("group") {
        None => true,
        Some(pith_format::ir::Attr::Int(g)) => *g == 1,
        Some(_) => false,
    }
}

/// For pointwise conv node `c` whose input is `a (op) k`: the new weight (only for `Mul`) and
/// bias, or `None` when something is not foldable.
fn folded_into_input(
    work: &WorkModel,
    c: usize,
    k: ValueId,
    is_mul: bool,
) -> Option<(Option<Tensor>, Tensor)> {
    let conv = &work.graph.nodes[c];
    let f32_const = |v: Option<ValueId>| work.consts.get(&v?).filter(|t| t.as_f32().is_some());
    let w = f32_const(conv.inputs.get(1).copied().flatten())?;
    if w.shape.len() != 4 || w.shape[2] != 1 || w.shape[3] != 1 {
        return None;
    }
    let (m, cin) = (w.shape[0], w.shape[1]);
    let factor = per_channel(f32_const(Some(k))?, cin)?;
    let old_bias = conv_bias(work, conv, m)?;
    let data = w.as_f32()?;
    if is_mul {
        let new_w: Vec<f32> = data.iter().enumerate().map(|(i, &v)| v * factor[i % cin]).collect();
        Some((Some(Tensor::from_f32(w.shape.clone(), new_w)), Tensor::from_f32(vec![m], old_bias)))
    } else {
        let new_b: Vec<f32> = (0..m)
            .map(|o| {
                let row = &data[o * cin..(o + 1) * cin];
                let shift: f64 = row.iter().zip(&factor).map(|(&wv, &t)| wv as f64 * t as f64).sum();
                (old_bias[o] as f64 + shift) as f32
            })
            .collect();
        Some((None, Tensor::from_f32(vec![m], new_b)))
    }
}

/// For conv node `c` and constant `k`: the new weight (only for `Mul`) and bias, or `None` when
/// something is not foldable.
fn folded(work: &WorkModel, c: usize, k: ValueId, is_mul: bool) -> Option<(Option<Tensor>, Tensor)> {
    let conv = &work.graph.nodes[c];
    let f32_const = |v: Option<ValueId>| work.consts.get(&v?).filter(|t| t.as_f32().is_some());
    let w = f32_const(conv.inputs.get(1).copied().flatten())?;
    if w.shape.len() != 4 {
        return None;
    }
    // A ConvTranspose only takes the bias (Add): its codebook rows run along input channels, so
    // scaling its output channels (Mul) would give each row values of different scales. Folding
    // PP-OCRv4's head BatchNorm that way cost a held-out text box at 4 bits.
    if conv.op == OpKind::ConvTranspose && is_mul {
        return None;
    }
    // Output channels: a Conv weight's axis 0, a single-group ConvTranspose's axis 1.
    let channels = match conv.op {
        OpKind::ConvTranspose if group_one(conv) => w.shape[1],
        OpKind::ConvTranspose => return None,
        _ => w.shape[0],
    };
    let factor = per_channel(f32_const(Some(k))?, channels)?;
    let old_bias = conv_bias(work, conv, channels)?;
    if is_mul {
        let data = w.as_f32()?;
        let row = data.len() / channels.max(1);
        let new_w: Vec<f32> = data.iter().enumerate().map(|(i, &v)| v * factor[i / row]).collect();
        let new_b: Vec<f32> = old_bias.iter().zip(&factor).map(|(b, s)| b * s).collect();
        Some((Some(Tensor::from_f32(w.shape.clone(), new_w)), Tensor::from_f32(vec![channels], new_b)))
    } else {
        let new_b: Vec<f32> = old_bias.iter().zip(&factor).map(|(b, t)| b + t).collect();
        Some((None, Tensor::from_f32(vec![channels], new_b)))
    }
}

/// The bias of conv node `conv` as `channels` values (zeros without one); `None` when it is not an
/// f32 constant of that length.
fn conv_bias(work: &WorkModel, conv: &pith_format::ir::Node, channels: usize) -> Option<Vec<f32>> {
    match conv.inputs.get(2).copied().flatten() {
        Some(b) => {
            let b = work.consts.get(&b)?.as_f32()?;
            (b.len() == channels).then(|| b.to_vec())
        }
        None => Some(vec![0.0; channels]),
    }
}

/// The constant `t` as one finite value per channel, if it broadcasts over an NCHW conv output
/// per channel: a scalar (any shape of one element) or shape `[C, 1, 1]` / `[1, C, 1, 1]`.
fn per_channel(t: &Tensor, channels: usize) -> Option<Vec<f32>> {
    let v = t.as_f32()?;
    if v.iter().any(|x| !x.is_finite()) {
        return None;
    }
    if v.len() == 1 {
        return Some(vec![v[0]; channels]);
    }
    let s = &t.shape;
    let per_c = s.len() >= 3
        && s.len() <= 4
        && s[s.len() - 3] == channels
        && s[s.len() - 2..] == [1, 1]
        && s[..s.len() - 3].iter().all(|&d| d == 1);
    per_c.then(|| v.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_util::*;

    fn conv_value(w: &WorkModel, c: usize, input: usize) -> Vec<f32> {
        w.consts[&w.graph.nodes[c].inputs[input].unwrap()].as_f32().unwrap().to_vec()
    }

    #[test]
    fn mul_then_add_fold_into_the_conv() {
        let mut w = WorkModel::default();
        let x = input(&mut w, "x");
        let (wd, bd) = (vec![0.5, -1.0, 2.0, 0.25, -0.75, 1.5], vec![0.1, -0.2, 0.3]);
        let wv = constant(&mut w, "w", &[3, 2, 1, 1], wd.clone());
        let bv = constant(&mut w, "b", &[3], bd.clone());
        let s = constant(&mut w, "s", &[1], vec![1.5]);
        let t = constant(&mut w, "t", &[1, 3, 1, 1], vec![0.5, -1.0, 2.0]);
        let (y, m, z) = (act(&mut w, "y"), act(&mut w, "m"), act(&mut w, "z"));
        push(&mut w, "conv", OpKind::Conv, &[Some(x), Some(wv), Some(bv)], &[y]);
        push(&mut w, "mul", OpKind::Mul, &[Some(s), Some(y)], &[m]);
        push(&mut w, "add", OpKind::Add, &[Some(m), Some(t)], &[z]);
        w.graph.outputs = vec![z];
        assert_eq!(fold_affine(&mut w), 2);
        assert_eq!(w.graph.nodes.len(), 1);
        assert_eq!(w.graph.nodes[0].outputs, vec![z]);
        let px = [0.7f32, -1.3];
        let want: Vec<f32> =
            conv1x1(&wd, &bd, &px).iter().zip([0.5, -1.0, 2.0]).map(|(v, t)| v * 1.5 + t).collect();
        let got = conv1x1(&conv_value(&w, 0, 1), &conv_value(&w, 0, 2), &px);
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        // The original weight is untouched (it may be shared).
        assert_eq!(w.consts[&wv].as_f32().unwrap(), &wd[..]);
    }

    #[test]
    fn only_an_add_folds_into_a_single_group_conv_transpose() {
        // ConvTranspose weight [in 2, out 3, 1, 1]: output channel is axis 1.
        let build = |group: Option<i64>, op: OpKind| {
            let mut w = WorkModel::default();
            let x = input(&mut w, "x");
            let wd = vec![0.5, -1.0, 2.0, 0.25, -0.75, 1.5];
            let wv = constant(&mut w, "w", &[2, 3, 1, 1], wd);
            let t = constant(&mut w, "t", &[1, 3, 1, 1], vec![2.0, -1.0, 0.5]);
            let (y, z) = (act(&mut w, "y"), act(&mut w, "z"));
            push(&mut w, "deconv", OpKind::ConvTranspose, &[Some(x), Some(wv)], &[y]);
            if let Some(g) = group {
                w.graph.nodes[0].attrs.push(("group".into(), pith_format::ir::Attr::Int(g)));
            }
            push(&mut w, "affine", op, &[Some(y), Some(t)], &[z]);
            w.graph.outputs = vec![z];
            w
        };
        let mut w = build(None, OpKind::Add);
        assert_eq!(fold_affine(&mut w), 1);
        assert_eq!(conv_value(&w, 0, 2), vec![2.0, -1.0, 0.5]);
        assert_eq!(conv_value(&w, 0, 1), vec![0.5, -1.0, 2.0, 0.25, -0.75, 1.5], "weights untouched");
        assert_eq!(fold_affine(&mut build(None, OpKind::Mul)), 0, "a scale would mix codebook rows");
        assert_eq!(fold_affine(&mut build(Some(2), OpKind::Add)), 0, "grouped ConvTranspose");
    }

    #[test]
    fn an_affine_map_folds_into_the_pointwise_conv_it_feeds() {
        let mut w = WorkModel::default();
        let a = input(&mut w, "a");
        let wd = vec![0.5, -1.0, 2.0, 0.25, -0.75, 1.5];
        let wv = constant(&mut w, "w", &[3, 2, 1, 1], wd.clone());
        let bv = constant(&mut w, "b", &[3], vec![0.1, -0.2, 0.3]);
        let s = constant(&mut w, "s", &[2, 1, 1], vec![1.5, -0.5]);
        let t = constant(&mut w, "t", &[1], vec![0.25]);
        let (m, u, y) = (act(&mut w, "m"), act(&mut w, "u"), act(&mut w, "y"));
        push(&mut w, "mul", OpKind::Mul, &[Some(a), Some(s)], &[m]);
        push(&mut w, "add", OpKind::Add, &[Some(t), Some(m)], &[u]);
        push(&mut w, "conv", OpKind::Conv, &[Some(u), Some(wv), Some(bv)], &[y]);
        w.graph.outputs = vec![y];
        assert_eq!(fold_affine_into_pointwise(&mut w), 2);
        assert_eq!(w.graph.nodes.len(), 1);
        assert_eq!(w.graph.nodes[0].inputs[0], Some(a));
        let px = [0.7f32, -1.3];
        let shifted = [0.7 * 1.5 + 0.25, -1.3 * -0.5 + 0.25];
        let want = conv1x1(&wd, &[0.1, -0.2, 0.3], &shifted);
        let got = conv1x1(&conv_value(&w, 0, 1), &conv_value(&w, 0, 2), &px);
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn an_affine_map_stays_before_a_padded_or_grouped_conv() {
        for attrs in [
            vec![("pads".to_string(), pith_format::ir::Attr::Ints(vec![1, 1, 1, 1]))],
            vec![("group".to_string(), pith_format::ir::Attr::Int(2))],
        ] {
            let mut w = WorkModel::default();
            let a = input(&mut w, "a");
            let wv = constant(&mut w, "w", &[2, 1, 1, 1], vec![1.0, 2.0]);
            let t = constant(&mut w, "t", &[1], vec![0.25]);
            let (u, y) = (act(&mut w, "u"), act(&mut w, "y"));
            push(&mut w, "add", OpKind::Add, &[Some(a), Some(t)], &[u]);
            push(&mut w, "conv", OpKind::Conv, &[Some(u), Some(wv)], &[y]);
            w.graph.nodes[1].attrs = attrs;
            w.graph.outputs = vec![y];
            assert_eq!(fold_affine_into_pointwise(&mut w), 0);
        }
    }

    #[test]
    fn leaves_non_per_channel_or_shared_outputs_alone() {
        let mut w = WorkModel::default();
        let x = input(&mut w, "x");
        let wv = constant(&mut w, "w", &[2, 1, 1, 1], vec![1.0, 2.0]);
        // Shape [2] broadcasts along W, not channels.
        let along_w = constant(&mut w, "k", &[2], vec![3.0, 4.0]);
        let s = constant(&mut w, "s", &[1], vec![2.0]);
        let (y, m, y2, m2, r) =
            (act(&mut w, "y"), act(&mut w, "m"), act(&mut w, "y2"), act(&mut w, "m2"), act(&mut w, "r"));
        push(&mut w, "conv", OpKind::Conv, &[Some(x), Some(wv)], &[y]);
        push(&mut w, "mul", OpKind::Mul, &[Some(y), Some(along_w)], &[m]);
        push(&mut w, "conv2", OpKind::Conv, &[Some(x), Some(wv)], &[y2]);
        push(&mut w, "mul2", OpKind::Mul, &[Some(y2), Some(s)], &[m2]);
        push(&mut w, "relu", OpKind::Relu, &[Some(y2)], &[r]); // y2 has a second reader
        w.graph.outputs = vec![m, m2, r];
        assert_eq!(fold_affine(&mut w), 0);
        assert_eq!(w.graph.nodes.len(), 5);
    }
}
