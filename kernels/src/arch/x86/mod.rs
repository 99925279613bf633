//! x86-64 paths: AVX2 + FMA (8 lanes) and AVX-512 (16 lanes).
//!
//! The `#[target_feature]` micro-kernels are `unsafe` to call on a CPU without the features, so the
//! [`Isa`] tables built from them are handed out only by [`avx2()`] and [`avx512()`], after
//! `is_x86_feature_detected!` confirmed every feature the path enables. The table entries are safe
//! wrappers whose soundness rests on that check.

/// Calls `$kernel::<R>(rows, tables, xp, k, out)` (an int8 `dot_nibbles` kernel over `R` rows
/// sharing each load of the prepared input) on groups of [`NIBBLE_ROWS`] rows, the last group
/// with what is left. Expands to calls of the `unsafe` kernel: use it inside an `unsafe` block
/// whose `SAFETY` comment covers the kernel's contract.
macro_rules! for_nibble_row_groups {
    ($kernel:ident, $rows:expr, $tables:expr, $xp:expr, $k:expr, $out:expr) => {
        for ((rows, tables), out) in $rows
            .chunks(super::NIBBLE_ROWS)
            .zip($tables.chunks(super::NIBBLE_ROWS))
            .zip($out.chunks_mut(super::NIBBLE_ROWS))
        {
            match rows.len() {
                4 => $kernel::<4>(rows, tables, $xp, $k, out),
                3 => $kernel::<3>(rows, tables, $xp, $k, out),
                2 => $kernel::<2>(rows, tables, $xp, $k, out),
                _ => $kernel::<1>(rows, tables, $xp, $k, out),
            }
        }
    };
}

/// Rows the int8 `dot_nibbles` kernels take together, sharing each load of the prepared input.
const NIBBLE_ROWS: usize = 4;

/// Calls `$kernel::<B>(args…)` (a `decode_packed` group loop) for the index width `$bits`
/// (1-7; the caller has checked it, and anything above 6 takes 7). Expands to calls of the
/// `unsafe` kernel: use it inside an `unsafe` block whose `SAFETY` comment covers its contract.
macro_rules! for_index_width {
    ($kernel:ident, $bits:expr, $($arg:expr),* $(,)?) => {
        match $bits {
            1 => $kernel::<1>($($arg),*),
            2 => $kernel::<2>($($arg),*),
            3 => $kernel::<3>($($arg),*),
            4 => $kernel::<4>($($arg),*),
            5 => $kernel::<5>($($arg),*),
            6 => $kernel::<6>($($arg),*),
            _ => $kernel::<7>($($arg),*),
        }
    };
}

mod avx2;
mod avx512;

pub(crate) use avx512::lane_mask;
mod blocked_avx512;
mod blocked_bf16;
mod bounds;
mod decode_packed;
mod decode_packed_avx2;
mod depthwise;
mod depthwise3x3_avx2;
mod depthwise_avx2;
mod depthwise_interleaved;
mod depthwise_small_avx2;
mod fused;
mod fused_avx512;
mod fused_bf16;
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
/// with the VNNI int8 kernels when it also has VNNI, else with the AVX2 path's int8 GEMV; and
/// with bf16 1×1 products when it has AVX-512 BF16.
pub fn avx512() -> Option<Isa> {
    let ok = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma");
    let vnni = is_x86_feature_detected!("avx512vnni");
    let int8 = if vnni { vnni::KERNELS } else { int8_avx2::KERNELS };
    let bf16 = is_x86_feature_detected!("avx512bf16");
    let blocked = crate::blocked::BlockedKernels {
        bf16: bf16.then_some(blocked_bf16::KERNELS),
        ..blocked_avx512::KERNELS
    };
    ok.then_some(Isa {
        int8: Some(int8),
        bf16: bf16.then_some(fused_bf16::KERNELS),
        blocked: Some(blocked),
        ..avx512::ISA
    })
}
