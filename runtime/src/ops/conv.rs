//! ONNX `Conv` and `ConvTranspose` (1-D and 2-D, NCHW), running on weights in their stored encoding,
//! plus the window geometry (`kernel_shape`, `strides`, `dilations`, `pads`, `auto_pad`) that the
//! pooling ops share.

use std::borrow::Cow;
use std::sync::OnceLock;

use pith_format::ir::{Attr, ElemType, Node};
use pith_format::TensorView;
use pith_kernels::{
    Activation, ChannelActivation, Conv2dParams, ConvGeometry, Int8Filters, Int8RowTables, Kernels, Layout,
};

use super::binary::{broadcast_shapes, zip_broadcast};
use super::{attrs, Arg, ArgData, AxisList, BlockedUse, ExecCtx, NodeLayouts, Op, OpResult, Out, Prepared};
use crate::error::OpError;
use crate::op_bail;

/// ONNX `auto_pad`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoPad {
    /// Explicit `pads`.
    NotSet,
    /// Output `ceil(in / stride)`, odd padding extra at the end.
    SameUpper,
    /// Output `ceil(in / stride)`, odd padding extra at the beginning.
    SameLower,
    /// No padding.
    Valid,
}

/// Window attributes shared by convolutions and pools, as written on the node.
#[derive(Debug, Clone)]
pub struct Window {
    /// `kernel_shape`, if given.
    pub kernel_shape: Option<Vec<usize>>,
    strides: Option<Vec<usize>>,
    dilations: Option<Vec<usize>>,
    pads: Option<Vec<usize>>,
    /// `auto_pad`.
    pub auto_pad: AutoPad,
}

/// One resolved spatial axis of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Axis {
    /// Kernel extent.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Dilation.
    pub dil: usize,
    /// Padding before the input.
    pub pad_begin: usize,
    /// Padding after the input.
    pub pad_end: usize,
    /// Output extent.
    pub out: usize,
}

/// A per-axis attribute as it is stored (or its default for every axis), read without a copy.
#[derive(Debug, Clone, Copy)]
struct PerAxis<'a> {
    values: Option<&'a [usize]>,
    default: usize,
}

impl<'a> PerAxis<'a> {
    /// `v` checked to hold `per` values for each of `rank` axes, or `default` for each when
    /// absent.
    fn new(v: &'a Option<Vec<usize>>, name: &str, rank: usize, per: usize, default: usize) -> OpResult<Self> {
        match v {
            Some(v) if v.len() != rank * per => {
                op_bail!("attribute '{name}' has {} values for {rank} spatial axes", v.len())
            }
            _ => Ok(PerAxis { values: v.as_deref(), default }),
        }
    }

    /// The value of axis `i`.
    fn get(&self, i: usize) -> usize {
        self.values.map_or(self.default, |v| v[i])
    }
}

fn positive_list(node: &Node, name: &str) -> OpResult<Option<Vec<usize>>> {
    attrs::ints(node, name)?
        .map(|v| {
            v.iter()
                .map(|&x| {
                    usize::try_from(x)
                        .ok()
                        .filter(|&x| x >= 1)
                        .ok_or_else(|| OpError(format!("attribute '{name}' must be >= 1, found {x}")))
                })
                .collect()
        })
        .transpose()
}

impl Window {
    /// Reads the window attributes of `node`.
    pub fn parse(node: &Node) -> OpResult<Window> {
        let pads = attrs::ints(node, "pads")?
            .map(|v| {
                v.iter()
                    .map(|&x| {
                        usize::try_from(x)
                            .map_err(|_| OpError(format!("attribute 'pads' must be >= 0, found {x}")))
                    })
                    .collect::<OpResult<Vec<usize>>>()
            })
            .transpose()?;
        let auto_pad = match attrs::string(node, "auto_pad", "NOTSET")?.as_str() {
            "NOTSET" | "" => AutoPad::NotSet,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            "VALID" => AutoPad::Valid,
            other => op_bail!("unknown auto_pad '{other}'"),
        };
        Ok(Window {
            kernel_shape: positive_list(node, "kernel_shape")?,
            strides: positive_list(node, "strides")?,
            dilations: positive_list(node, "dilations")?,
            pads,
            auto_pad,
        })
    }

    /// Per-axis attribute `v` (or 1 when absent), checked to have one value per spatial axis.
    fn per_axis<'v>(v: &'v Option<Vec<usize>>, name: &str, rank: usize) -> OpResult<PerAxis<'v>> {
        PerAxis::new(v, name, rank, 1, 1)
    }

    /// The `pads` attribute when it applies (`auto_pad` NOTSET), checked to have a begin and an
    /// end value per spatial axis; zeros otherwise.
    fn explicit_pads(&self, rank: usize) -> OpResult<PerAxis<'_>> {
        if self.auto_pad == AutoPad::NotSet {
            PerAxis::new(&self.pads, "pads", rank, 2, 0)
        } else {
            Ok(PerAxis { values: None, default: 0 })
        }
    }

    /// Resolves every spatial axis of a forward window (conv or pool) over input extents `input`
    /// with kernel extents `kernel`. `ceil_mode` rounds the output up (pools only).
    pub fn resolve(&self, input: &[usize], kernel: &[usize], ceil_mode: bool) -> OpResult<Vec<Axis>> {
        let rank = input.len();
        let strides = Self::per_axis(&self.strides, "strides", rank)?;
        let dils = Self::per_axis(&self.dilations, "dilations", rank)?;
        let pads = self.explicit_pads(rank)?;
        (0..rank)
            .map(|i| {
                let (k, s, d, n) = (kernel[i], strides.get(i), dils.get(i), input[i]);
                let span = d * (k - 1) + 1;
                let (pad_begin, pad_end, out) = match self.auto_pad {
                    AutoPad::SameUpper | AutoPad::SameLower => {
                        let out = n.div_ceil(s);
                        let total = ((out.max(1) - 1) * s + span).saturating_sub(n);
                        let small = total / 2;
                        if self.auto_pad == AutoPad::SameUpper {
                            (small, total - small, out)
                        } else {
                            (total - small, small, out)
                        }
                    }
                    _ => {
                        let (pb, pe) = (pads.get(i), pads.get(rank + i));
                        let padded = n + pb + pe;
                        if padded < span {
                            op_bail!(
                                "window of extent {span} is larger than the padded input extent {padded}"
                            );
                        }
                        let mut out =
                            if ceil_mode { (padded - span).div_ceil(s) + 1 } else { (padded - span) / s + 1 };
                        // A window must start inside the input or its leading padding.
                        if ceil_mode && (out - 1) * s >= n + pb {
                            out -= 1;
                        }
                        (pb, pe, out)
                    }
                };
                Ok(Axis { kernel: k, stride: s, dil: d, pad_begin, pad_end, out })
            })
            .collect()
    }
}

/// ONNX `Conv`.
#[derive(Debug)]
struct Conv {
    window: Window,
    group: usize,
    /// Applied to the output in the kernel's epilogue (a fused activation node).
    activation: Activation,
    /// The residual (fourth input) holds only the first output channels; the rest are zero
    /// (a channel-padding Pad fused away, see [`crate::fuse::RESIDUAL_CHANNEL_PAD`]).
    residual_channel_pad: bool,
    /// The constant weights rounded to s8, made on the first run of a session with int8
    /// activations when the layer qualifies (`None` inside: it does not, or they failed to decode
    /// and the f32 path reports why).
    int8: OnceLock<Option<Int8Filters>>,
    /// For a layer that is a GEMV ([`Conv2dParams::is_gemv`]) in such a session: the int8 GEMV's
    /// tables of its constant 4-bit codebook weights, made on the first run.
    int8_rows: OnceLock<Option<Int8RowTables>>,
}

/// ONNX `ConvTranspose`.
#[derive(Debug)]
struct ConvTranspose {
    window: Window,
    group: usize,
    /// Applied to the output in the kernel's epilogue (a fused activation node).
    activation: Activation,
    output_padding: Option<Vec<usize>>,
    output_shape: Option<Vec<usize>>,
    /// A BatchNormalization folded in at session time ([`crate::fuse::BATCH_NORM_EPSILON`]): its
    /// epsilon, its four parameters being inputs 3 to 6 (constants, as the session's fusion
    /// makes sure: a plan folds them once, [`PreparedConvTranspose`]).
    batch_norm_epsilon: Option<f32>,
}

fn parse_group(node: &Node) -> OpResult<usize> {
    let g = attrs::int(node, "group", 1)?;
    usize::try_from(g)
        .ok()
        .filter(|&g| g >= 1)
        .ok_or_else(|| OpError(format!("attribute 'group' must be >= 1, found {g}")))
}

