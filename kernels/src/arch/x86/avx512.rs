//! AVX-512 micro-kernels (16 f32 lanes). Tails use mask registers: masked-off lanes are neither
//! loaded nor stored (faults suppressed), so no kernel touches memory outside its slices.

use std::arch::x86_64::*;

use super::bounds;
use crate::arch::{gemm_rows_at_check, gemm_rows_check, scalar, BRows, Isa, Listed, Strided};

/// The AVX-512 path. Private: only [`super::avx512`] hands it out, after feature detection.
pub(super) const ISA: Isa = Isa {
    name: "avx512",
    gemm_rows,
    gemm_rows_at,
    store_rows: crate::arch::epilogue::x86::store_rows_avx512,
    activate: crate::arch::epilogue::x86::activate_avx512,
    dot,
    axpy,
    dot_packed,
};

/// Rows per register block of `gemm_rows`: 8 rows × 2 vectors = 16 accumulators of 32 registers.
const MR: usize = 8;
/// Columns per register block of `gemm_rows`.
const NR: usize = 32;

/// Mask of lanes `i < n` (n clamped to 16).
#[inline]
fn lane_mask(n: usize) -> __mmask16 {
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
            unsafe {
                match r {
                    8 => tile::<8, 2, B>(ap, k, bp, rows, w, cp, ldc),
                    7 => tile::<7, 2, B>(ap, k, bp, rows, w, cp, ldc),
                    6 => tile::<6, 2, B>(ap, k, bp, rows, w, cp, ldc),
                    5 => tile::<5, 2, B>(ap, k, bp, rows, w, cp, ldc),
                    4 => tile::<4, 2, B>(ap, k, bp, rows, w, cp, ldc),
                    3 => tile::<3, 2, B>(ap, k, bp, rows, w, cp, ldc),
                    2 => tile::<2, 2, B>(ap, k, bp, rows, w, cp, ldc),
                    _ => tile::<1, 2, B>(ap, k, bp, rows, w, cp, ldc),
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
