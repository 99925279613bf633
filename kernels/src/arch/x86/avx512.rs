//! AVX-512 micro-kernels (16 f32 lanes). Tails use mask registers: masked-off lanes are neither
//! loaded nor stored (faults suppressed), so no kernel touches memory outside its slices.

use std::arch::x86_64::*;

use super::bounds::{self, Span};
use super::gemv_wide::{self, PREFETCH};
use super::permute;
use crate::arch::{
    dot_nibble_rows_f16_check, dot_packed_rows_check, dot_rows_check, gemm_rows_at_check, gemm_rows_check,
    row_table, scalar, tables_from, BRows, Isa, Listed, Strided, PACKED_ROWS,
};

/// The AVX-512 path. Private: only [`super::avx512()`] hands it out, after feature detection.
pub(super) const ISA: Isa = Isa {
    name: "avx512",
    lanes: 16,
    gemm_rows,
    gemm_rows_at,
    gemm_rows_fused: Some(super::fused_avx512::gemm_rows_fused),
    bf16: None,
    store_rows: crate::arch::epilogue::x86::store_rows_avx512,
    activate: crate::arch::epilogue::x86::activate_avx512,
    softmax_row: crate::arch::epilogue::x86::softmax_avx512,
    max_2x2,
    deinterleave,
    transpose: super::permute::transpose,
    decode_nibbles,
    decode_packed: Some(super::decode_packed::decode_packed),
    widen_f16,
    dot,
    dot_rows: Some(dot_rows),
    axpy,
    mul,
    dot_packed,
    gemv_prepare,
    dot_packed_rows,
    dot_nibble_rows_f16: Some(dot_nibble_rows_f16),
    depthwise_rows: super::depthwise::depthwise_rows_avx512,
    depthwise_s1: Some(super::depthwise::depthwise_s1_avx512),
    depthwise_s2: Some(super::depthwise::depthwise_s2_avx512),
    depthwise_plane: Some(super::depthwise::depthwise_plane_avx512),
    // AVX2's many-channel kernel, over planes of at most 8 columns: there a 16-lane row is at
    // least half empty, and it needs no per-channel call and masks. On a Xeon with AVX-512
    // (alternating runs, 1 thread), taking it up to 8 columns against not at all: BlazeFace 0.712
    // against 0.728 ms, MobileNetV2 6.24 against 6.29, MobileNetV3-Small 1.70 against 1.75; up to
    // 16 columns no better (0.717, 6.37, 1.72). Its `depthwise_small` measured no gain on
    // MobileNetV3-Small's 5×5 layers, which keep `depthwise_plane`.
    depthwise_3x3: super::avx2::ISA.depthwise_3x3,
    depthwise_3x3_width: 8,
    depthwise_small: None,
    depthwise_interleaved: Some(super::depthwise_interleaved::depthwise_interleaved_avx512),
    blocked: Some(super::blocked_avx512::KERNELS),
    int8: None,
};

/// Rows per register block of `gemm_rows`: 8 rows × 2 vectors = 16 accumulators of 32 registers.
const MR: usize = 8;
/// Columns per register block of `gemm_rows`.
const NR: usize = 32;

/// Mask of lanes `i < n` (n clamped to 16).
#[inline]
pub(crate) fn lane_mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// See [`Isa::gemm_rows`].
fn gemm_rows(a: &[f32], k: usize, b: &[f32], ldb: usize, n: usize, c: &mut [f32], ldc: usize) {
    let Some(m) = gemm_rows_check(a, k, b, ldb, n, c, ldc) else { return };
    // SAFETY: this table is only reachable after AVX-512 F/BW/VL were detected (see
    // `super::avx512`), and `gemm_rows_check` asserted that the slices cover every access.
    unsafe { gemm_rows_impl(a.as_ptr(), k, m, b.as_ptr(), Strided(ldb), n, c.as_mut_ptr(), ldc) }
}

/// See [`Isa::gemm_rows_at`].
fn gemm_rows_at(a: &[f32], k: usize, b: &[f32], offs: &[usize], n: usize, c: &mut [f32], ldc: usize) {
    let Some(m) = gemm_rows_at_check(a, k, b, offs, n, c, ldc) else { return };
    // SAFETY: as in `gemm_rows`; the check asserted `k` offsets, each with `n` elements of `b`
    // after it, so every row the kernel reads through `Listed` is in bounds.
    unsafe { gemm_rows_impl(a.as_ptr(), k, m, b.as_ptr(), Listed(offs.as_ptr()), n, c.as_mut_ptr(), ldc) }
}

/// Column strips of `NR` outer, row blocks of `MR` inner (see the AVX2 version). One or two
/// rows (depthwise filters) take wider strips instead: with only 2 accumulators per row the
/// FMA latency, not throughput, would bound the loop.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn gemm_rows_impl<B: BRows>(
    a: *const f32,
    k: usize,
    m: usize,
    b: *const f32,
    rows: B,
    n: usize,
    c: *mut f32,
    ldc: usize,
) {
    if m <= 2 {
        let strip = if m == 1 { 16 * WIDE_1 } else { 16 * WIDE_2 };
        let mut j = 0;
        while j < n {
            let w = (n - j).min(strip);
            // SAFETY: rows 0..m of a/c and columns j..j+w of b/c are in bounds.
            unsafe {
                let (bp, cp) = (b.add(j), c.add(j));
                if m == 1 {
                    tile::<1, WIDE_1, B>(a, k, bp, rows, w, cp, ldc)
                } else {
                    tile::<2, WIDE_2, B>(a, k, bp, rows, w, cp, ldc)
                }
            }
            j += w;
        }
        return;
    }
    let mut j = 0;
    while j < n {
        let w = (n - j).min(NR);
        let mut i = 0;
        while i < m {
            let r = (m - i).min(MR);
            // SAFETY (all arms): rows i..i+r of a/c and columns j..j+w of b/c are in bounds.
            let (ap, bp, cp) = unsafe { (a.add(i * k), b.add(j), c.add(i * ldc + j)) };
            // A last strip of at most 16 columns takes one vector per row: two, one of them
            // masked off, would spend half its multiply-adds on nothing.
            macro_rules! rows {
                ($v:literal) => {
                    match r {
                        8 => tile::<8, $v, B>(ap, k, bp, rows, w, cp, ldc),
                        7 => tile::<7, $v, B>(ap, k, bp, rows, w, cp, ldc),
                        6 => tile::<6, $v, B>(ap, k, bp, rows, w, cp, ldc),
                        5 => tile::<5, $v, B>(ap, k, bp, rows, w, cp, ldc),
                        4 => tile::<4, $v, B>(ap, k, bp, rows, w, cp, ldc),
                        3 => tile::<3, $v, B>(ap, k, bp, rows, w, cp, ldc),
                        2 => tile::<2, $v, B>(ap, k, bp, rows, w, cp, ldc),
                        _ => tile::<1, $v, B>(ap, k, bp, rows, w, cp, ldc),
                    }
                };
            }
            unsafe {
                if w > 16 {
                    rows!(2)
                } else {
                    rows!(1)
                }
            }
            i += r;
        }
        j += w;
    }
}

