//! The Pith runtime: sessions over mapped `.pith` models, a CPU backend, and task post-processing.
//!
//! * [`Session`] is the entry point: build it from a [`pith_format::PithFile`], then `run` it.
//! * [`plan`] turns a graph and input shapes into a schedule and an arena layout ([`arena`]).
//! * [`layout`] puts the activations of small-plane layer chains in the channel-blocked layout.
//! * [`exec`] runs plans; [`exec::CpuBackend`] is the CPU backend built on [`ops`].

pub mod arena;
pub mod cpu;
pub mod error;
pub mod exec;
pub mod fuse;
pub mod layout;
pub mod ops;
pub mod plan;
pub mod session;
pub mod tasks;
pub mod tensor;
pub mod threads;

pub use cpu::default_threads;
pub use error::{Result, RuntimeError};
pub use pith_kernels::ThreadWork;
pub use session::{PlanSummary, Session, SessionOptions};
pub use tensor::{Tensor, TensorBuf, MAX_TENSOR_ELEMENTS};
