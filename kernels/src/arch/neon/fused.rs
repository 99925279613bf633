//! NEON [`Isa::gemm_rows_fused`] and [`Isa::dot_rows`].
//!
//! `gemm_rows_fused` follows the AVX2 path's design on 4-lane vectors. A register tile is up to
//! [`MR`] weight rows × [`NR`] columns: 16 accumulators, two vectors of `b` per depth step, well
//! within the 32 q registers. Over at least [`PACK_MIN_COLUMNS`] columns, whole blocks of [`MR`]
//! rows are packed depth-major once per call ([`with_packed`]), so a step loads their 8 weights
//! as two vectors and applies them by lane; the last 1-7 rows of a call, and calls over fewer
//! columns, apply each row's weight with `vfmaq_n_f32`. The finished
//! sums go through the epilogue in registers (residual, bias, activation: the operations of
//! `arch::scalar::gemm_rows_fused`, in its order) and are stored straight into the output rows.
//! NEON has no masked loads or stores, so a strip's last vector may hold 1-3 live columns,
//! loaded and stored lane by lane ([`load_lanes`], [`store_lanes`]): nothing past `b`'s rows, the
//! residual rows or column `col + n` of an output row is read or written. Column blocks of
//! several strips are sized as on the AVX2 path, so that a block of `b` stays in L1 while every
//! row block streams over it; evenly spaced rows of `b` (a 1×1 convolution's input planes) are
//! stepped through by their stride instead of an offset per row.
//!
//! `dot_rows` takes 8 (or, for the last few, 4) weight rows at a time: independent accumulator
//! chains, each load of `x` shared by the rows, the depth's last 1-3 values loaded lane by lane,
//! and pairwise adds that reduce four rows' accumulators into one vector of sums.
//!
//! [`Isa::gemm_rows_fused`]: crate::arch::Isa::gemm_rows_fused
//! [`Isa::dot_rows`]: crate::arch::Isa::dot_rows

use super::packing::{fma_step, with_packed};
use crate::arch::fused_parts::{Act, Epilogue};
use crate::arch::{
    dot_rows_check, evenly_spaced, gemm_rows_fused_check, BRows, DotRowsFn, FusedRows, GemmRowsFusedFn,
    Listed, Strided,
};
use std::arch::aarch64::*;

/// The path's [`Isa::gemm_rows_fused`](crate::arch::Isa::gemm_rows_fused).
pub(super) const GEMM_ROWS_FUSED: Option<GemmRowsFusedFn> = Some(gemm_rows_fused);

/// The path's [`Isa::dot_rows`](crate::arch::Isa::dot_rows).
pub(super) const DOT_ROWS: Option<DotRowsFn> = Some(dot_rows);

/// Weight rows per register tile of [`gemm_rows_fused`].
const MR: usize = 8;
/// Columns per register tile of [`gemm_rows_fused`] (two vectors).
const NR: usize = 8;
/// Bytes of L1 a column block of `b` and the weight rows may fill (the AVX2 path's budget).
const L1_BYTES: usize = 28 << 10;
/// Most strips of [`NR`] columns per column block (256 columns, as on the AVX2 path).
const MAX_STRIPS: usize = 32;

/// See [`Isa::gemm_rows_fused`](crate::arch::Isa::gemm_rows_fused).
fn gemm_rows_fused(a: &[f32], k: usize, b: &[f32], offs: &[usize], n: usize, out: FusedRows<'_, '_>) {
    let Some(m) = gemm_rows_fused_check(a, k, b, offs, n, &out) else { return };
    let epi = Epilogue::new(out);
    with_packed::<MR, _>(&a[..m * k], k, n >= PACK_MIN_COLUMNS, |packed| {
        let w = Weights { rows: a.as_ptr(), packed: packed.map(<[f32]>::as_ptr) };
        // SAFETY: NEON was detected before this table was handed out (`super::neon`). The check
        // asserted `m` rows of `k` weights, `k` offsets each followed by `n` values of `b`
        // (evenly spaced, row `p` of `b + offs[0]` at `p * step` is `b + offs[p]`, the same
        // rows), `m` output rows of at least `col + n` values, `m` biases when there are any,
        // `m` slopes for a leaky activation, and `n` residual values at `r * pitch` for every
        // row `r` below both `m` and the residual's row count, which is all the kernel touches;
        // `packed`, if any, holds the weights of every whole block of `MR` rows.
        unsafe {
            match evenly_spaced(&offs[..k]) {
                Some(step) => gemm_fused(w, k, m, b.as_ptr().add(offs[0]), Strided(step), n, epi),
                None => gemm_fused(w, k, m, b.as_ptr(), Listed(offs.as_ptr()), n, epi),
            }
        }
    })
}

