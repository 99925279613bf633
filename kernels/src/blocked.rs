//! Convolutions in the channel-blocked activation layout (NCHW16c).
//!
//! A blocked image stores its channels in blocks of [`BLOCK`]: `[C / 16][H][W][16]`, so one pixel's
//! 16 channels of a block are one vector. onnxruntime's MLAS computes its convolutions in this
//! layout (NCHWc), ncnn and MNN in pack4/pack8. Where planes are small (MobileNets' 14×14 and
//! 7×7 stages) it wins over planar NCHW for two reasons:
//!
//! * depthwise filters become one multiply-add per tap for 16 channels, with no lane left empty
//!   at the end of a 7-column row and no transposes (the planar kernels either waste lanes or
//!   transpose 16 channels in and out per call, see `Isa::depthwise_interleaved`);
//! * 1×1 convolutions take their weights as the vector operand (16 output channels of one input
//!   channel) and broadcast one input value per pixel, so a plane of 49 or 196 pixels is cut into
//!   tiles of any width instead of 16-pixel vectors with a masked tail.
//!
//! The weights stay in their stored encoding: a group of up to 64 filters is decoded row by row
//! (as everywhere, [`WeightRows`]) and transposed once per call into the `[k][64]` panel the
//! tiles read; 4-bit indices of a codebook every row shares are transposed instead (a sixteenth
//! of the data) and decoded straight into the panel ([`BlockedKernels::nibbles_transposed`]).
//!
//! Only layers whose channel counts are whole blocks take this layout (then a blocked tensor
//! has the planar one's size), and only on paths with blocked kernels ([`Isa::blocked`]). The
//! runtime converts at the edges of a blocked region for free: a 1×1 layer reads planar or
//! blocked input and writes either layout.

use std::ops::Range;

use pith_format::TensorView;

use crate::arch::Isa;
use crate::decode::PackedTables;
use crate::parallel::{split_rows, split_units_into};
use crate::{check_len, check_min_len, Activation, Conv2dParams, KernelError, Kernels, WeightRows};

/// Channels per block of the blocked layout (one AVX-512 vector of f32).
pub const BLOCK: usize = 16;

/// Most pixels of a plane (input or output) the blocked kernels take (56×56): larger planes fill
/// the planar kernels' vectors (and over planes above 28×28 a 1×1 layer runs blocked only when
/// one depth block holds its input channels, [`DEPTH_BLOCK`]). Up to 28×28 until the
/// thirty-sixth session; over
/// 56×56 a planar stride-2 depthwise layer shuffles every input row into even and odd columns,
/// a blocked one does not (MobileNetV2's 144 channels into 28×28: 45 → 21 µs, 1 thread, Zen 5).
pub const MAX_PLANE: usize = 56 * 56;

/// Most input channels of one depth block of the pointwise tiles: 128 rows of 64 transposed
/// weights are 32 KiB, in L1. Deeper layers carry each pixel's partial sums between blocks in
/// scratch (64 per pixel); shallower ones need none.
pub const DEPTH_BLOCK: usize = 128;

/// Most output channel blocks of a 1×1 layer split over the threads by rows of pixels (each
/// thread all of them over its band) rather than by blocks: a projection into 32 or 40 channels
/// split by blocks left each of two threads a one-block tile (bound by its broadcasts), or one
/// thread a ragged half-block.
const PIXEL_SPLIT_BLOCKS: usize = 3;

/// Largest plane (28×28) a 1×1 layer of few filter blocks splits by rows over: each thread's
/// band is made in scratch reserved for the whole output, which over larger planes would grow
/// every session's scratch for layers that rarely run blocked (MobileNetV2's 144 -> 24 over
/// 56×56 stays planar: 400 KB per thread).
const PIXEL_SPLIT_MAX_PLANE: usize = 28 * 28;

/// Whether 1×1 layer `p` splits by rows of pixels ([`PIXEL_SPLIT_BLOCKS`]) when threads share it.
fn splits_by_pixels(p: &Conv2dParams) -> bool {
    is_dense_pointwise(p)
        && p.out_c.div_ceil(BLOCK) <= PIXEL_SPLIT_BLOCKS
        && p.out_h * p.out_w <= PIXEL_SPLIT_MAX_PLANE
}

/// Output channel blocks one pointwise tile computes together (64 filters).
pub const POINTWISE_BLOCKS: usize = 4;

/// Tasks per thread of a blocked layer: one contiguous run of channel blocks each, so that at 2
/// threads each thread keeps reading the blocks it wrote in the layer before (MobileNetV2 at 2
/// threads, alternating runs on a Xeon: 0.99 of the planar layout's time against 1.02 with two
/// tasks per thread).
const TASKS_PER_THREAD: usize = 1;

/// How a 4-D activation lays out its channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// ONNX's NCHW: each channel's plane contiguous.
    #[default]
    Planar,
    /// NCHW16c: `[C / 16][H][W][16]` per image (see the module documentation).
    Blocked,
}

/// The activations the blocked kernels apply to their sums in registers; others run as a pass
/// over the output afterwards (element-wise, so the layout does not matter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BlockedAct {
    /// The sums as they are.
    None,
    /// Clamped to `lo..=hi` (`max` first, so NaN becomes `lo`): ReLU, ReLU6, Clip.
    Clamp(f32, f32),
    /// `scale * HardSwish(x) + shift`.
    HardSwish(f32, f32),
}

impl BlockedAct {
    /// The in-register form of `act` and the activation left for a pass afterwards.
    fn split(act: Activation) -> (BlockedAct, Option<Activation>) {
        match act {
            Activation::None => (BlockedAct::None, None),
            Activation::Relu => (BlockedAct::Clamp(0.0, f32::INFINITY), None),
            Activation::Clip { min, max } => (BlockedAct::Clamp(min, max), None),
            Activation::HardSwish => (BlockedAct::HardSwish(1.0, 0.0), None),
            Activation::HardSwishAffine { scale, shift } => (BlockedAct::HardSwish(scale, shift), None),
            other => (BlockedAct::None, Some(other)),
        }
    }
}

/// One call of [`BlockedKernels::pointwise`]: `blocks` output channel blocks (16 filters each)
/// over every pixel of one image. Output channel `16 v + l` of pixel `p` is `act(bias[16 v + l] +
/// residual + sum_c wt[c * 16 blocks + 16 v + l] * x(c, p))`, where `x(c, p)` is input channel `c`
/// of pixel `p` in `x_layout`.
#[derive(Debug, Clone, Copy)]
pub struct BlockedPointwise<'a> {
    /// Transposed filters: `k` rows of `16 * blocks` weights (input channel-major).
    pub wt: &'a [f32],
    /// Input channels.
    pub k: usize,
    /// Output channel blocks (1 to [`POINTWISE_BLOCKS`]).
    pub blocks: usize,
    /// The whole input image: `k` channels of `hw` pixels in `x_layout`.
    pub x: &'a [f32],
    /// Layout of `x` (blocked needs `k` a multiple of 16).
    pub x_layout: Layout,
    /// Pixels per channel.
    pub hw: usize,
    /// One bias per output channel of the call (`16 * blocks`).
    pub bias: &'a [f32],
    /// Added before the activation: the call's output channels in the output's layout.
    pub residual: Option<&'a [f32]>,
    /// Applied last.
    pub act: BlockedAct,
    /// Layout of the output (and of the residual): `16 * blocks` channels of `hw` pixels.
    pub y_layout: Layout,
    /// Output channels stored: `16 * blocks`, or fewer (not below `16 * (blocks - 1) + 1`) into a
    /// planar output whose last block is ragged, whose residual then holds only these.
    pub out_channels: usize,
    /// The pixels of the plane the call computes, first and end (`(0, hw)` for all). The output
    /// holds only these, each channel's (blocked: each block's) run of them after the other's;
    /// the input and the residual are whole planes.
    pub pixels: (usize, usize),
}

