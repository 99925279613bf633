//! GEMV 4096×4096 (batch 1) on packed codebook weights at 1, 2, 3, 4 and 8 bits through
//! `Kernels::gemm` (`[N, K]` layout), against the f32 GEMV of the same shape and a `memcpy` of as
//! many bytes as the packed weights (the bandwidth roofline). Throughput is the weight bytes each
//! one streams, so criterion prints GB/s: packed vs memcpy shows how close decoding gets to the
//! memory system, packed vs f32 the time saved. Where the CPU has int8 dot products, `cb4-int8`
//! is the 4-bit GEMV on int8 activations (`Kernels::with_int8_activations`). A second group,
//! `gemv_small`, times the short rows of squeeze-excite and classifier layers (MobileNetV3's
//! 576×144, 144×576 and 1024×576) at 4 bits against f32, where per-row costs (tables, row tails)
//! weigh more than streaming. Run: `cargo bench -p pith-benches --bench gemv`.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pith_benches::{random_codebook_matrix, random_f32s};
use pith_format::ir::{row_stride, TensorData};
use pith_kernels::{Activation, Kernels, WeightLayout};

const N: usize = 4096;
const K: usize = 4096;

/// One GEMV `y = W x` with `W` stored `[y.len(), x.len()]`.
fn gemv(kernels: &Kernels, w: &TensorData, x: &[f32], y: &mut [f32], scratch: &mut [f32]) {
    let (n, k) = (y.len(), x.len());
    kernels
        .gemm(x, 1, k, n, &w.view(), WeightLayout::NK, None, Activation::None, y, scratch)
        .expect("bench shapes are consistent");
}

fn bench_gemv(c: &mut Criterion) {
    let x = random_f32s(K, 1);
    let mut y = vec![0.0; N];
    let mut group = c.benchmark_group("gemv_4096x4096");
    for threads in [1, 2] {
        let kernels = Kernels::new(threads).expect("kernel set (check PITH_KERNEL)");
        let mut scratch = vec![0.0; kernels.gemm_scratch_len(K, N, WeightLayout::NK)];
        let run = format!("{}_t{threads}", kernels.isa().name);

        let dense = TensorData::F32(random_f32s(N * K, 2));
        group.throughput(Throughput::BytesDecimal((N * K * 4) as u64));
        group.bench_function(BenchmarkId::new("f32", &run), |b| {
            b.iter(|| gemv(&kernels, &dense, black_box(&x), &mut y, &mut scratch))
        });
        drop(dense);

        for bits in [1u8, 2, 3, 4, 8] {
            let w = random_codebook_matrix(N, K, bits, u64::from(bits)).expect("bits are 1..=8");
            group.throughput(Throughput::BytesDecimal((N * row_stride(K, bits)) as u64));
            group.bench_function(BenchmarkId::new(format!("cb{bits}"), &run), |b| {
                b.iter(|| gemv(&kernels, &w, black_box(&x), &mut y, &mut scratch))
            });
            if let Some(int8) =
                (bits == 4).then(|| kernels.clone().with_int8_activations(true).ok()).flatten()
            {
                group.bench_function(BenchmarkId::new("cb4-int8", &run), |b| {
                    b.iter(|| gemv(&int8, &w, black_box(&x), &mut y, &mut scratch))
                });
            }
        }
    }

    // The roofline: one thread copying the packed bytes (read + write of each byte).
    for bits in [1u8, 2, 3, 4, 8] {
        let bytes = N * row_stride(K, bits);
        let src = vec![0x5au8; bytes];
        let mut dst = vec![0u8; bytes];
        group.throughput(Throughput::BytesDecimal(bytes as u64));
        group.bench_function(BenchmarkId::new("memcpy", format!("cb{bits}_bytes")), |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });
    }
    group.finish();
}

fn bench_gemv_small(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemv_small");
    let kernels = Kernels::new(1).expect("kernel set (check PITH_KERNEL)");
    for (n, k) in [(576, 144), (144, 576), (1024, 576)] {
        let x = random_f32s(k, 1);
        let mut y = vec![0.0; n];
        let mut scratch = vec![0.0; kernels.gemm_scratch_len(k, n, WeightLayout::NK)];
        let run = format!("{}_{n}x{k}", kernels.isa().name);
        let dense = TensorData::F32(random_f32s(n * k, 2));
        group.bench_function(BenchmarkId::new("f32", &run), |b| {
            b.iter(|| gemv(&kernels, &dense, black_box(&x), &mut y, &mut scratch))
        });
        let w = random_codebook_matrix(n, k, 4, 4).expect("4 bits");
        group.bench_function(BenchmarkId::new("cb4", &run), |b| {
            b.iter(|| gemv(&kernels, &w, black_box(&x), &mut y, &mut scratch))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::quick(1.5);
    targets = bench_gemv, bench_gemv_small
}
criterion_main!(benches);
