//! The AVX-512 VBMI GEMV for 5- to 8-bit indices: tables as byte planes.
//!
//! A table of 32-256 f32 entries does not fit the one or two registers `vpermps` / `vpermt2ps`
//! look up in, and a cascade of them costs a shuffle per 32 entries per 16 weights. Instead the
//! table is split into four planes, plane `k` holding byte `k` of every entry, and 64 weights are
//! looked up at once with byte shuffles: `vpermb` reads a 64-entry plane from one register (5 and
//! 6 bits), `vpermi2b` a 128-entry plane from two (7 bits), and two of those with a blend on the
//! index's top bit a 256-entry plane (8 bits). Byte unpacks then put the four bytes of each entry
//! back together as 4 x 16 f32 weights, in an order that [`prepare`] gives the input too.
//!
//! Indices narrower than a byte are first spread one per byte: `vpermb` gives each quadword of
//! the register the 8 bytes starting where its 8 indices start (index `8q + j` of a 64-index
//! block begins at bit `(8q + j) * bits`, inside bytes `q * bits .. q * bits + bits`), and
//! `vpmultishiftqb` takes from each quadword the 8 bits at offset `j * bits` into byte `j`.

use std::arch::x86_64::*;

use super::bounds::{self, Span};
use crate::arch::{permute_each_block, row_table};

/// Indices (columns) per block: one register of index bytes.
const COLS: usize = 64;

/// Bytes ahead of the block being read that the GEMV kernels ask the cache to fetch. At 4096 x
/// 4096, 1 KiB against 4 was measured at 6 and 8 bits (8 bits 1.6-1.9 -> 0.8-1.0 ms), 4 against
/// 8 at 5 and 8 bits (4 slightly faster).
pub(super) const PREFETCH: usize = 4096;

/// Writes `x` into `xp` in the order the kernel's unpacks leave the weights of a 64-column block:
/// vector `v`, lane `4 * l + t` holds column `16 * l + 4 * v + t` (the unpacks work inside each
/// 128-bit lane). The last, partial block is zero-padded when `xp` has room for it, and copied
/// unchanged otherwise (its columns then go through the path's `dot_packed`).
pub(super) fn prepare(x: &[f32], xp: &mut [f32]) {
    permute_each_block(x, xp, COLS, |src, dst| {
        for (c, &v) in src.iter().enumerate() {
            let (l, v4, t) = (c / 16, c % 16 / 4, c % 4);
            dst[v4 * 16 + l * 4 + t] = v;
        }
    });
}

/// [`crate::arch::Isa::dot_packed_rows`] at 5 to 8 bits: each row's whole 64-column blocks (and
/// a partial last one when `xp` holds it zero-padded) through [`row_sum`], the rest through
/// `dot` (the path's one-row product). A shared table is split into planes once per call.
///
/// # Safety
/// AVX-512 F, BW and VBMI must be available; `bits` is 5..=8; `luts` holds one table or one per
/// row; `xp` is [`prepare`]'s output for `x`.
pub(super) unsafe fn dot_rows(
    rows: &[&[u8]],
    bits: u8,
    luts: &[[f32; 256]],
    x: &[f32],
    xp: &[f32],
    out: &mut [f32],
    dot: fn(&[u8], u8, &[f32], &[f32]) -> f32,
) {
    let bytes = 8 * bits as usize;
    let blocks = bounds::whole_blocks(rows, x.len(), COLS, bytes);
    let tail = bounds::tail_bytes(rows, bits, x.len(), xp.len(), blocks, COLS, bytes);
    let done = if tail > 0 { x.len() } else { blocks * COLS };
    // SAFETY (for every `row_sum` below): the caller guarantees AVX-512 F/BW/VBMI and bits
    // 5..=8; `whole_blocks` and `tail_bytes` guarantee every row `blocks * bytes + tail` bytes
    // and `xp` `(blocks + (tail > 0)) * 64` values.
    let span = Span { blocks, tail };
    let shared = (luts.len() == 1).then(|| Planes::new(&luts[0], bits));
    const CHUNK: usize = 64;
    for (c, (rows, out)) in rows.chunks(CHUNK).zip(out.chunks_mut(CHUNK)).enumerate() {
        let mut sums = [0.0f32; CHUNK];
        for (r, (row, sum)) in rows.iter().zip(&mut sums).enumerate() {
            let own;
            let planes = match &shared {
                Some(p) => p,
                None => {
                    own = Planes::new(row_table(luts, c * CHUNK + r), bits);
                    &own
                }
            };
            *sum = unsafe {
                match bits {
                    5 => row_sum::<5>(row, planes, xp.as_ptr(), span),
                    6 => row_sum::<6>(row, planes, xp.as_ptr(), span),
                    7 => row_sum::<7>(row, planes, xp.as_ptr(), span),
                    _ => row_sum::<8>(row, planes, xp.as_ptr(), span),
                }
            };
        }
        let luts = crate::arch::tables_from(luts, c * CHUNK);
        bounds::add_row_tails(dot, rows, bits, luts, x, done, &sums, out);
    }
}

