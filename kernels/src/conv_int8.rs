//! Ungrouped convolutions on int8 dot products: dynamic-range quantization, as TFLite's hybrid
//! kernels and onnxruntime's dynamic quantization do it, for kernel sets built with
//! [`crate::Kernels::with_int8_activations`].
//!
//! Each filter is rounded to s8 with its own scale once ([`Int8Filters`]). A 1×1 layer's input
//! is quantized to u8 on the fly with an affine range per block of [`BLOCK`] pixels over all
//! channels. The blocks are fixed positions of the plane, so a pixel's result does not depend on
//! how the layer was split over threads. Large planes split over threads by output rows, each
//! thread quantizing the blocks its rows touch; small ones, and expansions (no more input channels
//! than filters) up to 128×128, by filters, sharing the plane quantized once (block by block over
//! the threads). Any other layer (that does not take Winograd) quantizes the shifted path's zero-padded
//! planes tap by tap ([`Shifted`]), with one range per image that keeps 0 on a level. The sums
//! are exact in i32; `w · x ≈ sw · (step · Σ wq·q + lo · Σ wq)` turns them back into f32 before
//! the usual epilogue (bias, residual, activation). The error is that of 8-bit activations (half a
//! step of the range per input, up to a whole one at the top of a range with a snapped zero) and
//! of 8-bit filters (half a step of the filter's largest weight).

use std::cell::Cell;
use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use pith_format::TensorView;

use crate::arch::int8::{Int8ConvKernels, Int8GemmFusedFn, U8Range, INT8_PIXEL_ALIGN};
use crate::arch::{FusedRows, Isa, ResidualRows};
use crate::conv::{check_operands, fused_activation, split_output_rows, Residual, Slab, PIXEL_SPLIT_MIN};
use crate::parallel::{split_units, with_offsets, with_plane_list, with_plane_offsets, TASKS_PER_THREAD};
use crate::{check_min_len, Activation, ChannelActivation, Conv2dParams, KernelError, Kernels, WeightRows};

/// Pixels of a plane that share one quantization range (a multiple of [`INT8_PIXEL_ALIGN`]).
pub(crate) const BLOCK: usize = 256;
/// Filters per GEMM call (rows of the accumulator tile).
const PANEL: usize = 48;
// A plane split by filters (under PIXEL_SPLIT_MIN pixels per thread) has at most one block per
// thread, which is what the shared part of the scratch holds.
const _: () = assert!(PIXEL_SPLIT_MIN <= BLOCK);

/// A convolution's filters rounded to s8, each with its own scale: prepared once (a session does
/// it on its first run) for [`Kernels::conv2d_int8`], as onnxruntime and XNNPACK pack their
/// weights when a session starts. One byte per weight plus 8 per filter: twice the size of a
/// 4-bit codebook, which is why only sessions that ask for int8 activations keep them.
#[derive(Clone)]
pub struct Int8Filters {
    out_c: usize,
    row_len: usize,
    /// `out_c` rows of `row_len` weights rounded up to a multiple of 4, zero past `row_len`.
    filters: Vec<i8>,
    /// Per filter: the value of one s8 step.
    scales: Vec<f32>,
    /// Per filter: the sum of its s8 weights (for the activations' zero point).
    sums: Vec<f32>,
}

impl std::fmt::Debug for Int8Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Int8Filters").field("out_c", &self.out_c).field("row_len", &self.row_len).finish()
    }
}

impl Int8Filters {
    /// Rounds the `out_c` filters of `row_len` weights in `w` (ONNX `Conv` layout, any encoding,
    /// decoded a row at a time) to s8; errors if `w` does not hold `out_c × row_len` weights.
    pub fn new(w: &TensorView<'_>, out_c: usize, row_len: usize) -> Result<Int8Filters, KernelError> {
        let rows = WeightRows::new(*w, out_c, row_len)?;
        let kq = row_len.next_multiple_of(4);
        let mut filters = vec![0i8; out_c * kq];
        let (mut scales, mut sums) = (vec![0.0; out_c], vec![0.0; out_c]);
        let mut row = vec![0.0f32; row_len];
        for (f, out) in filters.chunks_exact_mut(kq.max(1)).enumerate().take(out_c) {
            rows.decode(f, &mut row);
            (scales[f], sums[f]) = quantize_filter(&row, out);
        }
        Ok(Int8Filters { out_c, row_len, filters, scales, sums })
    }

    /// Output channels (filters).
    pub fn out_c(&self) -> usize {
        self.out_c
    }

    /// Weights per filter (`in_c / groups × k_h × k_w`).
    pub fn row_len(&self) -> usize {
        self.row_len
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.filters.len() + 4 * (self.scales.len() + self.sums.len())
    }
}

/// Whether layer `p` can run on [`Int8Filters`] with this kernel set: int8 activations enabled
/// and an ungrouped convolution, 1×1 (stride 1, unpadded) over more than one pixel (a single
/// pixel is a GEMV on the packed weights) or any other that does not take Winograd (whose
/// transformed f32 products already need fewer multiply-adds).
pub(crate) fn applies(kernels: &Kernels, p: &Conv2dParams) -> bool {
    kernels.int8_kernels().is_some_and(|k| k.conv.is_some()) && shape_applies(p)
}

/// [`applies`], the layer's part.
fn shape_applies(p: &Conv2dParams) -> bool {
    let plane = p.out_h * p.out_w;
    p.groups == 1
        && p.in_c > 0
        && plane > 0
        && if p.is_pointwise() { plane > 1 } else { !crate::winograd::applies(p) }
}

/// Weights per filter rounded up to whole words of 4.
fn depth(p: &Conv2dParams) -> usize {
    p.filter_len().next_multiple_of(4)
}

