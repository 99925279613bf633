//! ONNX `Gemm` and `MatMul`. A constant right-hand operand is handed to the kernel in its stored
//! encoding (one row decoded at a time); an activation operand is passed as plain f32 rows.

use std::borrow::Cow;
use std::sync::OnceLock;

use pith_format::ir::{ElemType, Node};
use pith_format::TensorView;
use pith_kernels::{Activation, Int8RowTables, Kernels, WeightLayout};

use super::binary::broadcast_shapes;
use super::{attrs, Arg, ArgData, AxisList, ExecCtx, Op, OpResult, Out};
use crate::error::OpError;
use crate::op_bail;

/// ONNX `Gemm`: `Y = alpha * A' * B' + beta * C`.
#[derive(Debug)]
struct Gemm {
    alpha: f32,
    beta: f32,
    trans_a: bool,
    trans_b: bool,
    /// With int8 activations on and `B` a `[N, K]` 4-bit codebook constant: its int8 GEMV
    /// tables, made on the first run (`None` inside: the weights do not qualify).
    int8_rows: OnceLock<Option<Int8RowTables>>,
}

/// ONNX `MatMul` with numpy semantics (1-D operands, broadcast batch axes).
#[derive(Debug)]
struct MatMul;

/// Builds the op for a `Gemm` node.
pub fn build_gemm(node: &Node) -> OpResult<Box<dyn Op>> {
    Ok(Box::new(Gemm {
        alpha: attrs::float(node, "alpha", 1.0)?,
        beta: attrs::float(node, "beta", 1.0)?,
        trans_a: attrs::int(node, "transA", 0)? != 0,
        trans_b: attrs::int(node, "transB", 0)? != 0,
        int8_rows: OnceLock::new(),
    }))
}

/// Input of a bias a fused `Add` hands a `MatMul` by a constant matrix (see
/// [`crate::fuse::fuse_binary_addends`]): `N` values added to every output row, as the kernel
/// starts each sum from them.
pub(crate) const MATMUL_BIAS_INPUT: usize = 2;

/// Builds the op for a `MatMul` node.
pub fn build_matmul(_node: &Node) -> OpResult<Box<dyn Op>> {
    Ok(Box::new(MatMul))
}

fn input<'a, 'b>(inputs: &'b [Option<Arg<'a>>], i: usize, what: &str) -> OpResult<&'b Arg<'a>> {
    match inputs.get(i) {
        Some(Some(a)) => Ok(a),
        _ => op_bail!("missing input {i} ({what})"),
    }
}

/// A right-hand operand: the constant's stored encoding, or f32 data.
fn weight<'a>(arg: &Arg<'a>) -> OpResult<Cow<'a, [f32]>> {
    arg.f32s()
}

fn kernel_err(e: pith_kernels::KernelError) -> OpError {
    OpError(e.to_string())
}

impl Gemm {
    /// `(m, k, n)`, checking the operand shapes.
    fn dims(&self, a: &[usize], b: &[usize]) -> OpResult<(usize, usize, usize)> {
        let ([a0, a1], [b0, b1]) = (two_d(a, "A")?, two_d(b, "B")?);
        let (m, k) = if self.trans_a { (a1, a0) } else { (a0, a1) };
        let (k2, n) = if self.trans_b { (b1, b0) } else { (b0, b1) };
        if k != k2 {
            op_bail!(
                "inner dimensions differ: A {a:?} (transA={}) and B {b:?} (transB={})",
                self.trans_a,
                self.trans_b
            );
        }
        Ok((m, k, n))
    }

    /// The int8 GEMV tables of constant weights `b` (`[N, K]`, a 4-bit codebook), when the
    /// session runs int8 activations (prepared on the first call).
    fn int8_rows(&self, b: &TensorView<'_>, k: usize, n: usize, ctx: &ExecCtx) -> Option<&Int8RowTables> {
        if !ctx.kernels.int8_activations() || self.layout() != WeightLayout::NK {
            return None;
        }
        self.int8_rows.get_or_init(|| Int8RowTables::new(b, n, k).ok().flatten()).as_ref()
    }

    fn layout(&self) -> WeightLayout {
        if self.trans_b {
            WeightLayout::NK
        } else {
            WeightLayout::KN
        }
    }
}

fn two_d(s: &[usize], what: &str) -> OpResult<[usize; 2]> {
    match s {
        [x, y] => Ok([*x, *y]),
        _ => op_bail!("{what} must be 2-D, has shape {s:?}"),
    }
}

