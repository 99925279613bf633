//! A camera loop's steady state allocates nothing: once `Session::run_into` has filled its output
//! tensors, later runs on inputs of the same shapes make no heap allocation on any thread, at one
//! thread or several (the plan, arena, scratch, every op's prepared state and the lists the
//! kernels split their work with are kept by the session and its threads), as TFLite's `Invoke`
//! makes none. Counted by this binary's own global allocator, on every bundled model at 4 bits
//! and every op case of `data/ops`, with f32 activations and, where the CPU has the kernels,
//! int8 activations and bf16 products.
//!
//! The counter sees the test's thread and the session's workers, so the tests take turns
//! ([`one_at_a_time`]); the harness's own threads are not counted (its main thread allocates
//! when a test has run for a minute, as these do under qemu).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use half::f16;
use pith_compress::{compress_onnx, CompressOptions, WeightFormat};
use pith_format::ir::{OpKind, TensorData};
use pith_format::PithFile;
use pith_runtime::{Session, SessionOptions, Tensor};
use pith_tests::{data_dir, input_names, model_path, read_npy, sanitize};

/// The system allocator, counting allocations while [`COUNTING`] is set, on the threads that
/// count ([`counted_here`]).
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

/// Name prefix of the kernels' worker threads (`pith_kernels`'s pool).
const WORKER_NAME: &str = "pith-worker-";

thread_local! {
    /// Whether this thread's allocations count: the test's thread while [`allocations`] runs,
    /// and the session's workers (known by name); `None` until this thread has been asked.
    static COUNTED: Cell<Option<bool>> = const { Cell::new(None) };
    /// Set while this thread looks up its name (which may allocate: not counted).
    static ASKING: Cell<bool> = const { Cell::new(false) };
}

/// Whether an allocation on this thread counts (never while its thread-locals are torn down).
fn counted_here() -> bool {
    let known = COUNTED.try_with(Cell::get).ok();
    match known {
        Some(Some(counted)) => counted,
        Some(None) if !ASKING.with(|a| a.replace(true)) => {
            let worker = std::thread::current().name().is_some_and(|n| n.starts_with(WORKER_NAME));
            ASKING.with(|a| a.set(false));
            COUNTED.with(|c| c.set(Some(worker)));
            worker
        }
        _ => false,
    }
}

