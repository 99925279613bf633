//! Convolution and transposed convolution: gradients of the input, weight and bias.
//!
//! Both are written in terms of one 2-D convolution geometry ([`Geom`]): a `ConvTranspose` is
//! the adjoint of the `Conv` that maps its output space back to its input space with the same
//! weights, so its input gradient is that conv's forward pass and its weight gradient is that
//! conv's weight gradient with the roles of input and output swapped.
//!
//! Each product is an im2col GEMM on the kernels crate's register-blocked `gemm_rows`, over
//! chunks of output positions so the unfolded patches stay small (a few hundred KiB).

use std::sync::OnceLock;

use pith_kernels::Isa;
use pith_runtime::ops::attrs;
use pith_runtime::ops::conv::Window;

use super::{Grads, NodeArgs};

/// Unfolded patch elements per chunk of output positions.
const CHUNK_ELEMS: usize = 1 << 16;

/// The best kernel path of this CPU (scalar if detection fails).
fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| Isa::detect().unwrap_or_else(|_| Isa::scalar()))
}

/// A 2-D convolution `out[n, co, o] = Σ in[n, ci, o·s - p + k·d] · w[co, ci - g·cpg, k]` over
/// the input channels `ci` of the output channel's group `g`.
#[derive(Debug, Clone, Copy)]
struct Geom {
    batch: usize,
    cin: usize,
    cout: usize,
    groups: usize,
    /// Input extents.
    h: usize,
    w: usize,
    /// Output extents.
    oh: usize,
    ow: usize,
    /// Kernel extents.
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    dil: [usize; 2],
    pad: [usize; 2],
}

impl Geom {
    fn cpg(&self) -> usize {
        self.cin / self.groups
    }
    fn opg(&self) -> usize {
        self.cout / self.groups
    }
    /// Weights per output channel (`cpg · kh · kw`).
    fn k(&self) -> usize {
        self.cpg() * self.kh * self.kw
    }
    fn positions(&self) -> usize {
        self.oh * self.ow
    }
    fn in_plane(&self) -> usize {
        self.h * self.w
    }
    /// Output positions per chunk.
    fn chunk(&self) -> usize {
        (CHUNK_ELEMS / self.k().max(1)).clamp(16, self.positions().max(16))
    }

    /// Calls `f(k, input offset within the group's planes)` for every in-bounds tap of
    /// output position `p`.
    #[inline]
    fn taps(&self, p: usize, mut f: impl FnMut(usize, usize)) {
        let (oy, ox) = (p / self.ow, p % self.ow);
        for c in 0..self.cpg() {
            for ky in 0..self.kh {
                let iy = (oy * self.stride[0] + ky * self.dil[0]) as isize - self.pad[0] as isize;
                if iy < 0 || iy >= self.h as isize {
                    continue;
                }
                for kx in 0..self.kw {
                    let ix = (ox * self.stride[1] + kx * self.dil[1]) as isize - self.pad[1] as isize;
                    if ix < 0 || ix >= self.w as isize {
                        continue;
                    }
                    f(
                        (c * self.kh + ky) * self.kw + kx,
                        c * self.in_plane() + iy as usize * self.w + ix as usize,
                    );
                }
            }
        }
    }

    /// Rows `p0..p0 + pc` of the unfolded patches of one group's input planes, position-major
    /// (`col[(p - p0) · k + tap]`).
    fn unfold_pk(&self, planes: &[f32], p0: usize, pc: usize, col: &mut [f32]) {
        let k = self.k();
        col[..pc * k].fill(0.0);
        for i in 0..pc {
            let row = &mut col[i * k..(i + 1) * k];
            self.taps(p0 + i, |t, off| row[t] = planes[off]);
        }
    }

    /// The same patches tap-major (`col[tap · pc + (p - p0)]`).
    fn unfold_kp(&self, planes: &[f32], p0: usize, pc: usize, col: &mut [f32]) {
        col[..pc * self.k()].fill(0.0);
        for i in 0..pc {
            self.taps(p0 + i, |t, off| col[t * pc + i] = planes[off]);
        }
    }

    /// Adds position-major patch gradients back onto one group's input planes.
    fn fold_pk(&self, col: &[f32], p0: usize, pc: usize, planes: &mut [f32]) {
        let k = self.k();
        for i in 0..pc {
            let row = &col[i * k..(i + 1) * k];
            self.taps(p0 + i, |t, off| planes[off] += row[t]);
        }
    }

