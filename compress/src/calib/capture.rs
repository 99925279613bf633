//! Captures the input activation of every weight layer on the calibration samples and
//! accumulates it into a [`RowGram`]: the layers' inputs are added as extra graph outputs of the
//! f32 model, which then runs each sample once.
//!
//! Covered layouts: `Conv` with a 4-D weight (patches cut with the node's geometry) and `Gemm`
//! with `transA = 0`, `transB = 1` (rows of the activation). Other layers get no Gram matrix.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use pith_format::ir::{self, Attr, Node, OpKind, ValueId};
use pith_runtime::{Session, Tensor};
use rayon::prelude::*;

use super::fidelity::{run, Runner};
use super::layers::LayerInfo;
use super::{CalibError, CalibSample, Progress};
use crate::gram::{ConvGeometry, RowGram};

/// How a node's input activation feeds a layer's Gram matrix.
#[derive(Debug, Clone)]
struct Use {
    /// The activation value (node input 0).
    input: ValueId,
    /// The node, for its Conv attributes; `None` for Gemm rows.
    conv: Option<Node>,
}

/// The layout of every layer's input: per layer, `(groups, row_len)` of its statistics (`None`
/// when no use of the weight has a supported layout) and the uses that feed them.
#[allow(clippy::type_complexity)]
fn layer_uses(base: &ir::Model, infos: &[LayerInfo]) -> (Vec<Option<(usize, usize)>>, Vec<Vec<Use>>) {
    let g = &base.graph;
    let id_of = value_ids(base);
    let mut uses: Vec<Vec<Use>> = vec![Vec::new(); infos.len()];
    let mut layouts: Vec<Option<(usize, usize)>> = vec![None; infos.len()];
    for (l, info) in infos.iter().enumerate() {
        let Some(&wid) = id_of.get(info.name.as_str()) else { continue };
        for node in &g.nodes {
            let (Some(Some(x)), Some(Some(w))) = (node.inputs.first(), node.inputs.get(1)) else { continue };
            if *w != wid {
                continue;
            }
            let (groups, row_len, conv) = match node.op {
                OpKind::Conv if info.shape.len() == 4 => {
                    let group = int_attr(node, "group", 1).max(1) as usize;
                    (group, info.shape[1..].iter().product(), Some(node.clone()))
                }
                OpKind::Gemm
                    if info.shape.len() == 2
                        && int_attr(node, "transB", 0) == 1
                        && int_attr(node, "transA", 0) == 0 =>
                {
                    (1, info.shape[1], None)
                }
                _ => continue,
            };
            if *layouts[l].get_or_insert((groups, row_len)) != (groups, row_len) {
                continue;
            }
            uses[l].push(Use { input: *x, conv });
        }
    }
    (layouts, uses)
}

/// Value ids by name.
fn value_ids(model: &ir::Model) -> BTreeMap<&str, ValueId> {
    model.graph.values.iter().enumerate().map(|(i, v)| (v.name.as_str(), i as ValueId)).collect()
}

/// A session of `model` that also outputs the activations `uses` read.
fn session_with_inputs<'u>(
    runner: Runner,
    model: &ir::Model,
    uses: impl Iterator<Item = &'u Use>,
) -> Result<Session, CalibError> {
    let mut model = model.clone();
    for u in uses {
        if !model.graph.inputs.contains(&u.input) && !model.graph.outputs.contains(&u.input) {
            model.graph.outputs.push(u.input);
        }
    }
    runner.session(&model)
}

/// Runs sample `i` and returns every activation it yields (graph inputs and outputs) by id.
fn activations(
    session: &mut Session,
    model: &ir::Model,
    samples: &[CalibSample],
    i: usize,
) -> Result<BTreeMap<ValueId, Tensor>, CalibError> {
    let id_of = value_ids(model);
    let outputs = run(session, samples, i)?;
    let named = outputs.into_iter().chain(samples[i].inputs.iter().cloned());
    Ok(named.filter_map(|(name, t)| id_of.get(name.as_str()).map(|&id| (id, t))).collect())
}

/// One Gram accumulator per layer (`None` when no use of the weight has a supported layout).
pub(crate) fn grams(
    runner: Runner,
    base: &ir::Model,
    infos: &[LayerInfo],
    samples: &[CalibSample],
    max_patches: usize,
    progress: Progress<'_>,
) -> Result<Vec<Option<RowGram>>, CalibError> {
    let (layouts, uses) = layer_uses(base, infos);
    let mut accs: Vec<Option<RowGram>> =
        layouts.iter().map(|l| l.map(|(groups, row_len)| RowGram::new(groups, row_len))).collect();
    let mut session = session_with_inputs(runner, base, uses.iter().flatten())?;
    let done = AtomicUsize::new(0);
    progress("capture", 0, samples.len());
    for i in 0..samples.len() {
        let acts = activations(&mut session, base, samples, i)?;
        accs.par_iter_mut().zip(&uses).for_each(|(acc, uses)| {
            let Some(acc) = acc else { return };
            for u in uses {
                let Some(data) = acts.get(&u.input).and_then(Tensor::as_f32) else { continue };
                let shape = &acts[&u.input].shape;
                match &u.conv {
                    Some(node) => {
                        if let Some(geom) = conv_geometry(node, acc.groups, acc.row_len, shape) {
                            acc.add_conv_input(data, shape, &geom, max_patches);
                        }
                    }
                    None => {
                        if shape.last() == Some(&acc.row_len) {
                            acc.add_rows(data, max_patches);
                        }
                    }
                }
            }
        });
        progress("capture", done.fetch_add(1, Ordering::Relaxed) + 1, samples.len());
    }
    Ok(accs)
}

