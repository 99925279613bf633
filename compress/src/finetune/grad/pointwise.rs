//! Element-wise ops (unary activations, broadcasting binary arithmetic), inference-mode
//! BatchNormalization and Softmax.

use pith_format::ir::OpKind;
use pith_runtime::ops::attrs;

use super::{broadcast_offsets, Grads, NodeArgs};

/// A scalar from an optional constant input, or `default`.
fn scalar_input(a: &NodeArgs<'_>, i: usize, default: f32) -> Result<f32, String> {
    match a.inputs.get(i).copied().flatten() {
        None => Ok(default),
        Some(t) => t
            .as_f32()
            .and_then(|v| v.first().copied())
            .ok_or_else(|| format!("input {i} is not an f32 scalar")),
    }
}

/// Unary activations: `dx = dy · f'(x)`.
pub(super) fn unary(a: &NodeArgs<'_>) -> Result<Grads, String> {
    let x = a.f32_input(0)?;
    let y = a.output(0)?.as_f32().ok_or("output is not f32")?;
    let dy = a.d_y()?;
    let attr = |name: &str, d: f32| attrs::float(a.node, name, d).map_err(|e| e.0);
    let slope: Box<dyn Fn(f32, f32) -> f32> = match a.node.op {
        OpKind::Relu => Box::new(|x, _| if x > 0.0 { 1.0 } else { 0.0 }),
        OpKind::LeakyRelu => {
            let alpha = attr("alpha", 0.01)?;
            Box::new(move |x, _| if x > 0.0 { 1.0 } else { alpha })
        }
        OpKind::Clip => {
            let lo = scalar_input(a, 1, attr("min", f32::NEG_INFINITY)?)?;
            let hi = scalar_input(a, 2, attr("max", f32::INFINITY)?)?;
            Box::new(move |x, _| if x > lo && x < hi { 1.0 } else { 0.0 })
        }
        OpKind::Sigmoid => Box::new(|_, y| y * (1.0 - y)),
        OpKind::HardSigmoid => {
            let (alpha, beta) = (attr("alpha", 0.2)?, attr("beta", 0.5)?);
            Box::new(move |x, _| {
                let v = alpha * x + beta;
                if v > 0.0 && v < 1.0 {
                    alpha
                } else {
                    0.0
                }
            })
        }
        OpKind::HardSwish => Box::new(|x, _| {
            if x <= -3.0 {
                0.0
            } else if x >= 3.0 {
                1.0
            } else {
                (2.0 * x + 3.0) / 6.0
            }
        }),
        OpKind::Tanh => Box::new(|_, y| 1.0 - y * y),
        OpKind::Sqrt => Box::new(|_, y| if y > 0.0 { 0.5 / y } else { 0.0 }),
        op => return Err(format!("{} is not a unary activation", op.onnx_name())),
    };
    let dx = x.iter().zip(y).zip(dy.iter()).map(|((&x, &y), &d)| d * slope(x, y)).collect();
    let mut out: Grads = vec![None; a.inputs.len()];
    out[0] = Some(dx);
    Ok(out)
}

