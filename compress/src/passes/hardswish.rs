//! Recognises `HardSwish` written out as elementary ops and replaces it by the single op.
//!
//! Exporters that predate ONNX's `HardSwish` (paddle2onnx for PP-OCR, older PyTorch) emit
//! `x · Clip(x + 3, 0, 6) / 6` as four nodes: `Add(x, 3)`, `Clip(·, 0, 6)`, `Mul(x, ·)`,
//! `Div(·, 6)` (or `Mul(·, 1/6)`), each a full pass over the activation. As one `HardSwish` it is
//! one pass, and the runtime fuses it into a preceding convolution's epilogue. The two forms are
//! equal up to float rounding (`x · clamp(x/6 + 1/2, 0, 1)` in the runtime).

use pith_format::ir::{Attr, OpKind, ValueId};

use crate::work::WorkModel;

/// Replaces every recognised decomposed HardSwish; returns how many.
pub(crate) fn fuse_hardswish(work: &mut WorkModel) -> usize {
    let producers = work.producers();
    let consumers = work.consumers();
    let single_use = |v: ValueId| consumers[v as usize].len() == 1 && !work.is_output(v);
    let scalar = |v: Option<ValueId>, want: f32| -> bool {
        v.and_then(|v| work.consts.get(&v))
            .and_then(|t| t.as_f32())
            .is_some_and(|d| d.len() == 1 && (d[0] - want).abs() <= 1e-6 * want.abs().max(1.0))
    };
    let mut rewrites = Vec::new();
    for (n, last) in work.graph.nodes.iter().enumerate() {
        // The last node: Div(m, 6) or Mul(m, 1/6) in either operand order for Mul.
        let m = match (last.op, last.inputs.as_slice()) {
            (OpKind::Div, [Some(m), k]) if scalar(*k, 6.0) => *m,
            (OpKind::Mul, [Some(a), Some(b)]) => {
                match (scalar(Some(*b), 1.0 / 6.0), scalar(Some(*a), 1.0 / 6.0)) {
                    (true, _) => *a,
                    (_, true) => *b,
                    _ => continue,
                }
            }
            _ => continue,
        };
        if last.outputs.len() != 1 || !single_use(m) {
            continue;
        }
        let Some(mul) = producers[m as usize] else { continue };
        let mul_node = &work.graph.nodes[mul];
        let [Some(p), Some(q)] = mul_node.inputs[..] else { continue };
        if mul_node.op != OpKind::Mul {
            continue;
        }
        // One operand is the clip, the other is x.
        let Some((clip, x)) = [(p, q), (q, p)].into_iter().find_map(|(cv, x)| {
            let c = producers[cv as usize]?;
            (work.graph.nodes[c].op == OpKind::Clip && single_use(cv)).then_some((c, x))
        }) else {
            continue;
        };
        let clip_node = &work.graph.nodes[clip];
        if !clip_bounds_are(work, clip_node, 0.0, 6.0) {
            continue;
        }
        let Some(Some(a)) = clip_node.inputs.first().copied() else { continue };
        let Some(add) = producers[a as usize] else { continue };
        let add_node = &work.graph.nodes[add];
        let adds_three = match add_node.inputs[..] {
            [Some(u), k] if u == x => scalar(k, 3.0),
            [k, Some(u)] if u == x => scalar(k, 3.0),
            _ => false,
        };
        if add_node.op != OpKind::Add || !adds_three || !single_use(a) {
            continue;
        }
        rewrites.push((n, x, [add, clip, mul]));
    }
    let mut doomed = Vec::new();
    for (n, x, parts) in &rewrites {
        let node = &mut work.graph.nodes[*n];
        node.op = OpKind::HardSwish;
        node.inputs = vec![Some(*x)];
        node.attrs.clear();
        doomed.extend_from_slice(parts);
    }
    work.remove_nodes(&doomed);
    rewrites.len()
}

/// Whether `Clip` node `clip` clamps to exactly `[lo, hi]` (constant inputs 1 and 2, or the
/// opset-6 attributes).
fn clip_bounds_are(work: &WorkModel, clip: &pith_format::ir::Node, lo: f32, hi: f32) -> bool {
    let bound = |i: usize, attr: &str| -> Option<f32> {
        match clip.inputs.get(i).copied().flatten() {
            Some(v) => match work.consts.get(&v)?.as_f32()? {
                [b] => Some(*b),
                _ => None,
            },
            None => match clip.attr(attr) {
                Some(Attr::Float(b)) => Some(*b),
                _ => None,
            },
        }
    };
    bound(1, "min") == Some(lo) && bound(2, "max") == Some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_util::*;

    /// Builds `x · clip(x + 3, 0, 6) / 6` (with `last` as Div by 6 or Mul by 1/6); returns the output.
    fn decomposed(w: &mut WorkModel, x: ValueId, by_div: bool) -> ValueId {
        let three = constant(w, "three", &[1], vec![3.0]);
        let (zero, six) = (constant(w, "zero", &[], vec![0.0]), constant(w, "six", &[], vec![6.0]));
        let (a, c, m, y) = (act(w, "a"), act(w, "c"), act(w, "m"), act(w, "y"));
        push(w, "add", OpKind::Add, &[Some(x), Some(three)], &[a]);
        push(w, "clip", OpKind::Clip, &[Some(a), Some(zero), Some(six)], &[c]);
        push(w, "mul", OpKind::Mul, &[Some(c), Some(x)], &[m]);
        if by_div {
            let six2 = constant(w, "six2", &[1], vec![6.0]);
            push(w, "div", OpKind::Div, &[Some(m), Some(six2)], &[y]);
        } else {
            let sixth = constant(w, "sixth", &[1], vec![1.0 / 6.0]);
            push(w, "scale", OpKind::Mul, &[Some(sixth), Some(m)], &[y]);
        }
        y
    }

    #[test]
    fn both_spellings_become_one_hardswish() {
        for by_div in [true, false] {
            let mut w = WorkModel::default();
            let x = input(&mut w, "x");
            let y = decomposed(&mut w, x, by_div);
            w.graph.outputs = vec![y];
            assert_eq!(fuse_hardswish(&mut w), 1);
            assert_eq!(w.graph.nodes.len(), 1);
            let node = &w.graph.nodes[0];
            assert_eq!(
                (node.op, node.inputs.clone(), node.outputs.clone()),
                (OpKind::HardSwish, vec![Some(x)], vec![y])
            );
        }
    }

    #[test]
    fn other_constants_or_shared_intermediates_are_left_alone() {
        // Clip to [0, 5]: not HardSwish.
        let mut w = WorkModel::default();
        let x = input(&mut w, "x");
        let y = decomposed(&mut w, x, true);
        let five = constant(&mut w, "five", &[], vec![5.0]);
        w.graph.nodes[1].inputs[2] = Some(five);
        w.graph.outputs = vec![y];
        assert_eq!(fuse_hardswish(&mut w), 0);
        // The clip output is also a graph output: it must survive.
        let mut w = WorkModel::default();
        let x = input(&mut w, "x");
        let y = decomposed(&mut w, x, true);
        let c = w.graph.nodes[1].outputs[0];
        w.graph.outputs = vec![y, c];
        assert_eq!(fuse_hardswish(&mut w), 0);
        assert_eq!(w.graph.nodes.len(), 4);
    }
}
