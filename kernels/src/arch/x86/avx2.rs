//! AVX2 + FMA micro-kernels (8 f32 lanes). Tails use `vmaskmovps`, which never touches masked-off
//! lanes' memory, so no kernel reads or writes outside the slices it is given.

use std::arch::x86_64::*;

use super::fused::{self, Act, Epilogue, FusedTiles};
use super::{bounds, gemv_planes_avx2, permute};
use crate::arch::{
    dot_packed_rows_check, dot_rows_check, gemm_rows_at_check, gemm_rows_check, gemm_rows_fused_check,
    row_table, scalar, tables_from, BRows, FusedRows, Isa, Listed, Strided, PACKED_ROWS,
};

/// The AVX2 path. Private: only [`super::avx2()`] hands it out, after feature detection.
pub(super) const ISA: Isa = Isa {
    name: "avx2",
    lanes: 8,
    gemm_rows,
    gemm_rows_at,
    gemm_rows_fused: Some(gemm_rows_fused),
    bf16: None,
    store_rows: crate::arch::epilogue::x86::store_rows_avx2,
    activate: crate::arch::epilogue::x86::activate_avx2,
    softmax_row: crate::arch::epilogue::x86::softmax_avx2,
    max_2x2,
    deinterleave,
    transpose: super::permute::transpose,
    decode_nibbles,
    decode_packed: Some(super::decode_packed_avx2::decode_packed),
    widen_f16,
    dot,
    dot_rows: Some(dot_rows),
    axpy,
    mul,
    dot_packed,
    gemv_prepare,
    dot_packed_rows,
    dot_nibble_rows_f16: Some(dot_nibble_rows_f16),
    depthwise_rows: super::depthwise::depthwise_rows_avx2,
    depthwise_s1: Some(super::depthwise_avx2::depthwise_s1_avx2),
    depthwise_s2: Some(super::depthwise_avx2::depthwise_s2_avx2),
    depthwise_plane: None,
    depthwise_3x3: Some(super::depthwise3x3_avx2::depthwise_3x3_avx2),
    depthwise_3x3_width: crate::arch::DEPTHWISE_3X3_MAX_WIDTH,
    depthwise_small: Some(super::depthwise_small_avx2::depthwise_small_avx2),
    depthwise_interleaved: None,
    blocked: None,
    int8: None,
};

/// Rows per register block of `gemm_rows`: 6 rows × 2 vectors = 12 accumulators of 16 registers.
const MR: usize = 6;
/// Columns per register block of `gemm_rows`.
const NR: usize = 16;

/// Lanes `i < n` all-ones (for `vmaskmovps`).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn lane_mask(n: usize) -> __m256i {
    let n = n.min(8) as i32;
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// Sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// See [`Isa::gemm_rows`].
fn gemm_rows(a: &[f32], k: usize, b: &[f32], ldb: usize, n: usize, c: &mut [f32], ldc: usize) {
    let Some(m) = gemm_rows_check(a, k, b, ldb, n, c, ldc) else { return };
    let sink = Matrix::<true> { c: c.as_mut_ptr(), ldc };
    // SAFETY: this table is only reachable after AVX2 + FMA were detected (see `super::avx2`), and
    // `gemm_rows_check` asserted that `a`, `b` and `c` cover every element the kernel touches.
    unsafe { gemm_rows_impl(a.as_ptr(), k, m, b.as_ptr(), Strided(ldb), n, sink) }
}

/// See [`Isa::gemm_rows_at`].
fn gemm_rows_at(a: &[f32], k: usize, b: &[f32], offs: &[usize], n: usize, c: &mut [f32], ldc: usize) {
    let Some(m) = gemm_rows_at_check(a, k, b, offs, n, c, ldc) else { return };
    let sink = Matrix::<false> { c: c.as_mut_ptr(), ldc };
    // SAFETY: as in `gemm_rows`; the check asserted `k` offsets, each with `n` elements of `b`
    // after it, so every row the kernel reads through `Listed` is in bounds.
    unsafe { gemm_rows_impl(a.as_ptr(), k, m, b.as_ptr(), Listed(offs.as_ptr()), n, sink) }
}

/// See [`Isa::gemm_rows_fused`].
fn gemm_rows_fused(a: &[f32], k: usize, b: &[f32], offs: &[usize], n: usize, out: FusedRows<'_, '_>) {
    // SAFETY: this table is only reachable after AVX2 + FMA were detected (see `super::avx2`).
    unsafe { gemm_rows_fused_checked(a, k, b, offs, n, out) }
}

/// The operands' check, then the tiles: compiled for AVX2 so that the check's scans of the `k`
/// offsets vectorise (as the AVX-512 path's, see `fused_avx512`).
///
/// # Safety
/// AVX2 and FMA available.
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_rows_fused_checked(
    a: &[f32],
    k: usize,
    b: &[f32],
    offs: &[usize],
    n: usize,
    out: FusedRows<'_, '_>,
) {
    let Some(m) = gemm_rows_fused_check(a, k, b, offs, n, &out) else { return };
    // SAFETY: the caller guarantees the features, and the check passed for these operands and `m`.
    unsafe { fused::run::<Tiles>(a, k, m, b, offs, n, out) }
}

/// This path's register tiles for [`fused::run`].
struct Tiles;

impl FusedTiles for Tiles {
    const NR: usize = NR;
    const MR: usize = MR;
    const COPIES_PAGE_ALIASED_ROWS: bool = true;
    type Carry = [__m256; 2];

    unsafe fn rows<B: BRows>(
        a: *const f32,
        k: usize,
        m: usize,
        b: *const f32,
        rows: B,
        n: usize,
        sink: Epilogue<'_>,
    ) {
        // SAFETY: the caller's contract is `gemm_rows_impl`'s.
        unsafe { gemm_rows_impl(a, k, m, b, rows, n, sink) }
    }

