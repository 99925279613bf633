//! 2-D convolution (NCHW, ONNX weight layout) on weights decoded a few filters at a time.
//!
//! Output channels are split into contiguous ranges, one per worker thread. Three paths, chosen
//! from the parameters:
//! * per-channel (`in_c / groups == 1`, e.g. depthwise): a direct loop over taps;
//! * pointwise (1×1, stride 1, no padding): the input planes serve as the column matrix;
//! * general: a tile of output pixels is unfolded (im2col) into a bounded scratch.
//!
//! The last two decode a panel of at most [`PANEL_ROWS`] filters (never the whole tensor) and
//! multiply it with the column tile through the path's register-blocked [`Isa::gemm_rows`].

use std::ops::Range;

use pith_format::TensorView;

use crate::arch::Isa;
use crate::parallel::split_units;
use crate::{check_len, check_min_len, Activation, KernelError, Kernels, WeightRows};

/// Geometry of a 2-D convolution (and, with input/output roles as documented on
/// [`crate::Kernels::conv_transpose2d`], of a transposed one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conv2dParams {
    /// Images in the batch.
    pub batch: usize,
    /// Input channels.
    pub in_c: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output channels.
    pub out_c: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
    /// Kernel height.
    pub k_h: usize,
    /// Kernel width.
    pub k_w: usize,
    /// Vertical stride (>= 1).
    pub stride_h: usize,
    /// Horizontal stride (>= 1).
    pub stride_w: usize,
    /// Zero rows added above the input (ONNX begin pad of H).
    pub pad_top: usize,
    /// Zero columns added left of the input (ONNX begin pad of W).
    pub pad_left: usize,
    /// Vertical dilation (>= 1).
    pub dil_h: usize,
    /// Horizontal dilation (>= 1).
    pub dil_w: usize,
    /// Channel groups; divides `in_c` and `out_c`.
    pub groups: usize,
}

impl Conv2dParams {
    /// Rejects zero strides, dilations, kernel extents or groups, and groups not dividing channels.
    pub fn check(&self) -> Result<(), KernelError> {
        let p = self;
        if p.stride_h == 0 || p.stride_w == 0 || p.dil_h == 0 || p.dil_w == 0 {
            return Err(KernelError::Params("strides and dilations must be >= 1".into()));
        }
        if p.k_h == 0 || p.k_w == 0 {
            return Err(KernelError::Params("kernel extents must be >= 1".into()));
        }
        if p.groups == 0 || !p.in_c.is_multiple_of(p.groups) || !p.out_c.is_multiple_of(p.groups) {
            return Err(KernelError::Params(format!(
                "groups {} must divide in_c {} and out_c {}",
                p.groups, p.in_c, p.out_c
            )));
        }
        Ok(())
    }

    /// Input channels per group.
    pub fn in_per_group(&self) -> usize {
        self.in_c / self.groups
    }

    /// Output channels per group.
    pub fn out_per_group(&self) -> usize {
        self.out_c / self.groups
    }

    /// Weights per filter of a (non-transposed) convolution: `in_c / groups * k_h * k_w`.
    pub fn filter_len(&self) -> usize {
        self.in_per_group() * self.k_h * self.k_w
    }

    fn is_pointwise(&self) -> bool {
        self.k_h == 1
            && self.k_w == 1
            && self.stride_h == 1
            && self.stride_w == 1
            && self.pad_top == 0
            && self.pad_left == 0
            && self.in_h == self.out_h
            && self.in_w == self.out_w
    }
}

/// f32 elements of the unfolded-column tile: bounded so it stays in L2.
const COL_BUDGET: usize = 64 * 1024;
/// Output pixels per tile of the pointwise path (its columns are the input itself).
const POINTWISE_TILE: usize = 1024;
/// Filters decoded together into one panel for [`Isa::gemm_rows`]: a multiple of every path's
/// register block (4, 6, 8 rows), small enough that panel × filter length stays in L2.
const PANEL_ROWS: usize = 48;

