//! AVX-512 depthwise convolution over small planes, 16 channels per vector
//! ([`Isa::depthwise_interleaved`](crate::arch::Isa::depthwise_interleaved)).
//!
//! On planes of 7×7 to 16×16 a channel-per-call kernel fills its 16 lanes with pixels of one
//! channel: every tap is a load that straddles rows and cache lines under a mask, and the few
//! vectors of a plane leave the FMA unit waiting on their chains. Here 16 channels are
//! transposed into one zero-padded, pixel-major copy (a pixel's 16 channels are one aligned
//! vector), so that every tap of every output pixel is one whole-vector load and one FMA with
//! the tap's 16 weights, eight output pixels in flight; the sums are transposed back into the
//! channels' planes. The layout onnxruntime's NCHWc kernels compute in, made per layer call.

use std::arch::x86_64::*;

use super::avx512::lane_mask;
use crate::arch::{
    depthwise_interleaved_check, DepthwiseChannels, DEPTHWISE_INTERLEAVED_MAX_OUT,
    DEPTHWISE_INTERLEAVED_MAX_PADDED, DEPTHWISE_SMALL_MAX_K,
};

/// Channels per vector.
const C: usize = 16;

/// Floats aligned to a cache line, so that every pixel's vector is one aligned load.
#[repr(align(64))]
struct Lines<const N: usize>([f32; N]);
/// Output pixels whose sums are in flight together.
const PIXELS: usize = 8;

/// See [`Isa::depthwise_interleaved`](crate::arch::Isa::depthwise_interleaved).
pub(super) fn depthwise_interleaved_avx512(
    w: &[f32],
    x: &[f32],
    y: &mut [f32],
    shape: DepthwiseChannels<'_>,
    k: usize,
) {
    let Some(channels) = depthwise_interleaved_check(w, x, y, &shape, k) else { return };
    // SAFETY: AVX-512 F was detected before this table was handed out; the check asserted the
    // shape fits the padded copy, `channels` whole filters in `w`, their input planes in `x`,
    // their output planes in `y` and a bias per channel when there is one.
    unsafe { run(w, x, y, &shape, k, channels) }
}

/// # Safety
/// AVX-512 F available; `depthwise_interleaved_check` passed for these operands with `channels`.
#[target_feature(enable = "avx512f")]
unsafe fn run(w: &[f32], x: &[f32], y: &mut [f32], s: &DepthwiseChannels<'_>, k: usize, channels: usize) {
    let taps = k * k;
    let (rows, cols) = ((s.out_h - 1) * s.stride + k, (s.out_w - 1) * s.stride + k);
    let (in_len, out_len) = (s.in_h * s.in_w, s.out_h * s.out_w);
    // The zero-padded copy of 16 channels, pixel-major, each pixel one aligned vector; the
    // padding stays zero from block to block, as every block writes the same interior pixels.
    // One pixel more, after them: where `fill` stores the input pixels no output reads.
    let mut padded = std::mem::MaybeUninit::<Lines<{ (DEPTHWISE_INTERLEAVED_MAX_PADDED + 1) * C }>>::uninit();
    // SAFETY: the first `(rows * cols + 1) * C` floats (inside the buffer: the check bounds
    // `rows * cols`) are zeroed before the slice over them is formed.
    let padded = unsafe {
        let first = padded.as_mut_ptr().cast::<f32>();
        std::ptr::write_bytes(first, 0, (rows * cols + 1) * C);
        std::slice::from_raw_parts_mut(first, (rows * cols + 1) * C)
    };
    let mut weights = Lines([0.0f32; DEPTHWISE_SMALL_MAX_K * DEPTHWISE_SMALL_MAX_K * C]);
    let weights = &mut weights.0;
    // Each output pixel's first input pixel in the copy (in floats).
    let mut corners = [0usize; DEPTHWISE_INTERLEAVED_MAX_OUT];
    for (o, corner) in corners[..out_len].iter_mut().enumerate() {
        let (oy, ox) = (o / s.out_w, o % s.out_w);
        *corner = (oy * s.stride * cols + ox * s.stride) * C;
    }
    for c0 in (0..channels).step_by(C) {
        let n = (channels - c0).min(C);
        // SAFETY: the block's filters lie in `w` (the check); `weights` holds `taps` vectors.
        unsafe { gather_taps(w.as_ptr().add(c0 * taps), n, taps, weights.as_mut_ptr()) };
        let mut bias = [0.0f32; C];
        if let Some(b) = s.bias {
            bias[..n].copy_from_slice(&b[c0..c0 + n]);
        }
        // SAFETY: the block's planes lie in `x` and `y` (the check); the copy holds every padded
        // pixel the outputs read.
        unsafe {
            let bias = _mm512_loadu_ps(bias.as_ptr());
            fill(x.as_ptr().add(c0 * in_len), n, s, cols, padded);
            for o0 in (0..out_len).step_by(2 * PIXELS) {
                // Two halves of `PIXELS` pixels; a half past the plane is not computed. Pixels
                // past the plane repeat its last one (computed, never stored).
                let half = |first: usize| {
                    let at: [usize; PIXELS] = std::array::from_fn(|j| corners[(first + j).min(out_len - 1)]);
                    sums_of(padded.as_ptr(), &at, weights.as_ptr(), k, cols, bias)
                };
                let lo = half(o0);
                let hi = if o0 + PIXELS < out_len { half(o0 + PIXELS) } else { [bias; PIXELS] };
                let mut sums: [__m512; C] =
                    std::array::from_fn(|i| if i < PIXELS { lo[i] } else { hi[i - PIXELS] });
                if let Some([lo, hi]) = s.clamp {
                    let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
                    // max(x, lo) returns lo for a NaN x, as f32::max does.
                    sums.iter_mut().for_each(|v| *v = _mm512_min_ps(_mm512_max_ps(*v, lo), hi));
                }
                transpose(&mut sums);
                let mask = lane_mask(out_len - o0);
                // A constant trip count keeps `sums` in registers (a loop up to `n` indexed
                // them in memory, and each transposed vector went through a store and a load).
                for (c, v) in sums.iter().enumerate() {
                    if c < n {
                        _mm512_mask_storeu_ps(y.as_mut_ptr().add((c0 + c) * out_len + o0), mask, *v);
                    }
                }
            }
        }
    }
}

