//! 2-D transposed convolution (NCHW, ONNX weight layout `[in_c, out_c / groups, k_h, k_w]`):
//! each input channel's taps are decoded once and scattered into the output.

use pith_format::TensorView;

use crate::conv::valid_range;
use crate::{check_len, check_min_len, Activation, Conv2dParams, KernelError, WeightRows};

/// Weights per row (input channel): `out_c / groups * k_h * k_w`.
fn row_len(p: &Conv2dParams) -> usize {
    p.out_per_group() * p.k_h * p.k_w
}

/// Scratch elements [`conv_transpose2d`] needs: one decoded row.
pub fn scratch_len(p: &Conv2dParams) -> usize {
    if p.groups == 0 {
        0
    } else {
        row_len(p)
    }
}

/// See [`crate::Kernels::conv_transpose2d`].
pub fn conv_transpose2d(
    x: &[f32],
    w: &TensorView<'_>,
    bias: Option<&[f32]>,
    p: &Conv2dParams,
    act: Activation,
    y: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    p.check()?;
    let in_plane = p.in_h * p.in_w;
    let out_plane = p.out_h * p.out_w;
    check_len("conv-transpose input", x.len(), p.batch * p.in_c * in_plane)?;
    check_len("conv-transpose output", y.len(), p.batch * p.out_c * out_plane)?;
    if let Some(b) = bias {
        check_len("conv-transpose bias", b.len(), p.out_c)?;
    }
    check_min_len("conv-transpose scratch", scratch.len(), scratch_len(p))?;
    let rows = WeightRows::new(*w, p.in_c, row_len(p))?;
    if out_plane == 0 {
        return Ok(());
    }
    let (cin_g, cout_g) = (p.in_per_group(), p.out_per_group());
    let taps = p.k_h * p.k_w;
    for (b, yb) in y.chunks_exact_mut(p.out_c * out_plane).enumerate() {
        for (oc, yplane) in yb.chunks_exact_mut(out_plane).enumerate() {
            yplane.fill(bias.map_or(0.0, |b| b[oc]));
        }
        for ic in 0..p.in_c {
            let g = ic / cin_g;
            rows.decode(ic, scratch);
            let xplane = &x[(b * p.in_c + ic) * in_plane..][..in_plane];
            for ocl in 0..cout_g {
                let yplane = &mut yb[(g * cout_g + ocl) * out_plane..][..out_plane];
                let wtaps = &scratch[ocl * taps..][..taps];
                scatter(xplane, wtaps, p, yplane);
            }
        }
    }
    act.apply_slice(y);
    Ok(())
}

