//! AVX-512 BF16 kernels of the channel-blocked 1×1 layers ([`crate::blocked::BlockedBf16`]):
//! weights and inputs rounded to bf16, products summed in f32 by `vdpbf16ps`.
//!
//! A blocked input holds 16 channels of a pixel in one vector, so rounding it to bf16 gives the
//! pairs of neighbouring channels that `vdpbf16ps` multiplies, in order: a tile rounds its pixels'
//! part of the depth block once (8 pairs per pixel and block, on the stack) and broadcasts a pair
//! per pixel against `V` vectors of 16 filters' weight pairs. The transposed filters are rounded
//! in place into pair rows ([`pair_rows`]) once per call. The tiles, depth blocks, carry and
//! epilogue are the f32 kernels' ([`super::blocked_avx512`]).

use std::arch::x86_64::*;

use super::blocked_avx512::{depth_block, finish, pointwise_impl, DEPTH_BLOCK, TILE_SUMS};
use super::fused_bf16::pairs_of;
use crate::blocked::{BlockedBf16, BlockedPointwise, Layout, BLOCK as C};

/// This path's bf16 blocked kernels.
pub(super) const KERNELS: BlockedBf16 = BlockedBf16 { pair_rows, pointwise };

/// Pair lanes of one pixel's 16-channel block.
const PAIRS: usize = C / 2;

/// See [`BlockedBf16::pair_rows`].
fn pair_rows(wt: &mut [f32], k: usize, cols: usize) {
    assert!(k.is_multiple_of(2) && cols.is_multiple_of(C), "{k} rows of {cols}");
    assert!(wt.len() >= k * cols, "transposed panel too short");
    // SAFETY: AVX-512 F/BW/VL and BF16 were detected before this table was handed out; the
    // asserts cover every row read and written.
    unsafe { pair_rows_impl(wt.as_mut_ptr(), k, cols) }
}

/// # Safety
/// AVX-512 F, BW, VL and BF16 available; `wt` holds `k` rows of `cols` floats, `cols` a multiple of
/// 16 and `k` even.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pair_rows_impl(wt: *mut f32, k: usize, cols: usize) {
    for i in 0..k / 2 {
        for o in (0..cols).step_by(C) {
            // SAFETY: rows 2i and 2i + 1 are read at columns o .. o + 16 before pair row i is
            // written there; pair row i (floats i·cols ..) lies at or below row 2i, and the rows
            // below it were read by earlier pairs, so nothing unread is overwritten.
            unsafe {
                let row = |r: usize| _mm512_loadu_ps(wt.add(r * cols + o));
                let pair = pairs_of(row(2 * i), row(2 * i + 1));
                _mm512_storeu_si512(wt.add(i * cols + o).cast(), pair);
            }
        }
    }
}

/// See [`BlockedBf16::pointwise`].
fn pointwise(job: &BlockedPointwise<'_>, y: &mut [f32], carry: &mut [f32]) {
    job.check(y, carry);
    assert!(job.x_layout == Layout::Blocked, "bf16 blocked products take a blocked input");
    // The tiles round a depth block's input onto the stack, sized for the deepest.
    assert!(depth_block(job.k) <= DEPTH_BLOCK, "depth block of {}", depth_block(job.k));
    // SAFETY: AVX-512 F/BW/VL and BF16 were detected before this table was handed out; the check
    // asserted every operand holds what the tiles read and write, and a blocked input has whole
    // blocks of channels (so the depth and every depth block are even).
    unsafe {
        match job.blocks {
            4 => pointwise_impl::<4, true>(job, y.as_mut_ptr(), carry.as_mut_ptr()),
            3 => pointwise_impl::<3, true>(job, y.as_mut_ptr(), carry.as_mut_ptr()),
            2 => pointwise_impl::<2, true>(job, y.as_mut_ptr(), carry.as_mut_ptr()),
            _ => pointwise_impl::<1, true>(job, y.as_mut_ptr(), carry.as_mut_ptr()),
        }
    }
}

/// [`super::blocked_avx512`]'s tile on bf16 products: pixels `p0 .. p0 + P`, input channels
/// `channels` (a depth block of whole 16-channel blocks) of a blocked input, the transposed
/// filters as pair rows.
///
/// # Safety
/// As the f32 tile, with AVX-512 BW, VL and BF16 available, a blocked input, `job.wt` pair rows
/// ([`BlockedBf16::pair_rows`]) and `P <= TILE_SUMS`.
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn tile<const P: usize, const V: usize>(
    job: &BlockedPointwise<'_>,
    y: *mut f32,
    carry: *mut f32,
    (channels, p0): (std::ops::Range<usize>, usize),
) {
    let hw = job.hw;
    let (c0, blocks) = (channels.start, channels.len() / C);
    // The tile's input as pairs: block b of the depth block, pixel j at lanes (b P + j) 8 ...
    let mut pairs = std::mem::MaybeUninit::<[u32; DEPTH_BLOCK / C * TILE_SUMS * PAIRS]>::uninit();
    let pairs = pairs.as_mut_ptr().cast::<u32>();
    // SAFETY: block c0 / 16 + b of the input holds pixel p0 + j's 16 channels at (p0 + j) 16
    // floats from its start (the check; depth blocks start at whole blocks); `pairs` holds
    // DEPTH_BLOCK / 16 blocks of TILE_SUMS pixels (blocks <= DEPTH_BLOCK / 16, P <= TILE_SUMS).
    unsafe {
        let x = job.x.as_ptr().add(c0 * hw + p0 * C);
        for b in 0..blocks {
            for j in 0..P {
                let v = _mm512_loadu_ps(x.add(b * C * hw + j * C));
                let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(v));
                _mm256_storeu_si256(pairs.add((b * P + j) * PAIRS).cast(), h);
            }
        }
    }
    let partial = carry.wrapping_add((p0 - job.pixels.0) * V * C);
    let mut acc = [[_mm512_setzero_ps(); V]; P];
    // SAFETY: after the first depth block the carry holds this tile's partial sums (P pixels of
    // 16 V, pixel-major); pair row c0 / 2 + i of the filters holds 16 V lanes (the contract); the
    // tile's pairs were written just above.
    unsafe {
        if c0 > 0 {
            for (j, row) in acc.iter_mut().enumerate() {
                for (v, a) in row.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(partial.add((j * V + v) * C));
                }
            }
        }
        let wt = job.wt.as_ptr().cast::<u32>().add(c0 / 2 * V * C);
        for i in 0..blocks * PAIRS {
            let w: [__m512bh; V] = std::array::from_fn(|v| {
                std::mem::transmute(_mm512_loadu_si512(wt.add((i * V + v) * C).cast()))
            });
            let (b, lane) = (i / PAIRS, i % PAIRS);
            for (j, row) in acc.iter_mut().enumerate() {
                let xv: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*pairs.add((b * P + j) * PAIRS + lane) as i32));
                for (a, &w) in row.iter_mut().zip(&w) {
                    *a = _mm512_dpbf16_ps(*a, w, xv);
                }
            }
        }
        finish::<P, V>(job, y, partial, channels.end, p0, acc)
    }
}
