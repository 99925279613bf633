//! Representative convolution layers of BlazeFace and PP-OCRv4 det (shapes from the bundled
//! models, see `pith_benches::conv_layers`) through `Kernels::conv2d` on one thread, with f32
//! weights (the baseline) against 8-bit and 4-bit codebook weights. Throughput is in
//! multiply-accumulates, so criterion prints MAC/s. Run:
//! `cargo bench -p pith-benches --bench conv_layers`.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use pith_benches::{conv_layers, format_name, random_f32s, random_weights, FORMATS};
use pith_kernels::{Activation, Kernels};

fn bench_conv_layers(c: &mut Criterion) {
    let kernels = Kernels::new(1).expect("kernel set (check PITH_KERNEL)");
    let mut group = c.benchmark_group(format!("conv_layers_{}_t1", kernels.isa().name));
    // The large PP-OCR layers take a good fraction of a second per call on scalar paths.
    group.sampling_mode(SamplingMode::Flat);
    for layer in conv_layers() {
        let p = layer.params;
        let x = random_f32s(p.batch * p.in_c * p.in_h * p.in_w, 1);
        let bias = random_f32s(p.out_c, 2);
        let mut y = vec![0.0; p.batch * p.out_c * p.out_h * p.out_w];
        let mut scratch = vec![0.0; kernels.conv2d_scratch_len(&p)];
        group.throughput(Throughput::Elements(layer.macs()));
        for format in FORMATS {
            let w = random_weights(format, p.out_c, p.filter_len(), 3);
            group.bench_function(BenchmarkId::new(layer.name, format_name(format)), |b| {
                b.iter(|| {
                    kernels
                        .conv2d(
                            black_box(&x),
                            &w.view(),
                            Some(&bias),
                            &p,
                            Activation::Relu,
                            &mut y,
                            &mut scratch,
                        )
                        .expect("bench layers are consistent")
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::quick(1.0);
    targets = bench_conv_layers
}
criterion_main!(benches);
