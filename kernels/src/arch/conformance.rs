//! Every available path's micro-kernels against the scalar reference, on shapes with odd tails.

use super::{
    scalar, DepthwiseChannels, DepthwiseInPlace, DepthwisePlane, DepthwiseRows, DepthwiseSmallFn,
    FusedActivation, FusedRows, Isa, ResidualRows,
};
use crate::testutil::{Edge, Guarded, Rng};
use crate::Conv2dParams;

/// The non-scalar paths this CPU runs; prints the known ones it skips so CI logs say what ran.
fn simd_paths() -> Vec<Isa> {
    let paths: Vec<Isa> = Isa::available().into_iter().filter(|i| i.name != "scalar").collect();
    for name in ["avx2", "avx512", "neon"] {
        if !paths.iter().any(|i| i.name == name) {
            eprintln!("conformance: path '{name}' not available on this CPU/build, skipped");
        }
    }
    paths
}

/// `|got - want| <= 1e-5 * scale + 1e-6`, where `scale` bounds the sum of absolute terms.
fn close(got: f32, want: f32, scale: f32) -> bool {
    (got - want).abs() <= 1e-5 * scale + 1e-6
}

#[test]
fn gemm_rows_matches_scalar() {
    let mut rng = Rng::new(11);
    for isa in simd_paths() {
        for case in 0..300 {
            let m = 1 + rng.below(19);
            let k = 1 + rng.below(40);
            let n = 1 + case % 67;
            // One case in three has overlapping rows of b (ldb < n), as depthwise conv uses.
            let ldb = if case % 3 == 0 { 1 + rng.below(3) } else { n + rng.below(5) };
            let ldc = n + rng.below(5);
            let a = rng.vec(m * k);
            let b = rng.vec((k - 1) * ldb + n);
            let c0 = rng.vec((m - 1) * ldc + n);
            let mut want = c0.clone();
            scalar::gemm_rows(&a, k, &b, ldb, n, &mut want, ldc);
            // Weights, input rows and output rows (each exactly its length) against no-access
            // pages (see `Guarded`).
            let (ga, gb, mut got) =
                (Guarded::new(&a, Edge::Start), Guarded::new(&b, Edge::End), Guarded::new(&c0, Edge::End));
            (isa.gemm_rows)(ga.as_slice(), k, gb.as_slice(), ldb, n, got.as_mut_slice(), ldc);
            for (idx, (g, w)) in got.as_slice().iter().zip(&want).enumerate() {
                let ok = if idx % ldc < n { close(*g, *w, k as f32 + 1.0) } else { g == w };
                assert!(ok, "{} m={m} k={k} n={n} ldb={ldb} ldc={ldc} at {idx}: {g} vs {w}", isa.name);
            }
        }
    }
}

#[test]
fn gemm_rows_at_matches_scalar() {
    let mut rng = Rng::new(14);
    for isa in simd_paths() {
        for case in 0..300 {
            let m = 1 + rng.below(19);
            let k = 1 + rng.below(40);
            let n = 1 + case % 67;
            let ldc = n + rng.below(5);
            // Offsets in any order, overlapping and repeated, as conv taps over padded planes are.
            let extra = rng.below(200);
            let b = rng.vec(n + extra);
            let listed = k + rng.below(3);
            let offs: Vec<usize> = (0..listed).map(|_| rng.below(extra + 1)).collect();
            let a = rng.vec(m * k);
            let c0 = rng.vec((m - 1) * ldc + n);
            let mut want = c0.clone();
            scalar::gemm_rows_at(&a, k, &b, &offs, n, &mut want, ldc);
            // Weights, input and output rows against no-access pages (see `Guarded`).
            let (ga, gb, mut got) =
                (Guarded::new(&a, Edge::End), Guarded::new(&b, Edge::End), Guarded::new(&c0, Edge::End));
            (isa.gemm_rows_at)(ga.as_slice(), k, gb.as_slice(), &offs, n, got.as_mut_slice(), ldc);
            for (idx, (g, w)) in got.as_slice().iter().zip(&want).enumerate() {
                let ok = if idx % ldc < n { close(*g, *w, k as f32 + 1.0) } else { g == w };
                assert!(ok, "{} m={m} k={k} n={n} ldc={ldc} at {idx}: {g} vs {w}", isa.name);
            }
        }
    }
}

/// One random [`Isa::gemm_rows_fused`] case: weights, listed input rows, output rows wider than the
/// columns written, and the epilogue's parts.
struct FusedCase {
    m: usize,
    k: usize,
    n: usize,
    col: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    offs: Vec<usize>,
    bias: Option<Vec<f32>>,
    residual: Option<(Vec<f32>, usize, usize)>,
    /// 0 none, 1 ReLU, 2 a clamp, 3 HardSwish, 4 an affine HardSwish, 5 per-row slopes.
    act: usize,
    clamp: [f32; 2],
    slopes: Vec<f32>,
}

impl FusedCase {
    fn random(rng: &mut Rng, case: usize) -> FusedCase {
        // Every eighth case deep (more than 128 rows of `b`, which the AVX2 kernel cuts into
        // blocks of depth) with more weight rows than it carries partial sums for (48).
        let deep = case % 8 == 5 || case % 16 == 12;
        // Rows a page (1024 floats) apart, which the x86 kernel copies chunk by chunk: wide
        // enough for several chunks; every fourth such case as deep as a copied block takes
        // (up to 128 rows, fewer the wider the path's strip).
        let paged = matches!(case % 8, 4 | 7);
        let (m, k) = if deep {
            (1 + rng.below(60), 129 + rng.below(300))
        } else if paged && case % 32 < 16 {
            (1 + rng.below(19), 40 + rng.below(89))
        } else {
            (1 + rng.below(19), 1 + rng.below(40))
        };
        let n = if paged { 100 + rng.below(400) } else { 1 + case % 83 };
        let listed = k + rng.below(3);
        let extra = if paged { (listed - 1) * 1024 + rng.below(16) } else { rng.below(200) };
        let b = rng.vec(n + extra);
        let offs = if paged {
            let start = rng.below(extra - (listed - 1) * 1024 + 1);
            (0..listed).map(|p| start + p * 1024).collect()
        } else if case % 4 == 1 {
            // Evenly spaced rows (a 1×1 convolution's input planes), which the x86 kernels step
            // through instead of reading each offset; a step of 0 repeats one row.
            let step = rng.below(extra / listed + 1);
            let start = rng.below(extra - step * (listed - 1) + 1);
            (0..listed).map(|p| start + p * step).collect()
        } else {
            (0..listed).map(|_| rng.below(extra + 1)).collect()
        };
        let bias = (!case.is_multiple_of(3)).then(|| rng.vec(m));
        // Residual rows for all, some or none of the weight rows, `pitch` apart.
        let residual = case.is_multiple_of(2).then(|| {
            let (pitch, rows) = (n + rng.below(9), rng.below(m + 2));
            (rng.vec(rows.max(1) * pitch), pitch, rows)
        });
        let act = case % 6;
        let clamp = match act {
            1 => [0.0, f32::INFINITY],
            _ => [-0.25 - rng.below(3) as f32, 0.5 + rng.below(3) as f32],
        };
        let slopes = rng.vec(m).iter().map(|v| v - 0.5).collect();
        // Weights around 0, so sums fall on both sides of every activation's bends.
        let a = rng.vec(m * k).iter().map(|v| (v - 0.5) * 4.0).collect();
        FusedCase { m, k, n, col: rng.below(5), a, b, offs, bias, residual, act, clamp, slopes }
    }

    fn activation(&self) -> FusedActivation<'_> {
        match self.act {
            0 => FusedActivation::None,
            1 | 2 => FusedActivation::Clamp(self.clamp),
            3 => FusedActivation::HardSwish { scale: 1.0, shift: 0.0 },
            4 => FusedActivation::HardSwish { scale: self.clamp[1], shift: self.clamp[0] },
            _ => FusedActivation::Leaky(&self.slopes),
        }
    }

    /// Runs `f` on rows of NaN, `tail` columns past the written ones, and returns the rows; the
    /// weights and the input rows lie against no-access pages (see `Guarded`).
    fn run(&self, f: super::GemmRowsFusedFn, tail: usize) -> Vec<Vec<f32>> {
        let (a, b) = (Guarded::new(&self.a, Edge::End), Guarded::new(&self.b, Edge::End));
        self.run_with(tail, |out| f(a.as_slice(), self.k, b.as_slice(), &self.offs, self.n, out))
    }

    /// Asserts that `got` matches `want` within the sums' rounding over the written columns
    /// and that every other column is still NaN (`run`'s and `run_with`'s rows).
    fn assert_rows_match(&self, got: &[Vec<f32>], want: &[Vec<f32>], what: &str) {
        for (r, (g, w)) in got.iter().zip(want).enumerate() {
            for (j, (g, w)) in g.iter().zip(w).enumerate() {
                let written = (self.col..self.col + self.n).contains(&j);
                let ok = if written { close(*g, *w, self.k as f32 + 3.0) } else { g.is_nan() };
                assert!(ok, "{what} m={} k={} n={} row {r} col {j}: {g} vs {w}", self.m, self.k, self.n);
            }
        }
    }

    /// Calls `f` with the case's output rows (of NaN, `tail` columns past the written ones) and
    /// epilogue, and returns the rows.
    fn run_with(&self, tail: usize, f: impl FnOnce(FusedRows<'_, '_>)) -> Vec<Vec<f32>> {
        let mut rows = vec![vec![f32::NAN; self.col + self.n + tail]; self.m];
        let mut dst: Vec<&mut [f32]> = rows.iter_mut().map(|r| &mut r[..]).collect();
        let out = FusedRows {
            dst: &mut dst,
            col: self.col,
            bias: self.bias.as_deref(),
            residual: self.residual.as_ref().map(|(data, pitch, rows)| ResidualRows {
                data: &data[..],
                pitch: *pitch,
                rows: *rows,
            }),
            act: self.activation(),
        };
        f(out);
        rows
    }
}

