//! AVX-512 kernels of the channel-blocked layout ([`crate::blocked`]): one vector is 16 channels
//! of one pixel.
//!
//! * 1×1: a tile of `P` pixels × `V` blocks of 16 filters keeps `P·V ≤ 24` sums in registers;
//!   per input channel it loads `V` vectors of transposed weights and broadcasts one input value
//!   per pixel (from a planar or a blocked input alike), so any pixel count tiles without masks.
//!   The output goes out as vectors (blocked), or (planar, at the exit of a blocked region) from
//!   the same tiles of at most 16 pixels, each block's sums transposed in registers into 16
//!   channels' runs of pixels (a ragged last block stores only the layer's channels).
//! * depthwise: tiles of up to 16 output pixels of a row with their sums in registers, each tap
//!   one weight load and one multiply-add per pixel for 16 channels; taps outside the input are
//!   skipped by tests the compiler keeps only for a tile's first and last columns.

use std::arch::x86_64::*;

use super::avx512::lane_mask;
use super::depthwise_interleaved::transpose;
use crate::blocked::{BlockedAct, BlockedDepthwise, BlockedKernels, BlockedPointwise, Layout, BLOCK as C};

/// This path's blocked kernels.
pub(super) const KERNELS: BlockedKernels =
    BlockedKernels { transpose_rows, nibbles_transposed, pointwise, depthwise, bf16: None };

/// Most sums one pointwise tile keeps in registers (of 32; the weights take `V` more).
pub(super) const TILE_SUMS: usize = 24;

/// Most input channels of one depth block of the pointwise tiles (see
/// [`crate::blocked::DEPTH_BLOCK`]).
pub(super) const DEPTH_BLOCK: usize = crate::blocked::DEPTH_BLOCK;

/// See [`crate::blocked::TransposeRowsFn`].
fn transpose_rows(panel: &[f32], rows: usize, k: usize, wt: &mut [f32], pitch: usize) {
    assert!(rows.is_multiple_of(C) && rows <= pitch && panel.len() >= rows * k, "{rows} rows of {k}");
    assert!(k == 0 || wt.len() >= (k - 1) * pitch + rows, "transposed panel too short");
    // SAFETY: AVX-512 F was detected before this table was handed out; the asserts cover every
    // row read (masked to `k`) and every transposed row written.
    unsafe { transpose_rows_impl(panel.as_ptr(), rows, k, wt.as_mut_ptr(), pitch) }
}

/// # Safety
/// AVX-512 F available; `panel` holds `rows × k`, `wt` `k` rows `pitch` apart of `rows`.
#[target_feature(enable = "avx512f")]
unsafe fn transpose_rows_impl(panel: *const f32, rows: usize, k: usize, wt: *mut f32, pitch: usize) {
    for r0 in (0..rows).step_by(C) {
        for p0 in (0..k).step_by(C) {
            let n = (k - p0).min(C);
            let mask = lane_mask(n);
            let mut v = [_mm512_setzero_ps(); C];
            for (r, lane) in v.iter_mut().enumerate() {
                // SAFETY: row r0 + r of the panel, columns p0 .. p0 + n (masked).
                *lane = unsafe { _mm512_maskz_loadu_ps(mask, panel.add((r0 + r) * k + p0)) };
            }
            transpose(&mut v);
            for (p, col) in v.iter().enumerate().take(n) {
                // SAFETY: row p0 + p < k of `wt`, columns r0 .. r0 + 16 <= rows.
                unsafe { _mm512_storeu_ps(wt.add((p0 + p) * pitch + r0), *col) };
            }
        }
    }
}

/// See [`crate::blocked::NibblesTransposedFn`].
fn nibbles_transposed(
    rows: &[&[u8]; C],
    k: usize,
    table: &[f32; 16],
    scales: &[f32; C],
    columns: Option<&[f32]>,
    wt: &mut [f32],
    pitch: usize,
) {
    let bytes = k.div_ceil(2);
    assert!(rows.iter().all(|row| row.len() >= bytes), "a row holds fewer than {k} indices");
    assert!(columns.is_none_or(|c| c.len() >= k), "fewer than {k} column factors");
    assert!(pitch >= C && (k == 0 || wt.len() >= (k - 1) * pitch + C), "transposed panel too short");
    // SAFETY: AVX-512 F and BW were detected before this table was handed out; the asserts cover
    // every row byte read (masked to `bytes`) and every vector written.
    unsafe { nibbles_transposed_impl(rows, k, table, scales, columns, wt.as_mut_ptr(), pitch) }
}

