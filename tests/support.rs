//! Shared helpers for the end-to-end tests: data paths, `.npy` I/O, model compilation, image
//! decoding and numeric comparison.
//!
//! The reference data under `data/` is produced by `golden/make_goldens.py` (onnxruntime); the
//! tests themselves never need Python.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use npyz::WriterBuilder;
use pith_compress::{compress_onnx, CompressOptions, WeightFormat};
use pith_format::PithFile;
use pith_runtime::tasks::image::RgbImage;
use pith_runtime::{Session, SessionOptions, Tensor};

/// The `data/` folder of this crate.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

/// Path of a bundled ONNX model (`data/models/<file>`).
pub fn model_path(file: &str) -> PathBuf {
    data_dir().join("models").join(file)
}

/// Path of a bundled image (`data/images/<file>`).
pub fn image_path(file: &str) -> PathBuf {
    data_dir().join("images").join(file)
}

/// File-name form of a value name: every character outside `[A-Za-z0-9_]` becomes `_`
/// (the same mapping as the generator's `sanitize`).
pub fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// A dense f32 array as stored in a `.npy` file (C order).
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Extents, outermost first.
    pub shape: Vec<usize>,
    /// Elements in C order.
    pub data: Vec<f32>,
}

impl Array {
    /// The array as a runtime tensor.
    pub fn to_tensor(&self) -> Tensor {
        Tensor::from_f32(self.shape.clone(), self.data.clone())
    }
}

/// Reads a little-endian f32, C-order `.npy` file; anything else is an error naming the file.
pub fn read_npy(path: &Path) -> Result<Array> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let npy = npyz::NpyFile::new(BufReader::new(file))
        .with_context(|| format!("{}: not a .npy file", path.display()))?;
    ensure!(npy.order() == npyz::Order::C, "{}: Fortran-order arrays are not supported", path.display());
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    let dtype = npy.dtype();
    let data = npy
        .into_vec::<f32>()
        .with_context(|| format!("{}: expected f32 data, found dtype {dtype:?}", path.display()))?;
    Ok(Array { shape, data })
}

/// Writes `array` as an f32, C-order `.npy` file.
pub fn write_npy(path: &Path, array: &Array) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let shape: Vec<u64> = array.shape.iter().map(|&d| d as u64).collect();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(file))
        .begin_nd()
        .with_context(|| format!("writing {}", path.display()))?;
    writer.extend(array.data.iter().copied())?;
    writer.finish()?;
    Ok(())
}

/// Compresses ONNX bytes with the given weight format, serialises the result and loads it back,
/// exactly as a `.pith` file on disk would be.
pub fn compile(onnx: &[u8], weights: WeightFormat) -> Result<PithFile> {
    // Other options keep their defaults, whatever fields the struct grows.
    #[allow(clippy::needless_update)]
    let options = CompressOptions { weights, ..Default::default() };
    let compressed = compress_onnx(onnx, &options).context("compressing")?;
    let bytes = pith_format::write(&compressed.model).context("writing .pith")?;
    PithFile::from_bytes(bytes).context("reading .pith back")
}

/// [`compile`] of a file, then a single-threaded session over it.
pub fn session_for(onnx_path: &Path, weights: WeightFormat) -> Result<Session> {
    let onnx = std::fs::read(onnx_path).with_context(|| format!("reading {}", onnx_path.display()))?;
    let file = compile(&onnx, weights)?;
    Ok(Session::new(Arc::new(file), SessionOptions::default())?)
}

/// Names of the graph inputs of a loaded model, in graph order.
pub fn input_names(file: &PithFile) -> Vec<String> {
    let graph = file.graph();
    graph.inputs.iter().map(|&id| graph.values[id as usize].name.clone()).collect()
}

/// The f32 data of a named session output.
pub fn output<'a>(outputs: &'a [(String, Tensor)], name: &str) -> Result<&'a [f32]> {
    let (_, tensor) =
        outputs.iter().find(|(n, _)| n == name).with_context(|| format!("no output named '{name}'"))?;
    tensor.as_f32().with_context(|| format!("output '{name}' is not f32"))
}

/// Decodes PNG/JPEG bytes into the runtime's RGB image (what the CLI does with a file).
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    let img = image::load_from_memory(bytes).context("decoding image")?.to_rgb8();
    let (width, height) = (img.width() as usize, img.height() as usize);
    Ok(RgbImage::new(width, height, img.into_raw())?)
}

/// Reads and decodes a bundled image.
pub fn load_rgb(file: &str) -> Result<RgbImage> {
    let path = image_path(file);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    decode_rgb(&bytes).with_context(|| path.display().to_string())
}

/// Cosine similarity of two equally long vectors, accumulated in f64 (1.0 for two zero vectors).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "cosine of vectors of different lengths");
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 && nb == 0.0 {
        return 1.0;
    }
    dot / (na.sqrt() * nb.sqrt()).max(f64::MIN_POSITIVE)
}