    unsafe fn deep_tile(
        r: usize,
        a: *const f32,
        lda: usize,
        kl: usize,
        b: *const f32,
        step: usize,
        w: usize,
        carry: *mut [__m256; 2],
        first: bool,
        last: bool,
        sink: Epilogue<'_>,
        at: (usize, usize),
    ) {
        // SAFETY: the caller's contract is `tile_deep`'s, for `r <= MR` rows.
        unsafe {
            match r {
                6 => tile_deep::<6, _>(a, lda, kl, b, step, w, carry, first, last, sink, at),
                5 => tile_deep::<5, _>(a, lda, kl, b, step, w, carry, first, last, sink, at),
                4 => tile_deep::<4, _>(a, lda, kl, b, step, w, carry, first, last, sink, at),
                3 => tile_deep::<3, _>(a, lda, kl, b, step, w, carry, first, last, sink, at),
                2 => tile_deep::<2, _>(a, lda, kl, b, step, w, carry, first, last, sink, at),
                _ => tile_deep::<1, _>(a, lda, kl, b, step, w, carry, first, last, sink, at),
            }
        }
    }
}

/// Where a register tile's finished rows go.
trait Sink: Copy {
    /// Column strips of `NR` per block of [`gemm_rows_impl`] for `m` weight rows of depth `k`.
    fn strips(self, k: usize, m: usize) -> usize;

    /// Stores row `i`'s sums for columns `j .. j + 16` (`v`), or only the lanes set in `mask`.
    ///
    /// # Safety
    /// AVX2 + FMA available; row `i` and columns `j ..` (all 16, or the masked ones) lie within
    /// what the kernel's checks asserted.
    unsafe fn store(self, i: usize, j: usize, v: [__m256; 2], mask: Option<[__m256i; 2]>);
}

/// A row-major matrix `c` with rows `ldc` apart: sums overwrite it, or are added to it (`ADD`).
#[derive(Clone, Copy)]
struct Matrix<const ADD: bool> {
    c: *mut f32,
    ldc: usize,
}

impl<const ADD: bool> Sink for Matrix<ADD> {
    #[inline]
    fn strips(self, _k: usize, _m: usize) -> usize {
        1
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(self, i: usize, j: usize, v: [__m256; 2], mask: Option<[__m256i; 2]>) {
        // SAFETY: the caller guarantees element (i, j ..) of `c` and the lanes stored are in bounds.
        unsafe {
            let cp = self.c.add(i * self.ldc + j);
            match mask {
                None if ADD => {
                    _mm256_storeu_ps(cp, _mm256_add_ps(_mm256_loadu_ps(cp), v[0]));
                    _mm256_storeu_ps(cp.add(8), _mm256_add_ps(_mm256_loadu_ps(cp.add(8)), v[1]));
                }
                None => {
                    _mm256_storeu_ps(cp, v[0]);
                    _mm256_storeu_ps(cp.add(8), v[1]);
                }
                Some([m0, m1]) => {
                    let (c0, c1) = if ADD {
                        (
                            _mm256_add_ps(_mm256_maskload_ps(cp, m0), v[0]),
                            _mm256_add_ps(_mm256_maskload_ps(cp.add(8), m1), v[1]),
                        )
                    } else {
                        (v[0], v[1])
                    };
                    _mm256_maskstore_ps(cp, m0, c0);
                    _mm256_maskstore_ps(cp.add(8), m1, c1);
                }
            }
        }
    }
}

impl Sink for Epilogue<'_> {
    /// See [`Epilogue::l1_strips`].
    #[inline]
    fn strips(self, k: usize, m: usize) -> usize {
        self.l1_strips(k, m, NR)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store(self, i: usize, j: usize, v: [__m256; 2], mask: Option<[__m256i; 2]>) {
        // SAFETY: the caller guarantees row `i` exists and columns `col + j ..` (the lanes stored)
        // lie in it, in its residual row if it has one, and that row `i` has a bias if any do.
        unsafe {
            let dst = (*self.rows.add(i)).as_mut_ptr().add(self.col + j);
            let mut v = v;
            if i < self.residual_rows {
                let res = self.residual.add(i * self.residual_pitch + j);
                let (r0, r1) = match mask {
                    None => (_mm256_loadu_ps(res), _mm256_loadu_ps(res.add(8))),
                    Some([m0, m1]) => (_mm256_maskload_ps(res, m0), _mm256_maskload_ps(res.add(8), m1)),
                };
                v = [_mm256_add_ps(v[0], r0), _mm256_add_ps(v[1], r1)];
            }
            if !self.bias.is_null() {
                let b = _mm256_set1_ps(*self.bias.add(i));
                v = [_mm256_add_ps(v[0], b), _mm256_add_ps(v[1], b)];
            }
            // Each the same operations, in the same order, as `Activation::apply`.
            match self.act {
                Act::None => {}
                Act::Clamp(lo, hi) => {
                    let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
                    v = v.map(|x| _mm256_min_ps(_mm256_max_ps(x, lo), hi));
                }
                Act::HardSwish | Act::HardSwishAffine(..) => {
                    let (zero, one) = (_mm256_setzero_ps(), _mm256_set1_ps(1.0));
                    let (sixth, half) = (_mm256_set1_ps(1.0 / 6.0), _mm256_set1_ps(0.5));
                    // `max(0, t)` then `min(1, ..)` keep a NaN, as `f32::clamp` does.
                    let gate = |x| {
                        _mm256_min_ps(one, _mm256_max_ps(zero, _mm256_add_ps(_mm256_mul_ps(x, sixth), half)))
                    };
                    v = v.map(|x| _mm256_mul_ps(x, gate(x)));
                    if let Act::HardSwishAffine(scale, shift) = self.act {
                        let (scale, shift) = (_mm256_set1_ps(scale), _mm256_set1_ps(shift));
                        v = v.map(|x| _mm256_add_ps(_mm256_mul_ps(x, scale), shift));
                    }
                }
                Act::Leaky(slopes) => {
                    let (zero, slope) = (_mm256_setzero_ps(), _mm256_set1_ps(*slopes.add(i)));
                    // `x >= 0` is false for NaN, whose product with the slope stays NaN.
                    v = v.map(|x| {
                        _mm256_blendv_ps(_mm256_mul_ps(x, slope), x, _mm256_cmp_ps::<_CMP_GE_OQ>(x, zero))
                    });
                }
            }
            match mask {
                None => {
                    _mm256_storeu_ps(dst, v[0]);
                    _mm256_storeu_ps(dst.add(8), v[1]);
                }
                Some([m0, m1]) => {
                    _mm256_maskstore_ps(dst, m0, v[0]);
                    _mm256_maskstore_ps(dst.add(8), m1, v[1]);
                }
            }
        }
    }
}

/// Column blocks of `sink.strips(k, m)` strips of `NR` outer; in each, row blocks of `MR`, then its
/// strips: a block of `b` (`k × strips·NR`) stays in L1 while every row block streams over it.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn gemm_rows_impl<B: BRows, S: Sink>(
    a: *const f32,
    k: usize,
    m: usize,
    b: *const f32,
    rows: B,
    n: usize,
    sink: S,
) {
    let block = sink.strips(k, m) * NR;
    let mut j0 = 0;
    while j0 < n {
        let block_end = n.min(j0 + block);
        let mut i = 0;
        while i < m {
            let r = (m - i).min(MR);
            let mut j = j0;
            while j < block_end {
                let w = (block_end - j).min(NR);
                // SAFETY (all arms): rows i..i+r of a and the sink and columns j..j+w of b and
                // the sink are in bounds.
                let (ap, bp) = unsafe { (a.add(i * k), b.add(j)) };
                let at = (i, j);
                unsafe {
                    match r {
                        6 => tile::<6, B, S>(ap, k, bp, rows, w, sink, at),
                        5 => tile::<5, B, S>(ap, k, bp, rows, w, sink, at),
                        4 => tile::<4, B, S>(ap, k, bp, rows, w, sink, at),
                        3 => tile::<3, B, S>(ap, k, bp, rows, w, sink, at),
                        2 => tile::<2, B, S>(ap, k, bp, rows, w, sink, at),
                        _ => tile::<1, B, S>(ap, k, bp, rows, w, sink, at),
                    }
                }
                j += w;
            }
            i += r;
        }
        j0 = block_end;
    }
}

