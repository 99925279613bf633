//! A camera loop's steady state allocates nothing: once `Session::run_into` has filled its output
//! tensors, later runs on inputs of the same shapes make no heap allocation on any thread, at one
//! thread or several (the plan, arena, scratch, every op's prepared state and the lists the
//! kernels split their work with are kept by the session and its threads), as TFLite's `Invoke`
//! makes none. Counted by this binary's own global allocator, on the bundled detectors at 4 bits.
//!
//! The binary holds one test, so nothing else allocates while it counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pith_compress::WeightFormat;
use pith_format::PithFile;
use pith_runtime::{Session, SessionOptions, Tensor};
use pith_tests::{compile, model_path};

/// The system allocator, counting allocations (on every thread) while [`COUNTING`] is set.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
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

/// Allocations made (on any thread) while `f` runs.
fn allocations(f: impl FnOnce()) -> usize {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// An input named `name` of `shape`, values in [-1, 1].
fn input(name: &str, shape: &[usize]) -> (String, Tensor) {
    let n: usize = shape.iter().product();
    let data = (0..n).map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0).collect();
    (name.to_string(), Tensor::from_f32(shape.to_vec(), data))
}

/// Runs `file` on `threads` threads (splitting every layer that warrants it: no thread tuning)
/// on inputs of each of `shapes` in turn, checking that once a shape's plan and outputs exist
/// three more runs allocate nothing and return what `Session::run` does.
fn assert_steady_runs_allocate_nothing(
    what: &str,
    file: &Arc<PithFile>,
    threads: usize,
    shapes: &[&[usize]],
) {
    let options = SessionOptions { threads, tune_threads: false, ..Default::default() };
    let mut session = Session::new(file.clone(), options).unwrap();
    let name = session.inputs()[0].name.clone();
    let mut outputs = Vec::new();
    for &shape in shapes {
        let (name, tensor) = input(&name, shape);
        let inputs = [(name.as_str(), tensor)];
        // The first run of a shape plans and prepares, and sizes the output tensors.
        let first = allocations(|| session.run_into(&inputs, &mut outputs).unwrap());
        assert!(first > 0, "{what} {shape:?}, {threads} threads: the first run plans, which allocates");
        let steady = allocations(|| {
            for _ in 0..3 {
                session.run_into(&inputs, &mut outputs).unwrap();
            }
        });
        assert_eq!(
            steady, 0,
            "{what} {shape:?}, {threads} threads: three steady runs allocated {steady} times"
        );
        // The reused tensors hold what a fresh run returns.
        let expected = session.run(&inputs).unwrap();
        assert_eq!(outputs.len(), expected.len());
        for (got, (name, want)) in outputs.iter().zip(&expected) {
            assert_eq!(got, want, "{what} {shape:?}, {threads} threads: output {name}");
        }
    }
}

#[test]
fn steady_runs_allocate_nothing_on_one_thread_or_two() {
    let models: [(&str, &[&[usize]]); 3] = [
        ("blazeface_short_range.onnx", &[&[1, 3, 128, 128]]),
        ("blazeface_full_range.onnx", &[&[1, 3, 192, 192]]),
        // A page of another size re-plans (allocating), then runs allocate nothing again.
        ("ppocr_v4_det.onnx", &[&[1, 3, 160, 320], &[1, 3, 128, 256]]),
    ];
    for (model, shapes) in models {
        let onnx = std::fs::read(model_path(model)).unwrap();
        let file = Arc::new(compile(&onnx, WeightFormat::Codebook { bits: 4 }).unwrap());
        for threads in [1, 2] {
            assert_steady_runs_allocate_nothing(model, &file, threads, shapes);
        }
    }
}
