//! AVX-512 [`Isa::gemm_rows_fused`]: 8 weight rows × 3 vectors of 16 columns per register tile
//! (24 of the 32 registers hold sums), bias, residual and activation applied to the tile in
//! registers and stored once, tails under lane masks. Three vectors rather than two: each
//! broadcast weight feeds three multiply-adds, and a 7×7 plane's 49 columns take one strip and
//! a dot product instead of two strips, the second a one-vector tile bound by its broadcasts
//! (Xeon with AVX-512, 1 thread: MobileNetV2 6.88 -> 6.39 ms, MobileNetV3-Small 1.84 -> 1.75,
//! PP-OCRv4 det at 320×640 26.9 -> 25.8, BlazeFace 0.725 -> 0.717; 6 rows × 4 vectors measured
//! the same within 1-3 %). The loops around the tile are shared with AVX2 ([`fused::run`]):
//! column blocks that stay in L1, rows a page apart copied into one
//! block, products deeper than 128 in blocks of depth.
//!
//! Without it the AVX-512 path wrote each 1×1 layer's sums into an accumulator tile and read them
//! back for a separate epilogue pass; AVX2's 8-lane tile, run on an AVX-512 core instead, was
//! slower still (BlazeFace on a Xeon with AVX-512: 0.90 ms against 0.77 at 1 thread).
//!
//! [`Isa::gemm_rows_fused`]: crate::arch::Isa::gemm_rows_fused

use std::arch::x86_64::*;

use super::avx512::lane_mask;
use super::fused::{self, Act, Epilogue, FusedTiles};
use crate::arch::{gemm_rows_fused_check, BRows, FusedRows, Strided};

/// Weight rows per register tile.
const MR: usize = 8;
/// Columns per register tile (three vectors).
const NR: usize = 48;

/// See [`Isa::gemm_rows_fused`](crate::arch::Isa::gemm_rows_fused).
pub(super) fn gemm_rows_fused(
    a: &[f32],
    k: usize,
    b: &[f32],
    offs: &[usize],
    n: usize,
    out: FusedRows<'_, '_>,
) {
    // SAFETY: this function is only in the AVX-512 table, handed out after AVX-512 F/BW/VL were
    // detected (see `super::avx512`).
    unsafe { gemm_rows_fused_checked(a, k, b, offs, n, out) }
}

/// The operands' check, then the tiles: compiled for AVX-512 so that the check's scans of the
/// `k` offsets vectorise (with baseline SSE2's 64-bit compares they took 4-5 % of a 320 -> 1280
/// layer over 7×7, one 48-filter panel per call).
///
/// # Safety
/// AVX-512 F/BW/VL available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
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

/// Partial sums of one weight row's tile, carried between depth blocks.
type Carry = [__m512; 3];

/// Calls `tile::<R, V, HALF, _>` with `R` the row count `$r` (1 to [`MR`]), `V` the vectors of
/// `$w` columns (1 to 3) and `HALF` set when the last vector holds at most 8 of them.
macro_rules! tile_for {
    ($r:expr, $w:expr, ($($arg:expr),*)) => {{
        macro_rules! rows {
            ($v:literal, $half:literal) => {
                match $r {
                    8 => tile::<8, $v, $half, _>($($arg),*),
                    7 => tile::<7, $v, $half, _>($($arg),*),
                    6 => tile::<6, $v, $half, _>($($arg),*),
                    5 => tile::<5, $v, $half, _>($($arg),*),
                    4 => tile::<4, $v, $half, _>($($arg),*),
                    3 => tile::<3, $v, $half, _>($($arg),*),
                    2 => tile::<2, $v, $half, _>($($arg),*),
                    _ => tile::<1, $v, $half, _>($($arg),*),
                }
            };
        }
        // A strip takes as few vectors as hold its columns: a masked-off vector would spend its
        // multiply-adds on nothing. A last vector of at most 8 columns multiplies at 256 bits.
        let w: usize = $w;
        let half = !w.is_multiple_of(16) && w % 16 <= 8;
        match (w > 32, w > 16, half) {
            (true, _, true) => rows!(3, true),
            (true, _, false) => rows!(3, false),
            (false, true, true) => rows!(2, true),
            (false, true, false) => rows!(2, false),
            (false, false, true) => rows!(1, true),
            (false, false, false) => rows!(1, false),
        }
    }};
}

