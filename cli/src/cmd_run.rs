//! `pith run`: one inference from `.npy` inputs to `.npy` outputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use pith_runtime::session::{Session, SessionOptions};

use crate::npy;

/// Parses `NAME=FILE.npy` into its parts.
pub fn parse_input_arg(arg: &str) -> Result<(String, PathBuf)> {
    let (name, file) =
        arg.split_once('=').with_context(|| format!("--input '{arg}' must be NAME=FILE.npy"))?;
    Ok((name.to_string(), PathBuf::from(file)))
}

/// Opens a model and builds a session.
pub fn open_session(model: &Path, options: SessionOptions) -> Result<Session> {
    let file =
        pith_format::PithFile::open(model).with_context(|| format!("opening model {}", model.display()))?;
    Session::new(Arc::new(file), options)
        .with_context(|| format!("building a session for {}", model.display()))
}

/// Runs the command.
pub fn run(model: &Path, inputs: &[String], output_dir: &Path, options: SessionOptions) -> Result<()> {
    let mut session = open_session(model, options)?;
    let mut tensors = Vec::new();
    for arg in inputs {
        let (name, path) = parse_input_arg(arg)?;
        tensors.push((name, npy::read(&path)?));
    }
    let feeds: Vec<(&str, pith_runtime::Tensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let outputs = session.run(&feeds).context("inference failed")?;
    std::fs::create_dir_all(output_dir).with_context(|| format!("creating {}", output_dir.display()))?;
    for (name, tensor) in &outputs {
        let path = output_dir.join(format!("{}.npy", name.replace('/', "_")));
        npy::write(&path, tensor)?;
        println!("{} {:?} -> {}", name, tensor.shape, path.display());
    }
    Ok(())
}
