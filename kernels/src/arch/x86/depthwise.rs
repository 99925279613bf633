//! The x86 depthwise kernels: [`Isa::depthwise_rows`] for AVX2 and AVX-512 (the register tiles
//! `arch::depthwise` describes, 32 (AVX-512) or 16 (AVX2) columns at a time, masked at the end of
//! a row), and the AVX-512 kernels that read a channel's input plane in place under masks:
//! [`Isa::depthwise_s1`] and [`Isa::depthwise_s2`] (the same tiles, column masks dropping what
//! lies outside the plane) and [`Isa::depthwise_plane`] (a small plane flattened into whole
//! vectors, a lane mask per tap).
//!
//! [`Isa::depthwise_rows`]: crate::arch::Isa::depthwise_rows
//! [`Isa::depthwise_s1`]: crate::arch::Isa::depthwise_s1
//! [`Isa::depthwise_s2`]: crate::arch::Isa::depthwise_s2
//! [`Isa::depthwise_plane`]: crate::arch::Isa::depthwise_plane

use std::arch::x86_64::*;

use super::{avx2::lane_mask as mask8, avx512::lane_mask as mask16};
use crate::arch::PLANE_LANES;
use crate::arch::{depthwise_tiles, DepthwiseInPlace, DepthwisePlane, DepthwiseRows, DepthwiseTile as Tile};
use crate::arch::{in_place_tiles, InPlaceTile};

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

/// AVX-512 [`Isa::depthwise_s1`](crate::arch::Isa::depthwise_s1): 4 output rows at a time, 32
/// output columns (two vectors per row) per strip, the input read in place.
pub(super) fn depthwise_s1_avx512(w: &[f32], x: &[f32], y: &mut [f32], s: DepthwiseInPlace) {
    in_place_tiles(1, w, x, y, s, |blk, t| {
        // SAFETY: see `in_place_tiles`.
        unsafe { depthwise_dispatch!(tile512_s1, blk, t) }
    });
}

/// AVX-512 [`Isa::depthwise_s2`](crate::arch::Isa::depthwise_s2): 4 output rows at a time, 16
/// output columns per vector, the input read in place.
pub(super) fn depthwise_s2_avx512(w: &[f32], x: &[f32], y: &mut [f32], s: DepthwiseInPlace) {
    in_place_tiles(2, w, x, y, s, |blk, t| {
        // SAFETY: see `in_place_tiles`.
        unsafe {
            match s.kw {
                3 => depthwise_dispatch!(tile512_s2_k3, blk, t),
                5 => depthwise_dispatch!(tile512_s2_k5, blk, t),
                _ => depthwise_dispatch!(tile512_s2, blk, t),
            }
        }
    });
}

/// Lanes `0..32` of a pair of vectors whose columns, from `first`, lie inside `0..in_w` and below
/// `span`: the masks of the two loads, or `None` when no lane does.
#[inline]
fn column_masks(first: isize, span: isize, in_w: isize) -> Option<[__mmask16; 2]> {
    let (lo, hi) = ((-first).max(0), (in_w - first).min(span));
    if lo >= hi {
        return None;
    }
    let lanes = ((1u64 << hi) - (1u64 << lo)) as u32;
    Some([lanes as __mmask16, (lanes >> 16) as __mmask16])
}

/// Columns `16 v .. 16 v + 16` from `bp`: one plain load when `whole` (the in-place tiles set it
/// when every column they load lies in the row: the masked form measured about 13 % slower on a
/// 32-channel 3x3 layer at 112x112), else a load under `mask`.
///
/// # Safety
/// AVX-512 F available; with `whole`, those 16 floats are readable; otherwise the lanes `mask`
/// selects are (masked-off lanes are not accessed).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load_columns(bp: *const f32, v: usize, whole: bool, mask: __mmask16) -> __m512 {
    let p = bp.wrapping_add(16 * v);
    // SAFETY: as the contract says.
    unsafe {
        if whole {
            _mm512_loadu_ps(p)
        } else {
            _mm512_maskz_loadu_ps(mask, p)
        }
    }
}