/// Vectors per row of the strip when `gemm_rows` has a single row (8 independent FMA chains).
const WIDE_1: usize = 8;
/// Vectors per row of the strip when `gemm_rows` has two rows.
const WIDE_2: usize = 4;

/// `c[r][0..w] += sum_p a[r][p] * b[p][0..w]` for `R` rows, `w <= 16 * V`, accumulators (`R × V`
/// vectors) in registers.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize, const V: usize, B: BRows>(
    a: *const f32,
    k: usize,
    b: *const f32,
    rows: B,
    w: usize,
    c: *mut f32,
    ldc: usize,
) {
    let masks: [__mmask16; V] = std::array::from_fn(|v| lane_mask(w.saturating_sub(16 * v)));
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    // SAFETY: the caller guarantees R rows of k values at `a`, k rows of w values at `b` (found
    // through `rows`) and R rows of w values at `c` (stride ldc); masked-off lanes are not accessed.
    unsafe {
        for p in 0..k {
            let bp = b.add(rows.offset(p));
            let bv: [__m512; V] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(masks[v], bp.add(16 * v)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * k + p));
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_fmadd_ps(av, bv, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let cp = c.add(r * ldc);
            for (v, (&acc, &mask)) in acc.iter().zip(&masks).enumerate() {
                let cv = if B::ACCUMULATE {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, cp.add(16 * v)), acc)
                } else {
                    acc
                };
                _mm512_mask_storeu_ps(cp.add(16 * v), mask, cv);
            }
        }
    }
}

/// See [`Isa::widen_f16`]: 16 values per `vcvtph2ps`, the last ones under a lane mask.
fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    // SAFETY: AVX-512 F/BW/VL were detected before this table was handed out; the kernel reads
    // `n` halves of `src` and writes `n` floats of `dst`, both at least that long.
    unsafe { widen_f16_impl(src.as_ptr().cast(), dst.as_mut_ptr(), n) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn widen_f16_impl(src: *const u16, dst: *mut f32, n: usize) {
    let mut i = 0;
    while i < n {
        let mask = lane_mask(n - i);
        // SAFETY: lanes i..min(i + 16, n) are in bounds (see `widen_f16`); masked-off lanes are
        // not accessed.
        unsafe {
            let h = _mm256_maskz_loadu_epi16(mask, src.add(i).cast());
            _mm512_mask_storeu_ps(dst.add(i), mask, _mm512_cvtph_ps(h));
        }
        i += 16;
    }
}

/// See [`Isa::decode_nibbles`]: 32 indices (16 bytes) at a time, each 16 widened to lanes and
/// looked up in the table register by `vpermps`.
fn decode_nibbles(packed: &[u8], lut: &[f32; 16], out: &mut [f32]) {
    let n = out.len();
    crate::arch::decode_nibbles_check(packed, out);
    let whole = n / 32 * 32;
    // SAFETY: AVX-512 F/BW/VL were detected before this table was handed out; every block reads
    // bytes `i / 2 .. i / 2 + 16` with `i + 32 <= n`, inside `packed` by the assertion, and writes
    // `out[i .. i + 32]`.
    unsafe { decode_nibbles_impl(packed.as_ptr(), lut, out.as_mut_ptr(), whole) }
    scalar::decode_nibbles(&packed[whole / 2..], lut, &mut out[whole..]);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn decode_nibbles_impl(packed: *const u8, lut: &[f32; 16], out: *mut f32, whole: usize) {
    let table = _mm512_loadu_ps(lut.as_ptr());
    let low = _mm_set1_epi8(0x0F);
    let mut i = 0;
    // SAFETY: see `decode_nibbles`.
    unsafe {
        while i < whole {
            let b = _mm_loadu_si128(packed.add(i / 2).cast());
            let (lo, hi) = (_mm_and_si128(b, low), _mm_and_si128(_mm_srli_epi16::<4>(b), low));
            // Byte k of the interleave is index k: low nibble of byte k/2 first.
            for (h, idx) in [_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)].into_iter().enumerate() {
                let w = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(idx), table);
                _mm512_storeu_ps(out.add(i + 16 * h), w);
            }
            i += 32;
        }
    }
}

/// See [`Isa::dot`].
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: AVX-512 F was detected before this table was handed out; both slices hold n values.
    unsafe { dot_impl(a.as_ptr(), b.as_ptr(), n) }
}

