//! Pooling: max and average windows, and global average.

use pith_format::ir::OpKind;
use pith_runtime::ops::attrs;
use pith_runtime::ops::conv::{Axis, Window};
use pith_runtime::ops::pool::taps;

use super::{Grads, NodeArgs};

/// `MaxPool` (the gradient goes to the first maximum of each window) and `AveragePool`.
pub(super) fn window(a: &NodeArgs<'_>) -> Result<Grads, String> {
    let x = a.input(0)?;
    let xv = a.f32_input(0)?;
    let y = a.output(0)?;
    if !(3..=4).contains(&x.shape.len()) {
        return Err(format!("only 1-D and 2-D pooling is supported, input {:?}", x.shape));
    }
    let window = Window::parse(a.node).map_err(|e| e.0)?;
    let kernel = window.kernel_shape.clone().ok_or("attribute 'kernel_shape' is required")?;
    let ceil = attrs::int(a.node, "ceil_mode", 0).map_err(|e| e.0)? != 0;
    let axes = window.resolve(&x.shape[2..], &kernel, ceil).map_err(|e| e.0)?;
    let unit = Axis { kernel: 1, stride: 1, dil: 1, pad_begin: 0, pad_end: 0, out: 1 };
    let [ay, ax] = if axes.len() == 2 { [axes[0], axes[1]] } else { [unit, axes[0]] };
    let (h, w) = if x.shape.len() == 4 { (x.shape[2], x.shape[3]) } else { (1, x.shape[2]) };
    if y.numel() != x.shape[0] * x.shape[1] * ay.out * ax.out {
        return Err("output extent differs from the window geometry".into());
    }
    let include_pad = attrs::int(a.node, "count_include_pad", 0).map_err(|e| e.0)? != 0;
    let rows: Vec<(Vec<usize>, usize)> = (0..ay.out).map(|o| taps(&ay, h, o)).collect();
    let cols: Vec<(Vec<usize>, usize)> = (0..ax.out).map(|o| taps(&ax, w, o)).collect();
    let dy = a.d_y()?;
    let mut dx = vec![0.0f32; x.numel()];
    let planes = x.shape[0] * x.shape[1];
    for p in 0..planes {
        let xp = &xv[p * h * w..(p + 1) * h * w];
        let dxp = &mut dx[p * h * w..(p + 1) * h * w];
        for (oy, (ry, py)) in rows.iter().enumerate() {
            for (ox, (rx, px)) in cols.iter().enumerate() {
                let d = dy[(p * ay.out + oy) * ax.out + ox];
                if a.node.op == OpKind::MaxPool {
                    let mut best: Option<(usize, f32)> = None;
                    for &iy in ry {
                        for &ix in rx {
                            let v = xp[iy * w + ix];
                            if best.is_none_or(|(_, b)| v > b) {
                                best = Some((iy * w + ix, v));
                            }
                        }
                    }
                    if let Some((i, _)) = best {
                        dxp[i] += d;
                    }
                } else {
                    let count = if include_pad { py * px } else { ry.len() * rx.len() };
                    if count == 0 {
                        continue;
                    }
                    let share = d / count as f32;
                    for &iy in ry {
                        for &ix in rx {
                            dxp[iy * w + ix] += share;
                        }
                    }
                }
            }
        }
    }
    let mut out: Grads = vec![None; a.inputs.len()];
    out[0] = Some(dx);
    Ok(out)
}

/// `GlobalAveragePool`: each input element gets its plane's output gradient over the plane size.
pub(super) fn global_average(a: &NodeArgs<'_>) -> Result<Grads, String> {
    let x = a.input(0)?;
    if x.shape.len() < 2 {
        return Err(format!("input {:?} has no channel axis", x.shape));
    }
    let planes = x.shape[0] * x.shape[1];
    let plane = x.numel() / planes.max(1);
    let dy = a.d_y()?;
    let mut dx = vec![0.0f32; x.numel()];
    for (p, chunk) in dx.chunks_mut(plane.max(1)).enumerate().take(planes) {
        chunk.fill(dy[p] / plane as f32);
    }
    let mut out: Grads = vec![None; a.inputs.len()];
    out[0] = Some(dx);
    Ok(out)
}
