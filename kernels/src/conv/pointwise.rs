//! The 1×1 path of [`super::conv2d`]: panels of decoded filters against the input planes as they lie.

use std::ops::Range;

use super::{fused_activation, scratch_len, splits_by_bands, Conv2dParams, Layer, Residual, PIXEL_SPLIT_MIN};
use crate::arch::{FusedActivation, FusedRows, ResidualRows};
use crate::parallel::{split_parts, split_rows, with_plane_list, with_plane_offsets, TASKS_PER_THREAD};
use crate::{Activation, Kernels};

/// f32 elements of the pointwise path's accumulator tile (128 KiB: a panel of filters times a
/// tile of pixels, in L2 between the GEMM and the epilogue). 32 KiB, in L1, suited BlazeFace's
/// 24-channel layers as well but made PP-OCRv4 det's 1×1 layers over 96-192 channels re-read
/// their panel of filters for too many narrow tiles (its conv time 24-26 ms either way at 320×640).
pub(super) const POINTWISE_ACC: usize = 1 << 15;
/// Filters decoded together into one panel of the pointwise path: a multiple of every path's
/// register block (4, 6, 8 rows), small enough that panel × filter length stays in L2.
pub(super) const PANEL_ROWS: usize = 48;

/// What one dot product of [`sliver_columns`] costs beyond its multiply-adds (a function call,
/// a horizontal sum, its share of the gathered column), in vector multiply-adds.
const DOT_OVERHEAD: usize = 64;

/// Columns at the end of a pointwise tile of `width` columns that dot products (each filter
/// against the gathered input column: `k / lanes` vector multiply-adds plus [`DOT_OVERHEAD`])
/// compute for at most half of what the vector strip `Isa::gemm_rows_at` rounds them up to
/// costs (`k` vector multiply-adds per filter, whatever the columns): 0, or the `width % lanes`
/// columns past the last whole vector. A 7×7 plane's 49 columns on AVX-512 then take 3 vectors
/// and one dot product instead of 4 vectors (the last stages of ImageNet classifiers):
/// MobileNetV2's 160→960, 960→160 and 320→1280 layers at 7×7 went from 0.233, 0.195 and 0.573 ms
/// to 0.191, 0.160 and 0.474 (one-layer models, fastest of 6 alternating `pith bench --profile`
/// rounds). 384→64 at 14×14 (4 columns past 12 vectors) measured no gain and stays on vectors.
/// A single leftover column takes dot products when they cost at most the strip (Zen 3, AVX2:
/// 160→960 at 7×7 from 0.273 to 0.253 ms; 576→96 at 14×14, 4 columns past 24 vectors, was 2 %
/// slower on dot products and stays on vectors).
pub(super) fn sliver_columns(lanes: usize, width: usize, k: usize) -> usize {
    let lanes = lanes.max(1);
    let rest = width % lanes;
    let dots = rest * (k.div_ceil(lanes) + DOT_OVERHEAD);
    // On 8- and 16-lane paths the strip for one leftover column is a masked one-vector tile,
    // bound by its multiply-adds' latency: there a dot product pays from its own cost down
    // (AVX-512, 96→576 over 7×7, one layer at 1 thread: 0.050 → 0.041 ms, the strip had taken 23 %
    // of it). NEON's 4-lane strip keeps the general rule (not timed).
    let pays = if lanes >= 8 && rest == 1 { dots <= k } else { 2 * dots <= k };
    if width > lanes && rest > 0 && pays {
        rest
    } else {
        0
    }
}

/// Filters per panel of the pointwise path.
pub(super) fn panel_rows(p: &Conv2dParams) -> usize {
    PANEL_ROWS.min(p.out_per_group()).max(1)
}

