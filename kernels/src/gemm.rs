//! Matrix product with a packed weight operand, decoded one row at a time.
//!
//! `[N, K]` weights with few input rows (GEMV) never widen a row: [`Isa::dot_packed`] decodes the
//! packed indices in registers, so only packed bytes move. Work is split over output columns
//! (one input row) or input rows (several) across the worker threads.

use std::ops::Range;

use pith_format::TensorView;

use crate::arch::{Isa, PACKED_ROWS};
use crate::parallel::split_units;
use crate::{check_len, check_min_len, Activation, KernelError, Kernels, WeightRows};

/// How the `k × n` weight matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[n, k]`: each stored row is one output's weights (ONNX Gemm with `transB = 1`).
    NK,
    /// `[k, n]`: each stored row is one input's fan-out (ONNX MatMul, Gemm with `transB = 0`).
    KN,
}

/// Scratch elements one worker of [`gemm`] needs: one decoded row (at least 1).
pub fn scratch_len(k: usize, n: usize, layout: WeightLayout) -> usize {
    match layout {
        WeightLayout::NK => k,
        WeightLayout::KN => n,
    }
    .max(1)
}

/// Up to this many input rows, packed `[N, K]` rows are multiplied straight from their indices
/// (decoded in registers by [`Isa::dot_packed`]); above, a row is decoded once and reused.
const PACKED_DOT_MAX_M: usize = 4;

/// See [`crate::Kernels::gemm`].
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    kernels: &Kernels,
    a: &[f32],
    m: usize,
    k: usize,
    n: usize,
    w: &TensorView<'_>,
    layout: WeightLayout,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    check_len("gemm input", a.len(), m * k)?;
    check_len("gemm output", y.len(), m * n)?;
    if let Some(b) = bias {
        check_len("gemm bias", b.len(), n)?;
    }
    let per_task = scratch_len(k, n, layout);
    check_min_len("gemm scratch", scratch.len(), per_task * kernels.threads())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let isa = kernels.isa();
    match layout {
        WeightLayout::NK => {
            let rows = WeightRows::new(*w, n, k)?.with_isa(&isa);
            let prod = NkProduct { isa, rows: &rows, a, k, bias, act };
            if m == 1 {
                // GEMV: split the outputs (one weight row each) over the workers.
                split_units(kernels, n, 1, k, y, scratch, per_task, |js, ys, s| prod.run(0..1, js, ys, s));
            } else {
                split_units(kernels, m, n, n * k, y, scratch, per_task, |is, ys, s| {
                    prod.run(is, 0..n, ys, s)
                });
            }
        }
        WeightLayout::KN => {
            let rows = WeightRows::new(*w, k, n)?.with_isa(&isa);
            split_units(kernels, m, n, n * k, y, scratch, per_task, |is, ys, wrow| {
                for yrow in ys.chunks_exact_mut(n) {
                    match bias {
                        Some(b) => yrow.copy_from_slice(b),
                        None => yrow.fill(0.0),
                    }
                }
                // Each decoded weight row is used by every input row of this worker's range.
                for kk in 0..k {
                    rows.decode(kk, wrow);
                    for (yrow, i) in ys.chunks_exact_mut(n).zip(is.clone()) {
                        (isa.axpy)(yrow, a[i * k + kk], &wrow[..n]);
                    }
                }
                (isa.activate)(act, ys);
            });
        }
    }
    Ok(())
}

/// `y[i, j] = act(bias[j] + a[i, :] · W[j, :])` with `W` stored `[N, K]`.
struct NkProduct<'a, 'w> {
    isa: Isa,
    rows: &'a WeightRows<'w>,
    a: &'a [f32],
    k: usize,
    bias: Option<&'a [f32]>,
    act: Activation,
}