/// Output pixels per im2col tile: within [`COL_BUDGET`], rounded down to 16 columns when large so
/// the micro-kernels' column strips have no ragged tail.
fn tile_pixels(p: &Conv2dParams) -> usize {
    let pixels = (p.out_h * p.out_w).max(1);
    let t = (COL_BUDGET / p.filter_len().max(1)).max(1);
    let t = if t >= 64 { t / 16 * 16 } else { t };
    t.min(pixels)
}

/// Filters per panel for this layer.
fn panel_rows(p: &Conv2dParams) -> usize {
    PANEL_ROWS.min(p.out_per_group()).max(1)
}

/// Scratch elements one worker of [`conv2d`] needs (at least 1).
pub fn scratch_len(p: &Conv2dParams) -> usize {
    let per = if p.in_c == 0 || p.groups == 0 || p.in_per_group() == 1 {
        // A decoded filter and, for strided rows, the input row split by phase (padded to whole
        // phases of `stride_w`).
        p.filter_len() + p.in_w.div_ceil(p.stride_w.max(1)) * p.stride_w
    } else if p.is_pointwise() {
        panel_rows(p) * p.filter_len()
    } else {
        p.filter_len() * (panel_rows(p) + tile_pixels(p))
    };
    per.max(1)
}

/// See [`crate::Kernels::conv2d`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    kernels: &Kernels,
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
    check_len("conv input", x.len(), p.batch * p.in_c * in_plane)?;
    check_len("conv output", y.len(), p.batch * p.out_c * out_plane)?;
    if let Some(b) = bias {
        check_len("conv bias", b.len(), p.out_c)?;
    }
    let per_task = scratch_len(p);
    check_min_len("conv scratch", scratch.len(), per_task * kernels.threads())?;
    let rows = WeightRows::new(*w, p.out_c, p.filter_len())?;
    if out_plane == 0 || p.out_c == 0 {
        return Ok(());
    }
    let layer = Layer { isa: kernels.isa(), rows: &rows, bias, act, p };
    for (b, yb) in y.chunks_exact_mut(p.out_c * out_plane).enumerate() {
        let xb = &x[b * p.in_c * in_plane..][..p.in_c * in_plane];
        let work = out_plane * p.filter_len();
        split_units(kernels, p.out_c, out_plane, work, yb, scratch, per_task, |ocs, ys, s| {
            layer.channels(xb, ocs, ys, s)
        });
    }
    Ok(())
}

/// One layer's filters, epilogue and geometry, shared by the worker threads.
struct Layer<'a, 'w> {
    isa: Isa,
    rows: &'a WeightRows<'w>,
    bias: Option<&'a [f32]>,
    act: Activation,
    p: &'a Conv2dParams,
}

impl Layer<'_, '_> {
    /// Computes output channels `ocs` (of one image `xb`) into `y` (their planes, back to back).
    fn channels(&self, xb: &[f32], ocs: Range<usize>, y: &mut [f32], scratch: &mut [f32]) {
        let p = self.p;
        let (cin_g, cout_g) = (p.in_per_group(), p.out_per_group());
        let (in_plane, out_plane) = (p.in_h * p.in_w, p.out_h * p.out_w);
        let mut oc = ocs.start;
        while oc < ocs.end {
            // The part of `ocs` inside oc's group.
            let g = oc / cout_g;
            let end = ocs.end.min((g + 1) * cout_g);
            let xg = &xb[g * cin_g * in_plane..][..cin_g * in_plane];
            let yg = &mut y[(oc - ocs.start) * out_plane..(end - ocs.start) * out_plane];
            if cin_g == 1 {
                self.per_channel(xg, oc, yg, scratch);
            } else if p.is_pointwise() {
                self.pointwise(xg, oc, yg, scratch);
            } else {
                self.unfolded(xg, oc, yg, scratch);
            }
            oc = end;
        }
    }

