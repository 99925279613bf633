//! Removes `Identity` nodes by rewiring their consumers to the identity's input.

use pith_format::ir::{OpKind, ValueId};

use crate::work::WorkModel;

/// Removes every removable `Identity` node; returns how many were removed.
///
/// `y = Identity(x)` disappears by replacing reads of `y` with `x`. When `y` is a graph output its
/// name must survive, so instead `x` is renamed to `y` (its producer, or its constant data, now
/// defines `y`); that is impossible when `x` is itself a graph input or output, and the node stays.
pub(crate) fn remove_identities(work: &mut WorkModel) -> usize {
    let mut doomed = Vec::new();
    for n in 0..work.graph.nodes.len() {
        let node = &work.graph.nodes[n];
        if node.op != OpKind::Identity || node.outputs.len() != 1 {
            continue;
        }
        let (Some(Some(x)), y) = (node.inputs.first().copied(), node.outputs[0]) else {
            continue;
        };
        if !work.is_output(y) {
            replace_reads(work, y, x);
        } else if work.graph.inputs.contains(&x) || work.is_output(x) {
            continue;
        } else {
            rename(work, x, y);
        }
        doomed.push(n);
    }
    work.remove_nodes(&doomed);
    doomed.len()
}

/// Makes every node read `to` where it read `from`.
fn replace_reads(work: &mut WorkModel, from: ValueId, to: ValueId) {
    for node in &mut work.graph.nodes {
        for v in node.inputs.iter_mut().flatten() {
            if *v == from {
                *v = to;
            }
        }
    }
}

/// Moves the definition and every read of `from` onto `to` (which loses its old definition).
fn rename(work: &mut WorkModel, from: ValueId, to: ValueId) {
    replace_reads(work, from, to);
    for node in &mut work.graph.nodes {
        for v in &mut node.outputs {
            if *v == from {
                *v = to;
            }
        }
    }
    if let Some(t) = work.consts.remove(&from) {
        work.set_const(to, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_util::*;

    #[test]
    fn rewires_consumers_and_keeps_output_names() {
        let mut w = WorkModel::default();
        let x = input(&mut w, "x");
        let a = act(&mut w, "a");
        let b = act(&mut w, "b");
        let c = act(&mut w, "c");
        let out = act(&mut w, "out");
        push(&mut w, "relu", OpKind::Relu, &[Some(x)], &[a]);
        push(&mut w, "id1", OpKind::Identity, &[Some(a)], &[b]);
        push(&mut w, "relu2", OpKind::Relu, &[Some(b)], &[c]);
        push(&mut w, "id2", OpKind::Identity, &[Some(c)], &[out]);
        w.graph.outputs.push(out);
        assert_eq!(remove_identities(&mut w), 2);
        let nodes = &w.graph.nodes;
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].inputs, vec![Some(a)]);
        // The graph output keeps its value (and name): relu2 now defines it directly.
        assert_eq!(nodes[1].outputs, vec![out]);
        assert_eq!(w.graph.outputs, vec![out]);
    }

    #[test]
    fn keeps_identity_between_input_and_output() {
        let mut w = WorkModel::default();
        let x = input(&mut w, "x");
        let y = act(&mut w, "y");
        push(&mut w, "id", OpKind::Identity, &[Some(x)], &[y]);
        w.graph.outputs.push(y);
        assert_eq!(remove_identities(&mut w), 0);
        assert_eq!(w.graph.nodes.len(), 1);
    }

    #[test]
    fn constant_output_moves_to_output_name() {
        let mut w = WorkModel::default();
        let k = constant(&mut w, "k", &[2], vec![1.0, 2.0]);
        let y = act(&mut w, "y");
        push(&mut w, "id", OpKind::Identity, &[Some(k)], &[y]);
        w.graph.outputs.push(y);
        assert_eq!(remove_identities(&mut w), 1);
        assert!(w.graph.nodes.is_empty());
        assert_eq!(w.consts[&y].as_f32(), Some(&[1.0, 2.0][..]));
        assert!(!w.consts.contains_key(&k));
    }
}
