//! ONNX `MaxPool`, `AveragePool` (1-D and 2-D, NCHW) and `GlobalAveragePool` (any rank).

use pith_format::ir::{ElemType, Node, OpKind};
use pith_kernels::blocked::BLOCK;
use pith_kernels::{Kernels, Layout};

use super::binary::SPLIT_MIN_ELEMENTS;
use super::conv::{Axis, Window};
use super::{attrs, Arg, BlockedUse, ExecCtx, NodeLayouts, Op, OpResult, Out, Prepared};
use crate::op_bail;

/// Pooling reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reduce {
    Max,
    /// Average; `include_pad` counts padded taps (inside the declared pads) in the divisor.
    Avg {
        include_pad: bool,
    },
}

/// A windowed pool.
#[derive(Debug)]
struct Pool {
    reduce: Reduce,
    window: Window,
    kernel: Vec<usize>,
    ceil_mode: bool,
}

/// `GlobalAveragePool`.
#[derive(Debug)]
struct GlobalAvg;

/// Builds the op for a `MaxPool`, `AveragePool` or `GlobalAveragePool` node.
pub fn build(node: &Node) -> OpResult<Box<dyn Op>> {
    let reduce = match node.op {
        OpKind::GlobalAveragePool => return Ok(Box::new(GlobalAvg)),
        OpKind::MaxPool => {
            if node.outputs.len() > 1 {
                op_bail!("the Indices output of MaxPool is not supported");
            }
            Reduce::Max
        }
        OpKind::AveragePool => Reduce::Avg { include_pad: attrs::int(node, "count_include_pad", 0)? != 0 },
        other => op_bail!("{} is not a pooling op", other.onnx_name()),
    };
    let window = Window::parse(node)?;
    let Some(kernel) = window.kernel_shape.clone() else {
        op_bail!("attribute 'kernel_shape' is required");
    };
    Ok(Box::new(Pool { reduce, window, kernel, ceil_mode: attrs::int(node, "ceil_mode", 0)? != 0 }))
}

fn first<'a, 'b>(inputs: &'b [Option<Arg<'a>>]) -> OpResult<&'b Arg<'a>> {
    match inputs.first() {
        Some(Some(x)) => Ok(x),
        _ => op_bail!("missing input X"),
    }
}

impl Pool {
    /// The two spatial axes (a unit H axis for 1-D input) and the output shape.
    fn geometry(&self, x: &[usize]) -> OpResult<([Axis; 2], Vec<usize>)> {
        if !(3..=4).contains(&x.len()) {
            op_bail!("only 1-D and 2-D pooling is supported, input has shape {x:?}");
        }
        let spatial = &x[2..];
        if self.kernel.len() != spatial.len() {
            op_bail!("kernel_shape has {} values for {} spatial axes", self.kernel.len(), spatial.len());
        }
        let axes = self.window.resolve(spatial, &self.kernel, self.ceil_mode)?;
        let mut shape = x[..2].to_vec();
        shape.extend(axes.iter().map(|a| a.out));
        let unit = Axis { kernel: 1, stride: 1, dil: 1, pad_begin: 0, pad_end: 0, out: 1 };
        let axes2 = if axes.len() == 2 { [axes[0], axes[1]] } else { [unit, axes[0]] };
        Ok((axes2, shape))
    }
}

/// Input positions of output `o`'s taps along axis `a` over `n` inputs: `(valid taps, taps
/// counted by include_pad)`. Public so gradients (the compressor's fine-tuning) use the same
/// windows.
pub fn taps(a: &Axis, n: usize, o: usize) -> (Vec<usize>, usize) {
    let mut valid = Vec::with_capacity(a.kernel);
    let mut padded = 0;
    for k in 0..a.kernel {
        let i = (o * a.stride + k * a.dil) as isize - a.pad_begin as isize;
        if i >= 0 && (i as usize) < n {
            valid.push(i as usize);
        }
        if i < (n + a.pad_end) as isize {
            padded += 1;
        }
    }
    (valid, padded)
}

