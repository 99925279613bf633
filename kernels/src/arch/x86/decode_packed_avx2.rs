//! [`crate::Isa::decode_packed`] on AVX2: 1-3- and 5-7-bit indices widened through a table, 8
//! per step.
//!
//! Eight `B`-bit indices fill `B` bytes: one 8-byte load takes them, a broadcast puts them in
//! both 128-bit lanes, and one in-lane byte shuffle hands each 32-bit lane the two bytes its
//! index spans; a per-lane shift and mask leave the index. A table of up to 8 entries (1-3 bits)
//! lives in a register (`vpermps`); longer ones are gathered from memory: on the Emerald Rapids
//! Xeon a gather decoded 5-bit rows at 4.9-5.1 Gelem/s against 3.6-3.7 for a tree of four
//! permutes and three blends (criterion `decode`, alternating builds).

use std::arch::x86_64::*;

use super::decode_packed::Controls;
use crate::arch::{decode_packed_check, scalar};

/// Bytes each group's load reads: the group's `B` (at most 7) and whatever follows, unused.
const LOAD: usize = 8;

/// See [`crate::Isa::decode_packed`]: groups of 8 in registers while 8 bytes from a group's start
/// lie inside `packed`, the rest by [`scalar::decode_packed`].
pub(super) fn decode_packed(packed: &[u8], bits: u8, lut: &[f32], out: &mut [f32]) {
    decode_packed_check(packed, bits, lut, out);
    let b = bits as usize;
    // Group g reads bytes g * b .. g * b + LOAD.
    let in_bounds = packed.len().checked_sub(LOAD).map_or(0, |last| last / b + 1);
    let groups = (out.len() / 8).min(in_bounds);
    // SAFETY: AVX2 was detected before this table was handed out. Every group's 8-byte load
    // ends at (groups - 1) * b + LOAD <= packed.len() by `in_bounds`; `out` holds groups * 8
    // floats; the check above guarantees `lut` 2^b entries, and every index is below 2^b.
    unsafe {
        let (p, o) = (packed.as_ptr(), out.as_mut_ptr());
        for_index_width!(groups_impl, bits, p, lut, o, groups)
    }
    scalar::decode_packed(&packed[groups * b..], bits, lut, &mut out[groups * 8..]);
}

/// Decodes `groups` groups of 8 `B`-bit indices from `packed` into `out`.
///
/// # Safety
/// AVX2 must be available; `packed` must hold `(groups - 1) * B + 8` readable bytes (none when
/// `groups` is 0), `out` `groups * 8` writable floats, and `lut` at least `2^B` entries.
#[target_feature(enable = "avx2")]
unsafe fn groups_impl<const B: usize>(packed: *const u8, lut: &[f32], out: *mut f32, groups: usize) {
    // A table of up to 8 entries (B <= 3) in a register, zero-padded by the load mask: no copy,
    // so a call costs little over a short stretch of a row. Longer tables stay in memory.
    let table = if B <= 3 {
        let live = _mm256_set1_epi32(1 << B);
        let first = _mm256_cmpgt_epi32(live, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        // SAFETY: the caller guarantees 2^B entries in `lut`; the mask loads exactly those.
        unsafe { _mm256_maskload_ps(lut.as_ptr(), first) }
    } else {
        _mm256_setzero_ps()
    };
    // The first eight lanes' controls: lanes 4-7 sit in the upper 128-bit lane, which holds the
    // same bytes as the lower.
    // SAFETY: both tables are 64 bytes long; these loads read their first 32.
    let (shuffle, shift) = unsafe {
        (
            _mm256_loadu_si256(Controls::<B>::SHUFFLE.as_ptr().cast()),
            _mm256_loadu_si256(Controls::<B>::SHIFT.as_ptr().cast()),
        )
    };
    let mask = _mm256_set1_epi32((1 << B) - 1);
    for g in 0..groups {
        // SAFETY: the caller guarantees LOAD readable bytes at g * B.
        let bytes = unsafe { _mm_loadl_epi64(packed.add(g * B).cast()) };
        let spread = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(bytes), shuffle);
        let idx = _mm256_and_si256(_mm256_srlv_epi32(spread, shift), mask);
        let w = match B {
            1..=3 => _mm256_permutevar8x32_ps(table, idx),
            // SAFETY: every index is below 2^B, and the caller guarantees that many entries.
            _ => unsafe { _mm256_i32gather_ps::<4>(lut.as_ptr(), idx) },
        };
        // SAFETY: the caller guarantees 8 writable floats at g * 8.
        unsafe { _mm256_storeu_ps(out.add(g * 8), w) };
    }
}
