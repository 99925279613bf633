//! The shifted path of [`super::conv2d`]: slabs of zero-padded, stride-phase-split input rows.

use std::ops::Range;

use super::{direct_store, fused_activation, Conv2dParams, Layer, Residual};
use crate::arch::{FusedRows, Isa, ResidualRows};
use crate::{Activation, WeightRows};

/// Most f32 elements of the zero-padded input planes of one slab of output rows (32 KiB): the
/// shifted path zeroes, fills and reads them once per slab, so they should stay in L1. Against
/// 512 KiB (an L2-sized slab), a 3→16-filter 3×3 stride-2 layer over 224×224 took 0.124 → 0.090
/// ms on int8 at 1 thread (Xeon, one-layer model); 64 KiB and 16 KiB measured within 5 % of it.
const SLAB_BUDGET: usize = 1 << 13;
/// Most f32 elements of decoded filters the shifted path keeps in one panel (256 KiB): with
/// filters of a few hundred weights, a whole layer's filters (per thread) are decoded once.
const SHIFTED_PANEL_BUDGET: usize = 1 << 16;
/// f32 elements of one accumulator block of the shifted path (128 KiB).
const ACC_BUDGET: usize = 1 << 15;

impl Layer<'_, '_> {
    /// Every other convolution, as an implicit GEMM over shifted views: output rows `rows` of
    /// filters `ocs` of image `xb`, where `out[i]` holds those rows of filter `ocs.start + i`
    /// (plus the same rows of the image's `residual`, if given).
    ///
    /// Slab by slab of output rows, the group's input rows are copied into the zero-padded,
    /// stride-phase-split planes of [`Slab`], where tap `(c, ky, kx)` of a run of output pixels
    /// is a contiguous run at `offsets[tap]` (plus the run's start). `gemm_rows_at` then
    /// accumulates all taps of a panel of filters in registers, over whole padded rows (the few
    /// columns past `out_w` in each are computed and dropped), with no unfolded copy and no
    /// per-pixel border tests.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn shifted(
        &self,
        slab: &Slab,
        taps: &Taps,
        xb: &[f32],
        residual: Option<Residual<'_>>,
        ocs: Range<usize>,
        rows: Range<usize>,
        out: &mut [&mut [f32]],
        scratch: &mut [f32],
    ) {
        let p = self.p;
        let (cin_g, cout_g, k_len) = (p.in_per_group(), p.out_per_group(), p.filter_len());
        let in_plane = p.in_h * p.in_w;
        let depthwise = uses_depthwise_rows(p);
        let (planes, rest) = scratch.split_at_mut(cin_g * slab.len());
        let (panel, acc) = rest.split_at_mut(slab.panel_rows * k_len);
        // The slab whose padding `planes` holds: every fill writes the same columns of every row
        // inside the input, so after the first fill's zeros only a slab with rows outside the
        // input (the top and bottom ones) needs them again, and only when the slab changes (a
        // depthwise layer refills one slab per channel). The first 3×3 stride-2 layer of
        // MobileNetV3-Small had zeroed its planes for every slab: 0.6 % of the model's time.
        let mut padded_for = None;
        let mut oc = ocs.start;
        while oc < ocs.end {
            // Filters of oc's group, at most one panel.
            let g = oc / cout_g;
            let end = ocs.end.min((g + 1) * cout_g).min(oc + slab.panel_rows);
            let m = end - oc;
            let xg = &xb[g * cin_g * in_plane..][..cin_g * in_plane];
            let k_len = taps.decode(self.rows, oc..end, panel, k_len);
            let (a, offsets) = (&panel[..m * k_len], &taps.offsets[..]);
            let sub_rows = slab.sub_rows(m);
            // What a fused tile can apply (not a LeakyRelu, whose slope it takes per row).
            let fused_act = match self.act.same() {
                Some(Activation::LeakyRelu(_)) => None,
                _ => fused_activation(self.act, oc, &[]),
            };
            // Depthwise filters with no residual write straight into the output when the kernel
            // can finish them: `Some(clamp)`.
            let direct = self
                .act
                .same()
                .and_then(direct_store)
                .filter(|_| depthwise && residual.is_none_or(|res| res.channels <= oc));
            let mut oy0 = rows.start;
            while oy0 < rows.end {
                let slab_rows = slab.rows.min(rows.end - oy0);
                let zero = padded_for.is_none() || (padded_for != Some(oy0) && !slab.rows_inside(p, oy0));
                slab.fill(&self.isa, p, xg, oy0, planes, zero);
                padded_for = Some(oy0);
                let mut s0 = 0;
                while s0 < slab_rows {
                    let sr = sub_rows.min(slab_rows - s0);
                    let first_row = oy0 - rows.start + s0;
                    if let Some(clamp) = direct {
                        // Nothing for an epilogue to do but the bias, which the sums start from,
                        // and the clamp the kernel applies: straight into the output rows.
                        for (r, filter) in a.chunks_exact(k_len).enumerate() {
                            let dst = &mut out[oc - ocs.start + r][first_row * p.out_w..][..sr * p.out_w];
                            let init = self.bias.map_or(0.0, |b| b[oc + r]);
                            let shape = self.depthwise_shape(slab, sr, p.out_w, init, clamp);
                            (self.isa.depthwise_rows)(filter, &planes[s0 * slab.wq..], dst, shape);
                        }
                        s0 += sr;
                        continue;
                    }
                    if let (false, Some(fused), Some(act)) = (depthwise, self.isa.gemm_rows_fused, fused_act)
                    {
                        // Bias, residual and activation in the register tile, one output row at a
                        // time, so the padded columns between rows are never computed and no
                        // accumulator is written and read back (BlazeFace's 5×5 stride-2 first
                        // layer 3 % faster; PP-OCRv4 det as a whole unchanged).
                        let plane = p.out_h * p.out_w;
                        for s in 0..sr {
                            let first = (rows.start + first_row + s) * p.out_w;
                            let out_rows = FusedRows {
                                dst: &mut out[oc - ocs.start..end - ocs.start],
                                col: (first_row + s) * p.out_w,
                                bias: self.bias.map(|b| &b[oc..end]),
                                residual: residual
                                    .map(|res| (res, res.channels.saturating_sub(oc).min(m)))
                                    .filter(|&(_, rows)| rows > 0)
                                    .map(|(res, rows)| ResidualRows {
                                        data: &res.data[oc * plane + first..],
                                        pitch: plane,
                                        rows,
                                    }),
                                act,
                            };
                            fused(a, k_len, &planes[(s0 + s) * slab.wq..], offsets, p.out_w, out_rows);
                        }
                        s0 += sr;
                        continue;
                    }
                    // Whole padded rows, except that the last stops at the last real column.
                    let n = (sr - 1) * slab.wq + p.out_w;
                    let acc = &mut acc[..m * n];
                    if depthwise {
                        self.depthwise(slab, a, planes, s0, sr, acc, n);
                    } else {
                        (self.isa.gemm_rows_at)(a, k_len, &planes[s0 * slab.wq..], offsets, n, acc, n);
                    }
                    for (r, arow) in acc.chunks_exact(n).enumerate() {
                        let dst = &mut out[oc - ocs.start + r][first_row * p.out_w..][..sr * p.out_w];
                        let bias = self.bias.map_or(0.0, |b| b[oc + r]);
                        let first = (rows.start + first_row) * p.out_w;
                        let res = residual
                            .and_then(|res| res.plane(oc + r, p.out_h * p.out_w))
                            .map(|plane| &plane[first..][..sr * p.out_w]);
                        (self.isa.store_rows)(self.act.of(oc + r), arow, slab.wq, bias, res, dst, p.out_w);
                    }
                    s0 += sr;
                }
                oy0 += slab_rows;
            }
            oc = end;
        }
    }
}

