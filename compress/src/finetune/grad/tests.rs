//! Every backward rule checked against central finite differences, through one small graph
//! that chains them all (so each rule is reached by the gradient of some parameter).

use pith_format::ir::{self, Attr, OpKind, ValueId};
use pith_runtime::Tensor;

use crate::finetune::net::Net;
use crate::passes::test_util::{act, constant, input, push};
use crate::work::WorkModel;

/// Deterministic pseudo-random values in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn set_attrs(w: &mut WorkModel, attrs: Vec<(&str, Attr)>) {
    let node = w.graph.nodes.last_mut().expect("a node was pushed");
    node.attrs = attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
}

fn ints(v: &[i64]) -> Attr {
    Attr::Ints(v.to_vec())
}

/// The test graph, its trainable value names and the input.
fn graph() -> (ir::Model, Vec<&'static str>, Tensor) {
    let mut w = WorkModel::default();
    let x = input(&mut w, "x");
    let mut k = 0u64;
    let mut param = |w: &mut WorkModel, name: &str, shape: &[usize], scale: f32| {
        k += 1;
        let n = shape.iter().product();
        constant(w, name, shape, noise(n, k).iter().map(|v| v * scale).collect())
    };
    let (w1, b1) = (param(&mut w, "w1", &[8, 3, 3, 3], 0.4), param(&mut w, "b1", &[8], 0.2));
    let (wd, bd) = (param(&mut w, "wd", &[8, 1, 3, 3], 0.5), param(&mut w, "bd", &[8], 0.2));
    let (we, be) = (param(&mut w, "we", &[10, 8, 1, 1], 0.5), param(&mut w, "be", &[10], 0.2));
    let (wt, bt) = (param(&mut w, "wt", &[10, 4, 2, 2], 0.5), param(&mut w, "bt", &[4], 0.2));
    let (wg, bg) = (param(&mut w, "wg", &[4, 3], 0.8), param(&mut w, "bg", &[3], 0.2));
    let bn: Vec<ValueId> = [("bn_s", 1.0), ("bn_b", 0.1), ("bn_m", 0.1), ("bn_v", 0.2)]
        .iter()
        .enumerate()
        .map(|(i, (n, s))| {
            constant(&mut w, n, &[4], noise(4, 100 + i as u64).iter().map(|v| v.abs() * s + 0.5).collect())
        })
        .collect();
    let pads = w.add_const("pads", Tensor::from_i64(vec![8], vec![0, 0, 0, 0, 0, 2, 0, 0]));
    let scales = constant(&mut w, "scales", &[4], vec![1.0, 1.0, 2.0, 2.0]);
    let shape = w.add_const("shape", Tensor::from_i64(vec![3], vec![1, 8, -1]));
    let v: Vec<ValueId> = (0..20).map(|i| act(&mut w, &format!("v{i}"))).collect();
    push(&mut w, "conv", OpKind::Conv, &[Some(x), Some(w1), Some(b1)], &[v[0]]);
    set_attrs(&mut w, vec![("strides", ints(&[2, 2])), ("pads", ints(&[1, 1, 1, 1]))]);
    push(&mut w, "hswish", OpKind::HardSwish, &[Some(v[0])], &[v[1]]);
    push(&mut w, "dw", OpKind::Conv, &[Some(v[1]), Some(wd), Some(bd)], &[v[2]]);
    set_attrs(&mut w, vec![("group", Attr::Int(8)), ("pads", ints(&[1, 1, 1, 1]))]);
    push(&mut w, "pool", OpKind::MaxPool, &[Some(v[2])], &[v[3]]);
    set_attrs(&mut w, vec![("kernel_shape", ints(&[2, 2]))]);
    push(&mut w, "pad", OpKind::Pad, &[Some(v[3]), Some(pads)], &[v[4]]);
    push(&mut w, "pw", OpKind::Conv, &[Some(v[3]), Some(we), Some(be)], &[v[5]]);
    push(&mut w, "add", OpKind::Add, &[Some(v[5]), Some(v[4])], &[v[6]]);
    push(&mut w, "relu", OpKind::Relu, &[Some(v[6])], &[v[7]]);
    push(&mut w, "up", OpKind::ConvTranspose, &[Some(v[7]), Some(wt), Some(bt)], &[v[8]]);
    set_attrs(&mut w, vec![("strides", ints(&[2, 2]))]);
    push(
        &mut w,
        "bn",
        OpKind::BatchNormalization,
        &[Some(v[8]), Some(bn[0]), Some(bn[1]), Some(bn[2]), Some(bn[3])],
        &[v[9]],
    );
    push(&mut w, "gap", OpKind::GlobalAveragePool, &[Some(v[9])], &[v[10]]);
    push(&mut w, "hsig", OpKind::HardSigmoid, &[Some(v[10])], &[v[11]]);
    push(&mut w, "se", OpKind::Mul, &[Some(v[9]), Some(v[11])], &[v[12]]);
    push(&mut w, "resize", OpKind::Resize, &[Some(v[12]), None, Some(scales)], &[v[13]]);
    let smooth = act(&mut w, "smooth");
    push(&mut w, "bilinear", OpKind::Resize, &[Some(v[12]), None, Some(scales)], &[smooth]);
    set_attrs(&mut w, vec![("mode", Attr::Str("linear".into()))]);
    push(&mut w, "cat", OpKind::Concat, &[Some(v[13]), Some(smooth)], &[v[14]]);
    set_attrs(&mut w, vec![("axis", Attr::Int(1))]);
    push(&mut w, "sig", OpKind::Sigmoid, &[Some(v[14])], &[v[15]]);
    push(&mut w, "reshape", OpKind::Reshape, &[Some(v[15]), Some(shape)], &[v[16]]);
    push(&mut w, "transpose", OpKind::Transpose, &[Some(v[16])], &[v[17]]);
    set_attrs(&mut w, vec![("perm", ints(&[0, 2, 1]))]);
    push(&mut w, "flat", OpKind::Flatten, &[Some(v[10])], &[v[18]]);
    push(&mut w, "gemm", OpKind::Gemm, &[Some(v[18]), Some(wg), Some(bg)], &[v[19]]);
    let soft = act(&mut w, "soft");
    push(&mut w, "softmax", OpKind::Softmax, &[Some(v[19])], &[soft]);
    w.graph.outputs = vec![v[17], soft];
    let model = crate::finish(w, Default::default());
    let names = vec!["w1", "b1", "wd", "bd", "we", "be", "wt", "bt", "wg", "bg"];
    let x = Tensor::from_f32(vec![1, 3, 9, 10], noise(270, 77));
    (model, names, x)
}

