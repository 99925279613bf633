//! Executing a [`Plan`]: the backend boundary and the CPU backend.
//!
//! A backend receives a finished plan (shapes, schedule, arena offsets) and the caller's inputs, and
//! returns the graph outputs. The CPU backend keeps every activation in one host arena; a GPU backend
//! would allocate the same layout in device memory and launch its own kernels per step.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pith_format::ir::{ElemType, Graph, ValueId};
use pith_kernels::{recycle, ThreadWork};

use crate::error::{OpError, Result, RuntimeError};
use crate::ops::{Arg, ArgData, ExecCtx, Op, Out};
use crate::plan::{node_error, ConstantFn, Plan, PlannedValue, Slot, ALIGN};
use crate::tensor::{Tensor, TensorBuf};

/// Everything a backend needs to run one inference.
pub struct Job<'a, 'c> {
    /// The model's graph.
    pub graph: &'a Graph,
    /// Constant lookup.
    pub constant: &'a ConstantFn<'c>,
    /// `ops[i]` runs `graph.nodes[i]`.
    pub ops: &'a [Box<dyn Op>],
    /// The plan for the inputs' shapes.
    pub plan: &'a Plan,
    /// The session's kernel set and worker threads.
    pub ctx: &'a ExecCtx,
}

/// Runs planned graphs.
pub trait Backend: Send + std::fmt::Debug {
    /// Short name for logs ("cpu").
    fn name(&self) -> &'static str;

    /// Runs `job` on `inputs` (one per graph input, shapes as planned) and writes the graph
    /// outputs, in graph order, into `outputs`: its first tensors are overwritten (their buffers
    /// reused where they are f32), more are added, and it is cut to the graph's output count. On
    /// an error `outputs` holds unspecified tensors.
    fn execute(
        &mut self,
        job: &Job<'_, '_>,
        inputs: GraphInputs<'_>,
        outputs: &mut Vec<Tensor>,
    ) -> Result<()>;

    /// Starts (clearing what was gathered) or stops timing every op of later runs.
    fn set_profiling(&mut self, on: bool) {
        let _ = on;
    }

    /// Time per operator kind over the runs since profiling was switched on, most expensive first;
    /// empty when profiling is off or the backend does not time ops.
    fn profile(&self) -> Vec<OpTime> {
        Vec::new()
    }

    /// Time per node (index into the job's graph, total over the profiled runs), in node order;
    /// empty when profiling is off or the backend does not time ops.
    fn node_profile(&self) -> Vec<(usize, Duration)> {
        Vec::new()
    }

    /// How the worker threads shared each node's jobs over the profiled runs (index into the
    /// job's graph), in node order; empty when profiling is off, on one thread, or when the
    /// backend does not count thread work.
    fn node_thread_work(&self) -> Vec<(usize, ThreadWork)> {
        Vec::new()
    }
}

/// The caller's input tensors in graph order: a view over the named list a caller gave, with each
/// graph input's position in it (no list is built per run).
#[derive(Debug, Clone, Copy)]
pub struct GraphInputs<'a> {
    given: &'a [(&'a str, Tensor)],
    order: &'a [usize],
}

impl<'a> GraphInputs<'a> {
    /// Graph input `k` is `given[order[k]].1`.
    pub fn new(given: &'a [(&'a str, Tensor)], order: &'a [usize]) -> GraphInputs<'a> {
        GraphInputs { given, order }
    }

    /// How many graph inputs the view holds.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Graph input `k`'s tensor, if `k` and its position are in range.
    pub fn get(&self, k: usize) -> Option<&'a Tensor> {
        self.given.get(*self.order.get(k)?).map(|(_, t)| t)
    }
}

/// Time spent in one operator kind (an activation fused into a convolution counts as the
/// convolution's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpTime {
    /// ONNX operator name.
    pub op: &'static str,
    /// Nodes executed (summed over runs).
    pub calls: usize,
    /// Wall time inside those nodes.
    pub total: Duration,
}

