//! Convolution and transposed convolution: gradients of the input, weight and bias.
//!
//! Both are written in terms of one 2-D convolution geometry ([`Geom`]): a `ConvTranspose` is
//! the adjoint of the `Conv` that maps its output space back to its input space with the same
//! weights, so its input gradient is that conv's forward pass and its weight gradient is that
//! conv's weight gradient with the roles of input and output swapped.
//!
//! Each product is an im2col GEMM on the kernels crate's register-blocked `gemm_rows`, over
//! chunks of output rows so the unfolded patches stay small (a few hundred KiB). Patches are
//! unfolded tap-major, so every (tap, output row) is one contiguous copy at stride 1.

use pith_kernels::Isa;
use pith_runtime::ops::attrs;
use pith_runtime::ops::conv::Window;

use super::{Grads, NodeArgs};

/// Unfolded patch elements per chunk of output rows (about this many).
const CHUNK_ELEMS: usize = 1 << 16;

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
    /// The kernel path of the products (the forward pass's).
    isa: Isa,
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
    /// Output rows per chunk.
    fn chunk_rows(&self) -> usize {
        (CHUNK_ELEMS / (self.k() * self.ow).max(1)).clamp(1, self.oh.max(1))
    }

    /// For tap column `kx`: the output columns `lo..hi` whose input column exists, and the
    /// input column of output column 0 (may be negative).
    fn columns(&self, kx: usize) -> (usize, usize, isize) {
        let off = (kx * self.dil[1]) as isize - self.pad[1] as isize;
        let s = self.stride[1] as isize;
        // ox * s + off in [0, w)  <=>  ox in [ceil(-off / s), ceil((w - off) / s)).
        let ceil = |v: isize| ((v.max(0) + s - 1) / s) as usize;
        let (lo, hi) = (ceil(-off), ceil(self.w as isize - off).min(self.ow));
        (lo.min(hi), hi, off)
    }

    /// Visits every in-bounds (tap, output row) span of output rows `oy0..oy0 + rows`:
    /// `f(tap, chunk offset of the span's first position, plane offset of its first input,
    /// span length)`; consecutive positions step `stride[1]` input columns.
    fn spans(&self, oy0: usize, rows: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
        for c in 0..self.cpg() {
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let t = (c * self.kh + ky) * self.kw + kx;
                    let (lo, hi, off) = self.columns(kx);
                    if lo >= hi {
                        continue;
                    }
                    for r in 0..rows {
                        let iy =
                            ((oy0 + r) * self.stride[0] + ky * self.dil[0]) as isize - self.pad[0] as isize;
                        if iy < 0 || iy >= self.h as isize {
                            continue;
                        }
                        let ix = (lo as isize * self.stride[1] as isize + off) as usize;
                        let src = c * self.in_plane() + iy as usize * self.w + ix;
                        f(t, r * self.ow + lo, src, hi - lo);
                    }
                }
            }
        }
    }

    /// The unfolded patches of output rows `oy0..oy0 + rows` of one group's input planes,
    /// tap-major: `col[tap · pc + position]`, `pc = rows · ow`.
    fn unfold(&self, planes: &[f32], oy0: usize, rows: usize, col: &mut [f32]) {
        let pc = rows * self.ow;
        col[..pc * self.k()].fill(0.0);
        let step = self.stride[1];
        self.spans(oy0, rows, |t, at, src, len| {
            let dst = &mut col[t * pc + at..][..len];
            if step == 1 {
                dst.copy_from_slice(&planes[src..src + len]);
            } else {
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = planes[src + i * step];
                }
            }
        });
    }

    /// Adds tap-major patch gradients (as [`Geom::unfold`] lays them out) onto the planes.
    fn fold(&self, col: &[f32], oy0: usize, rows: usize, planes: &mut [f32]) {
        let pc = rows * self.ow;
        let step = self.stride[1];
        self.spans(oy0, rows, |t, at, src, len| {
            let from = &col[t * pc + at..][..len];
            if step == 1 {
                for (d, &v) in planes[src..src + len].iter_mut().zip(from) {
                    *d += v;
                }
            } else {
                for (i, &v) in from.iter().enumerate() {
                    planes[src + i * step] += v;
                }
            }
        });
    }

    /// `out = conv(input, weight)` (no bias), `[batch, cout, oh, ow]`.
    fn forward(&self, input: &[f32], weight: &[f32]) -> Vec<f32> {
        let (k, pos, opg, cpg) = (self.k(), self.positions(), self.opg(), self.cpg());
        let mut out = vec![0.0f32; self.batch * self.cout * pos];
        let rows = self.chunk_rows();
        let mut col = vec![0.0f32; rows * self.ow * k];
        for n in 0..self.batch {
            for g in 0..self.groups {
                let planes = &input[(n * self.cin + g * cpg) * self.in_plane()..][..cpg * self.in_plane()];
                let w_g = &weight[g * opg * k..(g + 1) * opg * k];
                let out_g = &mut out[(n * self.cout + g * opg) * pos..][..opg * pos];
                for oy0 in (0..self.oh).step_by(rows) {
                    let r = rows.min(self.oh - oy0);
                    let pc = r * self.ow;
                    self.unfold(planes, oy0, r, &mut col);
                    (self.isa.gemm_rows)(w_g, k, &col[..k * pc], pc, pc, &mut out_g[oy0 * self.ow..], pos);
                }
            }
        }
        out
    }

    /// `dL/dweight` from the input and the output gradient, `[cout, cpg, kh, kw]`.
    fn weight_grad(&self, input: &[f32], d_out: &[f32]) -> Vec<f32> {
        let (k, pos, opg, cpg) = (self.k(), self.positions(), self.opg(), self.cpg());
        let mut dw = vec![0.0f32; self.cout * k];
        let rows = self.chunk_rows();
        let mut col = vec![0.0f32; rows * self.ow * k];
        let mut dyt = vec![0.0f32; rows * self.ow * opg];
        // Accumulated transposed, `[k, opg]` per group: one GEMM row per tap.
        let mut dwt = vec![0.0f32; k * opg];
        for g in 0..self.groups {
            dwt.fill(0.0);
            for n in 0..self.batch {
                let planes = &input[(n * self.cin + g * cpg) * self.in_plane()..][..cpg * self.in_plane()];
                let d_g = &d_out[(n * self.cout + g * opg) * pos..][..opg * pos];
                for oy0 in (0..self.oh).step_by(rows) {
                    let r = rows.min(self.oh - oy0);
                    let (p0, pc) = (oy0 * self.ow, r * self.ow);
                    self.unfold(planes, oy0, r, &mut col);
                    for o in 0..opg {
                        for (i, &d) in d_g[o * pos + p0..][..pc].iter().enumerate() {
                            dyt[i * opg + o] = d;
                        }
                    }
                    (self.isa.gemm_rows)(&col[..k * pc], pc, &dyt[..pc * opg], opg, opg, &mut dwt, opg);
                }
            }
            for o in 0..opg {
                for t in 0..k {
                    dw[(g * opg + o) * k + t] = dwt[t * opg + o];
                }
            }
        }
        dw
    }

    /// `dL/dinput` from the weight and the output gradient, `[batch, cin, h, w]`.
    fn input_grad(&self, weight: &[f32], d_out: &[f32]) -> Vec<f32> {
        let (k, pos, opg, cpg) = (self.k(), self.positions(), self.opg(), self.cpg());
        let mut dx = vec![0.0f32; self.batch * self.cin * self.in_plane()];
        let rows = self.chunk_rows();
        let mut col = vec![0.0f32; rows * self.ow * k];
        let mut wt = vec![0.0f32; k * opg];
        for g in 0..self.groups {
            // The group's weights transposed, `[k, opg]`.
            for o in 0..opg {
                for t in 0..k {
                    wt[t * opg + o] = weight[(g * opg + o) * k + t];
                }
            }
            for n in 0..self.batch {
                let d_g = &d_out[(n * self.cout + g * opg) * pos..][..opg * pos];
                let planes = &mut dx[(n * self.cin + g * cpg) * self.in_plane()..][..cpg * self.in_plane()];
                for oy0 in (0..self.oh).step_by(rows) {
                    let r = rows.min(self.oh - oy0);
                    let pc = r * self.ow;
                    col[..k * pc].fill(0.0);
                    (self.isa.gemm_rows)(&wt, opg, &d_g[oy0 * self.ow..], pos, pc, &mut col[..k * pc], pc);
                    self.fold(&col, oy0, r, planes);
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
        isa: a.isa,
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
        isa: a.isa,
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