/// Scratch elements (f32) one worker of [`conv`] needs for layer `p` (0 if the int8 path does
/// not take it). A 1×1 layer: a panel's multipliers and offsets, a quantized block and the
/// accumulator tile, plus [`shared_blocks`] for the quantized plane that the tasks of a layer
/// split by filters share (all workers' shares of it together hold any such plane). Any other:
/// see [`Shifted::scratch_len`].
pub(crate) fn scratch_len(p: &Conv2dParams) -> usize {
    if !shape_applies(p) || p.check().is_err() {
        0
    } else if p.is_pointwise() {
        2 * PANEL + (1 + shared_blocks(p)) * block_len(p) + PANEL * BLOCK
    } else {
        Shifted::new(p).scratch_len(p)
    }
}

/// What quantizing one input value costs (a range scan, then a scaled, rounded and packed store),
/// in multiply-adds, for [`Kernels::min_task_work`].
const QUANTIZE_WORK_WEIGHT: usize = 4;

/// Most pixels of a 1×1 layer that [`expands_on_a_small_plane`] splits by filters.
const FILTER_SPLIT_PLANE: usize = 1 << 14;

/// Whether 1×1 layer `p` has no more input channels than filters over at most
/// [`FILTER_SPLIT_PLANE`] pixels (the expansions of inverted residual blocks): with several
/// threads it is split by filters whatever its plane, its input quantized once and shared.
/// Split by pixels, each thread wrote every output channel of its rows, and the depthwise layer
/// after it, split by channels, read half of its input from the other core's cache; split by
/// filters, each thread writes the channels it reads next. The input it quantizes alone is the
/// smaller side of the layer. MobileNetV2 `--int8` at 2 threads (Xeon): the 32->192 layers over
/// 28×28 0.039 -> 0.024 ms, the depthwise layers after them 0.042 -> 0.032; up to 112×112
/// (128×128) rather than 64×64, the depthwise layer after the 16->96 one 0.139 -> 0.119 ms and the
/// model 2.20 -> 2.16 (7 alternating rounds). The limit bounds the scratch the shared plane takes.
fn expands_on_a_small_plane(p: &Conv2dParams) -> bool {
    p.in_c <= p.out_c && p.out_h * p.out_w <= FILTER_SPLIT_PLANE
}

/// Quantized blocks per worker's scratch for the plane a layer split by filters shares: the
/// whole plane for [`expands_on_a_small_plane`] (whatever the thread count), else one (a plane
/// split by filters for being small has at most one block per thread).
fn shared_blocks(p: &Conv2dParams) -> usize {
    if expands_on_a_small_plane(p) {
        (p.out_h * p.out_w).div_ceil(BLOCK)
    } else {
        1
    }
}

/// Most f32 elements of one accumulator block of the shifted int8 path (a panel of filters ×
/// the block's pixels).
const SHIFTED_ACC: usize = 1 << 15;
/// Most bytes of one quantized block of the shifted int8 path (all taps × the block's pixels).
const SHIFTED_QUANT: usize = 1 << 18;

/// The shifted path on int8: [`Slab`]'s zero-padded phase planes, every tap of a run of output
/// pixels quantized straight from them into the dot-product layout (an unfolded u8 matrix of one
/// block of output rows at a time), then the same GEMM as a 1×1 layer.
struct Shifted {
    slab: Slab,
    /// Output rows per quantized block.
    rows: usize,
}

impl Shifted {
    fn new(p: &Conv2dParams) -> Shifted {
        let slab = Slab::new(p);
        let pixels = (SHIFTED_ACC / PANEL).min(SHIFTED_QUANT / depth(p));
        let rows = (pixels / slab.wq).clamp(1, slab.rows);
        Shifted { slab, rows }
    }

    /// Most pixels (padded rows) of one block.
    fn pixels(&self) -> usize {
        (self.rows * self.slab.wq).next_multiple_of(INT8_PIXEL_ALIGN)
    }

    /// The slab's planes, a panel's multipliers and offsets, a quantized block (with a block's
    /// pixels more, so that the view from any row of it holds whole groups of `ldx` words: see
    /// [`Layer::fused_runs`]) and its accumulators.
    fn scratch_len(&self, p: &Conv2dParams) -> usize {
        p.in_c * self.slab.len() + 2 * PANEL + self.quantized_len(p) + PANEL * self.pixels()
    }

    /// f32 elements of the quantized block's part of the scratch.
    fn quantized_len(&self, p: &Conv2dParams) -> usize {
        depth(p) * self.pixels() / 4 + self.pixels()
    }
}

/// Scratch elements (f32) of one quantized block of `p`'s input.
fn block_len(p: &Conv2dParams) -> usize {
    depth(p) * BLOCK / 4
}

/// One quantized block of pixels `start..start + n` (its whole quantization block, or the part a
/// task computes): `ldx` pixels per row of the layout, `lo` and `step` its affine map.
#[derive(Clone, Copy)]
struct Quantized {
    start: usize,
    n: usize,
    ldx: usize,
    lo: f32,
    step: f32,
}

impl Layer<'_> {
    /// Quantizes pixels `s..e` of image `xb` (inside one quantization block) into `q` with the
    /// range of their whole block.
    fn quantize(&self, xb: &[f32], offs: &[usize], s: usize, e: usize, q: &mut [u8]) -> Quantized {
        let plane = self.p.out_h * self.p.out_w;
        let b0 = s / BLOCK * BLOCK;
        let b1 = (b0 + BLOCK).min(plane);
        let [lo, hi] = (self.int8.min_max)(&xb[b0..], offs, b1 - b0);
        let range = U8Range::new(lo, hi);
        let n = e - s;
        let ldx = n.next_multiple_of(INT8_PIXEL_ALIGN);
        (self.int8.quantize)(&xb[s..], offs, n, range, q, ldx);
        Quantized { start: s, n, ldx, lo, step: range.step() }
    }
}

/// Rounds filter `row` to s8 (`out`, zero past the filter) with one scale: returns the scale
/// (the largest magnitude over 127) and the sum of the s8 weights (as f32: exact below 2^24).
fn quantize_filter(row: &[f32], out: &mut [i8]) -> (f32, f32) {
    let max = row.iter().fold(0.0f32, |m, w| m.max(w.abs()));
    // An all-zero filter gets inv = inf and 0 * inf = NaN, which `as` turns into 0.
    let inv = 127.0 / max;
    let mut sum = 0i32;
    for (q, &w) in out.iter_mut().zip(row) {
        *q = (w * inv).round() as i8;
        sum += i32::from(*q);
    }
    out[row.len()..].fill(0);
    (max / 127.0, sum as f32)
}