/// Time spent in one node over the profiled runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTime {
    /// Node name (ONNX), or `#<index>` when the node has none.
    pub name: String,
    /// ONNX operator name. A node that absorbed others (a Conv with a fused residual Add and
    /// activation) keeps its own op and name.
    pub op: &'static str,
    /// Name of the node's first output in the session's graph: for a node that absorbed others,
    /// the last absorbed node's output (so a profile line maps onto the ONNX graph).
    pub output: String,
    /// Wall time inside the node, summed over the runs.
    pub total: Duration,
    /// How the session's threads shared the node's split jobs over the runs (`None` on one
    /// thread): a node whose threads' busy times add up to much more than its one-thread time
    /// loses that much to splitting it.
    pub work: Option<ThreadWork>,
}

/// The CPU backend: one f32 arena for all activations, one scratch buffer shared by all ops
/// (a share per worker thread).
#[derive(Debug, Default)]
pub struct CpuBackend {
    arena: Vec<f32>,
    scratch: Vec<f32>,
    /// Per-op-kind (calls, time) while profiling.
    profile: Option<BTreeMap<&'static str, (usize, Duration)>>,
    /// Per-node time while profiling (grown to the graph's node count).
    node_times: Vec<Duration>,
    /// Per-node thread work while profiling (grown like `node_times`; empty on one thread).
    node_work: Vec<ThreadWork>,
    /// The steps' argument and output lists, empty between runs: kept for their capacity.
    args: Vec<Option<Arg<'static>>>,
    outs: Vec<Out<'static>>,
}

impl CpuBackend {
    /// A backend with no memory yet; buffers grow to the largest plan they run.
    pub fn new() -> CpuBackend {
        CpuBackend::default()
    }
}

/// Grows `buf` with zeros to at least `len` elements, reporting an allocation the system refuses
/// as [`RuntimeError::OutOfMemory`] instead of aborting the process.
fn grow_zeroed(buf: &mut Vec<f32>, len: usize, what: &'static str) -> Result<()> {
    if buf.len() < len {
        let bytes = len.saturating_mul(std::mem::size_of::<f32>());
        buf.try_reserve_exact(len - buf.len()).map_err(|_| RuntimeError::OutOfMemory { what, bytes })?;
        buf.resize(len, 0.0);
    }
    Ok(())
}

/// An arena whose element `offset` is aligned to [`ALIGN`] floats: raw pointers for disjoint borrows.
struct ArenaPtr {
    base: *mut f32,
    len: usize,
}

impl ArenaPtr {
    /// Borrows `arena`, growing it so `len` elements fit after an aligned base.
    fn new(arena: &mut Vec<f32>, len: usize) -> Result<ArenaPtr> {
        grow_zeroed(arena, len.saturating_add(ALIGN), "activation arena")?;
        let shift = arena.as_ptr().align_offset(ALIGN * std::mem::size_of::<f32>()).min(ALIGN);
        Ok(ArenaPtr {
            // SAFETY: `shift <= ALIGN` and the vector holds at least `len + ALIGN` elements.
            base: unsafe { arena.as_mut_ptr().add(shift) },
            len,
        })
    }

    /// The activation `v` stored at `offset`, shared.
    ///
    /// # Safety
    /// No mutable borrow of an overlapping range may be alive while the result is.
    unsafe fn get<'a>(&self, offset: usize, v: &PlannedValue) -> &'a [f32] {
        let n = v.numel();
        assert!(offset + n <= self.len, "activation outside the arena");
        // SAFETY: in bounds (checked above); aliasing is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.base.add(offset), n) }
    }