/// Average pool of one `w`-wide input plane `xp` into `yp` (`rows` and `cols`: each output row's
/// and column's valid input taps and padded tap count, see [`taps`]). Each output row first sums
/// its valid input rows into `rowsum` (contiguous, vectorisable), then each output adds its
/// columns' taps from there: a 2×2, stride-2 pool over 32 planes of 96×96 took 0.36 ms summing
/// the four taps of every output through nested iterators.
fn avg_plane(
    xp: &[f32],
    w: usize,
    rows: &[(Vec<usize>, usize)],
    cols: &[(Vec<usize>, usize)],
    include_pad: bool,
    rowsum: &mut [f32],
    yp: &mut [f32],
) {
    for ((ry, py), yrow) in rows.iter().zip(yp.chunks_exact_mut(cols.len().max(1))) {
        rowsum.fill(0.0);
        for &iy in ry {
            rowsum.iter_mut().zip(&xp[iy * w..][..w]).for_each(|(s, &v)| *s += v);
        }
        for ((rx, px), y) in cols.iter().zip(yrow.iter_mut()) {
            let count = if include_pad { py * px } else { ry.len() * rx.len() };
            *y = if count == 0 { 0.0 } else { rx.iter().map(|&ix| rowsum[ix]).sum::<f32>() / count as f32 };
        }
    }
}

/// `max(m, v)` as one compare and select, which loops vectorise (`f32::max` also needs a NaN
/// test and a blend per vector: a 3×3, stride-1 pool over 32 planes of 96×96 took 1.09 ms on
/// it). With a NaN among the window's values the result is one of them or NaN, as
/// the kernels' 2×2 pools (`Isa::max_2x2`) promise.
#[inline(always)]
fn larger(m: f32, v: f32) -> f32 {
    if v > m {
        v
    } else {
        m
    }
}

/// Max pool of one `w`-wide input plane `xp` into `yp`. Each output row first takes the
/// element-wise max of its valid input rows (contiguous, vectorisable) into `rowmax`, then one
/// strided pass per column tap over exactly the output columns whose input exists, so padding
/// costs no per-pixel test. Two-wide, stride-2 windows (the common 2×2/2 pool) take both taps in
/// one pass over the columns where both exist.
fn max_plane(
    xp: &[f32],
    w: usize,
    rows: &[(Vec<usize>, usize)],
    aw: &Axis,
    rowmax: &mut [f32],
    yp: &mut [f32],
) {
    let tap = |k: usize| {
        let off = (k * aw.dil) as isize - aw.pad_begin as isize;
        (off, inside(aw.out, aw.stride, off, w))
    };
    // Columns handled by the paired pass (empty unless k 2, s 2, dil 1).
    let (plo, phi) = if aw.kernel == 2 && aw.stride == 2 && aw.dil == 1 {
        let ((_, (l0, h0)), (_, (l1, h1))) = (tap(0), tap(1));
        let (lo, hi) = (l0.max(l1), h0.min(h1));
        if lo < hi {
            (lo, hi)
        } else {
            (0, 0)
        }
    } else {
        (0, 0)
    };
    for ((ry, _), yrow) in rows.iter().zip(yp.chunks_exact_mut(aw.out)) {
        yrow.fill(f32::NEG_INFINITY);
        let Some((&first, rest)) = ry.split_first() else { continue };
        rowmax.copy_from_slice(&xp[first * w..][..w]);
        for &iy in rest {
            for (m, &v) in rowmax.iter_mut().zip(&xp[iy * w..][..w]) {
                *m = larger(*m, v);
            }
        }
        if plo < phi {
            let start = (2 * plo as isize + tap(0).0) as usize;
            for (y, pair) in yrow[plo..phi].iter_mut().zip(rowmax[start..].chunks_exact(2)) {
                *y = larger(pair[0], pair[1]);
            }
        }
        for k in 0..aw.kernel {
            let (off, (l, h)) = tap(k);
            // Skip the paired columns: they are done.
            for (a, b) in [(l, h.min(plo)), (l.max(phi), h)] {
                if a < b {
                    let from = ((a * aw.stride) as isize + off) as usize;
                    if aw.stride == 1 {
                        // Contiguous: one vector max per lane group.
                        for (y, &v) in yrow[a..b].iter_mut().zip(&rowmax[from..]) {
                            *y = larger(*y, v);
                        }
                    } else {
                        for (y, &v) in yrow[a..b].iter_mut().zip(rowmax[from..].iter().step_by(aw.stride)) {
                            *y = larger(*y, v);
                        }
                    }
                }
            }
        }
    }
}