/// `Add`, `Sub`, `Mul`, `Div`, `PRelu` with numpy broadcasting: each operand's gradient is
/// summed over the axes it was broadcast along.
pub(super) fn binary(a: &NodeArgs<'_>) -> Result<Grads, String> {
    let (ta, tb, ty) = (a.input(0)?, a.input(1)?, a.output(0)?);
    let (av, bv) = (a.f32_input(0)?, a.f32_input(1)?);
    let dy = a.d_y()?;
    let same = |s: &[usize]| s == ty.shape.as_slice();
    let offs_a = if same(&ta.shape) { None } else { Some(broadcast_offsets(&ta.shape, &ty.shape)?) };
    let offs_b = if same(&tb.shape) { None } else { Some(broadcast_offsets(&tb.shape, &ty.shape)?) };
    let ia = |j: usize| offs_a.as_ref().map_or(j, |o| o[j]);
    let ib = |j: usize| offs_b.as_ref().map_or(j, |o| o[j]);
    // Partial derivatives of y with respect to a and b at element j.
    let partials = |j: usize| -> (f32, f32) {
        let (x, z) = (av[ia(j)], bv[ib(j)]);
        match a.node.op {
            OpKind::Add => (1.0, 1.0),
            OpKind::Sub => (1.0, -1.0),
            OpKind::Mul => (z, x),
            OpKind::Div => (1.0 / z, -x / (z * z)),
            // PRelu: y = x for x > 0, slope · x otherwise.
            _ => {
                if x > 0.0 {
                    (1.0, 0.0)
                } else {
                    (z, x)
                }
            }
        }
    };
    let mut da = a.needs(0).then(|| vec![0.0f32; ta.numel()]);
    let mut db = a.needs(1).then(|| vec![0.0f32; tb.numel()]);
    for (j, &d) in dy.iter().enumerate() {
        if d == 0.0 {
            continue;
        }
        let (pa, pb) = partials(j);
        if let Some(da) = da.as_mut() {
            da[ia(j)] += d * pa;
        }
        if let Some(db) = db.as_mut() {
            db[ib(j)] += d * pb;
        }
    }
    let mut out: Grads = vec![None; a.inputs.len()];
    out[0] = da;
    out[1] = db;
    Ok(out)
}

/// Inference-mode BatchNormalization: `y = (x - mean) · scale / sqrt(var + eps) + bias` per
/// channel (axis 1); only the input gets a gradient (the statistics are constants).
pub(super) fn batch_norm(a: &NodeArgs<'_>) -> Result<Grads, String> {
    let x = a.input(0)?;
    let (scale, var) = (a.f32_input(1)?, a.f32_input(4)?);
    let eps = attrs::float(a.node, "epsilon", 1e-5).map_err(|e| e.0)?;
    let channels = *x.shape.get(1).ok_or("BatchNormalization input has no channel axis")?;
    if scale.len() != channels || var.len() != channels {
        return Err("BatchNormalization parameters do not match the channels".into());
    }
    let plane: usize = x.shape[2..].iter().product();
    let dy = a.d_y()?;
    let mut dx = vec![0.0f32; x.numel()];
    for (i, (dx, dy)) in dx.chunks_mut(plane.max(1)).zip(dy.chunks(plane.max(1))).enumerate() {
        let c = i % channels;
        let k = scale[c] / (var[c] + eps).sqrt();
        for (o, &d) in dx.iter_mut().zip(dy) {
            *o = d * k;
        }
    }
    let mut out: Grads = vec![None; a.inputs.len()];
    out[0] = Some(dx);
    Ok(out)
}

/// Softmax along `axis` (default -1; with the legacy `coerce_2d` form, over all axes from
/// `axis` on, default 1): `dx = y · (dy - Σ dy · y)` over each softmax group.
pub(super) fn softmax(a: &NodeArgs<'_>) -> Result<Grads, String> {
    let y = a.output(0)?;
    let yv = y.as_f32().ok_or("output is not f32")?;
    let rank = y.shape.len() as i64;
    let coerce = attrs::int(a.node, "coerce_2d", 0).map_err(|e| e.0)? != 0;
    let axis = attrs::int(a.node, "axis", if coerce { 1 } else { -1 }).map_err(|e| e.0)?;
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(0..rank).contains(&axis) {
        return Err(format!("axis {axis} out of range"));
    }
    let axis = axis as usize;
    let (len, inner) = if coerce {
        (y.shape[axis..].iter().product(), 1)
    } else {
        (y.shape[axis], y.shape[axis + 1..].iter().product())
    };
    let outer: usize = y.shape[..axis].iter().product();
    let dy = a.d_y()?;
    let mut dx = vec![0.0f32; y.numel()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * len + k) * inner + i;
            let dot: f32 = (0..len).map(|k| dy[at(k)] * yv[at(k)]).sum();
            for k in 0..len {
                dx[at(k)] = yv[at(k)] * (dy[at(k)] - dot);
            }
        }
    }
    let mut out: Grads = vec![None; a.inputs.len()];
    out[0] = Some(dx);
    Ok(out)
}