#[test]
fn gemm_rows_fused_reference_is_gemm_rows_at_then_store_rows() {
    let mut rng = Rng::new(41);
    for case in 0..200 {
        let c = FusedCase::random(&mut rng, case);
        let got = c.run(scalar::gemm_rows_fused, 0);
        let mut acc = vec![0.0; c.m * c.n];
        scalar::gemm_rows_at(&c.a, c.k, &c.b, &c.offs, c.n, &mut acc, c.n);
        for (r, row) in got.iter().enumerate() {
            let act = c.activation().of_row(r);
            let res =
                c.residual.as_ref().filter(|res| r < res.2).map(|(data, pitch, _)| &data[r * pitch..][..c.n]);
            let mut want = vec![0.0; c.n];
            let bias = c.bias.as_ref().map_or(0.0, |b| b[r]);
            (scalar::ISA.store_rows)(act, &acc[r * c.n..][..c.n], c.n, bias, res, &mut want, c.n);
            assert!(row[..c.col].iter().all(|v| v.is_nan()), "case {case}: wrote before col");
            assert_eq!(&row[c.col..], &want[..], "case {case} row {r}");
        }
    }
}

#[test]
fn gemm_rows_fused_matches_scalar() {
    let mut rng = Rng::new(42);
    let paths: Vec<Isa> = simd_paths().into_iter().filter(|isa| isa.gemm_rows_fused.is_some()).collect();
    for isa in paths {
        let fused = isa.gemm_rows_fused.expect("filtered");
        for case in 0..400 {
            let c = FusedCase::random(&mut rng, case);
            let (want, got) = (c.run(scalar::gemm_rows_fused, 3), c.run(fused, 3));
            c.assert_rows_match(&got, &want, &format!("{} case {case}", isa.name));
        }
    }
}

/// `x` rounded to the nearest bf16 (ties to even), as an f32: what `vcvtneps2bf16` keeps.
fn bf16_round(x: f32) -> f32 {
    let bits = x.to_bits();
    f32::from_bits((bits + 0x7fff + ((bits >> 16) & 1)) & 0xffff_0000)
}

#[test]
fn gemm_rows_fused_bf16_is_the_f32_product_of_bf16_rounded_factors() {
    // The scalar f32 kernel on weights and inputs rounded to bf16 first: their products are
    // exact in f32, so the two differ only by the order of the sums. Odd depths (a zero half in
    // the last pair), widths across strips of 48 and ragged vectors, every epilogue; the weights
    // are scratch afterwards, and columns outside the written ones stay untouched.
    let mut rng = Rng::new(44);
    for isa in Isa::available() {
        let Some(kernels) = isa.bf16 else { continue };
        // The weights rounded into pair rows first, as the kernels' callers do.
        #[allow(clippy::too_many_arguments)]
        fn bf16(
            kernels: &super::FusedBf16,
            a: &mut [f32],
            k: usize,
            b: &[f32],
            offs: &[usize],
            n: usize,
            out: FusedRows<'_, '_>,
            strips: &mut [f32],
            pack: bool,
        ) {
            (kernels.pairs_in_place)(a, k);
            (kernels.gemm)(a, k, b, offs, n, out, strips, pack)
        }
        for case in 0..400 {
            let c = FusedCase::random(&mut rng, case);
            let rounded = FusedCase {
                a: c.a.iter().map(|&v| bf16_round(v)).collect(),
                b: c.b.iter().map(|&v| bf16_round(v)).collect(),
                bias: c.bias.clone(),
                residual: c.residual.clone(),
                slopes: c.slopes.clone(),
                offs: c.offs.clone(),
                ..c
            };
            let want = rounded.run(scalar::gemm_rows_fused, 3);
            // One strip at a time, or every strip: packed now, or kept from packing the same
            // columns for other weights.
            let strips = match case % 3 {
                0 => super::bf16_strip_len(c.k) + rng.below(5),
                _ => super::bf16_packed_len(c.k, c.n),
            };
            let mut strips = vec![f32::NAN; strips];
            if case % 3 == 2 {
                let mut other: Vec<f32> = c.a.iter().map(|v| v + 1.0).collect();
                c.run_with(0, |out| {
                    bf16(&kernels, &mut other, c.k, &c.b, &c.offs, c.n, out, &mut strips, true)
                });
            }
            let rows = c.run_with(3, |out| {
                bf16(&kernels, &mut c.a.clone(), c.k, &c.b, &c.offs, c.n, out, &mut strips, case % 3 != 2)
            });
            c.assert_rows_match(&rows, &want, &format!("{} case {case}", isa.name));
        }
        let short = std::panic::catch_unwind(|| {
            let (mut a, b) = (vec![1.0; 8], vec![1.0; 16]);
            let mut rows = [vec![0.0; 4]];
            let mut dst: Vec<&mut [f32]> = rows.iter_mut().map(|r| &mut r[..]).collect();
            let out =
                FusedRows { dst: &mut dst, col: 0, bias: None, residual: None, act: FusedActivation::None };
            bf16(
                &kernels,
                &mut a,
                8,
                &b,
                &[0, 1, 2, 3, 4, 5, 6, 7],
                4,
                out,
                &mut vec![0.0; super::bf16_strip_len(8) - 1],
                true,
            );
        });
        assert!(short.is_err(), "{}: a short strip scratch was accepted", isa.name);
    }
}

/// `row` as the pair row the bf16 kernels read: its values rounded to bf16, two per 32-bit lane
/// (the even one low), a zero after an odd last value; the lanes past the pairs as `row` left
/// them.
fn pair_row_of(row: &[f32]) -> Vec<u32> {
    let half = |v: f32| bf16_round(v).to_bits() >> 16;
    (0..row.len().div_ceil(2))
        .map(|i| half(row[2 * i]) | row.get(2 * i + 1).map_or(0, |&v| half(v)) << 16)
        .collect()
}

#[test]
fn bf16_pair_rows_are_the_rounded_values_two_per_lane() {
    // Rounding in place and decoding 4-bit indices straight into pairs give the same lanes: the
    // f32 values (decoded through the f32 table) rounded to nearest, ties to even, a zero after
    // an odd last value; every length from one pair to past two 32-index blocks.
    let mut rng = Rng::new(45);
    for isa in Isa::available() {
        let Some(bf16) = isa.bf16 else { continue };
        for n in 1..80usize {
            let table: [f32; 16] = std::array::from_fn(|_| rng.f32() * 3.0);
            let packed: Vec<u8> = (0..n.div_ceil(2)).map(|_| rng.below(256) as u8).collect();
            let f32_row: Vec<f32> =
                (0..n).map(|i| table[(packed[i / 2] >> (4 * (i % 2)) & 15) as usize]).collect();
            let want = pair_row_of(&f32_row);
            let mut decoded = vec![f32::NAN; n];
            (bf16.decode_nibbles)(&packed, &table, &mut decoded);
            let mut rounded = f32_row.clone();
            (bf16.pairs_in_place)(&mut rounded, n);
            for (what, got) in [("decoded", &decoded), ("rounded", &rounded)] {
                let lanes: Vec<u32> = got[..want.len()].iter().map(|v| v.to_bits()).collect();
                assert_eq!(lanes, want, "{} {what} n={n}", isa.name);
            }
            // Past the pairs, the row is untouched (a decoded row's NaNs are still there).
            assert!(decoded[want.len()..].iter().all(|v| v.is_nan()), "{} n={n}", isa.name);
        }
    }
}

#[test]
fn bf16_dot_rows_sum_the_rounded_products() {
    // Every row's dot product with one column, both rounded to bf16 pairs: the f64 sum of the
    // rounded factors' products up to f32 summation error; odd depths, one to nine rows.
    let mut rng = Rng::new(46);
    for isa in Isa::available() {
        let Some(bf16) = isa.bf16 else { continue };
        for case in 0..200 {
            let (k, rows) = (1 + rng.below(300), 1 + case % 9);
            let a: Vec<f32> = (0..rows * k).map(|_| rng.f32()).collect();
            let x: Vec<f32> = (0..k).map(|_| rng.f32()).collect();
            let (mut pa, mut px) = (a.clone(), x.clone());
            (bf16.pairs_in_place)(&mut pa, k);
            (bf16.pairs_in_place)(&mut px, k);
            let mut out = vec![f32::NAN; rows];
            (bf16.dot_rows)(&pa, k, &px, &mut out);
            for (r, &got) in out.iter().enumerate() {
                let row = &a[r * k..][..k];
                let want: f64 =
                    row.iter().zip(&x).map(|(&w, &v)| bf16_round(w) as f64 * bf16_round(v) as f64).sum();
                let scale: f64 = row.iter().zip(&x).map(|(&w, &v)| (w * v).abs() as f64).sum();
                assert!(
                    (got as f64 - want).abs() <= 1e-5 * (scale + 1.0),
                    "{} case {case} k={k} row {r}: {got} vs {want}",
                    isa.name
                );
            }
        }
    }
}

