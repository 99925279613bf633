//! Test helpers: a fixed-seed xorshift generator and random weights in every encoding.

use half::f16;
use pith_format::ir::{row_stride, Centroids, CodebookKind, CodebookTensor, TensorData};

/// xorshift64* generator with a fixed seed, so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[-1, 1)`.
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

/// A weight storage encoding to test.
#[derive(Debug, Clone, Copy)]
pub enum WeightKind {
    F32,
    F16,
    /// bits, sharing scheme, f16 centroids.
    Codebook(u8, CodebookKind, bool),
}

impl WeightKind {
    /// F32, F16 and every codebook bit width × kind, alternating centroid precision.
    pub fn all() -> Vec<WeightKind> {
        let mut v = vec![WeightKind::F32, WeightKind::F16];
        for bits in 1..=8u8 {
            for (i, kind) in [CodebookKind::PerTensor, CodebookKind::PerRow, CodebookKind::SharedScaled]
                .into_iter()
                .enumerate()
            {
                v.push(WeightKind::Codebook(bits, kind, (bits as usize + i) % 2 == 1));
            }
        }
        v
    }
}

/// Random `rows` × `row_len` weights in encoding `kind`.
pub fn random_weight(rng: &mut Rng, kind: WeightKind, rows: usize, row_len: usize) -> TensorData {
    match kind {
        WeightKind::F32 => TensorData::F32(rng.vec(rows * row_len)),
        WeightKind::F16 => TensorData::F16((0..rows * row_len).map(|_| f16::from_f32(rng.f32())).collect()),
        WeightKind::Codebook(bits, kind, half) => {
            // Use fewer entries than 2^bits sometimes, as the compressor may.
            let max = 1usize << bits;
            let entries = if max > 2 && rng.below(2) == 0 { max - 1 } else { max };
            let n_centroids = if kind == CodebookKind::PerRow { rows * entries } else { entries };
            let vals = rng.vec(n_centroids);
            let centroids = if half {
                Centroids::F16(vals.iter().map(|&v| f16::from_f32(v)).collect())
            } else {
                Centroids::F32(vals)
            };
            let scales = if kind == CodebookKind::SharedScaled {
                (0..rows).map(|_| rng.f32() * 2.0).collect()
            } else {
                Vec::new()
            };
            let stride = row_stride(row_len, bits);
            let mut indices = vec![0u8; rows * stride];
            for r in 0..rows {
                for i in 0..row_len {
                    let idx = rng.below(entries);
                    for b in 0..bits as usize {
                        if idx >> b & 1 == 1 {
                            let bit = i * bits as usize + b;
                            indices[r * stride + bit / 8] |= 1 << (bit % 8);
                        }
                    }
                }
            }
            TensorData::Codebook(CodebookTensor {
                bits,
                rows,
                row_len,
                entries,
                kind,
                centroids,
                scales,
                f16_scales: false,
                indices,
            })
        }
    }
}

/// Every weight of `data` as f32 (`rows` rows) through the format crate's reference decode.
pub fn decode_all(data: &TensorData, rows: usize) -> Vec<f32> {
    let view = data.view();
    let n = view.numel();
    let row_len = n / rows;
    let mut out = vec![0.0; n];
    for r in 0..rows {
        view.decode_row(rows, r, &mut out[r * row_len..(r + 1) * row_len]);
    }
    out
}

/// Asserts two float slices agree within a tolerance scaled to their magnitude.
pub fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_close_within(got, want, 0.0, what);
}

/// [`assert_close`] with `range` times the largest `|want|` added to every element's tolerance:
/// for algorithms whose rounding error follows the magnitude of the whole computation rather
/// than of each result (Winograd's transforms mix every tile's inputs, so a small output next to
/// large ones carries their error).
pub fn assert_close_within(got: &[f32], want: &[f32], range: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let slack = range * want.iter().fold(0.0f32, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()) + slack, "{what}: element {i}: got {g}, want {w}");
    }
}

/// Every available instruction-set path with 1, 2 and 3 worker threads, splitting even tiny
/// shapes; prints the paths this CPU lacks so test logs say what was skipped.
pub fn kernel_sets() -> Vec<crate::Kernels> {
    let paths = crate::Isa::available();
    for name in ["avx2", "avx512", "neon"] {
        if !paths.iter().any(|i| i.name == name) {
            eprintln!("kernel path '{name}' not available on this CPU/build, skipped");
        }
    }
    let mut sets = Vec::new();
    for isa in paths {
        for threads in 1..=3 {
            let mut k = crate::Kernels::with_isa(isa, threads).expect("worker threads start");
            k.min_task_work = 1;
            // Tests check how work is split; a stall (common under qemu) must not send it all
            // to one thread.
            if let Some(pool) = k.pool() {
                pool.ignore_stalls();
            }
            sets.push(k);
        }
    }
    sets
}

/// A random stride-1 depthwise layer over one channel whose input rows are `in_w` wide like its
/// output's (what `DepthwisePlane` describes): filters up to `max_k`, dilation 1-2, pads up to
/// past the filter, planes smaller than the filter, up to `max_in_h` input rows; `None` when no
/// output row is left.
pub fn same_width_depthwise(
    rng: &mut Rng,
    max_k: [usize; 2],
    in_w: usize,
    max_in_h: usize,
) -> Option<crate::Conv2dParams> {
    let (k_h, k_w) = (1 + rng.below(max_k[0]), 1 + rng.below(max_k[1]));
    let (dil_h, dil_w) = (1 + rng.below(2), 1 + rng.below(2));
    let in_h = 1 + rng.below(max_in_h);
    // Columns: left + right pad = the filter's reach, so rows keep their width.
    let pad_left = rng.below((k_w - 1) * dil_w + 1);
    let (pad_top, pad_bottom) = (rng.below(k_h * dil_h + 1), rng.below(k_h * dil_h + 1));
    let out_h = (in_h + pad_top + pad_bottom).checked_sub((k_h - 1) * dil_h).filter(|&h| h > 0)?;
    Some(crate::Conv2dParams {
        batch: 1,
        in_c: 1,
        in_h,
        in_w,
        out_c: 1,
        out_h,
        out_w: in_w,
        k_h,
        k_w,
        stride_h: 1,
        stride_w: 1,
        pad_top,
        pad_left,
        dil_h,
        dil_w,
        groups: 1,
    })
}

/// A 1×1, stride-1, unpadded, ungrouped layer over `h × w` planes.
pub fn pointwise(batch: usize, in_c: usize, out_c: usize, [h, w]: [usize; 2]) -> crate::Conv2dParams {
    crate::Conv2dParams {
        batch,
        in_c,
        in_h: h,
        in_w: w,
        out_c,
        out_h: h,
        out_w: w,
        k_h: 1,
        k_w: 1,
        stride_h: 1,
        stride_w: 1,
        pad_top: 0,
        pad_left: 0,
        dil_h: 1,
        dil_w: 1,
        groups: 1,
    }
}
