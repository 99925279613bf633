//! AVX2 depthwise convolution for small planes and any square filter up to 7×7
//! ([`Isa::depthwise_small`](crate::arch::Isa::depthwise_small)): MobileNetV3's 5×5 layers over
//! 14×14 and 7×7 planes, where per-channel kernels spend more on masks and borders than on
//! multiply-adds.
//!
//! Each channel's plane is first copied into a zero-padded buffer (at stride 2 with each row's
//! even and odd columns apart), so every filter tap of a run of outputs is a run of consecutive
//! floats: one plain load per tap and output row, no masks and no border cases. The padding is
//! zeroed once per call: every channel overwrites the same interior.

use std::arch::x86_64::*;

use super::avx2::lane_mask;
use crate::arch::{depthwise_small_check, DepthwiseChannels, SmallPlane, DEPTHWISE_SMALL_SCRATCH};

/// Output rows per register tile: one vector per row (outputs up to 8 wide) ...
const ROWS_ONE_VECTOR: usize = 8;
/// ... or two (up to 16 wide): 12 accumulators.
const ROWS_TWO_VECTORS: usize = 6;

/// See [`Isa::depthwise_small`](crate::arch::Isa::depthwise_small).
pub(super) fn depthwise_small_avx2(
    w: &[f32],
    x: &[f32],
    y: &mut [f32],
    shape: DepthwiseChannels<'_>,
    k: usize,
) {
    let Some((channels, plane)) = depthwise_small_check(w, x, y, &shape, k) else { return };
    // SAFETY: this table is only reachable after AVX2 + FMA were detected; the check asserted
    // `channels` filters of k*k weights, input and output planes and biases for each, and a
    // padded layout that fits the stack buffer.
    unsafe { run(w.as_ptr(), x.as_ptr(), y.as_mut_ptr(), channels, &shape, k, plane) }
}

/// The padded copy of a plane, aligned for its loads.
#[repr(align(32))]
struct Padded([f32; DEPTHWISE_SMALL_SCRATCH]);

#[target_feature(enable = "avx2,fma")]
unsafe fn run(
    w: *const f32,
    x: *const f32,
    y: *mut f32,
    channels: usize,
    s: &DepthwiseChannels<'_>,
    k: usize,
    plane: SmallPlane,
) {
    let mut padded = std::mem::MaybeUninit::<Padded>::uninit();
    // SAFETY: a place expression in the uninitialised buffer, taken as a pointer, not read.
    let buf = unsafe { std::ptr::addr_of_mut!((*padded.as_mut_ptr()).0) }.cast::<f32>();
    // SAFETY: the layout's rows * pitch floats fit the buffer (`depthwise_small_plane`); only
    // those are read, after this.
    unsafe { std::ptr::write_bytes(buf, 0, plane.rows * plane.pitch) };
    let (in_plane, out_plane) = (s.in_h * s.in_w, s.out_h * s.out_w);
    // Input rows and columns the outputs read: the rest of the plane (below or right of every
    // tap) is not copied.
    let rows = s.in_h.min(plane.rows - s.pad_top);
    let cols = s.in_w.min(s.stride * (plane.phase - 8) - s.pad_left);
    let [lo, hi] = s.clamp.unwrap_or([f32::NEG_INFINITY, f32::INFINITY]);
    let clamp = s.clamp.is_some();
    let per_pass = if plane.vectors == 1 { ROWS_ONE_VECTOR } else { ROWS_TWO_VECTORS };
    // Row passes of even height (14 rows: 5, 5, 4 rather than 6, 6, 2).
    let pass_rows = s.out_h.div_ceil(s.out_h.div_ceil(per_pass));
    let masks = [lane_mask(s.out_w), lane_mask(s.out_w.saturating_sub(8))];
    for c in 0..channels {
        // SAFETY: plane `c` of the input and output, filter `c` and bias `c` exist (the check);
        // the copy writes rows pad_top .. pad_top + rows < plane.rows and columns below
        // plane.pitch of the buffer, which holds plane.rows * plane.pitch floats.
        unsafe {
            copy_plane(x.add(c * in_plane), s.in_w, rows, cols, s.stride, s.pad_top, s.pad_left, plane, buf);
            let bias = s.bias.map_or(0.0, |b| *b.as_ptr().add(c));
            let tile = Tile {
                buf,
                plane,
                stride: s.stride,
                k,
                w: w.add(c * k * k),
                bias,
                lo,
                hi,
                clamp,
                out: y.add(c * out_plane),
                out_w: s.out_w,
                room: (channels - c) * out_plane,
                masks,
            };
            let mut r0 = 0;
            while r0 < s.out_h {
                let r = pass_rows.min(s.out_h - r0);
                match (plane.vectors, r) {
                    (1, 8) => tile.rows::<8, 1>(r0),
                    (1, 7) => tile.rows::<7, 1>(r0),
                    (1, 6) => tile.rows::<6, 1>(r0),
                    (1, 5) => tile.rows::<5, 1>(r0),
                    (1, 4) => tile.rows::<4, 1>(r0),
                    (1, 3) => tile.rows::<3, 1>(r0),
                    (1, 2) => tile.rows::<2, 1>(r0),
                    (1, _) => tile.rows::<1, 1>(r0),
                    (_, 6) => tile.rows::<6, 2>(r0),
                    (_, 5) => tile.rows::<5, 2>(r0),
                    (_, 4) => tile.rows::<4, 2>(r0),
                    (_, 3) => tile.rows::<3, 2>(r0),
                    (_, 2) => tile.rows::<2, 2>(r0),
                    (_, _) => tile.rows::<1, 2>(r0),
                }
                r0 += r;
            }
        }
    }
}

