//! Int8 micro-kernels for dynamic-range quantized 1×1 convolutions: activations quantized to u8
//! on the fly (an affine range per block of pixels), weights to s8 per filter, sums in i32 on the
//! CPU's int8 dot-product instructions (x86 AVX-512 VNNI `vpdpbusd`, aarch64 `sdot`); and the
//! int8 GEMV on 4-bit rows, which AVX2 without VNNI also has (`vpmaddubsw`).
//!
//! The quantized activations lie 4 channels per 32-bit word, pixel after pixel:
//! `xq[(g * ldx + j) * 4 + t]` is channel `4g + t` of pixel `j`, so one word of a vector register
//! is what one `vpdpbusd` lane multiplies with the 4 weights of a filter broadcast to every lane.
//! Channels past `k` (up to a multiple of 4) and pixels past `n` (up to `ldx`) are zero.
//!
//! This file holds the form of the kernels ([`Int8Kernels`]), the checks every path's safe
//! wrappers run, and the scalar reference ([`SCALAR`]) every other path is tested against.

/// Pixels of the quantized layout's rows are padded to a multiple of this (`ldx`): the widest
/// path reads 16 pixels (one 512-bit register of words) at a time.
pub const INT8_PIXEL_ALIGN: usize = 16;

/// The affine map of one quantization block: `q = round((x - lo) * inv_step)` clamped to
/// `0..=255`, so `x ≈ lo + q * step` with `step = 1 / inv_step`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct U8Range {
    /// The block's smallest value (quantizes to 0).
    pub lo: f32,
    /// 255 over the block's range (0 when the range is empty or not finite: every value is `lo`).
    pub inv_step: f32,
}

impl U8Range {
    /// The map of values in `[lo, hi]`.
    pub fn new(lo: f32, hi: f32) -> U8Range {
        let step = (hi - lo) / 255.0;
        let inv_step = if step > 0.0 && step.is_finite() { 1.0 / step } else { 0.0 };
        U8Range { lo, inv_step }
    }

    /// The map of values in `[lo, hi]` widened to hold 0, with 0 exactly on a level (`lo` a
    /// whole number of steps below it): zero padding quantizes to a level that stands for 0.
    pub fn with_zero(lo: f32, hi: f32) -> U8Range {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let step = (hi - lo) / 255.0;
        if !(step > 0.0 && step.is_finite()) {
            return U8Range { lo: 0.0, inv_step: 0.0 };
        }
        // The zero point; the top of the range may then lie up to half a step past level 255.
        let zero = (-lo / step).round_ties_even();
        U8Range { lo: -zero * step, inv_step: 1.0 / step }
    }

    /// The value one quantization level stands for (0 when `inv_step` is 0).
    pub fn step(&self) -> f32 {
        if self.inv_step > 0.0 {
            1.0 / self.inv_step
        } else {
            0.0
        }
    }

    /// One value, rounded half to even as the vector conversions do; NaN becomes 0.
    #[inline]
    pub fn quantize(&self, x: f32) -> u8 {
        // `as u8` saturates and maps NaN to 0, like the SIMD paths' clamp of a NaN's conversion.
        ((x - self.lo) * self.inv_step).round_ties_even().clamp(0.0, 255.0) as u8
    }
}

/// The int8 kernels of one path: those of convolutions, and the 4-bit GEMV.
#[derive(Clone, Copy)]
pub struct Int8Kernels {
    /// The convolution kernels; `None` on AVX2 without VNNI, whose exact int8 products
    /// (`vpmaddubsw` saturates u8 × s8 pair sums, so the route widens to 16 bits) do no more
    /// multiply-adds per instruction than an f32 FMA: there only the GEMV runs on int8.
    pub conv: Option<Int8ConvKernels>,
    /// The int8 GEMV on 4-bit packed rows: `out[r] = sum_{i < k} tables[r][index_{r,i}] *
    /// x(i)` (exact, in i32) for every `r < rows.len()`, where row `r`'s indices are packed two
    /// per byte, low nibble first, its table holds each entry's s8 weight plus 128 (as u8), and
    /// `x(i)` is element `i` of the s8 activations in `xp`'s [`prepare_nibbles`] layout. `None`
    /// on paths without such a kernel, whose GEMVs stay f32.
    ///
    /// # Panics
    /// If `tables` or `out` hold fewer entries than `rows`, a row holds fewer than
    /// `k.div_ceil(2)` bytes, or `xp` fewer than `k.next_multiple_of(NIBBLE_BLOCK)`.
    pub dot_nibbles: Option<DotNibblesFn>,
}