#[test]
fn bf16_round_ties_to_even_and_keeps_eight_bits() {
    assert_eq!(bf16_round(1.0), 1.0);
    // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to the even one, 1.
    assert_eq!(bf16_round(1.0 + 1.0 / 256.0), 1.0);
    assert_eq!(bf16_round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
    assert_eq!(bf16_round(-1.0 - 1.5 / 256.0), -1.0 - 2.0 / 256.0);
}

#[test]
fn gemm_rows_fused_rejects_short_rows() {
    for isa in Isa::available() {
        let Some(fused) = isa.gemm_rows_fused else { continue };
        let (a, b) = (vec![1.0; 4], vec![1.0; 8]);
        let mut rows = [vec![0.0; 6], vec![0.0; 5]];
        let short = std::panic::catch_unwind(move || {
            let mut dst: Vec<&mut [f32]> = rows.iter_mut().map(|r| &mut r[..]).collect();
            let out =
                FusedRows { dst: &mut dst, col: 2, bias: None, residual: None, act: FusedActivation::None };
            fused(&a, 2, &b, &[0, 4], 4, out);
        });
        assert!(short.is_err(), "{}: an output row one short was accepted", isa.name);
    }
}

#[test]
fn softmax_row_gives_the_same_bits_on_every_path_and_matches_the_definition() {
    let mut rng = Rng::new(43);
    for n in [1usize, 2, 15, 16, 17, 37, 100, 6625] {
        let mut xs: Vec<f32> = rng.vec(n).iter().map(|v| v * 30.0).collect();
        if n > 3 {
            xs[n / 2] = f32::NEG_INFINITY;
        }
        let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = xs.iter().map(|&v| (v as f64 - max).exp()).sum();
        let mut want = vec![0.0f32; n];
        (scalar::ISA.softmax_row)(&xs, &mut want);
        for (i, (&w, &x)) in want.iter().zip(&xs).enumerate() {
            let exact = (x as f64 - max).exp() / sum;
            assert!(
                (w as f64 - exact).abs() <= 1e-6 * exact.max(1e-30) + 1e-12,
                "n={n} [{i}]: {w} vs {exact}"
            );
        }
        for isa in Isa::available() {
            let mut got = vec![f32::NAN; n + 1];
            (isa.softmax_row)(&xs, &mut got[..n]);
            assert_eq!(&got[..n], &want[..], "{} n={n}", isa.name);
            assert!(got[n].is_nan(), "{} wrote past the row", isa.name);
        }
    }
    // A NaN is ignored by the maximum and spreads through the sum: every output NaN.
    let mut xs = vec![1.0f32; 40];
    xs[33] = f32::NAN;
    for isa in Isa::available() {
        let mut got = vec![0.0f32; 40];
        (isa.softmax_row)(&xs, &mut got);
        assert!(got.iter().all(|v| v.is_nan()), "{}", isa.name);
    }
}

#[test]
fn max_2x2_matches_scalar() {
    let mut rng = Rng::new(43);
    for isa in simd_paths() {
        for n in 0..70 {
            // Rows longer than needed (the pool passes exactly 2n, but a kernel must not read
            // past it either way), negative values, and ties.
            let extra = rng.below(3);
            let r0: Vec<f32> = rng.vec(2 * n + extra).iter().map(|v| (v - 0.5) * 8.0).collect();
            let r1: Vec<f32> = rng.vec(2 * n).iter().map(|v| ((v - 0.5) * 8.0).round()).collect();
            let (mut want, mut got) = (vec![f32::NAN; n], Guarded::new(&vec![f32::NAN; n], Edge::End));
            scalar::max_2x2(&r0, &r1, &mut want);
            // Both rows and the output against no-access pages (see `Guarded`).
            let (g0, g1) = (Guarded::new(&r0, Edge::End), Guarded::new(&r1, Edge::End));
            (isa.max_2x2)(g0.as_slice(), g1.as_slice(), got.as_mut_slice());
            let got = got.as_slice();
            assert_eq!(got, want, "{} max_2x2 n={n}", isa.name);
        }
        let short = std::panic::catch_unwind(|| (isa.max_2x2)(&[0.0; 7], &[0.0; 8], &mut [0.0; 4]));
        assert!(short.is_err(), "{}: a short input row was accepted", isa.name);
    }
}

#[test]
fn transpose_matches_the_definition_on_every_path() {
    let mut rng = Rng::new(53);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    // Shapes with whole tiles, odd tails on either side, single rows and columns, and empty ones.
    let mut shapes = vec![(0, 5), (5, 0), (1, 1), (1, 37), (37, 1), (8, 8), (16, 2304), (4, 4)];
    shapes.extend((0..40).map(|_| (1 + rng.below(40), 1 + rng.below(70))));
    for isa in std::iter::once(Isa::scalar()).chain(simd_paths()) {
        for &(rows, cols) in &shapes {
            let src = rng.vec(rows * cols);
            // Past the matrix: NaN that no path may overwrite.
            let mut got = vec![f32::NAN; rows * cols + 3];
            // The source against a no-access page (see `Guarded`).
            (isa.transpose)(Guarded::new(&src, Edge::End).as_slice(), rows, cols, &mut got);
            for r in 0..rows {
                for c in 0..cols {
                    let (v, want) = (got[c * rows + r], src[r * cols + c]);
                    assert_eq!(
                        v.to_bits(),
                        want.to_bits(),
                        "{} transpose {rows}x{cols} at ({r}, {c})",
                        isa.name
                    );
                }
            }
            assert_eq!(
                bits(&got[rows * cols..]),
                bits(&[f32::NAN; 3]),
                "{} wrote past {rows}x{cols}",
                isa.name
            );
        }
        let short = std::panic::catch_unwind(|| (isa.transpose)(&[0.0; 11], 3, 4, &mut [0.0; 12]));
        assert!(short.is_err(), "{}: a short source was accepted", isa.name);
        let short = std::panic::catch_unwind(|| (isa.transpose)(&[0.0; 12], 3, 4, &mut [0.0; 11]));
        assert!(short.is_err(), "{}: a short destination was accepted", isa.name);
    }
}

#[test]
fn deinterleave_matches_scalar() {
    let mut rng = Rng::new(47);
    // Bits, so that the untouched NaN past the outputs compares equal.
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for isa in simd_paths() {
        for n in 0..70 {
            // A source longer than needed (a row whose last value is a leading pad's partner):
            // no path may read or write past its pairs.
            let extra = rng.below(3);
            let src = rng.vec(2 * n + extra);
            let (mut want_even, mut want_odd) = (vec![f32::NAN; n + 2], vec![f32::NAN; n + 2]);
            let (mut even, mut odd) = (want_even.clone(), want_odd.clone());
            scalar::deinterleave(&src, &mut want_even[..n], &mut want_odd[..n]);
            // The source against a no-access page (see `Guarded`).
            (isa.deinterleave)(Guarded::new(&src, Edge::End).as_slice(), &mut even[..n], &mut odd[..n]);
            assert_eq!(bits(&even), bits(&want_even), "{} deinterleave even n={n}", isa.name);
            assert_eq!(bits(&odd), bits(&want_odd), "{} deinterleave odd n={n}", isa.name);
            for i in 0..n {
                assert_eq!((want_even[i], want_odd[i]), (src[2 * i], src[2 * i + 1]), "scalar pair {i}");
            }
        }
        let short = std::panic::catch_unwind(|| (isa.deinterleave)(&[0.0; 7], &mut [0.0; 4], &mut [0.0; 4]));
        assert!(short.is_err(), "{}: a short source was accepted", isa.name);
        let uneven = std::panic::catch_unwind(|| (isa.deinterleave)(&[0.0; 8], &mut [0.0; 4], &mut [0.0; 3]));
        assert!(uneven.is_err(), "{}: outputs of different lengths were accepted", isa.name);
    }
}

#[test]
fn decode_nibbles_matches_scalar() {
    let mut rng = Rng::new(31);
    for isa in simd_paths() {
        for n in 0..140usize {
            let packed: Vec<u8> = (0..n.div_ceil(2) + rng.below(3)).map(|_| rng.below(256) as u8).collect();
            let lut: [f32; 16] = std::array::from_fn(|_| rng.vec(1)[0]);
            let (mut want, mut got) = (vec![f32::NAN; n + 2], vec![f32::NAN; n + 2]);
            scalar::decode_nibbles(&packed, &lut, &mut want[..n]);
            (isa.decode_nibbles)(&packed, &lut, &mut got[..n]);
            // Bit-exact (a table lookup), and nothing written past `n`.
            assert_eq!(got[..n], want[..n], "{} n={n}", isa.name);
            assert!(got[n..].iter().all(|v| v.is_nan()), "{} n={n} wrote past the end", isa.name);
            // Exactly the bytes the indices need, against a no-access page: no load past them.
            let exact = Guarded::new(&packed[..n.div_ceil(2)], Edge::End);
            let mut again = vec![f32::NAN; n];
            (isa.decode_nibbles)(exact.as_slice(), &lut, &mut again);
            assert_eq!(again, want[..n], "{} n={n}, exact length", isa.name);
        }
        let short = std::panic::catch_unwind(|| (isa.decode_nibbles)(&[0; 4], &[0.0; 16], &mut [0.0; 9]));
        assert!(short.is_err(), "{}: 9 indices need 5 bytes", isa.name);
    }
}

#[test]
fn decode_packed_matches_scalar() {
    let mut rng = Rng::new(37);
    let mut vector_paths = 0;
    for isa in simd_paths() {
        let Some(decode) = isa.decode_packed else { continue };
        vector_paths += 1;
        for bits in 1..=7u8 {
            // Tables of exactly 2^bits entries and longer; every group tail on 16 lanes.
            for n in (0..70usize).chain([255, 256, 257, 1000]) {
                let need = (n * bits as usize).div_ceil(8);
                let packed: Vec<u8> = (0..need + rng.below(2)).map(|_| rng.below(256) as u8).collect();
                let extra = rng.below(2) * 5;
                let lut = rng.vec((1 << bits) + extra);
                let (mut want, mut got) = (vec![f32::NAN; n + 2], vec![f32::NAN; n + 2]);
                scalar::decode_packed(&packed, bits, &lut, &mut want[..n]);
                decode(&packed, bits, &lut, &mut got[..n]);
                // Bit-exact (a table lookup), and nothing written past `n`.
                assert_eq!(got[..n], want[..n], "{} bits={bits} n={n}", isa.name);
                assert!(
                    got[n..].iter().all(|v| v.is_nan()),
                    "{} bits={bits} n={n} wrote past the end",
                    isa.name
                );
                // Exactly the bytes the indices need, against a no-access page: the last
                // group's load must not read past them.
                let exact = Guarded::new(&packed[..need], Edge::End);
                let mut again = vec![f32::NAN; n];
                decode(exact.as_slice(), bits, &lut, &mut again);
                assert_eq!(again, want[..n], "{} bits={bits} n={n}, exact length", isa.name);
            }
        }
        let short_bytes = std::panic::catch_unwind(|| decode(&[0; 4], 5, &[0.0; 32], &mut [0.0; 7]));
        assert!(short_bytes.is_err(), "{}: 7 5-bit indices need 5 bytes", isa.name);
        let short_table = std::panic::catch_unwind(|| decode(&[0; 8], 6, &[0.0; 32], &mut [0.0; 8]));
        assert!(short_table.is_err(), "{}: 6-bit indices need 64 entries", isa.name);
        let eight = std::panic::catch_unwind(|| decode(&[0; 8], 8, &[0.0; 256], &mut [0.0; 8]));
        assert!(eight.is_err(), "{}: 8-bit indices are not this decoder's", isa.name);
    }
    if vector_paths == 0 {
        eprintln!("conformance: no path with a vector decode_packed on this CPU, skipped");
    }
}

#[test]
fn scalar_decode_packed_reads_the_spec_layout() {
    // Index i starts at bit i * bits, LSB first: 5-bit indices 1, 2, 3 and 31 are the number
    // 1 | 2 << 5 | 3 << 10 | 31 << 15 = 0x0F8C41, stored little-endian.
    let packed = [0x41u8, 0x8C, 0x0F];
    let lut: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let mut out = [0.0; 4];
    scalar::decode_packed(&packed, 5, &lut, &mut out);
    assert_eq!(out, [1.0, 2.0, 3.0, 31.0]);
}

#[test]
fn depthwise_rows_matches_scalar() {
    let mut rng = Rng::new(23);
    for isa in simd_paths() {
        for case in 0..400 {
            // Filters up to 7 rows (more than one pass of the SIMD kernels), every row-block tail,
            // columns with odd tails on every vector width.
            let shape = DepthwiseRows {
                kh: 1 + rng.below(7),
                kw: 1 + rng.below(7),
                ldb: 0,
                rows: 1 + rng.below(11),
                n: 1 + case % 71,
                ldc: 0,
                accumulate: case % 3 == 0,
                init: if case % 2 == 0 { 0.0 } else { rng.vec(1)[0] },
                clamp: match case % 5 {
                    0 => Some([0.0, f32::INFINITY]),
                    1 => Some([-0.5, 0.75]),
                    _ => None,
                },
            };
            let (pad_b, pad_c) = (rng.below(4), rng.below(4));
            let shape = DepthwiseRows { ldb: shape.n + shape.kw - 1 + pad_b, ldc: shape.n + pad_c, ..shape };
            let spare = rng.below(3);
            let w = rng.vec(shape.kh * shape.kw + spare);
            let b = rng.vec((shape.rows + shape.kh - 2) * shape.ldb + shape.kw - 1 + shape.n);
            let c0 = rng.vec((shape.rows - 1) * shape.ldc + shape.n);
            let mut want = c0.clone();
            scalar::depthwise_rows(&w, &b, &mut want, shape);
            // Input and output rows (exactly their length) against no-access pages.
            let mut got = Guarded::new(&c0, Edge::End);
            (isa.depthwise_rows)(&w, Guarded::new(&b, Edge::End).as_slice(), got.as_mut_slice(), shape);
            let scale = (shape.kh * shape.kw) as f32 + 1.0;
            for (idx, (g, w)) in got.as_slice().iter().zip(&want).enumerate() {
                let ok = if idx % shape.ldc < shape.n { close(*g, *w, scale) } else { g == w };
                assert!(ok, "{} {shape:?} at {idx}: {g} vs {w}", isa.name);
            }
        }
    }
}

#[test]
fn depthwise_in_place_matches_the_reference() {
    // Pads up to past the filter, planes smaller than the filter, outputs reaching past the
    // input, widths across one, two and three 16-column vectors.
    let mut rng = Rng::new(29);
    for isa in Isa::available() {
        type Reference = fn(&[f32], &[f32], &mut [f32], DepthwiseInPlace);
        let kernels: [(usize, _, Reference); 2] =
            [(1, isa.depthwise_s1, scalar::depthwise_s1), (2, isa.depthwise_s2, scalar::depthwise_s2)];
        for (stride, kernel, reference) in kernels {
            let Some(kernel) = kernel else { continue };
            for case in 0..400 {
                let (kh, kw) = (1 + rng.below(super::DEPTHWISE_IN_PLACE_MAX_ROWS), 1 + rng.below(7));
                let (in_h, in_w) = (1 + rng.below(20), 1 + case % 71);
                let (pad_top, pad_left) = (rng.below(kh + 1), rng.below(kw + 1));
                let out_h = (in_h + pad_top + rng.below(kh + 1)).saturating_sub(kh) / stride + 1;
                let out_w = (in_w + pad_left + rng.below(kw + 1)).saturating_sub(kw) / stride + 1;
                let clamp = match case % 4 {
                    0 => Some([0.0, f32::INFINITY]),
                    1 => Some([-0.5, 0.75]),
                    _ => None,
                };
                let init = if case % 2 == 0 { 0.0 } else { rng.vec(1)[0] };
                let shape =
                    DepthwiseInPlace { kh, kw, in_h, in_w, pad_top, pad_left, out_h, out_w, init, clamp };
                let (spare_w, spare_y) = (rng.below(3), rng.below(20));
                let w = rng.vec(kh * kw + spare_w);
                let x = rng.vec(in_h * in_w);
                let y0 = rng.vec(out_h * out_w + spare_y);
                let mut want = y0.clone();
                reference(&w, &x, &mut want, shape);
                // The plane against a no-access page on each side: a load that reaches past the
                // plane faults even where its lanes outside it are masked off.
                // The output too: a store past its spare elements faults.
                for edge in [Edge::Start, Edge::End] {
                    let mut got = Guarded::new(&y0, Edge::End);
                    kernel(&w, Guarded::new(&x, edge).as_slice(), got.as_mut_slice(), shape);
                    for (idx, (g, w)) in got.as_slice().iter().zip(&want).enumerate() {
                        let ok =
                            if idx < out_h * out_w { close(*g, *w, (kh * kw) as f32 + 1.0) } else { g == w };
                        assert!(ok, "{} stride {stride} {shape:?} at {idx}: {g} vs {w}", isa.name);
                    }
                }
            }
            let shape = DepthwiseInPlace {
                kh: 3,
                kw: 3,
                in_h: 4,
                in_w: 9,
                pad_top: 1,
                pad_left: 1,
                out_h: 2,
                out_w: 5,
                init: 0.0,
                clamp: None,
            };
            let (w, x) = (vec![1.0; 9], vec![1.0; 4 * 9]);
            for (what, w, x, len) in [
                ("weights", &w[..8], &x[..], 10),
                ("input", &w[..], &x[..35], 10),
                ("output", &w[..], &x[..], 9),
            ] {
                let short = std::panic::catch_unwind(|| kernel(w, x, &mut vec![0.0; len], shape));
                assert!(short.is_err(), "{} stride {stride}: short {what} must panic", isa.name);
            }
            let tall = DepthwiseInPlace { kh: super::DEPTHWISE_IN_PLACE_MAX_ROWS + 1, ..shape };
            let too_tall = std::panic::catch_unwind(|| kernel(&[0.0; 18], &x, &mut [0.0; 10], tall));
            assert!(too_tall.is_err(), "{} stride {stride}: a filter past the tallest must panic", isa.name);
        }
    }
}

#[test]
fn depthwise_3x3_matches_the_reference() {
    // Both strides, every output width up to the widest (one to four vectors, rows shorter than a
    // vector), heights from one row, padding before and after the input, several channels per
    // call, with and without bias and clamp; each channel checked against the scalar
    // in-place kernel.
    let mut rng = Rng::new(31);
    for isa in Isa::available() {
        let Some(kernel) = isa.depthwise_3x3 else { continue };
        for case in 0..800 {
            let stride = 1 + case % 2;
            let (pad_top, pad_left) = (rng.below(3), rng.below(2));
            let out_w = 1 + (case / 2) % super::DEPTHWISE_3X3_MAX_WIDTH;
            let out_h = 1 + rng.below(12);
            // Input sizes whose last output reads up to `stride` columns past the input (the
            // most the kernel takes) and up to 2 rows below it.
            let in_w = (stride * (out_w - 1) + 3).saturating_sub(pad_left + rng.below(stride + 1)).max(1);
            let in_h = (stride * (out_h - 1) + 3).saturating_sub(pad_top + rng.below(3)).max(1);
            let channels = 1 + rng.below(5);
            let (in_plane, out_plane) = (in_h * in_w, out_h * out_w);
            let clamp = match case % 4 {
                0 => Some([0.0, f32::INFINITY]),
                1 => Some([-0.5, 0.75]),
                _ => None,
            };
            let bias = (!case.is_multiple_of(3)).then(|| rng.vec(channels));
            let filters = rng.vec(9 * channels);
            let x = rng.vec(channels * in_plane);
            let spare = rng.below(20);
            let y0 = rng.vec(channels * out_plane + spare);
            let mut want = y0.clone();
            for c in 0..channels {
                let init = bias.as_ref().map_or(0.0, |b| b[c]);
                let one = DepthwiseInPlace {
                    kh: 3,
                    kw: 3,
                    in_h,
                    in_w,
                    pad_top,
                    pad_left,
                    out_h,
                    out_w,
                    init,
                    clamp,
                };
                let out = &mut want[c * out_plane..(c + 1) * out_plane];
                let reference = if stride == 1 { scalar::depthwise_s1 } else { scalar::depthwise_s2 };
                reference(&filters[9 * c..], &x[c * in_plane..], out, one);
            }
            let bias = bias.as_deref();
            let shape =
                DepthwiseChannels { in_h, in_w, out_h, out_w, stride, pad_top, pad_left, bias, clamp };
            // The planes against a no-access page on each side (see `Guarded`).
            for edge in [Edge::Start, Edge::End] {
                let x = Guarded::new(&x, edge);
                let mut got = y0.clone();
                let mut parts: Vec<&mut [f32]> = got.chunks_mut(out_plane).collect();
                kernel(&filters, x.as_slice(), 0..out_h, &mut parts, shape);
                for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                    let ok = if idx < channels * out_plane { close(*g, *w, 10.0) } else { g == w };
                    assert!(
                        ok,
                        "{} {channels} channels of {shape:?}, case {case} at {idx}: {g} vs {w}",
                        isa.name
                    );
                }
                // A band of rows, each channel's part on its own with spare floats after it: the
                // bits of the whole planes' rows, and nothing written past a part.
                let r0 = rng.below(out_h);
                let rows = r0..r0 + 1 + rng.below(out_h - r0);
                let len = rows.len() * out_w;
                let mut bands: Vec<Vec<f32>> = (0..channels).map(|_| rng.vec(len + 9)).collect();
                let before = bands.clone();
                let mut parts: Vec<&mut [f32]> = bands.iter_mut().map(|b| &mut b[..len]).collect();
                kernel(&filters, x.as_slice(), rows.clone(), &mut parts, shape);
                for (c, (band, before)) in bands.iter().zip(&before).enumerate() {
                    let whole = &got[c * out_plane + rows.start * out_w..][..len];
                    let same = band[..len].iter().zip(whole).all(|(b, w)| b.to_bits() == w.to_bits());
                    assert!(
                        same && band[len..] == before[len..],
                        "{} {channels} channels of {shape:?}, case {case}: rows {rows:?} of channel {c}",
                        isa.name
                    );
                }
            }
        }
        let shape = DepthwiseChannels {
            in_h: 3,
            in_w: 5,
            out_h: 3,
            out_w: 5,
            stride: 1,
            pad_top: 1,
            pad_left: 1,
            bias: None,
            clamp: None,
        };
        let (filters, x) = (vec![1.0; 18], vec![1.0; 30]);
        for (what, filters, x, len, shape) in [
            ("weights", &filters[..17], &x[..], 30, shape),
            ("input", &filters[..], &x[..29], 30, shape),
            ("output", &filters[..], &x[..], 29, shape),
            ("bias", &filters[..], &x[..], 30, DepthwiseChannels { bias: Some(&[0.0]), ..shape }),
            ("width", &filters[..], &x[..], 130, DepthwiseChannels { out_w: 65, out_h: 1, ..shape }),
            ("stride", &filters[..], &x[..], 30, DepthwiseChannels { stride: 3, ..shape }),
            ("padding", &filters[..], &x[..], 30, DepthwiseChannels { pad_left: 2, ..shape }),
            (
                "input row",
                &filters[..],
                &x[..],
                30,
                DepthwiseChannels { in_w: 4, in_h: 3, pad_left: 0, ..shape },
            ),
            ("input plane", &filters[..], &x[..], 30, DepthwiseChannels { in_w: 0, ..shape }),
        ] {
            let bad = std::panic::catch_unwind(|| {
                let mut y = vec![0.0; len];
                let mut parts: Vec<&mut [f32]> = y.chunks_mut(15).collect();
                kernel(filters, x, 0..shape.out_h, &mut parts, shape)
            });
            assert!(bad.is_err(), "{}: bad {what} must panic", isa.name);
        }
        // Rows past the plane, a part shorter than the rows, fewer parts than channels.
        for (what, rows, part, count) in [
            ("rows", 1..4, 10, 2),
            ("rows", std::ops::Range { start: 2, end: 1 }, 10, 2),
            ("part", 1..3, 9, 2),
            ("parts", 0..3, 15, 1),
        ] {
            let bad = std::panic::catch_unwind(|| {
                let mut y = [0.0; 30];
                let mut parts: Vec<&mut [f32]> =
                    y.chunks_mut(15).map(|p| &mut p[..part]).take(count).collect();
                kernel(&filters, &x, rows.clone(), &mut parts, shape)
            });
            assert!(bad.is_err(), "{}: bad {what} {rows:?} must panic", isa.name);
        }
    }
}

