//! ONNX import through the public API, on models built here by encoding the prost structs.

use pith_compress::onnx_proto::*;
use pith_compress::{compress_onnx, CompressError, CompressOptions, WeightFormat};
use pith_format::ir::{Attr, Dim, ElemType, Model, OpKind, TensorData};
use prost::Message;

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: name.into(),
        op_type: op.into(),
        ..Default::default()
    }
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: attr_type::INT, i, ..Default::default() }
}

fn value_info(name: &str, elem: i32, dims: &[Dimension]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: elem,
                shape: Some(TensorShapeProto { dim: dims.to_vec() }),
            }),
        }),
    }
}

fn fixed(v: i64) -> Dimension {
    Dimension { dim_value: Some(v), dim_param: None }
}

fn f32_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn encode(opset: i64, graph: GraphProto) -> Vec<u8> {
    encode_with_metadata(opset, graph, &[])
}

fn encode_with_metadata(opset: i64, graph: GraphProto, metadata: &[(&str, &str)]) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
        producer_name: "test".into(),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto { key: k.to_string(), value: v.to_string() })
            .collect(),
    }
    .encode_to_vec()
}

/// x[N, 3] → MatMul(W) → Add(b from a Constant node) → Identity → Softmax → y.
fn small_model(opset: i64, w: &[f32]) -> Vec<u8> {
    let bias = NodeProto {
        attribute: vec![AttributeProto {
            name: "value_floats".into(),
            r#type: attr_type::FLOATS,
            floats: vec![0.5, -0.5, 1.0, 2.0],
            ..Default::default()
        }],
        ..node("Constant", "bias_const", &[], &["b"])
    };
    let graph = GraphProto {
        name: "small".into(),
        node: vec![
            bias,
            node("MatMul", "mm", &["x", "W"], &["h"]),
            node("Add", "add", &["h", "b"], &["h2"]),
            node("Identity", "id", &["h2"], &["h3"]),
            node("Softmax", "softmax", &["h3"], &["y"]),
        ],
        initializer: vec![f32_tensor("W", &[3, 4], w)],
        input: vec![value_info(
            "x",
            data_type::FLOAT,
            &[Dimension { dim_value: None, dim_param: Some("N".into()) }, fixed(3)],
        )],
        output: vec![value_info("y", data_type::FLOAT, &[Dimension::default(), fixed(4)])],
        value_info: vec![],
    };
    encode(opset, graph)
}

fn compress(onnx: &[u8]) -> Result<Model, CompressError> {
    compress_onnx(onnx, &CompressOptions::default()).map(|c| c.model)
}

fn value_named<'a>(m: &'a Model, name: &str) -> (u32, &'a pith_format::ir::Value) {
    let (i, v) = m
        .graph
        .values
        .iter()
        .enumerate()
        .find(|(_, v)| v.name == name)
        .unwrap_or_else(|| panic!("no value '{name}'"));
    (i as u32, v)
}

fn constant_data<'a>(m: &'a Model, name: &str) -> &'a TensorData {
    let (id, _) = value_named(m, name);
    &m.constants.iter().find(|c| c.value == id).unwrap_or_else(|| panic!("'{name}' is not a constant")).data
}

#[test]
fn imports_initializers_constant_nodes_inputs_and_outputs() {
    let w: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    let m = compress(&small_model(11, &w)).unwrap();
    let g = &m.graph;

    let (x, xv) = value_named(&m, "x");
    assert_eq!(g.inputs, vec![x]);
    assert_eq!(xv.elem, ElemType::F32);
    assert_eq!(xv.shape, Some(vec![Dim::Symbol("N".into()), Dim::Fixed(3)]));
    let (y, yv) = value_named(&m, "y");
    assert_eq!(g.outputs, vec![y]);
    assert_eq!(yv.shape, Some(vec![Dim::Symbol("unk_0".into()), Dim::Fixed(4)]));

    assert_eq!(constant_data(&m, "W"), &TensorData::F32(w));
    assert_eq!(constant_data(&m, "b"), &TensorData::F32(vec![0.5, -0.5, 1.0, 2.0]));
    assert_eq!(value_named(&m, "W").1.shape, Some(vec![Dim::Fixed(3), Dim::Fixed(4)]));

    let ops: Vec<OpKind> = g.nodes.iter().map(|n| n.op).collect();
    assert_eq!(ops, [OpKind::MatMul, OpKind::Add, OpKind::Softmax]);
    // The Identity is gone: Softmax reads the Add output directly.
    assert_eq!(g.nodes[2].inputs, vec![Some(g.nodes[1].outputs[0])]);
    // Opset 11 Softmax gets its explicit legacy semantics.
    assert_eq!(g.nodes[2].attr("axis"), Some(&Attr::Int(1)));
    assert_eq!(g.nodes[2].attr("coerce_2d"), Some(&Attr::Int(1)));
    assert!(m.producer.starts_with("pith-compress "));
}

