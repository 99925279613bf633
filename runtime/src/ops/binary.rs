//! Element-wise binary ops with numpy (multidirectional) broadcasting — `Add`, `Sub`, `Mul`, `Div`,
//! `Pow` — and `PRelu` (slope broadcast to the input). Integer `Add`/`Sub`/`Mul`/`Div`/`Pow` run at
//! plan time for shape arithmetic.

use pith_format::ir::{ElemType, Node, OpKind};

use pith_kernels::blocked::BLOCK;
use pith_kernels::{Activation, Kernels, Layout};

use super::{attrs, Arg, AxisList, BlockedUse, ExecCtx, NodeLayouts, Op, OpResult, Out};
use crate::error::OpError;
use crate::op_bail;
use crate::tensor::Tensor;

/// The numpy broadcast of two shapes.
pub(crate) fn broadcast_shapes(a: &[usize], b: &[usize]) -> OpResult<AxisList<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i < rank - s.len() {
            1
        } else {
            s[i - (rank - s.len())]
        }
    };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            (x, y) => op_bail!("shapes {a:?} and {b:?} cannot be broadcast (axis {i}: {x} vs {y})"),
        })
        .collect()
}

/// `out[i] = f(a[ia], b[ib])` over the broadcast of `a_shape` and `b_shape` into `out_shape`.
///
/// Axes are coalesced first, so common cases (same shape, scalar, per-channel) run as long inner
/// loops. `out_shape` must be the broadcast of the two shapes (see [`broadcast_shapes`]).
pub(crate) fn zip_broadcast<T: Copy, U>(
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out_shape: &[usize],
    out: &mut [U],
    f: impl Fn(T, T) -> U,
) {
    Broadcast::new(a_shape, b_shape, out_shape).zip(a, b, 0, out, f)
}

/// An axis of a [`Broadcast`]: extent, a stride, b stride.
type BroadcastAxis = (usize, usize, usize);

/// The broadcast of two operands into an output, as coalesced loops: outer axes (extent, a
/// stride, b stride), outermost first, and one inner axis. Element-wise ops run many times per
/// inference; their axes are kept on the stack ([`AxisList`]), so they allocate nothing.
struct Broadcast {
    outer: AxisList<BroadcastAxis>,
    inner: BroadcastAxis,
}

/// The element stride of axis `i` of `out` (of rank `rank`) in `shape` broadcast to it (same or
/// lower rank): 0 where `shape` is broadcast along it.
fn stride_in(shape: &[usize], rank: usize, i: usize) -> usize {
    let lead = rank - shape.len();
    match i.checked_sub(lead) {
        Some(j) if shape[j] != 1 => shape[j + 1..].iter().product(),
        _ => 0,
    }
}

impl Broadcast {
    fn new(a_shape: &[usize], b_shape: &[usize], out_shape: &[usize]) -> Broadcast {
        let rank = out_shape.len();
        let mut axes: AxisList<BroadcastAxis> = AxisList::new();
        // Extents of 1 are dropped; neighbours whose strides chain are merged.
        for (i, &n) in out_shape.iter().enumerate() {
            let (x, y) = (stride_in(a_shape, rank, i), stride_in(b_shape, rank, i));
            if n == 1 {
                continue;
            }
            match axes.last_mut() {
                Some(last) if last.1 == x * n && last.2 == y * n => *last = (last.0 * n, x, y),
                _ => axes.push((n, x, y)),
            }
        }
        let inner = axes.pop().unwrap_or((1, 0, 0));
        Broadcast { outer: axes, inner }
    }

    /// Calls `run(pos, n, ia, ib)` for each run of output elements `start + pos .. start + pos +
    /// n` along the inner axis, in order, where `ia` and `ib` are the offsets of its first
    /// element in the two operands (the inner axis's strides apply within the run).
    fn runs(&self, start: usize, len: usize, mut run: impl FnMut(usize, usize, usize, usize)) {
        let (inner, ia, ib) = self.inner;
        if len == 0 || inner == 0 {
            return;
        }
        // Position the odometer over the outer axes at the block holding `start`.
        let outer = &self.outer[..];
        let (mut block, mut j0) = (start / inner, start % inner);
        let mut idx: AxisList<usize> = smallvec::smallvec![0; outer.len()];
        let (mut oa, mut ob) = (0usize, 0usize);
        for d in (0..outer.len()).rev() {
            let (n, x, y) = outer[d];
            idx[d] = block % n;
            block /= n;
            oa += idx[d] * x;
            ob += idx[d] * y;
        }
        let mut pos = 0;
        while pos < len {
            let n = (inner - j0).min(len - pos);
            run(pos, n, oa + j0 * ia, ob + j0 * ib);
            pos += n;
            j0 = 0;
            // Advance the odometer over the outer axes.
            for d in (0..outer.len()).rev() {
                let (n, x, y) = outer[d];
                idx[d] += 1;
                oa += x;
                ob += y;
                if idx[d] < n {
                    break;
                }
                oa -= x * n;
                ob -= y * n;
                idx[d] = 0;
            }
        }
    }

