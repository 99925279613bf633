//! CPU kernels that compute on packed codebook weights, decoding a row at a time into a small scratch.
//!
//! Weights arrive as [`pith_format::TensorView`]s in their stored encoding (f32, f16, i64 or packed
//! codebook indices). A kernel never widens a whole weight tensor to f32: it decodes one row (a slice
//! along axis 0, e.g. one output channel's filter) at a time with [`WeightRows`] and accumulates from it.
//!
//! Entry point: [`Kernels`], chosen once per session, whose methods are the kernels:
//! * [`Kernels::conv2d`] — grouped / depthwise / pointwise 2-D convolution (ONNX `Conv` layout),
//! * [`Kernels::conv_transpose2d`] — grouped 2-D transposed convolution (ONNX `ConvTranspose` layout),
//! * [`Kernels::gemm`] — `y = a · W + bias` with `W` stored `[N, K]` or `[K, N]`.
//!
//! Each kernel takes a caller-owned scratch slice sized by its `*_scratch_len` method, so the runtime
//! can plan all memory up front. Every kernel can fuse an [`Activation`] epilogue.

mod activation;
pub mod arch;
mod conv;
mod conv_transpose;
mod decode;
mod gemm;
mod prim;
#[cfg(test)]
mod testutil;

pub use activation::Activation;
pub use conv::Conv2dParams;
pub use decode::WeightRows;
pub use gemm::WeightLayout;

use pith_format::TensorView;

/// Errors a kernel reports instead of panicking: buffers or weights that do not match the parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    /// A buffer has the wrong number of elements.
    #[error("{what} has {got} elements, expected {expected}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Required length (minimum, for scratch).
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// The parameters themselves are inconsistent (zero stride, groups not dividing channels, ...).
    #[error("invalid parameters: {0}")]
    Params(String),
    /// The weight tensor's encoding is malformed or does not fit the expected matrix.
    #[error("weight: {0}")]
    Weight(String),
}

/// The kernel set, chosen once (instruction set, worker threads) and then used for every call.
///
/// Today every kernel runs the portable scalar path on the caller's thread; the SIMD and threaded
/// paths will be selected here, behind the same methods, without changing callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    threads: usize,
}

impl Default for Kernels {
    fn default() -> Self {
        Kernels::new(1)
    }
}

impl Kernels {
    /// The best kernel set for this CPU, allowed to use up to `threads` worker threads
    /// (0 is treated as 1). Threads are not used yet: the scalar path is single-threaded.
    pub fn new(threads: usize) -> Kernels {
        Kernels { threads: threads.max(1) }
    }

    /// Worker threads this kernel set may use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// f32 scratch elements [`Kernels::conv2d`] needs for `p`.
    pub fn conv2d_scratch_len(&self, p: &Conv2dParams) -> usize {
        conv::scratch_len(p)
    }

    /// 2-D convolution, NCHW: `y = act(conv(x, w) + bias)`.
    ///
    /// * `x`: `[batch, in_c, in_h, in_w]`; `y`: `[batch, out_c, out_h, out_w]`, fully overwritten.
    /// * `w`: ONNX layout `[out_c, in_c / groups, k_h, k_w]`, any encoding; row `oc` is one filter.
    /// * `bias`: `out_c` values, or `None`.
    /// * `scratch`: at least [`Kernels::conv2d_scratch_len`] elements.
    ///
    /// `out_h`/`out_w` are taken as given; taps falling outside the input read zero padding.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &self,
        x: &[f32],
        w: &TensorView<'_>,
        bias: Option<&[f32]>,
        p: &Conv2dParams,
        act: Activation,
        y: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        conv::conv2d(x, w, bias, p, act, y, scratch)
    }

    /// f32 scratch elements [`Kernels::conv_transpose2d`] needs for `p`.
    pub fn conv_transpose2d_scratch_len(&self, p: &Conv2dParams) -> usize {
        conv_transpose::scratch_len(p)
    }

    /// 2-D transposed convolution, NCHW: `y = act(conv_transpose(x, w) + bias)`.
    ///
    /// `p.in_*` describe `x` and `p.out_*` describe `y` (the caller folds `output_padding` and
    /// `output_shape` into `out_h`/`out_w`); `pad_top`/`pad_left` are the begin pads of ONNX `pads`.
    /// `w`: ONNX layout `[in_c, out_c / groups, k_h, k_w]`; row `ic` holds input channel `ic`'s taps.
    /// Input pixel `(iy, ix)` reaches output `(iy * stride_h - pad_top + ky * dil_h, ...)`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_transpose2d(
        &self,
        x: &[f32],
        w: &TensorView<'_>,
        bias: Option<&[f32]>,
        p: &Conv2dParams,
        act: Activation,
        y: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        conv_transpose::conv_transpose2d(x, w, bias, p, act, y, scratch)
    }

    /// f32 scratch elements [`Kernels::gemm`] needs.
    pub fn gemm_scratch_len(&self, k: usize, n: usize, layout: WeightLayout) -> usize {
        gemm::scratch_len(k, n, layout)
    }

    /// Matrix product `y[m, n] = act(sum_k a[m, k] * W[k, n] + bias[n])`.
    ///
    /// * `a`: `[m, k]` row-major; `y`: `[m, n]`, fully overwritten.
    /// * `w`: `k * n` weights in any encoding, laid out as `layout` says.
    /// * `bias`: `n` values, or `None`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        a: &[f32],
        m: usize,
        k: usize,
        n: usize,
        w: &TensorView<'_>,
        layout: WeightLayout,
        bias: Option<&[f32]>,
        act: Activation,
        y: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        gemm::gemm(a, m, k, n, w, layout, bias, act, y, scratch)
    }
}

/// Checks that buffer `what` has exactly `expected` elements.
pub(crate) fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), KernelError> {
    if got != expected {
        return Err(KernelError::Length { what, expected, got });
    }
    Ok(())
}

/// Checks that buffer `what` has at least `expected` elements.
pub(crate) fn check_min_len(what: &'static str, got: usize, expected: usize) -> Result<(), KernelError> {
    if got < expected {
        return Err(KernelError::Length { what, expected, got });
    }
    Ok(())
}