/// # Safety
/// AVX-512 F and BW available; every row holds `k.div_ceil(2)` bytes, `columns` (if any) `k`
/// factors, `wt` `k` rows of 16 floats `pitch` apart.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn nibbles_transposed_impl(
    rows: &[&[u8]; C],
    k: usize,
    table: &[f32; 16],
    scales: &[f32; C],
    columns: Option<&[f32]>,
    wt: *mut f32,
    pitch: usize,
) {
    let bytes = k.div_ceil(2);
    // SAFETY: both arrays hold 16 floats.
    let (table, scales) = unsafe { (_mm512_loadu_ps(table.as_ptr()), _mm512_loadu_ps(scales.as_ptr())) };
    for b0 in (0..bytes).step_by(64) {
        let n = (bytes - b0).min(64);
        let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        // Lane w of vector r: bytes 4w .. 4w + 4 of row r's 64 from b0, 8 indices; transposed,
        // lane r of vector w.
        let mut v: [__m512; C] = std::array::from_fn(|r| {
            // SAFETY: bytes b0 .. b0 + n of the row (masked), inside it by the caller's contract.
            _mm512_castsi512_ps(unsafe { _mm512_maskz_loadu_epi8(mask, rows[r].as_ptr().add(b0).cast()) })
        });
        transpose(&mut v);
        for (w, word) in v.iter().enumerate().take(n.div_ceil(4)) {
            let mut indices = _mm512_castps_si512(*word);
            let first = 2 * b0 + 8 * w;
            for p in first..(first + 8).min(k) {
                // `vpermps` reads the low 4 bits of each lane: the next index, LSB first.
                let mut weights = _mm512_mul_ps(_mm512_permutexvar_ps(indices, table), scales);
                if let Some(columns) = columns {
                    // The decoded weight times its column's factor, as `WeightRows` applies it.
                    weights = _mm512_mul_ps(weights, _mm512_set1_ps(columns[p]));
                }
                // SAFETY: column p < k of the panel, 16 floats (the caller's contract).
                unsafe { _mm512_storeu_ps(wt.add(p * pitch), weights) };
                indices = _mm512_srli_epi32::<4>(indices);
            }
        }
    }
}

/// `act` applied to 16 values, each the same operations in the same order as the
/// [`crate::Activation`] it stands for.
#[inline]
#[target_feature(enable = "avx512f")]
fn activate(act: BlockedAct, v: __m512) -> __m512 {
    match act {
        BlockedAct::None => v,
        // `max(x, lo)` returns `lo` for a NaN `x`, as the scalar clamp does.
        BlockedAct::Clamp(lo, hi) => _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(lo)), _mm512_set1_ps(hi)),
        BlockedAct::HardSwish(scale, shift) => {
            let t = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.0 / 6.0)), _mm512_set1_ps(0.5));
            // `max(0, t)` then `min(1, ..)` keep a NaN, as `f32::clamp` does.
            let gate = _mm512_min_ps(_mm512_set1_ps(1.0), _mm512_max_ps(_mm512_setzero_ps(), t));
            _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(v, gate), _mm512_set1_ps(scale)), _mm512_set1_ps(shift))
        }
    }
}

/// See [`crate::blocked::BlockedKernels::pointwise`].
fn pointwise(job: &BlockedPointwise<'_>, y: &mut [f32], carry: &mut [f32]) {
    job.check(y, carry);
    // SAFETY: AVX-512 F was detected before this table was handed out; the check asserted every
    // operand holds what the tiles read and write.
    unsafe {
        match job.blocks {
            4 => pointwise_impl::<4, false>(job, y.as_mut_ptr(), carry.as_mut_ptr()),
            3 => pointwise_impl::<3, false>(job, y.as_mut_ptr(), carry.as_mut_ptr()),
            2 => pointwise_impl::<2, false>(job, y.as_mut_ptr(), carry.as_mut_ptr()),
            _ => pointwise_impl::<1, false>(job, y.as_mut_ptr(), carry.as_mut_ptr()),
        }
    }
}

