//! The smallest app that embeds Pith: open a `.pith` file, run it once on zeros of every input's
//! declared shape and print the outputs' shapes. `scripts/app-size.sh` cross-builds it for
//! aarch64 to measure what the runtime adds to an app.
//!
//! `cargo run --release -p pith-runtime --example run_model -- MODEL.pith`

use std::sync::Arc;

use pith_format::PithFile;
use pith_runtime::{Session, SessionOptions, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: run_model MODEL.pith")?;
    let model = Arc::new(PithFile::open(&path)?);
    let mut session = Session::new(model, SessionOptions::default())?;
    let (mut names, mut tensors) = (Vec::new(), Vec::new());
    for input in session.inputs() {
        let shape: Option<Vec<usize>> =
            input.shape.as_ref().and_then(|dims| dims.iter().map(|d| d.extent()).collect());
        let shape = shape.ok_or_else(|| format!("input `{}` has no fixed declared shape", input.name))?;
        names.push(input.name.clone());
        tensors.push(Tensor::zeros(shape));
    }
    let inputs: Vec<(&str, Tensor)> = names.iter().map(String::as_str).zip(tensors).collect();
    for (name, output) in session.run(&inputs)? {
        println!("{name}: {:?}", output.shape);
    }
    Ok(())
}