    /// Computes output elements `start .. start + out.len()` into `out`.
    fn zip<T: Copy, U>(&self, a: &[T], b: &[T], start: usize, out: &mut [U], f: impl Fn(T, T) -> U) {
        let (_, ia, ib) = self.inner;
        self.runs(start, out.len(), |pos, n, ba, bb| {
            let chunk = &mut out[pos..pos + n];
            match (ia, ib) {
                (1, 1) => {
                    for ((o, &x), &y) in chunk.iter_mut().zip(&a[ba..ba + n]).zip(&b[bb..bb + n]) {
                        *o = f(x, y);
                    }
                }
                (1, 0) => {
                    let y = b[bb];
                    for (o, &x) in chunk.iter_mut().zip(&a[ba..ba + n]) {
                        *o = f(x, y);
                    }
                }
                (0, 1) => {
                    let x = a[ba];
                    for (o, &y) in chunk.iter_mut().zip(&b[bb..bb + n]) {
                        *o = f(x, y);
                    }
                }
                _ => {
                    for (j, o) in chunk.iter_mut().enumerate() {
                        *o = f(a[ba + j * ia], b[bb + j * ib]);
                    }
                }
            }
        })
    }

    /// `out = out + b`, where the first operand is the output itself (of the output's shape).
    fn add_in_place(&self, b: &[f32], out: &mut [f32]) {
        let (_, _, ib) = self.inner;
        self.runs(0, out.len(), |pos, n, _, bb| {
            let chunk = &mut out[pos..pos + n];
            match ib {
                1 => chunk.iter_mut().zip(&b[bb..bb + n]).for_each(|(o, &v)| *o += v),
                _ => chunk.iter_mut().enumerate().for_each(|(j, o)| *o += b[bb + j * ib]),
            }
        })
    }
}

/// Output elements below which a one-input element-wise op (activation, resize, normalization)
/// stays on one thread (1 MiB per part). Handing out a task is cheap with the spinning pool, but
/// a small op whose input another core wrote runs at the speed of cache-line transfers: with
/// BlazeFace's convolutions unsplit, splitting its 98 Ki-element Adds took them from 0.11 to 0.18
/// ms per run (2 vCPU EPYC); with them split, no measurable gain there (with rayon's sleeping
/// workers, 16 Ki made the whole run 1.4x slower). Two-input ops now split from
/// [`SPLIT_MIN_ELEMENTS`].
pub(crate) const PARALLEL_MIN_ELEMENTS: usize = 1 << 18;

/// Output elements from which a two-input element-wise op, and a global average pool (counting
/// its input), split over threads (32 KiB per part). Their parts are contiguous and the caller's
/// comes first, as the first channels of a convolution split by filters or channels do: so each
/// thread mostly reads what it wrote itself in the layer before. On a 2-vCPU Xeon, where reading
/// lines the other core wrote is slow, MobileNetV3-Small's ten pools and nine squeeze-excite Muls
/// went from 0.061 and 0.050 ms per run to 0.034 and 0.037 at 2 threads, the whole model (9
/// alternating rounds) 1.148 -> 1.102 ms; BlazeFace, whose Adds now split too, 0.527 -> 0.528.
pub(crate) const SPLIT_MIN_ELEMENTS: usize = 1 << 13;

/// Which binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    PRelu,
}

/// An element-wise binary op.
#[derive(Debug)]
struct Binary {
    kind: Kind,
    /// Applied to f32 results (an activation node fused into this one, see [`crate::fuse`]).
    activation: Activation,
    /// How many times each element of a fused addend repeats along the last two axes (a nearest
    /// upsampling folded in, [`crate::fuse::ADDEND_REPEAT`]); `[1, 1]` for none.
    addend_repeat: [usize; 2],
}

/// Builds the op for an `Add`, `Sub`, `Mul`, `Div`, `Pow` or `PRelu` node whose f32 output then
/// goes through `activation`.
pub fn build(node: &Node, activation: Activation) -> OpResult<Box<dyn Op>> {
    let kind = match node.op {
        OpKind::Add => Kind::Add,
        OpKind::Sub => Kind::Sub,
        OpKind::Mul => Kind::Mul,
        OpKind::Div => Kind::Div,
        OpKind::Pow => Kind::Pow,
        OpKind::PRelu => Kind::PRelu,
        other => op_bail!("{} is not a binary op", other.onnx_name()),
    };
    let addend_repeat = match attrs::ints(node, crate::fuse::ADDEND_REPEAT)?.as_deref() {
        None => [1, 1],
        Some(&[f, g]) if (1..=MAX_REPEAT).contains(&f) && (1..=MAX_REPEAT).contains(&g) => {
            [f as usize, g as usize]
        }
        Some(other) => op_bail!(
            "attribute '{}' must be two factors in 1..={MAX_REPEAT}, not {other:?}",
            crate::fuse::ADDEND_REPEAT
        ),
    };
    Ok(Box::new(Binary { kind, activation, addend_repeat }))
}

/// Largest repeat factor of a fused addend.
const MAX_REPEAT: i64 = 64;

fn two<'a, 'b>(inputs: &'b [Option<Arg<'a>>]) -> OpResult<(&'b Arg<'a>, &'b Arg<'a>)> {
    match inputs {
        [Some(a), Some(b), ..] => Ok((a, b)),
        _ => op_bail!("expects two inputs"),
    }
}

/// The tensor added to the result before the activation: the third input of a node that took the
/// `Add` after it (see [`crate::fuse::fuse_binary_addends`]).
fn addend<'a, 'b>(inputs: &'b [Option<Arg<'a>>]) -> Option<&'b Arg<'a>> {
    inputs.get(2).and_then(Option::as_ref)
}