/// The error measure of the golden comparisons: `|a - b| / max(1, |b|)`, i.e. absolute error
/// for expected values below 1 and relative error above.
pub fn rel_err(actual: f32, expected: f32) -> f64 {
    let (a, b) = (f64::from(actual), f64::from(expected));
    if a.is_nan() || b.is_nan() {
        return f64::INFINITY;
    }
    (a - b).abs() / b.abs().max(1.0)
}

/// Largest [`rel_err`] over two equally long slices.
pub fn max_rel_err(actual: &[f32], expected: &[f32]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "comparing slices of different lengths");
    actual.iter().zip(expected).map(|(&a, &b)| rel_err(a, b)).fold(0.0, f64::max)
}

/// Checks shape equality and every element within `tol` ([`rel_err`]); the error names the worst
/// element, its index and both values.
pub fn check_close(actual: &Tensor, expected: &Array, tol: f64) -> Result<()> {
    ensure!(actual.shape == expected.shape, "shape {:?}, expected {:?}", actual.shape, expected.shape);
    let Some(data) = actual.as_f32() else {
        bail!("output is not f32");
    };
    let worst = data
        .iter()
        .zip(&expected.data)
        .map(|(&a, &b)| rel_err(a, b))
        .enumerate()
        .fold((0, 0.0), |acc, (i, e)| if e > acc.1 { (i, e) } else { acc });
    if worst.1 > tol {
        bail!(
            "max error {:.3e} > {tol:.0e} at flat index {}: got {}, expected {}",
            worst.1,
            worst.0,
            data[worst.0],
            expected.data[worst.0]
        );
    }
    Ok(())
}

/// The `.npy` files of a case or golden folder whose names start with `prefix` (`"input."` or
/// `"output."`), keyed by the sanitized value name, sorted by name.
pub fn npy_files(dir: &Path, prefix: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if let Some(name) = file.strip_prefix(prefix).and_then(|rest| rest.strip_suffix(".npy")) {
            found.push((name.to_string(), path.clone()));
        }
    }
    found.sort();
    Ok(found)
}

/// Runs `session` on the `input.*.npy` files of `dir` (matched to graph inputs by sanitized name)
/// and returns the outputs.
pub fn run_on_npy_inputs(
    session: &mut Session,
    file: &PithFile,
    dir: &Path,
) -> Result<Vec<(String, Tensor)>> {
    let mut tensors = Vec::new();
    for name in input_names(file) {
        let path = dir.join(format!("input.{}.npy", sanitize(&name)));
        tensors.push((name, read_npy(&path)?.to_tensor()));
    }
    let feeds: Vec<(&str, Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    Ok(session.run(&feeds)?)
}

/// Compares every `output.*.npy` of `dir` with the session output of the same (sanitized) name,
/// within `tol`; also fails when the session returns outputs the folder has no file for.
pub fn check_outputs(outputs: &[(String, Tensor)], dir: &Path, tol: f64) -> Result<()> {
    let expected = npy_files(dir, "output.")?;
    ensure!(!expected.is_empty(), "{}: no output.*.npy files", dir.display());
    ensure!(expected.len() == outputs.len(), "{} outputs, expected {}", outputs.len(), expected.len());
    for (name, tensor) in outputs {
        let key = sanitize(name);
        let (_, path) = expected
            .iter()
            .find(|(k, _)| *k == key)
            .with_context(|| format!("output '{name}' has no golden file"))?;
        check_close(tensor, &read_npy(path)?, tol).with_context(|| format!("output '{name}'"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_generator_files_parse() {
        let dir = std::env::temp_dir().join(format!("pith-support-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.npy");
        let a = Array { shape: vec![2, 3], data: vec![1.0, -2.5, 3.0, 0.0, 1e-7, 6.0] };
        write_npy(&path, &a).unwrap();
        assert_eq!(read_npy(&path).unwrap(), a);
        std::fs::write(&path, b"not numpy").unwrap();
        assert!(read_npy(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();

        // numpy-written goldens parse with the expected shape.
        let g = read_npy(&data_dir().join("golden/blazeface/input.input.npy")).unwrap();
        assert_eq!(g.shape, [1, 3, 128, 128]);
        assert!(g.data.iter().all(|v| (-1.0..=1.0).contains(v)));
    }

    #[test]
    fn metrics() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-12);
        assert_eq!(rel_err(0.5, 0.25), 0.25);
        assert_eq!(rel_err(110.0, 100.0), 0.1);
        assert_eq!(rel_err(f32::NAN, 1.0), f64::INFINITY);
        assert_eq!(max_rel_err(&[1.0, 2.0], &[1.0, 2.2]), rel_err(2.0, 2.2));
        assert_eq!(sanitize("sigmoid_0.tmp_0"), "sigmoid_0_tmp_0");
    }
}
