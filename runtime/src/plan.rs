//! Planning one set of input shapes: concrete shapes for every value, plan-time folding of shape
//! arithmetic and constant subgraphs, the run-time schedule, and the arena layout of activations.
//!
//! The planner sees the model only through a [`Graph`] and a constant lookup, so it serves any
//! backend and can be tested on in-memory models.

use std::collections::HashMap;

use pith_format::ir::{Dim, ElemType, Graph, Node, OpKind, ValueId};
use pith_format::TensorView;

use crate::arena::{self, Block};
use crate::error::{OpError, Result, RuntimeError};
use crate::ops::{Arg, ArgData, ExecCtx, Op, Prepared};
use crate::tensor::{bounded_numel, Tensor, MAX_TENSOR_ELEMENTS};

/// Arena offsets are multiples of this many f32 elements (64 bytes: one cache line, any SIMD width).
pub const ALIGN: usize = 16;

/// Looks up the data of a constant value; `None` when the value is not a constant.
pub type ConstantFn<'a> = dyn Fn(ValueId) -> Option<TensorView<'a>> + 'a;

/// What a plan is: sizes and counts worth reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanSummary {
    /// Bytes of the activation arena plus every thread's op scratch.
    pub arena_bytes: usize,
    /// Activation buffers placed in the arena (reshaped views share their source's buffer, and
    /// the inputs of a concatenation written in place lie in its output's).
    pub values: usize,
    /// Nodes executed on every run.
    pub runtime_nodes: usize,
    /// Nodes evaluated once at plan time (shape arithmetic, constant subgraphs).
    pub folded_nodes: usize,
    /// Activations kept in the channel-blocked layout (see [`crate::layout`]).
    pub blocked_values: usize,
}

/// Where a planned value lives.
#[derive(Debug, Clone)]
pub enum Slot {
    /// A constant of the model.
    Const,
    /// Computed at plan time.
    Known(Tensor),
    /// A run-time f32 activation at this element offset of the arena.
    Arena(usize),
    /// Graph input `k` (of `Graph::inputs`), read in place from the caller's tensor: not copied,
    /// no arena space. (An input that a view shares or that is also a graph output is copied into
    /// the arena instead, as those are read from there.)
    Input(usize),
    /// An activation that nothing at run time reads (e.g. an input only `Shape` looks at).
    Unused,
}

/// A value's concrete type and shape for the planned input shapes, and where it lives.
#[derive(Debug, Clone)]
pub struct PlannedValue {
    /// Element type.
    pub elem: ElemType,
    /// Concrete shape.
    pub shape: Vec<usize>,
    /// Storage.
    pub slot: Slot,
}

impl PlannedValue {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Everything needed to run the graph for one set of input shapes.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The planned shapes of the graph inputs, in graph order.
    pub input_shapes: Vec<Vec<usize>>,
    /// Every value the plan touches, indexed by [`ValueId`].
    pub values: Vec<Option<PlannedValue>>,
    /// Indices of the nodes to run, in order.
    pub steps: Vec<usize>,
    /// f32 elements of the activation arena.
    pub arena_len: usize,
    /// f32 elements of each thread's op scratch, shared by all ops (the largest need of any step).
    pub scratch_len: usize,
    /// Sizes and counts.
    pub summary: PlanSummary,
    /// Per node (by index in the graph), which of its values are channel-blocked; empty or
    /// shorter than the graph: all planar (see [`crate::layout`]).
    pub node_layouts: Vec<crate::ops::NodeLayouts>,
    /// Per node (by index in the graph), what its op prepared for this plan ([`prepare`]); empty
    /// or shorter than the graph, or `None`: nothing.
    pub prepared: Vec<Option<Prepared>>,
}

impl Plan {
    /// Bytes of activation memory a run of this plan holds on `threads` threads: the arena and
    /// every thread's share of the op scratch (what [`PlanSummary::arena_bytes`] reports).
    pub fn memory_bytes(&self, threads: usize) -> usize {
        let scratch = self.scratch_len.saturating_mul(threads.max(1));
        self.arena_len.saturating_add(scratch).saturating_mul(std::mem::size_of::<f32>())
    }
}

