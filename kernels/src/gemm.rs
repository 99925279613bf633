//! Matrix product with a packed weight operand, decoded one row at a time.

use pith_format::TensorView;

use crate::prim::{axpy, dot};
use crate::{check_len, check_min_len, Activation, KernelError, WeightRows};

/// How the `k × n` weight matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[n, k]`: each stored row is one output's weights (ONNX Gemm with `transB = 1`).
    NK,
    /// `[k, n]`: each stored row is one input's fan-out (ONNX MatMul, Gemm with `transB = 0`).
    KN,
}

/// Scratch elements [`gemm`] needs: one decoded row.
pub fn scratch_len(k: usize, n: usize, layout: WeightLayout) -> usize {
    match layout {
        WeightLayout::NK => k,
        WeightLayout::KN => n,
    }
}

/// See [`crate::Kernels::gemm`].
#[allow(clippy::too_many_arguments)]
pub fn gemm(
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
    check_min_len("gemm scratch", scratch.len(), scratch_len(k, n, layout))?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    match layout {
        WeightLayout::NK => {
            let rows = WeightRows::new(*w, n, k)?;
            let wrow = &mut scratch[..k];
            for j in 0..n {
                rows.decode(j, wrow);
                let b = bias.map_or(0.0, |b| b[j]);
                for i in 0..m {
                    y[i * n + j] = act.apply(b + dot(&a[i * k..(i + 1) * k], wrow));
                }
            }
        }
        WeightLayout::KN => {
            let rows = WeightRows::new(*w, k, n)?;
            let wrow = &mut scratch[..n];
            for yrow in y.chunks_exact_mut(n) {
                match bias {
                    Some(b) => yrow.copy_from_slice(b),
                    None => yrow.fill(0.0),
                }
            }
            for kk in 0..k {
                rows.decode(kk, wrow);
                for (i, yrow) in y.chunks_exact_mut(n).enumerate() {
                    axpy(yrow, a[i * k + kk], wrow);
                }
            }
            act.apply_slice(y);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, decode_all, random_weight, Rng, WeightKind};
    use crate::Kernels;

    #[test]
    fn matches_reference_for_both_layouts_and_every_encoding() {
        let mut rng = Rng::new(9);
        let kernels = Kernels::new(1);
        for (case, kind) in WeightKind::all().into_iter().enumerate() {
            let (m, k, n) = (1 + rng.below(5), 1 + rng.below(19), 1 + rng.below(13));
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
                let mut y = vec![f32::NAN; m * n];
                let mut scratch = vec![0.0; kernels.gemm_scratch_len(k, n, layout)];
                kernels.gemm(&a, m, k, n, &data.view(), layout, bias, act, &mut y, &mut scratch).unwrap();
                assert_close(&y, &want, &format!("{kind:?} {layout:?} {m}x{k}x{n}"));
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
        assert!(gemm(&[0.0; 6], 2, 3, 2, &view, lay, None, a, &mut y, &mut s).is_ok());
        assert!(gemm(&[0.0; 5], 2, 3, 2, &view, lay, None, a, &mut y, &mut s).is_err());
        assert!(gemm(&[0.0; 6], 2, 3, 2, &view, lay, Some(&[0.0]), a, &mut y, &mut s).is_err());
        assert!(gemm(&[0.0; 8], 2, 4, 2, &view, lay, None, a, &mut y, &mut s).is_err());
    }
}