#[target_feature(enable = "avx512f")]
unsafe fn dot_impl(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every access is below n (full vectors) or masked to lanes below n.
    unsafe {
        while i + 64 <= n {
            for (u, acc) in acc.iter_mut().enumerate() {
                let o = i + 16 * u;
                *acc = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(o)), _mm512_loadu_ps(b.add(o)), *acc);
            }
            i += 64;
        }
        while i < n {
            let m = lane_mask(n - i);
            let (x, y) = (_mm512_maskz_loadu_ps(m, a.add(i)), _mm512_maskz_loadu_ps(m, b.add(i)));
            acc[0] = _mm512_fmadd_ps(x, y, acc[0]);
            i += 16;
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}

/// See [`Isa::dot_rows`].
fn dot_rows(a: &[f32], k: usize, x: &[f32], out: &mut [f32]) {
    dot_rows_check(a, k, x, out);
    // SAFETY: AVX-512 F was detected before this table was handed out; the check asserted
    // `out.len()` rows of `k` weights in `a` and `k` values in `x`.
    unsafe { dot_rows_impl(a.as_ptr(), k, x.as_ptr(), out.as_mut_ptr(), out.len()) }
}

/// [`dot_rows`] eight rows at a time, as on AVX2: eight independent accumulator chains keep both
/// FMA units busy, and each vector of `x` is loaded once for the eight. The last block repeats
/// its first row in the rows it lacks and drops their sums.
#[target_feature(enable = "avx512f")]
unsafe fn dot_rows_impl(a: *const f32, k: usize, x: *const f32, out: *mut f32, rows: usize) {
    let mut r0 = 0;
    while r0 < rows {
        let live = (rows - r0).min(8);
        // SAFETY: rows r0 .. r0 + live exist (the caller's bounds); the rest repeat row r0.
        let row: [*const f32; 8] =
            std::array::from_fn(|i| unsafe { a.add((r0 + if i < live { i } else { 0 }) * k) });
        let mut acc = [_mm512_setzero_ps(); 8];
        let mut p = 0;
        // SAFETY: every load is below `k` in its row and in `x`, whole or masked to it.
        unsafe {
            while p < k {
                let m = lane_mask(k - p);
                let xv = _mm512_maskz_loadu_ps(m, x.add(p));
                for (acc, row) in acc.iter_mut().zip(row) {
                    *acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, row.add(p)), xv, *acc);
                }
                p += 16;
            }
            for (i, acc) in acc.iter().take(live).enumerate() {
                *out.add(r0 + i) = _mm512_reduce_add_ps(*acc);
            }
        }
        r0 += live;
    }
}

/// See [`Isa::max_2x2`].
fn max_2x2(r0: &[f32], r1: &[f32], out: &mut [f32]) {
    crate::arch::max_2x2_check(r0, r1, out);
    // SAFETY: AVX-512 F was detected before this table was handed out; step `i` reads the 32
    // values of each row from 2i (masked to those below 2 * out.len()) and writes the 16 from i
    // (masked to out.len()), all in bounds (asserted above).
    unsafe { max_2x2_impl(r0.as_ptr(), r1.as_ptr(), out.as_mut_ptr(), out.len()) }
}

/// The rows' maxima pairwise, then even against odd columns, gathered from the two vectors by
/// one `vpermt2ps` each; the last step under lane masks.
#[target_feature(enable = "avx512f")]
unsafe fn max_2x2_impl(r0: *const f32, r1: *const f32, out: *mut f32, n: usize) {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let mut i = 0;
    while i < n {
        let left = 2 * (n - i);
        let (m0, m1) = (lane_mask(left), lane_mask(left.saturating_sub(16)));
        // SAFETY: see `max_2x2`.
        unsafe {
            let (a, b) = (r0.add(2 * i), r1.add(2 * i));
            let lo = _mm512_max_ps(_mm512_maskz_loadu_ps(m0, a), _mm512_maskz_loadu_ps(m0, b));
            let hi =
                _mm512_max_ps(_mm512_maskz_loadu_ps(m1, a.add(16)), _mm512_maskz_loadu_ps(m1, b.add(16)));
            let pairs =
                _mm512_max_ps(_mm512_permutex2var_ps(lo, even, hi), _mm512_permutex2var_ps(lo, odd, hi));
            _mm512_mask_storeu_ps(out.add(i), lane_mask(n - i), pairs);
        }
        i += 16;
    }
}

/// See [`Isa::deinterleave`].
fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    crate::arch::deinterleave_check(src, even, odd);
    // SAFETY: AVX-512 F was detected before this table was handed out; step `i` reads the 32
    // values of `src` from 2i (masked to those below 2 * even.len()) and writes the 16 of `even`
    // and of `odd` from i (masked to even.len()), all in bounds (asserted above).
    unsafe { deinterleave_impl(src.as_ptr(), even.as_mut_ptr(), odd.as_mut_ptr(), even.len()) }
}

/// Even and odd values of two vectors gathered by one `vpermt2ps` each; the last step under lane
/// masks. Whole steps store unmasked: a load that reads what a masked store just wrote waits for
/// the store to retire instead of taking its data forwarded, and Winograd's second split of each
/// row reads the first's output at once (96→24 3×3 layers at 1 thread, against every step
/// masked: 1-4 % faster at 80×160, 12×368 and 184×368).
#[target_feature(enable = "avx512f")]
unsafe fn deinterleave_impl(src: *const f32, even: *mut f32, odd: *mut f32, n: usize) {
    let pick_even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let pick_odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let mut i = 0;
    while i + 16 <= n {
        // SAFETY: see `deinterleave`: 32 values of `src` from 2i and 16 of each output from i.
        unsafe {
            let (lo, hi) = (_mm512_loadu_ps(src.add(2 * i)), _mm512_loadu_ps(src.add(2 * i + 16)));
            _mm512_storeu_ps(even.add(i), _mm512_permutex2var_ps(lo, pick_even, hi));
            _mm512_storeu_ps(odd.add(i), _mm512_permutex2var_ps(lo, pick_odd, hi));
        }
        i += 16;
    }
    if i < n {
        let left = 2 * (n - i);
        let (m0, m1, out) = (lane_mask(left), lane_mask(left.saturating_sub(16)), lane_mask(n - i));
        // SAFETY: see `deinterleave`.
        unsafe {
            let lo = _mm512_maskz_loadu_ps(m0, src.add(2 * i));
            let hi = _mm512_maskz_loadu_ps(m1, src.add(2 * i + 16));
            _mm512_mask_storeu_ps(even.add(i), out, _mm512_permutex2var_ps(lo, pick_even, hi));
            _mm512_mask_storeu_ps(odd.add(i), out, _mm512_permutex2var_ps(lo, pick_odd, hi));
        }
    }
}