    /// The activation `v` stored at `offset`, exclusive.
    ///
    /// # Safety
    /// No other borrow of an overlapping range may be alive while the result is.
    #[allow(clippy::mut_from_ref)]
    unsafe fn get_mut<'a>(&self, offset: usize, v: &PlannedValue) -> &'a mut [f32] {
        let n = v.numel();
        assert!(offset + n <= self.len, "activation outside the arena");
        // SAFETY: in bounds (checked above); aliasing is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(offset), n) }
    }
}

/// The planned value `id`; the planner defines every value a step or output touches.
fn planned(plan: &Plan, id: ValueId) -> Result<&PlannedValue> {
    plan.values
        .get(id as usize)
        .and_then(Option::as_ref)
        .ok_or_else(|| RuntimeError::Graph(format!("value #{id} is not planned")))
}

/// Element ranges of the arena a step touches, for the disjointness check.
fn ranges_disjoint(outs: &[(usize, usize)], ins: &[(usize, usize)]) -> bool {
    let overlaps = |a: &(usize, usize), b: &(usize, usize)| a.0 < b.1 && b.0 < a.1;
    outs.iter()
        .enumerate()
        .all(|(i, o)| outs[i + 1..].iter().all(|p| !overlaps(o, p)) && ins.iter().all(|x| !overlaps(o, x)))
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(BTreeMap::new);
        self.node_times.clear();
        self.node_work.clear();
    }

    fn node_profile(&self) -> Vec<(usize, Duration)> {
        self.node_times.iter().copied().enumerate().collect()
    }

    fn node_thread_work(&self) -> Vec<(usize, ThreadWork)> {
        self.node_work.iter().cloned().enumerate().collect()
    }

    fn profile(&self) -> Vec<OpTime> {
        let mut out: Vec<OpTime> =
            self.profile.iter().flatten().map(|(&op, &(calls, total))| OpTime { op, calls, total }).collect();
        out.sort_by(|a, b| b.total.cmp(&a.total).then(a.op.cmp(b.op)));
        out
    }

    fn execute(
        &mut self,
        job: &Job<'_, '_>,
        inputs: GraphInputs<'_>,
        outputs: &mut Vec<Tensor>,
    ) -> Result<()> {
        let (graph, plan) = (job.graph, job.plan);
        if inputs.len() != graph.inputs.len() {
            return Err(RuntimeError::Graph(format!(
                "{} inputs given, the graph has {}",
                inputs.len(),
                graph.inputs.len()
            )));
        }
        // Ops plan scratch per worker thread; each worker gets its own share.
        let scratch_len = plan.scratch_len * job.ctx.threads();
        grow_zeroed(&mut self.scratch, scratch_len, "scratch")?;
        let arena = ArenaPtr::new(&mut self.arena, plan.arena_len)?;
        let ctx = job.ctx;

        // Graph inputs the steps read: checked, then copied into the arena where the plan put
        // them there, else read in place from `inputs` by the steps (`Slot::Input`).
        for (k, &id) in graph.inputs.iter().enumerate() {
            let t = inputs.get(k).ok_or_else(|| RuntimeError::Graph(format!("input #{id} not given")))?;
            let v = planned(plan, id)?;
            if !matches!(v.slot, Slot::Arena(_) | Slot::Input(_)) {
                continue;
            }
            let src = t.as_f32().ok_or_else(|| RuntimeError::Graph(format!("input #{id} is not f32")))?;
            if src.len() != v.numel() {
                return Err(RuntimeError::Graph("input does not match its plan".into()));
            }
            if let Slot::Arena(off) = v.slot {
                // SAFETY: no other arena borrow is alive during this copy.
                unsafe { arena.get_mut(off, v) }.copy_from_slice(src);
            }
        }

        // One argument list and one output list for every step, their capacity kept from run to
        // run: no allocation per node or per run.
        let mut args: Vec<Option<Arg<'_>>> = recycle(std::mem::take(&mut self.args));
        let mut outs: Vec<Out<'_>> = recycle(std::mem::take(&mut self.outs));
        for &ni in &plan.steps {
            let node = &graph.nodes[ni];
            // Arena ranges for the debug-build overlap check (empty, never allocated, in release).
            let mut in_ranges = Vec::new();
            args.clear();
            outs.clear();
            for input in &node.inputs {
                let Some(id) = *input else {
                    args.push(None);
                    continue;
                };
                let v = planned(plan, id)?;
                let data = match &v.slot {
                    Slot::Arena(off) => {
                        if cfg!(debug_assertions) {
                            in_ranges.push((*off, off + v.numel()));
                        }
                        // SAFETY: see the outputs below; inputs are only read.
                        ArgData::Act(unsafe { arena.get(*off, v) })
                    }
                    // Checked against its plan above.
                    Slot::Input(k) => {
                        ArgData::Act(inputs.get(*k).and_then(|t| t.as_f32()).ok_or_else(|| {
                            RuntimeError::Graph(format!("value #{id} is input {k} of {}", inputs.len()))
                        })?)
                    }
                    Slot::Known(t) => ArgData::Known(t),
                    Slot::Const => ArgData::Const((job.constant)(id).ok_or_else(|| {
                        RuntimeError::Graph(format!("constant #{id} vanished from the model"))
                    })?),
                    Slot::Unused => return Err(RuntimeError::Graph(format!("value #{id} has no storage"))),
                };
                args.push(Some(Arg { shape: &v.shape, elem: v.elem, data: Some(data) }));
            }
            let mut out_ranges = Vec::new();
            for &id in &node.outputs {
                let v = planned(plan, id)?;
                let Slot::Arena(off) = v.slot else {
                    return Err(RuntimeError::Graph(format!("output #{id} has no storage")));
                };
                if cfg!(debug_assertions) {
                    out_ranges.push((off, off + v.numel()));
                }
                // SAFETY: the planner gives each buffer a range of the arena that no buffer alive at the
                // same step shares (arena::place). A step's outputs are born at the step and its inputs
                // die no earlier, so both are alive together: outputs never overlap each other or any
                // input, and the shared input slices built above are only read. Reshaped views share
                // their source's range but are never a step's output (their steps are removed), and
                // their uses extend the source's lifetime. The inputs of a concatenation folded into
                // its output (plan::fold_concats) are disjoint ranges of that output, which no step
                // reads before the last of them is written. Checked below in debug builds.
                outs.push(Out { shape: &v.shape, data: unsafe { arena.get_mut(off, v) } });
            }
            debug_assert!(
                ranges_disjoint(&out_ranges, &in_ranges),
                "arena plan overlaps live values at node #{ni}"
            );
            let start = self.profile.is_some().then(Instant::now);
            let scratch = &mut self.scratch[..scratch_len];
            let layouts = plan.node_layouts.get(ni).copied().unwrap_or_default();
            match plan.prepared.get(ni).and_then(Option::as_deref) {
                Some(prepared) => job.ops[ni].run_prepared(prepared, &args, &mut outs, scratch, ctx, layouts),
                None if !layouts.all_planar() => {
                    job.ops[ni].run_laid_out(&args, &mut outs, scratch, ctx, layouts)
                }
                None => job.ops[ni].run(&args, &mut outs, scratch, ctx),
            }
            .map_err(|e| node_error(node, ni, e))?;
            if let (Some(start), Some(profile)) = (start, self.profile.as_mut()) {
                let took = start.elapsed();
                let entry = profile.entry(node.op.onnx_name()).or_default();
                entry.0 += 1;
                entry.1 += took;
                if self.node_times.len() <= ni {
                    self.node_times.resize(ni + 1, Duration::ZERO);
                }
                self.node_times[ni] += took;
                // The kernels count split jobs while profiling; taken per node, they say which
                // nodes lose time to splitting.
                if let Some(work) = job.ctx.kernels.take_thread_work() {
                    if self.node_work.len() <= ni {
                        self.node_work.resize(ni + 1, ThreadWork::default());
                    }
                    self.node_work[ni].add(&work);
                }
            }
        }

        self.args = recycle(args);
        self.outs = recycle(outs);
        outputs.truncate(graph.outputs.len());
        for (i, &id) in graph.outputs.iter().enumerate() {
            let v = planned(plan, id)?;
            let tensor = match &v.slot {
                // SAFETY: every step is done; no mutable arena borrow is alive.
                Slot::Arena(off) => {
                    copy_into(outputs, i, &v.shape, unsafe { arena.get(*off, v) });
                    continue;
                }
                Slot::Known(t) => t.clone(),
                Slot::Const => constant_tensor(job, id, v)?,
                Slot::Input(_) | Slot::Unused => {
                    return Err(RuntimeError::Graph(format!("output #{id} has no storage")))
                }
            };
            match outputs.get_mut(i) {
                Some(slot) => *slot = tensor,
                None => outputs.push(tensor),
            }
        }
        Ok(())
    }
}

