//! Shared setup for the criterion benchmarks (`gemv.rs`, `conv_layers.rs`, `models.rs`): synthetic
//! packed weights, the representative convolution layers, and compressed copies of the bundled
//! models. See `README.md` for what each bench measures.

use std::path::PathBuf;
use std::sync::Arc;

use pith_compress::{compress_onnx, CompressOptions, WeightFormat};
use pith_format::ir::TensorData;
use pith_format::PithFile;
use pith_kernels::Conv2dParams;

// The generator `pith bench --gemv` uses, included by path: the CLI is a binary crate, so this is
// the one way both time identical data without a second copy of the code.
#[path = "../cli/src/cmd_bench/synth.rs"]
mod synth;

pub use synth::{random_codebook_matrix, random_f32s};

/// f32 values whose slice starts on a cache line, as every activation of the runtime's arena does:
/// a large `Vec` from the allocator may start 16 bytes past a page, and then every 64-byte
/// vector load of a layer's planes straddles two lines (the channel-blocked depthwise layers
/// took up to 2x longer that way on Zen 5).
pub struct Aligned {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl Aligned {
    /// Floats per cache line.
    const LINE: usize = 16;

    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let buf = vec![0.0; len + Self::LINE];
        let start = buf.as_ptr().align_offset(64).min(Self::LINE);
        Self { buf, start, len }
    }

    /// A copy of `values`.
    pub fn copy_of(values: &[f32]) -> Self {
        let mut a = Self::zeroed(values.len());
        a.as_mut_slice().copy_from_slice(values);
        a
    }

    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }

    /// The values, to write.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// The weight encodings the layer and model benches compare: f32 (the baseline), 8-bit, 4-bit.
pub const FORMATS: [WeightFormat; 3] =
    [WeightFormat::F32, WeightFormat::Codebook { bits: 8 }, WeightFormat::Codebook { bits: 4 }];

/// A short label for a weight format: `f32`, `f16`, `cb8`, ...
pub fn format_name(format: WeightFormat) -> String {
    match format {
        WeightFormat::F32 => "f32".into(),
        WeightFormat::F16 => "f16".into(),
        WeightFormat::Codebook { bits } => format!("cb{bits}"),
    }
}

/// A `rows × cols` random weight matrix in `format` (codebooks as [`random_codebook_matrix`]).
///
/// # Panics
/// On codebook bits outside 1..=8 (a bench's own constant, never user input).
pub fn random_weights(format: WeightFormat, rows: usize, cols: usize, seed: u64) -> TensorData {
    match format {
        WeightFormat::F32 => TensorData::F32(random_f32s(rows * cols, seed)),
        WeightFormat::F16 => {
            TensorData::F16(random_f32s(rows * cols, seed).into_iter().map(half::f16::from_f32).collect())
        }
        WeightFormat::Codebook { bits } => {
            random_codebook_matrix(rows, cols, bits, seed).expect("bench bit widths are 1..=8")
        }
    }
}

/// One convolution layer of a real model, at the resolution the model runs it.
#[derive(Debug, Clone)]
pub struct ConvLayer {
    /// `model_kind_shape`, used as the benchmark id.
    pub name: &'static str,
    /// The geometry (batch 1, "same" padding).
    pub params: Conv2dParams,
}

impl ConvLayer {
    /// Multiply-accumulates per call.
    pub fn macs(&self) -> u64 {
        let p = &self.params;
        (p.out_c * p.out_h * p.out_w * p.filter_len()) as u64
    }
}

/// Batch-1 geometry of a `k × k` convolution with stride `stride` and `(k - 1) / 2` padding.
pub fn conv(
    in_c: usize,
    out_c: usize,
    hw: (usize, usize),
    k: usize,
    stride: usize,
    groups: usize,
) -> Conv2dParams {
    let pad = (k - 1) / 2;
    let out = |n: usize| (n + 2 * pad - k) / stride + 1;
    Conv2dParams {
        batch: 1,
        in_c,
        in_h: hw.0,
        in_w: hw.1,
        out_c,
        out_h: out(hw.0),
        out_w: out(hw.1),
        k_h: k,
        k_w: k,
        stride_h: stride,
        stride_w: stride,
        pad_top: pad,
        pad_left: pad,
        dil_h: 1,
        dil_w: 1,
        groups,
    }
}

