//! Every path's [`Isa::gemm_rows_fused`] against the scalar reference on every small shape of its
//! register tiles and on special values (the random cases of `conformance` rarely reach either).

use super::{scalar, FusedActivation, FusedRows, GemmRowsFusedFn, Isa, ResidualRows};
use crate::arch::evenly_spaced;
use crate::testutil::Rng;

/// The most rows of any path's fused register tile (AVX2 takes 6, AVX-512 and NEON 8).
const TILE_ROWS: usize = 8;
/// The most columns of any path's fused register tile (two vectors of 16 on AVX-512).
const TILE_COLS: usize = 32;

/// The paths with a fused kernel, each with it.
fn fused_paths() -> Vec<(&'static str, GemmRowsFusedFn)> {
    let paths: Vec<_> = Isa::available()
        .into_iter()
        .filter(|isa| isa.name != "scalar")
        .filter_map(|isa| Some((isa.name, isa.gemm_rows_fused?)))
        .collect();
    eprintln!("conformance_fused: paths {:?}", paths.iter().map(|p| p.0).collect::<Vec<_>>());
    paths
}

/// One call's operands past `a`, `k`, `b`, `offs` and `n`.
struct Out<'a> {
    m: usize,
    col: usize,
    bias: Option<&'a [f32]>,
    residual: Option<ResidualRows<'a>>,
    act: FusedActivation<'a>,
}

/// Runs `f` into `m` rows of NaN, two values wider than `col + n`, and returns them.
fn run(
    f: GemmRowsFusedFn,
    a: &[f32],
    k: usize,
    b: &[f32],
    offs: &[usize],
    n: usize,
    o: &Out,
) -> Vec<Vec<f32>> {
    let mut rows = vec![vec![f32::NAN; o.col + n + 2]; o.m];
    let mut dst: Vec<&mut [f32]> = rows.iter_mut().map(|r| &mut r[..]).collect();
    let out = FusedRows { dst: &mut dst, col: o.col, bias: o.bias, residual: o.residual, act: o.act };
    f(a, k, b, offs, n, out);
    rows
}

/// Every activation the tile applies, with slopes of both signs (and 0) for the leaky one.
fn activations(slopes: &[f32]) -> [FusedActivation<'_>; 6] {
    [
        FusedActivation::None,
        FusedActivation::Clamp([0.0, f32::INFINITY]),
        FusedActivation::Clamp([-0.5, 6.0]),
        FusedActivation::HardSwish { scale: 1.0, shift: 0.0 },
        FusedActivation::HardSwish { scale: 0.5, shift: -1.0 },
        FusedActivation::Leaky(slopes),
    ]
}

/// Every row count up to the largest tile and one more, every column count up to two of the
/// widest strips and one more (each partial vector), residuals for fewer rows than the tile,
/// listed and evenly spaced rows of `b`: each cell close to the reference, nothing written
/// outside the cells.
#[test]
fn fused_matches_scalar_on_every_small_shape() {
    for (name, fused) in fused_paths() {
        let mut rng = Rng::new(51);
        let slopes: Vec<f32> = (0..TILE_ROWS + 1).map(|r| r as f32 * 0.25 - 1.0).collect();
        for m in 1..=TILE_ROWS + 1 {
            for n in 1..=2 * TILE_COLS + 1 {
                let k = 1 + (m + n) % 6;
                let a: Vec<f32> = rng.vec(m * k).iter().map(|v| v * 3.0).collect();
                let b = rng.vec(k * (n + 3));
                // Rows of `b` `n + 3` apart, forwards (stepped through) or backwards (listed).
                let backwards = (m + n) % 2 == 1;
                let offs: Vec<usize> =
                    (0..k).map(|p| if backwards { k - 1 - p } else { p } * (n + 3)).collect();
                assert_eq!(evenly_spaced(&offs).is_none(), backwards && k > 1);
                let bias = rng.vec(m);
                let res_rows = (m + n) % (m + 1);
                let pitch = n + 1;
                let res = rng.vec(res_rows.max(1) * pitch);
                for act in activations(&slopes) {
                    let o = Out {
                        m,
                        col: n % 3,
                        bias: (n % 4 != 0).then_some(&bias[..]),
                        residual: Some(ResidualRows { data: &res, pitch, rows: res_rows }),
                        act,
                    };
                    let want = run(scalar::gemm_rows_fused, &a, k, &b, &offs, n, &o);
                    let got = run(fused, &a, k, &b, &offs, n, &o);
                    for (r, (g, w)) in got.iter().zip(&want).enumerate() {
                        for (j, (g, w)) in g.iter().zip(w).enumerate() {
                            let ok = if (o.col..o.col + n).contains(&j) {
                                (g - w).abs() <= 1e-5 * (3.0 * k as f32 + 3.0)
                            } else {
                                g.is_nan()
                            };
                            assert!(ok, "{name} m {m} n {n} k {k} {act:?} row {r} col {j}: {g} vs {w}");
                        }
                    }
                }
            }
        }
    }
}