/// Builds the op for a `Conv` node whose output then goes through `activation`.
pub fn build_conv(node: &Node, activation: Activation) -> OpResult<Box<dyn Op>> {
    Ok(Box::new(Conv::new(node, activation)?))
}

impl Conv {
    fn new(node: &Node, activation: Activation) -> OpResult<Conv> {
        Ok(Conv {
            window: Window::parse(node)?,
            group: parse_group(node)?,
            activation,
            residual_channel_pad: attrs::int(node, crate::fuse::RESIDUAL_CHANNEL_PAD, 0)? != 0,
            int8: OnceLock::new(),
            int8_rows: OnceLock::new(),
        })
    }
}

/// Builds the op for a `ConvTranspose` node whose output then goes through `activation`.
pub fn build_conv_transpose(node: &Node, activation: Activation) -> OpResult<Box<dyn Op>> {
    let non_negative = |name: &str| -> OpResult<Option<Vec<usize>>> {
        attrs::ints(node, name)?
            .map(|v| {
                v.iter()
                    .map(|&x| {
                        usize::try_from(x)
                            .map_err(|_| OpError(format!("attribute '{name}' must be >= 0, found {x}")))
                    })
                    .collect()
            })
            .transpose()
    };
    Ok(Box::new(ConvTranspose {
        window: Window::parse(node)?,
        group: parse_group(node)?,
        output_padding: non_negative("output_padding")?,
        output_shape: non_negative("output_shape")?,
        activation,
        batch_norm_epsilon: match node.attr(crate::fuse::BATCH_NORM_EPSILON) {
            Some(Attr::Float(eps)) => Some(*eps),
            Some(_) => op_bail!("attribute '{}' must be a float", crate::fuse::BATCH_NORM_EPSILON),
            None => None,
        },
    }))
}

/// A BatchNormalization folded into the layer before it, as that layer's factor and bias per
/// output channel: `scale = gamma / sqrt(var + eps)` and `(bias - mean) * scale + beta`, from its
/// parameters (`gamma`, `beta`, `mean`, `var`: inputs 3 to 6, `channels` values each). In f64,
/// as the compressor folds one into a Conv.
fn folded_batch_norm(
    inputs: &[Option<Arg<'_>>],
    eps: f32,
    bias: Option<&[f32]>,
    channels: usize,
) -> OpResult<(Vec<f32>, Vec<f32>)> {
    const NAMES: [&str; 4] = ["scale", "B", "input_mean", "input_var"];
    let mut params = Vec::with_capacity(4);
    for (i, name) in NAMES.iter().enumerate() {
        let arg = input(inputs, 3 + i, name)?;
        if arg.numel() != channels {
            op_bail!("fused BatchNormalization '{name}' has {} values, expected {channels}", arg.numel());
        }
        params.push(arg.f32s()?);
    }
    let (gamma, beta, mean, var) = (&params[0], &params[1], &params[2], &params[3]);
    let scale: Vec<f64> =
        (0..channels).map(|c| gamma[c] as f64 / (var[c] as f64 + eps as f64).sqrt()).collect();
    let shift = (0..channels)
        .map(|c| ((bias.map_or(0.0, |b| b[c] as f64) - mean[c] as f64) * scale[c] + beta[c] as f64) as f32)
        .collect();
    Ok((scale.into_iter().map(|s| s as f32).collect(), shift))
}

/// The required input `i`.
fn input<'a, 'b>(inputs: &'b [Option<Arg<'a>>], i: usize, what: &str) -> OpResult<&'b Arg<'a>> {
    match inputs.get(i) {
        Some(Some(a)) => Ok(a),
        _ => op_bail!("missing input {i} ({what})"),
    }
}

/// Checks the data/weight ranks (3 = 1-D, 4 = 2-D) and returns the spatial extents as 2-D
/// (`[1, W]` for 1-D).
fn spatial_2d(x: &[usize], w: &[usize]) -> OpResult<([usize; 2], [usize; 2])> {
    let dims = match (x.len(), w.len()) {
        (4, 4) => ([x[2], x[3]], [w[2], w[3]]),
        (3, 3) => ([1, x[2]], [1, w[2]]),
        (r, _) if r > 4 => op_bail!("{}-D convolution is not supported (only 1-D and 2-D)", r - 2),
        (r, q) => op_bail!("input rank {r} and weight rank {q} do not form a 1-D or 2-D convolution"),
    };
    if dims.1.contains(&0) {
        op_bail!("weight shape {w:?} has an empty kernel");
    }
    Ok(dims)
}

/// Extends 1-D axes to 2-D with a trivial H axis.
fn axes_2d(axes: &[Axis]) -> [Axis; 2] {
    if axes.len() == 2 {
        [axes[0], axes[1]]
    } else {
        let unit = Axis { kernel: 1, stride: 1, dil: 1, pad_begin: 0, pad_end: 0, out: 1 };
        [unit, axes[0]]
    }
}

/// The optional bias of `len` values (input 2).
fn bias<'a>(inputs: &[Option<Arg<'a>>], len: usize) -> OpResult<Option<Cow<'a, [f32]>>> {
    match inputs.get(2) {
        Some(Some(b)) => {
            if b.numel() != len {
                op_bail!("bias has {} values, expected {len}", b.numel());
            }
            if b.is_known() {
                Ok(Some(b.f32s()?))
            } else {
                Ok(None)
            }
        }
        _ => Ok(None),
    }
}

/// The weight as a view in its stored encoding: zero-copy for constants, borrowed or decoded otherwise.
enum Weight<'a> {
    View(TensorView<'a>),
    Dense(Cow<'a, [f32]>),
}

impl<'a> Weight<'a> {
    fn of(arg: &Arg<'a>) -> OpResult<Weight<'a>> {
        match arg.data {
            Some(ArgData::Const(v)) => Ok(Weight::View(v)),
            _ => Ok(Weight::Dense(arg.f32s()?)),
        }
    }

    fn view(&self) -> TensorView<'_> {
        match self {
            Weight::View(v) => *v,
            Weight::Dense(d) => TensorView::F32(d),
        }
    }
}

fn kernel_err(e: pith_kernels::KernelError) -> OpError {
    OpError(e.to_string())
}

impl Conv {
    /// Kernel parameters and output shape.
    fn geometry(&self, x: &[usize], w: &[usize]) -> OpResult<(Conv2dParams, Vec<usize>)> {
        let (input, kernel) = spatial_2d(x, w)?;
        let rank = x.len() - 2;
        let (n, c, m) = (x[0], x[1], w[0]);
        if c % self.group != 0 || m % self.group != 0 {
            op_bail!("group {} does not divide {c} input and {m} output channels", self.group);
        }
        if w[1] * self.group != c {
            op_bail!(
                "weight expects {} input channels per group, input has {c} channels in {} groups",
                w[1],
                self.group
            );
        }
        if let Some(ks) = &self.window.kernel_shape {
            if ks[..] != w[2..] {
                op_bail!("kernel_shape {ks:?} does not match weight shape {w:?}");
            }
        }
        let axes = self.window.resolve(&input[2 - rank..], &kernel[2 - rank..], false)?;
        Ok(params_2d(n, c, m, &input, &kernel, &axes, self.group))
    }
}

/// Kernel parameters and the output shape `[n, m, out...]` from resolved spatial `axes`
/// (one or two of them; 1-D convolutions run as 2-D with a height of 1).
fn params_2d(
    n: usize,
    c: usize,
    m: usize,
    input: &[usize],
    kernel: &[usize],
    axes: &[Axis],
    groups: usize,
) -> (Conv2dParams, Vec<usize>) {
    let [ah, aw] = axes_2d(axes);
    let p = Conv2dParams {
        batch: n,
        in_c: c,
        in_h: input[0],
        in_w: input[1],
        out_c: m,
        out_h: ah.out,
        out_w: aw.out,
        k_h: kernel[0],
        k_w: kernel[1],
        stride_h: ah.stride,
        stride_w: aw.stride,
        pad_top: ah.pad_begin,
        pad_left: aw.pad_begin,
        dil_h: ah.dil,
        dil_w: aw.dil,
        groups,
    };
    let mut shape = Vec::with_capacity(2 + axes.len());
    shape.extend([n, m].into_iter().chain(axes.iter().map(|a| a.out)));
    (p, shape)
}

/// The residual operand of a Conv that absorbed the `Add` after it (a fourth input, only in
/// session graphs: see [`crate::fuse`]).
fn residual<'b, 'a>(inputs: &'b [Option<Arg<'a>>]) -> Option<&'b Arg<'a>> {
    inputs.get(RESIDUAL_INPUT).and_then(Option::as_ref)
}

