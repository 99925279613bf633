//! A camera loop's steady state allocates nothing: once `Session::run_into` has filled its output
//! tensors, later runs on inputs of the same shapes make no heap allocation on one thread (the
//! plan, arena, scratch and every op's prepared state live in the session), as TFLite's `Invoke`
//! makes none. Counted by this binary's own global allocator, on the bundled detectors at 4 bits.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pith_compress::WeightFormat;
use pith_runtime::{Session, SessionOptions, Tensor};
use pith_tests::{compile, model_path};

/// The system allocator, counting the allocations made on threads that asked for it (the
/// harness runs other tests, which allocate, on other threads meanwhile).
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations count (a `const` cell: reading it never allocates).
    static COUNT_ON: Cell<bool> = const { Cell::new(false) };
}

/// Counts an allocation when the calling thread counts.
fn count() {
    // `try_with`: a thread being torn down has no cell left, and does not count.
    if COUNT_ON.try_with(Cell::get).unwrap_or(false) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on unchanged to `System`, which upholds `GlobalAlloc`'s contract;
// counting touches only an atomic.
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

/// Allocations made by `f` on this thread (one-thread sessions run every op here).
fn allocations(f: impl FnOnce()) -> usize {
    // One test counts at a time; the others' allocations happen on threads that do not count.
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNT_ON.with(|on| on.set(true));
    f();
    COUNT_ON.with(|on| on.set(false));
    ALLOCATIONS.load(Ordering::SeqCst)
}

/// `model` at 4 bits in a one-thread session, and an input of `shape` for its one input.
fn session(model: &str, shape: &[usize]) -> (Session, Vec<(String, Tensor)>) {
    let onnx = std::fs::read(model_path(model)).unwrap();
    let file = compile(&onnx, WeightFormat::Codebook { bits: 4 }).unwrap();
    let session = Session::new(Arc::new(file), SessionOptions { threads: 1, ..Default::default() }).unwrap();
    let name = session.inputs()[0].name.clone();
    (session, vec![input(&name, shape)])
}

/// Runs `model` on an input of `shape`, then (if given) of `then`, checking that once a shape's
/// plan and outputs exist three more runs allocate nothing and return what `Session::run` does.
fn assert_steady_runs_allocate_nothing(model: &str, shape: &[usize], then: Option<&[usize]>) {
    let (mut session, named) = session(model, shape);
    let mut outputs = Vec::new();
    for shape in std::iter::once(shape).chain(then) {
        let (name, tensor) = input(&named[0].0, shape);
        let inputs = [(name.as_str(), tensor)];
        // The first run of a shape plans and prepares, and sizes the output tensors.
        let first = allocations(|| session.run_into(&inputs, &mut outputs).unwrap());
        assert!(first > 0, "{model} {shape:?}: the first run plans, which allocates");
        let steady = allocations(|| {
            for _ in 0..3 {
                session.run_into(&inputs, &mut outputs).unwrap();
            }
        });
        assert_eq!(steady, 0, "{model} {shape:?}: three steady-state runs allocated {steady} times");
        // The reused tensors hold what a fresh run returns.
        let expected = session.run(&inputs).unwrap();
        assert_eq!(outputs.len(), expected.len());
        for (got, (name, want)) in outputs.iter().zip(&expected) {
            assert_eq!(got, want, "{model} {shape:?}: output {name}");
        }
    }
}

/// An input named `name` of `shape`, values in [-1, 1].
fn input(name: &str, shape: &[usize]) -> (String, Tensor) {
    let n: usize = shape.iter().product();
    let data = (0..n).map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0).collect();
    (name.to_string(), Tensor::from_f32(shape.to_vec(), data))
}

#[test]
fn blazeface_steady_runs_allocate_nothing() {
    assert_steady_runs_allocate_nothing("blazeface_short_range.onnx", &[1, 3, 128, 128], None);
}

#[test]
fn blazeface_full_range_steady_runs_allocate_nothing() {
    assert_steady_runs_allocate_nothing("blazeface_full_range.onnx", &[1, 3, 192, 192], None);
}

#[test]
fn ppocr_det_steady_runs_allocate_nothing() {
    // A page of another size re-plans (allocating), then runs allocate nothing again.
    assert_steady_runs_allocate_nothing("ppocr_v4_det.onnx", &[1, 3, 160, 320], Some(&[1, 3, 128, 256]));
}
