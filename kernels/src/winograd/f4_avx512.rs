//! AVX-512 transforms of Winograd F(4×4, 3×3), 16 tiles per vector with every intermediate in
//! registers: the split of a padded input row into its 4 column phases (two rounds of
//! `vpermt2ps` over 64 columns), `V = Bᵀ d B`, and `Aᵀ M A` with its column phases interleaved
//! back into output rows by the inverse permutes ([`super::f4`]'s values, bit for bit: the same
//! operations in the same order, no fused multiply-adds).
//!
//! The portable versions (a split through two rounds of [`Isa::deinterleave`] calls and rows of
//! tiles written to memory between the two passes of `Bᵀ`, auto-vectorised) took 38 % of a 96→24
//! layer over 80×160 (PP-OCRv4 det's head): short calls and passes over 40 tiles, each with its
//! own setup and remainder. With the input side written out the layer took 2.44-2.55 ms against
//! 2.72-3.03 (Xeon, 1 thread, one-layer model, alternating runs) and PP-OCRv4 det at 320×640 17.8
//! against 18.7 ms; with the output side too, 2.14-2.38 against 2.30-2.49. What is left of the
//! split's time is mostly the input's first read (4.9 MB, from L3); the GEMMs between the
//! transforms (24×96 by 96×40 per tile row and point) now take half the layer.
//!
//! [`Isa::deinterleave`]: crate::arch::Isa::deinterleave

use std::arch::x86_64::*;

/// Mask of lanes `lo .. hi` (both at most 16).
#[inline]
fn lanes(lo: usize, hi: usize) -> __mmask16 {
    (((1u32 << hi) - (1u32 << lo)) & 0xFFFF) as __mmask16
}

/// Splits one padded input row into its 4 column phases, as [`super::split_phases`] does for
/// m = 4: phase `j` (`phases[j * half ..][..half]`) holds padded columns `4t + j`, where padded
/// column `c` is `xrow[c - pad_left]` inside the row and 0 outside (all of it for a padding row,
/// `None`).
///
/// # Panics
/// If `phases` holds fewer than `4 * half` values.
pub(super) fn split4(xrow: Option<&[f32]>, pad_left: usize, phases: &mut [f32], half: usize) {
    let phases = &mut phases[..4 * half];
    let Some(xrow) = xrow else {
        crate::zero(phases);
        return;
    };
    // SAFETY: `Transforms::for_isa` hands this out only on the AVX-512 path, after AVX-512 F was
    // detected; `phases` holds 4 * half values (sliced above) and `xrow` its own length.
    unsafe { split4_impl(xrow.as_ptr(), xrow.len(), pad_left, phases.as_mut_ptr(), half) }
}

#[target_feature(enable = "avx512f")]
unsafe fn split4_impl(x: *const f32, in_w: usize, pad_left: usize, phases: *mut f32, half: usize) {
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let mut t0 = 0;
    while t0 < half {
        // Padded columns 4·t0 .. 4·t0 + 64, as four vectors; lanes outside the row read as 0.
        let c0 = 4 * t0;
        let q: [__m512; 4] = std::array::from_fn(|i| {
            let first = c0 + 16 * i;
            let lo = pad_left.saturating_sub(first).min(16);
            let hi = (in_w + pad_left).saturating_sub(first).min(16);
            if lo >= hi {
                return _mm512_setzero_ps();
            }
            // SAFETY: lane l is read only when lo <= l < hi, i.e. 0 <= first + l - pad_left <
            // in_w: an element of the row; the address is formed without claiming it is inside.
            unsafe { _mm512_maskz_loadu_ps(lanes(lo, hi), x.wrapping_add(first).wrapping_sub(pad_left)) }
        });
        // Even and odd columns of each half, then of those the phases 0, 2 and 1, 3.
        let (e1, o1) = (_mm512_permutex2var_ps(q[0], even, q[1]), _mm512_permutex2var_ps(q[0], odd, q[1]));
        let (e2, o2) = (_mm512_permutex2var_ps(q[2], even, q[3]), _mm512_permutex2var_ps(q[2], odd, q[3]));
        let p = [
            _mm512_permutex2var_ps(e1, even, e2),
            _mm512_permutex2var_ps(o1, even, o2),
            _mm512_permutex2var_ps(e1, odd, e2),
            _mm512_permutex2var_ps(o1, odd, o2),
        ];
        let mask = lanes(0, (half - t0).min(16));
        for (j, pj) in p.into_iter().enumerate() {
            // SAFETY: lanes t0 .. min(t0 + 16, half) of phase j, inside the 4 * half values.
            unsafe { _mm512_mask_storeu_ps(phases.add(j * half + t0), mask, pj) };
        }
        t0 += 16;
    }
}