/// Columns `16 v .. 16 v + 8` from `bp`, as [`load_columns`] at 256 bits.
///
/// # Safety
/// AVX-512 F and VL available; with `whole`, those 8 floats are readable; otherwise the lanes
/// `mask` selects are (masked-off lanes are not accessed).
#[inline]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn load_half_columns(bp: *const f32, v: usize, whole: bool, mask: __mmask8) -> __m256 {
    let p = bp.wrapping_add(16 * v);
    // SAFETY: as the contract says.
    unsafe {
        if whole {
            _mm256_loadu_ps(p)
        } else {
            _mm256_maskz_loadu_ps(mask, p)
        }
    }
}

/// `R` output rows of a `KH`-row filter at stride 1, over strips of 32 columns (a last strip of
/// at most 16 columns takes one vector per row).
///
/// # Safety
/// AVX-512 F and VL available; `t.w` holds `KH × kw` weights, `t.x` the whole `in_h × in_w` input plane
/// and `t.y` output rows `0 .. R` of `out_w` columns.
#[inline]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn tile512_s1<const R: usize, const KH: usize>(t: InPlaceTile) {
    // Square 3×3 and 5×5 filters over rows that all lie in the plane (every tile but the first
    // and last of a plane): the filter width a constant and no row tested, so the loops unroll
    // into straight code (a 144-channel 3×3 layer over 56×56, one thread: 0.180 -> 0.141 ms;
    // MobileNetV2 0.98 of its time, PP-OCRv4 det at 320×640 0.976). Wider strips (64 columns,
    // 16 accumulators) measured slower: 0.17 ms.
    let interior = t.reads_rows_inside(R + KH - 1);
    // SAFETY: as this function's contract; the interior variants only where every input row
    // the tile reads is inside the plane, and with `kw` equal to their constant.
    unsafe {
        match (interior, t.shape.kw) {
            (true, 3) if KH == 3 => strips512_s1::<R, KH, 3, true>(t),
            (true, 5) if KH == 5 => strips512_s1::<R, KH, 5, true>(t),
            _ => strips512_s1::<R, KH, 0, false>(t),
        }
    }
}

/// [`tile512_s1`]'s strips: with `KW > 0` the filter is `KW` wide (`t.shape.kw == KW`), else
/// `t.shape.kw`; with `INTERIOR` every input row the tile reads lies in the plane.
///
/// # Safety
/// As [`tile512_s1`], and as the parameters say.
#[inline]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn strips512_s1<const R: usize, const KH: usize, const KW: usize, const INTERIOR: bool>(
    t: InPlaceTile,
) {
    let mut j = 0;
    while j < t.shape.out_w {
        let width = (t.shape.out_w - j).min(32);
        // A last vector of at most 8 columns runs at 256 bits (see `strip512_s1`).
        let half = !width.is_multiple_of(16) && width % 16 <= 8;
        // SAFETY: as this function's contract, for columns j .. j + width < out_w.
        unsafe {
            match (width > 16, half) {
                (true, true) => strip512_s1::<R, KH, KW, INTERIOR, 2, true>(t, j, width),
                (true, false) => strip512_s1::<R, KH, KW, INTERIOR, 2, false>(t, j, width),
                (false, true) => strip512_s1::<R, KH, KW, INTERIOR, 1, true>(t, j, width),
                (false, false) => strip512_s1::<R, KH, KW, INTERIOR, 1, false>(t, j, width),
            }
        }
        j += width;
    }
}

/// Output columns `j .. j + width` (`width <= 16 * V`) of [`tile512_s1`]: each input row the
/// filter reaches is loaded once per filter column, in place under the masks that drop columns
/// outside the plane (rows outside it are skipped), and feeds every output row it belongs to.
/// With `HALF` (`width <= 16 * V - 8`) the last vector's loads and multiply-adds are 256 bits
/// wide: Zen 4 runs those two a cycle against one 512-bit one (a 24-column row, one vector and
/// 8 columns, costs 3 halves instead of 4).
///
/// # Safety
/// As [`strips512_s1`], with `j + width <= out_w`, and `width <= 16 * V - 8` with `HALF`.
#[inline]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn strip512_s1<
    const R: usize,
    const KH: usize,
    const KW: usize,
    const INTERIOR: bool,
    const V: usize,
    const HALF: bool,
