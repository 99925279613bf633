//! [`Isa::depthwise_rows`] for AVX2 and AVX-512: the register tiles `arch::depthwise` describes,
//! 32 (AVX-512) or 16 (AVX2) columns at a time, masked at the end of a row.
//!
//! [`Isa::depthwise_rows`]: crate::arch::Isa::depthwise_rows

use std::arch::x86_64::*;

use crate::arch::{depthwise_blocks, depthwise_rows_check, scalar, DepthwiseBlock as Block, DepthwiseRows};

/// Operands of one tile, as raw pointers at the block's start.
#[derive(Clone, Copy)]
struct Tile {
    w: *const f32,
    kw: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    n: usize,
    accumulate: bool,
}

impl Tile {
    /// # Safety
    /// `blk` must come from `depthwise_blocks` of a shape that [`depthwise_rows_check`] accepted for
    /// `w`, `b` and `c`.
    unsafe fn new(w: &[f32], b: &[f32], c: &mut [f32], s: &DepthwiseRows, blk: Block) -> Tile {
        // SAFETY: the block's offsets lie inside the checked slices (see `depthwise_blocks`).
        unsafe {
            Tile {
                w: w.as_ptr().add(blk.w),
                kw: s.kw,
                b: b.as_ptr().add(blk.b),
                ldb: s.ldb,
                c: c.as_mut_ptr().add(blk.c),
                ldc: s.ldc,
                n: s.n,
                accumulate: blk.accumulate,
            }
        }
    }
}

/// AVX-512 [`Isa::depthwise_rows`](crate::arch::Isa::depthwise_rows).
pub(super) fn depthwise_rows_avx512(w: &[f32], b: &[f32], c: &mut [f32], s: DepthwiseRows) {
    if !depthwise_rows_check(w, b, c, &s) {
        return scalar::depthwise_rows(w, b, c, s);
    }
    depthwise_blocks(&s, |blk| {
        // SAFETY: this function is only in the AVX-512 table, handed out after AVX-512 F was
        // detected; the check asserted that `b` holds `(rows + kh - 2) * ldb + kw - 1 + n`
        // elements and `c` `(rows - 1) * ldc + n`, and every block reads rows
        // `r0 + ky0 .. r0 + ky0 + rows + kh - 1` of `b` (at most `rows + kh - 1` in all) and
        // writes rows `r0 .. r0 + rows` of `c`, columns `< n` only (masked tails).
        unsafe {
            let t = Tile::new(w, b, c, &s, blk);
            depthwise_dispatch!(tile512, blk, t)
        }
    });
}

/// AVX2 [`Isa::depthwise_rows`](crate::arch::Isa::depthwise_rows).
pub(super) fn depthwise_rows_avx2(w: &[f32], b: &[f32], c: &mut [f32], s: DepthwiseRows) {
    if !depthwise_rows_check(w, b, c, &s) {
        return scalar::depthwise_rows(w, b, c, s);
    }
    depthwise_blocks(&s, |blk| {
        // SAFETY: as in `depthwise_rows_avx512`, for the AVX2 table (AVX2 + FMA detected); the
        // `vmaskmovps` tails touch no lane past column `n`.
        unsafe {
            let t = Tile::new(w, b, c, &s, blk);
            depthwise_dispatch!(tile256, blk, t)
        }
    });
}

/// Mask of lanes `i < n` of 16 (n clamped).
#[inline]
fn mask16(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// `R` output rows of a `KH`-row filter, 32 columns (two vectors per row) at a time.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile512<const R: usize, const KH: usize>(t: Tile) {
    let mut j = 0;
    while j < t.n {
        let width = (t.n - j).min(32);
        let m = [mask16(width), mask16(width.saturating_sub(16))];
        // SAFETY: rows `0 .. R + KH - 1` of `b` and `0 .. R` of `c` at columns `j .. j + width`
        // (plus `kx < kw` for `b`) are in bounds (see `depthwise_rows_avx512`); masked-off lanes
        // are not accessed.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            if t.accumulate {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let cp = t.c.add(r * t.ldc + j);
                    *acc = [_mm512_maskz_loadu_ps(m[0], cp), _mm512_maskz_loadu_ps(m[1], cp.add(16))];
                }
            }
            for kx in 0..t.kw {
                let wk: [__m512; KH] = std::array::from_fn(|ky| _mm512_set1_ps(*t.w.add(ky * t.kw + kx)));
                for i in 0..R + KH - 1 {
                    let bp = t.b.add(i * t.ldb + kx + j);
                    let x = [_mm512_maskz_loadu_ps(m[0], bp), _mm512_maskz_loadu_ps(m[1], bp.add(16))];
                    for (ky, &wv) in wk.iter().enumerate() {
                        // Input row i is filter row ky of output row i - ky.
                        if i >= ky && i - ky < R {
                            let a = &mut acc[i - ky];
                            a[0] = _mm512_fmadd_ps(wv, x[0], a[0]);
                            a[1] = _mm512_fmadd_ps(wv, x[1], a[1]);
                        }
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let cp = t.c.add(r * t.ldc + j);
                _mm512_mask_storeu_ps(cp, m[0], acc[0]);
                _mm512_mask_storeu_ps(cp.add(16), m[1], acc[1]);
            }
        }
        j += width;
    }
}

/// Lanes `i < n` of 8 all-ones (for `vmaskmovps`).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn mask8(n: usize) -> __m256i {
    let n = n.min(8) as i32;
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

/// `R` output rows of a `KH`-row filter, 16 columns (two vectors per row) at a time.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile256<const R: usize, const KH: usize>(t: Tile) {
    let mut j = 0;
    while j < t.n {
        let width = (t.n - j).min(16);
        let m = [mask8(width), mask8(width.saturating_sub(8))];
        // SAFETY: as in `tile512`; `vmaskmovps` neither loads nor stores masked-off lanes.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            if t.accumulate {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let cp = t.c.add(r * t.ldc + j);
                    *acc = [_mm256_maskload_ps(cp, m[0]), _mm256_maskload_ps(cp.add(8), m[1])];
                }
            }
            for kx in 0..t.kw {
                let wk: [__m256; KH] = std::array::from_fn(|ky| _mm256_set1_ps(*t.w.add(ky * t.kw + kx)));
                for i in 0..R + KH - 1 {
                    let bp = t.b.add(i * t.ldb + kx + j);
                    let x = [_mm256_maskload_ps(bp, m[0]), _mm256_maskload_ps(bp.add(8), m[1])];
                    for (ky, &wv) in wk.iter().enumerate() {
                        if i >= ky && i - ky < R {
                            let a = &mut acc[i - ky];
                            a[0] = _mm256_fmadd_ps(wv, x[0], a[0]);
                            a[1] = _mm256_fmadd_ps(wv, x[1], a[1]);
                        }
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let cp = t.c.add(r * t.ldc + j);
                _mm256_maskstore_ps(cp, m[0], acc[0]);
                _mm256_maskstore_ps(cp.add(8), m[1], acc[1]);
            }
        }
        j += width;
    }
}