/// Panels of several whole register tiles and a partial one, over depths from 1 to past a
/// column block's L1 share, one call after another on the same thread (a path may keep a
/// packed copy of the weights between calls: NEON does): each cell close to the reference.
#[test]
fn fused_matches_scalar_on_panels_of_many_tiles_and_deep_rows() {
    let mut rng = Rng::new(53);
    let slopes: Vec<f32> = (0..48).map(|r| r as f32 * 0.05 - 1.0).collect();
    for (name, fused) in fused_paths() {
        for (m, k, n) in [(48, 300, 37), (16, 1, 9), (24, 64, 130), (17, 700, 12), (48, 5, 64), (8, 2000, 5)]
        {
            let a = rng.vec(m * k);
            let b = rng.vec(k * n);
            let offs: Vec<usize> = (0..k).map(|p| p * n).collect();
            let bias = rng.vec(m);
            let res = rng.vec(m * n);
            let act = activations(&slopes)[(m + k) % 6];
            let o = Out {
                m,
                col: 1,
                bias: Some(&bias),
                residual: Some(ResidualRows { data: &res, pitch: n, rows: m }),
                act,
            };
            let want = run(scalar::gemm_rows_fused, &a, k, &b, &offs, n, &o);
            let got = run(fused, &a, k, &b, &offs, n, &o);
            for (r, (g, w)) in got.iter().zip(&want).enumerate() {
                for (j, (g, w)) in g.iter().zip(w).enumerate() {
                    let ok =
                        if (1..1 + n).contains(&j) { (g - w).abs() <= 1e-5 * k as f32 } else { g.is_nan() };
                    assert!(ok, "{name} m {m} n {n} k {k} row {r} col {j}: {g} vs {w}");
                }
            }
        }
    }
}

