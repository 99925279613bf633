//! Dead-code elimination: drops nodes and constants no graph output depends on.

use crate::work::WorkModel;

/// Removes dead nodes and constants; returns how many nodes were removed.
///
/// Nodes must be topologically sorted. A node is live when any of its outputs is read by a live
/// node or is a graph output.
pub(crate) fn eliminate_dead(work: &mut WorkModel) -> usize {
    let mut live = vec![false; work.graph.values.len()];
    for &o in &work.graph.outputs {
        live[o as usize] = true;
    }
    let mut keep = vec![false; work.graph.nodes.len()];
    for (n, node) in work.graph.nodes.iter().enumerate().rev() {
        if node.outputs.iter().any(|&o| live[o as usize]) {
            keep[n] = true;
            for &i in node.inputs.iter().flatten() {
                live[i as usize] = true;
            }
        }
    }
    let doomed: Vec<usize> = (0..keep.len()).filter(|&n| !keep[n]).collect();
    work.remove_nodes(&doomed);
    work.consts.retain(|id, _| live[*id as usize]);
    doomed.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_util::*;
    use pith_format::ir::OpKind;

    #[test]
    fn drops_unused_branch_and_constant() {
        let mut w = WorkModel::default();
        let x = input(&mut w, "x");
        let k_used = constant(&mut w, "k_used", &[1], vec![1.0]);
        let k_dead = constant(&mut w, "k_dead", &[1], vec![2.0]);
        let (a, b) = (act(&mut w, "a"), act(&mut w, "b"));
        push(&mut w, "live", OpKind::Add, &[Some(x), Some(k_used)], &[a]);
        push(&mut w, "dead", OpKind::Add, &[Some(x), Some(k_dead)], &[b]);
        w.graph.outputs.push(a);
        assert_eq!(eliminate_dead(&mut w), 1);
        assert_eq!(w.graph.nodes.len(), 1);
        assert_eq!(w.graph.nodes[0].name, "live");
        assert!(w.consts.contains_key(&k_used));
        assert!(!w.consts.contains_key(&k_dead));
    }
}
