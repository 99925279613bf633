//! The int8 kernels ([`Int8Kernels`]) on NEON with FEAT_DotProd (`SDOT`), for the layout and
//! contracts of [`crate::arch::int8`].
//!
//! `gemm`: `SDOT` multiplies signed bytes by signed bytes, but the activations are u8. Every
//! activation byte is flipped to s8 with `x ^ 0x80` (= `x - 128`) as it is loaded, and the
//! `-128 * sum_p w[i][p]` this subtracts is added back per row at the end, so the i32 sums are
//! exact. A register block is 8 rows × 8 pixels: 16 i32x4 accumulators, 8 weight registers
//! (16 bytes = the 4-channel groups `g..g + 4` of one row, each group picked by `SDOT`'s lane
//! index) and 2 activation registers (4 pixels × 4 channels each).
//!
//! `dot_nibbles`: per 64 packed bytes of a row, `TBL` looks the low and the high nibbles up in
//! the row's 16-byte table, and `SDOT` multiplies the looked-up weights with the even and the odd
//! halves of the prepared s8 input block (each input load shared by up to 4 rows). The tables
//! hold `w + 128` as u8; flipping their top bit once per call (`^ 0x80`) gives `w` as s8, and the
//! `128 * sum_i x(i)` this takes off every row is added back at the end (summed once per call).
//!
//! The `SDOT` intrinsics (`vdotq_laneq_s32`) are still unstable (`stdarch_neon_dotprod`, rustc
//! 1.96), so the instruction is written with `asm!`; the `dotprod` target feature is stable and
//! lets the assembler accept it inside `#[target_feature(enable = "dotprod")]` functions.

use super::super::int8::{
    dot_nibbles_check, gemm_check, gemm_fused_check, min_max_check, quantize_check, Int8ConvKernels,
    Int8Kernels, U8Range, NIBBLE_BLOCK,
};
use crate::arch::fused_parts::{Epilogue, SumsSink};
use crate::arch::FusedRows;
use std::arch::aarch64::*;
use std::arch::asm;

/// The NEON + dotprod int8 kernels. Only [`super::neon`] hands them out, after detecting dotprod.
pub(super) const KERNELS: Int8Kernels = Int8Kernels {
    conv: Some(Int8ConvKernels { min_max, quantize, gemm, gemm_fused: Some(gemm_fused) }),
    dot_nibbles: Some(dot_nibbles),
};

/// Rows of `w` (and `c`) one `gemm` register block covers.
const MR: usize = 8;
/// 4-pixel vectors one `gemm` register block covers.
const NV: usize = 2;

/// See [`Int8ConvKernels::min_max`].
fn min_max(x: &[f32], offs: &[usize], n: usize) -> [f32; 2] {
    if !min_max_check(x, offs, n) {
        return [0.0, 0.0];
    }
    // SAFETY: NEON was detected before this table was handed out (`super::neon`).
    unsafe { min_max_neon(x, offs, n) }
}

/// [`min_max`] on checked operands, 8 values at a time in two pairs of accumulators.
#[target_feature(enable = "neon")]
fn min_max_neon(x: &[f32], offs: &[usize], n: usize) -> [f32; 2] {
    // FMINNM / FMAXNM return the number when one operand is a quiet NaN, like `f32::min`/`max`.
    let (mut lo, mut hi) = ([vdupq_n_f32(f32::INFINITY); 2], [vdupq_n_f32(f32::NEG_INFINITY); 2]);
    let (mut lo_s, mut hi_s) = (f32::INFINITY, f32::NEG_INFINITY);
    for &o in offs {
        let row = &x[o..o + n];
        let mut chunks = row.chunks_exact(8);
        for chunk in &mut chunks {
            // SAFETY: `chunk` holds 8 floats, 4 per load.
            let (a, b) = unsafe { (vld1q_f32(chunk.as_ptr()), vld1q_f32(chunk.as_ptr().add(4))) };
            (lo[0], hi[0]) = (vminnmq_f32(lo[0], a), vmaxnmq_f32(hi[0], a));
            (lo[1], hi[1]) = (vminnmq_f32(lo[1], b), vmaxnmq_f32(hi[1], b));
        }
        for &v in chunks.remainder() {
            (lo_s, hi_s) = (lo_s.min(v), hi_s.max(v));
        }
    }
    let lo = vminnmvq_f32(vminnmq_f32(lo[0], lo[1])).min(lo_s);
    let hi = vmaxnmvq_f32(vmaxnmq_f32(hi[0], hi[1])).max(hi_s);
    [lo, hi]
}