/// One depth block of the shared deep loop (`fused::deep`): `sum_p a[r * lda + p] * b[p * step + 0..w]` over the
/// block's `kl` rows for `R` weight rows, `w <= NR`, added to the rows' partial sums in `carry`
/// (unless this is the `first` block) and left there, or, after the `last` block, handed to
/// `sink` as rows `at.0 ..` at column `at.1`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_deep<const R: usize, S: Sink>(
    a: *const f32,
    lda: usize,
    kl: usize,
    b: *const f32,
    step: usize,
    w: usize,
    carry: *mut [__m256; 2],
    first: bool,
    last: bool,
    sink: S,
    at: (usize, usize),
) {
    // SAFETY: the caller guarantees R rows of `kl` values `lda` apart at `a`, `kl` rows of `w`
    // values `step` apart at `b`, R partial sums at `carry`, and R rows of `w` columns in `sink`
    // at `at`; masked lanes are never accessed.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        if !first {
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = *carry.add(r);
            }
        }
        let (m0, m1) = (lane_mask(w), lane_mask(w.saturating_sub(8)));
        if w <= 8 {
            // One vector per row (the second stays zero): half the multiply-adds of two.
            for p in 0..kl {
                let b0 = _mm256_maskload_ps(b.add(p * step), m0);
                for (r, acc) in acc.iter_mut().enumerate() {
                    acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(*a.add(r * lda + p)), b0, acc[0]);
                }
            }
        } else if w == NR {
            for p in 0..kl {
                let bp = b.add(p * step);
                let (b0, b1) = (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_ps(*a.add(r * lda + p));
                    acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                }
            }
        } else {
            for p in 0..kl {
                let bp = b.add(p * step);
                let (b0, b1) = (_mm256_maskload_ps(bp, m0), _mm256_maskload_ps(bp.add(8), m1));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_ps(*a.add(r * lda + p));
                    acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                }
            }
        }
        if last {
            let mask = (w < NR).then_some([m0, m1]);
            for (r, acc) in acc.into_iter().enumerate() {
                sink.store(at.0 + r, at.1, acc, mask);
            }
        } else {
            for (r, acc) in acc.into_iter().enumerate() {
                *carry.add(r) = acc;
            }
        }
    }
}

/// `sum_p a[r][p] * b[p][0..w]` for `R` rows, `w <= NR`, accumulated in registers and handed to
/// `sink` as rows `at.0 ..` at column `at.1`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize, B: BRows, S: Sink>(
    a: *const f32,
    k: usize,
    b: *const f32,
    rows: B,
    w: usize,
    sink: S,
    at: (usize, usize),
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    // SAFETY: the caller guarantees R rows of k values at `a`, k rows of w values at `b` (found
    // through `rows`) and R rows of w columns in `sink` at `at`; masked lanes are never accessed.
    unsafe {
        if w == NR {
            for p in 0..k {
                let bp = b.add(rows.offset(p));
                let (b0, b1) = (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_ps(*a.add(r * k + p));
                    acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                }
            }
            for (r, acc) in acc.into_iter().enumerate() {
                sink.store(at.0 + r, at.1, acc, None);
            }
        } else if w > 8 {
            // The first vector whole, the second under a mask: 16 registers with the mask.
            let m1 = lane_mask(w - 8);
            for p in 0..k {
                let bp = b.add(rows.offset(p));
                let (b0, b1) = (_mm256_loadu_ps(bp), _mm256_maskload_ps(bp.add(8), m1));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_ps(*a.add(r * k + p));
                    acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
                }
            }
            let whole = _mm256_set1_epi32(-1);
            for (r, acc) in acc.into_iter().enumerate() {
                sink.store(at.0 + r, at.1, acc, Some([whole, m1]));
            }
        } else {
            // One vector per row: half the multiply-adds of a two-vector tile, and registers to
            // spare (a 384-deep 1x1 layer over 10x20 pixels, 12 strips and one of 8 columns, took
            // 8 % longer when this strip spilled its accumulators).
            let m0 = lane_mask(w);
            for p in 0..k {
                let b0 = _mm256_maskload_ps(b.add(rows.offset(p)), m0);
                for (r, acc) in acc.iter_mut().enumerate() {
                    acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(*a.add(r * k + p)), b0, acc[0]);
                }
            }
            let none = _mm256_setzero_si256();
            for (r, acc) in acc.into_iter().enumerate() {
                sink.store(at.0 + r, at.1, acc, Some([m0, none]));
            }
        }
    }
}

