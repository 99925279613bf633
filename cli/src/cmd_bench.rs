//! `pith bench`: time a model (load once, warm up, K inferences) or, with `--gemv`, one packed
//! matrix-vector product against its f32 and `memcpy` baselines ([`gemv`]).

mod core_latency;
pub mod gemv;
mod synth;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use pith_format::ir::Dim;
use pith_runtime::exec::{NodeTime, OpTime};
use pith_runtime::session::{Session, SessionOptions};
use pith_runtime::tensor::bounded_numel;
use pith_runtime::{Tensor, MAX_TENSOR_ELEMENTS};

use crate::{cmd_run, npy};

/// Parses `NAME=1x3x128x128`.
fn parse_shape_arg(arg: &str) -> Result<(String, Vec<usize>)> {
    let (name, dims) = arg.split_once('=').with_context(|| format!("--shape '{arg}' must be NAME=DxDxD"))?;
    let dims = dims
        .split('x')
        .map(|d| d.parse::<usize>().with_context(|| format!("--shape '{arg}': '{d}' is not a dimension")))
        .collect::<Result<Vec<_>>>()?;
    Ok((name.to_string(), dims))
}

/// Deterministic pseudo-random values in [-1, 1), so runs are comparable; shapes no tensor may
/// have are an error before anything is allocated.
fn random_tensor(name: &str, shape: Vec<usize>, seed: u64) -> Result<Tensor> {
    let n = bounded_numel(&shape)
        .with_context(|| format!("input '{name}': shape {shape:?} exceeds {MAX_TENSOR_ELEMENTS} elements"))?;
    Ok(Tensor::from_f32(shape, synth::random_f32s(n, seed)))
}

/// The value at fraction `p` of the non-empty ascending `sorted`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

/// Untimed runs before `iters` timed ones. A session that tunes its threads first times a few
/// runs each way ([`pith_runtime::threads::CALIBRATION_RUNS`]); those are warm-up too, so the
/// timed runs show the way it settled on (with its occasional probes of the other way), as an
/// app's steady stream of inferences sees it. Counted among the timed runs, MobileNetV3-Small
/// at 2 threads read 0.48-0.51 ms by the median of 20 where it settled at 0.45.
fn warm_up_runs(iters: usize, tuned: bool) -> usize {
    let calibration = if tuned { pith_runtime::threads::CALIBRATION_RUNS as usize } else { 0 };
    (iters / 10).clamp(1, 5).max(calibration)
}