/// See [`Int8ConvKernels::quantize`].
fn quantize(x: &[f32], offs: &[usize], n: usize, range: U8Range, xq: &mut [u8], ldx: usize) {
    quantize_check(x, offs, n, xq, ldx);
    if ldx == 0 {
        return; // `n == 0` too: no bytes in the layout (and `chunks_exact_mut(0)` would panic).
    }
    for (chans, dst) in offs.chunks(4).zip(xq.chunks_exact_mut(ldx * 4)) {
        let row = |t: usize| &x[chans[t]..][..n];
        // SAFETY: NEON was detected before this table was handed out (`super::neon`).
        unsafe {
            match chans.len() {
                4 => quantize_group([row(0), row(1), row(2), row(3)], range, dst),
                3 => quantize_group([row(0), row(1), row(2)], range, dst),
                2 => quantize_group([row(0), row(1)], range, dst),
                _ => quantize_group([row(0)], range, dst),
            }
        }
    }
}

/// One group of the layout (`dst`, `ldx * 4` bytes): channels `rows` (`C <= 4`, the rest zero) of
/// `n = rows[0].len()` pixels, then zeros up to `ldx` pixels.
#[target_feature(enable = "neon")]
fn quantize_group<const C: usize>(rows: [&[f32]; C], range: U8Range, dst: &mut [u8]) {
    let n = rows[0].len();
    assert!(C <= 4 && rows.iter().all(|r| r.len() == n) && dst.len() >= n * 4);
    let (lo, inv_step) = (vdupq_n_f32(range.lo), vdupq_n_f32(range.inv_step));
    let (zero, max) = (vdupq_n_s32(0), vdupq_n_s32(255));
    let mut j = 0;
    while j + 4 <= n {
        // Channel t's 4 pixels, as u32 lanes holding 0..=255.
        let mut q = [vdupq_n_u32(0); 4];
        for (qt, row) in q.iter_mut().zip(&rows) {
            // SAFETY: `j + 4 <= n`, the row's length.
            let v = unsafe { vld1q_f32(row.as_ptr().add(j)) };
            // Subtract, then multiply (no FMA), and round half to even, as `U8Range::quantize`
            // does; FCVTNS saturates and maps NaN to 0, so the clamp gives the reference's byte.
            let i = vcvtnq_s32_f32(vmulq_f32(vsubq_f32(v, lo), inv_step));
            *qt = vreinterpretq_u32_s32(vminq_s32(vmaxq_s32(i, zero), max));
        }
        // Each pixel's word holds its 4 channel bytes, channel t in byte t (little-endian).
        let word = vsliq_n_u32::<24>(vsliq_n_u32::<16>(vsliq_n_u32::<8>(q[0], q[1]), q[2]), q[3]);
        // SAFETY: pixels `j..j + 4` are bytes `4j..4j + 16` of `dst`, which holds `4n`.
        unsafe { vst1q_u8(dst.as_mut_ptr().add(j * 4), vreinterpretq_u8_u32(word)) };
        j += 4;
    }
    for (j, px) in dst[..n * 4].chunks_exact_mut(4).enumerate().skip(j) {
        px.fill(0);
        for (b, row) in px.iter_mut().zip(&rows) {
            *b = range.quantize(row[j]);
        }
    }
    dst[n * 4..].fill(0);
}

/// See [`Int8ConvKernels::gemm`].
#[allow(clippy::too_many_arguments)]
fn gemm(
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
    // SAFETY: NEON and dotprod were detected before these kernels were put in the table
    // (`super::neon`). The check asserted `m * kq` weights, `kq / 4` groups of `ldx` pixels in
    // `xq` (`ldx` a multiple of 16 and at least `n`, so the 8-pixel blocks `gemm_block` reads end
    // within it), `m` scales and offsets, and `m` rows of `n` outputs `ldc` apart in `c`
    // (disjoint when `m > 1`), which the shared borrows cannot overlap.
    unsafe {
        let sink = SumsSink::Plain(c.as_mut_ptr(), ldc);
        gemm_blocks(w.as_ptr(), kq, m, xq.as_ptr(), ldx, n, mul.as_ptr(), add.as_ptr(), sink)
    }
}