/// See [`crate::Kernels::conv2d_int8`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    kernels: &Kernels,
    x: &[f32],
    filters: &Int8Filters,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    p: &Conv2dParams,
    act: ChannelActivation<'_>,
    y: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    let rc = check_operands(x, bias, residual, p, y)?;
    act.check(p.out_c)?;
    let Some(int8) = kernels.int8_kernels().and_then(|k| k.conv).filter(|_| applies(kernels, p)) else {
        return Err(KernelError::Params(format!(
            "an int8 convolution needs int8 activations on (they are {}), a path with int8 \
             convolutions ({} has {}) and an ungrouped layer that does not take Winograd (a 1x1 one \
             over more than one pixel), not {p:?}",
            if kernels.int8_activations() { "on" } else { "off" },
            kernels.isa().name,
            if kernels.isa().int8.is_some_and(|k| k.conv.is_some()) { "them" } else { "none" },
        )));
    };
    if (filters.out_c, filters.row_len) != (p.out_c, p.filter_len()) {
        return Err(KernelError::Weight(format!(
            "int8 filters are {}x{}, the layer needs {}x{}",
            filters.out_c,
            filters.row_len,
            p.out_c,
            p.filter_len()
        )));
    }
    let per_task = scratch_len(p);
    check_min_len("conv scratch", scratch.len(), per_task * kernels.threads())?;
    let layer = Layer { isa: kernels.isa(), int8, filters, bias, act, p };
    if !p.is_pointwise() {
        layer.shifted(kernels, x, residual.map(|r| (r, rc)), y, scratch, per_task);
        return Ok(());
    }
    let plane = p.out_h * p.out_w;
    with_plane_offsets(p.in_c, plane, |offs| {
        layer.pointwise(kernels, x, residual, rc, y, scratch, per_task, offs)
    });
    Ok(())
}

thread_local! {
    /// This thread's spare list of a shared plane's quantized blocks, empty: its capacity is kept
    /// for the next layer, so that a steady run allocates none.
    static SPARE_BLOCKS: Cell<Vec<(usize, Quantized)>> = const { Cell::new(Vec::new()) };
    /// This thread's spare list of slots the tasks quantizing a shared plane fill, empty.
    static SPARE_BLOCK_SLOTS: Cell<Vec<Mutex<Option<Quantized>>>> = const { Cell::new(Vec::new()) };
    /// This thread's spare list of each channel group's range in a block quantized by channels.
    static SPARE_RANGES: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

impl Layer<'_> {
    /// The 1×1 layer over every image of `x` (input plane `c` at `offs[c]`).
    #[allow(clippy::too_many_arguments)]
    fn pointwise(
        &self,
        kernels: &Kernels,
        x: &[f32],
        residual: Option<&[f32]>,
        rc: usize,
        y: &mut [f32],
        scratch: &mut [f32],
        per_task: usize,
        offs: &[usize],
    ) {
        let p = self.p;
        let threads = kernels.threads_now();
        let plane = p.out_h * p.out_w;
        for (b, yb) in y.chunks_exact_mut(p.out_c * plane).enumerate() {
            let xb = &x[b * p.in_c * plane..][..p.in_c * plane];
            let rb = residual.map(|r| Residual { data: &r[b * rc * plane..][..rc * plane], channels: rc });
            let by_filters =
                threads > 1 && (plane < threads * PIXEL_SPLIT_MIN || expands_on_a_small_plane(p));
            if !by_filters {
                // Each thread quantizes only the blocks its rows touch, one at a time.
                split_output_rows(
                    kernels,
                    p,
                    1,
                    TASKS_PER_THREAD,
                    yb,
                    scratch,
                    per_task,
                    |rows, planes, s| {
                        let cols = rows.start * p.out_w..rows.end * p.out_w;
                        let (q, work) = s.split_at_mut(block_len(p));
                        let q: &mut [u8] = bytemuck::cast_slice_mut(q);
                        let mut start = cols.start;
                        while start < cols.end {
                            let end = cols.end.min((start / BLOCK + 1) * BLOCK);
                            let block = self.quantize(xb, offs, start, end, q);
                            self.multiply(q, block, rb, 0..p.out_c, cols.start, planes, work);
                            start = end;
                        }
                    },
                );
            } else {
                // Split filters over the threads, which share the plane quantized once, here: a small
                // plane (fewer than 256 pixels per thread, at most one block per thread), or an
                // expansion's (see `expands_on_a_small_plane`).
                let shared_len = threads * shared_blocks(p) * block_len(p);
                let (shared, rest) = scratch.split_at_mut(shared_len);
                let mut blocks = SPARE_BLOCKS.take();
                let shared =
                    self.quantize_plane(kernels, xb, offs, shared, &mut rest[..threads], &mut blocks);
                let work = plane * p.in_c;
                let per_task = per_task - shared_blocks(p) * block_len(p);
                split_units(kernels, p.out_c, plane, work, yb, rest, per_task, |ocs, ys, s| {
                    with_plane_list(ys.chunks_exact_mut(plane), |planes| {
                        for &(at, block) in &blocks {
                            self.multiply(&shared[at..], block, rb, ocs.clone(), 0, planes, s);
                        }
                    })
                });
                SPARE_BLOCKS.set(blocks);
            }
        }
    }
}