/// `Σ_o r_o · y_o` for fixed random weights `r_o`, and its gradient with respect to the outputs.
fn loss(outputs: &[Tensor]) -> (f64, Vec<Vec<f32>>) {
    let mut total = 0.0f64;
    let mut d = Vec::new();
    for (i, o) in outputs.iter().enumerate() {
        let r = noise(o.numel(), 500 + i as u64);
        total += o.as_f32().unwrap().iter().zip(&r).map(|(&y, &r)| (y * r) as f64).sum::<f64>();
        d.push(r);
    }
    (total, d)
}

#[test]
fn every_rule_matches_finite_differences() {
    let (model, names, x) = graph();
    let ids: Vec<ValueId> = names
        .iter()
        .map(|n| model.graph.values.iter().position(|v| v.name == *n).unwrap() as ValueId)
        .collect();
    let params: Vec<Tensor> = ids
        .iter()
        .map(|&id| {
            let c = model.constants.iter().find(|c| c.value == id).unwrap();
            let ir::TensorData::F32(v) = &c.data else { panic!("f32 parameter") };
            let shape = model.graph.values[id as usize]
                .shape
                .as_deref()
                .and_then(crate::work::concrete_shape)
                .unwrap();
            Tensor::from_f32(shape, v.clone())
        })
        .collect();
    // On every kernel path of this CPU: the backward products run on the forward pass's path.
    for isa in pith_kernels::Isa::available() {
        let net = Net::new(&model, &ids, isa).unwrap();
        check_gradients(&net, &names, &params, &x, isa.name);
    }
}