/// Whether a pointwise layer is split across threads by pixels (every thread computing all
/// filters of its rows) rather than by filters. Split by filters, each task sweeps the whole
/// input for its filters; with few filters per task (BlazeFace's 24–48) that is a few
/// multiply-adds per input load. Split by pixels, each thread reads only its rows' inputs for
/// full panels, and decodes every filter itself, which costs little while each thread still
/// has [`PIXEL_SPLIT_MIN`] pixels. Over large planes always, one band per thread, so that the
/// layers of a chain find their rows where the layer before wrote them
/// ([`super::ROW_BAND_MIN_PLANE`]).
pub(super) fn pointwise_by_pixels(kernels: &Kernels, p: &Conv2dParams) -> bool {
    let threads = kernels.threads_now();
    let filters_per_task = p.out_c / (threads * TASKS_PER_THREAD).max(1);
    threads > 1
        && p.groups == 1
        && (filters_per_task < PANEL_ROWS / 2 || splits_by_bands(kernels, p))
        && p.out_h >= threads
        && p.out_h * p.out_w >= threads * PIXEL_SPLIT_MIN
}

/// Output pixels of the 1×1 layers that [`pointwise_by_depth`] splits by input channels. Each
/// thread decodes every filter for its share of the depth, which over 7×7 planes costs more than
/// the crossing it saves (MobileNetV2's 960 -> 160 at 2 threads: 0.086 -> 0.125 ms). Over 12×12
/// the two passes (the sums, then their reduction) outweigh it too: BlazeFace full range's
/// projections 128 -> 36, 144 -> 48 and 192 -> 64 there took 15.5, 18.6 and 28.2 µs at 2 threads
/// split by depth against 13.3, 20.0 and 34.2 at 1, and 8.8, 11.9 and 19.8 split by filters
/// (Zen 4, `pith bench --profile`); the model 1.84 -> 1.81 ms (5 alternating runs), MobileNetV2,
/// MobileNetV3-Small, PP-OCRv4 det and BlazeFace unchanged within 1 %. From 14×14 it is kept.
const DEPTH_SPLIT_PLANES: std::ops::RangeInclusive<usize> = 14 * 14..=1024;

/// What adding one partial sum into an output (and the epilogue) costs in multiply-adds, for
/// [`Kernels::min_task_work`]: a load and an add, bound by memory, not by arithmetic.
const REDUCE_WORK_WEIGHT: usize = 16;

/// Shares of the depth a layer that [`pointwise_by_depth`] takes is summed in, whatever the
/// thread count: the sums' last bits depend on the shares, so a session computes the same bits
/// on any thread count, and whether or not the pool runs the shares in parallel (its workers
/// stalled, the thread tuner's serial mode). Two, the measured case: on more threads each share
/// is cut further by filters. At 1 thread the split costs a second pass: MobileNetV2's ten
/// projections over 14×14 and 28×28 with planar activations on AVX2 took 1.335 ms per run
/// against 1.235 unsplit (`pith bench --profile`, 4 alternating runs, Zen 4), while paired runs
/// of the whole model measured level (1.000, quartiles 0.992-1.008). AVX-512 runs those layers
/// blocked by default, and the int8 path never splits by depth.
pub(super) const DEPTH_SHARES: usize = 2;

/// Whether a 1×1 layer is summed in [`DEPTH_SHARES`] shares of its input channels, which the
/// threads take (cut by filters on more threads), then each thread adds up the partial sums of
/// its pixels and finishes them. A projection (at least twice as many input channels as
/// filters) over a small plane: its input comes from a depthwise layer, or a 1×1 layer split by
/// filters, that left each thread's channels in that thread's cache. Split by filters or pixels,
/// each thread read half of its input from the other core's cache (slow on 2-vCPU VMs: a
/// thread reads lines another core wrote at a third of the speed), where the partial sums that
/// cross here are a fraction of it (the filters over the input channels, halved).
///
/// Decided on the layer alone, not on the thread count, so that the layer's bits do not depend
/// on it (see [`DEPTH_SHARES`]).
pub(super) fn pointwise_by_depth(p: &Conv2dParams) -> bool {
    depth_split_shape(p)
}

