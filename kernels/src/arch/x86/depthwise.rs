//! [`Isa::depthwise_rows`] for AVX2 and AVX-512: the register tiles `arch::depthwise` describes,
//! 32 (AVX-512) or 16 (AVX2) columns at a time, masked at the end of a row.
//!
//! [`Isa::depthwise_rows`]: crate::arch::Isa::depthwise_rows

use std::arch::x86_64::*;

use super::{avx2::lane_mask as mask8, avx512::lane_mask as mask16};
use crate::arch::depthwise::TILE_ROWS;
use crate::arch::PLANE_LANES;
use crate::arch::{
    depthwise_rows_s2_check, depthwise_tiles, DepthwisePlane, DepthwiseRows, DepthwiseTile as Tile,
};

/// AVX-512 [`Isa::depthwise_rows`](crate::arch::Isa::depthwise_rows).
pub(super) fn depthwise_rows_avx512(w: &[f32], b: &[f32], c: &mut [f32], s: DepthwiseRows) {
    depthwise_tiles(w, b, c, s, |blk, t| {
        // SAFETY: this function is only in the AVX-512 table, handed out after AVX-512 F was
        // detected; the tile covers rows `blk.rows + blk.kh - 1` of `b` and `blk.rows` of `c`
        // (see `arch::depthwise`), and masked lanes past column `n` are not accessed.
        unsafe { depthwise_dispatch!(tile512, blk, t) }
    });
}

/// AVX2 [`Isa::depthwise_rows`](crate::arch::Isa::depthwise_rows).
pub(super) fn depthwise_rows_avx2(w: &[f32], b: &[f32], c: &mut [f32], s: DepthwiseRows) {
    depthwise_tiles(w, b, c, s, |blk, t| {
        // SAFETY: as in `depthwise_rows_avx512`, for the AVX2 table (AVX2 + FMA detected); the
        // `vmaskmovps` tails touch no lane past column `n`.
        unsafe { depthwise_dispatch!(tile256, blk, t) }
    });
}

/// `R` output rows of a `KH`-row filter, 32 columns (two vectors per row) at a time; a last
/// strip of at most 16 columns (all of an 8- or 16-wide plane's row) takes one vector per row.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile512<const R: usize, const KH: usize>(t: Tile) {
    let mut j = 0;
    while j < t.n {
        let width = (t.n - j).min(32);
        // SAFETY: columns `j .. j + width` lie below `n` (see `strip512`).
        unsafe {
            if width > 16 {
                strip512::<R, KH, 2>(t, j, width);
            } else {
                strip512::<R, KH, 1>(t, j, width);
            }
        }
        j += width;
    }
}

/// Columns `j .. j + width` (`width <= 16 * V`) of `R` output rows of a `KH`-row filter.
///
/// # Safety
/// AVX-512 F available; rows `0 .. R + KH - 1` of `b` and `0 .. R` of `c` at those columns (plus
/// `kx < kw` for `b`) are in bounds (see `depthwise_rows_avx512`).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn strip512<const R: usize, const KH: usize, const V: usize>(t: Tile, j: usize, width: usize) {
    let m: [__mmask16; V] = std::array::from_fn(|v| mask16(width.saturating_sub(16 * v)));
    // SAFETY: in bounds by the contract; masked-off lanes are not accessed.
    unsafe {
        let mut acc = [[_mm512_set1_ps(t.init); V]; R];
        if t.accumulate {
            for (r, acc) in acc.iter_mut().enumerate() {
                let cp = t.c.add(r * t.ldc + j);
                *acc = std::array::from_fn(|v| _mm512_maskz_loadu_ps(m[v], cp.add(16 * v)));
            }
        }
        for kx in 0..t.kw {
            let wk: [__m512; KH] = std::array::from_fn(|ky| _mm512_set1_ps(*t.w.add(ky * t.kw + kx)));
            for i in 0..R + KH - 1 {
                let bp = t.b.add(i * t.ldb + kx + j);
                let x: [__m512; V] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(m[v], bp.add(16 * v)));
                for (ky, &wv) in wk.iter().enumerate() {
                    // Input row i is filter row ky of output row i - ky.
                    if i >= ky && i - ky < R {
                        for (a, &xv) in acc[i - ky].iter_mut().zip(&x) {
                            *a = _mm512_fmadd_ps(wv, xv, *a);
                        }
                    }
                }
            }
        }
        if let Some([lo, hi]) = t.clamp {
            // max(x, lo) returns lo for a NaN x, as f32::max does.
            let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
            acc.iter_mut().flatten().for_each(|a| *a = _mm512_min_ps(_mm512_max_ps(*a, lo), hi));
        }
        for (r, acc) in acc.iter().enumerate() {
            let cp = t.c.add(r * t.ldc + j);
            for (v, &a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(cp.add(16 * v), m[v], a);
            }
        }
    }
}