/// Lets every step's op prepare what its runs reuse ([`Op::prepare`]) for the plan's shapes and
/// layouts (after [`crate::layout::assign`]), on the session's kernels.
pub fn prepare(
    graph: &Graph,
    constant: &ConstantFn<'_>,
    ops: &[Box<dyn Op>],
    plan: &mut Plan,
    ctx: &ExecCtx,
) -> Result<()> {
    let mut prepared = vec![None; graph.nodes.len()];
    for &ni in &plan.steps {
        let node = &graph.nodes[ni];
        let args: Vec<Option<Arg<'_>>> =
            node.inputs.iter().map(|i| i.map(|id| plan_arg(&plan.values, constant, id))).collect();
        let layouts = plan.node_layouts.get(ni).copied().unwrap_or_default();
        prepared[ni] = ops[ni].prepare(&args, ctx, layouts).map_err(|e| node_error(node, ni, e))?;
    }
    plan.prepared = prepared;
    Ok(())
}

/// A display name for node `index` (its name, or `#index` when unnamed).
pub fn node_name(node: &Node, index: usize) -> String {
    if node.name.is_empty() {
        format!("#{index}")
    } else {
        node.name.clone()
    }
}

/// Wraps an op error into a [`RuntimeError::Node`] naming the node.
pub fn node_error(node: &Node, index: usize, e: OpError) -> RuntimeError {
    RuntimeError::Node { node: node_name(node, index), op: node.op.onnx_name(), msg: e.0 }
}

/// A declared shape as text, e.g. `[1, 3, H, W]`.
fn show_dims(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => n.to_string(),
            Dim::Symbol(s) => s.clone(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// Checks `shape` against `declared`, binding symbols in `symbols`; the error says what differs.
fn match_dims(
    shape: &[usize],
    declared: &[Dim],
    symbols: &mut HashMap<String, usize>,
) -> std::result::Result<(), String> {
    let mismatch = || format!("expected shape {}, got {shape:?}", show_dims(declared));
    if shape.len() != declared.len() {
        return Err(mismatch());
    }
    for (&got, want) in shape.iter().zip(declared) {
        match want {
            Dim::Fixed(n) if *n != got as u64 => return Err(mismatch()),
            Dim::Fixed(_) => {}
            Dim::Symbol(s) => match symbols.get(s) {
                Some(&bound) if bound != got => {
                    return Err(format!(
                        "{}: dimension '{s}' is {got} here but {bound} elsewhere",
                        mismatch()
                    ))
                }
                Some(_) => {}
                None => {
                    symbols.insert(s.clone(), got);
                }
            },
        }
    }
    Ok(())
}

/// The caller's input shapes, checked against the graph's declarations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundInputs {
    /// One shape per graph input, in graph order.
    pub shapes: Vec<Vec<usize>>,
    /// The value of every symbolic dimension the inputs declare.
    pub symbols: HashMap<String, usize>,
}

/// Orders the caller's input shapes by graph input and checks them against the declarations:
/// unknown, repeated or missing inputs, non-f32 inputs, wrong extents and inconsistent symbols fail.
pub fn bind_inputs(graph: &Graph, given: &[(&str, Vec<usize>)]) -> Result<BoundInputs> {
    let mut shapes: Vec<Option<Vec<usize>>> = vec![None; graph.inputs.len()];
    for (name, shape) in given {
        let Some(k) = graph.inputs.iter().position(|&id| graph.values[id as usize].name == *name) else {
            let names: Vec<&str> =
                graph.inputs.iter().map(|&id| graph.values[id as usize].name.as_str()).collect();
            return Err(RuntimeError::Input {
                name: name.to_string(),
                msg: format!("not an input of the model (its inputs: {})", names.join(", ")),
            });
        };
        if shapes[k].replace(shape.clone()).is_some() {
            return Err(RuntimeError::Input { name: name.to_string(), msg: "given more than once".into() });
        }
    }
    let mut symbols = HashMap::new();
    let mut out = Vec::with_capacity(shapes.len());
    for (&id, shape) in graph.inputs.iter().zip(shapes) {
        let value = &graph.values[id as usize];
        let input_err = |msg: String| RuntimeError::Input { name: value.name.clone(), msg };
        let shape = shape.ok_or_else(|| input_err("missing".into()))?;
        if value.elem != ElemType::F32 {
            return Err(input_err(format!("{:?} model inputs are not supported (only f32)", value.elem)));
        }
        if let Some(declared) = &value.shape {
            match_dims(&shape, declared, &mut symbols).map_err(input_err)?;
        }
        if bounded_numel(&shape).is_none() {
            return Err(input_err(format!(
                "shape {shape:?} exceeds the limit of {MAX_TENSOR_ELEMENTS} elements per tensor"
            )));
        }
        out.push(shape);
    }
    Ok(BoundInputs { shapes: out, symbols })
}

/// Fixed shape of a constant, checked against its data.
fn constant_shape(graph: &Graph, id: ValueId, view: &TensorView<'_>) -> Result<Vec<usize>> {
    let value = &graph.values[id as usize];
    let shape: Option<Vec<usize>> =
        value.shape.as_ref().and_then(|dims| dims.iter().map(Dim::extent).collect());
    match shape {
        Some(s) if s.iter().product::<usize>() == view.numel() => Ok(s),
        _ => Err(RuntimeError::Graph(format!(
            "constant '{}' has no fixed shape matching its {} elements",
            value.name,
            view.numel()
        ))),
    }
}

/// The plan-time argument for value `id`.
pub(crate) fn plan_arg<'v, 'c: 'v>(
    values: &'v [Option<PlannedValue>],
    constant: &ConstantFn<'c>,
    id: ValueId,
) -> Arg<'v> {
    let v = values[id as usize].as_ref().expect("plan_arg is called on defined values");
    let data = match &v.slot {
        Slot::Const => constant(id).map(ArgData::Const),
        Slot::Known(t) => Some(ArgData::Known(t)),
        Slot::Arena(_) | Slot::Input(_) | Slot::Unused => None,
    };
    Arg { shape: &v.shape, elem: v.elem, data }
}

