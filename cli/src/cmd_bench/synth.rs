//! Synthetic weights and inputs for benchmarks, deterministic from a seed.
//!
//! One source for `pith bench --gemv` and the criterion benches: `benches/lib.rs` includes this
//! file by path (the bench crate cannot depend on a binary crate), so the two always time the
//! same packed data. It depends on `pith_format` only.

use pith_format::ir::{row_stride, Centroids, CodebookKind, CodebookTensor, TensorData};

/// A xorshift64 stream: fast, reproducible, and good enough for benchmark data.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // Zero is xorshift's one fixed point; mixing the seed keeps nearby seeds apart.
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `n` values uniform in [-1, 1).
pub fn random_f32s(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = XorShift::new(seed);
    (0..n).map(|_| rng.next_f32()).collect()
}

/// A `rows × cols` weight matrix as packed `bits`-bit codebook indices, laid out as a `.pith`
/// file stores it: one shared codebook of `2^bits` f32 centroids with one scale per row
/// ([`CodebookKind::SharedScaled`], the general case of the kernels' decode), uniformly random
/// indices packed LSB-first per row. Scales are `1 / sqrt(cols)` so products stay O(1).
///
/// `None` when `bits` is outside 1..=8 or `rows * cols` overflows.
pub fn random_codebook_matrix(rows: usize, cols: usize, bits: u8, seed: u64) -> Option<TensorData> {
    if !(1..=8).contains(&bits) {
        return None;
    }
    let stride = row_stride(cols, bits);
    let bytes = rows.checked_mul(stride)?;
    rows.checked_mul(cols)?;
    let entries = 1usize << bits;
    let mut rng = XorShift::new(seed);
    let mut centroids: Vec<f32> = (0..entries).map(|_| rng.next_f32()).collect();
    centroids.sort_by(f32::total_cmp);
    let mut indices = vec![0u8; bytes];
    let mask = (entries - 1) as u64;
    for row in indices.chunks_exact_mut(stride.max(1)).take(rows) {
        for i in 0..cols {
            let idx = (rng.next_u64() >> 32) & mask;
            let bit = i * bits as usize;
            // Index i starts at bit `bit` of the row and may spill into the next byte.
            let spread = (idx as u16) << (bit % 8);
            row[bit / 8] |= spread as u8;
            if bit % 8 + bits as usize > 8 {
                row[bit / 8 + 1] |= (spread >> 8) as u8;
            }
        }
    }
    Some(TensorData::Codebook(CodebookTensor {
        bits,
        rows,
        row_len: cols,
        entries,
        kind: CodebookKind::SharedScaled,
        centroids: Centroids::F32(centroids),
        scales: vec![1.0 / (cols.max(1) as f32).sqrt(); rows],
        f16_scales: false,
        indices,
    }))
}