/// Fewest columns for which a call packs its weights ([`with_packed`]). Packing a weight costs
/// about 1.44 cycles on the A55 model and 1.19 on the A57's; the packed tile then saves 1.25 and
/// 0.35 cycles per multiply-add, `n / 4` of them per weight: it pays from about 5 and 14 columns.
const PACK_MIN_COLUMNS: usize = 16;

/// The weight rows of a call: as given (`m` rows of `k`), and, if packed, every whole block of
/// [`MR`] rows depth-major ([`with_packed`]).
#[derive(Clone, Copy)]
struct Weights {
    rows: *const f32,
    packed: Option<*const f32>,
}

impl Epilogue<'_> {
    /// Row `i`'s sums `v` for columns `j ..` (every lane, but only `lanes` of the last vector)
    /// plus its residual and bias, activated, stored into its output row.
    ///
    /// # Safety
    /// NEON available; row `i` exists and columns `col + j ..` of the stored lanes lie in it,
    /// in its residual row if it has one; row `i` has a bias if any do, and a slope if leaky.
    #[inline(always)]
    pub(super) unsafe fn finish<const V: usize>(
        self,
        i: usize,
        j: usize,
        mut v: [float32x4_t; V],
        lanes: usize,
    ) {
        let whole = |q: usize| q + 1 < V || lanes == 4;
        // SAFETY: the caller's bounds cover every access; partial vectors go lane by lane.
        unsafe {
            if i < self.residual_rows {
                let res = self.residual.add(i * self.residual_pitch + j);
                for (q, x) in v.iter_mut().enumerate() {
                    let r =
                        if whole(q) { vld1q_f32(res.add(4 * q)) } else { load_lanes(res.add(4 * q), lanes) };
                    *x = vaddq_f32(*x, r);
                }
            }
            if !self.bias.is_null() {
                let bias = vdupq_n_f32(*self.bias.add(i));
                v = v.map(|x| vaddq_f32(x, bias));
            }
            // Each the operations of `Activation::apply`, in its order (no fused multiply-adds,
            // which would round differently).
            match self.act {
                Act::None => {}
                Act::Clamp(lo, hi) => {
                    let (lo, hi) = (vdupq_n_f32(lo), vdupq_n_f32(hi));
                    // Compare and select, as the reference's `at_least` / `at_most`: a NaN
                    // becomes `lo`, where FMAX / FMIN would keep it.
                    v = v.map(|x| {
                        let x = vbslq_f32(vcgtq_f32(x, lo), x, lo);
                        vbslq_f32(vcltq_f32(x, hi), x, hi)
                    });
                }
                Act::HardSwish | Act::HardSwishAffine(..) => {
                    v = v.map(|x| hard_swish(x));
                    if let Act::HardSwishAffine(scale, shift) = self.act {
                        let shift = vdupq_n_f32(shift);
                        v = v.map(|x| vaddq_f32(vmulq_n_f32(x, scale), shift));
                    }
                }
                Act::Leaky(slopes) => {
                    let (zero, slope) = (vdupq_n_f32(0.0), *slopes.add(i));
                    // `x >= 0` is false for NaN, whose product with the slope stays NaN.
                    v = v.map(|x| vbslq_f32(vcgeq_f32(x, zero), x, vmulq_n_f32(x, slope)));
                }
            }
            let dst = (*self.rows.add(i)).as_mut_ptr().add(self.col + j);
            for (q, x) in v.into_iter().enumerate() {
                if whole(q) {
                    vst1q_f32(dst.add(4 * q), x);
                } else {
                    store_lanes(dst.add(4 * q), x, lanes);
                }
            }
        }
    }
}

/// `x * clamp(x / 6 + 0.5, 0, 1)`, as `Activation::apply` computes it: FMAX / FMIN return a NaN
/// operand, as `f32::clamp` keeps a NaN (and the gate is never -0, so no zero's sign can differ).
///
/// # Safety
/// NEON available.
#[inline(always)]
unsafe fn hard_swish(x: float32x4_t) -> float32x4_t {
    // SAFETY: register arithmetic only, on NEON (the caller's contract).
    unsafe {
        let gate = vaddq_f32(vmulq_n_f32(x, 1.0 / 6.0), vdupq_n_f32(0.5));
        vmulq_f32(x, vminq_f32(vmaxq_f32(gate, vdupq_n_f32(0.0)), vdupq_n_f32(1.0)))
    }
}

/// The first `lanes` (1-3) floats at `p`, zeros after: a vector that reads nothing past them.
///
/// # Safety
/// NEON available; `p` holds `lanes` floats.
#[inline(always)]
unsafe fn load_lanes(p: *const f32, lanes: usize) -> float32x4_t {
    // SAFETY: lane `l` is read only when `l < lanes`.
    unsafe {
        let mut v = vld1q_lane_f32::<0>(p, vdupq_n_f32(0.0));
        if lanes > 1 {
            v = vld1q_lane_f32::<1>(p.add(1), v);
        }
        if lanes > 2 {
            v = vld1q_lane_f32::<2>(p.add(2), v);
        }
        v
    }
}

