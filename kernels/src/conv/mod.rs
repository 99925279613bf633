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
//! One module per path: [`pointwise`] (with the splits by pixels and by depth), [`depthwise`] (the
//! whole-plane and many-channel kernels) and [`slab`] (the shifted path); this one chooses.
//!
//! Either path decodes a bounded panel of filters (never the whole tensor of a large layer).
//! Work is split over the session's threads by filters when every thread has groups of its own
//! (depthwise), else by output rows, so no thread pads or reads input another one also needs.

use std::ops::Range;

use pith_format::TensorView;

use crate::arch::{DepthwisePlane, FusedActivation, Isa};
use crate::parallel::{split_rows, split_units, with_plane_list, TASKS_PER_THREAD};
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

mod depthwise;
mod pointwise;
mod slab;

use depthwise::{in_place_kernel, plane_kernel, small_channels_kernel, SmallChannels};
use pointwise::{
    depth_split_shape, panel_rows, pointwise_by_depth, pointwise_by_pixels, DEPTH_SHARES, POINTWISE_ACC,
};
pub(crate) use slab::Slab;
#[cfg(test)]
mod tests;

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

/// Fewest output pixels (64×64) of a plane whose 1×1 and in-place depthwise layers are split over
/// the threads by bands of rows, one band per thread, as the dense convolutions always are: a
/// chain of them then leaves each thread's rows in that thread's cache, where a depthwise layer
/// split by channels after a layer split by rows (or a 1×1 layer after one split by channels)
/// reads half its input from the other core. Emerald Rapids Xeon, 2 threads, 4-bit weights,
/// BlazeFace full range's 96×96 stage (`pith bench --profile`): its depthwise layers over 32
/// channels took 0.060 and 0.058 ms split by channels, 0.055 and 0.047 by rows, the 1×1 layers
/// after them 0.041 and 0.038 against 0.030 and 0.028; the model 1.91-1.96 → 1.85-1.86 ms
/// (three alternating runs of 1000). Over 48×48 (its next stage) bands lost: the depthwise layers
/// 0.023 → 0.033 ms, each thread calling the kernel for every channel on half as many rows.
pub(crate) const ROW_BAND_MIN_PLANE: usize = 64 * 64;