/// A `k`×`k` depthwise layer by its definition: `y(c, r, j) = bias[c] + sum w * x(stride * r + ky
/// - pad_top, stride * j + kx - pad_left)` with `x` zero outside each plane, then the clamp.
pub(super) fn depthwise_by_definition(w: &[f32], x: &[f32], k: usize, s: &DepthwiseChannels<'_>) -> Vec<f32> {
    let channels = w.len() / (k * k);
    let mut y = Vec::with_capacity(channels * s.out_h * s.out_w);
    for c in 0..channels {
        for r in 0..s.out_h {
            for j in 0..s.out_w {
                let mut sum = s.bias.map_or(0.0, |b| b[c]);
                for ky in 0..k {
                    for kx in 0..k {
                        let (row, col) = (s.stride * r + ky, s.stride * j + kx);
                        let (Some(row), Some(col)) =
                            (row.checked_sub(s.pad_top), col.checked_sub(s.pad_left))
                        else {
                            continue;
                        };
                        if row < s.in_h && col < s.in_w {
                            sum += w[(c * k + ky) * k + kx] * x[(c * s.in_h + row) * s.in_w + col];
                        }
                    }
                }
                y.push(s.clamp.map_or(sum, |[lo, hi]| sum.max(lo).min(hi)));
            }
        }
    }
    y
}

