//! 2-D convolution (NCHW, ONNX weight layout) on weights decoded a panel of filters at a time.
//!
//! The paths, chosen from the parameters:
//! * pointwise (1×1, stride 1, no padding): the input planes serve as the column matrix of a
//!   GEMM with [`Isa::gemm_rows_at`];
//! * whole-plane depthwise, where the kernel path has it (AVX-512) and no residual is added: each
//!   channel's filter runs over its input plane as it lies, with [`Isa::depthwise_plane`] (small
//!   planes with short rows), [`Isa::depthwise_s1`] or [`Isa::depthwise_s2`];
//! * shifted (everything else): slab by slab of output rows, the input rows are copied into
//!   zero-padded, stride-phase-split planes, where every tap of a run of output pixels is a
//!   contiguous run; [`Isa::gemm_rows_at`] (or, for depthwise filters, [`Isa::depthwise_rows`])
//!   then accumulates all taps in registers (an implicit GEMM: no unfolded column matrix, no
//!   per-pixel border tests). 3×3 layers with enough channels take Winograd instead.
//!
//! Either path decodes a bounded panel of filters (never the whole tensor of a large layer).
//! Work is split over the session's threads by filters when every thread has groups of its own
//! (depthwise), else by output rows, so no thread pads or reads input another one also needs.

use std::ops::Range;

use pith_format::TensorView;

use crate::arch::{
    Depthwise3x3Fn, DepthwiseChannels, DepthwiseInPlace, DepthwiseInPlaceFn, DepthwisePlane,
    DepthwisePlaneFn, DepthwiseRows, DepthwiseSmallFn, FusedActivation, FusedRows, Isa, ResidualRows,
    PLANE_LANES,
};
use crate::parallel::{split_rows, split_units, TASKS_PER_THREAD};
use crate::{check_len, check_min_len, Activation, ChannelActivation, KernelError, Kernels, WeightRows};

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

    /// A 1×1 filter at stride 1 without padding (any groups): output pixel `p` reads input pixel `p`.
    pub fn is_pointwise(&self) -> bool {
        self.k_h == 1
            && self.k_w == 1
            && self.stride_h == 1
            && self.stride_w == 1
            && self.pad_top == 0
            && self.pad_left == 0
            && self.in_h == self.out_h
            && self.in_w == self.out_w
    }

    /// Whether the layer is a matrix-vector product per image (an ungrouped 1×1 convolution over
    /// one pixel, such as a squeeze-excite layer after a global pool): with no residual,
    /// [`crate::Kernels::conv2d`] runs it as [`crate::Kernels::gemm`] of its weights `[out_c,
    /// in_c]`, and [`crate::Kernels::gemm_int8`] can take it with prepared tables.
    pub fn is_gemv(&self) -> bool {
        self.is_pointwise() && self.out_h * self.out_w == 1 && self.groups == 1
    }
}

/// How many dense multiply-adds one depthwise multiply-add counts as when deciding whether a
/// layer is worth splitting over threads. Depthwise layers run at 3-20 GMAC/s where dense ones
/// reach 30-45 (BlazeFace's layers at 1 thread, Zen 4; the smallest planes pay a fixed cost per
/// channel), and splitting them by channels keeps each thread on the channels it produced in the
/// layer before. At 8 every BlazeFace depthwise layer splits; 2-thread runs took 0.85-0.98 ms
/// (medians of alternating rounds) against 0.92-1.00 at 4 and 0.95-1.02 at 1. Lowering
/// `min_task_work` for every layer instead helped BlazeFace about as much but also split
/// PP-OCRv4 det's tiny layers.
pub(crate) const DEPTHWISE_WORK_WEIGHT: usize = 8;

/// f32 elements of the pointwise path's accumulator tile (128 KiB: a panel of filters times a
/// tile of pixels, in L2 between the GEMM and the epilogue). 32 KiB, in L1, suited BlazeFace's
/// 24-channel layers as well but made PP-OCRv4 det's 1×1 layers over 96-192 channels re-read
/// their panel of filters for too many narrow tiles (its conv time 24-26 ms either way at 320×640).
const POINTWISE_ACC: usize = 1 << 15;
/// Filters decoded together into one panel of the pointwise path: a multiple of every path's
/// register block (4, 6, 8 rows), small enough that panel × filter length stays in L2.
const PANEL_ROWS: usize = 48;
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
fn sliver_columns(lanes: usize, width: usize, k: usize) -> usize {
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
fn panel_rows(p: &Conv2dParams) -> usize {
    PANEL_ROWS.min(p.out_per_group()).max(1)
}

/// Whether a pointwise layer is split across threads by pixels (every thread computing all
/// filters of its rows) rather than by filters. Split by filters, each task sweeps the whole
/// input for its filters; with few filters per task (BlazeFace's 24–48) that is a few
/// multiply-adds per input load. Split by pixels, each thread reads only its rows' inputs for
/// full panels, and decodes every filter itself, which costs little while each thread still
/// has [`PIXEL_SPLIT_MIN`] pixels.
fn pointwise_by_pixels(kernels: &Kernels, p: &Conv2dParams) -> bool {
    let threads = kernels.threads_now();
    let filters_per_task = p.out_c / (threads * TASKS_PER_THREAD).max(1);
    threads > 1
        && p.groups == 1
        && filters_per_task < PANEL_ROWS / 2
        && p.out_h >= threads
        && p.out_h * p.out_w >= threads * PIXEL_SPLIT_MIN
}

/// Output pixels of the 1×1 layers that [`pointwise_by_depth`] splits by input channels. Each
/// thread decodes every filter for its share of the depth, which over 7×7 planes costs more than
/// the crossing it saves (MobileNetV2's 960 -> 160 at 2 threads: 0.086 -> 0.125 ms).
const DEPTH_SPLIT_PLANES: std::ops::RangeInclusive<usize> = 128..=1024;

/// What adding one partial sum into an output (and the epilogue) costs in multiply-adds, for
/// [`Kernels::min_task_work`]: a load and an add, bound by memory, not by arithmetic.
const REDUCE_WORK_WEIGHT: usize = 16;

/// Whether a 1×1 layer is split across threads by input channels: each thread sums its share of
/// the depth for every filter and pixel, then each adds up the partial sums of its pixels and
/// finishes them. A projection (at least twice as many input channels as filters) over a small
/// plane, on several threads: its input comes from a depthwise layer, or a 1×1 layer split by
/// filters, that left each thread's channels in that thread's cache. Split by filters or pixels,
/// each thread read half of its input from the other core's cache (slow on 2-vCPU VMs: a
/// thread reads lines another core wrote at a third of the speed), where the partial sums that
/// cross here are a fraction of it (the filters over the input channels, halved).
fn pointwise_by_depth(kernels: &Kernels, p: &Conv2dParams) -> bool {
    let threads = kernels.threads_now();
    depth_split_shape(p) && threads > 1 && p.in_c >= 8 * threads
}

/// The layer part of [`pointwise_by_depth`] (what the scratch is sized for).
fn depth_split_shape(p: &Conv2dParams) -> bool {
    p.is_pointwise()
        && p.groups == 1
        && p.in_c >= 2 * p.out_c
        && DEPTH_SPLIT_PLANES.contains(&(p.out_h * p.out_w))
}

/// [`split_rows`] over the output rows of one image `y` of layer `p` (every filter of a row
/// costs `filter_len` multiply-adds per pixel), ranges starting at multiples of `align` rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn split_output_rows<F>(
    kernels: &Kernels,
    p: &Conv2dParams,
    align: usize,
    tasks_per_thread: usize,
    y: &mut [f32],
    scratch: &mut [f32],
    per_task: usize,
    f: F,
) where
    F: Fn(Range<usize>, &mut [&mut [f32]], &mut [f32]) + Sync,
{
    let row_work = p.out_c * p.out_w * p.filter_len();
    split_rows(kernels, p.out_h, p.out_w, row_work, align, tasks_per_thread, y, scratch, per_task, f)
}

/// Fewest output pixels per thread for [`pointwise_by_pixels`].
pub(crate) const PIXEL_SPLIT_MIN: usize = 256;

/// Scratch elements one worker of [`conv2d`] needs (at least 1).
pub fn scratch_len(p: &Conv2dParams) -> usize {
    if p.groups == 0 {
        return 1; // rejected by `check`
    }
    let per = if crate::winograd::applies(p) {
        crate::winograd::scratch_len(p)
    } else if p.is_pointwise() {
        // A panel of filters, one gathered input column, the accumulator tile; or what the int8
        // path needs, if that is more (the runtime sizes scratch before it knows the path). Split
        // by depth: each thread's partial sums (one per filter and pixel), and a panel and its
        // share of the depth.
        let work =
            ((panel_rows(p) + 1) * p.filter_len() + POINTWISE_ACC).max(crate::conv_int8::scratch_len(p));
        if depth_split_shape(p) {
            p.out_c * p.out_h * p.out_w + work.max(2 * panel_rows(p) * p.filter_len())
        } else {
            work
        }
    } else {
        // Also what the whole-plane depthwise kernels need: one decoded filter.
        Slab::new(p).scratch_len(p).max(crate::conv_int8::scratch_len(p))
    };
    // The runtime sizes scratch before it knows which layout a layer runs in.
    per.max(crate::blocked::scratch_len(p))
}

