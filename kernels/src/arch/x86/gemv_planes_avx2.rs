//! The AVX2 GEMV for 4-bit indices: the 16-entry table as byte planes, looked up with `vpshufb`.
//!
//! AVX2's `vpermps` looks up 8 entries, so a 16-entry table took two of them and a blend on bit 3
//! per 8 weights, plus a shift to bring the next index down: on Zen 3, where `vpermps` issues once
//! a cycle and shifts share the two shuffle pipes, about 6 shuffle-pipe slots per 8 weights.
//! Here the table is split into four planes, plane `k` holding byte `k` of every entry (16
//! bytes, repeated in both 128-bit lanes), and 32 indices, one per byte, are looked up at once
//! with one `vpshufb` per plane; byte and word unpacks put each entry's four bytes back together
//! as 4 x 8 f32 weights: 3 shuffles per 8 weights (measured 1.7-1.9x faster at 4096 x 4096 on a
//! Zen 3). The unpacks work inside each 128-bit lane, so [`prepare`] gives the input the same
//! order.
//!
//! A 32-byte block holds 64 indices: its low nibbles are the even columns, its high nibbles the
//! odd ones, each spread one per byte by an AND (and a 16-bit shift for the high ones).

use std::arch::x86_64::*;

use super::bounds::{self, Span};
use super::gemv_wide::PREFETCH;
use crate::arch::{permute_each_block, row_table, tables_from};

/// Columns per block: 32 packed bytes.
const COLS: usize = 64;
/// Packed bytes per block.
const BYTES: usize = 32;

/// Writes `x` into `xp` in the order [`row_sum`] leaves the weights of a 64-column block: half
/// `h` (0: even columns, the low nibbles; 1: odd ones), vector `v`, lane `4 * l + t` holds the
/// index in byte `16 * l + 4 * v + t` of the block, column `2 * (16 * l + 4 * v + t) + h`. The
/// last, partial block is zero-padded when `xp` has room for it, and copied unchanged otherwise
/// (its columns then go through the path's `dot_packed`).
pub(super) fn prepare(x: &[f32], xp: &mut [f32]) {
    permute_each_block(x, xp, COLS, |src, dst| {
        for (c, &value) in src.iter().enumerate() {
            let (byte, h) = (c / 2, c % 2);
            let (l, v, t) = (byte / 16, byte % 16 / 4, byte % 4);
            dst[h * 32 + v * 8 + l * 4 + t] = value;
        }
    });
}

/// [`crate::arch::Isa::dot_packed_rows`] at 4 bits: each row's whole 64-column blocks (and a
/// partial last one when `xp` holds it zero-padded) through [`row_sum`], the rest through `dot`
/// (the path's one-row product). A shared table is split into planes once per call.
///
/// # Safety
/// AVX2 and FMA must be available; `luts` holds one table or one per row; `xp` is [`prepare`]'s
/// output for `x`.
pub(super) unsafe fn dot_rows(
    rows: &[&[u8]],
    luts: &[[f32; 256]],
    x: &[f32],
    xp: &[f32],
    out: &mut [f32],
    dot: fn(&[u8], u8, &[f32], &[f32]) -> f32,
) {
    let blocks = bounds::whole_blocks(rows, x.len(), COLS, BYTES);
    let tail = bounds::tail_bytes(rows, 4, x.len(), xp.len(), blocks, COLS, BYTES);
    let done = if tail > 0 { x.len() } else { blocks * COLS };
    let span = Span { blocks, tail };
    let shared = (luts.len() == 1).then(|| planes(&luts[0]));
    const CHUNK: usize = 64;
    for (c, (rows, out)) in rows.chunks(CHUNK).zip(out.chunks_mut(CHUNK)).enumerate() {
        let mut sums = [0.0f32; CHUNK];
        for (r, (row, sum)) in rows.iter().zip(&mut sums).enumerate() {
            let planes = shared.unwrap_or_else(|| self::planes(row_table(luts, c * CHUNK + r)));
            // SAFETY: the caller guarantees AVX2 + FMA; `whole_blocks` and `tail_bytes` guarantee
            // every row `blocks * 32 + tail` bytes and `xp` `(blocks + (tail > 0)) * 64` values.
            *sum = unsafe { row_sum(row, &planes, xp.as_ptr(), span) };
        }
        bounds::add_row_tails(dot, rows, 4, tables_from(luts, c * CHUNK), x, done, &sums, out);
    }
}