/// One random case of a many-channel depthwise kernel's operands (`k`×`k` filters at `stride`,
/// outputs up to `max_w` × `max_h`, pads below `k`, an input a few rows and columns shorter or
/// longer than the outputs read), if `takes` accepts its shape: checked against the definition,
/// and nothing written past the outputs.
#[allow(clippy::too_many_arguments)]
fn many_channel_case(
    rng: &mut Rng,
    name: &str,
    kernel: DepthwiseSmallFn,
    takes: fn(usize, usize, usize, usize, usize, usize) -> bool,
    case: usize,
    (max_w, max_h): (usize, usize),
    channels: usize,
) -> bool {
    let stride = 1 + case % 2;
    let k = 1 + (case / 2) % super::DEPTHWISE_SMALL_MAX_K;
    let (out_w, out_h) = (1 + rng.below(max_w), 1 + rng.below(max_h));
    let (pad_top, pad_left) = (rng.below(k), rng.below(k));
    if !takes(k, stride, out_h, out_w, pad_top, pad_left) {
        return false;
    }
    let reach = |out: usize, pad: usize| (stride * (out - 1) + k).saturating_sub(pad);
    let in_w = (reach(out_w, pad_left) + rng.below(4)).saturating_sub(rng.below(4)).max(1);
    let in_h = (reach(out_h, pad_top) + rng.below(4)).saturating_sub(rng.below(4)).max(1);
    let clamp = match case % 5 {
        0 => Some([0.0, f32::INFINITY]),
        1 => Some([-0.5, 0.75]),
        _ => None,
    };
    let bias = (!case.is_multiple_of(3)).then(|| rng.vec(channels));
    let filters = rng.vec(k * k * channels);
    let x = rng.vec(channels * in_h * in_w);
    let bias = bias.as_deref();
    let shape = DepthwiseChannels { in_h, in_w, out_h, out_w, stride, pad_top, pad_left, bias, clamp };
    let want = depthwise_by_definition(&filters, &x, k, &shape);
    let spare = rng.below(20);
    let y0 = rng.vec(want.len() + spare);
    // The planes against a no-access page on each side (see `Guarded`).
    for edge in [Edge::Start, Edge::End] {
        let mut got = y0.clone();
        kernel(&filters, Guarded::new(&x, edge).as_slice(), &mut got, shape, k);
        for (idx, g) in got.iter().enumerate() {
            let ok = match want.get(idx) {
                Some(w) => close(*g, *w, (k * k) as f32),
                None => *g == y0[idx],
            };
            assert!(ok, "{name} k={k} {channels} channels of {shape:?}, case {case} at {idx}: {g}");
        }
    }
    true
}