/// Defines value `id` as a constant if it is one and not yet defined; errors if it is neither.
fn ensure_defined(
    graph: &Graph,
    constant: &ConstantFn<'_>,
    values: &mut [Option<PlannedValue>],
    id: ValueId,
    user: &dyn Fn() -> String,
) -> Result<()> {
    let Some(slot) = values.get(id as usize) else {
        return Err(RuntimeError::Graph(format!("{} uses value #{id}, which does not exist", user())));
    };
    if slot.is_some() {
        return Ok(());
    }
    let value = &graph.values[id as usize];
    let view = constant(id).ok_or_else(|| {
        RuntimeError::Graph(format!("{} reads '{}' before any node defines it", user(), value.name))
    })?;
    let shape = constant_shape(graph, id, &view)?;
    let slot = widened(&view, &shape).map_or(Slot::Const, Slot::Known);
    values[id as usize] = Some(PlannedValue { elem: value.elem, shape, slot });
    Ok(())
}

/// At most this many values of an f16 vector constant are widened to f32 at plan time.
const MAX_WIDENED: usize = 1 << 16;

/// An f16 constant shaped as a vector (at most one extent above 1: a calibrated model's biases,
/// PRelu slopes) widened to f32 once at plan time. The ops read such inputs as f32 on every call,
/// and from the stored encoding each run would convert (and allocate) them again; weights keep
/// their stored encoding, which the kernels decode tile by tile.
fn widened(view: &TensorView<'_>, shape: &[usize]) -> Option<Tensor> {
    let TensorView::F16(h) = view else { return None };
    let vector = shape.iter().filter(|&&d| d > 1).count() <= 1;
    (vector && h.len() <= MAX_WIDENED)
        .then(|| Tensor::from_f32(shape.to_vec(), h.iter().map(|v| v.to_f32()).collect()))
}

/// What planning decided for one node.
enum Outcome {
    /// Evaluated now; these are its outputs.
    Folded(Vec<Tensor>),
    /// Runs on every inference, with these output shapes and this scratch need.
    Scheduled(Vec<Vec<usize>>, usize),
}