/// See [`Isa::mul`].
fn mul(y: &mut [f32], x: &[f32]) {
    let n = y.len().min(x.len());
    // SAFETY: AVX-512 F was detected before this table was handed out; both slices hold n values.
    unsafe { mul_impl(y.as_mut_ptr(), x.as_ptr(), n) }
}

#[target_feature(enable = "avx512f")]
unsafe fn mul_impl(y: *mut f32, x: *const f32, n: usize) {
    let mut i = 0;
    // SAFETY: every access is below n (full vectors) or masked to lanes below n.
    unsafe {
        while i + 16 <= n {
            _mm512_storeu_ps(y.add(i), _mm512_mul_ps(_mm512_loadu_ps(y.add(i)), _mm512_loadu_ps(x.add(i))));
            i += 16;
        }
        if i < n {
            let m = lane_mask(n - i);
            let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, y.add(i)), _mm512_maskz_loadu_ps(m, x.add(i)));
            _mm512_mask_storeu_ps(y.add(i), m, v);
        }
    }
}

/// See [`Isa::axpy`].
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    // SAFETY: AVX-512 F was detected before this table was handed out; both slices hold n values.
    unsafe { axpy_impl(y.as_mut_ptr(), a, x.as_ptr(), n) }
}

#[target_feature(enable = "avx512f")]
unsafe fn axpy_impl(y: *mut f32, a: f32, x: *const f32, n: usize) {
    let av = _mm512_set1_ps(a);
    let mut i = 0;
    // SAFETY: every access is below n (full vectors) or masked to lanes below n.
    unsafe {
        while i + 16 <= n {
            let v = _mm512_fmadd_ps(av, _mm512_loadu_ps(x.add(i)), _mm512_loadu_ps(y.add(i)));
            _mm512_storeu_ps(y.add(i), v);
            i += 16;
        }
        if i < n {
            let m = lane_mask(n - i);
            let v =
                _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x.add(i)), _mm512_maskz_loadu_ps(m, y.add(i)));
            _mm512_mask_storeu_ps(y.add(i), m, v);
        }
    }
}

/// See [`Isa::dot_packed`]. 4-bit rows take [`dot_nibbles`]. Otherwise sixteen indices occupy `2 * bits` bytes, read as two unaligned u64s
/// (eight indices each), split into four u32 quarters, spread over the lanes, shifted and masked.
/// Lookup: `vpermps` over one zmm (bits <= 4), `vpermt2ps` over two (5), two `vpermt2ps` and a
/// blend on bit 5 (6), a gather from L1 (7), scalar loads from L1 (8).
fn dot_packed(row: &[u8], bits: u8, lut: &[f32], x: &[f32]) -> f32 {
    if bits == 4 && lut.len() >= 16 {
        let pairs = (x.len() / 32).min(row.len() / 16);
        // SAFETY: AVX-512 F/BW/VL were detected before this table was handed out; `pairs` 16-byte
        // reads of `row` and 32-float reads of `x` are in bounds by the `min` above.
        let s = unsafe { dot_nibbles(row.as_ptr(), lut, x.as_ptr(), pairs) };
        return s + dot_packed_any(&row[pairs * 16..], bits, lut, &x[pairs * 32..]);
    }
    dot_packed_any(row, bits, lut, x)
}

/// 4-bit indices, 32 per 16-byte load, unpacked entirely in vector registers: low and high
/// nibbles are interleaved (`punpck*bw`, element `2i` is byte `i`'s low nibble) and widened to
/// lanes (`vpmovzxbd`), then looked up with `vpermps`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn dot_nibbles(row: *const u8, lut: &[f32], x: *const f32, pairs: usize) -> f32 {
    let table = bounds::padded_lut::<16>(lut);
    // SAFETY: `table` is 16 floats long.
    let t = unsafe { _mm512_loadu_ps(table.as_ptr()) };
    let low = _mm_set1_epi8(0x0F);
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for g in 0..pairs {
        // SAFETY: the caller guarantees 16 readable bytes at g * 16 and 32 floats at g * 32.
        let (v, x0, x1) = unsafe {
            let xp = x.add(g * 32);
            (_mm_loadu_si128(row.add(g * 16).cast()), _mm512_loadu_ps(xp), _mm512_loadu_ps(xp.add(16)))
        };
        let lo = _mm_and_si128(v, low);
        let hi = _mm_and_si128(_mm_srli_epi16(v, 4), low);
        let i0 = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
        let i1 = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi));
        acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(i0, t), x0, acc0);
        acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(i1, t), x1, acc1);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
}