>(
    t: InPlaceTile,
    j: usize,
    width: usize,
) {
    let s = t.shape;
    let (in_h, in_w) = (s.in_h as isize, s.in_w as isize);
    let kw = if KW > 0 { KW } else { s.kw };
    let mut acc = [[_mm512_set1_ps(s.init); V]; R];
    for kx in 0..kw {
        let first = (j + kx) as isize - s.pad_left as isize;
        let Some(m) = column_masks(first, width as isize, in_w) else { continue };
        // SAFETY: `kx < kw` and every `ky < KH` index the filter.
        let wk: [__m512; KH] = std::array::from_fn(|ky| unsafe { _mm512_set1_ps(*t.w.add(ky * s.kw + kx)) });
        // When all the columns the vectors load from `first` (16 V, or 16 V - 8 with `HALF`)
        // lie in the row, plain loads (lanes past the strip compute outputs that are not
        // stored; see `load_columns`).
        let loaded = 16 * V - if HALF { 8 } else { 0 };
        let whole = first >= 0 && in_w - first >= loaded as isize;
        for i in 0..R + KH - 1 {
            let row = t.first_row + i as isize;
            if !INTERIOR && !(0..in_h).contains(&row) {
                continue;
            }
            // The first lanes may lie before the row (left padding): the address is formed
            // without claiming it is inside the plane.
            let bp = t.x.wrapping_offset(row * in_w + first);
            // SAFETY: a set mask bit marks a column inside 0..in_w of a row inside 0..in_h, an
            // element of the plane; masked-off lanes are not accessed. With `whole`, every column
            // the loads read from `first` (16 V, or 16 V - 8 with `HALF`) is inside the row. With
            // `HALF` the last vector's mask sets at most its low 8 lanes (`width <= 16 V - 8`).
            let x: [__m512; V] = std::array::from_fn(|v| unsafe {
                if HALF && v == V - 1 {
                    _mm512_zextps256_ps512(load_half_columns(bp, v, whole, m[v] as __mmask8))
                } else {
                    load_columns(bp, v, whole, m[v])
                }
            });
            for (ky, &wv) in wk.iter().enumerate() {
                // Input row i is filter row ky of output row i - ky.
                if i >= ky && i - ky < R {
                    for (v, (a, &xv)) in acc[i - ky].iter_mut().zip(&x).enumerate() {
                        *a = if HALF && v == V - 1 {
                            let lo = |x| _mm512_castps512_ps256(x);
                            // Lanes 8.. are not stored (the store's mask).
                            _mm512_zextps256_ps512(_mm256_fmadd_ps(lo(wv), lo(xv), lo(*a)))
                        } else {
                            _mm512_fmadd_ps(wv, xv, *a)
                        };
                    }
                }
            }
        }
    }
    if let Some([lo, hi]) = s.clamp {
        // max(x, lo) returns lo for a NaN x, as f32::max does.
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        acc.iter_mut().flatten().for_each(|a| *a = _mm512_min_ps(_mm512_max_ps(*a, lo), hi));
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, &a) in acc.iter().enumerate() {
            let lanes = mask16(width.saturating_sub(16 * v));
            // SAFETY: output row r < R, columns j + 16v .. below j + width <= out_w; masked-off
            // lanes are not accessed.
            unsafe { _mm512_mask_storeu_ps(t.y.add(r * s.out_w + j + 16 * v), lanes, a) };
        }
    }
}