fn count() {
    if COUNTING.load(Ordering::Relaxed) && counted_here() {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on unchanged to `System`, which upholds `GlobalAlloc`'s contract;
// counting touches only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as `dealloc` and `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Held for a whole test: while one counts, no other test runs (and allocates).
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Allocations made while `f` runs, on this thread and the session's workers.
fn allocations(f: impl FnOnce()) -> usize {
    let before = COUNTED.with(|c| c.replace(Some(true)));
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    COUNTED.with(|c| c.set(before));
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// An input named `name` of `shape`, values in [-1, 1].
fn input(name: &str, shape: &[usize]) -> (String, Tensor) {
    let n: usize = shape.iter().product();
    let data = (0..n).map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0).collect();
    (name.to_string(), Tensor::from_f32(shape.to_vec(), data))
}

/// The precisions a session may compute in on this CPU: f32 activations always, int8 activations
/// and bf16 products where the CPU has their kernels (aarch64 without dotprod has no int8 ones).
fn precisions() -> Vec<(&'static str, SessionOptions)> {
    let mut all = vec![("f32", SessionOptions::default())];
    let kernels = || pith_kernels::Kernels::new(1).expect("a kernel path");
    if kernels().with_int8_activations(true).is_ok() {
        all.push(("int8", SessionOptions { int8_activations: true, ..Default::default() }));
    }
    if kernels().with_bf16_products(true).is_ok() {
        all.push(("bf16", SessionOptions { bf16_products: true, ..Default::default() }));
    }
    all
}

/// Runs `file` in a session of `options` on one thread and on two (splitting every layer that
/// warrants it: no thread tuning) on each of `inputs` in turn (a new shape re-plans, which
/// allocates), checking [`assert_steady`] for each.
fn assert_steady_runs_allocate_nothing(
    what: &str,
    file: &Arc<PithFile>,
    options: &SessionOptions,
    inputs: &[Vec<(String, Tensor)>],
) {
    for threads in [1, 2] {
        let options = SessionOptions { threads, tune_threads: false, ..*options };
        let mut session = Session::new(file.clone(), options).unwrap();
        let mut outputs = Vec::new();
        for feeds in inputs {
            let feeds: Vec<(&str, Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
            let shapes: Vec<&[usize]> = feeds.iter().map(|(_, t)| &t.shape[..]).collect();
            let what = format!("{what} {shapes:?}, {threads} thread(s)");
            assert_steady(&what, &mut session, &feeds, &mut outputs);
        }
    }
}

/// Checks that once `session` has run `inputs` (planning and preparing, sizing `outputs`) three
/// more runs allocate nothing and leave in `outputs` what `Session::run` returns.
fn assert_steady(what: &str, session: &mut Session, inputs: &[(&str, Tensor)], outputs: &mut Vec<Tensor>) {
    let first = allocations(|| session.run_into(inputs, outputs).unwrap());
    assert!(first > 0, "{what}: the first run plans, which allocates");
    // A worker thread's start (std records its name, which allocates) may lag a small graph's
    // first run; then every thread has taken part in a run.
    std::thread::sleep(Duration::from_millis(5));
    session.run_into(inputs, outputs).unwrap();
    let steady = allocations(|| {
        for _ in 0..3 {
            session.run_into(inputs, outputs).unwrap();
        }
    });
    assert_eq!(steady, 0, "{what}: three steady runs allocated {steady} times");
    let expected = session.run(inputs).unwrap();
    assert_eq!(outputs.len(), expected.len());
    for (got, (name, want)) in outputs.iter().zip(&expected) {
        assert_eq!(got.shape, want.shape, "{what}: output {name}");
        assert_close(got.as_f32().unwrap(), want.as_f32().unwrap(), &format!("{what}: output {name}"));
    }
}

/// `got` equals `want` to within 1e-3 of `want`'s largest magnitude: this test's subject is
/// allocation. That a run the pool hands to the caller alone (its workers stalled) gives the same
/// bits as a split one is checked per layer kind, deterministically, by the kernels'
/// `a_layer_computes_the_same_bits_when_its_work_runs_on_the_caller_alone`; here a whole model
/// meets such a run only when qemu happens to stall the workers.
fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-3 * scale, "{what}: element {i} is {g}, a fresh run's {w}");
    }
}

#[test]
fn steady_runs_of_the_bundled_detectors_allocate_nothing() {
    let _one = one_at_a_time();
    assert_bundled_models_run_steady_without_allocating(
        &[
            ("blazeface_short_range.onnx", &[&[1, 3, 128, 128]]),
            ("blazeface_full_range.onnx", &[&[1, 3, 192, 192]]),
            // A page of another size re-plans (allocating), then runs allocate nothing again.
            ("ppocr_v4_det.onnx", &[&[1, 3, 160, 320], &[1, 3, 128, 256]]),
        ],
        false,
    );
}

/// PP-OCRv4 det as calibrated models store it: biases (of its convolutions and conv-transposes)
/// as f16, and a conv-transpose's folded batch norm made once per plan. (The runtime's work, the
/// same on every kernel path: `scripts/test-aarch64.sh` leaves it out under qemu.)
#[test]
fn steady_runs_with_f16_biases_allocate_nothing() {
    let _one = one_at_a_time();
    assert_bundled_models_run_steady_without_allocating(
        &[("ppocr_v4_det.onnx", &[&[1, 3, 160, 320], &[1, 3, 128, 256]])],
        true,
    );
}

/// The other bundled models (slow under qemu: `scripts/test-aarch64.sh` leaves them out).
#[test]
fn steady_runs_of_the_other_bundled_models_allocate_nothing() {
    let _one = one_at_a_time();
    assert_bundled_models_run_steady_without_allocating(
        &[
            ("blazeface_back.onnx", &[&[1, 3, 256, 256]]),
            ("ppocr_v3_det.onnx", &[&[1, 3, 128, 256]]),
            ("ppocr_mobile_v2_cls.onnx", &[&[1, 3, 48, 192]]),
            ("ppocr_v3_rec.onnx", &[&[1, 3, 48, 320], &[1, 3, 48, 160]]),
        ],
        false,
    );
}