/// Any width: 16 indices per step, extracted through general-purpose registers.
fn dot_packed_any(row: &[u8], bits: u8, lut: &[f32], x: &[f32]) -> f32 {
    let Some(groups) = bounds::vector_groups(row, bits, lut, x, 16, 8) else {
        return scalar::dot_packed(row, bits, lut, x);
    };
    let b = bits as usize;
    // SAFETY: AVX-512 F/BW/VL were detected before this table was handed out. `vector_groups`
    // checked that groups * 16 <= x.len(), that the 8-byte reads at g * 2b and g * 2b + b stay in
    // `row`, and that `lut` has 2^bits entries, so every gathered index is in bounds.
    let s = unsafe {
        match bits {
            1 => dot_packed_impl::<1>(row.as_ptr(), lut, x.as_ptr(), groups),
            2 => dot_packed_impl::<2>(row.as_ptr(), lut, x.as_ptr(), groups),
            3 => dot_packed_impl::<3>(row.as_ptr(), lut, x.as_ptr(), groups),
            4 => dot_packed_impl::<4>(row.as_ptr(), lut, x.as_ptr(), groups),
            5 => dot_packed_impl::<5>(row.as_ptr(), lut, x.as_ptr(), groups),
            6 => dot_packed_impl::<6>(row.as_ptr(), lut, x.as_ptr(), groups),
            7 => dot_packed_impl::<7>(row.as_ptr(), lut, x.as_ptr(), groups),
            _ => dot_packed_impl::<8>(row.as_ptr(), lut, x.as_ptr(), groups),
        }
    };
    s + scalar::dot_packed(&row[groups * 2 * b..], bits, lut, &x[groups * 16..])
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn dot_packed_impl<const B: usize>(row: *const u8, lut: &[f32], x: *const f32, groups: usize) -> f32 {
    let table = bounds::padded_lut::<64>(lut);
    // SAFETY: `table` is 64 floats long.
    let t = unsafe { [0, 16, 32, 48].map(|o| _mm512_loadu_ps(table.as_ptr().add(o))) };
    let b = B as i32;
    let shifts =
        _mm512_setr_epi32(0, b, 2 * b, 3 * b, 0, b, 2 * b, 3 * b, 0, b, 2 * b, 3 * b, 0, b, 2 * b, 3 * b);
    let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    let mask = _mm512_set1_epi32((1 << B) - 1);
    let mut acc = _mm512_setzero_ps();
    for g in 0..groups {
        // SAFETY: the caller guarantees 8 readable bytes at g * 2B and g * 2B + B, and 16 floats
        // at g * 16.
        let (v0, v1, xv) = unsafe {
            let p = row.add(g * 2 * B);
            (bounds::read_u64(p), bounds::read_u64(p.add(B)), _mm512_loadu_ps(x.add(g * 16)))
        };
        let q = |v: u64| (v as u32 as i32, (v >> (4 * B)) as u32 as i32);
        let ((a, b), (c, d)) = (q(v0), q(v1));
        let quarters = _mm512_castsi128_si512(_mm_setr_epi32(a, b, c, d));
        let idx =
            _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi32(spread, quarters), shifts), mask);
        let w = if B <= 4 {
            _mm512_permutexvar_ps(idx, t[0])
        } else if B == 5 {
            _mm512_permutex2var_ps(t[0], idx, t[1])
        } else if B == 6 {
            let lo = _mm512_permutex2var_ps(t[0], idx, t[1]);
            let hi = _mm512_permutex2var_ps(t[2], idx, t[3]);
            _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(32)), lo, hi)
        } else if B == 8 {
            // Byte indices: 16 scalar loads from the L1-resident LUT beat a gather on Zen 4.
            let mut w = [0.0f32; 16];
            for (l, w) in w.iter_mut().enumerate() {
                // SAFETY: byte l of the group is within the 16 bytes at g * 16 checked by the
                // caller; a byte indexes a 256-entry LUT.
                *w = unsafe { *lut.get_unchecked(*row.add(g * 16 + l) as usize) };
            }
            // SAFETY: `w` is 16 floats long.
            unsafe { _mm512_loadu_ps(w.as_ptr()) }
        } else {
            // SAFETY: idx < 2^B <= lut.len() (checked by the caller).
            unsafe { _mm512_i32gather_ps::<4>(idx, lut.as_ptr()) }
        };
        acc = _mm512_fmadd_ps(w, xv, acc);
    }
    _mm512_reduce_add_ps(acc)
}

/// See [`Isa::gemv_prepare`]. 1-, 2- and 4-bit rows are read by [`dot_packed_rows`] 64 bytes (16
/// words) at a time, so `x` is put in `permute_blocks` order for 16 lanes (3 bits too with
/// VBMI); 5 to 8 bits with VBMI in [`gemv_wide::prepare`]'s order; otherwise `x` is copied.
fn gemv_prepare(bits: u8, x: &[f32], xp: &mut [f32]) {
    match bits {
        1 | 2 | 4 => permute::blocks(x, xp, 16, 32 / bits as usize),
        3 if vbmi() => permute::blocks(x, xp, 16, 8),
        5..=8 if vbmi() => gemv_wide::prepare(x, xp),
        _ => scalar::gemv_prepare(bits, x, xp),
    }
}

/// Whether the CPU has AVX-512 VBMI (`vpermb`), which the 3-bit GEMV needs (cached by std).
fn vbmi() -> bool {
    is_x86_feature_detected!("avx512vbmi")
}