/// `R` output rows of a `KH`-row filter at stride 2, 16 columns at a time: each input vector
/// pair (32 consecutive columns of one input row, loaded in place under a mask that drops the
/// columns outside the plane) gives the 16 even columns a filter column reads by one
/// `vpermt2ps`, and each loaded input row feeds every output row whose filter reaches it. Input
/// rows outside the plane are skipped (zero).
///
/// # Safety
/// AVX-512 F available; `t.w` holds `KH × kw` weights, `t.x` the whole `in_h × in_w` input plane
/// and `t.y` output rows `0 .. R` of `out_w` columns.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile512_s2<const R: usize, const KH: usize>(t: InPlaceTile) {
    let s = t.shape;
    let (in_h, in_w) = (s.in_h as isize, s.in_w as isize);
    // Lane l of the result is lane 2l of the 32-lane pair (lo, hi).
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let mut j = 0;
    while j < s.out_w {
        let width = (s.out_w - j).min(16);
        // Input columns a filter column reads for these outputs: 2 * width - 1 from `first`.
        let span = 2 * width as isize - 1;
        let mut acc = [_mm512_set1_ps(s.init); R];
        for kx in 0..s.kw {
            let first = (2 * j + kx) as isize - s.pad_left as isize;
            let Some([lo_mask, hi_mask]) = column_masks(first, span, in_w) else { continue };
            let whole = first >= 0 && in_w - first >= 32;
            // SAFETY: `kx < kw` and every `ky < KH` index the filter.
            let wk: [__m512; KH] =
                std::array::from_fn(|ky| unsafe { _mm512_set1_ps(*t.w.add(ky * s.kw + kx)) });
            for i in 0..2 * (R - 1) + KH {
                let row = t.first_row + i as isize;
                if !(0..in_h).contains(&row) {
                    continue;
                }
                // The vector's first lanes may lie before the row (left padding): the address
                // is formed without claiming it is inside the plane.
                let bp = t.x.wrapping_offset(row * in_w + first);
                // SAFETY: a set mask bit marks a column inside 0..in_w of a row inside 0..in_h,
                // an element of the plane; masked-off lanes are not accessed. With `whole`, all
                // 32 columns from `first` are inside the row (as in the stride-1 strip).
                let (lo, hi) =
                    unsafe { (load_columns(bp, 0, whole, lo_mask), load_columns(bp, 1, whole, hi_mask)) };
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
        // SAFETY: output rows 0 .. R of the tile, columns j .. j + width <= out_w.
        unsafe { store_strip_s2(t, j, width, acc) };
        j += width;
    }
}

/// Stores one 16-column strip of a stride-2 tile's `R` output rows (`acc[r]` at output row `r`,
/// columns `j .. j + width`), clamped when the layer's activation is a clamp.
///
/// # Safety
/// AVX-512 F available; `t.y` holds output rows `0 .. R` of `out_w` columns and `j + width <=
/// out_w`, `width <= 16`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_strip_s2<const R: usize>(t: InPlaceTile, j: usize, width: usize, mut acc: [__m512; R]) {
    if let Some([lo, hi]) = t.shape.clamp {
        let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
        acc.iter_mut().for_each(|a| *a = _mm512_min_ps(_mm512_max_ps(*a, lo), hi));
    }
    for (r, &a) in acc.iter().enumerate() {
        // SAFETY: output row r < R, columns j .. j + width <= out_w (the caller's contract);
        // masked-off lanes are not accessed.
        unsafe { _mm512_mask_storeu_ps(t.y.add(r * t.shape.out_w + j), mask16(width), a) };
    }
}

/// [`tile512_s2`] for filters 3 or 5 columns wide (`KW`: every stride-2 depthwise layer of
/// MobileNetV2, BlazeFace and MobileNetV3), each input row loaded once for all filter columns:
/// 48 consecutive columns as three vectors `a`, `b`, `c` (under masks that drop the columns
/// outside the plane); the even columns of `a:b` serve filter column 0 and the odd ones column 1
/// (one `vpermt2ps` each), and column `2m` (`2m + 1`) takes the even (odd) ones shifted by `m`
/// lanes, with the even (odd) columns of `c` after them (`valignd`). The general tile loads two
/// vectors per row and filter column: at 3 columns this is 3 loads and 3 shuffles per input row
/// instead of 6 and 3, at 5 columns 3 loads and 7 shuffles instead of 10 and 5.
///
/// # Safety
/// As [`tile512_s2`], and `t.shape.kw == KW`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile512_s2_narrow<const R: usize, const KH: usize, const KW: usize>(t: InPlaceTile) {
    // As the stride-1 tile: rows that all lie in the plane are not tested.
    let interior = t.reads_rows_inside(2 * (R - 1) + KH);
    // SAFETY: the caller's contract; the interior variant only where every input row the tile
    // reads is inside the plane.
    unsafe {
        if interior {
            strips512_s2_narrow::<R, KH, KW, true>(t)
        } else {
            strips512_s2_narrow::<R, KH, KW, false>(t)
        }
    }
}

