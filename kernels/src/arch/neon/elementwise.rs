//! NEON forms of the small streaming kernels: [`Isa::max_2x2`], [`Isa::deinterleave`],
//! [`Isa::transpose`], [`Isa::decode_nibbles`] and [`Isa::widen_f16`]. Each runs whole vectors and leaves the tail (and every bound check) to the
//! scalar path, so its results are the scalar path's bit for bit on finite inputs.
//!
//! [`Isa::max_2x2`]: crate::arch::Isa::max_2x2
//! [`Isa::deinterleave`]: crate::arch::Isa::deinterleave
//! [`Isa::transpose`]: crate::arch::Isa::transpose
//! [`Isa::decode_nibbles`]: crate::arch::Isa::decode_nibbles
//! [`Isa::widen_f16`]: crate::arch::Isa::widen_f16

use std::arch::aarch64::*;

use crate::arch::scalar;

/// See [`Isa::max_2x2`](crate::arch::Isa::max_2x2): 4 outputs per step, the scalar path for the
/// rest. `vmaxq_f32` returns NaN where any input is NaN (the contract allows either).
pub(super) fn max_2x2(r0: &[f32], r1: &[f32], out: &mut [f32]) {
    let n = out.len();
    crate::arch::max_2x2_check(r0, r1, out);
    let whole = n / 4 * 4;
    // SAFETY: NEON was detected before this table was handed out; step `i` reads 8 values of each
    // row from 2i and writes 4 from i, all below 2 * whole and whole (asserted above).
    unsafe { max_2x2_neon(r0.as_ptr(), r1.as_ptr(), out.as_mut_ptr(), whole) }
    scalar::max_2x2(&r0[2 * whole..], &r1[2 * whole..], &mut out[whole..]);
}

/// `vld2q_f32` splits each row's 8 values into even and odd columns, so a window's four values
/// sit in the same lane of four registers.
///
/// # Safety
/// NEON available; `r0` and `r1` hold `2 * whole` floats, `out` holds `whole` (a multiple of 4).
#[target_feature(enable = "neon")]
unsafe fn max_2x2_neon(r0: *const f32, r1: *const f32, out: *mut f32, whole: usize) {
    for i in (0..whole).step_by(4) {
        // SAFETY: `i + 4 <= whole`, so the reads end at 2 * whole and the write at whole.
        unsafe {
            let (a, b) = (vld2q_f32(r0.add(2 * i)), vld2q_f32(r1.add(2 * i)));
            let m = vmaxq_f32(vmaxq_f32(a.0, a.1), vmaxq_f32(b.0, b.1));
            vst1q_f32(out.add(i), m);
        }
    }
}

/// See [`Isa::deinterleave`](crate::arch::Isa::deinterleave): 4 pairs per step, the scalar path
/// for the rest.
pub(super) fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    crate::arch::deinterleave_check(src, even, odd);
    let whole = even.len() / 4 * 4;
    // SAFETY: NEON was detected before this table was handed out; step `i` reads 8 values of
    // `src` from 2i and writes 4 of `even` and of `odd` from i, all below 2 * whole and whole
    // (asserted above).
    unsafe { deinterleave_neon(src.as_ptr(), even.as_mut_ptr(), odd.as_mut_ptr(), whole) }
    scalar::deinterleave(&src[2 * whole..], &mut even[whole..], &mut odd[whole..]);
}

/// `vld2q_f32` loads 4 pairs split into even and odd values.
///
/// # Safety
/// NEON available; `src` holds `2 * whole` floats, `even` and `odd` hold `whole` (a multiple of 4).
#[target_feature(enable = "neon")]
unsafe fn deinterleave_neon(src: *const f32, even: *mut f32, odd: *mut f32, whole: usize) {
    for i in (0..whole).step_by(4) {
        // SAFETY: `i + 4 <= whole`, so the read ends at 2 * whole and the writes at whole.
        unsafe {
            let pairs = vld2q_f32(src.add(2 * i));
            vst1q_f32(even.add(i), pairs.0);
            vst1q_f32(odd.add(i), pairs.1);
        }
    }
}