/// Stores the first `lanes` (1-3) lanes of `v` at `p`, and nothing after them.
///
/// # Safety
/// NEON available; `p` has room for `lanes` floats.
#[inline(always)]
unsafe fn store_lanes(p: *mut f32, v: float32x4_t, lanes: usize) {
    // SAFETY: lane `l` is written only when `l < lanes`.
    unsafe {
        vst1q_lane_f32::<0>(p, v);
        if lanes > 1 {
            vst1q_lane_f32::<1>(p.add(1), v);
        }
        if lanes > 2 {
            vst1q_lane_f32::<2>(p.add(2), v);
        }
    }
}

/// Column blocks of `b` that fit [`L1_BYTES`] beside the weight rows, outer; in each, row blocks
/// of [`MR`], then the block's strips of [`NR`] columns: a block of `b` stays in L1 while every
/// row block streams over it.
///
/// # Safety
/// NEON available; `w.rows` holds `m * k` floats and `w.packed`, if any, the `m / MR * MR * k` of
/// [`with_packed`]; `rows` locates `k` rows of `n` floats in `b`; `epi` has `m` rows of `n`
/// columns (see [`Epilogue::finish`]).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
unsafe fn gemm_fused<B: BRows>(
    w: Weights,
    k: usize,
    m: usize,
    b: *const f32,
    rows: B,
    n: usize,
    epi: Epilogue,
) {
    let free = L1_BYTES.saturating_sub(m * k * 4);
    let block = (free / (k * NR * 4).max(1)).clamp(1, MAX_STRIPS) * NR;
    let mut j0 = 0;
    while j0 < n {
        let end = n.min(j0 + block);
        let mut i = 0;
        while i < m {
            let r = (m - i).min(MR);
            let mut j = j0;
            while j < end {
                let cols = (end - j).min(NR);
                // SAFETY: rows i .. i + r of the weights and `epi` lie below `m`, columns
                // j .. j + cols below `n`; a whole block's packed weights start at `i * k`
                // (`i` is a multiple of `MR`).
                unsafe {
                    let (a, bp) = (w.rows.add(i * k), b.add(j));
                    let packed = w.packed.filter(|_| r == MR).map(|p| p.add(i * k));
                    if cols > 4 {
                        tile_rows::<2, B>(r, a, packed, k, bp, rows, cols - 4, epi, (i, j));
                    } else {
                        tile_rows::<1, B>(r, a, packed, k, bp, rows, cols, epi, (i, j));
                    }
                }
                j += cols;
            }
            i += r;
        }
        j0 = end;
    }
}

/// [`tile`] for `r` (1 to [`MR`]) rows, each count its own register tile; `packed` goes to the
/// whole block's.
///
/// # Safety
/// As [`tile`], for `r` rows (`packed` only with `r` = [`MR`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile_rows<const V: usize, B: BRows>(
    r: usize,
    a: *const f32,
    packed: Option<*const f32>,
    k: usize,
    b: *const f32,
    rows: B,
    lanes: usize,
    epi: Epilogue,
    at: (usize, usize),
) {
    // SAFETY: the caller's bounds, for the `r` rows each arm covers.
    unsafe {
        match r {
            8 => tile::<8, V, B>(a, packed, k, b, rows, lanes, epi, at),
            7 => tile::<7, V, B>(a, None, k, b, rows, lanes, epi, at),
            6 => tile::<6, V, B>(a, None, k, b, rows, lanes, epi, at),
            5 => tile::<5, V, B>(a, None, k, b, rows, lanes, epi, at),
            4 => tile::<4, V, B>(a, None, k, b, rows, lanes, epi, at),
            3 => tile::<3, V, B>(a, None, k, b, rows, lanes, epi, at),
            2 => tile::<2, V, B>(a, None, k, b, rows, lanes, epi, at),
            _ => tile::<1, V, B>(a, None, k, b, rows, lanes, epi, at),
        }
    }
}

