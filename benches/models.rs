//! Whole models through `Session::run`: BlazeFace at 1×3×128×128 and PP-OCRv4 det at 1×3×320×640,
//! on 1 and 2 threads, with f32 weights (the baseline) against 8-bit and 4-bit codebooks, and,
//! where the CPU has bf16 dot products (AVX-512 BF16), 4-bit codebooks with bf16 products in the
//! 1×1 layers (`SessionOptions::bf16_products`; id `cb4-bf16`). The bundled ONNX files are
//! compressed once in setup (not timed).
//!
//! PP-OCR runs at 320×640, not a full 736×1472 page: the network is fully convolutional, so the
//! smaller input has the same layer mix at about a fifth of the ~6.5 GMAC of a page, which keeps
//! ten samples of six configurations within a couple of minutes on two cores.
//! Run: `cargo bench -p pith-benches --bench models`.

mod common;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use pith_benches::{compressed_model, format_name, random_f32s, FORMATS};
use pith_kernels::Kernels;
use pith_runtime::{Session, SessionOptions, Tensor};

/// `(benchmark group, ONNX file, input shape)`.
const MODELS: [(&str, &str, [usize; 4]); 2] = [
    ("blazeface_128x128", "blazeface_short_range.onnx", [1, 3, 128, 128]),
    ("ppocr_det_320x640", "ppocr_v4_det.onnx", [1, 3, 320, 640]),
];

fn bench_models(c: &mut Criterion) {
    for (group_name, file, shape) in MODELS {
        let mut group = c.benchmark_group(group_name);
        group.sampling_mode(SamplingMode::Flat);
        let input = Tensor::from_f32(shape.to_vec(), random_f32s(shape.iter().product(), 1));
        let bf16 = Kernels::new(1).is_ok_and(|k| k.with_bf16_products(true).is_ok());
        let variants = FORMATS.iter().map(|&f| (f, false)).chain(bf16.then_some((FORMATS[2], true)));
        for (format, bf16_products) in variants {
            let model = compressed_model(file, format);
            let id = format!("{}{}", format_name(format), if bf16_products { "-bf16" } else { "" });
            for threads in [1, 2] {
                // Every run on the threads asked for: the bench compares 1 and 2 threads.
                let options =
                    SessionOptions { threads, tune_threads: false, bf16_products, ..Default::default() };
                let mut session = Session::new(model.clone(), options).expect("session for a bundled model");
                let name = session.inputs()[0].name.clone();
                let feeds = [(name.as_str(), input.clone())];
                // Plans the arena outside the timed loop.
                session.run(&feeds).expect("the bundled model runs");
                group.bench_function(BenchmarkId::new(&id, format!("t{threads}")), |b| {
                    b.iter(|| session.run(&feeds).expect("the bundled model runs"))
                });
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::quick(3.0);
    targets = bench_models
}
criterion_main!(benches);
