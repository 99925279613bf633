//! Linear `Resize` (bilinear over the last two axes): the adjoint of the interpolation.
//!
//! The taps come from the runtime's own op, run on two probes whose elements are their column
//! (then row) index: an output element reads `i0 + w1 · (i1 - i0)`, so its value holds the first
//! tap and the weight (`i1 = i0 + 1` unless the coordinate was clamped to the edge, where the
//! weight is 0). The rule thus follows every coordinate mode and scale the runtime supports.

use pith_runtime::ops::{Arg, ArgData};
use pith_runtime::Tensor;

use super::{Grads, NodeArgs};

/// One output position's taps along an axis: `(1 - w) · x[i0] + w · x[i1]`.
type Tap = (usize, usize, f32);

/// Gradient of the input of a linear `Resize`.
pub(super) fn linear(a: &NodeArgs<'_>) -> Result<Grads, String> {
    let mut out: Grads = vec![None; a.inputs.len()];
    if !a.needs(0) {
        return Ok(out);
    }
    let (x, y) = (a.input(0)?, a.output(0)?);
    let rank = x.shape.len();
    if rank < 2 || y.shape.len() != rank {
        return Err(format!(
            "linear resize of {:?} to {:?}: no backward rule below rank 2",
            x.shape, y.shape
        ));
    }
    let (h, w) = (x.shape[rank - 2], x.shape[rank - 1]);
    let (oh, ow) = (y.shape[rank - 2], y.shape[rank - 1]);
    if h == 0 || w == 0 || oh == 0 || ow == 0 || x.numel() / (h * w) != y.numel() / (oh * ow) {
        return Err(format!("linear resize of {:?} to {:?} is not per plane", x.shape, y.shape));
    }
    if h.max(w) >= 1 << 16 {
        return Err(format!("planes of {h}x{w} are too large to trace"));
    }
    // Column taps from a probe holding each element's column, row taps from its row.
    let xs = taps(a, x, |i| (i % w) as f32, |out| out[..ow].to_vec(), w)?;
    let ys = taps(a, x, |i| ((i / w) % h) as f32, |out| (0..oh).map(|r| out[r * ow]).collect(), h)?;
    let dy = a.d_y()?;
    let mut dx = vec![0.0f32; x.numel()];
    for (dxp, dyp) in dx.chunks_exact_mut(h * w).zip(dy.chunks_exact(oh * ow)) {
        for (&(y0, y1, wy), drow) in ys.iter().zip(dyp.chunks_exact(ow)) {
            for (&(x0, x1, wx), &g) in xs.iter().zip(drow) {
                let (top, bottom) = (g * (1.0 - wy), g * wy);
                dxp[y0 * w + x0] += top * (1.0 - wx);
                dxp[y0 * w + x1] += top * wx;
                dxp[y1 * w + x0] += bottom * (1.0 - wx);
                dxp[y1 * w + x1] += bottom * wx;
            }
        }
    }
    out[0] = Some(dx);
    Ok(out)
}

/// The taps along one axis of `n` samples: the op run on input 0 replaced by `index(i)` per
/// element, the first plane's line along that axis read back by `line`.
fn taps(
    a: &NodeArgs<'_>,
    x: &Tensor,
    index: impl Fn(usize) -> f32,
    line: impl Fn(&[f32]) -> Vec<f32>,
    n: usize,
) -> Result<Vec<Tap>, String> {
    let probe = Tensor::from_f32(x.shape.clone(), (0..x.numel()).map(index).collect());
    let args: Vec<Option<Arg<'_>>> = a
        .inputs
        .iter()
        .enumerate()
        .map(|(s, t)| {
            let t = if s == 0 { Some(&probe) } else { *t };
            t.map(|t| Arg { shape: &t.shape, elem: t.elem(), data: Some(ArgData::Known(t)) })
        })
        .collect();
    let outs = a.op.eval(&args).map_err(|e| e.0)?.ok_or("the op could not run on the probe")?;
    let values = outs.first().and_then(Tensor::as_f32).ok_or("the probe's output is not f32")?;
    line(values)
        .into_iter()
        .map(|v| {
            if !(v >= 0.0 && v <= (n - 1) as f32) {
                return Err(format!("probe read {v} outside 0..{n}: not a linear interpolation"));
            }
            let i0 = (v.floor() as usize).min(n - 1);
            let i1 = (i0 + 1).min(n - 1);
            Ok((i0, i1, if i1 == i0 { 0.0 } else { v - i0 as f32 }))
        })
        .collect()
}