    /// For filters `oc0..` (one per `plane`-long output plane of `y`), over output pixels
    /// `t0..t0 + t`: `y = act(bias + filters · cols)`, where column row `k` is `src[k * ldb..][..t]`.
    /// Filters are decoded `PANEL_ROWS` at a time into `panel` and multiplied with `gemm_rows`.
    #[allow(clippy::too_many_arguments)]
    fn panel_product(
        &self,
        src: &[f32],
        ldb: usize,
        oc0: usize,
        t0: usize,
        t: usize,
        y: &mut [f32],
        panel: &mut [f32],
    ) {
        let (k, plane) = (self.rows.row_len(), self.p.out_h * self.p.out_w);
        let block = panel_rows(self.p);
        for (bi, yblock) in y.chunks_mut(block * plane).enumerate() {
            let n_rows = yblock.len() / plane;
            let first = oc0 + bi * block;
            for r in 0..n_rows {
                self.rows.decode(first + r, &mut panel[r * k..(r + 1) * k]);
                yblock[r * plane + t0..][..t].fill(self.bias.map_or(0.0, |b| b[first + r]));
            }
            (self.isa.gemm_rows)(&panel[..n_rows * k], k, src, ldb, t, &mut yblock[t0..], plane);
            for r in 0..n_rows {
                self.act.apply_slice(&mut yblock[r * plane + t0..][..t]);
            }
        }
    }

    /// One input channel per group: each output plane is a direct sum over the filter's taps.
    fn per_channel(&self, xg: &[f32], oc0: usize, yg: &mut [f32], scratch: &mut [f32]) {
        let p = self.p;
        let out_plane = p.out_h * p.out_w;
        let (wrow, phases) = scratch.split_at_mut(p.filter_len());
        for (ocl, yplane) in yg.chunks_exact_mut(out_plane).enumerate() {
            self.rows.decode(oc0 + ocl, wrow);
            yplane.fill(self.bias.map_or(0.0, |b| b[oc0 + ocl]));
            for (oy, yrow) in yplane.chunks_exact_mut(p.out_w).enumerate() {
                for ky in 0..p.k_h {
                    let iy = (oy * p.stride_h + ky * p.dil_h) as isize - p.pad_top as isize;
                    if iy < 0 || iy >= p.in_h as isize {
                        continue;
                    }
                    let xrow = &xg[iy as usize * p.in_w..][..p.in_w];
                    self.tap_row(&wrow[ky * p.k_w..(ky + 1) * p.k_w], xrow, yrow, phases);
                }
            }
            self.act.apply_slice(yplane);
        }
    }

    /// `yrow[ox] += sum_kx wk[kx] * xrow[ox * stride_w + kx * dil_w - pad_left]` over the taps
    /// inside the row; `phases` (`in_w` rounded up to a multiple of `stride_w`) is scratch for
    /// strided rows.
    fn tap_row(&self, wk: &[f32], xrow: &[f32], yrow: &mut [f32], phases: &mut [f32]) {
        let p = self.p;
        let s = p.stride_w;
        let tap = |kx: usize| {
            let off = (kx * p.dil_w) as isize - p.pad_left as isize;
            (off, valid_range(p.out_w, s, off, p.in_w))
        };
        if s != 1 {
            // Split the row by phase (`phases[r * len + j] = xrow[j * s + r]`), so tap kx, with
            // `off = q * s + r`, reads phase r contiguously from `q`: a vector axpy per tap.
            let len = p.in_w.div_ceil(s);
            for r in 0..s.min(p.in_w) {
                for (dst, &v) in phases[r * len..].iter_mut().zip(xrow[r..].iter().step_by(s)) {
                    *dst = v;
                }
            }
            for (kx, &wv) in wk.iter().enumerate() {
                let (off, (lo, hi)) = tap(kx);
                if lo < hi {
                    let (q, r) = (off.div_euclid(s as isize), off.rem_euclid(s as isize) as usize);
                    let start = r * len + (lo as isize + q) as usize;
                    (self.isa.axpy)(&mut yrow[lo..hi], wv, &phases[start..start + (hi - lo)]);
                }
            }
            return;
        }
        // Columns every tap reaches: one `gemm_rows` call whose `b` rows are the taps' shifted
        // views of the input row (overlapping, `ldb` = dilation), so each output is loaded and
        // stored once per kernel row instead of once per tap.
        let (mut lo, mut hi) = (0, p.out_w);
        for kx in 0..p.k_w {
            let (_, (l, h)) = tap(kx);
            (lo, hi) = (lo.max(l), hi.min(h));
        }
        if lo < hi {
            let start = (lo as isize + tap(0).0) as usize;
            (self.isa.gemm_rows)(wk, p.k_w, &xrow[start..], p.dil_w, hi - lo, &mut yrow[lo..hi], hi - lo);
        } else {
            hi = lo;
        }
        // Edge columns some taps miss (padding): a few per tap outside lo..hi.
        for (kx, &wv) in wk.iter().enumerate() {
            let (off, (l, h)) = tap(kx);
            for (a, b) in [(l, h.min(lo)), (l.max(hi), h)] {
                for ox in a..b {
                    yrow[ox] += wv * xrow[(ox as isize + off) as usize];
                }
            }
        }
    }