impl Layer<'_> {
    /// Quantizes every block of image `xb`'s plane (channel `c` at `offs[c]`) into `shared`, block
    /// `b` at `b * block_len`, the blocks split over the threads when there are as many, else
    /// each block's channels (`scratch`: one element per thread). Writes each block's byte
    /// offset and map into `quantized` (emptied first) and returns the quantized blocks.
    fn quantize_plane<'s>(
        &self,
        kernels: &Kernels,
        xb: &[f32],
        offs: &[usize],
        shared: &'s mut [f32],
        scratch: &mut [f32],
        quantized: &mut Vec<(usize, Quantized)>,
    ) -> &'s [u8] {
        let p = self.p;
        let (plane, len) = (p.out_h * p.out_w, block_len(p));
        let blocks = plane.div_ceil(BLOCK);
        quantized.clear();
        if blocks < kernels.threads_now() {
            let shared = &mut shared[..blocks * len];
            quantized.extend(shared.chunks_exact_mut(len).enumerate().map(|(b, part)| {
                let pixels = b * BLOCK..plane.min((b + 1) * BLOCK);
                (b * len * 4, self.quantize_by_channels(kernels, xb, offs, pixels, part, scratch))
            }));
            return bytemuck::cast_slice(&*shared);
        }
        let mut slots = SPARE_BLOCK_SLOTS.take();
        slots.clear();
        slots.resize_with(blocks, || Mutex::new(None));
        let shared = &mut shared[..blocks * len];
        let block_work = BLOCK * p.in_c * QUANTIZE_WORK_WEIGHT;
        split_units(kernels, blocks, len, block_work, shared, scratch, 1, |bs, part, _| {
            for (b, q) in bs.zip(part.chunks_exact_mut(len)) {
                let q: &mut [u8] = bytemuck::cast_slice_mut(q);
                let block = self.quantize(xb, offs, b * BLOCK, plane.min((b + 1) * BLOCK), q);
                *slots[b].lock().unwrap_or_else(PoisonError::into_inner) = Some(block);
            }
        });
        // Every block was quantized by one of the tasks (`split_units` runs each unit once).
        quantized.extend(slots.iter_mut().enumerate().filter_map(|(b, q)| {
            Some((b * len * 4, (*q.get_mut().unwrap_or_else(PoisonError::into_inner))?))
        }));
        SPARE_BLOCK_SLOTS.set(slots);
        bytemuck::cast_slice(&*shared)
    }
}

impl Layer<'_> {
    /// Quantizes the whole block of `pixels` of image `xb` into `q`, its channels' words (groups
    /// of 4 channels) split over the threads: first each group's range, then, with the block's
    /// range, each group's bytes (`scratch`: one element per thread). The same bytes as
    /// [`Layer::quantize`]. A plane of fewer blocks than threads is split this way rather than
    /// not at all: the layer before it (depthwise, or 1×1 split by filters) left each thread's
    /// channels in that thread's cache, where a thread reading a block's every channel takes
    /// half of them from the other core's (MobileNetV2's projections over 14×14 and 7×7 ran
    /// slower on 2 threads than on 1).
    fn quantize_by_channels(
        &self,
        kernels: &Kernels,
        xb: &[f32],
        offs: &[usize],
        pixels: Range<usize>,
        q: &mut [f32],
        scratch: &mut [f32],
    ) -> Quantized {
        let (s, n) = (pixels.start, pixels.len());
        let groups = offs.len().div_ceil(4);
        let channels = |g: Range<usize>| &offs[4 * g.start..offs.len().min(4 * g.end)];
        let group_work = 4 * n * QUANTIZE_WORK_WEIGHT;
        let mut ranges = SPARE_RANGES.take();
        ranges.clear();
        ranges.resize(2 * groups, 0.0);
        split_units(kernels, groups, 2, group_work, &mut ranges, scratch, 1, |gs, out, _| {
            for (g, range) in gs.zip(out.chunks_exact_mut(2)) {
                range.copy_from_slice(&(self.int8.min_max)(&xb[s..], channels(g..g + 1), n));
            }
        });
        let (lo, hi) = ranges
            .chunks_exact(2)
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), r| (lo.min(r[0]), hi.max(r[1])));
        SPARE_RANGES.set(ranges);
        let range = U8Range::new(lo, hi);
        // A group's row: `ldx` pixels of 4 bytes, one f32 element each.
        let ldx = n.next_multiple_of(INT8_PIXEL_ALIGN);
        split_units(kernels, groups, ldx, group_work, &mut q[..groups * ldx], scratch, 1, |gs, part, _| {
            (self.int8.quantize)(&xb[s..], channels(gs), n, range, bytemuck::cast_slice_mut(part), ldx)
        });
        Quantized { start: s, n, ldx, lo, step: range.step() }
    }
}

/// One layer's filters, epilogue and geometry, shared by the worker threads.
struct Layer<'a> {
    isa: Isa,
    int8: Int8ConvKernels,
    filters: &'a Int8Filters,
    bias: Option<&'a [f32]>,
    /// Applied per output channel.
    act: ChannelActivation<'a>,
    p: &'a Conv2dParams,
}

