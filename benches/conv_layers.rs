//! Representative convolution layers of BlazeFace and PP-OCRv4 det (shapes from the bundled
//! models, see `pith_benches::conv_layers`) through `Kernels::conv2d` on one thread, with f32
//! weights (the baseline) against 8-bit and 4-bit codebook weights, and, where the CPU has int8
//! convolutions (AVX-512 VNNI, NEON dotprod; not AVX2), the ungrouped layers on int8 activations
//! (`Kernels::conv2d_int8`, filters prepared once outside the timed loop; id `int8`), and, where
//! it has bf16 dot products (AVX-512 BF16), the 1×1 layers with 4-bit weights and bf16 products
//! (`Kernels::with_bf16_products`; id `cb4-bf16`, against `cb4` of the same run). Throughput is
//! in multiply-accumulates, so criterion prints MAC/s. Run:
//! `cargo bench -p pith-benches --bench conv_layers`.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use pith_benches::{conv_layers, format_name, random_f32s, random_weights, Aligned, FORMATS};
use pith_kernels::{Activation, Int8Filters, Kernels};

fn bench_conv_layers(c: &mut Criterion) {
    let kernels = Kernels::new(1).expect("kernel set (check PITH_KERNEL)");
    let int8 = kernels.clone().with_int8_activations(true).ok();
    let int8 = int8.filter(|k| k.isa().int8.is_some_and(|i| i.conv.is_some()));
    if int8.is_none() {
        let name = kernels.isa().name;
        eprintln!("conv_layers: the '{name}' path has no int8 convolutions; int8 rows skipped");
    }
    let bf16 = kernels.clone().with_bf16_products(true).ok();
    if bf16.is_none() {
        eprintln!("conv_layers: the '{}' path has no bf16 products; bf16 rows skipped", kernels.isa().name);
    }
    let mut group = c.benchmark_group(format!("conv_layers_{}_t1", kernels.isa().name));
    // The large PP-OCR layers take a good fraction of a second per call on scalar paths.
    group.sampling_mode(SamplingMode::Flat);
    for layer in conv_layers() {
        let p = layer.params;
        let x = Aligned::copy_of(&random_f32s(p.batch * p.in_c * p.in_h * p.in_w, 1));
        let bias = random_f32s(p.out_c, 2);
        let mut y = Aligned::zeroed(p.batch * p.out_c * p.out_h * p.out_w);
        let mut scratch = vec![0.0; kernels.conv2d_scratch_len(&p)];
        group.throughput(Throughput::Elements(layer.macs()));
        // The f32 formats on `kernels`, and 4-bit weights with bf16 products where they apply.
        let bf16 = bf16.as_ref().filter(|_| p.is_pointwise() && p.groups == 1);
        let runs = FORMATS.iter().map(|&f| (f, &kernels, "")).chain(bf16.map(|k| (FORMATS[2], k, "-bf16")));
        for (format, set, suffix) in runs {
            let w = random_weights(format, p.out_c, p.filter_len(), 3);
            let id = format!("{}{suffix}", format_name(format));
            group.bench_function(BenchmarkId::new(layer.name, id), |b| {
                b.iter(|| {
                    set.conv2d(
                        black_box(x.as_slice()),
                        &w.view(),
                        Some(&bias),
                        &p,
                        Activation::Relu,
                        y.as_mut_slice(),
                        &mut scratch,
                    )
                    .expect("bench layers are consistent")
                })
            });
        }
        if let Some(int8) = int8.as_ref().filter(|k| k.int8_applies(&p)) {
            let w = random_weights(FORMATS[0], p.out_c, p.filter_len(), 3);
            let filters =
                Int8Filters::new(&w.view(), p.out_c, p.filter_len()).expect("bench layers are consistent");
            group.bench_function(BenchmarkId::new(layer.name, "int8"), |b| {
                b.iter(|| {
                    int8.conv2d_int8(
                        black_box(x.as_slice()),
                        &filters,
                        Some(&bias),
                        None,
                        &p,
                        Activation::Relu,
                        y.as_mut_slice(),
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