/// Whether the shifted path runs a layer's filters through [`Isa::depthwise_rows`]: one input
/// channel per group (depthwise, any channel multiplier), stride 1, undilated. (Strided layers
/// split into one stride-1 sub-filter per stride phase, accumulated pass by pass, measured slower
/// than `gemm_rows_at` on BlazeFace's stride-2 layers, so they stay on it.)
pub(super) fn uses_depthwise_rows(p: &Conv2dParams) -> bool {
    p.in_per_group() == 1 && (p.stride_h, p.stride_w, p.dil_h, p.dil_w) == (1, 1, 1, 1)
}

impl Layer<'_, '_> {
    /// The accumulator block of [`Layer::shifted`] for depthwise filters `a` (see
    /// [`uses_depthwise_rows`]): output rows `s0 .. s0 + sr` of the slab into `acc` (`n`
    /// elements per filter, rows `wq` apart), each filter over its channel's padded plane.
    #[allow(clippy::too_many_arguments)]
    fn depthwise(
        &self,
        slab: &Slab,
        a: &[f32],
        planes: &[f32],
        s0: usize,
        sr: usize,
        acc: &mut [f32],
        n: usize,
    ) {
        let shape = self.depthwise_shape(slab, sr, slab.wq, 0.0, None);
        for (filter, out) in a.chunks_exact(self.p.filter_len()).zip(acc.chunks_exact_mut(n)) {
            (self.isa.depthwise_rows)(filter, &planes[s0 * slab.wq..], out, shape);
        }
    }
}

