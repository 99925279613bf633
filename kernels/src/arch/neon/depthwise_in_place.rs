//! NEON depthwise kernels that read a channel's input plane in place: [`Isa::depthwise_s1`] and
//! [`Isa::depthwise_s2`], the register tiles of the x86 versions at 4 lanes, so a layer needs no
//! zero-padded copy of each channel (the padded-row path, `Isa::depthwise_rows`, copies every
//! input plane once more before its tiles read it).
//!
//! NEON has no masked loads. A vector whose input columns all lie in the row is a plain load; one
//! that reaches past a row's edge is a plain load and an AND with its lane mask when its bytes lie
//! inside the plane (what it reads past the row is the neighbouring row, then zeroed), and is
//! assembled lane by lane only where it would leave the plane (left of its first row, right of
//! its last). Strips whose every filter column reads inside the row take loops with no masks at
//! all. Stride 2 deinterleaves each 8-column load with `ld2`, whose first half holds the even
//! columns the outputs read.
//!
//! [`Isa::depthwise_s1`]: crate::arch::Isa::depthwise_s1
//! [`Isa::depthwise_s2`]: crate::arch::Isa::depthwise_s2

use std::arch::aarch64::*;

use crate::arch::{in_place_tiles, DepthwiseInPlace, InPlaceTile};

/// Output columns of a stride-1 strip (four vectors per row: with 4 output rows, 16
/// accumulators, 4 input vectors and 5 broadcast weights stay inside the 32 registers).
const S1_STRIP: usize = 16;

/// Output columns of a stride-2 strip (two vectors per row).
const S2_STRIP: usize = 8;

/// Output rows of every register tile. A plane's last tile may hold fewer: it computes all
/// [`ROWS`] and stores its own, so each filter height needs one tile per strip kind, not one per
/// row count (the kernels' code is a quarter the size; the spare rows cost at most 3 rows of
/// work per channel, none where the output height is a multiple of 4).
const ROWS: usize = 4;

/// NEON [`Isa::depthwise_s1`](crate::arch::Isa::depthwise_s1): 4 output rows at a time, 16 output
/// columns per strip, the input read in place.
pub(super) fn depthwise_s1(w: &[f32], x: &[f32], y: &mut [f32], s: DepthwiseInPlace) {
    in_place_tiles(1, w, x, y, s, |blk, t| {
        // SAFETY: this function is only in the NEON table, handed out after NEON was detected;
        // see `in_place_tiles` for the bounds a tile keeps to.
        unsafe { by_filter_rows::<1>(blk.kh, t) }
    });
}

/// NEON [`Isa::depthwise_s2`](crate::arch::Isa::depthwise_s2): 4 output rows at a time, 8 output
/// columns per strip, the input read in place.
pub(super) fn depthwise_s2(w: &[f32], x: &[f32], y: &mut [f32], s: DepthwiseInPlace) {
    in_place_tiles(2, w, x, y, s, |blk, t| {
        // SAFETY: as in `depthwise_s1`.
        unsafe { by_filter_rows::<2>(blk.kh, t) }
    });
}

/// [`tile`] at stride `S` for a filter of `kh` rows (1 to 5).
///
/// # Safety
/// As [`tile`].
#[inline]
#[target_feature(enable = "neon")]
unsafe fn by_filter_rows<const S: usize>(kh: usize, t: InPlaceTile) {
    // SAFETY: by the contract.
    unsafe {
        match kh {
            5 => tile::<S, 5>(t),
            4 => tile::<S, 4>(t),
            3 => tile::<S, 3>(t),
            2 => tile::<S, 2>(t),
            _ => tile::<S, 1>(t),
        }
    }
}

/// The tile's output rows (up to [`ROWS`]) of a `KH`-row filter at stride `S`, strip by strip:
/// whole strips whose every filter column reads inside the row without masks, the others (and a
/// last, narrower strip) with them.
///
/// # Safety
/// NEON available; `t.w` holds `KH × kw` weights, `t.x` the whole `in_h × in_w` input plane and
/// `t.y` output rows `0 .. min(rows_left, ROWS)` of `out_w` columns.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn tile<const S: usize, const KH: usize>(t: InPlaceTile) {
    let s = t.shape;
    let strip = if S == 1 { S1_STRIP } else { S2_STRIP };
    let mut j = 0;
    while j < s.out_w {
        let width = (s.out_w - j).min(strip);
        let inside = width == strip && reads_inside(&s, S, j, width);
        // SAFETY: as this function's contract, for columns j .. j + width <= out_w; `inside` was
        // just checked.
        unsafe {
            match (width.div_ceil(4), inside) {
                (4, true) => strip_cols::<S, KH, 4, true>(t, j, width),
                (2, true) => strip_cols::<S, KH, 2, true>(t, j, width),
                // Three vectors' worth takes four, the last one masked off.
                (3 | 4, false) => strip_cols::<S, KH, 4, false>(t, j, width),
                (2, false) => strip_cols::<S, KH, 2, false>(t, j, width),
                _ => strip_cols::<S, KH, 1, false>(t, j, width),
            }
        }
        j += width;
    }
}