/// Representative layers (shapes read from the bundled ONNX files): BlazeFace at 128×128, and
/// PP-OCRv4 det at its full-page size 736×1472 (where its time goes: the 1/4-resolution head).
pub fn conv_layers() -> Vec<ConvLayer> {
    let layer = |name, params| ConvLayer { name, params };
    vec![
        layer("blazeface_first_5x5s2_3to24_128", conv(3, 24, (128, 128), 5, 2, 1)),
        layer("blazeface_dw3x3_24_64", conv(24, 24, (64, 64), 3, 1, 24)),
        layer("blazeface_pw1x1_24to24_64", conv(24, 24, (64, 64), 1, 1, 1)),
        layer("blazeface_pw1x1_96to96_8", conv(96, 96, (8, 8), 1, 1, 1)),
        layer("ppocr_first_3x3s2_3to16_736x1472", conv(3, 16, (736, 1472), 3, 2, 1)),
        layer("ppocr_head_3x3_96to24_184x368", conv(96, 24, (184, 368), 3, 1, 1)),
        layer("ppocr_pw1x1_192to192_46x92", conv(192, 192, (46, 92), 1, 1, 1)),
        layer("ppocr_dw5x5_192_46x92", conv(192, 192, (46, 92), 5, 1, 192)),
        // MobileNetV2 (benches/make_untuned_model.py), a model the kernels were not tuned for:
        // short-reduction 1×1s over a large plane, stride-2 depthwise layers, a small-plane
        // depthwise and the last 1×1.
        layer("mobilenetv2_pw1x1_16to96_112", conv(16, 96, (112, 112), 1, 1, 1)),
        layer("mobilenetv2_pw1x1_32to16_112", conv(32, 16, (112, 112), 1, 1, 1)),
        layer("mobilenetv2_dw3x3s2_96_112", conv(96, 96, (112, 112), 3, 2, 96)),
        layer("mobilenetv2_dw3x3s2_576_14", conv(576, 576, (14, 14), 3, 2, 576)),
        layer("mobilenetv2_dw3x3_960_7", conv(960, 960, (7, 7), 3, 1, 960)),
        layer("mobilenetv2_pw1x1_320to1280_7", conv(320, 1280, (7, 7), 1, 1, 1)),
        // BlazeFace full range: 24-column rows (a vector and 8 columns on AVX-512), and its
        // last stage's 36 columns (two vectors and 4 columns).
        layer("blazeface_full_dw3x3_128_24", conv(128, 128, (24, 24), 3, 1, 128)),
        layer("blazeface_full_pw1x1_96to384_6", conv(96, 384, (6, 6), 1, 1, 1)),
    ]
}

/// `<file>` in `$PITH_MODELS_DIR` when set (e.g. on a phone), else in the source tree's
/// `tests/data/models` (an absolute path fixed at build time).
pub fn model_path(file: &str) -> PathBuf {
    match std::env::var_os("PITH_MODELS_DIR") {
        Some(dir) => PathBuf::from(dir).join(file),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/models").join(file),
    }
}

/// The bundled model `file`, compressed with `format` and opened from memory.
///
/// # Panics
/// When the bundled model is missing or fails to compress: a broken checkout, not a measurement.
pub fn compressed_model(file: &str, format: WeightFormat) -> Arc<PithFile> {
    let path = model_path(file);
    let onnx = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let compressed = compress_onnx(&onnx, &CompressOptions { weights: format })
        .unwrap_or_else(|e| panic!("compressing {file}: {e}"));
    let bytes = pith_format::write(&compressed.model).expect("writing a compressed model");
    Arc::new(PithFile::from_bytes(bytes).expect("reading back a freshly written model"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_geometry_matches_the_models() {
        // Output sizes as onnx shape inference reports them for the bundled models.
        let layers = conv_layers();
        let get = |name: &str| layers.iter().find(|l| l.name == name).unwrap().params;
        let first = get("blazeface_first_5x5s2_3to24_128");
        assert_eq!((first.out_h, first.out_w), (64, 64));
        let head = get("ppocr_head_3x3_96to24_184x368");
        assert_eq!((head.out_h, head.out_w), (184, 368));
        let ocr_first = get("ppocr_first_3x3s2_3to16_736x1472");
        assert_eq!((ocr_first.out_h, ocr_first.out_w), (368, 736));
        for l in &layers {
            l.params.check().unwrap();
        }
        assert_eq!(layers.iter().find(|l| l.name.contains("head")).unwrap().macs(), 1_404_076_032);
    }

    #[test]
    fn random_weights_have_the_requested_size_and_encoding() {
        for format in FORMATS {
            let w = random_weights(format, 24, 27, 1);
            assert_eq!(w.view().numel(), 24 * 27);
            assert_eq!(format_name(format) == "f32", matches!(w, TensorData::F32(_)));
        }
    }
}