/// Compares `net`'s analytic gradients of `params` (named `names`) with central differences.
fn check_gradients(net: &Net<'_>, names: &[&str], params: &[Tensor], x: &Tensor, path: &str) {
    let inputs = vec![("x".to_string(), x.clone())];
    let trace = net.forward(0, &inputs, params).unwrap();
    let outputs: Vec<Tensor> = net.run(0, &inputs, params).unwrap();
    let (_, d_out) = loss(&outputs);
    let grads = net.backward(0, &trace, params, d_out).unwrap();
    let eps = 1e-3f32;
    for (slot, name) in names.iter().enumerate() {
        let n = params[slot].numel();
        // Up to 12 elements per parameter, spread over the tensor.
        for e in (0..n).step_by(n.div_ceil(12).max(1)) {
            let at = |delta: f32| {
                let mut p = params.to_vec();
                if let pith_runtime::TensorBuf::F32(v) = &mut p[slot].buf {
                    v[e] += delta;
                }
                loss(&net.run(0, &inputs, &p).unwrap()).0
            };
            let numeric = ((at(eps) - at(-eps)) / (2.0 * eps as f64)) as f32;
            let analytic = grads[slot][e];
            let tol = 2e-3 + 2e-2 * numeric.abs().max(analytic.abs());
            assert!(
                (numeric - analytic).abs() <= tol,
                "{path}: {name}[{e}]: analytic {analytic} vs finite difference {numeric}"
            );
        }
        assert!(grads[slot].iter().any(|&g| g != 0.0), "{path}: {name} received no gradient");
    }
}

#[test]
fn broadcast_offsets_follow_numpy_rules() {
    use super::broadcast_offsets;
    assert_eq!(broadcast_offsets(&[2, 1], &[2, 3]).unwrap(), vec![0, 0, 0, 1, 1, 1]);
    assert_eq!(broadcast_offsets(&[3], &[2, 3]).unwrap(), vec![0, 1, 2, 0, 1, 2]);
    assert_eq!(broadcast_offsets(&[], &[2]).unwrap(), vec![0, 0]);
    assert!(broadcast_offsets(&[2], &[3]).is_err());
}

#[test]
fn an_op_without_a_rule_is_named() {
    let mut w = WorkModel::default();
    let x = input(&mut w, "x");
    let wt = constant(&mut w, "w", &[2, 1, 1, 1], vec![1.0, 2.0]);
    let e = constant(&mut w, "e", &[1], vec![2.0]);
    let (y, z) = (act(&mut w, "y"), act(&mut w, "z"));
    push(&mut w, "conv", OpKind::Conv, &[Some(x), Some(wt)], &[y]);
    push(&mut w, "square", OpKind::Pow, &[Some(y), Some(e)], &[z]);
    w.graph.outputs = vec![z];
    let model = crate::finish(w, Default::default());
    let id = model.graph.values.iter().position(|v| v.name == "w").unwrap() as ValueId;
    let net = Net::new(&model, &[id], pith_kernels::Isa::scalar()).unwrap();
    let params = vec![Tensor::from_f32(vec![2, 1, 1, 1], vec![1.0, 2.0])];
    let inputs = vec![("x".to_string(), Tensor::from_f32(vec![1, 1, 2, 2], vec![1.0; 4]))];
    let trace = net.forward(0, &inputs, &params).unwrap();
    let err = net.backward(0, &trace, &params, vec![vec![1.0; 8]]).unwrap_err().to_string();
    assert!(err.contains("square") && err.contains("Pow"), "{err}");
}
