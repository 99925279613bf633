//! Sessions over real `.pith` bytes: models are built as IR, written, and opened again.

use std::sync::Arc;

use half::f16;
use pith_format::ir::{
    Attr, Constant, Dim, ElemType, Graph, Model, Node, OpKind, TensorData, Value, ValueId,
};
use pith_format::PithFile;
use pith_runtime::{RuntimeError, Session, SessionOptions, Tensor};

/// Builds a model value by value.
#[derive(Default)]
struct Builder {
    model: Model,
}

impl Builder {
    fn value(&mut self, name: &str, elem: ElemType, shape: Option<Vec<Dim>>) -> ValueId {
        self.model.graph.values.push(Value { name: name.into(), elem, shape });
        (self.model.graph.values.len() - 1) as ValueId
    }

    fn input(&mut self, name: &str, dims: Vec<Dim>) -> ValueId {
        let id = self.value(name, ElemType::F32, Some(dims));
        self.model.graph.inputs.push(id);
        id
    }

    fn constant(&mut self, name: &str, shape: &[u64], data: TensorData) -> ValueId {
        let elem = match data {
            TensorData::I64(_) => ElemType::I64,
            _ => ElemType::F32,
        };
        let dims = shape.iter().map(|&d| Dim::Fixed(d)).collect();
        let id = self.value(name, elem, Some(dims));
        self.model.constants.push(Constant { value: id, data });
        id
    }

    fn ints(&mut self, name: &str, v: &[i64]) -> ValueId {
        self.constant(name, &[v.len() as u64], TensorData::I64(v.to_vec()))
    }

    fn node(&mut self, op: OpKind, inputs: &[ValueId], attrs: Vec<(&str, Attr)>) -> ValueId {
        let n = self.model.graph.nodes.len();
        let out = self.value(&format!("v{n}"), ElemType::F32, None);
        self.model.graph.nodes.push(Node {
            name: format!("{}{n}", op.onnx_name()),
            op,
            inputs: inputs.iter().map(|&i| Some(i)).collect(),
            outputs: vec![out],
            attrs: attrs.into_iter().map(|(k, v)| (k.into(), v)).collect(),
        });
        out
    }

    fn session(self, outputs: &[ValueId]) -> Session {
        self.session_with(outputs, SessionOptions::default())
    }

    fn session_with(mut self, outputs: &[ValueId], options: SessionOptions) -> Session {
        self.model.graph.outputs = outputs.to_vec();
        self.model.producer = "runtime session tests".into();
        let bytes = pith_format::write(&self.model).expect("write");
        let file = PithFile::from_bytes(bytes).expect("read back");
        Session::new(Arc::new(file), options).expect("session")
    }
}

fn sym(s: &str) -> Dim {
    Dim::Symbol(s.into())
}

fn iota(shape: &[usize]) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_f32(shape.to_vec(), (0..n).map(|i| i as f32 * 0.5 - 3.0).collect())
}

/// `x[1, C, H, W]` to `[1, H*W, C]`: Transpose, then Reshape to a target computed from `Shape(x)`
/// with Gather, Unsqueeze and Concat, as exported detection heads do.
fn nhwc_session() -> Session {
    let mut b = Builder::default();
    let x = b.input("x", vec![Dim::Fixed(1), sym("C"), sym("H"), sym("W")]);
    let t = b.node(OpKind::Transpose, &[x], vec![("perm", Attr::Ints(vec![0, 2, 3, 1]))]);
    let shape = b.node(OpKind::Shape, &[x], vec![]);
    let one = b.constant("one", &[], TensorData::I64(vec![1]));
    let c = b.node(OpKind::Gather, &[shape, one], vec![("axis", Attr::Int(0))]);
    let zero_axis = b.ints("axes0", &[0]);
    let c1 = b.node(OpKind::Unsqueeze, &[c, zero_axis], vec![]);
    let head = b.ints("head", &[1, -1]);
    let target = b.node(OpKind::Concat, &[head, c1], vec![("axis", Attr::Int(0))]);
    let y = b.node(OpKind::Reshape, &[t, target], vec![]);
    b.session(&[y])
}

fn nhwc_reference(x: &Tensor) -> Tensor {
    let (c, hw) = (x.shape[1], x.shape[2] * x.shape[3]);
    let d = x.as_f32().unwrap();
    let out = (0..hw * c).map(|i| d[(i % c) * hw + i / c]).collect();
    Tensor::from_f32(vec![1, hw, c], out)
}

#[test]
fn plan_time_shape_arithmetic_and_replanning() {
    let mut s = nhwc_session();
    assert_eq!(s.inputs()[0].name, "x");
    assert_eq!(s.outputs().len(), 1);
    assert!(s.last_plan().is_none());
    for (c, h, w) in [(3, 4, 5), (2, 7, 3), (3, 4, 5)] {
        let x = iota(&[1, c, h, w]);
        let out = s.run(&[("x", x.clone())]).unwrap();
        assert_eq!(out[0].0, s.outputs()[0].name);
        assert_eq!(out[0].1, nhwc_reference(&x), "{c}x{h}x{w}");
        let plan = s.last_plan().unwrap();
        // Transpose runs; Reshape is a view of its result; Shape, Gather, Unsqueeze, Concat fold.
        assert_eq!((plan.runtime_nodes, plan.folded_nodes), (1, 4), "{plan:?}");
    }
}