/// See [`crate::Kernels::conv2d`].
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    kernels: &Kernels,
    x: &[f32],
    w: &TensorView<'_>,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    input_scale: Option<&[f32]>,
    p: &Conv2dParams,
    act: ChannelActivation<'_>,
    y: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let rc = check_operands(x, bias, residual, p, y)?;
    if let Some(s) = input_scale {
        if !p.is_pointwise() || p.groups != 1 {
            return Err(KernelError::Params("an input scale applies to an ungrouped 1×1 layer only".into()));
        }
        check_len("conv input scale", s.len(), p.batch * p.in_c)?;
    }
    act.check(p.out_c)?;
    let in_plane = p.in_h * p.in_w;
    let out_plane = p.out_h * p.out_w;
    let per_task = scratch_len(p);
    check_min_len("conv scratch", scratch.len(), per_task * kernels.threads())?;
    let rows = WeightRows::new(*w, p.out_c, p.filter_len())?.with_isa(&kernels.isa());
    if out_plane == 0 || p.out_c == 0 {
        return Ok(());
    }
    if p.is_gemv() && residual.is_none() && input_scale.is_none() {
        // A matrix-vector product (squeeze-excite convs after a global pool): dot products on
        // the packed indices, with no panel decoded. The [batch, out_c, 1, 1] output is the
        // GEMM's [batch, out_c].
        let layout = crate::gemm::WeightLayout::NK;
        return crate::gemm::gemm(
            kernels, x, p.batch, p.in_c, p.out_c, w, layout, None, bias, act, y, scratch,
        );
    }
    if crate::winograd::applies(p) {
        let layer = crate::winograd::Winograd { isa: kernels.isa(), rows: &rows, bias, act, p };
        for (b, yb) in y.chunks_exact_mut(p.out_c * out_plane).enumerate() {
            let xb = &x[b * p.in_c * in_plane..][..p.in_c * in_plane];
            let rb = residual.map(|r| (&r[b * rc * out_plane..][..rc * out_plane], rc));
            // Each worker takes whole rows of tiles.
            let align = crate::winograd::row_align(p);
            split_output_rows(kernels, p, align, 1, yb, scratch, per_task, |rows, planes, s| {
                layer.run(xb, rb, rows, planes, s)
            });
        }
        return Ok(());
    }
    // A small stride-1 depthwise plane with no residual: whole-plane vectors.
    let flat = plane_kernel(kernels.isa(), p)
        .filter(|_| residual.is_none())
        .and_then(|kernel| Some((kernel, DepthwisePlane::new(p)?)));
    let slab = (!p.is_pointwise()).then(|| Slab::new(p));
    let offsets = slab.as_ref().map_or_else(Vec::new, |s| s.offsets(p));
    let image = p.out_c * out_plane;
    for (b, yb) in y.chunks_exact_mut(image).enumerate() {
        // The image's input factors fold into the filters it decodes.
        let rows = match input_scale {
            Some(s) => rows.with_column_scales(&s[b * p.in_c..][..p.in_c])?,
            None => rows,
        };
        let bf16 = kernels.isa().bf16.filter(|_| kernels.bf16_products());
        let layer = Layer { isa: kernels.isa(), bf16, rows: &rows, bias, act, p };
        let xb = &x[b * p.in_c * in_plane..][..p.in_c * in_plane];
        let rb =
            residual.map(|r| Residual { data: &r[b * rc * out_plane..][..rc * out_plane], channels: rc });
        let work = out_plane * p.filter_len();
        match &slab {
            None if pointwise_by_depth(kernels, p) => layer.pointwise_by_depth(kernels, xb, rb, yb, scratch),
            None if pointwise_by_pixels(kernels, p) => split_output_rows(
                kernels,
                p,
                1,
                TASKS_PER_THREAD,
                yb,
                scratch,
                per_task,
                |rows, planes, s| {
                    let cols = rows.start * p.out_w..rows.end * p.out_w;
                    layer.pointwise(xb, rb, 0..p.out_c, cols, planes, s)
                },
            ),
            None => split_units(kernels, p.out_c, out_plane, work, yb, scratch, per_task, |ocs, ys, s| {
                let mut planes: Vec<&mut [f32]> = ys.chunks_exact_mut(out_plane).collect();
                layer.pointwise(xb, rb, ocs, 0..out_plane, &mut planes, s)
            }),
            // Groups of their own input (depthwise): split filters, no input is read twice.
            Some(slab) if p.groups >= kernels.threads_now() => {
                // A depthwise multiply-add takes several times a dense one's time, so
                // `min_task_work` counts it more.
                let work = work * DEPTHWISE_WORK_WEIGHT;
                let in_place = in_place_kernel(kernels.isa(), p).filter(|_| rb.is_none());
                let small = small_channels_kernel(kernels.isa(), p)
                    .filter(|_| rb.is_none())
                    .and_then(|kernel| Some((kernel, act.same()?)));
                // Small planes: many channels per kernel call; the interleaved kernel before the
                // whole-plane one too.
                let small = small
                    .filter(|(kernel, _)| flat.is_none() || matches!(kernel, SmallChannels::Interleaved(_)));
                split_units(kernels, p.out_c, out_plane, work, yb, scratch, per_task, |ocs, ys, s| {
                    if let Some((kernel, act)) = small {
                        return layer.small_channels(xb, ocs, ys, s, kernel, act);
                    }
                    match (&flat, in_place) {
                        // Small planes with short rows: whole-plane vectors.
                        (Some((kernel, plane)), _) => {
                            layer.whole_planes(xb, ocs, ys, s, |w, x, out, init, clamp| {
                                kernel(w, x, out, plane, init, clamp)
                            })
                        }
                        (None, Some(kernel)) => {
                            layer.whole_planes(xb, ocs, ys, s, |w, x, out, init, clamp| {
                                kernel(w, x, out, layer.in_place_shape(init, clamp))
                            })
                        }
                        (None, None) => {
                            let mut planes: Vec<&mut [f32]> = ys.chunks_exact_mut(out_plane).collect();
                            layer.shifted(slab, &offsets, xb, rb, ocs, 0..p.out_h, &mut planes, s)
                        }
                    }
                })
            }
            // A few groups sharing their input: split output rows, so each worker reads and pads
            // only its part of the input and decodes its filters once.
            Some(slab) => split_output_rows(kernels, p, 1, 1, yb, scratch, per_task, |rows, planes, s| {
                layer.shifted(slab, &offsets, xb, rb, 0..p.out_c, rows, planes, s)
            }),
        }
    }
    Ok(())
}

/// Checks a convolution's parameters and buffers; returns how many channels the residual has
/// (0 without one; the rest read as zero).
pub(crate) fn check_operands(
    x: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    p: &Conv2dParams,
    y: &[f32],
) -> Result<usize, KernelError> {
    p.check()?;
    let in_plane = p.in_h * p.in_w;
    let out_plane = p.out_h * p.out_w;
    check_len("conv input", x.len(), p.batch * p.in_c * in_plane)?;
    check_len("conv output", y.len(), p.batch * p.out_c * out_plane)?;
    if let Some(b) = bias {
        check_len("conv bias", b.len(), p.out_c)?;
    }
    Ok(match residual {
        Some(r) => {
            let per_channel = p.batch * out_plane;
            if per_channel == 0 || !r.len().is_multiple_of(per_channel) || r.len() > y.len() {
                return Err(KernelError::Params(format!(
                    "conv residual has {} values: not a whole number of up to {} channels of {per_channel}",
                    r.len(),
                    p.out_c
                )));
            }
            r.len() / per_channel
        }
        None => 0,
    })
}

