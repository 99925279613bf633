//! The portable reference path: plain loops the compiler may auto-vectorise.

use super::{gemm_rows_fused_check, DepthwiseInPlace, DepthwisePlane, DepthwiseRows, FusedRows, Isa};

/// The scalar path's micro-kernels.
pub const ISA: Isa = Isa {
    name: "scalar",
    lanes: 1,
    gemm_rows,
    gemm_rows_at,
    gemm_rows_fused: Some(gemm_rows_fused),
    bf16: None,
    store_rows: super::epilogue::store_rows_plain,
    activate: super::epilogue::activate_plain,
    softmax_row: super::epilogue::softmax_plain,
    max_2x2,
    deinterleave,
    transpose,
    decode_nibbles,
    decode_packed: None,
    widen_f16,
    dot,
    dot_rows: None,
    axpy,
    mul,
    dot_packed,
    gemv_prepare,
    dot_packed_rows,
    dot_nibble_rows_f16: None,
    depthwise_rows,
    depthwise_s1: None,
    depthwise_s2: None,
    depthwise_plane: None,
    depthwise_3x3: None,
    depthwise_3x3_width: 0,
    depthwise_small: None,
    depthwise_interleaved: None,
    blocked: None,
    int8: Some(super::int8::SCALAR),
};

/// See [`Isa::widen_f16`]: the `half` crate's slice conversion (F16C or NEON where it finds them).
pub fn widen_f16(src: &[half::f16], dst: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    let n = src.len().min(dst.len());
    src[..n].convert_to_f32_slice(&mut dst[..n]);
}

/// See [`Isa::gemm_rows`].
pub fn gemm_rows(a: &[f32], k: usize, b: &[f32], ldb: usize, n: usize, c: &mut [f32], ldc: usize) {
    if k == 0 {
        return;
    }
    for (i, arow) in a.chunks_exact(k).enumerate() {
        let crow = &mut c[i * ldc..i * ldc + n];
        for (p, &w) in arow.iter().enumerate() {
            axpy(crow, w, &b[p * ldb..p * ldb + n]);
        }
    }
}

/// See [`Isa::gemm_rows_at`].
pub fn gemm_rows_at(a: &[f32], k: usize, b: &[f32], offs: &[usize], n: usize, c: &mut [f32], ldc: usize) {
    if k == 0 {
        return;
    }
    for (i, arow) in a.chunks_exact(k).enumerate() {
        let crow = &mut c[i * ldc..i * ldc + n];
        crow.fill(0.0);
        for (&w, &o) in arow.iter().zip(&offs[..k]) {
            axpy(crow, w, &b[o..o + n]);
        }
    }
}

/// See [`Isa::gemm_rows_fused`]: each row's sums in the order [`gemm_rows_at`] takes them, then
/// residual, bias and activation, as [`crate::Activation::store_rows`] applies them.
pub fn gemm_rows_fused(a: &[f32], k: usize, b: &[f32], offs: &[usize], n: usize, out: FusedRows<'_, '_>) {
    let Some(m) = gemm_rows_fused_check(a, k, b, offs, n, &out) else { return };
    for (r, arow) in a.chunks_exact(k).take(m).enumerate() {
        let row = &mut out.dst[r][out.col..out.col + n];
        row.fill(0.0);
        for (&w, &o) in arow.iter().zip(&offs[..k]) {
            axpy(row, w, &b[o..o + n]);
        }
        let bias = out.bias.map_or(0.0, |bias| bias[r]);
        let residual = out.residual.filter(|res| r < res.rows).map(|res| &res.data[r * res.pitch..][..n]);
        let act = out.act.of_row(r);
        for (j, y) in row.iter_mut().enumerate() {
            let mut v = *y;
            if let Some(res) = residual {
                v += res[j];
            }
            *y = act.apply(v + bias);
        }
    }
}

/// See [`Isa::max_2x2`].
pub fn max_2x2(r0: &[f32], r1: &[f32], out: &mut [f32]) {
    super::max_2x2_check(r0, r1, out);
    for ((y, a), b) in out.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
        *y = a[0].max(a[1]).max(b[0].max(b[1]));
    }
}

/// See [`Isa::deinterleave`].
pub fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    super::deinterleave_check(src, even, odd);
    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(src.chunks_exact(2)) {
        (*e, *o) = (pair[0], pair[1]);
    }
}

/// Side of the square blocks [`transpose`] copies: 8 rows of 8 columns, read from and written to
/// at most 8 cache lines each.
const TRANSPOSE_BLOCK: usize = 8;

/// See [`Isa::transpose`]: block by block, so that each block's reads and writes stay in a few
/// cache lines.
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    super::transpose_check(src, rows, cols, dst);
    transpose_part(src, rows, cols, 0..rows, 0..cols, dst);
}

