//! Task pre- and post-processing around the bundled detectors.
//!
//! The runtime only moves tensors; these modules turn pixels into model inputs and model outputs
//! into results a caller can use:
//!
//! * [`blazeface`]: MediaPipe `face_detection_short_range` (letterbox to 128x128, SSD anchor
//!   decoding, weighted non-max suppression) producing [`Face`]s.
//! * [`db`]: PP-OCR DBNet text detection (PaddleOCR `DetResizeForTest` + `DBPostProcess`)
//!   producing [`TextBox`]es.
//! * [`ctc`]: PP-OCR text-line recognition (PaddleOCR `resize_norm_img` + `CTCLabelDecode`)
//!   producing a [`ctc::Reading`].
//! * [`draw`]: overlays for both result types.
//! * [`preprocess`]: a generic image-to-tensor recipe (resize, normalisation, layout) for
//!   models without a bundled task.
//!
//! Images are plain RGB8 buffers ([`RgbImage`]); decoding image files is left to callers so this
//! crate stays free of codec dependencies.

pub mod blazeface;
pub mod ctc;
pub mod db;
pub mod draw;
pub mod geometry;
pub mod image;
pub mod preprocess;

pub use blazeface::{Face, FaceOptions, Letterbox};
pub use db::{DbOptions, DbResize, TextBox};
pub use geometry::BBox;
pub use image::{resize_bilinear, RgbImage};
pub use preprocess::ImagePreprocess;

use crate::tensor::Tensor;

/// Everything that can go wrong in task pre- and post-processing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// A pixel buffer does not hold `width * height * channels` bytes.
    #[error("image {width}x{height} with {channels} channel(s) needs {expected} bytes, got {got}")]
    ImageSize {
        /// Image width in pixels.
        width: usize,
        /// Image height in pixels.
        height: usize,
        /// Channels per pixel.
        channels: usize,
        /// Bytes required.
        expected: usize,
        /// Bytes supplied.
        got: usize,
    },
    /// An image has no pixels.
    #[error("image {width}x{height} is empty")]
    EmptyImage {
        /// Image width in pixels.
        width: usize,
        /// Image height in pixels.
        height: usize,
    },
    /// A model output has an unexpected shape.
    #[error("model output '{name}' has shape {got:?}, expected {expected}")]
    Shape {
        /// Which output.
        name: &'static str,
        /// The expected shape, in words.
        expected: String,
        /// The actual shape.
        got: Vec<usize>,
    },
    /// An image preprocessing recipe cannot be applied.
    #[error("image preprocessing: {reason}")]
    Preprocess {
        /// What is wrong with it.
        reason: String,
    },
    /// A model output is not an f32 tensor.
    #[error("model output '{name}' must be f32")]
    NotF32 {
        /// Which output.
        name: &'static str,
    },
}

/// The f32 elements of `t` if its shape is exactly `expected`, else a [`TaskError`] naming `name`.
fn f32_with_shape<'a>(t: &'a Tensor, name: &'static str, expected: &[usize]) -> Result<&'a [f32], TaskError> {
    if t.shape != expected {
        return Err(TaskError::Shape { name, expected: format!("{expected:?}"), got: t.shape.clone() });
    }
    let data = t.as_f32().ok_or(TaskError::NotF32 { name })?;
    if data.len() != t.numel() {
        // A hand-built tensor whose buffer disagrees with its shape.
        return Err(TaskError::Shape {
            name,
            expected: format!("{expected:?} with {} elements", t.numel()),
            got: vec![data.len()],
        });
    }
    Ok(data)
}
