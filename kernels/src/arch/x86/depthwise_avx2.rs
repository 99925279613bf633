//! AVX2 depthwise kernels that read a channel's input plane in place: [`Isa::depthwise_s1`] and
//! [`Isa::depthwise_s2`] of the 8-lane path, the register tiles of the AVX-512 versions
//! (`super::depthwise`) at half the width.
//!
//! AVX2 has no mask registers: `vmaskmovps` takes a vector mask, loads at half the rate of a
//! plain load and, on AMD cores, stores through microcode. So a filter column whose input columns
//! all lie inside the plane loads plainly, and only the strips at a row's borders load under
//! masks (a plain load and an AND, where the vector stays inside the plane, measured slower on
//! BlazeFace: the branch costs more than it saves). A partial output vector
//! is stored whole when what it spills over is the plane's next row, stored after it; only the
//! plane's last row stores under a mask. Strips whose every filter column reads inside the row
//! take loops without column masks at all: building the masks per filter column and tile cost a
//! 24-channel 3×3 layer over 64×64 about 10 % (BlazeFace 1-2 %).
//!
//! [`Isa::depthwise_s1`]: crate::arch::Isa::depthwise_s1
//! [`Isa::depthwise_s2`]: crate::arch::Isa::depthwise_s2

use std::arch::x86_64::*;

use super::avx2::lane_mask;
use crate::arch::DepthwiseInPlace;
use crate::arch::{in_place_tiles, InPlaceTile};

/// AVX2 [`Isa::depthwise_s1`](crate::arch::Isa::depthwise_s1): 4 output rows at a time, 16
/// output columns (two vectors per row) per strip, the input read in place; planes whose rows
/// and filter fit one vector (7×7 and 8×8) take [`narrow_s1`] (3×3 filters over 960 channels of
/// 7×7: 6 % faster; MobileNetV3-Small 1 %).
pub(super) fn depthwise_s1_avx2(w: &[f32], x: &[f32], y: &mut [f32], s: DepthwiseInPlace) {
    if s.in_w <= 8 && s.out_w <= 8 && s.kw <= 8 {
        // Rows of one vector: whole rows loaded plainly and shifted in registers per filter
        // column, instead of a masked load per filter column.
        in_place_tiles(1, w, x, y, s, |blk, t| {
            // SAFETY: as below, for rows and a filter of at most 8 columns.
            unsafe { depthwise_dispatch!(narrow_s1, blk, t) }
        });
        return;
    }
    in_place_tiles(1, w, x, y, s, |blk, t| {
        // SAFETY: this function is only in the AVX2 table, handed out after AVX2 + FMA were
        // detected; see `in_place_tiles` for the bounds a tile keeps to.
        unsafe { depthwise_dispatch!(tile_s1, blk, t) }
    });
}

/// AVX2 [`Isa::depthwise_s2`](crate::arch::Isa::depthwise_s2): 4 output rows at a time, 8 output
/// columns per vector, the input read in place.
pub(super) fn depthwise_s2_avx2(w: &[f32], x: &[f32], y: &mut [f32], s: DepthwiseInPlace) {
    in_place_tiles(2, w, x, y, s, |blk, t| {
        // SAFETY: as in `depthwise_s1_avx2`.
        unsafe { depthwise_dispatch!(tile_s2, blk, t) }
    });
}

/// Which lanes of `V` consecutive 8-lane vectors a filter column loads from an input row.
#[derive(Clone, Copy)]
struct Columns<const V: usize> {
    /// Lane masks (all ones or zero per lane) for `vmaskmovps`.
    masks: [__m256i; V],
    /// Every lane of every vector is set: plain loads may be used.
    full: bool,
}