/// A fused addend's values as the sum sees them.
#[derive(Clone, Copy)]
struct Addend<'a> {
    data: &'a [f32],
    shape: &'a [usize],
    /// Each element repeated this many times along the last two axes.
    repeat: [usize; 2],
}

/// `shape` with its last two extents multiplied by `repeat` (`None` below rank 2 when `repeat`
/// is not `[1, 1]`).
fn repeated_shape(shape: &[usize], repeat: [usize; 2]) -> Option<AxisList<usize>> {
    let mut out: AxisList<usize> = shape.iter().copied().collect();
    if repeat != [1, 1] {
        let rank = out.len().checked_sub(2)?;
        out[rank] *= repeat[0];
        out[rank + 1] *= repeat[1];
    }
    Some(out)
}

/// Whether `shape` repeated `repeat` times along its last two axes (see [`repeated_shape`]) is
/// `target`, allocating nothing.
fn repeats_to(shape: &[usize], repeat: [usize; 2], target: &[usize]) -> bool {
    let rank = shape.len();
    if repeat == [1, 1] {
        return shape == target;
    }
    rank >= 2
        && target.len() == rank
        && shape[..rank - 2] == target[..rank - 2]
        && shape[rank - 2] * repeat[0] == target[rank - 2]
        && shape[rank - 1] * repeat[1] == target[rank - 1]
}

impl Addend<'_> {
    /// Adds the repeated addend's elements `at .. at + block.len()` (in the repeated shape's
    /// row-major order) to `block`, a row segment at a time.
    fn add_repeated(&self, at: usize, block: &mut [f32]) {
        let rank = self.shape.len();
        let (h, w) = (self.shape[rank - 2], self.shape[rank - 1]);
        let [f, g] = self.repeat;
        let (big_h, big_w) = (h * f, w * g);
        let mut pos = 0;
        while pos < block.len() {
            let (row, ox) = ((at + pos) / big_w, (at + pos) % big_w);
            let (plane, oy) = (row / big_h, row % big_h);
            let src = &self.data[(plane * h + oy / f) * w..][..w];
            let n = (big_w - ox).min(block.len() - pos);
            let seg = &mut block[pos..pos + n];
            match g {
                2 => add_each::<2>(seg, src, ox),
                4 => add_each::<4>(seg, src, ox),
                8 => add_each::<8>(seg, src, ox),
                _ => seg.iter_mut().enumerate().for_each(|(j, v)| *v += src[(ox + j) / g]),
            }
            pos += n;
        }
    }

    /// The addend with its repeats written out.
    fn expanded(&self) -> Vec<f32> {
        let n = self.data.len() * self.repeat[0] * self.repeat[1];
        let mut out = vec![0.0; n];
        self.add_repeated(0, &mut out);
        out
    }
}

/// `seg[j] += src[(ox + j) / G]`, with `G` known to the compiler: whole runs of `G` outputs take
/// one source value each (a loop the compiler vectorises, as it did not the indexed one).
fn add_each<const G: usize>(seg: &mut [f32], src: &[f32], ox: usize) {
    let len = seg.len();
    let head = ((G - ox % G) % G).min(len);
    let (first, rest) = seg.split_at_mut(head);
    for (j, v) in first.iter_mut().enumerate() {
        *v += src[(ox + j) / G];
    }
    let start = (ox + head) / G;
    let mut runs = rest.chunks_exact_mut(G);
    for (run, &s) in (&mut runs).zip(&src[start..]) {
        for v in run {
            *v += s;
        }
    }
    let tail = runs.into_remainder();
    let at = ox + len - tail.len();
    for (j, v) in tail.iter_mut().enumerate() {
        *v += src[(at + j) / G];
    }
}

/// Output elements a thread computes at a time, then adds the addend to and activates while they
/// are in L1 (16 KiB).
const ZIP_BLOCK: usize = 4096;

