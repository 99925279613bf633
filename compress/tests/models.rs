//! Smoke tests on the bundled real models.

use std::path::PathBuf;

use pith_compress::{compress_onnx, CompressOptions, Compressed, WeightFormat};
use pith_format::ir::{OpKind, TensorData};

fn model_bytes(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/models").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn compress(onnx: &[u8], weights: WeightFormat) -> Compressed {
    let t = std::time::Instant::now();
    let out = compress_onnx(onnx, &CompressOptions { weights }).expect("compresses");
    eprintln!(
        "{weights:?}: {} -> {} bytes of constants in {:.2?}",
        out.report.onnx_bytes,
        out.report.total_bytes,
        t.elapsed()
    );
    out
}

/// Checks the report covers every conv weight and that the model is structurally sound.
fn check(out: &Compressed, max_rel_error: f32) {
    let graph = &out.model.graph;
    let weight_names: std::collections::BTreeSet<&str> = graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, OpKind::Conv | OpKind::ConvTranspose))
        .map(|n| graph.values[n.inputs[1].unwrap() as usize].name.as_str())
        .collect();
    let reported: std::collections::BTreeSet<&str> =
        out.report.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(weight_names, reported);
    for l in &out.report.layers {
        assert!(l.rel_error <= max_rel_error, "{}: {}", l.name, l.rel_error);
        assert!(l.bytes <= l.f32_bytes, "{}", l.name);
    }
    assert!(graph.nodes.iter().all(|n| n.op != OpKind::Constant));
    // Every node input is a graph input, a constant, or an earlier node's output.
    let mut defined = vec![false; graph.values.len()];
    for &i in &graph.inputs {
        defined[i as usize] = true;
    }
    for c in &out.model.constants {
        defined[c.value as usize] = true;
    }
    for n in &graph.nodes {
        for i in n.inputs.iter().flatten() {
            assert!(defined[*i as usize], "node {} reads an undefined value", n.name);
        }
        for o in &n.outputs {
            defined[*o as usize] = true;
        }
    }
    assert!(out.model.producer.starts_with("pith-compress "));
}

/// Bytes of the reported weights, stored and as f32.
fn weight_bytes(c: &Compressed) -> (usize, usize) {
    c.report.layers.iter().fold((0, 0), |(b, f), l| (b + l.bytes, f + l.f32_bytes))
}

fn run_model(name: &str, convs: usize, check_determinism: bool) {
    let onnx = model_bytes(name);
    let f32_out = compress(&onnx, WeightFormat::F32);
    check(&f32_out, 0.0);
    assert_eq!(f32_out.report.layers.len(), convs);
    let cb8 = compress(&onnx, WeightFormat::Codebook { bits: 8 });
    check(&cb8, 0.01);
    let cb4 = compress(&onnx, WeightFormat::Codebook { bits: 4 });
    check(&cb4, 0.2);
    // Small weights (and biases) stay f32, so the whole model shrinks less than the big weights.
    assert!(cb8.report.total_bytes < f32_out.report.total_bytes / 2);
    let (stored, as_f32) = weight_bytes(&cb8);
    assert!(stored * 10 < as_f32 * 4, "{stored} vs {as_f32}");
    assert!(cb4.report.total_bytes < cb8.report.total_bytes);
    assert!(weight_bytes(&cb4).0 < stored * 3 / 4);
    let codebooks = |c: &Compressed| {
        c.model.constants.iter().filter(|k| matches!(k.data, TensorData::Codebook(_))).count()
    };
    assert!(codebooks(&cb8) > 0);
    if check_determinism {
        // Same bytes in, same model out.
        let again = compress(&onnx, WeightFormat::Codebook { bits: 4 });
        assert_eq!(again.model, cb4.model);
        assert_eq!(again.report, cb4.report);
    }
}

#[test]
fn blazeface_compresses() {
    run_model("blazeface_short_range.onnx", 37, true);
}

#[test]
fn ppocr_det_compresses() {
    // Two of the 64 Conv/ConvTranspose weights disappear into their BatchNorm-folded copies.
    run_model("ppocr_v4_det.onnx", 64, false);
}
