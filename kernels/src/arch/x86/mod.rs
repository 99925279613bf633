//! x86-64 paths: AVX2 + FMA (8 lanes) and AVX-512 (16 lanes).
//!
//! The `#[target_feature]` micro-kernels are `unsafe` to call on a CPU without the features, so the
//! [`Isa`] tables built from them are handed out only by [`avx2()`] and [`avx512()`], after
//! `is_x86_feature_detected!` confirmed every feature the path enables. The table entries are safe
//! wrappers whose soundness rests on that check.

mod avx2;
mod avx512;
mod bounds;
mod depthwise;
mod depthwise_avx2;
mod gemv_planes_avx2;
mod gemv_wide;
mod int8_avx2;
mod permute;
mod vnni;

use super::Isa;

/// The AVX2 + FMA path, if this CPU supports it, with its int8 GEMV (`vpmaddubsw`; convolutions
/// stay f32).
pub fn avx2() -> Option<Isa> {
    let ok = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    ok.then_some(Isa { int8: Some(int8_avx2::KERNELS), ..avx2::ISA })
}

/// The AVX-512 path (F, BW, VL; with AVX2 + FMA for the 8-lane tails), if this CPU supports it;
/// with the VNNI int8 kernels when it also has VNNI, else with the AVX2 path's int8 GEMV.
pub fn avx512() -> Option<Isa> {
    let ok = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma");
    let vnni = is_x86_feature_detected!("avx512vnni");
    let int8 = if vnni { vnni::KERNELS } else { int8_avx2::KERNELS };
    ok.then_some(Isa { int8: Some(int8), ..avx512::ISA })
}
