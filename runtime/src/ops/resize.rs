//! ONNX `Resize` (opset 10+): `nearest` over any axes, `linear` over the last two axes.
//! Output sizes must be known at plan time (constant or plan-time `scales` / `sizes`).

use pith_format::ir::{ElemType, Node};

use super::{attrs, Arg, ExecCtx, NodeLayouts, Op, OpResult, Out, Prepared};
use crate::op_bail;

/// Interpolation mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Nearest(Rounding),
    Linear,
}

/// `nearest_mode`: how a fractional source coordinate picks a pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rounding {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

/// `coordinate_transformation_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coord {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
}

/// ONNX `Resize`.
#[derive(Debug)]
struct Resize {
    mode: Mode,
    coord: Coord,
}

/// Builds the op for a `Resize` node.
pub fn build(node: &Node) -> OpResult<Box<dyn Op>> {
    Ok(Box::new(parse(node)?))
}

/// Input of an addend that a fused `Add` hands the resize (after roi, scales and sizes; see
/// [`crate::fuse::fuse_binary_addends`]): the output is the resized input plus the addend,
/// broadcast as `Add` would; an addend of the resized shape is added as linear mode blends each
/// output row (nearest mode: in one pass after its gather).
pub(crate) const ADDEND_INPUT: usize = 4;

/// Whether `Resize` node `node` can take a fused addend ([`ADDEND_INPUT`]): the opset 11+ form
/// (opset 10's `(X, scales)` has no room before it), a mode this op runs.
pub(crate) fn takes_addend(node: &Node) -> bool {
    node.op == pith_format::ir::OpKind::Resize
        && (3..=ADDEND_INPUT).contains(&node.inputs.len())
        && parse(node).is_ok()
}

/// The fused addend, if any.
fn addend<'a, 'b>(inputs: &'b [Option<Arg<'a>>]) -> Option<&'b Arg<'a>> {
    inputs.get(ADDEND_INPUT).and_then(Option::as_ref)
}

/// Whether `Resize` node `node`, at whole-number scales `f`, repeats each input element `f` times
/// along each axis (`out[o] = in[o / f]`): nearest with `asymmetric` coordinates and `floor`, or
/// with `half_pixel` (or `pytorch_half_pixel`) coordinates and either rounding to nearest (source
/// `o / f + (1 / f - 1) / 2` lies within half a pixel of `o / f` rounded down, never on a tie).
/// Such a node can be folded into an element-wise op that reads its input instead (see
/// [`crate::fuse::fuse_binary_addends`]).
pub(crate) fn repeats_at_whole_scales(node: &Node) -> bool {
    let Ok(op) = parse(node) else { return false };
    matches!(
        (op.mode, op.coord),
        (Mode::Nearest(Rounding::Floor), Coord::Asymmetric)
            | (
                Mode::Nearest(Rounding::RoundPreferFloor | Rounding::RoundPreferCeil),
                Coord::HalfPixel | Coord::PytorchHalfPixel
            )
    )
}

/// The `Resize` a node describes.
fn parse(node: &Node) -> OpResult<Resize> {
    let rounding = match attrs::string(node, "nearest_mode", "round_prefer_floor")?.as_str() {
        "round_prefer_floor" => Rounding::RoundPreferFloor,
        "round_prefer_ceil" => Rounding::RoundPreferCeil,
        "floor" => Rounding::Floor,
        "ceil" => Rounding::Ceil,
        other => op_bail!("unknown nearest_mode '{other}'"),
    };
    let mode = match attrs::string(node, "mode", "nearest")?.as_str() {
        "nearest" => Mode::Nearest(rounding),
        "linear" => Mode::Linear,
        "cubic" => op_bail!("mode 'cubic' is not supported (only nearest and linear)"),
        other => op_bail!("unknown mode '{other}'"),
    };
    let coord = match attrs::string(node, "coordinate_transformation_mode", "half_pixel")?.as_str() {
        "half_pixel" => Coord::HalfPixel,
        "half_pixel_symmetric" => Coord::HalfPixelSymmetric,
        "pytorch_half_pixel" => Coord::PytorchHalfPixel,
        "align_corners" => Coord::AlignCorners,
        "asymmetric" => Coord::Asymmetric,
        "tf_half_pixel_for_nn" => Coord::TfHalfPixelForNn,
        "tf_crop_and_resize" => {
            op_bail!("coordinate_transformation_mode 'tf_crop_and_resize' is not supported")
        }
        other => op_bail!("unknown coordinate_transformation_mode '{other}'"),
    };
    if attrs::int(node, "antialias", 0)? != 0 {
        op_bail!("antialias is not supported");
    }
    if node.attr("axes").is_some() {
        op_bail!("attribute 'axes' is not supported");
    }
    if attrs::string(node, "keep_aspect_ratio_policy", "stretch")? != "stretch" {
        op_bail!("keep_aspect_ratio_policy other than 'stretch' is not supported");
    }
    Ok(Resize { mode, coord })
}

/// Optional input `i` if present and non-empty.
fn optional<'a, 'b>(inputs: &'b [Option<Arg<'a>>], i: usize) -> Option<&'b Arg<'a>> {
    inputs.get(i).and_then(Option::as_ref).filter(|a| a.numel() > 0)
}