/// See [`Int8ConvKernels::gemm_fused`]: the register blocks of [`gemm`], each row's scaled sums
/// handed to the f32 fused kernel's epilogue (residual, bias, activation, store) in registers.
#[allow(clippy::too_many_arguments)]
fn gemm_fused(
    w: &[i8],
    kq: usize,
    xq: &[u8],
    ldx: usize,
    n: usize,
    mul: &[f32],
    add: &[f32],
    out: FusedRows<'_, '_>,
) {
    let Some(m) = gemm_fused_check(w, kq, xq, ldx, n, mul, add, &out) else { return };
    // SAFETY: as in `gemm`, with `out`'s rows (and their biases, slopes and residual values)
    // checked for `m` rows of `n` columns in place of `c`.
    unsafe {
        let sink = SumsSink::Fused(Epilogue::new(out));
        gemm_blocks(w.as_ptr(), kq, m, xq.as_ptr(), ldx, n, mul.as_ptr(), add.as_ptr(), sink)
    }
}

/// All `m` rows, in blocks of [`MR`] and one block of the remainder.
///
/// # Safety
/// As [`gemm_block`], for `m` rows.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon,dotprod")]
unsafe fn gemm_blocks(
    w: *const i8,
    kq: usize,
    m: usize,
    xq: *const u8,
    ldx: usize,
    n: usize,
    mul: *const f32,
    add: *const f32,
    sink: SumsSink<'_>,
) {
    let mut i = 0;
    // SAFETY: every block's rows `i..i + R` are below `m` (the caller's bounds).
    unsafe {
        let block = |i: usize| (w.add(i * kq), mul.add(i), add.add(i));
        while i + MR <= m {
            let (w, mul, add) = block(i);
            gemm_block::<MR>(w, kq, xq, ldx, n, mul, add, sink, i);
            i += MR;
        }
        let (w, mul, add) = block(i);
        match m - i {
            7 => gemm_block::<7>(w, kq, xq, ldx, n, mul, add, sink, i),
            6 => gemm_block::<6>(w, kq, xq, ldx, n, mul, add, sink, i),
            5 => gemm_block::<5>(w, kq, xq, ldx, n, mul, add, sink, i),
            4 => gemm_block::<4>(w, kq, xq, ldx, n, mul, add, sink, i),
            3 => gemm_block::<3>(w, kq, xq, ldx, n, mul, add, sink, i),
            2 => gemm_block::<2>(w, kq, xq, ldx, n, mul, add, sink, i),
            1 => gemm_block::<1>(w, kq, xq, ldx, n, mul, add, sink, i),
            _ => {}
        }
    }
}