/// Copies `rows` rows of `cols` columns of one input plane (rows `in_w` apart) into the padded
/// buffer at row `pad_top`, column `pad_left`: as they are at stride 1, split into even and odd
/// columns at stride 2 (padded column `q` at `q % 2 * phase + q / 2`). Whole vectors are stored
/// unmasked (`vmaskmovps` stores are slow on AMD: with them the copy took a fifth of a 5×5
/// layer's time): the last one of a row holds zeros past the input, which land in the phase's
/// padding and slack.
///
/// # Safety
/// AVX2 available; the plane holds `rows` rows of `in_w >= cols` floats; the buffer holds
/// `plane.rows * plane.pitch` floats, `pad_top + rows <= plane.rows` and `pad_left + cols <=
/// stride * (plane.phase - 8)`: every store, 8 floats from a column of the copied interior,
/// stays in its phase.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn copy_plane(
    src: *const f32,
    in_w: usize,
    rows: usize,
    cols: usize,
    stride: usize,
    pad_top: usize,
    pad_left: usize,
    plane: SmallPlane,
    buf: *mut f32,
) {
    // SAFETY (whole function): reads stay within `cols` columns of each source row (masked
    // past them; a pointer past the row is formed with `wrapping_add` and not dereferenced) and
    // writes within the padded row's phases, as the caller's bounds give.
    unsafe {
        let load = |from: *const f32, left: usize| {
            if left >= 8 {
                _mm256_loadu_ps(from)
            } else {
                _mm256_maskload_ps(from, lane_mask(left))
            }
        };
        for row in 0..rows {
            let from = src.add(row * in_w);
            let to = buf.add((pad_top + row) * plane.pitch);
            if stride == 1 {
                let to = to.add(pad_left);
                let mut i = 0;
                while i < cols {
                    _mm256_storeu_ps(to.add(i), load(from.add(i), cols - i));
                    i += 8;
                }
            } else {
                // Source column `i` is padded column `pad_left + i`: the even source columns go
                // to one phase, the odd ones to the other, each at consecutive places.
                let (first, second) = (pad_left % 2, 1 - pad_left % 2);
                let evens = to.add(first * plane.phase + pad_left / 2);
                let odds = to.add(second * plane.phase + pad_left.div_ceil(2));
                let mut i = 0;
                while i < cols {
                    let left = cols - i;
                    let a = load(from.add(i), left);
                    let b = load(from.wrapping_add(i + 8), left.saturating_sub(8));
                    // Lanes a0 a2 b0 b2 | a4 a6 b4 b6, then in order; likewise the odd ones.
                    let even = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
                    let odd = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
                    let even = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(even)));
                    let odd = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(odd)));
                    _mm256_storeu_ps(evens.add(i / 2), even);
                    _mm256_storeu_ps(odds.add(i / 2), odd);
                    i += 16;
                }
            }
        }
    }
}