/// `V = Bᵀ d B` for the `tiles` tiles of one tile row, as [`super::f4::input`] (same arguments;
/// `work` is not needed).
///
/// # Panics
/// If `rows` holds fewer than 6 rows of 4 phases of `tiles + 1` values, or `v` does not reach
/// row 35's `tiles` values at `35 * stride + at`.
pub(super) fn input(rows: &[f32], tiles: usize, _work: &mut [f32], v: &mut [f32], at: usize, stride: usize) {
    if tiles == 0 {
        return;
    }
    let half = tiles + 1;
    assert!(rows.len() >= 24 * half, "{} values for 6 rows of 4 phases of {half}", rows.len());
    assert!(v.len() >= 35 * stride + at + tiles, "V of {} values for stride {stride} at {at}", v.len());
    // SAFETY: as `split4`; the assertions cover every lane the kernel reads and writes.
    unsafe { input_impl(rows.as_ptr(), tiles, v.as_mut_ptr(), at, stride) }
}

/// `Bᵀ` applied to `(d0, .., d5)` lane by lane, in [`super::f4`]'s operations and order.
#[inline]
#[target_feature(enable = "avx512f")]
fn b_t(d: [__m512; 6]) -> [__m512; 6] {
    let [d0, d1, d2, d3, d4, d5] = d;
    let (two, four, five) = (_mm512_set1_ps(2.0), _mm512_set1_ps(4.0), _mm512_set1_ps(5.0));
    let (add, sub, mul) = (_mm512_add_ps, _mm512_sub_ps, _mm512_mul_ps);
    let (d42, d31) = (sub(d4, d2), sub(d3, d1));
    [
        add(sub(mul(four, d0), mul(five, d2)), d4),
        sub(add(d4, d3), mul(four, add(d1, d2))),
        add(sub(d4, d3), mul(four, sub(d1, d2))),
        add(d42, mul(two, d31)),
        sub(d42, mul(two, d31)),
        add(sub(mul(four, d1), mul(five, d3)), d5),
    ]
}

#[target_feature(enable = "avx512f")]
unsafe fn input_impl(rows: *const f32, tiles: usize, v: *mut f32, at: usize, stride: usize) {
    let half = tiles + 1;
    let mut t0 = 0;
    while t0 < tiles {
        // Whole vectors, the last one overlapping the one before (a tile computed twice is
        // written twice with the same values); fewer than 16 tiles under a mask.
        let (start, mask) =
            if tiles >= 16 { (t0.min(tiles - 16), lanes(0, 16)) } else { (0, lanes(0, tiles)) };
        // Along each row: tile t reads (p0[t], p1[t], p2[t], p3[t], p0[t + 1], p1[t + 1]).
        let w: [[__m512; 6]; 6] = std::array::from_fn(|i| {
            let row = rows.wrapping_add(i * 4 * half + start);
            // SAFETY: lanes below start + 16 (or tiles) + 1 <= half of each phase of row i.
            let ld = |off: usize| unsafe { _mm512_maskz_loadu_ps(mask, row.add(off)) };
            b_t([ld(0), ld(half), ld(2 * half), ld(3 * half), ld(1), ld(half + 1)])
        });
        // Across rows, component by component: V row a * 6 + j.
        let columns: [[__m512; 6]; 6] = std::array::from_fn(|j| std::array::from_fn(|i| w[i][j]));
        for (j, column) in columns.into_iter().enumerate() {
            let out = b_t(column);
            for (a, va) in out.into_iter().enumerate() {
                // SAFETY: row a * 6 + j <= 35, lanes start .. start + 16 (or tiles) <= tiles.
                unsafe { _mm512_mask_storeu_ps(v.add((a * 6 + j) * stride + at + start), mask, va) };
            }
        }
        t0 += 16;
    }
}