/// [`assert_steady_runs_allocate_nothing`] on each of `models` (a bundled model and the shapes
/// of its one input) at 4 bits, in every precision this CPU has; with `half_biases`, the biases
/// of its convolutions, conv-transposes and Gemms stored as f16.
fn assert_bundled_models_run_steady_without_allocating(models: &[(&str, &[&[usize]])], half_biases: bool) {
    let precisions = precisions();
    eprintln!("precisions: {:?}", precisions.iter().map(|(name, _)| name).collect::<Vec<_>>());
    for &(model, shapes) in models {
        let onnx = std::fs::read(model_path(model)).unwrap();
        let file = compile_with(&onnx, WeightFormat::Codebook { bits: 4 }, half_biases);
        let file = Arc::new(file.expect("a model with biases"));
        let name = input_names(&file).remove(0);
        let inputs: Vec<_> = shapes.iter().map(|shape| vec![input(&name, shape)]).collect();
        let biases = if half_biases { ", f16 biases" } else { "" };
        for (precision, options) in &precisions {
            let what = format!("{model} ({precision}{biases})");
            assert_steady_runs_allocate_nothing(&what, &file, options, &inputs);
        }
    }
}

/// `onnx` compressed to `weights`; with `half_biases`, the biases of its convolutions,
/// conv-transposes and Gemms stored as f16 (as the calibrated pipeline stores them), or `None`
/// when it has none.
fn compile_with(onnx: &[u8], weights: WeightFormat, half_biases: bool) -> Option<PithFile> {
    // Other options keep their defaults, whatever fields the struct grows.
    #[allow(clippy::needless_update)]
    let options = CompressOptions { weights, ..Default::default() };
    let mut model = compress_onnx(onnx, &options).unwrap().model;
    if half_biases {
        let with_bias = |op| matches!(op, OpKind::Conv | OpKind::ConvTranspose | OpKind::Gemm);
        let biases: HashSet<_> = model
            .graph
            .nodes
            .iter()
            .filter(|n| with_bias(n.op))
            .filter_map(|n| n.inputs.get(2).copied().flatten())
            .collect();
        let mut halved = 0;
        for c in model.constants.iter_mut().filter(|c| biases.contains(&c.value)) {
            if let TensorData::F32(v) = &c.data {
                c.data = TensorData::F16(v.iter().map(|&x| f16::from_f32(x)).collect());
                halved += 1;
            }
        }
        if halved == 0 {
            return None;
        }
    }
    Some(PithFile::from_bytes(pith_format::write(&model).unwrap()).unwrap())
}

#[test]
fn steady_runs_of_every_op_case_allocate_nothing() {
    let _one = one_at_a_time();
    let root = data_dir().join("ops");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() > 100, "{} op cases in {}", cases.len(), root.display());
    let precisions = precisions();
    let mut with_half_biases = 0;
    for case in &cases {
        let onnx = std::fs::read(case.join("model.onnx")).unwrap();
        let name = case.file_name().unwrap().to_string_lossy();
        // Also with the layers' biases as f16, where the case has any (decoded once per plan).
        for half_biases in [false, true] {
            let Some(file) = compile_with(&onnx, WeightFormat::F32, half_biases) else { continue };
            with_half_biases += usize::from(half_biases);
            let file = Arc::new(file);
            let inputs = vec![case_inputs(&file, case)];
            let biases = if half_biases { ", f16 biases" } else { "" };
            for (precision, options) in &precisions {
                let what = format!("{name} ({precision}{biases})");
                assert_steady_runs_allocate_nothing(&what, &file, options, &inputs);
            }
        }
    }
    assert!(with_half_biases > 10, "{with_half_biases} cases with f16 biases");
}

/// The `input.*.npy` files of an op case, by graph input.
fn case_inputs(file: &PithFile, case: &Path) -> Vec<(String, Tensor)> {
    input_names(file)
        .into_iter()
        .map(|name| {
            let path = case.join(format!("input.{}.npy", sanitize(&name)));
            let tensor = read_npy(&path).unwrap().to_tensor();
            (name, tensor)
        })
        .collect()
}