/// The input of a Conv that absorbed the residual `Add` after it (see [`crate::fuse`]).
const RESIDUAL_INPUT: usize = 3;

/// The per-channel PRelu slope of a Conv that absorbed the `PRelu` after it (a fifth input, only
/// in session graphs: see [`crate::fuse`]).
fn prelu_slope<'b, 'a>(inputs: &'b [Option<Arg<'a>>]) -> Option<&'b Arg<'a>> {
    inputs.get(crate::fuse::PRELU_SLOPE_INPUT).and_then(Option::as_ref)
}

/// The other operand of the product `Mul(inputs[0], inputs[5])` a 1×1 Conv absorbed (a sixth
/// input, only in session graphs: see [`crate::fuse::fuse_input_scales`]).
fn input_scale<'b, 'a>(inputs: &'b [Option<Arg<'a>>]) -> Option<&'b Arg<'a>> {
    inputs.get(crate::fuse::INPUT_SCALE_INPUT).and_then(Option::as_ref)
}

/// How a Conv reads its data: input 0, or the product of inputs 0 and 5 it absorbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gated {
    /// No product: input 0 is the data.
    No,
    /// Input `data` times one factor per channel of each image (input `factors`, a squeeze-excite
    /// gate) into an ungrouped 1×1 layer over more than one pixel: the kernels fold the factors
    /// into the filters they decode.
    Folded { data: usize, factors: usize },
    /// Any other product (broadcast as `Mul` does): computed into the front of the scratch
    /// (`len` values), then convolved as an input of its own.
    Materialised { len: usize },
}

/// Whether `factors` holds one value per channel of each image of a tensor of `shape`
/// (`[N, C, 1, ..]` against `[N, C, ..]`).
fn per_channel(factors: &[usize], shape: &[usize]) -> bool {
    factors.len() == shape.len()
        && shape.len() >= 3
        && factors[..2] == shape[..2]
        && factors[2..].iter().all(|&d| d == 1)
}