/// A 16-entry table's four byte planes: `planes[k][i]` is byte `k` (little-endian) of entry `i`.
fn planes(lut: &[f32; 256]) -> [[u8; 16]; 4] {
    let mut planes = [[0u8; 16]; 4];
    for (i, v) in lut[..16].iter().enumerate() {
        for (k, b) in v.to_le_bytes().into_iter().enumerate() {
            planes[k][i] = b;
        }
    }
    planes
}

/// One row's sum over the span: per 32-byte block one load, two nibble masks, eight plane
/// lookups, sixteen unpacks and eight FMAs.
///
/// # Safety
/// AVX2 and FMA must be available; `row` holds at least `span.blocks * 32 + span.tail` bytes and
/// `xp` at least `span.count() * 64` floats.
#[target_feature(enable = "avx2,fma")]
unsafe fn row_sum(row: &[u8], planes: &[[u8; 16]; 4], xp: *const f32, span: Span) -> f32 {
    // SAFETY: each plane is 16 bytes.
    let t: [__m256i; 4] = std::array::from_fn(|k| unsafe {
        _mm256_broadcastsi128_si256(_mm_loadu_si128(planes[k].as_ptr().cast()))
    });
    let low = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); 4];
    for blk in 0..span.count() {
        let at = blk * BYTES;
        // A row is one short stream (2 KiB at 4096 columns); fetch ahead, as the AVX-512 kernels do.
        _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(at + PREFETCH).cast());
        let packed = if blk < span.blocks {
            // SAFETY: the caller guarantees 32 readable bytes at `at` for whole blocks.
            unsafe { _mm256_loadu_si256(row.as_ptr().add(at).cast()) }
        } else {
            // AVX2 has no byte-masked load: the partial block's bytes go into a zeroed block,
            // whose missing indices read as 0 against `xp`'s zero padding.
            let mut last = [0u8; BYTES];
            last[..span.tail].copy_from_slice(&row[at..at + span.tail]);
            // SAFETY: `last` is 32 bytes.
            unsafe { _mm256_loadu_si256(last.as_ptr().cast()) }
        };
        let halves = [_mm256_and_si256(packed, low), _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low)];
        for (h, idx) in halves.into_iter().enumerate() {
            let p: [__m256i; 4] = std::array::from_fn(|k| _mm256_shuffle_epi8(t[k], idx));
            let (lo01, hi01) = (_mm256_unpacklo_epi8(p[0], p[1]), _mm256_unpackhi_epi8(p[0], p[1]));
            let (lo23, hi23) = (_mm256_unpacklo_epi8(p[2], p[3]), _mm256_unpackhi_epi8(p[2], p[3]));
            let w = [
                _mm256_unpacklo_epi16(lo01, lo23),
                _mm256_unpackhi_epi16(lo01, lo23),
                _mm256_unpacklo_epi16(hi01, hi23),
                _mm256_unpackhi_epi16(hi01, hi23),
            ];
            for (v, (acc, w)) in acc.iter_mut().zip(w).enumerate() {
                // SAFETY: the caller guarantees 64 floats of `xp` per block.
                let xv = unsafe { _mm256_loadu_ps(xp.add(blk * COLS + h * 32 + v * 8)) };
                *acc = _mm256_fmadd_ps(_mm256_castsi256_ps(w), xv, *acc);
            }
        }
    }
    super::avx2::hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
}