impl Resize {
    /// Output shape and per-axis scale (output / input as used by the coordinate transform).
    fn plan(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<(Vec<usize>, Vec<f32>)> {
        let Some(Some(x)) = inputs.first() else {
            op_bail!("missing input X");
        };
        let rank = x.shape.len();
        // Opset 10 has inputs (X, scales); opset 11+ has (X, roi, scales, sizes).
        let (scales, sizes) = if inputs.len() == 2 {
            (optional(inputs, 1), None)
        } else {
            (optional(inputs, 2), optional(inputs, 3))
        };
        let (out, scales) = match (scales, sizes) {
            (Some(_), Some(_)) => op_bail!("only one of scales and sizes may be given"),
            (None, None) => op_bail!("one of scales and sizes is required"),
            (Some(s), None) => {
                let s = s.f32s().map_err(|e| crate::error::OpError(format!("scales: {e}")))?;
                if s.len() != rank {
                    op_bail!("scales has {} values for rank {rank}", s.len());
                }
                if s.iter().any(|&v| !(v > 0.0 && v.is_finite())) {
                    op_bail!("scales must be positive, got {s:?}");
                }
                let out =
                    x.shape.iter().zip(s.iter()).map(|(&n, &f)| (n as f32 * f).floor() as usize).collect();
                (out, s.to_vec())
            }
            (None, Some(z)) => {
                let z = z.i64s().map_err(|e| crate::error::OpError(format!("sizes: {e}")))?;
                if z.len() != rank {
                    op_bail!("sizes has {} values for rank {rank}", z.len());
                }
                let out: Vec<usize> = z
                    .iter()
                    .map(|&v| {
                        usize::try_from(v).map_err(|_| crate::error::OpError(format!("negative size {v}")))
                    })
                    .collect::<OpResult<_>>()?;
                let scales = out
                    .iter()
                    .zip(x.shape)
                    .map(|(&o, &n)| if n == 0 { 1.0 } else { o as f32 / n as f32 })
                    .collect();
                (out, scales)
            }
        };
        if self.mode == Mode::Linear {
            let fixed = rank.saturating_sub(2);
            if out[..fixed] != x.shape[..fixed] {
                op_bail!("linear mode resizes only the last two axes, {:?} -> {out:?}", x.shape);
            }
        }
        Ok((out, scales))
    }

    /// Source coordinate of output position `o` along an axis of `n_in` -> `n_out` at `scale`.
    fn source(&self, o: usize, n_in: usize, n_out: usize, scale: f32) -> f32 {
        let x = o as f32;
        match self.coord {
            Coord::HalfPixel => (x + 0.5) / scale - 0.5,
            Coord::HalfPixelSymmetric => {
                let adjustment = n_out as f32 / (n_in as f32 * scale);
                let center = n_in as f32 / 2.0;
                center * (1.0 - adjustment) + (x + 0.5) / scale - 0.5
            }
            Coord::PytorchHalfPixel => {
                if n_out > 1 {
                    (x + 0.5) / scale - 0.5
                } else {
                    0.0
                }
            }
            Coord::AlignCorners => {
                if n_out > 1 {
                    x * (n_in as f32 - 1.0) / (n_out as f32 - 1.0)
                } else {
                    0.0
                }
            }
            Coord::Asymmetric => x / scale,
            Coord::TfHalfPixelForNn => (x + 0.5) / scale,
        }
    }
}

/// The nearest input index for source coordinate `c`, clamped to `0..n`.
fn nearest(c: f32, n: usize, r: Rounding) -> usize {
    let i = match r {
        Rounding::RoundPreferFloor if c.fract() == 0.5 => c.floor(),
        Rounding::RoundPreferCeil if c.fract() == 0.5 => c.ceil(),
        Rounding::RoundPreferFloor | Rounding::RoundPreferCeil => c.round(),
        Rounding::Floor => c.floor(),
        Rounding::Ceil => c.ceil(),
    };
    (i.max(0.0) as usize).min(n.saturating_sub(1))
}

/// Linear taps `(i0, i1, w1)` for source coordinate `c` over `n` samples: `(1 - w1) * x[i0] + w1 * x[i1]`.
fn linear_taps(c: f32, n: usize) -> (usize, usize, f32) {
    let c = c.clamp(0.0, n.saturating_sub(1) as f32);
    let i0 = (c as usize).min(n.saturating_sub(1));
    let i1 = (i0 + 1).min(n.saturating_sub(1));
    (i0, i1, if i0 == i1 { 0.0 } else { c - i0 as f32 })
}

/// One plane of a linear resize: every output row blends two input rows, each first
/// interpolated along x (`top`, `bottom`: one output row each, kept while the next output row
/// reads the same input rows), so the per-element gathers run once per input row rather than
/// twice per output row, and the vertical blend is a contiguous loop that vectorises. The same
/// operations in the same order as blending the four taps per output element.
/// `doubling`: `xs` are an exact 2x half-pixel upscale's taps ([`doubles_half_pixel`]).
#[allow(clippy::too_many_arguments)]
fn linear_plane<'a>(
    xp: &[f32],
    w: usize,
    ys: &[(usize, usize, f32)],
    xs: &[(usize, usize, f32)],
    doubling: bool,
    yp: &mut [f32],
    addend: Option<&[f32]>,
    mut top: &'a mut [f32],
    mut bottom: &'a mut [f32],
) {
    let ow = xs.len();
    let along_x = |row: usize, out: &mut [f32]| {
        let r = &xp[row * w..][..w];
        if doubling {
            // Taps (i, i + 1) at weights 0.25 and 0.75 for columns 2i + 1 and 2i + 2; the edge
            // columns hold their neighbour (a zero weight, as the general form computes them).
            out[0] = r[0] + (r[1] - r[0]) * 0.0;
            // The general form's `x + (x - x) * 0`: an infinite edge value stays NaN there too.
            #[allow(clippy::eq_op)]
            {
                out[ow - 1] = r[w - 1] + (r[w - 1] - r[w - 1]) * 0.0;
            }
            for (pair, ab) in out[1..ow - 1].chunks_exact_mut(2).zip(r.windows(2)) {
                let (a, d) = (ab[0], ab[1] - ab[0]);
                pair[0] = a + d * 0.25;
                pair[1] = a + d * 0.75;
            }
            return;
        }
        for (o, &(x0, x1, wx)) in out.iter_mut().zip(xs) {
            *o = r[x0] + (r[x1] - r[x0]) * wx;
        }
    };
    let mut held: [Option<usize>; 2] = [None, None];
    for (r, (yrow, &(y0, y1, wy))) in yp.chunks_exact_mut(ow).zip(ys).enumerate() {
        if held[0] != Some(y0) {
            if held[1] == Some(y0) {
                std::mem::swap(&mut top, &mut bottom);
                held = [held[1], held[0]];
            } else {
                along_x(y0, top);
                held[0] = Some(y0);
            }
        }
        if held[1] != Some(y1) {
            along_x(y1, bottom);
            held[1] = Some(y1);
        }
        match addend {
            // The blend first, then the addend: the unfused `Add`'s rounding.
            Some(a) => {
                let arow = &a[r * ow..][..ow];
                for (((o, &t), &b), &a) in yrow.iter_mut().zip(top.iter()).zip(bottom.iter()).zip(arow) {
                    *o = (t + (b - t) * wy) + a;
                }
            }
            None => {
                for ((o, &t), &b) in yrow.iter_mut().zip(top.iter()).zip(bottom.iter()) {
                    *o = t + (b - t) * wy;
                }
            }
        }
    }
}

