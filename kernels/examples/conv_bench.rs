//! Times the kernels under every available instruction-set path with 1 and 2 worker threads:
//! * conv 3×3, 32→32 channels on 184×368 (f32 and 4-bit codebook weights),
//! * pointwise 1×1 and depthwise 3×3 layers of the same size (f32 weights),
//! * GEMV `y = W x` with `W` 4096×4096 stored `[N, K]`: 4-bit codebook vs f32.
//!
//! Prints the median of several repetitions. Run:
//! `cargo run --release -p pith-kernels --example conv_bench`

use std::time::Instant;

use pith_format::ir::{row_stride, Centroids, CodebookKind, CodebookTensor, TensorData};
use pith_kernels::{Activation, Conv2dParams, Isa, Kernels, WeightLayout};

/// xorshift64 values.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.next() % 1000) as f32 / 500.0 - 1.0).collect()
    }
}

/// `rows` × `row_len` random per-row codebook weights with `bits`-bit indices.
fn codebook(rng: &mut Rng, bits: u8, rows: usize, row_len: usize) -> TensorData {
    let entries = 1usize << bits;
    let stride = row_stride(row_len, bits);
    let indices = (0..rows * stride).map(|_| rng.next() as u8).collect();
    TensorData::Codebook(CodebookTensor {
        bits,
        rows,
        row_len,
        entries,
        kind: CodebookKind::PerRow,
        centroids: Centroids::F32(rng.vec(rows * entries)),
        scales: vec![],
        f16_scales: false,
        indices,
    })
}

/// Median wall time of `reps` calls of `f` (after one warm-up), in milliseconds.
fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[reps / 2]
}

fn main() {
    let p = Conv2dParams {
        batch: 1,
        in_c: 32,
        in_h: 184,
        in_w: 368,
        out_c: 32,
        out_h: 184,
        out_w: 368,
        k_h: 3,
        k_w: 3,
        stride_h: 1,
        stride_w: 1,
        pad_top: 1,
        pad_left: 1,
        dil_h: 1,
        dil_w: 1,
        groups: 1,
    };
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let x = rng.vec(32 * 184 * 368);
    let pointwise = Conv2dParams { k_h: 1, k_w: 1, pad_top: 0, pad_left: 0, ..p };
    let depthwise = Conv2dParams { groups: 32, ..p };
    let cases = [
        ("conv3x3 f32", p, TensorData::F32(rng.vec(32 * p.filter_len()))),
        ("conv3x3 cb4", p, codebook(&mut rng, 4, 32, p.filter_len())),
        ("pointwise f32", pointwise, TensorData::F32(rng.vec(32 * 32))),
        ("depthwise f32", depthwise, TensorData::F32(rng.vec(32 * 9))),
    ];
    let (gn, gk) = (4096, 4096);
    let gx = rng.vec(gk);
    let gemv = [
        ("gemv4096 f32", TensorData::F32(rng.vec(gn * gk))),
        ("gemv4096 cb4", codebook(&mut rng, 4, gn, gk)),
        ("gemv4096 cb8", codebook(&mut rng, 8, gn, gk)),
    ];

    println!("{:16} {:7} {:>3} {:>10} {:>9}", "case", "path", "thr", "median ms", "GFLOP/s");
    let mut y = vec![0.0; 32 * 184 * 368];
    let mut gy = vec![0.0; gn];
    for isa in Isa::available() {
        for threads in [1, 2] {
            let k = Kernels::with_isa(isa, threads).expect("worker threads start");
            for (name, q, w) in &cases {
                let mut scratch = vec![0.0; k.conv2d_scratch_len(q)];
                let view = w.view();
                let reps = if isa.name == "scalar" { 3 } else { 7 };
                let ms = median_ms(reps, || {
                    k.conv2d(&x, &view, None, q, Activation::None, &mut y, &mut scratch).unwrap()
                });
                let flops = 2.0 * (q.out_c * q.out_h * q.out_w * q.filter_len()) as f64;
                println!("{name:16} {:7} {threads:>3} {ms:>10.2} {:>9.2}", isa.name, flops / ms / 1e6);
            }
            for (name, w) in &gemv {
                let mut scratch = vec![0.0; k.gemm_scratch_len(gk, gn, WeightLayout::NK)];
                let view = w.view();
                let ms = median_ms(21, || {
                    let (lay, act) = (WeightLayout::NK, Activation::None);
                    k.gemm(&gx, 1, gk, gn, &view, lay, None, act, &mut gy, &mut scratch).unwrap()
                });
                let flops = 2.0 * (gn * gk) as f64;
                println!("{name:16} {:7} {threads:>3} {ms:>10.3} {:>9.2}", isa.name, flops / ms / 1e6);
            }
        }
    }
}
