//! `pith compress`: ONNX in, `.pith` out, with a per-layer table.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use pith_compress::{CompressOptions, Compressed, WeightFormat};

/// Parses `--bits`: `1`..`8`, `f16` or `f32`.
pub fn parse_bits(s: &str) -> Result<WeightFormat, String> {
    match s {
        "f32" => Ok(WeightFormat::F32),
        "f16" => Ok(WeightFormat::F16),
        _ => match s.parse::<u8>() {
            Ok(b @ 1..=8) => Ok(WeightFormat::Codebook { bits: b }),
            _ => Err(format!("'{s}' is not a weight format: use 1..8, f16 or f32")),
        },
    }
}

/// Compresses `input` into `.pith` bytes; `quiet` hides the progress bar.
pub fn compress_file(input: &Path, weights: WeightFormat, quiet: bool) -> Result<(Compressed, Vec<u8>)> {
    let onnx = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let options = CompressOptions { weights };
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} compressing [{bar:30}] {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let compressed =
        pith_compress::compress_onnx_with_progress(&onnx, &options, &mut |done, total, layer| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(layer.to_string());
        })
        .with_context(|| format!("compressing {}", input.display()))?;
    bar.finish_and_clear();
    let bytes = pith_format::write(&compressed.model).context("serialising the .pith file")?;
    Ok((compressed, bytes))
}

/// Human-readable byte count.
pub fn human_bytes(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.2} MiB", n as f64 / (1 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// Prints the per-layer table and totals.
pub fn print_report(compressed: &Compressed, file_bytes: usize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let report = &compressed.report;
    writeln!(out, "{:<48} {:>18} {:>16} {:>10} {:>10}", "layer", "shape", "encoding", "bytes", "rel.err")?;
    for l in &report.layers {
        let shape = l.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        let mut name = l.name.clone();
        if name.len() > 47 {
            name = format!("…{}", &name[name.len() - 46..]);
        }
        writeln!(
            out,
            "{:<48} {:>18} {:>16} {:>10} {:>10.2e}",
            name, shape, l.encoding, l.bytes, l.rel_error
        )?;
    }
    let ratio = report.onnx_bytes as f64 / file_bytes.max(1) as f64;
    writeln!(
        out,
        "total: {} (.pith) vs {} (ONNX): {:.2}x smaller; weights {} -> {}",
        human_bytes(file_bytes),
        human_bytes(report.onnx_bytes),
        ratio,
        human_bytes(report.layers.iter().map(|l| l.f32_bytes).sum()),
        human_bytes(report.layers.iter().map(|l| l.bytes).sum()),
    )?;
    Ok(())
}

/// Runs the command.
pub fn run(input: &Path, output: &Path, weights: WeightFormat) -> Result<()> {
    if output.exists() && output.is_dir() {
        bail!("{} is a directory", output.display());
    }
    let start = Instant::now();
    let (compressed, bytes) = compress_file(input, weights, false)?;
    std::fs::write(output, &bytes).with_context(|| format!("writing {}", output.display()))?;
    print_report(&compressed, bytes.len())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "wrote {} in {:.2} s", output.display(), start.elapsed().as_secs_f64())?;
    Ok(())
}