/// NaN, infinities, zeros of both signs and each activation's bends through every activation,
/// with and without a residual: exactly the reference's results (sums of one product by 1 are
/// exact), NaN where it gives NaN.
#[test]
fn fused_epilogue_matches_scalar_on_special_values() {
    // `near`: just inside HardSwish's bends at -3 and 3.
    let (nan, inf, tiny, near) = (f32::NAN, f32::INFINITY, f32::MIN_POSITIVE, 3.0f32.next_down());
    let specials = [
        nan, inf, -inf, 0.0, -0.0, -3.0, 3.0, -near, near, -0.5, 6.0, 6.5, -1.0, 1e30, -1e30, tiny, -tiny,
        0.25, -0.25, 1.5, -7.0,
    ];
    let (m, n) = (TILE_ROWS + 1, specials.len());
    let a = vec![1.0; m];
    let bias: Vec<f32> = (0..m).map(|r| [0.0, 0.5, -0.5, -3.0][r % 4]).collect();
    let res: Vec<f32> = specials.iter().rev().cycle().take(5 * n).copied().collect();
    let slopes: Vec<f32> = (0..m).map(|r| [0.1, -2.0, 0.0][r % 3]).collect();
    for (name, fused) in fused_paths() {
        for act in activations(&slopes) {
            for residual in [None, Some(ResidualRows { data: &res, pitch: n, rows: 5 })] {
                for bias in [None, Some(&bias[..])] {
                    let o = Out { m, col: 1, bias, residual, act };
                    let want = run(scalar::gemm_rows_fused, &a, 1, &specials, &[0], n, &o);
                    let got = run(fused, &a, 1, &specials, &[0], n, &o);
                    for (r, (g, w)) in got.iter().zip(&want).enumerate() {
                        for (j, (g, w)) in g.iter().zip(w).enumerate() {
                            let same = g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan());
                            assert!(
                                same,
                                "{name} {act:?} residual {} row {r} col {j}: {g} vs {w}",
                                residual.is_some()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Every path's [`Int8ConvKernels::gemm_fused`](super::int8::Int8ConvKernels::gemm_fused)
/// against what it replaces, the same path's plain int8 GEMM into an accumulator and the
/// reference epilogue ([`crate::Activation::store_rows`]) over it: bit for bit, on row counts
/// that leave every partial row block, pixel counts that leave every partial vector of two
/// strips, with and without bias, residuals for some rows, every activation, and nothing
/// written outside the cells.
#[test]
fn int8_gemm_fused_is_the_plain_gemm_then_the_epilogue() {
    use super::int8::INT8_PIXEL_ALIGN;
    let paths: Vec<_> = Isa::available()
        .into_iter()
        .filter_map(|isa| {
            let conv = isa.int8?.conv?;
            Some((isa.name, conv.gemm, conv.gemm_fused?))
        })
        .collect();
    eprintln!("conformance_fused: int8 paths {:?}", paths.iter().map(|p| p.0).collect::<Vec<_>>());
    let mut rng = Rng::new(52);
    let slopes: Vec<f32> = (0..16).map(|r| r as f32 * 0.25 - 1.5).collect();
    for (name, gemm, fused) in paths {
        for case in 0..260usize {
            let m = 1 + case % 13;
            let n = 1 + (case * 7) % 140;
            let kq = 4 * (1 + rng.below(12));
            let ldx = n.next_multiple_of(INT8_PIXEL_ALIGN) + INT8_PIXEL_ALIGN * rng.below(2);
            let w: Vec<i8> = (0..m * kq).map(|_| (rng.below(255) as i32 - 127) as i8).collect();
            let xq: Vec<u8> = (0..kq * ldx).map(|_| rng.below(256) as u8).collect();
            let mul: Vec<f32> = rng.vec(m).iter().map(|v| v * 1e-3).collect();
            let add: Vec<f32> = rng.vec(m).iter().map(|v| v * 4.0 - 2.0).collect();
            let bias = rng.vec(m);
            let bias = (case % 4 != 0).then_some(&bias[..]);
            let (res_rows, pitch) = (case % (m + 1), n + 3);
            let res: Vec<f32> = rng.vec(res_rows.max(1) * pitch).iter().map(|v| v * 6.0 - 3.0).collect();
            let act = activations(&slopes)[case % 6];
            let col = case % 3;
            let mut acc = vec![0.0; m * n];
            gemm(&w, kq, &xq, ldx, n, &mul, &add, &mut acc, n);
            let mut want = vec![vec![f32::NAN; col + n + 2]; m];
            for (r, (row, sums)) in want.iter_mut().zip(acc.chunks_exact(n)).enumerate() {
                let residual = (r < res_rows).then(|| &res[r * pitch..][..n]);
                let b = bias.map_or(0.0, |b| b[r]);
                act.of_row(r).store_rows(sums, n, b, residual, &mut row[col..col + n], n);
            }
            let mut got = vec![vec![f32::NAN; col + n + 2]; m];
            let mut dst: Vec<&mut [f32]> = got.iter_mut().map(|r| &mut r[..]).collect();
            let residual = Some(ResidualRows { data: &res, pitch, rows: res_rows });
            fused(&w, kq, &xq, ldx, n, &mul, &add, FusedRows { dst: &mut dst, col, bias, residual, act });
            for (r, (g, wr)) in got.iter().zip(&want).enumerate() {
                for (j, (g, wv)) in g.iter().zip(wr).enumerate() {
                    let same = g.to_bits() == wv.to_bits() || (g.is_nan() && wv.is_nan());
                    assert!(same, "{name} m {m} n {n} kq {kq} {act:?} row {r} col {j}: {g} vs {wv}");
                }
            }
        }
    }
}