    /// 1×1 stride-1 unpadded: column row `k` is input plane `k`, so no unfolding is needed.
    fn pointwise(&self, xg: &[f32], oc0: usize, yg: &mut [f32], panel: &mut [f32]) {
        let plane = self.p.out_h * self.p.out_w;
        let mut t0 = 0;
        while t0 < plane {
            let t = POINTWISE_TILE.min(plane - t0);
            self.panel_product(&xg[t0..], plane, oc0, t0, t, yg, panel);
            t0 += t;
        }
    }

    /// General path: unfold a tile of output pixels, then multiply every filter panel with it.
    fn unfolded(&self, xg: &[f32], oc0: usize, yg: &mut [f32], scratch: &mut [f32]) {
        let p = self.p;
        let plane = p.out_h * p.out_w;
        let k_len = p.filter_len();
        let tile = tile_pixels(p);
        let (panel, col) = scratch.split_at_mut(panel_rows(p) * k_len);
        let mut t0 = 0;
        while t0 < plane {
            let t = tile.min(plane - t0);
            let col = &mut col[..k_len * t];
            im2col(xg, p, t0, t, col);
            self.panel_product(col, t, oc0, t0, t, yg, panel);
            t0 += t;
        }
    }
}

/// Range of output positions `o` in `0..out_len` whose input `o * stride + off` lies in `0..in_len`.
pub(crate) fn valid_range(out_len: usize, stride: usize, off: isize, in_len: usize) -> (usize, usize) {
    let s = stride as isize;
    // Smallest o with o*s + off >= 0.
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    // Smallest o with o*s + off >= in_len.
    let end = in_len as isize - off;
    let hi = if end <= 0 { 0 } else { (end + s - 1) / s };
    let lo = (lo as usize).min(out_len);
    let hi = (hi as usize).clamp(lo, out_len);
    (lo, hi)
}