/// Fewest input channels of a 1×1 layer that [`pointwise_by_depth`] splits. Shallower ones
/// leave each thread a tile too short in depth for its setup and a reduction as large as for
/// a deep layer: MobileNetV3-Small's 72 -> 24 and 88 -> 24 over 28×28 took 10.7 and 11.8 µs
/// at 2 threads split by depth (11.0 and 13.3 at 1), 7.5 and 9.1 split by pixels, and the 24 ->
/// 88 layer after them 12.1 -> 10.6 as its rows were then where it reads them (the model
/// 0.439-0.442 -> 0.430-0.436 ms, 3 alternating runs of 1000, Zen 5). 128 channels are too
/// few as well: BlazeFace full range's 128 -> 32 and 128 -> 64 over 24×24 took 33.9 and 61.3 µs
/// at 2 threads split by depth, 28.7 (by pixels) and 52.3 (by filters) otherwise (Zen 4, `pith
/// bench --profile`), and the model 1.79-1.80 -> 1.77-1.79 ms (medians of 8 alternating runs of
/// 400). MobileNetV2's split projections, 144 channels and deeper, keep it.
const DEPTH_SPLIT_MIN_INPUTS: usize = 144;

/// The layer part of [`pointwise_by_depth`] (what the scratch is sized for).
pub(super) fn depth_split_shape(p: &Conv2dParams) -> bool {
    p.is_pointwise()
        && p.groups == 1
        && p.in_c >= 2 * p.out_c
        && p.in_c >= DEPTH_SPLIT_MIN_INPUTS
        && DEPTH_SPLIT_PLANES.contains(&(p.out_h * p.out_w))
}

impl Layer<'_, '_> {
    /// 1×1 stride-1 unpadded: column row `k` is input plane `k`, so no unfolding is needed.
    /// Computes pixels `cols` of filters `ocs` of image `xb`, `out[i]` receiving those pixels of
    /// filter `ocs.start + i`, adding the same pixels of the image's `residual` if given.
    ///
    /// Each panel of filters is decoded once; tile by tile of pixels, `gemm_rows_at` writes the
    /// panel's products into an accumulator (its "rows" are the input planes, a plane apart), and
    /// one epilogue pass adds bias and residual, applies the activation and stores the output:
    /// the output is written once, not filled, accumulated into and activated in three passes.
    pub(super) fn pointwise(
        &self,
        xb: &[f32],
        residual: Option<Residual<'_>>,
        ocs: Range<usize>,
        cols: Range<usize>,
        out: &mut [&mut [f32]],
        scratch: &mut [f32],
    ) {
        let p = self.p;
        let (k, plane) = (self.rows.row_len(), p.out_h * p.out_w);
        let (panel, rest) = scratch.split_at_mut(panel_rows(p) * k);
        let (column, acc) = rest.split_at_mut(k);
        with_plane_offsets(k, plane, |planes| {
            self.pointwise_panels(xb, residual, ocs, cols, out, panel, column, acc, planes)
        })
    }

