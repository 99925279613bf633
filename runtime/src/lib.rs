//! The Pith runtime: sessions over mapped `.pith` models, a CPU backend, and task post-processing.

pub mod error;
pub mod ops;
pub mod session;
pub mod tasks;
pub mod tensor;

pub use error::{Result, RuntimeError};
pub use tensor::{Tensor, TensorBuf};