/// Tiles of `TILE_SUMS / V` pixels (fewer for the last) over the whole plane, the input
/// channels in blocks of at most [`DEPTH_BLOCK`] whose transposed filters stay in L1 while every
/// tile of the plane streams over them; the partial sums wait in `carry` between blocks. With
/// `BF16` the tiles are [`super::blocked_bf16`]'s.
///
/// # Safety
/// AVX-512 F available; `job.check(y, carry)` passed, with `job.blocks == V`;
/// with `BF16`, as `super::blocked_bf16::pointwise` requires.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn pointwise_impl<const V: usize, const BF16: bool>(
    job: &BlockedPointwise<'_>,
    y: *mut f32,
    carry: *mut f32,
) {
    // A planar output goes out in 16×16 transposes: at most 16 pixels per tile.
    let most = match job.y_layout {
        Layout::Blocked => TILE_SUMS / V,
        Layout::Planar => (TILE_SUMS / V).min(C),
    };
    let depth = depth_block(job.k);
    let mut c0 = 0;
    while c0 < job.k {
        let channels = c0..job.k.min(c0 + depth);
        let mut p0 = job.pixels.0;
        while p0 < job.pixels.1 {
            let n = (job.pixels.1 - p0).min(most);
            // The widest tile of at most `n` pixels.
            let p = match n {
                24.. => 24,
                16.. => 16,
                12.. => 12,
                8.. => 8,
                6.. => 6,
                4.. => 4,
                n => n,
            };
            // SAFETY: pixels p0 .. p0 + p lie in the plane, `channels` in the input; the
            // caller's contract covers the rest.
            unsafe {
                let at = (channels.clone(), p0);
                macro_rules! tile_of {
                    ($p:literal) => {
                        if BF16 {
                            super::blocked_bf16::tile::<$p, V>(job, y, carry, at)
                        } else {
                            tile::<$p, V>(job, y, carry, at)
                        }
                    };
                }
                match p {
                    24 => tile_of!(24),
                    16 => tile_of!(16),
                    12 => tile_of!(12),
                    8 => tile_of!(8),
                    6 => tile_of!(6),
                    4 => tile_of!(4),
                    3 => tile_of!(3),
                    2 => tile_of!(2),
                    _ => tile_of!(1),
                }
            }
            p0 += p;
        }
        c0 = channels.end;
    }
}

/// Finishes a tile's sums `acc` (pixels `p0 .. p0 + P` of the call's `16 V` channels) into a
/// planar output: per block, bias added, the 16 channels × `P` pixels transposed in registers so
/// that each channel's run of pixels is one masked store (and its residual one masked load), for
/// the channels the layer has (`job.out_channels`: a ragged last block stores fewer). Each input
/// value of the tile was broadcast once for all `V` blocks.
///
/// # Safety
/// AVX-512 F available; `job.check` passed with a planar output; `P <= 16` and pixels `p0 .. p0 + P`
/// among `job.pixels`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn planar_finish<const P: usize, const V: usize>(
    job: &BlockedPointwise<'_>,
    y: *mut f32,
    acc: &[[__m512; V]; P],
    p0: usize,
) {
    let (hw, lo, ny) = (job.hw, job.pixels.0, job.pixel_count());
    let mask = lane_mask(P);
    for v in 0..V {
        // The block's channels the layer has (fewer in a ragged last block).
        let stored = job.out_channels.saturating_sub(v * C).min(C);
        // SAFETY: biases 16 v .. 16 v + 16 exist (the check).
        let bias = unsafe { _mm512_loadu_ps(job.bias.as_ptr().add(v * C)) };
        let mut rows = [_mm512_setzero_ps(); C];
        for (row, acc) in rows.iter_mut().zip(acc) {
            *row = _mm512_add_ps(acc[v], bias);
        }
        // Row l: channel 16 v + l's pixels p0 .. p0 + P (lanes past P hold zeros).
        transpose(&mut rows);
        for (l, row) in rows.iter().enumerate().take(stored) {
            let c = v * C + l;
            // SAFETY: channel c < out_channels: its pixels p0 .. p0 + P lie in the residual's
            // plane (the check: `out_channels` planes of `hw`) and among the output's `ny` from
            // `lo`; masked-off lanes are not accessed.
            unsafe {
                let mut sum = *row;
                if let Some(res) = job.residual {
                    sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(mask, res.as_ptr().add(c * hw + p0)));
                }
                _mm512_mask_storeu_ps(y.add(c * ny + p0 - lo), mask, activate(job.act, sum));
            }
        }
    }
}