/// See [`Isa::dot_packed_rows`]. At 1, 2 and 4 bits (and 3 with VBMI), up to [`PACKED_ROWS`]
/// rows go through [`rows_kernel`] ([`rows_kernel3`]) together over every whole 64-byte (48-byte)
/// block, and over a last, partial block too when `xp` holds it zero-padded
/// ([`bounds::tail_bytes`]); otherwise each row's remaining columns go through [`dot_packed`].
/// With VBMI, 5 to 8 bits go through [`gemv_wide::dot_rows`] (byte-plane tables); without it,
/// [`dot_packed`] row by row.
fn dot_packed_rows(rows: &[&[u8]], bits: u8, luts: &[[f32; 256]], x: &[f32], xp: &[f32], out: &mut [f32]) {
    dot_packed_rows_check(rows, luts, x, xp, out);
    if (5..=8).contains(&bits) && vbmi() {
        // SAFETY: AVX-512 F/BW were detected before this table was handed out, VBMI just now;
        // bits is 5..=8, `luts` was checked, and `xp` comes from `gemv_prepare` at these bits.
        return unsafe { gemv_wide::dot_rows(rows, bits, luts, x, xp, out, dot_packed) };
    }
    let three = bits == 3 && vbmi();
    if !matches!(bits, 1 | 2 | 4) && !three {
        return bounds::add_row_tails(dot_packed, rows, bits, luts, x, 0, &[], out);
    }
    // A block is 64 bytes (48 at 3 bits: 16 words of 8 indices after `vpermb`).
    let (cols, bytes) = if three { (128, 48) } else { (512 / bits as usize, 64) };
    let blocks = bounds::whole_blocks(rows, x.len(), cols, bytes);
    let tail = bounds::tail_bytes(rows, bits, x.len(), xp.len(), blocks, cols, bytes);
    let done = if tail > 0 { x.len() } else { blocks * cols };
    for (c, (rows, out)) in rows.chunks(PACKED_ROWS).zip(out.chunks_mut(PACKED_ROWS)).enumerate() {
        let luts = tables_from(luts, c * PACKED_ROWS);
        let mut sums = [0.0f32; PACKED_ROWS];
        let xp = xp.as_ptr();
        let span = Span { blocks, tail };
        // SAFETY: AVX-512 F/BW were detected before this table was handed out, VBMI for the
        // 3-bit arms just above. Every row holds at least `blocks * bytes + tail` bytes and `xp`
        // at least `(blocks + (tail > 0)) * cols` values, by `whole_blocks` and `tail_bytes`
        // above; `rows` holds `rows.len()` entries, the arm's R, and `luts` one table per row
        // or one shared (checked).
        unsafe {
            match (bits, rows.len()) {
                (3, 1) => rows_kernel3::<1>(rows, luts, xp, span, &mut sums),
                (3, 2) => rows_kernel3::<2>(rows, luts, xp, span, &mut sums),
                (3, 3) => rows_kernel3::<3>(rows, luts, xp, span, &mut sums),
                (3, _) => rows_kernel3::<4>(rows, luts, xp, span, &mut sums),
                (1, 1) => rows_kernel::<1, 1>(rows, RowTables::F32(luts), xp, span, &mut sums),
                (1, 2) => rows_kernel::<1, 2>(rows, RowTables::F32(luts), xp, span, &mut sums),
                (1, 3) => rows_kernel::<1, 3>(rows, RowTables::F32(luts), xp, span, &mut sums),
                (1, _) => rows_kernel::<1, 4>(rows, RowTables::F32(luts), xp, span, &mut sums),
                (2, 1) => rows_kernel::<2, 1>(rows, RowTables::F32(luts), xp, span, &mut sums),
                (2, 2) => rows_kernel::<2, 2>(rows, RowTables::F32(luts), xp, span, &mut sums),
                (2, 3) => rows_kernel::<2, 3>(rows, RowTables::F32(luts), xp, span, &mut sums),
                (2, _) => rows_kernel::<2, 4>(rows, RowTables::F32(luts), xp, span, &mut sums),
                (_, 1) => rows_kernel::<4, 1>(rows, RowTables::F32(luts), xp, span, &mut sums),
                (_, 2) => rows_kernel::<4, 2>(rows, RowTables::F32(luts), xp, span, &mut sums),
                (_, 3) => rows_kernel::<4, 3>(rows, RowTables::F32(luts), xp, span, &mut sums),
                (_, _) => rows_kernel::<4, 4>(rows, RowTables::F32(luts), xp, span, &mut sums),
            }
        }
        bounds::add_row_tails(dot_packed, rows, bits, luts, x, done, &sums, out);
    }
}

/// See [`Isa::dot_nibble_rows_f16`]: [`rows_kernel`] at 4 bits, [`PACKED_ROWS`] rows at a time,
/// each row's table converted from its f16 centroids in a register ([`f16_tables`]) instead of
/// an f32 table filled in memory per row; columns past the kernel's blocks (when `xp` is not
/// zero-padded to a whole block, or a row is short) go through [`dot_packed`] with the tables
/// widened.
fn dot_nibble_rows_f16(rows: &[&[u8]], tables: &[&[half::f16]], x: &[f32], xp: &[f32], out: &mut [f32]) {
    dot_nibble_rows_f16_check(rows, tables, x, xp, out);
    let (cols, bytes) = (128, 64);
    let blocks = bounds::whole_blocks(rows, x.len(), cols, bytes);
    let tail = bounds::tail_bytes(rows, 4, x.len(), xp.len(), blocks, cols, bytes);
    let done = if tail > 0 { x.len() } else { blocks * cols };
    let out = &mut out[..rows.len()];
    let chunks = rows.chunks(PACKED_ROWS).zip(tables.chunks(PACKED_ROWS)).zip(out.chunks_mut(PACKED_ROWS));
    for ((rows, tables), out) in chunks {
        let mut sums = [0.0f32; PACKED_ROWS];
        let (xp, span, t) = (xp.as_ptr(), Span { blocks, tail }, RowTables::F16(tables));
        // SAFETY: AVX-512 F/BW were detected before this table was handed out. Every row holds at
        // least `blocks * 64 + tail` bytes and `xp` at least `(blocks + (tail > 0)) * 128` values,
        // by `whole_blocks` and `tail_bytes` above; `rows` and `tables` hold the arm's R entries
        // (checked equal in length), each table at most 16.
        unsafe {
            match rows.len() {
                1 => rows_kernel::<4, 1>(rows, t, xp, span, &mut sums),
                2 => rows_kernel::<4, 2>(rows, t, xp, span, &mut sums),
                3 => rows_kernel::<4, 3>(rows, t, xp, span, &mut sums),
                _ => rows_kernel::<4, 4>(rows, t, xp, span, &mut sums),
            }
        }
        if done < x.len() {
            let mut luts = [[0.0f32; 256]; PACKED_ROWS];
            for (lut, table) in luts.iter_mut().zip(tables) {
                widen_f16(table, &mut lut[..table.len()]);
            }
            bounds::add_row_tails(dot_packed, rows, 4, &luts[..rows.len()], x, done, &sums, out);
        } else if let Ok(whole) = <&mut [f32; PACKED_ROWS]>::try_from(&mut *out) {
            // A fixed-size store: a copy of a run-time length is a `memcpy` call (7 % of a
            // 1024 × 576 GEMV, 64 rows a call).
            *whole = sums;
        } else {
            out.copy_from_slice(&sums[..out.len()]);
        }
    }
}