/// An integer attribute, or `default`.
fn int_attr(node: &Node, name: &str, default: i64) -> i64 {
    match node.attr(name) {
        Some(Attr::Int(v)) => *v,
        _ => default,
    }
}

/// A list-of-integers attribute of exactly `n` non-negative values.
fn ints_attr(node: &Node, name: &str, n: usize) -> Option<Vec<usize>> {
    match node.attr(name) {
        Some(Attr::Ints(v)) if v.len() == n && v.iter().all(|&x| x >= 0) => {
            Some(v.iter().map(|&x| x as usize).collect())
        }
        _ => None,
    }
}

/// The geometry of a 2-D Conv node on an NCHW input of shape `x_shape`; `None` when the
/// attributes do not describe a 2-D convolution matching the accumulator.
fn conv_geometry(node: &Node, groups: usize, row_len: usize, x_shape: &[usize]) -> Option<ConvGeometry> {
    let [_, c, h, w] = x_shape[..] else { return None };
    let group = int_attr(node, "group", 1).max(1) as usize;
    if c % group != 0 {
        return None;
    }
    let per_group = c / group;
    let kernel_area = row_len.checked_div(per_group)?;
    let kernel = match ints_attr(node, "kernel_shape", 2) {
        Some(k) => [k[0], k[1]],
        // A square kernel is the only shape a row length alone determines.
        None => {
            let side = (kernel_area as f64).sqrt().round() as usize;
            [side, side]
        }
    };
    if kernel[0] * kernel[1] * per_group != row_len || group != groups {
        return None;
    }
    let strides = ints_attr(node, "strides", 2).unwrap_or(vec![1, 1]);
    let dilations = ints_attr(node, "dilations", 2).unwrap_or(vec![1, 1]);
    if strides.contains(&0) || dilations.contains(&0) {
        return None;
    }
    let auto_pad = match node.attr("auto_pad") {
        Some(Attr::Str(s)) => s.as_str(),
        _ => "NOTSET",
    };
    let pads = match auto_pad {
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut p = [0usize; 4];
            for (axis, size) in [h, w].into_iter().enumerate() {
                let out = size.div_ceil(strides[axis]);
                let span = (kernel[axis] - 1) * dilations[axis] + 1;
                let total = ((out - 1) * strides[axis] + span).saturating_sub(size);
                let small = total / 2;
                let (begin, end) =
                    if auto_pad == "SAME_UPPER" { (small, total - small) } else { (total - small, small) };
                p[axis] = begin;
                p[axis + 2] = end;
            }
            p
        }
        "VALID" => [0; 4],
        _ => match ints_attr(node, "pads", 4) {
            Some(p) => [p[0], p[1], p[2], p[3]],
            None => [0; 4],
        },
    };
    Some(ConvGeometry {
        kernel,
        strides: [strides[0], strides[1]],
        pads,
        dilations: [dilations[0], dilations[1]],
        group,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(attrs: Vec<(&str, Attr)>) -> Node {
        Node {
            name: "c".into(),
            op: OpKind::Conv,
            inputs: vec![Some(0), Some(1)],
            outputs: vec![2],
            attrs: attrs.into_iter().map(|(n, a)| (n.to_string(), a)).collect(),
        }
    }

    #[test]
    fn geometry_from_attributes_and_auto_pad() {
        let acc = RowGram::new(1, 8 * 9);
        let node = conv(vec![
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("strides", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![1, 1, 0, 0])),
        ]);
        let g = conv_geometry(&node, acc.groups, acc.row_len, &[1, 8, 16, 16]).unwrap();
        assert_eq!(
            g,
            ConvGeometry { kernel: [3, 3], strides: [2, 2], pads: [1, 1, 0, 0], dilations: [1, 1], group: 1 }
        );
        let same =
            conv(vec![("auto_pad", Attr::Str("SAME_UPPER".into())), ("strides", Attr::Ints(vec![2, 2]))]);
        let g = conv_geometry(&same, acc.groups, acc.row_len, &[1, 8, 16, 16]).unwrap();
        assert_eq!(g.pads, [0, 0, 1, 1]);
        // Depthwise: 8 groups of one channel, 3x3 rows.
        let dw = conv(vec![("group", Attr::Int(8)), ("pads", Attr::Ints(vec![1, 1, 1, 1]))]);
        let g = conv_geometry(&dw, 8, 9, &[1, 8, 16, 16]).unwrap();
        assert_eq!((g.group, g.kernel), (8, [3, 3]));
        // A row length the channels do not divide: no geometry.
        assert!(conv_geometry(&dw, 8, 10, &[1, 8, 16, 16]).is_none());
    }
}