/// See [`Isa::decode_nibbles`](crate::arch::Isa::decode_nibbles): 16 indices (8 bytes) per step
/// by table lookups on the codebook's byte planes, the scalar path for the rest.
pub(super) fn decode_nibbles(packed: &[u8], lut: &[f32; 16], out: &mut [f32]) {
    let n = out.len();
    crate::arch::decode_nibbles_check(packed, out);
    let whole = n / 16 * 16;
    // SAFETY: NEON was detected before this table was handed out; step `i` reads bytes `i / 2 ..
    // i / 2 + 8` with `i + 16 <= whole <= n`, inside `packed` by the assertion, and writes
    // `out[i .. i + 16]`.
    unsafe { decode_nibbles_neon(packed.as_ptr(), lut, out.as_mut_ptr(), whole) }
    scalar::decode_nibbles(&packed[whole / 2..], lut, &mut out[whole..]);
}

/// Byte `j` of every table entry forms a 16-byte table `j`; one `tbl` per table looks up byte `j`
/// of 16 weights, and `st4` interleaves the four results, which is the weights' little-endian
/// bytes in order.
///
/// # Safety
/// NEON available; `packed` holds `whole / 2` bytes and `out` `whole` floats (a multiple of 16).
#[target_feature(enable = "neon")]
unsafe fn decode_nibbles_neon(packed: *const u8, lut: &[f32; 16], out: *mut f32, whole: usize) {
    let bytes = lut.map(f32::to_le_bytes);
    let planes: [[u8; 16]; 4] = std::array::from_fn(|j| std::array::from_fn(|e| bytes[e][j]));
    // SAFETY: each plane holds the 16 bytes read.
    let [t0, t1, t2, t3] = planes.map(|p| unsafe { vld1q_u8(p.as_ptr()) });
    let low = vdup_n_u8(0x0F);
    for i in (0..whole).step_by(16) {
        // SAFETY: `i + 16 <= whole`: bytes `i / 2 .. i / 2 + 8` and floats `i .. i + 16` (64
        // bytes, what `vst4q_u8` writes) are in bounds.
        unsafe {
            let b = vld1_u8(packed.add(i / 2));
            // Index 2p is byte p's low nibble, 2p + 1 its high one.
            let idx = vcombine_u8(
                vzip1_u8(vand_u8(b, low), vshr_n_u8::<4>(b)),
                vzip2_u8(vand_u8(b, low), vshr_n_u8::<4>(b)),
            );
            let weights = uint8x16x4_t(
                vqtbl1q_u8(t0, idx),
                vqtbl1q_u8(t1, idx),
                vqtbl1q_u8(t2, idx),
                vqtbl1q_u8(t3, idx),
            );
            vst4q_u8(out.add(i).cast(), weights);
        }
    }
}

/// See [`Isa::widen_f16`](crate::arch::Isa::widen_f16): 8 values per step by `fcvtl` / `fcvtl2`
/// (base Advanced SIMD, an exact conversion), the scalar path for the rest.
pub(super) fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let whole = n / 8 * 8;
    // SAFETY: NEON was detected before this table was handed out; the kernel reads `whole`
    // halves of `src` and writes `whole` floats of `dst`, both at least `n` long. `half::f16` is
    // `repr(transparent)` over its `u16` bits.
    unsafe { widen_f16_neon(src.as_ptr().cast(), dst.as_mut_ptr(), whole) }
    scalar::widen_f16(&src[whole..n], &mut dst[whole..n]);
}

/// # Safety
/// NEON available; `src` holds `whole` halves and `dst` `whole` floats (a multiple of 8).
#[target_feature(enable = "neon")]
unsafe fn widen_f16_neon(src: *const u16, dst: *mut f32, whole: usize) {
    for i in (0..whole).step_by(8) {
        // SAFETY: `i + 8 <= whole`, in bounds of both. The asm only converts registers: it reads
        // and writes no memory and leaves the stack and flags alone (FPCR's rounding mode does not
        // apply: every f16 is exact in f32).
        unsafe {
            let h = vld1q_u16(src.add(i));
            let (lo, hi): (float32x4_t, float32x4_t);
            std::arch::asm!(
                "fcvtl {lo:v}.4s, {h:v}.4h",
                "fcvtl2 {hi:v}.4s, {h:v}.8h",
                h = in(vreg) h,
                lo = out(vreg) lo,
                hi = out(vreg) hi,
                options(pure, nomem, nostack, preserves_flags),
            );
            vst1q_f32(dst.add(i), lo);
            vst1q_f32(dst.add(i + 4), hi);
        }
    }
}

