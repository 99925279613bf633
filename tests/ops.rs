//! Every per-op case in `data/ops` (generated with onnxruntime by `golden/make_goldens.py`) must
//! compress, serialise, load and run to within 1e-4 of onnxruntime's outputs.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use pith_compress::WeightFormat;
use pith_runtime::{Session, SessionOptions, Tensor};
use pith_tests::{check_outputs, compile, data_dir, run_on_npy_inputs};

/// Number of cases the generator writes; fewer found means the data is missing or stale.
const GENERATED_CASES: usize = 140;

/// `|pith - ort| <= TOL * max(1, |ort|)` for every element.
const TOL: f64 = 1e-4;

fn case_dirs() -> Vec<PathBuf> {
    let root = data_dir().join("ops");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("listing {}: {e}", root.display()))
        .map(|e| e.expect("reading the ops folder").path())
        .filter(|p| p.join("model.onnx").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// Runs a case single-threaded, with two threads and with three that split every run (no
/// thread tuning), twice each (the second run reuses the plan and arena), checking every run
/// against the goldens and against the first run bit for bit: the results do not depend on the
/// thread count.
fn run_case(dir: &Path) -> Result<()> {
    let onnx = std::fs::read(dir.join("model.onnx")).context("reading model.onnx")?;
    let file = Arc::new(compile(&onnx, WeightFormat::F32)?);
    let mut first: Option<Vec<(String, Tensor)>> = None;
    for (threads, tune_threads) in [(1, true), (2, true), (3, false)] {
        let options = SessionOptions { threads, tune_threads, ..Default::default() };
        let mut session = Session::new(file.clone(), options).context("creating the session")?;
        for run in 1..=2 {
            let what = || format!("run {run} with {threads} thread(s)");
            let outputs = run_on_npy_inputs(&mut session, &file, dir).with_context(what)?;
            check_outputs(&outputs, dir, TOL).with_context(what)?;
            match &first {
                None => first = Some(outputs),
                Some(want) => same_bits(&outputs, want).with_context(what)?,
            }
        }
    }
    Ok(())
}

/// Whether every output of `got` holds the same bits as `want`'s, naming the first that does not.
fn same_bits(got: &[(String, Tensor)], want: &[(String, Tensor)]) -> Result<()> {
    for ((name, a), (_, b)) in got.iter().zip(want) {
        let same = match (a.as_f32(), b.as_f32()) {
            (Some(a), Some(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits())
            }
            _ => a == b,
        };
        anyhow::ensure!(same, "output '{name}' is not the same bits as the first run's");
    }
    Ok(())
}

#[test]
fn every_op_case_matches_onnxruntime() {
    let dirs = case_dirs();
    assert!(
        dirs.len() >= GENERATED_CASES,
        "found {} op cases in data/ops, expected at least {GENERATED_CASES}",
        dirs.len()
    );
    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        // A panic is a failure of that case, not of the whole run.
        match catch_unwind(AssertUnwindSafe(|| run_case(dir))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("{name}: {e:#}")),
            Err(_) => failures.push(format!("{name}: PANICKED")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} op cases failed:\n  {}",
        failures.len(),
        dirs.len(),
        failures.join("\n  ")
    );
}

/// Runs op case `case` (one input `x` of `shape`) with and without the blocked layout, at 1 and 2
/// threads: the plan holds `blocked` channel-blocked values where the kernel path has blocked
/// kernels and the session allows them (none otherwise), and every run matches onnxruntime.
fn check_blocked_case(case: &str, shape: [usize; 4], blocked: usize) {
    let dir = data_dir().join("ops").join(case);
    let onnx = std::fs::read(dir.join("model.onnx")).expect("the case's model");
    let file = Arc::new(compile(&onnx, WeightFormat::F32).expect("compiles"));
    let has_kernels = pith_kernels::Kernels::new(1).expect("a kernel path").isa().blocked.is_some();
    let shape = [("x", shape.to_vec())];
    for blocked_layout in [true, false] {
        for threads in [1, 2] {
            let options = SessionOptions { blocked_layout, threads, ..Default::default() };
            let mut session = Session::new(file.clone(), options).expect("a session");
            let summary = session.plan(&shape).expect("plans");
            let want = if blocked_layout && has_kernels { blocked } else { 0 };
            assert_eq!(
                summary.blocked_values, want,
                "{case}: blocked_layout {blocked_layout}, kernels {has_kernels}"
            );
            let outputs = run_on_npy_inputs(&mut session, &file, &dir).expect("runs");
            check_outputs(&outputs, &dir, TOL).expect("matches onnxruntime");
        }
    }
}

/// The inverted-residual case: a, e1, d1, the sum s1 (a 1x1 layer's output with its residual),
/// e2 and d2 run blocked, six values of one region with two depthwise layers; the side branch's
/// e3 feeds a stride-2 depthwise layer into 7x7 and stays planar, and so do the graph outputs and
/// the chain f1, f2 (one depthwise layer between a 1x1 entry and a wide 1x1 exit).
#[test]
fn inverted_residuals_run_channel_blocked_where_the_cpu_has_the_kernels() {
    check_blocked_case("block_inverted_residuals_blocked", [1, 32, 14, 14], 6);
}

/// The small-plane case: from one 14x14 region, depthwise layers over 7x7 run blocked where their
/// multiply-adds pay for their 1x1 neighbours' weights (a1-a4, the stream c1 and c2-c3: 7
/// values) and so do b1 and the stride-2 layer's output b2; the 3x3 layer between 160-channel
/// 1x1 layers (b3, b4), the stream s into it and the one after it (d1) stay planar.
#[test]
fn depthwise_layers_over_7x7_run_channel_blocked_where_they_pay_for_their_neighbours() {
    check_blocked_case("block_small_planes_blocked", [1, 32, 14, 14], 9);
}

/// The large-plane case: a stride-1 inverted residual block over 56x56 stays planar (its 1x1
/// edges there count twice against its depthwise gain), and the stride-2 block after it starts a
/// region over 56x56 that runs into 28x28: e2, d2, p2, e3 and d3, five values.
#[test]
fn regions_over_56x56_run_channel_blocked_where_they_pay() {
    check_blocked_case("block_large_planes_blocked", [1, 24, 56, 56], 5);
}

/// The squeeze-excite case: the expansion's and the depthwise layer's outputs and the second
/// gated product run blocked (the pools read them blocked); the first product folds into the
/// projection into 40 channels, which reads the depthwise output blocked and the gate as factors
/// of its filters' columns.
#[test]
fn squeeze_excite_blocks_run_channel_blocked_where_the_cpu_has_the_kernels() {
    check_blocked_case("block_squeeze_excite_blocked", [1, 40, 14, 14], 3);
}