/// Writes the `filter_len × t` column matrix of output pixels `t0..t0+t` (row-major over the
/// flattened output plane) into `col`; taps in the padding read 0.
fn im2col(xg: &[f32], p: &Conv2dParams, t0: usize, t: usize, col: &mut [f32]) {
    let in_plane = p.in_h * p.in_w;
    let mut k = 0;
    for c in 0..p.in_per_group() {
        let xc = &xg[c * in_plane..][..in_plane];
        for ky in 0..p.k_h {
            for kx in 0..p.k_w {
                let dst = &mut col[k * t..(k + 1) * t];
                k += 1;
                let off = (kx * p.dil_w) as isize - p.pad_left as isize;
                let (lo, hi) = valid_range(p.out_w, p.stride_w, off, p.in_w);
                let mut done = 0;
                while done < t {
                    let pix = t0 + done;
                    let (oy, ox0) = (pix / p.out_w, pix % p.out_w);
                    let n = (p.out_w - ox0).min(t - done);
                    let seg = &mut dst[done..done + n];
                    done += n;
                    let iy = (oy * p.stride_h + ky * p.dil_h) as isize - p.pad_top as isize;
                    if iy < 0 || iy >= p.in_h as isize {
                        seg.fill(0.0);
                        continue;
                    }
                    let xrow = &xc[iy as usize * p.in_w..][..p.in_w];
                    // Output columns ox0..ox0+n: zeros, then valid taps in a..b, then zeros.
                    let (a, b) = (lo.clamp(ox0, ox0 + n), hi.clamp(ox0, ox0 + n));
                    seg[..a - ox0].fill(0.0);
                    seg[b - ox0..].fill(0.0);
                    let taps = &mut seg[a - ox0..b - ox0];
                    let first = (a * p.stride_w) as isize + off;
                    if p.stride_w == 1 && a < b {
                        taps.copy_from_slice(&xrow[first as usize..][..b - a]);
                    } else {
                        for (j, v) in taps.iter_mut().enumerate() {
                            *v = xrow[(first + (j * p.stride_w) as isize) as usize];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, decode_all, kernel_sets, random_weight, Rng, WeightKind};
    use crate::Kernels;

    /// Plain 7-loop convolution on fully decoded weights.
    fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, p: &Conv2dParams) -> Vec<f32> {
        let (cin_g, cout_g) = (p.in_per_group(), p.out_per_group());
        let mut y = vec![0.0; p.batch * p.out_c * p.out_h * p.out_w];
        for b in 0..p.batch {
            for oc in 0..p.out_c {
                let g = oc / cout_g;
                for oy in 0..p.out_h {
                    for ox in 0..p.out_w {
                        let mut s = bias.map_or(0.0, |b| b[oc]);
                        for c in 0..cin_g {
                            for ky in 0..p.k_h {
                                for kx in 0..p.k_w {
                                    let iy = (oy * p.stride_h + ky * p.dil_h) as isize - p.pad_top as isize;
                                    let ix = (ox * p.stride_w + kx * p.dil_w) as isize - p.pad_left as isize;
                                    if iy < 0 || ix < 0 || iy >= p.in_h as isize || ix >= p.in_w as isize {
                                        continue;
                                    }
                                    let ic = g * cin_g + c;
                                    let xv =
                                        x[((b * p.in_c + ic) * p.in_h + iy as usize) * p.in_w + ix as usize];
                                    let wv = w[((oc * cin_g + c) * p.k_h + ky) * p.k_w + kx];
                                    s += xv * wv;
                                }
                            }
                        }
                        y[((b * p.out_c + oc) * p.out_h + oy) * p.out_w + ox] = s;
                    }
                }
            }
        }
        y
    }

    fn out_extent(input: usize, pad: usize, k: usize, s: usize, d: usize) -> usize {
        (input + pad - d * (k - 1) - 1) / s + 1
    }

    fn random_params(rng: &mut Rng, case: usize) -> Conv2dParams {
        let groups = [1, 1, 2, 3][rng.below(4)];
        let depthwise = case % 4 == 1;
        let pointwise = case % 4 == 2;
        let in_c = if depthwise { 1 + rng.below(6) } else { groups * (1 + rng.below(4)) };
        let groups = if depthwise { in_c } else { groups };
        let out_c = groups * (1 + rng.below(3));
        let (k_h, k_w) = if pointwise { (1, 1) } else { (1 + rng.below(4), 1 + rng.below(4)) };
        let (stride_h, stride_w, dil_h, dil_w) = if pointwise {
            (1, 1, 1, 1)
        } else {
            (1 + rng.below(3), 1 + rng.below(3), 1 + rng.below(2), 1 + rng.below(3))
        };
        let pads = if pointwise { [0; 4] } else { [rng.below(3), rng.below(3), rng.below(3), rng.below(3)] };
        let in_h = dil_h * (k_h - 1) + 1 + rng.below(9);
        let in_w = dil_w * (k_w - 1) + 1 + rng.below(11);
        Conv2dParams {
            batch: 1 + rng.below(2),
            in_c,
            in_h,
            in_w,
            out_c,
            out_h: out_extent(in_h, pads[0] + pads[2], k_h, stride_h, dil_h),
            out_w: out_extent(in_w, pads[1] + pads[3], k_w, stride_w, dil_w),
            k_h,
            k_w,
            stride_h,
            stride_w,
            pad_top: pads[0],
            pad_left: pads[1],
            dil_h,
            dil_w,
            groups,
        }
    }

    /// Runs `p` under every kernel set and checks each against the 7-loop reference.
    fn check_all_paths(rng: &mut Rng, sets: &[Kernels], p: &Conv2dParams, kind: WeightKind, with_bias: bool) {
        let data = random_weight(rng, kind, p.out_c, p.filter_len());
        let wf = decode_all(&data, p.out_c);
        let x = rng.vec(p.batch * p.in_c * p.in_h * p.in_w);
        let bias = rng.vec(p.out_c);
        let bias = with_bias.then_some(&bias[..]);
        let want = reference(&x, &wf, bias, p);
        for kernels in sets {
            let mut y = vec![f32::NAN; want.len()];
            let mut scratch = vec![0.0; kernels.conv2d_scratch_len(p)];
            kernels.conv2d(&x, &data.view(), bias, p, Activation::None, &mut y, &mut scratch).unwrap();
            assert_close(&y, &want, &format!("{kernels:?} {kind:?} {p:?}"));
        }
    }

    #[test]
    fn matches_reference_on_random_shapes_encodings_paths_and_threads() {
        let mut rng = Rng::new(42);
        let sets = kernel_sets();
        let kinds = WeightKind::all();
        for case in 0..120 {
            let p = random_params(&mut rng, case);
            check_all_paths(&mut rng, &sets, &p, kinds[case % kinds.len()], case % 3 != 0);
        }
    }

    #[test]
    fn many_filters_span_panels_groups_and_workers() {
        // 100 and 53 filters: several 48-filter panels with a ragged last one, worker ranges that
        // cross group boundaries, and output planes that are not a multiple of any vector width.
        let mut rng = Rng::new(8);
        let sets = kernel_sets();
        let base = Conv2dParams {
            batch: 2,
            in_c: 6,
            in_h: 9,
            in_w: 13,
            out_c: 100,
            out_h: 9,
            out_w: 13,
            k_h: 1,
            k_w: 1,
            stride_h: 1,
            stride_w: 1,
            pad_top: 0,
            pad_left: 0,
            dil_h: 1,
            dil_w: 1,
            groups: 2,
        };
        let conv3 =
            Conv2dParams { in_c: 4, out_c: 53, k_h: 3, k_w: 3, pad_top: 1, pad_left: 1, groups: 1, ..base };
        let depthwise = Conv2dParams { in_c: 7, out_c: 7, groups: 7, ..conv3 };
        let kind = WeightKind::Codebook(4, pith_format::ir::CodebookKind::PerRow, false);
        // Strided depthwise over a 13-wide row: three phases of unequal length.
        let strided = Conv2dParams { stride_h: 2, stride_w: 3, out_h: 5, out_w: 5, ..depthwise };
        for p in [base, conv3, depthwise, strided] {
            check_all_paths(&mut rng, &sets, &p, kind, true);
            check_all_paths(&mut rng, &sets, &p, WeightKind::F32, false);
        }
    }

    #[test]
    fn tiles_split_rows_and_activation_is_fused() {
        // Filters of 27 and 108 weights give tiles of 1213 and 303 pixels, which end mid-row of
        // the 50- and 24-wide outputs.
        let mut rng = Rng::new(3);
        for (in_c, stride, dil) in [(3, 1, 1), (12, 2, 2)] {
            let (in_h, in_w) = (60, 50);
            let out = |n: usize| (n + 2 - dil * 2 - 1) / stride + 1;
            let p = Conv2dParams {
                batch: 1,
                in_c,
                in_h,
                in_w,
                out_c: 4,
                out_h: out(in_h),
                out_w: out(in_w),
                k_h: 3,
                k_w: 3,
                stride_h: stride,
                stride_w: stride,
                pad_top: 1,
                pad_left: 1,
                dil_h: dil,
                dil_w: dil,
                groups: 1,
            };
            assert!(tile_pixels(&p) < p.out_h * p.out_w);
            assert!(!tile_pixels(&p).is_multiple_of(p.out_w));
            let data = random_weight(&mut rng, WeightKind::F32, 4, p.filter_len());
            let x = rng.vec(in_c * in_h * in_w);
            let mut y = vec![0.0; 4 * p.out_h * p.out_w];
            let mut scratch = vec![0.0; scratch_len(&p)];
            let act = Activation::Clip { min: -0.5, max: 0.5 };
            conv2d(&Kernels::default(), &x, &data.view(), None, &p, act, &mut y, &mut scratch).unwrap();
            let want: Vec<f32> =
                reference(&x, &decode_all(&data, 4), None, &p).into_iter().map(|v| act.apply(v)).collect();
            assert_close(&y, &want, "tiled");
        }
    }

    #[test]
    fn rejects_bad_buffers_and_params() {
        let mut rng = Rng::new(5);
        let p = random_params(&mut rng, 0);
        let data = random_weight(&mut rng, WeightKind::F32, p.out_c, p.filter_len());
        let x = vec![0.0; p.batch * p.in_c * p.in_h * p.in_w];
        let mut y = vec![0.0; p.batch * p.out_c * p.out_h * p.out_w];
        let mut s = vec![0.0; scratch_len(&p)];
        let a = Activation::None;
        let k = Kernels::default();
        assert!(conv2d(&k, &x[1..], &data.view(), None, &p, a, &mut y, &mut s).is_err());
        let mut short = vec![0.0; scratch_len(&p) - 1];
        assert!(conv2d(&k, &x, &data.view(), None, &p, a, &mut y, &mut short).is_err());
        let bad = Conv2dParams { stride_h: 0, ..p };
        assert!(conv2d(&k, &x, &data.view(), None, &bad, a, &mut y, &mut s).is_err());
        let bad = Conv2dParams { out_c: p.out_c + 1, groups: 1, ..p };
        assert!(conv2d(&k, &x, &data.view(), None, &bad, a, &mut y, &mut s).is_err());
    }

    #[test]
    fn empty_outputs_succeed_under_every_kernel_set() {
        let mut rng = Rng::new(6);
        let p = Conv2dParams { batch: 2, out_c: 0, ..random_params(&mut rng, 0) };
        let p = Conv2dParams { groups: 1, in_c: p.in_c.max(1), ..p };
        let x = rng.vec(p.batch * p.in_c * p.in_h * p.in_w);
        let w: [f32; 0] = [];
        for kernels in kernel_sets() {
            let mut s = vec![0.0; kernels.conv2d_scratch_len(&p)];
            let view = TensorView::F32(&w);
            kernels.conv2d(&x, &view, None, &p, Activation::None, &mut [], &mut s).unwrap();
            let pt = Conv2dParams { in_c: 0, out_c: p.in_c, ..p };
            let mut s = vec![0.0; kernels.conv_transpose2d_scratch_len(&pt)];
            let mut y = vec![f32::NAN; p.batch * pt.out_c * p.out_h * p.out_w];
            kernels.conv_transpose2d(&[], &view, None, &pt, Activation::None, &mut y, &mut s).unwrap();
            assert!(y.iter().all(|&v| v == 0.0), "no inputs: bias-free output is zero");
        }
    }

    #[test]
    fn valid_range_matches_brute_force() {
        for out_len in 0..6 {
            for stride in 1..4 {
                for off in -5isize..5 {
                    for in_len in 0..7 {
                        let (lo, hi) = valid_range(out_len, stride, off, in_len);
                        for o in 0..out_len {
                            let i = o as isize * stride as isize + off;
                            let inside = i >= 0 && i < in_len as isize;
                            assert_eq!(inside, o >= lo && o < hi, "{out_len} {stride} {off} {in_len} {o}");
                        }
                    }
                }
            }
        }
    }
}
