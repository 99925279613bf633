//! Sessions: a model ready to run.
//!
//! [`Session::new`] parses every node into an op once. [`Session::plan`] (called by [`Session::run`]
//! whenever the input shapes change) resolves shapes, folds shape arithmetic and lays out the
//! activation arena; [`Session::run`] then executes only the remaining nodes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use pith_format::ir::{ElemType, Graph, Value};
use pith_format::PithFile;
use pith_kernels::{Activation, Kernels, ThreadWork};

use crate::cpu::FastCores;
use crate::error::{Result, RuntimeError};
use crate::exec::{Backend, CpuBackend, GraphInputs, Job, NodeTime, OpTime};
use crate::fuse::{self, Fused};
use crate::ops::{self, ExecCtx, Op};
pub use crate::plan::PlanSummary;
use crate::plan::{self, node_error, ConstantFn, Plan};
use crate::tensor::{Tensor, TensorBuf};
use crate::threads::{ThreadTuner, Way};

/// How a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// Worker threads ops may use (1 or 0 = run on the caller's thread; more start a pool once, at
    /// session creation); by default the physical cores this process may use, only the fast ones
    /// on CPUs with cores of several speeds ([`crate::default_threads`]). The kernel path is the
    /// best the CPU supports, or `PITH_KERNEL` (`scalar`, `avx2`, `avx512`, `neon`); an unknown or
    /// unsupported name fails `Session::new`. The outputs are the same bits at any thread count
    /// on one kernel path.
    pub threads: usize,
    /// Run 1×1 convolutions and 4-bit GEMVs on activations quantized to 8 bits on the fly and
    /// the CPU's int8 dot products (dynamic-range quantization, as TFLite's hybrid kernels):
    /// faster, with the error of 8-bit activations. On x86 without AVX-512 VNNI only the GEMVs
    /// take int8 (AVX2 `vpmaddubsw`); aarch64 needs dotprod, and `Session::new` fails naming
    /// the path without it.
    pub int8_activations: bool,
    /// Multiply the weights and inputs of 1×1 convolutions rounded to bf16 (8 significant bits),
    /// summed in f32, on the CPU's bf16 dot products (x86 AVX-512 BF16: Zen 4 and later, Xeon
    /// from Cooper Lake): about twice the multiply-adds per instruction of f32 on AMD Zen 4/5
    /// (on an Emerald Rapids Xeon a third of them: MobileNetV2 ran 1.6× slower), at a relative
    /// error of at most 2^-8 per factor: planar 1×1 layers, and channel-blocked ones whose input
    /// is blocked (those entering a blocked region keep f32). `Session::new` fails naming the
    /// kernel path on a CPU without them, and when `int8_activations` is set too.
    pub bf16_products: bool,
    /// Most bytes of activation memory a plan may need (the arena of intermediate values plus
    /// every thread's op scratch, as [`PlanSummary::arena_bytes`] counts it); planning for input
    /// shapes that need more fails with [`RuntimeError::MemoryLimit`] before anything is
    /// allocated. `None`: no limit beyond [`crate::tensor::MAX_TENSOR_ELEMENTS`] per tensor. The
    /// weights are mapped from the model file and not counted. A session keeps the largest
    /// buffers its plans needed, so this also bounds what it holds between runs (inputs and
    /// returned outputs aside).
    pub memory_limit: Option<usize>,
    /// Run chains of 1×1 and depthwise convolutions over small planes with their activations in
    /// the channel-blocked layout where the kernel path has blocked kernels (see
    /// [`crate::layout`]; AVX-512 today). On by default; off, every activation stays NCHW.
    pub blocked_layout: bool,
    /// With several threads, time runs on the threads and on the caller alone and run the faster
    /// way ([`crate::threads`]: on hosts where threads hand work over slowly, small models run
    /// faster on one thread); `threads` is then the most a run uses. On by default; off, every
    /// run splits its layers over the threads as their size warrants.
    pub tune_threads: bool,
    /// Run the portable reference kernels (the scalar path) whatever the CPU and `PITH_KERNEL`:
    /// much slower than the SIMD paths, but every sum is formed in the same order with the same
    /// roundings on every machine, so the outputs are the same bits on any CPU and architecture,
    /// at any thread count (`pith compress --reproducible` calibrates this way, and CI checks
    /// its files on x86-64 against aarch64). Off by default.
    pub portable_kernels: bool,
    /// On CPUs whose cores run at several speeds (phones' big.LITTLE, Intel's hybrid desktops:
    /// [`crate::cpu::fast_cpus`]), keep the worker threads on the fast cores, when `threads` is
    /// at most their count (ncnn's big-core binding): the OS otherwise may place a worker on a
    /// slow core, and a layer's split waits for it. Linux and Android, within the CPUs the
    /// process may use (never widening a `taskset` or cpuset); the caller's thread, which takes
    /// part in every run, is the app's and keeps its own. On by default; does nothing on
    /// machines whose cores are alike. Not timed: no phone has been at hand.
    pub pin_fast_cores: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            threads: crate::cpu::default_threads(),
            int8_activations: false,
            bf16_products: false,
            memory_limit: None,
            blocked_layout: true,
            tune_threads: true,
            portable_kernels: false,
            pin_fast_cores: true,
        }
    }
}

/// The CPUs a session's worker threads are kept to ([`SessionOptions::pin_fast_cores`]): this
/// machine's fast cores, when it has cores of several speeds and the session has more than one
/// thread but no more than the fast cores.
fn worker_cpus(options: &SessionOptions) -> Option<Arc<[usize]>> {
    worker_cpus_for(options, crate::cpu::this_machines_fast_cores())
}

/// [`worker_cpus`] on a machine whose fast cores are `fast`.
fn worker_cpus_for(options: &SessionOptions, fast: Option<&FastCores>) -> Option<Arc<[usize]>> {
    let fast =
        fast.filter(|f| options.pin_fast_cores && options.threads >= 2 && options.threads <= f.cores)?;
    Some(fast.cpus.as_slice().into())
}

/// A model loaded for inference, with its current plan and memory.
pub struct Session {
    model: Arc<PithFile>,
    engine: Engine,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("nodes", &self.engine.ops.len())
            .field("plan", &self.last_plan())
            .field("options", &self.engine.options)
            .finish()
    }
}

impl Session {
    /// Builds every op of `model`; an unsupported node or attribute fails here, naming the node.
    pub fn new(model: Arc<PithFile>, options: SessionOptions) -> Result<Session> {
        let engine = Engine::new(model.graph(), &|id| model.constant(id), options)?;
        Ok(Session { model, engine })
    }

    /// Starts (clearing earlier timings) or stops timing every op of later runs; see
    /// [`Session::profile`]. Timing costs two clock reads per node. While profiling, a session
    /// that tunes its threads runs every run the way it has settled on, without probing the
    /// other: a serial probe among threaded runs would blend one-thread times into every node's.
    pub fn set_profiling(&mut self, on: bool) {
        self.engine.set_profiling(on);
    }

    /// How the session's threads spent the jobs they shared over the runs since
    /// [`Session::set_profiling`]`(true)`, all nodes together (each node's share is in
    /// [`Session::node_profile`]); `None` on one thread. Counted only while profiling.
    pub fn thread_work(&self) -> Option<ThreadWork> {
        (self.engine.ctx.threads() > 1).then(|| {
            let mut total = ThreadWork::default();
            for (_, work) in self.engine.backend.node_thread_work() {
                total.add(&work);
            }
            total
        })
    }

    /// Time per operator kind over the runs since [`Session::set_profiling`]`(true)`, most
    /// expensive first (empty when profiling is off).
    pub fn profile(&self) -> Vec<OpTime> {
        self.engine.backend.profile()
    }

    /// Time per node of the session's (fused) graph over the runs since
    /// [`Session::set_profiling`]`(true)`, most expensive first (empty when profiling is off).
    pub fn node_profile(&self) -> Vec<NodeTime> {
        let graph = &self.engine.graph;
        let nodes = &graph.nodes;
        let backend = &self.engine.backend;
        let threaded = self.engine.ctx.threads() > 1;
        let work: BTreeMap<usize, ThreadWork> = backend.node_thread_work().into_iter().collect();
        let mut out: Vec<NodeTime> = backend
            .node_profile()
            .into_iter()
            .filter_map(|(i, total)| {
                let node = nodes.get(i)?;
                let name = if node.name.is_empty() { format!("#{i}") } else { node.name.clone() };
                let output = node.outputs.first().and_then(|&id| graph.values.get(id as usize));
                let output = output.map_or_else(String::new, |v| v.name.clone());
                let work = threaded.then(|| work.get(&i).cloned().unwrap_or_default());
                Some(NodeTime { name, op: node.op.onnx_name(), output, total, work })
            })
            .collect();
        out.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.name.cmp(&b.name)));
        out
    }

    /// The model.
    pub fn model(&self) -> &PithFile {
        &self.model
    }

    /// The graph inputs, in order.
    pub fn inputs(&self) -> Vec<&Value> {
        let g = self.model.graph();
        g.inputs.iter().map(|&id| &g.values[id as usize]).collect()
    }

    /// The graph outputs, in order.
    pub fn outputs(&self) -> Vec<&Value> {
        let g = self.model.graph();
        g.outputs.iter().map(|&id| &g.values[id as usize]).collect()
    }

    /// Plans for these input shapes (every input, by name) and keeps the plan for later runs.
    pub fn plan(&mut self, input_shapes: &[(&str, Vec<usize>)]) -> Result<PlanSummary> {
        let model = &*self.model;
        self.engine.plan(&|id| model.constant(id), input_shapes)
    }

    /// Runs the model on `inputs` (every graph input, by name) and returns the outputs in graph
    /// order. Re-plans first when the input shapes differ from the current plan's.
    pub fn run(&mut self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>> {
        let model = &*self.model;
        self.engine.run_named(&|id| model.constant(id), inputs)
    }

    /// [`Session::run`] for a loop over frames: writes the outputs, in graph order (as
    /// [`Session::outputs`] names them), into `outputs`, reusing its tensors' buffers (ONNX
    /// Runtime's bound outputs, TFLite's output tensors). Once `outputs` holds a run's results, a
    /// run with inputs of the same shapes allocates nothing, on one thread or several: the plan,
    /// the activation arena, the scratch and every op's prepared state are kept by the session,
    /// and the lists the kernels split work with by its threads (`tests/allocations.rs`; not yet
    /// with `int8_activations`, nor for every op: see the README). On an error `outputs` holds
    /// unspecified tensors.
    pub fn run_into(&mut self, inputs: &[(&str, Tensor)], outputs: &mut Vec<Tensor>) -> Result<()> {
        let model = &*self.model;
        self.engine.run(&|id| model.constant(id), inputs, outputs)
    }

    /// The CPU kernel path this session runs (`avx512`, `avx2`, `neon` or `scalar`): the best
    /// the CPU supports unless `PITH_KERNEL` chose another.
    pub fn kernel_path(&self) -> &'static str {
        self.engine.ctx.kernels.isa().name
    }

    /// How many runs went on the caller's thread alone because the session measured that faster
    /// ([`SessionOptions::tune_threads`]).
    pub fn serial_runs(&self) -> u64 {
        self.engine.serial_runs
    }

    /// The summary of the current plan, if any.
    pub fn last_plan(&self) -> Option<&PlanSummary> {
        self.engine.current().map(|p| &p.summary)
    }
}