/// Whether `xs` (over `w >= 2` input columns) are the taps of an exact 2x half-pixel upscale:
/// output column `2i + 1` reads `(i, i + 1)` at 0.25 and `2i + 2` at 0.75, the edge columns
/// clamp (weight 0).
fn doubles_half_pixel(xs: &[(usize, usize, f32)], w: usize) -> bool {
    w >= 2
        && xs.len() == 2 * w
        && xs[0] == (0, 1, 0.0)
        && xs[2 * w - 1] == (w - 1, w - 1, 0.0)
        && xs[1..2 * w - 1].iter().enumerate().all(|(j, &t)| t == (j / 2, j / 2 + 1, [0.25, 0.75][j % 2]))
}

impl Op for Resize {
    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        let resized = self.plan(inputs)?.0;
        Ok(vec![(ElemType::F32, self.output_shape(inputs, &resized)?)])
    }

    fn scratch_len(&self, inputs: &[Option<Arg<'_>>]) -> usize {
        let Ok((out, _)) = self.plan(inputs) else { return 0 };
        // Two rows of output width for the linear mode's interpolated input rows, where they do
        // not fit the stack of a split's parts (rows wider than `SPLIT_MAX_WIDTH`).
        let width = out.last().copied().unwrap_or(0);
        let rows = match self.mode {
            Mode::Linear if width > SPLIT_MAX_WIDTH => 2 * width,
            Mode::Linear | Mode::Nearest(_) => 0,
        };
        // An addend of another shape: the resized map first, then the broadcast sum.
        let staged = match addend(inputs) {
            Some(a) if a.shape != &out[..] => out.iter().product(),
            _ => 0,
        };
        rows + staged
    }

    /// The output shape and the interpolation tables, once per plan: a run then allocates
    /// nothing.
    fn prepare(
        &self,
        inputs: &[Option<Arg<'_>>],
        _ctx: &ExecCtx,
        _layouts: NodeLayouts,
    ) -> OpResult<Option<Prepared>> {
        Ok(Some(std::sync::Arc::new(self.tables(inputs)?)))
    }

    fn run_prepared(
        &self,
        prepared: &(dyn std::any::Any + Send + Sync),
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
        layouts: NodeLayouts,
    ) -> OpResult<()> {
        match prepared.downcast_ref::<Tables>() {
            // Made for an input of this shape (the scales and sizes are plan-time constants),
            // planar (a resize has no channel-blocked form: `run_laid_out` refuses one).
            Some(tables)
                if layouts.all_planar()
                    && inputs.first().and_then(Option::as_ref).is_some_and(|x| x.shape == tables.input) =>
            {
                self.run_with(tables, inputs, outputs, scratch, ctx)
            }
            _ => self.run_laid_out(inputs, outputs, scratch, ctx, layouts),
        }
    }

    fn run(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        self.run_with(&self.tables(inputs)?, inputs, outputs, scratch, ctx)
    }
}

/// What a resize of one input shape reads at every output position.
#[derive(Debug)]
struct Tables {
    /// The input shape they were made for.
    input: Vec<usize>,
    /// The resized shape (before a fused addend's broadcast).
    out: Vec<usize>,
    taps: Taps,
}

/// The interpolation taps of [`Tables`].
#[derive(Debug)]
enum Taps {
    /// Per axis: the input element offset of every output position.
    Nearest(Vec<Vec<usize>>),
    /// The two input rows (and columns) and the weight of the second for every output row (and
    /// column), and whether the columns are an exact half-pixel doubling.
    Linear { ys: Vec<(usize, usize, f32)>, xs: Vec<(usize, usize, f32)>, doubling: bool },
}

impl Resize {
    /// The tables for `inputs` (see [`Resize::plan`]).
    fn tables(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Tables> {
        let (out, scales) = self.plan(inputs)?;
        let Some(Some(x)) = inputs.first() else {
            op_bail!("missing input X");
        };
        let shape = x.shape;
        let taps = match self.mode {
            Mode::Nearest(r) => {
                let mut stride = 1;
                let mut offsets = vec![Vec::new(); shape.len()];
                for d in (0..shape.len()).rev() {
                    offsets[d] = (0..out[d])
                        .map(|o| nearest(self.source(o, shape[d], out[d], scales[d]), shape[d], r) * stride)
                        .collect();
                    stride *= shape[d];
                }
                Taps::Nearest(offsets)
            }
            Mode::Linear => {
                let rank = shape.len();
                let (h, w) = (if rank >= 2 { shape[rank - 2] } else { 1 }, shape[rank - 1]);
                let (oh, ow) = (if rank >= 2 { out[rank - 2] } else { 1 }, out[rank - 1]);
                let sh = if rank >= 2 { scales[rank - 2] } else { 1.0 };
                let sw = scales[rank - 1];
                let ys: Vec<_> = (0..oh).map(|o| linear_taps(self.source(o, h, oh, sh), h)).collect();
                let xs: Vec<_> = (0..ow).map(|o| linear_taps(self.source(o, w, ow, sw), w)).collect();
                let doubling = doubles_half_pixel(&xs, w);
                Taps::Linear { ys, xs, doubling }
            }
        };
        Ok(Tables { input: shape.to_vec(), out, taps })
    }

    /// The op's run on `tables`.
    fn run_with(
        &self,
        tables: &Tables,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        let out = &tables.out;
        let Some(Some(x_arg)) = inputs.first() else {
            op_bail!("missing input X");
        };
        let x = x_arg.f32s()?;
        let y = &mut *outputs[0].data;
        if y.is_empty() {
            return Ok(());
        }
        if x.is_empty() {
            op_bail!("cannot resize an empty input to a non-empty output");
        }
        let Some(a_arg) = addend(inputs) else {
            return resize(tables, &x, None, y, scratch, ctx);
        };
        let a = a_arg.f32s()?;
        if a_arg.shape == &out[..] {
            return resize(tables, &x, Some(&a), y, scratch, ctx);
        }
        let shape = self.output_shape(inputs, out)?;
        // An addend that broadcasts: resize into scratch, then add as `Add` would.
        let len: usize = out.iter().product();
        if scratch.len() < len {
            op_bail!("a broadcast addend needs {len} scratch elements, got {}", scratch.len());
        }
        let (resized, scratch) = scratch.split_at_mut(len);
        resize(tables, &x, None, resized, scratch, ctx)?;
        super::binary::zip_broadcast(resized, out, &a, a_arg.shape, &shape, y, |p, r| p + r);
        Ok(())
    }
}

impl Resize {
    /// The node's output shape: the resized one `out`, broadcast with a fused addend's.
    fn output_shape(&self, inputs: &[Option<Arg<'_>>], out: &[usize]) -> OpResult<Vec<usize>> {
        match addend(inputs) {
            Some(a) if a.elem != ElemType::F32 => op_bail!("a fused addend must be f32, not {:?}", a.elem),
            Some(a) => Ok(super::binary::broadcast_shapes(out, a.shape)?.to_vec()),
            None => Ok(out.to_vec()),
        }
    }
}

/// Resizes `x` (of `tables.input`'s shape) to `tables.out` into `y`, adding `addend` (of the
/// resized shape) if given.
fn resize(
    tables: &Tables,
    x: &[f32],
    addend: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut [f32],
    ctx: &ExecCtx,
) -> OpResult<()> {
    let shape = &tables.input;
    match &tables.taps {
        Taps::Nearest(offsets) => {
            gather(x, offsets, y, ctx);
            if let Some(a) = addend {
                y.iter_mut().zip(a).for_each(|(o, &a)| *o += a);
            }
        }
        &Taps::Linear { ref ys, ref xs, doubling } => {
            let rank = shape.len();
            let (h, w) = (if rank >= 2 { shape[rank - 2] } else { 1 }, shape[rank - 1]);
            let (oh, ow) = (ys.len(), xs.len());
            let plane = oh * ow;
            // Output planes from `start` (a multiple of `plane`) into `part`.
            let planes = |start: usize, part: &mut [f32], top: &mut [f32], bottom: &mut [f32]| {
                let first = start / plane;
                for (i, yp) in part.chunks_exact_mut(plane).enumerate() {
                    let xp = &x[(first + i) * h * w..][..h * w];
                    let a = addend.map(|a| &a[(first + i) * plane..][..plane]);
                    linear_plane(xp, w, ys, xs, doubling, yp, a, top, bottom);
                }
            };
            if ow <= SPLIT_MAX_WIDTH {
                // Split by planes, each part with its two rows on its stack.
                ctx.kernels.for_each_rows(y, plane, LINEAR_PARALLEL_MIN_ELEMENTS, |start, part| {
                    let mut rows = [0.0f32; 2 * SPLIT_MAX_WIDTH];
                    let (top, bottom) = rows[..2 * ow].split_at_mut(ow);
                    planes(start, part, top, bottom);
                });
            } else {
                if scratch.len() < 2 * ow {
                    op_bail!("linear resize needs {} scratch elements, got {}", 2 * ow, scratch.len());
                }
                let (top, bottom) = scratch[..2 * ow].split_at_mut(ow);
                planes(0, y, top, bottom);
            }
        }
    }
    Ok(())
}

/// Widest output rows a linear resize splits over the threads (each part keeps two such rows on
/// its stack); wider ones run on the caller with the op's scratch.
const SPLIT_MAX_WIDTH: usize = 512;

/// Fewest output elements per thread of a linear resize split over the threads (a part holds
/// at least this many). BlazeFace full range's three upsamplings (13,824, 36,864 and 110,592
/// elements) all gain at 2 threads on a 2-vCPU Zen 4: a serial one reads what both cores wrote.
/// Split, its feature-pyramid stage took 0.342 → 0.332 ms; at 8,192 per part the smallest one
/// still ran serial, 34 µs at 2 threads against 13.4 at 1 (`pith bench --profile`); at 4,096 it
/// splits (17 µs) and the model's 2-thread median fell in every rank of 8 alternating runs
/// (1.88-2.75 → 1.82-2.32 ms on a noisy host).
const LINEAR_PARALLEL_MIN_ELEMENTS: usize = 1 << 12;

/// `y[o] = x[sum_d offsets[d][o_d]]` over the output's multi-index, row-major, split over the
/// session's threads when large.
fn gather(x: &[f32], offsets: &[Vec<usize>], y: &mut [f32], ctx: &ExecCtx) {
    ctx.kernels
        .for_each_part(y, GATHER_PARALLEL_MIN_ELEMENTS, |start, part| gather_from(x, offsets, start, part));
}

/// Fewest output elements per thread of a nearest resize split over the threads: a copy, bound
/// by its stores, which the element-wise ops' limit
/// ([`super::binary::PARALLEL_MIN_ELEMENTS`]) left on the caller at PP-OCRv4 det's sizes. Its
/// three upsamplings into 24 × 80 × 160 at 320×640 took 0.193 ms per run at 2 threads on the
/// caller, 0.099 split (Emerald Rapids, `pith bench --profile`); the model at 2 threads 0.983 of
/// its time (median of 6 paired alternating runs, 0.927-1.004).
const GATHER_PARALLEL_MIN_ELEMENTS: usize = 1 << 14;

/// [`gather`] of output elements `start .. start + y.len()` into `y`.
fn gather_from(x: &[f32], offsets: &[Vec<usize>], start: usize, y: &mut [f32]) {
    let Some((inner, outer)) = offsets.split_last() else {
        if let Some(v) = y.first_mut() {
            *v = x[0];
        }
        return;
    };
    if inner.is_empty() || y.is_empty() {
        return;
    }
    // The odometer over the outer axes, positioned at the row holding `start`.
    let (mut row, mut col) = (start / inner.len(), start % inner.len());
    // On the stack for the usual ranks (a run then allocates nothing).
    let (mut inline, mut heap) = ([0usize; 8], Vec::new());
    let idx: &mut [usize] = match inline.get_mut(..outer.len()) {
        Some(idx) => idx,
        None => {
            heap.resize(outer.len(), 0);
            &mut heap
        }
    };
    for d in (0..outer.len()).rev() {
        idx[d] = row % outer[d].len();
        row /= outer[d].len();
    }
    let width = inner.len();
    // Inner offsets `j / f * step` (an integer upscale, as nearest 2x / 4x / 8x is): rows are
    // filled by runs of `f` copies.
    let repeat = repeat_factor(inner);
    // The input row of the previous whole output row gathered in this part, if any.
    let mut last_base = None;
    let mut pos = 0;
    while pos < y.len() {
        let n = (width - col).min(y.len() - pos);
        let base: usize = outer.iter().zip(&*idx).map(|(o, &i)| o[i]).sum();
        let whole = col == 0 && n == width;
        if whole && last_base == Some(base) {
            // Upscaled along an outer axis: the same input row again, already gathered.
            y.copy_within(pos - width..pos, pos);
        } else if let (true, Some((f, step))) = (whole, repeat) {
            let row = &mut y[pos..pos + n];
            let first = base + inner[0];
            match (f, step) {
                (2, 1) => repeat_each::<2>(&x[first..][..n / 2], row),
                (4, 1) => repeat_each::<4>(&x[first..][..n / 4], row),
                (8, 1) => repeat_each::<8>(&x[first..][..n / 8], row),
                _ => {
                    for (j, run) in row.chunks_mut(f).enumerate() {
                        run.fill(x[first + j * step]);
                    }
                }
            }
        } else {
            for (v, &off) in y[pos..pos + n].iter_mut().zip(&inner[col..]) {
                *v = x[base + off];
            }
        }
        last_base = whole.then_some(base);
        pos += n;
        col = 0;
        for d in (0..outer.len()).rev() {
            idx[d] += 1;
            if idx[d] < outer[d].len() {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// `row[j] = src[j / F]`: each source element repeated `F` times, with `F` known to the compiler,
/// which then vectorises the copies (nearest 2x / 4x / 8x upsampling of contiguous rows; with `F`
/// a run-time value each run was its own little fill loop).
fn repeat_each<const F: usize>(src: &[f32], row: &mut [f32]) {
    for (run, &v) in row.chunks_exact_mut(F).zip(src) {
        *run.first_chunk_mut::<F>().expect("chunks of F") = [v; F];
    }
}

/// `Some((f, step))` when `offsets[j] = offsets[0] + (j / f) * step` for every `j` (with `f > 1`,
/// and `f` dividing the length): each source element repeated `f` times.
fn repeat_factor(offsets: &[usize]) -> Option<(usize, usize)> {
    let f = offsets.iter().take_while(|&&o| o == offsets[0]).count();
    if f < 2 || !offsets.len().is_multiple_of(f) {
        return None;
    }
    // Increasing runs only (a step of 0 only when there is one run).
    let step = match offsets.get(f) {
        Some(&o) => o.checked_sub(offsets[0]).filter(|&s| s > 0)?,
        None => 0,
    };
    let fits = offsets
        .iter()
        .enumerate()
        .all(|(j, &o)| Some(o) == (j / f).checked_mul(step).and_then(|d| d.checked_add(offsets[0])));
    fits.then_some((f, step))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::testing::{act, assert_close, node, run, run_with};
    use crate::ops::ArgData;
    use crate::tensor::Tensor;
    use pith_format::ir::{Attr, OpKind};

    /// Any output range gathered alone equals the same elements of the whole gather.
    #[test]
    fn gather_ranges_match_the_whole() {
        let x: Vec<f32> = (0..3 * 5 * 7).map(|v| v as f32).collect();
        let offsets = vec![vec![0, 35, 70, 35], vec![0, 7, 7, 14, 28, 21], vec![0, 1, 1, 2, 3, 5, 6, 6, 4]];
        let n = 4 * 6 * 9;
        let mut whole = vec![0.0f32; n];
        gather_from(&x, &offsets, 0, &mut whole);
        assert_eq!(whole[9 + 3], x[7 + 2]); // (0, 1, 3): offsets 0 + 7 + 2
        for (start, len) in [(0, 1), (5, 13), (8, 9), (n / 3, n / 2), (n - 1, 1)] {
            let mut part = vec![0.0f32; len];
            gather_from(&x, &offsets, start, &mut part);
            assert_eq!(part, whole[start..start + len], "from {start}, {len} elements");
        }
    }

    /// Integer upscales (repeated runs, repeated rows) and other patterns give the element-wise
    /// gather's result, whole and in parts.
    #[test]
    fn whole_scale_repeats_are_recognised_by_their_modes() {
        let with = |ctm: &str, nearest: &str| {
            node(
                OpKind::Resize,
                3,
                vec![("coordinate_transformation_mode", s(ctm)), ("nearest_mode", s(nearest))],
            )
        };
        let cases = [
            ("asymmetric", "floor", true),
            ("half_pixel", "round_prefer_floor", true),
            ("half_pixel", "round_prefer_ceil", true),
            ("pytorch_half_pixel", "round_prefer_floor", true),
            ("asymmetric", "round_prefer_floor", false),
            ("half_pixel", "floor", false),
            ("align_corners", "round_prefer_floor", false),
            ("tf_half_pixel_for_nn", "round_prefer_floor", false),
        ];
        for (ctm, nearest_mode, repeats) in cases {
            let n = with(ctm, nearest_mode);
            assert_eq!(repeats_at_whole_scales(&n), repeats, "{ctm} {nearest_mode}");
            // What the op itself computes agrees wherever a repeat is claimed.
            let op = parse(&n).unwrap();
            let Mode::Nearest(r) = op.mode else { unreachable!() };
            let mut all = true;
            for (n_in, f) in [(1, 2), (5, 2), (8, 3), (7, 4), (3, 8), (6, 1)] {
                for o in 0..n_in * f {
                    let src = nearest(op.source(o, n_in, n_in * f, f as f32), n_in, r);
                    all &= src == o / f;
                }
            }
            assert!(all || !repeats, "{ctm} {nearest_mode}");
        }
        let linear = node(OpKind::Resize, 3, vec![("mode", s("linear"))]);
        assert!(!repeats_at_whole_scales(&linear));
    }

    #[test]
    fn upscale_fast_paths_match_the_plain_gather() {
        let x: Vec<f32> = (0..2 * 3 * 4).map(|v| v as f32).collect();
        let patterns: [Vec<Vec<usize>>; 7] = [
            // 2x along both inner axes of [2, 3, 4].
            vec![vec![0, 12], vec![0, 0, 4, 4, 8, 8], vec![0, 0, 1, 1, 2, 2, 3, 3]],
            // 4x and 8x along the last axis (with 2x the forms whose factor the compiler knows),
            // and 2x of every other column (the general form).
            vec![vec![0, 12], vec![0, 4, 8], (0..16).map(|j| j / 4).collect()],
            vec![vec![12], vec![0, 0, 4], (0..32).map(|j| j / 8).collect()],
            vec![vec![0, 12], vec![8, 4], vec![0, 0, 2, 2]],
            // 3x along the last axis only, rows not repeated.
            vec![vec![0, 12], vec![0, 4, 8], (0..12).map(|j| j / 3).collect()],
            // Repeated rows with a non-repeating (downscaling) inner pattern.
            vec![vec![12, 0], vec![4, 4, 4, 0], vec![3, 1, 0]],
            // A one-element inner axis repeated (every output row one value).
            vec![vec![0, 12], vec![0, 0, 8], vec![2, 2, 2, 2]],
        ];
        for offsets in patterns {
            let n: usize = offsets.iter().map(Vec::len).product();
            let mut want = vec![0.0f32; n];
            let mut o = vec![0usize; offsets.len()];
            for v in want.iter_mut() {
                *v = x[offsets.iter().zip(&o).map(|(d, &i)| d[i]).sum::<usize>()];
                for d in (0..o.len()).rev() {
                    o[d] += 1;
                    if o[d] < offsets[d].len() {
                        break;
                    }
                    o[d] = 0;
                }
            }
            for (start, len) in [(0, n), (0, 1), (3, n / 2), (n / 3, n - n / 3), (n - 1, 1)] {
                let mut part = vec![f32::NAN; len];
                gather_from(&x, &offsets, start, &mut part);
                assert_eq!(part, want[start..start + len], "{offsets:?} from {start}, {len} elements");
            }
        }
        assert_eq!(repeat_factor(&[5, 5, 6, 6]), Some((2, 1)));
        assert_eq!(repeat_factor(&[0, 0, 0, 4, 4, 4]), Some((3, 4)));
        assert_eq!(repeat_factor(&[0, 0, 1]), None);
        assert_eq!(repeat_factor(&[0, 1, 2]), None);
        assert_eq!(repeat_factor(&[1, 1, 0, 0]), None);
        assert_eq!(repeat_factor(&[2, 2]), Some((2, 0)));
    }

    #[test]
    fn linear_rows_blend_as_the_four_taps_do() {
        // Up (2x, 3x), down (0.4x) and uneven scales: the row-cached form gives the per-element
        // four-tap blend's bits.
        let taps = |n_in: usize, n_out: usize| -> Vec<(usize, usize, f32)> {
            let scale = n_out as f32 / n_in as f32;
            (0..n_out).map(|o| linear_taps((o as f32 + 0.5) / scale - 0.5, n_in)).collect()
        };
        assert!(doubles_half_pixel(&taps(7, 14), 7) && doubles_half_pixel(&taps(2, 4), 2));
        assert!(!doubles_half_pixel(&taps(7, 21), 7) && !doubles_half_pixel(&taps(1, 2), 1));
        for (h, w, oh, ow) in
            [(5, 7, 10, 14), (4, 2, 8, 4), (4, 3, 12, 9), (10, 10, 4, 4), (3, 8, 7, 5), (1, 1, 3, 2)]
        {
            let xp: Vec<f32> = (0..h * w).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.37).collect();
            let (ys, xs) = (taps(h, oh), taps(w, ow));
            let mut want = vec![0.0f32; oh * ow];
            for (yrow, &(y0, y1, wy)) in want.chunks_exact_mut(ow).zip(&ys) {
                let (r0, r1) = (&xp[y0 * w..][..w], &xp[y1 * w..][..w]);
                for (o, &(x0, x1, wx)) in yrow.iter_mut().zip(&xs) {
                    let top = r0[x0] + (r0[x1] - r0[x0]) * wx;
                    let bottom = r1[x0] + (r1[x1] - r1[x0]) * wx;
                    *o = top + (bottom - top) * wy;
                }
            }
            let mut got = vec![f32::NAN; oh * ow];
            let (mut top, mut bottom) = (vec![f32::NAN; ow], vec![f32::NAN; ow]);
            let doubling = doubles_half_pixel(&xs, w);
            linear_plane(&xp, w, &ys, &xs, doubling, &mut got, None, &mut top, &mut bottom);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{h}x{w} -> {oh}x{ow}");
        }
    }

    fn resize(
        attrs: Vec<(&str, Attr)>,
        shape: &[usize],
        scales: Option<&[f32]>,
        sizes: Option<&[i64]>,
    ) -> (Vec<usize>, Vec<f32>) {
        let x: Vec<f32> = (0..shape.iter().product::<usize>()).map(|v| v as f32).collect();
        let op = build(&node(OpKind::Resize, 4, attrs)).unwrap();
        let sizes_t = sizes.map(|s| Tensor::from_i64(vec![s.len()], s.to_vec()));
        let sizes_shape = [sizes.map_or(0, |s| s.len())];
        let scales_shape = [scales.map_or(0, |s| s.len())];
        let inputs = [
            act(shape, &x),
            None,
            scales.and_then(|s| act(&scales_shape, s)),
            sizes_t.as_ref().map(|t| Arg {
                shape: &sizes_shape,
                elem: ElemType::I64,
                data: Some(ArgData::Known(t)),
            }),
        ];
        let mut got = run(&*op, &inputs).unwrap();
        got.remove(0)
    }

    fn s(v: &str) -> Attr {
        Attr::Str(v.into())
    }

    // Expected values below were computed with onnxruntime for x = arange(numel).

    #[test]
    fn nearest_modes_match_onnxruntime() {
        let (shape, y) = resize(vec![], &[1, 1, 2, 2], Some(&[1.0, 1.0, 2.0, 3.0]), None);
        assert_eq!(shape, vec![1, 1, 4, 6]);
        assert_eq!(
            y,
            vec![
                0., 0., 0., 1., 1., 1., 0., 0., 0., 1., 1., 1., 2., 2., 2., 3., 3., 3., 2., 2., 2., 3., 3.,
                3.
            ]
        );
        let attrs = vec![("coordinate_transformation_mode", s("asymmetric")), ("nearest_mode", s("floor"))];
        let (_, y) = resize(attrs, &[1, 5], None, Some(&[1, 3]));
        assert_eq!(y, vec![0., 1., 3.]);
        let attrs = vec![
            ("coordinate_transformation_mode", s("align_corners")),
            ("nearest_mode", s("round_prefer_ceil")),
        ];
        let (_, y) = resize(attrs, &[1, 4], None, Some(&[1, 7]));
        assert_eq!(y, vec![0., 1., 1., 2., 2., 3., 3.]);
        let attrs =
            vec![("coordinate_transformation_mode", s("tf_half_pixel_for_nn")), ("nearest_mode", s("ceil"))];
        let (_, y) = resize(attrs, &[1, 4], None, Some(&[1, 3]));
        assert_eq!(y, vec![1., 2., 3.]);
        // Nearest may also resize leading axes.
        let (shape, y) = resize(vec![], &[2, 1, 1], Some(&[2.0, 1.0, 1.0]), None);
        assert_eq!((shape, y), (vec![4, 1, 1], vec![0., 0., 1., 1.]));
    }

    #[test]
    fn linear_modes_match_onnxruntime() {
        let attrs = vec![("mode", s("linear"))];
        let (shape, y) = resize(attrs, &[1, 1, 2, 2], Some(&[1.0, 1.0, 2.0, 2.0]), None);
        assert_eq!(shape, vec![1, 1, 4, 4]);
        assert_close(
            &y,
            &[0., 0.25, 0.75, 1., 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2., 2.25, 2.75, 3.],
        );
        let attrs = vec![("mode", s("linear")), ("coordinate_transformation_mode", s("align_corners"))];
        let (_, y) = resize(attrs, &[1, 1, 2, 3], None, Some(&[1, 1, 3, 5]));
        assert_close(&y, &[0., 0.5, 1., 1.5, 2., 1.5, 2., 2.5, 3., 3.5, 3., 3.5, 4., 4.5, 5.]);
        let attrs = vec![("mode", s("linear")), ("coordinate_transformation_mode", s("pytorch_half_pixel"))];
        let (_, y) = resize(attrs, &[1, 1, 3, 4], None, Some(&[1, 1, 1, 3]));
        assert_close(&y, &[0.16666669, 1.5, 2.8333333]);
        let attrs = vec![("mode", s("linear")), ("coordinate_transformation_mode", s("asymmetric"))];
        let (_, y) = resize(attrs, &[1, 5], Some(&[1.0, 0.6]), None);
        assert_close(&y, &[0., 1.6666666, 3.3333333]);
    }

    #[test]
    fn linear_planes_split_over_threads_give_the_one_thread_bits() {
        // Enough planes to split three ways (an uneven count of them), with a fused addend; then
        // rows wider than the split takes, which run on the caller with the op's scratch.
        let op = build(&node(OpKind::Resize, 5, vec![("mode", s("linear"))])).unwrap();
        for (shape, out) in [
            ([1, 37, 24, 24], [1usize, 37, 48, 48]),
            ([1, 3, 2, SPLIT_MAX_WIDTH / 2 + 1], [1, 3, 4, SPLIT_MAX_WIDTH + 2]),
        ] {
            let x: Vec<f32> =
                (0..shape.iter().product::<usize>()).map(|i| ((i * 37 % 101) as f32) * 0.13).collect();
            let a: Vec<f32> =
                (0..out.iter().product::<usize>()).map(|i| ((i * 11 % 29) as f32) - 14.0).collect();
            let sizes: Vec<i64> = out.iter().map(|&d| d as i64).collect();
            let sizes_t = Tensor::from_i64(vec![4], sizes);
            let inputs = [
                act(&shape, &x),
                None,
                None,
                Some(Arg { shape: &[4], elem: ElemType::I64, data: Some(ArgData::Known(&sizes_t)) }),
                act(&out, &a),
            ];
            let one = run(&*op, &inputs).unwrap().remove(0).1;
            assert!(
                out.iter().product::<usize>() >= 3 * LINEAR_PARALLEL_MIN_ELEMENTS || out[3] > SPLIT_MAX_WIDTH
            );
            let ctx = ExecCtx { kernels: pith_kernels::Kernels::new(3).unwrap() };
            let three = run_with(&*op, &inputs, &ctx).unwrap().remove(0).1;
            assert_eq!(
                one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                three.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{shape:?} -> {out:?}"
            );
            // The addend is in: the output is not the plain resize.
            let plain = run(&*op, &inputs[..4]).unwrap().remove(0).1;
            assert!(one.iter().zip(&plain).zip(&a).all(|((o, p), a)| o == &(p + a)));
        }
    }

    #[test]
    fn refuses_unsupported_or_unknowable_requests() {
        assert!(build(&node(OpKind::Resize, 3, vec![("mode", s("cubic"))])).unwrap_err().0.contains("cubic"));
        let op = build(&node(OpKind::Resize, 3, vec![("mode", s("linear"))])).unwrap();
        let x = [0.0; 8];
        let sc = [2.0f32, 1.0, 1.0];
        assert!(op.infer(&[act(&[2, 2, 2], &x), None, act(&[3], &sc)]).unwrap_err().0.contains("last two"));
        let unknown = Some(Arg { shape: &[3], elem: ElemType::F32, data: None });
        assert!(op.infer(&[act(&[2, 2, 2], &x), None, unknown]).is_err());
        assert!(op.infer(&[act(&[2, 2, 2], &x), None, None]).is_err());
    }
}