/// `R` rows of the GEMM, 8 pixels (`NV` vectors) at a time over all `kq / 4` groups.
///
/// Whole 8-pixel blocks are computed up to `n` rounded up (the padding pixels are zeros up to
/// `ldx`, a multiple of 16), but only pixels `j < n` are stored.
///
/// # Safety
/// NEON and dotprod available; `w` holds `R * kq` weights (`kq` a multiple of 4); `xq` holds
/// `kq / 4` groups of `ldx * 4` bytes with `n <= ldx` and `ldx` a multiple of 8; `mul` and `add`
/// hold `R` floats; `sink` holds rows `i0 .. i0 + R` of `n` floats, not overlapping the inputs.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon,dotprod")]
unsafe fn gemm_block<const R: usize>(
    w: *const i8,
    kq: usize,
    xq: *const u8,
    ldx: usize,
    n: usize,
    mul: *const f32,
    add: *const f32,
    sink: SumsSink<'_>,
    i0: usize,
) {
    let groups = kq / 4;
    // SAFETY: the caller's bounds: rows `r < R` of `kq` weights, 8-pixel blocks starting below
    // `n` end within `ldx` (a multiple of 8), and `R` scales, offsets and rows of the sink.
    unsafe {
        // `128 * sum_p w[r][p]`: what flipping the activations to `x - 128` took off each sum.
        let mut bias = [0i32; R];
        for (r, b) in bias.iter_mut().enumerate() {
            *b = 128 * row_sum(std::slice::from_raw_parts(w.add(r * kq), kq));
        }
        let flip = vdupq_n_u8(0x80);
        let mut j = 0;
        while j < n {
            let mut acc = [[vdupq_n_s32(0); NV]; R];
            let mut xp = xq.add(j * 4);
            let mut g = 0;
            // 4 groups per weight load: 16 bytes of each row, one `SDOT` lane per group.
            while g + 4 <= groups {
                let mut wv = [vdupq_n_s8(0); R];
                for (r, v) in wv.iter_mut().enumerate() {
                    *v = vld1q_s8(w.add(r * kq + 4 * g));
                }
                dot_group::<0, R>(&mut acc, xp, &wv, flip);
                dot_group::<1, R>(&mut acc, xp.add(ldx * 4), &wv, flip);
                dot_group::<2, R>(&mut acc, xp.add(ldx * 8), &wv, flip);
                dot_group::<3, R>(&mut acc, xp.add(ldx * 12), &wv, flip);
                xp = xp.add(ldx * 16);
                g += 4;
            }
            // The last `groups % 4`: one 4-byte word per row in lane 0 (a 16-byte load could run
            // past the last row).
            while g < groups {
                let mut wv = [vdupq_n_s8(0); R];
                for (r, v) in wv.iter_mut().enumerate() {
                    let word = w.add(r * kq + 4 * g).cast::<i32>().read_unaligned();
                    *v = vreinterpretq_s8_s32(vdupq_n_s32(word));
                }
                dot_group::<0, R>(&mut acc, xp, &wv, flip);
                xp = xp.add(ldx * 4);
                g += 1;
            }
            for (r, row) in acc.iter().enumerate() {
                let (scale, offset, b) =
                    (vdupq_n_f32(*mul.add(r)), vdupq_n_f32(*add.add(r)), vdupq_n_s32(bias[r]));
                // Multiply, then add, like the reference (no FMA: bit-identical results).
                let y = row.map(|a| vaddq_f32(vmulq_f32(vcvtq_f32_s32(vaddq_s32(a, b)), scale), offset));
                match sink {
                    SumsSink::Plain(c, ldc) => {
                        for (v, y) in y.into_iter().enumerate() {
                            let col = j + 4 * v;
                            if col >= n {
                                break;
                            }
                            let out = c.add((i0 + r) * ldc + col);
                            if col + 4 <= n {
                                vst1q_f32(out, y);
                            } else {
                                // Pixels past `n` in `c` are not ours to write.
                                let mut lanes = [0.0f32; 4];
                                vst1q_f32(lanes.as_mut_ptr(), y);
                                std::ptr::copy_nonoverlapping(lanes.as_ptr(), out, n - col);
                            }
                        }
                    }
                    // The epilogue stores only the live lanes of the last live vector.
                    SumsSink::Fused(e) if n - j > 4 => e.finish::<NV>(i0 + r, j, y, (n - j - 4).min(4)),
                    SumsSink::Fused(e) => e.finish::<1>(i0 + r, j, [y[0]], n - j),
                }
            }
            j += 4 * NV;
        }
    }
}

/// `acc[r][v] += sdot(x[v] ^ 0x80, lane L of w[r])` for the [`NV`] 4-pixel vectors of one group
/// at `xp`: each i32 lane (a pixel) gains its 4 channels times row `r`'s 4 weights of the group.
///
/// # Safety
/// `xp` points to `NV * 16` readable bytes.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_group<const L: u32, const R: usize>(
    acc: &mut [[int32x4_t; NV]; R],
    xp: *const u8,
    w: &[int8x16_t; R],
    flip: uint8x16_t,
) {
    let mut x = [vdupq_n_s8(0); NV];
    for (v, xv) in x.iter_mut().enumerate() {
        // SAFETY: vector `v` is bytes `16v..16v + 16` of the caller's `NV * 16`.
        *xv = vreinterpretq_s8_u8(veorq_u8(unsafe { vld1q_u8(xp.add(16 * v)) }, flip));
    }
    for (row, &wr) in acc.iter_mut().zip(w) {
        for (a, &xv) in row.iter_mut().zip(&x) {
            *a = sdot_lane::<L>(*a, xv, wr);
        }
    }
}

