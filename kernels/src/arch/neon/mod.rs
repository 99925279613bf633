//! aarch64 path: NEON (Advanced SIMD, 4 f32 lanes, 32 vector registers).
//!
//! NEON is part of the aarch64 baseline, but the micro-kernels are still `#[target_feature]`
//! functions and the [`Isa`] table is handed out only by [`neon`] after
//! `is_aarch64_feature_detected!("neon")`, so every path is registered the same way. The table
//! entries are safe wrappers: they check every bound the scalar reference would index, then run
//! the unsafe kernel on raw pointers.

mod depthwise;
mod depthwise_in_place;
mod depthwise_planes;
mod elementwise;
mod fused;
mod int8;
mod packed;
mod packing;

use super::{gemm_rows_at_check, gemm_rows_check, BRows, Isa, Listed, Strided};
use std::arch::aarch64::*;

/// The NEON path, if this CPU supports it (always, on aarch64 Linux), with the int8 kernels when
/// it also has the dot-product instructions (FEAT_DotProd: most ARMv8.2+ cores, not e.g. the
/// Cortex-A53 or A72).
pub fn neon() -> Option<Isa> {
    if !std::arch::is_aarch64_feature_detected!("neon") {
        return None;
    }
    let mut isa = ISA;
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        isa.int8 = Some(int8::KERNELS);
    }
    Some(isa)
}

const ISA: Isa = Isa {
    name: "neon",
    lanes: 4,
    gemm_rows,
    gemm_rows_at,
    gemm_rows_fused: fused::GEMM_ROWS_FUSED,
    bf16: None,
    store_rows: super::epilogue::store_rows_plain,
    activate: super::epilogue::activate_plain,
    softmax_row: super::epilogue::softmax_plain,
    max_2x2: elementwise::max_2x2,
    deinterleave: elementwise::deinterleave,
    transpose: elementwise::transpose,
    decode_nibbles: elementwise::decode_nibbles,
    decode_packed: Some(packed::decode_packed),
    widen_f16: elementwise::widen_f16,
    dot,
    dot_rows: fused::DOT_ROWS,
    axpy,
    mul,
    dot_packed: packed::dot_packed,
    gemv_prepare: super::scalar::gemv_prepare,
    dot_packed_rows,
    dot_nibble_rows_f16: None,
    depthwise_rows: depthwise::depthwise_rows,
    depthwise_s1: Some(depthwise_in_place::depthwise_s1),
    depthwise_s2: Some(depthwise_in_place::depthwise_s2),
    depthwise_plane: None,
    depthwise_3x3: depthwise_planes::DEPTHWISE_3X3,
    depthwise_3x3_width: super::DEPTHWISE_3X3_MAX_WIDTH,
    depthwise_small: depthwise_planes::DEPTHWISE_SMALL,
    depthwise_interleaved: None,
    blocked: None,
    // Set by `neon` when the CPU has dotprod.
    int8: None,
};

/// See [`Isa::dot_packed_rows`]: [`packed::dot_packed`] row by row on the unprepared input.
fn dot_packed_rows(rows: &[&[u8]], bits: u8, luts: &[[f32; 256]], x: &[f32], xp: &[f32], out: &mut [f32]) {
    super::dot_packed_rows_check(rows, luts, x, xp, out);
    for (r, (row, o)) in rows.iter().zip(out.iter_mut()).enumerate() {
        let lut = super::row_table(luts, r);
        *o = packed::dot_packed(row, bits, lut, x);
    }
}

/// Rows of `a` (and `c`) one register block covers.
const MR: usize = 4;
/// Fewest columns for which [`gemm_rows`] and [`gemm_rows_at`] pack their weights
/// ([`packing::with_packed`]): on the A55 model packing a weight (1.44 cycles) costs what it
/// saves on 16 columns (0.37 per multiply-add), on the A57's it saves almost nothing (1.03 →
/// 1.00); from 64 columns it gains on the A55 and M1 models and costs the A57's a few percent.
const PACK_MIN_COLUMNS: usize = 64;

/// See [`Isa::gemm_rows`].
fn gemm_rows(a: &[f32], k: usize, b: &[f32], ldb: usize, n: usize, c: &mut [f32], ldc: usize) {
    let Some(m) = gemm_rows_check(a, k, b, ldb, n, c, ldc) else { return };
    packing::with_packed::<MR, _>(&a[..m * k], k, n >= PACK_MIN_COLUMNS, |packed| {
        // SAFETY: NEON was detected before this table was handed out (`neon`); the check
        // asserted the bounds of every row `gemm_blocks` reads through `Strided(ldb)` and
        // writes; `packed`, if any, holds every whole block of `MR` rows.
        unsafe { gemm_blocks(a.as_ptr(), packed, k, m, b.as_ptr(), Strided(ldb), n, c.as_mut_ptr(), ldc) }
    })
}