/// See [`Isa::max_2x2`]: 8 outputs per step (the scalar path for the rest).
fn max_2x2(r0: &[f32], r1: &[f32], out: &mut [f32]) {
    let n = out.len();
    crate::arch::max_2x2_check(r0, r1, out);
    let whole = n / 8 * 8;
    // SAFETY: AVX2 was detected before this table was handed out; step `i` reads 16 values of
    // each row from 2i and writes 8 from i, all below 2 * whole and whole (asserted above).
    unsafe { max_2x2_impl(r0.as_ptr(), r1.as_ptr(), out.as_mut_ptr(), whole) }
    scalar::max_2x2(&r0[2 * whole..], &r1[2 * whole..], &mut out[whole..]);
}

/// The rows' maxima pairwise (`vmaxps`), then even against odd columns: `vshufps` splits them
/// per 128-bit lane, a `vmaxps` takes the window maxima (outputs 0, 1, 4, 5 | 2, 3, 6, 7) and
/// `vpermpd` puts them in order.
#[target_feature(enable = "avx2")]
unsafe fn max_2x2_impl(r0: *const f32, r1: *const f32, out: *mut f32, whole: usize) {
    let mut i = 0;
    while i < whole {
        // SAFETY: see `max_2x2`.
        unsafe {
            let (a, b) = (r0.add(2 * i), r1.add(2 * i));
            let m0 = _mm256_max_ps(_mm256_loadu_ps(a), _mm256_loadu_ps(b));
            let m1 = _mm256_max_ps(_mm256_loadu_ps(a.add(8)), _mm256_loadu_ps(b.add(8)));
            let even = _mm256_shuffle_ps::<0b10_00_10_00>(m0, m1);
            let odd = _mm256_shuffle_ps::<0b11_01_11_01>(m0, m1);
            let m = _mm256_castps_pd(_mm256_max_ps(even, odd));
            _mm256_storeu_ps(out.add(i), _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(m)));
        }
        i += 8;
    }
}

/// See [`Isa::deinterleave`]: 8 pairs per step (the scalar path for the rest).
fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    crate::arch::deinterleave_check(src, even, odd);
    let whole = even.len() / 8 * 8;
    // SAFETY: AVX2 was detected before this table was handed out; step `i` reads the 16 values
    // of `src` from 2i and writes 8 of `even` and of `odd` from i, all below 2 * whole and whole
    // (asserted above).
    unsafe { deinterleave_impl(src.as_ptr(), even.as_mut_ptr(), odd.as_mut_ptr(), whole) }
    scalar::deinterleave(&src[2 * whole..], &mut even[whole..], &mut odd[whole..]);
}

/// `vshufps` splits two vectors into even and odd values per 128-bit lane (0, 1, 4, 5 | 2, 3,
/// 6, 7), `vpermpd` puts each in order.
#[target_feature(enable = "avx2")]
unsafe fn deinterleave_impl(src: *const f32, even: *mut f32, odd: *mut f32, whole: usize) {
    for i in (0..whole).step_by(8) {
        // SAFETY: see `deinterleave`.
        unsafe {
            let (a, b) = (_mm256_loadu_ps(src.add(2 * i)), _mm256_loadu_ps(src.add(2 * i + 8)));
            let e = _mm256_castps_pd(_mm256_shuffle_ps::<0b10_00_10_00>(a, b));
            let o = _mm256_castps_pd(_mm256_shuffle_ps::<0b11_01_11_01>(a, b));
            _mm256_storeu_ps(even.add(i), _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(e)));
            _mm256_storeu_ps(odd.add(i), _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(o)));
        }
    }
}

/// See [`Isa::widen_f16`]: 8 values per `vcvtph2ps` where the CPU has F16C (checked once, then
/// cached by std), the rest through the scalar path.
fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let whole = if is_x86_feature_detected!("f16c") { n / 8 * 8 } else { 0 };
    // SAFETY: F16C was detected just above whenever `whole > 0`; the kernel reads `whole` halves
    // of `src` and writes `whole` floats of `dst`, both at least `n` long.
    unsafe { widen_f16c(src.as_ptr().cast(), dst.as_mut_ptr(), whole) }
    scalar::widen_f16(&src[whole..n], &mut dst[whole..n]);
}

#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16c(src: *const u16, dst: *mut f32, whole: usize) {
    for i in (0..whole).step_by(8) {
        // SAFETY: i + 8 <= whole, in bounds (see `widen_f16`).
        unsafe { _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(_mm_loadu_si128(src.add(i).cast()))) }
    }
}

/// See [`Isa::decode_nibbles`]: 32 indices (16 bytes) at a time by `vpshufb` on the table's byte
/// planes (each byte of the 16 entries is a 16-byte table, and four lookups rebuild the f32
/// weights, interleaved by unpacks; Zen 3: 0.12 ns per weight against 0.22 for two `vpermps`
/// and a blend per 8), then 16 by `vpermps`, then the scalar path.
fn decode_nibbles(packed: &[u8], lut: &[f32; 16], out: &mut [f32]) {
    let n = out.len();
    crate::arch::decode_nibbles_check(packed, out);
    let (by32, whole) = (n / 32 * 32, n / 16 * 16);
    // SAFETY: AVX2 + FMA were detected before this table was handed out; a block of 32 reads
    // bytes `i / 2 .. i / 2 + 16` with `i + 32 <= by32 <= n`, one of 16 bytes `i / 2 .. i / 2 + 8`
    // with `i + 16 <= whole <= n`, inside `packed` by the assertion, and they write `out[i ..]`
    // as far as they read.
    unsafe {
        decode_nibbles_by_planes(packed.as_ptr(), lut, out.as_mut_ptr(), by32);
        decode_nibbles_impl(packed.as_ptr().add(by32 / 2), lut, out.as_mut_ptr().add(by32), whole - by32);
    }
    scalar::decode_nibbles(&packed[whole / 2..], lut, &mut out[whole..]);
}