/// How many plans (distinct input-shape sets) a session keeps; older ones are re-planned on demand.
const PLAN_CACHE: usize = 4;

/// A plan and how its runs use the threads (timed per plan: run times differ by input shape).
#[derive(Debug)]
struct CachedPlan {
    plan: Plan,
    tuner: ThreadTuner,
}

/// The model-independent part of a session: ops, plan and backend. It sees the model through a
/// graph and a constant lookup, so tests can drive it with in-memory models.
#[derive(Debug)]
struct Engine {
    /// The model's graph with activations fused into convolutions ([`crate::fuse`]); `ops[i]`
    /// runs `graph.nodes[i]`.
    graph: Graph,
    ops: Vec<Box<dyn Op>>,
    /// Recently used plans, the current one last.
    plans: Vec<CachedPlan>,
    /// Runs that went on the caller's thread alone by the thread tuner's choice.
    serial_runs: u64,
    /// Ops are being timed ([`Session::set_profiling`]): the thread tuner holds its way.
    profiling: bool,
    backend: Box<dyn Backend>,
    options: SessionOptions,
    /// Kernel path and worker pool, chosen once here and shared by every run.
    ctx: ExecCtx,
    /// Each graph input's position in the latest run's inputs (kept for its capacity).
    input_order: Vec<usize>,
}

impl Engine {
    fn new(graph: &Graph, constant: &ConstantFn<'_>, options: SessionOptions) -> Result<Engine> {
        Engine::with_fusion(graph, constant, options, true)
    }

    /// [`Engine::new`], fusing activations into convolutions only when `fuse` is set (tests
    /// compare both).
    fn with_fusion(
        graph: &Graph,
        constant: &ConstantFn<'_>,
        options: SessionOptions,
        fuse: bool,
    ) -> Result<Engine> {
        check_ids(graph)?;
        let Fused { graph, activations } = if fuse {
            fuse::fuse(graph, constant, !options.int8_activations)
        } else {
            Fused { graph: graph.clone(), activations: vec![Activation::None; graph.nodes.len()] }
        };
        let ops = graph
            .nodes
            .iter()
            .zip(activations)
            .enumerate()
            .map(|(i, (node, act))| ops::build_fused(node, act).map_err(|e| node_error(node, i, e)))
            .collect::<Result<Vec<_>>>()?;
        log::debug!("session: {} ops built", ops.len());
        if options.int8_activations && options.bf16_products {
            return Err(RuntimeError::Graph(
                "int8 activations and bf16 products are two precisions for the same 1×1 layers: choose one"
                    .into(),
            ));
        }
        let worker_cpus = worker_cpus(&options);
        let kernels = if options.portable_kernels {
            Kernels::with_isa_on_cpus(pith_kernels::Isa::scalar(), options.threads, worker_cpus)
        } else {
            pith_kernels::Isa::detect()
                .and_then(|isa| Kernels::with_isa_on_cpus(isa, options.threads, worker_cpus))
        };
        let kernels = kernels
            .and_then(|k| k.with_int8_activations(options.int8_activations))
            .and_then(|k| k.with_bf16_products(options.bf16_products))
            .map_err(|e| RuntimeError::Graph(format!("cannot set up CPU kernels: {e}")))?;
        log::debug!(
            "session: kernel path {}, {} thread(s), int8 activations {}, bf16 products {}",
            kernels.isa().name,
            kernels.threads(),
            kernels.int8_activations(),
            kernels.bf16_products()
        );
        let ctx = ExecCtx { kernels };
        let backend = Box::new(CpuBackend::new());
        Ok(Engine {
            graph,
            ops,
            plans: Vec::new(),
            serial_runs: 0,
            profiling: false,
            backend,
            options,
            ctx,
            input_order: Vec::new(),
        })
    }

    /// The plan of the latest successful `plan` or `run`.
    fn current(&self) -> Option<&Plan> {
        self.plans.last().map(|c| &c.plan)
    }

    /// Makes the plan for these shapes current, reusing a cached one when the shapes were seen.
    fn plan(
        &mut self,
        constant: &ConstantFn<'_>,
        input_shapes: &[(&str, Vec<usize>)],
    ) -> Result<PlanSummary> {
        let graph = &self.graph;
        let bound = plan::bind_inputs(graph, input_shapes)?;
        let cached = match self.plans.iter().position(|c| c.plan.input_shapes == bound.shapes) {
            Some(i) => self.plans.remove(i),
            None => {
                let mut plan = plan::plan(graph, constant, &self.ops, input_shapes)?;
                if self.options.blocked_layout {
                    crate::layout::assign(graph, constant, &self.ops, &mut plan, &self.ctx.kernels);
                }
                plan.summary.arena_bytes = plan.memory_bytes(self.ctx.threads());
                if let Some(limit) =
                    self.options.memory_limit.filter(|&limit| plan.summary.arena_bytes > limit)
                {
                    return Err(RuntimeError::MemoryLimit {
                        shapes: format!("{input_shapes:?}"),
                        needed: plan.summary.arena_bytes,
                        limit,
                    });
                }
                // Only for a plan that will run.
                plan::prepare(graph, constant, &self.ops, &mut plan, &self.ctx)?;
                CachedPlan { plan, tuner: ThreadTuner::default() }
            }
        };
        if self.plans.len() >= PLAN_CACHE {
            self.plans.remove(0);
        }
        let summary = cached.plan.summary;
        self.plans.push(cached);
        Ok(summary)
    }

    /// See [`Session::set_profiling`].
    fn set_profiling(&mut self, on: bool) {
        self.profiling = on;
        self.backend.set_profiling(on);
        self.ctx.kernels.count_thread_work(on);
        if on {
            // Counting starts from zero, as the op timings do.
            self.ctx.kernels.take_thread_work();
        }
    }

    /// [`Engine::run`] into new tensors, each with its output's name.
    fn run_named(
        &mut self,
        constant: &ConstantFn<'_>,
        inputs: &[(&str, Tensor)],
    ) -> Result<Vec<(String, Tensor)>> {
        let mut outputs = Vec::new();
        self.run(constant, inputs, &mut outputs)?;
        let graph = &self.graph;
        Ok(graph.outputs.iter().map(|&id| graph.values[id as usize].name.clone()).zip(outputs).collect())
    }

    /// Whether `inputs` are the current plan's: every graph input given once, by name, with the
    /// plan's shape (checked without allocating, as every run of a camera loop does).
    fn plan_fits(&self, inputs: &[(&str, Tensor)]) -> bool {
        let Some(plan) = self.current() else { return false };
        let graph = &self.graph;
        inputs.len() == graph.inputs.len()
            && graph.inputs.iter().zip(&plan.input_shapes).all(|(&id, shape)| {
                let name = &graph.values[id as usize].name;
                let mut given = inputs.iter().filter(|(n, _)| n == name);
                matches!((given.next(), given.next()), (Some((_, t)), None) if t.shape == *shape)
            })
    }

    fn run(
        &mut self,
        constant: &ConstantFn<'_>,
        inputs: &[(&str, Tensor)],
        outputs: &mut Vec<Tensor>,
    ) -> Result<()> {
        for (name, t) in inputs {
            check_tensor(&self.graph, name, t)?;
        }
        if !self.plan_fits(inputs) {
            let shapes: Vec<(&str, Vec<usize>)> = inputs.iter().map(|(n, t)| (*n, t.shape.clone())).collect();
            self.plan(constant, &shapes)?;
        }
        let graph = &self.graph;
        // Each graph input's place in `inputs` (bound by name above); the list keeps its capacity.
        self.input_order.clear();
        for &id in &graph.inputs {
            let name = &graph.values[id as usize].name;
            self.input_order.push(inputs.iter().position(|(n, _)| n == name).expect("bound above"));
        }
        let cached = self.plans.last_mut().expect("planned above");
        let plan = &cached.plan;
        let tune = self.options.tune_threads && self.ctx.threads() > 1;
        let way = match (tune, self.profiling) {
            (false, _) => Way::Threads,
            (true, false) => cached.tuner.next_way(),
            (true, true) => cached.tuner.settled_way(),
        };
        self.ctx.kernels.set_serial(way == Way::Serial);
        self.serial_runs += u64::from(way == Way::Serial);
        let job = Job { graph, constant, ops: &self.ops, plan, ctx: &self.ctx };
        let start = Instant::now();
        self.backend.execute(&job, GraphInputs::new(inputs, &self.input_order), outputs)?;
        if tune && !self.profiling {
            cached.tuner.record(way, start.elapsed());
        }
        Ok(())
    }
}

