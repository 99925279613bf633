//! Widening codebook rows into f32 panels (`WeightRows::decode_rows`, what a convolution or dense
//! layer does before its register tiles; the time that matters where a layer covers few pixels):
//! 16 rows of 9216 weights (a panel of PP-OCRv3 rec's 64×1024×3×3 layer; 590 KB of f32 out, in
//! L2 as a panel is) at 3, 5, 6, 7 and 8 bits, shared
//! codebooks with row scales, through the portable decoder (`portable`) and through this CPU's
//! path (`path`: on AVX-512 and AVX2, `Isa::decode_packed` in registers; elsewhere the same
//! portable loop; `PITH_KERNEL=avx2` picks the AVX2 path on an AVX-512 CPU), against copying as
//! many f32 weights (`f32-copy`, the baseline: no decoder writes its output faster). Throughput
//! is weights, so criterion prints Gelem/s.
//! Run: `cargo bench -p pith-benches --bench decode`.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pith_benches::{random_codebook_matrix, random_f32s};
use pith_format::ir::TensorData;
use pith_kernels::{Isa, WeightRows};

const ROWS: usize = 16;
const ROW_LEN: usize = 9216;

fn bench_decode(c: &mut Criterion) {
    let isa = Isa::detect().expect("the CPU's kernel path");
    let mut g = c.benchmark_group(format!("decode_rows_{ROWS}x{ROW_LEN}_{}", isa.name));
    g.throughput(Throughput::Elements((ROWS * ROW_LEN) as u64));
    let mut out = vec![0.0f32; ROWS * ROW_LEN];
    let f32_rows = TensorData::F32(random_f32s(ROWS * ROW_LEN, 1));
    let copy = WeightRows::new(f32_rows.view(), ROWS, ROW_LEN).expect("consistent shape");
    g.bench_function("f32-copy", |b| b.iter(|| copy.decode_rows(0..ROWS, black_box(&mut out))));
    for bits in [3u8, 5, 6, 7, 8] {
        let w = random_codebook_matrix(ROWS, ROW_LEN, bits, u64::from(bits)).expect("bits are 1..=8");
        let portable = WeightRows::new(w.view(), ROWS, ROW_LEN).expect("consistent shape");
        let path = portable.with_isa(&isa);
        for (name, rows) in [("portable", portable), ("path", path)] {
            g.bench_with_input(BenchmarkId::new(format!("cb{bits}"), name), &rows, |b, rows| {
                b.iter(|| rows.decode_rows(0..ROWS, black_box(&mut out)))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::quick(1.0);
    targets = bench_decode
}
criterion_main!(benches);
