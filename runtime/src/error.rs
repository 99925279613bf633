//! Errors of the runtime.

use pith_format::FormatError;

/// Everything that can go wrong building or running a session.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The model file itself is invalid.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A node's attributes or inputs are not acceptable for its operator.
    #[error("node '{node}' ({op}): {msg}")]
    Node {
        /// Node name.
        node: String,
        /// ONNX operator name.
        op: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// The caller's inputs do not match the model.
    #[error("input '{name}': {msg}")]
    Input {
        /// Input name.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// Anything else about the graph (missing input, unsupported construct).
    #[error("{0}")]
    Graph(String),
    /// A buffer the plan needs could not be allocated (the device has less memory free).
    #[error("could not allocate {bytes} bytes for the {what}")]
    OutOfMemory {
        /// Which buffer.
        what: &'static str,
        /// Its size.
        bytes: usize,
    },
    /// The plan for these input shapes needs more activation memory than
    /// [`crate::SessionOptions::memory_limit`] allows.
    #[error("inputs {shapes} need {needed} bytes of activation memory, over the session's limit of {limit}")]
    MemoryLimit {
        /// The input shapes, by name.
        shapes: String,
        /// Bytes the plan needs.
        needed: usize,
        /// The session's limit.
        limit: usize,
    },
}

/// Result alias for the runtime.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Error raised by an op implementation; the session wraps it into [`RuntimeError::Node`] with the node's name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct OpError(pub String);

/// Returns early with an [`OpError`] built from a format string.
#[macro_export]
macro_rules! op_bail {
    ($($arg:tt)*) => { return Err($crate::error::OpError(format!($($arg)*))) };
}