/// Blocks of 32 indices of [`decode_nibbles`] (`whole` a multiple of 32): byte `j` of every
/// entry of `lut` forms table `j`; `vpshufb` looks up all 32 indices in each, and two rounds of
/// unpacks put each index's four bytes together (in 128-bit halves, which `vperm2i128` orders).
#[target_feature(enable = "avx2,fma")]
unsafe fn decode_nibbles_by_planes(packed: *const u8, lut: &[f32; 16], out: *mut f32, whole: usize) {
    let bytes = lut.map(f32::to_le_bytes);
    let [t0, t1, t2, t3]: [__m256i; 4] = std::array::from_fn(|j| {
        let table: [u8; 16] = std::array::from_fn(|e| bytes[e][j]);
        // SAFETY: `table` holds the 16 bytes read.
        _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(table.as_ptr().cast()) })
    });
    let low = _mm_set1_epi8(0x0F);
    let mut i = 0;
    // SAFETY: see `decode_nibbles`.
    unsafe {
        while i < whole {
            let b = _mm_loadu_si128(packed.add(i / 2).cast());
            let (lo, hi) = (_mm_and_si128(b, low), _mm_and_si128(_mm_srli_epi16::<4>(b), low));
            // Indices 0..16 (bytes 0..8, low nibble first) in the low half, 16..32 in the high.
            let idx = _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));
            let [b0, b1, b2, b3] = [t0, t1, t2, t3].map(|t| _mm256_shuffle_epi8(t, idx));
            let (lo01, hi01) = (_mm256_unpacklo_epi8(b0, b1), _mm256_unpackhi_epi8(b0, b1));
            let (lo23, hi23) = (_mm256_unpacklo_epi8(b2, b3), _mm256_unpackhi_epi8(b2, b3));
            // Weights 0-3 | 16-19, 4-7 | 20-23, 8-11 | 24-27, 12-15 | 28-31.
            let (w0, w1) = (_mm256_unpacklo_epi16(lo01, lo23), _mm256_unpackhi_epi16(lo01, lo23));
            let (w2, w3) = (_mm256_unpacklo_epi16(hi01, hi23), _mm256_unpackhi_epi16(hi01, hi23));
            let o = out.add(i).cast::<__m256i>();
            _mm256_storeu_si256(o, _mm256_permute2x128_si256::<0x20>(w0, w1));
            _mm256_storeu_si256(o.add(1), _mm256_permute2x128_si256::<0x20>(w2, w3));
            _mm256_storeu_si256(o.add(2), _mm256_permute2x128_si256::<0x31>(w0, w1));
            _mm256_storeu_si256(o.add(3), _mm256_permute2x128_si256::<0x31>(w2, w3));
            i += 32;
        }
    }
}

/// Blocks of 16 indices of [`decode_nibbles`] (`whole` a multiple of 16): each 8 look up both
/// halves of the table with `vpermps` and blend by the index's bit 3.
#[target_feature(enable = "avx2,fma")]
unsafe fn decode_nibbles_impl(packed: *const u8, lut: &[f32; 16], out: *mut f32, whole: usize) {
    let (t0, t1) = (_mm256_loadu_ps(lut.as_ptr()), _mm256_loadu_ps(lut.as_ptr().add(8)));
    let (low, seven) = (_mm_set1_epi8(0x0F), _mm256_set1_epi32(7));
    let mut i = 0;
    // SAFETY: see `decode_nibbles`.
    unsafe {
        while i < whole {
            let b = _mm_loadl_epi64(packed.add(i / 2).cast());
            let (lo, hi) = (_mm_and_si128(b, low), _mm_and_si128(_mm_srli_epi16::<4>(b), low));
            let idx = _mm_unpacklo_epi8(lo, hi);
            for (h, bytes) in [idx, _mm_unpackhi_epi64(idx, idx)].into_iter().enumerate() {
                let k = _mm256_cvtepu8_epi32(bytes);
                let upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(k, seven));
                let w =
                    _mm256_blendv_ps(_mm256_permutevar8x32_ps(t0, k), _mm256_permutevar8x32_ps(t1, k), upper);
                _mm256_storeu_ps(out.add(i + 8 * h), w);
            }
            i += 16;
        }
    }
}

/// See [`Isa::dot`].
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: AVX2 + FMA were detected before this table was handed out; both slices hold n values.
    unsafe { dot_impl(a.as_ptr(), b.as_ptr(), n) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_impl(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every access is below n (full vectors) or masked to lanes below n.
    unsafe {
        while i + 32 <= n {
            for (u, acc) in acc.iter_mut().enumerate() {
                let o = i + 8 * u;
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(o)), _mm256_loadu_ps(b.add(o)), *acc);
            }
            i += 32;
        }
        while i < n {
            let m = lane_mask(n - i);
            let p = _mm256_mul_ps(_mm256_maskload_ps(a.add(i), m), _mm256_maskload_ps(b.add(i), m));
            acc[0] = _mm256_add_ps(acc[0], p);
            i += 8;
        }
    }
    hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
}

/// See [`Isa::dot_rows`].
fn dot_rows(a: &[f32], k: usize, x: &[f32], out: &mut [f32]) {
    dot_rows_check(a, k, x, out);
    // SAFETY: AVX2 + FMA were detected before this table was handed out; the check asserted
    // `out.len()` rows of `k` weights in `a` and `k` values in `x`.
    unsafe { dot_rows_impl(a.as_ptr(), k, x.as_ptr(), out.as_mut_ptr(), out.len()) }
}