/// One layer's filters, epilogue and geometry, shared by the worker threads.
struct Layer<'a, 'w> {
    isa: Isa,
    /// The bf16 1×1 kernels, when the session chose bf16 products and the path has them (1×1
    /// layers split by filters, pixels or depth; the f32 tile where the scratch holds no strip).
    bf16: Option<crate::arch::FusedBf16>,
    rows: &'a WeightRows<'w>,
    bias: Option<&'a [f32]>,
    /// Applied per output channel (`act.of(oc)`).
    act: ChannelActivation<'a>,
    p: &'a Conv2dParams,
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
    fn pointwise(
        &self,
        xb: &[f32],
        residual: Option<Residual<'_>>,
        ocs: Range<usize>,
        cols: Range<usize>,
        out: &mut [&mut [f32]],
        scratch: &mut [f32],
    ) {
        let p = self.p;
        let (cin_g, cout_g) = (p.in_per_group(), p.out_per_group());
        let (k, plane) = (self.rows.row_len(), p.out_h * p.out_w);
        let block = panel_rows(p);
        let (panel, rest) = scratch.split_at_mut(block * k);
        let (column, acc) = rest.split_at_mut(k);
        let planes: Vec<usize> = (0..k).map(|c| c * plane).collect();
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
                for (c, &start) in column.iter_mut().zip(&planes) {
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
                    fused(a, k, &xg[cols.start..], &planes, vectors, rows_out!(&mut *yblock));
                }
                for j in cols.start + vectors..cols.end {
                    let column: &[f32] = match gathered {
                        Some(gathered) => &gathered[(j - first_sliver) * k..][..k],
                        None => {
                            for (c, &start) in column.iter_mut().zip(&planes) {
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
                    (bf16.gemm)(a, k, &xg[cols.start..], &planes, vectors, out, acc, pack);
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
                (self.isa.gemm_rows_at)(a, k, &xg[t0..], &planes, vectors, acc, t);
                for j in vectors..t {
                    // A few columns past the last whole vector: dot products, not a vector each.
                    for (c, &start) in column.iter_mut().zip(&planes) {
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
    /// output `y`: one share of the depth per thread, each summed for every filter and pixel into
    /// the front of `scratch` (`threads` partial outputs), then each thread adds up the partial
    /// sums of its pixels, with the bias, residual and activation.
    fn pointwise_by_depth(
        &self,
        kernels: &Kernels,
        xb: &[f32],
        residual: Option<Residual<'_>>,
        y: &mut [f32],
        scratch: &mut [f32],
    ) {
        let p = self.p;
        let (k, plane, filters) = (p.in_c, p.out_h * p.out_w, p.out_c);
        // As many shares as threads (at most `kernels.threads()`, which the scratch is sized for).
        let shares = kernels.threads_now();
        let part = filters * plane;
        let per_task = scratch_len(p) - part;
        let (partials, rest) = scratch.split_at_mut(shares * part);
        let planes: Vec<usize> = (0..k).map(|c| c * plane).collect();
        // Share `s` of the depth; shares are contiguous, as the channels a thread wrote are.
        let depth = |s: usize| s * k / shares..(s + 1) * k / shares;
        split_units(kernels, shares, part, part * k / shares, partials, rest, per_task, |ss, out, s| {
            for (share, acc) in ss.zip(out.chunks_exact_mut(part)) {
                self.partial_sums(xb, &planes, depth(share), acc, s);
            }
        });
        let partials = &*partials;
        let row_work = filters * (shares + 1) * REDUCE_WORK_WEIGHT;
        // Pixel ranges of whole 64-byte lines.
        split_rows(kernels, plane, 1, row_work, 16, 1, y, rest, per_task, |cols, outs, s| {
            let sum = &mut s[..cols.len()];
            for (f, dst) in outs.iter_mut().enumerate() {
                let at = f * plane + cols.start;
                sum.copy_from_slice(&partials[at..][..cols.len()]);
                for other in partials.chunks_exact(part).skip(1) {
                    sum.iter_mut().zip(&other[at..]).for_each(|(v, &o)| *v += o);
                }
                let res = residual.and_then(|r| r.plane(f, plane)).map(|r| &r[cols.clone()]);
                let bias = self.bias.map_or(0.0, |b| b[f]);
                (self.isa.store_rows)(self.act.of(f), sum, cols.len(), bias, res, dst, cols.len());
            }
        });
    }

    /// `acc[f * plane + j]` = the sum over input channels `depth` of filter `f`'s weights times
    /// pixel `j` of those channels (`planes[c]`: where channel `c` starts in `xb`), for every
    /// filter, panel by panel of decoded filters, each cut to that share of the depth.
    fn partial_sums(
        &self,
        xb: &[f32],
        planes: &[usize],
        depth: Range<usize>,
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
        let mut oc = 0;
        while oc < p.out_c {
            let end = p.out_c.min(oc + block);
            let m = end - oc;
            self.rows.decode_rows(oc..end, &mut panel[..m * k]);
            for (row, share) in panel.chunks_exact(k).zip(cut.chunks_exact_mut(kc)).take(m) {
                share.copy_from_slice(&row[depth.clone()]);
            }
            let sums = &mut acc[oc * plane..end * plane];
            let offs = &planes[depth.clone()];
            if let Some(bf16) = bf16 {
                let mut rows: Vec<&mut [f32]> = sums.chunks_exact_mut(plane).collect();
                let act = FusedActivation::None;
                let out = FusedRows { dst: &mut rows, col: 0, bias: None, residual: None, act };
                // Packed for the first panel, and again only when the strips do not all fit.
                let pack = oc == 0 || crate::arch::bf16_packed_len(kc, plane) > spare.len();
                (bf16.pairs_in_place)(&mut cut[..m * kc], kc);
                (bf16.gemm)(&cut[..m * kc], kc, xb, offs, plane, out, spare, pack);
                oc = end;
                continue;
            }
            let a = &cut[..m * kc];
            match self.isa.gemm_rows_fused {
                // The register tile, storing each sum once.
                Some(fused) => {
                    let mut rows: Vec<&mut [f32]> = sums.chunks_exact_mut(plane).collect();
                    let act = FusedActivation::None;
                    let out = FusedRows { dst: &mut rows, col: 0, bias: None, residual: None, act };
                    fused(a, kc, xb, offs, plane, out);
                }
                None => (self.isa.gemm_rows_at)(a, kc, xb, offs, plane, sums, plane),
            }
            oc = end;
        }
    }

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
    fn shifted(
        &self,
        slab: &Slab,
        offsets: &[usize],
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
            self.rows.decode_rows(oc..end, &mut panel[..m * k_len]);
            let a = &panel[..m * k_len];
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
fn uses_depthwise_rows(p: &Conv2dParams) -> bool {
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

impl Layer<'_, '_> {
    /// Depthwise filters `ocs` of image `xb` into `y` (their planes, back to back), each channel's
    /// whole plane at once: `run(filter, input_plane, output_plane, init, clamp)` is a kernel that
    /// reads the input plane as it lies and writes the output plane starting from `init` (the
    /// bias) and clamped to `clamp`; an activation it cannot apply (see [`finish`]) then runs over
    /// the output plane it has just written.
    fn whole_planes(
        &self,
        xb: &[f32],
        ocs: Range<usize>,
        y: &mut [f32],
        scratch: &mut [f32],
        run: impl Fn(&[f32], &[f32], &mut [f32], f32, Option<[f32; 2]>),
    ) {
        let p = self.p;
        let k = p.filter_len();
        let (in_plane, out_plane) = (p.in_h * p.in_w, p.out_h * p.out_w);
        // Every filter of the range decoded at once when the scratch holds them (a shared
        // codebook's table is then widened once), else one at a time.
        let all = scratch.len() >= ocs.len() * k;
        if all {
            self.rows.decode_rows(ocs.clone(), scratch);
        }
        for (i, (oc, out)) in ocs.zip(y.chunks_exact_mut(out_plane)).enumerate() {
            let (clamp, then) = finish(self.act.of(oc));
            let x = &xb[oc / p.out_per_group() * in_plane..][..in_plane];
            let filter = if all {
                &scratch[i * k..][..k]
            } else {
                self.rows.decode(oc, &mut scratch[..k]);
                &scratch[..k]
            };
            run(filter, x, out, self.bias.map_or(0.0, |b| b[oc]), clamp);
            if let Some(act) = then {
                (self.isa.activate)(act, out);
            }
        }
    }

    /// Depthwise filters `ocs` of image `xb` into `y` (their planes, back to back) through a
    /// many-channel small-plane kernel (see [`small_channels_kernel`]), as many channels per
    /// call as the scratch holds decoded filters; an activation the kernel cannot apply (see
    /// [`finish`]) then runs over the planes it has just written.
    fn small_channels(
        &self,
        xb: &[f32],
        ocs: Range<usize>,
        y: &mut [f32],
        scratch: &mut [f32],
        kernel: SmallChannels,
        act: Activation,
    ) {
        let p = self.p;
        let (in_plane, out_plane) = (p.in_h * p.in_w, p.out_h * p.out_w);
        let (clamp, then) = finish(act);
        let taps = p.k_h * p.k_w;
        let per_call = (scratch.len() / taps).max(1);
        let mut c0 = ocs.start;
        while c0 < ocs.end {
            let c1 = ocs.end.min(c0 + per_call);
            let filters = &mut scratch[..taps * (c1 - c0)];
            self.rows.decode_rows(c0..c1, filters);
            let out = &mut y[(c0 - ocs.start) * out_plane..(c1 - ocs.start) * out_plane];
            let shape = DepthwiseChannels {
                in_h: p.in_h,
                in_w: p.in_w,
                out_h: p.out_h,
                out_w: p.out_w,
                stride: p.stride_h,
                pad_top: p.pad_top,
                pad_left: p.pad_left,
                bias: self.bias.map(|b| &b[c0..c1]),
                clamp,
            };
            let x = &xb[c0 * in_plane..c1 * in_plane];
            match kernel {
                SmallChannels::ThreeByThree(kernel) => kernel(filters, x, out, shape),
                SmallChannels::Square(kernel) | SmallChannels::Interleaved(kernel) => {
                    kernel(filters, x, out, shape, p.k_h)
                }
            }
            if let Some(act) = then {
                (self.isa.activate)(act, out);
            }
            c0 = c1;
        }
    }

    /// The [`DepthwiseInPlace`] shape of one channel of this layer.
    fn in_place_shape(&self, init: f32, clamp: Option<[f32; 2]>) -> DepthwiseInPlace {
        let p = self.p;
        DepthwiseInPlace {
            kh: p.k_h,
            kw: p.k_w,
            in_h: p.in_h,
            in_w: p.in_w,
            pad_top: p.pad_top,
            pad_left: p.pad_left,
            out_h: p.out_h,
            out_w: p.out_w,
            init,
            clamp,
        }
    }

    /// The [`DepthwiseRows`] of `sr` output rows of a slab, written `ldc` apart, starting from
    /// `init` and clamped to `clamp` if given.
    fn depthwise_shape(
        &self,
        slab: &Slab,
        sr: usize,
        ldc: usize,
        init: f32,
        clamp: Option<[f32; 2]>,
    ) -> DepthwiseRows {
        let p = self.p;
        DepthwiseRows {
            kh: p.k_h,
            kw: p.k_w,
            ldb: slab.wq,
            rows: sr,
            n: p.out_w,
            ldc,
            accumulate: false,
            init,
            clamp,
        }
    }
}

/// Whether a layer is a depthwise convolution that [`Isa::depthwise_s1`] or
/// [`Isa::depthwise_s2`] takes: one input channel per group, stride 1 or 2 both ways, undilated,
/// at most [`crate::arch::DEPTHWISE_IN_PLACE_MAX_ROWS`] filter rows.
fn in_place_depthwise(p: &Conv2dParams) -> bool {
    p.in_per_group() == 1
        && matches!((p.stride_h, p.stride_w), (1, 1) | (2, 2))
        && (p.dil_h, p.dil_w) == (1, 1)
        && (1..=crate::arch::DEPTHWISE_IN_PLACE_MAX_ROWS).contains(&p.k_h)
        && p.k_w >= 1
}

/// The path's in-place depthwise kernel for the layer's stride, when it has one and the layer
/// suits it.
fn in_place_kernel(isa: Isa, p: &Conv2dParams) -> Option<DepthwiseInPlaceFn> {
    let kernel = if p.stride_h == 1 { isa.depthwise_s1 } else { isa.depthwise_s2 };
    kernel.filter(|_| in_place_depthwise(p))
}

/// A kernel that computes many depthwise channels of small planes per call.
#[derive(Clone, Copy)]
enum SmallChannels {
    /// [`Isa::depthwise_3x3`].
    ThreeByThree(Depthwise3x3Fn),
    /// [`Isa::depthwise_small`].
    Square(DepthwiseSmallFn),
    /// [`Isa::depthwise_interleaved`], taken before the whole-plane kernel.
    Interleaved(DepthwiseSmallFn),
}

/// The path's many-channel kernel for a depthwise layer over small planes, if one suits it:
/// [`Isa::depthwise_3x3`] for 3×3 filters (see [`small_3x3_kernel`]), else
/// [`Isa::depthwise_small`] for other square filters at stride 1 or 2, undilated, into outputs
/// of at most [`DEPTHWISE_SMALL_MAX_WIDTH`](crate::arch::DEPTHWISE_SMALL_MAX_WIDTH) columns.
fn small_channels_kernel(isa: Isa, p: &Conv2dParams) -> Option<SmallChannels> {
    // Square undilated depthwise filters at one stride both ways: what both kernels take.
    let square = p.in_per_group() == 1
        && p.out_per_group() == 1
        && p.k_h == p.k_w
        && (p.dil_h, p.dil_w) == (1, 1)
        && p.stride_h == p.stride_w;
    let interleaved = square
        && interleaved_pays(p)
        && crate::arch::depthwise_interleaved_fits(
            p.k_h, p.stride_h, p.out_h, p.out_w, p.pad_top, p.pad_left,
        );
    if let Some(kernel) = isa.depthwise_interleaved.filter(|_| interleaved) {
        return Some(SmallChannels::Interleaved(kernel));
    }
    if let Some(kernel) = small_3x3_kernel(isa, p) {
        return Some(SmallChannels::ThreeByThree(kernel));
    }
    let fits = square
        && crate::arch::depthwise_small_plane(p.k_h, p.stride_h, p.out_h, p.out_w, p.pad_top, p.pad_left)
            .is_some();
    isa.depthwise_small.filter(|_| fits).map(SmallChannels::Square)
}

/// Whether [`Isa::depthwise_interleaved`] measured faster than the whole-plane and many-channel
/// kernels on a layer of this shape (Xeon, AVX-512, one-layer models and MobileNets, 1 and 2
/// threads): rows that are not whole half-vectors (7, 14 columns; BlazeFace's 8×8 and 16×16
/// planes ran alike or slower), with 5×5 filters or over planes of at most 64 pixels. MobileNetV2's
/// 3×3 layers over 14×14 took 0.060 → 0.048 ms at 1 thread but 0.032 → 0.044 at 2: there the
/// transposes outweigh nine taps.
fn interleaved_pays(p: &Conv2dParams) -> bool {
    !p.out_w.is_multiple_of(8) && (p.k_h >= 5 || p.out_h * p.out_w <= 64)
}

/// The path's [`Isa::depthwise_3x3`] kernel when the layer suits it: 3×3 depthwise filters (one
/// input and one output channel per group) at stride 1 or 2, undilated, with at most 2 rows of
/// zero padding above the input and 1 column left of it, into output rows of at most
/// [`DEPTHWISE_3X3_MAX_WIDTH`](crate::arch::DEPTHWISE_3X3_MAX_WIDTH) columns of which only the
/// last reads right of the input ("same" padding, and TensorFlow's at stride 2).
fn small_3x3_kernel(isa: Isa, p: &Conv2dParams) -> Option<Depthwise3x3Fn> {
    let s = p.stride_h;
    let fits = p.in_per_group() == 1
        && p.out_per_group() == 1
        && (p.k_h, p.k_w, p.dil_h, p.dil_w) == (3, 3, 1, 1)
        && matches!((p.stride_h, p.stride_w), (1, 1) | (2, 2))
        && p.pad_top <= 2
        && p.pad_left <= 1
        && p.in_w + p.pad_left >= (s * p.out_w + 3).saturating_sub(2 * s)
        && p.out_w <= isa.depthwise_3x3_width.min(crate::arch::DEPTHWISE_3X3_MAX_WIDTH);
    isa.depthwise_3x3.filter(|_| fits)
}

/// Most output elements of a plane that [`Isa::depthwise_plane`] takes: its masks, built per
/// layer call, grow with the plane.
const PLANE_MAX: usize = 1024;

/// Whether rows of `width` leave enough of [`Isa::depthwise_rows`]' vectors empty that
/// [`Isa::depthwise_plane`] pays: rows shorter than a vector, or whose vectors hold less than
/// three quarters of real columns. Where rows fill their vectors, the row tiles win: each loaded input vector feeds
/// several output rows, which outweighs the padded copy. (Zen 4, 4-bit 3×3 filters, alternating
/// `pith bench` runs: planes 7×7, 14×14 and 20×20 took 0.45-0.9× the row path's time, 28×28 1.4-
/// 1.6×; 5×5 filters over 8×8 0.75×, over 16×16 1.4× and over 32×32 2×.)
fn rows_waste_lanes(width: usize) -> bool {
    width < PLANE_LANES || 4 * width < 3 * width.next_multiple_of(PLANE_LANES)
}

/// Most filter taps [`Isa::depthwise_plane`] takes (7×7).
const PLANE_MAX_TAPS: usize = 49;

/// The path's whole-plane depthwise kernel, when it has one and the layer suits it: stride 1
/// (any dilation), one input channel per group, rows as wide as the output's (see [`DepthwisePlane`]) and a
/// plane of at most [`PLANE_MAX`] elements.
fn plane_kernel(isa: Isa, p: &Conv2dParams) -> Option<DepthwisePlaneFn> {
    let fits = p.in_per_group() == 1
        && (p.stride_h, p.stride_w) == (1, 1)
        && p.in_w == p.out_w
        && p.out_h * p.out_w <= PLANE_MAX
        && rows_waste_lanes(p.out_w)
        && p.k_h * p.k_w <= PLANE_MAX_TAPS;
    isa.depthwise_plane.filter(|_| fits)
}

/// The activation a fused pointwise tile applies to filters `oc ..` under `act`, if it can
/// (`leaky`: a LeakyRelu's slope repeated per panel row); `None` for the activations only the
/// epilogue pass has (sigmoids).
pub(crate) fn fused_activation<'a>(
    act: ChannelActivation<'a>,
    oc: usize,
    leaky: &'a [f32],
) -> Option<FusedActivation<'a>> {
    Some(match act {
        ChannelActivation::PRelu(slopes) => FusedActivation::Leaky(&slopes[oc..]),
        ChannelActivation::Same(act) => match act {
            Activation::None => FusedActivation::None,
            Activation::Relu => FusedActivation::Clamp([0.0, f32::INFINITY]),
            Activation::Clip { min, max } => FusedActivation::Clamp([min, max]),
            Activation::HardSwish => FusedActivation::HardSwish { scale: 1.0, shift: 0.0 },
            Activation::HardSwishAffine { scale, shift } => FusedActivation::HardSwish { scale, shift },
            Activation::LeakyRelu(_) => FusedActivation::Leaky(leaky),
            Activation::HardSigmoid { .. } | Activation::HardSigmoidPlus { .. } | Activation::Sigmoid => {
                return None
            }
        },
    })
}

/// How a depthwise layer with activation `act` can store its sums directly: `Some(clamp)` when
/// the activation is none (`Some(None)`) or a clamp the kernel applies (ReLU, ReLU6, Clip), `None`
/// when it needs the epilogue pass.
fn direct_store(act: Activation) -> Option<Option<[f32; 2]>> {
    match act {
        Activation::None => Some(None),
        Activation::Relu => Some(Some([0.0, f32::INFINITY])),
        Activation::Clip { min, max } => Some(Some([min, max])),
        _ => None,
    }
}

/// How a whole-plane depthwise kernel finishes a channel's sums under activation `act`: the clamp
/// it applies before its store (ReLU, ReLU6, Clip), or an activation pass over the plane it has
/// just written, still in L1 (HardSwish and the others).
fn finish(act: Activation) -> (Option<[f32; 2]>, Option<Activation>) {
    match direct_store(act) {
        Some(clamp) => (clamp, None),
        None => (None, Some(act)),
    }
}

/// One image's residual planes: the first `channels` output channels have one, the rest none.
#[derive(Clone, Copy)]
pub(crate) struct Residual<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) channels: usize,
}

impl<'a> Residual<'a> {
    /// Output channel `c`'s residual plane (`plane` values), if it has one.
    pub(crate) fn plane(self, c: usize, plane: usize) -> Option<&'a [f32]> {
        (c < self.channels).then(|| &self.data[c * plane..][..plane])
    }
}

/// Geometry of the shifted path: the input rows one slab of `rows` output rows reads, copied
/// into zero-padded planes split by (row, column) phase of the strides, so that tap `(ky, kx)`
/// of output `(oy, ox)` is element `(oy + ky*dil_h / stride_h, ox + kx*dil_w / stride_w)` of
/// phase plane `(ky*dil_h % stride_h, kx*dil_w % stride_w)`: a contiguous run for consecutive
/// `ox`. Every slab has the same plane extents, so tap offsets are computed once per layer.
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
    panel_rows: usize,
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
    fn sub_rows(&self, m: usize) -> usize {
        (ACC_BUDGET / (m * self.wq).max(1)).clamp(1, self.rows)
    }

    /// Scratch one worker needs: the planes of a group's input channels, a panel of decoded
    /// filters and one accumulator block.
    fn scratch_len(&self, p: &Conv2dParams) -> usize {
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

    /// Element offset of every tap `(c, ky, kx)`, in filter order, from the start of the planes.
    pub(crate) fn offsets(&self, p: &Conv2dParams) -> Vec<usize> {
        let (sh, sw) = (p.stride_h.max(1), p.stride_w.max(1));
        let plane_len = self.hq * self.wq;
        let mut offs = Vec::with_capacity(p.filter_len());
        for c in 0..p.in_per_group() {
            for ky in 0..p.k_h {
                let (ay, rr) = ((ky * p.dil_h) / sh, (ky * p.dil_h) % sh);
                for kx in 0..p.k_w {
                    let (ax, rc) = ((kx * p.dil_w) / sw, (kx * p.dil_w) % sw);
                    offs.push(c * self.len() + (rr * sw + rc) * plane_len + ay * self.wq + ax);
                }
            }
        }
        offs
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{
        assert_close, assert_close_within, decode_all, kernel_sets, pointwise, random_weight,
        same_width_depthwise, Rng, WeightKind,
    };
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
    /// Also checks the fused residual add (`conv2d_add`) the same way.
    fn check_all_paths(rng: &mut Rng, sets: &[Kernels], p: &Conv2dParams, kind: WeightKind, with_bias: bool) {
        check_all_paths_within(rng, sets, p, kind, with_bias, 0.0);
    }

    /// [`check_all_paths`] with [`assert_close_within`]'s `range` slack.
    fn check_all_paths_within(
        rng: &mut Rng,
        sets: &[Kernels],
        p: &Conv2dParams,
        kind: WeightKind,
        with_bias: bool,
        range: f32,
    ) {
        let assert_close =
            |got: &[f32], want: &[f32], what: &str| assert_close_within(got, want, range, what);
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
            // The fused residual add: y = conv + bias + residual.
            let residual = rng.vec(want.len());
            let want_add: Vec<f32> = want.iter().zip(&residual).map(|(w, r)| w + r).collect();
            scratch.fill(f32::NAN);
            y.fill(f32::NAN);
            let act = Activation::None;
            kernels.conv2d_add(&x, &data.view(), bias, &residual, p, act, &mut y, &mut scratch).unwrap();
            assert_close(&y, &want_add, &format!("residual {kernels:?} {kind:?} {p:?}"));
            // A residual of fewer channels: the missing ones add zero (a channel-padded skip).
            let (plane, rc) = (p.out_h * p.out_w, p.out_c / 2);
            let short: Vec<f32> =
                (0..p.batch).flat_map(|b| residual[b * p.out_c * plane..][..rc * plane].to_vec()).collect();
            let want_short: Vec<f32> = want
                .iter()
                .enumerate()
                .map(|(i, w)| if i / plane % p.out_c < rc { want_add[i] } else { *w })
                .collect();
            kernels.conv2d_add(&x, &data.view(), bias, &short, p, act, &mut y, &mut scratch).unwrap();
            assert_close(&y, &want_short, &format!("{rc}-channel residual {kernels:?} {kind:?} {p:?}"));
            // A PRelu with a slope per output channel, after the residual.
            let slopes = prelu_slopes(rng, p.out_c);
            let act = ChannelActivation::PRelu(&slopes);
            kernels.conv2d_add(&x, &data.view(), bias, &residual, p, act, &mut y, &mut scratch).unwrap();
            let want_prelu = per_channel_prelu(&want_add, &slopes, plane);
            assert_close(&y, &want_prelu, &format!("PRelu {kernels:?} {kind:?} {p:?}"));
        }
    }

    /// Slopes for `channels` channels, of both signs and above 1 (a slope is any real).
    fn prelu_slopes(rng: &mut Rng, channels: usize) -> Vec<f32> {
        rng.vec(channels).iter().map(|v| 3.0 * v).collect()
    }

    /// `y` (NCHW, planes of `plane`) through a PRelu with one slope per channel.
    fn per_channel_prelu(y: &[f32], slopes: &[f32], plane: usize) -> Vec<f32> {
        let c = slopes.len();
        y.iter()
            .enumerate()
            .map(|(i, &v)| if v >= 0.0 { v } else { slopes[i / plane.max(1) % c] * v })
            .collect()
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

    /// A random depthwise convolution at `stride` (channel multiplier 1 or 2): filters up to
    /// `max_k` (rows, columns), inputs up to `max_in` or of size `big`, pads up to past the
    /// filter; `None` when the draw has no output.
    fn random_depthwise(
        rng: &mut Rng,
        stride: usize,
        max_k: [usize; 2],
        max_in: [usize; 2],
        big: Option<[usize; 2]>,
    ) -> Option<Conv2dParams> {
        let (k_h, k_w) = (1 + rng.below(max_k[0]), 1 + rng.below(max_k[1]));
        let [in_h, in_w] = big.unwrap_or_else(|| [1 + rng.below(max_in[0]), 1 + rng.below(max_in[1])]);
        let pads = [rng.below(k_h + 1), rng.below(k_w + 1), rng.below(k_h + 1), rng.below(k_w + 1)];
        let out = |len: usize, lo: usize, hi: usize, k: usize| {
            (len + lo + hi).checked_sub(k).map(|r| r / stride + 1)
        };
        let out_h = out(in_h, pads[0], pads[2], k_h)?;
        let out_w = out(in_w, pads[1], pads[3], k_w)?;
        let in_c = 1 + rng.below(5);
        Some(Conv2dParams {
            batch: 1 + rng.below(2),
            in_c,
            in_h,
            in_w,
            out_c: in_c * (1 + rng.below(2)),
            out_h,
            out_w,
            k_h,
            k_w,
            stride_h: stride,
            stride_w: stride,
            pad_top: pads[0],
            pad_left: pads[1],
            dil_h: 1,
            dil_w: 1,
            groups: in_c,
        })
    }

    /// Checks layer `p` with random `kind` weights and a bias under activations the depthwise
    /// kernels finish in their store (ReLU, Clip) and one they leave to the epilogue (HardSwish),
    /// on every path; returns the weights, input, bias and unactivated reference output.
    fn check_fused_activations(
        rng: &mut Rng,
        sets: &[Kernels],
        p: &Conv2dParams,
        kind: WeightKind,
    ) -> (pith_format::ir::TensorData, Vec<f32>, Vec<f32>, Vec<f32>) {
        let data = random_weight(rng, kind, p.out_c, p.filter_len());
        let x = rng.vec(p.batch * p.in_c * p.in_h * p.in_w);
        let bias = rng.vec(p.out_c);
        let plain = reference(&x, &decode_all(&data, p.out_c), Some(&bias), p);
        for (act, f) in [
            (Activation::Relu, (|v: f32| v.max(0.0)) as fn(f32) -> f32),
            (Activation::Clip { min: -0.2, max: 0.3 }, |v: f32| v.clamp(-0.2, 0.3)),
            (Activation::HardSwish, |v: f32| v * (v / 6.0 + 0.5).clamp(0.0, 1.0)),
        ] {
            let want: Vec<f32> = plain.iter().map(|&v| f(v)).collect();
            for kernels in sets {
                let mut y = vec![f32::NAN; want.len()];
                let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(p)];
                kernels.conv2d(&x, &data.view(), Some(&bias), p, act, &mut y, &mut scratch).unwrap();
                assert_close(&y, &want, &format!("{act:?} {kernels:?} {p:?}"));
            }
        }
        // A slope per channel: never a clamp the store can apply, so the kernels' own epilogue.
        let slopes = prelu_slopes(rng, p.out_c);
        let want = per_channel_prelu(&plain, &slopes, p.out_h * p.out_w);
        for kernels in sets {
            let mut y = vec![f32::NAN; want.len()];
            let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(p)];
            let act = ChannelActivation::PRelu(&slopes);
            kernels.conv2d(&x, &data.view(), Some(&bias), p, act, &mut y, &mut scratch).unwrap();
            assert_close(&y, &want, &format!("PRelu {kernels:?} {p:?}"));
        }
        (data, x, bias, plain)
    }

    #[test]
    fn small_square_depthwise_matches_the_reference() {
        // MobileNetV3's 5x5 layers (14x14 and 7x7 at stride 1, 28->14 and 14->7 at stride 2,
        // "same" and TensorFlow's stride-2 padding) and 7x7 filters, with as many channels as
        // take several kernel calls, every activation the layer can fuse, one layer each too
        // wide (17 columns) and too padded (a pad of 5) for the many-channel kernel, and a 3x3
        // one padded more than the 3x3 kernel takes.
        let mut rng = Rng::new(83);
        let sets = kernel_sets();
        let shapes = [
            (5, 1, [14, 14], [2, 2]),
            (5, 1, [7, 7], [2, 2]),
            (5, 2, [28, 28], [2, 2]),
            (5, 2, [14, 14], [1, 1]),
            (7, 1, [9, 9], [3, 3]),
            (7, 2, [15, 16], [3, 2]),
            (5, 1, [17, 17], [2, 2]),
            (5, 1, [6, 6], [5, 5]),
            (3, 1, [8, 8], [2, 2]),
        ];
        for (case, (k, stride, [in_h, in_w], [pad_top, pad_left])) in shapes.into_iter().enumerate() {
            let channels = [3, 40, 97][case % 3];
            let out = |len: usize, pad: usize| (len + 2 * pad - k) / stride + 1;
            let p = Conv2dParams {
                batch: 1 + case % 2,
                in_c: channels,
                out_c: channels,
                in_h,
                in_w,
                out_h: out(in_h, pad_top),
                out_w: out(in_w, pad_left),
                k_h: k,
                k_w: k,
                stride_h: stride,
                stride_w: stride,
                pad_top,
                pad_left,
                dil_h: 1,
                dil_w: 1,
                groups: channels,
            };
            let wide = p.out_w > crate::arch::DEPTHWISE_SMALL_MAX_WIDTH || pad_top >= k;
            for kernels in &sets {
                let takes =
                    matches!(small_channels_kernel(kernels.isa(), &p), Some(SmallChannels::Square(_)));
                let has =
                    kernels.isa().depthwise_small.is_some() && small_3x3_kernel(kernels.isa(), &p).is_none();
                assert_eq!(takes, has && !wide, "{kernels:?} {p:?}");
            }
            let kind = WeightKind::all()[case % WeightKind::all().len()];
            check_all_paths(&mut rng, &sets, &p, kind, case % 2 == 0);
            check_fused_activations(&mut rng, &sets, &p, kind);
        }
    }

    #[test]
    fn stride_2_depthwise_covers_every_border_on_every_path() {
        // Pads up to past the filter, planes smaller than the filter, odd and even sizes,
        // channel multipliers, filters up to 5x7, with and without bias and clamps.
        let mut rng = Rng::new(78);
        let sets = kernel_sets();
        let kinds = WeightKind::all();
        let mut cases = 0;
        for case in 0..150 {
            let big = (case % 10 == 0).then_some([41, 38]);
            let Some(p) = random_depthwise(&mut rng, 2, [5, 7], [12, 14], big) else { continue };
            assert!(in_place_depthwise(&p));
            cases += 1;
            let kind = kinds[case % kinds.len()];
            check_all_paths(&mut rng, &sets, &p, kind, case % 2 == 0);
            check_fused_activations(&mut rng, &sets, &p, kind);
        }
        assert!(cases > 100, "only {cases} shapes had an output");
    }

    #[test]
    fn stride_1_depthwise_rows_cover_every_border() {
        // Pads up to past the filter (output rows and columns with no tap inside), planes
        // narrower or shorter than the filter, channel multipliers, residuals, fused clamps.
        let mut rng = Rng::new(77);
        let sets = kernel_sets();
        let kinds = WeightKind::all();
        let mut cases = 0;
        for case in 0..150 {
            let big = (case % 10 == 0).then_some([40, 37]);
            let Some(p) = random_depthwise(&mut rng, 1, [5, 5], [9, 12], big) else { continue };
            assert!(uses_depthwise_rows(&p));
            cases += 1;
            check_all_paths(&mut rng, &sets, &p, kinds[case % kinds.len()], case % 2 == 0);
            check_fused_activations(&mut rng, &sets, &p, kinds[case % kinds.len()]);
        }
        assert!(cases > 100, "only {cases} cases had an output");
    }

    #[test]
    fn small_plane_depthwise_covers_every_border_on_every_path() {
        // Same-width stride-1 layers (what `Isa::depthwise_plane` takes where the path has it):
        // short rows and rows that leave vectors half empty, pads past the filter, dilations,
        // channel multipliers, clamps, an activation the kernel cannot finish and residuals,
        // which both take the row path.
        let mut rng = Rng::new(79);
        let sets = kernel_sets();
        let kinds = WeightKind::all();
        let mut planes = 0;
        for case in 0..100 {
            let in_w = [1 + rng.below(15), 17 + rng.below(6), 33 + rng.below(3)][case % 3];
            let Some(one) = same_width_depthwise(&mut rng, [5, 7], in_w, (1024 / in_w).min(24)) else {
                continue;
            };
            let in_c = 1 + rng.below(5);
            let (batch, out_c) = (1 + rng.below(2), in_c * (1 + rng.below(2)));
            let p = Conv2dParams { batch, in_c, out_c, groups: in_c, ..one };
            let avx512 = sets.iter().find(|k| k.isa().name == "avx512");
            planes += avx512.is_some_and(|k| plane_kernel(k.isa(), &p).is_some()) as usize;
            let kind = kinds[case % kinds.len()];
            check_all_paths(&mut rng, &sets, &p, kind, case % 2 == 0);
            let (data, x, bias, plain) = check_fused_activations(&mut rng, &sets, &p, kind);
            // A residual over every output channel: the row path, then the epilogue.
            let res = rng.vec(plain.len());
            let want: Vec<f32> = plain.iter().zip(&res).map(|(v, r)| (v + r).max(0.0)).collect();
            for kernels in &sets {
                let mut y = vec![f32::NAN; want.len()];
                let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(&p)];
                let w = data.view();
                kernels
                    .conv2d_add(&x, &w, Some(&bias), &res, &p, Activation::Relu, &mut y, &mut scratch)
                    .unwrap();
                assert_close(&y, &want, &format!("residual {kernels:?} {p:?}"));
            }
        }
        if sets.iter().any(|k| k.isa().name == "avx512") {
            assert!(planes > 40, "only {planes} layers took the plane kernel");
        }
    }

    #[test]
    fn sliver_columns_take_dot_products_only_where_they_pay() {
        // 49 = 3 x 16 + 1: one dot product per filter instead of a fourth vector, at k = 160.
        assert_eq!(sliver_columns(16, 49, 160), 1);
        assert_eq!(sliver_columns(8, 49, 320), 1);
        assert_eq!(sliver_columns(8, 49, 160), 1);
        assert_eq!(sliver_columns(8, 196, 576), 0);
        assert_eq!(sliver_columns(16, 49, 96), 1);
        // Short reductions, several columns, whole vectors, one vector or less: vectors.
        assert_eq!(sliver_columns(16, 49, 48), 0);
        assert_eq!(sliver_columns(16, 196, 384), 0);
        assert_eq!(sliver_columns(16, 64, 960), 0);
        assert_eq!(sliver_columns(16, 9, 960), 0);
        assert_eq!(sliver_columns(1, 49, 960), 0);
    }

    /// A 1×1, stride-1, unpadded convolution over `[h, w]` planes.
    #[test]
    fn pointwise_split_by_pixels_matches_the_reference() {
        // Few filters over planes of a few hundred pixels per thread: split by rows on the
        // threaded sets. Odd extents (rows end mid-vector, a thread's range starts mid-plane),
        // one filter, long reductions with sliver columns, full and partial residuals.
        let mut rng = Rng::new(91);
        let sets = kernel_sets();
        let mut split = 0;
        for (case, (in_c, out_c, [h, w])) in
            [(24, 6, [40, 37]), (5, 17, [33, 29]), (200, 20, [23, 49]), (3, 1, [64, 13])]
                .into_iter()
                .enumerate()
        {
            let p = pointwise(1 + case % 2, in_c, out_c, [h, w]);
            split += sets.iter().filter(|k| pointwise_by_pixels(k, &p)).count();
            let kinds = WeightKind::all();
            check_all_paths(&mut rng, &sets, &p, kinds[case % kinds.len()], true);
            check_fused_activations(&mut rng, &sets, &p, kinds[(case + 1) % kinds.len()]);
        }
        // Every threaded set splits every layer above by pixels; one thread never does.
        let threaded = sets.iter().filter(|k| k.threads() > 1).count();
        assert_eq!(split, 4 * threaded);
    }

    #[test]
    fn pointwise_split_by_depth_matches_the_reference() {
        // Projections over small planes: split by input channels on the threaded sets, each
        // thread's partial sums added up by pixel ranges (the last one short), with every epilogue
        // (bias, full and partial residuals, a PRelu per channel), uneven shares of the depth,
        // several panels of filters, odd extents and two images.
        let mut rng = Rng::new(93);
        let sets = kernel_sets();
        let mut split = 0;
        let cases = [(192, 32, [28, 28]), (100, 49, [14, 14]), (50, 7, [13, 11]), (64, 30, [9, 15])];
        for (case, (in_c, out_c, [h, w])) in cases.into_iter().enumerate() {
            let p = pointwise(1 + case % 2, in_c, out_c, [h, w]);
            split += sets.iter().filter(|k| pointwise_by_depth(k, &p)).count();
            let kinds = WeightKind::all();
            check_all_paths(&mut rng, &sets, &p, kinds[case % kinds.len()], true);
            check_fused_activations(&mut rng, &sets, &p, kinds[(case + 1) % kinds.len()]);
        }
        let threaded = sets.iter().filter(|k| k.threads() > 1).count();
        assert_eq!(split, cases.len() * threaded);
    }

    #[test]
    fn pointwise_with_an_input_scale_matches_the_scaled_input() {
        // A squeeze-excite gate folded into the filters: the same as convolving the gated input,
        // on every path and thread count, for each way the layer splits (by filters, pixels and
        // depth), a plane of one pixel (no GEMV shortcut), two images, every encoding, with a
        // residual and a clamp.
        let mut rng = Rng::new(95);
        let sets = kernel_sets();
        let cases =
            [(24, 40, [7, 9]), (192, 32, [28, 28]), (16, 48, [33, 31]), (40, 24, [1, 1]), (5, 3, [2, 3])];
        for (case, (in_c, out_c, hw)) in cases.into_iter().enumerate() {
            let p = pointwise(1 + case % 2, in_c, out_c, hw);
            for kind in WeightKind::all() {
                let data = random_weight(&mut rng, kind, p.out_c, p.filter_len());
                let (x, scale) = (rng.vec(p.batch * p.in_c * hw[0] * hw[1]), rng.vec(p.batch * p.in_c));
                let gated: Vec<f32> =
                    x.iter().enumerate().map(|(i, v)| v * scale[i / (hw[0] * hw[1])]).collect();
                let bias = rng.vec(p.out_c);
                let residual = rng.vec(p.batch * p.out_c * hw[0] * hw[1]);
                let act = Activation::Clip { min: -0.5, max: 0.5 };
                let want = reference(&gated, &decode_all(&data, p.out_c), Some(&bias), &p)
                    .iter()
                    .zip(&residual)
                    .map(|(y, r)| act.apply(y + r))
                    .collect::<Vec<_>>();
                for k in &sets {
                    let mut y = vec![f32::NAN; want.len()];
                    let mut s = vec![0.0; k.conv2d_scratch_len(&p)];
                    k.conv2d_scaled_input(
                        &x,
                        &scale,
                        &data.view(),
                        Some(&bias),
                        Some(&residual),
                        &p,
                        act,
                        &mut y,
                        &mut s,
                    )
                    .unwrap();
                    assert_close(&y, &want, &format!("{kind:?} {p:?} on {k:?}"));
                }
            }
        }
    }

    #[test]
    fn an_input_scale_is_refused_where_it_does_not_apply() {
        let k = Kernels::default();
        let mut rng = Rng::new(96);
        let p = pointwise(1, 8, 4, [3, 3]);
        let data = random_weight(&mut rng, WeightKind::F32, 4, 8);
        let (x, mut y, mut s) = (rng.vec(72), vec![0.0; 36], vec![0.0; k.conv2d_scratch_len(&p)]);
        let err = k
            .conv2d_scaled_input(
                &x,
                &[1.0; 7],
                &data.view(),
                None,
                None,
                &p,
                Activation::None,
                &mut y,
                &mut s,
            )
            .unwrap_err();
        assert!(err.to_string().contains("input scale"), "{err}");
        // A 3×3 depthwise layer over the same input.
        let q = Conv2dParams { out_c: 8, k_h: 3, k_w: 3, pad_top: 1, pad_left: 1, groups: 8, ..p };
        let dw = random_weight(&mut rng, WeightKind::F32, 8, 9);
        let mut y = vec![0.0; 72];
        let err = k
            .conv2d_scaled_input(&x, &[1.0; 8], &dw.view(), None, None, &q, Activation::None, &mut y, &mut s)
            .unwrap_err();
        assert!(err.to_string().contains("1×1"), "{err}");
    }

    #[test]
    fn pointwise_sliver_columns_match_the_reference() {
        // Planes a column or two past whole vectors, long enough reductions for the dot-product
        // columns on every SIMD path, several panels and tiles, a residual and a clamp.
        let mut rng = Rng::new(81);
        let sets = kernel_sets();
        for (in_c, out_c, [h, w]) in [(320, 37, [7, 7]), (700, 20, [1, 17]), (300, 100, [3, 11])] {
            let p = pointwise(2, in_c, out_c, [h, w]);
            assert_eq!(sliver_columns(16, h * w, in_c), 1, "{p:?} takes a dot-product column");
            let kind = WeightKind::Codebook(4, pith_format::ir::CodebookKind::PerRow, false);
            check_all_paths(&mut rng, &sets, &p, kind, true);
            let data = random_weight(&mut rng, kind, p.out_c, p.filter_len());
            let x = rng.vec(p.batch * p.in_c * h * w);
            let (bias, res) = (rng.vec(out_c), rng.vec(p.batch * out_c * h * w));
            let plain = reference(&x, &decode_all(&data, out_c), Some(&bias), &p);
            let want: Vec<f32> = plain.iter().zip(&res).map(|(v, r)| (v + r).clamp(-0.5, 0.5)).collect();
            for kernels in &sets {
                let mut y = vec![f32::NAN; want.len()];
                let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(&p)];
                let act = Activation::Clip { min: -0.5, max: 0.5 };
                kernels
                    .conv2d_add(&x, &data.view(), Some(&bias), &res, &p, act, &mut y, &mut scratch)
                    .unwrap();
                assert_close(&y, &want, &format!("{kernels:?} {p:?}"));
            }
        }
    }

    /// Every kernel set of [`kernel_sets`] that can take bf16 products, with them on.
    fn bf16_sets() -> Vec<Kernels> {
        let sets: Vec<Kernels> =
            kernel_sets().into_iter().filter_map(|k| k.with_bf16_products(true).ok()).collect();
        if sets.is_empty() {
            eprintln!("no kernel path with bf16 products on this CPU: bf16 checks skipped");
        }
        sets
    }

    #[test]
    fn bf16_products_stay_within_their_rounding_of_the_f32_result() {
        // Each product of two factors rounded to bf16 (8 significant bits: off by at most 2^-8
        // each) is off by at most 2^-7 of itself, so an output by at most 2^-7 of the sum of its
        // products' magnitudes (the f32 reference on |x| and |w|), plus the sums' own rounding.
        // Expansions and projections (split by depth on several threads), sliver columns (dot
        // products of pair rows), odd depths (a zero in the last pair), widths across strips of
        // 48, two images, residuals, every encoding, 1-3 threads; the 2000-deep layer needs more
        // strip than the accumulator holds and runs in f32.
        let mut rng = Rng::new(97);
        let sets = bf16_sets();
        let kinds = WeightKind::all();
        let cases = [
            (16, 96, [12, 11]),
            (24, 7, [9, 49]),
            (320, 37, [7, 7]),
            (3, 5, [4, 5]),
            (961, 20, [2, 9]),
            (2000, 3, [3, 5]),
            (201, 20, [14, 14]),
            (192, 200, [7, 7]),
        ];
        let mut by_depth = 0;
        for (case, (in_c, out_c, [h, w])) in cases.into_iter().enumerate() {
            let mut p = pointwise(1 + case % 2, in_c, out_c, [h, w]);
            // The last layer in two groups of 96 inputs and 100 filters (several panels each),
            // whose packed input must not pass from one group to the next, and whose sliver
            // column each panel gathers and rounds for itself.
            p.groups = if case == cases.len() - 1 { 2 } else { 1 };
            by_depth += sets.iter().filter(|k| pointwise_by_depth(k, &p)).count();
            let kind = kinds[case * 5 % kinds.len()];
            let data = random_weight(&mut rng, kind, out_c, p.filter_len());
            let wf = decode_all(&data, out_c);
            let x: Vec<f32> = rng.vec(p.batch * in_c * h * w).iter().map(|v| v - 0.5).collect();
            let (bias, res) = (rng.vec(out_c), rng.vec(p.batch * out_c * h * w));
            let plain = reference(&x, &wf, Some(&bias), &p);
            let want: Vec<f32> = plain.iter().zip(&res).map(|(v, r)| v + r).collect();
            let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
            let magnitude = reference(&abs(&x), &abs(&wf), None, &p);
            for kernels in &sets {
                let mut y = vec![f32::NAN; want.len()];
                let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(&p)];
                let act = Activation::None;
                kernels
                    .conv2d_add(&x, &data.view(), Some(&bias), &res, &p, act, &mut y, &mut scratch)
                    .unwrap();
                for (i, ((g, w), m)) in y.iter().zip(&want).zip(&magnitude).enumerate() {
                    let bound = m / 128.0 + 1e-4 * (1.0 + w.abs());
                    assert!(
                        (g - w).abs() <= bound,
                        "{kernels:?} {kind:?} {p:?} element {i}: {g} vs {w} (bound {bound})"
                    );
                }
            }
        }
        // Two layers above split by depth on the 2- and 3-thread sets.
        assert!(sets.is_empty() || by_depth >= 2, "no layer took the split by depth");
    }

    #[test]
    fn bf16_products_round_both_factors() {
        // Inputs of 1 + 2^-10 round to 1 in bf16 and weights of 1 - 2^-12 to 1: 96 products
        // then sum to exactly 96, where f32 sums 96 (1 + 2^-10)(1 - 2^-12). Columns in whole
        // vectors (48 per row), one sliver column (the 49th: a dot product of pair rows), and
        // 192 split by depth on the threaded sets, over 96 inputs.
        const K: usize = 96;
        let sets = bf16_sets();
        let f32_sum = K as f32 * (1.0 + 1.0 / 1024.0) * (1.0 - 1.0 / 4096.0);
        assert!((f32_sum - K as f32).abs() > 1e-2, "the f32 sum must differ from the bf16 one");
        for (h, w) in [(4, 12), (7, 7), (12, 16)] {
            let p = pointwise(1, K, 16, [h, w]);
            let data = pith_format::ir::TensorData::F32(vec![1.0 - 1.0 / 4096.0; 16 * K]);
            let x = vec![1.0 + 1.0 / 1024.0; K * h * w];
            for kernels in &sets {
                if (h, w) == (7, 7) {
                    assert_eq!(sliver_columns(kernels.isa().lanes, h * w, K), 1, "no sliver column");
                }
                let mut y = vec![f32::NAN; 16 * h * w];
                let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(&p)];
                kernels.conv2d(&x, &data.view(), None, &p, Activation::None, &mut y, &mut scratch).unwrap();
                for (i, &v) in y.iter().enumerate() {
                    assert!((v - K as f32).abs() < 1e-4, "{kernels:?} {h}x{w} element {i}: {v}, want {K}");
                }
            }
        }
    }