#[test]
fn explicit_plan_reports_the_arena() {
    // A chain of five transposes: five activations of 24 floats in the arena (the input is read
    // in place), at most two alive at once.
    let mut b = Builder::default();
    let mut v = b.input("x", vec![sym("A"), sym("B")]);
    for _ in 0..5 {
        v = b.node(OpKind::Transpose, &[v], vec![]);
    }
    let mut s = b.session(&[v]);
    let plan = s.plan(&[("x", vec![4, 6])]).unwrap();
    assert_eq!(plan.values, 5);
    let all = 5 * 24 * 4;
    assert!(plan.arena_bytes < all, "{plan:?}");
    assert!(plan.arena_bytes >= 2 * 24 * 4, "{plan:?}");
    assert_eq!(s.last_plan(), Some(&plan));
    let x = iota(&[4, 6]);
    let y = s.run(&[("x", x.clone())]).unwrap().remove(0).1;
    // An odd number of transposes is one transpose.
    let d = x.as_f32().unwrap();
    let want: Vec<f32> = (0..24).map(|i| d[(i % 4) * 6 + i / 4]).collect();
    assert_eq!(y, Tensor::from_f32(vec![6, 4], want));
    assert_eq!(s.last_plan(), Some(&plan), "same shapes, same plan");
}

#[test]
fn compressed_constants_and_constant_outputs() {
    // Concat an activation with an f16 constant; also return the constant itself.
    let mut b = Builder::default();
    let x = b.input("x", vec![Dim::Fixed(2), Dim::Fixed(2)]);
    let halves: Vec<f16> = [1.5f32, -2.0, 0.25, 8.0].iter().map(|&v| f16::from_f32(v)).collect();
    let k = b.constant("k", &[2, 2], TensorData::F16(halves));
    let y = b.node(OpKind::Concat, &[x, k], vec![("axis", Attr::Int(1))]);
    let mut s = b.session(&[y, k]);
    let out = s.run(&[("x", Tensor::from_f32(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]))]).unwrap();
    assert_eq!(out[0].1, Tensor::from_f32(vec![2, 4], vec![1.0, 2.0, 1.5, -2.0, 3.0, 4.0, 0.25, 8.0]));
    assert_eq!(out[1].0, "k");
    assert_eq!(out[1].1, Tensor::from_f32(vec![2, 2], vec![1.5, -2.0, 0.25, 8.0]));
}

#[test]
fn bad_inputs_are_named() {
    let mut s = nhwc_session();
    let input_err = |r: Result<Vec<(String, Tensor)>, RuntimeError>| match r {
        Err(RuntimeError::Input { name, msg }) => format!("{name}: {msg}"),
        other => panic!("expected an input error, got {other:?}"),
    };
    let e = input_err(s.run(&[("x", iota(&[2, 3, 4, 5]))]));
    assert!(e.contains("x: expected shape [1, C, H, W], got [2, 3, 4, 5]"), "{e}");
    let e = input_err(s.run(&[]));
    assert_eq!(e, "x: missing");
    let e = input_err(s.run(&[("x", iota(&[1, 1, 1, 1])), ("image", iota(&[1]))]));
    assert!(e.starts_with("image: not an input"), "{e}");
    let e = input_err(s.run(&[("x", Tensor::from_i64(vec![1, 1, 1, 1], vec![3]))]));
    assert!(e.contains("expected f32"), "{e}");
    // Planning by shape alone reports the same problems.
    assert!(matches!(s.plan(&[("x", vec![1, 2, 3])]), Err(RuntimeError::Input { .. })));
}

#[test]
fn unsupported_nodes_fail_at_creation_naming_the_node() {
    let mut b = Builder::default();
    let x = b.input("x", vec![Dim::Fixed(2)]);
    let y = b.node(OpKind::Cast, &[x], vec![("to", Attr::Int(8))]);
    b.model.graph.outputs = vec![y];
    let bytes = pith_format::write(&b.model).unwrap();
    let file = Arc::new(PithFile::from_bytes(bytes).unwrap());
    match Session::new(file, SessionOptions::default()) {
        Err(RuntimeError::Node { node, op, .. }) => assert_eq!((node.as_str(), op), ("Cast0", "Cast")),
        other => panic!("expected a node error, got {other:?}"),
    }
}

#[test]
fn empty_graph_passes_inputs_through() {
    let mut b = Builder::default();
    let x = b.input("x", vec![sym("N")]);
    let mut s = b.session(&[x]);
    let x = iota(&[5]);
    assert_eq!(s.run(&[("x", x.clone())]).unwrap()[0].1, x);
    let _: &Graph = s.model().graph();
}