/// Plans `graph` for the given input shapes. `ops[i]` is the op of `graph.nodes[i]`.
pub fn plan(
    graph: &Graph,
    constant: &ConstantFn<'_>,
    ops: &[Box<dyn Op>],
    inputs: &[(&str, Vec<usize>)],
) -> Result<Plan> {
    let BoundInputs { shapes: input_shapes, mut symbols } = bind_inputs(graph, inputs)?;
    let mut values: Vec<Option<PlannedValue>> = vec![None; graph.values.len()];
    for (&id, shape) in graph.inputs.iter().zip(&input_shapes) {
        values[id as usize] =
            Some(PlannedValue { elem: ElemType::F32, shape: shape.clone(), slot: Slot::Unused });
    }

    let mut steps = Vec::new();
    let mut folded = 0;
    let mut scratch_len = 0;
    for (ni, (node, op)) in graph.nodes.iter().zip(ops).enumerate() {
        let user = || format!("node '{}'", node_name(node, ni));
        for &id in node.inputs.iter().flatten() {
            ensure_defined(graph, constant, &mut values, id, &user)?;
        }
        let outcome = {
            let args: Vec<Option<Arg<'_>>> =
                node.inputs.iter().map(|i| i.map(|id| plan_arg(&values, constant, id))).collect();
            decide(op.as_ref(), &args, node.outputs.len()).map_err(|e| node_error(node, ni, e))?
        };
        for &id in &node.outputs {
            if values.get(id as usize).is_none_or(Option::is_some) {
                return Err(RuntimeError::Graph(format!(
                    "{} defines value #{id}, which is missing or already defined",
                    user()
                )));
            }
        }
        match outcome {
            Outcome::Folded(tensors) => {
                folded += 1;
                for (&id, t) in node.outputs.iter().zip(tensors) {
                    values[id as usize] =
                        Some(PlannedValue { elem: t.elem(), shape: t.shape.clone(), slot: Slot::Known(t) });
                }
            }
            Outcome::Scheduled(shapes, scratch) => {
                scratch_len = scratch_len.max(scratch);
                steps.push(ni);
                for (&id, shape) in node.outputs.iter().zip(shapes) {
                    values[id as usize] =
                        Some(PlannedValue { elem: ElemType::F32, shape, slot: Slot::Unused });
                }
            }
        }
    }

    for &id in &graph.outputs {
        ensure_defined(graph, constant, &mut values, id, &|| "the graph output list".into())?;
        let value = &graph.values[id as usize];
        let planned = values[id as usize].as_ref().expect("defined above");
        if let Some(declared) = &value.shape {
            match_dims(&planned.shape, declared, &mut symbols)
                .map_err(|msg| RuntimeError::Graph(format!("output '{}': {msg}", value.name)))?;
        }
    }

    let steps = live_steps(graph, &values, steps);
    let (steps, views) = fold_views(graph, &values, steps);
    let (steps, parts) = fold_concats(graph, &values, steps, &views);
    let (arena_len, placed) = place_activations(graph, &mut values, &steps, &views, &parts);
    // One thread's scratch here; the session counts its own threads' (`Plan::memory_bytes`).
    let summary = PlanSummary {
        arena_bytes: 0,
        values: placed,
        runtime_nodes: steps.len(),
        folded_nodes: folded,
        blocked_values: 0,
    };
    let mut plan = Plan {
        input_shapes,
        values,
        steps,
        arena_len,
        scratch_len,
        summary,
        node_layouts: Vec::new(),
        prepared: Vec::new(),
    };
    plan.summary.arena_bytes = plan.memory_bytes(1);
    log::info!(
        "planned inputs {:?}: {} run-time nodes, {} folded, {} activations, arena {} KiB",
        plan.input_shapes,
        plan.summary.runtime_nodes,
        plan.summary.folded_nodes,
        plan.summary.values,
        plan.summary.arena_bytes.div_ceil(1024)
    );
    Ok(plan)
}