/// The graph of [`small_model`], decoded back from its encoding.
fn small_graph() -> GraphProto {
    ModelProto::decode(small_model(13, &[0.0; 12]).as_slice()).unwrap().graph.unwrap()
}

#[test]
fn metadata_props_travel_into_the_file() {
    let chars = "a\nb\n字";
    let onnx = encode_with_metadata(13, small_graph(), &[("character", chars), ("version", "")]);
    let m = compress(&onnx).unwrap();
    assert_eq!(m.props.len(), 2);
    assert_eq!(m.props["character"], chars);
    assert_eq!(m.props["version"], "");
    let file = pith_format::PithFile::from_bytes(pith_format::write(&m).unwrap()).unwrap();
    assert_eq!(file.prop("character"), Some(chars));
    assert_eq!(file.props(), &m.props);
    assert_eq!(file.version(), (1, 4));
    // No metadata, no PROPS section: the file keeps the lowest version its features need.
    let plain = compress(&encode(13, small_graph())).unwrap();
    assert!(plain.props.is_empty());
    let file = pith_format::PithFile::from_bytes(pith_format::write(&plain).unwrap()).unwrap();
    assert_eq!(file.version(), (1, 0));
}

#[test]
fn repeated_or_empty_metadata_keys_are_refused() {
    let twice = encode_with_metadata(13, small_graph(), &[("k", "1"), ("k", "2")]);
    let e = compress(&twice).unwrap_err();
    assert!(matches!(e, CompressError::BadMetadata(_)), "{e:?}");
    assert!(e.to_string().contains("key 'k' twice"), "{e}");
    let empty = encode_with_metadata(13, small_graph(), &[("", "v")]);
    assert!(compress(&empty).unwrap_err().to_string().contains("empty key"));
}

#[test]
fn softmax_opset13_defaults_to_last_axis() {
    let m = compress(&small_model(13, &[0.0; 12])).unwrap();
    let softmax = m.graph.nodes.iter().find(|n| n.op == OpKind::Softmax).unwrap();
    assert_eq!(softmax.attr("axis"), Some(&Attr::Int(-1)));
    assert_eq!(softmax.attr("coerce_2d"), None);
}

#[test]
fn softmax_explicit_axis_is_kept() {
    let graph = GraphProto {
        node: vec![NodeProto {
            attribute: vec![int_attr("axis", 0)],
            ..node("Softmax", "sm", &["x"], &["y"])
        }],
        input: vec![value_info("x", data_type::FLOAT, &[fixed(2), fixed(3)])],
        output: vec![value_info("y", data_type::FLOAT, &[fixed(2), fixed(3)])],
        ..Default::default()
    };
    let m = compress(&encode(12, graph)).unwrap();
    assert_eq!(m.graph.nodes[0].attr("axis"), Some(&Attr::Int(0)));
    assert_eq!(m.graph.nodes[0].attr("coerce_2d"), Some(&Attr::Int(1)));
}