/// `out = a (op) b` with broadcasting, split over the session's threads when large. Each arm
/// passes its own closure so the element loop is monomorphised and vectorised (a function pointer
/// would cost an indirect call per element).
/// With `addend` (any shape that, repeated, broadcasts to `shape`), `out = act(a (op) b + addend)`.
#[allow(clippy::too_many_arguments)]
fn zip_f32(
    kind: Kind,
    act: Activation,
    a: (&[f32], &[usize]),
    b: (&[f32], &[usize]),
    addend: Option<Addend<'_>>,
    shape: &[usize],
    out: &mut [f32],
    ctx: &ExecCtx,
) {
    let ((x, xs), (y, ys)) = (a, b);
    let bc = Broadcast::new(xs, ys, shape);
    // The fused form's addend has the output's shape (once repeated): added block by block. Any
    // other is broadcast in a second pass, before the activation.
    let (same, other) = match addend {
        Some(r) if repeats_to(r.shape, r.repeat, shape) => (Some(r), None),
        other => (None, other),
    };
    let block_act = if other.is_some() { Activation::None } else { act };
    let squares = kind == Kind::Pow && y == [2.0];
    ctx.kernels.for_each_part(out, SPLIT_MIN_ELEMENTS, |start, part| {
        for (k, block) in part.chunks_mut(ZIP_BLOCK).enumerate() {
            let at = start + k * ZIP_BLOCK;
            match kind {
                Kind::Add => bc.zip(x, y, at, block, |a, b| a + b),
                Kind::Sub => bc.zip(x, y, at, block, |a, b| a - b),
                Kind::Mul => bc.zip(x, y, at, block, |a, b| a * b),
                Kind::Div => bc.zip(x, y, at, block, |a, b| a / b),
                // A squared value (LayerNorm written out as `Pow(x - mean, 2)`) as one product:
                // what `powf` gives for an exponent of 2 (one correctly rounded product),
                // without a libm call per element (5 such Pows took 0.21 ms of PP-OCRv3's
                // recognizer at 40 × 120 values each).
                Kind::Pow if squares => bc.zip(x, y, at, block, |a, _| a * a),
                Kind::Pow => bc.zip(x, y, at, block, f32::powf),
                Kind::PRelu => bc.zip(x, y, at, block, |x, s| if x < 0.0 { s * x } else { x }),
            }
            match same {
                Some(r) if r.repeat == [1, 1] => {
                    for (o, &v) in block.iter_mut().zip(&r.data[at..]) {
                        *o += v;
                    }
                }
                Some(r) => r.add_repeated(at, block),
                None => {}
            }
            // While the block is still in cache.
            ctx.kernels.activate(block_act, block);
        }
    });
    if let Some(r) = other {
        let expanded = (r.repeat != [1, 1]).then(|| r.expanded());
        let rs = repeated_shape(r.shape, r.repeat).unwrap_or_default();
        let data = expanded.as_deref().unwrap_or(r.data);
        Broadcast::new(shape, &rs, shape).add_in_place(data, out);
        ctx.kernels.activate(act, out);
    }
}

/// Integer arithmetic; `None` marks an undefined result (division by zero, overflow, negative power).
fn i64_fn(kind: Kind) -> fn(i64, i64) -> Option<i64> {
    match kind {
        Kind::Add => i64::checked_add,
        Kind::Sub => i64::checked_sub,
        Kind::Mul => i64::checked_mul,
        // ONNX integer division truncates toward zero, as Rust's does.
        Kind::Div => i64::checked_div,
        Kind::Pow => |a, b| u32::try_from(b).ok().and_then(|b| a.checked_pow(b)),
        Kind::PRelu => |x, s| if x < 0 { x.checked_mul(s) } else { Some(x) },
    }
}

impl Binary {
    fn out_shape(&self, a: &Arg<'_>, b: &Arg<'_>) -> OpResult<Vec<usize>> {
        if self.kind == Kind::PRelu {
            let s = broadcast_shapes(a.shape, b.shape)?;
            if s[..] != *a.shape {
                op_bail!("slope of shape {:?} does not broadcast to input {:?}", b.shape, a.shape);
            }
            return Ok(s.to_vec());
        }
        Ok(broadcast_shapes(a.shape, b.shape)?.to_vec())
    }

    /// The output shape with a fused addend `r`, if any.
    fn out_shape_with(&self, a: &Arg<'_>, b: &Arg<'_>, r: Option<&Arg<'_>>) -> OpResult<Vec<usize>> {
        let shape = self.out_shape(a, b)?;
        match r {
            Some(r) => {
                let Some(rs) = repeated_shape(r.shape, self.addend_repeat) else {
                    op_bail!("a repeated addend needs two axes, not shape {:?}", r.shape);
                };
                Ok(broadcast_shapes(&shape, &rs)?.to_vec())
            }
            None => Ok(shape),
        }
    }
}

/// For a product of one image `[1, C, H, W]` with a per-channel factor (`[1, C, 1, 1]` or
/// `[C, 1, 1]`, a squeeze-excite gate), in either order: the image's input position.
fn gated_image(a: &Arg<'_>, b: &Arg<'_>) -> Option<usize> {
    let per_channel = |image: &[usize], gate: &[usize]| {
        image.len() == 4 && image[0] == 1 && matches!(gate, [1, c, 1, 1] | [c, 1, 1] if *c == image[1])
    };
    if per_channel(a.shape, b.shape) {
        Some(0)
    } else if per_channel(b.shape, a.shape) {
        Some(1)
    } else {
        None
    }
}

