//! Times `conv2d` on a 3×3, 32→32 channel, 184×368 image with f32, f16 and 8/4-bit codebook weights,
//! then a depthwise 3×3 and a pointwise 1×1 layer of the same size (f32 weights) for reference.
//!
//! Run: `cargo run --release -p pith-kernels --example conv_bench`

use std::time::Instant;

use pith_format::ir::{row_stride, Centroids, CodebookKind, CodebookTensor, TensorData};
use pith_kernels::{Activation, Conv2dParams, Kernels};

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
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let row_len = p.filter_len();
    let x: Vec<f32> = (0..32 * 184 * 368).map(|_| (next() % 1000) as f32 / 1000.0).collect();
    let dense: Vec<f32> = (0..32 * row_len).map(|_| (next() % 1000) as f32 / 500.0 - 1.0).collect();
    let mut codebook = |bits: u8| {
        let entries = 1usize << bits;
        let stride = row_stride(row_len, bits);
        let mut indices = vec![0u8; 32 * stride];
        for r in 0..32 {
            for i in 0..row_len {
                let idx = next() as usize % entries;
                let bit = i * bits as usize;
                indices[r * stride + bit / 8] |= (idx << (bit % 8)) as u8;
                if bit % 8 + bits as usize > 8 {
                    indices[r * stride + bit / 8 + 1] |= (idx >> (8 - bit % 8)) as u8;
                }
            }
        }
        TensorData::Codebook(CodebookTensor {
            bits,
            rows: 32,
            row_len,
            entries,
            kind: CodebookKind::PerRow,
            centroids: Centroids::F32((0..32 * entries).map(|i| i as f32 / 4096.0).collect()),
            scales: vec![],
            indices,
        })
    };
    let f16 = TensorData::F16(dense.iter().map(|&v| half::f16::from_f32(v)).collect());
    let weights = [
        ("f32", TensorData::F32(dense.clone())),
        ("f16", f16),
        ("cb8/per-row", codebook(8)),
        ("cb4/per-row", codebook(4)),
    ];
    let k = Kernels::new(1);
    let mut y = vec![0.0; 32 * 184 * 368];
    let mut scratch = vec![0.0; k.conv2d_scratch_len(&p)];
    let flops = 2.0 * (32 * 184 * 368) as f64 * row_len as f64;
    for (name, w) in &weights {
        let view = w.view();
        let run =
            |y: &mut [f32], s: &mut [f32]| k.conv2d(&x, &view, None, &p, Activation::None, y, s).unwrap();
        run(&mut y, &mut scratch); // warm-up
        let reps = 5;
        let t = Instant::now();
        for _ in 0..reps {
            run(&mut y, &mut scratch);
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!("{name:12} {ms:8.2} ms  {:6.2} GFLOP/s", flops / ms / 1e6);
    }
    for (name, q) in [
        ("depthwise3x3", Conv2dParams { groups: 32, ..p }),
        ("pointwise1x1", Conv2dParams { k_h: 1, k_w: 1, pad_top: 0, pad_left: 0, ..p }),
    ] {
        let w = TensorData::F32(dense[..32 * q.filter_len()].to_vec());
        let mut scratch = vec![0.0; k.conv2d_scratch_len(&q)];
        let view = w.view();
        let reps = 5;
        let t = Instant::now();
        for _ in 0..reps {
            k.conv2d(&x, &view, None, &q, Activation::None, &mut y, &mut scratch).unwrap();
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let flops = 2.0 * (32 * 184 * 368) as f64 * q.filter_len() as f64;
        println!("{name:12} {ms:8.2} ms  {:6.2} GFLOP/s", flops / ms / 1e6);
    }
}
