//! A [`FusedRows`] as raw parts, so the register loops of the [`Isa::gemm_rows_fused`] kernels
//! (AVX2, AVX-512, NEON) can take their epilogue by copy.
//!
//! [`Isa::gemm_rows_fused`]: crate::arch::Isa::gemm_rows_fused

use crate::arch::{FusedActivation, FusedRows};

/// A [`FusedActivation`] with its slopes as a raw pointer, so the [`Epilogue`] is `Copy`.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Act {
    None,
    /// `lo ..= hi`.
    Clamp(f32, f32),
    HardSwish,
    /// `scale * HardSwish(x) + shift`.
    HardSwishAffine(f32, f32),
    /// Row `i`'s slope at `slopes[i]`.
    Leaky(*const f32),
}

/// The rows of a [`FusedRows`] as raw parts (null: absent): output rows from column `col`,
/// biases, residual rows `residual_pitch` apart for the first `residual_rows` rows, and the
/// activation.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'d> {
    pub(crate) rows: *mut &'d mut [f32],
    pub(crate) col: usize,
    pub(crate) bias: *const f32,
    pub(crate) residual: *const f32,
    pub(crate) residual_pitch: usize,
    pub(crate) residual_rows: usize,
    pub(crate) act: Act,
}

impl<'d> Epilogue<'d> {
    /// The raw parts of `out`, valid while `out`'s borrows are.
    pub(crate) fn new(out: FusedRows<'_, 'd>) -> Epilogue<'d> {
        let act = match out.act {
            FusedActivation::None => Act::None,
            FusedActivation::Clamp([lo, hi]) => Act::Clamp(lo, hi),
            // `FusedActivation::of_row` maps these to a plain HardSwish, which skips the affine step.
            FusedActivation::HardSwish { scale, shift } if scale == 1.0 && shift == 0.0 => Act::HardSwish,
            FusedActivation::HardSwish { scale, shift } => Act::HardSwishAffine(scale, shift),
            FusedActivation::Leaky(slopes) => Act::Leaky(slopes.as_ptr()),
        };
        let residual = out.residual.filter(|res| res.rows > 0);
        Epilogue {
            rows: out.dst.as_mut_ptr(),
            col: out.col,
            bias: out.bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
            residual: residual.map_or(std::ptr::null(), |res| res.data.as_ptr()),
            residual_pitch: residual.map_or(0, |res| res.pitch),
            residual_rows: residual.map_or(0, |res| res.rows),
            act,
        }
    }
}

/// Where an int8 GEMM's scaled sums go (the [`Int8ConvKernels`](crate::arch::int8::Int8ConvKernels)
/// `gemm` and `gemm_fused` of a path share their register blocks): rows `ldc` apart from a
/// pointer, or an epilogue's output rows.
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
#[derive(Clone, Copy)]
pub(crate) enum SumsSink<'d> {
    Plain(*mut f32, usize),
    Fused(Epilogue<'d>),
}
