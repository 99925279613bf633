//! Reading and writing NumPy `.npy` files (f32, C order) through the `npyz` crate.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{bail, Context, Result};
use npyz::WriterBuilder;
use pith_runtime::tensor::bounded_numel;
use pith_runtime::{Tensor, TensorBuf, MAX_TENSOR_ELEMENTS};

/// Reads an f32 (or f64/i64, converted) C-order `.npy` file into a tensor.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .with_context(|| format!("{} is not a valid .npy file", path.display()))?;
    if npy.order() != npyz::Order::C {
        bail!("{}: Fortran-order arrays are not supported; save with np.ascontiguousarray", path.display());
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let type_str = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => bail!("{}: unsupported dtype {:?} (expected float32)", path.display(), other),
    };
    let item_bytes = match type_str.as_str() {
        "<f4" => 4,
        "<f8" | "<i8" => 8,
        other => bail!("{}: unsupported dtype {} (expected <f4 float32)", path.display(), other),
    };
    // Checked against the file before anything is allocated for the data.
    let numel = bounded_numel(&shape).with_context(|| {
        format!("{}: shape {shape:?} exceeds {MAX_TENSOR_ELEMENTS} elements", path.display())
    })?;
    if numel * item_bytes > bytes.len() {
        bail!(
            "{}: shape {shape:?} needs {} bytes of data, the file holds {}",
            path.display(),
            numel * item_bytes,
            bytes.len()
        );
    }
    let reading = || format!("reading the data of {}", path.display());
    let data: Vec<f32> = match item_bytes {
        4 => npy.into_vec::<f32>().with_context(reading)?,
        _ if type_str == "<f8" => {
            npy.into_vec::<f64>().with_context(reading)?.into_iter().map(|v| v as f32).collect()
        }
        _ => {
            let v = npy.into_vec::<i64>().with_context(reading)?;
            return Ok(Tensor::from_i64(shape, v));
        }
    };
    if data.len() != numel {
        bail!("{}: data length does not match its shape {:?}", path.display(), shape);
    }
    Ok(Tensor::from_f32(shape, data))
}

/// Writes a tensor as a C-order `.npy` file (f32 or i64).
pub fn write(path: &Path, tensor: &Tensor) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let shape: Vec<u64> = tensor.shape.iter().map(|&d| d as u64).collect();
    let mut w = BufWriter::new(file);
    match &tensor.buf {
        TensorBuf::F32(data) => {
            let mut npy =
                npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut w).begin_nd()?;
            npy.extend(data.iter().copied())?;
            npy.finish()?;
        }
        TensorBuf::I64(data) => {
            let mut npy =
                npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut w).begin_nd()?;
            npy.extend(data.iter().copied())?;
            npy.finish()?;
        }
    }
    Ok(())
}
