//! Topological sorting of nodes (stable: keeps the existing order where it is already valid).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::error::CompressError;
use crate::work::WorkModel;

/// Sorts `work`'s nodes so every node comes after the producers of its inputs.
///
/// Among ready nodes the one earliest in the current order goes first, so an already sorted graph
/// is unchanged. A cycle is an error naming one node on it.
pub(crate) fn sort(work: &mut WorkModel) -> Result<(), CompressError> {
    let producers = work.producers();
    let consumers = work.consumers();
    let nodes = &work.graph.nodes;
    let mut pending: Vec<usize> = nodes
        .iter()
        .map(|n| n.inputs.iter().flatten().filter(|v| producers[**v as usize].is_some()).count())
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..nodes.len()).filter(|&n| pending[n] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(Reverse(n)) = ready.pop() {
        order.push(n);
        for out in &nodes[n].outputs {
            for &c in &consumers[*out as usize] {
                pending[c] -= 1;
                if pending[c] == 0 {
                    ready.push(Reverse(c));
                }
            }
        }
    }
    if order.len() != nodes.len() {
        let stuck = (0..nodes.len()).find(|&n| pending[n] > 0).expect("some node was never ready");
        return Err(CompressError::Cycle { node: work.node_label(stuck) });
    }
    let mut old: Vec<Option<_>> = std::mem::take(&mut work.graph.nodes).into_iter().map(Some).collect();
    work.graph.nodes = order.into_iter().map(|n| old[n].take().expect("each node is placed once")).collect();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_util::*;
    use pith_format::ir::OpKind;

    #[test]
    fn reorders_reversed_chain_and_detects_cycles() {
        let mut w = WorkModel::default();
        let x = input(&mut w, "x");
        let a = act(&mut w, "a");
        let b = act(&mut w, "b");
        push(&mut w, "second", OpKind::Relu, &[Some(a)], &[b]);
        push(&mut w, "first", OpKind::Relu, &[Some(x)], &[a]);
        w.graph.outputs.push(b);
        sort(&mut w).unwrap();
        let names: Vec<_> = w.graph.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["first", "second"]);

        // Close a loop: first now reads b.
        w.graph.nodes[0].inputs = vec![Some(b)];
        let err = sort(&mut w).unwrap_err();
        assert!(matches!(err, CompressError::Cycle { .. }), "{err}");
    }
}