/// The int8 kernels of dynamic-range quantized convolutions.
#[derive(Clone, Copy)]
pub struct Int8ConvKernels {
    /// `[min, max]` of `x[offs[p] + j]` over `p < offs.len()`, `j < n` (`[0, 0]` when empty).
    /// NaNs may be skipped or returned, depending on the path.
    ///
    /// # Panics
    /// If an offset plus `n` exceeds `x`.
    pub min_max: fn(x: &[f32], offs: &[usize], n: usize) -> [f32; 2],
    /// Quantizes channels `p < offs.len()` (channel `p` at `x[offs[p]..]`) of pixels `j < n` into
    /// the layout above with `ldx` pixels per row: `xq[(p / 4 * ldx + j) * 4 + p % 4] =
    /// range.quantize(x[offs[p] + j])`, zero for the padding channels and pixels.
    ///
    /// # Panics
    /// If `ldx` is not a multiple of [`INT8_PIXEL_ALIGN`] or is below `n`, `xq` is shorter than
    /// `offs.len().div_ceil(4) * ldx * 4`, or an offset plus `n` exceeds `x`.
    #[allow(clippy::type_complexity)]
    pub quantize: fn(x: &[f32], offs: &[usize], n: usize, range: U8Range, xq: &mut [u8], ldx: usize),
    /// `c[i * ldc + j] = mul[i] * s + add[i]` with `s = sum_p w[i * kq + p] * xq(p, j)` (exact,
    /// in i32) for rows `i < w.len() / kq` and pixels `j < n`, `xq(p, j)` read from the layout
    /// above with `ldx` pixels per row. Other elements of `c` are not written.
    ///
    /// # Panics
    /// If `kq` is not a multiple of 4, `ldx` not a multiple of [`INT8_PIXEL_ALIGN`] or below `n`,
    /// or a slice is shorter than the shape needs.
    pub gemm: Int8GemmFn,
    /// [`Int8ConvKernels::gemm`] with the epilogue in the register tile: `out.dst[i][out.col +
    /// j] = act_i((mul[i] * s + add[i] + residual(i, j)) + bias[i])`, each output written once,
    /// where the plain form writes the scaled sums into an accumulator tile for an
    /// [`crate::Isa::store_rows`] pass to read back. The same values, bit for bit. `None` on paths
    /// without it.
    ///
    /// # Panics
    /// As [`Int8ConvKernels::gemm`], or if `out` holds fewer rows, columns, biases, slopes or
    /// residual values than the shape needs.
    pub gemm_fused: Option<Int8GemmFusedFn>,
}

/// The form of [`Int8ConvKernels::gemm`].
#[allow(clippy::type_complexity)]
pub type Int8GemmFn = fn(
    w: &[i8],
    kq: usize,
    xq: &[u8],
    ldx: usize,
    n: usize,
    mul: &[f32],
    add: &[f32],
    c: &mut [f32],
    ldc: usize,
);

/// The form of [`Int8ConvKernels::gemm_fused`].
#[allow(clippy::type_complexity)]
pub type Int8GemmFusedFn = fn(
    w: &[i8],
    kq: usize,
    xq: &[u8],
    ldx: usize,
    n: usize,
    mul: &[f32],
    add: &[f32],
    out: crate::arch::FusedRows<'_, '_>,
);

/// The form of [`Int8Kernels::dot_nibbles`].
pub type DotNibblesFn = fn(rows: &[&[u8]], tables: &[[u8; 16]], xp: &[i8], k: usize, out: &mut [i32]);

