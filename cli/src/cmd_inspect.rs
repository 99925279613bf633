//! `pith inspect`: what a `.pith` file holds.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use pith_format::ir::{Dim, Value};
use pith_format::PithFile;

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

/// Runs the command.
pub fn run(model: &Path) -> Result<()> {
    let file = PithFile::open(model).with_context(|| format!("opening {}", model.display()))?;
    let graph = file.graph();
    let (major, minor) = file.version();
    println!(
        "file: {} ({} bytes), format {major}.{minor}, producer '{}'",
        model.display(),
        file.file_len(),
        file.producer()
    );
    for &id in &graph.inputs {
        let v = &graph.values[id as usize];
        println!("input  {} {:?} {}", v.name, v.elem, shape_string(v));
    }
    for &id in &graph.outputs {
        let v = &graph.values[id as usize];
        println!("output {} {:?} {}", v.name, v.elem, shape_string(v));
    }
    let mut histogram: BTreeMap<&str, usize> = BTreeMap::new();
    for node in &graph.nodes {
        *histogram.entry(node.op.onnx_name()).or_default() += 1;
    }
    println!("ops ({} nodes):", graph.nodes.len());
    for (op, count) in &histogram {
        println!("  {op:<20} {count}");
    }
    println!("constants:");
    let mut total = 0;
    for id in file.constant_ids() {
        let v = &graph.values[id as usize];
        let view = file.constant(id).context("constant id without data")?;
        let bytes = file.constant_bytes(id);
        total += bytes;
        println!("  {:<48} {:>16} {:>12} {:>10}", v.name, shape_string(v), view.encoding_name(), bytes);
    }
    println!("constant data: {total} bytes");
    Ok(())
}