impl BlockedPointwise<'_> {
    /// How many pixels the call computes.
    pub fn pixel_count(&self) -> usize {
        self.pixels.1.saturating_sub(self.pixels.0)
    }

    /// Panics unless the operands hold what the call reads and writes (`y` its output, `carry`
    /// its partial sums between depth blocks, needed deeper than [`DEPTH_BLOCK`]).
    pub fn check(&self, y: &[f32], carry: &[f32]) {
        let cols = BLOCK * self.blocks;
        assert!((1..=POINTWISE_BLOCKS).contains(&self.blocks), "{} output blocks", self.blocks);
        assert!(self.wt.len() >= self.k * cols, "transposed filters too short");
        assert!(self.x.len() >= self.k * self.hw, "input too short");
        assert!(
            self.x_layout == Layout::Planar || self.k.is_multiple_of(BLOCK),
            "blocked input of {} channels",
            self.k
        );
        assert!(self.bias.len() >= cols, "bias too short");
        let stored = self.out_channels;
        assert!(
            stored == cols || (self.y_layout == Layout::Planar && stored < cols && stored > cols - BLOCK),
            "{stored} output channels stored of {cols}"
        );
        assert!(self.pixels.0 <= self.pixels.1 && self.pixels.1 <= self.hw, "pixels outside the plane");
        assert!(y.len() >= stored * self.pixel_count(), "output too short");
        assert!(self.k <= DEPTH_BLOCK || carry.len() >= cols * self.pixel_count(), "carry too short");
        assert!(self.residual.is_none_or(|r| r.len() >= stored * self.hw), "residual too short");
        assert!(cols * self.hw <= i32::MAX as usize, "plane too large for 32-bit lane offsets");
    }
}

/// One call of [`BlockedKernels::depthwise`]: one block of 16 depthwise channels of one image, in
/// the blocked layout. Channel `l` of output pixel `(oy, ox)` is `act(bias[l] + sum w[(ky * kw +
/// kx) * 16 + l] * x(oy * stride_h + ky - pad_top, ox * stride_w + kx - pad_left))`, the input
/// zero outside its plane.
#[derive(Debug, Clone, Copy)]
pub struct BlockedDepthwise<'a> {
    /// Transposed filters: `kh * kw` taps of 16 weights.
    pub w: &'a [f32],
    /// Filter rows.
    pub kh: usize,
    /// Filter columns.
    pub kw: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Zero rows above the input.
    pub pad_top: usize,
    /// Zero columns left of the input.
    pub pad_left: usize,
    /// Input rows.
    pub in_h: usize,
    /// Input columns.
    pub in_w: usize,
    /// Output rows.
    pub out_h: usize,
    /// Output columns.
    pub out_w: usize,
    /// The block's input: `in_h * in_w` pixels of 16 channels.
    pub x: &'a [f32],
    /// The block's 16 biases.
    pub bias: [f32; BLOCK],
    /// Applied last.
    pub act: BlockedAct,
}

impl BlockedDepthwise<'_> {
    /// Panics unless the operands hold what the call reads and writes (`y` its output).
    pub fn check(&self, y: &[f32]) {
        assert!(self.kh >= 1 && self.stride_h >= 1, "empty filter");
        assert!(
            depthwise_columns_fit(self.kw, self.stride_w, self.pad_left, self.in_w, self.out_w),
            "filter columns, stride or pads the depthwise tiles do not take"
        );
        assert!(self.w.len() >= self.kh * self.kw * BLOCK, "filters too short");
        assert!(self.x.len() >= self.in_h * self.in_w * BLOCK, "input too short");
        assert!(y.len() >= self.out_h * self.out_w * BLOCK, "output too short");
    }
}