/// Infers a node's outputs and decides whether it folds now or runs later.
fn decide(op: &dyn Op, args: &[Option<Arg<'_>>], n_outputs: usize) -> Result<Outcome, OpError> {
    let outs = op.infer(args)?;
    if outs.len() != n_outputs {
        return Err(OpError(format!("the op yields {} outputs but the node has {n_outputs}", outs.len())));
    }
    // Before anything is allocated for them (folding evaluates the op right below).
    if let Some((_, shape)) = outs.iter().find(|(_, shape)| bounded_numel(shape).is_none()) {
        return Err(OpError(format!(
            "an output of shape {shape:?} would exceed the limit of {MAX_TENSOR_ELEMENTS} elements per tensor"
        )));
    }
    let all_known = args.iter().flatten().all(Arg::is_known);
    let any_int = outs.iter().any(|(e, _)| *e == ElemType::I64);
    if all_known || any_int {
        if let Some(tensors) = op.eval(args)? {
            let agrees = tensors.len() == outs.len()
                && tensors
                    .iter()
                    .zip(&outs)
                    .all(|(t, (e, s))| t.elem() == *e && t.shape == *s && t.numel() == buf_len(t));
            if !agrees {
                return Err(OpError("plan-time evaluation disagrees with shape inference".into()));
            }
            return Ok(Outcome::Folded(tensors));
        }
        if any_int {
            return Err(OpError("integer tensor depends on run-time data".into()));
        }
    }
    let scratch = op.scratch_len(args);
    Ok(Outcome::Scheduled(outs.into_iter().map(|(_, s)| s).collect(), scratch))
}

/// Elements actually stored in `t` (its public fields could disagree with its shape).
fn buf_len(t: &Tensor) -> usize {
    match &t.buf {
        crate::tensor::TensorBuf::F32(v) => v.len(),
        crate::tensor::TensorBuf::I64(v) => v.len(),
    }
}

/// Drops scheduled nodes whose outputs nothing needs (after folding, some exist only to feed `Shape`).
fn live_steps(graph: &Graph, values: &[Option<PlannedValue>], steps: Vec<usize>) -> Vec<usize> {
    let is_act = |id: ValueId| is_activation(values, id);
    let mut needed = vec![false; values.len()];
    for &id in &graph.outputs {
        needed[id as usize] = is_act(id);
    }
    let mut keep = Vec::with_capacity(steps.len());
    for &ni in steps.iter().rev() {
        let node = &graph.nodes[ni];
        if node.outputs.iter().any(|&id| needed[id as usize]) {
            for &id in node.inputs.iter().flatten() {
                if is_act(id) {
                    needed[id as usize] = true;
                }
            }
            keep.push(ni);
        } else {
            log::debug!("node '{}' feeds nothing at run time; skipped", node_name(node, ni));
        }
    }
    keep.reverse();
    keep
}

/// True for ops whose output holds their first input's elements in the same order (only the shape
/// differs): on an activation they become views of the input's storage instead of run-time copies.
fn is_view_op(op: OpKind) -> bool {
    matches!(op, OpKind::Reshape | OpKind::Flatten | OpKind::Squeeze | OpKind::Unsqueeze | OpKind::Identity)
}

/// Removes the steps that merely reshape an activation; returns the remaining steps and, for each
/// removed output, the value whose storage it shares (the root of a chain of views).
fn fold_views(
    graph: &Graph,
    values: &[Option<PlannedValue>],
    steps: Vec<usize>,
) -> (Vec<usize>, HashMap<ValueId, ValueId>) {
    let mut views: HashMap<ValueId, ValueId> = HashMap::new();
    let mut kept = Vec::with_capacity(steps.len());
    for ni in steps {
        let node = &graph.nodes[ni];
        let source = node.inputs.first().copied().flatten().filter(|&id| is_activation(values, id));
        match source {
            Some(src) if is_view_op(node.op) && node.outputs.len() == 1 => {
                let root = views.get(&src).copied().unwrap_or(src);
                views.insert(node.outputs[0], root);
            }
            _ => kept.push(ni),
        }
    }
    (kept, views)
}

/// Removes the `Concat` steps whose inputs can be written straight into their place in the
/// output: a concatenation along an axis with nothing but ones before it (channels, at batch 1),
/// so that each input is one contiguous run of the output, where every input is an f32
/// activation computed by a step (not a graph input or output, not a view and viewed by none),
/// taken by no other such concatenation and starting at an aligned offset. Returns the remaining
/// steps and, for each input of a removed step, its output and the element offset it lies at.
/// (PP-OCRv4 det's neck concatenates four upsampled maps: 0.34 ms of copying at 320×640.)
fn fold_concats(
    graph: &Graph,
    values: &[Option<PlannedValue>],
    steps: Vec<usize>,
    views: &HashMap<ValueId, ValueId>,
) -> (Vec<usize>, HashMap<ValueId, (ValueId, usize)>) {
    let concats: Vec<usize> =
        steps.iter().copied().filter(|&ni| graph.nodes[ni].op == OpKind::Concat).collect();
    // How many concatenation inputs each value is: one that two take (or one twice) stays a copy.
    let mut taken: HashMap<ValueId, usize> = HashMap::new();
    for &ni in &concats {
        for &id in graph.nodes[ni].inputs.iter().flatten() {
            *taken.entry(id).or_default() += 1;
        }
    }
    let planned = |id: ValueId| values[id as usize].as_ref();
    let placeable = |id: ValueId| {
        is_activation(values, id)
            && planned(id).is_some_and(|v| v.elem == ElemType::F32)
            && taken.get(&id) == Some(&1)
            && !graph.inputs.contains(&id)
            && !graph.outputs.contains(&id)
            && !views.contains_key(&id)
            && !views.values().any(|&root| root == id)
    };
    let mut parts = HashMap::new();
    let mut removed = Vec::new();
    for ni in concats {
        let node = &graph.nodes[ni];
        let [out] = node.outputs[..] else { continue };
        let Some(shape) = planned(out).filter(|v| v.elem == ElemType::F32).map(|v| &v.shape) else {
            continue;
        };
        let Ok(axis) = crate::ops::attrs::int(node, "axis", 0) else { continue };
        let rank = shape.len() as i64;
        if !(-rank..rank).contains(&axis) || !is_activation(values, out) {
            continue;
        }
        let axis = if axis < 0 { axis + rank } else { axis } as usize;
        if shape[..axis].iter().product::<usize>() != 1 {
            continue;
        }
        let mut offset = 0;
        let mut places = Vec::with_capacity(node.inputs.len());
        for input in &node.inputs {
            match *input {
                Some(id) if placeable(id) && offset % ALIGN == 0 => {
                    places.push((id, offset));
                    offset += planned(id).map_or(0, PlannedValue::numel);
                }
                _ => break,
            }
        }
        if places.len() == node.inputs.len() && offset == shape.iter().product::<usize>() {
            parts.extend(places.into_iter().map(|(id, at)| (id, (out, at))));
            removed.push(ni);
        }
    }
    let steps = steps.into_iter().filter(|ni| !removed.contains(ni)).collect();
    (steps, parts)
}

/// True for run-time activations not yet placed.
fn is_activation(values: &[Option<PlannedValue>], id: ValueId) -> bool {
    matches!(values[id as usize].as_ref().map(|v| &v.slot), Some(Slot::Unused))
}

/// Gives every activation that run time touches an arena offset; views share their root's offset,
/// and the inputs of a folded concatenation (`parts`) lie inside its output's buffer. Returns the
/// arena length and the number of placed buffers.
fn place_activations(
    graph: &Graph,
    values: &mut [Option<PlannedValue>],
    steps: &[usize],
    views: &HashMap<ValueId, ValueId>,
    parts: &HashMap<ValueId, (ValueId, usize)>,
) -> (usize, usize) {
    // The buffer a value lives in and its element offset there.
    let storage = |id: ValueId| {
        let (mut id, mut at) = (views.get(&id).copied().unwrap_or(id), 0);
        while let Some(&(whole, offset)) = parts.get(&id) {
            (id, at) = (views.get(&whole).copied().unwrap_or(whole), at + offset);
        }
        (id, at)
    };
    let root = |id: ValueId| storage(id).0;
    // Lifetimes of storage roots in step positions, from the first step that writes any part of
    // one to the last that reads any. Graph inputs placed here are copied in before step 0; graph
    // outputs live to the end.
    let mut life: HashMap<ValueId, (usize, usize)> = HashMap::new();
    for (pos, &ni) in steps.iter().enumerate() {
        let node = &graph.nodes[ni];
        for &id in node.inputs.iter().flatten() {
            if is_activation(values, id) {
                let span = life.entry(root(id)).or_insert((0, pos));
                span.1 = span.1.max(pos);
            }
        }
        for &id in &node.outputs {
            let span = life.entry(root(id)).or_insert((pos, pos));
            span.1 = span.1.max(pos);
        }
    }
    for &id in &graph.outputs {
        if is_activation(values, id) {
            life.entry(root(id)).or_insert((0, 0)).1 = steps.len();
        }
    }
    // Inputs the steps read directly stay in the caller's tensors (one copy of a camera frame
    // fewer per run, and its size off the arena).
    for (k, &id) in graph.inputs.iter().enumerate() {
        let shared = views.values().any(|&r| r == id) || graph.outputs.contains(&id);
        if !shared && life.remove(&id).is_some() {
            if let Some(v) = values[id as usize].as_mut() {
                v.slot = Slot::Input(k);
            }
        }
    }
    let mut ids: Vec<ValueId> = life.keys().copied().collect();
    ids.sort_unstable();
    let blocks: Vec<Block> = ids
        .iter()
        .map(|id| {
            let (first, last) = life[id];
            let len = values[*id as usize].as_ref().map_or(0, PlannedValue::numel);
            Block { len, first, last }
        })
        .collect();
    let (offsets, arena_len) = arena::place(&blocks, ALIGN);
    log::debug!(
        "arena: {} floats hold {} buffers totalling {} floats",
        arena_len,
        blocks.len(),
        blocks.iter().map(|b| b.len).sum::<usize>()
    );
    let offset_of: HashMap<ValueId, usize> = ids.iter().copied().zip(offsets).collect();
    for (id, v) in values.iter_mut().enumerate() {
        let (root, at) = storage(id as ValueId);
        if let (Some(v), Some(&off)) = (v.as_mut(), offset_of.get(&root)) {
            v.slot = Slot::Arena(off + at);
        }
    }
    (arena_len, ids.len())
}