/// This path's register tiles for [`fused::run`].
struct Tiles;

impl FusedTiles for Tiles {
    const NR: usize = NR;
    const MR: usize = MR;
    /// Read in place: on Zen 4 the copy cost more than the L1 set conflicts it avoids
    /// (BlazeFace at 1 thread 0.752-0.789 ms copied, 0.733-0.744 read in place, six alternating
    /// runs of 2000; at 2 threads 0.516-0.703 against 0.506-0.654; full range 2.85-2.93 against
    /// 2.73-2.91). Not measured on other AVX-512 cores.
    const COPIES_PAGE_ALIASED_ROWS: bool = false;
    type Carry = Carry;

    unsafe fn rows<B: BRows>(
        a: *const f32,
        k: usize,
        m: usize,
        b: *const f32,
        rows: B,
        n: usize,
        sink: Epilogue<'_>,
    ) {
        // SAFETY: the caller's contract is `rows_impl`'s.
        unsafe { rows_impl(a, k, m, b, rows, n, sink) }
    }

    unsafe fn deep_tile(
        r: usize,
        a: *const f32,
        lda: usize,
        kl: usize,
        b: *const f32,
        step: usize,
        w: usize,
        carry: *mut Carry,
        first: bool,
        last: bool,
        sink: Epilogue<'_>,
        at: (usize, usize),
    ) {
        // SAFETY: the caller's contract is `tile`'s, for `r <= MR` rows and rows of `b` `step`
        // apart.
        unsafe { tile_for!(r, w, (a, lda, kl, b, Strided(step), w, 1, carry, first, last, sink, at)) }
    }
}

/// Column blocks of L1-sized strips outer; in each, row blocks of [`MR`], then its strips: a block
/// of `b` (`k × strips·NR`) stays in L1 while every row block streams over it.
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn rows_impl<B: BRows>(
    a: *const f32,
    k: usize,
    m: usize,
    b: *const f32,
    rows: B,
    n: usize,
    sink: Epilogue<'_>,
) {
    let block = sink.l1_strips(k, m, NR) * NR;
    let mut j0 = 0;
    while j0 < n {
        let block_end = n.min(j0 + block);
        // The block's whole strips, then a narrower last one.
        let whole_end = j0 + (block_end - j0) / NR * NR;
        let mut i = 0;
        while i < m {
            let r = (m - i).min(MR);
            // SAFETY: rows i..i+r of `a` and the sink and columns j0..block_end of `b` (through
            // `rows`) and the sink are within the caller's bounds; with no carry a tile takes
            // the whole depth at once.
            unsafe {
                let ap = a.add(i * k);
                match r {
                    8 => strips::<8, B>(ap, k, b, rows, j0..whole_end, sink, i),
                    7 => strips::<7, B>(ap, k, b, rows, j0..whole_end, sink, i),
                    6 => strips::<6, B>(ap, k, b, rows, j0..whole_end, sink, i),
                    5 => strips::<5, B>(ap, k, b, rows, j0..whole_end, sink, i),
                    4 => strips::<4, B>(ap, k, b, rows, j0..whole_end, sink, i),
                    3 => strips::<3, B>(ap, k, b, rows, j0..whole_end, sink, i),
                    2 => strips::<2, B>(ap, k, b, rows, j0..whole_end, sink, i),
                    _ => strips::<1, B>(ap, k, b, rows, j0..whole_end, sink, i),
                }
                let (j, w) = (whole_end, block_end - whole_end);
                if w > 0 {
                    let bp = b.add(j);
                    tile_for!(
                        r,
                        w,
                        (ap, k, k, bp, rows, w, 1, std::ptr::null_mut(), true, true, sink, (i, j))
                    );
                }
            }
            i += r;
        }
        j0 = block_end;
    }
}