    /// [`Layer::pointwise`] with its scratch cut and `planes[c]`, where input plane `c` starts.
    #[allow(clippy::too_many_arguments)]
    fn pointwise_panels(
        &self,
        xb: &[f32],
        residual: Option<Residual<'_>>,
        ocs: Range<usize>,
        cols: Range<usize>,
        out: &mut [&mut [f32]],
        panel: &mut [f32],
        column: &mut [f32],
        acc: &mut [f32],
        planes: &[usize],
    ) {
        let p = self.p;
        let (cin_g, cout_g) = (p.in_per_group(), p.out_per_group());
        let (k, plane) = (self.rows.row_len(), p.out_h * p.out_w);
        let block = panel_rows(p);
        // What a fused tile can apply (slopes of a LeakyRelu repeated per panel row).
        let leaky = match self.act.same() {
            Some(Activation::LeakyRelu(alpha)) => [alpha; PANEL_ROWS],
            _ => [0.0; PANEL_ROWS],
        };
        // The fused path's columns past its last whole vector, gathered once for every panel
        // of the call (each is a strided walk over `k` planes): into the accumulator, which that
        // path leaves unused, when they fit.
        let fused_path =
            self.isa.gemm_rows_fused.is_some() && fused_activation(self.act, 0, &leaky).is_some();
        let slivers = if fused_path { sliver_columns(self.isa.lanes, cols.len(), k) } else { 0 };
        let first_sliver = cols.end - slivers;
        let gather = slivers > 0 && p.groups == 1 && slivers * k <= acc.len();
        let (gathered, acc) = acc.split_at_mut(if gather { slivers * k } else { 0 });
        // bf16 products pack the input strip by strip into the accumulator, which the fused
        // path leaves unused (the f32 tile where it is too short for the depth); their sliver
        // columns are pair rows too.
        let bf16 = self.bf16.filter(|_| fused_path && crate::arch::bf16_strip_len(k) <= acc.len());
        let gathered = gather.then(|| {
            for (j, column) in (first_sliver..cols.end).zip(gathered.chunks_exact_mut(k)) {
                for (c, &start) in column.iter_mut().zip(planes) {
                    *c = xb[start + j];
                }
            }
            if let Some(bf16) = bf16 {
                (bf16.pairs_in_place)(gathered, k);
            }
            &*gathered
        });
        // The group whose columns `acc` holds as every bf16 strip of this call (packed by an
        // earlier panel of that group), if any.
        let mut strips_of: Option<usize> = None;
        let mut oc = ocs.start;
        while oc < ocs.end {
            // Filters of oc's group, at most one panel.
            let g = oc / cout_g;
            let end = ocs.end.min((g + 1) * cout_g).min(oc + block);
            let m = end - oc;
            let xg = &xb[g * cin_g * plane..][..cin_g * plane];
            let yblock = &mut out[oc - ocs.start..end - ocs.start];
            // One call for the panel: a shared codebook's table is widened once, not per filter.
            match bf16 {
                Some(bf16) => self.rows.decode_rows_bf16(oc..end, &mut panel[..m * k], &bf16),
                None => self.rows.decode_rows(oc..end, &mut panel[..m * k]),
            }
            let a = &panel[..m * k];
            let residual_rows = residual.map(|res| (res, res.channels.saturating_sub(oc).min(m)));
            if let (Some(fused), Some(act)) =
                (self.isa.gemm_rows_fused, fused_activation(self.act, oc, &leaky))
            {
                // Bias, residual and activation in the register tile: each output written once,
                // straight from the sums. Every column in one call (the tile streams each
                // 16-column strip of the input through all filters, whatever the width).
                let vectors = cols.len() - sliver_columns(self.isa.lanes, cols.len(), k);
                macro_rules! rows_out {
                    ($dst:expr) => {
                        FusedRows {
                            dst: $dst,
                            col: 0,
                            bias: self.bias.map(|b| &b[oc..end]),
                            residual: residual_rows.filter(|&(_, rows)| rows > 0).map(|(res, rows)| {
                                ResidualRows {
                                    data: &res.data[oc * plane + cols.start..],
                                    pitch: plane,
                                    rows,
                                }
                            }),
                            act,
                        }
                    };
                }
                if bf16.is_none() {
                    fused(a, k, &xg[cols.start..], planes, vectors, rows_out!(&mut *yblock));
                }
                for j in cols.start + vectors..cols.end {
                    let column: &[f32] = match gathered {
                        Some(gathered) => &gathered[(j - first_sliver) * k..][..k],
                        None => {
                            for (c, &start) in column.iter_mut().zip(planes) {
                                *c = xg[start + j];
                            }
                            if let Some(bf16) = bf16 {
                                (bf16.pairs_in_place)(column, k);
                            }
                            column
                        }
                    };
                    let mut sums = [0.0f32; PANEL_ROWS];
                    let sums = &mut sums[..m];
                    match (bf16, self.isa.dot_rows) {
                        (Some(bf16), _) => (bf16.dot_rows)(a, k, column, sums),
                        (None, Some(dot_rows)) => dot_rows(a, k, column, sums),
                        (None, None) => a.chunks_exact(k).zip(sums.iter_mut()).for_each(|(arow, v)| {
                            *v = (self.isa.dot)(arow, column);
                        }),
                    }
                    for (r, (&sum, yplane)) in sums.iter().zip(yblock.iter_mut()).enumerate() {
                        let mut v = sum;
                        if let Some(res) = residual.and_then(|res| res.plane(oc + r, plane)) {
                            v += res[j];
                        }
                        yplane[j - cols.start] =
                            act.of_row(r).apply(v + self.bias.map_or(0.0, |b| b[oc + r]));
                    }
                }
                if let Some(bf16) = bf16 {
                    // The input is packed for the first panel, and again for each only when its
                    // strips do not all fit.
                    let out = rows_out!(&mut *yblock);
                    let all = crate::arch::bf16_packed_len(k, vectors) <= acc.len();
                    let pack = !all || strips_of != Some(g);
                    (bf16.gemm)(a, k, &xg[cols.start..], planes, vectors, out, acc, pack);
                    strips_of = all.then_some(g);
                }
                oc = end;
                continue;
            }
            // A whole number of 16-column strips, so every strip's loads of the input planes
            // and stores into the accumulator and output rows start 64-byte aligned (with
            // 1365 columns for 24 filters, half the strips straddled cache lines: a 24->24
            // layer over 64x64 took 0.13 ms against 0.116, BlazeFace 1.29 against 1.22 on AVX2).
            let tile = (POINTWISE_ACC / m / 16 * 16).max(16);
            let mut t0 = cols.start;
            while t0 < cols.end {
                let t = tile.min(cols.end - t0);
                let acc = &mut acc[..m * t];
                let vectors = t - sliver_columns(self.isa.lanes, t, k);
                (self.isa.gemm_rows_at)(a, k, &xg[t0..], planes, vectors, acc, t);
                for j in vectors..t {
                    // A few columns past the last whole vector: dot products, not a vector each.
                    for (c, &start) in column.iter_mut().zip(planes) {
                        *c = xg[start + t0 + j];
                    }
                    for (r, arow) in a.chunks_exact(k).enumerate() {
                        acc[r * t + j] = (self.isa.dot)(arow, column);
                    }
                }
                for (r, (arow, yplane)) in acc.chunks_exact(t).zip(yblock.iter_mut()).enumerate() {
                    let bias = self.bias.map_or(0.0, |b| b[oc + r]);
                    let res = residual.and_then(|res| res.plane(oc + r, plane)).map(|res| &res[t0..][..t]);
                    (self.isa.store_rows)(
                        self.act.of(oc + r),
                        arow,
                        t,
                        bias,
                        res,
                        &mut yplane[t0 - cols.start..][..t],
                        t,
                    );
                }
                t0 += t;
            }
            oc = end;
        }
    }