    #[test]
    fn bf16_products_need_a_path_that_has_them() {
        let scalar = Kernels::with_isa(crate::arch::scalar::ISA, 1).unwrap();
        let err = scalar.with_bf16_products(true).unwrap_err().to_string();
        assert!(err.contains("bf16") && err.contains("scalar"), "{err}");
        assert!(Kernels::with_isa(crate::arch::scalar::ISA, 1).unwrap().with_bf16_products(false).is_ok());
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
        // A 1x1 plane (squeeze-excite): the matrix-vector path.
        let gemv =
            Conv2dParams { in_c: 50, in_h: 1, in_w: 1, out_c: 37, out_h: 1, out_w: 1, groups: 1, ..base };
        for p in [base, conv3, depthwise, strided, gemv] {
            check_all_paths(&mut rng, &sets, &p, kind, true);
            check_all_paths(&mut rng, &sets, &p, WeightKind::F32, false);
        }
    }

    #[test]
    fn phase_planes_cover_every_stride_dilation_and_border() {
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
                            check_all_paths(&mut rng, &sets, &p, WeightKind::F32, true);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn slabs_zero_only_the_rows_outside_the_input_that_they_read() {
        // Several slabs per image: interior ones skip the zeroing, the first and last (rows of
        // top or bottom padding, as many as the filter reaches) need it; a stale row from the
        // slab before would show in the last output rows. Heights that end a slab exactly at the
        // input's last row and one past it, strides 1 and 2, filters 3 and 5 tall.
        let mut rng = Rng::new(31);
        let sets = kernel_sets();
        for (k, stride, pads, in_h) in [
            (3, 1, [1, 1], 41),
            (3, 1, [0, 2], 40),
            (5, 1, [2, 2], 37),
            (3, 2, [1, 1], 45),
            (5, 2, [2, 1], 50),
            (3, 1, [2, 0], 39),
        ] {
            // 24 channels of 64 columns: slabs of a few rows; 4 filters: no Winograd.
            let (in_c, in_w, out_c) = (24, 64, 4);
            let out_h = (in_h + pads[0] + pads[1] - k) / stride + 1;
            let p = Conv2dParams {
                batch: 1,
                in_c,
                in_h,
                in_w,
                out_c,
                out_h,
                out_w: (in_w + 2 - 3) / stride + 1,
                k_h: k,
                k_w: 3,
                stride_h: stride,
                stride_w: stride,
                pad_top: pads[0],
                pad_left: 1,
                dil_h: 1,
                dil_w: 1,
                groups: 1,
            };
            let slab = Slab::new(&p);
            assert!(slab.rows >= 1 && 3 * slab.rows <= p.out_h, "{} slab rows of {}", slab.rows, p.out_h);
            let data = random_weight(&mut rng, WeightKind::F32, out_c, p.filter_len());
            let x = rng.vec(in_c * in_h * in_w);
            let want = reference(&x, &decode_all(&data, out_c), None, &p);
            for kernels in &sets {
                let mut y = vec![f32::NAN; want.len()];
                let mut s = vec![f32::NAN; kernels.conv2d_scratch_len(&p)];
                kernels.conv2d(&x, &data.view(), None, &p, Activation::None, &mut y, &mut s).unwrap();
                assert_close(&y, &want, &format!("{p:?} on {kernels:?}"));
            }
        }
    }

    #[test]
    fn slabs_and_accumulator_blocks_split_rows_and_activation_is_fused() {
        // 8 input channels make slabs of fewer rows than the output (a ragged last one), and 192
        // filters over 52- and 26-column phase planes make accumulator blocks of fewer rows than
        // a slab.
        let mut rng = Rng::new(3);
        for (stride, dil) in [(1, 1), (2, 2)] {
            let (in_c, in_h, in_w, out_c) = (8, 60, 50, 192);
            let out = |n: usize| (n + 2 - dil * 2 - 1) / stride + 1;
            let p = Conv2dParams {
                batch: 1,
                in_c,
                in_h,
                in_w,
                out_c,
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
            let slab = Slab::new(&p);
            assert!(slab.rows < p.out_h && !p.out_h.is_multiple_of(slab.rows), "{}", slab.rows);
            assert!(slab.sub_rows(out_c) < slab.rows && slab.panel_rows == out_c);
            let data = random_weight(&mut rng, WeightKind::F32, out_c, p.filter_len());
            let x = rng.vec(in_c * in_h * in_w);
            let mut y = vec![0.0; out_c * p.out_h * p.out_w];
            let act = Activation::Clip { min: -0.5, max: 0.5 };
            let want: Vec<f32> = reference(&x, &decode_all(&data, out_c), None, &p)
                .into_iter()
                .map(|v| act.apply(v))
                .collect();
            let residual = rng.vec(y.len());
            let conv = reference(&x, &decode_all(&data, out_c), None, &p);
            let want_add: Vec<f32> = conv.iter().zip(&residual).map(|(c, r)| act.apply(c + r)).collect();
            for kernels in kernel_sets() {
                let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(&p)];
                kernels.conv2d(&x, &data.view(), None, &p, act, &mut y, &mut scratch).unwrap();
                assert_close(&y, &want, &format!("{kernels:?} stride {stride}"));
                kernels.conv2d_add(&x, &data.view(), None, &residual, &p, act, &mut y, &mut scratch).unwrap();
                assert_close(
                    &y,
                    &want_add,
                    &format!("{kernels:?} stride {stride}, residual then activation"),
                );
            }
        }
    }

    #[test]
    fn winograd_matches_the_reference_on_odd_extents_pads_and_threads() {
        let mut rng = Rng::new(31);
        let sets = kernel_sets();
        let kind = WeightKind::Codebook(4, pith_format::ir::CodebookKind::PerRow, false);
        // (in_h, in_w, pad_top, pad_left, pad_bottom, pad_right, tile side): odd and even
        // outputs, no padding, one-sided padding, and padding wider than a tile; the planes of at
        // least 48 4×4 tiles take them, with extents that leave 0-3 rows and columns of a last
        // tile, rows of fewer and more tiles than a vector window, and every left padding
        // modulo 4.
        let cases = [
            (9, 13, 1, 1, 1, 1, 2),
            (8, 10, 0, 0, 0, 0, 2),
            (7, 12, 2, 0, 1, 2, 2),
            (14, 70, 2, 2, 1, 0, 4),
            (9, 83, 0, 0, 2, 2, 4),
            (17, 48, 1, 1, 1, 1, 4),
            (11, 64, 0, 3, 0, 0, 4),
        ];
        for (in_h, in_w, pt, pl, pb, pr, side) in cases {
            let p = Conv2dParams {
                batch: 2,
                in_c: 17,
                in_h,
                in_w,
                out_c: 9,
                out_h: in_h + pt + pb - 2,
                out_w: in_w + pl + pr - 2,
                k_h: 3,
                k_w: 3,
                stride_h: 1,
                stride_w: 1,
                pad_top: pt,
                pad_left: pl,
                dil_h: 1,
                dil_w: 1,
                groups: 1,
            };
            assert!(crate::winograd::applies(&p), "{p:?}");
            assert_eq!(crate::winograd::row_align(&p), side, "{p:?}");
            // F(4×4, 3×3)'s transforms scale by up to 8 and 1/24: its error is a few 1e-6 of
            // the largest output (1.15e-4 against outputs up to 44 here), where F(2×2, 3×3)
            // meets the per-element tolerance.
            let range = if side == 4 { 1e-5 } else { 0.0 };
            check_all_paths_within(&mut rng, &sets, &p, kind, true, range);
            check_all_paths_within(&mut rng, &sets, &p, WeightKind::F32, false, range);
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
        let a = ChannelActivation::Same(Activation::None);
        let k = Kernels::default();
        assert!(conv2d(&k, &x[1..], &data.view(), None, None, None, &p, a, &mut y, &mut s).is_err());
        // One PRelu slope too few: an error, not a panic in the epilogue.
        let slopes = vec![0.5; p.out_c - 1];
        let prelu = ChannelActivation::PRelu(&slopes);
        let err = conv2d(&k, &x, &data.view(), None, None, None, &p, prelu, &mut y, &mut s).unwrap_err();
        assert!(err.to_string().contains("PRelu slopes"), "{err}");
        let mut short = vec![0.0; scratch_len(&p) - 1];
        assert!(conv2d(&k, &x, &data.view(), None, None, None, &p, a, &mut y, &mut short).is_err());
        let short_residual = vec![0.0; y.len() - 1];
        assert!(k.conv2d_add(&x, &data.view(), None, &short_residual, &p, a, &mut y, &mut s).is_err());
        let long_residual = vec![0.0; y.len() + p.batch * p.out_h * p.out_w];
        assert!(k.conv2d_add(&x, &data.view(), None, &long_residual, &p, a, &mut y, &mut s).is_err());
        let bad = Conv2dParams { stride_h: 0, ..p };
        assert!(conv2d(&k, &x, &data.view(), None, None, None, &bad, a, &mut y, &mut s).is_err());
        let bad = Conv2dParams { out_c: p.out_c + 1, groups: 1, ..p };
        assert!(conv2d(&k, &x, &data.view(), None, None, None, &bad, a, &mut y, &mut s).is_err());
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
            kernels.conv_transpose2d(&[], &view, None, None, &pt, Activation::None, &mut y, &mut s).unwrap();
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
