//! MobileNetV2's 1×1 and depthwise layers over 56×56, 28×28 and 14×14 (and two over 7×7) on one
//! thread with 4-bit weights, in the channel-blocked layout (`Kernels::conv2d_blocked`, input and
//! output blocked, or a planar input where it has no whole 16-channel blocks; id `blocked`)
//! against the planar NCHW kernels of the same run (`Kernels::conv2d`; id `planar`). Skipped on
//! paths without blocked kernels (only AVX-512 has them). Throughput is in multiply-accumulates.
//! Run: `cargo bench -p pith-benches --bench blocked_layers`.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pith_benches::{conv, random_f32s, random_weights, Aligned, ConvLayer};
use pith_compress::WeightFormat;
use pith_kernels::{Activation, Kernels, Layout};

/// The layers (MobileNetV2 at 224×224): expansions, projections and depthwise layers of its
/// blocked stages, and a 1×1 layer over 7×7 where the blocked form loses.
fn layers() -> Vec<ConvLayer> {
    let layer = |name, params| ConvLayer { name, params };
    vec![
        layer("mbv2_1x1_32to192_28x28", conv(32, 192, (28, 28), 1, 1, 1)),
        layer("mbv2_1x1_192to32_28x28", conv(192, 32, (28, 28), 1, 1, 1)),
        layer("mbv2_dw3x3_192_28x28", conv(192, 192, (28, 28), 3, 1, 192)),
        layer("mbv2_dw3x3s2_192_28x28", conv(192, 192, (28, 28), 3, 2, 192)),
        // Over 56×56, the largest blocked planes (since the thirty-sixth session).
        layer("mbv2_dw3x3s2_144_56x56", conv(144, 144, (56, 56), 3, 2, 144)),
        layer("mbv2_1x1_24to144_56x56", conv(24, 144, (56, 56), 1, 1, 1)),
        layer("mbv2_1x1_64to384_14x14", conv(64, 384, (14, 14), 1, 1, 1)),
        layer("mbv2_1x1_576to96_14x14", conv(576, 96, (14, 14), 1, 1, 1)),
        layer("mbv2_dw3x3_384_14x14", conv(384, 384, (14, 14), 3, 1, 384)),
        layer("mbv2_dw3x3s2_576_14x14", conv(576, 576, (14, 14), 3, 2, 576)),
        layer("mbv2_dw3x3_960_7x7", conv(960, 960, (7, 7), 3, 1, 960)),
        layer("mbv2_1x1_960to320_7x7", conv(960, 320, (7, 7), 1, 1, 1)),
    ]
}

fn bench_blocked_layers(c: &mut Criterion) {
    let kernels = Kernels::new(1).expect("kernel set (check PITH_KERNEL)");
    if kernels.isa().blocked.is_none() {
        eprintln!("blocked_layers: the '{}' path has no blocked kernels; skipped", kernels.isa().name);
        return;
    }
    let mut group = c.benchmark_group(format!("blocked_layers_{}_t1", kernels.isa().name));
    for layer in layers() {
        let p = layer.params;
        let x = Aligned::copy_of(&random_f32s(p.in_c * p.in_h * p.in_w, 1));
        let bias = random_f32s(p.out_c, 2);
        let w = random_weights(WeightFormat::Codebook { bits: 4 }, p.out_c, p.filter_len(), 3);
        let mut y = Aligned::zeroed(p.out_c * p.out_h * p.out_w);
        let mut scratch = vec![0.0; kernels.conv2d_scratch_len(&p)];
        let act = Activation::Clip { min: 0.0, max: 6.0 };
        group.throughput(Throughput::Elements(layer.macs()));
        group.bench_function(BenchmarkId::new(layer.name, "planar"), |b| {
            b.iter(|| {
                kernels
                    .conv2d(
                        black_box(x.as_slice()),
                        &w.view(),
                        Some(&bias),
                        &p,
                        act,
                        y.as_mut_slice(),
                        &mut scratch,
                    )
                    .expect("bench layers are consistent")
            })
        });
        group.bench_function(BenchmarkId::new(layer.name, "blocked"), |b| {
            b.iter(|| {
                // An input without whole 16-channel blocks enters the region planar.
                let xl = if p.in_c % 16 == 0 { Layout::Blocked } else { Layout::Planar };
                let (xl, yl) = (xl, Layout::Blocked);
                kernels
                    .conv2d_blocked(
                        black_box(x.as_slice()),
                        xl,
                        &w.view(),
                        Some(&bias),
                        None,
                        None,
                        &p,
                        act,
                        y.as_mut_slice(),
                        yl,
                        &mut scratch,
                    )
                    .expect("bench layers are consistent")
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::quick(1.0);
    targets = bench_blocked_layers
}
criterion_main!(benches);