/// The lanes of `V` vectors whose columns, counted from `first`, lie inside `0..in_w` and below
/// `span`; `None` when no lane does.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn columns<const V: usize>(first: isize, span: isize, in_w: isize) -> Option<Columns<V>> {
    let (lo, hi) = ((-first).max(0), (in_w - first).min(span));
    if lo >= hi {
        return None;
    }
    let (lo_v, hi_v) = (_mm256_set1_epi32(lo as i32), _mm256_set1_epi32(hi as i32));
    let masks = std::array::from_fn(|v| {
        let lane =
            _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(8 * v as i32));
        // lo <= lane < hi
        _mm256_andnot_si256(_mm256_cmpgt_epi32(lo_v, lane), _mm256_cmpgt_epi32(hi_v, lane))
    });
    Some(Columns { masks, full: lo == 0 && hi >= 8 * V as isize })
}

/// The `V` vectors at element `at` of the input plane `x` under `cols`; masked-off lanes read as
/// zero.
///
/// # Safety
/// AVX2 available; every lane `cols` sets is an element of the plane.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load<const V: usize>(x: *const f32, at: isize, cols: &Columns<V>) -> [__m256; V] {
    // The first lanes may lie before the plane (left padding): the address is formed without
    // claiming it is inside it.
    let p = x.wrapping_offset(at);
    // SAFETY: by the contract, a full set of lanes is a plain load of plane elements;
    // `vmaskmovps` does not access masked-off lanes.
    unsafe {
        if cols.full {
            std::array::from_fn(|v| _mm256_loadu_ps(p.add(8 * v)))
        } else {
            std::array::from_fn(|v| _mm256_maskload_ps(p.wrapping_add(8 * v), cols.masks[v]))
        }
    }
}

/// Stores the first `n` lanes of `a` at `p`, or all 8 when `whole` (the caller's promise that the
/// 8 elements are its own and that lanes past `n` are overwritten later).
///
/// # Safety
/// AVX2 available; `p .. p + min(n, 8)` is writable, and `p .. p + 8` when `whole`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store(p: *mut f32, n: usize, whole: bool, a: __m256) {
    // SAFETY: by the contract; `vmaskmovps` does not access masked-off lanes.
    unsafe {
        if n >= 8 || whole {
            _mm256_storeu_ps(p, a);
        } else {
            _mm256_maskstore_ps(p, lane_mask(n), a);
        }
    }
}

/// Clamps every accumulator to `lo..=hi` (`max` first, so NaN becomes `lo`, as `f32::max`).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn clamp_all(acc: &mut [__m256], clamp: Option<[f32; 2]>) {
    if let Some([lo, hi]) = clamp {
        let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        acc.iter_mut().for_each(|a| *a = _mm256_min_ps(_mm256_max_ps(*a, lo), hi));
    }
}

/// `R` output rows of a `KH`-row filter at stride 1, over strips of 16 columns (a last strip of
/// at most 8 columns takes one vector per row).
///
/// # Safety
/// AVX2 + FMA available; `t.w` holds `KH × kw` weights, `t.x` the whole `in_h × in_w` input plane
/// and `t.y` output rows `0 .. R` of `out_w` columns.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_s1<const R: usize, const KH: usize>(t: InPlaceTile) {
    // As the AVX-512 tile: square 3×3 and 5×5 filters over rows that all lie in the plane take
    // the filter width as a constant and test no row.
    let interior = t.reads_rows_inside(R + KH - 1);
    // SAFETY: as this function's contract; the interior variants only where every input row
    // the tile reads is inside the plane, and with `kw` equal to their constant.
    unsafe {
        match (interior, t.shape.kw) {
            (true, 3) if KH == 3 => strips_s1::<R, KH, 3, true>(t),
            (true, 5) if KH == 5 => strips_s1::<R, KH, 5, true>(t),
            _ => strips_s1::<R, KH, 0, false>(t),
        }
    }
}

