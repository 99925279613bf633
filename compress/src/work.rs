//! The mutable working model the passes rewrite: an [`ir::Graph`] plus owned constant tensors.

use std::collections::{BTreeMap, HashSet};

use pith_format::ir::{self, Dim, ElemType, ValueId};
use pith_runtime::Tensor;

/// A graph under transformation. Constants are plain f32/i64 tensors until weight compression.
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkModel {
    /// The graph; `values` may contain dead entries until [`crate::finish`] compacts them.
    pub graph: ir::Graph,
    /// Constant data by value id (ordered, so iteration is deterministic).
    pub consts: BTreeMap<ValueId, Tensor>,
    /// The model's properties (ONNX `metadata_props`), written to the `.pith` file as they are.
    pub props: BTreeMap<String, String>,
    /// Every value name in use, to mint unique names.
    names: HashSet<String>,
}

impl WorkModel {
    /// Adds a value named `name` (which must be unused) and returns its id.
    pub fn add_value(&mut self, name: String, elem: ElemType, shape: Option<Vec<Dim>>) -> ValueId {
        self.names.insert(name.clone());
        self.graph.values.push(ir::Value { name, elem, shape });
        (self.graph.values.len() - 1) as ValueId
    }

    /// True when a value called `name` exists.
    pub fn has_name(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// A fresh name derived from `base`.
    pub fn unique_name(&self, base: &str) -> String {
        if !self.has_name(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !self.has_name(n))
            .expect("an unbounded range always yields an unused name")
    }

    /// Adds a new constant value with a name derived from `base`.
    pub fn add_const(&mut self, base: &str, t: Tensor) -> ValueId {
        let name = self.unique_name(base);
        let id = self.add_value(name, t.elem(), Some(fixed_shape(&t.shape)));
        self.consts.insert(id, t);
        id
    }

    /// Turns value `id` into a constant holding `t` (its declared type and shape follow the data).
    pub fn set_const(&mut self, id: ValueId, t: Tensor) {
        let v = &mut self.graph.values[id as usize];
        v.elem = t.elem();
        v.shape = Some(fixed_shape(&t.shape));
        self.consts.insert(id, t);
    }

    /// For each value, the indices of the nodes reading it (a node appears once per input slot).
    pub fn consumers(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.graph.values.len()];
        for (n, node) in self.graph.nodes.iter().enumerate() {
            for v in node.inputs.iter().flatten() {
                out[*v as usize].push(n);
            }
        }
        out
    }

    /// For each value, the node producing it, if any.
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut out = vec![None; self.graph.values.len()];
        for (n, node) in self.graph.nodes.iter().enumerate() {
            for v in &node.outputs {
                out[*v as usize] = Some(n);
            }
        }
        out
    }

    /// Removes the nodes at the given indices (in any order).
    pub fn remove_nodes(&mut self, doomed: &[usize]) {
        let mut keep = vec![true; self.graph.nodes.len()];
        for &n in doomed {
            keep[n] = false;
        }
        let mut i = 0;
        self.graph.nodes.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }

    /// True when `id` is one of the graph's outputs.
    pub fn is_output(&self, id: ValueId) -> bool {
        self.graph.outputs.contains(&id)
    }

    /// Display name of node `n` for messages (its name, or its op and index when unnamed).
    pub fn node_label(&self, n: usize) -> String {
        let node = &self.graph.nodes[n];
        if node.name.is_empty() {
            format!("{}#{n}", node.op.onnx_name())
        } else {
            node.name.clone()
        }
    }
}

/// A declared shape with every extent fixed.
pub(crate) fn fixed_shape(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::Fixed(d as u64)).collect()
}

/// The extents of a declared shape when all are fixed.
pub(crate) fn concrete_shape(shape: &[Dim]) -> Option<Vec<usize>> {
    shape.iter().map(Dim::extent).collect()
}
