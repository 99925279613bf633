//! `pith inspect`: what a `.pith` file holds.

use std::collections::BTreeMap;
use std::path::Path;

use std::io::Write;

use anyhow::{Context, Result};
use pith_format::ir::{Dim, Value};
use pith_format::{Entropy, PithFile};

fn shape_string(v: &Value) -> String {
    match &v.shape {
        None => "?".into(),
        Some(dims) => dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => n.to_string(),
                Dim::Symbol(s) => s.clone(),
            })
            .collect::<Vec<_>>()
            .join("x"),
    }
}

/// A property's value on one line: short single-line values whole, others by their size and
/// first line.
fn prop_summary(value: &str) -> String {
    const SHORT: usize = 60;
    let lines = value.lines().count();
    if lines <= 1 && value.chars().count() <= SHORT {
        return format!("{value:?}");
    }
    let head: String = value.lines().next().unwrap_or("").chars().take(SHORT).collect();
    format!("({} bytes, {lines} lines, starting {head:?})", value.len())
}

/// Runs the command.
pub fn run(model: &Path) -> Result<()> {
    let file = PithFile::open(model).with_context(|| format!("opening {}", model.display()))?;
    let graph = file.graph();
    let mut out = std::io::stdout().lock();
    let (major, minor) = file.version();
    writeln!(
        out,
        "file: {} ({} bytes), format {major}.{minor}, producer '{}'",
        model.display(),
        file.file_len(),
        file.producer()
    )?;
    for (key, value) in file.props() {
        writeln!(out, "property {key} = {}", prop_summary(value))?;
    }
    for &id in &graph.inputs {
        let v = &graph.values[id as usize];
        writeln!(out, "input  {} {:?} {}", v.name, v.elem, shape_string(v))?;
    }
    for &id in &graph.outputs {
        let v = &graph.values[id as usize];
        writeln!(out, "output {} {:?} {}", v.name, v.elem, shape_string(v))?;
    }
    let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
    for node in &graph.nodes {
        *histogram.entry(node.op.onnx_name()).or_default() += 1;
    }
    writeln!(out, "ops ({} nodes):", graph.nodes.len())?;
    for (op, count) in &histogram {
        writeln!(out, "  {op:<20} {count}")?;
    }
    writeln!(out, "constants:")?;
    let mut total = 0;
    for id in file.constant_ids() {
        let v = &graph.values[id as usize];
        let view = file.constant(id).context("constant id without data")?;
        let bytes = file.constant_bytes(id);
        total += bytes;
        let mut encoding = view.encoding_name();
        if file.constant_entropy(id) == Entropy::Huffman {
            encoding.push_str("+huff");
        }
        writeln!(out, "  {:<48} {:>16} {:>16} {:>10}", v.name, shape_string(v), encoding, bytes)?;
    }
    writeln!(out, "constant data: {total} bytes (as stored)")?;
    let s = file.entropy_stats();
    if s.huffman_tensors > 0 {
        writeln!(
            out,
            "entropy: {} Huffman-coded tensors (+huff), {} coded bytes -> {} packed bytes decoded at open in {:.2} ms",
            s.huffman_tensors,
            s.coded_bytes,
            s.decoded_bytes,
            s.decode_time.as_secs_f64() * 1e3
        )?;
    } else {
        writeln!(out, "entropy: none (all tensors mapped in place)")?;
    }
    Ok(())
}