/// [`tile_s1`]'s strips: with `KW > 0` the filter is `KW` wide (`t.shape.kw == KW`), else
/// `t.shape.kw`; with `INTERIOR` every input row the tile reads lies in the plane.
///
/// # Safety
/// As [`tile_s1`], and as the parameters say.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn strips_s1<const R: usize, const KH: usize, const KW: usize, const INTERIOR: bool>(t: InPlaceTile) {
    let mut j = 0;
    while j < t.shape.out_w {
        let width = (t.shape.out_w - j).min(16);
        // SAFETY: as this function's contract, for columns j .. j + width <= out_w.
        unsafe {
            if width == 16 && reads_inside(&t.shape, j) {
                strip_s1::<R, KH, KW, INTERIOR, 2, true>(t, j, width);
            } else if width > 8 {
                strip_s1::<R, KH, KW, INTERIOR, 2, false>(t, j, width);
            } else {
                strip_s1::<R, KH, KW, INTERIOR, 1, false>(t, j, width);
            }
        }
        j += width;
    }
}

/// Output columns `j .. j + width` (`width <= 8 * V`) of [`tile_s1`]: each input row the filter
/// reaches is loaded once per filter column, in place (lanes outside the plane masked off, rows
/// outside it skipped), and feeds every output row it belongs to. `INSIDE`: every filter
/// column's input columns lie inside the row, so no column masks are built (plain loads).
///
/// # Safety
/// As [`strips_s1`], with `j + width <= out_w`; with `INSIDE`, `width == 8 * V`, `j >= pad_left`
/// and `j + kw - 1 + width <= in_w + pad_left`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn strip_s1<
    const R: usize,
    const KH: usize,
    const KW: usize,
    const INTERIOR: bool,
    const V: usize,
    const INSIDE: bool,
>(
    t: InPlaceTile,
    j: usize,
    width: usize,
) {
    let s = t.shape;
    let (in_h, in_w) = (s.in_h as isize, s.in_w as isize);
    let kw = if KW > 0 { KW } else { s.kw };
    let mut acc = [[_mm256_set1_ps(s.init); V]; R];
    for kx in 0..kw {
        let first = (j + kx) as isize - s.pad_left as isize;
        let cols = if INSIDE {
            Columns { masks: [_mm256_set1_epi32(-1); V], full: true }
        } else {
            let Some(cols) = columns::<V>(first, width as isize, in_w) else { continue };
            cols
        };
        // SAFETY: `kx < kw` and every `ky < KH` index the filter.
        let wk: [__m256; KH] = std::array::from_fn(|ky| unsafe { _mm256_set1_ps(*t.w.add(ky * kw + kx)) });
        for i in 0..R + KH - 1 {
            let row = t.first_row + i as isize;
            if !INTERIOR && !(0..in_h).contains(&row) {
                continue;
            }
            // SAFETY: a set lane is a column inside 0..in_w of a row inside 0..in_h, an element
            // of the plane.
            let x: [__m256; V] = unsafe { load(t.x, row * in_w + first, &cols) };
            for (ky, &wv) in wk.iter().enumerate() {
                // Input row i is filter row ky of output row i - ky.
                if i >= ky && i - ky < R {
                    for (a, &xv) in acc[i - ky].iter_mut().zip(&x) {
                        *a = _mm256_fmadd_ps(wv, xv, *a);
                    }
                }
            }
        }
    }
    clamp_all(acc.as_flattened_mut(), s.clamp);
    for (r, acc) in acc.iter().enumerate() {
        for (v, &a) in acc.iter().enumerate() {
            let whole = t.stores_whole(j == 0 && width == s.out_w, r, 8 * v, 8);
            // SAFETY: output row r < R, columns j + 8v .. below j + width <= out_w; a whole store
            // ends inside the plane.
            unsafe { store(t.y.add(r * s.out_w + j + 8 * v), width - 8 * v, whole, a) };
        }
    }
}