impl Op for Gemm {
    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        let (m, _, n) = self.dims(input(inputs, 0, "A")?.shape, input(inputs, 1, "B")?.shape)?;
        if let Some(Some(c)) = inputs.get(2) {
            if c.shape.len() > 2 || broadcast_shapes(c.shape, &[m, n])?[..] != [m, n] {
                op_bail!("C of shape {:?} does not broadcast to [{m}, {n}]", c.shape);
            }
        }
        Ok(vec![(ElemType::F32, vec![m, n])])
    }

    fn scratch_len(&self, inputs: &[Option<Arg<'_>>]) -> usize {
        let (Ok(a), Ok(b)) = (input(inputs, 0, "A"), input(inputs, 1, "B")) else {
            return 0;
        };
        self.dims(a.shape, b.shape).map_or(0, |(m, k, n)| {
            let transposed = if self.trans_a { m * k } else { 0 };
            transposed + Kernels::default().gemm_scratch_len(k, n, self.layout())
        })
    }

    fn run(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        let (a, b) = (input(inputs, 0, "A")?, input(inputs, 1, "B")?);
        let (m, k, n) = self.dims(a.shape, b.shape)?;
        let c = match inputs.get(2) {
            Some(Some(c)) => Some((c.f32s()?, c.shape)),
            _ => None,
        };
        let a_data = a.f32s()?;
        let (a_buf, scratch) = scratch.split_at_mut(if self.trans_a { m * k } else { 0 });
        let a_rows: &[f32] = if self.trans_a {
            for (i, row) in a_buf.chunks_exact_mut(k.max(1)).enumerate().take(m) {
                for (kk, v) in row.iter_mut().enumerate() {
                    *v = a_data[kk * m + i];
                }
            }
            a_buf
        } else {
            &a_data
        };
        // A row-vector C with unit scales is the kernel's bias; anything else is added afterwards.
        let row_bias = self.alpha == 1.0
            && self.beta == 1.0
            && c.as_ref().is_some_and(|(_, s)| matches!(s, [x] | [1, x] if *x == n));
        let bias = if row_bias { c.as_ref().map(|(d, _)| &d[..]) } else { None };
        let dense;
        let (view, tables) = match b.data {
            Some(ArgData::Const(v)) => (v, self.int8_rows(&v, k, n, ctx)),
            _ => {
                dense = weight(b)?;
                (TensorView::F32(&dense), None)
            }
        };
        let y = &mut *outputs[0].data;
        match tables {
            Some(t) => ctx.kernels.gemm_int8(a_rows, m, k, n, &view, t, bias, Activation::None, y, scratch),
            None => {
                ctx.kernels.gemm(a_rows, m, k, n, &view, self.layout(), bias, Activation::None, y, scratch)
            }
        }
        .map_err(kernel_err)?;
        if self.alpha != 1.0 {
            y.iter_mut().for_each(|v| *v *= self.alpha);
        }
        if let (Some((cd, cs)), false) = (&c, row_bias) {
            // Strides of C's (right-aligned, broadcast) axes within [m, n].
            let sn = usize::from(cs.last().is_some_and(|&d| d != 1));
            let sm = if cs.len() == 2 && cs[0] != 1 { cs[1] } else { 0 };
            for i in 0..m {
                for j in 0..n {
                    y[i * n + j] += self.beta * cd[i * sm + j * sn];
                }
            }
        }
        Ok(())
    }
}

/// MatMul geometry: broadcast batch shape, `(m, k, n)`, and the output shape.
struct MatMulDims<'a> {
    a_batch: &'a [usize],
    b_batch: &'a [usize],
    batch: AxisList<usize>,
    m: usize,
    k: usize,
    n: usize,
    out: AxisList<usize>,
}

fn matmul_dims<'a>(a: &'a [usize], b: &'a [usize]) -> OpResult<MatMulDims<'a>> {
    if a.is_empty() || b.is_empty() {
        op_bail!("MatMul operands must have rank >= 1, got {a:?} and {b:?}");
    }
    let (a_batch, m, k) = match a {
        [k] => (&[][..], 1, *k),
        [batch @ .., m, k] => (batch, *m, *k),
        [] => unreachable!(),
    };
    let (b_batch, k2, n) = match b {
        [k] => (&[][..], *k, 1),
        [batch @ .., k, n] => (batch, *k, *n),
        [] => unreachable!(),
    };
    if k != k2 {
        op_bail!("inner dimensions differ: {a:?} x {b:?}");
    }
    let batch = broadcast_shapes(a_batch, b_batch)?;
    let mut out = batch.clone();
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(MatMulDims { a_batch, b_batch, batch, m, k, n, out })
}

