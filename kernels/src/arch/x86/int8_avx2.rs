//! The int8 GEMV of the AVX2 path (no VNNI): 4-bit codebook rows against s8 activations.
//!
//! AVX2 has no `vpdpbusd`; its `vpmaddubsw` multiplies u8 by s8 and adds pairs into saturating
//! 16-bit lanes. A table entry `t` (u8, the s8 weight plus 128) times an activation `x` can reach
//! 255 · 127 per product, 64,770 per pair: it would saturate. So each entry becomes the s8 weight
//! `w = t - 128` (one XOR per table), and `vpmaddubsw(|w|, sign(w) · x)` multiplies the magnitude
//! (at most 128, as u8) with the activation carrying the weight's sign (at most 127, since the
//! activations are clamped to ±127): at most 32,512 per pair, exact. `vpmaddwd` by ones widens
//! the pairs into i32 lanes, and `128 · sum(x)` (taken once from the shared activations) turns
//! `sum(w · x)` back into `sum(t · x)`. Per 32 weights of a row: one `vpshufb`, `vpabsb`,
//! `vpsignb`, `vpmaddubsw`, `vpmaddwd` and `vpaddd`, where the f32 kernel spends 12 shuffles.
//!
//! Convolutions stay f32 on this path ([`Int8Kernels::conv`] is `None`).

use std::arch::x86_64::*;

use super::gemv_wide::PREFETCH;
use crate::arch::int8::{dot_nibbles_check, Int8Kernels};

/// The AVX2 int8 kernels: the GEMV only.
pub(super) const KERNELS: Int8Kernels = Int8Kernels { conv: None, dot_nibbles: Some(dot_nibbles) };

/// Packed bytes per step: one register of 64 indices.
const STEP: usize = 32;

/// See [`Int8Kernels::dot_nibbles`]. Exact for activations in ±127 (what
/// [`crate::arch::int8::prepare_nibbles`] writes) and any table.
fn dot_nibbles(rows: &[&[u8]], tables: &[[u8; 16]], xp: &[i8], k: usize, out: &mut [i32]) {
    dot_nibbles_check(rows, tables, xp, k, out);
    // SAFETY: AVX2 was detected before this table was handed out (`super::avx2`); the check
    // asserted that every row holds k.div_ceil(2) bytes (whole steps are read in place, the last
    // partial one from a copy) and xp k.next_multiple_of(128) values.
    unsafe { for_nibble_row_groups!(dot_nibbles_rows, rows, tables, xp, k, out) }
}

/// Sum of the 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// `R` rows over every step of 32 packed bytes: the low nibbles pair with the block's even
/// activations, the high ones with its odd ones (the [`crate::arch::int8::prepare_nibbles`] layout: per 128
/// activations, 64 even then 64 odd, so packed bytes `at .. at + 32` meet activations
/// `at / 64 * 128 + at % 64` and 64 past it).
#[target_feature(enable = "avx2")]
unsafe fn dot_nibbles_rows<const R: usize>(
    rows: &[&[u8]],
    tables: &[[u8; 16]],
    xp: &[i8],
    k: usize,
    out: &mut [i32],
) {
    let bytes = k.div_ceil(2);
    let low = _mm256_set1_epi8(0x0F);
    let (ones8, ones16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
    let mut table = [_mm256_setzero_si256(); R];
    for (t, src) in table.iter_mut().zip(tables) {
        // SAFETY: a table is 16 bytes.
        let t128 = unsafe { _mm_loadu_si128(src.as_ptr().cast()) };
        *t = _mm256_broadcastsi128_si256(_mm_xor_si128(t128, _mm_set1_epi8(i8::MIN)));
    }
    let (mut acc, mut xsum) = ([_mm256_setzero_si256(); R], _mm256_setzero_si256());
    let mut step = |at: usize, packed: [__m256i; R]| {
        // SAFETY: the caller's check asserted xp.len() >= k.next_multiple_of(128), which covers
        // the 32 values at `even` and at `even + 64` for every step below k.div_ceil(2) bytes.
        let (even, odd) = unsafe {
            let x = xp.as_ptr().add(at / 64 * 128 + at % 64);
            (_mm256_loadu_si256(x.cast()), _mm256_loadu_si256(x.add(64).cast()))
        };
        // sum(x): pairs of at most 2 · 127 per 16-bit lane, then widened.
        let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(ones8, even), _mm256_maddubs_epi16(ones8, odd));
        xsum = _mm256_add_epi32(xsum, _mm256_madd_epi16(pairs, ones16));
        for r in 0..R {
            let lo = _mm256_and_si256(packed[r], low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(packed[r]), low);
            let (w_lo, w_hi) = (_mm256_shuffle_epi8(table[r], lo), _mm256_shuffle_epi8(table[r], hi));
            let p_lo = _mm256_maddubs_epi16(_mm256_abs_epi8(w_lo), _mm256_sign_epi8(even, w_lo));
            let p_hi = _mm256_maddubs_epi16(_mm256_abs_epi8(w_hi), _mm256_sign_epi8(odd, w_hi));
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(p_lo, ones16));
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(p_hi, ones16));
        }
    };
    let whole = bytes / STEP * STEP;
    let mut at = 0;
    while at < whole {
        let packed: [__m256i; R] = std::array::from_fn(|r| {
            // A hint fetches 4 KiB ahead, as the other GEMVs do.
            _mm_prefetch::<_MM_HINT_T0>(rows[r].as_ptr().wrapping_add(at + PREFETCH).cast());
            // SAFETY: bytes at..at + 32 lie below k.div_ceil(2), within the row (checked).
            unsafe { _mm256_loadu_si256(rows[r].as_ptr().add(at).cast()) }
        });
        step(at, packed);
        at += STEP;
    }
    if at < bytes {
        // The last partial step from zero-padded copies: a padding byte's indices meet zero
        // activations (prepare_nibbles zero-fills past k), as does an odd k's last high nibble.
        let packed: [__m256i; R] = std::array::from_fn(|r| {
            let mut copy = [0u8; STEP];
            copy[..bytes - at].copy_from_slice(&rows[r][at..bytes]);
            // SAFETY: `copy` is 32 bytes.
            unsafe { _mm256_loadu_si256(copy.as_ptr().cast()) }
        });
        step(at, packed);
    }
    let offset = 128 * hsum_i32(xsum);
    for (o, a) in out.iter_mut().zip(acc) {
        *o = hsum_i32(a) + offset;
    }
}
