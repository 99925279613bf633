//! `pith bench`: load once, warm up, time K inferences.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use pith_format::ir::Dim;
use pith_runtime::session::{Session, SessionOptions};
use pith_runtime::Tensor;

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

/// Deterministic pseudo-random values in [-1, 1) (xorshift), so runs are comparable.
fn random_tensor(shape: Vec<usize>, seed: u64) -> Tensor {
    let mut s = seed | 1;
    let n = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor::from_f32(shape, data)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx]
}

/// Runs the command.
pub fn run(model: &Path, inputs: &[String], shapes: &[String], threads: usize, iters: usize) -> Result<()> {
    if iters == 0 {
        bail!("--iters must be at least 1");
    }
    let load_start = Instant::now();
    let file = pith_format::PithFile::open(model).with_context(|| format!("opening {}", model.display()))?;
    let mut session = Session::new(Arc::new(file), SessionOptions { threads })?;

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
        feeds.push((value.name.clone(), random_tensor(shape, 0x9E37_79B9 + i as u64)));
    }
    let shapes_only: Vec<(&str, Vec<usize>)> =
        feeds.iter().map(|(n, t)| (n.as_str(), t.shape.clone())).collect();
    let plan = session.plan(&shapes_only)?;
    let load_ms = load_start.elapsed().as_secs_f64() * 1e3;

    let run_feeds: Vec<(&str, Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let warmup = (iters / 10).clamp(1, 5);
    for _ in 0..warmup {
        session.run(&run_feeds)?;
    }
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        session.run(&run_feeds)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    log::info!("arena {} bytes", plan.arena_bytes);
    println!(
        "bench model={} threads={} iters={} load_ms={:.3} median_ms={:.3} p90_ms={:.3}",
        model.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        threads,
        iters,
        load_ms,
        percentile(&times, 0.5),
        percentile(&times, 0.9),
    );
    eprintln!("arena_bytes={}", plan.arena_bytes);
    Ok(())
}
