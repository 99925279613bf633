//! [`Isa::depthwise_rows`] for NEON: the register tiles `arch::depthwise` describes, 8 columns
//! (two vectors per row) at a time, then 4, then a scalar tail.
//!
//! Every tile computes [`TILE_ROWS`] output rows, so each filter height has one tile, not one per
//! row count (a fifth of the code: app size matters on a phone). A block of fewer rows (a
//! plane's last) reads its last input row again in place of the rows past it and stores only its
//! own rows: the spare sums cost at most 3 rows of work per block.
//!
//! [`Isa::depthwise_rows`]: crate::arch::Isa::depthwise_rows

use std::arch::aarch64::*;

use crate::arch::depthwise::TILE_ROWS;
use crate::arch::{depthwise_tiles, DepthwiseRows, DepthwiseTile as Tile};

/// See [`Isa::depthwise_rows`](crate::arch::Isa::depthwise_rows).
pub(super) fn depthwise_rows(w: &[f32], b: &[f32], c: &mut [f32], s: DepthwiseRows) {
    depthwise_tiles(w, b, c, s, |blk, t| {
        // SAFETY: this function is only in the NEON table, handed out after NEON was detected;
        // the tile covers rows `blk.rows + blk.kh - 1` of `b` and `blk.rows` of `c` (see
        // `arch::depthwise`), columns `< n` (+ `kx < kw` for `b`) only.
        unsafe {
            match blk.kh {
                5 => tile::<5>(t, blk.rows),
                4 => tile::<4>(t, blk.rows),
                3 => tile::<3>(t, blk.rows),
                2 => tile::<2>(t, blk.rows),
                _ => tile::<1>(t, blk.rows),
            }
        }
    });
}

/// `rows` (1 to [`TILE_ROWS`]) output rows of a `KH`-row filter over columns `j .. j + 4 * V`:
/// all [`TILE_ROWS`] computed, input rows past the block's last read as that row, only `rows`
/// loaded (when accumulating) and stored.
///
/// # Safety
/// NEON available; the columns lie below `t.n`, and `t` covers rows `rows + KH - 1` of `b` and
/// `rows` of `c` (see `depthwise_rows`).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn columns<const KH: usize, const V: usize>(t: Tile, rows: usize, j: usize) {
    const R: usize = TILE_ROWS;
    // The block's last input row: output row r < rows reads rows r .. r + KH - 1 <= last_row, so
    // only spare sums see a repeated row.
    let last_row = rows + KH - 2;
    // SAFETY: in bounds by the function's contract: every `b` row read is at most `last_row`, and
    // only rows below `rows` of `c` are read or written.
    unsafe {
        let mut acc = [[vdupq_n_f32(t.init); V]; R];
        if t.accumulate {
            for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                for (v, lane) in acc.iter_mut().enumerate() {
                    *lane = vld1q_f32(t.c.add(r * t.ldc + j + 4 * v));
                }
            }
        }
        for kx in 0..t.kw {
            let wk: [f32; KH] = std::array::from_fn(|ky| *t.w.add(ky * t.kw + kx));
            for i in 0..R + KH - 1 {
                let bp = t.b.add(i.min(last_row) * t.ldb + kx + j);
                let x: [float32x4_t; V] = std::array::from_fn(|v| vld1q_f32(bp.add(4 * v)));
                for (ky, &wv) in wk.iter().enumerate() {
                    // Input row i is filter row ky of output row i - ky.
                    if i >= ky && i - ky < R {
                        for (lane, &xv) in acc[i - ky].iter_mut().zip(&x) {
                            *lane = vfmaq_n_f32(*lane, xv, wv);
                        }
                    }
                }
            }
        }
        if let Some([lo, hi]) = t.clamp {
            // The IEEE maxNum / minNum forms return the number for a NaN lane, as f32::max does.
            let (lo, hi) = (vdupq_n_f32(lo), vdupq_n_f32(hi));
            acc.iter_mut().flatten().for_each(|a| *a = vminnmq_f32(vmaxnmq_f32(*a, lo), hi));
        }
        for (r, acc) in acc.iter().enumerate().take(rows) {
            for (v, &lane) in acc.iter().enumerate() {
                vst1q_f32(t.c.add(r * t.ldc + j + 4 * v), lane);
            }
        }
    }
}

/// `rows` output rows of a `KH`-row filter: 8 columns at a time, then 4, then one by one.
///
/// # Safety
/// As for [`columns`], over all `t.n` columns.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn tile<const KH: usize>(t: Tile, rows: usize) {
    let mut j = 0;
    // SAFETY: every call covers columns below `t.n`; the tail reads and writes the same rows.
    unsafe {
        while j + 8 <= t.n {
            columns::<KH, 2>(t, rows, j);
            j += 8;
        }
        if j + 4 <= t.n {
            columns::<KH, 1>(t, rows, j);
            j += 4;
        }
        for col in j..t.n {
            for r in 0..rows {
                let cp = t.c.add(r * t.ldc + col);
                let mut s = if t.accumulate { *cp } else { t.init };
                for ky in 0..KH {
                    for kx in 0..t.kw {
                        // Fused, as the vectors' multiply-adds are.
                        s = (*t.w.add(ky * t.kw + kx)).mul_add(*t.b.add((r + ky) * t.ldb + kx + col), s);
                    }
                }
                *cp = match t.clamp {
                    Some([lo, hi]) => s.max(lo).min(hi),
                    None => s,
                };
            }
        }
    }
}