/// See [`Isa::gemm_rows_at`].
fn gemm_rows_at(a: &[f32], k: usize, b: &[f32], offs: &[usize], n: usize, c: &mut [f32], ldc: usize) {
    let Some(m) = gemm_rows_at_check(a, k, b, offs, n, c, ldc) else { return };
    packing::with_packed::<MR, _>(&a[..m * k], k, n >= PACK_MIN_COLUMNS, |packed| {
        // SAFETY: NEON was detected (`neon`); the check asserted `k` offsets, each followed by
        // `n` elements of `b`, and `m` rows of `c`, so every access through `Listed` is in
        // bounds; `packed`, if any, holds every whole block of `MR` rows.
        unsafe {
            gemm_blocks(a.as_ptr(), packed, k, m, b.as_ptr(), Listed(offs.as_ptr()), n, c.as_mut_ptr(), ldc)
        }
    })
}

/// All `m` rows, in blocks of [`MR`].
///
/// # Safety
/// NEON available; `a` holds `m * k` floats and `packed`, if any, its whole blocks of [`MR`] rows
/// packed depth-major ([`packing::with_packed`]); `rows` locates `k` rows of `n` floats in `b`; `c`
/// holds `m` rows of `n` floats `ldc` apart (disjoint unless `m == 1`), not overlapping `a` or `b`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
unsafe fn gemm_blocks<B: BRows>(
    a: *const f32,
    packed: Option<&[f32]>,
    k: usize,
    m: usize,
    b: *const f32,
    rows: B,
    n: usize,
    c: *mut f32,
    ldc: usize,
) {
    let mut i = 0;
    // SAFETY: rows `i..i + R` of `a` and `c` are below `m` (the caller's bounds).
    unsafe {
        while i + MR <= m {
            let w = packed.map(|p| p[i * k..][..MR * k].as_ptr());
            gemm_block::<MR, B>(a.add(i * k), w, k, b, rows, n, c.add(i * ldc), ldc);
            i += MR;
        }
        match m - i {
            3 => gemm_block::<3, B>(a.add(i * k), None, k, b, rows, n, c.add(i * ldc), ldc),
            2 => gemm_block::<2, B>(a.add(i * k), None, k, b, rows, n, c.add(i * ldc), ldc),
            1 => gemm_block::<1, B>(a.add(i * k), None, k, b, rows, n, c.add(i * ldc), ldc),
            _ => {}
        }
    }
}

/// `R` rows of `c[.., 0..n] += a · b`, in register blocks of `R` × 16 columns (`R * 4`
/// accumulators), then `R` × 4, then scalar columns.
///
/// With `packed` (the `R = 4` rows depth-major, [`packing::with_packed`]) each depth step
/// loads the 4 weights as one vector and multiplies by lane; without, one broadcast per row.
/// Either way the same fused multiply-adds in the same order.
///
/// # Safety
/// NEON available; `a` holds `R * k` floats, and `packed`, if any, `4 * k` with `R` 4; `rows`
/// locates `k` rows of `n` floats in `b`; `c` holds `R` rows of `n` floats `ldc` apart, not
/// overlapping `a` or `b`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
unsafe fn gemm_block<const R: usize, B: BRows>(
    a: *const f32,
    packed: Option<*const f32>,
    k: usize,
    b: *const f32,
    rows: B,
    n: usize,
    c: *mut f32,
    ldc: usize,
) {
    let mut j = 0;
    while j + 16 <= n {
        let mut acc = [[vdupq_n_f32(0.0); 4]; R];
        if B::ACCUMULATE {
            for (r, row) in acc.iter_mut().enumerate() {
                for (v, lane) in row.iter_mut().enumerate() {
                    *lane = vld1q_f32(c.add(r * ldc + j + 4 * v));
                }
            }
        }
        for p in 0..k {
            let bp = b.add(rows.offset(p) + j);
            let bv = [vld1q_f32(bp), vld1q_f32(bp.add(4)), vld1q_f32(bp.add(8)), vld1q_f32(bp.add(12))];
            packing::fma_step(&mut acc, a, packed, k, p, &bv);
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, &lane) in row.iter().enumerate() {
                vst1q_f32(c.add(r * ldc + j + 4 * v), lane);
            }
        }
        j += 16;
    }
    while j + 4 <= n {
        let mut acc = [[vdupq_n_f32(0.0); 1]; R];
        if B::ACCUMULATE {
            for (r, [lane]) in acc.iter_mut().enumerate() {
                *lane = vld1q_f32(c.add(r * ldc + j));
            }
        }
        for p in 0..k {
            let bq = [vld1q_f32(b.add(rows.offset(p) + j))];
            packing::fma_step(&mut acc, a, packed, k, p, &bq);
        }
        for (r, &[lane]) in acc.iter().enumerate() {
            vst1q_f32(c.add(r * ldc + j), lane);
        }
        j += 4;
    }
    // The last 1-3 columns one by one, with the vectors' fused multiply-adds: a column's sum is
    // then the same whether it falls in a vector or here (a Winograd layer's tile count, so
    // which tiles reach this tail, depends on how its rows were split over the threads).
    for col in j..n {
        for r in 0..R {
            let mut s = if B::ACCUMULATE { *c.add(r * ldc + col) } else { 0.0 };
            for p in 0..k {
                s = (*a.add(r * k + p)).mul_add(*b.add(rows.offset(p) + col), s);
            }
            *c.add(r * ldc + col) = s;
        }
    }
}