/// `transpose_rows(panel, rows, k, wt, pitch)`: `wt[p * pitch + r] = panel[r * k + p]` for `rows`
/// (a multiple of 16, at most `pitch`) rows of `k`.
pub type TransposeRowsFn = fn(panel: &[f32], rows: usize, k: usize, wt: &mut [f32], pitch: usize);
/// `nibbles_transposed(rows, k, table, scales, columns, wt, pitch)`: `wt[p * pitch + r] =
/// table[i] * scales[r]`, then times `columns[p]` when given, for the 4-bit index `i` of column
/// `p < k` of row `r < 16` (packed LSB first, two per byte; each row at least `k.div_ceil(2)`
/// bytes, `columns` at least `k` factors).
pub type NibblesTransposedFn = fn(
    rows: &[&[u8]; BLOCK],
    k: usize,
    table: &[f32; 16],
    scales: &[f32; BLOCK],
    columns: Option<&[f32]>,
    wt: &mut [f32],
    pitch: usize,
);
/// The form of [`BlockedKernels::pointwise`].
pub type BlockedPointwiseFn = fn(job: &BlockedPointwise<'_>, y: &mut [f32], carry: &mut [f32]);
/// The form of [`BlockedKernels::depthwise`].
pub type BlockedDepthwiseFn = fn(job: &BlockedDepthwise<'_>, y: &mut [f32]);

/// A path's kernels for the blocked layout.
#[derive(Debug, Clone, Copy)]
pub struct BlockedKernels {
    /// Transposes decoded filter rows into the panel [`BlockedPointwise::wt`] /
    /// [`BlockedDepthwise::w`] read. Panics if `rows` is not a multiple of 16 or a slice is short.
    pub transpose_rows: TransposeRowsFn,
    /// Decodes 16 rows of 4-bit indices of one shared codebook (per tensor or scaled per row)
    /// straight into the transposed panel: the indices are transposed, a sixteenth of the floats'
    /// data, and each vector of 16 filters' weights of a column is one table lookup. Panics if a
    /// row or `wt` is short.
    pub nibbles_transposed: NibblesTransposedFn,
    /// 1×1 products of up to 64 filters (see [`BlockedPointwise`]) into `y`, with `carry` (at
    /// least `16 * blocks * hw` floats when the product is deeper than [`DEPTH_BLOCK`]) for
    /// partial sums; panics if its check fails.
    pub pointwise: BlockedPointwiseFn,
    /// One block of depthwise channels (see [`BlockedDepthwise`]); panics if its check fails.
    pub depthwise: BlockedDepthwiseFn,
    /// bf16 products for 1×1 layers with a blocked input, for sessions that choose them
    /// (`Kernels::with_bf16_products`); `None` where the CPU has no bf16 dot products.
    pub bf16: Option<BlockedBf16>,
}

/// The blocked 1×1 kernels of bf16 products: weights and inputs rounded to bf16, products summed
/// in f32.
#[derive(Debug, Clone, Copy)]
pub struct BlockedBf16 {
    /// Rounds a transposed panel of `k` rows of `cols` weights (`k` even) in place into `k / 2`
    /// rows of `cols` pairs: lane `o` of pair row `i` holds rows `2i` (low half) and `2i + 1` of
    /// column `o` as bf16. Panics if `wt` is short or `k` odd.
    pub pair_rows: fn(wt: &mut [f32], k: usize, cols: usize),
    /// [`BlockedKernels::pointwise`] for a blocked input and weights that [`BlockedBf16::pair_rows`]
    /// rounded (`job.wt` then holds `k / 2` rows of pairs); panics if its check fails or the
    /// input is planar.
    pub pointwise: BlockedPointwiseFn,
}

/// Whether layer `p` can run with its input in `x_layout` and its output in `y_layout` on path
/// `isa` (a planar-to-planar layer is left to [`Kernels::conv2d`]): planes of at most
/// [`MAX_PLANE`] pixels and whole output blocks (but for a blocked input into a planar output),
/// and either a 1×1 stride-1 unpadded layer without groups (blocked input: whole input blocks
/// too) or a depthwise layer (one input and one output channel per group), undilated, with
/// filters 3 or 5 wide ([`DEPTHWISE_WIDTHS`]), a horizontal stride of 1 or 2 and pads below the
/// filter width, blocked on both sides. Activations other than those of [`BlockedAct`] run as a
/// pass over the output afterwards.
pub fn supports(isa: &Isa, p: &Conv2dParams, x_layout: Layout, y_layout: Layout) -> bool {
    isa.blocked.is_some() && shape_fits(p) && layouts_fit(p, x_layout, y_layout)
}

/// Whether layer `p` has planes of at most [`MAX_PLANE`] pixels.
fn shape_fits(p: &Conv2dParams) -> bool {
    let plane = p.out_h * p.out_w;
    p.check().is_ok()
        && p.out_c > 0
        && p.in_h * p.in_w <= MAX_PLANE
        && plane <= MAX_PLANE
        && (!is_dense_pointwise(p) || p.in_c <= DEPTH_BLOCK || plane <= CARRY_MAX_PLANE)
}

/// Largest plane (28×28) of a blocked 1×1 layer deeper than [`DEPTH_BLOCK`]: its partial sums
/// between depth blocks take scratch in proportion to the plane (64 per pixel), which over 56×56
/// (800 KB per thread) would be reserved in every plan with such a layer, blocked or not.
const CARRY_MAX_PLANE: usize = 28 * 28;

/// The layer and layout part of [`supports`].
fn layouts_fit(p: &Conv2dParams, x_layout: Layout, y_layout: Layout) -> bool {
    let whole_out = p.out_c.is_multiple_of(BLOCK);
    if is_dense_pointwise(p) {
        // A ragged last output block only from a blocked input into a planar output (the exit of
        // a region into a layer of, say, 24 or 40 channels).
        let ragged_exit = x_layout == Layout::Blocked && y_layout == Layout::Planar;
        return (x_layout == Layout::Planar || p.in_c.is_multiple_of(BLOCK)) && (whole_out || ragged_exit);
    }
    whole_out
        && p.in_per_group() == 1
        && p.out_per_group() == 1
        && (p.dil_h, p.dil_w) == (1, 1)
        && depthwise_columns_fit(p.k_w, p.stride_w, p.pad_left, p.in_w, p.out_w)
        && x_layout == Layout::Blocked
        && y_layout == Layout::Blocked
}

/// Filter widths and horizontal strides the depthwise kernels take: tiles unrolled over the
/// filter's columns keep their sums in registers (MobileNets, BlazeFace and PP-OCRv4 det use
/// 3×3 and 5×5 filters with strides 1 and 2).
pub const DEPTHWISE_WIDTHS: [usize; 2] = [3, 5];

/// Whether a depthwise row of `out_w` pixels from `in_w` has a filter width of
/// [`DEPTHWISE_WIDTHS`], a horizontal stride of 1 or 2 and pads on both sides below the filter
/// width (so only a tile's edge columns can fall outside the input).
fn depthwise_columns_fit(kw: usize, stride_w: usize, pad_left: usize, in_w: usize, out_w: usize) -> bool {
    let covered = (out_w.max(1) - 1) * stride_w + kw;
    DEPTHWISE_WIDTHS.contains(&kw)
        && (1..=2).contains(&stride_w)
        && pad_left < kw
        && covered < in_w + pad_left + kw
}

/// A 1×1 stride-1 unpadded layer without groups: a product with the input planes.
fn is_dense_pointwise(p: &Conv2dParams) -> bool {
    p.is_pointwise() && p.groups == 1
}

/// Scratch elements one worker of [`conv2d`] needs for `p` (at least 1).
pub fn scratch_len(p: &Conv2dParams) -> usize {
    if !shape_fits(p) {
        // No blocked kernel takes the layer: nothing to reserve.
        1
    } else if is_dense_pointwise(p) {
        // A 16-row slice of the decoded group, the group transposed, and partial sums between
        // depth blocks, if there are several.
        let (k, plane) = (p.in_per_group(), p.out_h * p.out_w);
        let carry = if k > DEPTH_BLOCK { plane } else { 0 };
        // With few filter blocks, a thread's band of the output, made before it is copied.
        let band = if splits_by_pixels(p) { p.out_c.div_ceil(BLOCK) * BLOCK * plane } else { 0 };
        band + BLOCK * k + POINTWISE_BLOCKS * BLOCK * (k + carry)
    } else {
        2 * BLOCK * p.filter_len()
    }
    .max(1)
}

/// Convolution `p` of `x` (in `x_layout`) into `y` (in `y_layout`):
/// `y = act(conv(x ⊙ input_scale, w) + bias + residual)`, `residual` (if any) in `y_layout` with
/// `y`'s shape, `input_scale` (if any) one factor per input channel of a 1×1 layer, folded into
/// its decoded filters. Errors if [`supports`] refuses the layouts, on an input scale for another
/// layer, and on buffers of the wrong size.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    kernels: &Kernels,
    x: &[f32],
    x_layout: Layout,
    w: &TensorView<'_>,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    input_scale: Option<&[f32]>,
    p: &Conv2dParams,
    act: Activation,
    y: &mut [f32],
    y_layout: Layout,
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let isa = kernels.isa();
    let Some(blocked) = isa.blocked.filter(|_| supports(&isa, p, x_layout, y_layout)) else {
        return Err(KernelError::Params(format!(
            "no blocked kernel on the '{}' path for this layer ({x_layout:?} to {y_layout:?})",
            isa.name
        )));
    };
    let (in_plane, out_plane) = (p.in_h * p.in_w, p.out_h * p.out_w);
    check_len("blocked conv input", x.len(), p.batch * p.in_c * in_plane)?;
    check_len("blocked conv output", y.len(), p.batch * p.out_c * out_plane)?;
    if let Some(b) = bias {
        check_len("blocked conv bias", b.len(), p.out_c)?;
    }
    if let Some(r) = residual {
        check_len("blocked conv residual", r.len(), y.len())?;
    }
    let per_task = scratch_len(p);
    check_min_len("blocked conv scratch", scratch.len(), per_task * kernels.threads())?;
    let rows = WeightRows::new(*w, p.out_c, p.filter_len())?.with_isa(&isa);
    let rows = match input_scale {
        Some(s) if is_dense_pointwise(p) && p.batch == 1 => rows.with_column_scales(s)?,
        Some(_) => {
            return Err(KernelError::Params("an input scale applies to a 1×1 layer over one image".into()))
        }
        None => rows,
    };
    let (act, then) = BlockedAct::split(act);
    let unit_len = BLOCK * out_plane;
    let work = unit_len
        * if is_dense_pointwise(p) { p.in_c } else { p.filter_len() * crate::conv::DEPTHWISE_WORK_WEIGHT };
    for (b, yb) in y.chunks_exact_mut(p.out_c * out_plane).enumerate() {
        let image = Image {
            kernels: &blocked,
            bf16: blocked.bf16.filter(|_| kernels.bf16_products()),
            rows: &rows,
            x: &x[b * p.in_c * in_plane..][..p.in_c * in_plane],
            x_layout,
            bias,
            residual: residual.map(|r| &r[b * p.out_c * out_plane..][..p.out_c * out_plane]),
            act,
            y_layout,
            p,
        };
        // A ragged last block (a planar output only) is a shorter last unit.
        let units = p.out_c.div_ceil(BLOCK);
        if splits_by_pixels(p) && kernels.threads_now() > 1 {
            // Few filter blocks: each thread takes them all over a band of rows, into scratch,
            // then copies its band into place (one block per thread would leave a one-block
            // tile on each, or a thread idle).
            let row_len = if y_layout == Layout::Blocked { BLOCK * p.out_w } else { p.out_w };
            let row_work = p.out_w * units * BLOCK * p.in_c;
            split_rows(kernels, p.out_h, row_len, row_work, 1, 1, yb, scratch, per_task, |rows, parts, s| {
                let pixels = rows.start * p.out_w..rows.end * p.out_w;
                let band = parts.first().map_or(0, |part| part.len());
                let (own, s) = s.split_at_mut(parts.len() * band);
                image.pointwise(0..units, pixels, own, s);
                for (part, from) in parts.iter_mut().zip(own.chunks_exact(band.max(1))) {
                    part.copy_from_slice(from);
                }
            });
            continue;
        }
        split_units_into(
            kernels,
            TASKS_PER_THREAD,
            units,
            unit_len,
            work,
            yb,
            scratch,
            per_task,
            |blocks, ys, s| {
                if is_dense_pointwise(p) {
                    image.pointwise(blocks, 0..out_plane, ys, s)
                } else {
                    image.depthwise(blocks, ys, s)
                }
            },
        );
    }
    if let Some(then) = then {
        kernels.activate(then, y);
    }
    Ok(())
}

/// One image of a layer [`conv2d`] runs, shared by the worker threads.
struct Image<'a, 'w> {
    kernels: &'a BlockedKernels,
    /// The bf16 kernels, when the session chose bf16 products and the path has them.
    bf16: Option<BlockedBf16>,
    rows: &'a WeightRows<'w>,
    /// The image's input.
    x: &'a [f32],
    x_layout: Layout,
    bias: Option<&'a [f32]>,
    /// The image's residual, in the output's layout.
    residual: Option<&'a [f32]>,
    act: BlockedAct,
    y_layout: Layout,
    p: &'a Conv2dParams,
}

impl Image<'_, '_> {
    /// Output channel blocks `blocks` of a 1×1 layer into `ys` (theirs), up to
    /// [`POINTWISE_BLOCKS`] per call, in calls as even as that allows (9 blocks as 3 + 3 + 3, not
    /// 4 + 4 + 1: a one-block tile broadcasts 24 input values for 24 multiply-adds and is bound
    /// by its loads): each group of filters decoded and transposed into the scratch, with room
    /// for the partial sums of its depth blocks.
    fn pointwise(&self, blocks: Range<usize>, pixels: Range<usize>, ys: &mut [f32], scratch: &mut [f32]) {
        let (p, k) = (self.p, self.p.in_c);
        let out_plane = p.out_h * p.out_w;
        let unit_len = BLOCK * pixels.len();
        let zeros = [0.0; POINTWISE_BLOCKS * BLOCK];
        let (panel, rest) = scratch.split_at_mut(BLOCK * k);
        let (wt, carry) = rest.split_at_mut(POINTWISE_BLOCKS * BLOCK * k);
        let filters = TransposedFilters::new(self.rows, self.kernels);
        let mut g = blocks.start;
        let mut ragged_bias = [0.0; POINTWISE_BLOCKS * BLOCK];
        let calls = blocks.len().div_ceil(POINTWISE_BLOCKS);
        let per_call = blocks.len().div_ceil(calls.max(1)).max(1);
        for yg in ys.chunks_mut(per_call * unit_len) {
            let n = yg.len().div_ceil(unit_len);
            let channels = g * BLOCK..(g + n) * BLOCK;
            // Channels of the layer among them: all but in a ragged last block.
            let stored = channels.start..channels.end.min(p.out_c);
            filters.decode(channels.clone(), panel, wt);
            // bf16 products where the input's 16-channel blocks give its pairs as they lie.
            let bf16 = self.bf16.filter(|_| self.x_layout == Layout::Blocked);
            if let Some(bf16) = bf16 {
                (bf16.pair_rows)(wt, k, channels.len());
            }
            let bias = match self.bias {
                Some(b) if stored == channels => &b[channels.clone()],
                Some(b) => {
                    ragged_bias.fill(0.0);
                    ragged_bias[..stored.len()].copy_from_slice(&b[stored.clone()]);
                    &ragged_bias[..]
                }
                None => &zeros[..],
            };
            let job = BlockedPointwise {
                wt,
                k,
                blocks: n,
                x: self.x,
                x_layout: self.x_layout,
                hw: out_plane,
                bias,
                residual: self.residual.map(|r| &r[stored.start * out_plane..stored.end * out_plane]),
                act: self.act,
                y_layout: self.y_layout,
                out_channels: stored.len(),
                pixels: (pixels.start, pixels.end),
            };
            match bf16 {
                Some(bf16) => (bf16.pointwise)(&job, yg, carry),
                None => (self.kernels.pointwise)(&job, yg, carry),
            }
            g += n;
        }
    }

    /// Channel blocks `blocks` of a depthwise layer into `ys` (theirs), one block per call: its
    /// 16 filters decoded straight into the tap-major order the kernel reads (a 4-bit shared
    /// codebook through [`BlockedKernels::nibbles_transposed`]: decoding the rows first built a
    /// 256-pair table for every block, 3 % of MobileNetV3-Small's time).
    fn depthwise(&self, blocks: Range<usize>, ys: &mut [f32], scratch: &mut [f32]) {
        let p = self.p;
        let (taps, in_plane) = (p.filter_len(), p.in_h * p.in_w);
        let (panel, wt) = scratch.split_at_mut(BLOCK * taps);
        let filters = TransposedFilters::new(self.rows, self.kernels);
        for (c, yc) in blocks.zip(ys.chunks_exact_mut(BLOCK * p.out_h * p.out_w)) {
            let channels = c * BLOCK..(c + 1) * BLOCK;
            filters.decode(channels.clone(), panel, wt);
            let mut biases = [0.0; BLOCK];
            if let Some(b) = self.bias {
                biases.copy_from_slice(&b[channels]);
            }
            let job = BlockedDepthwise {
                w: wt,
                kh: p.k_h,
                kw: p.k_w,
                stride_h: p.stride_h,
                stride_w: p.stride_w,
                pad_top: p.pad_top,
                pad_left: p.pad_left,
                in_h: p.in_h,
                in_w: p.in_w,
                out_h: p.out_h,
                out_w: p.out_w,
                x: &self.x[c * BLOCK * in_plane..(c + 1) * BLOCK * in_plane],
                bias: biases,
                act: self.act,
            };
            (self.kernels.depthwise)(&job, yc);
        }
    }
}

/// Decodes a layer's filters 16 at a time into the transposed order the tiles read: a 4-bit
/// shared codebook straight ([`BlockedKernels::nibbles_transposed`]), any other encoding through
/// a panel (the rows decoded, then transposed). Made once per call of a worker: the shared table
/// is looked up once, not for every block (a depthwise layer decodes one block at a time).
struct TransposedFilters<'r, 'w> {
    weights: &'r WeightRows<'w>,
    blocked: &'r BlockedKernels,
    /// The shared 4-bit codebook and the rows' scales (if any), when the tensor has them.
    shared: Option<([f32; 16], Option<&'w [f32]>)>,
}

impl<'r, 'w> TransposedFilters<'r, 'w> {
    fn new(weights: &'r WeightRows<'w>, blocked: &'r BlockedKernels) -> Self {
        let mut lut = [0.0f32; 256];
        let shared = match weights.unscaled().packed_tables(&mut lut) {
            Some((4, PackedTables::Shared(scales))) => Some((std::array::from_fn(|i| lut[i]), scales)),
            _ => None,
        };
        TransposedFilters { weights, blocked, shared }
    }

    /// Filters `rows` (whole blocks) into `wt` (`k` rows of `rows.len()` weights); `panel`
    /// holds 16 decoded rows.
    fn decode(&self, rows: Range<usize>, panel: &mut [f32], wt: &mut [f32]) {
        let (weights, k, cols) = (self.weights, self.weights.row_len(), rows.len());
        for (i, r0) in rows.step_by(BLOCK).enumerate() {
            // Filters past the layer's (a ragged last block) are zeros.
            let have = weights.rows().min(r0 + BLOCK).saturating_sub(r0);
            if let (Some((table, scales)), BLOCK) = (&self.shared, have) {
                let indices = std::array::from_fn(|r| weights.packed_indices(r0 + r));
                let scales = std::array::from_fn(|r| scales.map_or(1.0, |s| s[r0 + r]));
                let columns = weights.column_scales();
                (self.blocked.nibbles_transposed)(
                    &indices,
                    k,
                    table,
                    &scales,
                    columns,
                    &mut wt[BLOCK * i..],
                    cols,
                );
                continue;
            }
            weights.decode_rows(r0..r0 + have, &mut panel[..have * k]);
            panel[have * k..BLOCK * k].fill(0.0);
            (self.blocked.transpose_rows)(&panel[..BLOCK * k], BLOCK, k, &mut wt[BLOCK * i..], cols);
        }
    }
}

/// Copies a planar image of `channels` (a multiple of 16) channels of `hw` pixels into the
/// blocked layout.
pub fn to_blocked(planar: &[f32], channels: usize, hw: usize, blocked: &mut [f32]) {
    assert!(
        channels.is_multiple_of(BLOCK) && planar.len() >= channels * hw && blocked.len() >= channels * hw
    );
    for c in 0..channels {
        let base = (c / BLOCK) * BLOCK * hw + c % BLOCK;
        for (p, &v) in planar[c * hw..(c + 1) * hw].iter().enumerate() {
            blocked[base + p * BLOCK] = v;
        }
    }
}

/// Copies a blocked image of `channels` (a multiple of 16) channels of `hw` pixels into the
/// planar layout.
pub fn to_planar(blocked: &[f32], channels: usize, hw: usize, planar: &mut [f32]) {
    assert!(
        channels.is_multiple_of(BLOCK) && blocked.len() >= channels * hw && planar.len() >= channels * hw
    );
    for c in 0..channels {
        let base = (c / BLOCK) * BLOCK * hw + c % BLOCK;
        for (p, v) in planar[c * hw..(c + 1) * hw].iter_mut().enumerate() {
            *v = blocked[base + p * BLOCK];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, kernel_sets, random_weight, Rng, WeightKind};
    use crate::ChannelActivation;

    /// A random layer this module takes: 1×1 (any input channels when the input is planar) or
    /// depthwise (filters 1-5 tall and 3 or 5 wide, strides 1-2, pads below the filter's), planes
    /// 1-15 wide (depthwise: half of them 16-40 wide), every eighth pair of cases 40-56 on a side
    /// (up to [`MAX_PLANE`]).
    fn random_layer(rng: &mut Rng, case: usize) -> (Conv2dParams, Layout, Layout) {
        // (Over planes above 28×28 a 1×1 layer takes at most `DEPTH_BLOCK` input channels.)
        let large = case % 16 >= 14;
        let side = |rng: &mut Rng| if large { 40 + rng.below(17) } else { 1 + rng.below(15) };
        let (h, w) = (side(rng), side(rng));
        let blocks = 1 + rng.below(6);
        if case.is_multiple_of(2) {
            let x_layout = if rng.below(2) == 0 { Layout::Planar } else { Layout::Blocked };
            let y_layout = if rng.below(2) == 0 || x_layout == Layout::Planar {
                Layout::Blocked
            } else {
                Layout::Planar
            };
            // Up to 300 input channels: several depth blocks of the tiles.
            let in_c = match (x_layout, large) {
                (Layout::Planar, false) => 1 + rng.below(300),
                (Layout::Blocked, false) => BLOCK * (1 + rng.below(19)),
                (Layout::Planar, true) => 1 + rng.below(DEPTH_BLOCK),
                (Layout::Blocked, true) => BLOCK * (1 + rng.below(DEPTH_BLOCK / BLOCK)),
            };
            let mut p = crate::testutil::pointwise(1 + rng.below(2), in_c, BLOCK * blocks, [h, w]);
            // A blocked input into a planar output: half the time a ragged last block.
            let ragged = x_layout == Layout::Blocked && y_layout == Layout::Planar && rng.below(2) == 0;
            p.out_c = BLOCK * blocks - if ragged { 1 + rng.below(BLOCK - 1) } else { 0 };
            (p, x_layout, y_layout)
        } else {
            let (kh, kw) = (1 + rng.below(5), DEPTHWISE_WIDTHS[rng.below(DEPTHWISE_WIDTHS.len())]);
            let (sh, sw) = (1 + rng.below(2), 1 + rng.below(2));
            let (pt, pl) = (rng.below(kh), rng.below(kw));
            let (pb, pr) = (rng.below(kh), rng.below(kw));
            // Rows up to 40 wide: tiles of 16 pixels and a last one overlapping them.
            let w = if large || rng.below(2) == 0 { w } else { 16 + rng.below(25) };
            let (in_h, in_w) = (h.max(kh), w.max(kw));
            let c = BLOCK * blocks;
            let p = Conv2dParams {
                batch: 1,
                in_c: c,
                in_h,
                in_w,
                out_c: c,
                out_h: (in_h + pt + pb - kh) / sh + 1,
                out_w: (in_w + pl + pr - kw) / sw + 1,
                k_h: kh,
                k_w: kw,
                stride_h: sh,
                stride_w: sw,
                pad_top: pt,
                pad_left: pl,
                dil_h: 1,
                dil_w: 1,
                groups: c,
            };
            (p, Layout::Blocked, Layout::Blocked)
        }
    }

    /// `data` (a batch of `channels × hw` images) copied into `layout`.
    fn laid_out(data: &[f32], channels: usize, hw: usize, layout: Layout) -> Vec<f32> {
        let mut out = data.to_vec();
        if layout == Layout::Blocked {
            for (src, dst) in data.chunks(channels * hw).zip(out.chunks_mut(channels * hw)) {
                to_blocked(src, channels, hw, dst);
            }
        }
        out
    }

    /// `data` in `layout` copied back to planar.
    fn planar(data: &[f32], channels: usize, hw: usize, layout: Layout) -> Vec<f32> {
        let mut out = data.to_vec();
        if layout == Layout::Blocked {
            for (src, dst) in data.chunks(channels * hw).zip(out.chunks_mut(channels * hw)) {
                to_planar(src, channels, hw, dst);
            }
        }
        out
    }

    #[test]
    fn matches_the_planar_convolution_on_random_layers_layouts_encodings_and_threads() {
        let mut rng = Rng::new(0xB10C);
        let kinds = WeightKind::all();
        let acts = [
            Activation::None,
            Activation::Relu,
            Activation::Clip { min: -0.3, max: 0.4 },
            Activation::HardSwish,
            Activation::HardSwishAffine { scale: 0.5, shift: -0.25 },
            Activation::Sigmoid,
        ];
        let sets: Vec<Kernels> = kernel_sets().into_iter().filter(|k| k.isa().blocked.is_some()).collect();
        if sets.is_empty() {
            eprintln!("no kernel path with blocked kernels on this CPU: skipped");
            return;
        }
        let reference = Kernels::with_isa(crate::arch::scalar::ISA, 1).unwrap();
        for case in 0..160 {
            let (p, x_layout, y_layout) = random_layer(&mut rng, case);
            let kind = kinds[rng.below(kinds.len())];
            let data = random_weight(&mut rng, kind, p.out_c, p.filter_len());
            let w = data.view();
            let (in_hw, out_hw) = (p.in_h * p.in_w, p.out_h * p.out_w);
            let x = rng.vec(p.batch * p.in_c * in_hw);
            let bias = (case % 3 != 0).then(|| rng.vec(p.out_c));
            let residual = (p.is_pointwise() && case % 4 == 0).then(|| rng.vec(p.batch * p.out_c * out_hw));
            let act = acts[rng.below(acts.len())];
            let mut want = vec![0.0; p.batch * p.out_c * out_hw];
            let mut scratch = vec![0.0; reference.conv2d_scratch_len(&p)];
            match &residual {
                Some(r) => reference.conv2d_add(&x, &w, bias.as_deref(), r, &p, act, &mut want, &mut scratch),
                None => reference.conv2d(&x, &w, bias.as_deref(), &p, act, &mut want, &mut scratch),
            }
            .unwrap();
            let xl = laid_out(
                &x,
                p.in_c,
                in_hw,
                if p.in_c.is_multiple_of(BLOCK) { x_layout } else { Layout::Planar },
            );
            let rl = residual.as_ref().map(|r| laid_out(r, p.out_c, out_hw, y_layout));
            // The input against a no-access page (see `testutil::Guarded`).
            let xl = crate::testutil::Guarded::new(&xl, crate::testutil::Edge::End);
            for k in &sets {
                assert!(k.blocked_supports(&p, x_layout, y_layout), "case {case}: {p:?}");
                let mut y = vec![f32::NAN; want.len()];
                let mut scratch = vec![f32::NAN; k.conv2d_scratch_len(&p)];
                k.conv2d_blocked(
                    xl.as_slice(),
                    x_layout,
                    &w,
                    bias.as_deref(),
                    rl.as_deref(),
                    None,
                    &p,
                    act,
                    &mut y,
                    y_layout,
                    &mut scratch,
                )
                .unwrap();
                let what = format!("case {case} {kind:?} {act:?} {x_layout:?}->{y_layout:?} {p:?} on {k:?}");
                assert_close(&planar(&y, p.out_c, out_hw, y_layout), &want, &what);
            }
        }
    }

    #[test]
    fn bf16_pointwise_stays_within_its_rounding_of_the_planar_result() {
        // 1×1 layers with blocked inputs (several depth blocks: up to 19 blocks of 16) into both
        // layouts, ragged planar exits, residuals, two images, 1-3 threads, with bf16 products:
        // within 2^-7 of the sum of their products' magnitudes of the f32 result (both factors
        // rounded to 8 significant bits). Planar inputs keep the f32 tiles.
        let mut rng = Rng::new(0xBF16);
        let sets: Vec<Kernels> = kernel_sets()
            .into_iter()
            .filter_map(|k| k.with_bf16_products(true).ok())
            .filter(|k| k.isa().blocked.is_some_and(|b| b.bf16.is_some()))
            .collect();
        if sets.is_empty() {
            eprintln!("no kernel path with blocked bf16 products on this CPU: skipped");
            return;
        }
        let reference = Kernels::with_isa(crate::arch::scalar::ISA, 1).unwrap();
        let kinds = WeightKind::all();
        let mut cases = 0;
        for case in 0..120 {
            let (p, x_layout, y_layout) = random_layer(&mut rng, 2 * case);
            if x_layout != Layout::Blocked {
                continue;
            }
            cases += 1;
            let data = random_weight(&mut rng, kinds[case % kinds.len()], p.out_c, p.filter_len());
            let (in_hw, out_hw) = (p.in_h * p.in_w, p.out_h * p.out_w);
            let x: Vec<f32> = rng.vec(p.batch * p.in_c * in_hw).iter().map(|v| v - 0.5).collect();
            let bias = rng.vec(p.out_c);
            let residual = rng.vec(p.batch * p.out_c * out_hw);
            let mut want = vec![0.0; residual.len()];
            let mut scratch = vec![0.0; reference.conv2d_scratch_len(&p)];
            let act = Activation::None;
            reference
                .conv2d_add(&x, &data.view(), Some(&bias), &residual, &p, act, &mut want, &mut scratch)
                .unwrap();
            let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
            let wabs = pith_format::ir::TensorData::F32(abs(&crate::testutil::decode_all(&data, p.out_c)));
            let mut magnitude = vec![0.0; want.len()];
            reference.conv2d(&abs(&x), &wabs.view(), None, &p, act, &mut magnitude, &mut scratch).unwrap();
            let (xl, rl) =
                (laid_out(&x, p.in_c, in_hw, x_layout), laid_out(&residual, p.out_c, out_hw, y_layout));
            for k in &sets {
                let mut y = vec![f32::NAN; want.len()];
                let mut scratch = vec![f32::NAN; k.conv2d_scratch_len(&p)];
                k.conv2d_blocked(
                    &xl,
                    x_layout,
                    &data.view(),
                    Some(&bias),
                    Some(&rl),
                    None,
                    &p,
                    act,
                    &mut y,
                    y_layout,
                    &mut scratch,
                )
                .unwrap();
                let got = planar(&y, p.out_c, out_hw, y_layout);
                for (i, ((g, w), m)) in got.iter().zip(&want).zip(&magnitude).enumerate() {
                    let bound = m / 128.0 + 1e-4 * (1.0 + w.abs());
                    assert!(
                        (g - w).abs() <= bound,
                        "case {case} {x_layout:?}->{y_layout:?} {p:?} on {k:?} at {i}: {g} vs {w}"
                    );
                }
            }
        }
        assert!(cases > 20, "{cases} layers with a blocked input");
        // Inputs of 1 + 2^-10 and weights of 1 - 2^-12 round to 1: 64 channels (4 blocks) sum
        // to exactly 64 with bf16 products, where f32 sums 64 (1 + 2^-10)(1 - 2^-12).
        let p = crate::testutil::pointwise(1, 64, 32, [5, 7]);
        let data = pith_format::ir::TensorData::F32(vec![1.0 - 1.0 / 4096.0; 32 * 64]);
        let x = laid_out(&vec![1.0 + 1.0 / 1024.0; 64 * 35], 64, 35, Layout::Blocked);
        for k in &sets {
            let mut y = vec![f32::NAN; 32 * 35];
            let mut scratch = vec![f32::NAN; k.conv2d_scratch_len(&p)];
            k.conv2d_blocked(
                &x,
                Layout::Blocked,
                &data.view(),
                None,
                None,
                None,
                &p,
                Activation::None,
                &mut y,
                Layout::Blocked,
                &mut scratch,
            )
            .unwrap();
            assert!(y.iter().all(|&v| v == 64.0), "{k:?}: {:?}", &y[..4]);
        }
    }

    #[test]
    fn pointwise_with_an_input_scale_matches_the_scaled_input() {
        // A squeeze-excite gate folded into the filters of random 1×1 layers, both layouts on
        // each side, every encoding: as the planar convolution of the gated input.
        let mut rng = Rng::new(0x5E);
        let kinds = WeightKind::all();
        let sets: Vec<Kernels> = kernel_sets().into_iter().filter(|k| k.isa().blocked.is_some()).collect();
        let reference = Kernels::with_isa(crate::arch::scalar::ISA, 1).unwrap();
        for case in 0..40 {
            let (mut p, x_layout, y_layout) = random_layer(&mut rng, 2 * case);
            p.batch = 1;
            let data = random_weight(&mut rng, kinds[case % kinds.len()], p.out_c, p.filter_len());
            let (in_hw, out_hw) = (p.in_h * p.in_w, p.out_h * p.out_w);
            let (x, scale, bias) = (rng.vec(p.in_c * in_hw), rng.vec(p.in_c), rng.vec(p.out_c));
            let gated: Vec<f32> = x.iter().enumerate().map(|(i, v)| v * scale[i / in_hw]).collect();
            let mut want = vec![0.0; p.out_c * out_hw];
            let mut scratch = vec![0.0; reference.conv2d_scratch_len(&p)];
            let act = Activation::Relu;
            reference.conv2d(&gated, &data.view(), Some(&bias), &p, act, &mut want, &mut scratch).unwrap();
            let x_layout = if p.in_c.is_multiple_of(BLOCK) { x_layout } else { Layout::Planar };
            let xl = laid_out(&x, p.in_c, in_hw, x_layout);
            for k in &sets {
                let mut y = vec![f32::NAN; want.len()];
                let mut scratch = vec![f32::NAN; k.conv2d_scratch_len(&p)];
                let w = data.view();
                k.conv2d_blocked(
                    &xl,
                    x_layout,
                    &w,
                    Some(&bias),
                    None,
                    Some(&scale),
                    &p,
                    act,
                    &mut y,
                    y_layout,
                    &mut scratch,
                )
                .unwrap();
                let what = format!("case {case} {x_layout:?}->{y_layout:?} {p:?} on {k:?}");
                assert_close(&planar(&y, p.out_c, out_hw, y_layout), &want, &what);
            }
        }
        // Not for a depthwise layer.
        if let Some(k) = sets.first() {
            let p = Conv2dParams {
                groups: 16,
                k_h: 3,
                k_w: 3,
                pad_top: 1,
                pad_left: 1,
                ..crate::testutil::pointwise(1, 16, 16, [4, 4])
            };
            let data = random_weight(&mut rng, WeightKind::F32, 16, 9);
            let (x, mut y) = (rng.vec(256), vec![0.0; 256]);
            let mut scratch = vec![0.0; k.conv2d_scratch_len(&p)];
            let err = k
                .conv2d_blocked(
                    &x,
                    Layout::Blocked,
                    &data.view(),
                    None,
                    None,
                    Some(&[1.0; 16]),
                    &p,
                    Activation::None,
                    &mut y,
                    Layout::Blocked,
                    &mut scratch,
                )
                .unwrap_err();
            assert!(err.to_string().contains("input scale"), "{err}");
        }
    }

    #[test]
    fn refuses_layers_and_layouts_it_has_no_kernel_for() {
        let Some(k) = kernel_sets().into_iter().find(|k| k.isa().blocked.is_some()) else {
            eprintln!("no kernel path with blocked kernels on this CPU: skipped");
            return;
        };
        let p = crate::testutil::pointwise(1, 32, 32, [4, 4]);
        assert!(k.blocked_supports(&p, Layout::Blocked, Layout::Planar));
        // Output channels that are not whole blocks.
        let odd = Conv2dParams { out_c: 24, ..p };
        assert!(!k.blocked_supports(&odd, Layout::Planar, Layout::Blocked));
        // Output channels that are not whole blocks, from a blocked input into a planar output.
        assert!(k.blocked_supports(&odd, Layout::Blocked, Layout::Planar));
        assert!(!k.blocked_supports(&odd, Layout::Blocked, Layout::Blocked));
        // A blocked input of channels that are not whole blocks.
        let ragged = Conv2dParams { in_c: 20, ..p };
        assert!(!k.blocked_supports(&ragged, Layout::Blocked, Layout::Blocked));
        assert!(k.blocked_supports(&ragged, Layout::Planar, Layout::Blocked));
        // A depthwise layer with one side planar, and a dilated one.
        let dw = Conv2dParams { groups: 32, k_h: 3, k_w: 3, pad_top: 1, pad_left: 1, ..p };
        assert!(k.blocked_supports(&dw, Layout::Blocked, Layout::Blocked));
        assert!(!k.blocked_supports(&dw, Layout::Planar, Layout::Blocked));
        assert!(!k.blocked_supports(&Conv2dParams { dil_h: 2, ..dw }, Layout::Blocked, Layout::Blocked));
        // Depthwise filters 1, 2, 4 or 7 wide, a horizontal stride of 3, a pad as wide as the filter.
        for k_w in [1, 2, 4, 7] {
            let odd_width = Conv2dParams { k_w, pad_left: k_w / 2, out_w: 4 + 2 * (k_w / 2) + 1 - k_w, ..dw };
            assert!(!k.blocked_supports(&odd_width, Layout::Blocked, Layout::Blocked), "{k_w} wide");
        }
        let strided = Conv2dParams { stride_w: 3, out_w: 2, ..dw };
        assert!(!k.blocked_supports(&strided, Layout::Blocked, Layout::Blocked));
        let padded = Conv2dParams { pad_left: 3, out_w: 8, ..dw };
        assert!(!k.blocked_supports(&padded, Layout::Blocked, Layout::Blocked));
        let right_padded = Conv2dParams { out_w: 6, ..dw };
        assert!(!k.blocked_supports(&right_padded, Layout::Blocked, Layout::Blocked));
        // Planes over 56×56 (and no scratch reserved for them); 56×56 itself is taken.
        let wide = crate::testutil::pointwise(1, 32, 32, [57, 56]);
        assert!(!k.blocked_supports(&wide, Layout::Blocked, Layout::Blocked));
        assert_eq!(scratch_len(&wide), 1);
        let largest = crate::testutil::pointwise(1, 32, 32, [56, 56]);
        assert!(k.blocked_supports(&largest, Layout::Blocked, Layout::Blocked));
        // Deeper than one depth block only up to 28×28 (no partial sums over larger planes).
        let deep = crate::testutil::pointwise(1, 144, 32, [56, 56]);
        assert!(!k.blocked_supports(&deep, Layout::Blocked, Layout::Blocked));
        assert!(k.blocked_supports(
            &crate::testutil::pointwise(1, 144, 32, [28, 28]),
            Layout::Blocked,
            Layout::Blocked
        ));
        // A grouped (not depthwise) layer.
        assert!(!k.blocked_supports(&Conv2dParams { groups: 2, ..dw }, Layout::Blocked, Layout::Blocked));
        let data = random_weight(&mut Rng::new(1), WeightKind::F32, 24, 32);
        let (x, mut y) = (vec![0.0; 32 * 16], vec![0.0; 24 * 16]);
        let mut scratch = vec![0.0; k.conv2d_scratch_len(&odd)];
        let err = k
            .conv2d_blocked(
                &x,
                Layout::Planar,
                &data.view(),
                None,
                None,
                None,
                &odd,
                Activation::None,
                &mut y,
                Layout::Blocked,
                &mut scratch,
            )
            .unwrap_err();
        assert!(err.to_string().contains("no blocked kernel"), "{err}");
        // Short buffers are errors, not panics.
        let data = random_weight(&mut Rng::new(1), WeightKind::F32, 32, 32);
        let mut y = vec![0.0; 32 * 16];
        let mut scratch = vec![0.0; k.conv2d_scratch_len(&p)];
        let err = k
            .conv2d_blocked(
                &x[1..],
                Layout::Planar,
                &data.view(),
                None,
                None,
                None,
                &p,
                Activation::None,
                &mut y,
                Layout::Blocked,
                &mut scratch,
            )
            .unwrap_err();
        assert!(err.to_string().contains("input"), "{err}");
        let _ = ChannelActivation::Same(Activation::None);
    }

    #[test]
    fn filters_decode_into_the_transposed_panel_as_row_by_row() {
        // 4-bit shared codebooks (per tensor, scaled per row; f16 and f32 centroids, some with
        // fewer than 16 entries) take the transposed-index path, every other encoding and a
        // ragged last block the rows' own decoding: bit for bit the same panel, over rows shorter
        // than a 64-byte block, whole blocks and odd tails, half of them with column factors.
        use pith_format::ir::CodebookKind;
        let mut rng = Rng::new(5);
        let Some(blocked) = Isa::available().into_iter().filter_map(|isa| isa.blocked).next_back() else {
            eprintln!("no blocked kernels on this CPU/build, skipped");
            return;
        };
        let kinds = [
            WeightKind::Codebook(4, CodebookKind::SharedScaled, false),
            WeightKind::Codebook(4, CodebookKind::SharedScaled, true),
            WeightKind::Codebook(4, CodebookKind::PerTensor, true),
            WeightKind::Codebook(4, CodebookKind::PerRow, true),
            WeightKind::Codebook(3, CodebookKind::SharedScaled, false),
            WeightKind::F16,
        ];
        for (case, k) in [1, 2, 7, 31, 32, 33, 127, 128, 129, 255, 300].into_iter().enumerate() {
            for (i, &kind) in kinds.iter().enumerate() {
                let rows = [16, 32, 64, 40][(case + i) % 4];
                let data = random_weight(&mut rng, kind, rows, k);
                let factors = rng.vec(k);
                let weights = WeightRows::new(data.view(), rows, k).unwrap();
                let weights =
                    if (case + i) % 2 == 0 { weights.with_column_scales(&factors).unwrap() } else { weights };
                let cols = rows.next_multiple_of(BLOCK).min(POINTWISE_BLOCKS * BLOCK);
                let mut panel = vec![f32::NAN; BLOCK * k];
                let mut wt = vec![f32::NAN; k * cols];
                TransposedFilters::new(&weights, &blocked).decode(0..cols, &mut panel, &mut wt);
                let mut row = vec![0.0; k];
                for r in 0..cols {
                    if r < rows {
                        weights.decode(r, &mut row);
                    } else {
                        row.fill(0.0);
                    }
                    for (p, want) in row.iter().enumerate() {
                        let got = wt[p * cols + r];
                        assert_eq!(got.to_bits(), want.to_bits(), "{kind:?} {rows}x{k}: row {r} column {p}");
                    }
                }
            }
        }
    }

    #[test]
    fn layout_copies_place_channels_in_blocks_and_back() {
        let mut rng = Rng::new(7);
        let (channels, hw) = (48, 13);
        let x = rng.vec(channels * hw);
        let (mut b, mut back) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        to_blocked(&x, channels, hw, &mut b);
        assert_eq!(b[BLOCK * 2 + 3], x[3 * hw + 2], "channel 3 of pixel 2");
        assert_eq!(b[BLOCK * hw + 5], x[(BLOCK + 5) * hw], "channel 21 of pixel 0");
        to_planar(&b, channels, hw, &mut back);
        assert_eq!(back, x);
    }
}