/// The flat index, in a tensor of `shape`, of element `o` of `shape` broadcast to `out` (axes
/// aligned at the end; `shape` repeats along its axes of extent 1 and the axes it lacks).
fn broadcast_index(mut o: usize, out: &[usize], shape: &[usize]) -> usize {
    let (mut index, mut stride) = (0, 1);
    for (d, &n) in out.iter().enumerate().rev() {
        let at = o % n.max(1);
        o /= n.max(1);
        if let Some(&extent) = (d + shape.len()).checked_sub(out.len()).and_then(|k| shape.get(k)) {
            if extent != 1 {
                index += at * stride;
            }
            stride *= extent;
        }
    }
    index
}

impl Op for MatMul {
    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        let d = matmul_dims(input(inputs, 0, "A")?.shape, input(inputs, 1, "B")?.shape)?;
        Ok(vec![(ElemType::F32, d.out.to_vec())])
    }

    fn scratch_len(&self, inputs: &[Option<Arg<'_>>]) -> usize {
        let (Ok(a), Ok(b)) = (input(inputs, 0, "A"), input(inputs, 1, "B")) else {
            return 0;
        };
        matmul_dims(a.shape, b.shape)
            .map_or(0, |d| Kernels::default().gemm_scratch_len(d.k, d.n, WeightLayout::KN))
    }

    fn run(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        let (a, b) = (input(inputs, 0, "A")?, input(inputs, 1, "B")?);
        let d = matmul_dims(a.shape, b.shape)?;
        let kernels = &ctx.kernels;
        let x = a.f32s()?;
        let y = &mut *outputs[0].data;
        let bias = match inputs.get(MATMUL_BIAS_INPUT) {
            Some(Some(b)) => {
                let b = b.f32s()?;
                if b.len() != d.n || !d.b_batch.is_empty() {
                    op_bail!(
                        "a fused MatMul bias must hold one value per output column ({}), not {}",
                        d.n,
                        b.len()
                    );
                }
                Some(b)
            }
            _ => None,
        };
        let gemm = |a: &[f32], m: usize, w: TensorView<'_>, y: &mut [f32], s: &mut [f32]| {
            kernels
                .gemm(a, m, d.k, d.n, &w, WeightLayout::KN, bias.as_deref(), Activation::None, y, s)
                .map_err(kernel_err)
        };
        if d.b_batch.is_empty() {
            // One weight matrix for every row of A: a single call, constant weights stay packed.
            let rows = d.a_batch.iter().product::<usize>() * d.m;
            let dense;
            let view = match b.data {
                Some(ArgData::Const(v)) => v,
                _ => {
                    dense = weight(b)?;
                    TensorView::F32(&dense)
                }
            };
            return gemm(&x, rows, view, y, scratch);
        }
        // Batched right operand (attention's products): plain f32 matrices, one product per
        // broadcast batch index.
        let w = weight(b)?;
        let (mk, kn, mn) = (d.m * d.k, d.k * d.n, d.m * d.n);
        for o in 0..d.batch.iter().product() {
            let (i, j) = (broadcast_index(o, &d.batch, d.a_batch), broadcast_index(o, &d.batch, d.b_batch));
            let w = TensorView::F32(&w[j * kn..(j + 1) * kn]);
            gemm(&x[i * mk..(i + 1) * mk], d.m, w, &mut y[o * mn..(o + 1) * mn], scratch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::testing::{act, assert_close, int8_ctx, node, per_row_4bit, run, run_with, values};
    use pith_format::ir::{Attr, OpKind, TensorData};

    /// `[m, k] x [k, n]` plain loops.
    fn mm(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut y = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum();
            }
        }
        y
    }

    fn transpose(x: &[f32], r: usize, c: usize) -> Vec<f32> {
        (0..c * r).map(|i| x[(i % r) * c + i / r]).collect()
    }

    #[test]
    fn broadcast_indices_pair_the_batches_as_the_broadcast_does() {
        // Each output batch index's operand matrices, against the element-wise broadcast of
        // the index lists themselves.
        let cases: [(&[usize], &[usize]); 5] =
            [(&[2, 3], &[2, 3]), (&[2, 1], &[1, 3]), (&[3], &[2, 1]), (&[], &[4]), (&[2, 1, 3], &[5, 1])];
        for (a, b) in cases {
            let out = crate::ops::binary::broadcast_shapes(a, b).unwrap();
            let (na, nb): (usize, usize) = (a.iter().product(), b.iter().product());
            let (ia, ib): (Vec<usize>, Vec<usize>) = ((0..na).collect(), (0..nb).collect());
            let mut pairs = vec![(0, 0); out.iter().product()];
            crate::ops::binary::zip_broadcast(&ia, a, &ib, b, &out, &mut pairs, |i, j| (i, j));
            for (o, &want) in pairs.iter().enumerate() {
                let got = (broadcast_index(o, &out, a), broadcast_index(o, &out, b));
                assert_eq!(got, want, "{a:?} x {b:?}, batch {o}");
            }
        }
    }

    #[test]
    fn gemm_of_a_4_bit_constant_keeps_its_int8_tables() {
        // transB = 1 over a 4-bit per-row codebook constant with int8 activations: the op
        // prepares the tables on its first run and gives the kernels' int8 GEMV's bits.
        let (k, n) = (70, 9);
        let cb = TensorData::Codebook(per_row_4bit(21, n, k));
        let (a, c) = (values(22, k), values(23, n));
        let (bs, cs, xs) = ([n, k], [n], [1, k]);
        let b_arg = Some(Arg { shape: &bs, elem: ElemType::F32, data: Some(ArgData::Const(cb.view())) });
        let inputs = [act(&xs, &a), b_arg, act(&cs, &c)];
        let op = Gemm { alpha: 1.0, beta: 1.0, trans_a: false, trans_b: true, int8_rows: OnceLock::new() };
        let ctx = int8_ctx();
        let first = run_with(&op, &inputs, &ctx).unwrap();
        assert!(op.int8_rows.get().is_some_and(|t| t.as_ref().is_some_and(|t| t.rows() == n)));
        assert_eq!(run_with(&op, &inputs, &ctx).unwrap(), first);
        let mut want = vec![0.0; n];
        let mut scratch = vec![0.0; ctx.kernels.gemm_scratch_len(k, n, WeightLayout::NK)];
        let (w, none) = (cb.view(), Activation::None);
        ctx.kernels.gemm(&a, 1, k, n, &w, WeightLayout::NK, Some(&c), none, &mut want, &mut scratch).unwrap();
        assert_eq!(first[0], (vec![1, n], want));
        // Without int8 activations nothing is prepared.
        let plain = Gemm { int8_rows: OnceLock::new(), ..op };
        run(&plain, &inputs).unwrap();
        assert!(plain.int8_rows.get().is_none());
    }

    #[test]
    fn gemm_transposes_scales_and_broadcasts_c() {
        let (m, k, n) = (3, 5, 4);
        let a = values(1, m * k);
        let b = values(2, k * n);
        let want_ab = mm(&a, &b, m, k, n);
        let (at, bt) = (transpose(&a, m, k), transpose(&b, k, n));
        let c_cases: Vec<(Vec<usize>, Vec<f32>)> = vec![
            (vec![n], values(3, n)),
            (vec![1, n], values(4, n)),
            (vec![m, 1], values(5, m)),
            (vec![m, n], values(6, m * n)),
            (vec![], vec![0.7]),
        ];
        for (ta, tb) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            for (alpha, beta) in [(1.0, 1.0), (0.5, -2.0)] {
                for (cs, c) in &c_cases {
                    let nd = node(
                        OpKind::Gemm,
                        3,
                        vec![
                            ("transA", Attr::Int(ta)),
                            ("transB", Attr::Int(tb)),
                            ("alpha", Attr::Float(alpha)),
                            ("beta", Attr::Float(beta)),
                        ],
                    );
                    let op = build_gemm(&nd).unwrap();
                    let (a_in, a_s) = if ta == 1 { (&at, [k, m]) } else { (&a, [m, k]) };
                    let (b_in, b_s) = if tb == 1 { (&bt, [n, k]) } else { (&b, [k, n]) };
                    let got = run(&*op, &[act(&a_s, a_in), act(&b_s, b_in), act(cs, c)]).unwrap();
                    let want: Vec<f32> = (0..m * n)
                        .map(|i| {
                            let (r, col) = (i / n, i % n);
                            let cv = match cs.as_slice() {
                                [x] if *x == n => c[col],
                                [1, _] => c[col],
                                [_, 1] => c[r],
                                [_, _] => c[i],
                                _ => c[0],
                            };
                            alpha * want_ab[i] + beta * cv
                        })
                        .collect();
                    assert_eq!(got[0].0, vec![m, n]);
                    assert_close(&got[0].1, &want);
                }
            }
        }
    }

    #[test]
    fn gemm_with_constant_f16_weight_and_bad_shapes() {
        let (m, k, n) = (2, 3, 2);
        let a = values(7, m * k);
        let b = values(8, n * k);
        let data = TensorData::F16(b.iter().map(|&v| half::f16::from_f32(v)).collect());
        let dense: Vec<f32> = b.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let op = build_gemm(&node(OpKind::Gemm, 2, vec![("transB", Attr::Int(1))])).unwrap();
        let w = Some(Arg { shape: &[n, k], elem: ElemType::F32, data: Some(ArgData::Const(data.view())) });
        let got = run(&*op, &[act(&[m, k], &a), w]).unwrap();
        assert_close(&got[0].1, &mm(&a, &transpose(&dense, n, k), m, k, n));
        assert!(op.infer(&[act(&[m, k], &a), act(&[n, k + 1], &a)]).is_err());
        assert!(op.infer(&[act(&[m, k], &a), act(&[n, k], &b), act(&[3], &b[..3])]).is_err());
    }

    #[test]
    fn matmul_follows_numpy_shapes() {
        // (a shape, b shape, expected output shape)
        let cases: &[(&[usize], &[usize], &[usize])] = &[
            (&[3, 4], &[4, 5], &[3, 5]),
            (&[2, 3, 4], &[4, 5], &[2, 3, 5]),
            (&[4], &[4, 5], &[5]),
            (&[3, 4], &[4], &[3]),
            (&[4], &[4], &[]),
            (&[2, 1, 3, 4], &[5, 4, 2], &[2, 5, 3, 2]),
            (&[3, 4], &[2, 4, 5], &[2, 3, 5]),
        ];
        for (ci, &(sa, sb, so)) in cases.iter().enumerate() {
            let a = values(10 + ci as u64, sa.iter().product());
            let b = values(20 + ci as u64, sb.iter().product());
            let op = build_matmul(&node(OpKind::MatMul, 2, vec![])).unwrap();
            let got = run(&*op, &[act(sa, &a), act(sb, &b)]).unwrap();
            assert_eq!(got[0].0, so.to_vec(), "{sa:?} x {sb:?}");
            // Reference: promote to >= 2-D, broadcast batch by explicit indices.
            let a2: Vec<usize> = if sa.len() == 1 { vec![1, sa[0]] } else { sa.to_vec() };
            let b2: Vec<usize> = if sb.len() == 1 { vec![sb[0], 1] } else { sb.to_vec() };
            let (m, k, n) = (a2[a2.len() - 2], a2[a2.len() - 1], b2[b2.len() - 1]);
            let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
            let batch = broadcast_shapes(ab, bb).unwrap();
            let nb: usize = batch.iter().product();
            let flat = |shape: &[usize], idx: &[usize]| {
                let lead = idx.len() - shape.len();
                shape
                    .iter()
                    .enumerate()
                    .fold(0, |acc, (i, &d)| acc * d + if d == 1 { 0 } else { idx[lead + i] })
            };
            let mut want = Vec::new();
            for t in 0..nb {
                let mut idx = vec![0; batch.len()];
                let mut r = t;
                for dd in (0..batch.len()).rev() {
                    idx[dd] = r % batch[dd];
                    r /= batch[dd];
                }
                let (i, j) = (flat(ab, &idx), flat(bb, &idx));
                want.extend(mm(&a[i * m * k..][..m * k], &b[j * k * n..][..k * n], m, k, n));
            }
            assert_close(&got[0].1, &want);
        }
        let op = build_matmul(&node(OpKind::MatMul, 2, vec![])).unwrap();
        assert!(op.infer(&[act(&[3, 4], &[]), act(&[5, 2], &[])]).is_err());
        assert!(op.infer(&[act(&[2, 3, 4], &[]), act(&[3, 4, 2], &[])]).is_err());
    }
}
