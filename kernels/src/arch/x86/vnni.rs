//! The int8 kernels of the AVX-512 path on CPUs with VNNI: `vpdpbusd` multiplies 4 u8 activations
//! by 4 s8 weights and adds them to an i32 lane, 64 multiply-adds per instruction where an f32 FMA
//! does 16. Only [`super::avx512()`] hands [`KERNELS`] out, after detecting AVX-512 F/BW/VNNI.

use std::arch::x86_64::*;

use super::avx512::lane_mask;
use super::bounds;
use super::fused::Epilogue;
use super::fused_avx512::store;
use super::gemv_wide::PREFETCH;
use crate::arch::fused_parts::SumsSink;
use crate::arch::int8::{
    dot_nibbles_check, gemm_check, gemm_fused_check, min_max_check, quantize_check, Int8ConvKernels,
    Int8Kernels, U8Range,
};
use crate::arch::FusedRows;

/// The AVX-512 VNNI int8 kernels.
pub(super) const KERNELS: Int8Kernels = Int8Kernels {
    conv: Some(Int8ConvKernels { min_max, quantize, gemm, gemm_fused: Some(gemm_fused) }),
    dot_nibbles: Some(dot_nibbles),
};

/// See [`Int8ConvKernels::min_max`].
fn min_max(x: &[f32], offs: &[usize], n: usize) -> [f32; 2] {
    if !min_max_check(x, offs, n) {
        return [0.0, 0.0];
    }
    // SAFETY: AVX-512 F was detected before this table was handed out; the check asserted that
    // `n` elements after every offset lie in `x`.
    unsafe { min_max_impl(x.as_ptr(), offs, n) }
}

/// [`min_max`] over raw rows; the tail of each row under a lane mask. Four vectors at a time into
/// four pairs of running extremes: one pair waits on each `vminps` / `vmaxps` (4 cycles), which
/// held the scan of a 576-channel 14×14 input (MobileNetV2) to about 4 floats a cycle. The new
/// value goes first: `vminps` returns its second operand when either is NaN, so a NaN input is
/// skipped, as `f32::min` in the reference skips it.
#[target_feature(enable = "avx512f")]
unsafe fn min_max_impl(x: *const f32, offs: &[usize], n: usize) -> [f32; 2] {
    let mut lo = [_mm512_set1_ps(f32::INFINITY); 4];
    let mut hi = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
    for &o in offs {
        // SAFETY: elements o..o + n of x are in bounds (checked by the caller); masked-off lanes
        // are not read.
        unsafe {
            let row = x.add(o);
            let mut j = 0;
            while j + 64 <= n {
                for (u, (lo, hi)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
                    let v = _mm512_loadu_ps(row.add(j + 16 * u));
                    (*lo, *hi) = (_mm512_min_ps(v, *lo), _mm512_max_ps(v, *hi));
                }
                j += 64;
            }
            while j + 16 <= n {
                let v = _mm512_loadu_ps(row.add(j));
                (lo[0], hi[0]) = (_mm512_min_ps(v, lo[0]), _mm512_max_ps(v, hi[0]));
                j += 16;
            }
            if j < n {
                let m = lane_mask(n - j);
                let v = _mm512_maskz_loadu_ps(m, row.add(j));
                (lo[1], hi[1]) =
                    (_mm512_mask_min_ps(lo[1], m, v, lo[1]), _mm512_mask_max_ps(hi[1], m, v, hi[1]));
            }
        }
    }
    let lo = _mm512_min_ps(_mm512_min_ps(lo[0], lo[1]), _mm512_min_ps(lo[2], lo[3]));
    let hi = _mm512_max_ps(_mm512_max_ps(hi[0], hi[1]), _mm512_max_ps(hi[2], hi[3]));
    [_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi)]
}

/// See [`Int8ConvKernels::quantize`].
fn quantize(x: &[f32], offs: &[usize], n: usize, range: U8Range, xq: &mut [u8], ldx: usize) {
    quantize_check(x, offs, n, xq, ldx);
    // SAFETY: AVX-512 F and BW were detected before this table was handed out; the check asserted
    // that `xq` holds every group's `ldx` words and `x` holds `n` elements after every offset.
    unsafe { quantize_impl(x.as_ptr(), offs, n, range, xq.as_mut_ptr(), ldx) }
}