/// Whether axis `a` over `n` inputs is a 2-wide, stride-2 window with every tap inside the input
/// (no padding read, no dilation): the common 2×2/2 pool.
fn is_plain_2x2(a: &Axis, n: usize) -> bool {
    a.kernel == 2 && a.stride == 2 && a.dil == 1 && a.pad_begin == 0 && 2 * a.out <= n
}

/// Max or average pool of planes with 2×2 windows at stride 2, none reaching padding (see
/// [`is_plain_2x2`]): one pass per output row over its two input rows (BlazeFace's max pools
/// spent more on the general path's per-row passes than on the maxima; PP-OCRv3's recognizer's
/// average pool, 512 planes of 3×80, took 65 µs there, 3.2 ns an output).
/// `part` holds output elements `start..` of the pool of planes `x` (`[h, w]` each, `[out_h,
/// out_w]` out), so threads can take any range of them; `rows` computes one output row from
/// its window's two input rows (the kernel path's `Isa::max_2x2`, or [`avg_2x2_row`]).
fn pool_2x2(
    x: &[f32],
    [h, w]: [usize; 2],
    [out_h, out_w]: [usize; 2],
    start: usize,
    part: &mut [f32],
    rows: fn(&[f32], &[f32], &mut [f32]),
) {
    // Position of output `start` (parts need not start at a row); then row by row.
    let (mut c, r) = (start / (out_h * out_w), start % (out_h * out_w));
    let (mut oy, mut ox) = (r / out_w, r % out_w);
    let mut rest = part;
    while !rest.is_empty() {
        let (y, tail) = rest.split_at_mut((out_w - ox).min(rest.len()));
        let base = c * h * w + 2 * oy * w + 2 * ox;
        rows(&x[base..][..2 * y.len()], &x[base + w..][..2 * y.len()], y);
        (ox, oy) = (0, oy + 1);
        if oy == out_h {
            (oy, c) = (0, c + 1);
        }
        rest = tail;
    }
}

/// One output row of a 2×2, stride-2 average pool from its window's two input rows: each
/// window's two rows summed first, then its two columns, divided by 4 (the general path's
/// order, so both give the same bits).
fn avg_2x2_row(r0: &[f32], r1: &[f32], out: &mut [f32]) {
    let n = out.len();
    let (r0, r1) = (&r0[..2 * n], &r1[..2 * n]);
    for (i, o) in out.iter_mut().enumerate() {
        *o = ((r0[2 * i] + r1[2 * i]) + (r0[2 * i + 1] + r1[2 * i + 1])) / 4.0;
    }
}

/// Output elements per thread below which a 2×2 max pool stays on one thread (it reads four
/// inputs per output and does little else: BlazeFace's pools, 5 616 to 24 576 outputs, ran
/// on one thread while the other waited).
const MAX_2X2_SPLIT_MIN: usize = 4096;

/// Output positions `o` in `0..out` whose input `o * stride + off` lies in `0..n`, as `lo..hi`.
fn inside(out: usize, stride: usize, off: isize, n: usize) -> (usize, usize) {
    let s = stride.max(1) as isize;
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let end = n as isize - off;
    let hi = if end <= 0 { 0 } else { (end + s - 1) / s };
    let lo = (lo as usize).min(out);
    (lo, (hi as usize).clamp(lo, out))
}