/// [`transpose`] of the rows `rs` and columns `cs` of `src` only (the vector paths' edges), for
/// any element type (the runtime's structural ops move i64 shapes too): `dst[c * rows + r] =
/// src[r * cols + c]` for `r` in `rs`, `c` in `cs`.
///
/// # Panics
/// If `src` or `dst` is too short for those rows and columns.
pub fn transpose_part<T: Copy>(
    src: &[T],
    rows: usize,
    cols: usize,
    rs: std::ops::Range<usize>,
    cs: std::ops::Range<usize>,
    dst: &mut [T],
) {
    for r0 in rs.clone().step_by(TRANSPOSE_BLOCK) {
        let r1 = (r0 + TRANSPOSE_BLOCK).min(rs.end);
        for c0 in cs.clone().step_by(TRANSPOSE_BLOCK) {
            for c in c0..(c0 + TRANSPOSE_BLOCK).min(cs.end) {
                for (o, r) in dst[c * rows + r0..c * rows + r1].iter_mut().zip(r0..r1) {
                    *o = src[r * cols + c];
                }
            }
        }
    }
}

/// See [`Isa::decode_nibbles`]: two table lookups per byte.
pub fn decode_nibbles(packed: &[u8], lut: &[f32; 16], out: &mut [f32]) {
    let n = out.len();
    super::decode_nibbles_check(packed, out);
    let mut pairs = out.chunks_exact_mut(2);
    for (pair, &b) in (&mut pairs).zip(packed) {
        pair[0] = lut[(b & 15) as usize];
        pair[1] = lut[(b >> 4) as usize];
    }
    if let [last] = pairs.into_remainder() {
        *last = lut[(packed[n / 2] & 15) as usize];
    }
}

/// The reference of [`Isa::decode_packed`]: index by index, each read from the (at most) two
/// bytes it spans.
pub fn decode_packed(packed: &[u8], bits: u8, lut: &[f32], out: &mut [f32]) {
    super::decode_packed_check(packed, bits, lut, out);
    let b = bits as usize;
    let mask = (1u16 << b) - 1;
    for (i, o) in out.iter_mut().enumerate() {
        let (bit, at) = (i * b, i * b / 8);
        let pair = u16::from(packed[at]) | u16::from(*packed.get(at + 1).unwrap_or(&0)) << 8;
        *o = lut[usize::from(pair >> (bit % 8) & mask)];
    }
}

/// See [`Isa::depthwise_rows`]: row by row, tap by tap.
pub fn depthwise_rows(w: &[f32], b: &[f32], c: &mut [f32], s: DepthwiseRows) {
    if s.rows == 0 || s.n == 0 {
        return;
    }
    let filled = super::depthwise_rows_check(w, b, c, &s);
    for r in 0..s.rows {
        let crow = &mut c[r * s.ldc..][..s.n];
        if !s.accumulate {
            crow.fill(s.init);
        }
        if filled {
            for ky in 0..s.kh {
                for kx in 0..s.kw {
                    axpy(crow, w[ky * s.kw + kx], &b[(r + ky) * s.ldb + kx..][..s.n]);
                }
            }
        }
        if let Some([lo, hi]) = s.clamp {
            crow.iter_mut().for_each(|x| *x = x.max(lo).min(hi));
        }
    }
}

/// The reference of [`Isa::depthwise_s1`] (no scalar path uses it: without masked loads the
/// padded rows of [`Isa::depthwise_rows`] are faster).
pub fn depthwise_s1(w: &[f32], x: &[f32], y: &mut [f32], s: DepthwiseInPlace) {
    depthwise_in_place(1, w, x, y, s)
}

/// The reference of [`Isa::depthwise_s2`] (no scalar path uses it: without a SIMD kernel the
/// stride-phase planes are faster).
pub fn depthwise_s2(w: &[f32], x: &[f32], y: &mut [f32], s: DepthwiseInPlace) {
    depthwise_in_place(2, w, x, y, s)
}

/// [`depthwise_s1`] / [`depthwise_s2`] at `stride`.
fn depthwise_in_place(stride: usize, w: &[f32], x: &[f32], y: &mut [f32], s: DepthwiseInPlace) {
    if !super::depthwise_in_place_check(w, x, y, &s) {
        return;
    }
    // Input coordinate `stride * out + k - pad`, if inside `0..len`.
    let at = |out: usize, k: usize, pad: usize, len: usize| {
        (stride * out + k).checked_sub(pad).filter(|&i| i < len)
    };
    for (r, row) in y[..s.out_h * s.out_w].chunks_exact_mut(s.out_w).enumerate() {
        for (j, out) in row.iter_mut().enumerate() {
            let mut sum = s.init;
            for ky in 0..s.kh {
                for kx in 0..s.kw {
                    if let (Some(iy), Some(ix)) =
                        (at(r, ky, s.pad_top, s.in_h), at(j, kx, s.pad_left, s.in_w))
                    {
                        sum += w[ky * s.kw + kx] * x[iy * s.in_w + ix];
                    }
                }
            }
            *out = match s.clamp {
                Some([lo, hi]) => sum.max(lo).min(hi),
                None => sum,
            };
        }
    }
}