/// One channel's outputs, computed from its padded plane in passes of output rows.
struct Tile {
    buf: *const f32,
    plane: SmallPlane,
    stride: usize,
    k: usize,
    w: *const f32,
    bias: f32,
    lo: f32,
    hi: f32,
    clamp: bool,
    out: *mut f32,
    out_w: usize,
    /// Floats from this channel's plane to the end of the call's last one.
    room: usize,
    masks: [__m256i; 2],
}

impl Tile {
    /// Output rows `r0 .. r0 + R`, `V` vectors each: every tap's weight broadcast once and
    /// multiplied into all `R * V` accumulators, each from its own run of the padded plane.
    ///
    /// # Safety
    /// AVX2 + FMA available; `r0 + R <= out_h`; the tile's pointers as [`run`] built them: the
    /// padded rows `stride * (r0 + R - 1) + k <= plane.rows` exist, each tap's run of `8 * V`
    /// floats lies within its phase (`plane.phase >= (k - 1) / stride + 8 * V`), and output rows
    /// `r0 ..` hold `out_w` floats each, followed by the rest of the channel's and the call's
    /// later channels' planes (rows whose vectors reach past the last one store masked).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows<const R: usize, const V: usize>(&self, r0: usize) {
        let mut acc = [[_mm256_set1_ps(self.bias); V]; R];
        // SAFETY: see the function's contract.
        unsafe {
            // Stride 1 or 2: a shift and a mask find a tap's phase and column.
            let shift = self.stride - 1;
            let row_step = self.stride * self.plane.pitch;
            for ky in 0..self.k {
                let first_row = self.buf.add((self.stride * r0 + ky) * self.plane.pitch);
                for kx in 0..self.k {
                    let wv = _mm256_set1_ps(*self.w.add(ky * self.k + kx));
                    let tap = first_row.add((kx & shift) * self.plane.phase + (kx >> shift));
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let at = tap.add(i * row_step);
                        for (v, acc) in acc.iter_mut().enumerate() {
                            *acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(at.add(8 * v)), *acc);
                        }
                    }
                }
            }
            let (lo, hi) = (_mm256_set1_ps(self.lo), _mm256_set1_ps(self.hi));
            for (i, acc) in acc.into_iter().enumerate() {
                let dst = self.out.add((r0 + i) * self.out_w);
                // Rows are written in order, channel after channel: lanes past a row's end land
                // in the next rows, written after it. Only rows whose vectors reach past the
                // call's last plane are masked (`vmaskmovps` stores are slow on AMD).
                let masked = (r0 + i) * self.out_w + 8 * V > self.room;
                for (v, mut sum) in acc.into_iter().enumerate() {
                    if self.clamp {
                        // `max` first: a NaN sum becomes `lo`, as the scalar kernels do.
                        sum = _mm256_min_ps(_mm256_max_ps(sum, lo), hi);
                    }
                    if masked {
                        _mm256_maskstore_ps(dst.add(8 * v), self.masks[v], sum);
                    } else {
                        _mm256_storeu_ps(dst.add(8 * v), sum);
                    }
                }
            }
        }
    }
}