impl Layer<'_> {
    /// Filters `ocs` over the quantized pixels `q` of `block`: `out[i]` receives filter
    /// `ocs.start + i` at those pixels (its element 0 is pixel `first`), with the image's
    /// `residual` added if given. `work` holds the panel's multipliers, offsets and accumulators.
    #[allow(clippy::too_many_arguments)]
    fn multiply(
        &self,
        q: &[u8],
        block: Quantized,
        residual: Option<Residual<'_>>,
        ocs: Range<usize>,
        first: usize,
        out: &mut [&mut [f32]],
        work: &mut [f32],
    ) {
        let plane = self.p.out_h * self.p.out_w;
        let s = block.start;
        let n = block.n;
        if let Some((fused, leaky)) = self.fused_gemm() {
            let run = (0, block.n, block.start - first, block.start);
            return self.fused_runs(fused, &leaky, q, block, std::iter::once(run), residual, ocs, out, work);
        }
        self.panels(q, block, ocs.clone(), work, |f, arow, bias| {
            let res = residual.and_then(|r| r.plane(f, plane)).map(|r| &r[s..s + n]);
            let dst = &mut out[f - ocs.start][s - first..][..n];
            (self.isa.store_rows)(self.act.of(f), arow, n, bias, res, dst, n);
        });
    }

    /// The path's fused int8 GEMM, if it has one and its tile applies this layer's activation,
    /// with the slopes of a LeakyRelu repeated per panel row (what the tile reads for it).
    fn fused_gemm(&self) -> Option<(Int8GemmFusedFn, [f32; PANEL])> {
        let leaky = match self.act.same() {
            Some(Activation::LeakyRelu(alpha)) => [alpha; PANEL],
            _ => [0.0; PANEL],
        };
        let fused = self.int8.gemm_fused?;
        fused_activation(self.act, 0, &leaky).map(|_| (fused, leaky))
    }

    /// Filters `ocs` over runs of the quantized pixels `q` of `block` through the path's fused
    /// int8 GEMM (`fused`), for an activation the fused tile applies: each panel's outputs written
    /// once, from the registers. A run `(at, n, col, pixel)` is `n` pixels from pixel `at` of the
    /// block (viewed with the block's group pitch: the caller's buffer holds whole groups past it),
    /// stored from column `col` of `out[i]` (filter `ocs.start + i`), and from plane pixel `pixel`
    /// of the image's residual.
    #[allow(clippy::too_many_arguments)]
    fn fused_runs(
        &self,
        fused: Int8GemmFusedFn,
        leaky: &[f32; PANEL],
        q: &[u8],
        block: Quantized,
        runs: impl Iterator<Item = (usize, usize, usize, usize)> + Clone,
        residual: Option<Residual<'_>>,
        ocs: Range<usize>,
        out: &mut [&mut [f32]],
        work: &mut [f32],
    ) {
        let (kq, plane) = (depth(self.p), self.p.out_h * self.p.out_w);
        let (mul, rest) = work.split_at_mut(PANEL);
        let add = &mut rest[..PANEL];
        for f0 in ocs.clone().step_by(PANEL) {
            let f1 = (f0 + PANEL).min(ocs.end);
            let m = f1 - f0;
            // Whether the tile applies an activation depends on its kind alone (the caller
            // checked it), not on the filters.
            let Some(act) = fused_activation(self.act, f0, leaky) else {
                unreachable!("checked by the caller")
            };
            self.panel_scales(f0..f1, block, mul, add);
            let w = &self.filters.filters[f0 * kq..f1 * kq];
            for (at, n, col, pixel) in runs.clone() {
                let residual = residual.filter(|r| r.channels > f0).map(|r| ResidualRows {
                    data: &r.data[f0 * plane + pixel..],
                    pitch: plane,
                    rows: (r.channels - f0).min(m),
                });
                let bias = self.bias.map(|b| &b[f0..f1]);
                let dst = &mut out[f0 - ocs.start..f1 - ocs.start];
                let rows = FusedRows { dst, col, bias, residual, act };
                let xq = &q[at * 4..][..kq * block.ldx];
                fused(w, kq, xq, block.ldx, n, &mul[..m], &add[..m], rows);
            }
        }
    }

    /// Filters `fs`' factors and offsets over `block` (`mul[i] * s + add[i]` turns filter
    /// `fs.start + i`'s exact sum `s` back into f32).
    fn panel_scales(&self, fs: Range<usize>, block: Quantized, mul: &mut [f32], add: &mut [f32]) {
        let Int8Filters { scales, sums, .. } = self.filters;
        for ((m, a), (&scale, &sum)) in
            mul.iter_mut().zip(add.iter_mut()).zip(scales[fs.clone()].iter().zip(&sums[fs]))
        {
            (*m, *a) = (scale * block.step, scale * block.lo * sum);
        }
    }

    /// Filters `ocs`, a panel at a time, over the quantized pixels `q` of `block`: the GEMM into
    /// `work`'s accumulators, then `store(f, sums of filter f, its bias)` for each filter.
    fn panels(
        &self,
        q: &[u8],
        block: Quantized,
        ocs: Range<usize>,
        work: &mut [f32],
        mut store: impl FnMut(usize, &[f32], f32),
    ) {
        let kq = depth(self.p);
        let filters = &self.filters.filters;
        let Quantized { n, ldx, .. } = block;
        let (mul, rest) = work.split_at_mut(PANEL);
        let (add, acc) = rest.split_at_mut(PANEL);
        for f0 in ocs.clone().step_by(PANEL) {
            let f1 = (f0 + PANEL).min(ocs.end);
            self.panel_scales(f0..f1, block, mul, add);
            let acc = &mut acc[..(f1 - f0) * n];
            (self.int8.gemm)(&filters[f0 * kq..f1 * kq], kq, q, ldx, n, mul, add, acc, n);
            for (f, arow) in (f0..f1).zip(acc.chunks_exact(n)) {
                store(f, arow, self.bias.map_or(0.0, |b| b[f]));
            }
        }
    }
}

