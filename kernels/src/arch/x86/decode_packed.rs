//! [`crate::Isa::decode_packed`] on AVX-512: 1-3- and 5-7-bit indices widened through a table
//! held in registers, 16 per step.
//!
//! Sixteen `B`-bit indices fill `2B` bytes (at most 14): one masked load takes them, a broadcast
//! puts them in every 128-bit lane, and one in-lane byte shuffle hands each 32-bit lane the two
//! bytes its index spans; a per-lane shift and mask leave the index. The table (up to 128
//! entries) lives in up to eight registers: `vpermps` looks up 16 entries, `vpermt2ps` 32, and
//! 64 or 128 take two or four of those, blended on the index's bits 5 and 6. No index touches
//! memory, which is what makes this faster than the portable decoder's table reads.

use std::arch::x86_64::*;

use crate::arch::{decode_packed_check, scalar};

/// See [`crate::Isa::decode_packed`]: whole groups of 16 in registers, the last few indices by
/// [`scalar::decode_packed`].
pub(super) fn decode_packed(packed: &[u8], bits: u8, lut: &[f32], out: &mut [f32]) {
    decode_packed_check(packed, bits, lut, out);
    let b = bits as usize;
    let groups = out.len() / 16;
    // SAFETY: AVX-512 F/BW/VL were detected before this table was handed out. The check above
    // guarantees `packed` holds ceil(out.len() * b / 8) >= groups * 2b bytes, so every group's
    // masked 2b-byte load is in bounds; `out` holds groups * 16 floats; `lut` has 2^b entries.
    unsafe {
        let (p, o) = (packed.as_ptr(), out.as_mut_ptr());
        for_index_width!(groups_impl, bits, p, lut, o, groups)
    }
    scalar::decode_packed(&packed[groups * 2 * b..], bits, lut, &mut out[groups * 16..]);
}

/// The per-lane controls of [`groups_impl`] at `B` bits, built at compile time: lane `j` (index
/// `j` of a group; 128-bit lane `j / 4`, which holds the group's bytes from the first) takes bytes
/// `j * B / 8` and the one after (0x80 zeroes the other two), then shifts right by `j * B % 8`.
/// The AVX2 decoder's eight lanes are the first eight of these.
pub(super) struct Controls<const B: usize>;

impl<const B: usize> Controls<B> {
    pub(super) const SHUFFLE: [u8; 64] = {
        let mut s = [0x80u8; 64];
        let mut j = 0;
        while j < 16 {
            s[4 * j] = (j * B / 8) as u8;
            s[4 * j + 1] = (j * B / 8 + 1) as u8;
            j += 1;
        }
        s
    };
    pub(super) const SHIFT: [i32; 16] = {
        let mut s = [0i32; 16];
        let mut j = 0;
        while j < 16 {
            s[j] = (j * B % 8) as i32;
            j += 1;
        }
        s
    };
}

/// Decodes `groups` groups of 16 `B`-bit indices from `packed` into `out`.
///
/// # Safety
/// AVX-512 F/BW/VL must be available; `packed` must hold `groups * 2B` readable bytes, `out`
/// `groups * 16` writable floats, and `lut` at least `2^B` entries.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn groups_impl<const B: usize>(packed: *const u8, lut: &[f32], out: *mut f32, groups: usize) {
    // The table straight from `lut` into registers, a short one (B < 4) zero-padded by the load
    // mask: no copy, so a call costs little over a short stretch of a row.
    let entries = 1usize << B;
    let mut t = [_mm512_setzero_ps(); 8];
    for (i, reg) in t.iter_mut().enumerate().take(entries.div_ceil(16)) {
        let live = (entries - 16 * i).min(16);
        // SAFETY: the caller guarantees 2^B entries in `lut`; the mask loads `live` of them from
        // 16 * i, the last of which is entry 2^B - 1 at most.
        *reg = unsafe { _mm512_maskz_loadu_ps(((1u32 << live) - 1) as u16, lut.as_ptr().add(16 * i)) };
    }
    // SAFETY: both tables are 64 bytes long.
    let (shuffle, shift) = unsafe {
        (
            _mm512_loadu_si512(Controls::<B>::SHUFFLE.as_ptr().cast()),
            _mm512_loadu_si512(Controls::<B>::SHIFT.as_ptr().cast()),
        )
    };
    let mask = _mm512_set1_epi32((1 << B) - 1);
    // The group's 2B bytes (at most 14): bytes past them load as zero, never from memory.
    let load = ((1u32 << (2 * B)) - 1) as u16;
    for g in 0..groups {
        // SAFETY: the caller guarantees 2B readable bytes at g * 2B; the masked load reads no
        // others.
        let bytes = unsafe { _mm_maskz_loadu_epi8(load, packed.add(g * 2 * B).cast()) };
        let spread = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(bytes), shuffle);
        let idx = _mm512_and_si512(_mm512_srlv_epi32(spread, shift), mask);
        let w = match B {
            1..=4 => _mm512_permutexvar_ps(idx, t[0]),
            5 => _mm512_permutex2var_ps(t[0], idx, t[1]),
            6 => {
                let bit5 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(32));
                let lo = _mm512_permutex2var_ps(t[0], idx, t[1]);
                _mm512_mask_blend_ps(bit5, lo, _mm512_permutex2var_ps(t[2], idx, t[3]))
            }
            _ => {
                let bit5 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(32));
                let bit6 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(64));
                let pick = |a: usize| {
                    let lo = _mm512_permutex2var_ps(t[a], idx, t[a + 1]);
                    _mm512_mask_blend_ps(bit5, lo, _mm512_permutex2var_ps(t[a + 2], idx, t[a + 3]))
                };
                _mm512_mask_blend_ps(bit6, pick(0), pick(4))
            }
        };
        // SAFETY: the caller guarantees 16 writable floats at g * 16.
        unsafe { _mm512_storeu_ps(out.add(g * 16), w) };
    }
}