/// A table's four byte planes, each 256 bytes (entries past the table's `2^bits` are zero).
struct Planes([[u8; 256]; 4]);

impl Planes {
    fn new(lut: &[f32; 256], bits: u8) -> Self {
        let mut planes = [[0u8; 256]; 4];
        for (i, v) in lut[..1 << bits].iter().enumerate() {
            for (k, b) in v.to_le_bytes().into_iter().enumerate() {
                planes[k][i] = b;
            }
        }
        Planes(planes)
    }
}

/// One row's sum over the span: per 64-column block one load of index bytes, spread to one index
/// per byte (below 8 bits), four plane lookups, eight unpacks and four FMAs.
///
/// # Safety
/// AVX-512 F, BW and VBMI must be available; `row` holds at least `span.blocks * 8 * B +
/// span.tail` bytes and `xp` at least `span.count() * 64` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn row_sum<const B: usize>(row: &[u8], planes: &Planes, xp: *const f32, span: Span) -> f32 {
    // Quadword q gathers bytes q * B .. q * B + 8; byte j of it then takes the 8 bits at j * B.
    let spread: [u8; 64] = std::array::from_fn(|i| ((i / 8) * B + i % 8).min(63) as u8);
    let shifts: [u8; 64] = std::array::from_fn(|i| ((i % 8) * B) as u8);
    // SAFETY: both arrays are 64 bytes, each plane 256.
    let (spread, shifts, t) = unsafe {
        let t: [[__m512i; 4]; 4] = std::array::from_fn(|k| {
            std::array::from_fn(|h| _mm512_loadu_si512(planes.0[k][64 * h..].as_ptr().cast()))
        });
        (_mm512_loadu_si512(spread.as_ptr().cast()), _mm512_loadu_si512(shifts.as_ptr().cast()), t)
    };
    let low = _mm512_set1_epi8(((1u16 << B) - 1) as u8 as i8);
    let mut acc = [_mm512_setzero_ps(); 4];
    for blk in 0..span.count() {
        let at = blk * 8 * B;
        // One row is one short stream (4 KiB at 4096 8-bit columns), too short for the hardware
        // prefetcher to ramp up on; fetch ahead, past the row's end into the next row in memory.
        _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(at + PREFETCH).cast());
        // A plain load of a whole block where the row has 64 bytes from it, else only the
        // block's own bytes (the partial block's missing indices read as 0, against zero `xp`).
        let raw = if blk < span.blocks && at + 64 <= row.len() {
            // SAFETY: 64 bytes from `at` lie in `row` (just checked).
            unsafe { _mm512_loadu_si512(row.as_ptr().add(at).cast()) }
        } else {
            // SAFETY: the caller guarantees the bytes the mask selects (the block's 8 B, or the
            // partial block's `tail`); the rest are masked off and not accessed.
            unsafe { _mm512_maskz_loadu_epi8(span.mask(blk, 8 * B), row.as_ptr().add(at).cast()) }
        };
        let idx = if B == 8 {
            raw
        } else {
            _mm512_and_si512(_mm512_multishift_epi64_epi8(shifts, _mm512_permutexvar_epi8(spread, raw)), low)
        };
        // SAFETY: the caller guarantees AVX-512 BW and VBMI.
        let p: [__m512i; 4] = std::array::from_fn(|k| unsafe { lookup::<B>(idx, &t[k]) });
        let (lo01, hi01) = (_mm512_unpacklo_epi8(p[0], p[1]), _mm512_unpackhi_epi8(p[0], p[1]));
        let (lo23, hi23) = (_mm512_unpacklo_epi8(p[2], p[3]), _mm512_unpackhi_epi8(p[2], p[3]));
        let w = [
            _mm512_unpacklo_epi16(lo01, lo23),
            _mm512_unpackhi_epi16(lo01, lo23),
            _mm512_unpacklo_epi16(hi01, hi23),
            _mm512_unpackhi_epi16(hi01, hi23),
        ];
        for (v, (acc, w)) in acc.iter_mut().zip(w).enumerate() {
            // SAFETY: the caller guarantees 64 floats of `xp` per block.
            let xv = unsafe { _mm512_loadu_ps(xp.add(blk * COLS + 16 * v)) };
            *acc = _mm512_fmadd_ps(_mm512_castsi512_ps(w), xv, *acc);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
}

/// Byte `k` of the table entries of 64 indices: one plane register (64 entries), two (128), or two
/// pairs and a blend on bit 7 (256).
///
/// # Safety
/// AVX-512 BW and VBMI must be available.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn lookup<const B: usize>(idx: __m512i, t: &[__m512i; 4]) -> __m512i {
    match B {
        5 | 6 => _mm512_permutexvar_epi8(idx, t[0]),
        7 => _mm512_permutex2var_epi8(t[0], idx, t[1]),
        _ => {
            let lo = _mm512_permutex2var_epi8(t[0], idx, t[1]);
            let hi = _mm512_permutex2var_epi8(t[2], idx, t[3]);
            _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi)
        }
    }
}