/// `SDOT acc.4s, x.16b, w.4b[L]`: lane `i` of `acc` plus the dot product of bytes `4i..4i + 4`
/// of `x` with bytes `4L..4L + 4` of `w`, all signed.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn sdot_lane<const L: u32>(mut acc: int32x4_t, x: int8x16_t, w: int8x16_t) -> int32x4_t {
    // SAFETY: dotprod is enabled for this function, so callers run on a CPU with `SDOT`; the
    // instruction only reads and writes the named vector registers (no memory, no flags).
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {x:v}.16b, {w:v}.4b[{lane}]",
            acc = inout(vreg) acc,
            x = in(vreg) x,
            w = in(vreg) w,
            lane = const L,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// `SDOT acc.4s, a.16b, b.16b`: lane `i` of `acc` plus the dot product of bytes `4i..4i + 4` of
/// `a` and `b`, all signed.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: dotprod is enabled for this function, so callers run on a CPU with `SDOT`; the
    // instruction only reads and writes the named vector registers (no memory, no flags).
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// Rows [`dot_nibbles`] takes together, sharing each load of the prepared input.
const NIBBLE_ROWS: usize = 4;

/// Packed bytes of a row per [`NIBBLE_BLOCK`] activations.
const NIBBLE_BYTES: usize = NIBBLE_BLOCK / 2;

/// See [`Int8Kernels::dot_nibbles`].
fn dot_nibbles(rows: &[&[u8]], tables: &[[u8; 16]], xp: &[i8], k: usize, out: &mut [i32]) {
    dot_nibbles_check(rows, tables, xp, k, out);
    let xp = &xp[..k.next_multiple_of(NIBBLE_BLOCK)];
    // SAFETY: NEON and dotprod were detected before these kernels were put in the table
    // (`super::neon`).
    let bias = unsafe { input_sum(xp) }.wrapping_mul(128);
    for ((rows, tables), out) in
        rows.chunks(NIBBLE_ROWS).zip(tables.chunks(NIBBLE_ROWS)).zip(out.chunks_mut(NIBBLE_ROWS))
    {
        // SAFETY: as above (the kernels index the checked slices with bounds checks).
        unsafe {
            match rows.len() {
                4 => dot_nibbles_rows::<4>(rows, tables, xp, k, bias, out),
                3 => dot_nibbles_rows::<3>(rows, tables, xp, k, bias, out),
                2 => dot_nibbles_rows::<2>(rows, tables, xp, k, bias, out),
                _ => dot_nibbles_rows::<1>(rows, tables, xp, k, bias, out),
            }
        }
    }
}

/// The sum of the prepared input `xp` (a whole number of blocks), 16 values per `SDOT` by ones.
#[target_feature(enable = "neon,dotprod")]
fn input_sum(xp: &[i8]) -> i32 {
    let ones = vdupq_n_s8(1);
    let mut acc = vdupq_n_s32(0);
    let mut chunks = xp.chunks_exact(16);
    for chunk in &mut chunks {
        // SAFETY: `chunk` holds 16 bytes.
        acc = sdot(acc, unsafe { vld1q_s8(chunk.as_ptr()) }, ones);
    }
    chunks.remainder().iter().fold(vaddvq_s32(acc), |s, &v| s.wrapping_add(i32::from(v)))
}

