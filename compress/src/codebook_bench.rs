//! Measurement on PP-OCRv4 det (ignored by default): real weights, Gram statistics of the real
//! conv inputs on calibration images, output error of plain / weighted / weighted+refit (and
//! pruned) codebooks on those images and on held-out ones, and the time encoding takes.
//!
//! `PITH_CALIB_DIR` and `PITH_HOLDOUT_DIR` may hold raw little-endian f32 CHW images named
//! `*_{H}x{W}.f32` (normalised as the model expects); without them synthetic images are used.
//! Run: `cargo test --release -p pith-compress --lib ppocr -- --ignored --nocapture`;
//! `PITH_BENCH_CONFIG=<name>` runs one configuration only.

use std::sync::Arc;
use std::time::Instant;

use pith_format::ir::{Attr, Dim, Node, OpKind, TensorData, ValueId};
use pith_runtime::{Session, SessionOptions, Tensor};

use super::{encode, encode_with_rounds, index_entropy_bytes, output_error, EncodeOptions};
use crate::gram::{ConvGeometry, RowGram};

/// One conv layer: its weight, input value and geometry.
struct Layer {
    name: String,
    input: ValueId,
    w: Vec<f32>,
    rows: usize,
    geom: ConvGeometry,
}

fn ints(node: &Node, name: &str) -> Option<Vec<usize>> {
    match node.attr(name) {
        Some(Attr::Ints(v)) => Some(v.iter().map(|&x| x as usize).collect()),
        _ => None,
    }
}

/// CPU time of this thread (Linux `schedstat`; zero elsewhere): wall time is unreliable on a
/// shared machine.
fn cpu_time() -> std::time::Duration {
    let ns = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    std::time::Duration::from_nanos(ns)
}

/// Images from the folder named by `var`, or two synthetic ones.
fn images(var: &str) -> Vec<(Vec<usize>, Vec<f32>)> {
    if let Ok(dir) = std::env::var(var) {
        let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        return files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "f32"))
            .map(|p| {
                let stem = p.file_stem().unwrap().to_str().unwrap();
                let (h, w) = stem.rsplit('_').next().unwrap().split_once('x').unwrap();
                let (h, w): (usize, usize) = (h.parse().unwrap(), w.parse().unwrap());
                let bytes = std::fs::read(p).unwrap();
                let data =
                    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                (vec![1, 3, h, w], data)
            })
            .collect();
    }
    let seed = if var == "PITH_CALIB_DIR" { 0 } else { 5 };
    (seed..seed + 2)
        .map(|s| {
            let (h, w) = (160, 224);
            let data = (0..3 * h * w)
                .map(|i| {
                    let (y, x) = ((i / w) % h, i % w);
                    (((y / 8 + x / 12 + s) % 3) as f32 - 1.0) + 0.3 * ((i * 7919 % 101) as f32 / 50.0 - 1.0)
                })
                .collect();
            (vec![1, 3, h, w], data)
        })
        .collect()
}

/// The conv layers of `model` with constant f32 weights.
fn conv_layers(model: &pith_format::ir::Model) -> Vec<Layer> {
    let mut layers = Vec::new();
    for node in model.graph.nodes.iter().filter(|n| n.op == OpKind::Conv) {
        let (Some(x), Some(Some(wv))) = (node.inputs[0], node.inputs.get(1)) else { continue };
        let Some(c) = model.constants.iter().find(|c| c.value == *wv) else { continue };
        let TensorData::F32(w) = &c.data else { continue };
        let Some(shape) = &model.graph.values[*wv as usize].shape else { continue };
        let shape: Vec<usize> = shape
            .iter()
            .map(|d| match d {
                Dim::Fixed(v) => *v as usize,
                Dim::Symbol(_) => 0,
            })
            .collect();
        let pads = ints(node, "pads").unwrap_or(vec![0; 4]);
        let geom = ConvGeometry {
            kernel: [shape[2], shape[3]],
            strides: ints(node, "strides").map_or([1, 1], |v| [v[0], v[1]]),
            pads: [pads[0], pads[1], pads[2], pads[3]],
            dilations: ints(node, "dilations").map_or([1, 1], |v| [v[0], v[1]]),
            group: match node.attr("group") {
                Some(Attr::Int(g)) => *g as usize,
                _ => 1,
            },
        };
        let name = model.graph.values[*wv as usize].name.clone();
        layers.push(Layer { name, input: x, w: w.clone(), rows: shape[0], geom });
    }
    layers
}