/// Activations per block of the [`prepare_nibbles`] layout: 64 packed bytes of a row.
pub const NIBBLE_BLOCK: usize = 128;

/// The scalar reference.
pub const SCALAR: Int8Kernels = Int8Kernels {
    conv: Some(Int8ConvKernels { min_max, quantize, gemm, gemm_fused: None }),
    dot_nibbles: Some(dot_nibbles),
};

/// Quantizes the GEMV input `x` to s8 with step `1 / inv` (`q = round(x * inv)`, half to even,
/// clamped to ±127) into `xp` in the layout [`Int8Kernels::dot_nibbles`] reads: per block of
/// [`NIBBLE_BLOCK`] elements, the even ones (the low nibbles of 64 packed bytes), then the odd
/// ones, zero past `x`. Returns the sum of the quantized values (what the tables' +128 adds,
/// divided by 128).
///
/// # Panics
/// If `xp` is shorter than `x.len().next_multiple_of(NIBBLE_BLOCK)`.
pub fn prepare_nibbles(x: &[f32], inv: f32, xp: &mut [i8]) -> i32 {
    let blocks = x.len().div_ceil(NIBBLE_BLOCK);
    let xp = &mut xp[..blocks * NIBBLE_BLOCK];
    xp.fill(0);
    let mut sum = 0i32;
    for (b, block) in x.chunks(NIBBLE_BLOCK).enumerate() {
        let out = &mut xp[b * NIBBLE_BLOCK..][..NIBBLE_BLOCK];
        for (i, &v) in block.iter().enumerate() {
            // 1.5 * 2^23 added and taken away rounds to an integer, half to even (|v * inv| is
            // at most 127 after the clamp), without a library call on baseline x86-64.
            const MAGIC: f32 = 12_582_912.0;
            let q = ((v * inv).clamp(-127.0, 127.0) + MAGIC) - MAGIC;
            let q = q as i32; // NaN becomes 0
            out[i / 2 + (i % 2) * NIBBLE_BLOCK / 2] = q as i8;
            sum += q;
        }
    }
    sum
}

/// Checks [`Int8Kernels::dot_nibbles`] operands.
pub(crate) fn dot_nibbles_check(rows: &[&[u8]], tables: &[[u8; 16]], xp: &[i8], k: usize, out: &[i32]) {
    assert!(
        tables.len() >= rows.len() && out.len() >= rows.len(),
        "dot_nibbles: fewer tables or outputs than rows"
    );
    assert!(rows.iter().all(|r| r.len() >= k.div_ceil(2)), "dot_nibbles: a row is shorter than {k} indices");
    assert!(xp.len() >= k.next_multiple_of(NIBBLE_BLOCK), "dot_nibbles: prepared input is too short");
}

/// See [`Int8Kernels::dot_nibbles`].
pub fn dot_nibbles(rows: &[&[u8]], tables: &[[u8; 16]], xp: &[i8], k: usize, out: &mut [i32]) {
    dot_nibbles_check(rows, tables, xp, k, out);
    for ((row, table), o) in rows.iter().zip(tables).zip(out.iter_mut()) {
        let mut s = 0i32;
        for i in 0..k {
            let index = (row[i / 2] >> (4 * (i % 2))) & 0x0F;
            let x = xp[i / NIBBLE_BLOCK * NIBBLE_BLOCK + i % NIBBLE_BLOCK / 2 + (i % 2) * NIBBLE_BLOCK / 2];
            s += i32::from(table[usize::from(index)]) * i32::from(x);
        }
        *o = s;
    }
}

/// Checks [`Int8ConvKernels::min_max`] operands; `false` when there is nothing to scan.
pub(crate) fn min_max_check(x: &[f32], offs: &[usize], n: usize) -> bool {
    for &o in offs {
        assert!(o.checked_add(n).is_some_and(|end| end <= x.len()), "int8 min_max: x is too short");
    }
    n > 0 && !offs.is_empty()
}