#[test]
fn values_alive_across_other_steps_keep_their_memory() {
    // a = T(x) must survive while b = T(a) is written: y = a + b + bias, with x square.
    let mut b = Builder::default();
    let x = b.input("x", vec![sym("N"), sym("N")]);
    let a = b.node(OpKind::Transpose, &[x], vec![]);
    let t = b.node(OpKind::Transpose, &[a], vec![]);
    let sum = b.node(OpKind::Add, &[a, t], vec![]);
    let bias = b.constant("bias", &[1], TensorData::F32(vec![0.5]));
    let y = b.node(OpKind::Add, &[sum, bias], vec![]);
    let mut s = b.session(&[y, a]);
    for n in [3, 5] {
        let x = iota(&[n, n]);
        let out = s.run(&[("x", x.clone())]).unwrap();
        let d = x.as_f32().unwrap();
        let want: Vec<f32> = (0..n * n).map(|i| d[(i % n) * n + i / n] + d[i] + 0.5).collect();
        assert_eq!(out[0].1, Tensor::from_f32(vec![n, n], want), "{n}");
        assert_eq!(out[1].1.as_f32().unwrap()[1], d[n], "a is also an output");
    }
}

#[test]
fn profiling_counts_every_executed_node_by_operator() {
    let mut b = Builder::default();
    let x = b.input("x", vec![Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(4), Dim::Fixed(4)]);
    let w = b.constant("w", &[2, 2, 1, 1], TensorData::F32(vec![1.0, 0.5, -0.5, 2.0]));
    let y = b.node(OpKind::Conv, &[x, w], vec![]);
    let z = b.node(OpKind::Relu, &[y], vec![]); // fused into the conv: not a node of its own
    let s = b.node(OpKind::Add, &[z, x], vec![]);
    let t = b.node(OpKind::Add, &[s, s], vec![]);
    let mut session = b.session(&[t]);
    let input = || vec![("x", Tensor::from_f32(vec![1, 2, 4, 4], (0..32).map(|i| i as f32 - 9.0).collect()))];
    session.run(&input()).unwrap();
    assert!(session.profile().is_empty(), "off by default");
    session.set_profiling(true);
    session.run(&input()).unwrap();
    session.run(&input()).unwrap();
    let calls: Vec<(&str, usize)> = session.profile().iter().map(|t| (t.op, t.calls)).collect();
    let mut sorted = calls.clone();
    sorted.sort();
    assert_eq!(sorted, [("Add", 4), ("Conv", 2)], "{calls:?}");
    session.set_profiling(true);
    assert!(session.profile().is_empty(), "switching on again clears");
    session.set_profiling(false);
    session.run(&input()).unwrap();
    assert!(session.profile().is_empty());
}

#[test]
fn profiles_say_how_each_node_shared_its_threads() {
    // A 1×1 layer large enough to split over two threads (the Add folds into it), then a
    // Transpose, which runs on the caller.
    let build = |threads: usize| {
        let mut b = Builder::default();
        let x = b.input("x", vec![Dim::Fixed(1), Dim::Fixed(16), Dim::Fixed(64), Dim::Fixed(64)]);
        let w = (0..256).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
        let w = b.constant("w", &[16, 16, 1, 1], TensorData::F32(w));
        let y = b.node(OpKind::Conv, &[x, w], vec![]);
        let z = b.node(OpKind::Add, &[y, x], vec![]);
        let z = b.node(OpKind::Transpose, &[z], vec![]);
        let options = SessionOptions { threads, tune_threads: false, ..SessionOptions::default() };
        b.session_with(&[z], options)
    };
    let input =
        || vec![("x", Tensor::from_f32(vec![1, 16, 64, 64], (0..65536).map(|i| (i % 11) as f32).collect()))];
    let mut one = build(1);
    one.set_profiling(true);
    one.run(&input()).unwrap();
    assert!(one.thread_work().is_none(), "one thread shares nothing");
    assert!(one.node_profile().iter().all(|t| t.work.is_none()));

    let mut two = build(2);
    two.set_profiling(true);
    for _ in 0..3 {
        two.run(&input()).unwrap();
    }
    let nodes = two.node_profile();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    // Every node reports both threads; the session's total is the sum of its nodes'.
    let mut sum = pith_runtime::ThreadWork::default();
    for t in &nodes {
        let work = t.work.as_ref().expect("two threads");
        assert_eq!(work.busy.len(), 2, "{}: {work:?}", t.name);
        sum.add(work);
    }
    // The jobs are the nodes' own: the Transpose splits none (the convolution's count depends
    // on whether the host let the worker run, so it is not checked).
    let transpose = nodes.iter().find(|t| t.op == "Transpose").expect("a Transpose node");
    assert_eq!(transpose.work.as_ref().map(|w| w.jobs), Some(0), "{transpose:?}");
    let total = two.thread_work().expect("two threads");
    assert_eq!(total.jobs, sum.jobs);
    assert_eq!(total.busy, sum.busy);
    assert_eq!(total.waited, sum.waited);
    two.set_profiling(true);
    assert_eq!(two.thread_work().map(|w| w.jobs), Some(0), "switching on again clears");
}