/// [`dot_rows`] eight rows at a time: eight independent accumulator chains keep both FMA units
/// busy where one row's dot product waits on its own sums, and each vector of `x` is loaded once
/// for the eight. The last rows' block repeats its first row in the rows it lacks and drops
/// their sums.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_impl(a: *const f32, k: usize, x: *const f32, out: *mut f32, rows: usize) {
    let mut r0 = 0;
    while r0 < rows {
        let live = (rows - r0).min(8);
        // SAFETY: rows r0 .. r0 + live exist (the caller's bounds); the rest repeat row r0.
        let row: [*const f32; 8] =
            std::array::from_fn(|i| unsafe { a.add((r0 + if i < live { i } else { 0 }) * k) });
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut p = 0;
        // SAFETY: every load is below `k` in its row and in `x` (whole vectors) or masked to it.
        unsafe {
            while p + 8 <= k {
                let xv = _mm256_loadu_ps(x.add(p));
                for (acc, row) in acc.iter_mut().zip(row) {
                    *acc = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(p)), xv, *acc);
                }
                p += 8;
            }
            if p < k {
                let m = lane_mask(k - p);
                let xv = _mm256_maskload_ps(x.add(p), m);
                for (acc, row) in acc.iter_mut().zip(row) {
                    *acc = _mm256_fmadd_ps(_mm256_maskload_ps(row.add(p), m), xv, *acc);
                }
            }
        }
        // Lane i of the result: row i's eight partial sums added.
        let pairs = [
            _mm256_hadd_ps(acc[0], acc[1]),
            _mm256_hadd_ps(acc[2], acc[3]),
            _mm256_hadd_ps(acc[4], acc[5]),
            _mm256_hadd_ps(acc[6], acc[7]),
        ];
        let quads = [_mm256_hadd_ps(pairs[0], pairs[1]), _mm256_hadd_ps(pairs[2], pairs[3])];
        let sums = _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(quads[0], quads[1]),
            _mm256_permute2f128_ps::<0x31>(quads[0], quads[1]),
        );
        // SAFETY: `live` outputs from r0 are within `out` (the caller's bounds).
        unsafe { _mm256_maskstore_ps(out.add(r0), lane_mask(live), sums) };
        r0 += live;
    }
}

/// See [`Isa::mul`].
fn mul(y: &mut [f32], x: &[f32]) {
    let n = y.len().min(x.len());
    // SAFETY: AVX2 was detected before this table was handed out; both slices hold n values.
    unsafe { mul_impl(y.as_mut_ptr(), x.as_ptr(), n) }
}

#[target_feature(enable = "avx2")]
unsafe fn mul_impl(y: *mut f32, x: *const f32, n: usize) {
    let mut i = 0;
    // SAFETY: every access is below n (full vectors) or masked to lanes below n.
    unsafe {
        while i + 8 <= n {
            _mm256_storeu_ps(y.add(i), _mm256_mul_ps(_mm256_loadu_ps(y.add(i)), _mm256_loadu_ps(x.add(i))));
            i += 8;
        }
        if i < n {
            let m = lane_mask(n - i);
            let v = _mm256_mul_ps(_mm256_maskload_ps(y.add(i), m), _mm256_maskload_ps(x.add(i), m));
            _mm256_maskstore_ps(y.add(i), m, v);
        }
    }
}

/// See [`Isa::axpy`].
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    // SAFETY: AVX2 + FMA were detected before this table was handed out; both slices hold n values.
    unsafe { axpy_impl(y.as_mut_ptr(), a, x.as_ptr(), n) }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_impl(y: *mut f32, a: f32, x: *const f32, n: usize) {
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    // SAFETY: every access is below n (full vectors) or masked to lanes below n.
    unsafe {
        while i + 8 <= n {
            let v = _mm256_fmadd_ps(av, _mm256_loadu_ps(x.add(i)), _mm256_loadu_ps(y.add(i)));
            _mm256_storeu_ps(y.add(i), v);
            i += 8;
        }
        if i < n {
            let m = lane_mask(n - i);
            let v = _mm256_fmadd_ps(av, _mm256_maskload_ps(x.add(i), m), _mm256_maskload_ps(y.add(i), m));
            _mm256_maskstore_ps(y.add(i), m, v);
        }
    }
}

/// See [`Isa::dot_packed`]. 4-bit rows take [`dot_nibbles`]. Otherwise eight indices occupy exactly `bits` bytes, so each group of eight is
/// read as one unaligned u64, split into two u32 halves of four indices, shifted per lane and
/// masked; the LUT lookup is `vpermps` (bits <= 3), two `vpermps` + blend (4), a gather (5..=7)
/// or scalar loads from L1 (8).
fn dot_packed(row: &[u8], bits: u8, lut: &[f32], x: &[f32]) -> f32 {
    if bits == 4 && lut.len() >= 16 {
        let pairs = (x.len() / 32).min(row.len() / 16);
        // SAFETY: AVX2 + FMA were detected before this table was handed out; `pairs` 16-byte
        // reads of `row` and 32-float reads of `x` are in bounds by the `min` above.
        let s = unsafe { dot_nibbles(row.as_ptr(), lut, x.as_ptr(), pairs) };
        return s + dot_packed_any(&row[pairs * 16..], bits, lut, &x[pairs * 32..]);
    }
    dot_packed_any(row, bits, lut, x)
}

/// 4-bit indices, 32 per 16-byte load, unpacked entirely in vector registers: low and high
/// nibbles are interleaved (`punpck*bw`, element `2i` is byte `i`'s low nibble) and widened to
/// lanes (`vpmovzxbd`), then looked up with two `vpermps` and a blend on bit 3.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_nibbles(row: *const u8, lut: &[f32], x: *const f32, pairs: usize) -> f32 {
    let table = bounds::padded_lut::<16>(lut);
    // SAFETY: `table` is 16 floats long.
    let (t0, t1) = unsafe { (_mm256_loadu_ps(table.as_ptr()), _mm256_loadu_ps(table.as_ptr().add(8))) };
    let low = _mm_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); 2];
    for g in 0..pairs {
        // SAFETY: the caller guarantees 16 readable bytes at g * 16.
        let v = unsafe { _mm_loadu_si128(row.add(g * 16).cast()) };
        let lo = _mm_and_si128(v, low);
        let hi = _mm_and_si128(_mm_srli_epi16(v, 4), low);
        let (a, b) = (_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi));
        let eighths = [a, _mm_srli_si128(a, 8), b, _mm_srli_si128(b, 8)];
        for (e, bytes) in eighths.into_iter().enumerate() {
            let idx = _mm256_cvtepu8_epi32(bytes);
            let (lo, hi) = (_mm256_permutevar8x32_ps(t0, idx), _mm256_permutevar8x32_ps(t1, idx));
            let w = _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
            // SAFETY: the caller guarantees 32 floats at g * 32.
            let xv = unsafe { _mm256_loadu_ps(x.add(g * 32 + e * 8)) };
            acc[e % 2] = _mm256_fmadd_ps(w, xv, acc[e % 2]);
        }
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