impl NkProduct<'_, '_> {
    /// Outputs `is × js` into `y` (row-major, `js.len()` per row); `wrow` holds one decoded row.
    fn run(&self, is: Range<usize>, js: Range<usize>, y: &mut [f32], wrow: &mut [f32]) {
        if is.len() == 1 && self.gemv_packed(is.start, js.clone(), y, wrow) {
            return;
        }
        let (k, width) = (self.k, js.len());
        let mut lut = [0.0f32; 256];
        for (jl, j) in js.enumerate() {
            let b = self.bias.map_or(0.0, |b| b[j]);
            let mut out = |dot: &dyn Fn(&[f32]) -> f32| {
                for (il, i) in is.clone().enumerate() {
                    y[il * width + jl] = self.act.apply(b + dot(&self.a[i * k..(i + 1) * k]));
                }
            };
            let packed = if is.len() <= PACKED_DOT_MAX_M { self.rows.packed_row(j, &mut lut) } else { None };
            if let Some(row) = self.rows.dense_row(j) {
                out(&|x| (self.isa.dot)(row, x));
            } else if let Some((idx, bits)) = packed {
                out(&|x| (self.isa.dot_packed)(idx, bits, &lut, x));
            } else {
                self.rows.decode(j, wrow);
                out(&|x| (self.isa.dot)(&wrow[..k], x));
            }
        }
    }
}