/// The taps [`Layer::shifted`] multiplies ([`Slab::taps`]).
#[derive(Debug)]
pub(crate) struct Taps {
    /// Element offset of each multiplied tap in the slab's planes ([`Slab::offsets`]).
    offsets: Vec<usize>,
    /// When some taps read only padding: the others, by index in filter order (ascending).
    live: Option<Vec<usize>>,
}

impl Taps {
    /// How many taps are multiplied.
    #[cfg(test)]
    pub(super) fn multiplied(&self) -> usize {
        self.offsets.len()
    }

    /// Decodes filters `filters` of `rows` into `panel` (one row each), only the multiplied
    /// taps' weights, and returns the row length (`k_len` when every tap is multiplied).
    fn decode(&self, rows: &WeightRows<'_>, filters: Range<usize>, panel: &mut [f32], k_len: usize) -> usize {
        match &self.live {
            None => {
                rows.decode_rows(filters.clone(), &mut panel[..filters.len() * k_len]);
                k_len
            }
            Some(live) => {
                for (row, r) in panel.chunks_exact_mut(live.len()).zip(filters) {
                    rows.decode_ascending(r, live, row);
                }
                live.len()
            }
        }
    }
}

/// Geometry of the shifted path: the input rows one slab of `rows` output rows reads, copied
/// into zero-padded planes split by (row, column) phase of the strides, so that tap `(ky, kx)`
/// of output `(oy, ox)` is element `(oy + ky*dil_h / stride_h, ox + kx*dil_w / stride_w)` of
/// phase plane `(ky*dil_h % stride_h, kx*dil_w % stride_w)`: a contiguous run for consecutive
/// `ox`. Every slab has the same plane extents, so tap offsets are computed once per layer.
#[derive(Debug)]
pub(crate) struct Slab {
    /// Output rows per slab.
    pub(crate) rows: usize,
    /// Rows of each phase plane.
    hq: usize,
    /// Columns of each phase plane; also the row pitch of the accumulator.
    pub(crate) wq: usize,
    /// Phase planes per input channel (`stride_h * stride_w`).
    phases: usize,
    /// Filters decoded together.
    pub(super) panel_rows: usize,
}

impl Slab {
    pub(crate) fn new(p: &Conv2dParams) -> Slab {
        let (sh, sw) = (p.stride_h.max(1), p.stride_w.max(1));
        // Padded width: the input behind its left pad, or the last tap's reach if further.
        let wp = (p.pad_left + p.in_w).max(reach(p.out_w, sw, p.k_w, p.dil_w));
        let wq = wp.div_ceil(sw).max(1);
        let phases = sh * sw;
        let hq = |rows: usize| reach(rows, sh, p.k_h, p.dil_h).div_ceil(sh);
        let per_row = p.in_per_group() * phases * wq;
        // The most output rows whose planes fit the budget (at least one).
        let mut rows = 1;
        while rows < p.out_h && per_row * hq(rows + 1) <= SLAB_BUDGET {
            rows += 1;
        }
        let panel_rows =
            (SHIFTED_PANEL_BUDGET / p.filter_len().max(1)).clamp(8, 256).min(p.out_per_group()).max(1);
        Slab { rows, hq: hq(rows), wq, phases, panel_rows }
    }

    /// f32 elements of one input channel's phase planes.
    pub(crate) fn len(&self) -> usize {
        self.phases * self.hq * self.wq
    }

    /// Output rows per accumulator block of `m` filters.
    pub(super) fn sub_rows(&self, m: usize) -> usize {
        (ACC_BUDGET / (m * self.wq).max(1)).clamp(1, self.rows)
    }

