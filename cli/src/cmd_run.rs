//! `pith run`: one inference from `.npy` inputs (or PNG/JPEG images through the explicit image
//! preprocessing flags) to `.npy` outputs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use pith_format::ir::Dim;
use pith_runtime::session::{Session, SessionOptions};

use crate::image_args::ImageArgs;
use crate::{imageio, npy};

/// Parses `NAME=FILE.npy` into its parts.
pub fn parse_input_arg(arg: &str) -> Result<(String, PathBuf)> {
    let (name, file) =
        arg.split_once('=').with_context(|| format!("--input '{arg}' must be NAME=FILE.npy"))?;
    Ok((name.to_string(), PathBuf::from(file)))
}

/// Whether `path` names a PNG or JPEG image (by extension).
fn is_image(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    matches!(ext.as_str(), "png" | "jpg" | "jpeg")
}

/// Reads input `name` from `path`: an `.npy` file, or an image made into a tensor by `image`
/// (resolved against the input's declared shape).
fn read_input(session: &Session, name: &str, path: &Path, image: &ImageArgs) -> Result<pith_runtime::Tensor> {
    if !is_image(path) {
        return npy::read(path);
    }
    if !image.is_set() {
        bail!(
            "{}: an image input needs the preprocessing flags (--input-size, --fit, --mean, --std, \
             --layout, --channels) that say how the model expects it",
            path.display()
        );
    }
    let value = session.inputs().into_iter().find(|v| v.name == name);
    let Some(value) = value else {
        let names: Vec<&str> = session.inputs().iter().map(|v| v.name.as_str()).collect();
        bail!("the model has no input '{name}' (inputs: {})", names.join(", "));
    };
    let declared: Option<Vec<Option<usize>>> =
        value.shape.as_ref().map(|dims| dims.iter().map(Dim::extent).collect());
    let recipe = image.resolve(name, declared.as_deref())?;
    let img = imageio::load(path)?;
    recipe.apply(&img).with_context(|| format!("preprocessing {}", path.display()))
}

/// Opens a model and builds a session.
pub fn open_session(model: &Path, options: SessionOptions) -> Result<Session> {
    let file =
        pith_format::PithFile::open(model).with_context(|| format!("opening model {}", model.display()))?;
    Session::new(Arc::new(file), options)
        .with_context(|| format!("building a session for {}", model.display()))
}

/// Runs the command.
pub fn run(
    model: &Path,
    inputs: &[String],
    image: &ImageArgs,
    output_dir: &Path,
    options: SessionOptions,
) -> Result<()> {
    let mut session = open_session(model, options)?;
    let mut tensors = Vec::new();
    for arg in inputs {
        let (name, path) = parse_input_arg(arg)?;
        let tensor = read_input(&session, &name, &path, image)?;
        tensors.push((name, tensor));
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