/// `R` rows of whole strips ([`NR`] columns each) over the columns `cols` (whole strips) of
/// `b`, the whole depth `k` at once, into rows `i ..` of `sink`: one call per row block rather
/// than per strip, so the tiles cost no call each where the compiler does not inline them into
/// the row loop (it did in some builds and not in others: BlazeFace's 1×1 layers ran 2-3 %
/// slower per call-per-tile).
///
/// # Safety
/// As [`tile`]'s for every strip of `cols`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn strips<const R: usize, B: BRows>(
    a: *const f32,
    k: usize,
    b: *const f32,
    rows: B,
    cols: std::ops::Range<usize>,
    sink: Epilogue<'_>,
    i: usize,
) {
    let count = cols.len() / NR;
    if count > 0 {
        let (j, carry) = (cols.start, std::ptr::null_mut());
        // SAFETY: the caller's, for the `count` strips from column `j`.
        unsafe {
            tile::<R, 3, false, B>(a, k, k, b.add(j), rows, NR, count, carry, true, true, sink, (i, j))
        };
    }
}

/// `sum_p a[r * lda + p] * b[row p][0..w]` over `depth` rows of `b` for `R` weight rows, `w <=
/// 16 * V`, in registers: started from the partial sums in `carry` unless `first`, and left there
/// unless `last`, when they go to `sink` as rows `at.0 ..` at column `at.1`. `carry` may be null
/// when both are set. Repeated for `strips` strips [`NR`] columns apart (more than one only with
/// `first` and `last`: see [`strips`]).
///
/// With `HALF` (the last vector holds at most 8 columns: `w <= 16 * V - 8`) that vector's loads
/// and multiply-adds are 256 bits wide, its upper lanes zero. Zen 4 runs a 512-bit multiply-add
/// as two 256-bit halves, one per cycle, and 256-bit ones two per cycle, so a 6×6 plane's 36
/// columns (two vectors and 4 columns) cost 20 cycles per depth step of 8 rows instead of 24.
/// Cores with full-width 512-bit units run both at one instruction a cycle.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn tile<const R: usize, const V: usize, const HALF: bool, B: BRows>(
    a: *const f32,
    lda: usize,
    depth: usize,
    b: *const f32,
    rows: B,
    w: usize,
    strips: usize,
    carry: *mut Carry,
    first: bool,
    last: bool,
    sink: Epilogue<'_>,
    at: (usize, usize),
) {
    let masks: [__mmask16; V] = std::array::from_fn(|v| lane_mask(w.saturating_sub(16 * v)));
    for s in 0..strips {
        let (b, at) = (b.wrapping_add(s * NR), (at.0, at.1 + s * NR));
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        // SAFETY: the caller guarantees R rows of `depth` values `lda` apart at `a`, `depth` rows of
        // `w` values at `b` (through `rows`) for each of the `strips` strips [`NR`] columns apart,
        // R partial sums at `carry` unless it is null (then `first` and `last` are set), and R rows
        // of `w` columns per strip in `sink` at `at`; masked-off lanes are neither loaded nor stored.
        unsafe {
            if !first {
                for (r, acc) in acc.iter_mut().enumerate() {
                    let c = &*carry.add(r);
                    *acc = std::array::from_fn(|v| c[v]);
                }
            }
            for p in 0..depth {
                let bp = b.add(rows.offset(p));
                let bv: [__m512; V] = std::array::from_fn(|v| {
                    if HALF && v == V - 1 {
                        // `masks[v]` sets at most the low 8 lanes; the upper ones are zero.
                        _mm512_zextps256_ps512(_mm256_maskz_loadu_ps(masks[v] as __mmask8, bp.add(16 * v)))
                    } else {
                        _mm512_maskz_loadu_ps(masks[v], bp.add(16 * v))
                    }
                });
                for (r, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*a.add(r * lda + p));
                    for (v, (acc, &bv)) in acc.iter_mut().zip(&bv).enumerate() {
                        *acc = if HALF && v == V - 1 {
                            let sum = _mm256_fmadd_ps(
                                _mm512_castps512_ps256(av),
                                _mm512_castps512_ps256(bv),
                                _mm512_castps512_ps256(*acc),
                            );
                            // Lanes 8.. stay zero (and are never stored: `masks[v]`).
                            _mm512_zextps256_ps512(sum)
                        } else {
                            _mm512_fmadd_ps(av, bv, *acc)
                        };
                    }
                }
            }
            if last {
                for (r, acc) in acc.into_iter().enumerate() {
                    store(sink, at.0 + r, at.1, acc, masks);
                }
            } else {
                for (r, acc) in acc.into_iter().enumerate() {
                    let c = &mut *carry.add(r);
                    c[..V].copy_from_slice(&acc);
                }
            }
        }
    }
}