/// See [`Isa::dot`].
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: NEON was detected before this table was handed out; both slices hold `n` floats.
    unsafe { dot_neon(a.as_ptr(), b.as_ptr(), n) }
}

/// `sum a[i] * b[i]` for `i < n`, 16 lanes at a time in four accumulators (independent FMA chains).
///
/// # Safety
/// NEON available; `a` and `b` hold `n` floats.
#[target_feature(enable = "neon")]
unsafe fn dot_neon(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 16 <= n {
        for (v, lane) in acc.iter_mut().enumerate() {
            *lane = vfmaq_f32(*lane, vld1q_f32(a.add(i + 4 * v)), vld1q_f32(b.add(i + 4 * v)));
        }
        i += 16;
    }
    while i + 4 <= n {
        acc[0] = vfmaq_f32(acc[0], vld1q_f32(a.add(i)), vld1q_f32(b.add(i)));
        i += 4;
    }
    let sum = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    let mut s = vaddvq_f32(sum);
    while i < n {
        s += *a.add(i) * *b.add(i);
        i += 1;
    }
    s
}

/// See [`Isa::mul`].
fn mul(y: &mut [f32], x: &[f32]) {
    let n = y.len().min(x.len());
    // SAFETY: NEON was detected before this table was handed out; `y` (unique) and `x` (shared,
    // so not overlapping `y`) hold `n` floats.
    unsafe { mul_neon(y.as_mut_ptr(), x.as_ptr(), n) }
}

/// `y[i] *= x[i]` for `i < n`, 4 lanes at a time.
///
/// # Safety
/// NEON available; `y` and `x` hold `n` floats and do not overlap.
#[target_feature(enable = "neon")]
unsafe fn mul_neon(y: *mut f32, x: *const f32, n: usize) {
    let mut i = 0;
    // SAFETY: every access is below n (the caller's contract).
    unsafe {
        while i + 4 <= n {
            vst1q_f32(y.add(i), vmulq_f32(vld1q_f32(y.add(i)), vld1q_f32(x.add(i))));
            i += 4;
        }
        while i < n {
            *y.add(i) *= *x.add(i);
            i += 1;
        }
    }
}

/// See [`Isa::axpy`].
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    // SAFETY: NEON was detected before this table was handed out; `y` (unique) and `x` (shared,
    // so not overlapping `y`) hold `n` floats.
    unsafe { axpy_neon(y.as_mut_ptr(), a, x.as_ptr(), n) }
}

/// `y[i] += a * x[i]` for `i < n`, 16 lanes at a time.
///
/// # Safety
/// NEON available; `y` and `x` hold `n` floats and do not overlap.
#[target_feature(enable = "neon")]
unsafe fn axpy_neon(y: *mut f32, a: f32, x: *const f32, n: usize) {
    let mut i = 0;
    while i + 16 <= n {
        for v in 0..4 {
            let yp = y.add(i + 4 * v);
            vst1q_f32(yp, vfmaq_n_f32(vld1q_f32(yp), vld1q_f32(x.add(i + 4 * v)), a));
        }
        i += 16;
    }
    while i + 4 <= n {
        vst1q_f32(y.add(i), vfmaq_n_f32(vld1q_f32(y.add(i)), vld1q_f32(x.add(i)), a));
        i += 4;
    }
    while i < n {
        *y.add(i) += a * *x.add(i);
        i += 1;
    }
}