    /// `out = conv(input, weight)` (no bias), `[batch, cout, oh, ow]`.
    fn forward(&self, input: &[f32], weight: &[f32]) -> Vec<f32> {
        let (k, pos, opg, cpg) = (self.k(), self.positions(), self.opg(), self.cpg());
        let mut out = vec![0.0f32; self.batch * self.cout * pos];
        let mut col = vec![0.0f32; self.chunk() * k];
        for n in 0..self.batch {
            for g in 0..self.groups {
                let planes = &input[(n * self.cin + g * cpg) * self.in_plane()..][..cpg * self.in_plane()];
                let w_g = &weight[g * opg * k..(g + 1) * opg * k];
                let out_g = &mut out[(n * self.cout + g * opg) * pos..][..opg * pos];
                for p0 in (0..pos).step_by(self.chunk()) {
                    let pc = self.chunk().min(pos - p0);
                    self.unfold_kp(planes, p0, pc, &mut col);
                    (isa().gemm_rows)(w_g, k, &col[..k * pc], pc, pc, &mut out_g[p0..], pos);
                }
            }
        }
        out
    }

    /// `dL/dweight` from the input and the output gradient, `[cout, cpg, kh, kw]`.
    fn weight_grad(&self, input: &[f32], d_out: &[f32]) -> Vec<f32> {
        let (k, pos, opg, cpg) = (self.k(), self.positions(), self.opg(), self.cpg());
        let mut dw = vec![0.0f32; self.cout * k];
        let chunk = self.chunk();
        let mut col = vec![0.0f32; chunk * k];
        let mut dy = vec![0.0f32; opg * chunk];
        for n in 0..self.batch {
            for g in 0..self.groups {
                let planes = &input[(n * self.cin + g * cpg) * self.in_plane()..][..cpg * self.in_plane()];
                let d_g = &d_out[(n * self.cout + g * opg) * pos..][..opg * pos];
                let dw_g = &mut dw[g * opg * k..(g + 1) * opg * k];
                for p0 in (0..pos).step_by(chunk) {
                    let pc = chunk.min(pos - p0);
                    self.unfold_pk(planes, p0, pc, &mut col);
                    for o in 0..opg {
                        dy[o * pc..(o + 1) * pc].copy_from_slice(&d_g[o * pos + p0..o * pos + p0 + pc]);
                    }
                    (isa().gemm_rows)(&dy[..opg * pc], pc, &col[..pc * k], k, k, dw_g, k);
                }
            }
        }
        dw
    }

    /// `dL/dinput` from the weight and the output gradient, `[batch, cin, h, w]`.
    fn input_grad(&self, weight: &[f32], d_out: &[f32]) -> Vec<f32> {
        let (k, pos, opg, cpg) = (self.k(), self.positions(), self.opg(), self.cpg());
        let mut dx = vec![0.0f32; self.batch * self.cin * self.in_plane()];
        let chunk = self.chunk();
        let mut col = vec![0.0f32; chunk * k];
        let mut dyt = vec![0.0f32; chunk * opg];
        for n in 0..self.batch {
            for g in 0..self.groups {
                let w_g = &weight[g * opg * k..(g + 1) * opg * k];
                let d_g = &d_out[(n * self.cout + g * opg) * pos..][..opg * pos];
                let planes = &mut dx[(n * self.cin + g * cpg) * self.in_plane()..][..cpg * self.in_plane()];
                for p0 in (0..pos).step_by(chunk) {
                    let pc = chunk.min(pos - p0);
                    for i in 0..pc {
                        for o in 0..opg {
                            dyt[i * opg + o] = d_g[o * pos + p0 + i];
                        }
                    }
                    col[..pc * k].fill(0.0);
                    (isa().gemm_rows)(&dyt[..pc * opg], opg, w_g, k, k, &mut col[..pc * k], k);
                    self.fold_pk(&col, p0, pc, planes);
                }
            }
        }
        dx
    }
}

/// Per-channel sums of `d` (`[batch, channels, plane]`): a bias gradient.
fn channel_sums(d: &[f32], batch: usize, channels: usize) -> Vec<f32> {
    let plane = d.len() / (batch * channels).max(1);
    let mut out = vec![0.0f32; channels];
    for n in 0..batch {
        for (c, o) in out.iter_mut().enumerate() {
            *o += d[(n * channels + c) * plane..][..plane].iter().sum::<f32>();
        }
    }
    out
}

/// Extents of a rank-4 tensor.
fn dims4(shape: &[usize], what: &str) -> Result<[usize; 4], String> {
    <[usize; 4]>::try_from(shape)
        .map_err(|_| format!("only 2-D convolutions are supported, {what} is {shape:?}"))
}