/// `R` output rows of a `KH`-row filter at stride 2, 8 columns at a time: each pair of input
/// vectors (16 consecutive columns of one input row, loaded in place, lanes outside the plane
/// masked off) gives the 8 even columns a filter column reads by one in-lane `vshufps`, which
/// leaves them in the order 0 1 4 5 2 3 6 7. Every multiply-add is lane by lane, so the sums
/// keep that order until one `vpermpd` per output vector puts it right before the store. Each
/// loaded input row feeds every output row whose filter reaches it; rows outside the plane are
/// skipped (zero).
///
/// # Safety
/// AVX2 + FMA available; `t.w` holds `KH × kw` weights, `t.x` the whole `in_h × in_w` input plane
/// and `t.y` output rows `0 .. R` of `out_w` columns.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_s2<const R: usize, const KH: usize>(t: InPlaceTile) {
    let s = t.shape;
    let mut j = 0;
    while j < s.out_w {
        let width = (s.out_w - j).min(8);
        // SAFETY: as this function's contract, for columns j .. j + width <= out_w (and the
        // bounds just checked when inside).
        unsafe {
            if width == 8 && reads_inside(&s, 2 * j) {
                strip_s2::<R, KH, true>(t, j, width);
            } else {
                strip_s2::<R, KH, false>(t, j, width);
            }
        }
        j += width;
    }
}

/// Whether every filter column of shape `s` reads the 16 input columns from `start + kx -
/// pad_left` inside the row, so a strip starting at input column `start` needs no column masks.
fn reads_inside(s: &DepthwiseInPlace, start: usize) -> bool {
    start >= s.pad_left && start + s.kw - 1 + 16 <= s.in_w + s.pad_left
}

/// `R` output rows of a `KH`-row filter at stride 1 over a plane whose rows fit one vector
/// (`in_w`, `out_w` and `kw` at most 8): for each filter column, each input row the tile reaches
/// is loaded whole (plainly where 8 elements from its start lie in the plane) and permuted and
/// masked in registers into the columns that filter column reads, where the wider tiles load
/// every filter column's view of a row under a mask; it then feeds every output row it belongs
/// to.
///
/// # Safety
/// AVX2 + FMA available; `t.w` holds `KH × kw` weights, `t.x` the whole `in_h × in_w` input plane
/// and `t.y` output rows `0 .. R` of `out_w` columns (and the plane's rows after them), with
/// `in_w`, `out_w` and `kw` at most 8.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn narrow_s1<const R: usize, const KH: usize>(t: InPlaceTile) {
    let s = t.shape;
    let (in_h, in_w) = (s.in_h as isize, s.in_w as isize);
    let plane = s.in_h * s.in_w;
    let row_mask = lane_mask(s.in_w);
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut acc = [_mm256_set1_ps(s.init); R];
    for kx in 0..s.kw {
        // Lane c reads input column c + kx - pad_left: moved there by `index`, zeroed by `keep`
        // where that column lies outside the row (padding).
        let column = _mm256_add_epi32(lanes, _mm256_set1_epi32(kx as i32 - s.pad_left as i32));
        let index = _mm256_min_epi32(_mm256_max_epi32(column, _mm256_setzero_si256()), _mm256_set1_epi32(7));
        let keep = _mm256_castsi256_ps(_mm256_andnot_si256(
            _mm256_cmpgt_epi32(_mm256_setzero_si256(), column),
            _mm256_cmpgt_epi32(_mm256_set1_epi32(s.in_w as i32), column),
        ));
        // SAFETY: `kx < kw` and every `ky < KH` index the filter.
        let wk: [__m256; KH] = std::array::from_fn(|ky| unsafe { _mm256_set1_ps(*t.w.add(ky * s.kw + kx)) });
        for i in 0..R + KH - 1 {
            let row = t.first_row + i as isize;
            if !(0..in_h).contains(&row) {
                continue;
            }
            let start = (row * in_w) as usize;
            // SAFETY: the row lies in the plane: a plain load when 8 elements from its start do
            // (lanes past the row are other rows' columns, which `keep` zeroes), else under the
            // row's mask (`vmaskmovps` does not access masked-off lanes).
            let xv = unsafe {
                if start + 8 <= plane {
                    _mm256_loadu_ps(t.x.add(start))
                } else {
                    _mm256_maskload_ps(t.x.add(start), row_mask)
                }
            };
            let shifted = _mm256_and_ps(_mm256_permutevar8x32_ps(xv, index), keep);
            for (ky, &wv) in wk.iter().enumerate() {
                // Input row i is filter row ky of output row i - ky.
                if i >= ky && i - ky < R {
                    acc[i - ky] = _mm256_fmadd_ps(wv, shifted, acc[i - ky]);
                }
            }
        }
    }
    clamp_all(&mut acc, s.clamp);
    for (r, &a) in acc.iter().enumerate() {
        let whole = t.stores_whole(true, r, 0, 8);
        // SAFETY: output row r < R, columns 0 .. out_w <= 8; a whole store ends inside the plane.
        unsafe { store(t.y.add(r * s.out_w), s.out_w, whole, a) };
    }
}