impl Layer<'_> {
    /// A layer that is not 1×1, split over threads by output rows. The activations' range is
    /// taken over each whole input image, with zero snapped to a level ([`U8Range::with_zero`])
    /// so that the planes' zero padding stays exactly zero, and does not depend on the split.
    fn shifted(
        &self,
        kernels: &Kernels,
        x: &[f32],
        residual: Option<(&[f32], usize)>,
        y: &mut [f32],
        scratch: &mut [f32],
        per_task: usize,
    ) {
        let p = self.p;
        let (in_plane, out_plane) = (p.in_h * p.in_w, p.out_h * p.out_w);
        let shifted = Shifted::new(p);
        with_offsets(
            |offs| shifted.slab.push_offsets(p, offs),
            |offsets| {
                for (b, yb) in y.chunks_exact_mut(p.out_c * out_plane).enumerate() {
                    let xb = &x[b * p.in_c * in_plane..][..p.in_c * in_plane];
                    let rb = residual.map(|(r, rc)| Residual {
                        data: &r[b * rc * out_plane..][..rc * out_plane],
                        channels: rc,
                    });
                    let [lo, hi] = (self.int8.min_max)(xb, &[0], xb.len());
                    let range = U8Range::with_zero(lo, hi);
                    split_output_rows(kernels, p, 1, 1, yb, scratch, per_task, |rows, out, s| {
                        self.shifted_rows(&shifted, offsets, xb, range, rb, rows, out, s)
                    });
                }
            },
        )
    }

    /// Output rows `rows` of image `xb` into `out[f]` (those rows of filter `f`), slab by slab:
    /// each block of output rows is quantized once, then every panel of filters multiplies it.
    #[allow(clippy::too_many_arguments)]
    fn shifted_rows(
        &self,
        shifted: &Shifted,
        offsets: &[usize],
        xb: &[f32],
        range: U8Range,
        residual: Option<Residual<'_>>,
        rows: Range<usize>,
        out: &mut [&mut [f32]],
        scratch: &mut [f32],
    ) {
        let p = self.p;
        let slab = &shifted.slab;
        let out_plane = p.out_h * p.out_w;
        let (planes, rest) = scratch.split_at_mut(p.in_c * slab.len());
        let (q, work) = rest.split_at_mut(shifted.quantized_len(p));
        let q: &mut [u8] = bytemuck::cast_slice_mut(q);
        let fused = self.fused_gemm().filter(|_| p.out_w >= FUSED_ROW_MIN);
        let mut oy0 = rows.start;
        while oy0 < rows.end {
            let slab_rows = slab.rows.min(rows.end - oy0);
            // Zeros only where this fill leaves padding rows (see `Layer::shifted`).
            let zero = oy0 == rows.start || !slab.rows_inside(p, oy0);
            slab.fill(&self.isa, p, xb, oy0, planes, zero);
            let mut s0 = 0;
            while s0 < slab_rows {
                let sr = shifted.rows.min(slab_rows - s0);
                // Whole padded rows, except that the last stops at the last real column.
                let n = (sr - 1) * slab.wq + p.out_w;
                let ldx = n.next_multiple_of(INT8_PIXEL_ALIGN);
                (self.int8.quantize)(&planes[s0 * slab.wq..], offsets, n, range, q, ldx);
                let first_row = oy0 - rows.start + s0;
                let start = (rows.start + first_row) * p.out_w;
                let block = Quantized { start, n, ldx, lo: range.lo, step: range.step() };
                if let Some((fused, leaky)) = fused {
                    // One output row at a time: the padded columns between rows are not
                    // computed, and each row's view of the block starts at its first pixel (the
                    // scratch holds a block's pixels more, so every view has whole groups).
                    let runs = (0..sr).map(|r| {
                        let row = first_row + r;
                        (r * slab.wq, p.out_w, row * p.out_w, (rows.start + row) * p.out_w)
                    });
                    self.fused_runs(fused, &leaky, q, block, runs, residual, 0..p.out_c, out, work);
                    s0 += sr;
                    continue;
                }
                self.panels(q, block, 0..p.out_c, work, |f, arow, bias| {
                    let dst = &mut out[f][first_row * p.out_w..][..sr * p.out_w];
                    let res =
                        residual.and_then(|r| r.plane(f, out_plane)).map(|r| &r[start..][..sr * p.out_w]);
                    (self.isa.store_rows)(self.act.of(f), arow, slab.wq, bias, res, dst, p.out_w);
                });
                s0 += sr;
            }
            oy0 += slab_rows;
        }
    }
}