impl Binary {
    /// `y = image * gate` per channel, the image (input `at`) and `y` channel-blocked.
    fn run_gated_blocked(
        &self,
        inputs: &[Option<Arg<'_>>],
        at: usize,
        outputs: &mut [Out<'_>],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        let (a, b) = two(inputs)?;
        let (image, gate) = if at == 0 { (a, b) } else { (b, a) };
        let (channels, plane) = (image.shape[1], image.shape[2] * image.shape[3]);
        if !channels.is_multiple_of(BLOCK) || plane == 0 {
            op_bail!("a blocked image must hold whole 16-channel blocks of pixels, not {:?}", image.shape);
        }
        let (x, g) = (image.f32s()?, gate.f32s()?);
        let y = &mut *outputs[0].data;
        // Block after block: each pixel's 16 channels times the block's 16 factors (a product
        // of two floats is the same in either order).
        for ((xb, yb), gb) in
            x.chunks_exact(BLOCK * plane).zip(y.chunks_exact_mut(BLOCK * plane)).zip(g.chunks_exact(BLOCK))
        {
            let factors: [f32; BLOCK] = std::array::from_fn(|l| gb[l]);
            for (xp, yp) in xb.chunks_exact(BLOCK).zip(yb.chunks_exact_mut(BLOCK)) {
                let (xp, yp): (&[f32; BLOCK], &mut [f32; BLOCK]) =
                    (xp.try_into().expect("16 lanes"), yp.try_into().expect("16 lanes"));
                *yp = std::array::from_fn(|l| xp[l] * factors[l]);
            }
        }
        if self.activation != Activation::None {
            ctx.kernels.activate(self.activation, y);
        }
        Ok(())
    }
}

impl Op for Binary {
    /// A squeeze-excite product (an image times a per-channel gate, no fused addend) keeps the
    /// image's layout.
    fn blocked_use(&self, inputs: &[Option<Arg<'_>>], _kernels: &Kernels) -> Option<BlockedUse> {
        let (a, b) = two(inputs).ok()?;
        let plain = self.kind == Kind::Mul && addend(inputs).is_none();
        let input =
            gated_image(a, b).filter(|_| plain && a.elem == ElemType::F32 && b.elem == ElemType::F32)?;
        Some(BlockedUse::Tied { input, gain: 0 })
    }

    fn run_laid_out(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
        layouts: NodeLayouts,
    ) -> OpResult<()> {
        if layouts.all_planar() {
            return self.run(inputs, outputs, scratch, ctx);
        }
        let (a, b) = two(inputs)?;
        match gated_image(a, b) {
            Some(at) if layouts.input(at) == Layout::Blocked && layouts.output(0) == Layout::Blocked => {
                self.run_gated_blocked(inputs, at, outputs, ctx)
            }
            _ => op_bail!("only a per-channel product runs channel-blocked"),
        }
    }

    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        let (a, b) = two(inputs)?;
        if a.elem != b.elem && self.kind != Kind::Pow {
            op_bail!("input element types differ ({:?} vs {:?})", a.elem, b.elem);
        }
        let r = addend(inputs);
        if r.is_some_and(|r| r.elem != a.elem) {
            op_bail!("a fused addend must have the inputs' element type");
        }
        Ok(vec![(a.elem, self.out_shape_with(a, b, r)?)])
    }

    fn eval(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Option<Vec<Tensor>>> {
        let (a, b) = two(inputs)?;
        let r = addend(inputs);
        let known = a.is_known() && b.is_known() && r.is_none_or(Arg::is_known);
        let shape = self.out_shape_with(a, b, r)?;
        if a.elem == ElemType::I64 {
            if self.activation != Activation::None {
                op_bail!("a fused activation applies to float results only");
            }
            if !known {
                op_bail!("integer inputs must be known at plan time");
            }
            let (x, y) = (a.i64s()?, b.i64s()?);
            let mut out = vec![None; shape.iter().product()];
            zip_broadcast(&x, a.shape, &y, b.shape, &shape, &mut out, i64_fn(self.kind));
            if let Some(r) = r {
                // Shape arithmetic that took the Add after it.
                if self.addend_repeat != [1, 1] {
                    op_bail!("a repeated addend must be f32");
                }
                let (sums, rv) = (out, r.i64s()?);
                out = vec![None; sums.len()];
                zip_broadcast(
                    &sums,
                    &shape,
                    &rv.iter().map(|&v| Some(v)).collect::<Vec<_>>(),
                    r.shape,
                    &shape,
                    &mut out,
                    |s, v| s?.checked_add(v?),
                );
            }
            let out: Option<Vec<i64>> = out.into_iter().collect();
            let Some(out) = out else {
                op_bail!(
                    "integer {:?} is undefined (division by zero, overflow or negative power)",
                    self.kind
                );
            };
            return Ok(Some(vec![Tensor::from_i64(shape, out)]));
        }
        if !known {
            return Ok(None);
        }
        let mut out = vec![0.0; shape.iter().product()];
        let (x, y) = (a.f32s()?, b.f32s()?);
        let rv = r.map(Arg::f32s).transpose()?;
        let repeat = self.addend_repeat;
        zip_f32(
            self.kind,
            self.activation,
            (&x, a.shape),
            (&y, b.shape),
            r.zip(rv.as_deref()).map(|(r, data)| Addend { data, shape: r.shape, repeat }),
            &shape,
            &mut out,
            &ExecCtx::default(),
        );
        Ok(Some(vec![Tensor::from_f32(shape, out)]))
    }

    fn run(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        _scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        let (a, b) = two(inputs)?;
        if a.elem != ElemType::F32 {
            return Err(OpError("integer arithmetic runs only at plan time".into()));
        }
        let (x, y) = (a.f32s()?, b.f32s()?);
        let r = addend(inputs);
        let rv = r.map(Arg::f32s).transpose()?;
        let repeat = self.addend_repeat;
        let r = r.zip(rv.as_deref()).map(|(r, data)| Addend { data, shape: r.shape, repeat });
        let out = &mut outputs[0];
        zip_f32(self.kind, self.activation, (&x, a.shape), (&y, b.shape), r, out.shape, out.data, ctx);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::testing::{act, node, run, values};
    use crate::ops::ArgData;
    use crate::tensor::TensorBuf;
    use pith_format::ir::Attr;

    fn build_plain(node: &Node) -> OpResult<Box<dyn Op>> {
        build(node, Activation::None)
    }

    /// A squeeze-excite product run channel-blocked (gate first or second) equals the planar
    /// product laid out blocked; an image with an empty plane is an error, not a panic.
    #[test]
    fn a_gated_product_runs_blocked_in_either_operand_order() {
        use pith_kernels::blocked::{to_blocked, to_planar};
        let (c, hw) = (32, 6);
        let image: Vec<f32> = (0..c * hw).map(|i| (i as f32 * 0.37).sin()).collect();
        let gate: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 * 0.01).collect();
        let mut blocked = vec![0.0; c * hw];
        to_blocked(&image, c, hw, &mut blocked);
        let (image_shape, gate_shape, empty_shape) = ([1, c, 2, 3], [1, c, 1, 1], [1, c, 0, 3]);
        let op = build(&node(OpKind::Mul, 2, vec![]), Activation::Relu).unwrap();
        let want = run(&*op, &[act(&image_shape, &image), act(&gate_shape, &gate)]).unwrap().remove(0).1;
        for at in [0, 1] {
            let (x, g) = (act(&image_shape, &blocked), act(&gate_shape, &gate));
            let inputs = if at == 0 { [x, g] } else { [g, x] };
            assert_eq!(
                op.blocked_use(&inputs, &pith_kernels::Kernels::default()),
                Some(BlockedUse::Tied { input: at, gain: 0 })
            );
            let mut y = vec![f32::NAN; c * hw];
            let mut outs = [Out { shape: &image_shape, data: &mut y }];
            let layouts = NodeLayouts { inputs: 1 << at, outputs: 1 };
            op.run_laid_out(&inputs, &mut outs, &mut [], &ExecCtx::default(), layouts).unwrap();
            let mut got = vec![0.0; c * hw];
            to_planar(&y, c, hw, &mut got);
            assert_eq!(got, want, "gate at input {}", 1 - at);
        }
        let empty = [act(&empty_shape, &[]), act(&gate_shape, &gate)];
        let mut outs = [Out { shape: &empty_shape, data: &mut [] }];
        let layouts = NodeLayouts { inputs: 1, outputs: 1 };
        let err = op.run_laid_out(&empty, &mut outs, &mut [], &ExecCtx::default(), layouts).unwrap_err();
        assert!(err.to_string().contains("16-channel blocks of pixels"), "{err}");
    }

    #[test]
    fn a_fused_activation_applies_to_float_results_only() {
        let op = build(&node(OpKind::Add, 2, vec![]), Activation::Relu).unwrap();
        let (a, b) = ([1.0f32, -3.0, 0.5, -0.25], [-2.0f32, 1.0, 0.25, 0.0]);
        let got = run(&*op, &[act(&[4], &a), act(&[4], &b)]).unwrap();
        assert_eq!(got[0].1, [0.0, 0.0, 0.75, 0.0]);
        let ints = Tensor::from_i64(vec![2], vec![1, -5]);
        let known = Arg { shape: &[2], elem: ElemType::I64, data: Some(ArgData::Known(&ints)) };
        assert!(op.eval(&[Some(known), Some(known)]).is_err());
    }

    /// Plain per-element reference using explicit multi-indices.
    fn reference(a: &[f32], sa: &[usize], b: &[f32], sb: &[usize], f: fn(f32, f32) -> f32) -> Vec<f32> {
        let out = broadcast_shapes(sa, sb).unwrap();
        let n: usize = out.iter().product();
        let flat = |shape: &[usize], idx: &[usize]| {
            let lead = idx.len() - shape.len();
            shape.iter().enumerate().fold(0, |acc, (i, &d)| acc * d + if d == 1 { 0 } else { idx[lead + i] })
        };
        (0..n)
            .map(|mut k| {
                let mut idx = vec![0; out.len()];
                for d in (0..out.len()).rev() {
                    idx[d] = k % out[d];
                    k /= out[d];
                }
                f(a[flat(sa, &idx)], b[flat(sb, &idx)])
            })
            .collect()
    }

    #[test]
    fn repeats_to_agrees_with_the_repeated_shape() {
        let shapes: &[&[usize]] =
            &[&[], &[3], &[1, 2, 3], &[1, 2, 6], &[1, 2, 6, 6], &[1, 2, 3, 3], &[2, 3, 3]];
        for &shape in shapes {
            for repeat in [[1, 1], [2, 2], [1, 2], [2, 1]] {
                for &target in shapes {
                    let want = repeated_shape(shape, repeat).as_deref() == Some(target);
                    assert_eq!(
                        repeats_to(shape, repeat, target),
                        want,
                        "{shape:?} x {repeat:?} -> {target:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn broadcasting_matches_reference_for_assorted_shapes() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4], &[2, 3, 4]),
            (&[2, 3, 4], &[]),
            (&[1], &[3, 5]),
            (&[2, 3, 5, 7], &[1, 3, 1, 1]),
            (&[3, 1, 5], &[4, 1]),
            (&[1, 3, 1], &[2, 1, 4]),
            (&[2, 1, 3, 1], &[5, 1, 2]),
            (&[4, 1], &[1, 4]),
            (&[0, 3], &[1, 3]),
            (&[3, 0], &[1]),
            // Axes that never coalesce, past the broadcast's stack capacity (8, 9 and 11).
            (&[2, 1, 2, 1, 2, 1, 2, 1], &[1, 3, 1, 3, 1, 3, 1, 3]),
            (&[2, 1, 2, 1, 2, 1, 2, 1, 2], &[1, 3, 1, 3, 1, 3, 1, 3, 1]),
            (&[2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2], &[1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1]),
        ];
        for (i, &(sa, sb)) in cases.iter().enumerate() {
            for kind in [OpKind::Add, OpKind::Sub, OpKind::Mul, OpKind::Div] {
                let a = values(i as u64, sa.iter().product());
                let b = values(100 + i as u64, sb.iter().product());
                let op = build_plain(&node(kind, 2, vec![])).unwrap();
                let got = run(&*op, &[act(sa, &a), act(sb, &b)]).unwrap();
                let f = formula(kind);
                assert_eq!(got[0].0, broadcast_shapes(sa, sb).unwrap().to_vec());
                assert_eq!(got[0].1, reference(&a, sa, &b, sb, f), "{kind:?} {sa:?} {sb:?}");
                // And the other operand order.
                let got = run(&*op, &[act(sb, &b), act(sa, &a)]).unwrap();
                assert_eq!(got[0].1, reference(&b, sb, &a, sa, f), "{kind:?} {sb:?} {sa:?}");
            }
        }
        assert!(broadcast_shapes(&[2, 3], &[4, 3]).is_err());
    }

    /// Any output range, computed alone, equals the same elements of the whole output: the
    /// property the multi-threaded split relies on (parts start mid-block and mid-odometer).
    #[test]
    fn output_ranges_match_the_whole() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 5, 7], &[2, 3, 5, 7]),
            (&[2, 3, 5, 7], &[1, 3, 1, 1]),
            (&[3, 1, 5], &[4, 1]),
            (&[2, 1, 3, 1], &[5, 1, 2]),
            (&[1, 7, 1], &[6, 1, 5]),
            (&[2, 1, 2, 1, 2, 1, 2, 1, 2], &[1, 3, 1, 3, 1, 3, 1, 3, 1]),
            (&[2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2], &[1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1]),
        ];
        for &(sa, sb) in cases {
            let (a, b) = (values(1, sa.iter().product()), values(2, sb.iter().product()));
            let shape = broadcast_shapes(sa, sb).unwrap();
            let bc = Broadcast::new(sa, sb, &shape);
            let n: usize = shape.iter().product();
            let mut whole = vec![0.0f32; n];
            bc.zip(&a, &b, 0, &mut whole, |x, y| x * 3.0 - y);
            for (start, len) in [(0, 1), (1, 4), (3, 11), (n / 2, n - n / 2), (n - 1, 1), (5, n - 9)] {
                let mut part = vec![0.0f32; len];
                bc.zip(&a, &b, start, &mut part, |x, y| x * 3.0 - y);
                assert_eq!(part, whole[start..start + len], "{sa:?} {sb:?} from {start}, {len} elements");
            }
        }
    }

    #[test]
    fn threaded_run_matches_single_threaded() {
        let (sa, sb): (&[usize], &[usize]) = (&[1, 16, 182, 182], &[1, 16, 1, 1]);
        let (a, b) = (values(3, sa.iter().product()), values(4, sb.iter().product()));
        assert!(a.len() >= 3 * SPLIT_MIN_ELEMENTS, "large enough to split over 3 threads");
        let op = build_plain(&node(OpKind::Mul, 2, vec![])).unwrap();
        let one = run(&*op, &[act(sa, &a), act(sb, &b)]).unwrap();
        let ctx = ExecCtx { kernels: pith_kernels::Kernels::new(3).unwrap() };
        let mut out = vec![0.0f32; a.len()];
        let args = [act(sa, &a), act(sb, &b)];
        let mut outs = [Out { shape: sa, data: &mut out }];
        op.run(&args, &mut outs, &mut [], &ctx).unwrap();
        assert_eq!(out, one[0].1);
    }

    #[test]
    fn repeated_runs_add_what_the_indexed_sum_adds() {
        let src = values(8, 16);
        for ox in 0..17 {
            for len in [0, 1, 2, 5, 8, 13, 31, 40] {
                let check = |g: usize, add: fn(&mut [f32], &[f32], usize)| {
                    let len = len.min(16 * g - ox.min(16 * g));
                    let mut got = values(9, len);
                    let want: Vec<f32> = got.iter().enumerate().map(|(j, v)| v + src[(ox + j) / g]).collect();
                    add(&mut got, &src, ox);
                    assert_eq!(got, want, "G {g}, from {ox}, {len} long");
                };
                check(2, add_each::<2>);
                check(4, add_each::<4>);
                check(8, add_each::<8>);
            }
        }
    }

    #[test]
    fn a_repeated_addend_matches_its_upsampling_written_out() {
        // y = a * b + r with r repeated 2 x 3 times along the last axes (a folded nearest
        // upsampling): the same shape as the product (added block by block, on 1 and 3 threads,
        // over blocks that start mid-row), or broadcast over channels (written out first).
        let (sa, sb) = ([1usize, 2, 128, 96], [1usize, 2, 1, 1]);
        let (a, b) = (values(5, sa.iter().product()), values(6, 2));
        let attrs = || vec![(crate::fuse::ADDEND_REPEAT, Attr::Ints(vec![2, 3]))];
        let op = build(&node(OpKind::Mul, 3, attrs()), Activation::Relu).unwrap();
        for channels in [2usize, 1] {
            let sr = [1, channels, 64, 32];
            let r = values(7, sr.iter().product());
            let mut want = vec![0.0f32; a.len()];
            for (i, w) in want.iter_mut().enumerate() {
                let (c, y, x) = (i / (128 * 96), i / 96 % 128, i % 96);
                let rv = r[((c % channels) * 64 + y / 2) * 32 + x / 3];
                *w = (a[i] * b[c] + rv).max(0.0);
            }
            assert_eq!(op.infer(&[act(&sa, &a), act(&sb, &b), act(&sr, &r)]).unwrap()[0].1, sa.to_vec());
            for threads in [1, 3] {
                let ctx = ExecCtx { kernels: pith_kernels::Kernels::new(threads).unwrap() };
                let mut out = vec![f32::NAN; a.len()];
                let mut outs = [Out { shape: &sa, data: &mut out }];
                op.run(&[act(&sa, &a), act(&sb, &b), act(&sr, &r)], &mut outs, &mut [], &ctx).unwrap();
                assert_eq!(out, want, "{channels} channel(s), {threads} thread(s)");
            }
        }
        let bad = node(OpKind::Mul, 3, vec![(crate::fuse::ADDEND_REPEAT, Attr::Ints(vec![2]))]);
        assert!(build(&bad, Activation::None).is_err());
    }

    /// The element formula each operator must match, written independently of the op.
    fn formula(op: OpKind) -> fn(f32, f32) -> f32 {
        match op {
            OpKind::Add => |a, b| a + b,
            OpKind::Sub => |a, b| a - b,
            OpKind::Mul => |a, b| a * b,
            _ => |a, b| a / b,
        }
    }

    #[test]
    fn pow_and_prelu() {
        let x = [-2.0f32, -0.5, 0.0, 1.5, 3.0, -4.0];
        let op = build_plain(&node(OpKind::Pow, 2, vec![])).unwrap();
        let got = run(&*op, &[act(&[2, 3], &x), act(&[], &[2.0])]).unwrap();
        assert_eq!(got[0].1, x.iter().map(|v| v * v).collect::<Vec<_>>());
        // Squares (the product path) and other exponents (libm) give `powf`'s bits, also for
        // NaN, infinities, signed zeros and values whose square overflows or underflows.
        let wide: Vec<f32> = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 1e20, -3e-23, 0.1, -7.25]
            .into_iter()
            .chain(values(5, 37))
            .collect();
        for e in [2.0f32, 3.0, 0.5, -2.0] {
            let got = run(&*op, &[act(&[wide.len()], &wide), act(&[1], &[e])]).unwrap();
            let want: Vec<u32> = wide.iter().map(|v| v.powf(e).to_bits()).collect();
            assert_eq!(got[0].1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want, "exponent {e}");
        }
        let op = build_plain(&node(OpKind::PRelu, 2, vec![])).unwrap();
        let slope = [0.1f32, 0.2, 0.3];
        let got = run(&*op, &[act(&[2, 3, 1], &x), act(&[3, 1], &slope)]).unwrap();
        let want: Vec<f32> =
            x.iter().enumerate().map(|(i, &v)| if v < 0.0 { v * slope[i % 3] } else { v }).collect();
        assert_eq!(got[0].1, want);
        // The slope may not grow the input.
        assert!(op.infer(&[act(&[3], &x[..3]), act(&[2, 3], &x)]).is_err());
    }

    #[test]
    fn integer_arithmetic_runs_at_plan_time() {
        fn arg(t: &Tensor) -> Option<Arg<'_>> {
            Some(Arg { shape: &t.shape, elem: ElemType::I64, data: Some(ArgData::Known(t)) })
        }
        let a = &Tensor::from_i64(vec![3], vec![7, -7, 12]);
        let b = &Tensor::from_i64(vec![1], vec![2]);
        for (kind, want) in [
            (OpKind::Add, vec![9, -5, 14]),
            (OpKind::Sub, vec![5, -9, 10]),
            (OpKind::Mul, vec![14, -14, 24]),
            (OpKind::Div, vec![3, -3, 6]),
        ] {
            let op = build_plain(&node(kind, 2, vec![])).unwrap();
            assert_eq!(op.infer(&[arg(a), arg(b)]).unwrap()[0].0, ElemType::I64);
            let out = op.eval(&[arg(a), arg(b)]).unwrap().unwrap();
            assert_eq!(out[0].buf, TensorBuf::I64(want), "{kind:?}");
        }
        let zero = &Tensor::from_i64(vec![], vec![0]);
        let op = build_plain(&node(OpKind::Div, 2, vec![])).unwrap();
        assert!(op.eval(&[arg(a), arg(zero)]).unwrap_err().0.contains("division by zero"));
        let unknown = Some(Arg { shape: &[3], elem: ElemType::I64, data: None });
        assert!(op.eval(&[arg(a), unknown]).is_err());
        // A fused addend (shape arithmetic that took the Add after it), broadcast, checked.
        let r = &Tensor::from_i64(vec![2, 1], vec![1, -1]);
        let op = build_plain(&node(OpKind::Mul, 3, vec![])).unwrap();
        assert_eq!(op.infer(&[arg(a), arg(b), arg(r)]).unwrap()[0].1, vec![2, 3]);
        let out = op.eval(&[arg(a), arg(b), arg(r)]).unwrap().unwrap();
        assert_eq!(out[0].buf, TensorBuf::I64(vec![15, -13, 25, 13, -15, 23]));
        let big = &Tensor::from_i64(vec![1], vec![i64::MAX]);
        assert!(op.eval(&[arg(a), arg(b), arg(big)]).unwrap_err().0.contains("undefined"));
    }
}