/// Where [`rows_kernel`] finds its rows' tables.
#[derive(Clone, Copy)]
enum RowTables<'a> {
    /// f32 tables, one per row or one for all ([`Isa::dot_packed_rows`]).
    F32(&'a [[f32; 256]]),
    /// At most 16 f16 centroids per row, one list per row (4 bits, [`Isa::dot_nibble_rows_f16`]).
    F16(&'a [&'a [half::f16]]),
}

/// Each of `R` rows' f16 centroids (at most 16; missing entries 0) as a register of f32, for
/// 4-bit indices (every lane an entry, so `vpermps` needs no masking).
///
/// # Safety
/// AVX-512 F must be available; `tables` holds at least `R` lists of at most 16 entries.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn f16_tables<const R: usize>(tables: &[&[half::f16]]) -> [__m512; R] {
    std::array::from_fn(|r| {
        let mut raw = [0u16; 16];
        let t = tables[r];
        raw.iter_mut().zip(t).for_each(|(r, v)| *r = v.to_bits());
        // SAFETY: `raw` is 16 u16 (32 bytes) long.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(raw.as_ptr().cast()) })
    })
}

/// Each of `R` rows' table as a register: `luts[r][i & (2^B - 1)]` in lane `i`, so that `vpermps`,
/// which reads an index's bits 3..0, ignores the bits of the next index above a `B`-bit one.
///
/// # Safety
/// AVX-512 F must be available; `luts` holds one table or at least `R`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn row_tables<const B: u32, const R: usize>(luts: &[[f32; 256]]) -> [__m512; R] {
    let sel: [i32; 16] = std::array::from_fn(|i| (i & ((1 << B) - 1)) as i32);
    // SAFETY: `sel` is 16 lanes long, each table 256 floats.
    unsafe {
        let sel = _mm512_loadu_si512(sel.as_ptr().cast());
        std::array::from_fn(|r| _mm512_permutexvar_ps(sel, _mm512_loadu_ps(row_table(luts, r).as_ptr())))
    }
}

/// `sums[r] = sum over the span's columns of lut_r[index] * x` for `R` rows of `B`-bit indices
/// (B = 1, 2, 4), `xp` in `permute_blocks` order. Each 64-byte block is one register of 16
/// words; shifting it right by `B` after each step brings the next index of every word into the
/// low bits, which is all `vpermps` reads (bits 3..0), so a table of 16 entries
/// `lut[i & (2^B - 1)]` turns it into 16 weights without masking: per 16 weights one `vpermps`,
/// one shift and one FMA, and one load of `xp` shared by the `R` rows. At 4 bits the indices come
/// down by loads at byte offsets instead of most shifts ([`nibble_blocks`]).
///
/// # Safety
/// AVX-512 F and BW must be available; `rows` holds at least `R` entries and `luts` one table or
/// `R`, every row at least `span.blocks * 64 + span.tail` bytes, and `xp` at least `span.count() *
/// 512 / B` floats.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn rows_kernel<const B: u32, const R: usize>(
    rows: &[&[u8]],
    tables: RowTables<'_>,
    xp: *const f32,
    span: Span,
    sums: &mut [f32; PACKED_ROWS],
) {
    let per = 32 / B as usize;
    // SAFETY: the caller guarantees AVX-512 F and one table or R (f16 tables: R, 4 bits).
    let t: [__m512; R] = unsafe {
        match tables {
            RowTables::F32(luts) => row_tables::<B, R>(luts),
            RowTables::F16(f16) => f16_tables::<R>(f16),
        }
    };
    let p: [*const u8; R] = std::array::from_fn(|r| rows[r].as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    if B == 4 {
        // SAFETY: the caller's contract, passed on.
        unsafe { nibble_blocks::<R>(rows, &t, xp, span, &mut acc) };
        for (s, acc) in sums.iter_mut().zip(&acc) {
            *s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        }
        return;
    }
    for blk in 0..span.count() {
        // A whole block is a plain load: the masked form measured about 20 % slower at 4096 x
        // 4096 (Zen 5), though streaming masked loads alone run at full speed.
        // SAFETY: the caller guarantees 64 bytes of every row at a whole block and the bytes the
        // mask selects at the partial one; masked-off bytes are not accessed.
        let mut v: [__m512i; R] = std::array::from_fn(|r| unsafe {
            // Fetch 4 KiB ahead (a hint: any address is fine): at 4096 x 4096, 4 bits, medians
            // of 3 runs 351 -> 296 us, the slow cold-cache runs gone.
            _mm_prefetch::<_MM_HINT_T0>(p[r].wrapping_add(blk * 64 + PREFETCH).cast());
            let at = p[r].add(blk * 64);
            if blk < span.blocks {
                _mm512_loadu_si512(at.cast())
            } else {
                _mm512_maskz_loadu_epi8(span.mask(blk, 64), at.cast())
            }
        });
        // Eight steps at a time, fully unrolled, so the accumulators stay in registers.
        for k8 in (0..per).step_by(8) {
            for j in 0..8 {
                // SAFETY: the caller guarantees span.count() * 16 * per floats of `xp`.
                let xk = unsafe { _mm512_loadu_ps(xp.add((blk * per + k8 + j) * 16)) };
                for r in 0..R {
                    acc[r][j % 2] = _mm512_fmadd_ps(_mm512_permutexvar_ps(v[r], t[r]), xk, acc[r][j % 2]);
                    v[r] = _mm512_srli_epi32::<B>(v[r]);
                }
            }
        }
    }
    for (s, acc) in sums.iter_mut().zip(&acc) {
        *s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    }
}

/// [`rows_kernel`]'s loop at 4 bits. Index `2s` of every word is the low nibble of the word's
/// byte `s`, so the block loaded again `s` bytes further on (`s` = 1..3) has it in its low bits
/// already: four loads and four shifts (for the odd indices) put the eight indices of every word
/// in the low bits, where the shift-per-step loop spends seven shifts. Intel cores run 512-bit
/// operations on two ports only, which every 16 weights' `vpermps` and FMA keep busy. On an
/// Emerald Rapids Xeon (1 thread, `pith bench --gemv`, alternating with the shift-per-step loop)
/// 1024 × 1024, in L2, took 0.85-1.00 of the time over eleven pairs (median 0.97); 4096 × 4096
/// 0.91-0.98 in five of six pairs (the sixth 1.52, a slow spell), 0.82-1.21 over four noisier ones. The offset loads cross
/// cache lines, which is why the gain is smaller than the operations saved. They are taken one
/// offset at a time: all four of every row held at once spilled registers and ran at half speed.
///
/// # Safety
/// As [`rows_kernel`] at `B = 4`; `t` holds the `R` rows' tables.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn nibble_blocks<const R: usize>(
    rows: &[&[u8]],
    t: &[__m512; R],
    xp: *const f32,
    span: Span,
    acc: &mut [[__m512; 2]; R],
) {
    let p: [*const u8; R] = std::array::from_fn(|r| rows[r].as_ptr());
    for blk in 0..span.count() {
        let at = blk * 64;
        let mask = span.mask(blk, 64);
        let slack: [bool; R] = std::array::from_fn(|r| blk < span.blocks && at + 64 + 3 <= rows[r].len());
        for s in 0..4 {
            // SAFETY: the caller guarantees the block's bytes (all 64 of a whole block, the
            // mask's of the partial one). A load `s` bytes on reads past them only where the row
            // holds those bytes too (the plain load); otherwise its mask leaves them out.
            // Masked-off bytes are not accessed.
            let words: [__m512i; R] = std::array::from_fn(|r| unsafe {
                let from = p[r].add(at + s);
                if s == 0 {
                    _mm_prefetch::<_MM_HINT_T0>(p[r].wrapping_add(at + PREFETCH).cast());
                }
                if slack[r] || (s == 0 && blk < span.blocks) {
                    _mm512_loadu_si512(from.cast())
                } else {
                    _mm512_maskz_loadu_epi8(mask >> s, from.cast())
                }
            });
            for step in 2 * s..2 * s + 2 {
                // SAFETY: the caller guarantees span.count() * 128 floats of `xp`.
                let xk = unsafe { _mm512_loadu_ps(xp.add((blk * 8 + step) * 16)) };
                for r in 0..R {
                    let idx = if step % 2 == 0 { words[r] } else { _mm512_srli_epi32::<4>(words[r]) };
                    acc[r][step % 2] =
                        _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, t[r]), xk, acc[r][step % 2]);
                }
            }
        }
    }
}