/// Input channels per depth block of a product over `k` (a multiple of 16 when `k` is): even
/// blocks of at most [`DEPTH_BLOCK`].
pub(super) fn depth_block(k: usize) -> usize {
    if k <= DEPTH_BLOCK {
        return k.max(1);
    }
    k.div_ceil(k.div_ceil(DEPTH_BLOCK)).next_multiple_of(C)
}

/// Pixels `p0 .. p0 + P` of the call's `16 V` output channels over input channels `channels`
/// (`at`), into a blocked output: started from zero for the first channels, else from the
/// partial sums in `carry`, and left there unless the channels are the last, when bias, residual
/// and activation finish them into `y`.
///
/// # Safety
/// As [`pointwise_impl`], pixels `p0 .. p0 + P` among `job.pixels` and `channels` a depth block of
/// it.
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const P: usize, const V: usize>(
    job: &BlockedPointwise<'_>,
    y: *mut f32,
    carry: *mut f32,
    (channels, p0): (std::ops::Range<usize>, usize),
) {
    let hw = job.hw;
    let (x, wt) = (job.x.as_ptr(), job.wt.as_ptr());
    // The tile's partial sums: P pixels of 16 V channels, pixel-major; the sums start from them
    // after the first depth block, else from zero (inside `sums`: an array zeroed here, in
    // memory when `sums` is not inlined, cost a `memset` call per tile).
    let partial = carry.wrapping_add((p0 - job.pixels.0) * V * C);
    let start = (channels.start > 0).then_some(partial.cast_const());
    let (c0, depth) = (channels.start, channels.len());
    // SAFETY: rows c < k of the transposed filters hold `16 V` weights; input channel c of pixels
    // p0 .. p0 + P lies in `x` in either layout (the check: blocked inputs have whole blocks, and
    // depth blocks start at whole blocks); the carry holds `hw` pixels of `16 V` sums.
    let acc = unsafe {
        let wt = wt.add(c0 * V * C);
        match job.x_layout {
            Layout::Planar => {
                sums::<P, V>(start, wt, V * C, depth, x.add(c0 * hw + p0), InputSteps::planar(hw))
            }
            // Within a block channel c + 1 follows c; the next block starts 16 hw floats on.
            Layout::Blocked => {
                sums::<P, V>(start, wt, V * C, depth, x.add(c0 * hw + p0 * C), InputSteps::blocked(hw))
            }
        }
    };
    // SAFETY: the caller's contract; `partial` is pixel p0's sums in the carry.
    unsafe { finish::<P, V>(job, y, partial, channels.end, p0, acc) }
}

/// Leaves a tile's sums `acc` (pixels `p0 .. p0 + P`, input channels up to `end`) in the carry
/// at `partial` when channels remain, else adds bias and residual, applies the activation and
/// stores them in the output's layout.
///
/// # Safety
/// As [`tile`]; `partial` holds `P` pixels of `16 V` sums.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn finish<const P: usize, const V: usize>(
    job: &BlockedPointwise<'_>,
    y: *mut f32,
    partial: *mut f32,
    end: usize,
    p0: usize,
    acc: [[__m512; V]; P],
) {
    let (hw, lo, ny) = (job.hw, job.pixels.0, job.pixel_count());
    if end < job.k {
        // SAFETY: as the contract says.
        unsafe {
            for (j, acc) in acc.iter().enumerate() {
                for (v, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(partial.add((j * V + v) * C), *a);
                }
            }
        }
        return;
    }
    if job.y_layout == Layout::Planar {
        // SAFETY: as [`planar_finish`] requires: P <= 16 pixels (the caller's tiles) of the
        // call's output channels.
        unsafe { planar_finish::<P, V>(job, y, &acc, p0) };
        return;
    }
    for v in 0..V {
        // SAFETY: biases 16 v .. 16 v + 16 exist (the check).
        let bias = unsafe { _mm512_loadu_ps(job.bias.as_ptr().add(v * C)) };
        for (j, acc) in acc.iter().enumerate() {
            // Block v's pixel p0 + j: in the residual's whole plane and among the output's `ny`.
            let (at, out) = (v * C * hw + (p0 + j) * C, (v * ny + p0 + j - lo) * C);
            let mut sum = _mm512_add_ps(acc[v], bias);
            // SAFETY: the vectors at `at` and `out` lie inside the residual and the output (the
            // check: `16 V` channels of `hw` pixels, and of the call's `ny`).
            unsafe {
                if let Some(res) = job.residual {
                    sum = _mm512_add_ps(sum, _mm512_loadu_ps(res.as_ptr().add(at)));
                }
                _mm512_storeu_ps(y.add(out), activate(job.act, sum));
            }
        }
    }
}