/// [`tile512_s2_narrow`]'s strips; with `INTERIOR` every input row the tile reads lies in the
/// plane.
///
/// # Safety
/// As [`tile512_s2_narrow`], and as `INTERIOR` says.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn strips512_s2_narrow<const R: usize, const KH: usize, const KW: usize, const INTERIOR: bool>(
    t: InPlaceTile,
) {
    let s = t.shape;
    let (in_h, in_w) = (s.in_h as isize, s.in_w as isize);
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let shift = |hi: __m512, lo: __m512, m: usize| {
        let (hi, lo) = (_mm512_castps_si512(hi), _mm512_castps_si512(lo));
        _mm512_castsi512_ps(if m == 1 {
            _mm512_alignr_epi32::<1>(hi, lo)
        } else {
            _mm512_alignr_epi32::<2>(hi, lo)
        })
    };
    let mut j = 0;
    while j < s.out_w {
        let width = (s.out_w - j).min(16);
        // Output j + l reads columns first + 2l + kx: 2 * width + KW - 2 columns from `first`.
        let first = (2 * j) as isize - s.pad_left as isize;
        let (lo, hi) = ((-first).max(0), (in_w - first).min((2 * width + KW - 2) as isize));
        let lanes = if lo < hi { (1u64 << hi) - (1u64 << lo) } else { 0 };
        let masks = [lanes as __mmask16, (lanes >> 16) as __mmask16, (lanes >> 32) as __mmask16];
        let whole = first >= 0 && in_w - first >= 48;
        let mut acc = [_mm512_set1_ps(s.init); R];
        for i in 0..2 * (R - 1) + KH {
            let row = t.first_row + i as isize;
            if lanes == 0 || (!INTERIOR && !(0..in_h).contains(&row)) {
                continue;
            }
            // The first lanes may lie before the row (left padding): the address is formed
            // without claiming it is inside the plane.
            let bp = t.x.wrapping_offset(row * in_w + first);
            // SAFETY: a set mask bit marks a column inside 0..in_w of a row inside 0..in_h, an
            // element of the plane; masked-off lanes are not accessed. With `whole`, all 48
            // columns from `first` are inside the row (as in the stride-1 strip).
            let [a, b, c] = std::array::from_fn(|v| unsafe { load_columns(bp, v, whole, masks[v]) });
            let (x0, x1) = (_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
            // `c`'s even and odd columns (lanes 0..8); at 3 columns only `c`'s first is read.
            let (ce, co) =
                if KW > 3 { (_mm512_permutexvar_ps(even, c), _mm512_permutexvar_ps(odd, c)) } else { (c, c) };
            let x: [__m512; KW] = std::array::from_fn(|kx| match kx {
                0 => x0,
                1 => x1,
                _ if kx % 2 == 0 => shift(ce, x0, kx / 2),
                _ => shift(co, x1, kx / 2),
            });
            for ky in 0..KH {
                // Input row i is filter row ky of output row (i - ky) / 2 when even.
                if i >= ky && (i - ky) % 2 == 0 && (i - ky) / 2 < R {
                    let a = &mut acc[(i - ky) / 2];
                    for (kx, &xv) in x.iter().enumerate() {
                        // SAFETY: `ky < KH` and `kx < KW` index the filter (`kw == KW`).
                        let wv = unsafe { _mm512_set1_ps(*t.w.add(ky * KW + kx)) };
                        *a = _mm512_fmadd_ps(wv, xv, *a);
                    }
                }
            }
        }
        // SAFETY: output rows 0 .. R of the tile, columns j .. j + width <= out_w.
        unsafe { store_strip_s2(t, j, width, acc) };
        j += width;
    }
}

/// [`tile512_s2_narrow`] for 3-column filters.
///
/// # Safety
/// As [`tile512_s2_narrow`].
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile512_s2_k3<const R: usize, const KH: usize>(t: InPlaceTile) {
    // SAFETY: the caller's contract.
    unsafe { tile512_s2_narrow::<R, KH, 3>(t) }
}

/// [`tile512_s2_narrow`] for 5-column filters.
///
/// # Safety
/// As [`tile512_s2_narrow`].
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile512_s2_k5<const R: usize, const KH: usize>(t: InPlaceTile) {
    // SAFETY: the caller's contract.
    unsafe { tile512_s2_narrow::<R, KH, 5>(t) }
}

/// Blocks of [`DepthwisePlane`] one call of [`plane512`] computes together: independent sums,
/// so consecutive FMAs do not wait on each other. 8 rather than 4: a 384-channel 3×3 layer over
/// 14×14 (13 blocks) took 0.043-0.045 ms against 0.050-0.051 (one thread, one-layer model).
const PLANE_BLOCKS: usize = 8;

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
                8 => plane512::<8>(w, x, y, plane, v0, init, clamp),
                7 => plane512::<7>(w, x, y, plane, v0, init, clamp),
                6 => plane512::<6>(w, x, y, plane, v0, init, clamp),
                5 => plane512::<5>(w, x, y, plane, v0, init, clamp),
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