    /// A 1×1 layer split by input channels (see [`pointwise_by_depth`]) over image `xb` into its
    /// output `y`: the first of the [`DEPTH_SHARES`] shares of the depth is summed for every
    /// filter and pixel into `y` itself, the others into the front of `scratch`, a task per
    /// share and group of filters; then each thread adds up the partial sums of its pixels, with
    /// the bias, residual and activation.
    pub(super) fn pointwise_by_depth(
        &self,
        kernels: &Kernels,
        xb: &[f32],
        residual: Option<Residual<'_>>,
        y: &mut [f32],
        scratch: &mut [f32],
    ) {
        let p = self.p;
        let (k, plane, filters) = (p.in_c, p.out_h * p.out_w, p.out_c);
        let part = filters * plane;
        // `scratch_len` holds the other shares' partial outputs once per thread.
        let (others, rest) = scratch.split_at_mut((DEPTH_SHARES - 1) * part);
        let per_task = scratch_len(p) - (DEPTH_SHARES - 1) * part;
        // Share `s` of the depth; shares are contiguous, as the channels a thread wrote are.
        let depth = |s: usize| s * k / DEPTH_SHARES..(s + 1) * k / DEPTH_SHARES;
        // Groups of whole panels of filters, so that every thread has a task: the grouping
        // changes which thread sums what, not a sum's bits.
        let wanted = kernels.threads_now().div_ceil(DEPTH_SHARES).min(filters.div_ceil(panel_rows(p)));
        let group_len = filters.div_ceil(wanted.max(1)).next_multiple_of(panel_rows(p)).max(1);
        let groups = filters.div_ceil(group_len);
        let shares = std::iter::once(&mut *y).chain(others.chunks_exact_mut(part));
        let tasks = shares.flat_map(|share| share.chunks_mut(group_len * plane));
        split_parts(kernels, tasks, DEPTH_SHARES * groups, part * k, rest, per_task, |t, sums, s| {
            let (share, first) = (t / groups, t % groups * group_len);
            with_plane_offsets(k, plane, |planes| {
                self.partial_sums(xb, planes, depth(share), first..first + sums.len() / plane, sums, s)
            })
        });
        let others = &*others;
        let row_work = filters * (DEPTH_SHARES + 1) * REDUCE_WORK_WEIGHT;
        // Pixel ranges of whole 64-byte lines.
        split_rows(kernels, plane, 1, row_work, 16, 1, y, rest, per_task, |cols, outs, s| {
            let sum = &mut s[..cols.len()];
            for (f, dst) in outs.iter_mut().enumerate() {
                let at = f * plane + cols.start;
                // The first share, in `y`; the others added in share order.
                sum.copy_from_slice(dst);
                for other in others.chunks_exact(part) {
                    sum.iter_mut().zip(&other[at..]).for_each(|(v, &o)| *v += o);
                }
                let res = residual.and_then(|r| r.plane(f, plane)).map(|r| &r[cols.clone()]);
                let bias = self.bias.map_or(0.0, |b| b[f]);
                (self.isa.store_rows)(self.act.of(f), sum, cols.len(), bias, res, dst, cols.len());
            }
        });
    }

