//! The whole-plane and many-channel depthwise kernels of [`super::conv2d`].

use std::ops::Range;

use super::{finish, Conv2dParams, Layer, Slab};
use crate::arch::{
    Depthwise3x3Fn, DepthwiseChannels, DepthwiseInPlace, DepthwiseInPlaceFn, DepthwisePlaneFn, DepthwiseRows,
    DepthwiseSmallFn, Isa, PLANE_LANES,
};
use crate::parallel::with_plane_list;
use crate::Activation;

impl Layer<'_, '_> {
    /// Depthwise filters `ocs` of image `xb` into `outs` (one output part per filter: its plane,
    /// or a band of its rows), each channel at once: `run(filter, input_plane, out, init, clamp)`
    /// is a kernel that reads the channel's input plane as it lies and writes the part starting
    /// from `init` (the bias) and clamped to `clamp`; an activation it cannot apply (see
    /// [`finish`]) then runs over the part it has just written.
    pub(super) fn whole_planes<'y>(
        &self,
        xb: &[f32],
        ocs: Range<usize>,
        outs: impl Iterator<Item = &'y mut [f32]>,
        scratch: &mut [f32],
        run: impl Fn(&[f32], &[f32], &mut [f32], f32, Option<[f32; 2]>),
    ) {
        let p = self.p;
        let k = p.filter_len();
        let in_plane = p.in_h * p.in_w;
        // Every filter of the range decoded at once when the scratch holds them (a shared
        // codebook's table is then widened once), else one at a time.
        let all = scratch.len() >= ocs.len() * k;
        if all {
            self.rows.decode_rows(ocs.clone(), scratch);
        }
        for (i, (oc, out)) in ocs.zip(outs).enumerate() {
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
    pub(super) fn small_channels(
        &self,
        xb: &[f32],
        ocs: Range<usize>,
        y: &mut [f32],
        scratch: &mut [f32],
        kernel: SmallChannels,
        act: Activation,
    ) {
        let p = self.p;
        let out_plane = p.out_h * p.out_w;
        let (clamp, then) = finish(act);
        let first = ocs.start;
        self.channel_calls(xb, ocs, scratch, clamp, |cs, filters, x, shape| {
            let out = &mut y[(cs.start - first) * out_plane..(cs.end - first) * out_plane];
            match kernel {
                SmallChannels::ThreeByThree(kernel) => {
                    with_plane_list(out.chunks_exact_mut(out_plane), |parts| {
                        kernel(filters, x, 0..p.out_h, parts, shape)
                    })
                }
                SmallChannels::Square(kernel) | SmallChannels::Interleaved(kernel) => {
                    kernel(filters, x, out, shape, p.k_h)
                }
            }
            if let Some(act) = then {
                (self.isa.activate)(act, out);
            }
        });
    }

    /// Output rows `rows` of every depthwise filter of image `xb` into `planes` (each filter's
    /// rows, one part per filter) through [`Isa::depthwise_3x3`], as many channels per call as
    /// [`Layer::small_channels`] takes: the band of a layer split over the threads by rows. Each
    /// output is computed as over the whole plane.
    pub(super) fn three_by_three_rows(
        &self,
        xb: &[f32],
        rows: Range<usize>,
        planes: &mut [&mut [f32]],
        scratch: &mut [f32],
        kernel: Depthwise3x3Fn,
        act: Activation,
    ) {
        let (clamp, then) = finish(act);
        self.channel_calls(xb, 0..self.p.out_c, scratch, clamp, |cs, filters, x, shape| {
            let parts = &mut planes[cs];
            kernel(filters, x, rows.clone(), parts, shape);
            if let Some(act) = then {
                parts.iter_mut().for_each(|part| (self.isa.activate)(act, part));
            }
        });
    }

    /// Runs `call(channels, filters, input planes, shape)` over filters `ocs` of image `xb` in
    /// runs of as many channels as the scratch holds decoded filters (`filters` decoded there),
    /// with the layer's shape, bias and `clamp`.
    fn channel_calls(
        &self,
        xb: &[f32],
        ocs: Range<usize>,
        scratch: &mut [f32],
        clamp: Option<[f32; 2]>,
        mut call: impl FnMut(Range<usize>, &[f32], &[f32], DepthwiseChannels<'_>),
    ) {
        let p = self.p;
        let in_plane = p.in_h * p.in_w;
        let taps = p.k_h * p.k_w;
        let per_call = (scratch.len() / taps).max(1);
        let mut c0 = ocs.start;
        while c0 < ocs.end {
            let c1 = ocs.end.min(c0 + per_call);
            let filters = &mut scratch[..taps * (c1 - c0)];
            self.rows.decode_rows(c0..c1, filters);
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
            call(c0..c1, filters, &xb[c0 * in_plane..c1 * in_plane], shape);
            c0 = c1;
        }
    }

    /// Output rows `rows` of every depthwise filter of image `xb` into `planes` (each filter's
    /// rows, one part per filter) through the path's in-place kernel, each channel given its
    /// input from the first row the band reads ([`Layer::band_shape`]): the band of a layer split
    /// over the threads by rows. Each output is computed as over the whole plane.
    pub(super) fn in_place_rows(
        &self,
        xb: &[f32],
        rows: Range<usize>,
        planes: &mut [&mut [f32]],
        scratch: &mut [f32],
        kernel: DepthwiseInPlaceFn,
    ) {
        let in_w = self.p.in_w;
        let (shape, inputs) = self.band_shape(rows);
        let outs = planes.iter_mut().map(|part| &mut **part);
        self.whole_planes(xb, 0..self.p.out_c, outs, scratch, |w, x, out, init, clamp| {
            let x = &x[inputs.start * in_w..inputs.end * in_w];
            kernel(w, x, out, DepthwiseInPlace { init, clamp, ..shape })
        })
    }

    /// The [`DepthwiseInPlace`] shape of output rows `rows` of one channel (`init` 0, no clamp)
    /// and the input rows it is given: from the first row the band's first output reaches (the
    /// zero rows above the input only for a band at the top) to the input's end. The rows past
    /// the band's reach are never computed with, but a register tile reads them only when they
    /// are there: given the band's rows alone, the last tile of every band took the kernel's
    /// slower path with row tests (a 3×3 stride-2 layer of 96 channels out of 112×112 took 154 µs
    /// at 2 threads, 133 µs so; Emerald Rapids, criterion).
    pub(super) fn band_shape(&self, rows: Range<usize>) -> (DepthwiseInPlace, Range<usize>) {
        let p = self.p;
        let top = (rows.start * p.stride_h) as isize - p.pad_top as isize;
        let end = p.in_h;
        let first = (top.max(0) as usize).min(end);
        let shape = DepthwiseInPlace {
            in_h: end - first,
            pad_top: (-top).max(0) as usize,
            out_h: rows.len(),
            ..self.in_place_shape(0.0, None)
        };
        (shape, first..end)
    }

    /// The [`DepthwiseInPlace`] shape of one channel of this layer.
    pub(super) fn in_place_shape(&self, init: f32, clamp: Option<[f32; 2]>) -> DepthwiseInPlace {
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
    pub(super) fn depthwise_shape(
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
pub(super) fn in_place_depthwise(p: &Conv2dParams) -> bool {
    p.in_per_group() == 1
        && matches!((p.stride_h, p.stride_w), (1, 1) | (2, 2))
        && (p.dil_h, p.dil_w) == (1, 1)
        && (1..=crate::arch::DEPTHWISE_IN_PLACE_MAX_ROWS).contains(&p.k_h)
        && p.k_w >= 1
}

/// The path's in-place depthwise kernel for the layer's stride, when it has one and the layer
/// suits it.
pub(super) fn in_place_kernel(isa: Isa, p: &Conv2dParams) -> Option<DepthwiseInPlaceFn> {
    let kernel = if p.stride_h == 1 { isa.depthwise_s1 } else { isa.depthwise_s2 };
    kernel.filter(|_| in_place_depthwise(p))
}

/// A kernel that computes many depthwise channels of small planes per call.
#[derive(Clone, Copy)]
pub(super) enum SmallChannels {
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
pub(super) fn small_channels_kernel(isa: Isa, p: &Conv2dParams) -> Option<SmallChannels> {
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
pub(super) fn small_3x3_kernel(isa: Isa, p: &Conv2dParams) -> Option<Depthwise3x3Fn> {
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
/// three quarters of real columns. Where rows fill their vectors, the row tiles win: each loaded
/// input vector feeds several output rows, which outweighs the padded copy. (Zen 4, 4-bit 3×3
/// filters, alternating `pith bench` runs: planes 7×7, 14×14 and 20×20 took 0.45-0.9× the row
/// path's time, 28×28 1.4-1.6×; 5×5 filters over 8×8 0.75×, over 16×16 1.4× and over 32×32 2×.)
fn rows_waste_lanes(width: usize) -> bool {
    width < PLANE_LANES || 4 * width < 3 * width.next_multiple_of(PLANE_LANES)
}

/// Most filter taps [`Isa::depthwise_plane`] takes (7×7).
const PLANE_MAX_TAPS: usize = 49;

/// The path's whole-plane depthwise kernel, when it has one and the layer suits it: stride 1
/// (any dilation), one input channel per group, rows as wide as the output's (see
/// [`crate::arch::DepthwisePlane`]) and a plane of at most [`PLANE_MAX`] elements.
pub(super) fn plane_kernel(isa: Isa, p: &Conv2dParams) -> Option<DepthwisePlaneFn> {
    let fits = p.in_per_group() == 1
        && (p.stride_h, p.stride_w) == (1, 1)
        && p.in_w == p.out_w
        && p.out_h * p.out_w <= PLANE_MAX
        && rows_waste_lanes(p.out_w)
        && p.k_h * p.k_w <= PLANE_MAX_TAPS;
    isa.depthwise_plane.filter(|_| fits)
}