/// Whether layer `p` (one image of it) is large enough for its 1×1 or in-place depthwise split
/// to go by bands of rows on `kernels` ([`ROW_BAND_MIN_PLANE`]), with several threads and at least
/// two rows for each.
pub(super) fn splits_by_bands(kernels: &Kernels, p: &Conv2dParams) -> bool {
    let threads = kernels.threads_now();
    threads > 1 && p.out_h >= 2 * threads && p.out_h * p.out_w >= ROW_BAND_MIN_PLANE
}

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
        // by depth: the partial sums of the shares after the first (one per filter and pixel;
        // more than needed on several threads), and a panel and its share of the depth.
        let work =
            ((panel_rows(p) + 1) * p.filter_len() + POINTWISE_ACC).max(crate::conv_int8::scratch_len(p));
        if depth_split_shape(p) {
            (DEPTH_SHARES - 1) * p.out_c * p.out_h * p.out_w + work.max(2 * panel_rows(p) * p.filter_len())
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

/// What [`crate::Kernels::conv2d`] derives from a layer's geometry alone on one kernel path: the
/// whole-plane depthwise kernel's tap masks, the shifted path's slab and taps, the scratch per
/// task. A runtime makes it once per layer shape ([`crate::Kernels::conv_geometry`]) instead of on
/// every run: deriving it took about a tenth of the time of a model of small layers (16 channels
/// over 6×6 planes, Zen 4).
#[derive(Debug)]
pub struct ConvGeometry {
    /// The layer it describes.
    p: Conv2dParams,
    /// The kernel path it was made for ([`Isa::name`]): whether the whole-plane kernel applies
    /// depends on it.
    isa: &'static str,
    /// The tap masks, where the path's whole-plane depthwise kernel takes the layer.
    plane: Option<DepthwisePlane>,
    /// The slab and its taps, for every layer but a 1×1 one.
    slab: Option<(Slab, slab::Taps)>,
    /// [`scratch_len`] of the layer.
    per_task: usize,
}

impl ConvGeometry {
    /// The geometry of layer `p` on `isa`.
    pub(crate) fn new(isa: Isa, p: &Conv2dParams) -> ConvGeometry {
        let plane = plane_kernel(isa, p).and_then(|_| DepthwisePlane::new(p));
        let slab = (!p.is_pointwise()).then(|| {
            let slab = Slab::new(p);
            let taps = slab.taps(p);
            (slab, taps)
        });
        ConvGeometry { p: *p, isa: isa.name, plane, slab, per_task: scratch_len(p) }
    }

    /// The layer it describes.
    pub fn params(&self) -> &Conv2dParams {
        &self.p
    }
}

/// See [`crate::Kernels::conv2d`]; `geometry`, when given, is layer `p`'s (made on any kernel
/// path: one made on another is replaced for this call).
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    kernels: &Kernels,
    geometry: Option<&ConvGeometry>,
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
    if geometry.is_some_and(|g| g.p != *p) {
        return Err(KernelError::Params("the prepared geometry describes another layer".into()));
    }
    if let Some(s) = input_scale {
        if !p.is_pointwise() || p.groups != 1 {
            return Err(KernelError::Params("an input scale applies to an ungrouped 1×1 layer only".into()));
        }
        check_len("conv input scale", s.len(), p.batch * p.in_c)?;
    }
    act.check(p.out_c)?;
    let in_plane = p.in_h * p.in_w;
    let out_plane = p.out_h * p.out_w;
    let geometry = geometry.filter(|g| g.isa == kernels.isa().name);
    let per_task = geometry.map_or_else(|| scratch_len(p), |g| g.per_task);
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
    // The geometry a prepared layer brings, else made for this call.
    let made;
    let geometry = match geometry {
        Some(g) => g,
        None => {
            made = ConvGeometry::new(kernels.isa(), p);
            &made
        }
    };
    // A small stride-1 depthwise plane with no residual: whole-plane vectors.
    let flat = plane_kernel(kernels.isa(), p)
        .filter(|_| residual.is_none())
        .and_then(|kernel| Some((kernel, geometry.plane.as_ref()?)));
    let slab = geometry.slab.as_ref().map(|(slab, taps)| (slab, taps));
    // A depthwise layer's kernel, tried in this order: many channels per call over small planes
    // (the interleaved one before the whole-plane kernel), whole planes, in place, shifted rows.
    let small = small_channels_kernel(kernels.isa(), p)
        .filter(|_| residual.is_none())
        .and_then(|kernel| Some((kernel, act.same()?)))
        .filter(|(kernel, _)| flat.is_none() || matches!(kernel, SmallChannels::Interleaved(_)));
    let depthwise = match (small, flat, in_place_kernel(kernels.isa(), p).filter(|_| residual.is_none())) {
        (Some((kernel, act)), _, _) => Depthwise::Small(kernel, act),
        (None, Some((kernel, plane)), _) => Depthwise::Plane(kernel, plane),
        (None, None, Some(kernel)) => Depthwise::InPlace(kernel),
        (None, None, None) => Depthwise::Shifted,
    };
    // A large depthwise plane goes by bands of rows, each thread's where the layer before left
    // them (see `ROW_BAND_MIN_PLANE`), when one thread's kernel takes bands: the in-place one,
    // and the 3×3 many-channel one (on NEON and AVX2 up to 64 columns). A layer keeps its
    // one-thread kernel, so its bits do not depend on the thread count.
    let banded = match depthwise {
        _ if !splits_by_bands(kernels, p) => None,
        Depthwise::InPlace(kernel) => Some(Banded::InPlace(kernel)),
        Depthwise::Small(SmallChannels::ThreeByThree(kernel), act) => Some(Banded::ThreeByThree(kernel, act)),
        _ => None,
    };
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
        match (&slab, banded) {
            (None, _) if pointwise_by_depth(p) => layer.pointwise_by_depth(kernels, xb, rb, yb, scratch),
            (None, _) if pointwise_by_pixels(kernels, p) => split_output_rows(
                kernels,
                p,
                1,
                // One band per thread where the next layer reads it by bands too.
                if splits_by_bands(kernels, p) { 1 } else { TASKS_PER_THREAD },
                yb,
                scratch,
                per_task,
                |rows, planes, s| {
                    let cols = rows.start * p.out_w..rows.end * p.out_w;
                    layer.pointwise(xb, rb, 0..p.out_c, cols, planes, s)
                },
            ),
            (None, _) => {
                split_units(kernels, p.out_c, out_plane, work, yb, scratch, per_task, |ocs, ys, s| {
                    with_plane_list(ys.chunks_exact_mut(out_plane), |planes| {
                        layer.pointwise(xb, rb, ocs, 0..out_plane, planes, s)
                    })
                })
            }
            (Some(_), Some(banded)) => {
                split_output_rows(kernels, p, 1, 1, yb, scratch, per_task, |rows, planes, s| match banded {
                    Banded::InPlace(kernel) => layer.in_place_rows(xb, rows, planes, s, kernel),
                    Banded::ThreeByThree(kernel, act) => {
                        layer.three_by_three_rows(xb, rows, planes, s, kernel, act)
                    }
                })
            }
            // Groups of their own input (depthwise): split filters, no input is read twice.
            (Some((slab, taps)), None) if p.groups >= kernels.threads_now() => {
                // A depthwise multiply-add takes several times a dense one's time, so
                // `min_task_work` counts it more.
                let work = work * DEPTHWISE_WORK_WEIGHT;
                split_units(kernels, p.out_c, out_plane, work, yb, scratch, per_task, |ocs, ys, s| {
                    match depthwise {
                        Depthwise::Small(kernel, act) => layer.small_channels(xb, ocs, ys, s, kernel, act),
                        // Small planes with short rows: whole-plane vectors.
                        Depthwise::Plane(kernel, plane) => layer.whole_planes(
                            xb,
                            ocs,
                            ys.chunks_exact_mut(out_plane),
                            s,
                            |w, x, out, init, clamp| kernel(w, x, out, plane, init, clamp),
                        ),
                        Depthwise::InPlace(kernel) => layer.whole_planes(
                            xb,
                            ocs,
                            ys.chunks_exact_mut(out_plane),
                            s,
                            |w, x, out, init, clamp| kernel(w, x, out, layer.in_place_shape(init, clamp)),
                        ),
                        Depthwise::Shifted => with_plane_list(ys.chunks_exact_mut(out_plane), |planes| {
                            layer.shifted(slab, taps, xb, rb, ocs, 0..p.out_h, planes, s)
                        }),
                    }
                })
            }
            // Fewer output rows than threads (a map one row high, as in text recognizers' necks):
            // split filters; each worker pads the whole input, which is short.
            (Some((slab, taps)), None) if p.out_h < kernels.threads_now() => {
                split_units(kernels, p.out_c, out_plane, work, yb, scratch, per_task, |ocs, ys, s| {
                    with_plane_list(ys.chunks_exact_mut(out_plane), |planes| {
                        layer.shifted(slab, taps, xb, rb, ocs, 0..p.out_h, planes, s)
                    })
                })
            }
            // A few groups sharing their input: split output rows, so each worker reads and pads
            // only its part of the input and decodes its filters once.
            (Some((slab, taps)), None) => {
                split_output_rows(kernels, p, 1, 1, yb, scratch, per_task, |rows, planes, s| {
                    layer.shifted(slab, taps, xb, rb, 0..p.out_c, rows, planes, s)
                })
            }
        }
    }
    Ok(())
}

/// The kernel one thread runs a depthwise layer's channels with (see [`conv2d`]).
#[derive(Clone, Copy)]
enum Depthwise<'g> {
    /// Many channels per call over small planes ([`small_channels_kernel`]), with the layer's one
    /// activation.
    Small(SmallChannels, Activation),
    /// Whole-plane vectors over a small stride-1 plane ([`plane_kernel`]).
    Plane(crate::arch::DepthwisePlaneFn, &'g DepthwisePlane),
    /// The path's in-place kernel ([`in_place_kernel`]).
    InPlace(crate::arch::DepthwiseInPlaceFn),
    /// Shifted rows of a slab, as dense layers are computed.
    Shifted,
}

/// A one-thread depthwise kernel that also computes a band of rows, for a layer split over the
/// threads by bands (see [`conv2d`]).
#[derive(Clone, Copy)]
enum Banded {
    /// The path's in-place kernel ([`Depthwise::InPlace`]).
    InPlace(crate::arch::DepthwiseInPlaceFn),
    /// The 3×3 many-channel kernel ([`SmallChannels::ThreeByThree`]), with the layer's one
    /// activation.
    ThreeByThree(crate::arch::Depthwise3x3Fn, Activation),
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