/// Copies `n` planes of `s`'s input from `x` (one after another) into `padded`, pixel-major with
/// `cols` padded columns: input pixel `(iy, ix)` of channel `c` goes to lane `c` of padded pixel
/// `(iy + pad_top, ix + pad_left)`, if the outputs read it, else to the spare pixel after them.
/// Lanes of channels past `n` get zeros.
///
/// # Safety
/// AVX-512 F available; `x` holds `n` planes of `in_h × in_w`; `padded` holds `rows × cols`
/// pixels of `C` lanes, `rows` and `cols` what the outputs read, and one spare pixel after them.
#[target_feature(enable = "avx512f")]
unsafe fn fill(x: *const f32, n: usize, s: &DepthwiseChannels<'_>, cols: usize, padded: &mut [f32]) {
    let spare = padded.len() / C - 1;
    let rows = spare / cols;
    let in_len = s.in_h * s.in_w;
    // The input pixel the next vector holds.
    let (mut iy, mut ix) = (0, 0);
    for p0 in (0..in_len).step_by(C) {
        let mask = lane_mask(in_len - p0);
        // Every lane loaded under a mask (none past channel `n`), and every transposed vector
        // stored, to its pixel or the spare one: constant indices keep the 16 vectors in
        // registers (a loop up to `n`, or one ending at the plane's last pixel, kept them in
        // memory, and each went through a store and a load).
        let mut v: [__m512; C] = std::array::from_fn(|c| {
            let lanes = if c < n { mask } else { 0 };
            // SAFETY: the masked load reads pixels `p0 ..` of plane `c < n`, inside `x`; with no
            // lane set it reads nothing (the address is formed without claiming it is inside).
            unsafe { _mm512_maskz_loadu_ps(lanes, x.wrapping_add(c * in_len + p0)) }
        });
        transpose(&mut v);
        let mut to = [spare; C];
        for to in to.iter_mut().take(in_len - p0) {
            let (py, px) = (iy + s.pad_top, ix + s.pad_left);
            if py < rows && px < cols {
                *to = py * cols + px;
            }
            ix += 1;
            if ix == s.in_w {
                (iy, ix) = (iy + 1, 0);
            }
        }
        for (&to, pixel) in to.iter().zip(&v) {
            // SAFETY: `to` is a pixel of the copy or the spare one, inside `padded`.
            unsafe { _mm512_storeu_ps(padded.as_mut_ptr().add(to * C), *pixel) };
        }
    }
}