/// Fewest output columns for which the shifted int8 path runs its GEMM row by row through the
/// fused epilogue (narrower rows would leave most lanes of their one vector idle; they take the
/// whole block at once and the epilogue pass).
const FUSED_ROW_MIN: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{decode_all, pointwise, random_weight, Rng, WeightKind};
    use crate::Activation;
    use pith_format::ir::CodebookKind;

    /// Every path with int8 convolutions, at 1, 2 and 3 threads, splitting even small layers.
    fn int8_sets() -> Vec<Kernels> {
        let mut sets = Vec::new();
        for isa in Isa::available().into_iter().filter(|i| i.int8.is_some_and(|k| k.conv.is_some())) {
            for threads in 1..=3 {
                let mut k = Kernels::with_isa(isa, threads).unwrap().with_int8_activations(true).unwrap();
                k.min_task_work = 1;
                sets.push(k);
            }
        }
        sets
    }

    /// Runs layer `p` again with `residual` added and a fused ReLU6, on top of the sums `y` it
    /// gave without them, checks the result against `clamp(y + residual, 0, 6)` and returns it.
    #[allow(clippy::too_many_arguments)]
    fn check_residual_relu6(
        kernels: &Kernels,
        p: &Conv2dParams,
        filters: &Int8Filters,
        x: &[f32],
        bias: &[f32],
        residual: &[f32],
        y: &[f32],
        scratch: &mut [f32],
    ) -> Vec<f32> {
        let mut z = vec![f32::NAN; y.len()];
        let act = Activation::Clip { min: 0.0, max: 6.0 };
        kernels.conv2d_int8(x, filters, Some(bias), Some(residual), p, act, &mut z, scratch).unwrap();
        for (i, ((zv, yv), r)) in z.iter().zip(y).zip(residual).enumerate() {
            let expect = (yv + r).clamp(0.0, 6.0);
            assert!(
                (zv - expect).abs() <= 1e-5 * (1.0 + expect.abs()),
                "{kernels:?} {p:?} at {i}: {zv} vs {expect}"
            );
        }
        z
    }

    /// The exact f32 result and, per output, how far 8-bit activations (half a step of the
    /// pixel's block range) and 8-bit filters (half a step of the filter's largest weight) may
    /// move it.
    fn reference_and_bound(x: &[f32], w: &[f32], bias: &[f32], p: &Conv2dParams) -> (Vec<f32>, Vec<f32>) {
        let (k, plane) = (p.in_c, p.out_h * p.out_w);
        let (mut want, mut bound) = (Vec::new(), Vec::new());
        for b in 0..p.batch {
            let xb = &x[b * k * plane..][..k * plane];
            // Each block's quantization step.
            let steps: Vec<f32> = (0..plane.div_ceil(BLOCK))
                .map(|i| {
                    let b0 = i * BLOCK;
                    let block = (0..k).flat_map(|c| &xb[c * plane + b0..][..BLOCK.min(plane - b0)]);
                    let (lo, hi) = block.fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
                    (hi - lo) / 255.0
                })
                .collect();
            for (oc, wrow) in w.chunks_exact(k).enumerate() {
                let sw = wrow.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                for j in 0..plane {
                    let step = steps[j / BLOCK];
                    let (mut s, mut e) = (bias[oc], 0.0);
                    for (c, &wv) in wrow.iter().enumerate() {
                        let xv = xb[c * plane + j];
                        s += wv * xv;
                        e += (wv.abs() + sw / 2.0) * step / 2.0 + xv.abs() * sw / 2.0;
                    }
                    want.push(s);
                    bound.push(e * 1.001 + 1e-4 * (1.0 + s.abs()));
                }
            }
        }
        (want, bound)
    }

    /// Runs layer `p` on `filters` under every int8 kernel set and checks each output against
    /// `want` within `bound`, and that every thread count gives the bits of 1 thread (the sets
    /// come path by path, 1 thread first); then `extra(kernels, output, scratch)`.
    #[allow(clippy::too_many_arguments)]
    fn check_every_set(
        p: &Conv2dParams,
        filters: &Int8Filters,
        x: &[f32],
        bias: &[f32],
        want: &[f32],
        bound: &[f32],
        mut extra: impl FnMut(&Kernels, &[f32], &mut [f32]),
    ) {
        let mut one_thread = Vec::new();
        // The input against a no-access page (see `testutil::Guarded`).
        let guarded = crate::testutil::Guarded::new(x, crate::testutil::Edge::End);
        let x = guarded.as_slice();
        for kernels in int8_sets() {
            assert!(applies(&kernels, p), "{kernels:?} {p:?}");
            let mut y = vec![f32::NAN; want.len()];
            let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(p)];
            let none = Activation::None;
            kernels.conv2d_int8(x, filters, Some(bias), None, p, none, &mut y, &mut scratch).unwrap();
            for (i, ((g, w), e)) in y.iter().zip(want).zip(bound).enumerate() {
                assert!((g - w).abs() <= *e, "{kernels:?} {p:?} at {i}: {g} vs {w} (bound {e})");
            }
            if kernels.threads() == 1 {
                one_thread = y.clone();
            } else {
                assert_eq!(y, one_thread, "{kernels:?} {p:?}");
            }
            extra(&kernels, &y, &mut scratch);
        }
    }

    #[test]
    fn int8_pointwise_stays_within_the_quantization_bound_and_is_thread_independent() {
        let mut rng = Rng::new(5);
        let kinds = [
            WeightKind::F32,
            WeightKind::Codebook(4, CodebookKind::SharedScaled, true),
            WeightKind::Codebook(3, CodebookKind::PerRow, false),
        ];
        // Planes across block boundaries (256 pixels) and thread splits, odd channel counts.
        let shapes = [
            (1, 3, 5, [1, 2]),
            (2, 17, 9, [23, 37]),
            (1, 70, 50, [16, 40]),
            (1, 8, 97, [9, 9]),
            (1, 33, 7, [40, 17]),
            // An expansion over several blocks: split by filters, its blocks quantized in parallel.
            (2, 6, 20, [30, 23]),
            // Fewer blocks than threads: each block's channel groups (the last one partial)
            // quantized in parallel; two blocks at 3 threads.
            (1, 37, 11, [7, 7]),
            (1, 21, 6, [16, 20]),
        ];
        for (case, &(batch, in_c, out_c, hw)) in shapes.iter().enumerate() {
            let p = pointwise(batch, in_c, out_c, hw);
            let kind = kinds[case % kinds.len()];
            let data = random_weight(&mut rng, kind, p.out_c, p.filter_len());
            let w = decode_all(&data, p.out_c);
            let x: Vec<f32> =
                rng.vec(p.batch * p.in_c * hw[0] * hw[1]).iter().map(|v| v * 2.0 + 0.7).collect();
            let bias = rng.vec(p.out_c);
            let residual = rng.vec(x.len() / in_c * out_c);
            let (want, bound) = reference_and_bound(&x, &w, &bias, &p);
            let filters = Int8Filters::new(&data.view(), p.out_c, p.in_c).unwrap();
            check_every_set(&p, &filters, &x, &bias, &want, &bound, |kernels, y, scratch| {
                let mut z = check_residual_relu6(kernels, &p, &filters, &x, &bias, &residual, y, scratch);
                // A PRelu slope per channel on the same sums: the same bits as applying it after.
                let slopes: Vec<f32> = (0..p.out_c).map(|c| c as f32 / 4.0 - 1.0).collect();
                let act = ChannelActivation::PRelu(&slopes);
                kernels.conv2d_int8(&x, &filters, Some(&bias), None, &p, act, &mut z, scratch).unwrap();
                let plane = p.out_h * p.out_w;
                for (i, (zv, yv)) in z.iter().zip(y).enumerate() {
                    let expect = Activation::LeakyRelu(slopes[i / plane % p.out_c]).apply(*yv);
                    assert_eq!(zv.to_bits(), expect.to_bits(), "{kernels:?} PRelu at {i}: {zv} vs {expect}");
                }
            });
        }
    }

    #[test]
    fn int8_activations_need_a_path_with_int8_kernels() {
        for isa in Isa::available() {
            let k = Kernels::with_isa(isa, 1).unwrap().with_int8_activations(true);
            match isa.int8 {
                Some(int8) => {
                    let k = k.unwrap();
                    assert!(k.int8_activations());
                    // A path with only the int8 GEMV (AVX2) keeps its convolutions f32.
                    assert_eq!(applies(&k, &pointwise(1, 4, 4, [8, 8])), int8.conv.is_some(), "{}", isa.name);
                }
                None => assert!(k.unwrap_err().to_string().contains("int8 dot-product"), "{}", isa.name),
            }
        }
        // Off is always fine, and a depthwise layer never takes the int8 path.
        let k = Kernels::with_isa(Isa::scalar(), 1).unwrap().with_int8_activations(true).unwrap();
        let dw = Conv2dParams { groups: 4, in_c: 4, out_c: 4, ..pointwise(1, 4, 4, [8, 8]) };
        assert!(!applies(&k, &dw) && applies(&k, &pointwise(1, 4, 4, [8, 8])));
        assert!(!applies(&k.with_int8_activations(false).unwrap(), &pointwise(1, 4, 4, [8, 8])));
    }

    /// A plain convolution on fully decoded weights, and per output how far int8 activations
    /// (one range per image, zero on a level: up to a whole step off at the top of the range)
    /// and s8 filters may move it.
    fn general_reference(x: &[f32], w: &[f32], bias: &[f32], p: &Conv2dParams) -> (Vec<f32>, Vec<f32>) {
        let (in_plane, k_len) = (p.in_h * p.in_w, p.filter_len());
        let (mut want, mut bound) = (Vec::new(), Vec::new());
        for b in 0..p.batch {
            let xb = &x[b * p.in_c * in_plane..][..p.in_c * in_plane];
            let (lo, hi) = xb.iter().fold((0.0f32, 0.0f32), |(l, h), &v| (l.min(v), h.max(v)));
            let step = (hi - lo) / 255.0;
            for (oc, wrow) in w.chunks_exact(k_len).enumerate() {
                let sw = wrow.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                for oy in 0..p.out_h {
                    for ox in 0..p.out_w {
                        let (mut s, mut e) = (bias[oc], 0.0);
                        for c in 0..p.in_c {
                            for ky in 0..p.k_h {
                                for kx in 0..p.k_w {
                                    let wv = wrow[(c * p.k_h + ky) * p.k_w + kx];
                                    let iy = (oy * p.stride_h + ky * p.dil_h) as isize - p.pad_top as isize;
                                    let ix = (ox * p.stride_w + kx * p.dil_w) as isize - p.pad_left as isize;
                                    let inside = (0..p.in_h as isize).contains(&iy)
                                        && (0..p.in_w as isize).contains(&ix);
                                    let xv = if inside {
                                        xb[c * in_plane + iy as usize * p.in_w + ix as usize]
                                    } else {
                                        0.0
                                    };
                                    s += wv * xv;
                                    // Padding is exactly zero; real inputs are off by up to a step.
                                    let dx = if inside { step } else { 0.0 };
                                    e += (wv.abs() + sw / 2.0) * dx + xv.abs() * sw / 2.0;
                                }
                            }
                        }
                        want.push(s);
                        bound.push(e * 1.001 + 1e-4 * (1.0 + s.abs()));
                    }
                }
            }
        }
        (want, bound)
    }

    #[test]
    fn int8_general_convolutions_stay_within_the_quantization_bound_and_keep_padding_zero() {
        let mut rng = Rng::new(8);
        // (batch, in_c, out_c, in [h, w], kernel [h, w], stride, pad [top, left, bottom, right], dilation)
        let shapes = [
            (1, 3, 24, [17, 19], [5, 5], 2, [1, 1, 2, 2], 1),
            (2, 3, 16, [30, 23], [3, 3], 2, [1, 1, 1, 1], 1),
            (1, 5, 7, [9, 40], [3, 3], 1, [1, 1, 1, 1], 1),
            (1, 6, 50, [12, 11], [1, 3], 1, [0, 2, 0, 2], 2),
            (1, 9, 5, [64, 8], [2, 2], 1, [0, 0, 0, 0], 1),
            // Planes over several slabs (the last one's bottom padding must not keep stale rows).
            (1, 32, 4, [150, 60], [3, 3], 1, [1, 1, 1, 1], 1),
        ];
        for (case, &(batch, in_c, out_c, [h, w], [kh, kw], s, [pt, pl, pb, pr], d)) in
            shapes.iter().enumerate()
        {
            let out = |i: usize, k: usize, a: usize, b: usize| (i + a + b - d * (k - 1) - 1) / s + 1;
            let p = Conv2dParams {
                batch,
                in_c,
                in_h: h,
                in_w: w,
                out_c,
                out_h: out(h, kh, pt, pb),
                out_w: out(w, kw, pl, pr),
                k_h: kh,
                k_w: kw,
                stride_h: s,
                stride_w: s,
                pad_top: pt,
                pad_left: pl,
                dil_h: d,
                dil_w: d,
                groups: 1,
            };
            let kind =
                [WeightKind::F32, WeightKind::Codebook(4, CodebookKind::SharedScaled, false)][case % 2];
            let data = random_weight(&mut rng, kind, p.out_c, p.filter_len());
            let wf = decode_all(&data, p.out_c);
            // Inputs in [1, 2]: the range must be widened to hold the padding's zero, exactly.
            let x: Vec<f32> = rng.vec(batch * in_c * h * w).iter().map(|v| v * 0.5 + 1.5).collect();
            let bias = rng.vec(out_c);
            let (want, bound) = general_reference(&x, &wf, &bias, &p);
            let filters = Int8Filters::new(&data.view(), p.out_c, p.filter_len()).unwrap();
            let residual = rng.vec(want.len());
            // With a residual and a fused ReLU6 too (row by row through the fused epilogue for
            // outputs of 16 columns or more).
            check_every_set(&p, &filters, &x, &bias, &want, &bound, |kernels, y, scratch| {
                check_residual_relu6(kernels, &p, &filters, &x, &bias, &residual, y, scratch);
            });
        }
        // 3x3 stride-1 layers with enough channels keep Winograd.
        let k = Kernels::with_isa(Isa::scalar(), 1).unwrap().with_int8_activations(true).unwrap();
        let winograd =
            Conv2dParams { k_h: 3, k_w: 3, pad_top: 1, pad_left: 1, ..pointwise(1, 16, 8, [8, 8]) };
        assert!(!applies(&k, &winograd));
    }
}
