//! The owned tensor type callers exchange with a [`crate::Session`].

use pith_format::ir::ElemType;

/// Most elements any one tensor of a plan may hold (2^30: 4 GiB of f32). Shape inference refuses
/// larger outputs with an error, so a hostile or mistaken model (a Pad of 10^9, a Reshape to a
/// huge extent) fails when the session plans instead of aborting the process on an allocation
/// no device could satisfy.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 30;

/// The element count of `shape`, or `None` when it overflows or exceeds [`MAX_TENSOR_ELEMENTS`].
pub fn bounded_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).filter(|&n| n <= MAX_TENSOR_ELEMENTS)
}

/// Element storage of a [`Tensor`].
#[derive(Debug, Clone, PartialEq)]
pub enum TensorBuf {
    /// f32 elements.
    F32(Vec<f32>),
    /// i64 elements.
    I64(Vec<i64>),
}

/// A dense, row-major (C order) tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Extents, outermost first. A scalar has an empty shape.
    pub shape: Vec<usize>,
    /// Elements; `len == shape.iter().product()`.
    pub buf: TensorBuf,
}

impl Tensor {
    /// An f32 tensor; panics if `data.len()` does not match `shape` (a caller bug, not input data).
    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data does not match its shape");
        Tensor { shape, buf: TensorBuf::F32(data) }
    }

    /// An i64 tensor; panics if `data.len()` does not match `shape`.
    pub fn from_i64(shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data does not match its shape");
        Tensor { shape, buf: TensorBuf::I64(data) }
    }

    /// A zero-filled f32 tensor.
    pub fn zeros(shape: Vec<usize>) -> Tensor {
        let n = shape.iter().product();
        Tensor { shape, buf: TensorBuf::F32(vec![0.0; n]) }
    }

    /// Element type.
    pub fn elem(&self) -> ElemType {
        match self.buf {
            TensorBuf::F32(_) => ElemType::F32,
            TensorBuf::I64(_) => ElemType::I64,
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The f32 elements, if this is an f32 tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.buf {
            TensorBuf::F32(v) => Some(v),
            TensorBuf::I64(_) => None,
        }
    }

    /// The i64 elements, if this is an i64 tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.buf {
            TensorBuf::I64(v) => Some(v),
            TensorBuf::F32(_) => None,
        }
    }
}