/// [`rows_kernel`] for 3-bit indices: a 48-byte block holds 128 indices; `vpermb` gives word `l`
/// the 3 bytes `3l..3l + 3` (indices `8l..8l + 8`, LSB first), after which the block is read like
/// the other widths, shifting by 3 with a table `lut[i & 7]` (bit 3, from the next index, is
/// ignored by the table). `xp` is in `permute_blocks` order for 16 lanes of 8 indices.
///
/// # Safety
/// AVX-512 F, BW and VBMI must be available; `rows` holds at least `R` entries and `luts` one
/// table or `R`, every row at least `span.blocks * 48 + span.tail` bytes, and `xp` at least
/// `span.count() * 128` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn rows_kernel3<const R: usize>(
    rows: &[&[u8]],
    luts: &[[f32; 256]],
    xp: *const f32,
    span: Span,
    sums: &mut [f32; PACKED_ROWS],
) {
    // SAFETY: the caller guarantees AVX-512 F and one table or R.
    let t: [__m512; R] = unsafe { row_tables::<3, R>(luts) };
    // Byte 4l + j of the spread block is byte 3l + j of the packed one (j = 3 repeats j = 2).
    let spread: [u8; 64] = std::array::from_fn(|b| (3 * (b / 4) + (b % 4).min(2)) as u8);
    // SAFETY: `spread` is 64 bytes long.
    let spread = unsafe { _mm512_loadu_si512(spread.as_ptr().cast()) };
    let p: [*const u8; R] = std::array::from_fn(|r| rows[r].as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for blk in 0..span.count() {
        let mask = span.mask(blk, 48);
        let mut v: [__m512i; R] = std::array::from_fn(|r| {
            // SAFETY: the caller guarantees the bytes of every row this mask selects (at most 48
            // from blk * 48); masked-off bytes are not accessed. Before the last whole block, the
            // next block's 48 bytes cover a plain 64-byte load (whose last 16 `spread` ignores).
            _mm_prefetch::<_MM_HINT_T0>(p[r].wrapping_add(blk * 48 + PREFETCH).cast());
            let packed = unsafe {
                let at = p[r].add(blk * 48);
                if blk + 1 < span.blocks {
                    _mm512_loadu_si512(at.cast())
                } else {
                    _mm512_maskz_loadu_epi8(mask, at.cast())
                }
            };
            _mm512_permutexvar_epi8(spread, packed)
        });
        for j in 0..8 {
            // SAFETY: the caller guarantees span.count() * 128 floats of `xp`.
            let xk = unsafe { _mm512_loadu_ps(xp.add((blk * 8 + j) * 16)) };
            for r in 0..R {
                acc[r][j % 2] = _mm512_fmadd_ps(_mm512_permutexvar_ps(v[r], t[r]), xk, acc[r][j % 2]);
                v[r] = _mm512_srli_epi32::<3>(v[r]);
            }
        }
    }
    for (s, acc) in sums.iter_mut().zip(&acc) {
        *s = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
    }
}
