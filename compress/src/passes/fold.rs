//! Constant folding: nodes whose inputs are all constants are evaluated now, through the
//! runtime's own op implementations, and replaced by their results.

use pith_format::ir::{Attr, Node, OpKind};
use pith_runtime::ops::{self, Arg, ArgData};
use pith_runtime::Tensor;

use crate::work::{concrete_shape, WorkModel};

/// Folds until nothing changes; returns how many nodes were replaced by constants.
///
/// `Shape` also folds when its input's declared shape is fully fixed. A node the runtime cannot
/// build or evaluate yet (or that defers to run time) is left in place: folding is an
/// optimisation, never a reason to fail.
pub(crate) fn fold_constants(work: &mut WorkModel) -> usize {
    let mut total = 0;
    loop {
        let mut doomed = Vec::new();
        for n in 0..work.graph.nodes.len() {
            let Some(results) = evaluate(work, n) else {
                continue;
            };
            let outputs = work.graph.nodes[n].outputs.clone();
            for (v, t) in outputs.into_iter().zip(results) {
                work.set_const(v, t);
            }
            doomed.push(n);
        }
        if doomed.is_empty() {
            return total;
        }
        total += doomed.len();
        work.remove_nodes(&doomed);
    }
}

/// The outputs of node `n` if they can be computed now.
fn evaluate(work: &WorkModel, n: usize) -> Option<Vec<Tensor>> {
    let node = &work.graph.nodes[n];
    if node.op == OpKind::Shape {
        return fold_shape(work, node).map(|t| vec![t]);
    }
    let inputs: Vec<Option<&Tensor>> = node
        .inputs
        .iter()
        .map(|v| v.map(|v| work.consts.get(&v)))
        .map(|v| match v {
            None => Some(None),
            Some(t) => t.map(Some),
        })
        .collect::<Option<_>>()?;
    if inputs.iter().all(Option::is_none) {
        return None;
    }
    let op = match ops::build(node) {
        Ok(op) => op,
        Err(e) => {
            log::debug!("not folding '{}': {e}", work.node_label(n));
            return None;
        }
    };
    let args: Vec<Option<Arg<'_>>> = inputs
        .iter()
        .map(|t| t.map(|t| Arg { shape: &t.shape, elem: t.elem(), data: Some(ArgData::Known(t)) }))
        .collect();
    match op.eval(&args) {
        Ok(Some(out)) if out.len() == node.outputs.len() => Some(out),
        Ok(_) => None,
        Err(e) => {
            log::debug!("not folding '{}': {e}", work.node_label(n));
            None
        }
    }
}

/// `Shape` of a constant or of a value whose declared shape is fully fixed (honouring the
/// opset-15 `start`/`end` attributes).
fn fold_shape(work: &WorkModel, node: &Node) -> Option<Tensor> {
    let x = (*node.inputs.first()?)?;
    let dims: Vec<i64> = match work.consts.get(&x) {
        Some(t) => t.shape.iter().map(|&d| d as i64).collect(),
        None => concrete_shape(work.graph.values[x as usize].shape.as_ref()?)?
            .into_iter()
            .map(|d| d as i64)
            .collect(),
    };
    let rank = dims.len() as i64;
    let bound = |name: &str, default: i64| -> Option<usize> {
        let v = match node.attr(name) {
            None => default,
            Some(Attr::Int(v)) => *v,
            Some(_) => return None,
        };
        Some((if v < 0 { v + rank } else { v }).clamp(0, rank) as usize)
    };
    let (start, end) = (bound("start", 0)?, bound("end", rank)?);
    let out = dims[start..end.max(start)].to_vec();
    Some(Tensor::from_i64(vec![out.len()], out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_util::*;
    use pith_format::ir::{Dim, ElemType};

    #[test]
    fn shape_of_fixed_input_folds() {
        let mut w = WorkModel::default();
        let x =
            w.add_value("x".into(), ElemType::F32, Some(vec![Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(8)]));
        w.graph.inputs.push(x);
        let s = act(&mut w, "s");
        push(&mut w, "shape", OpKind::Shape, &[Some(x)], &[s]);
        w.graph.nodes[0].attrs = vec![("start".into(), Attr::Int(-2))];
        w.graph.outputs.push(s);
        assert_eq!(fold_constants(&mut w), 1);
        assert!(w.graph.nodes.is_empty());
        assert_eq!(w.consts[&s].as_i64(), Some(&[3i64, 8][..]));
    }

    #[test]
    fn shape_of_symbolic_input_stays() {
        let mut w = WorkModel::default();
        let x = w.add_value("x".into(), ElemType::F32, Some(vec![Dim::Symbol("n".into()), Dim::Fixed(3)]));
        w.graph.inputs.push(x);
        let s = act(&mut w, "s");
        push(&mut w, "shape", OpKind::Shape, &[Some(x)], &[s]);
        assert_eq!(fold_constants(&mut w), 0);
        assert_eq!(w.graph.nodes.len(), 1);
    }

    /// Needs the runtime's `Add` (binary ops); fails until that op lands.
    #[test]
    fn add_of_constants_folds_through_runtime_ops() {
        let mut w = WorkModel::default();
        let a = constant(&mut w, "a", &[2], vec![1.0, 2.0]);
        let b = constant(&mut w, "b", &[2], vec![10.0, 20.0]);
        let c = act(&mut w, "c");
        push(&mut w, "add", OpKind::Add, &[Some(a), Some(b)], &[c]);
        w.graph.outputs.push(c);
        assert_eq!(fold_constants(&mut w), 1);
        assert_eq!(w.consts[&c].as_f32(), Some(&[11.0f32, 22.0][..]));
    }
}