    /// Scratch one worker needs: the planes of a group's input channels, a panel of decoded
    /// filters and one accumulator block.
    pub(super) fn scratch_len(&self, p: &Conv2dParams) -> usize {
        let acc = ACC_BUDGET.max(self.panel_rows * self.wq);
        p.in_per_group() * self.len() + self.panel_rows * p.filter_len() + acc
    }

    /// Whether every padded row the slab starting at output row `oy0` holds is an input row (no
    /// padding above or below it): then [`Slab::fill`] writes all of them.
    pub(crate) fn rows_inside(&self, p: &Conv2dParams, oy0: usize) -> bool {
        let lo = oy0 * p.stride_h;
        let span = reach(self.rows, p.stride_h, p.k_h, p.dil_h);
        lo >= p.pad_top && lo + span <= p.pad_top + p.in_h
    }

    /// The taps layer `p` multiplies on this slab: all of them, or, when some kernel rows or
    /// columns read only padding for every output pixel (a 3×3 layer over a map one row high,
    /// as in text recognizers' necks), only the others.
    pub(crate) fn taps(&self, p: &Conv2dParams) -> Taps {
        // Whether kernel row (column) `t` reads an input row (column) for some output one.
        let reads = |t: usize, out: usize, s: usize, d: usize, pad: usize, n: usize| {
            (0..out).any(|o| (o * s + t * d).checked_sub(pad).is_some_and(|i| i < n))
        };
        let row = |ky: usize| reads(ky, p.out_h, p.stride_h, p.dil_h, p.pad_top, p.in_h);
        let col = |kx: usize| reads(kx, p.out_w, p.stride_w, p.dil_w, p.pad_left, p.in_w);
        // Most layers: every tap reads some input (checked without allocating anything).
        let every = uses_depthwise_rows(p) || ((0..p.k_h).all(row) && (0..p.k_w).all(col));
        if every || !(0..p.k_h).any(row) || !(0..p.k_w).any(col) {
            return Taps { offsets: self.offsets(p), live: None };
        }
        let (rows, cols): (Vec<usize>, Vec<usize>) =
            ((0..p.k_h).filter(|&ky| row(ky)).collect(), (0..p.k_w).filter(|&kx| col(kx)).collect());
        let kept = p.in_per_group() * rows.len() * cols.len();
        let mut offsets = Vec::with_capacity(kept);
        let mut live = Vec::with_capacity(kept);
        for c in 0..p.in_per_group() {
            for &ky in &rows {
                for &kx in &cols {
                    offsets.push(self.offset(p, c, ky, kx));
                    live.push((c * p.k_h + ky) * p.k_w + kx);
                }
            }
        }
        Taps { offsets, live: Some(live) }
    }

    /// Element offset of every tap `(c, ky, kx)`, in filter order, from the start of the planes.
    pub(crate) fn offsets(&self, p: &Conv2dParams) -> Vec<usize> {
        let mut offs = Vec::with_capacity(p.filter_len());
        self.push_offsets(p, &mut offs);
        offs
    }

    /// Pushes [`Slab::offsets`] onto `offs`.
    pub(crate) fn push_offsets(&self, p: &Conv2dParams, offs: &mut Vec<usize>) {
        let (sh, sw) = (p.stride_h.max(1), p.stride_w.max(1));
        let plane_len = self.hq * self.wq;
        for c in 0..p.in_per_group() {
            for ky in 0..p.k_h {
                let (ay, rr) = ((ky * p.dil_h) / sh, (ky * p.dil_h) % sh);
                for kx in 0..p.k_w {
                    let (ax, rc) = ((kx * p.dil_w) / sw, (kx * p.dil_w) % sw);
                    offs.push(c * self.len() + (rr * sw + rc) * plane_len + ay * self.wq + ax);
                }
            }
        }
    }

    /// Element offset of tap `(c, ky, kx)` from the start of the planes: in the phase plane of
    /// its row and column phase, at its row and column within the plane.
    fn offset(&self, p: &Conv2dParams, c: usize, ky: usize, kx: usize) -> usize {
        let (sh, sw) = (p.stride_h.max(1), p.stride_w.max(1));
        let (ay, rr) = ((ky * p.dil_h) / sh, (ky * p.dil_h) % sh);
        let (ax, rc) = ((kx * p.dil_w) / sw, (kx * p.dil_w) % sw);
        c * self.len() + (rr * sw + rc) * self.hq * self.wq + ay * self.wq + ax
    }

