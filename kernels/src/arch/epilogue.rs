//! The activation epilogues ([`Activation::store_rows`], [`Activation::apply_slice`]) compiled
//! per path. They are plain Rust loops the compiler vectorises; built for the baseline target
//! they use 4-lane SSE2 on x86-64, so each SIMD path gets copies compiled with its own features.

use crate::Activation;

/// The baseline form of [`crate::Isa::store_rows`].
pub(crate) fn store_rows_plain(
    act: Activation,
    src: &[f32],
    pitch: usize,
    bias: f32,
    residual: Option<&[f32]>,
    dst: &mut [f32],
    width: usize,
) {
    act.store_rows(src, pitch, bias, residual, dst, width)
}

/// The baseline form of [`crate::Isa::activate`].
pub(crate) fn activate_plain(act: Activation, xs: &mut [f32]) {
    act.apply_slice(xs)
}

/// The baseline form of [`crate::Isa::softmax_row`].
pub(crate) fn softmax_plain(xs: &[f32], ys: &mut [f32]) {
    crate::activation::softmax_row(xs, ys)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use crate::Activation;

    /// Defines a safe entry point and its `#[target_feature]` body for each epilogue.
    macro_rules! with_features {
        (
            $features:literal,
            $store:ident,
            $store_tf:ident,
            $activate:ident,
            $activate_tf:ident,
            $softmax:ident,
            $softmax_tf:ident,
            $what:literal
        ) => {
            #[doc = concat!("[`crate::Isa::store_rows`] built for ", $what, ".")]
            pub(crate) fn $store(
                act: Activation,
                src: &[f32],
                pitch: usize,
                bias: f32,
                residual: Option<&[f32]>,
                dst: &mut [f32],
                width: usize,
            ) {
                // SAFETY: only the tables of paths whose features were detected point here (see
                // `arch::x86`); the body is safe Rust, the attribute only changes code generation.
                unsafe { $store_tf(act, src, pitch, bias, residual, dst, width) }
            }

            #[target_feature(enable = $features)]
            unsafe fn $store_tf(
                act: Activation,
                src: &[f32],
                pitch: usize,
                bias: f32,
                residual: Option<&[f32]>,
                dst: &mut [f32],
                width: usize,
            ) {
                act.store_rows(src, pitch, bias, residual, dst, width)
            }

            #[doc = concat!("[`crate::Isa::activate`] built for ", $what, ".")]
            pub(crate) fn $activate(act: Activation, xs: &mut [f32]) {
                // SAFETY: as for the store above.
                unsafe { $activate_tf(act, xs) }
            }

            #[target_feature(enable = $features)]
            unsafe fn $activate_tf(act: Activation, xs: &mut [f32]) {
                act.apply_slice(xs)
            }

            #[doc = concat!("[`crate::Isa::softmax_row`] built for ", $what, ".")]
            pub(crate) fn $softmax(xs: &[f32], ys: &mut [f32]) {
                // SAFETY: as for the store above.
                unsafe { $softmax_tf(xs, ys) }
            }

            #[target_feature(enable = $features)]
            unsafe fn $softmax_tf(xs: &[f32], ys: &mut [f32]) {
                crate::activation::softmax_row(xs, ys)
            }
        };
    }

    with_features!(
        "avx2,fma",
        store_rows_avx2,
        store_avx2,
        activate_avx2,
        act_avx2,
        softmax_avx2,
        soft_avx2,
        "AVX2 + FMA"
    );
    with_features!(
        "avx512f,avx2,fma",
        store_rows_avx512,
        store_avx512,
        activate_avx512,
        act_avx512,
        softmax_avx512,
        soft_avx512,
        "AVX-512"
    );
}