#[cfg(all(test, target_arch = "aarch64"))]
pub(crate) mod tests {
    use super::*;
    use crate::arch::scalar;
    use crate::testutil::{assert_close, Rng};

    /// The NEON table (tests run only where it is detected, i.e. every aarch64 Linux CPU).
    pub(crate) fn isa() -> Isa {
        neon().expect("NEON is baseline on aarch64")
    }

    /// Which paths the whole-kernel tests cover here (scripts/test-aarch64.sh prints this line).
    #[test]
    fn reports_available_paths() {
        let names: Vec<_> = Isa::available().iter().map(|i| i.name).collect();
        assert_eq!(names.last(), Some(&"neon"), "neon must be the best path on aarch64");
        assert_eq!(Isa::by_name("neon").unwrap(), isa());
        let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
        println!("kernel paths: {}; dotprod detected: {dotprod}", names.join(", "));
    }

    #[test]
    fn gemm_rows_matches_scalar_on_odd_shapes() {
        let mut rng = Rng::new(11);
        for case in 0..300 {
            let m = rng.below(11);
            let k = rng.below(20);
            let n = if case < 68 { case } else { rng.below(68) };
            let (ldb, ldc) = (n + rng.below(3), n + rng.below(3));
            let a = rng.vec(m * k);
            let b = rng.vec(k * ldb);
            let c0 = rng.vec(m * ldc);
            let (mut want, mut got) = (c0.clone(), c0);
            scalar::gemm_rows(&a, k, &b, ldb, n, &mut want, ldc);
            (isa().gemm_rows)(&a, k, &b, ldb, n, &mut got, ldc);
            // Columns past `n` (the ld padding) must be untouched: compared exactly via c0.
            assert_close(&got, &want, &format!("gemm_rows m {m} k {k} n {n} ldb {ldb} ldc {ldc}"));
        }
    }

    #[test]
    fn gemm_rows_with_overlapping_b_rows_follows_scalar() {
        // Depthwise-style shifted views: rows of b one element apart.
        let mut rng = Rng::new(12);
        let (k, n, ldb, ldc) = (3, 37, 1, 40);
        let a = rng.vec(2 * k);
        let b = rng.vec((k - 1) * ldb + n);
        let c0 = rng.vec(ldc + n);
        let (mut want, mut got) = (c0.clone(), c0);
        scalar::gemm_rows(&a, k, &b, ldb, n, &mut want, ldc);
        (isa().gemm_rows)(&a, k, &b, ldb, n, &mut got, ldc);
        assert_close(&got, &want, "overlapping b rows");
    }

    #[test]
    #[should_panic(expected = "c is too short")]
    fn gemm_rows_rejects_overlapping_output_rows() {
        // Several rows of c may not overlap (the x86 paths assert the same contract).
        let (a, b) = (vec![1.0; 6], vec![1.0; 20]);
        let mut c = vec![0.0; 14];
        (isa().gemm_rows)(&a, 3, &b, 5, 9, &mut c, 5);
    }

    #[test]
    #[should_panic(expected = "c is too short")]
    fn gemm_rows_panics_like_scalar_on_short_output() {
        let a = vec![1.0; 8];
        let b = vec![1.0; 16];
        let mut c = vec![0.0; 7];
        (isa().gemm_rows)(&a, 2, &b, 8, 8, &mut c, 8);
    }

    #[test]
    fn mul_matches_scalar_bit_for_bit_for_every_length() {
        let mut rng = Rng::new(9);
        for n in 0..=70 {
            let (y0, x) = (rng.vec(n), rng.vec(n + 2));
            let (mut got, mut want) = (y0.clone(), y0);
            (isa().mul)(&mut got, &x);
            scalar::mul(&mut want, &x);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "mul n {n}");
        }
    }

    #[test]
    fn dot_and_axpy_match_scalar_for_every_length() {
        let mut rng = Rng::new(13);
        for n in 0..68 {
            // Unequal lengths: both use the common prefix.
            let extra = rng.below(3);
            let a = rng.vec(n + extra);
            let b = rng.vec(n);
            let want = scalar::dot(&a, &b);
            let got = (isa().dot)(&a, &b);
            assert!((got - want).abs() <= 1e-5 * (1.0 + n as f32), "dot n {n}: {got} vs {want}");

            let s = rng.f32();
            let y0 = rng.vec(n);
            let extra = rng.below(3);
            let x = rng.vec(n + extra);
            let (mut want, mut got) = (y0.clone(), y0);
            scalar::axpy(&mut want, s, &x);
            (isa().axpy)(&mut got, s, &x);
            assert_close(&got, &want, &format!("axpy n {n}"));
        }
    }
}
