//! The x86 GEMV input permutation ([`crate::arch::permute_blocks`]) with 8×8 register
//! transposes, for the AVX2 (8 lanes) and AVX-512 (16 lanes) multi-row kernels.

use std::arch::x86_64::*;

use crate::arch::{permute_blocks, permute_each_block};

/// [`permute_blocks`] for `lanes` 8 or 16 and `per` a multiple of 8, each whole block by 8×8
/// transposes in registers ([`transpose_block`]): the scalar transpose took about 2.7 cycles a
/// value, 29-37 % of a 64×4096 4-bit GEMV (AVX-512). Other shapes, and a partial last block, go
/// through the scalar transpose.
///
/// Only the AVX2 and AVX-512 paths call this, after detecting AVX.
pub(super) fn blocks(x: &[f32], xp: &mut [f32], lanes: usize, per: usize) {
    let block = lanes * per;
    permute_each_block(x, xp, block, |src, dst| {
        if src.len() < block || !per.is_multiple_of(8) || !matches!(lanes, 8 | 16) {
            return permute_blocks(src, dst, lanes, per);
        }
        // SAFETY: the AVX2 and AVX-512 paths (the only callers) were handed out after AVX was
        // detected; `src` holds a whole block (checked above) and `dst` too (`permute_each_block`).
        unsafe { transpose_block(src.as_ptr(), dst.as_mut_ptr(), lanes, per) }
    });
}

/// `dst[k * lanes + l] = src[l * per + k]` for `l < lanes`, `k < per` (`lanes` 8 or 16, `per` a
/// multiple of 8): the `lanes`×`per` block as 8×8 tiles ([`tile_8x8`]).
///
/// # Safety
/// AVX must be available; `src` and `dst` hold `lanes * per` floats; `lanes` is a multiple of 8
/// and `per` a multiple of 8.
#[target_feature(enable = "avx")]
unsafe fn transpose_block(src: *const f32, dst: *mut f32, lanes: usize, per: usize) {
    for g in 0..lanes / 8 {
        for c in 0..per / 8 {
            // SAFETY: rows 8g + r < lanes and columns 8c..8c + 8 <= per lie in the block; the
            // stores go to rows 8c + j < per, lanes 8g..8g + 8 of `lanes`.
            unsafe { tile_8x8(src.add(8 * g * per + 8 * c), per, dst.add(8 * c * lanes + 8 * g), lanes) }
        }
    }
}

/// See [`Isa::transpose`](crate::arch::Isa::transpose): whole 8×8 tiles through registers
/// ([`tile_8x8`]), the scalar path for the last rows and columns. A scalar transpose moved about
/// one value per 1.6 ns (BlazeFace full range's 16×2304 output transpose: 19-24 µs, 1 % of
/// the model).
///
/// Only the AVX2 and AVX-512 paths use this, after detecting AVX.
pub(super) fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    // SAFETY: the paths that hand this out detected AVX, all `tile_8x8` needs; it transposes one
    // 8×8 tile at the pitches it is given.
    unsafe { crate::arch::transpose_by_tiles(src, rows, cols, dst, 8, tile_8x8) }
}

/// Transposes one 8×8 tile: `dst[j * dst_pitch + i] = src[i * src_pitch + j]` for `i, j < 8`,
/// with the classic unpack / shuffle / lane-swap sequence (24 shuffles for 64 values).
///
/// # Safety
/// AVX must be available; rows `0..8` of 8 values at `src` (`src_pitch` apart) and at `dst`
/// (`dst_pitch` apart) must be valid.
#[target_feature(enable = "avx")]
unsafe fn tile_8x8(src: *const f32, src_pitch: usize, dst: *mut f32, dst_pitch: usize) {
    // SAFETY: the caller guarantees the eight rows of eight values on both sides.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_pitch)));
        // t[2p], t[2p + 1]: rows 2p and 2p + 1 interleaved (columns 0, 1, 4, 5 / 2, 3, 6, 7).
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        // u[4h + m]: column m of rows 4h..4h + 4 in the low lanes, column m + 4 in the high.
        let u: [__m256; 8] = std::array::from_fn(|i| {
            let (h, m) = (i / 4, i % 4);
            let (a, b) = (t[4 * h + m / 2], t[4 * h + 2 + m / 2]);
            if m % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(a, b)
            } else {
                _mm256_shuffle_ps::<0xEE>(a, b)
            }
        });
        for j in 0..8 {
            let (a, b) = (u[j % 4], u[4 + j % 4]);
            let col = if j < 4 {
                _mm256_permute2f128_ps::<0x20>(a, b)
            } else {
                _mm256_permute2f128_ps::<0x31>(a, b)
            };
            _mm256_storeu_ps(dst.add(j * dst_pitch), col);
        }
    }
}