/// Refuses value ids outside the graph, so later indexing cannot fail.
fn check_ids(graph: &Graph) -> Result<()> {
    let n = graph.values.len();
    let nodes = graph.nodes.iter().flat_map(|node| node.inputs.iter().flatten().chain(&node.outputs));
    match graph.inputs.iter().chain(&graph.outputs).chain(nodes).find(|&&id| id as usize >= n) {
        Some(id) => {
            Err(RuntimeError::Graph(format!("value #{id} is referenced but the graph has {n} values")))
        }
        None => Ok(()),
    }
}

/// Checks a caller's tensor against the graph input it feeds (type and internal consistency).
fn check_tensor(graph: &Graph, name: &str, t: &Tensor) -> Result<()> {
    let err = |msg: String| RuntimeError::Input { name: name.to_string(), msg };
    let len = match &t.buf {
        TensorBuf::F32(v) => v.len(),
        TensorBuf::I64(v) => v.len(),
    };
    if len != t.numel() {
        return Err(err(format!("shape {:?} needs {} elements, the tensor holds {len}", t.shape, t.numel())));
    }
    let declared = graph.inputs.iter().map(|&id| &graph.values[id as usize]).find(|v| v.name == name);
    if let Some(v) = declared {
        if t.elem() != v.elem {
            return Err(err(format!("expected {} elements, got {}", elem_name(v.elem), elem_name(t.elem()))));
        }
    }
    Ok(())
}