/// A many-channel depthwise kernel must panic on operands that do not hold what the shape says
/// and on shapes it does not take (`more`: cases of its own).
fn many_channel_rejects(name: &str, kernel: DepthwiseSmallFn, more: &[(&str, usize, DepthwiseChannels<'_>)]) {
    let shape = REJECTED;
    let (filters, x) = (vec![1.0; 50], vec![1.0; 30]);
    let mut cases = vec![
        ("weights", &filters[..49], &x[..], 30, shape, 5),
        ("input", &filters[..], &x[..29], 30, shape, 5),
        ("output", &filters[..], &x[..], 29, shape, 5),
        ("bias", &filters[..], &x[..], 30, DepthwiseChannels { bias: Some(&[0.0]), ..shape }, 5),
        ("stride", &filters[..], &x[..], 30, DepthwiseChannels { stride: 3, ..shape }, 5),
        ("padding", &filters[..], &x[..], 30, DepthwiseChannels { pad_left: 5, ..shape }, 5),
        ("filter side", &filters[..], &x[..], 30, shape, 8),
        ("input plane", &filters[..], &x[..], 30, DepthwiseChannels { in_w: 0, ..shape }, 5),
    ];
    cases.extend(more.iter().map(|&(what, len, shape)| (what, &filters[..], &x[..], len, shape, 5)));
    for (what, filters, x, len, shape, k) in cases {
        let bad = std::panic::catch_unwind(|| kernel(filters, x, &mut vec![0.0; len], shape, k));
        assert!(bad.is_err(), "{name}: bad {what} must panic");
    }
}

/// A shape every many-channel kernel takes, which [`many_channel_rejects`] varies.
const REJECTED: DepthwiseChannels<'static> = DepthwiseChannels {
    in_h: 3,
    in_w: 5,
    out_h: 3,
    out_w: 5,
    stride: 1,
    pad_top: 2,
    pad_left: 2,
    bias: None,
    clamp: None,
};

#[test]
fn depthwise_small_matches_the_definition() {
    // Both strides, filter sides 1-7, every output width up to two vectors, heights from one row
    // to a few row passes, pads from none to k - 1 on each side, inputs shorter and longer than
    // the outputs read, several channels per call, with and without bias and clamp.
    let mut rng = Rng::new(32);
    let mut taken = 0;
    let takes = |k, stride, out_h, out_w, pad_top, pad_left| {
        super::depthwise_small_plane(k, stride, out_h, out_w, pad_top, pad_left).is_some()
    };
    for isa in Isa::available() {
        let Some(kernel) = isa.depthwise_small else { continue };
        for case in 0..1500 {
            let channels = 1 + rng.below(4);
            let extent = (super::DEPTHWISE_SMALL_MAX_WIDTH, 20);
            taken +=
                usize::from(many_channel_case(&mut rng, isa.name, kernel, takes, case, extent, channels));
        }
        let more = [
            ("width", 34, DepthwiseChannels { out_w: 17, out_h: 1, ..REJECTED }),
            ("height", 2000, DepthwiseChannels { out_h: 400, ..REJECTED }),
        ];
        many_channel_rejects(isa.name, kernel, &more);
    }
    assert!(taken > 0 || Isa::available().iter().all(|isa| isa.depthwise_small.is_none()));
}

#[test]
fn depthwise_interleaved_matches_the_definition() {
    // As above, over outputs up to the largest plane taken and channel counts below, at and past
    // one and two blocks of 16.
    let mut rng = Rng::new(33);
    let mut taken = 0;
    for isa in Isa::available() {
        let Some(kernel) = isa.depthwise_interleaved else { continue };
        for case in 0..600 {
            let channels = [1, 3, 15, 16, 17, 33][case % 6];
            let takes = super::depthwise_interleaved_fits;
            taken +=
                usize::from(many_channel_case(&mut rng, isa.name, kernel, takes, case, (17, 17), channels));
        }
        let more = [("outputs", 2000, DepthwiseChannels { out_h: 200, ..REJECTED })];
        many_channel_rejects(isa.name, kernel, &more);
    }
    assert!(taken > 0 || Isa::available().iter().all(|isa| isa.depthwise_interleaved.is_none()));
}

#[test]
fn depthwise_rows_rejects_short_operands_and_handles_empty_filters() {
    let shape = DepthwiseRows {
        kh: 3,
        kw: 3,
        ldb: 6,
        rows: 2,
        n: 4,
        ldc: 4,
        accumulate: false,
        init: 0.0,
        clamp: None,
    };
    for isa in Isa::available() {
        let (w, b) = (vec![1.0; 9], vec![1.0; 3 * 6 + 6]);
        let mut c = vec![5.0; 8];
        (isa.depthwise_rows)(&w, &b, &mut c, shape);
        assert!(c.iter().all(|&v| v == 9.0), "{}: {c:?}", isa.name);
        let short_b = std::panic::catch_unwind(|| {
            let mut c = vec![0.0; 8];
            (isa.depthwise_rows)(&w, &b[..b.len() - 1], &mut c, shape);
        });
        assert!(short_b.is_err(), "{}: a short b must panic, not read past it", isa.name);
        let short_c = std::panic::catch_unwind(|| {
            let mut c = vec![0.0; 7];
            (isa.depthwise_rows)(&w, &b, &mut c, shape);
        });
        assert!(short_c.is_err(), "{}: a short c must panic, not write past it", isa.name);
        let short_w = std::panic::catch_unwind(|| {
            let mut c = vec![0.0; 8];
            (isa.depthwise_rows)(&w[..8], &b, &mut c, shape);
        });
        assert!(short_w.is_err(), "{}: a short filter must panic", isa.name);
        // An empty filter sums nothing: zeros, or c unchanged when accumulating.
        let mut c = vec![5.0; 8];
        (isa.depthwise_rows)(&[], &b, &mut c, DepthwiseRows { kh: 0, ..shape });
        assert!(c.iter().all(|&v| v == 0.0), "{}: {c:?}", isa.name);
        (isa.depthwise_rows)(&[], &b, &mut c, DepthwiseRows { kw: 0, accumulate: true, ..shape });
        assert!(c.iter().all(|&v| v == 0.0), "{}: {c:?}", isa.name);
    }
}

#[test]
fn gemm_rows_at_rejects_offsets_past_b() {
    for isa in Isa::available() {
        let (a, b, mut c) = (vec![1.0; 2], vec![1.0; 10], vec![0.0; 4]);
        let fits = std::panic::catch_unwind(|| {
            let mut c = vec![0.0; 4];
            (isa.gemm_rows_at)(&a, 2, &b, &[0, 6], 4, &mut c, 4);
            c
        });
        assert_eq!(fits.unwrap(), vec![2.0; 4], "{}", isa.name);
        let past = std::panic::catch_unwind(move || (isa.gemm_rows_at)(&a, 2, &b, &[0, 7], 4, &mut c, 4));
        assert!(past.is_err(), "{}: an offset whose row runs past b must panic, not read", isa.name);
    }
}

#[test]
fn epilogues_match_scalar_for_every_activation() {
    use crate::Activation;
    let acts = [
        Activation::None,
        Activation::Relu,
        Activation::Clip { min: -0.5, max: 1.5 },
        Activation::LeakyRelu(0.1),
        Activation::HardSigmoid { alpha: 0.2, beta: 0.5 },
        Activation::HardSwish,
        Activation::HardSwishAffine { scale: 0.75, shift: 0.5 },
        Activation::HardSigmoidPlus { alpha: 0.2, beta: 0.5, plus: 1.0 },
        Activation::Sigmoid,
    ];
    let mut rng = Rng::new(17);
    for isa in simd_paths() {
        for act in acts {
            for (width, rows) in [(1, 1), (7, 3), (16, 2), (33, 5), (64, 1)] {
                let pitch = width + rng.below(4);
                let src: Vec<f32> = rng.vec((rows - 1) * pitch + width).iter().map(|v| v * 12.0).collect();
                let residual = rng.vec(rows * width);
                for res in [None, Some(&residual[..])] {
                    let (mut want, mut got) = (vec![f32::NAN; rows * width], vec![f32::NAN; rows * width]);
                    (scalar::ISA.store_rows)(act, &src, pitch, 0.25, res, &mut want, width);
                    (isa.store_rows)(act, &src, pitch, 0.25, res, &mut got, width);
                    for (g, w) in got.iter().zip(&want) {
                        assert!(close(*g, *w, 4.0), "{} {act:?} store width {width}: {g} vs {w}", isa.name);
                    }
                }
                let (mut want, mut got) = (src.clone(), src.clone());
                (scalar::ISA.activate)(act, &mut want);
                (isa.activate)(act, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    assert!(close(*g, *w, 4.0), "{} {act:?} activate: {g} vs {w}", isa.name);
                }
            }
        }
    }
}

#[test]
fn dot_and_axpy_match_scalar() {
    let mut rng = Rng::new(12);
    for isa in simd_paths() {
        for n in 0..=140 {
            let extra = rng.below(3);
            let (a, b) = (rng.vec(n), rng.vec(n + extra));
            let (got, want) = ((isa.dot)(&a, &b), scalar::dot(&a, &b));
            assert!(close(got, want, n as f32), "{} dot n={n}: {got} vs {want}", isa.name);
            let s = rng.f32();
            let y0 = rng.vec(n);
            let (mut got, mut want) = (y0.clone(), y0);
            (isa.axpy)(&mut got, s, &b);
            scalar::axpy(&mut want, s, &b);
            for (g, w) in got.iter().zip(&want) {
                assert!(close(*g, *w, 2.0), "{} axpy n={n}: {g} vs {w}", isa.name);
            }
        }
    }
}

#[test]
fn mul_matches_scalar_bit_for_bit() {
    let mut rng = Rng::new(13);
    for isa in simd_paths() {
        for n in 0..=140 {
            let extra = rng.below(3);
            let (y0, x) = (rng.vec(n), rng.vec(n + extra));
            let (mut got, mut want) = (y0.clone(), y0);
            (isa.mul)(&mut got, &x);
            scalar::mul(&mut want, &x);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{} mul n={n}", isa.name);
        }
    }
}

#[test]
fn dot_rows_matches_a_dot_product_per_row() {
    let mut rng = Rng::new(14);
    for isa in simd_paths() {
        let Some(dot_rows) = isa.dot_rows else { continue };
        for case in 0..300 {
            // Row counts around the kernel's blocks of 8, depths around its vectors of 8.
            let (rows, k) = (case % 21, rng.below(70));
            let (a_extra, x_extra) = (rng.below(3), rng.below(3));
            let (a, x) = (rng.vec(rows * k + a_extra), rng.vec(k + x_extra));
            let mut got = vec![f32::NAN; rows + 2];
            dot_rows(&a, k, &x, &mut got[..rows]);
            for r in 0..rows {
                let want = scalar::dot(&a[r * k..][..k], &x[..k]);
                assert!(
                    close(got[r], want, k as f32),
                    "{} rows={rows} k={k} row {r}: {} vs {want}",
                    isa.name,
                    got[r]
                );
            }
            assert!(
                got[rows..].iter().all(|v| v.is_nan()),
                "{} rows={rows} k={k}: wrote past the rows",
                isa.name
            );
        }
        let short_rows = std::panic::catch_unwind(|| dot_rows(&[1.0; 11], 4, &[1.0; 4], &mut [0.0; 3]));
        let short_column = std::panic::catch_unwind(|| dot_rows(&[1.0; 12], 4, &[1.0; 3], &mut [0.0; 3]));
        assert!(short_rows.is_err() && short_column.is_err(), "{}: short operands accepted", isa.name);
    }
}

#[test]
fn dot_packed_matches_scalar_for_every_width() {
    let mut rng = Rng::new(13);
    for isa in simd_paths() {
        for bits in 1..=8u8 {
            let lut = rng.vec(1 << bits);
            for n in (0..=70).chain([127, 128, 129, 255, 1000]) {
                let bytes = (n * bits as usize).div_ceil(8);
                let row: Vec<u8> = (0..bytes).map(|_| rng.below(256) as u8).collect();
                let x = rng.vec(n);
                let want = scalar::dot_packed(&row, bits, &lut, &x);
                // The row (exactly its bytes) and the input against no-access pages.
                let (row, x) = (Guarded::new(&row, Edge::End), Guarded::new(&x, Edge::End));
                let got = (isa.dot_packed)(row.as_slice(), bits, &lut, x.as_slice());
                assert!(close(got, want, n as f32), "{} bits={bits} n={n}: {got} vs {want}", isa.name);
            }
        }
    }
}

#[test]
fn dot_packed_rows_matches_scalar_for_every_width() {
    let mut rng = Rng::new(19);
    for isa in Isa::available() {
        for bits in 1..=8u8 {
            for case in 0..36 {
                // Lengths around the 64- and 32-byte blocks of every width, plus odd tails.
                let n = match case % 4 {
                    0 => rng.below(70),
                    1 => (512 / bits as usize) * (1 + rng.below(3)),
                    2 => (512 / bits as usize) * (1 + rng.below(3)) + 1 + rng.below(130),
                    _ => 1000 + rng.below(1200),
                };
                let nrows = 1 + rng.below(5);
                let bytes = (n * bits as usize).div_ceil(8);
                // Some rows carry bytes past their last index (a caller may pass a longer slice).
                let rows: Vec<Vec<u8>> = (0..nrows)
                    .map(|_| (0..bytes + rng.below(3) * (case % 2)).map(|_| rng.below(256) as u8).collect())
                    .collect();
                // Some cases give every row one shared table.
                let shared = case % 5 == 1;
                let luts: Vec<[f32; 256]> = (0..if shared { 1 } else { nrows })
                    .map(|_| {
                        let mut t = [0.0f32; 256];
                        for v in &mut t[..1 << bits] {
                            *v = rng.f32();
                        }
                        t
                    })
                    .collect();
                let x = rng.vec(n);
                // Half the cases give `xp` room to zero-pad the last block (the kernels then
                // read it as a block), the others just `x`'s length (they take the row tails).
                let padded = case % 3 == 0;
                let len = if padded { n.next_multiple_of(super::GEMV_BLOCK) } else { n + rng.below(3) };
                let mut xp = vec![f32::NAN; len];
                (isa.gemv_prepare)(bits, &x, &mut xp);
                // xp holds x's values, plus zeros where a path padded its last block.
                let nonzero = |v: &[f32]| {
                    let mut v: Vec<f32> = v.iter().copied().filter(|v| *v != 0.0 && !v.is_nan()).collect();
                    v.sort_by(f32::total_cmp);
                    v
                };
                assert_eq!(
                    nonzero(&x),
                    nonzero(&xp),
                    "{} bits={bits} n={n}: xp is not a permutation of x",
                    isa.name
                );
                assert!(
                    xp[..n].iter().all(|v| !v.is_nan()),
                    "{} bits={bits} n={n}: xp[..n] unwritten",
                    isa.name
                );
                // Every row, the input and the prepared input against no-access pages.
                let guarded: Vec<Guarded<u8>> = rows.iter().map(|r| Guarded::new(r, Edge::End)).collect();
                let refs: Vec<&[u8]> = guarded.iter().map(Guarded::as_slice).collect();
                let (gx, gxp) = (Guarded::new(&x, Edge::End), Guarded::new(&xp, Edge::End));
                let mut got = vec![f32::NAN; nrows + 1];
                (isa.dot_packed_rows)(&refs, bits, &luts, gx.as_slice(), gxp.as_slice(), &mut got);
                assert!(got[nrows].is_nan(), "{}: wrote past rows.len() outputs", isa.name);
                for (r, row) in rows.iter().enumerate() {
                    let want = scalar::dot_packed(row, bits, &luts[if shared { 0 } else { r }], &x);
                    let g = got[r];
                    assert!(
                        close(g, want, n as f32),
                        "{} bits={bits} n={n} row {r}/{nrows} (shared table: {shared}): {g} vs {want}",
                        isa.name
                    );
                }
            }
        }
    }
}

#[test]
fn dot_nibble_rows_f16_matches_the_widened_tables() {
    // Every path that has it gives what its `dot_packed_rows` gives with the f16 centroids
    // widened (the same kernel, so the same bits): codebooks of 1-16 entries (indices past them
    // weigh 0), 1-9 rows (whole and ragged groups of rows), row lengths around the 128-index
    // blocks with odd tails, `xp` zero-padded to a whole block or not (then the tails go through
    // `dot_packed`), rows carrying bytes past their last index.
    let mut rng = Rng::new(23);
    for isa in Isa::available() {
        let Some(dot) = isa.dot_nibble_rows_f16 else { continue };
        for case in 0..60 {
            let n = match case % 4 {
                0 => 1 + rng.below(70),
                1 => 128 * (1 + rng.below(3)),
                2 => 128 * (1 + rng.below(4)) + 1 + rng.below(127),
                _ => 144 * (1 + rng.below(4)),
            };
            let nrows = 1 + rng.below(9);
            let bytes = n.div_ceil(2);
            let rows: Vec<Vec<u8>> = (0..nrows)
                .map(|_| (0..bytes + rng.below(3) * (case % 2)).map(|_| rng.below(256) as u8).collect())
                .collect();
            let tables: Vec<Vec<half::f16>> = (0..nrows)
                .map(|_| (0..1 + rng.below(16)).map(|_| half::f16::from_f32(rng.f32() - 0.5)).collect())
                .collect();
            let luts: Vec<[f32; 256]> = tables
                .iter()
                .map(|t| {
                    let mut l = [0.0f32; 256];
                    t.iter().zip(&mut l).for_each(|(c, v)| *v = c.to_f32());
                    l
                })
                .collect();
            let x = rng.vec(n);
            let padded = case % 3 != 0;
            let len = if padded { n.next_multiple_of(super::GEMV_BLOCK) } else { n };
            let mut xp = vec![f32::NAN; len];
            (isa.gemv_prepare)(4, &x, &mut xp);
            let refs: Vec<&[u8]> = rows.iter().map(|r| &r[..]).collect();
            let trefs: Vec<&[half::f16]> = tables.iter().map(|t| &t[..]).collect();
            let mut got = vec![f32::NAN; nrows + 1];
            dot(&refs, &trefs, &x, &xp, &mut got);
            assert!(got[nrows].is_nan(), "{}: wrote past rows.len() outputs", isa.name);
            let mut want = vec![f32::NAN; nrows];
            (isa.dot_packed_rows)(&refs, 4, &luts, &x, &xp, &mut want);
            assert_eq!(got[..nrows], want[..], "{} n={n} rows={nrows} padded={padded}", isa.name);
            for (r, row) in rows.iter().enumerate() {
                let scalar = scalar::dot_packed(row, 4, &luts[r], &x);
                assert!(
                    close(got[r], scalar, n as f32),
                    "{} n={n} row {r}: {} vs {scalar}",
                    isa.name,
                    got[r]
                );
            }
        }
        // Caller bugs panic: a table per row, at most 16 entries each, an output per row.
        let (row, x) = ([0x21u8; 64], vec![1.0f32; 128]);
        let table = [half::f16::ONE; 17];
        let panics = |rows: &[&[u8]], tables: &[&[half::f16]], out: usize| {
            std::panic::catch_unwind(|| dot(rows, tables, &x, &x, &mut vec![0.0; out])).is_err()
        };
        assert!(panics(&[&row, &row], &[&table[..16]], 2), "{}: too few tables", isa.name);
        assert!(panics(&[&row], &[&table[..]], 1), "{}: a table of 17 entries", isa.name);
        assert!(panics(&[&row, &row], &[&table[..16], &table[..2]], 1), "{}: too few outputs", isa.name);
        // Bytes 0x21 are indices 1 and 2 by turns; a table of 2 entries weighs index 2 as 0.
        let mut out = [0.0f32; 2];
        dot(&[&row, &row], &[&table[..16], &table[..2]], &x, &x, &mut out);
        assert_eq!(out, [128.0, 64.0], "{}", isa.name);
    }
}

#[test]
fn dot_packed_rows_rejects_short_operands() {
    for isa in Isa::available() {
        let (row, lut, x) = ([0x21u8; 64], [[1.0f32; 256]; 2], vec![1.0f32; 128]);
        let xp = x.clone();
        let mut out = [0.0f32; 2];
        let rows: [&[u8]; 2] = [&row, &row];
        (isa.dot_packed_rows)(&rows, 4, &lut, &x, &xp, &mut out);
        assert_eq!(out, [128.0, 128.0], "{}", isa.name);
        let short_xp = std::panic::catch_unwind(|| {
            let mut out = [0.0f32; 2];
            (isa.dot_packed_rows)(&rows, 4, &lut, &x, &xp[..100], &mut out)
        });
        assert!(short_xp.is_err(), "{}: a short prepared input must panic, not read", isa.name);
        let short_out = std::panic::catch_unwind(|| {
            let mut out = [0.0f32; 1];
            (isa.dot_packed_rows)(&rows, 4, &lut, &x, &xp, &mut out)
        });
        assert!(short_out.is_err(), "{}: too few outputs must panic", isa.name);
        // One table is shared by every row; two for three rows is a caller bug.
        let mut shared = [0.0f32; 2];
        (isa.dot_packed_rows)(&rows, 4, &lut[..1], &x, &xp, &mut shared);
        assert_eq!(shared, [128.0, 128.0], "{}", isa.name);
        let short_luts = std::panic::catch_unwind(|| {
            let mut out = [0.0f32; 3];
            (isa.dot_packed_rows)(&[&row, &row, &row], 4, &lut, &x, &xp, &mut out)
        });
        assert!(short_luts.is_err(), "{}: too few tables must panic", isa.name);
    }
}

#[test]
fn permute_blocks_orders_words_by_index() {
    // 2 lanes of 4 indices per block: lane l holds columns 4l..4l+3.
    let x: Vec<f32> = (0..19).map(|v| v as f32).collect();
    let mut xp = vec![0.0; 20];
    super::permute_blocks(&x, &mut xp, 2, 4);
    let block = [0.0, 4.0, 1.0, 5.0, 2.0, 6.0, 3.0, 7.0];
    let want: Vec<f32> =
        block.iter().chain(&block.map(|v| v + 8.0)).copied().chain([16.0, 17.0, 18.0]).collect();
    assert_eq!(&xp[..19], &want[..]);
}

#[test]
fn by_name_rejects_unknown_and_finds_available() {
    assert!(Isa::by_name("sse9").is_err());
    assert!(Isa::by_name("").is_err());
    for isa in Isa::available() {
        assert_eq!(Isa::by_name(isa.name).unwrap(), isa);
    }
    assert_eq!(Isa::by_name("scalar").unwrap().name, "scalar");
}

/// A random layer for [`DepthwisePlane`]: filters up to 7×7 over planes up to 20×24.
fn random_plane_layer(rng: &mut Rng) -> Option<Conv2dParams> {
    let in_w = 1 + rng.below(24);
    crate::testutil::same_width_depthwise(rng, [7, 7], in_w, 20)
}

#[test]
fn depthwise_plane_reference_is_a_convolution() {
    // The scalar reference reads the plane's masks; here it meets plain border tests.
    let mut rng = Rng::new(31);
    for _ in 0..300 {
        let Some(p) = random_plane_layer(&mut rng) else { continue };
        let plane = DepthwisePlane::new(&p).expect("a stride-1 same-width depthwise layer");
        let (w, x) = (rng.vec(p.k_h * p.k_w), rng.vec(p.in_h * p.in_w));
        let mut got = vec![f32::NAN; p.out_h * p.out_w];
        scalar::depthwise_plane(&w, &x, &mut got, &plane, 0.25, None);
        for (i, &g) in got.iter().enumerate() {
            let (oy, ox) = (i / p.out_w, i % p.out_w);
            let mut want = 0.25;
            for ky in 0..p.k_h {
                for kx in 0..p.k_w {
                    let iy = (oy + ky * p.dil_h).checked_sub(p.pad_top).filter(|&iy| iy < p.in_h);
                    let ix = (ox + kx * p.dil_w).checked_sub(p.pad_left).filter(|&ix| ix < p.in_w);
                    if let (Some(iy), Some(ix)) = (iy, ix) {
                        want += w[ky * p.k_w + kx] * x[iy * p.in_w + ix];
                    }
                }
            }
            assert!(close(g, want, (p.k_h * p.k_w) as f32 + 1.0), "{p:?} at {i}: {g} vs {want}");
        }
    }
    let layer = std::iter::repeat_with(|| random_plane_layer(&mut rng)).flatten().next().unwrap();
    let strided = Conv2dParams { stride_w: 2, out_w: 2, ..layer };
    assert!(DepthwisePlane::new(&strided).is_none(), "stride 2 is not a plane layer");
}

#[test]
fn depthwise_plane_matches_the_reference() {
    let mut rng = Rng::new(37);
    for isa in Isa::available() {
        let Some(kernel) = isa.depthwise_plane else { continue };
        for case in 0..400 {
            let Some(p) = random_plane_layer(&mut rng) else { continue };
            let plane = DepthwisePlane::new(&p).unwrap();
            let clamp = match case % 4 {
                0 => Some([0.0, f32::INFINITY]),
                1 => Some([-0.5, 0.75]),
                _ => None,
            };
            let init = if case % 2 == 0 { 0.0 } else { rng.vec(1)[0] };
            // Spare weights and elements past the plane must be neither read nor written.
            let (spare_w, spare_y) = (rng.below(3), rng.below(20));
            let w = rng.vec(plane.taps() + spare_w);
            let x = rng.vec(p.in_h * p.in_w);
            let y0 = rng.vec(plane.len() + spare_y);
            let mut want = y0.clone();
            scalar::depthwise_plane(&w, &x, &mut want, &plane, init, clamp);
            // The plane against a no-access page on each side (see `Guarded`).
            for edge in [Edge::Start, Edge::End] {
                let mut got = y0.clone();
                kernel(&w, Guarded::new(&x, edge).as_slice(), &mut got, &plane, init, clamp);
                for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                    let ok =
                        if idx < plane.len() { close(*g, *w, plane.taps() as f32 + 1.0) } else { g == w };
                    assert!(ok, "{} {p:?} at {idx}: {g} vs {w}", isa.name);
                }
            }
        }
        let layer = std::iter::repeat_with(|| random_plane_layer(&mut rng)).flatten().next().unwrap();
        let p = Conv2dParams { in_h: 5, out_h: 5, pad_top: 1, ..layer };
        let plane = DepthwisePlane::new(&p).unwrap();
        let (w, x) = (vec![1.0; plane.taps()], vec![1.0; p.in_h * p.in_w]);
        let mut y = vec![0.0; plane.len()];
        for (what, w, x, len) in [
            ("weights", &w[..plane.taps() - 1], &x[..], plane.len()),
            ("input", &w[..], &x[..x.len() - 1], plane.len()),
            ("output", &w[..], &x[..], plane.len() - 1),
        ] {
            let plane = &plane;
            let short = std::panic::catch_unwind(|| kernel(w, x, &mut vec![0.0; len], plane, 0.0, None));
            assert!(short.is_err(), "{}: short {what} must panic", isa.name);
        }
        kernel(&w, &x, &mut y, &plane, 0.0, None);
    }
}