/// Each group of 4 channels and 16 pixels becomes one register of 16 words, channel `t` in byte
/// `t` of each: the layout `vpdpbusd` reads. The four channels' levels are packed to bytes with
/// two saturating packs and put in order with one byte shuffle (a shift and an OR per channel
/// before: 8 operations for 4): a 576->96 1×1 layer over 14×14 went from 0.054 to 0.050 ms at 1
/// thread (3 runs each).
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_impl(x: *const f32, offs: &[usize], n: usize, range: U8Range, xq: *mut u8, ldx: usize) {
    let (lo, inv) = (_mm512_set1_ps(range.lo), _mm512_set1_ps(range.inv_step));
    let top = _mm512_set1_ps(255.0);
    // After the packs, each 128-bit lane holds channel t's 4 pixels in bytes 4t..4t + 3; pixel k's
    // word takes bytes k, k + 4, k + 8, k + 12.
    let order = _mm512_set4_epi32(0x0f0b_0703, 0x0e0a_0602, 0x0d09_0501, 0x0c08_0400);
    for (g, chans) in offs.chunks(4).enumerate() {
        // SAFETY: group g's row of ldx words lies in xq (checked by the caller).
        let row = unsafe { xq.add(g * ldx * 4) };
        let mut j = 0;
        while j < n {
            let m = lane_mask(n - j);
            let mut q = [_mm512_setzero_si512(); 4];
            for (q, &o) in q.iter_mut().zip(chans) {
                // SAFETY: pixel j < n of channel o is in bounds; masked-off lanes are not read.
                let v = unsafe { _mm512_maskz_loadu_ps(m, x.add(o + j)) };
                // `min(255, t)` keeps a NaN (the second operand), which the conversion turns into
                // i32::MIN; it, and every negative level, packs to 0, as the reference clamps
                // them; rounding is half to even (the default MXCSR mode), as in the reference.
                *q = _mm512_cvtps_epi32(_mm512_min_ps(top, _mm512_mul_ps(_mm512_sub_ps(v, lo), inv)));
            }
            let words = _mm512_packus_epi16(_mm512_packus_epi32(q[0], q[1]), _mm512_packus_epi32(q[2], q[3]));
            let word = _mm512_shuffle_epi8(words, order);
            // Pixels past n stay zero.
            // SAFETY: words j..j + 16 of the row are in bounds (j + 16 <= ldx, a multiple of 16).
            unsafe { _mm512_storeu_si512(row.add(j * 4).cast(), _mm512_maskz_mov_epi32(m, word)) };
            j += 16;
        }
        while j < ldx {
            // SAFETY: as above.
            unsafe { _mm512_storeu_si512(row.add(j * 4).cast(), _mm512_setzero_si512()) };
            j += 16;
        }
    }
}

/// See [`Int8ConvKernels::gemm`].
#[allow(clippy::too_many_arguments)]
fn gemm(
    w: &[i8],
    kq: usize,
    xq: &[u8],
    ldx: usize,
    n: usize,
    mul: &[f32],
    add: &[f32],
    c: &mut [f32],
    ldc: usize,
) {
    let Some(m) = gemm_check(w, kq, xq, ldx, n, mul, add, c, ldc) else { return };
    // SAFETY: AVX-512 F/BW/VNNI were detected before this table was handed out; the check
    // asserted that w holds m rows of kq, xq kq / 4 rows of ldx >= n.next_multiple_of(16) words
    // (ldx is a multiple of 16), mul/add m values and c m rows of n, ldc apart.
    unsafe {
        let sink = SumsSink::Plain(c.as_mut_ptr(), ldc);
        gemm_impl(w.as_ptr(), kq, m, xq.as_ptr(), ldx, n, mul.as_ptr(), add.as_ptr(), sink)
    }
}

