//! 2-D convolution (NCHW, ONNX weight layout) on weights decoded a few filters at a time.
//!
//! Output channels are split into contiguous ranges, one per worker thread. Four paths, chosen
//! from the parameters:
//! * direct (one input channel per group, e.g. depthwise): shifted views of zero-padded,
//!   stride-phase-split input planes, multiplied tap row by tap row;
//! * phased (strided, a few input channels per group, e.g. an RGB stem): the column matrix is
//!   copied in contiguous runs from such phase planes;
//! * pointwise (1×1, stride 1, no padding): the input planes serve as the column matrix;
//! * general: a tile of output pixels is unfolded (im2col) into a bounded scratch.
//!
//! The last three decode a panel of at most [`PANEL_ROWS`] filters (never the whole tensor) and
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

    /// One input channel per group (depthwise): [`Layer::direct`].
    fn is_direct(&self) -> bool {
        self.in_per_group() <= 1
    }

    /// Strided with a handful of input channels per group (e.g. an RGB stem) whose phase planes
    /// fit [`PHASED_MAX_PLANES`]: [`Layer::phased`].
    fn is_phased(&self) -> bool {
        let cin_g = self.in_per_group();
        (2..=PHASED_MAX_IN).contains(&cin_g)
            && self.stride_w > 1
            && cin_g * PhasePlanes::new(self).len() <= PHASED_MAX_PLANES
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
    if p.groups == 0 {
        return 1; // rejected by `check`
    }
    let per = if p.is_direct() || p.is_phased() {
        PhasePlanes::new(p).scratch_len(p)
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
        let (direct, phased) = (p.is_direct(), p.is_phased());
        let planes = PhasePlanes::new(p);
        if direct || phased {
            // Zero the phase planes (the first part of scratch on both paths) once: each group
            // then overwrites only its input positions, and the padding stays zero.
            scratch[..cin_g * planes.len()].fill(0.0);
        }
        let mut oc = ocs.start;
        while oc < ocs.end {
            // The part of `ocs` inside oc's group.
            let g = oc / cout_g;
            let end = ocs.end.min((g + 1) * cout_g);
            let xg = &xb[g * cin_g * in_plane..][..cin_g * in_plane];
            let yg = &mut y[(oc - ocs.start) * out_plane..(end - ocs.start) * out_plane];
            if direct {
                self.direct(&planes, xg, oc, yg, scratch);
            } else if phased {
                self.phased(&planes, xg, oc, yg, scratch);
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

    /// One input channel per group (depthwise; none for an empty layer): the input channel is
    /// scattered once into the zero-padded phase planes of [`PhasePlanes`], so every tap is a
    /// shifted contiguous view of one phase plane. Output planes are then a few `gemm_rows` calls
    /// per kernel row over bands of whole rows, [`DIRECT_OCS`] filters at a time: no per-pixel
    /// border tests and no unfolded copy (the padding makes every read land on a zero or a value).
    fn direct(&self, g: &PhasePlanes, xg: &[f32], oc0: usize, yg: &mut [f32], scratch: &mut [f32]) {
        let p = self.p;
        let (cin_g, k_len) = (p.in_per_group(), p.filter_len());
        let out_plane = p.out_h * p.out_w;
        let (planes, rest) = scratch.split_at_mut(cin_g * g.len());
        let (wpanel, rest) = rest.split_at_mut(DIRECT_OCS * k_len);
        let (taps, acc) = rest.split_at_mut(DIRECT_OCS * p.k_w);
        for (c, dst) in planes.chunks_exact_mut(g.len()).enumerate() {
            g.scatter(p, &xg[c * p.in_h * p.in_w..][..p.in_h * p.in_w], dst);
        }
        let plane_len = g.hq * g.wq;
        // Taps of one kernel row that share a column phase sit `col_step` apart in kx and
        // `col_ldb` apart in the phase plane: one gemm_rows call each.
        let gcd_w = gcd(p.dil_w, p.stride_w);
        let (col_step, col_ldb) = (p.stride_w / gcd_w, p.dil_w / gcd_w);
        for (bi, yblock) in yg.chunks_mut(DIRECT_OCS * out_plane).enumerate() {
            let (first, m) = (oc0 + bi * DIRECT_OCS, yblock.len() / out_plane);
            for r in 0..m {
                self.rows.decode(first + r, &mut wpanel[r * k_len..(r + 1) * k_len]);
            }
            let mut oy0 = 0;
            while oy0 < p.out_h {
                let rows = g.band.min(p.out_h - oy0);
                // Whole padded rows, except that the last band stops at the last real column
                // (the planes have no rows past it to read).
                let n = if oy0 + rows == p.out_h { (rows - 1) * g.wq + p.out_w } else { rows * g.wq };
                let acc = &mut acc[..m * n];
                // Zero (a memset); the bias is added while copying out.
                acc.fill(0.0);
                for (c, cplanes) in planes.chunks_exact(g.len()).enumerate() {
                    for ky in 0..p.k_h {
                        let (ay, rr) = ((ky * p.dil_h) / p.stride_h, (ky * p.dil_h) % p.stride_h);
                        for kx0 in 0..col_step.min(p.k_w) {
                            let (ax, rc) = ((kx0 * p.dil_w) / p.stride_w, (kx0 * p.dil_w) % p.stride_w);
                            let count = (p.k_w - kx0).div_ceil(col_step);
                            for r in 0..m {
                                let wk = &wpanel[r * k_len + (c * p.k_h + ky) * p.k_w..][..p.k_w];
                                for (t, &w) in taps[r * count..][..count]
                                    .iter_mut()
                                    .zip(wk[kx0..].iter().step_by(col_step))
                                {
                                    *t = w;
                                }
                            }
                            let plane = &cplanes[(rr * p.stride_w + rc) * plane_len..][..plane_len];
                            let b = &plane[(oy0 + ay) * g.wq + ax..];
                            (self.isa.gemm_rows)(&taps[..m * count], count, b, col_ldb, n, acc, n);
                        }
                    }
                }
                for (r, arow) in acc.chunks_exact(n).enumerate() {
                    let bias = self.bias.map_or(0.0, |b| b[first + r]);
                    let band = &mut yblock[r * out_plane..][oy0 * p.out_w..(oy0 + rows) * p.out_w];
                    for (yrow, src) in band.chunks_exact_mut(p.out_w).zip(arow.chunks(g.wq)) {
                        for (y, &a) in yrow.iter_mut().zip(src) {
                            *y = a + bias;
                        }
                    }
                }
                oy0 += rows;
            }
            for yplane in yblock.chunks_exact_mut(out_plane) {
                self.act.apply_slice(yplane);
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

    /// Strided layers with few input channels (e.g. an RGB stem): like [`Layer::unfolded`], but
    /// the column matrix of a band of output rows is copied from the phase planes of
    /// [`PhasePlanes`], where every tap of an output row is a contiguous run, instead of being
    /// gathered element by element with the stride.
    fn phased(&self, g: &PhasePlanes, xg: &[f32], oc0: usize, yg: &mut [f32], scratch: &mut [f32]) {
        let p = self.p;
        let k_len = p.filter_len();
        let (planes, rest) = scratch.split_at_mut(p.in_per_group() * g.len());
        let (panel, cols) = rest.split_at_mut(panel_rows(p) * k_len);
        for (c, dst) in planes.chunks_exact_mut(g.len()).enumerate() {
            g.scatter(p, &xg[c * p.in_h * p.in_w..][..p.in_h * p.in_w], dst);
        }
        let plane_len = g.hq * g.wq;
        let mut oy0 = 0;
        while oy0 < p.out_h {
            let rows = g.band.min(p.out_h - oy0);
            let t = rows * p.out_w;
            // Column row k is tap (c, ky, kx) in filter order.
            for (k, col) in cols[..k_len * t].chunks_exact_mut(t).enumerate() {
                let (c, ky, kx) = (k / (p.k_h * p.k_w), k / p.k_w % p.k_h, k % p.k_w);
                let (ay, rr) = ((ky * p.dil_h) / p.stride_h, (ky * p.dil_h) % p.stride_h);
                let (ax, rc) = ((kx * p.dil_w) / p.stride_w, (kx * p.dil_w) % p.stride_w);
                let phase = &planes[c * g.len() + (rr * p.stride_w + rc) * plane_len..][..plane_len];
                for (r, dst) in col.chunks_exact_mut(p.out_w).enumerate() {
                    dst.copy_from_slice(&phase[(oy0 + r + ay) * g.wq + ax..][..p.out_w]);
                }
            }
            self.panel_product(&cols[..k_len * t], t, oc0, oy0 * p.out_w, t, yg, panel);
            oy0 += rows;
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

/// Filters the direct path accumulates together: the widest register block of `gemm_rows`, so
/// each tap's input vector is loaded once per block.
const DIRECT_OCS: usize = 8;
/// Most input channels per group the phased path takes (its planes hold the whole group input).
const PHASED_MAX_IN: usize = 4;
/// Most f32 elements of phase planes the phased path takes (1 MiB): larger inputs are unfolded
/// tile by tile in bounded scratch instead.
const PHASED_MAX_PLANES: usize = 1 << 18;

/// Output rows' worth of accumulator one band of the direct path covers (f32 elements):
/// small enough that the band stays in L1 while each kernel row's taps are added to it.
const BAND_BUDGET: usize = 4096;

/// The direct path's view of one input plane: zero-padded so every tap of every output
/// lands inside it, then split by (row, column) phase of the strides, so that tap `(ky, kx)` of
/// output `(oy, ox)` is element `(oy + ky*dil_h / stride_h, ox + kx*dil_w / stride_w)` of phase
/// plane `(ky*dil_h % stride_h, kx*dil_w % stride_w)`: a contiguous row for consecutive `ox`.
struct PhasePlanes {
    /// Rows of each phase plane.
    hq: usize,
    /// Columns of each phase plane; also the row pitch of the band accumulator.
    wq: usize,
    /// Output rows per band.
    band: usize,
    /// Phase planes (`stride_h * stride_w`).
    phases: usize,
}

impl PhasePlanes {
    fn new(p: &Conv2dParams) -> PhasePlanes {
        let (sh, sw) = (p.stride_h.max(1), p.stride_w.max(1));
        // Padded extents: the input behind its begin pads, or the last tap's reach if further.
        let reach = |out: usize, s: usize, k: usize, d: usize| {
            out.saturating_sub(1) * s + k.saturating_sub(1) * d + 1
        };
        let hp = (p.pad_top + p.in_h).max(reach(p.out_h, sh, p.k_h, p.dil_h));
        let wp = (p.pad_left + p.in_w).max(reach(p.out_w, sw, p.k_w, p.dil_w));
        let (hq, wq) = (hp.div_ceil(sh), wp.div_ceil(sw).max(1));
        let band =
            if p.is_direct() { BAND_BUDGET / wq } else { COL_BUDGET / (p.filter_len() * p.out_w).max(1) };
        let band = band.clamp(1, p.out_h.max(1));
        PhasePlanes { hq, wq, band, phases: sh * sw }
    }

    /// f32 elements of all phase planes.
    fn len(&self) -> usize {
        self.phases * self.hq * self.wq
    }

    /// Scratch the direct or phased path needs: the phase planes of every input channel of a
    /// group, plus for direct a block of decoded filters, their gathered taps of one kernel row
    /// and one band of accumulator rows per filter of the block; for phased a filter panel and
    /// the column matrix of one band.
    fn scratch_len(&self, p: &Conv2dParams) -> usize {
        let planes = p.in_per_group() * self.len();
        if p.is_direct() {
            let m = DIRECT_OCS;
            planes + m * p.filter_len() + m * p.k_w + m * self.band * self.wq
        } else {
            planes + panel_rows(p) * p.filter_len() + p.filter_len() * self.band * p.out_w
        }
    }

    /// Writes plane `x` (`in_h × in_w`) into its positions in `planes`.
    ///
    /// Only the positions of input elements are written: the rest must already be zero, which
    /// holds from one channel to the next since every channel writes the same positions.
    fn scatter(&self, p: &Conv2dParams, x: &[f32], planes: &mut [f32]) {
        let planes = &mut planes[..self.len()];
        let (sh, sw) = (p.stride_h, p.stride_w);
        let plane_len = self.hq * self.wq;
        if p.in_w == 0 {
            return;
        }
        for (iy, xrow) in x.chunks_exact(p.in_w).take(p.in_h).enumerate() {
            let py = iy + p.pad_top;
            let row = (py % sh) * sw * plane_len + (py / sh) * self.wq;
            if sw == 1 {
                planes[row + p.pad_left..][..p.in_w].copy_from_slice(xrow);
            } else if sw == 2 {
                // Deinterleave pairs (even padded column, odd padded column) from the first input
                // column whose padded column is even; a leading and trailing single are placed alone.
                let (s0, pl) = (p.pad_left % 2, p.pad_left);
                let q = (s0 + pl) / 2;
                let (head, odd) = planes.split_at_mut(row + plane_len);
                let even = &mut head[row..];
                let pairs = xrow[s0..].chunks_exact(2);
                let tail = pairs.remainder();
                for ((e, o), pair) in even[q..].iter_mut().zip(&mut odd[q..]).zip(pairs) {
                    (*e, *o) = (pair[0], pair[1]);
                }
                if s0 == 1 {
                    odd[pl / 2] = xrow[0];
                }
                if let [last] = tail {
                    even[(p.in_w - 1 + pl) / 2] = *last;
                }
            } else {
                // Column phase rc holds input columns ix0, ix0 + sw, ... from phase column q0.
                for rc in 0..sw {
                    let ix0 = (rc + sw - p.pad_left % sw) % sw;
                    if ix0 >= p.in_w {
                        continue;
                    }
                    let q0 = (ix0 + p.pad_left) / sw;
                    let dst = &mut planes[row + rc * plane_len + q0..][..self.wq - q0];
                    for (d, &v) in dst.iter_mut().zip(xrow.iter().skip(ix0).step_by(sw)) {
                        *d = v;
                    }
                }
            }
        }
    }
}

/// Greatest common divisor (`gcd(a, 0) = a`).
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
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
                    } else if a < b {
                        let src = xrow[first as usize..].iter().step_by(p.stride_w);
                        for (v, &x) in taps.iter_mut().zip(src) {
                            *v = x;
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
            // Stale scratch (NaN) must never leak into the result.
            let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(p)];
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
    fn direct_and_phased_paths_cover_every_phase_and_border() {
        // Depthwise (direct) and 3-channel strided (phased) convs over small widths, left pads,
        // strides and dilations: odd and even pads put a single leading or trailing column in a
        // phase plane, and pad_right 1 makes the last taps read the zero border.
        let mut rng = Rng::new(11);
        let sets = kernel_sets();
        for (in_c, groups, out_c) in [(2, 2, 4), (3, 1, 5)] {
            for stride_w in 1..=3 {
                for dil_w in 1..=2 {
                    for pad_left in 0..=2 {
                        for in_w in [1, 2, 5, 8] {
                            if in_w + pad_left + 1 < 2 * dil_w + 1 {
                                continue;
                            }
                            let p = Conv2dParams {
                                batch: 1,
                                in_c,
                                in_h: 5,
                                in_w,
                                out_c,
                                out_h: out_extent(5, 1, 2, 2, 1),
                                out_w: out_extent(in_w, pad_left + 1, 3, stride_w, dil_w),
                                k_h: 2,
                                k_w: 3,
                                stride_h: 2,
                                stride_w,
                                pad_top: 1,
                                pad_left,
                                dil_h: 1,
                                dil_w,
                                groups,
                            };
                            assert!(p.is_direct() || p.is_phased() || stride_w == 1);
                            check_all_paths(&mut rng, &sets, &p, WeightKind::F32, true);
                        }
                    }
                }
            }
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
