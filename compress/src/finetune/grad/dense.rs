//! `Gemm` and `MatMul` (2-D right operand): gradients of both operands and the bias.

use pith_runtime::ops::attrs;

use super::{broadcast_offsets, Grads, NodeArgs};

/// `out[i, j] = Σ_p a(i, p) · b(p, j)` for `i < m`, `j < n`, `p < k`, with operands read
/// through index functions (so transposes cost nothing).
fn product(
    m: usize,
    k: usize,
    n: usize,
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for i in 0..m {
        for p in 0..k {
            let av = a(i, p);
            if av == 0.0 {
                continue;
            }
            for (j, o) in out[i * n..(i + 1) * n].iter_mut().enumerate() {
                *o += av * b(p, j);
            }
        }
    }
    out
}

/// `Gemm`: `Y = alpha · op(A) · op(B) + beta · C`.
pub(super) fn gemm(a: &NodeArgs<'_>) -> Result<Grads, String> {
    let (ta, tb) = (a.input(0)?, a.input(1)?);
    let (av, bv) = (a.f32_input(0)?, a.f32_input(1)?);
    let f = |name: &str, d: f32| attrs::float(a.node, name, d).map_err(|e| e.0);
    let i = |name: &str| attrs::int(a.node, name, 0).map_err(|e| e.0);
    let (alpha, beta) = (f("alpha", 1.0)?, f("beta", 1.0)?);
    let (trans_a, trans_b) = (i("transA")? != 0, i("transB")? != 0);
    let [ar, ac] = <[usize; 2]>::try_from(&ta.shape[..]).map_err(|_| "Gemm A must be 2-D".to_string())?;
    let [br, bc] = <[usize; 2]>::try_from(&tb.shape[..]).map_err(|_| "Gemm B must be 2-D".to_string())?;
    let (m, k) = if trans_a { (ac, ar) } else { (ar, ac) };
    let n = if trans_b { br } else { bc };
    // Element (i, p) of op(A) and (p, j) of op(B).
    let opa = |i: usize, p: usize| if trans_a { av[p * ac + i] } else { av[i * ac + p] };
    let opb = |p: usize, j: usize| if trans_b { bv[j * bc + p] } else { bv[p * bc + j] };
    let dy = a.d_y()?;
    let mut out: Grads = vec![None; a.inputs.len()];
    if a.needs(0) {
        // d op(A) = alpha · dY · op(B)ᵀ, [m, k].
        let d = product(m, n, k, |i, j| alpha * dy[i * n + j], |j, p| opb(p, j));
        out[0] = Some(if trans_a { transpose(&d, m, k) } else { d });
    }
    if a.needs(1) {
        // d op(B) = alpha · op(A)ᵀ · dY, [k, n].
        let d = product(k, m, n, |p, i| alpha * opa(i, p), |i, j| dy[i * n + j]);
        out[1] = Some(if trans_b { transpose(&d, k, n) } else { d });
    }
    if a.needs(2) {
        let c = a.input(2)?;
        let offs = broadcast_offsets(&c.shape, &[m, n])?;
        let mut d = vec![0.0f32; c.numel()];
        for (j, &o) in offs.iter().enumerate() {
            d[o] += beta * dy[j];
        }
        out[2] = Some(d);
    }
    Ok(out)
}

/// `MatMul` with a 2-D right operand: `Y[..., i, j] = Σ_p A[..., i, p] · B[p, j]`.
pub(super) fn matmul_2d(a: &NodeArgs<'_>) -> Result<Grads, String> {
    let (ta, tb) = (a.input(0)?, a.input(1)?);
    let (av, bv) = (a.f32_input(0)?, a.f32_input(1)?);
    let [k, n] = <[usize; 2]>::try_from(&tb.shape[..])
        .map_err(|_| format!("no backward rule for MatMul with a {}-D right operand", tb.shape.len()))?;
    if ta.shape.len() < 2 || ta.shape[ta.shape.len() - 1] != k {
        return Err(format!("MatMul operands {:?} x {:?}", ta.shape, tb.shape));
    }
    let m = ta.numel() / k;
    let dy = a.d_y()?;
    let mut out: Grads = vec![None; a.inputs.len()];
    if a.needs(0) {
        out[0] = Some(product(m, n, k, |i, j| dy[i * n + j], |j, p| bv[p * n + j]));
    }
    if a.needs(1) {
        out[1] = Some(product(k, m, n, |p, i| av[i * k + p], |i, j| dy[i * n + j]));
    }
    Ok(out)
}

/// Row-major `[rows, cols]` → `[cols, rows]`.
fn transpose(d: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; d.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = d[r * cols + c];
        }
    }
    out
}