/// See [`Int8ConvKernels::gemm_fused`]: the tiles of [`gemm`], each row's scaled sums handed to
/// the f32 fused kernels' epilogue (residual, bias, activation, masked store) in registers. A
/// 32->192 1×1 layer over 28×28 spent a third of its time in the separate pass of the plain form.
#[allow(clippy::too_many_arguments)]
fn gemm_fused(
    w: &[i8],
    kq: usize,
    xq: &[u8],
    ldx: usize,
    n: usize,
    mul: &[f32],
    add: &[f32],
    out: FusedRows<'_, '_>,
) {
    let Some(m) = gemm_fused_check(w, kq, xq, ldx, n, mul, add, &out) else { return };
    // SAFETY: as in `gemm`, with `out`'s rows (and their biases, slopes and residual values)
    // checked for `m` rows of `n` columns in place of `c`.
    unsafe {
        let sink = SumsSink::Fused(Epilogue::new(out));
        gemm_impl(w.as_ptr(), kq, m, xq.as_ptr(), ldx, n, mul.as_ptr(), add.as_ptr(), sink)
    }
}

/// Rows per register block: 6 rows × 4 vectors = 24 accumulators, 4 activation vectors and a
/// broadcast weight word of 32 registers.
const MR: usize = 6;
/// Pixels per strip: 4 vectors of 16.
const NR: usize = 64;

/// Strips of [`NR`] pixels outer (a strip of the quantized input, `kq × 64` bytes, stays in L1
/// while every row block passes over it), row blocks inner.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemm_impl(
    w: *const i8,
    kq: usize,
    m: usize,
    xq: *const u8,
    ldx: usize,
    n: usize,
    mul: *const f32,
    add: *const f32,
    sink: SumsSink<'_>,
) {
    let mut j = 0;
    while j < n {
        let width = (n - j).min(NR);
        let mut i = 0;
        while i < m {
            let r = if m - i >= MR { MR } else { [1, 2, 2, 4, 4][m - i - 1] };
            // SAFETY (every arm): rows i..i + r of w, mul, add and the sink, pixels j..j + width
            // of the sink and words j..j + width.next_multiple_of(16) <= ldx of every xq row are
            // in bounds.
            let (wp, xp, mp, ap) = unsafe { (w.add(i * kq), xq.add(j * 4), mul.add(i), add.add(i)) };
            macro_rules! rows {
                ($v:literal) => {
                    match r {
                        6 => tile::<6, $v>(wp, kq, xp, ldx, width, mp, ap, sink, (i, j)),
                        4 => tile::<4, $v>(wp, kq, xp, ldx, width, mp, ap, sink, (i, j)),
                        2 => tile::<2, $v>(wp, kq, xp, ldx, width, mp, ap, sink, (i, j)),
                        _ => tile::<1, $v>(wp, kq, xp, ldx, width, mp, ap, sink, (i, j)),
                    }
                };
            }
            // SAFETY: the tile reads and writes only the bounds stated above; the features it
            // enables are those this function runs with.
            unsafe {
                match width.div_ceil(16) {
                    4 => rows!(4),
                    3 => rows!(3),
                    2 => rows!(2),
                    _ => rows!(1),
                }
            }
            i += r;
        }
        j += width;
    }
}