    /// `acc[i * plane + j]` = the sum over input channels `depth` of filter `filters.start + i`'s
    /// weights times pixel `j` of those channels (`planes[c]`: where channel `c` starts in
    /// `xb`), for every filter of `filters`, panel by panel of decoded filters, each cut to that
    /// share of the depth.
    fn partial_sums(
        &self,
        xb: &[f32],
        planes: &[usize],
        depth: Range<usize>,
        filters: Range<usize>,
        acc: &mut [f32],
        scratch: &mut [f32],
    ) {
        let p = self.p;
        let (k, kc, plane) = (p.in_c, depth.len(), p.out_h * p.out_w);
        let block = panel_rows(p);
        let (panel, rest) = scratch.split_at_mut(block * k);
        let (cut, spare) = rest.split_at_mut(block * kc);
        // bf16 products pack the input into what is left of the scratch, if a strip fits.
        let bf16 = self.bf16.filter(|_| crate::arch::bf16_strip_len(kc) <= spare.len());
        let mut oc = filters.start;
        while oc < filters.end {
            let end = filters.end.min(oc + block);
            let m = end - oc;
            self.rows.decode_rows(oc..end, &mut panel[..m * k]);
            for (row, share) in panel.chunks_exact(k).zip(cut.chunks_exact_mut(kc)).take(m) {
                share.copy_from_slice(&row[depth.clone()]);
            }
            let sums = &mut acc[(oc - filters.start) * plane..(end - filters.start) * plane];
            let offs = &planes[depth.clone()];
            if let Some(bf16) = bf16 {
                // Packed for the first panel, and again only when the strips do not all fit.
                let pack = oc == filters.start || crate::arch::bf16_packed_len(kc, plane) > spare.len();
                (bf16.pairs_in_place)(&mut cut[..m * kc], kc);
                with_plane_list(sums.chunks_exact_mut(plane), |rows| {
                    let act = FusedActivation::None;
                    let out = FusedRows { dst: rows, col: 0, bias: None, residual: None, act };
                    (bf16.gemm)(&cut[..m * kc], kc, xb, offs, plane, out, spare, pack);
                });
                oc = end;
                continue;
            }
            let a = &cut[..m * kc];
            match self.isa.gemm_rows_fused {
                // The register tile, storing each sum once.
                Some(fused) => with_plane_list(sums.chunks_exact_mut(plane), |rows| {
                    let act = FusedActivation::None;
                    let out = FusedRows { dst: rows, col: 0, bias: None, residual: None, act };
                    fused(a, kc, xb, offs, plane, out);
                }),
                None => (self.isa.gemm_rows_at)(a, kc, xb, offs, plane, sums, plane),
            }
            oc = end;
        }
    }
}