/// The reference of [`Isa::depthwise_plane`] (no scalar path uses it: without masked loads the
/// padded rows of [`Isa::depthwise_rows`] are faster).
pub fn depthwise_plane(
    w: &[f32],
    x: &[f32],
    y: &mut [f32],
    plane: &DepthwisePlane,
    init: f32,
    clamp: Option<[f32; 2]>,
) {
    plane.check(w, x, y);
    for (i, out) in y[..plane.len()].iter_mut().enumerate() {
        let (v, lane) = (i / super::PLANE_LANES, i % super::PLANE_LANES);
        let mut sum = init;
        for (t, &wt) in w[..plane.taps()].iter().enumerate() {
            if plane.masks(t)[v] >> lane & 1 == 1 {
                sum += wt * x[(i as isize + plane.offset(t)) as usize];
            }
        }
        *out = match clamp {
            Some([lo, hi]) => sum.max(lo).min(hi),
            None => sum,
        };
    }
}

/// See [`Isa::dot`].
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    s
}

/// See [`Isa::mul`].
pub fn mul(y: &mut [f32], x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y *= x;
    }
}

/// See [`Isa::axpy`].
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// See [`Isa::dot_packed`].
pub fn dot_packed(row: &[u8], bits: u8, lut: &[f32], x: &[f32]) -> f32 {
    let mask = (1u32 << bits) - 1;
    let mut acc = 0u32;
    let mut have = 0u32;
    let mut bytes = row.iter();
    let mut s = 0.0f32;
    for &xv in x {
        if have < bits as u32 {
            acc |= (*bytes.next().unwrap_or(&0) as u32) << have;
            have += 8;
        }
        s += lut[(acc & mask) as usize] * xv;
        acc >>= bits;
        have -= bits as u32;
    }
    s
}

/// See [`Isa::gemv_prepare`]: the scalar path reads `x` in its own order, so this is a copy.
pub fn gemv_prepare(_bits: u8, x: &[f32], xp: &mut [f32]) {
    xp[..x.len()].copy_from_slice(x);
}

/// See [`Isa::dot_packed_rows`]: [`dot_packed`] row by row (`xp` is not needed).
pub fn dot_packed_rows(
    rows: &[&[u8]],
    bits: u8,
    luts: &[[f32; 256]],
    x: &[f32],
    xp: &[f32],
    out: &mut [f32],
) {
    super::dot_packed_rows_check(rows, luts, x, xp, out);
    for (r, (row, o)) in rows.iter().zip(out.iter_mut()).enumerate() {
        let lut = super::row_table(luts, r);
        *o = dot_packed(row, bits, lut, x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_packed_matches_unpacked_dot() {
        for bits in 1..=8u8 {
            let n = 37;
            let lut: Vec<f32> = (0..1usize << bits).map(|i| i as f32 * 0.5 - 1.0).collect();
            let idx: Vec<usize> = (0..n).map(|i| (i * 7 + 3) % (1 << bits)).collect();
            let mut row = vec![0u8; (n * bits as usize).div_ceil(8)];
            for (i, &v) in idx.iter().enumerate() {
                for b in 0..bits as usize {
                    if v >> b & 1 == 1 {
                        let bit = i * bits as usize + b;
                        row[bit / 8] |= 1 << (bit % 8);
                    }
                }
            }
            let x: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.1).collect();
            let want: f32 = idx.iter().zip(&x).map(|(&i, &x)| lut[i] * x).sum();
            assert!((dot_packed(&row, bits, &lut, &x) - want).abs() < 1e-3, "bits {bits}");
        }
    }

    #[test]
    fn gemm_rows_matches_plain_loops() {
        let (m, k, n, ldb, ldc) = (3, 5, 7, 9, 8);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.25 - 1.0).collect();
        let b: Vec<f32> = (0..k * ldb).map(|i| (i % 11) as f32 - 5.0).collect();
        let mut c = vec![1.0f32; m * ldc];
        gemm_rows(&a, k, &b, ldb, n, &mut c, ldc);
        for i in 0..m {
            for j in 0..ldc {
                let want = if j < n {
                    1.0 + (0..k).map(|p| a[i * k + p] * b[p * ldb + j]).sum::<f32>()
                } else {
                    1.0
                };
                assert!((c[i * ldc + j] - want).abs() < 1e-4);
            }
        }
    }
}