/// `R` output rows of a `KH`-row filter, 16 columns (two vectors per row) at a time; a last
/// strip of at most 8 columns takes one vector per row.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile256<const R: usize, const KH: usize>(t: Tile) {
    let mut j = 0;
    while j < t.n {
        let width = (t.n - j).min(16);
        // SAFETY: columns `j .. j + width` lie below `n` (see `strip256`).
        unsafe {
            if width > 8 {
                strip256::<R, KH, 2>(t, j, width);
            } else {
                strip256::<R, KH, 1>(t, j, width);
            }
        }
        j += width;
    }
}

/// Columns `j .. j + width` (`width <= 8 * V`) of `R` output rows of a `KH`-row filter.
///
/// # Safety
/// AVX2 + FMA available; as for [`strip512`].
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn strip256<const R: usize, const KH: usize, const V: usize>(t: Tile, j: usize, width: usize) {
    let m: [__m256i; V] = std::array::from_fn(|v| mask8(width.saturating_sub(8 * v)));
    // SAFETY: in bounds by the contract; `vmaskmovps` neither loads nor stores masked-off lanes.
    unsafe {
        let mut acc = [[_mm256_set1_ps(t.init); V]; R];
        if t.accumulate {
            for (r, acc) in acc.iter_mut().enumerate() {
                let cp = t.c.add(r * t.ldc + j);
                *acc = std::array::from_fn(|v| _mm256_maskload_ps(cp.add(8 * v), m[v]));
            }
        }
        for kx in 0..t.kw {
            let wk: [__m256; KH] = std::array::from_fn(|ky| _mm256_set1_ps(*t.w.add(ky * t.kw + kx)));
            for i in 0..R + KH - 1 {
                let bp = t.b.add(i * t.ldb + kx + j);
                let x: [__m256; V] = std::array::from_fn(|v| _mm256_maskload_ps(bp.add(8 * v), m[v]));
                for (ky, &wv) in wk.iter().enumerate() {
                    if i >= ky && i - ky < R {
                        for (a, &xv) in acc[i - ky].iter_mut().zip(&x) {
                            *a = _mm256_fmadd_ps(wv, xv, *a);
                        }
                    }
                }
            }
        }
        if let Some([lo, hi]) = t.clamp {
            // max(x, lo) returns lo for a NaN x, as f32::max does.
            let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
            acc.iter_mut().flatten().for_each(|a| *a = _mm256_min_ps(_mm256_max_ps(*a, lo), hi));
        }
        for (r, acc) in acc.iter().enumerate() {
            let cp = t.c.add(r * t.ldc + j);
            for (v, &a) in acc.iter().enumerate() {
                _mm256_maskstore_ps(cp.add(8 * v), m[v], a);
            }
        }
    }
}

/// AVX-512 [`Isa::depthwise_rows_s2`](crate::arch::Isa::depthwise_rows_s2): [`TILE_ROWS`]
/// output rows at a time, 16 output columns per vector.
pub(super) fn depthwise_rows_s2_avx512(w: &[f32], b: &[f32], c: &mut [f32], s: DepthwiseRows) {
    if !depthwise_rows_s2_check(w, b, c, &s) {
        return;
    }
    let mut r0 = 0;
    while r0 < s.rows {
        let rows = (s.rows - r0).min(TILE_ROWS);
        // SAFETY: this function is only in the AVX-512 table, handed out after AVX-512 F was
        // detected. The check asserted the filter and that `b` reaches input row
        // `2 * (rows - 1) + kh - 1` at column `2 * (n - 1) + kw - 1` and `c` output row
        // `rows - 1` at column `n - 1`; the tile starting at output row `r0` reads input rows
        // from `2 * r0` and writes output rows from `r0`, within those, and masked lanes are not
        // accessed.
        let t = unsafe {
            Tile {
                w: w.as_ptr(),
                kw: s.kw,
                b: b.as_ptr().add(2 * r0 * s.ldb),
                ldb: s.ldb,
                c: c.as_mut_ptr().add(r0 * s.ldc),
                ldc: s.ldc,
                n: s.n,
                accumulate: false,
                init: s.init,
                clamp: s.clamp,
            }
        };
        let blk =
            crate::arch::DepthwiseBlock { w: 0, kh: s.kh, b: 0, c: 0, rows, accumulate: false, last: true };
        // SAFETY: as above.
        unsafe { depthwise_dispatch!(tile512_s2, blk, t) }
        r0 += rows;
    }
}