/// Any width: 8 indices per step, extracted through general-purpose registers.
fn dot_packed_any(row: &[u8], bits: u8, lut: &[f32], x: &[f32]) -> f32 {
    let Some(groups) = bounds::vector_groups(row, bits, lut, x, 8, 8) else {
        return scalar::dot_packed(row, bits, lut, x);
    };
    let b = bits as usize;
    // SAFETY: AVX2 + FMA were detected before this table was handed out. `vector_groups` checked
    // that groups * 8 <= x.len(), that reading 8 bytes at every g * bits stays inside `row`, and
    // that `lut` has 2^bits entries, so every gathered index is in bounds.
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
    s + scalar::dot_packed(&row[groups * b..], bits, lut, &x[groups * 8..])
}

#[target_feature(enable = "avx2,fma")]
unsafe fn dot_packed_impl<const B: usize>(row: *const u8, lut: &[f32], x: *const f32, groups: usize) -> f32 {
    let table = bounds::padded_lut::<16>(lut);
    // SAFETY: `table` is 16 floats long.
    let (t0, t1) = unsafe { (_mm256_loadu_ps(table.as_ptr()), _mm256_loadu_ps(table.as_ptr().add(8))) };
    let b = B as i32;
    let shifts = _mm256_setr_epi32(0, b, 2 * b, 3 * b, 0, b, 2 * b, 3 * b);
    let mask = _mm256_set1_epi32((1 << B) - 1);
    let mut acc = _mm256_setzero_ps();
    for g in 0..groups {
        // SAFETY: the caller guarantees 8 readable bytes at g * B and 8 floats at g * 8.
        let (v, xv) = unsafe { (bounds::read_u64(row.add(g * B)), _mm256_loadu_ps(x.add(g * 8))) };
        let (lo, hi) = (v as u32 as i32, (v >> (4 * B)) as u32 as i32);
        let spread = _mm256_setr_epi32(lo, lo, lo, lo, hi, hi, hi, hi);
        let idx = _mm256_and_si256(_mm256_srlv_epi32(spread, shifts), mask);
        let w = if B <= 3 {
            _mm256_permutevar8x32_ps(t0, idx)
        } else if B == 4 {
            let (lo, hi) = (_mm256_permutevar8x32_ps(t0, idx), _mm256_permutevar8x32_ps(t1, idx));
            _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)))
        } else if B == 8 {
            // Byte indices: 8 scalar loads from the L1-resident LUT beat a gather on Zen 4.
            let mut w = [0.0f32; 8];
            for (l, w) in w.iter_mut().enumerate() {
                // SAFETY: byte l of the group is within the 8 bytes at g * 8 checked by the
                // caller; a byte indexes a 256-entry LUT.
                *w = unsafe { *lut.get_unchecked(*row.add(g * 8 + l) as usize) };
            }
            // SAFETY: `w` is 8 floats long.
            unsafe { _mm256_loadu_ps(w.as_ptr()) }
        } else {
            // SAFETY: idx < 2^B <= lut.len() (checked by the caller).
            unsafe { _mm256_i32gather_ps::<4>(lut.as_ptr(), idx) }
        };
        acc = _mm256_fmadd_ps(w, xv, acc);
    }
    hsum(acc)
}

/// See [`Isa::gemv_prepare`]. 1- and 2-bit rows are read by [`dot_packed_rows`] 32 bytes (8
/// words) at a time, so `x` is put in `permute_blocks` order for 8 lanes; 3- to 7-bit rows in
/// [`gemv_planes_avx2::prepare`]'s order; 8-bit rows copy.
fn gemv_prepare(bits: u8, x: &[f32], xp: &mut [f32]) {
    match bits {
        1 | 2 => permute::blocks(x, xp, 8, 32 / bits as usize),
        _ if gemv_planes_avx2::takes(bits) => gemv_planes_avx2::prepare(bits, x, xp),
        _ => scalar::gemv_prepare(bits, x, xp),
    }
}

/// See [`Isa::dot_nibble_rows_f16`]: [`gemv_planes_avx2::dot_nibble_rows_f16`].
fn dot_nibble_rows_f16(rows: &[&[u8]], tables: &[&[half::f16]], x: &[f32], xp: &[f32], out: &mut [f32]) {
    crate::arch::dot_nibble_rows_f16_check(rows, tables, x, xp, out);
    // SAFETY: AVX2 + FMA were detected before this table was handed out; one table of at most 16
    // entries per row and an output per row (checked); `xp` is `gemv_prepare`'s order at 4 bits
    // (the contract).
    unsafe { gemv_planes_avx2::dot_nibble_rows_f16(rows, tables, x, xp, out, dot_packed) }
}