/// Whether every filter column of shape `s` reads all `stride * width` input columns from
/// `stride * j + kx - pad_left` inside the row (at stride 2 the last of them is an odd column the
/// outputs do not use, loaded with the pair before it), so the strip of `width` outputs at column
/// `j` needs no column masks.
fn reads_inside(s: &DepthwiseInPlace, stride: usize, j: usize, width: usize) -> bool {
    stride * j >= s.pad_left && stride * j + s.kw - 1 + stride * width <= s.in_w + s.pad_left
}

/// How one vector of a strip reads its filter column's input in one row: the lanes `lo .. hi`
/// (of 4) are output columns whose input column lies inside the row.
#[derive(Clone, Copy)]
struct Lanes {
    /// First lane inside the row.
    lo: usize,
    /// One past the last lane inside the row.
    hi: usize,
    /// All ones on lanes `lo .. hi`, zero elsewhere.
    mask: uint32x4_t,
}

impl Lanes {
    /// The lanes of vector `v` of a strip of `width` outputs whose filter column reads input
    /// column `first + stride * c` for output `c`, inside `0 .. in_w`.
    #[inline]
    #[target_feature(enable = "neon")]
    fn new(first: isize, stride: isize, v: usize, width: usize, in_w: isize) -> Self {
        let inside = |c: usize| {
            let col = first + stride * c as isize;
            c < width && (0..in_w).contains(&col)
        };
        // Inside lanes are consecutive: the row's columns form one interval.
        let lo = (0..4).find(|&l| inside(4 * v + l)).unwrap_or(4);
        let hi = (lo..4).find(|&l| !inside(4 * v + l)).unwrap_or(4);
        let bits: [u32; 4] = std::array::from_fn(|l| if (lo..hi).contains(&l) { u32::MAX } else { 0 });
        // SAFETY: `bits` holds 4 lanes.
        let mask = unsafe { vld1q_u32(bits.as_ptr()) };
        Lanes { lo, hi, mask }
    }
}

/// The 4 outputs' input vector at plane element `at` (output lane `l` reads element `at + S * l`;
/// at stride 2 the 8 elements from `at` are deinterleaved and the odd ones dropped), with lanes
/// outside `lanes` zero: a plain load (and an AND where some lanes lie outside the row) when the
/// `4 * S` elements from `at` lie inside the plane of `plane` elements, else lane by lane.
///
/// # Safety
/// NEON available; `x` is the plane (`plane` elements), and each lane `lanes` keeps is an
/// element of it.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_masked<const S: usize>(x: *const f32, plane: usize, at: isize, lanes: &Lanes) -> float32x4_t {
    if lanes.lo >= lanes.hi {
        return vdupq_n_f32(0.0);
    }
    if at >= 0 && at as usize + 4 * S <= plane {
        // SAFETY: the 4 * S elements from `at` lie in the plane.
        let v = unsafe { load::<S>(x.add(at as usize)) };
        if lanes.lo == 0 && lanes.hi == 4 {
            return v;
        }
        return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), lanes.mask));
    }
    // At the plane's first or last elements: only the kept lanes are read.
    let mut lane = [0.0f32; 4];
    for (l, out) in lane.iter_mut().enumerate().take(lanes.hi).skip(lanes.lo) {
        // SAFETY: a kept lane is an element of the plane (the contract).
        *out = unsafe { *x.offset(at + (S * l) as isize) };
    }
    // SAFETY: `lane` holds 4 elements.
    unsafe { vld1q_f32(lane.as_ptr()) }
}