/// `sum_p a[r * k + p] * b[offset(p) + 0 .. w]` for `R` rows over `w = 4 * (V - 1) + lanes`
/// columns (`lanes` 1-4 live in the last vector), accumulated in registers and handed to `epi`
/// as rows `at.0 ..` at column `at.1`. With `packed` (a whole block of [`MR`] rows packed by
/// [`with_packed`]) each depth step loads the 8 weights as two vectors and multiplies by lane;
/// without, one broadcast per row: the same fused multiply-adds in the same order either way.
///
/// # Safety
/// NEON available; `R` rows of `k` floats at `a`, and `packed`, if any, the block's `MR * k`
/// packed floats with `R` = [`MR`]; `rows` locates `k` rows of `w` floats in `b`; `epi` has rows
/// `at.0 .. at.0 + R` with columns `at.1 .. at.1 + w` (see [`Epilogue::finish`]).
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "neon")]
unsafe fn tile<const R: usize, const V: usize, B: BRows>(
    a: *const f32,
    packed: Option<*const f32>,
    k: usize,
    b: *const f32,
    rows: B,
    lanes: usize,
    epi: Epilogue,
    at: (usize, usize),
) {
    let mut acc = [[vdupq_n_f32(0.0); V]; R];
    // SAFETY: every load is within the `R` weight rows or the `w` columns of a row of `b` (the
    // last vector lane by lane when it is partial); `finish` gets the caller's output bounds.
    unsafe {
        // Two loops, so that whole strips carry no per-step test for a partial vector.
        if lanes == 4 {
            for p in 0..k {
                let bp = b.add(rows.offset(p));
                let mut bv = [vdupq_n_f32(0.0); V];
                for (q, v) in bv.iter_mut().enumerate() {
                    *v = vld1q_f32(bp.add(4 * q));
                }
                fma_step(&mut acc, a, packed, k, p, &bv);
            }
        } else {
            for p in 0..k {
                let bp = b.add(rows.offset(p));
                let mut bv = [vdupq_n_f32(0.0); V];
                for (q, v) in bv.iter_mut().enumerate() {
                    *v = if q + 1 < V { vld1q_f32(bp.add(4 * q)) } else { load_lanes(bp.add(4 * q), lanes) };
                }
                fma_step(&mut acc, a, packed, k, p, &bv);
            }
        }
        for (r, acc) in acc.into_iter().enumerate() {
            epi.finish(at.0 + r, at.1, acc, lanes);
        }
    }
}

/// See [`Isa::dot_rows`](crate::arch::Isa::dot_rows).
fn dot_rows(a: &[f32], k: usize, x: &[f32], out: &mut [f32]) {
    dot_rows_check(a, k, x, out);
    let rows = out.len();
    let mut r0 = 0;
    while r0 < rows {
        let live = (rows - r0).min(8);
        // SAFETY: NEON was detected before this table was handed out (`super::neon`); rows
        // `r0 .. r0 + live` of `k` weights lie in `a` and their outputs in `out` (asserted above),
        // and `x` holds `k` values.
        unsafe {
            let (ap, op) = (a.as_ptr().add(r0 * k), out.as_mut_ptr().add(r0));
            if live > 4 {
                dot_block::<8>(ap, k, x.as_ptr(), op, live);
            } else {
                dot_block::<4>(ap, k, x.as_ptr(), op, live);
            }
        }
        r0 += live;
    }
}

/// `out[r] = sum_p a[r * k + p] * x[p]` for `r < live <= R` (`R` a multiple of 4): `R`
/// independent accumulator chains sharing each load of `x`. The rows the block lacks repeat its
/// first row, and their sums are dropped.
///
/// # Safety
/// NEON available; `a` holds `live` rows of `k` floats, `x` holds `k` floats, `out` `live`.
#[target_feature(enable = "neon")]
unsafe fn dot_block<const R: usize>(a: *const f32, k: usize, x: *const f32, out: *mut f32, live: usize) {
    // SAFETY: rows below `live` exist; the others point at row 0.
    let row: [*const f32; R] = std::array::from_fn(|r| unsafe { a.add(if r < live { r * k } else { 0 }) });
    let mut acc = [vdupq_n_f32(0.0); R];
    let mut sums = [0.0f32; R];
    // SAFETY: every load is below `k` in its row and in `x` (whole vectors, then the last 1-3
    // values lane by lane); `sums` holds `R` values; `out` receives `live`.
    unsafe {
        let mut p = 0;
        while p + 4 <= k {
            let xv = vld1q_f32(x.add(p));
            for (acc, row) in acc.iter_mut().zip(row) {
                *acc = vfmaq_f32(*acc, vld1q_f32(row.add(p)), xv);
            }
            p += 4;
        }
        if p < k {
            let xv = load_lanes(x.add(p), k - p);
            for (acc, row) in acc.iter_mut().zip(row) {
                *acc = vfmaq_f32(*acc, load_lanes(row.add(p), k - p), xv);
            }
        }
        // Lane `l` of each vector: row `4q + l`'s four partial sums added.
        for (q, acc) in acc.chunks_exact(4).enumerate() {
            let s = vpaddq_f32(vpaddq_f32(acc[0], acc[1]), vpaddq_f32(acc[2], acc[3]));
            vst1q_f32(sums.as_mut_ptr().add(4 * q), s);
        }
        std::ptr::copy_nonoverlapping(sums.as_ptr(), out, live);
    }
}