/// Checks [`Int8ConvKernels::quantize`] operands.
pub(crate) fn quantize_check(x: &[f32], offs: &[usize], n: usize, xq: &[u8], ldx: usize) {
    assert!(ldx >= n && ldx.is_multiple_of(INT8_PIXEL_ALIGN), "int8 quantize: bad pixel pitch {ldx} for {n}");
    assert!(xq.len() >= offs.len().div_ceil(4) * ldx * 4, "int8 quantize: xq is too short");
    for &o in offs {
        assert!(o.checked_add(n).is_some_and(|end| end <= x.len()), "int8 quantize: x is too short");
    }
}

/// Checks [`Int8ConvKernels::gemm`] operands and returns the row count, `None` when there is nothing
/// to compute.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_check(
    w: &[i8],
    kq: usize,
    xq: &[u8],
    ldx: usize,
    n: usize,
    mul: &[f32],
    add: &[f32],
    c: &[f32],
    ldc: usize,
) -> Option<usize> {
    let m = gemm_operands_check(w, kq, xq, ldx, n, mul, add)?;
    assert!((m == 1 || n <= ldc) && c.len() >= (m - 1) * ldc + n, "int8 gemm: c is too short");
    Some(m)
}

/// Checks [`Int8ConvKernels::gemm_fused`] operands (panicking on a caller bug, as every path
/// must) and returns the row count `w.len() / kq`, or `None` when there is nothing to do.
#[cfg_attr(not(any(target_arch = "x86_64", target_arch = "aarch64")), allow(dead_code))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_fused_check(
    w: &[i8],
    kq: usize,
    xq: &[u8],
    ldx: usize,
    n: usize,
    mul: &[f32],
    add: &[f32],
    out: &crate::arch::FusedRows<'_, '_>,
) -> Option<usize> {
    let m = gemm_operands_check(w, kq, xq, ldx, n, mul, add)?;
    crate::arch::fused_rows_check("int8 gemm_fused", out, m, n);
    Some(m)
}

/// What both int8 GEMMs check of their inputs: the row count, or `None` when there is nothing
/// to do.
fn gemm_operands_check(
    w: &[i8],
    kq: usize,
    xq: &[u8],
    ldx: usize,
    n: usize,
    mul: &[f32],
    add: &[f32],
) -> Option<usize> {
    assert!(kq.is_multiple_of(4), "int8 gemm: depth {kq} is not a multiple of 4");
    assert!(ldx >= n && ldx.is_multiple_of(INT8_PIXEL_ALIGN), "int8 gemm: bad pixel pitch {ldx} for {n}");
    if kq == 0 || n == 0 || w.len() < kq {
        return None;
    }
    let m = w.len() / kq;
    assert!(xq.len() >= kq * ldx, "int8 gemm: xq is too short");
    assert!(mul.len() >= m && add.len() >= m, "int8 gemm: fewer scales than rows");
    Some(m)
}

/// See [`Int8ConvKernels::min_max`].
pub fn min_max(x: &[f32], offs: &[usize], n: usize) -> [f32; 2] {
    if !min_max_check(x, offs, n) {
        return [0.0, 0.0];
    }
    let mut range = [f32::INFINITY, f32::NEG_INFINITY];
    for &o in offs {
        for &v in &x[o..o + n] {
            range = [range[0].min(v), range[1].max(v)];
        }
    }
    range
}

/// See [`Int8ConvKernels::quantize`].
pub fn quantize(x: &[f32], offs: &[usize], n: usize, range: U8Range, xq: &mut [u8], ldx: usize) {
    quantize_check(x, offs, n, xq, ldx);
    let groups = offs.len().div_ceil(4);
    xq[..groups * ldx * 4].fill(0);
    for (p, &o) in offs.iter().enumerate() {
        for (j, &v) in x[o..o + n].iter().enumerate() {
            xq[(p / 4 * ldx + j) * 4 + p % 4] = range.quantize(v);
        }
    }
}

