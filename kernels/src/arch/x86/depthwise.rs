//! [`Isa::depthwise_rows`] for AVX2 and AVX-512: the register tiles `arch::depthwise` describes,
//! 32 (AVX-512) or 16 (AVX2) columns at a time, masked at the end of a row.
//!
//! [`Isa::depthwise_rows`]: crate::arch::Isa::depthwise_rows

use std::arch::x86_64::*;

use super::{avx2::lane_mask as mask8, avx512::lane_mask as mask16};
use crate::arch::{depthwise_tiles, DepthwiseRows, DepthwiseTile as Tile};

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