#[test]
#[ignore = "measurement; see the module documentation"]
fn ppocr_data_aware_encoding() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/models/ppocr_v4_det.onnx");
    let onnx = std::fs::read(path).unwrap();
    let mut model = crate::compress_onnx(&onnx, &crate::CompressOptions::default()).unwrap().model;
    let layers = conv_layers(&model);
    for l in &layers {
        if !model.graph.outputs.contains(&l.input) {
            model.graph.outputs.push(l.input);
        }
    }
    let file = pith_format::PithFile::from_bytes(pith_format::write(&model).unwrap()).unwrap();
    let mut session = Session::new(Arc::new(file), SessionOptions::default()).unwrap();
    let input = session.inputs()[0].name.clone();
    let mut gather = |var: &str| -> Vec<RowGram> {
        let mut grams: Vec<RowGram> =
            layers.iter().map(|l| RowGram::new(l.geom.group, l.w.len() / l.rows)).collect();
        let imgs = images(var);
        let t = Instant::now();
        for (shape, data) in &imgs {
            let outs =
                session.run(&[(input.as_str(), Tensor::from_f32(shape.clone(), data.clone()))]).unwrap();
            for (l, g) in layers.iter().zip(&mut grams) {
                let name = &model.graph.values[l.input as usize].name;
                let (_, x) = outs.iter().find(|(n, _)| n == name).unwrap();
                g.add_conv_input(x.as_f32().unwrap(), &x.shape, &l.geom, 512);
            }
        }
        eprintln!("{var}: {} images, {} conv layers, grams in {:.2?}", imgs.len(), layers.len(), t.elapsed());
        grams
    };
    let grams = gather("PITH_CALIB_DIR");
    let held_out = gather("PITH_HOLDOUT_DIR");
    let params: usize = layers.iter().map(|l| l.w.len()).sum();
    let configs: [(&str, f32, bool, bool, usize); 8] = [
        ("plain", 0.0, false, false, 0),
        ("weighted", 0.0, true, false, 0),
        ("w+refit", 0.0, true, true, 0),
        ("w+refit+1 alt", 0.0, true, true, 1),
        ("w+refit+2 alt", 0.0, true, true, 2),
        ("refit+2 alt", 0.0, false, true, 2),
        ("prune30 plain", 0.3, false, false, 0),
        ("prune30 w+r+2", 0.3, true, true, 2),
    ];
    for bits in [3u8, 4] {
        let (t, cpu) = (Instant::now(), cpu_time());
        for l in &layers {
            std::hint::black_box(encode(&l.w, l.rows, bits));
        }
        eprintln!(
            "bits {bits}: plain encode (no gram) of {params} weights: {:.2?} wall, {:.2?} cpu",
            t.elapsed(),
            cpu_time() - cpu
        );
        for (name, prune, weighted, refit, rounds) in configs {
            if std::env::var("PITH_BENCH_CONFIG").is_ok_and(|only| only != name) {
                continue;
            }
            let (t, cpu) = (Instant::now(), cpu_time());
            let (mut logs, mut held, mut worst, mut bytes, mut entropy) = (0.0f64, 0.0f64, 0.0f64, 0, 0);
            let mut errors = Vec::new();
            let mut kinds = std::collections::BTreeMap::new();
            let mut encoded = Vec::new();
            for (l, g) in layers.iter().zip(&grams) {
                let o = EncodeOptions { prune, gram: Some(g), weighted, refit };
                encoded.push(encode_with_rounds(&l.w, l.rows, bits, &o, rounds));
            }
            let (elapsed, cpu) = (t.elapsed(), cpu_time() - cpu);
            for ((l, e), h) in layers.iter().zip(&encoded).zip(&held_out) {
                let Some(out) = e.out_error else {
                    eprintln!("  {}: gram unusable", l.name);
                    continue;
                };
                let kind = e.data.view().encoding_name();
                *kinds.entry(kind.split('/').nth(1).unwrap_or("?").to_string()).or_insert(0) += 1;
                logs += out.max(1e-12).ln();
                held += output_error(&l.w, l.rows, &e.data, h).unwrap().max(1e-12).ln();
                worst = worst.max(out);
                errors.push(out);
                bytes += e.bytes;
                entropy += index_entropy_bytes(&e.data);
            }
            let n = errors.len() as f64;
            errors.sort_by(f64::total_cmp);
            eprintln!(
                "  {name:15} calib geomean {:.4} median {:.4} worst {:.4} | held-out geomean {:.4} | \
                 {bytes} B, huffman idx {entropy} B | {kinds:?} | {elapsed:.2?} wall, {cpu:.2?} cpu",
                (logs / n).exp(),
                errors[errors.len() / 2],
                worst,
                (held / n).exp(),
            );
        }
    }
}