/// `R` rows × `V` vectors of 16 pixels (`width <= 16 V` of them stored, `width > 16 (V - 1)`):
/// i32 sums in registers over all of `kq`, then scaled and offset to f32 per row and handed to
/// `sink` as rows `at.0 ..` at pixel `at.1`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const R: usize, const V: usize>(
    w: *const i8,
    kq: usize,
    xq: *const u8,
    ldx: usize,
    width: usize,
    mul: *const f32,
    add: *const f32,
    sink: SumsSink<'_>,
    at: (usize, usize),
) {
    let mut acc = [[_mm512_setzero_si512(); V]; R];
    for g in 0..kq / 4 {
        let mut xv = [_mm512_setzero_si512(); V];
        for (v, x) in xv.iter_mut().enumerate() {
            // SAFETY: words v * 16.. of this group's row are below width.next_multiple_of(16) <= ldx.
            *x = unsafe { _mm512_loadu_si512(xq.add((g * ldx + v * 16) * 4).cast()) };
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: weights 4g..4g + 4 of row r < R are in bounds (4g + 4 <= kq).
            let word = unsafe { w.add(r * kq + 4 * g).cast::<i32>().read_unaligned() };
            let wb = _mm512_set1_epi32(word);
            for (a, &x) in acc_r.iter_mut().zip(&xv) {
                *a = _mm512_dpbusd_epi32(*a, x, wb);
            }
        }
    }
    let masks: [__mmask16; V] = std::array::from_fn(|v| lane_mask(width.saturating_sub(16 * v)));
    for (r, acc_r) in acc.iter().enumerate() {
        // SAFETY: r < R rows of mul, add and the sink are in bounds; only pixels below width
        // (the lanes set in `masks`) are stored.
        unsafe {
            let (s, o) = (_mm512_set1_ps(*mul.add(r)), _mm512_set1_ps(*add.add(r)));
            let f = acc_r.map(|a| _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), s, o));
            match sink {
                SumsSink::Plain(c, ldc) => {
                    for (v, (f, &mask)) in f.into_iter().zip(&masks).enumerate() {
                        _mm512_mask_storeu_ps(c.add((at.0 + r) * ldc + at.1 + v * 16), mask, f);
                    }
                }
                SumsSink::Fused(e) => store(e, at.0 + r, at.1, f, masks),
            }
        }
    }
}

/// See [`Int8Kernels::dot_nibbles`].
fn dot_nibbles(rows: &[&[u8]], tables: &[[u8; 16]], xp: &[i8], k: usize, out: &mut [i32]) {
    dot_nibbles_check(rows, tables, xp, k, out);
    // SAFETY: AVX-512 F/BW/VNNI were detected before this table was handed out; the check
    // asserted that every row holds k.div_ceil(2) bytes (the kernel reads no byte past them,
    // under masks) and xp k.next_multiple_of(128) values.
    unsafe { for_nibble_row_groups!(dot_nibbles_rows, rows, tables, xp, k, out) }
}

/// `R` rows: per 64 packed bytes (128 weights), the low and high nibbles index the row's table
/// with one `vpshufb` each (the 16-byte table repeated in every 128-bit lane), and `vpdpbusd`
/// multiplies the u8 weights with the s8 activations, 4 per 32-bit lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_nibbles_rows<const R: usize>(
    rows: &[&[u8]],
    tables: &[[u8; 16]],
    xp: &[i8],
    k: usize,
    out: &mut [i32],
) {
    let bytes = k.div_ceil(2);
    let low = _mm512_set1_epi8(0x0F);
    let mut table = [_mm512_setzero_si512(); R];
    for (t, src) in table.iter_mut().zip(tables) {
        // SAFETY: a table is 16 bytes.
        *t = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(src.as_ptr().cast()) });
    }
    let mut acc = [_mm512_setzero_si512(); R];
    let mut at = 0;
    while at < bytes {
        let mask: __mmask64 = bounds::byte_mask(bytes - at);
        // SAFETY: block at / 64 of the prepared input (128 values) is in bounds (checked).
        let (even, odd) = unsafe {
            let x = xp.as_ptr().add(2 * at);
            (_mm512_loadu_si512(x.cast()), _mm512_loadu_si512(x.add(64).cast()))
        };
        for r in 0..R {
            // A whole block is a plain load (measured faster than a full-mask load in the f32
            // GEMV); a hint fetches 4 KiB ahead, as there.
            _mm_prefetch::<_MM_HINT_T0>(rows[r].as_ptr().wrapping_add(at + PREFETCH).cast());
            // SAFETY: bytes at..at + 64 of the row, masked to those below its k.div_ceil(2).
            let packed = unsafe {
                let p = rows[r].as_ptr().add(at);
                if mask == !0 {
                    _mm512_loadu_si512(p.cast())
                } else {
                    _mm512_maskz_loadu_epi8(mask, p.cast())
                }
            };
            let lo = _mm512_and_si512(packed, low);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low);
            let w_lo = _mm512_shuffle_epi8(table[r], lo);
            let w_hi = _mm512_shuffle_epi8(table[r], hi);
            acc[r] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[r], w_lo, even), w_hi, odd);
        }
        at += 64;
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = _mm512_reduce_add_epi32(a);
    }
}