/// See [`Isa::dot_packed_rows`]. At 1 and 2 bits, up to [`PACKED_ROWS`] rows go through
/// [`rows_kernel`] together over every whole 32-byte block, and over a last, partial block too
/// when `xp` holds it zero-padded ([`bounds::tail_bytes`]); otherwise each row's remaining columns
/// go through [`dot_packed`]. 3- to 7-bit rows go through [`gemv_planes_avx2::dot_rows`]
/// (byte-plane tables); 8-bit rows through [`dot_packed`] row by row.
fn dot_packed_rows(rows: &[&[u8]], bits: u8, luts: &[[f32; 256]], x: &[f32], xp: &[f32], out: &mut [f32]) {
    dot_packed_rows_check(rows, luts, x, xp, out);
    if gemv_planes_avx2::takes(bits) {
        // SAFETY: AVX2 + FMA were detected before this table was handed out; `bits` is one the
        // kernel takes; `luts` holds one table or one per row (checked) and `xp` is
        // `gemv_prepare`'s order at `bits` (the contract).
        return unsafe { gemv_planes_avx2::dot_rows(rows, bits, luts, x, xp, out, dot_packed) };
    }
    if !matches!(bits, 1 | 2) {
        return bounds::add_row_tails(dot_packed, rows, bits, luts, x, 0, &[], out);
    }
    let cols = 256 / bits as usize;
    let blocks = bounds::whole_blocks(rows, x.len(), cols, 32);
    let tail = bounds::tail_bytes(rows, bits, x.len(), xp.len(), blocks, cols, 32);
    let done = if tail > 0 { x.len() } else { blocks * cols };
    for (c, (rows, out)) in rows.chunks(PACKED_ROWS).zip(out.chunks_mut(PACKED_ROWS)).enumerate() {
        let luts = tables_from(luts, c * PACKED_ROWS);
        let mut sums = [0.0f32; PACKED_ROWS];
        let xp = xp.as_ptr();
        // SAFETY: AVX2 + FMA were detected before this table was handed out. Every row holds at
        // least `blocks * 32 + tail` bytes and `xp` at least `(blocks + (tail > 0)) * cols`
        // values, by `whole_blocks` and `tail_bytes` above; `rows` holds `rows.len()` entries,
        // the arm's R, and `luts` one table per row or one shared (checked).
        unsafe {
            match (bits, rows.len()) {
                (1, 1) => rows_kernel::<1, 1>(rows, luts, xp, blocks, tail, &mut sums),
                (1, 2) => rows_kernel::<1, 2>(rows, luts, xp, blocks, tail, &mut sums),
                (1, 3) => rows_kernel::<1, 3>(rows, luts, xp, blocks, tail, &mut sums),
                (1, _) => rows_kernel::<1, 4>(rows, luts, xp, blocks, tail, &mut sums),
                (_, 1) => rows_kernel::<2, 1>(rows, luts, xp, blocks, tail, &mut sums),
                (_, 2) => rows_kernel::<2, 2>(rows, luts, xp, blocks, tail, &mut sums),
                (_, 3) => rows_kernel::<2, 3>(rows, luts, xp, blocks, tail, &mut sums),
                (_, _) => rows_kernel::<2, 4>(rows, luts, xp, blocks, tail, &mut sums),
            }
        }
        bounds::add_row_tails(dot_packed, rows, bits, luts, x, done, &sums, out);
    }
}

/// `sums[r] = sum over blocks * 256 / B columns (and `tail` bytes of one more block) of
/// lut_r[index] * x` for `R` rows of `B`-bit indices (B = 1, 2), `xp` in `permute_blocks`
/// order. Each 32-byte block is one register of 8 words, shifted right by `B` after each step so
/// that the next index of every word is in the low bits. `vpermps` reads bits 2..0, so an 8-entry
/// table `lut[i & (2^B - 1)]` needs no masking. The partial block's bytes are copied into a zeroed block
/// (AVX2 has no byte-masked load), so its missing indices read as 0 against `xp`'s zero padding.
///
/// # Safety
/// AVX2 and FMA must be available; `rows` holds at least `R` entries and `luts` one table or
/// `R`, every row at least `blocks * 32 + tail` bytes, `tail < 32`, and `xp` at least `(blocks +
/// (tail > 0)) * 256 / B` floats.
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_kernel<const B: i32, const R: usize>(
    rows: &[&[u8]],
    luts: &[[f32; 256]],
    xp: *const f32,
    blocks: usize,
    tail: usize,
    sums: &mut [f32; PACKED_ROWS],
) {
    let per = 32 / B as usize;
    // Lane i reads entry i & (2^B - 1): the table repeats, so the bits of the next index that
    // `vpermps` also sees do not matter.
    let sel: [i32; 8] = std::array::from_fn(|i| (i & ((1 << B) - 1)) as i32);
    // SAFETY: `sel` is 8 lanes long and every table 256 floats.
    let table: [__m256; R] = unsafe {
        let sel = _mm256_loadu_si256(sel.as_ptr().cast());
        std::array::from_fn(|r| _mm256_permutevar8x32_ps(_mm256_loadu_ps(row_table(luts, r).as_ptr()), sel))
    };
    let p: [*const u8; R] = std::array::from_fn(|r| rows[r].as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for blk in 0..blocks + usize::from(tail > 0) {
        let mut v: [__m256i; R] = std::array::from_fn(|r| {
            if blk < blocks {
                // SAFETY: the caller guarantees 32 readable bytes at blk * 32 of every row.
                unsafe { _mm256_loadu_si256(p[r].add(blk * 32).cast()) }
            } else {
                let mut last = [0u8; 32];
                // SAFETY: the caller guarantees `tail` (< 32) readable bytes at blk * 32.
                unsafe {
                    std::ptr::copy_nonoverlapping(p[r].add(blk * 32), last.as_mut_ptr(), tail);
                    _mm256_loadu_si256(last.as_ptr().cast())
                }
            }
        });
        // Eight steps at a time, fully unrolled, so the accumulators stay in registers.
        for k8 in (0..per).step_by(8) {
            for j in 0..8 {
                // SAFETY: the caller guarantees (blocks + (tail > 0)) * 8 * per floats of `xp`.
                let xk = unsafe { _mm256_loadu_ps(xp.add((blk * per + k8 + j) * 8)) };
                for r in 0..R {
                    let w = _mm256_permutevar8x32_ps(table[r], v[r]);
                    acc[r][j % 2] = _mm256_fmadd_ps(w, xk, acc[r][j % 2]);
                    v[r] = _mm256_srli_epi32::<B>(v[r]);
                }
            }
        }
    }
    for (s, acc) in sums.iter_mut().zip(&acc) {
        *s = hsum(_mm256_add_ps(acc[0], acc[1]));
    }
}