/// The int8 kernels of every SIMD path that has them, against the scalar reference: ranges,
/// quantization (exact, rounding included) and the dot-product GEMM (exact sums; the f32 scale
/// and offset may round differently when fused).
#[test]
fn int8_kernels_match_scalar() {
    use super::int8::{self, U8Range, INT8_PIXEL_ALIGN};
    let mut rng = Rng::new(21);
    let paths: Vec<(Isa, int8::Int8ConvKernels)> =
        simd_paths().into_iter().filter_map(|isa| Some((isa, isa.int8?.conv?))).collect();
    if paths.is_empty() {
        eprintln!("conformance: no SIMD path with int8 convolution kernels on this CPU/build, skipped");
    }
    for (isa, kern) in paths {
        for case in 0..300 {
            let k = 1 + rng.below(70);
            let n = 1 + case % 83usize;
            let ldx = n.next_multiple_of(INT8_PIXEL_ALIGN) + INT8_PIXEL_ALIGN * rng.below(2);
            // Channel planes at scattered offsets, as a block of pixels inside larger planes.
            let extra = rng.below(100);
            let mut x: Vec<f32> = rng.vec(n + extra).iter().map(|v| v * 3.0 - 0.5).collect();
            if case % 5 == 0 {
                // NaNs (one value in 8) are skipped by the range scan, as `f32::min` skips them,
                // wherever they fall, the last vector of a row included.
                for v in x.iter_mut() {
                    if rng.below(8) == 0 {
                        *v = f32::NAN;
                    }
                }
            }
            let offs: Vec<usize> = (0..k).map(|_| rng.below(extra + 1)).collect();
            let want_range = int8::min_max(&x, &offs, n);
            // The planes against a no-access page (see `Guarded`), for the range scan and the
            // quantizer.
            let gx = Guarded::new(&x, Edge::End);
            assert_eq!(
                (kern.min_max)(gx.as_slice(), &offs, n),
                want_range,
                "{} min_max k={k} n={n}",
                isa.name
            );
            let range = if case % 7 == 1 {
                // The middle 1/512 of the values' span: levels far below 0 and far above 255
                // (past 2^15) clamp.
                let (mid, half) =
                    ((want_range[0] + want_range[1]) / 2.0, (want_range[1] - want_range[0]) / 1024.0);
                U8Range::new(mid - half, mid + half)
            } else {
                U8Range::new(want_range[0], want_range[1])
            };
            let kq = k.next_multiple_of(4);
            let (mut want_q, mut got_q) = (vec![7u8; kq * ldx], vec![7u8; kq * ldx]);
            int8::quantize(&x, &offs, n, range, &mut want_q, ldx);
            (kern.quantize)(gx.as_slice(), &offs, n, range, &mut got_q, ldx);
            assert_eq!(got_q, want_q, "{} quantize k={k} n={n} ldx={ldx}", isa.name);

            let m = 1 + rng.below(23);
            let ldc = n + rng.below(5);
            let mut w: Vec<i8> = (0..m * kq).map(|_| (rng.below(255) as i32 - 127) as i8).collect();
            for row in w.chunks_exact_mut(kq) {
                row[k..].fill(0);
            }
            let mul: Vec<f32> = rng.vec(m).iter().map(|v| v * 1e-3).collect();
            let add = rng.vec(m);
            let c0 = rng.vec((m - 1) * ldc + n);
            let (mut want, mut got) = (c0.clone(), c0.clone());
            int8::gemm(&w, kq, &want_q, ldx, n, &mul, &add, &mut want, ldc);
            let (gw, gq) = (Guarded::new(&w, Edge::End), Guarded::new(&want_q, Edge::End));
            (kern.gemm)(gw.as_slice(), kq, gq.as_slice(), ldx, n, &mul, &add, &mut got, ldc);
            for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                let ok = if idx % ldc < n { (g - w).abs() <= 1e-6 * w.abs().max(1.0) } else { g == w };
                assert!(ok, "{} gemm m={m} k={k} n={n} ldx={ldx} ldc={ldc} at {idx}: {g} vs {w}", isa.name);
            }
        }
    }
}