impl NkProduct<'_, '_> {
    /// The GEMV of input row `i` over packed codebook rows `js` into `y` (`js.len()` values):
    /// the input is prepared once into `xp` ([`Isa::gemv_prepare`], `k` values of the worker's
    /// scratch), then [`PACKED_ROWS`] weight rows at a time share it ([`Isa::dot_packed_rows`]).
    /// The rows of one call come from the [`PACKED_ROWS`] quarters of `js`, so the kernel reads
    /// that many long contiguous streams instead of restarting them every few KiB (measured
    /// about 10 % faster at 4096×4096, 4 bits). `false` (nothing written) when the weights are
    /// not packed indices.
    fn gemv_packed(&self, i: usize, js: Range<usize>, y: &mut [f32], xp: &mut [f32]) -> bool {
        let k = self.k;
        let mut luts = [[0.0f32; 256]; PACKED_ROWS];
        let Some((_, bits)) = self.rows.packed_row(js.start, &mut luts[0]) else { return false };
        let x = &self.a[i * k..(i + 1) * k];
        let xp = &mut xp[..k];
        (self.isa.gemv_prepare)(bits, x, xp);
        let quarter = js.len().div_ceil(PACKED_ROWS);
        for q in 0..quarter {
            let mut rows: [&[u8]; PACKED_ROWS] = [&[]; PACKED_ROWS];
            let mut at = [0usize; PACKED_ROWS];
            let mut n = 0;
            for jl in (q..js.len()).step_by(quarter) {
                // Every row of a codebook tensor is packed (the first one was).
                rows[n] = self.rows.packed_row(js.start + jl, &mut luts[n]).map_or(&[], |(r, _)| r);
                at[n] = jl;
                n += 1;
            }
            let mut out = [0.0f32; PACKED_ROWS];
            (self.isa.dot_packed_rows)(&rows[..n], bits, &luts[..n], x, xp, &mut out[..n]);
            for (&jl, &s) in at.iter().zip(&out).take(n) {
                y[jl] = self.act.apply(self.bias.map_or(0.0, |b| b[js.start + jl]) + s);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, decode_all, kernel_sets, random_weight, Rng, WeightKind};
    use crate::Kernels;

    #[test]
    fn matches_reference_for_both_layouts_and_every_encoding() {
        let mut rng = Rng::new(9);
        let sets = kernel_sets();
        for (case, kind) in WeightKind::all().into_iter().enumerate() {
            // m = 1 (GEMV, split over N), 2..=4 (packed dot), 5..=7 (decoded rows, split over M).
            let m = [1, 1, 3, 6][case % 4] + rng.below(2);
            let (k, n) = (1 + rng.below(70), 1 + rng.below(40));
            for layout in [WeightLayout::NK, WeightLayout::KN] {
                let (rows, row_len) = match layout {
                    WeightLayout::NK => (n, k),
                    WeightLayout::KN => (k, n),
                };
                let data = random_weight(&mut rng, kind, rows, row_len);
                let wf = decode_all(&data, rows);
                let a = rng.vec(m * k);
                let bias = rng.vec(n);
                let bias = (case % 2 == 0).then_some(&bias[..]);
                let act = if case % 3 == 0 { Activation::Relu } else { Activation::None };
                let mut want = vec![0.0; m * n];
                for i in 0..m {
                    for j in 0..n {
                        let mut s = bias.map_or(0.0, |b| b[j]);
                        for kk in 0..k {
                            let wv = match layout {
                                WeightLayout::NK => wf[j * k + kk],
                                WeightLayout::KN => wf[kk * n + j],
                            };
                            s += a[i * k + kk] * wv;
                        }
                        want[i * n + j] = act.apply(s);
                    }
                }
                for kernels in &sets {
                    let mut y = vec![f32::NAN; m * n];
                    let mut scratch = vec![0.0; kernels.gemm_scratch_len(k, n, layout)];
                    let w = data.view();
                    kernels.gemm(&a, m, k, n, &w, layout, bias, act, &mut y, &mut scratch).unwrap();
                    assert_close(&y, &want, &format!("{kernels:?} {kind:?} {layout:?} {m}x{k}x{n}"));
                }
            }
        }
    }

    #[test]
    fn packed_gemv_matches_reference_over_whole_blocks_and_tails() {
        // m = 1 over packed rows: whole 64-byte blocks of every width plus odd tails, row counts
        // that leave 1..3 rows in the last kernel call, every codebook kind, split over workers.
        let mut rng = Rng::new(21);
        let sets = kernel_sets();
        for (case, kind) in WeightKind::all().into_iter().skip(2).enumerate() {
            let WeightKind::Codebook(bits, ..) = kind else { unreachable!() };
            let k = (512 / bits as usize) * (1 + rng.below(2)) + [0, 1, 63, 100][case % 4];
            let n = 1 + rng.below(11);
            let data = random_weight(&mut rng, kind, n, k);
            let wf = decode_all(&data, n);
            let a = rng.vec(k);
            let bias = rng.vec(n);
            let want: Vec<f32> =
                (0..n).map(|j| bias[j] + (0..k).map(|kk| a[kk] * wf[j * k + kk]).sum::<f32>()).collect();
            for kernels in &sets {
                let mut y = vec![f32::NAN; n];
                let mut scratch = vec![f32::NAN; kernels.gemm_scratch_len(k, n, WeightLayout::NK)];
                let w = data.view();
                let act = Activation::None;
                kernels
                    .gemm(&a, 1, k, n, &w, WeightLayout::NK, Some(&bias), act, &mut y, &mut scratch)
                    .unwrap();
                let scale: Vec<f32> = want.iter().map(|v| v / (k as f32).sqrt()).collect();
                let got: Vec<f32> = y.iter().map(|v| v / (k as f32).sqrt()).collect();
                assert_close(&got, &scale, &format!("{kernels:?} {kind:?} 1x{k}x{n}"));
            }
        }
    }

    #[test]
    fn rejects_mismatched_lengths() {
        let w = vec![0.0f32; 6];
        let view = TensorView::F32(&w);
        let mut y = vec![0.0; 4];
        let mut s = vec![0.0; 3];
        let a = Activation::None;
        let lay = WeightLayout::NK;
        let k = Kernels::default();
        assert!(gemm(&k, &[0.0; 6], 2, 3, 2, &view, lay, None, a, &mut y, &mut s).is_ok());
        assert!(gemm(&k, &[0.0; 5], 2, 3, 2, &view, lay, None, a, &mut y, &mut s).is_err());
        assert!(gemm(&k, &[0.0; 6], 2, 3, 2, &view, lay, Some(&[0.0]), a, &mut y, &mut s).is_err());
        assert!(gemm(&k, &[0.0; 8], 2, 4, 2, &view, lay, None, a, &mut y, &mut s).is_err());
    }
}