impl Op for Pool {
    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        Ok(vec![(ElemType::F32, self.geometry(first(inputs)?.shape)?.1)])
    }

    /// The window along both axes, resolved once per plan (a run then allocates nothing).
    fn prepare(
        &self,
        inputs: &[Option<Arg<'_>>],
        _ctx: &ExecCtx,
        _layouts: NodeLayouts,
    ) -> OpResult<Option<Prepared>> {
        let x = first(inputs)?;
        Ok(Some(std::sync::Arc::new(PreparedPool {
            input: x.shape.to_vec(),
            windows: self.windows(x.shape)?,
        })))
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
        let x = first(inputs)?;
        match prepared.downcast_ref::<PreparedPool>() {
            // Prepared for inputs of this shape, planar.
            Some(prepared) if prepared.input == x.shape && layouts.all_planar() => {
                self.pool(&prepared.windows, inputs, outputs, scratch, ctx)
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
        let windows = self.windows(first(inputs)?.shape)?;
        self.pool(&windows, inputs, outputs, scratch, ctx)
    }

    /// One input row's maxima or sums (the general path's).
    fn scratch_len(&self, inputs: &[Option<Arg<'_>>]) -> usize {
        first(inputs).map_or(0, |x| x.shape.last().copied().unwrap_or(0))
    }
}

/// What [`Pool`] resolves once per plan: the input shape it was made for and its windows.
#[derive(Debug)]
struct PreparedPool {
    input: Vec<usize>,
    windows: Windows,
}

/// A pool's window along both spatial axes, and for the general path each output row's and
/// column's taps (see [`taps`]; empty for a plain 2×2 pool, which needs none).
#[derive(Debug)]
struct Windows {
    axes: [Axis; 2],
    rows: Vec<(Vec<usize>, usize)>,
    cols: Vec<(Vec<usize>, usize)>,
}

impl Pool {
    /// The windows over an input of shape `x`.
    fn windows(&self, x: &[usize]) -> OpResult<Windows> {
        let [ah, aw] = self.geometry(x)?.0;
        let (h, w) = if x.len() == 4 { (x[2], x[3]) } else { (1, x[2]) };
        if is_plain_2x2(&ah, h) && is_plain_2x2(&aw, w) {
            return Ok(Windows { axes: [ah, aw], rows: Vec::new(), cols: Vec::new() });
        }
        let rows = (0..ah.out).map(|o| taps(&ah, h, o)).collect();
        let cols = (0..aw.out).map(|o| taps(&aw, w, o)).collect();
        Ok(Windows { axes: [ah, aw], rows, cols })
    }

    /// The pooling of `inputs[0]` into `outputs[0]` over `windows` (of [`Pool::windows`]), with
    /// an input row of `scratch` (see [`Op::scratch_len`]).
    fn pool(
        &self,
        windows: &Windows,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        let [ah, aw] = windows.axes;
        let x_arg = first(inputs)?;
        let x = x_arg.f32s()?;
        let (h, w) =
            if x_arg.shape.len() == 4 { (x_arg.shape[2], x_arg.shape[3]) } else { (1, x_arg.shape[2]) };
        let y = &mut *outputs[0].data;
        let out_plane = ah.out * aw.out;
        if out_plane == 0 || h * w == 0 {
            y.fill(0.0);
            return Ok(());
        }
        if is_plain_2x2(&ah, h) && is_plain_2x2(&aw, w) {
            let (input, output) = ([h, w], [ah.out, aw.out]);
            // No window reaches padding: an average always divides by 4.
            let rows = match self.reduce {
                Reduce::Max => ctx.kernels.isa().max_2x2,
                Reduce::Avg { .. } => avg_2x2_row,
            };
            ctx.kernels.for_each_part(y, MAX_2X2_SPLIT_MIN, |start, part| {
                pool_2x2(&x, input, output, start, part, rows)
            });
            return Ok(());
        }
        // One input row's maxima or sums.
        let scratch_len = scratch.len();
        let Some(line) = scratch.get_mut(..w) else {
            op_bail!("pool scratch of {scratch_len} elements, need {w}");
        };
        let (rows, cols) = (&windows.rows, &windows.cols);
        let planes = x.chunks_exact(h * w).zip(y.chunks_exact_mut(out_plane));
        match self.reduce {
            Reduce::Max => planes.for_each(|(xp, yp)| max_plane(xp, w, rows, &aw, line, yp)),
            Reduce::Avg { include_pad } => {
                planes.for_each(|(xp, yp)| avg_plane(xp, w, rows, cols, include_pad, line, yp));
            }
        }
        Ok(())
    }
}

impl Op for GlobalAvg {
    /// A squeeze-excite block's pool reads the depthwise output the block keeps blocked.
    fn blocked_use(&self, inputs: &[Option<Arg<'_>>], _kernels: &Kernels) -> Option<BlockedUse> {
        let x = first(inputs).ok()?;
        (x.elem == ElemType::F32 && x.shape.len() == 4 && x.shape[0] == 1).then_some(BlockedUse::Reads)
    }

    fn run_laid_out(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
        layouts: NodeLayouts,
    ) -> OpResult<()> {
        if layouts.input(0) == Layout::Planar {
            return self.run(inputs, outputs, scratch, ctx);
        }
        let x_arg = first(inputs)?;
        let (channels, plane) = (x_arg.shape[1], x_arg.shape[2..].iter().product::<usize>());
        if x_arg.shape[0] != 1 || !channels.is_multiple_of(BLOCK) || plane == 0 {
            op_bail!("a blocked input must be one image of whole 16-channel blocks, not {:?}", x_arg.shape);
        }
        let x = x_arg.f32s()?;
        let y = &mut *outputs[0].data;
        // Each block's planes are its pixels' 16 channels one after another: one 16-lane sum.
        for (xb, yb) in x.chunks_exact(BLOCK * plane).zip(y.chunks_exact_mut(BLOCK)) {
            let mut sums = [0.0f32; BLOCK];
            for pixel in xb.chunks_exact(BLOCK) {
                sums.iter_mut().zip(pixel).for_each(|(s, &v)| *s += v);
            }
            yb.iter_mut().zip(sums).for_each(|(o, s)| *o = s / plane as f32);
        }
        Ok(())
    }

    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        let x = first(inputs)?;
        if x.shape.len() < 2 {
            op_bail!("input must have rank >= 2 (N, C, ...), has shape {:?}", x.shape);
        }
        let mut shape = x.shape[..2].to_vec();
        shape.resize(x.shape.len(), 1);
        Ok(vec![(ElemType::F32, shape)])
    }

    fn run(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        _scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        let x_arg = first(inputs)?;
        let plane: usize = x_arg.shape[2..].iter().product();
        let x = x_arg.f32s()?;
        let y = &mut *outputs[0].data;
        if plane == 0 {
            y.fill(f32::NAN); // mean of nothing, as numpy
            return Ok(());
        }
        // Channels split over threads (the split is by output element), as the layer before
        // split them, once the input is large enough.
        let min_channels = (SPLIT_MIN_ELEMENTS / plane).max(1);
        ctx.kernels.for_each_part(y, min_channels, |start, part| {
            for (o, xp) in part.iter_mut().zip(x[start * plane..].chunks_exact(plane)) {
                *o = lane_sum(xp) / plane as f32;
            }
        });
        Ok(())
    }
}

/// Sum of `xs` in 16 independent lanes (one AVX-512 or two AVX2 registers), which the compiler
/// vectorises; a plain `iter().sum()` must add in order and runs one element per cycle.
pub(super) fn lane_sum(xs: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::testing::{act, assert_close, node, run, values};
    use pith_format::ir::Attr;

    #[test]
    fn lane_sum_matches_a_wide_reference_on_odd_lengths() {
        for n in [0usize, 1, 15, 16, 17, 33, 1000, 4099] {
            let xs = values(n as u64, n);
            let want: f64 = xs.iter().map(|&v| v as f64).sum();
            let got = lane_sum(&xs) as f64;
            assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "n={n}: {got} vs {want}");
        }
    }

    #[test]
    fn global_average_splits_channels_over_threads_with_the_same_result() {
        let shape = [1usize, 24, 100, 110]; // 264 000 elements: split over 3 threads
        let x = values(7, shape.iter().product());
        let op = build(&node(OpKind::GlobalAveragePool, 1, vec![])).unwrap();
        let one = run(&*op, &[act(&shape, &x)]).unwrap();
        let ctx = ExecCtx { kernels: pith_kernels::Kernels::new(3).unwrap() };
        let mut out = vec![0.0f32; 24];
        let mut outs = [Out { shape: &[1, 24, 1, 1], data: &mut out }];
        op.run(&[act(&shape, &x)], &mut outs, &mut [], &ctx).unwrap();
        assert_eq!(out, one[0].1);
        for (c, &m) in out.iter().enumerate() {
            let plane = &x[c * 11000..(c + 1) * 11000];
            let want = plane.iter().map(|&v| v as f64).sum::<f64>() / 11000.0;
            assert!((m as f64 - want).abs() < 1e-5, "channel {c}: {m} vs {want}");
        }
    }

    #[test]
    fn pools_2x2_split_over_threads_at_any_output() {
        // 3 channels of 181x95 inputs (odd: the last row and column are dropped): 12 690
        // outputs in rows of 47, split into parts of 6 352 or 4 240 (multiples of 16) that
        // start mid-row, the second of three in the second plane. Max and average pools.
        let (c, h, w) = (3usize, 181usize, 95usize);
        let x = values(11, c * h * w);
        for (op_kind, max) in [(OpKind::MaxPool, true), (OpKind::AveragePool, false)] {
            let n = node(op_kind, 1, vec![("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2]))]);
            let op = build(&n).unwrap();
            let out = [h / 2, w / 2];
            let mut want = Vec::new();
            for ch in 0..c {
                let count = |_, _, n| n;
                let plane = &x[ch * h * w..];
                want.extend(reference(plane, h, w, [2, 2], [2, 2], [1, 1], [0, 0], out, max, &count));
            }
            let mut first = None;
            for threads in [1, 2, 3] {
                let ctx = ExecCtx { kernels: pith_kernels::Kernels::new(threads).unwrap() };
                let mut y = vec![f32::NAN; want.len()];
                let shape = [1, c, out[0], out[1]];
                let mut outs = [Out { shape: &shape, data: &mut y }];
                op.run(&[act(&[1, c, h, w], &x)], &mut outs, &mut [], &ctx).unwrap();
                assert_close(&y, &want);
                assert_eq!(first.get_or_insert_with(|| y.clone()), &y, "{op_kind:?} {threads} threads");
            }
            assert!(want.len() >= 2 * MAX_2X2_SPLIT_MIN && want.len() % 16 != 0);
        }
    }

    fn ints(v: &[i64]) -> Attr {
        Attr::Ints(v.to_vec())
    }

    /// Reference 2-D pool over one plane with explicit begin pads; the divisor for averages is
    /// given per window by `count(y0, x0)` (window start in padded coordinates).
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        h: usize,
        w: usize,
        k: [usize; 2],
        s: [usize; 2],
        d: [usize; 2],
        pad: [usize; 2],
        out: [usize; 2],
        max: bool,
        count: &dyn Fn(isize, isize, usize) -> usize,
    ) -> Vec<f32> {
        let mut y = Vec::new();
        for oy in 0..out[0] {
            for ox in 0..out[1] {
                let (y0, x0) =
                    ((oy * s[0]) as isize - pad[0] as isize, (ox * s[1]) as isize - pad[1] as isize);
                let mut vals = Vec::new();
                for ky in 0..k[0] {
                    for kx in 0..k[1] {
                        let (iy, ix) = (y0 + (ky * d[0]) as isize, x0 + (kx * d[1]) as isize);
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            vals.push(x[iy as usize * w + ix as usize]);
                        }
                    }
                }
                y.push(if max {
                    vals.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
                } else {
                    vals.iter().sum::<f32>() / count(y0, x0, vals.len()) as f32
                });
            }
        }
        y
    }

    #[test]
    fn max_pool_with_pads_strides_dilations_and_ceil_mode() {
        let x = values(1, 2 * 7 * 8);
        let n = node(
            OpKind::MaxPool,
            1,
            vec![
                ("kernel_shape", ints(&[3, 2])),
                ("strides", ints(&[2, 3])),
                ("dilations", ints(&[1, 2])),
                ("pads", ints(&[1, 1, 1, 0])),
                ("ceil_mode", Attr::Int(1)),
            ],
        );
        let op = build(&n).unwrap();
        let got = run(&*op, &[act(&[1, 2, 7, 8], &x)]).unwrap();
        // H: ceil((7 + 2 - 3) / 2) + 1 = 4; W: ceil((8 + 1 - 3) / 3) + 1 = 3.
        assert_eq!(got[0].0, vec![1, 2, 4, 3]);
        let mut want = Vec::new();
        for c in 0..2 {
            want.extend(reference(
                &x[c * 56..],
                7,
                8,
                [3, 2],
                [2, 3],
                [1, 2],
                [1, 1],
                [4, 3],
                true,
                &|_, _, n| n,
            ));
        }
        assert_close(&got[0].1, &want);
    }

    #[test]
    fn stride_one_max_pools_match_the_reference() {
        // 3×3 and 5×5 windows at stride 1 with "same" pads (ResNet-style and YOLO's SPPF), and a
        // 3×3 window at stride (1, 2): the contiguous and the strided column passes.
        let (c, h, w) = (3, 9, 21);
        let x = values(4, c * h * w);
        for (k, s, p) in [(3, [1, 1], 1), (5, [1, 1], 2), (3, [1, 2], 1)] {
            let n = node(
                OpKind::MaxPool,
                1,
                vec![
                    ("kernel_shape", ints(&[k as i64, k as i64])),
                    ("strides", ints(&[s[0] as i64, s[1] as i64])),
                    ("pads", ints(&[p as i64; 4])),
                ],
            );
            let op = build(&n).unwrap();
            let got = run(&*op, &[act(&[1, c, h, w], &x)]).unwrap();
            let out = [(h + 2 * p - k) / s[0] + 1, (w + 2 * p - k) / s[1] + 1];
            assert_eq!(got[0].0, vec![1, c, out[0], out[1]]);
            let mut want = Vec::new();
            for ch in 0..c {
                want.extend(reference(
                    &x[ch * h * w..],
                    h,
                    w,
                    [k, k],
                    s,
                    [1, 1],
                    [p, p],
                    out,
                    true,
                    &|_, _, n| n,
                ));
            }
            assert_eq!(got[0].1, want, "k {k} s {s:?}");
        }
    }

    #[test]
    fn ceil_mode_drops_windows_starting_in_the_end_padding() {
        // in 6, k 2, s 2, pads 0/1: ceil((7 - 2) / 2) + 1 = 4, but the 4th window would start at
        // 6, inside the end padding, so it is dropped; in 7 the 4th window starts inside the input.
        let n = node(
            OpKind::MaxPool,
            1,
            vec![
                ("kernel_shape", ints(&[2])),
                ("strides", ints(&[2])),
                ("ceil_mode", Attr::Int(1)),
                ("pads", ints(&[0, 1])),
            ],
        );
        let op = build(&n).unwrap();
        assert_eq!(op.infer(&[act(&[1, 1, 6], &[0.0; 6])]).unwrap()[0].1, vec![1, 1, 3]);
        assert_eq!(op.infer(&[act(&[1, 1, 7], &[0.0; 7])]).unwrap()[0].1, vec![1, 1, 4]);
    }

    #[test]
    fn average_divisor_with_ceil_mode_matches_onnxruntime() {
        // x = 0..6; k 3, s 2, ceil_mode, count_include_pad. Expected values from onnxruntime 1.x:
        // taps beyond the declared end pad are never counted.
        let x: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let cases: [(&[i64], Vec<f32>); 2] =
            [(&[1, 1], vec![1.0 / 3.0, 2.0, 4.0, 2.5]), (&[0, 0], vec![1.0, 3.0, 4.5])];
        for (pads, want) in cases {
            let n = node(
                OpKind::AveragePool,
                1,
                vec![
                    ("kernel_shape", ints(&[3])),
                    ("strides", ints(&[2])),
                    ("ceil_mode", Attr::Int(1)),
                    ("count_include_pad", Attr::Int(1)),
                    ("pads", ints(pads)),
                ],
            );
            let got = run(&*build(&n).unwrap(), &[act(&[1, 1, 6], &x)]).unwrap();
            assert_close(&got[0].1, &want);
        }
    }

    #[test]
    fn average_pool_counts_padding_only_when_asked() {
        let x = values(2, 6 * 5);
        for include in [0, 1] {
            let n = node(
                OpKind::AveragePool,
                1,
                vec![
                    ("kernel_shape", ints(&[3, 3])),
                    ("strides", ints(&[2, 2])),
                    ("pads", ints(&[1, 1, 1, 1])),
                    ("count_include_pad", Attr::Int(include)),
                ],
            );
            let op = build(&n).unwrap();
            let got = run(&*op, &[act(&[1, 1, 6, 5], &x)]).unwrap();
            assert_eq!(got[0].0, vec![1, 1, 3, 3]);
            // All windows fit inside the padded input, so count_include_pad divides by 9.
            let count = |_, _, n| if include == 1 { 9 } else { n };
            let want = reference(&x, 6, 5, [3, 3], [2, 2], [1, 1], [1, 1], [3, 3], false, &count);
            assert_close(&got[0].1, &want);
        }
    }

    #[test]
    fn same_upper_padding_is_ignored_by_max_and_excluded_from_average() {
        // in 5, k 3, s 2: out 3, total pad 2 → 1 before, 1 after.
        let x = values(3, 5 * 5);
        for op_kind in [OpKind::MaxPool, OpKind::AveragePool] {
            let n = node(
                op_kind,
                1,
                vec![
                    ("kernel_shape", ints(&[3, 3])),
                    ("strides", ints(&[2, 2])),
                    ("auto_pad", Attr::Str("SAME_UPPER".into())),
                ],
            );
            let op = build(&n).unwrap();
            let got = run(&*op, &[act(&[1, 1, 5, 5], &x)]).unwrap();
            assert_eq!(got[0].0, vec![1, 1, 3, 3]);
            let max = op_kind == OpKind::MaxPool;
            let want = reference(&x, 5, 5, [3, 3], [2, 2], [1, 1], [1, 1], [3, 3], max, &|_, _, n| n);
            assert_close(&got[0].1, &want);
        }
    }

    #[test]
    fn inside_matches_brute_force() {
        for out in 0..6 {
            for stride in 1..4 {
                for off in -5isize..5 {
                    for n in 0..7 {
                        let (lo, hi) = inside(out, stride, off, n);
                        for o in 0..out {
                            let i = o as isize * stride as isize + off;
                            let want = i >= 0 && i < n as isize;
                            assert_eq!(want, (lo..hi).contains(&o), "{out} {stride} {off} {n} {o}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn max_pool_2x2_stride_2_same_padding_on_odd_and_even_planes() {
        // BlazeFace's pool: k 2, s 2, SAME_UPPER; odd extents put the pad in the last window
        // (SAME_LOWER: in the first), so the paired pass must leave that window to the edge pass.
        for (h, w) in [(8, 8), (7, 9), (1, 5), (4, 1)] {
            for (auto_pad, lower) in [("SAME_UPPER", false), ("SAME_LOWER", true)] {
                let x = values(7, 2 * h * w);
                let n = node(
                    OpKind::MaxPool,
                    1,
                    vec![
                        ("kernel_shape", ints(&[2, 2])),
                        ("strides", ints(&[2, 2])),
                        ("auto_pad", Attr::Str(auto_pad.into())),
                    ],
                );
                let got = run(&*build(&n).unwrap(), &[act(&[1, 2, h, w], &x)]).unwrap();
                let out = [h.div_ceil(2), w.div_ceil(2)];
                assert_eq!(got[0].0, vec![1, 2, out[0], out[1]]);
                let pad = if lower { [h % 2, w % 2] } else { [0, 0] };
                let mut want = Vec::new();
                for c in 0..2 {
                    let plane = &x[c * h * w..];
                    let count = |_, _, n| n;
                    want.extend(reference(plane, h, w, [2, 2], [2, 2], [1, 1], pad, out, true, &count));
                }
                assert_close(&got[0].1, &want);
            }
        }
    }

    #[test]
    fn global_average_and_errors() {
        let x = values(4, 2 * 3 * 4 * 5);
        let op = build(&node(OpKind::GlobalAveragePool, 1, vec![])).unwrap();
        let got = run(&*op, &[act(&[2, 3, 4, 5], &x)]).unwrap();
        assert_eq!(got[0].0, vec![2, 3, 1, 1]);
        let want: Vec<f32> = x.chunks(20).map(|c| c.iter().sum::<f32>() / 20.0).collect();
        assert_close(&got[0].1, &want);
        assert!(build(&node(OpKind::MaxPool, 1, vec![])).is_err());
        let mut n = node(OpKind::MaxPool, 1, vec![("kernel_shape", ints(&[2, 2]))]);
        n.outputs.push(7);
        assert!(build(&n).unwrap_err().0.contains("Indices"));
        let op = build(&node(OpKind::MaxPool, 1, vec![("kernel_shape", ints(&[2, 2, 2]))])).unwrap();
        assert!(op.infer(&[act(&[1, 1, 2, 2, 2], &x[..8])]).is_err());
    }
}