fn elem_name(e: ElemType) -> &'static str {
    match e {
        ElemType::F32 => "f32",
        ElemType::I64 => "i64",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Slot;
    use crate::tensor::MAX_TENSOR_ELEMENTS;
    use pith_format::ir::{Attr, Constant, Dim, Model, Node, OpKind, TensorData, ValueId};

    #[test]
    fn workers_keep_to_the_fast_cores_when_the_session_fits_on_them() {
        // A phone with four big cores (CPUs 4-7) and four little ones.
        let big = FastCores { cores: 4, cpus: vec![4, 5, 6, 7] };
        let on = |threads, pin_fast_cores, fast: Option<&FastCores>| {
            let options = SessionOptions { threads, pin_fast_cores, ..Default::default() };
            worker_cpus_for(&options, fast).map(|c| c.to_vec())
        };
        assert_eq!(on(4, true, Some(&big)), Some(vec![4, 5, 6, 7]));
        assert_eq!(on(2, true, Some(&big)), Some(vec![4, 5, 6, 7]));
        // More threads than fast cores, one thread (no workers), pinning off, alike cores: the
        // OS places them.
        assert_eq!(on(5, true, Some(&big)), None);
        assert_eq!(on(1, true, Some(&big)), None);
        assert_eq!(on(4, false, Some(&big)), None);
        assert_eq!(on(4, true, None), None);
    }

    /// Builds graphs value by value.
    #[derive(Default)]
    struct Builder {
        model: Model,
    }

    impl Builder {
        fn value(&mut self, name: &str, elem: ElemType, shape: Option<Vec<Dim>>) -> ValueId {
            self.model.graph.values.push(Value { name: name.into(), elem, shape });
            (self.model.graph.values.len() - 1) as ValueId
        }

        fn input(&mut self, name: &str, dims: Vec<Dim>) -> ValueId {
            let id = self.value(name, ElemType::F32, Some(dims));
            self.model.graph.inputs.push(id);
            id
        }

        fn ints(&mut self, name: &str, v: &[i64]) -> ValueId {
            let id = self.value(name, ElemType::I64, Some(vec![Dim::Fixed(v.len() as u64)]));
            self.model.constants.push(Constant { value: id, data: TensorData::I64(v.to_vec()) });
            id
        }

        fn floats(&mut self, name: &str, shape: &[usize], v: Vec<f32>) -> ValueId {
            let dims = shape.iter().map(|&d| Dim::Fixed(d as u64)).collect();
            let id = self.value(name, ElemType::F32, Some(dims));
            self.model.constants.push(Constant { value: id, data: TensorData::F32(v) });
            id
        }

        fn node(
            &mut self,
            op: OpKind,
            inputs: &[ValueId],
            n_out: usize,
            attrs: Vec<(&str, Attr)>,
        ) -> Vec<ValueId> {
            let outputs: Vec<ValueId> = (0..n_out)
                .map(|k| {
                    let name = format!("{}_{}_{k}", op.onnx_name(), self.model.graph.nodes.len());
                    self.value(&name, ElemType::F32, None)
                })
                .collect();
            self.model.graph.nodes.push(Node {
                name: format!("{}{}", op.onnx_name(), self.model.graph.nodes.len()),
                op,
                inputs: inputs.iter().map(|&i| Some(i)).collect(),
                outputs: outputs.clone(),
                attrs: attrs.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            });
            outputs
        }

        fn output(&mut self, id: ValueId) {
            self.model.graph.outputs.push(id);
        }
    }

    /// A session-like driver over an in-memory model.
    struct Mem {
        model: Model,
        engine: Engine,
    }

    impl Mem {
        fn new(model: Model) -> Result<Mem> {
            Mem::with_fusion(model, true)
        }

        fn with_fusion(model: Model, fuse: bool) -> Result<Mem> {
            Mem::with_options(model, SessionOptions { threads: 1, ..SessionOptions::default() }, fuse)
        }

        fn with_options(model: Model, options: SessionOptions, fuse: bool) -> Result<Mem> {
            let consts = &model.constants;
            let lookup = |id| consts.iter().find(|c| c.value == id).map(|c| c.data.view());
            let engine = Engine::with_fusion(&model.graph, &lookup, options, fuse)?;
            Ok(Mem { model, engine })
        }

        fn run(&mut self, inputs: &[(&str, Tensor)]) -> Result<Vec<(String, Tensor)>> {
            let consts = &self.model.constants;
            let lookup = |id| consts.iter().find(|c| c.value == id).map(|c| c.data.view());
            self.engine.run_named(&lookup, inputs)
        }

        fn plan(&mut self, shapes: &[(&str, Vec<usize>)]) -> Result<PlanSummary> {
            let consts = &self.model.constants;
            let lookup = |id| consts.iter().find(|c| c.value == id).map(|c| c.data.view());
            self.engine.plan(&lookup, shapes)
        }
    }

    /// Runs `build()`'s model with and without fusion on input `x`, checks the runtime node
    /// counts `(fused, plain)` and that every output matches in name, shape and, within `rel`
    /// (relative to max(|plain|, 1)), value; returns the fused outputs.
    fn fused_matches_plain(
        build: impl Fn() -> Model,
        x: &Tensor,
        nodes: (usize, usize),
        rel: f32,
    ) -> Vec<(String, Tensor)> {
        let mut fused = Mem::with_fusion(build(), true).unwrap();
        let mut plain = Mem::with_fusion(build(), false).unwrap();
        let (a, b) = (fused.run(&[("x", x.clone())]).unwrap(), plain.run(&[("x", x.clone())]).unwrap());
        assert_eq!(fused.engine.current().unwrap().summary.runtime_nodes, nodes.0, "fused nodes");
        assert_eq!(plain.engine.current().unwrap().summary.runtime_nodes, nodes.1, "unfused nodes");
        // Every convolution, pool, resize, conv-transpose and pad step runs on what it prepared
        // for the plan.
        let prepares = |op: OpKind| {
            matches!(
                op,
                OpKind::Conv
                    | OpKind::MaxPool
                    | OpKind::AveragePool
                    | OpKind::Resize
                    | OpKind::ConvTranspose
                    | OpKind::Pad
            )
        };
        for engine in [&fused.engine, &plain.engine] {
            let plan = engine.current().unwrap();
            for &ni in &plan.steps {
                let prepared = plan.prepared.get(ni).is_some_and(Option::is_some);
                assert_eq!(prepared, prepares(engine.graph.nodes[ni].op), "node #{ni} prepared");
            }
        }
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!((na, &ta.shape), (nb, &tb.shape));
            for (p, q) in ta.as_f32().unwrap().iter().zip(tb.as_f32().unwrap()) {
                assert!((p - q).abs() <= rel * q.abs().max(1.0), "{na}: {p} vs {q}");
            }
        }
        a
    }

    fn sym(s: &str) -> Dim {
        Dim::Symbol(s.into())
    }

    fn iota(shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::from_f32(shape.to_vec(), (0..n).map(|i| i as f32).collect())
    }

    /// x[N,C,H,W] -> Transpose to NHWC -> Reshape to [N, H*W, C] using Shape/Gather/Concat arithmetic.
    fn nhwc_flatten_model() -> Model {
        let mut b = Builder::default();
        let x = b.input("x", vec![Dim::Fixed(1), Dim::Fixed(2), sym("H"), sym("W")]);
        let t = b.node(OpKind::Transpose, &[x], 1, vec![("perm", Attr::Ints(vec![0, 2, 3, 1]))])[0];
        let shape = b.node(OpKind::Shape, &[x], 1, vec![])[0];
        let idx_nc = b.ints("idx_nc", &[0, 1]);
        let nc = b.node(OpKind::Gather, &[shape, idx_nc], 1, vec![])[0];
        let (n, c) = {
            let parts = b.node(OpKind::Split, &[nc], 2, vec![]).into_iter().collect::<Vec<_>>();
            (parts[0], parts[1])
        };
        let minus_one = b.ints("minus_one", &[-1]);
        let target = b.node(OpKind::Concat, &[n, minus_one, c], 1, vec![("axis", Attr::Int(0))])[0];
        let y = b.node(OpKind::Reshape, &[t, target], 1, vec![])[0];
        b.output(y);
        b.model
    }

    fn nhwc_reference(x: &Tensor) -> Tensor {
        let (c, h, w) = (x.shape[1], x.shape[2], x.shape[3]);
        let d = x.as_f32().unwrap();
        let mut out = Vec::with_capacity(d.len());
        for i in 0..h * w {
            for ch in 0..c {
                out.push(d[ch * h * w + i]);
            }
        }
        Tensor::from_f32(vec![1, h * w, c], out)
    }

    /// `x[1, 3, 4, 4] -> Conv(w[4, 3, 1, 1], b[4])`, weights and bias stored as f16 or f32.
    fn conv_with_bias(half: bool) -> (Model, [ValueId; 2]) {
        let mut b = Builder::default();
        let x = b.input("x", vec![Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(4), Dim::Fixed(4)]);
        let w = b.floats("w", &[4, 3, 1, 1], (0..12).map(|i| i as f32 * 0.25 - 1.0).collect());
        let bias = b.floats("b", &[4], vec![0.5, -1.5, 2.0, 0.125]);
        if half {
            for c in &mut b.model.constants {
                if let TensorData::F32(v) = &c.data {
                    c.data = TensorData::F16(v.iter().map(|&x| half::f16::from_f32(x)).collect());
                }
            }
        }
        let y = b.node(OpKind::Conv, &[x, w, bias], 1, vec![])[0];
        b.output(y);
        (b.model, [w, bias])
    }

    #[test]
    fn a_tuned_session_times_runs_on_one_thread_and_computes_the_same() {
        let x = iota(&[1, 3, 4, 4]);
        let runs = crate::threads::CALIBRATION_RUNS as usize;
        let mut outputs = Vec::new();
        for (threads, tune) in [(2, true), (2, false), (1, true)] {
            let options = SessionOptions { threads, tune_threads: tune, ..Default::default() };
            let mut s = Mem::with_options(conv_with_bias(false).0, options, true).unwrap();
            for _ in 0..runs {
                outputs.push(s.run(&[("x", x.clone())]).unwrap()[0].1.clone());
            }
            // The calibration runs serial whatever the machine; without tuning or threads, none.
            let serial = s.engine.serial_runs;
            let least = if threads > 1 && tune { crate::threads::SAMPLES as u64 } else { 0 };
            let most = if threads > 1 && tune { runs as u64 } else { 0 };
            assert!((least..=most).contains(&serial), "{threads} threads, tuning {tune}: {serial} serial");
        }
        // A serial run, of the threads' plan, computes what the threads do (this conv sums in the
        // same order either way).
        assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn profiled_runs_keep_the_tuners_way_and_do_not_calibrate() {
        let x = iota(&[1, 3, 4, 4]);
        let options = SessionOptions { threads: 2, tune_threads: true, ..Default::default() };
        let mut s = Mem::with_options(conv_with_bias(false).0, options, true).unwrap();
        s.engine.set_profiling(true);
        for _ in 0..2 * crate::threads::CALIBRATION_RUNS {
            s.run(&[("x", x.clone())]).unwrap();
        }
        // Not yet calibrated, the tuner's way is the threads': no calibration or probe ran serial.
        assert_eq!(s.engine.serial_runs, 0);
        s.engine.set_profiling(false);
        for _ in 0..crate::threads::CALIBRATION_RUNS {
            s.run(&[("x", x.clone())]).unwrap();
        }
        assert!(
            s.engine.serial_runs >= crate::threads::SAMPLES as u64,
            "the calibration starts once profiling stops"
        );
    }

    #[test]
    fn f16_vector_constants_are_widened_once_and_weights_stay_stored() {
        let x = iota(&[1, 3, 4, 4]);
        let (model, [w, bias]) = conv_with_bias(true);
        let mut s = Mem::new(model).unwrap();
        let got = s.run(&[("x", x.clone())]).unwrap();
        let plan = s.engine.current().unwrap();
        let slot = |id: ValueId| plan.values[id as usize].as_ref().map(|v| v.slot.clone());
        assert!(
            matches!(slot(bias), Some(Slot::Known(t)) if t.as_f32() == Some(&[0.5, -1.5, 2.0, 0.125][..]))
        );
        assert!(matches!(slot(w), Some(Slot::Const)), "{:?}", slot(w));
        // The values are exact in f16, so the f32 model computes the same.
        let want = Mem::new(conv_with_bias(false).0).unwrap().run(&[("x", x)]).unwrap();
        assert_eq!(got[0].1.as_f32(), want[0].1.as_f32());
    }

    #[test]
    fn shape_arithmetic_folds_and_replans_on_new_shapes() {
        let mut s = Mem::new(nhwc_flatten_model()).unwrap();
        for (h, w) in [(3, 4), (5, 2), (3, 4)] {
            let x = iota(&[1, 2, h, w]);
            let out = s.run(&[("x", x.clone())]).unwrap();
            assert_eq!(out[0].1, nhwc_reference(&x), "{h}x{w}");
            let plan = s.engine.current().unwrap();
            assert_eq!(plan.summary.runtime_nodes, 1, "Transpose runs; Reshape is a view of its output");
            assert_eq!(plan.summary.folded_nodes, 4, "Shape, Gather, Split, Concat fold");
            assert_eq!(plan.input_shapes, vec![vec![1, 2, h, w]]);
        }
    }

    #[test]
    fn chain_reuses_the_arena() {
        // x -> Transpose -> Transpose -> Transpose -> Transpose: four activations in the arena (the
        // input is read in place), two alive at a time.
        let mut b = Builder::default();
        let x_id = b.input("x", vec![Dim::Fixed(4), Dim::Fixed(8)]);
        let mut v = x_id;
        for _ in 0..4 {
            v = b.node(OpKind::Transpose, &[v], 1, vec![])[0];
        }
        b.output(v);
        let mut s = Mem::new(b.model).unwrap();
        let summary = s.plan(&[("x", vec![4, 8])]).unwrap();
        let plan = s.engine.current().unwrap();
        let x_slot = &plan.values[x_id as usize].as_ref().unwrap().slot;
        assert!(matches!(x_slot, crate::plan::Slot::Input(0)), "{x_slot:?}");
        assert_eq!(summary.values, 4);
        assert_eq!(summary.runtime_nodes, 4);
        assert!(summary.arena_bytes < 5 * 32 * 4, "{summary:?}");
        assert_eq!(summary.arena_bytes, 2 * 32 * 4);
        let x = iota(&[4, 8]);
        assert_eq!(s.run(&[("x", x.clone())]).unwrap()[0].1, x);
    }

    #[test]
    fn outputs_that_are_inputs_constants_or_folded() {
        let mut b = Builder::default();
        let x = b.input("x", vec![sym("N")]);
        let k = b.ints("k", &[7, 8]);
        let shape = b.node(OpKind::Shape, &[x], 1, vec![])[0];
        b.output(x);
        b.output(k);
        b.output(shape);
        let mut s = Mem::new(b.model).unwrap();
        let x = iota(&[3]);
        let out = s.run(&[("x", x.clone())]).unwrap();
        let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x", "k", "Shape_0_0"]);
        assert_eq!(out[0].1, x);
        assert_eq!(out[1].1, Tensor::from_i64(vec![2], vec![7, 8]));
        assert_eq!(out[2].1, Tensor::from_i64(vec![1], vec![3]));
    }

    #[test]
    fn multi_output_and_dead_nodes() {
        // Split's second half is unused; a Transpose nothing reads is skipped.
        let mut b = Builder::default();
        let x = b.input("x", vec![Dim::Fixed(4)]);
        let parts = b.node(OpKind::Split, &[x], 2, vec![]);
        b.node(OpKind::Transpose, &[parts[1]], 1, vec![]);
        b.output(parts[0]);
        let mut s = Mem::new(b.model).unwrap();
        let out = s.run(&[("x", iota(&[4]))]).unwrap();
        assert_eq!(out[0].1, Tensor::from_f32(vec![2], vec![0.0, 1.0]));
        assert_eq!(s.engine.current().unwrap().summary.runtime_nodes, 1);
    }

    #[test]
    fn input_errors_name_the_input() {
        let mut s = Mem::new(nhwc_flatten_model()).unwrap();
        let msg = |r: Result<Vec<(String, Tensor)>>| match r {
            Err(RuntimeError::Input { name, msg }) => format!("{name}: {msg}"),
            other => panic!("expected an input error, got {other:?}"),
        };
        let bad_rank = msg(s.run(&[("x", iota(&[2, 3, 4]))]));
        assert!(bad_rank.contains("x: expected shape [1, 2, H, W]"), "{bad_rank}");
        let bad_fixed = msg(s.run(&[("x", iota(&[1, 3, 4, 4]))]));
        assert!(bad_fixed.contains("got [1, 3, 4, 4]"), "{bad_fixed}");
        assert!(msg(s.run(&[])).contains("x: missing"));
        let unknown = msg(s.run(&[("x", iota(&[1, 2, 2, 2])), ("y", iota(&[1]))]));
        assert!(unknown.starts_with("y: not an input"), "{unknown}");
        let ints = Tensor::from_i64(vec![1, 2, 1, 1], vec![1, 2]);
        assert!(msg(s.run(&[("x", ints)])).contains("expected f32 elements, got i64"));
        let broken = Tensor { shape: vec![1, 2, 2, 2], buf: TensorBuf::F32(vec![0.0; 3]) };
        assert!(msg(s.run(&[("x", broken)])).contains("holds 3"));
        // A good run still works after the failures.
        assert!(s.run(&[("x", iota(&[1, 2, 2, 2]))]).is_ok());
    }

    #[test]
    fn symbols_must_agree_across_inputs() {
        let mut b = Builder::default();
        let x = b.input("x", vec![sym("N"), Dim::Fixed(2)]);
        let y = b.input("y", vec![sym("N"), Dim::Fixed(3)]);
        let c = b.node(OpKind::Concat, &[x, y], 1, vec![("axis", Attr::Int(1))])[0];
        b.output(c);
        let mut s = Mem::new(b.model).unwrap();
        let err = s.plan(&[("x", vec![4, 2]), ("y", vec![5, 3])]).unwrap_err();
        assert!(err.to_string().contains("'N' is 5 here but 4"), "{err}");
        let out = s.run(&[("y", iota(&[1, 3])), ("x", iota(&[1, 2]))]).unwrap();
        assert_eq!(out[0].1, Tensor::from_f32(vec![1, 5], vec![0.0, 1.0, 0.0, 1.0, 2.0]));
    }

    #[test]
    fn integer_results_of_run_time_data_are_refused() {
        // Cast of an activation to int64 cannot be known at plan time.
        let mut b = Builder::default();
        let x = b.input("x", vec![Dim::Fixed(2)]);
        let c = b.node(OpKind::Cast, &[x], 1, vec![("to", Attr::Int(7))])[0];
        b.output(c);
        let mut s = Mem::new(b.model).unwrap();
        let err = s.plan(&[("x", vec![2])]).unwrap_err().to_string();
        assert!(err.contains("Cast") && err.contains("depends on run-time data"), "{err}");
        assert!(s.engine.current().is_none());
    }

    #[test]
    fn outputs_past_the_tensor_limit_are_refused_before_allocating() {
        // A 4×4 image resized 65536× per side: 2^36 elements, 256 GiB of f32.
        let mut b = Builder::default();
        let x = b.input("x", vec![Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(4), Dim::Fixed(4)]);
        let scales = b.floats("scales", &[4], vec![1.0, 1.0, 65536.0, 65536.0]);
        let y = b.node(OpKind::Resize, &[x, scales], 1, vec![])[0];
        b.output(y);
        let mut s = Mem::new(b.model).unwrap();
        let err = s.run(&[("x", iota(&[1, 1, 4, 4]))]).unwrap_err().to_string();
        assert!(err.contains("Resize") && err.contains("[1, 1, 262144, 262144]"), "{err}");
        assert!(err.contains(&format!("limit of {MAX_TENSOR_ELEMENTS} elements")), "{err}");
        // An input shape past the limit, planned without data (as `pith bench` does).
        let mut b = Builder::default();
        let x = b.input("x", vec![sym("N"), Dim::Fixed(2)]);
        let y = b.node(OpKind::Relu, &[x], 1, vec![])[0];
        b.output(y);
        let mut s = Mem::new(b.model).unwrap();
        let err = s.plan(&[("x", vec![1 << 40, 2])]).unwrap_err().to_string();
        assert!(err.starts_with("input 'x': shape [1099511627776, 2] exceeds the limit"), "{err}");
    }

    #[test]
    fn op_errors_name_the_node() {
        let mut b = Builder::default();
        let x = b.input("x", vec![Dim::Fixed(6)]);
        let bad = b.ints("bad", &[4, -1, 5]);
        let y = b.node(OpKind::Reshape, &[x, bad], 1, vec![])[0];
        b.output(y);
        let mut s = Mem::new(b.model).unwrap();
        match s.plan(&[("x", vec![6])]) {
            Err(RuntimeError::Node { node, op, msg }) => {
                assert_eq!((node.as_str(), op), ("Reshape0", "Reshape"));
                assert!(msg.contains("cannot reshape"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        // Build-time errors name the node too.
        let mut b = Builder::default();
        let x = b.input("x", vec![Dim::Fixed(6)]);
        b.node(OpKind::Cast, &[x], 1, vec![("to", Attr::Int(8))]);
        let err = Mem::new(b.model).err().expect("STRING cast is refused");
        assert!(matches!(err, RuntimeError::Node { op: "Cast", .. }), "{err}");
    }

    #[test]
    fn declared_output_shapes_are_checked() {
        let mut b = Builder::default();
        let x = b.input("x", vec![sym("N")]);
        let y = b.node(OpKind::Identity, &[x], 1, vec![])[0];
        b.model.graph.values[y as usize].shape = Some(vec![Dim::Fixed(3)]);
        b.output(y);
        let mut s = Mem::new(b.model).unwrap();
        assert!(s.plan(&[("x", vec![3])]).is_ok());
        let err = s.plan(&[("x", vec![4])]).unwrap_err().to_string();
        assert!(err.contains("output 'Identity_0_0'"), "{err}");
    }

    #[test]
    fn inputs_read_only_by_shape_take_no_arena() {
        let mut b = Builder::default();
        let x = b.input("x", vec![sym("N"), sym("M")]);
        let shape = b.node(OpKind::Shape, &[x], 1, vec![])[0];
        b.output(shape);
        let mut s = Mem::new(b.model).unwrap();
        let out = s.run(&[("x", iota(&[3, 5]))]).unwrap();
        assert_eq!(out[0].1, Tensor::from_i64(vec![2], vec![3, 5]));
        let summary = s.engine.current().unwrap().summary;
        assert_eq!((summary.values, summary.runtime_nodes, summary.arena_bytes), (0, 0, 0));
    }

    #[test]
    fn plans_are_cached_per_shape_set() {
        let mut s = Mem::new(nhwc_flatten_model()).unwrap();
        for (h, w) in [(2, 2), (3, 3), (2, 2), (4, 1), (5, 1), (6, 1), (2, 2)] {
            s.run(&[("x", iota(&[1, 2, h, w]))]).unwrap();
            assert_eq!(s.engine.current().unwrap().input_shapes, vec![vec![1, 2, h, w]]);
            assert!(s.engine.plans.len() <= PLAN_CACHE);
        }
        let cached: Vec<usize> = s.engine.plans.iter().map(|c| c.plan.input_shapes[0][2]).collect();
        assert_eq!(cached, vec![4, 5, 6, 2], "least recently used first");
    }

    #[test]
    fn out_of_range_value_ids_are_refused() {
        let mut b = Builder::default();
        let x = b.input("x", vec![Dim::Fixed(1)]);
        b.node(OpKind::Identity, &[x], 1, vec![]);
        b.model.graph.nodes[0].inputs[0] = Some(99);
        let err = Mem::new(b.model).err().expect("bad id");
        assert!(err.to_string().contains("value #99"), "{err}");
    }

    #[test]
    fn reshaped_views_share_storage_and_keep_their_source_alive() {
        // a = T(x); v = Identity(a) (a view); b = T(a); c = Concat(b, v): a must outlive b's step.
        let mut b = Builder::default();
        let x = b.input("x", vec![Dim::Fixed(4), Dim::Fixed(4)]);
        let a = b.node(OpKind::Transpose, &[x], 1, vec![])[0];
        let v = b.node(OpKind::Identity, &[a], 1, vec![])[0];
        let t = b.node(OpKind::Transpose, &[a], 1, vec![])[0];
        let c = b.node(OpKind::Concat, &[t, v], 1, vec![("axis", Attr::Int(0))])[0];
        let flat = b.node(OpKind::Flatten, &[x], 1, vec![("axis", Attr::Int(0))])[0];
        b.output(c);
        b.output(flat);
        let mut s = Mem::new(b.model).unwrap();
        let x_id = x;
        let x = iota(&[4, 4]);
        let out = s.run(&[("x", x.clone())]).unwrap();
        let d = x.as_f32().unwrap();
        let xt: Vec<f32> = (0..16).map(|i| d[(i % 4) * 4 + i / 4]).collect();
        assert_eq!(out[0].1, Tensor::from_f32(vec![8, 4], [d, &xt[..]].concat()));
        assert_eq!(out[1].1, Tensor::from_f32(vec![1, 16], d.to_vec()), "a view of the input");
        let plan = s.engine.current().unwrap();
        assert_eq!(plan.summary.runtime_nodes, 3, "Identity and Flatten do not run");
        let slot = |id: ValueId| match plan.values[id as usize].as_ref().unwrap().slot {
            crate::plan::Slot::Arena(off) => off,
            ref other => panic!("{other:?}"),
        };
        assert_eq!(slot(v), slot(a));
        assert_eq!(slot(flat), slot(x_id));
    }

    #[test]
    fn an_add_fuses_into_the_elementwise_op_before_it_only_when_that_op_feeds_it_alone() {
        // y = relu(x * x + t) runs as one Mul node (the Add and the Relu taken in). In
        // z = d + d * t with d = x - t, the Add cannot take the Sub, whose d the Mul reads too,
        // but it takes the Mul: d * t + d.
        let mut b = Builder::default();
        let dims = vec![Dim::Fixed(2), Dim::Fixed(3)];
        let x = b.input("x", dims.clone());
        let t = b.input("t", dims);
        let m = b.node(OpKind::Mul, &[x, x], 1, vec![])[0];
        let a = b.node(OpKind::Add, &[m, t], 1, vec![])[0];
        let y = b.node(OpKind::Relu, &[a], 1, vec![])[0];
        let d = b.node(OpKind::Sub, &[x, t], 1, vec![])[0];
        let p = b.node(OpKind::Mul, &[d, t], 1, vec![])[0];
        let z = b.node(OpKind::Add, &[d, p], 1, vec![])[0];
        b.output(y);
        b.output(z);
        let mut s = Mem::new(b.model).unwrap();
        let xs: Vec<f32> = (0..6).map(|i| i as f32 - 2.5).collect();
        let ts: Vec<f32> = (0..6).map(|i| 1.5 - i as f32 * 0.75).collect();
        let out = s
            .run(&[
                ("x", Tensor::from_f32(vec![2, 3], xs.clone())),
                ("t", Tensor::from_f32(vec![2, 3], ts.clone())),
            ])
            .unwrap();
        let want_y: Vec<f32> = xs.iter().zip(&ts).map(|(x, t)| (x * x + t).max(0.0)).collect();
        let want_z: Vec<f32> = xs.iter().zip(&ts).map(|(x, t)| (x - t) + (x - t) * t).collect();
        assert_eq!(out[0].1.as_f32().unwrap(), &want_y[..]);
        assert_eq!(out[1].1.as_f32().unwrap(), &want_z[..]);
        let plan = s.engine.current().unwrap();
        assert_eq!(plan.summary.runtime_nodes, 3, "Mul(+Add+Relu), Sub, Mul(+Add)");
    }

    #[test]
    fn channel_concatenations_are_written_in_place_where_their_inputs_allow() {
        // c = Concat(relu(x), sigmoid(relu(x))) on channels: both inputs are written straight into
        // c (the step is gone), the second reading the first inside c. d concatenates along rows
        // (two runs per input: a copy); e takes an input that e2 takes too (copies).
        let mut b = Builder::default();
        let x = b.input("x", vec![Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(4), Dim::Fixed(4)]);
        let r = b.node(OpKind::Relu, &[x], 1, vec![])[0];
        let g = b.node(OpKind::Sigmoid, &[r], 1, vec![])[0];
        let c = b.node(OpKind::Concat, &[r, g], 1, vec![("axis", Attr::Int(1))])[0];
        let t = b.node(OpKind::Tanh, &[x], 1, vec![])[0];
        let n = b.node(OpKind::HardSigmoid, &[x], 1, vec![])[0];
        let d = b.node(OpKind::Concat, &[t, n], 1, vec![("axis", Attr::Int(-2))])[0];
        let h = b.node(OpKind::HardSwish, &[x], 1, vec![])[0];
        let e = b.node(OpKind::Concat, &[h, h], 1, vec![("axis", Attr::Int(0))])[0];
        for out in [c, d, e] {
            b.output(out);
        }
        let mut s = Mem::new(b.model).unwrap();
        let x_t = Tensor::from_f32(vec![1, 2, 4, 4], (0..32).map(|i| i as f32 / 4.0 - 3.0).collect());
        let out = s.run(&[("x", x_t.clone())]).unwrap();
        let xs = x_t.as_f32().unwrap();
        let relu: Vec<f32> = xs.iter().map(|v| v.max(0.0)).collect();
        let sig: Vec<f32> = relu.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
        let got = out[0].1.as_f32().unwrap();
        assert_eq!(out[0].1.shape, vec![1, 4, 4, 4]);
        assert_eq!(&got[..32], &relu[..]);
        for (g, w) in got[32..].iter().zip(&sig) {
            assert!((g - w).abs() <= 1e-6, "{g} vs {w}");
        }
        let (tanh, neg): (Vec<f32>, Vec<f32>) =
            xs.iter().map(|v| (v.tanh(), (0.2 * v + 0.5).clamp(0.0, 1.0))).unzip();
        let rows = |v: &[f32], c: usize| v[c * 16..c * 16 + 16].to_vec();
        let want_d = [rows(&tanh, 0), rows(&neg, 0), rows(&tanh, 1), rows(&neg, 1)].concat();
        for (g, w) in out[1].1.as_f32().unwrap().iter().zip(&want_d) {
            assert!((g - w).abs() <= 1e-6, "{g} vs {w}");
        }
        let swish: Vec<f32> = xs.iter().map(|v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0).collect();
        for (g, w) in out[2].1.as_f32().unwrap().iter().zip(swish.iter().chain(&swish)) {
            assert!((g - w).abs() <= 1e-6, "{g} vs {w}");
        }
        let plan = s.engine.current().unwrap();
        assert_eq!(plan.summary.runtime_nodes, 7, "only the channel concatenation is folded");
        let slot = |id: ValueId| match plan.values[id as usize].as_ref().unwrap().slot {
            crate::plan::Slot::Arena(off) => off,
            ref other => panic!("{other:?}"),
        };
        assert_eq!(slot(r), slot(c));
        assert_eq!(slot(g), slot(c) + 32);
        assert!(slot(t) + 32 <= slot(d) || slot(d) + 64 <= slot(t), "a row concatenation copies");
    }

    /// A 3×3 convolution 4 -> 8 channels over an input of any height and width.
    fn small_conv_model() -> Model {
        let mut b = Builder::default();
        let x = b
            .input("x", vec![Dim::Fixed(1), Dim::Fixed(4), Dim::Symbol("h".into()), Dim::Symbol("w".into())]);
        let w = b.value("w", ElemType::F32, Some([8, 4, 3, 3].map(Dim::Fixed).to_vec()));
        let wdata = (0..8 * 4 * 9).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        b.model.constants.push(Constant { value: w, data: TensorData::F32(wdata) });
        let pads = ("pads", Attr::Ints(vec![1, 1, 1, 1]));
        let y = b.node(OpKind::Conv, &[x, w], 1, vec![pads])[0];
        b.output(y);
        b.model
    }

    #[test]
    fn memory_limit_refuses_plans_that_need_more() {
        let model = small_conv_model();
        let with = |threads, memory_limit| {
            let options = SessionOptions { threads, memory_limit, ..Default::default() };
            Mem { model: model.clone(), engine: Engine::new(&model.graph, &|_| None, options).unwrap() }
        };
        let small = vec![1, 4, 8, 8];
        let large = vec![1, 4, 64, 64];
        let need_small = with(1, None).plan(&[("x", small.clone())]).unwrap().arena_bytes;
        let need_large = with(1, None).plan(&[("x", large.clone())]).unwrap().arena_bytes;
        assert!(need_large > need_small, "{need_large} vs {need_small}");
        // Every thread's scratch counts: the op scratch of a convolution is per thread.
        let need_large_3 = with(3, None).plan(&[("x", large.clone())]).unwrap().arena_bytes;
        assert!(need_large_3 > need_large, "{need_large_3} vs {need_large}");

        let mut s = with(1, Some(need_large - 1));
        match s.plan(&[("x", large.clone())]) {
            Err(e @ RuntimeError::MemoryLimit { needed, limit, .. }) => {
                assert_eq!((needed, limit), (need_large, need_large - 1));
                assert!(e.to_string().contains("64, 64"), "names the shapes: {e}");
            }
            other => panic!("expected a memory-limit error, got {other:?}"),
        }
        assert!(s.engine.current().is_none(), "a refused plan is not kept");
        // Smaller inputs still plan and run; the limit is inclusive.
        let x = iota(&small);
        assert_eq!(s.run(&[("x", x.clone())]).unwrap(), with(1, None).run(&[("x", x)]).unwrap());
        assert!(with(1, Some(need_large)).plan(&[("x", large.clone())]).is_ok());
        let err = with(3, Some(need_large)).plan(&[("x", large)]).unwrap_err();
        assert!(matches!(err, RuntimeError::MemoryLimit { .. }), "{err}");
    }

    #[test]
    fn worker_threads_give_the_same_results() {
        // Conv 16 -> 24 channels, 3x3, padded: big enough that output channels are split.
        let mut b = Builder::default();
        let x = b.input("x", vec![Dim::Fixed(1), Dim::Fixed(16), Dim::Fixed(32), Dim::Fixed(32)]);
        let w = b.value("w", ElemType::F32, Some([24, 16, 3, 3].map(Dim::Fixed).to_vec()));
        let wdata = (0..24 * 16 * 9).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        b.model.constants.push(Constant { value: w, data: TensorData::F32(wdata) });
        let pads = ("pads", Attr::Ints(vec![1, 1, 1, 1]));
        let y = b.node(OpKind::Conv, &[x, w], 1, vec![pads])[0];
        b.output(y);
        let model = b.model;
        let input = iota(&[1, 16, 32, 32]);
        let mut outs = Vec::new();
        for threads in [1, 3] {
            let engine =
                Engine::new(&model.graph, &|_| None, SessionOptions { threads, ..Default::default() })
                    .unwrap();
            assert_eq!(engine.ctx.threads(), threads);
            let mut mem = Mem { model: model.clone(), engine };
            outs.push(mem.run(&[("x", input.clone())]).unwrap());
        }
        assert_eq!(outs[0], outs[1]);
    }

    #[test]
    fn activations_fuse_into_convolutions_without_changing_results() {
        let build = || {
            let mut b = Builder::default();
            let x = b.input("x", [1, 2, 5, 5].iter().map(|&d| Dim::Fixed(d)).collect());
            let w =
                b.floats("w", &[3, 2, 3, 3], (0..54).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect());
            let w2 = b.floats("w2", &[3, 3, 1, 1], vec![0.5, -1.0, 0.25, 1.5, 0.1, -0.3, -0.7, 0.9, 0.2]);
            let (lo, hi) = (b.floats("lo", &[], vec![-0.5]), b.floats("hi", &[], vec![2.0]));
            let y = b.node(OpKind::Conv, &[x, w], 1, vec![("pads", Attr::Ints(vec![1; 4]))])[0];
            let z = b.node(OpKind::Relu, &[y], 1, vec![])[0]; // fuses
            let u = b.node(OpKind::Conv, &[z, w2], 1, vec![])[0];
            let v = b.node(OpKind::Clip, &[u, lo, hi], 1, vec![])[0]; // fuses, output is a graph output
            let t = b.node(OpKind::Conv, &[v, w2], 1, vec![])[0];
            let s = b.node(OpKind::Sigmoid, &[t], 1, vec![])[0]; // t is a graph output: no fusion
            let r = b.node(OpKind::Relu, &[s], 1, vec![])[0]; // not after a conv: no fusion
            for o in [v, t, r] {
                b.output(o);
            }
            b.model
        };
        let x =
            Tensor::from_f32(vec![1, 2, 5, 5], (0..50).map(|i| ((i * 13 % 17) as f32 - 8.0) / 3.0).collect());
        let a = fused_matches_plain(build, &x, (5, 7), 1e-6);
        assert_eq!(a.len(), 3);
        // The clip bounds actually applied: some outputs sit exactly on them.
        let v = a[0].1.as_f32().unwrap();
        assert!(v.iter().all(|&e| (-0.5..=2.0).contains(&e)) && v.contains(&2.0), "{v:?}");
    }

    #[test]
    fn scalar_affine_steps_fuse_after_a_hard_swish() {
        // Conv → HardSwish → Mul(scalar, y) → Add(y, scalar): one conv; a Mul by a per-channel
        // constant after the next HardSwish stays a node.
        let build = || {
            let mut b = Builder::default();
            let x = b.input("x", [1, 2, 4, 5].iter().map(|&d| Dim::Fixed(d)).collect());
            let w = b.floats("w", &[2, 2, 1, 1], vec![1.5, -0.5, 0.25, 2.0]);
            let (scale, shift) = (b.floats("scale", &[1], vec![0.75]), b.floats("shift", &[1], vec![-0.3]));
            let chan = b.floats("chan", &[1, 2, 1, 1], vec![2.0, -1.0]);
            let y = b.node(OpKind::Conv, &[x, w], 1, vec![])[0];
            let h = b.node(OpKind::HardSwish, &[y], 1, vec![])[0]; // fuses
            let m = b.node(OpKind::Mul, &[scale, h], 1, vec![])[0]; // fuses (scalar first)
            let a = b.node(OpKind::Add, &[m, shift], 1, vec![])[0]; // fuses
            let y2 = b.node(OpKind::Conv, &[a, w], 1, vec![])[0];
            let h2 = b.node(OpKind::HardSwish, &[y2], 1, vec![])[0]; // fuses
            let c = b.node(OpKind::Mul, &[h2, chan], 1, vec![])[0]; // not a scalar: stays
            b.output(c);
            b.model
        };
        let x =
            Tensor::from_f32(vec![1, 2, 4, 5], (0..40).map(|i| ((i * 13 % 17) as f32 - 8.0) / 2.0).collect());
        fused_matches_plain(build, &x, (3, 7), 1e-6);
    }

    #[test]
    fn a_gated_residual_becomes_one_mul() {
        // y + y * HardSigmoid(Conv(GlobalAveragePool(y))): the Add folds into the Mul, the + 1
        // into the gate conv's epilogue.
        let build = |x_first: bool| {
            let mut b = Builder::default();
            let x = b.input("x", [1, 2, 3, 4].iter().map(|&d| Dim::Fixed(d)).collect());
            let w = b.floats("w", &[2, 2, 1, 1], vec![1.5, -0.5, 0.25, 2.0]);
            let y = b.node(OpKind::Conv, &[x, w], 1, vec![])[0];
            let g = b.node(OpKind::GlobalAveragePool, &[y], 1, vec![])[0];
            let t = b.node(OpKind::Conv, &[g, w], 1, vec![])[0];
            let attrs = vec![("alpha", Attr::Float(0.2)), ("beta", Attr::Float(0.5))];
            let s = b.node(OpKind::HardSigmoid, &[t], 1, attrs)[0]; // fuses into the gate conv
            let m = b.node(OpKind::Mul, &[y, s], 1, vec![])[0];
            let inputs = if x_first { [y, m] } else { [m, y] };
            let a = b.node(OpKind::Add, &inputs, 1, vec![])[0]; // folds into the Mul
            b.output(a);
            b.model
        };
        let x =
            Tensor::from_f32(vec![1, 2, 3, 4], (0..24).map(|i| ((i * 13 % 17) as f32 - 8.0) / 2.0).collect());
        for x_first in [true, false] {
            fused_matches_plain(|| build(x_first), &x, (4, 6), 1e-6);
        }
    }

    /// `x -> Conv 1×1 -> y; Conv(Mul(y, gate))` with `gate` a squeeze-excite gate of `y`
    /// (`Sigmoid(Conv(GlobalAveragePool(y)))`, either operand order) or, with `constant`, a
    /// constant of that shape.
    fn gated_projection(gate_first: bool, constant: Option<&[usize]>, graph_output: bool) -> Model {
        let mut b = Builder::default();
        let x = b.input("x", vec![Dim::Fixed(2), Dim::Fixed(3), sym("H"), sym("W")]);
        let w1 = b.floats("w1", &[3, 3, 1, 1], (0..9).map(|i| (i as f32 * 0.7).sin()).collect());
        let w3 = b.floats("w3", &[4, 3, 1, 1], (0..12).map(|i| (i as f32 * 0.4).cos()).collect());
        let y = b.node(OpKind::Conv, &[x, w1], 1, vec![])[0];
        let gate = match constant {
            Some(shape) => {
                let n = shape.iter().product();
                b.floats("c", shape, (0..n).map(|i| 0.5 + i as f32 * 0.1).collect())
            }
            None => {
                let g = b.node(OpKind::GlobalAveragePool, &[y], 1, vec![])[0];
                let t = b.node(OpKind::Conv, &[g, w1], 1, vec![])[0];
                b.node(OpKind::Sigmoid, &[t], 1, vec![])[0] // fuses into the gate conv
            }
        };
        let inputs = if gate_first { [gate, y] } else { [y, gate] };
        let m = b.node(OpKind::Mul, &inputs, 1, vec![])[0];
        let z = b.node(OpKind::Conv, &[m, w3], 1, vec![])[0];
        b.output(z);
        if graph_output {
            b.output(m);
        }
        b.model
    }

    #[test]
    fn a_gated_product_folds_into_the_1x1_conv_after_it() {
        let x =
            Tensor::from_f32(vec![2, 3, 3, 4], (0..72).map(|i| ((i * 7 % 19) as f32 - 9.0) / 4.0).collect());
        // Conv, pool, gate conv (with its Sigmoid), and the projection taking the product.
        for gate_first in [false, true] {
            fused_matches_plain(|| gated_projection(gate_first, None, false), &x, (4, 6), 1e-5);
        }
        // Products that are not one factor per channel of each image (per pixel; per channel
        // but shared by both images): the projection computes them itself.
        for shape in [&[1, 1, 3, 4][..], &[1, 3, 1, 1]] {
            fused_matches_plain(|| gated_projection(false, Some(shape), false), &x, (2, 3), 1e-6);
        }
        // A product read elsewhere too (here, a graph output) stays.
        fused_matches_plain(|| gated_projection(false, None, true), &x, (5, 6), 1e-6);
        // Sessions with int8 activations keep the product (their 1×1 kernels do not decode),
        // where the CPU has int8 dot products.
        if Kernels::new(1).and_then(|k| k.with_int8_activations(true)).is_err() {
            eprintln!("no int8 activations on this CPU: that part skipped");
            return;
        }
        let options = SessionOptions { int8_activations: true, ..SessionOptions::default() };
        let mut int8 = Mem::with_options(gated_projection(false, None, false), options, true).unwrap();
        int8.run(&[("x", x.clone())]).unwrap();
        assert_eq!(int8.engine.current().unwrap().summary.runtime_nodes, 5);
    }

    #[test]
    fn residual_adds_fuse_into_convolutions_without_changing_results() {
        // Conv + Add + Relu (the Add takes the conv second, then first), a residual added by
        // broadcasting ([1, 3, 1, 1]), and a conv whose output has a second reader (not fused).
        let build = || {
            let mut b = Builder::default();
            let x = b.input("x", [1, 3, 6, 7].iter().map(|&d| Dim::Fixed(d)).collect());
            let w =
                b.floats("w", &[3, 3, 3, 3], (0..81).map(|i| ((i * 7 % 11) as f32 - 5.0) / 8.0).collect());
            let bias = b.floats("b", &[3], vec![0.5, -0.25, 0.1]);
            let pads = || vec![("pads", Attr::Ints(vec![1; 4]))];
            let y = b.node(OpKind::Conv, &[x, w, bias], 1, pads())[0];
            let s = b.node(OpKind::Add, &[x, y], 1, vec![])[0]; // fuses (conv is the second operand)
            let r = b.node(OpKind::Relu, &[s], 1, vec![])[0]; // then fuses too
            let u = b.node(OpKind::Conv, &[r, w], 1, pads())[0];
            let v = b.node(OpKind::Add, &[u, r], 1, vec![])[0]; // fuses, no bias
            let chan = b.floats("chan", &[1, 3, 1, 1], vec![1.0, -2.0, 0.5]);
            let t = b.node(OpKind::Conv, &[v, w], 1, pads())[0];
            let q = b.node(OpKind::Add, &[t, chan], 1, vec![])[0]; // fuses, broadcast residual
            let e = b.node(OpKind::Conv, &[q, w], 1, pads())[0];
            let f = b.node(OpKind::Add, &[e, q], 1, vec![])[0];
            let g = b.node(OpKind::Mul, &[e, f], 1, vec![])[0]; // e read twice: no fusion
            for o in [v, g] {
                b.output(o);
            }
            b.model
        };
        let x = Tensor::from_f32(
            vec![1, 3, 6, 7],
            (0..126).map(|i| ((i * 13 % 17) as f32 - 8.0) / 3.0).collect(),
        );
        // 10 nodes: three Adds and the Relu fused away.
        fused_matches_plain(build, &x, (6, 10), 1e-5);
    }

    #[test]
    fn a_channel_padded_residual_drops_its_pad_without_changing_results() {
        // BlazeFace's block: Relu(Add(Conv(x), Pad(x, channels 2 -> 5))); and a Pad that also
        // pads width, which is not a channel padding and stays.
        let build = || {
            let mut b = Builder::default();
            let x = b.input("x", [1, 2, 4, 5].iter().map(|&d| Dim::Fixed(d)).collect());
            let w =
                b.floats("w", &[5, 2, 3, 3], (0..90).map(|i| ((i * 7 % 11) as f32 - 5.0) / 8.0).collect());
            let pads = || vec![("pads", Attr::Ints(vec![1; 4]))];
            let y = b.node(OpKind::Conv, &[x, w], 1, pads())[0];
            let channel_pads = b.ints("cp", &[0, 0, 0, 0, 0, 3, 0, 0]);
            let padded = b.node(OpKind::Pad, &[x, channel_pads], 1, vec![])[0];
            let s = b.node(OpKind::Add, &[y, padded], 1, vec![])[0];
            let r = b.node(OpKind::Relu, &[s], 1, vec![])[0];
            let w2 =
                b.floats("w2", &[5, 5, 1, 1], (0..25).map(|i| ((i * 5 % 13) as f32 - 6.0) / 6.0).collect());
            let u = b.node(OpKind::Conv, &[r, w2], 1, vec![])[0];
            let wide_pads = b.ints("wp", &[0, 0, 0, 0, 0, 0, 0, 1]);
            let wide = b.node(OpKind::Pad, &[r, wide_pads], 1, vec![])[0];
            let cut = b.ints("cut", &[0, 0, 0, 0, 0, 0, 0, -1]);
            let back = b.node(OpKind::Pad, &[wide, cut], 1, vec![])[0];
            let v = b.node(OpKind::Add, &[u, back], 1, vec![])[0];
            b.output(v);
            b.model
        };
        let x =
            Tensor::from_f32(vec![1, 2, 4, 5], (0..40).map(|i| ((i * 13 % 17) as f32 - 8.0) / 3.0).collect());
        // Conv+Pad+Add+Relu is one node; the width Pads stay, their Add fuses into the second Conv.
        fused_matches_plain(build, &x, (4, 8), 1e-5);
    }

    #[test]
    fn an_add_fuses_into_the_resize_before_it_without_changing_results() {
        // Add(linear 2x upsampling, nearest one) runs as one Resize that adds the nearest map;
        // Add(nearest 3x1, linear 3x1) as the nearest one adding the linear map; an Add with a
        // per-channel constant, and one that broadcasts to a larger shape, still fuse (the
        // addend broadcast after resizing); a Relu(Add(..)) stays three nodes, as a Resize
        // applies no activation.
        let build = || {
            let mut b = Builder::default();
            let x = b.input("x", [1, 2, 3, 4].iter().map(|&d| Dim::Fixed(d)).collect());
            let roi = b.floats("roi", &[0], vec![]);
            let double = b.floats("double", &[4], vec![1.0, 1.0, 2.0, 2.0]);
            let tall = b.floats("tall", &[4], vec![1.0, 1.0, 3.0, 1.0]);
            let mode = |m: &str| vec![("mode", Attr::Str(m.into()))];
            let resize =
                |b: &mut Builder, scales, m: &str| b.node(OpKind::Resize, &[x, roi, scales], 1, mode(m))[0];
            let u = resize(&mut b, double, "linear");
            let v = resize(&mut b, double, "nearest");
            let a = b.node(OpKind::Add, &[u, v], 1, vec![])[0];
            let n = resize(&mut b, tall, "nearest");
            let t = resize(&mut b, tall, "linear");
            let c = b.node(OpKind::Add, &[n, t], 1, vec![])[0];
            let bias = b.floats("bias", &[1, 2, 1, 1], vec![0.5, -2.0]);
            let p = resize(&mut b, double, "linear");
            let d = b.node(OpKind::Add, &[bias, p], 1, vec![])[0];
            let wide = b.floats("wide", &[2, 1, 1, 1], vec![1.0, -1.0]);
            let q = resize(&mut b, tall, "linear");
            let e = b.node(OpKind::Add, &[q, wide], 1, vec![])[0];
            let g = resize(&mut b, double, "linear");
            let h = resize(&mut b, double, "nearest");
            let s = b.node(OpKind::Add, &[g, h], 1, vec![])[0];
            let r = b.node(OpKind::Relu, &[s], 1, vec![])[0];
            for out in [a, c, d, e, r] {
                b.output(out);
            }
            b.model
        };
        let x =
            Tensor::from_f32(vec![1, 2, 3, 4], (0..24).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect());
        // Exactly equal: the fused Resize adds the same operands after the same interpolation.
        // Unfused: eight Resizes, five Adds and the Relu; fused: the eight Resizes and one Add.
        let out = fused_matches_plain(build, &x, (9, 14), 0.0);
        assert_eq!(out[3].1.shape, vec![2, 2, 9, 4]);
    }

    #[test]
    fn a_constant_bias_fuses_into_the_matmul_before_it() {
        // MatMul(x, W) + b with b of [7] or [1, 1, 7] (either operand order) runs as one MatMul
        // that starts each sum from its bias; a b that broadcasts along another axis ([3, 1]),
        // an Add with a Relu after it, and a MatMul of two activations stay as they were.
        let build = || {
            let mut b = Builder::default();
            let x = b.input("x", [2, 3, 5].iter().map(|&d| Dim::Fixed(d)).collect());
            let w = b.floats("w", &[5, 7], (0..35).map(|i| ((i * 11 % 17) as f32 - 8.0) / 7.0).collect());
            let bias = b.floats("bias", &[7], (0..7).map(|i| i as f32 * 0.25 - 0.75).collect());
            let bias3 = b.floats("bias3", &[1, 1, 7], (0..7).map(|i| 1.0 - i as f32 * 0.3).collect());
            let tall = b.floats("tall", &[3, 1], vec![0.5, -0.5, 2.0]);
            let mm = |b: &mut Builder| b.node(OpKind::MatMul, &[x, w], 1, vec![])[0];
            let m1 = mm(&mut b);
            let a1 = b.node(OpKind::Add, &[m1, bias], 1, vec![])[0];
            let m2 = mm(&mut b);
            let a2 = b.node(OpKind::Add, &[bias3, m2], 1, vec![])[0];
            let m3 = mm(&mut b);
            let a3 = b.node(OpKind::Add, &[m3, tall], 1, vec![])[0];
            let m4 = mm(&mut b);
            let a4 = b.node(OpKind::Add, &[m4, bias], 1, vec![])[0];
            let r4 = b.node(OpKind::Relu, &[a4], 1, vec![])[0];
            let xt = b.node(OpKind::Transpose, &[x], 1, vec![("perm", Attr::Ints(vec![0, 2, 1]))])[0];
            let m5 = b.node(OpKind::MatMul, &[x, xt], 1, vec![])[0];
            let a5 = b.node(OpKind::Add, &[m5, tall], 1, vec![])[0];
            for out in [a1, a2, a3, r4, a5] {
                b.output(out);
            }
            b.model
        };
        let x = Tensor::from_f32(vec![2, 3, 5], (0..30).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect());
        // Unfused: 5 MatMuls, 5 Adds, a Relu and a Transpose; fused: two Adds fewer, and the
        // Relu in its Add. The bias is added before the products rather than after: equal to
        // rounding.
        let out = fused_matches_plain(build, &x, (9, 12), 1e-5);
        assert_eq!(out[0].1.shape, vec![2, 3, 7]);
    }

    #[test]
    fn an_activation_fuses_into_a_batch_norm() {
        let build = || {
            let mut b = Builder::default();
            let x = b.input("x", [1, 2, 3, 3].iter().map(|&d| Dim::Fixed(d)).collect());
            let p: Vec<ValueId> = [[1.5, -0.5], [0.25, -1.0], [0.1, 0.2], [0.9, 2.0]]
                .iter()
                .enumerate()
                .map(|(i, v)| b.floats(&format!("p{i}"), &[2], v.to_vec()))
                .collect();
            let y = b.node(OpKind::BatchNormalization, &[x, p[0], p[1], p[2], p[3]], 1, vec![])[0];
            let r = b.node(OpKind::Relu, &[y], 1, vec![])[0];
            b.output(r);
            b.model
        };
        // Both signs in both channels.
        let x =
            Tensor::from_f32(vec![1, 2, 3, 3], (0..18).map(|i| ((i * 7 % 18) as f32 - 9.0) / 2.0).collect());
        // Exactly equal: the fused BatchNorm applies the same activation to the same values.
        let a = fused_matches_plain(build, &x, (1, 2), 0.0);
        let v = a[0].1.as_f32().unwrap();
        assert!(v.iter().all(|&e| e >= 0.0) && v.contains(&0.0) && v.iter().any(|&e| e > 0.0), "{v:?}");
    }

    #[test]
    fn a_prelu_fuses_into_its_convolution_with_one_slope_or_one_per_channel() {
        // Conv -> PRelu(slope [1, 1, 1]) fuses as a LeakyRelu; Conv -> PRelu(slope [3, 1, 1])
        // and a residual Conv -> Add -> PRelu(slope [1, 3, 1, 1]) fuse with their slopes; a
        // per-channel PRelu after a BatchNormalization stays an op of its own (only
        // convolutions take slopes). Both signs reach every PRelu.
        let build = || {
            let mut b = Builder::default();
            let x = b.input("x", [1, 2, 4, 4].iter().map(|&d| Dim::Fixed(d)).collect());
            let w =
                b.floats("w", &[3, 2, 3, 3], (0..54).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect());
            let one = b.floats("one", &[1, 1, 1], vec![0.25]);
            let per_channel = b.floats("per_channel", &[3, 1, 1], vec![0.5, -0.1, 2.0]);
            let per_channel4 = b.floats("per_channel4", &[1, 3, 1, 1], vec![-1.5, 0.3, 0.0]);
            let y = b.node(OpKind::Conv, &[x, w], 1, vec![("pads", Attr::Ints(vec![1; 4]))])[0];
            let z = b.node(OpKind::PRelu, &[y, one], 1, vec![])[0]; // fuses
            let w2 = b.floats("w2", &[3, 3, 1, 1], vec![0.5, -1.0, 0.25, 1.5, 0.1, -0.3, -0.7, 0.9, 0.2]);
            let u = b.node(OpKind::Conv, &[z, w2], 1, vec![])[0];
            let v = b.node(OpKind::PRelu, &[u, per_channel], 1, vec![])[0]; // fuses
            let t = b.node(OpKind::Conv, &[v, w2], 1, vec![])[0];
            let s = b.node(OpKind::Add, &[t, v], 1, vec![])[0]; // fuses as the residual
            let r = b.node(OpKind::PRelu, &[s, per_channel4], 1, vec![])[0]; // then fuses too
            let p: Vec<ValueId> = [[1.5, -0.5, 1.0], [0.25, -1.0, 0.5], [0.1, 0.2, 0.0], [0.9, 2.0, 1.0]]
                .iter()
                .enumerate()
                .map(|(i, v)| b.floats(&format!("bn{i}"), &[3], v.to_vec()))
                .collect();
            let n = b.node(OpKind::BatchNormalization, &[r, p[0], p[1], p[2], p[3]], 1, vec![])[0];
            let q = b.node(OpKind::PRelu, &[n, per_channel], 1, vec![])[0]; // does not
            b.output(q);
            b.model
        };
        let x =
            Tensor::from_f32(vec![1, 2, 4, 4], (0..32).map(|i| ((i * 13 % 17) as f32 - 8.0) / 3.0).collect());
        fused_matches_plain(build, &x, (5, 9), 1e-5);
    }

    #[test]
    fn session_is_send() {
        fn is_send<T: Send>() {}
        is_send::<Session>();
    }
}