/// See [`Int8ConvKernels::gemm`].
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    w: &[i8],
    kq: usize,
    xq: &[u8],
    ldx: usize,
    n: usize,
    mul: &[f32],
    add: &[f32],
    c: &mut [f32],
    ldc: usize,
) {
    let Some(m) = gemm_check(w, kq, xq, ldx, n, mul, add, c, ldc) else { return };
    for i in 0..m {
        let wrow = &w[i * kq..][..kq];
        for j in 0..n {
            let mut s = 0i32;
            for (p, &wp) in wrow.iter().enumerate() {
                s += i32::from(wp) * i32::from(xq[(p / 4 * ldx + j) * 4 + p % 4]);
            }
            c[i * ldc + j] = s as f32 * mul[i] + add[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_quantize_their_ends_and_degenerate_ranges_map_to_lo() {
        let r = U8Range::new(-1.0, 4.1);
        assert_eq!(r.quantize(-1.0), 0);
        assert_eq!(r.quantize(4.1), 255);
        assert_eq!(r.quantize(-7.0), 0);
        assert_eq!(r.quantize(f32::NAN), 0);
        let q = r.quantize(1.0);
        assert!((r.lo + f32::from(q) * r.step() - 1.0).abs() <= r.step() / 2.0 + 1e-6);
        let flat = U8Range::new(2.0, 2.0);
        assert_eq!((flat.inv_step, flat.step(), flat.quantize(2.0)), (0.0, 0.0, 0));
        assert_eq!(U8Range::new(f32::MIN, f32::MAX).inv_step, 0.0);
    }

    #[test]
    fn gemv_input_splits_even_and_odd_elements_per_block_and_rounds_half_to_even() {
        // 130 elements: a whole block and 2 of the next, the rest zero.
        let x: Vec<f32> = (0..130).map(|i| i as f32 * 0.5).collect();
        let mut xp = vec![9i8; 256];
        let sum = prepare_nibbles(&x, 1.0, &mut xp);
        // Element i rounds i / 2 half to even (2.5 -> 2, 3.5 -> 4) and clamps at 127.
        let q = |i: usize| ((i as f32 * 0.5).round_ties_even().min(127.0)) as i8;
        assert_eq!(&xp[..3], &[q(0), q(2), q(4)]);
        assert_eq!(&xp[64..67], &[q(1), q(3), q(5)]);
        assert_eq!((xp[128], xp[192], xp[129], xp[193]), (q(128), q(129), 0, 0));
        assert_eq!(sum, (0..130).map(|i| i32::from(q(i))).sum::<i32>());
        // Row bytes 0x21 (indices 1, 2) then 0x03 (index 3; index 4 past k = 3 has x = 0).
        let table: [u8; 16] = std::array::from_fn(|v| 128 + v as u8);
        let mut out = [0];
        dot_nibbles(&[&[0x21, 0x03]], &[table], &xp, 3, &mut out);
        assert_eq!(out[0], 129 * i32::from(q(0)) + 130 * i32::from(q(1)) + 131 * i32::from(q(2)));
    }

    #[test]
    fn reference_layout_pads_channels_and_pixels_with_zeros() {
        // 5 channels of 3 pixels, a plane of 4 apart: group 1 holds channel 4 and three zeros.
        let x: Vec<f32> = (0..20).map(|v| v as f32).collect();
        let offs = [0, 4, 8, 12, 16];
        assert_eq!(min_max(&x, &offs, 3), [0.0, 18.0]);
        let range = U8Range::new(0.0, 255.0);
        let mut xq = vec![9u8; 2 * 16 * 4];
        quantize(&x, &offs, 3, range, &mut xq, 16);
        assert_eq!(&xq[..12], &[0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14]);
        assert!(xq[12..64].iter().all(|&b| b == 0));
        assert_eq!(&xq[64..76], &[16, 0, 0, 0, 17, 0, 0, 0, 18, 0, 0, 0]);
        // Filter [1, -1, 0, 2, 3] against pixel 1: 1 - 5 + 0 + 26 + 51 = 73.
        let w = [1i8, -1, 0, 2, 3, 0, 0, 0];
        let mut c = [0.0; 3];
        gemm(&w, 8, &xq, 16, 3, &[0.5], &[1.0], &mut c, 3);
        assert_eq!(c[1], 73.0 * 0.5 + 1.0);
    }
}