/// `Aᵀ M A` for the `tiles` tiles of one tile row of one filter, as [`super::f4::output`] (same
/// arguments and result: the four output rows, `4 * tiles` columns each, back to back at the
/// start of `work`).
///
/// # Panics
/// If `m` does not reach product row 35's `tiles` values at `35 * stride + at`, or `work` holds
/// fewer than `16 * tiles` values.
pub(super) fn output<'w>(
    m: &[f32],
    at: usize,
    stride: usize,
    tiles: usize,
    work: &'w mut [f32],
) -> &'w [f32] {
    let out = &mut work[..16 * tiles];
    if tiles == 0 {
        return out;
    }
    assert!(
        m.len() >= 35 * stride + at + tiles,
        "products of {} values for stride {stride} at {at}",
        m.len()
    );
    // SAFETY: as `split4`; the assertion and the slice above cover every lane the kernel reads
    // and writes.
    unsafe { output_impl(m.as_ptr(), at, stride, tiles, out.as_mut_ptr()) };
    out
}

/// `Aᵀ` applied to `(m0, .., m5)` lane by lane, in [`super::f4`]'s operations and order.
#[inline]
#[target_feature(enable = "avx512f")]
fn a_t(v: [__m512; 6]) -> [__m512; 4] {
    let [m0, m1, m2, m3, m4, m5] = v;
    let (two, four, eight) = (_mm512_set1_ps(2.0), _mm512_set1_ps(4.0), _mm512_set1_ps(8.0));
    let (add, sub, mul) = (_mm512_add_ps, _mm512_sub_ps, _mm512_mul_ps);
    let (p12, m12, p34, m34) = (add(m1, m2), sub(m1, m2), add(m3, m4), sub(m3, m4));
    [
        add(add(m0, p12), p34),
        add(m12, mul(two, m34)),
        add(p12, mul(four, p34)),
        add(add(m12, mul(eight, m34)), m5),
    ]
}