/// See [`Isa::transpose`](crate::arch::Isa::transpose): whole 4×4 tiles through registers
/// ([`tile_4x4`]), the scalar path for the last rows and columns.
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    // SAFETY: NEON was detected before this table was handed out, all `tile_4x4` needs; it
    // transposes one 4×4 tile at the pitches it is given.
    unsafe { crate::arch::transpose_by_tiles(src, rows, cols, dst, 4, tile_4x4) }
}

/// Transposes one 4×4 tile: `dst[j * dst_pitch + i] = src[i * src_pitch + j]` for `i, j < 4`:
/// `vtrn` pairs values of rows 0 / 1 and 2 / 3, then 64-bit `vtrn` pairs those pairs.
///
/// # Safety
/// NEON available; rows `0..4` of 4 values at `src` (`src_pitch` apart) and at `dst`
/// (`dst_pitch` apart) must be valid.
#[target_feature(enable = "neon")]
unsafe fn tile_4x4(src: *const f32, src_pitch: usize, dst: *mut f32, dst_pitch: usize) {
    // SAFETY: the caller guarantees the four rows of four values on both sides.
    unsafe {
        let r: [float32x4_t; 4] = std::array::from_fn(|i| vld1q_f32(src.add(i * src_pitch)));
        // t0 = r0[0] r1[0] r0[2] r1[2], t1 = r0[1] r1[1] r0[3] r1[3]; t2, t3 alike for rows 2, 3.
        let (t0, t1) = (vtrn1q_f32(r[0], r[1]), vtrn2q_f32(r[0], r[1]));
        let (t2, t3) = (vtrn1q_f32(r[2], r[3]), vtrn2q_f32(r[2], r[3]));
        let pair = |a: float32x4_t, b: float32x4_t, high: bool| {
            let (a, b) = (vreinterpretq_f64_f32(a), vreinterpretq_f64_f32(b));
            vreinterpretq_f32_f64(if high { vtrn2q_f64(a, b) } else { vtrn1q_f64(a, b) })
        };
        vst1q_f32(dst, pair(t0, t2, false));
        vst1q_f32(dst.add(dst_pitch), pair(t1, t3, false));
        vst1q_f32(dst.add(2 * dst_pitch), pair(t0, t2, true));
        vst1q_f32(dst.add(3 * dst_pitch), pair(t1, t3, true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    /// Every f16 bit pattern but the NaNs widens to exactly what the `half` crate gives, at every
    /// tail length (the conformance suite has no `widen_f16` case).
    #[test]
    fn widen_f16_matches_half_on_every_pattern() {
        let all: Vec<half::f16> = (0..=u16::MAX).map(half::f16::from_bits).collect();
        let mut got = vec![0.0f32; all.len()];
        widen_f16(&all, &mut got);
        for (h, g) in all.iter().zip(&got) {
            if h.is_nan() {
                assert!(g.is_nan(), "{:#06x} -> {g}", h.to_bits());
            } else {
                assert_eq!(g.to_bits(), h.to_f32().to_bits(), "{:#06x}", h.to_bits());
            }
        }
        let mut rng = Rng::new(5);
        for n in 0..40 {
            let src: Vec<half::f16> = rng.vec(n).iter().map(|&v| half::f16::from_f32(v - 0.5)).collect();
            let extra = rng.below(3);
            let mut dst = vec![f32::NAN; n + extra];
            widen_f16(&src, &mut dst);
            assert!(dst[..n].iter().zip(&src).all(|(d, s)| *d == s.to_f32()), "n {n}");
            assert!(dst[n..].iter().all(|d| d.is_nan()), "n {n}: wrote past the source's length");
        }
    }
}