/// Adds one input plane, weighted by one `k_h × k_w` filter, into one output plane.
fn scatter(xplane: &[f32], wtaps: &[f32], p: &Conv2dParams, yplane: &mut [f32]) {
    for ky in 0..p.k_h {
        let offy = (ky * p.dil_h) as isize - p.pad_top as isize;
        let (iy_lo, iy_hi) = valid_range(p.in_h, p.stride_h, offy, p.out_h);
        for kx in 0..p.k_w {
            let wv = wtaps[ky * p.k_w + kx];
            let offx = (kx * p.dil_w) as isize - p.pad_left as isize;
            let (ix_lo, ix_hi) = valid_range(p.in_w, p.stride_w, offx, p.out_w);
            for iy in iy_lo..iy_hi {
                let oy = ((iy * p.stride_h) as isize + offy) as usize;
                let xrow = &xplane[iy * p.in_w..][..p.in_w];
                let yrow = &mut yplane[oy * p.out_w..][..p.out_w];
                for (ix, &xv) in xrow.iter().enumerate().take(ix_hi).skip(ix_lo) {
                    yrow[((ix * p.stride_w) as isize + offx) as usize] += wv * xv;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, decode_all, random_weight, Rng, WeightKind};
    use crate::Kernels;

    /// Plain scatter loop on fully decoded weights.
    fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, p: &Conv2dParams) -> Vec<f32> {
        let (cin_g, cout_g) = (p.in_per_group(), p.out_per_group());
        let mut y = vec![0.0; p.batch * p.out_c * p.out_h * p.out_w];
        for b in 0..p.batch {
            for oc in 0..p.out_c {
                for o in 0..p.out_h * p.out_w {
                    y[(b * p.out_c + oc) * p.out_h * p.out_w + o] = bias.map_or(0.0, |b| b[oc]);
                }
            }
            for ic in 0..p.in_c {
                let g = ic / cin_g;
                for ocl in 0..cout_g {
                    let oc = g * cout_g + ocl;
                    for iy in 0..p.in_h {
                        for ix in 0..p.in_w {
                            for ky in 0..p.k_h {
                                for kx in 0..p.k_w {
                                    let oy = (iy * p.stride_h + ky * p.dil_h) as isize - p.pad_top as isize;
                                    let ox = (ix * p.stride_w + kx * p.dil_w) as isize - p.pad_left as isize;
                                    if oy < 0 || ox < 0 || oy >= p.out_h as isize || ox >= p.out_w as isize {
                                        continue;
                                    }
                                    let xv = x[((b * p.in_c + ic) * p.in_h + iy) * p.in_w + ix];
                                    let wv = w[((ic * cout_g + ocl) * p.k_h + ky) * p.k_w + kx];
                                    y[((b * p.out_c + oc) * p.out_h + oy as usize) * p.out_w
                                        + ox as usize] += xv * wv;
                                }
                            }
                        }
                    }
                }
            }
        }
        y
    }

    #[test]
    fn matches_reference_on_random_shapes_and_encodings() {
        let mut rng = Rng::new(11);
        let kernels = Kernels::new(1);
        let kinds = WeightKind::all();
        for case in 0..60 {
            let groups = 1 + rng.below(3);
            let in_c = groups * (1 + rng.below(3));
            let out_c = groups * (1 + rng.below(3));
            let (k_h, k_w) = (1 + rng.below(4), 1 + rng.below(4));
            let (stride_h, stride_w) = (1 + rng.below(3), 1 + rng.below(3));
            let (dil_h, dil_w) = (1 + rng.below(2), 1 + rng.below(2));
            let (in_h, in_w) = (1 + rng.below(6), 1 + rng.below(7));
            let (pads, out_pad) = ([rng.below(3), rng.below(3), rng.below(2), rng.below(2)], rng.below(2));
            let full = |i: usize, s: usize, d: usize, k: usize| (i - 1) * s + d * (k - 1) + 1;
            let out_h = full(in_h, stride_h, dil_h, k_h) + out_pad;
            let out_w = full(in_w, stride_w, dil_w, k_w);
            let p = Conv2dParams {
                batch: 1 + rng.below(2),
                in_c,
                in_h,
                in_w,
                out_c,
                out_h: (out_h).saturating_sub(pads[0] + pads[2]).max(1),
                out_w: (out_w).saturating_sub(pads[1] + pads[3]).max(1),
                k_h,
                k_w,
                stride_h,
                stride_w,
                pad_top: pads[0],
                pad_left: pads[1],
                dil_h,
                dil_w,
                groups,
            };
            let kind = kinds[case % kinds.len()];
            let data = random_weight(&mut rng, kind, in_c, row_len(&p));
            let wf = decode_all(&data, in_c);
            let x = rng.vec(p.batch * in_c * in_h * in_w);
            let bias = rng.vec(out_c);
            let bias = (case % 2 == 0).then_some(&bias[..]);
            let mut y = vec![f32::NAN; p.batch * out_c * p.out_h * p.out_w];
            let mut scratch = vec![0.0; kernels.conv_transpose2d_scratch_len(&p)];
            let act = Activation::LeakyRelu(0.3);
            kernels.conv_transpose2d(&x, &data.view(), bias, &p, act, &mut y, &mut scratch).unwrap();
            let want: Vec<f32> = reference(&x, &wf, bias, &p).into_iter().map(|v| act.apply(v)).collect();
            assert_close(&y, &want, &format!("{kind:?} {p:?}"));
        }
    }

    #[test]
    fn rejects_weight_of_wrong_shape() {
        let mut rng = Rng::new(2);
        let p = Conv2dParams {
            batch: 1,
            in_c: 2,
            in_h: 3,
            in_w: 3,
            out_c: 2,
            out_h: 6,
            out_w: 6,
            k_h: 2,
            k_w: 2,
            stride_h: 2,
            stride_w: 2,
            dil_h: 1,
            dil_w: 1,
            groups: 1,
            ..Default::default()
        };
        let data = random_weight(&mut rng, WeightKind::F32, 2, 9);
        let x = vec![0.0; 18];
        let mut y = vec![0.0; 72];
        let mut s = vec![0.0; scratch_len(&p)];
        let err = conv_transpose2d(&x, &data.view(), None, &p, Activation::None, &mut y, &mut s);
        assert!(matches!(err, Err(KernelError::Weight(_))));
    }
}