/// Output columns `j .. j + width` (`width <= 8`) of [`tile_s2`]: the input columns a filter
/// column reads for them are `2 * width - 1` from `first`; the one after them is loaded too when
/// it lies in the plane (an odd column, dropped by the shuffle), so that whole strips take plain
/// loads. `INSIDE`: every filter column's 16 input columns lie inside the row, so no column masks
/// are built (as at stride 1; a 28-channel 3×3 layer over 64×64 went from 0.049-0.054 to
/// 0.049-0.051 ms, within this host's noise, and BlazeFace about 1 %).
///
/// # Safety
/// As [`tile_s2`], with `j + width <= out_w`; with `INSIDE`, `width == 8`, `2j >= pad_left` and
/// `2j + kw - 1 + 16 <= in_w + pad_left`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn strip_s2<const R: usize, const KH: usize, const INSIDE: bool>(
    t: InPlaceTile,
    j: usize,
    width: usize,
) {
    let s = t.shape;
    let (in_h, in_w) = (s.in_h as isize, s.in_w as isize);
    let span = 2 * width as isize;
    let mut acc = [_mm256_set1_ps(s.init); R];
    for kx in 0..s.kw {
        let first = (2 * j + kx) as isize - s.pad_left as isize;
        let cols = if INSIDE {
            Columns { masks: [_mm256_set1_epi32(-1); 2], full: true }
        } else {
            let Some(cols) = columns::<2>(first, span, in_w) else { continue };
            cols
        };
        // SAFETY: `kx < kw` and every `ky < KH` index the filter.
        let wk: [__m256; KH] = std::array::from_fn(|ky| unsafe { _mm256_set1_ps(*t.w.add(ky * s.kw + kx)) });
        for i in 0..2 * (R - 1) + KH {
            let row = t.first_row + i as isize;
            if !(0..in_h).contains(&row) {
                continue;
            }
            // SAFETY: a set lane is a column inside 0..in_w of a row inside 0..in_h, an element
            // of the plane (inside the row for every lane when `INSIDE`).
            let [lo, hi] = unsafe { load(t.x, row * in_w + first, &cols) };
            let x = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
            for (ky, &wv) in wk.iter().enumerate() {
                // Input row i is filter row ky of output row (i - ky) / 2 when even.
                if i >= ky && (i - ky) % 2 == 0 && (i - ky) / 2 < R {
                    let a = &mut acc[(i - ky) / 2];
                    *a = _mm256_fmadd_ps(wv, x, *a);
                }
            }
        }
    }
    clamp_all(&mut acc, s.clamp);
    for (r, &a) in acc.iter().enumerate() {
        // Pairs of outputs (0 1) (4 5) (2 3) (6 7) back to (0 1) (2 3) (4 5) (6 7).
        let a = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(a)));
        let whole = t.stores_whole(width == s.out_w, r, 0, 8);
        // SAFETY: output row r < R, columns j .. j + width <= out_w; a whole store ends inside
        // the plane.
        unsafe { store(t.y.add(r * s.out_w + j), width, whole, a) };
    }
}