/// Where input channel `c`'s value of pixel `j` lies relative to the first: `(c % per) * step
/// + (c / per) * jump + j * pixel` floats on. One input plane after another is `per` 1, `jump`
/// the plane and `pixel` 1; 16 channels of a block next to each other `per` 16, `step` 1,
/// `jump` the block and `pixel` 16.
#[derive(Clone, Copy)]
struct InputSteps {
    step: usize,
    jump: usize,
    per: usize,
    pixel: usize,
}

impl InputSteps {
    /// A planar input of `hw` pixels per channel.
    fn planar(hw: usize) -> Self {
        InputSteps { step: 1, jump: hw, per: 1, pixel: 1 }
    }

    /// A blocked input of `hw` pixels per channel.
    fn blocked(hw: usize) -> Self {
        InputSteps { step: 1, jump: C * hw, per: C, pixel: C }
    }
}

/// `acc[j][v] = start[j][v] + sum_c wt[c][16 v ..] * x(c, j)` over `k` input channels (rows of
/// `wt` `pitch` floats apart), `x(c, j)` where `steps` place it from `x`; `start` (pixel-major,
/// `16 V` sums per pixel) or zeros.
///
/// # Safety
/// AVX-512 F available; every input address lies in the input, `k` rows of `16 V` at `wt`
/// `pitch` apart; `k` is a multiple of `steps.per`; `start`, if any, holds `P` pixels of sums.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn sums<const P: usize, const V: usize>(
    start: Option<*const f32>,
    wt: *const f32,
    pitch: usize,
    k: usize,
    x: *const f32,
    steps: InputSteps,
) -> [[__m512; V]; P] {
    let mut sums = [[_mm512_setzero_ps(); V]; P];
    if let Some(start) = start {
        for (j, row) in sums.iter_mut().enumerate() {
            for (v, a) in row.iter_mut().enumerate() {
                // SAFETY: sum v of pixel j of the start (the contract).
                *a = unsafe { _mm512_loadu_ps(start.add((j * V + v) * C)) };
            }
        }
    }
    let mut wp = wt;
    for g in 0..k / steps.per {
        let base = x.wrapping_add(g * steps.jump);
        for i in 0..steps.per {
            // SAFETY: see the function's contract.
            unsafe {
                let xp = base.add(i * steps.step);
                let mut w = [_mm512_setzero_ps(); V];
                for (v, w) in w.iter_mut().enumerate() {
                    *w = _mm512_loadu_ps(wp.add(v * C));
                }
                for (j, row) in sums.iter_mut().enumerate() {
                    let xv = _mm512_set1_ps(*xp.add(j * steps.pixel));
                    for (a, &w) in row.iter_mut().zip(&w) {
                        *a = _mm512_fmadd_ps(w, xv, *a);
                    }
                }
                wp = wp.add(pitch);
            }
        }
    }
    sums
}

/// See [`crate::blocked::BlockedKernels::depthwise`].
fn depthwise(job: &BlockedDepthwise<'_>, y: &mut [f32]) {
    job.check(y);
    // SAFETY: AVX-512 F was detected before this table was handed out; the check asserted the
    // filters, input and output hold what the geometry reads and writes, and a filter width,
    // stride and pads the tiles take.
    unsafe {
        match (job.kw, job.stride_w) {
            (3, 1) => depthwise_rows::<3, 1>(job, y.as_mut_ptr()),
            (3, _) => depthwise_rows::<3, 2>(job, y.as_mut_ptr()),
            (_, 1) => depthwise_rows::<5, 1>(job, y.as_mut_ptr()),
            _ => depthwise_rows::<5, 2>(job, y.as_mut_ptr()),
        }
    }
}