/// `R` output rows of a `KH`-row filter at stride 2, 16 columns at a time: each input vector
/// pair (32 consecutive columns) gives the 16 even columns a filter column reads by one
/// `vpermt2ps`, and each loaded input row feeds every output row whose filter reaches it.
///
/// # Safety
/// AVX-512 F available; `t.b` holds rows `0 .. 2 * (R - 1) + KH` of at least `2 * (n - 1) + kw`
/// columns (`ldb` apart) and `t.c` rows `0 .. R` of `n` columns.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile512_s2<const R: usize, const KH: usize>(t: Tile) {
    // Lane l of the result is lane 2l of the 32-lane pair (lo, hi).
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let mut j = 0;
    // SAFETY: every access is inside the contract: output columns j .. j + width (< n), input
    // columns 2j + kx .. 2j + kx + 2 (width - 1) (< 2 (n - 1) + kw), masked lanes not accessed.
    unsafe {
        while j < t.n {
            let width = (t.n - j).min(16);
            let out_mask = mask16(width);
            // Input columns needed from 2j + kx: 2 * width - 1, over two vectors.
            let span = 2 * width - 1;
            let (lo_mask, hi_mask) = (mask16(span), mask16(span.saturating_sub(16)));
            let mut acc = [_mm512_set1_ps(t.init); R];
            for kx in 0..t.kw {
                let wk: [__m512; KH] = std::array::from_fn(|ky| _mm512_set1_ps(*t.w.add(ky * t.kw + kx)));
                for i in 0..2 * (R - 1) + KH {
                    let bp = t.b.add(i * t.ldb + 2 * j + kx);
                    let lo = _mm512_maskz_loadu_ps(lo_mask, bp);
                    let hi = _mm512_maskz_loadu_ps(hi_mask, bp.add(16));
                    let x = _mm512_permutex2var_ps(lo, even, hi);
                    for (ky, &wv) in wk.iter().enumerate() {
                        // Input row i is filter row ky of output row (i - ky) / 2 when even.
                        if i >= ky && (i - ky) % 2 == 0 && (i - ky) / 2 < R {
                            let a = &mut acc[(i - ky) / 2];
                            *a = _mm512_fmadd_ps(wv, x, *a);
                        }
                    }
                }
            }
            if let Some([lo, hi]) = t.clamp {
                let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
                acc.iter_mut().for_each(|a| *a = _mm512_min_ps(_mm512_max_ps(*a, lo), hi));
            }
            for (r, &a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(t.c.add(r * t.ldc + j), out_mask, a);
            }
            j += width;
        }
    }
}

/// Blocks of [`DepthwisePlane`] one call of [`plane512`] computes together: independent sums,
/// so consecutive FMAs do not wait on each other.
const PLANE_BLOCKS: usize = 4;

/// AVX-512 [`Isa::depthwise_plane`](crate::arch::Isa::depthwise_plane): [`PLANE_BLOCKS`] vectors
/// of output at a time, each tap's input loaded under the plane's masks.
pub(super) fn depthwise_plane_avx512(
    w: &[f32],
    x: &[f32],
    y: &mut [f32],
    plane: &DepthwisePlane,
    init: f32,
    clamp: Option<[f32; 2]>,
) {
    plane.check(w, x, y);
    let blocks = plane.blocks();
    let mut v0 = 0;
    while v0 < blocks {
        let nb = (blocks - v0).min(PLANE_BLOCKS);
        // SAFETY: this function is only in the AVX-512 table, handed out after AVX-512 F was
        // detected; the check asserted `w`, `x` and `y` cover the plane's taps, input and output.
        unsafe {
            match nb {
                4 => plane512::<4>(w, x, y, plane, v0, init, clamp),
                3 => plane512::<3>(w, x, y, plane, v0, init, clamp),
                2 => plane512::<2>(w, x, y, plane, v0, init, clamp),
                _ => plane512::<1>(w, x, y, plane, v0, init, clamp),
            }
        }
        v0 += nb;
    }
}

/// Output blocks `v0 .. v0 + V` of one channel's plane.
///
/// # Safety
/// AVX-512 F available; `plane.check(w, x, y)` passed and `v0 + V <= plane.blocks()`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn plane512<const V: usize>(
    w: &[f32],
    x: &[f32],
    y: &mut [f32],
    plane: &DepthwisePlane,
    v0: usize,
    init: f32,
    clamp: Option<[f32; 2]>,
) {
    let mut acc = [_mm512_set1_ps(init); V];
    for (t, &wt) in w[..plane.taps()].iter().enumerate() {
        let (wv, offset, masks) = (_mm512_set1_ps(wt), plane.offset(t), &plane.masks(t)[v0..][..V]);
        for (j, (a, &m)) in acc.iter_mut().zip(masks).enumerate() {
            // The vector's first lane may lie before `x` or its last after it (a border tap):
            // `wrapping_offset` forms the address without claiming it is inside `x`.
            let base = x.as_ptr().wrapping_offset(((v0 + j) * PLANE_LANES) as isize + offset);
            // SAFETY: a mask bit is set only for a lane whose input element `i + offset` lies
            // inside the plane's input (`DepthwisePlane::new`), which the check asserted `x`
            // holds; masked-off lanes are not accessed (AVX-512 fault suppression).
            let xv = unsafe { _mm512_maskz_loadu_ps(m, base) };
            *a = _mm512_fmadd_ps(wv, xv, *a);
        }
    }
    if let Some([lo, hi]) = clamp {
        // max(x, lo) returns lo for a NaN x, as f32::max does.
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        acc.iter_mut().for_each(|a| *a = _mm512_min_ps(_mm512_max_ps(*a, lo), hi));
    }
    for (j, &a) in acc.iter().enumerate() {
        let first = (v0 + j) * PLANE_LANES;
        // SAFETY: elements `first .. first + lanes` lie inside the plane's output, which the
        // check asserted `y` holds; masked-off lanes are not accessed.
        unsafe { _mm512_mask_storeu_ps(y.as_mut_ptr().add(first), mask16(plane.len() - first), a) };
    }
}
