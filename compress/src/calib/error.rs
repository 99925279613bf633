//! Errors of calibration-driven compression.

use crate::CompressError;

/// Everything that can go wrong compressing with calibration data.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    /// Importing or optimising the model failed.
    #[error(transparent)]
    Compress(#[from] CompressError),
    /// No calibration sample was given.
    #[error("the calibration set is empty")]
    NoSamples,
    /// A calibration sample does not fit the model.
    #[error("calibration sample {index} ({label}): {msg}")]
    Sample {
        /// Position of the sample.
        index: usize,
        /// Where it came from.
        label: String,
        /// What is wrong.
        msg: String,
    },
    /// An option value is out of range.
    #[error("{0}")]
    Options(String),
    /// A model could not be serialised or read back.
    #[error("building a candidate model: {0}")]
    Format(#[from] pith_format::FormatError),
    /// The runtime failed on a (reference or candidate) model.
    #[error("running the model on calibration sample {index}: {source}")]
    Run {
        /// Position of the sample.
        index: usize,
        /// The runtime's error.
        source: pith_runtime::RuntimeError,
    },
    /// The runtime refused a model.
    #[error("loading a candidate model: {0}")]
    Session(String),
    /// Fine-tuning could not run on this model.
    #[error(transparent)]
    Finetune(#[from] crate::finetune::FinetuneError),
    /// The task check cannot be applied to this model's outputs.
    #[error("task check: {0}")]
    Task(String),
}