/// `Conv`: gradients of the input, the weight and the bias.
pub(super) fn conv(a: &NodeArgs<'_>) -> Result<Grads, String> {
    let (x, w, y) = (a.input(0)?, a.input(1)?, a.output(0)?);
    let [batch, cin, h, wd] = dims4(&x.shape, "the input")?;
    let [cout, _, kh, kw] = dims4(&w.shape, "the weight")?;
    let [_, _, oh, ow] = dims4(&y.shape, "the output")?;
    let groups = usize::try_from(attrs::int(a.node, "group", 1).map_err(|e| e.0)?).unwrap_or(0);
    if groups == 0 || cin % groups != 0 || cout % groups != 0 {
        return Err(format!("group {groups} does not divide {cin} / {cout} channels"));
    }
    let window = Window::parse(a.node).map_err(|e| e.0)?;
    let axes = window.resolve(&[h, wd], &[kh, kw], false).map_err(|e| e.0)?;
    if axes[0].out != oh || axes[1].out != ow {
        return Err("output extent differs from the window geometry".into());
    }
    let geom = Geom {
        batch,
        cin,
        cout,
        groups,
        h,
        w: wd,
        oh,
        ow,
        kh,
        kw,
        stride: [axes[0].stride, axes[1].stride],
        dil: [axes[0].dil, axes[1].dil],
        pad: [axes[0].pad_begin, axes[1].pad_begin],
    };
    let dy = a.d_y()?;
    let x_data = a.f32_input(0)?;
    let w_data = a.f32_input(1)?;
    let mut out: Grads = vec![None; a.inputs.len()];
    if a.needs(0) {
        out[0] = Some(geom.input_grad(w_data, &dy));
    }
    if a.needs(1) {
        out[1] = Some(geom.weight_grad(x_data, &dy));
    }
    if a.needs(2) {
        out[2] = Some(channel_sums(&dy, batch, cout));
    }
    Ok(out)
}

/// `ConvTranspose`: gradients of the input, the weight and the bias.
pub(super) fn conv_transpose(a: &NodeArgs<'_>) -> Result<Grads, String> {
    let (x, w, y) = (a.input(0)?, a.input(1)?, a.output(0)?);
    let [batch, cin, h, wd] = dims4(&x.shape, "the input")?;
    let [w_in, cout_pg, kh, kw] = dims4(&w.shape, "the weight")?;
    let [_, cout, oh, ow] = dims4(&y.shape, "the output")?;
    let groups = usize::try_from(attrs::int(a.node, "group", 1).map_err(|e| e.0)?).unwrap_or(0);
    if groups == 0 || w_in != cin || cout_pg * groups != cout || cin % groups != 0 {
        return Err(format!("weight {:?} does not fit {cin} -> {cout} channels in {groups} groups", w.shape));
    }
    let auto_pad = attrs::string(a.node, "auto_pad", "NOTSET").map_err(|e| e.0)?;
    if !matches!(auto_pad.as_str(), "NOTSET" | "") {
        return Err(format!("no backward rule for ConvTranspose with auto_pad '{auto_pad}'"));
    }
    let list = |name: &str, default: usize| -> Result<[usize; 2], String> {
        match attrs::ints(a.node, name).map_err(|e| e.0)? {
            None => Ok([default; 2]),
            Some(v) if v.len() >= 2 && v.iter().all(|&x| x >= 0) => Ok([v[0] as usize, v[1] as usize]),
            Some(v) => Err(format!("attribute '{name}' {v:?} is not supported")),
        }
    };
    // The adjoint conv maps the output space (oh × ow, `cout` channels) to the input space.
    let geom = Geom {
        batch,
        cin: cout,
        cout: cin,
        groups,
        h: oh,
        w: ow,
        oh: h,
        ow: wd,
        kh,
        kw,
        stride: list("strides", 1)?,
        dil: list("dilations", 1)?,
        pad: list("pads", 0)?,
    };
    if geom.stride.contains(&0) || geom.dil.contains(&0) {
        return Err("strides and dilations must be positive".into());
    }
    let dy = a.d_y()?;
    let mut out: Grads = vec![None; a.inputs.len()];
    if a.needs(0) {
        out[0] = Some(geom.forward(&dy, a.f32_input(1)?));
    }
    if a.needs(1) {
        out[1] = Some(geom.weight_grad(&dy, a.f32_input(0)?));
    }
    if a.needs(2) {
        out[2] = Some(channel_sums(&dy, batch, cout));
    }
    Ok(out)
}