impl Conv {
    /// The convolution's own output shape, and the node's where it differs (the broadcast with a
    /// residual of another shape).
    fn shapes(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<(Conv2dParams, Vec<usize>, Option<Vec<usize>>)> {
        let (x, w) = (data_shape(inputs)?, input(inputs, 1, "W")?);
        let (p, shape) = self.geometry(&x, w.shape)?;

        let broadcast = match residual(inputs) {
            Some(r) if self.residual_channel_pad => {
                let fits = r.shape.len() == shape.len()
                    && r.shape[1] <= shape[1]
                    && r.shape.iter().zip(&shape).enumerate().all(|(i, (a, b))| i == 1 || a == b);
                if !fits {
                    op_bail!("channel-padded residual of shape {:?} does not fit output {shape:?}", r.shape);
                }
                None
            }
            Some(r) => Some(broadcast_shapes(&shape, r.shape)?.to_vec()).filter(|out| *out != shape),
            None => None,
        };
        let out = broadcast.as_ref().unwrap_or(&shape);
        if let Some(s) = prelu_slope(inputs) {
            let n: usize = s.shape.iter().product();
            if n != p.out_c || out.get(1) != Some(&p.out_c) {
                op_bail!("fused PRelu slope of shape {:?} for an output of shape {out:?}", s.shape);
            }
        }
        Ok((p, shape, broadcast))
    }

    /// How the layer `p` reads its data (see [`Gated`]).
    fn gated(&self, inputs: &[Option<Arg<'_>>], p: &Conv2dParams) -> OpResult<Gated> {
        let Some(b) = input_scale(inputs) else { return Ok(Gated::No) };
        let a = input(inputs, 0, "X")?;
        let shape = broadcast_shapes(a.shape, b.shape)?;
        let folds = p.is_pointwise() && p.groups == 1 && !p.is_gemv();
        let folded = [(0, a, b), (crate::fuse::INPUT_SCALE_INPUT, b, a)]
            .into_iter()
            .find(|(_, x, s)| folds && x.shape == &shape[..] && per_channel(s.shape, &shape));
        Ok(match folded {
            Some((0, ..)) => Gated::Folded { data: 0, factors: crate::fuse::INPUT_SCALE_INPUT },
            Some(_) => Gated::Folded { data: crate::fuse::INPUT_SCALE_INPUT, factors: 0 },
            None => Gated::Materialised { len: shape.iter().product() },
        })
    }
}

/// What a Conv derives from its inputs' shapes: the kernel parameters, the convolution's own
/// output shape, the node's where a residual broadcasts it, and how it reads its data.
#[derive(Debug)]
struct ConvShapes {
    p: Conv2dParams,
    conv: Vec<usize>,
    broadcast: Option<Vec<usize>>,
    gated: Gated,
}

/// What a Conv prepares for a plan ([`Op::prepare`]): its shapes, the kernels' geometry of the
/// layer when it runs planar, and its bias decoded to f32 when the model stores it otherwise
/// (f16), so that runs neither resolve the window nor decode the bias again.
#[derive(Debug)]
struct PreparedConv {
    shapes: ConvShapes,
    geometry: Option<ConvGeometry>,
    bias: Option<Vec<f32>>,
}

impl Conv {
    /// [`Conv::shapes`] and [`Conv::gated`] together.
    fn conv_shapes(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<ConvShapes> {
        let (p, conv, broadcast) = self.shapes(inputs)?;
        let gated = self.gated(inputs, &p)?;
        Ok(ConvShapes { p, conv, broadcast, gated })
    }
}

impl Conv {
    /// Scratch of the convolution itself (without a materialised product).
    fn conv_scratch_len(&self, inputs: &[Option<Arg<'_>>]) -> usize {
        match self.shapes(inputs) {
            // A residual of another shape is added by broadcasting, after the convolution wrote
            // its own output to scratch.
            Ok((p, conv, broadcast))
                if !self.residual_channel_pad
                    && (broadcast.is_some() || residual(inputs).is_some_and(|r| r.shape != conv)) =>
            {
                Kernels::default().conv2d_scratch_len(&p) + conv.iter().product::<usize>()
            }
            Ok((p, _, _)) => Kernels::default().conv2d_scratch_len(&p),
            Err(_) => 0,
        }
    }
}

/// The shape of a Conv's data: input 0's, or that of its product with input 5 (see [`Gated`]).
fn data_shape(inputs: &[Option<Arg<'_>>]) -> OpResult<AxisList<usize>> {
    let x = input(inputs, 0, "X")?;
    match input_scale(inputs) {
        Some(s) => broadcast_shapes(x.shape, s.shape),
        None => Ok(x.shape.iter().copied().collect()),
    }
}

impl Conv {
    /// The layer's int8 filters, when the session runs int8 activations, the layer qualifies and
    /// its weights are a constant of the model (prepared on the first call).
    fn int8_filters(&self, weight: &Weight<'_>, p: &Conv2dParams, ctx: &ExecCtx) -> Option<&Int8Filters> {
        let Weight::View(view) = weight else { return None };
        if !ctx.kernels.int8_applies(p) {
            return None;
        }
        self.int8.get_or_init(|| Int8Filters::new(view, p.out_c, p.filter_len()).ok()).as_ref()
    }

    /// The int8 GEMV tables of a layer that is a GEMV, when the session runs int8 activations and
    /// its weights are a 4-bit codebook constant (prepared on the first call).
    fn int8_rows(&self, weight: &Weight<'_>, p: &Conv2dParams, ctx: &ExecCtx) -> Option<&Int8RowTables> {
        let Weight::View(view) = weight else { return None };
        if !ctx.kernels.int8_activations() || !p.is_gemv() {
            return None;
        }
        let prepare = || Int8RowTables::new(view, p.out_c, p.filter_len()).ok().flatten();
        self.int8_rows.get_or_init(prepare).as_ref()
    }
}

impl Op for Conv {
    fn blocked_use(&self, inputs: &[Option<Arg<'_>>], kernels: &Kernels) -> Option<BlockedUse> {
        let (p, conv_shape, broadcast) = self.shapes(inputs).ok()?;
        // A residual of the output's own shape at most; no per-channel slopes; one image.
        let residual = residual(inputs);
        if broadcast.is_some()
            || residual.is_some_and(|r| self.residual_channel_pad || r.shape != &conv_shape[..])
            || prelu_slope(inputs).is_some()
            || !matches!(self.gated(inputs, &p), Ok(Gated::No | Gated::Folded { data: 0, .. }))
            || p.batch != 1
            || input(inputs, 1, "W").is_ok_and(|w| Weight::of(w).is_err())
        {
            return None;
        }
        // Only a 1×1 layer reads a planar input into a blocked output, or a blocked input into
        // a planar output of channels that are not whole blocks (never blocked themselves); only
        // it and a depthwise layer run blocked on both sides.
        if kernels.blocked_supports(&p, Layout::Planar, Layout::Blocked)
            || kernels.blocked_supports(&p, Layout::Blocked, Layout::Planar)
        {
            return Some(BlockedUse::Free { residual: residual.map(|_| RESIDUAL_INPUT) });
        }
        // A depthwise layer: its output elements times its taps.
        let gain = p.batch * p.out_c * p.out_h * p.out_w * p.k_h * p.k_w;
        (residual.is_none() && kernels.blocked_supports(&p, Layout::Blocked, Layout::Blocked))
            .then_some(BlockedUse::Tied { input: 0, gain })
    }

    fn run_laid_out(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
        layouts: NodeLayouts,
    ) -> OpResult<()> {
        let shapes = self.conv_shapes(inputs)?;
        if layouts.all_planar() {
            self.run_planar(&shapes, None, inputs, outputs, scratch, ctx)
        } else {
            self.run_blocked(&shapes, None, inputs, outputs, scratch, ctx, layouts)
        }
    }

    fn prepare(
        &self,
        inputs: &[Option<Arg<'_>>],
        ctx: &ExecCtx,
        layouts: NodeLayouts,
    ) -> OpResult<Option<Prepared>> {
        let shapes = self.conv_shapes(inputs)?;
        // The blocked kernels and the int8 ones derive their own geometry.
        let geometry = (layouts.all_planar() && !ctx.kernels.int8_applies(&shapes.p))
            .then(|| ctx.kernels.conv_geometry(&shapes.p))
            .transpose()
            .map_err(kernel_err)?;
        // A constant bias stored other than as f32 (calibrated models store f16).
        let bias = match (bias(inputs, shapes.p.out_c)?, inputs.get(2).and_then(Option::as_ref)) {
            (Some(Cow::Owned(b)), Some(Arg { data: Some(ArgData::Const(_)), .. })) => Some(b),
            _ => None,
        };
        Ok(Some(std::sync::Arc::new(PreparedConv { shapes, geometry, bias })))
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
        let Some(prepared) = prepared.downcast_ref::<PreparedConv>() else {
            return self.run_laid_out(inputs, outputs, scratch, ctx, layouts);
        };
        let shapes = &prepared.shapes;
        if layouts.all_planar() {
            self.run_planar(shapes, Some(prepared), inputs, outputs, scratch, ctx)
        } else {
            self.run_blocked(shapes, Some(prepared), inputs, outputs, scratch, ctx, layouts)
        }
    }

    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        let (p, conv, broadcast) = self.shapes(inputs)?;
        bias(inputs, p.out_c)?;
        Ok(vec![(ElemType::F32, broadcast.unwrap_or(conv))])
    }

    fn scratch_len(&self, inputs: &[Option<Arg<'_>>]) -> usize {
        let product = match self.shapes(inputs).and_then(|(p, ..)| self.gated(inputs, &p)) {
            Ok(Gated::Materialised { len }) => len,
            _ => 0,
        };
        product + self.conv_scratch_len(inputs)
    }

    fn run(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        self.run_laid_out(inputs, outputs, scratch, ctx, NodeLayouts::default())
    }
}

/// The bias of a Conv: the one `prepared` decoded, else input 2 (decoded if not f32).
fn conv_bias<'a>(
    prepared: Option<&'a PreparedConv>,
    inputs: &[Option<Arg<'a>>],
    len: usize,
) -> OpResult<Option<Cow<'a, [f32]>>> {
    match prepared.and_then(|p| p.bias.as_deref()) {
        Some(b) => Ok(Some(Cow::Borrowed(b))),
        None => bias(inputs, len),
    }
}

impl Conv {
    /// [`Op::run_laid_out`] with some input or output blocked, for layer `shapes`.
    #[allow(clippy::too_many_arguments)]
    fn run_blocked(
        &self,
        shapes: &ConvShapes,
        prepared: Option<&PreparedConv>,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
        layouts: NodeLayouts,
    ) -> OpResult<()> {
        let (x, w) = (input(inputs, 0, "X")?, input(inputs, 1, "W")?);
        let p = &shapes.p;
        let b = conv_bias(prepared, inputs, p.out_c)?;
        let weight = Weight::of(w)?;
        let r = residual(inputs).map(|r| r.f32s()).transpose()?;
        let scale = match shapes.gated {
            Gated::No => None,
            Gated::Folded { data: 0, factors } => Some(input(inputs, factors, "gate")?.f32s()?),
            _ => {
                return Err(OpError(
                    "a blocked convolution takes only a per-channel product of its input".into(),
                ))
            }
        };
        let (x, w, y) = (&x.f32s()?, &weight.view(), &mut *outputs[0].data);
        let (x_layout, y_layout) = (layouts.input(0), layouts.output(0));
        if r.is_some() && layouts.input(RESIDUAL_INPUT) != y_layout {
            return Err(OpError("the residual is not in the output's layout".into()));
        }
        ctx.kernels
            .conv2d_blocked(
                x,
                x_layout,
                w,
                b.as_deref(),
                r.as_deref(),
                scale.as_deref(),
                p,
                self.activation,
                y,
                y_layout,
                scratch,
            )
            .map_err(kernel_err)
    }

    /// [`Op::run`] of layer `shapes`, on the kernels' geometry in `prepared` where it has one.
    fn run_planar(
        &self,
        shapes: &ConvShapes,
        prepared: Option<&PreparedConv>,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        let x = input(inputs, 0, "X")?;
        let (p, conv_shape) = (shapes.p, &shapes.conv[..]);
        let out_shape = shapes.broadcast.as_deref().unwrap_or(conv_shape);
        let geometry = prepared.and_then(|prepared| prepared.geometry.as_ref());
        let b = conv_bias(prepared, inputs, p.out_c)?;
        let weight = Weight::of(input(inputs, 1, "W")?)?;
        let slopes = prelu_slope(inputs).map(|s| s.f32s()).transpose()?;
        let act = match slopes.as_deref() {
            Some(s) => ChannelActivation::PRelu(s),
            None => ChannelActivation::Same(self.activation),
        };
        let (w, y) = (&weight.view(), &mut *outputs[0].data);
        let a = x.f32s()?;
        let (x, scratch): (&[f32], &mut [f32]) = match shapes.gated {
            Gated::No => (&a, scratch),
            Gated::Folded { data, factors } => {
                let (x, s) = (input(inputs, data, "X")?.f32s()?, input(inputs, factors, "gate")?.f32s()?);
                let conv = ConvCall { p: &p, geometry, bias: b.as_deref(), act };
                return self.run_scaled_input(
                    inputs,
                    (&x, &s, w),
                    conv,
                    conv_shape,
                    out_shape,
                    y,
                    scratch,
                    ctx,
                );
            }
            Gated::Materialised { len } => {
                // The product `Mul` would have written, into the front of the scratch.
                if scratch.len() < len {
                    op_bail!("scratch of {} values for a product of {len}", scratch.len());
                }
                let (product, scratch) = scratch.split_at_mut(len);
                let other = input(inputs, crate::fuse::INPUT_SCALE_INPUT, "gate")?;
                let shape = data_shape(inputs)?;
                zip_broadcast(&a, x.shape, &other.f32s()?, other.shape, &shape, product, |a, b| a * b);
                (&*product, scratch)
            }
        };
        if let Some(filters) = self.int8_filters(&weight, &p, ctx) {
            let r = residual(inputs).filter(|r| self.residual_channel_pad || r.shape == conv_shape);
            if r.is_some() || residual(inputs).is_none() {
                let r = r.map(|r| r.f32s()).transpose()?;
                return ctx
                    .kernels
                    .conv2d_int8(x, filters, b.as_deref(), r.as_deref(), &p, act, y, scratch)
                    .map_err(kernel_err);
            }
        }
        let conv = ConvCall { p: &p, geometry, bias: b.as_deref(), act };
        match residual(inputs) {
            None => match self.int8_rows(&weight, &p, ctx) {
                // [batch, in_c, 1, 1] times [out_c, in_c] is the GEMM [batch, out_c].
                Some(t) => {
                    ctx.kernels.gemm_int8(x, p.batch, p.in_c, p.out_c, w, t, b.as_deref(), act, y, scratch)
                }
                None => conv.run(&ctx.kernels, x, w, None, None, y, scratch),
            },
            Some(r) if self.residual_channel_pad || r.shape == conv_shape => {
                conv.run(&ctx.kernels, x, w, Some(&r.f32s()?), None, y, scratch)
            }
            Some(r) => {
                // A broadcast residual (rare): convolve into scratch, then add and activate.
                let (out, scratch) = scratch.split_at_mut(conv_shape.iter().product());
                let plain = ConvCall { act: ChannelActivation::Same(Activation::None), ..conv };
                plain.run(&ctx.kernels, x, w, None, None, out, scratch).map_err(kernel_err)?;
                add_broadcast_residual((out, conv_shape), r, out_shape, act, p.out_c, y)?;
                Ok(())
            }
        }
        .map_err(kernel_err)
    }
}

/// One call of the f32 convolution kernels: the layer, its geometry if prepared, its bias and
/// activation.
#[derive(Clone, Copy)]
struct ConvCall<'a> {
    p: &'a Conv2dParams,
    geometry: Option<&'a ConvGeometry>,
    bias: Option<&'a [f32]>,
    act: ChannelActivation<'a>,
}

impl ConvCall<'_> {
    /// `y = act(conv(x ⊙ scale, w) + bias + residual)` on the prepared geometry, if any.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        k: &Kernels,
        x: &[f32],
        w: &TensorView<'_>,
        residual: Option<&[f32]>,
        scale: Option<&[f32]>,
        y: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), pith_kernels::KernelError> {
        let (p, b, act) = (self.p, self.bias, self.act);
        match (self.geometry, residual, scale) {
            (Some(g), ..) => k.conv2d_prepared(g, x, w, b, residual, scale, act, y, scratch),
            (None, None, None) => k.conv2d(x, w, b, p, act, y, scratch),
            (None, Some(r), None) => k.conv2d_add(x, w, b, r, p, act, y, scratch),
            (None, r, Some(s)) => k.conv2d_scaled_input(x, s, w, b, r, p, act, y, scratch),
        }
    }
}

/// `y = act(conv + r)`, the residual `r` broadcast against the convolution's output `conv` (of
/// `conv_shape`, `out_c` channels) to `out_shape`.
fn add_broadcast_residual(
    (conv, conv_shape): (&[f32], &[usize]),
    r: &Arg<'_>,
    out_shape: &[usize],
    act: ChannelActivation<'_>,
    out_c: usize,
    y: &mut [f32],
) -> OpResult<()> {
    zip_broadcast(conv, conv_shape, &r.f32s()?, r.shape, out_shape, y, |a, b| a + b);
    // Channel c of every image: out_shape is [batch, channels, h, w].
    let plane: usize = out_shape[2..].iter().product();
    for (i, channel) in y.chunks_mut(plane.max(1)).enumerate() {
        act.of(i % out_c).apply_slice(channel);
    }
    Ok(())
}

impl Conv {
    /// [`Op::run`] for a 1×1 layer with a fused input scale (`operands`: the input, its factors
    /// and the weights), on the f32 path whatever the session's activations (the factors fold
    /// into decoded filters, which the int8 kernels do not decode).
    #[allow(clippy::too_many_arguments)]
    fn run_scaled_input(
        &self,
        inputs: &[Option<Arg<'_>>],
        (x, s, w): (&[f32], &[f32], &TensorView<'_>),
        conv: ConvCall<'_>,
        conv_shape: &[usize],
        out_shape: &[usize],
        y: &mut [f32],
        scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        let k = &ctx.kernels;
        match residual(inputs) {
            Some(r) if !self.residual_channel_pad && r.shape != conv_shape => {
                // A broadcast residual: convolve into scratch, then add and activate.
                let (out, scratch) = scratch.split_at_mut(conv_shape.iter().product());
                let plain = ConvCall { act: ChannelActivation::Same(Activation::None), ..conv };
                plain.run(k, x, w, None, Some(s), out, scratch).map_err(kernel_err)?;
                add_broadcast_residual((out, conv_shape), r, out_shape, conv.act, conv.p.out_c, y)
            }
            r => {
                let r = r.map(|r| r.f32s()).transpose()?;
                conv.run(k, x, w, r.as_deref(), Some(s), y, scratch).map_err(kernel_err)
            }
        }
    }
}

impl ConvTranspose {
    /// Kernel parameters and output shape.
    fn geometry(&self, x: &[usize], w: &[usize]) -> OpResult<(Conv2dParams, Vec<usize>)> {
        let (input, kernel) = spatial_2d(x, w)?;
        let rank = x.len() - 2;
        let (n, c) = (x[0], x[1]);
        if w[0] != c {
            op_bail!("weight has {} input channels, input has {c}", w[0]);
        }
        if c % self.group != 0 {
            op_bail!("group {} does not divide {c} input channels", self.group);
        }
        let m = w[1] * self.group;
        if let Some(ks) = &self.window.kernel_shape {
            if ks[..] != w[2..] {
                op_bail!("kernel_shape {ks:?} does not match weight shape {w:?}");
            }
        }
        let strides = Window::per_axis(&self.window.strides, "strides", rank)?;
        let dils = Window::per_axis(&self.window.dilations, "dilations", rank)?;
        let out_pad = PerAxis::new(&self.output_padding, "output_padding", rank, 1, 0)?;
        let explicit = PerAxis::new(&self.window.pads, "pads", rank, 2, 0)?;
        let mut axes = Vec::with_capacity(rank);
        for i in 0..rank {
            let (n_in, k, s, d) = (input[2 - rank + i], kernel[2 - rank + i], strides.get(i), dils.get(i));
            let full = (n_in.max(1) - 1) * s + out_pad.get(i) + d * (k - 1) + 1;
            let target = match (&self.output_shape, self.window.auto_pad) {
                (Some(os), _) => {
                    if os.len() != rank {
                        op_bail!("attribute 'output_shape' has {} values for {rank} axes", os.len());
                    }
                    Some(os[i])
                }
                (None, AutoPad::SameUpper | AutoPad::SameLower) => Some(n_in * s),
                _ => None,
            };
            let (pad_begin, out) = match target {
                Some(out) => {
                    if out > full {
                        op_bail!("output extent {out} exceeds the full transposed extent {full}");
                    }
                    let total = full - out;
                    let begin = if self.window.auto_pad == AutoPad::SameUpper {
                        total / 2
                    } else {
                        total - total / 2
                    };
                    (begin, out)
                }
                None => {
                    let (pb, pe) = if self.window.auto_pad == AutoPad::Valid {
                        (0, 0)
                    } else {
                        (explicit.get(i), explicit.get(rank + i))
                    };
                    if pb + pe >= full {
                        op_bail!("pads {pb}+{pe} leave no output from extent {full}");
                    }
                    (pb, full - pb - pe)
                }
            };
            axes.push(Axis { kernel: k, stride: s, dil: d, pad_begin, pad_end: 0, out });
        }
        Ok(params_2d(n, c, m, &input, &kernel, &axes, self.group))
    }
}

impl Op for ConvTranspose {
    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        let (x, w) = (input(inputs, 0, "X")?, input(inputs, 1, "W")?);
        let (p, shape) = self.geometry(x.shape, w.shape)?;
        bias(inputs, p.out_c)?;
        Ok(vec![(ElemType::F32, shape)])
    }

    fn scratch_len(&self, inputs: &[Option<Arg<'_>>]) -> usize {
        match (input(inputs, 0, "X"), input(inputs, 1, "W")) {
            (Ok(x), Ok(w)) => self
                .geometry(x.shape, w.shape)
                .map_or(0, |(p, _)| Kernels::default().conv_transpose2d_scratch_len(&p)),
            _ => 0,
        }
    }

    /// The layer's parameters, once per plan (a run then allocates nothing).
    fn prepare(
        &self,
        inputs: &[Option<Arg<'_>>],
        _ctx: &ExecCtx,
        _layouts: NodeLayouts,
    ) -> OpResult<Option<Prepared>> {
        let (x, w) = (input(inputs, 0, "X")?, input(inputs, 1, "W")?);
        let (p, _) = self.geometry(x.shape, w.shape)?;
        // A folded BatchNormalization's parameters and the bias it shifts are constants.
        let known = inputs[2..].iter().flatten().all(Arg::is_known);
        let batch_norm = match self.batch_norm_epsilon {
            Some(eps) if known => {
                let layer_bias = self::bias(inputs, p.out_c)?;
                Some(folded_batch_norm(inputs, eps, layer_bias.as_deref(), p.out_c)?)
            }
            _ => None,
        };
        Ok(Some(std::sync::Arc::new(PreparedConvTranspose { input: x.shape.to_vec(), p, batch_norm })))
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
        let x = input(inputs, 0, "X")?;
        match prepared.downcast_ref::<PreparedConvTranspose>() {
            // Made for an input of this shape, planar.
            Some(prepared) if prepared.input == x.shape && layouts.all_planar() => {
                self.run_with(&prepared.p, Some(prepared), inputs, outputs, scratch, ctx)
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
        let (x, w) = (input(inputs, 0, "X")?, input(inputs, 1, "W")?);
        let (p, _) = self.geometry(x.shape, w.shape)?;
        self.run_with(&p, None, inputs, outputs, scratch, ctx)
    }
}

/// What [`ConvTranspose`] works out once per plan: the input shape it was made for, the
/// layer's parameters and a folded BatchNormalization's factor and bias per channel.
#[derive(Debug)]
struct PreparedConvTranspose {
    input: Vec<usize>,
    p: Conv2dParams,
    batch_norm: Option<(Vec<f32>, Vec<f32>)>,
}

impl ConvTranspose {
    /// The layer with parameters `p` (of [`ConvTranspose::geometry`]), with what a plan
    /// `prepared` (else derived from the inputs).
    fn run_with(
        &self,
        p: &Conv2dParams,
        prepared: Option<&PreparedConvTranspose>,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        let (x, w) = (input(inputs, 0, "X")?, input(inputs, 1, "W")?);
        let b = bias(inputs, p.out_c)?;
        let weight = Weight::of(w)?;
        let computed;
        let (scale, b) = match (self.batch_norm_epsilon, prepared.and_then(|p| p.batch_norm.as_ref())) {
            (Some(_), Some((scale, shift))) => (Some(&scale[..]), Some(Cow::Borrowed(&shift[..]))),
            (Some(eps), None) => {
                computed = folded_batch_norm(inputs, eps, b.as_deref(), p.out_c)?;
                (Some(&computed.0[..]), Some(Cow::Borrowed(&computed.1[..])))
            }
            (None, _) => (None, b),
        };
        ctx.kernels
            .conv_transpose2d(
                &x.f32s()?,
                &weight.view(),
                scale,
                b.as_deref(),
                p,
                self.activation,
                outputs[0].data,
                scratch,
            )
            .map_err(kernel_err)
    }
}

/// Helpers shared by the unit tests of the ops in this crate.
#[cfg(test)]
pub(crate) mod testing {
    use pith_format::ir::{Attr, ElemType, Node, OpKind};

    use crate::ops::{Arg, ArgData, ExecCtx, Op, OpResult, Out};
    use pith_format::ir::{Centroids, CodebookKind, CodebookTensor};
    use pith_kernels::Kernels;

    /// A node with inputs `0..n_inputs` (input `None` where `absent`) and one output.
    pub fn node(op: OpKind, n_inputs: usize, attrs: Vec<(&str, Attr)>) -> Node {
        Node {
            name: "test".into(),
            op,
            inputs: (0..n_inputs as u32).map(Some).collect(),
            outputs: vec![n_inputs as u32],
            attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    /// An f32 activation argument.
    pub fn act<'a>(shape: &'a [usize], data: &'a [f32]) -> Option<Arg<'a>> {
        Some(Arg { shape, elem: ElemType::F32, data: Some(ArgData::Act(data)) })
    }

    /// Infers, allocates and runs `op`, returning each output's shape and data.
    pub fn run(op: &dyn Op, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(Vec<usize>, Vec<f32>)>> {
        run_with(op, inputs, &ExecCtx::default())
    }

    /// [`run`] on the kernel set of `ctx`.
    pub fn run_with(
        op: &dyn Op,
        inputs: &[Option<Arg<'_>>],
        ctx: &ExecCtx,
    ) -> OpResult<Vec<(Vec<usize>, Vec<f32>)>> {
        let shapes = op.infer(inputs)?;
        let mut bufs: Vec<Vec<f32>> =
            shapes.iter().map(|(_, s)| vec![f32::NAN; s.iter().product()]).collect();
        let mut scratch = vec![f32::NAN; op.scratch_len(inputs)];
        let mut outs: Vec<Out<'_>> =
            shapes.iter().zip(bufs.iter_mut()).map(|((_, s), b)| Out { shape: s, data: b }).collect();
        op.run(inputs, &mut outs, &mut scratch, ctx)?;
        Ok(shapes.into_iter().map(|(_, s)| s).zip(bufs).collect())
    }

    /// Each output's shape and data.
    pub type Outputs = Vec<(Vec<usize>, Vec<f32>)>;

    /// [`run_with`] through [`Op::prepare`] and [`Op::run_prepared`] (planar layouts), as a
    /// session runs a planned node; also returns whether the op prepared anything.
    pub fn run_prepared_with(
        op: &dyn Op,
        inputs: &[Option<Arg<'_>>],
        ctx: &ExecCtx,
    ) -> OpResult<(Outputs, bool)> {
        let shapes = op.infer(inputs)?;
        let mut bufs: Vec<Vec<f32>> =
            shapes.iter().map(|(_, s)| vec![f32::NAN; s.iter().product()]).collect();
        let mut scratch = vec![f32::NAN; op.scratch_len(inputs) * ctx.threads()];
        let mut outs: Vec<Out<'_>> =
            shapes.iter().zip(bufs.iter_mut()).map(|((_, s), b)| Out { shape: s, data: b }).collect();
        let layouts = crate::ops::NodeLayouts::default();
        let prepared = op.prepare(inputs, ctx, layouts)?;
        match &prepared {
            Some(p) => op.run_prepared(&**p, inputs, &mut outs, &mut scratch, ctx, layouts)?,
            None => op.run(inputs, &mut outs, &mut scratch, ctx)?,
        }
        Ok((shapes.into_iter().map(|(_, s)| s).zip(bufs).collect(), prepared.is_some()))
    }

    /// A 4-bit codebook of `rows` × `row_len` weights with one table of f16 centroids per row,
    /// as the compressor writes for MobileNetV3's squeeze-excite layers.
    pub fn per_row_4bit(seed: u64, rows: usize, row_len: usize) -> CodebookTensor {
        let centroids = values(seed, rows * 16).into_iter().map(half::f16::from_f32).collect();
        let stride = pith_format::ir::row_stride(row_len, 4);
        let indices = values(seed + 1, rows * stride).iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
        CodebookTensor {
            bits: 4,
            rows,
            row_len,
            entries: 16,
            kind: CodebookKind::PerRow,
            centroids: Centroids::F16(centroids),
            scales: vec![],
            f16_scales: false,
            indices,
        }
    }

    /// A session's context with int8 activations on the scalar path (which every CPU has).
    pub fn int8_ctx() -> ExecCtx {
        let kernels = Kernels::with_isa(pith_kernels::Isa::scalar(), 1).unwrap();
        ExecCtx { kernels: kernels.with_int8_activations(true).unwrap() }
    }

    /// Fixed-seed xorshift values in `[-1, 1)`.
    pub fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Asserts two float slices agree within a tolerance scaled to their magnitude.
    pub fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "element {i}: got {g}, want {w}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{
        act, assert_close, int8_ctx, node, per_row_4bit, run, run_prepared_with, run_with, values,
    };
    use super::*;
    use pith_format::ir::{Attr, Centroids, CodebookKind, CodebookTensor, OpKind, TensorData};

    /// Direct NCHW convolution with explicit begin pads; output extents given.
    #[allow(clippy::too_many_arguments)]
    fn naive_conv(
        x: &[f32],
        xs: [usize; 4],
        w: &[f32],
        ws: [usize; 4],
        b: Option<&[f32]>,
        group: usize,
        s: [usize; 2],
        d: [usize; 2],
        pad: [usize; 2],
        out: [usize; 2],
    ) -> Vec<f32> {
        let [n, c, h, wd] = xs;
        let [m, cg, kh, kw] = ws;
        let mg = m / group;
        let mut y = vec![0.0; n * m * out[0] * out[1]];
        for bi in 0..n {
            for oc in 0..m {
                for oy in 0..out[0] {
                    for ox in 0..out[1] {
                        let mut acc = b.map_or(0.0, |b| b[oc]);
                        for ci in 0..cg {
                            let ic = oc / mg * cg + ci;
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * s[0] + ky * d[0]) as isize - pad[0] as isize;
                                    let ix = (ox * s[1] + kx * d[1]) as isize - pad[1] as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd {
                                        acc += x[((bi * c + ic) * h + iy as usize) * wd + ix as usize]
                                            * w[((oc * cg + ci) * kh + ky) * kw + kx];
                                    }
                                }
                            }
                        }
                        y[((bi * m + oc) * out[0] + oy) * out[1] + ox] = acc;
                    }
                }
            }
        }
        y
    }

    fn ints(v: &[i64]) -> Attr {
        Attr::Ints(v.to_vec())
    }

    #[test]
    fn conv_with_explicit_pads_strides_dilations_groups_and_bias() {
        let (xs, ws) = ([2, 4, 7, 9], [6, 2, 3, 2]);
        let x = values(1, 2 * 4 * 7 * 9);
        let w = values(2, 6 * 2 * 3 * 2);
        let b = values(3, 6);
        let n = node(
            OpKind::Conv,
            3,
            vec![
                ("group", Attr::Int(2)),
                ("strides", ints(&[2, 1])),
                ("dilations", ints(&[1, 2])),
                ("pads", ints(&[1, 0, 2, 3])),
            ],
        );
        let op = build_conv(&n, Activation::None).unwrap();
        let out = run(&*op, &[act(&xs, &x), act(&ws, &w), act(&[6], &b)]).unwrap();
        // H: (7 + 3 - 3) / 2 + 1 = 4; W: (9 + 3 - 3) / 1 + 1 = 10.
        assert_eq!(out[0].0, vec![2, 6, 4, 10]);
        let want = naive_conv(&x, xs, &w, ws, Some(&b), 2, [2, 1], [1, 2], [1, 0], [4, 10]);
        assert_close(&out[0].1, &want);
    }

    #[test]
    fn prepared_runs_match_on_every_path_with_a_decoded_f16_bias() {
        // A depthwise 3×3 over a small plane (the whole-plane kernel where the path has one), a
        // strided dense 3×3 (the shifted path), a 1×1 and a 1×1 with a residual, each with an f16
        // constant bias: prepared once, run as a session runs them, equal to the naive sums.
        // Input and weight shapes, groups, stride, and whether a residual is added.
        type Case = ([usize; 4], [usize; 4], usize, usize, bool);
        let cases: [Case; 4] = [
            ([1, 8, 6, 7], [8, 1, 3, 3], 8, 1, false),
            ([2, 3, 9, 8], [5, 3, 3, 3], 1, 2, false),
            ([1, 16, 5, 5], [12, 16, 1, 1], 1, 1, false),
            ([1, 16, 5, 5], [16, 16, 1, 1], 1, 1, true),
        ];
        let ctxs = [
            ExecCtx::default(),
            ExecCtx { kernels: Kernels::with_isa(pith_kernels::Isa::scalar(), 2).unwrap() },
        ];
        for (case, (xs, ws, group, stride, with_residual)) in cases.into_iter().enumerate() {
            let k = ws[2];
            let x = values(20 + case as u64, xs.iter().product());
            let w = values(30 + case as u64, ws.iter().product());
            let b16: Vec<half::f16> =
                values(40 + case as u64, ws[0]).into_iter().map(half::f16::from_f32).collect();
            let b32: Vec<f32> = b16.iter().map(|v| v.to_f32()).collect();
            let pad = k / 2;
            let out = [(xs[2] + 2 * pad - k) / stride + 1, (xs[3] + 2 * pad - k) / stride + 1];
            let mut want = naive_conv(&x, xs, &w, ws, Some(&b32), group, [stride; 2], [1, 1], [pad; 2], out);
            let residual = values(50 + case as u64, want.len());
            let mut inputs = vec![
                act(&xs, &x),
                act(&ws, &w),
                Some(Arg {
                    shape: &ws[..1],
                    elem: ElemType::F32,
                    data: Some(ArgData::Const(TensorView::F16(&b16))),
                }),
            ];
            let out_shape = [xs[0], ws[0], out[0], out[1]];
            if with_residual {
                inputs.push(act(&out_shape, &residual));
                want.iter_mut().zip(&residual).for_each(|(y, r)| *y += r);
            }
            let pads = ints(&[pad as i64; 4]);
            let attrs = vec![
                ("group", Attr::Int(group as i64)),
                ("strides", ints(&[stride as i64; 2])),
                ("pads", pads),
            ];
            let op = build_conv(&node(OpKind::Conv, inputs.len(), attrs), Activation::None).unwrap();
            for ctx in &ctxs {
                let (got, prepared) = run_prepared_with(&*op, &inputs, ctx).unwrap();
                assert!(prepared, "a Conv prepares its geometry");
                let state = op.prepare(&inputs, ctx, NodeLayouts::default()).unwrap().unwrap();
                let state = state.downcast_ref::<PreparedConv>().unwrap();
                assert_eq!(state.bias.as_deref(), Some(&b32[..]), "the f16 bias decoded once");
                assert!(state.geometry.is_some());
                assert_eq!(got[0].0, out_shape.to_vec());
                assert_close(&got[0].1, &want);
            }
        }
    }

    #[test]
    fn prepared_state_of_another_op_is_not_trusted() {
        // A prepared value of the wrong type: the Conv runs as if unprepared.
        let (xs, ws) = ([1, 2, 4, 4], [3, 2, 1, 1]);
        let (x, w) = (values(60, 32), values(61, 6));
        let op = build_conv(&node(OpKind::Conv, 2, vec![]), Activation::None).unwrap();
        let inputs = [act(&xs, &x), act(&ws, &w)];
        let mut y = vec![f32::NAN; 48];
        let mut scratch = vec![0.0; op.scratch_len(&inputs)];
        let mut outs = [Out { shape: &[1, 3, 4, 4], data: &mut y }];
        let ctx = ExecCtx::default();
        op.run_prepared(&7u32, &inputs, &mut outs, &mut scratch, &ctx, NodeLayouts::default()).unwrap();
        assert_close(&y, &naive_conv(&x, xs, &w, ws, None, 1, [1, 1], [1, 1], [0, 0], [4, 4]));
    }

    #[test]
    fn auto_pad_modes_place_the_odd_pad_as_specified() {
        // in 5, kernel 2, stride 2: SAME output 3 with total pad 1.
        let (xs, ws) = ([1, 1, 5, 5], [1, 1, 2, 2]);
        let x = values(4, 25);
        let w = values(5, 4);
        for (mode, out, pad) in [("SAME_UPPER", 3, 0), ("SAME_LOWER", 3, 1), ("VALID", 2, 0)] {
            let n = node(
                OpKind::Conv,
                2,
                vec![
                    ("auto_pad", Attr::Str(mode.into())),
                    ("strides", ints(&[2, 2])),
                    ("pads", ints(&[9, 9, 9, 9])), // ignored unless NOTSET
                ],
            );
            let op = build_conv(&n, Activation::None).unwrap();
            let got = run(&*op, &[act(&xs, &x), act(&ws, &w)]).unwrap();
            assert_eq!(got[0].0, vec![1, 1, out, out], "{mode}");
            let want = naive_conv(&x, xs, &w, ws, None, 1, [2, 2], [1, 1], [pad, pad], [out, out]);
            assert_close(&got[0].1, &want);
        }
    }

    #[test]
    fn conv_1d_and_codebook_weight() {
        // 1-D conv over [N, C, W] with a 2-bit codebook weight passed zero-copy.
        let cb = TensorData::Codebook(CodebookTensor {
            bits: 2,
            rows: 3,
            row_len: 2 * 3,
            entries: 4,
            kind: CodebookKind::PerTensor,
            centroids: Centroids::F32(vec![-1.0, -0.25, 0.5, 2.0]),
            scales: vec![],
            f16_scales: false,
            indices: vec![0b1110_0100, 0b0000_0001, 0b0011_1001, 0b0000_0010, 0b0101_0101, 0b0000_1111],
        });
        let dense: Vec<f32> = {
            let v = cb.view();
            let mut d = vec![0.0; 18];
            for r in 0..3 {
                v.decode_row(3, r, &mut d[r * 6..(r + 1) * 6]);
            }
            d
        };
        let x = values(6, 2 * 2 * 8);
        let n = node(OpKind::Conv, 2, vec![("pads", ints(&[1, 1]))]);
        let op = build_conv(&n, Activation::None).unwrap();
        let ws = [3, 2, 3];
        let w_arg = Some(Arg { shape: &ws, elem: ElemType::F32, data: Some(ArgData::Const(cb.view())) });
        let got = run(&*op, &[act(&[2, 2, 8], &x), w_arg]).unwrap();
        assert_eq!(got[0].0, vec![2, 3, 8]);
        let want =
            naive_conv(&x, [2, 2, 1, 8], &dense, [3, 2, 1, 3], None, 1, [1, 1], [1, 1], [0, 1], [1, 8]);
        assert_close(&got[0].1, &want);
    }

    #[test]
    fn per_axis_attributes_of_the_wrong_length_name_the_attribute() {
        let (x, w) = (values(1, 2 * 5 * 5), values(2, 3 * 2 * 9));
        let (xs, ws, wt) = ([1, 2, 5, 5], [3, 2, 3, 3], [2, 3, 3, 3]);
        for (op, attr, value, weight_shape) in [
            (OpKind::Conv, "pads", &[1, 1, 1][..], &ws),
            (OpKind::Conv, "strides", &[1, 1, 1][..], &ws),
            (OpKind::Conv, "dilations", &[1][..], &ws),
            (OpKind::ConvTranspose, "pads", &[0, 0][..], &wt),
            (OpKind::ConvTranspose, "output_padding", &[0, 0, 0][..], &wt),
        ] {
            let n = node(op, 2, vec![(attr, ints(value))]);
            let build = if op == OpKind::Conv { build_conv } else { build_conv_transpose };
            let built = build(&n, Activation::None);
            let err = run(&*built.unwrap(), &[act(&xs, &x), act(weight_shape, &w)]).unwrap_err();
            let want = format!("attribute '{attr}' has {} values for 2 spatial axes", value.len());
            assert!(err.0.contains(&want), "{op:?} {attr}: {}", err.0);
        }
    }

    #[test]
    fn squeeze_excite_conv_runs_the_int8_gemv_on_tables_it_prepares_once() {
        // 1x1 conv over one pixel (batch 2), 4-bit per-row codebook: with int8 activations the
        // op keeps its weights' s8 tables and the kernels' int8 GEMV gives the same bits as
        // rounding the tables on every call.
        let (oc, ic) = (7, 45);
        let cb = TensorData::Codebook(per_row_4bit(11, oc, ic));
        let (x, b) = (values(12, 2 * ic), values(13, oc));
        let (xs, ws) = ([2, ic, 1, 1], [oc, ic, 1, 1]);
        let w_arg = Some(Arg { shape: &ws, elem: ElemType::F32, data: Some(ArgData::Const(cb.view())) });
        let bs = [oc];
        let inputs = [act(&xs, &x), w_arg, act(&bs, &b)];
        let ctx = int8_ctx();
        let op = Conv::new(&node(OpKind::Conv, 3, vec![]), Activation::Relu).unwrap();
        let first = run_with(&op, &inputs, &ctx).unwrap();
        assert!(op.int8_rows.get().is_some_and(|t| t.as_ref().is_some_and(|t| t.rows() == oc)));
        let again = run_with(&op, &inputs, &ctx).unwrap();
        assert_eq!(first, again);
        let mut want = vec![0.0; 2 * oc];
        let mut scratch = vec![0.0; ctx.kernels.gemm_scratch_len(ic, oc, pith_kernels::WeightLayout::NK)];
        let layout = pith_kernels::WeightLayout::NK;
        let (w, act_) = (cb.view(), Activation::Relu);
        ctx.kernels.gemm(&x, 2, ic, oc, &w, layout, Some(&b), act_, &mut want, &mut scratch).unwrap();
        assert_eq!(first[0], (vec![2, oc, 1, 1], want.clone()));
        // The int8 path ran (its rounding shows) and stays close to f32.
        let f32_out = run(&op, &inputs).unwrap();
        assert_ne!(f32_out[0].1, want);
        for (g, w) in want.iter().zip(&f32_out[0].1) {
            assert!((g - w).abs() < 0.05 * (1.0 + w.abs()), "{g} vs {w}");
        }
    }

    #[test]
    fn conv_rejects_bad_inputs() {
        let op = build_conv(&node(OpKind::Conv, 2, vec![]), Activation::None).unwrap();
        let x = [0.0; 2 * 8];
        let err = op.infer(&[act(&[1, 2, 2, 2, 2], &x), act(&[1, 2, 1, 1, 1], &x)]);
        assert!(err.unwrap_err().0.contains("3-D"));
        let err = op.infer(&[act(&[1, 2, 4, 2], &x), act(&[1, 3, 1, 1], &x[..3])]);
        assert!(err.is_err());
        let err = op.infer(&[act(&[1, 2, 4, 2], &x), act(&[1, 2, 5, 1], &x[..10])]);
        assert!(err.unwrap_err().0.contains("larger"));
        assert!(
            build_conv(&node(OpKind::Conv, 2, vec![("strides", ints(&[0, 1]))]), Activation::None).is_err()
        );
        assert!(build_conv(&node(OpKind::Conv, 2, vec![("group", Attr::Int(0))]), Activation::None).is_err());
    }

    /// Direct transposed convolution with explicit begin pads; output extents given.
    #[allow(clippy::too_many_arguments)]
    fn naive_conv_transpose(
        x: &[f32],
        xs: [usize; 4],
        w: &[f32],
        ws: [usize; 4],
        group: usize,
        s: [usize; 2],
        pad: [usize; 2],
        out: [usize; 2],
    ) -> Vec<f32> {
        let [n, c, h, wd] = xs;
        let [_, mg, kh, kw] = ws;
        let m = mg * group;
        let cg = c / group;
        let mut y = vec![0.0; n * m * out[0] * out[1]];
        for bi in 0..n {
            for ic in 0..c {
                for o in 0..mg {
                    let oc = ic / cg * mg + o;
                    for iy in 0..h {
                        for ix in 0..wd {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let oy = (iy * s[0] + ky) as isize - pad[0] as isize;
                                    let ox = (ix * s[1] + kx) as isize - pad[1] as isize;
                                    if oy >= 0 && ox >= 0 && (oy as usize) < out[0] && (ox as usize) < out[1]
                                    {
                                        y[((bi * m + oc) * out[0] + oy as usize) * out[1] + ox as usize] += x
                                            [((bi * c + ic) * h + iy) * wd + ix]
                                            * w[((ic * mg + o) * kh + ky) * kw + kx];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        y
    }

    #[test]
    fn conv_transpose_pads_output_padding_and_output_shape() {
        let (xs, ws) = ([1, 2, 3, 3], [2, 2, 3, 3]);
        let x = values(7, 18);
        let w = values(8, 36);
        // Explicit pads + output_padding: H = 3*(3-1) + 1 + 3 - 1 - 1 = 8, W = 2*(3-1) + 0 + 3 - 2 - 2 = 3.
        let n = node(
            OpKind::ConvTranspose,
            2,
            vec![
                ("strides", ints(&[3, 2])),
                ("pads", ints(&[1, 2, 1, 2])),
                ("output_padding", ints(&[1, 0])),
            ],
        );
        let op = build_conv_transpose(&n, Activation::None).unwrap();
        let got = run(&*op, &[act(&xs, &x), act(&ws, &w)]).unwrap();
        assert_eq!(got[0].0, vec![1, 2, 8, 3]);
        assert_close(&got[0].1, &naive_conv_transpose(&x, xs, &w, ws, 1, [3, 2], [1, 2], [8, 3]));
        // output_shape [10, 8] with strides [3, 2]: full extents 9 and 7 → too big; [8, 6] fits:
        // total pads 1 and 1, begin pad = total - total / 2 = 1 (NOTSET).
        let n = node(
            OpKind::ConvTranspose,
            2,
            vec![("strides", ints(&[3, 2])), ("output_shape", ints(&[8, 6])), ("group", Attr::Int(2))],
        );
        let wg = [2, 1, 3, 3];
        let op = build_conv_transpose(&n, Activation::None).unwrap();
        let got = run(&*op, &[act(&xs, &x), act(&wg, &w[..18])]).unwrap();
        assert_eq!(got[0].0, vec![1, 2, 8, 6]);
        assert_close(&got[0].1, &naive_conv_transpose(&x, xs, &w[..18], wg, 2, [3, 2], [1, 1], [8, 6]));
        // SAME: output = input * stride; odd total padding (here 1) goes to the end for SAME_UPPER
        // and to the beginning for SAME_LOWER (checked against onnxruntime).
        let ws1 = [2, 1, 3, 3];
        for (mode, begin) in [("SAME_UPPER", 0), ("SAME_LOWER", 1)] {
            let n = node(
                OpKind::ConvTranspose,
                2,
                vec![("strides", ints(&[2, 2])), ("auto_pad", Attr::Str(mode.into()))],
            );
            let op = build_conv_transpose(&n, Activation::None).unwrap();
            let got = run(&*op, &[act(&xs, &x), act(&ws1, &w[..18])]).unwrap();
            assert_eq!(got[0].0, vec![1, 1, 6, 6]);
            let want = naive_conv_transpose(&x, xs, &w[..18], ws1, 1, [2, 2], [begin; 2], [6, 6]);
            assert_close(&got[0].1, &want);
        }
        let n = node(OpKind::ConvTranspose, 2, vec![("output_shape", ints(&[20, 20]))]);
        let op = build_conv_transpose(&n, Activation::None).unwrap();
        assert!(op.infer(&[act(&xs, &x), act(&ws, &w)]).is_err());
    }
}