/// `R` rows of [`dot_nibbles`] (`out[r]` for `r < R`) on checked operands, `bias` being
/// `128 * sum(xp)`: whole blocks of [`NIBBLE_BYTES`] straight from the rows, then the partial last
/// block (the bytes up to `k.div_ceil(2)`) from zeroed copies. A zero byte looks up table entry 0
/// twice, but the activations it meets are the layout's zero padding past `k`, so it adds nothing.
///
/// # Panics
/// If `rows`, `tables` or `out` hold fewer than `R` entries, a row fewer than `k.div_ceil(2)`
/// bytes, or `xp` fewer than `k.next_multiple_of(NIBBLE_BLOCK)` values.
#[target_feature(enable = "neon,dotprod")]
fn dot_nibbles_rows<const R: usize>(
    rows: &[&[u8]],
    tables: &[[u8; 16]],
    xp: &[i8],
    k: usize,
    bias: i32,
    out: &mut [i32],
) {
    let bytes = k.div_ceil(2);
    let (full, tail) = (bytes / NIBBLE_BYTES, bytes % NIBBLE_BYTES);
    let flip = vdupq_n_u8(0x80);
    let mut table = [vdupq_n_s8(0); R];
    for (t, src) in table.iter_mut().zip(&tables[..R]) {
        // SAFETY: a table holds 16 bytes. `(w + 128) ^ 0x80` is `w`'s s8 bit pattern.
        *t = vreinterpretq_s8_u8(veorq_u8(unsafe { vld1q_u8(src.as_ptr()) }, flip));
    }
    let x_block =
        |b: usize| -> &[i8; NIBBLE_BLOCK] { xp[b * NIBBLE_BLOCK..][..NIBBLE_BLOCK].try_into().unwrap() };
    // Two accumulators per row: the low nibbles (even activations) and the high ones (odd).
    let mut acc = [[vdupq_n_s32(0); 2]; R];
    for b in 0..full {
        let packed: [&[u8; NIBBLE_BYTES]; R] =
            std::array::from_fn(|r| rows[r][b * NIBBLE_BYTES..][..NIBBLE_BYTES].try_into().unwrap());
        nibble_block(&mut acc, &table, packed, x_block(b));
    }
    if tail > 0 {
        let mut copies = [[0u8; NIBBLE_BYTES]; R];
        for (copy, row) in copies.iter_mut().zip(&rows[..R]) {
            copy[..tail].copy_from_slice(&row[full * NIBBLE_BYTES..bytes]);
        }
        nibble_block(&mut acc, &table, std::array::from_fn(|r| &copies[r]), x_block(full));
    }
    for (o, [lo, hi]) in out[..R].iter_mut().zip(acc) {
        *o = vaddvq_s32(vaddq_s32(lo, hi)).wrapping_add(bias);
    }
}

/// One block: `acc[r][0] += sdot(table[r][low nibbles], even x)` and `acc[r][1] +=
/// sdot(table[r][high nibbles], odd x)` over the 64 bytes of `packed[r]` for every `r < R`, 16
/// bytes at a time, each load of `x` (the block's 64 even then 64 odd activations) shared by the
/// `R` rows.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn nibble_block<const R: usize>(
    acc: &mut [[int32x4_t; 2]; R],
    table: &[int8x16_t; R],
    packed: [&[u8; NIBBLE_BYTES]; R],
    x: &[i8; NIBBLE_BLOCK],
) {
    let low = vdupq_n_u8(0x0F);
    for q in (0..NIBBLE_BYTES).step_by(16) {
        // SAFETY: `q + 16 <= NIBBLE_BYTES`, so both loads lie within the block's 128 values.
        let (even, odd) =
            unsafe { (vld1q_s8(x.as_ptr().add(q)), vld1q_s8(x.as_ptr().add(NIBBLE_BYTES + q))) };
        for ((a, &t), p) in acc.iter_mut().zip(table).zip(packed) {
            // SAFETY: bytes `q..q + 16` of the row's 64.
            let p = unsafe { vld1q_u8(p.as_ptr().add(q)) };
            // `TBL` gives 0 for indices past 15; both nibbles are at most 15.
            let w_lo = vqtbl1q_s8(t, vandq_u8(p, low));
            let w_hi = vqtbl1q_s8(t, vshrq_n_u8::<4>(p));
            a[0] = sdot(a[0], w_lo, even);
            a[1] = sdot(a[1], w_hi, odd);
        }
    }
}