/// Writes `taps` vectors to `out`: lane `c` of vector `t` is tap `t` of filter `c` of the `n`
/// filters of `taps` weights at `w` (zero for `c >= n`), transposing 16 taps at a time.
///
/// # Safety
/// AVX-512 F available; `w` holds `n * taps` floats (`n <= 16`), `out` `taps * 16`.
#[target_feature(enable = "avx512f")]
unsafe fn gather_taps(w: *const f32, n: usize, taps: usize, out: *mut f32) {
    for t0 in (0..taps).step_by(C) {
        let mask = lane_mask(taps - t0);
        let mut v = [_mm512_setzero_ps(); C];
        for (c, lane) in v.iter_mut().enumerate().take(n) {
            // SAFETY: taps `t0 ..` of filter `c` (masked to the filter's end), inside `w`.
            *lane = unsafe { _mm512_maskz_loadu_ps(mask, w.add(c * taps + t0)) };
        }
        transpose(&mut v);
        for (t, lanes) in v.iter().enumerate().take(taps - t0) {
            // SAFETY: vector `t0 + t < taps` of `out`.
            unsafe { _mm512_storeu_ps(out.add((t0 + t) * C), *lanes) };
        }
    }
}

/// Returns the sums of `PIXELS` output pixels, the first input pixel of each at `at` (in floats)
/// in the padded copy, over the `k`×`k` taps whose 16 weights lie at `weights + C * tap`, each
/// starting from `bias`.
///
/// # Safety
/// AVX-512 F available; every tap of every pixel lies inside the padded copy at `padded` (rows
/// `cols` pixels apart); `weights` holds `k * k` vectors.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn sums_of(
    padded: *const f32,
    at: &[usize; PIXELS],
    weights: *const f32,
    k: usize,
    cols: usize,
    bias: __m512,
) -> [__m512; PIXELS] {
    let mut acc = [bias; PIXELS];
    for ky in 0..k {
        for kx in 0..k {
            let off = (ky * cols + kx) * C;
            // SAFETY: see the function's contract.
            unsafe {
                let wv = _mm512_loadu_ps(weights.add((ky * k + kx) * C));
                for (a, &base) in acc.iter_mut().zip(at) {
                    *a = _mm512_fmadd_ps(_mm512_loadu_ps(padded.add(base + off)), wv, *a);
                }
            }
        }
    }
    acc
}

/// Transposes 16 vectors of 16 lanes: lane `j` of vector `i` becomes lane `i` of vector `j`
/// (32-bit, then 64-bit interleaves within 128-bit lanes, then two 128-bit lane shuffles).
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn transpose(r: &mut [__m512; C]) {
    let mut t = [_mm512_setzero_ps(); C];
    for i in 0..C / 2 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4i + j], 128-bit lane L: rows 4i .. 4i + 4 at column 4L + j.
    let mut u = [_mm512_setzero_ps(); C];
    for i in 0..C / 4 {
        let pd = |v: __m512| _mm512_castps_pd(v);
        let (a, b, c, d) = (pd(t[4 * i]), pd(t[4 * i + 1]), pd(t[4 * i + 2]), pd(t[4 * i + 3]));
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    // Column 4L + j gathers lane L of u[j], u[4 + j], u[8 + j], u[12 + j].
    for j in 0..4 {
        let (a, b, c, d) = (u[j], u[4 + j], u[8 + j], u[12 + j]);
        let ab_lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b);
        let ab_hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b);
        let cd_lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(c, d);
        let cd_hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(c, d);
        r[j] = _mm512_shuffle_f32x4::<0b10_00_10_00>(ab_lo, cd_lo);
        r[4 + j] = _mm512_shuffle_f32x4::<0b11_01_11_01>(ab_lo, cd_lo);
        r[8 + j] = _mm512_shuffle_f32x4::<0b10_00_10_00>(ab_hi, cd_hi);
        r[12 + j] = _mm512_shuffle_f32x4::<0b11_01_11_01>(ab_hi, cd_hi);
    }
}