/// The int8 GEMV on 4-bit rows of every SIMD path that has one, against the scalar reference
/// (exact), on row counts that leave partial row groups and depths that end mid-block and
/// mid-byte.
#[test]
fn int8_dot_nibbles_matches_scalar() {
    use super::int8::{self, NIBBLE_BLOCK};
    let mut rng = Rng::new(22);
    let paths: Vec<_> =
        simd_paths().into_iter().filter_map(|isa| Some((isa.name, isa.int8?.dot_nibbles?))).collect();
    if paths.is_empty() {
        eprintln!("conformance: no SIMD path with an int8 GEMV on this CPU/build, skipped");
    }
    for (name, dot) in paths {
        for case in 0..200 {
            let k = 1 + (case * 37 + rng.below(50)) % 700;
            let m = 1 + rng.below(9);
            let x: Vec<f32> = rng.vec(k).iter().map(|v| v * 3.0).collect();
            let mut xp = vec![5i8; k.next_multiple_of(NIBBLE_BLOCK)];
            int8::prepare_nibbles(&x, 127.0 / 3.0, &mut xp);
            let rows: Vec<Vec<u8>> = (0..m)
                .map(|_| (0..k.div_ceil(2) + rng.below(3)).map(|_| rng.below(256) as u8).collect())
                .collect();
            // Each row holds exactly its bytes, against a no-access page, as does the input.
            let rows: Vec<Guarded<u8>> =
                rows.iter().map(|r| Guarded::new(&r[..k.div_ceil(2)], Edge::End)).collect();
            let rows: Vec<&[u8]> = rows.iter().map(Guarded::as_slice).collect();
            let tables: Vec<[u8; 16]> =
                (0..m).map(|_| std::array::from_fn(|_| rng.below(256) as u8)).collect();
            let (mut want, mut got) = (vec![0; m], vec![0; m]);
            int8::dot_nibbles(&rows, &tables, &xp, k, &mut want);
            dot(&rows, &tables, Guarded::new(&xp, Edge::End).as_slice(), k, &mut got);
            assert_eq!(got, want, "{name} k={k} m={m}");
        }
        // The extremes, where 16-bit pair sums would saturate if a path let them: activations
        // at ±127 and table entries 0 and 255 (s8 weights -128 and 127), with one sign per row
        // and alternating signs.
        let k: usize = 700;
        let mut xp = vec![0i8; k.next_multiple_of(NIBBLE_BLOCK)];
        for (sign, first) in [(1.0f32, 0u8), (-1.0, 0), (1.0, 255), (-1.0, 255)] {
            let x: Vec<f32> = (0..k).map(|i| if i % 3 == 2 { -sign } else { sign }).collect();
            int8::prepare_nibbles(&x, 127.0, &mut xp);
            let rows: Vec<Vec<u8>> = vec![vec![0x00; k / 2], vec![0xFF; k / 2], vec![0xF0; k / 2]];
            let rows: Vec<&[u8]> = rows.iter().map(|r| &r[..]).collect();
            let table: [u8; 16] = std::array::from_fn(|i| if i == 0 { first } else { 255 - first });
            let tables = vec![table; rows.len()];
            let (mut want, mut got) = (vec![0; 3], vec![0; 3]);
            int8::dot_nibbles(&rows, &tables, &xp, k, &mut want);
            dot(&rows, &tables, &xp, k, &mut got);
            assert_eq!(got, want, "{name} extremes, sign {sign}, table[0] {first}");
        }
    }
}