#[target_feature(enable = "avx512f")]
unsafe fn output_impl(m: *const f32, at: usize, stride: usize, tiles: usize, out: *mut f32) {
    // Pairs (phase 0, 1) and (2, 3) of tiles 0..8 and 8..16, then four tiles' 16 columns.
    let pair_lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let pair_hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let quad_lo = _mm512_setr_epi32(0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23);
    let quad_hi = _mm512_setr_epi32(8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31);
    let row_len = 4 * tiles;
    let mut t0 = 0;
    while t0 < tiles {
        // As `input_impl`'s windows.
        let (start, count) = if tiles >= 16 { (t0.min(tiles - 16), 16) } else { (0, tiles) };
        let mask = lanes(0, count);
        // Along columns: s[a][c] is component c of product row a.
        let s: [[__m512; 4]; 6] = std::array::from_fn(|a| {
            // SAFETY: product rows a * 6 + b <= 35, lanes start .. start + count <= tiles.
            a_t(std::array::from_fn(|b| unsafe {
                _mm512_maskz_loadu_ps(mask, m.add((a * 6 + b) * stride + at + start))
            }))
        });
        // Across rows: y[c][r] is output row r's column phase c (columns 4t + c).
        let y: [[__m512; 4]; 4] = std::array::from_fn(|c| a_t(std::array::from_fn(|a| s[a][c])));
        let rows: [[__m512; 4]; 4] = std::array::from_fn(|r| std::array::from_fn(|c| y[c][r]));
        for (r, [y0, y1, y2, y3]) in rows.into_iter().enumerate() {
            let (lo01, hi01) =
                (_mm512_permutex2var_ps(y0, pair_lo, y1), _mm512_permutex2var_ps(y0, pair_hi, y1));
            let (lo23, hi23) =
                (_mm512_permutex2var_ps(y2, pair_lo, y3), _mm512_permutex2var_ps(y2, pair_hi, y3));
            let columns = [
                _mm512_permutex2var_ps(lo01, quad_lo, lo23),
                _mm512_permutex2var_ps(lo01, quad_hi, lo23),
                _mm512_permutex2var_ps(hi01, quad_lo, hi23),
                _mm512_permutex2var_ps(hi01, quad_hi, hi23),
            ];
            for (q, v) in columns.into_iter().enumerate() {
                // Columns 4·start + 16q .. of row r: tiles start + 4q .. start + 4q + 4.
                let valid = (4 * count).saturating_sub(16 * q).min(16);
                if valid > 0 {
                    // SAFETY: columns below 4 * (start + count) <= 4 * tiles of row r < 4.
                    unsafe {
                        _mm512_mask_storeu_ps(out.add(r * row_len + 4 * start + 16 * q), lanes(0, valid), v)
                    };
                }
            }
        }
        t0 += 16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn split4_matches_the_portable_split() {
        if crate::arch::x86::avx512().is_none() {
            return;
        }
        let mut rng = Rng::new(41);
        for in_w in [1usize, 2, 3, 5, 15, 16, 17, 31, 63, 64, 65, 100, 160, 161] {
            for pad_left in 0..4 {
                // At least as many phase columns as the padded row has (the layer's own sizes
                // and some to spare).
                for half in [(in_w + pad_left).div_ceil(4) + 1, (in_w + pad_left + 2).div_ceil(4) + 7] {
                    let x = rng.vec(in_w);
                    for xrow in [Some(&x[..]), None] {
                        let mut want = vec![f32::NAN; 4 * half + 3];
                        let mut work = vec![0.0; 4 * half];
                        crate::winograd::split_phases(
                            crate::arch::scalar::deinterleave,
                            xrow,
                            pad_left,
                            4,
                            &mut want,
                            half,
                            &mut work,
                        );
                        let mut got = vec![f32::NAN; 4 * half + 3];
                        split4(xrow, pad_left, &mut got, half);
                        let what = format!("in_w {in_w} pad {pad_left} half {half} row {}", xrow.is_some());
                        assert_eq!(bits(&got), bits(&want), "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn input_matches_the_portable_transform() {
        if crate::arch::x86::avx512().is_none() {
            return;
        }
        let mut rng = Rng::new(43);
        for tiles in [1, 2, 7, 15, 16, 17, 31, 32, 33, 40, 47] {
            let half = tiles + 1;
            let rows = rng.vec(24 * half);
            let (at, stride) = (3, tiles + 5);
            let mut want = vec![f32::NAN; 36 * stride + at];
            let mut work = vec![0.0; 36 * half];
            crate::winograd::f4::input(&rows, tiles, &mut work, &mut want, at, stride);
            let mut got = vec![f32::NAN; 36 * stride + at];
            input(&rows, tiles, &mut work, &mut got, at, stride);
            assert_eq!(bits(&got), bits(&want), "{tiles} tiles");
        }
    }

    #[test]
    fn output_matches_the_portable_transform() {
        if crate::arch::x86::avx512().is_none() {
            return;
        }
        let mut rng = Rng::new(47);
        for tiles in [1, 2, 3, 4, 5, 7, 15, 16, 17, 31, 32, 33, 40, 47] {
            let (at, stride) = (5, tiles + 3);
            let products = rng.vec(36 * stride + at);
            let mut work = vec![f32::NAN; 56 * tiles];
            let want = crate::winograd::f4::output(&products, at, stride, tiles, &mut work).to_vec();
            let mut work = vec![f32::NAN; 56 * tiles];
            let got = output(&products, at, stride, tiles, &mut work);
            assert_eq!(bits(got), bits(&want), "{tiles} tiles");
        }
    }
}
