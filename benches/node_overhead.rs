//! What the runtime adds per node: a chain of 100 small 4-bit convolutions (16 channels over 6×6,
//! a 1×1 layer and a 3×3 depthwise one in turn, each with a bias and a ReLU) run through
//! `Session::run` (`session`), against the same layers called straight on the kernels with
//! geometries prepared once (`kernels`, the baseline: the arithmetic and the kernels' own checks,
//! no executor). `(session - kernels) / 100` is the runtime's cost per node: argument lists,
//! constant lookups, the op's dispatch. Both on one thread, where these layers do not split.
//! Run: `cargo bench -p pith-benches --bench node_overhead`.

mod common;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use pith_benches::{random_f32s, random_weights};
use pith_compress::WeightFormat;
use pith_format::ir::{Attr, Constant, Dim, ElemType, Model, Node, OpKind, TensorData, Value, ValueId};
use pith_format::PithFile;
use pith_kernels::{Activation, Conv2dParams, Kernels};
use pith_runtime::{Session, SessionOptions, Tensor};

/// Layers in the chain.
const LAYERS: usize = 100;
/// Channels of every layer.
const CHANNELS: usize = 16;
/// Height and width of every plane.
const SIDE: usize = 6;

/// Layer `i`'s geometry: even layers 1×1, odd ones 3×3 depthwise with a pad of 1.
fn layer(i: usize) -> Conv2dParams {
    let (k, groups, pad) = if i.is_multiple_of(2) { (1, 1, 0) } else { (3, CHANNELS, 1) };
    Conv2dParams {
        batch: 1,
        in_c: CHANNELS,
        in_h: SIDE,
        in_w: SIDE,
        out_c: CHANNELS,
        out_h: SIDE,
        out_w: SIDE,
        k_h: k,
        k_w: k,
        stride_h: 1,
        stride_w: 1,
        pad_top: pad,
        pad_left: pad,
        dil_h: 1,
        dil_w: 1,
        groups,
    }
}

/// Each layer's 4-bit weights and f32 bias.
fn weights() -> Vec<(TensorData, Vec<f32>)> {
    let cb4 = WeightFormat::Codebook { bits: 4 };
    (0..LAYERS)
        .map(|i| {
            let p = layer(i);
            let seed = 2 * i as u64;
            (random_weights(cb4, p.out_c, p.filter_len(), seed), random_f32s(p.out_c, seed + 1))
        })
        .collect()
}

/// The chain as a model: `Conv` then `Relu`, `LAYERS` times.
fn model(weights: &[(TensorData, Vec<f32>)]) -> Model {
    let mut m = Model::default();
    let dims = |s: &[usize]| Some(s.iter().map(|&d| Dim::Fixed(d as u64)).collect());
    let value = |m: &mut Model, name: String, shape: Option<Vec<Dim>>| -> ValueId {
        m.graph.values.push(Value { name, elem: ElemType::F32, shape });
        (m.graph.values.len() - 1) as ValueId
    };
    let mut x = value(&mut m, "x".into(), dims(&[1, CHANNELS, SIDE, SIDE]));
    m.graph.inputs.push(x);
    for (i, (w, b)) in weights.iter().enumerate() {
        let p = layer(i);
        let wv = value(&mut m, format!("w{i}"), dims(&[p.out_c, p.in_per_group(), p.k_h, p.k_w]));
        let bv = value(&mut m, format!("b{i}"), dims(&[p.out_c]));
        m.constants.push(Constant { value: wv, data: w.clone() });
        m.constants.push(Constant { value: bv, data: TensorData::F32(b.clone()) });
        let (conv, relu) = (value(&mut m, format!("c{i}"), None), value(&mut m, format!("r{i}"), None));
        let pad = p.pad_top as i64;
        let attrs = vec![
            ("group".to_string(), Attr::Int(p.groups as i64)),
            ("pads".to_string(), Attr::Ints(vec![pad; 4])),
        ];
        m.graph.nodes.push(Node {
            name: format!("conv{i}"),
            op: OpKind::Conv,
            inputs: vec![Some(x), Some(wv), Some(bv)],
            outputs: vec![conv],
            attrs,
        });
        let relu_node = Node {
            name: format!("relu{i}"),
            op: OpKind::Relu,
            inputs: vec![Some(conv)],
            outputs: vec![relu],
            attrs: vec![],
        };
        m.graph.nodes.push(relu_node);
        x = relu;
    }
    m.graph.outputs.push(x);
    m
}

fn bench_node_overhead(c: &mut Criterion) {
    let weights = weights();
    let bytes = pith_format::write(&model(&weights)).expect("writing the chain");
    let file = Arc::new(PithFile::from_bytes(bytes).expect("reading the chain back"));
    let options = SessionOptions { threads: 1, tune_threads: false, ..Default::default() };
    let mut session = Session::new(file, options).expect("a session for the chain");
    let input = Tensor::from_f32(vec![1, CHANNELS, SIDE, SIDE], random_f32s(CHANNELS * SIDE * SIDE, 7));
    let feeds = [("x", input.clone())];
    let planned = session.run(&feeds).expect("the chain runs");

    // The baseline: the same layers on the kernels, ping-ponging two buffers.
    let kernels = Kernels::new(1).expect("a kernel set");
    let layers: Vec<_> = (0..LAYERS)
        .map(|i| (kernels.conv_geometry(&layer(i)).expect("a valid layer"), weights[i].0.view()))
        .collect();
    let scratch_len = (0..LAYERS).map(|i| kernels.conv2d_scratch_len(&layer(i))).max().unwrap_or(0);
    let mut scratch = vec![0.0f32; scratch_len];
    let mut a = input.as_f32().expect("an f32 input").to_vec();
    let mut b = vec![0.0f32; a.len()];
    let mut chain = |a: &mut Vec<f32>, b: &mut Vec<f32>| {
        for (i, (geometry, w)) in layers.iter().enumerate() {
            let (x, y) = if i.is_multiple_of(2) { (&a[..], &mut b[..]) } else { (&b[..], &mut a[..]) };
            let bias = Some(&weights[i].1[..]);
            kernels
                .conv2d_prepared(geometry, x, w, bias, None, None, Activation::Relu, y, &mut scratch)
                .expect("the layer runs");
        }
    };
    // The two routes compute the same chain.
    chain(&mut a, &mut b);
    let want = planned[0].1.as_f32().expect("an f32 output");
    let close = want.iter().zip(&a).all(|(w, g)| (w - g).abs() <= 1e-4 * (1.0 + w.abs()));
    assert!(close, "the kernels' chain disagrees with the session's");

    let mut group = c.benchmark_group("node_overhead_100_layers");
    group.bench_function("session", |bench| bench.iter(|| session.run(&feeds).expect("the chain runs")));
    group.bench_function("kernels", |bench| bench.iter(|| chain(&mut a, &mut b)));
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::quick(2.0);
    targets = bench_node_overhead
}
criterion_main!(benches);