    /// Writes into `planes` the input rows of group input `xg` (`in_per_group` planes of
    /// `in_h × in_w`) that the slab starting at output row `oy0` reads, zeroing the planes first
    /// if `zero` (else the caller knows every element this fill does not write is still zero:
    /// every fill writes the same columns of the rows inside the input, so the padding columns
    /// keep the first fill's zeros, and a slab whose rows are all inside the input
    /// ([`Slab::rows_inside`]) writes every row). (One memset of the whole planes measured
    /// faster than zeroing only the padding, a few columns per row.)
    pub(crate) fn fill(
        &self,
        isa: &Isa,
        p: &Conv2dParams,
        xg: &[f32],
        oy0: usize,
        planes: &mut [f32],
        zero: bool,
    ) {
        let (sh, sw) = (p.stride_h, p.stride_w);
        let plane_len = self.hq * self.wq;
        let planes = &mut planes[..p.in_per_group() * self.len()];
        if zero {
            crate::zero(planes);
        }
        // Padded rows lo.. of the slab; lo is a multiple of the stride, so phases are kept.
        let lo = oy0 * sh;
        let span = reach(self.rows, sh, p.k_h, p.dil_h);
        let in_plane = p.in_h * p.in_w;
        for (c, dst) in planes.chunks_exact_mut(self.len()).enumerate() {
            // Padded row py = q * sh + rr is row q of row phase rr (no divisions in the loop).
            for rr in 0..sh {
                for q in 0..self.hq {
                    let py = q * sh + rr;
                    if py >= span {
                        break;
                    }
                    if let Some(iy) = (lo + py).checked_sub(p.pad_top).filter(|&iy| iy < p.in_h) {
                        let row = rr * sw * plane_len + q * self.wq;
                        self.scatter_row(isa, p, &xg[c * in_plane + iy * p.in_w..][..p.in_w], row, dst);
                    }
                }
            }
        }
    }

    /// Writes input row `xrow` into the column phases of the padded row starting at `row` of
    /// phase column 0 in `planes` (phase column `rc` is `rc * hq * wq` further on).
    fn scatter_row(&self, isa: &Isa, p: &Conv2dParams, xrow: &[f32], row: usize, planes: &mut [f32]) {
        let (sw, pl) = (p.stride_w, p.pad_left);
        let plane_len = self.hq * self.wq;
        if p.in_w == 0 {
            return;
        }
        if sw == 1 {
            planes[row + pl..][..p.in_w].copy_from_slice(xrow);
        } else if sw == 2 {
            // Deinterleave pairs (even padded column, odd padded column) from the first input
            // column whose padded column is even; a leading and trailing single are placed alone.
            let s0 = pl % 2;
            let q = (s0 + pl) / 2;
            let (head, odd) = planes.split_at_mut(row + plane_len);
            let even = &mut head[row..];
            let pairs = (p.in_w - s0) / 2;
            (isa.deinterleave)(&xrow[s0..], &mut even[q..q + pairs], &mut odd[q..q + pairs]);
            if s0 == 1 {
                odd[pl / 2] = xrow[0];
            }
            if s0 + 2 * pairs < p.in_w {
                even[(p.in_w - 1 + pl) / 2] = xrow[p.in_w - 1];
            }
        } else {
            // Column phase rc holds input columns ix0, ix0 + sw, ... from phase column q0.
            for rc in 0..sw {
                let ix0 = (rc + sw - pl % sw) % sw;
                if ix0 >= p.in_w {
                    continue;
                }
                let q0 = (ix0 + pl) / sw;
                let dst = &mut planes[row + rc * plane_len + q0..][..self.wq - q0];
                for (d, &v) in dst.iter_mut().zip(xrow.iter().skip(ix0).step_by(sw)) {
                    *d = v;
                }
            }
        }
    }
}

/// Padded extent the taps of `out` outputs reach: `(out - 1) * s + (k - 1) * d + 1`.
fn reach(out: usize, s: usize, k: usize, d: usize) -> usize {
    out.saturating_sub(1) * s + k.saturating_sub(1) * d + 1
}