/// The sum of a row of weights, 16 at a time (`SADDLV`: at most 16 × 128 fits its i16).
#[target_feature(enable = "neon")]
fn row_sum(w: &[i8]) -> i32 {
    let mut chunks = w.chunks_exact(16);
    let mut s = 0i32;
    for chunk in &mut chunks {
        // SAFETY: `chunk` holds 16 bytes.
        s += i32::from(vaddlvq_s8(unsafe { vld1q_s8(chunk.as_ptr()) }));
    }
    s + chunks.remainder().iter().map(|&v| i32::from(v)).sum::<i32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::int8;
    use crate::testutil::Rng;

    /// The convolution kernels, where this CPU has dotprod (`None` elsewhere: nothing to test).
    fn kernels() -> Option<Int8ConvKernels> {
        super::super::neon().and_then(|isa| isa.int8?.conv)
    }

    #[test]
    fn special_values_quantize_and_scan_like_the_reference() {
        let Some(kern) = kernels() else { return };
        // Ties, NaNs, infinities and values far outside the range, in the vector body and tail.
        let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30, 0.5, 1.5, 2.5, -0.0, 254.5];
        let x: Vec<f32> = (0..7 * 13).map(|i| specials[i % specials.len()] + (i / 40) as f32).collect();
        let offs: Vec<usize> = (0..7).map(|p| p * 13).collect();
        for n in [0, 1, 4, 7, 13] {
            let (want, got) = (int8::min_max(&x, &offs, n), (kern.min_max)(&x, &offs, n));
            assert_eq!(got, want, "min_max n {n}");
            for range in [U8Range { lo: 0.0, inv_step: 1.0 }, U8Range::new(-3.0, 7.0), U8Range::new(1.0, 1.0)]
            {
                let ldx = n.next_multiple_of(16);
                let (mut want, mut got) = (vec![9u8; 2 * ldx * 4 + 5], vec![9u8; 2 * ldx * 4 + 5]);
                int8::quantize(&x, &offs, n, range, &mut want, ldx);
                (kern.quantize)(&x, &offs, n, range, &mut got, ldx);
                assert_eq!(got, want, "quantize n {n} {range:?}");
            }
        }
    }

    #[test]
    fn extreme_operands_sum_exactly_over_deep_rows() {
        let Some(kern) = kernels() else { return };
        let mut rng = Rng::new(5);
        let (m, kq, n, ldx) = (13, 1028, 21, 32);
        // Mostly the extremes (-128, 127; 0, 255), where a flip or a row sum off by one shows.
        let w: Vec<i8> = (0..m * kq).map(|_| [-128, 127, -1, 0, 1][rng.below(5)]).collect();
        let xq: Vec<u8> = (0..kq * ldx).map(|_| [0, 255, 128, 127][rng.below(4)]).collect();
        let (mul, add) = (vec![1.0; m], vec![0.0; m]);
        let ldc = n + 3;
        let (mut want, mut got) = (vec![0.5; m * ldc], vec![0.5; m * ldc]);
        int8::gemm(&w, kq, &xq, ldx, n, &mul, &add, &mut want, ldc);
        (kern.gemm)(&w, kq, &xq, ldx, n, &mul, &add, &mut got, ldc);
        // The same exact i32 sums, converted alike and scaled by 1 + 0: equal bit for bit.
        assert_eq!(got, want);
    }

    #[test]
    fn nibble_rows_of_extreme_entries_sum_exactly_up_to_their_last_byte() {
        let Some(dot) = super::super::neon().and_then(|isa| isa.int8?.dot_nibbles) else { return };
        let mut rng = Rng::new(9);
        // Depths ending on a block, mid-block and mid-byte; rows exactly `k.div_ceil(2)` long (a
        // read past the last byte panics); tables and inputs at the extremes (0, 255; ±127).
        for k in [1usize, 2, 127, 128, 129, 255, 256, 3001] {
            for m in [1, 4, 5, 8] {
                let xp: Vec<i8> = (0..k.next_multiple_of(NIBBLE_BLOCK))
                    .map(|i| {
                        let pos = i / NIBBLE_BLOCK * NIBBLE_BLOCK
                            + 2 * (i % (NIBBLE_BLOCK / 2))
                            + i % NIBBLE_BLOCK / (NIBBLE_BLOCK / 2);
                        if pos < k {
                            [-127, 127, 0, 1][rng.below(4)]
                        } else {
                            0
                        }
                    })
                    .collect();
                let rows: Vec<Vec<u8>> =
                    (0..m).map(|_| (0..k.div_ceil(2)).map(|_| rng.below(256) as u8).collect()).collect();
                let rows: Vec<&[u8]> = rows.iter().map(|r| &r[..]).collect();
                let tables: Vec<[u8; 16]> =
                    (0..m).map(|_| std::array::from_fn(|_| [0, 255, 128, 127][rng.below(4)])).collect();
                let (mut want, mut got) = (vec![7; m + 1], vec![7; m + 1]);
                int8::dot_nibbles(&rows, &tables, &xp, k, &mut want);
                dot(&rows, &tables, &xp, k, &mut got);
                assert_eq!(got, want, "k {k} m {m}");
            }
        }
    }
}