#[test]
fn resize_opset10_gets_empty_roi_slot() {
    let graph = GraphProto {
        node: vec![node("Resize", "up", &["x", "scales"], &["y"])],
        initializer: vec![f32_tensor("scales", &[4], &[1.0, 1.0, 2.0, 2.0])],
        input: vec![value_info("x", data_type::FLOAT, &[fixed(1), fixed(1), fixed(2), fixed(2)])],
        output: vec![value_info("y", data_type::FLOAT, &[])],
        ..Default::default()
    };
    let m = compress(&encode(10, graph)).unwrap();
    let (x, _) = value_named(&m, "x");
    let (s, _) = value_named(&m, "scales");
    assert_eq!(m.graph.nodes[0].inputs, vec![Some(x), None, Some(s)]);
}

#[test]
fn integer_tensors_become_i64() {
    let shape_i32 = TensorProto {
        name: "shape".into(),
        dims: vec![2],
        data_type: data_type::INT32,
        raw_data: [1i32, -1].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    };
    let axes = NodeProto {
        attribute: vec![AttributeProto {
            name: "value".into(),
            r#type: attr_type::TENSOR,
            t: Some(TensorProto {
                dims: vec![1],
                data_type: data_type::INT64,
                int64_data: vec![0],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..node("Constant", "axes_const", &[], &["axes"])
    };
    let graph = GraphProto {
        node: vec![
            axes,
            node("Reshape", "reshape", &["x", "shape"], &["r"]),
            node("Unsqueeze", "unsq", &["r", "axes"], &["y"]),
        ],
        initializer: vec![shape_i32],
        input: vec![value_info("x", data_type::FLOAT, &[Dimension::default(), fixed(2)])],
        output: vec![value_info("y", data_type::FLOAT, &[])],
        ..Default::default()
    };
    let m = compress(&encode(13, graph)).unwrap();
    assert_eq!(constant_data(&m, "shape"), &TensorData::I64(vec![1, -1]));
    assert_eq!(constant_data(&m, "axes"), &TensorData::I64(vec![0]));
    assert_eq!(value_named(&m, "shape").1.elem, ElemType::I64);
    // The undeclared intermediate follows its first input's type.
    assert_eq!(value_named(&m, "r").1.elem, ElemType::F32);
    assert_eq!(value_named(&m, "x").1.shape, Some(vec![Dim::Symbol("unk_0".into()), Dim::Fixed(2)]));
}

#[test]
fn question_mark_dimensions_are_each_their_own_unknown() {
    // Paddle2ONNX writes "?" for every free dimension; a shared name would tie height to width.
    let named = |p: &str| Dimension { dim_param: Some(p.into()), ..Default::default() };
    let graph = GraphProto {
        node: vec![node("Relu", "relu", &["x"], &["y"])],
        input: vec![value_info("x", data_type::FLOAT, &[named("?"), fixed(3), named("?"), named("h")])],
        output: vec![value_info("y", data_type::FLOAT, &[])],
        ..Default::default()
    };
    let m = compress(&encode(13, graph)).unwrap();
    let sym = |s: &str| Dim::Symbol(s.into());
    assert_eq!(value_named(&m, "x").1.shape, Some(vec![sym("unk_0"), Dim::Fixed(3), sym("unk_1"), sym("h")]));
}

#[test]
fn unknown_op_error_names_op_and_node() {
    let graph = GraphProto {
        node: vec![node("FancyOp", "the_fancy_node", &["x"], &["y"])],
        input: vec![value_info("x", data_type::FLOAT, &[fixed(1)])],
        output: vec![value_info("y", data_type::FLOAT, &[fixed(1)])],
        ..Default::default()
    };
    let err = compress(&encode(13, graph)).unwrap_err();
    assert!(matches!(err, CompressError::UnsupportedOp { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("FancyOp") && msg.contains("the_fancy_node"), "{msg}");
}

#[test]
fn custom_domain_op_is_unsupported() {
    let mut relu = node("Relu", "custom_relu", &["x"], &["y"]);
    relu.domain = "com.example".into();
    let graph = GraphProto {
        node: vec![relu],
        input: vec![value_info("x", data_type::FLOAT, &[fixed(1)])],
        output: vec![value_info("y", data_type::FLOAT, &[fixed(1)])],
        ..Default::default()
    };
    let msg = compress(&encode(13, graph)).unwrap_err().to_string();
    assert!(msg.contains("com.example") && msg.contains("custom_relu"), "{msg}");
}

#[test]
fn external_data_is_refused_with_tensor_name() {
    let mut w = f32_tensor("big_weight", &[1], &[0.0]);
    w.raw_data.clear();
    w.data_location = DATA_LOCATION_EXTERNAL;
    w.external_data = vec![StringStringEntryProto { key: "location".into(), value: "weights.bin".into() }];
    let graph = GraphProto {
        node: vec![node("Add", "add", &["x", "big_weight"], &["y"])],
        initializer: vec![w],
        input: vec![value_info("x", data_type::FLOAT, &[fixed(1)])],
        output: vec![value_info("y", data_type::FLOAT, &[fixed(1)])],
        ..Default::default()
    };
    let msg = compress(&encode(13, graph)).unwrap_err().to_string();
    assert!(msg.contains("external data not supported") && msg.contains("big_weight"), "{msg}");
}

#[test]
fn inconsistent_tensor_and_unsupported_type_are_errors() {
    let mut short = f32_tensor("short", &[3], &[1.0, 2.0]);
    short.name = "short".into();
    let graph = |t: TensorProto| GraphProto {
        node: vec![node("Add", "add", &["x", &t.name.clone()], &["y"])],
        initializer: vec![t],
        input: vec![value_info("x", data_type::FLOAT, &[fixed(1)])],
        output: vec![value_info("y", data_type::FLOAT, &[fixed(1)])],
        ..Default::default()
    };
    let msg = compress(&encode(13, graph(short))).unwrap_err().to_string();
    assert!(msg.contains("short"), "{msg}");
    let strings = TensorProto {
        name: "strs".into(),
        dims: vec![1],
        data_type: 8, // STRING
        ..Default::default()
    };
    let err = compress(&encode(13, graph(strings))).unwrap_err();
    assert!(matches!(err, CompressError::UnsupportedDataType { data_type: 8, .. }), "{err:?}");
}

#[test]
fn undefined_input_is_an_error() {
    let graph = GraphProto {
        node: vec![node("Relu", "r", &["missing"], &["y"])],
        output: vec![value_info("y", data_type::FLOAT, &[])],
        ..Default::default()
    };
    let msg = compress(&encode(13, graph)).unwrap_err().to_string();
    assert!(msg.contains("missing") && msg.contains("'r'"), "{msg}");
}

#[test]
fn malformed_bytes_are_errors_not_panics() {
    let good = small_model(13, &[0.5; 12]);
    for cut in [1, good.len() / 3, good.len() / 2, good.len() - 1] {
        assert!(compress(&good[..cut]).is_err(), "truncated at {cut}");
    }
    let mut garbage = good.clone();
    for (i, b) in garbage.iter_mut().enumerate() {
        *b ^= (i * 131 % 251) as u8;
    }
    let _ = compress(&garbage); // any result, but no panic
    assert!(compress(&[0xff; 16]).is_err());
    assert!(matches!(compress(&ModelProto::default().encode_to_vec()), Err(CompressError::NoDefaultOpset)));
}

#[test]
fn codebook_output_is_deterministic_and_decodes_close() {
    // A Gemm with a 32x24 weight: large enough for a 4-bit codebook.
    let w: Vec<f32> = (0..32 * 24).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
    let graph = GraphProto {
        node: vec![node("Gemm", "fc", &["x", "W"], &["y"])],
        initializer: vec![f32_tensor("W", &[32, 24], &w)],
        input: vec![value_info("x", data_type::FLOAT, &[fixed(1), fixed(32)])],
        output: vec![value_info("y", data_type::FLOAT, &[fixed(1), fixed(24)])],
        ..Default::default()
    };
    let onnx = encode(13, graph);
    let opts = CompressOptions { weights: WeightFormat::Codebook { bits: 4 } };
    let a = compress_onnx(&onnx, &opts).unwrap();
    let b = compress_onnx(&onnx, &opts).unwrap();
    assert_eq!(a.model, b.model);
    assert_eq!(a.report, b.report);
    let data = constant_data(&a.model, "W");
    assert!(matches!(data, TensorData::Codebook(_)));
    let layer = &a.report.layers[0];
    assert_eq!((layer.name.as_str(), layer.shape.as_slice()), ("W", &[32usize, 24][..]));
    assert!(layer.bytes < layer.f32_bytes / 4);
    // The reported error is the error of the stored data.
    let view = data.view();
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    let mut row = vec![0.0f32; 24];
    for r in 0..32 {
        view.decode_row(32, r, &mut row);
        for (i, v) in row.iter().enumerate() {
            err += (*v as f64 - w[r * 24 + i] as f64).powi(2);
            norm += (w[r * 24 + i] as f64).powi(2);
        }
    }
    let rel = (err / norm).sqrt() as f32;
    assert!((rel - layer.rel_error).abs() < 1e-6, "{rel} vs {}", layer.rel_error);
    assert!(rel < 0.1, "{rel}");

    let f16 = compress_onnx(&onnx, &CompressOptions { weights: WeightFormat::F16 }).unwrap();
    assert!(matches!(constant_data(&f16.model, "W"), TensorData::F16(_)));
    assert!(f16.report.layers[0].rel_error < 1e-3);
}

#[test]
fn progress_reports_every_weight() {
    let w = vec![0.25f32; 32 * 24];
    let graph = GraphProto {
        node: vec![node("Gemm", "fc", &["x", "W"], &["y"])],
        initializer: vec![f32_tensor("W", &[32, 24], &w)],
        input: vec![value_info("x", data_type::FLOAT, &[fixed(1), fixed(32)])],
        output: vec![value_info("y", data_type::FLOAT, &[fixed(1), fixed(24)])],
        ..Default::default()
    };
    let mut calls = Vec::new();
    pith_compress::compress_onnx_with_progress(
        &encode(13, graph),
        &CompressOptions { weights: WeightFormat::Codebook { bits: 2 } },
        &mut |d, t, name| calls.push((d, t, name.to_string())),
    )
    .unwrap();
    assert_eq!(calls, [(0, 1, "W".to_string()), (1, 1, String::new())]);
}

#[test]
fn invalid_bit_width_is_refused() {
    let opts = CompressOptions { weights: WeightFormat::Codebook { bits: 9 } };
    assert!(compress_onnx(&small_model(13, &[0.0; 12]), &opts).is_err());
}

#[test]
fn nodes_out_of_order_are_sorted() {
    let graph = GraphProto {
        node: vec![node("Relu", "second", &["a"], &["y"]), node("Relu", "first", &["x"], &["a"])],
        input: vec![value_info("x", data_type::FLOAT, &[fixed(2)])],
        output: vec![value_info("y", data_type::FLOAT, &[fixed(2)])],
        ..Default::default()
    };
    let m = compress(&encode(13, graph)).unwrap();
    let names: Vec<&str> = m.graph.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
}

#[test]
fn intermediate_shapes_are_dropped_but_names_and_io_shapes_kept() {
    // small_model plus a declared shape for the intermediate "h": the runtime infers it, so the
    // compressor must not store it; inputs, outputs and constants keep theirs.
    let w: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let mut proto = ModelProto::decode(&small_model(13, &w)[..]).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    graph.value_info.push(value_info("h", data_type::FLOAT, &[fixed(1), fixed(4)]));
    let with_info = compress(&proto.encode_to_vec()).unwrap();
    assert_eq!(value_named(&with_info, "h").1.shape, None, "intermediate shape stored");
    assert_eq!(value_named(&with_info, "h2").1.shape, None);
    assert!(value_named(&with_info, "x").1.shape.is_some());
    assert!(value_named(&with_info, "y").1.shape.is_some());
    assert_eq!(value_named(&with_info, "W").1.shape, Some(vec![Dim::Fixed(3), Dim::Fixed(4)]));
    assert_eq!(value_named(&with_info, "b").1.shape, Some(vec![Dim::Fixed(4)]));
    // The declared intermediate shape is the only difference.
    assert_eq!(with_info, compress(&small_model(13, &w)).unwrap());
}