/// Runs `f` `warm_up` times to warm caches and threads, then `iters` (>= 1) timed times; returns
/// the times in seconds, ascending.
fn time_iters(iters: usize, warm_up: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    if iters == 0 {
        bail!("--iters must be at least 1");
    }
    for _ in 0..warm_up {
        f()?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// Runs the command: the GEMV benchmark when `gemv` (rows, cols) is given, else the model one.
#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    model: Option<&Path>,
    gemv: Option<(usize, usize)>,
    bits: Option<u8>,
    inputs: &[String],
    shapes: &[String],
    options: SessionOptions,
    iters: usize,
    profile: Option<usize>,
) -> Result<()> {
    if profile.is_some() && model.is_none() {
        bail!("--profile times a model's operators; it does not apply to --gemv");
    }
    match (model, gemv) {
        (None, Some((rows, cols))) => {
            let bits = bits.context("--gemv needs --bits 1..8")?;
            gemv::run(rows, cols, bits, options, iters)
        }
        (Some(model), None) => {
            if bits.is_some() {
                bail!("--bits applies to --gemv; a model's weights are encoded when it is compressed");
            }
            run_model(model, inputs, shapes, options, iters, profile)
        }
        (Some(_), Some(_)) => bail!("give either a MODEL or --gemv ROWSxCOLS, not both"),
        (None, None) => bail!("nothing to time: give a MODEL.pith or --gemv ROWSxCOLS --bits B"),
    }
}

/// Times a model.
fn run_model(
    model: &Path,
    inputs: &[String],
    shapes: &[String],
    options: SessionOptions,
    iters: usize,
    profile: Option<usize>,
) -> Result<()> {
    if iters == 0 {
        bail!("--iters must be at least 1");
    }
    let load_start = Instant::now();
    let file = pith_format::PithFile::open(model).with_context(|| format!("opening {}", model.display()))?;
    let (threads, int8, bf16) = (options.threads, options.int8_activations, options.bf16_products);
    let warm_up = warm_up_runs(iters, threads > 1 && options.tune_threads);
    let mut session = Session::new(Arc::new(file), options)?;
    // Load time is what an app pays before its first inference: opening and validating the
    // file, creating the session and planning for the input shapes. Reading or synthesising the
    // inputs is the benchmark's own work, not counted.
    let open_and_session = load_start.elapsed();

    let mut feeds: Vec<(String, Tensor)> = Vec::new();
    for arg in inputs {
        let (name, path) = cmd_run::parse_input_arg(arg)?;
        feeds.push((name, npy::read(&path)?));
    }
    let explicit_shapes = shapes.iter().map(|s| parse_shape_arg(s)).collect::<Result<Vec<_>>>()?;
    for (i, value) in session.inputs().into_iter().enumerate() {
        if feeds.iter().any(|(n, _)| *n == value.name) {
            continue;
        }
        let shape = if let Some((_, s)) = explicit_shapes.iter().find(|(n, _)| *n == value.name) {
            s.clone()
        } else {
            let dims = value
                .shape
                .as_ref()
                .with_context(|| format!("input '{}' has no declared shape; pass --shape", value.name))?;
            dims.iter()
                .map(|d| match d {
                    Dim::Fixed(n) => Ok(*n as usize),
                    Dim::Symbol(s) => bail!(
                        "input '{}' has symbolic dimension '{s}'; pass --shape {}=...",
                        value.name,
                        value.name
                    ),
                })
                .collect::<Result<Vec<_>>>()?
        };
        feeds.push((value.name.clone(), random_tensor(&value.name, shape, 0x9E37_79B9 + i as u64)?));
    }
    let shapes_only: Vec<(&str, Vec<usize>)> =
        feeds.iter().map(|(n, t)| (n.as_str(), t.shape.clone())).collect();
    let plan_start = Instant::now();
    let plan = session.plan(&shapes_only)?;
    let load_ms = (open_and_session + plan_start.elapsed()).as_secs_f64() * 1e3;

    // The state of the host for the times below (see `core_latency`), taken before they start:
    // afterwards the session's workers still spin for a while, taking a core from the probe.
    let round_trip_ns = if threads > 1 { core_latency::round_trip_ns() } else { None };
    let run_feeds: Vec<(&str, Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let times_s = time_iters(iters, warm_up, || session.run(&run_feeds).map(drop).map_err(Into::into))?;
    let times: Vec<f64> = times_s.iter().map(|s| s * 1e3).collect();
    log::info!("arena {} bytes", plan.arena_bytes);
    println!(
        "bench model={} threads={}{}{} iters={} load_ms={:.3} median_ms={:.4} p90_ms={:.4} p99_ms={:.4}",
        model.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        threads,
        if int8 { " int8" } else { "" },
        if bf16 { " bf16" } else { "" },
        iters,
        load_ms,
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        percentile(&times, 0.99),
    );
    eprintln!("kernels={}", session.kernel_path());
    eprintln!("arena_bytes={}", plan.arena_bytes);
    if let Some(ns) = round_trip_ns {
        eprintln!("core_round_trip_ns={ns:.0}");
        // Runs (warm-up included) the session chose to run on one thread (`tune_threads`).
        eprintln!("serial_runs={} of {}", session.serial_runs(), iters + warm_up);
    }
    if let Some(nodes) = profile {
        // Separate runs, so the clock reads around every node do not touch the times above.
        session.set_profiling(true);
        for _ in 0..iters {
            session.run(&run_feeds)?;
        }
        print_profile(&session.profile(), iters)?;
        print_slowest_nodes(&session.node_profile(), iters, nodes)?;
        if let Some(work) = session.thread_work() {
            print_thread_work(&work, iters)?;
        }
    }
    Ok(())
}

/// One line per operator kind: `op=… calls_per_run=… ms_per_run=… share=…%`, most expensive first.
fn print_profile(profile: &[OpTime], runs: usize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let total: f64 = profile.iter().map(|t| t.total.as_secs_f64()).sum();
    for t in profile {
        let secs = t.total.as_secs_f64();
        writeln!(
            out,
            "op={} calls_per_run={} ms_per_run={:.4} share={:.1}%",
            t.op,
            t.calls / runs.max(1),
            secs * 1e3 / runs.max(1) as f64,
            100.0 * secs / total.max(f64::MIN_POSITIVE)
        )?;
    }
    writeln!(out, "op=all ms_per_run={:.4}", total * 1e3 / runs.max(1) as f64)?;
    Ok(())
}

/// One line on how the threads spent the jobs they shared: `threads jobs_per_run=…
/// busy_ms_per_run=<caller>,<worker 1>,… waited_ms_per_run=…` (the caller's wait for workers'
/// tasks after its own).
fn print_thread_work(work: &pith_runtime::ThreadWork, runs: usize) -> Result<()> {
    let per_run = |d: std::time::Duration| d.as_secs_f64() * 1e3 / runs.max(1) as f64;
    let busy: Vec<String> = work.busy.iter().map(|&d| format!("{:.4}", per_run(d))).collect();
    writeln!(
        std::io::stdout().lock(),
        "threads jobs_per_run={} busy_ms_per_run={} waited_ms_per_run={:.4}",
        work.jobs / runs.max(1) as u64,
        busy.join(","),
        per_run(work.waited)
    )?;
    Ok(())
}

/// The `count` most expensive nodes, one line each: `node=<name> op=… out=<output> ms_per_run=… share=…%`
/// (share of all nodes' time), and on several threads ` split_jobs_per_run=… busy_ms_per_run=<caller>,<worker 1>,…`
/// (the node's jobs split over the threads and each thread's time in them).
fn print_slowest_nodes(nodes: &[NodeTime], runs: usize, count: usize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let total: f64 = nodes.iter().map(|t| t.total.as_secs_f64()).sum();
    let per_run = |d: std::time::Duration| d.as_secs_f64() * 1e3 / runs.max(1) as f64;
    for t in nodes.iter().take(count) {
        let secs = t.total.as_secs_f64();
        write!(
            out,
            "node={} op={} out={} ms_per_run={:.4} share={:.1}%",
            t.name,
            t.op,
            t.output,
            per_run(t.total),
            100.0 * secs / total.max(f64::MIN_POSITIVE)
        )?;
        if let Some(work) = &t.work {
            let busy: Vec<String> = work.busy.iter().map(|&d| format!("{:.4}", per_run(d))).collect();
            let jobs = work.jobs as f64 / runs.max(1) as f64;
            write!(out, " split_jobs_per_run={jobs:.1} busy_ms_per_run={}", busy.join(","))?;
        }
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispatch_err(
        model: Option<&Path>,
        gemv: Option<(usize, usize)>,
        bits: Option<u8>,
        iters: usize,
    ) -> String {
        format!(
            "{:#}",
            dispatch(model, gemv, bits, &[], &[], SessionOptions::default(), iters, None).unwrap_err()
        )
    }

    #[test]
    fn dispatch_names_what_is_missing_or_conflicting() {
        let m = Path::new("m.pith");
        assert!(dispatch_err(None, None, None, 3).contains("give a MODEL.pith or --gemv"));
        assert!(dispatch_err(None, Some((4, 4)), None, 3).contains("--gemv needs --bits"));
        assert!(dispatch_err(Some(m), Some((4, 4)), Some(4), 3).contains("not both"));
        assert!(dispatch_err(Some(m), None, Some(4), 3).contains("--bits applies to --gemv"));
        assert!(dispatch_err(None, Some((4, 4)), Some(4), 0).contains("--iters must be at least 1"));
    }

    #[test]
    fn percentiles_pick_from_the_sorted_times() {
        let t = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!((percentile(&t, 0.0), percentile(&t, 0.5), percentile(&t, 1.0)), (1.0, 3.0, 5.0));
        assert_eq!(percentile(&t, 0.9), 5.0);
    }
}