/// Every output row in tiles of `P` pixels (16; a whole row of 14 or 7, MobileNets' 14×14 and 7×7
/// planes; else the largest of 8, 4, 1 the row holds); a row's last tile ends at its last pixel,
/// overlapping the one before where the width is not a multiple of `P` (those pixels are
/// computed twice, the same way). Rows of 14 took 12.0 µs in two tiles of 8 and 10.7 in one of 14
/// (384 channels, Zen 5).
///
/// # Safety
/// AVX-512 F available; `job.check(y)` passed with filters `K` wide and horizontal stride `S`.
#[target_feature(enable = "avx512f")]
unsafe fn depthwise_rows<const K: usize, const S: usize>(job: &BlockedDepthwise<'_>, y: *mut f32) {
    let s = job;
    // SAFETY: the check asserted 16 biases.
    let bias = unsafe { _mm512_loadu_ps(s.bias.as_ptr()) };
    let tile = match s.out_w {
        16.. => 16,
        14 => 14,
        8.. => 8,
        7 => 7,
        4.. => 4,
        _ => 1,
    };
    for oy in 0..s.out_h {
        let iy0 = (oy * s.stride_h) as isize - s.pad_top as isize;
        // Filter rows inside the input.
        let ky_lo = (-iy0).clamp(0, s.kh as isize) as usize;
        let ky_hi = (s.in_h as isize - iy0).clamp(ky_lo as isize, s.kh as isize) as usize;
        let rows = Rows { iy0, ky: ky_lo..ky_hi };
        let mut ox = 0;
        while ox < s.out_w {
            let ox0 = ox.min(s.out_w - tile);
            // SAFETY: rows.ky lists input rows inside the plane; the tile's pixels lie in row oy.
            unsafe {
                let yrow = y.add(oy * s.out_w * C);
                match tile {
                    16 => depthwise_tile::<K, S, 16>(s, &rows, ox0, bias, yrow),
                    14 => depthwise_tile::<K, S, 14>(s, &rows, ox0, bias, yrow),
                    7 => depthwise_tile::<K, S, 7>(s, &rows, ox0, bias, yrow),
                    8 => depthwise_tile::<K, S, 8>(s, &rows, ox0, bias, yrow),
                    4 => depthwise_tile::<K, S, 4>(s, &rows, ox0, bias, yrow),
                    _ => depthwise_tile::<K, S, 1>(s, &rows, ox0, bias, yrow),
                }
            }
            ox += tile;
        }
    }
}

/// The input rows one output row reads: filter rows `ky` (those inside the input) of the row
/// whose first tap row is input row `iy0`.
struct Rows {
    iy0: isize,
    ky: std::ops::Range<usize>,
}

/// Output pixels `ox0 .. ox0 + P` of the row at `yrow`, their sums in registers: per filter tap,
/// one weight load and `P` multiply-adds with the input as memory operand. Taps outside the
/// input are skipped. Pads are below the filter width, and the tile ends inside the output row,
/// so only the first `K - 1` input columns of a tile can lie left of the input and only those
/// after column `(P - 1) * S` right of it: the compiler drops the test everywhere else.
///
/// # Safety
/// AVX-512 F available; the job's check passed with filters `K` wide and stride `S`; `rows`
/// lists input rows inside the plane; `ox0 + P <= out_w`; `yrow` is an output row.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn depthwise_tile<const K: usize, const S: usize, const P: usize>(
    s: &BlockedDepthwise<'_>,
    rows: &Rows,
    ox0: usize,
    bias: __m512,
    yrow: *mut f32,
) {
    let (x, w) = (s.x.as_ptr(), s.w.as_ptr());
    // Input column of the tile's first tap; tile columns below `lo` or from `hi` on are outside.
    let ix0 = (ox0 * S) as isize - s.pad_left as isize;
    let (lo, hi) = (-ix0, s.in_w as isize - ix0);
    let mut acc = [bias; P];
    // SAFETY: see the function's contract; a tap's input is read only when its column lies in
    // `0 .. in_w` (tile column c in `lo .. hi`) and its row is one of `rows`.
    unsafe {
        for ky in rows.ky.clone() {
            let row = x.offset((rows.iy0 + ky as isize) * (s.in_w * C) as isize);
            for kx in 0..K {
                let wv = _mm512_loadu_ps(w.add((ky * K + kx) * C));
                for (j, a) in acc.iter_mut().enumerate() {
                    let c = j * S + kx;
                    let left = c + 1 < K && (c as isize) < lo;
                    let right = c > (P - 1) * S && (c as isize) >= hi;
                    if !left && !right {
                        let xv = _mm512_loadu_ps(row.offset((ix0 + c as isize) * C as isize));
                        *a = _mm512_fmadd_ps(xv, wv, *a);
                    }
                }
            }
        }
        for (j, a) in acc.into_iter().enumerate() {
            _mm512_storeu_ps(yrow.add((ox0 + j) * C), activate(s.act, a));
        }
    }
}