/// Row `i`'s sums for columns `j .. j + 16 * V` (`v`, the lanes set in `masks`) plus the row's
/// residual and bias, through the activation, into its output row.
///
/// # Safety
/// Row `i` exists and columns `col + j ..` (the lanes set) lie in it and in its residual row if
/// it has one; row `i` has a bias if any row does, and a slope for a leaky activation.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn store<const V: usize>(
    e: Epilogue<'_>,
    i: usize,
    j: usize,
    mut v: [__m512; V],
    masks: [__mmask16; V],
) {
    // SAFETY: as the caller guarantees.
    unsafe {
        let dst = (*e.rows.add(i)).as_mut_ptr().add(e.col + j);
        if i < e.residual_rows {
            let res = e.residual.add(i * e.residual_pitch + j);
            for (x, (lane, &mask)) in v.iter_mut().zip(masks.iter().enumerate()) {
                *x = _mm512_add_ps(*x, _mm512_maskz_loadu_ps(mask, res.add(16 * lane)));
            }
        }
        if !e.bias.is_null() {
            let b = _mm512_set1_ps(*e.bias.add(i));
            v = v.map(|x| _mm512_add_ps(x, b));
        }
        // Each the same operations, in the same order, as `Activation::apply`.
        match e.act {
            Act::None => {}
            Act::Clamp(lo, hi) => {
                let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
                // `max(x, lo)` returns `lo` for a NaN `x`, as the scalar clamp does.
                v = v.map(|x| _mm512_min_ps(_mm512_max_ps(x, lo), hi));
            }
            Act::HardSwish | Act::HardSwishAffine(..) => {
                let (zero, one) = (_mm512_setzero_ps(), _mm512_set1_ps(1.0));
                let (sixth, half) = (_mm512_set1_ps(1.0 / 6.0), _mm512_set1_ps(0.5));
                // `max(0, t)` then `min(1, ..)` keep a NaN, as `f32::clamp` does.
                let gate =
                    |x| _mm512_min_ps(one, _mm512_max_ps(zero, _mm512_add_ps(_mm512_mul_ps(x, sixth), half)));
                v = v.map(|x| _mm512_mul_ps(x, gate(x)));
                if let Act::HardSwishAffine(scale, shift) = e.act {
                    let (scale, shift) = (_mm512_set1_ps(scale), _mm512_set1_ps(shift));
                    v = v.map(|x| _mm512_add_ps(_mm512_mul_ps(x, scale), shift));
                }
            }
            Act::Leaky(slopes) => {
                let (zero, slope) = (_mm512_setzero_ps(), _mm512_set1_ps(*slopes.add(i)));
                // `x >= 0` is false for NaN, whose product with the slope stays NaN.
                v = v.map(|x| {
                    let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, zero);
                    _mm512_mask_blend_ps(keep, _mm512_mul_ps(x, slope), x)
                });
            }
        }
        for (lane, (x, mask)) in v.into_iter().zip(masks).enumerate() {
            _mm512_mask_storeu_ps(dst.add(16 * lane), mask, x);
        }
    }
}