/// The 4 outputs' input vector at `p`: 4 elements, or at stride 2 the even ones of 8.
///
/// # Safety
/// NEON available; `p .. p + 4 * S` is readable.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load<const S: usize>(p: *const f32) -> float32x4_t {
    // SAFETY: by the contract.
    unsafe {
        if S == 1 {
            vld1q_f32(p)
        } else {
            vld2q_f32(p).0
        }
    }
}

/// Output columns `j .. j + width` (`width <= 4 * V`) of [`tile`]: for each filter column, each
/// input row the filter reaches is loaded once, in place (rows outside the plane skipped), and
/// feeds every output row it belongs to. `INSIDE`: every filter column's input columns lie
/// inside the row (plain loads, no masks).
///
/// # Safety
/// As [`tile`], with `j + width <= out_w`; with `INSIDE`, `width == 4 * V` and [`reads_inside`].
#[inline]
#[target_feature(enable = "neon")]
unsafe fn strip_cols<const S: usize, const KH: usize, const V: usize, const INSIDE: bool>(
    t: InPlaceTile,
    j: usize,
    width: usize,
) {
    const R: usize = ROWS;
    let s = t.shape;
    let (in_h, in_w) = (s.in_h as isize, s.in_w as isize);
    let plane = s.in_h * s.in_w;
    let mut acc = [[vdupq_n_f32(s.init); V]; R];
    for kx in 0..s.kw {
        let first = (S * j + kx) as isize - s.pad_left as isize;
        let lanes: [Lanes; V] = if INSIDE {
            // Unused: plain loads.
            [Lanes { lo: 0, hi: 4, mask: vdupq_n_u32(u32::MAX) }; V]
        } else {
            std::array::from_fn(|v| Lanes::new(first, S as isize, v, width, in_w))
        };
        if !INSIDE && lanes.iter().all(|l| l.lo >= l.hi) {
            continue;
        }
        // SAFETY: `kx < kw` and every `ky < KH` index the filter.
        let wk: [f32; KH] = std::array::from_fn(|ky| unsafe { *t.w.add(ky * s.kw + kx) });
        for i in 0..S * (R - 1) + KH {
            let row = t.first_row + i as isize;
            if !(0..in_h).contains(&row) {
                continue;
            }
            let at = row * in_w + first;
            let x: [float32x4_t; V] = std::array::from_fn(|v| {
                let at = at + (4 * S * v) as isize;
                // SAFETY: the row lies in the plane; with `INSIDE` every column the vector reads
                // is in the row, else `load_masked` reads only kept lanes (columns inside the row)
                // or 4 * S elements inside the plane.
                unsafe {
                    if INSIDE {
                        load::<S>(t.x.offset(at))
                    } else {
                        load_masked::<S>(t.x, plane, at, &lanes[v])
                    }
                }
            });
            for (ky, &wv) in wk.iter().enumerate() {
                // Input row i is filter row ky of output row (i - ky) / S when that divides.
                if i >= ky && (i - ky) % S == 0 && (i - ky) / S < R {
                    for (a, &xv) in acc[(i - ky) / S].iter_mut().zip(&x) {
                        *a = vfmaq_n_f32(*a, xv, wv);
                    }
                }
            }
        }
    }
    if let Some([lo, hi]) = s.clamp {
        // The IEEE maxNum / minNum forms return the number for a NaN lane, as f32::max does.
        let (lo, hi) = (vdupq_n_f32(lo), vdupq_n_f32(hi));
        acc.iter_mut().flatten().for_each(|a| *a = vminnmq_f32(vmaxnmq_f32(*a, lo), hi));
    }
    let row_strip = j == 0 && width == s.out_w;
    for (r, acc) in acc.iter().enumerate().take(t.rows_left) {
        // (A strip of three vectors' width runs four, the last holding no output.)
        for (v, &a) in acc.iter().enumerate().take(width.div_ceil(4)) {
            let n = width - 4 * v;
            // SAFETY: output row r < min(rows_left, R), columns j + 4v .. j + 4v + min(n, 4) <=
            // out_w; a whole store of a partial vector ends inside the output plane, where what it
            // spills over is stored after it.
            unsafe {
                let p = t.y.add(r * s.out_w + j + 4 * v);
                if n >= 4 || t.stores_whole(row_strip, r, 4 * v, 4) {
                    vst1q_f32(p, a);
                } else {
                    let mut lane = [0.0f32; 4];
                    vst1q_f32(lane.as_mut_ptr(), a);
                    std::ptr::copy_nonoverlapping(lane.as_ptr(), p, n);
                }
            }
        }
    }
}