/// Makes `outputs[i]` (added if `outputs` holds only `i` tensors) an f32 tensor of `shape` holding
/// `data`, reusing its buffers: no allocation when it already held as many elements.
fn copy_into(outputs: &mut Vec<Tensor>, i: usize, shape: &[usize], data: &[f32]) {
    if let Some(Tensor { shape: s, buf: TensorBuf::F32(v) }) = outputs.get_mut(i) {
        s.clear();
        s.extend_from_slice(shape);
        v.clear();
        v.extend_from_slice(data);
        return;
    }
    let tensor = Tensor::from_f32(shape.to_vec(), data.to_vec());
    match outputs.get_mut(i) {
        Some(slot) => *slot = tensor,
        None => outputs.push(tensor),
    }
}

/// A graph output that is a model constant, decoded into an owned tensor.
fn constant_tensor(job: &Job<'_, '_>, id: ValueId, v: &PlannedValue) -> Result<Tensor> {
    let arg = Arg { shape: &v.shape, elem: v.elem, data: (job.constant)(id).map(ArgData::Const) };
    let buf = match v.elem {
        ElemType::F32 => arg.f32s().map(|d| TensorBuf::F32(d.into_owned())),
        ElemType::I64 => arg.i64s().map(|d| TensorBuf::I64(d.into_owned())),
    }
    .map_err(|OpError(e)| RuntimeError::Graph(format!("constant output #{id}: {e}")))?;
    Ok(Tensor { shape: v.shape.clone(), buf })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_the_system_cannot_allocate_are_errors() {
        let mut buf = vec![1.0f32; 3];
        grow_zeroed(&mut buf, 5, "scratch").unwrap();
        assert_eq!(buf, [1.0, 1.0, 1.0, 0.0, 0.0]);
        // More bytes than the address space: refused by the allocator, reported, not aborted.
        let err = grow_zeroed(&mut buf, usize::MAX / 2, "activation arena").unwrap_err().to_string();
        assert!(err.starts_with("could not allocate") && err.ends_with("for the activation arena"), "{err}");
        assert_eq!(buf.len(), 5, "a failed growth leaves the buffer as it was");
    }

    #[test]
    fn disjointness_check_catches_overlaps() {
        assert!(ranges_disjoint(&[(0, 16), (16, 32)], &[(32, 40), (32, 40)]));
        assert!(!ranges_disjoint(&[(0, 16), (8, 32)], &[]), "outputs overlap");
        assert!(!ranges_disjoint(&[(0, 16)], &[(15, 20)]), "output overlaps an input");
        assert!(ranges_disjoint(&[(0, 0)], &[(0, 8)]), "empty ranges overlap nothing");
    }

    #[test]
    fn arena_base_is_aligned() {
        let mut v = Vec::new();
        let a = ArenaPtr::new(&mut v, 100).unwrap();
        assert_eq!(a.base as usize % (ALIGN * 4), 0);
        assert!(v.len() >= 100 + ALIGN);
    }
}
