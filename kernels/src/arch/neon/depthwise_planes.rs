//! NEON [`Isa::depthwise_3x3`] and [`Isa::depthwise_small`]: square depthwise filters at stride 1
//! or 2 over the planes of many channels in one call (the first over a band of their rows, when
//! a layer goes by bands), both on one kernel (`k` = 3 for the first, 1 to 7 for the second).
//!
//! NEON has no masked loads, so each channel's plane is copied into a zero-padded stack buffer
//! and every filter tap of a run of outputs becomes a plain load: no masks and no border cases.
//! A padded row holds `stride * out_w.next_multiple_of(4) + k` floats, enough for the widest
//! tap's last whole vector; the copy's left and right padding is zeroed once per call and never
//! written again. When a plane's padded rows do not all fit the buffer (3×3 planes up to 64
//! columns wide and any height), the plane goes in bands of output rows, each band with its own
//! copy of the input rows it reads.
//!
//! Outputs go in strips of up to 16 columns (4 vectors) and tiles of up to 4 rows: each input
//! vector a tile loads feeds every output row of the tile that reads it, from up to 16
//! accumulators kept in registers (the row and vector counts are const generics, so every
//! accumulator index is a constant). At stride 2, `vld2q_f32` splits 8 consecutive floats into
//! the even and odd columns, which are the views of two adjacent filter columns. A row's last
//! vector, where it holds fewer than 4 outputs, is stored lane by lane.
//!
//! [`Isa::depthwise_3x3`]: crate::arch::Isa::depthwise_3x3
//! [`Isa::depthwise_small`]: crate::arch::Isa::depthwise_small

use std::arch::aarch64::*;
use std::ops::Range;

use crate::arch::{
    depthwise_3x3_check, depthwise_small_check, Depthwise3x3Fn, DepthwiseChannels, DepthwiseSmallFn,
    DEPTHWISE_SMALL_SCRATCH,
};

/// The path's [`Isa::depthwise_3x3`](crate::arch::Isa::depthwise_3x3).
pub(super) const DEPTHWISE_3X3: Option<Depthwise3x3Fn> = Some(depthwise_3x3);

/// The path's [`Isa::depthwise_small`](crate::arch::Isa::depthwise_small).
pub(super) const DEPTHWISE_SMALL: Option<DepthwiseSmallFn> = Some(depthwise_small);

/// Floats of the padded buffer: the same 16 KiB [`Isa::depthwise_small`] promises to fit a
/// plane in, so its planes always take one band.
///
/// [`Isa::depthwise_small`]: crate::arch::Isa::depthwise_small
const SCRATCH: usize = DEPTHWISE_SMALL_SCRATCH;

/// Most output rows per register tile.
const TILE_ROWS: usize = 4;

/// Most vectors of 4 outputs per row of a tile (a strip of 16 columns).
const TILE_VECTORS: usize = 4;

/// See [`Isa::depthwise_3x3`](crate::arch::Isa::depthwise_3x3).
fn depthwise_3x3(w: &[f32], x: &[f32], rows: Range<usize>, y: &mut [&mut [f32]], s: DepthwiseChannels<'_>) {
    let Some(channels) = depthwise_3x3_check(w, x, &rows, y, &s) else { return };
    // SAFETY: this function is only in the NEON table, handed out after NEON was detected; the
    // check asserted `channels` filters of 9 weights, input planes and biases for each, output
    // rows `rows` inside the plane with a part of `y` holding them for each, a stride of 1 or 2
    // and output rows of at most 64 columns (see `run`).
    unsafe { run(w.as_ptr(), x.as_ptr(), |c| y[c].as_mut_ptr(), rows, channels, &s, 3) }
}

/// See [`Isa::depthwise_small`](crate::arch::Isa::depthwise_small).
fn depthwise_small(w: &[f32], x: &[f32], y: &mut [f32], s: DepthwiseChannels<'_>, k: usize) {
    let Some(channels) = depthwise_small_check(w, x, y, &s, k).map(|(channels, _)| channels) else { return };
    let (y, out_plane) = (y.as_mut_ptr(), s.out_h * s.out_w);
    // SAFETY: as for `depthwise_3x3`, over whole planes (`y` holds them back to back), with
    // `k`×`k` filters of a side up to 7, pads below `k` and output rows of at most 16 columns
    // (see `run`).
    unsafe { run(w.as_ptr(), x.as_ptr(), |c| y.wrapping_add(c * out_plane), 0..s.out_h, channels, &s, k) }
}

/// The padded buffer, aligned for its vectors.
#[repr(align(16))]
struct Padded([f32; SCRATCH]);

/// Output rows `rows` of all `channels` planes: per channel, per band of those rows, a padded
/// copy of the input rows the band reads, then strips of columns in tiles of rows. Channel `c`'s
/// row `r` goes to `out(c)` plus `(r - rows.start) * out_w`.
///
/// # Safety
/// NEON available; `w` and `x` hold `channels` filters of `k * k` weights and input planes of
/// `in_h * in_w` floats; `rows.end <= out_h` and `out(c)` has room for `rows.len() *
/// out_w` floats for each `c < channels`; `s.bias` holds `channels` values; `s.stride` is 1 or
/// 2, `1 <= k <= 7`, `pad_top` and `pad_left` below `k`, `in_h`, `in_w` positive and `out_w` 1
/// to 64 (a padded row of at most 131 floats: every band holds at least one output row's `k`
/// padded rows).
#[target_feature(enable = "neon")]
unsafe fn run(
    w: *const f32,
    x: *const f32,
    mut out: impl FnMut(usize) -> *mut f32,
    rows: Range<usize>,
    channels: usize,
    s: &DepthwiseChannels<'_>,
    k: usize,
) {
    let stride = s.stride;
    if rows.is_empty() {
        // No band to size (a band of no rows would zero a negative count of rows below).
        return;
    }
    let (pitch, band) = bands(k, stride, rows.len(), s.out_w);
    let copy = BandCopy {
        in_h: s.in_h,
        in_w: s.in_w,
        // Input columns the outputs read: the rest (right of every tap) is not copied.
        cols: s.in_w.min(stride * (s.out_w - 1) + k - s.pad_left),
        pad_top: s.pad_top,
        pad_left: s.pad_left,
        stride,
        pitch,
        k,
    };
    let mut padded = std::mem::MaybeUninit::<Padded>::uninit();
    // SAFETY: a place expression in the uninitialised buffer, taken as a pointer, not read.
    let buf = unsafe { std::ptr::addr_of_mut!((*padded.as_mut_ptr()).0) }.cast::<f32>();
    // SAFETY: the rows a band reads, `stride * (band - 1) + k <= buf_rows` of `pitch` floats, fit
    // the buffer; only those are read, after this.
    unsafe { std::ptr::write_bytes(buf, 0, (stride * (band - 1) + k) * pitch) };
    let in_plane = s.in_h * s.in_w;
    for c in 0..channels {
        let bias = s.bias.map_or(0.0, |b| b[c]);
        let part = out(c);
        let mut r0 = rows.start;
        while r0 < rows.end {
            let band_rows = band.min(rows.end - r0);
            // SAFETY: plane `c` of the input, filter `c` and the part of output rows `rows` of
            // channel `c` exist (the caller); the copy fills the band's `stride * (band_rows - 1)
            // + k` padded rows, which fit the buffer, and the strips read them and write output
            // rows `r0 .. r0 + band_rows`, inside the part.
            unsafe {
                copy.band(x.add(c * in_plane), r0, band_rows, buf);
                let mut j0 = 0;
                while j0 < s.out_w {
                    let strip = Strip {
                        buf: buf.add(stride * j0),
                        pitch,
                        k,
                        w: w.add(c * k * k),
                        bias,
                        clamp: s.clamp,
                        out: part.add((r0 - rows.start) * s.out_w + j0),
                        out_w: s.out_w,
                        n: (s.out_w - j0).min(4 * TILE_VECTORS),
                    };
                    match (stride, strip.n.div_ceil(4)) {
                        (1, 1) => strip.rows::<1, 1>(band_rows),
                        (1, 2) => strip.rows::<1, 2>(band_rows),
                        (1, 3) => strip.rows::<1, 3>(band_rows),
                        (1, _) => strip.rows::<1, 4>(band_rows),
                        (_, 1) => strip.rows::<2, 1>(band_rows),
                        (_, 2) => strip.rows::<2, 2>(band_rows),
                        (_, 3) => strip.rows::<2, 3>(band_rows),
                        (_, _) => strip.rows::<2, 4>(band_rows),
                    }
                    j0 += 4 * TILE_VECTORS;
                }
            }
            r0 += band_rows;
        }
    }
}

/// A call's padded row (floats) and band (output rows) over `out_h` output rows (the call's):
/// reads reach column `stride * (j + 4) + k - 2` for a vector of outputs `j .. j + 4`, and a
/// band of `b` output rows reads `stride * (b - 1) + k` padded rows. A band that is not all
/// `out_h` rows is whole tiles. Panics if a band of one output row does not fit the buffer (a
/// row wider than [`Isa::depthwise_3x3`] takes).
///
/// [`Isa::depthwise_3x3`]: crate::arch::Isa::depthwise_3x3
fn bands(k: usize, stride: usize, out_h: usize, out_w: usize) -> (usize, usize) {
    let pitch = stride * out_w.next_multiple_of(4) + k;
    let buf_rows = SCRATCH / pitch;
    assert!(buf_rows >= k, "depthwise {k}x{k}: a padded row of {pitch} floats");
    let fit = (buf_rows - k) / stride + 1;
    let band = if fit >= out_h {
        out_h
    } else if fit > TILE_ROWS {
        fit - fit % TILE_ROWS
    } else {
        fit
    };
    (pitch, band)
}

/// How a call copies input rows into its padded buffer: padded row `p`, column `q` is input row
/// `p - pad_top`, column `q - pad_left`, or zero where that is outside the input.
struct BandCopy {
    in_h: usize,
    in_w: usize,
    /// Input columns copied per row (the rest is never read).
    cols: usize,
    pad_top: usize,
    pad_left: usize,
    stride: usize,
    pitch: usize,
    k: usize,
}

impl BandCopy {
    /// Fills buffer rows `0 .. stride * (rows - 1) + k` with padded rows `stride * r0 ..` of the
    /// plane at `src`. Columns outside `pad_left .. pad_left + cols` of input rows are left as
    /// they are (zeroed once per call); rows outside the input are zeroed whole.
    ///
    /// # Safety
    /// `src` holds `in_h * in_w` floats; the buffer holds `stride * (rows - 1) + k` rows of
    /// `pitch >= pad_left + cols` floats.
    unsafe fn band(&self, src: *const f32, r0: usize, rows: usize, buf: *mut f32) {
        for t in 0..self.stride * (rows - 1) + self.k {
            // SAFETY: buffer row `t` exists; input row `row < in_h` holds `cols <= in_w` floats.
            unsafe {
                let to = buf.add(t * self.pitch);
                match (self.stride * r0 + t).checked_sub(self.pad_top).filter(|&row| row < self.in_h) {
                    Some(row) => std::ptr::copy_nonoverlapping(
                        src.add(row * self.in_w),
                        to.add(self.pad_left),
                        self.cols,
                    ),
                    None => std::ptr::write_bytes(to, 0, self.pitch),
                }
            }
        }
    }
}

/// One strip of up to 16 output columns of one channel's band.
struct Strip {
    /// The band's first padded row, at the strip's first input column (`stride * j0`).
    buf: *const f32,
    /// Floats per padded row.
    pitch: usize,
    /// Filter side.
    k: usize,
    /// The channel's filter, `k * k` row-major.
    w: *const f32,
    /// What every sum starts from.
    bias: f32,
    /// See [`DepthwiseChannels::clamp`].
    clamp: Option<[f32; 2]>,
    /// The band's first output row, at the strip's first column.
    out: *mut f32,
    /// Floats per output row.
    out_w: usize,
    /// Output columns of the strip (1 to 16).
    n: usize,
}

impl Strip {
    /// All `rows` output rows of the strip, in tiles of [`TILE_ROWS`] and then what is left.
    ///
    /// # Safety
    /// As for [`Strip::tile`], over output rows `0 .. rows`.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn rows<const S: usize, const V: usize>(&self, rows: usize) {
        let mut r = 0;
        while r < rows {
            // SAFETY: every tile covers rows below `rows`.
            unsafe {
                match rows - r {
                    1 => self.tile::<S, 1, V>(r),
                    2 => self.tile::<S, 2, V>(r),
                    3 => self.tile::<S, 3, V>(r),
                    _ => self.tile::<S, TILE_ROWS, V>(r),
                }
            }
            r += TILE_ROWS;
        }
    }

    /// Output rows `r .. r + R` of the strip, `V` vectors each (`4 * V >= n`): per padded row the
    /// tile reads and filter column, one load per vector, multiplied into every output row that
    /// reads it.
    ///
    /// # Safety
    /// NEON available; `S` is the stride; the buffer holds initialised padded rows `0 .. S * (r +
    /// R - 1) + k`, `pitch` floats apart, each with `S * 4 * V + k` floats from `buf` on; output
    /// rows `r .. r + R` hold `n` floats from `out`, `out_w` apart.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn tile<const S: usize, const R: usize, const V: usize>(&self, r: usize) {
        let k = self.k;
        let mut acc = [[vdupq_n_f32(self.bias); V]; R];
        // SAFETY: padded row `S * r + rho` exists for `rho < S * (R - 1) + k`; from `buf`, a
        // stride-1 load reads up to column `4 * V - 1 + k - 1`, a stride-2 one (8 floats from `8v
        // + 2m`, `2m <= k - 1`) up to `8 * V - 1 + k - 1`: both below `S * 4 * V + k`.
        unsafe {
            for rho in 0..S * (R - 1) + k {
                let row = self.buf.add((S * r + rho) * self.pitch);
                // Padded row `rho` is filter row `rho - S * i` of output row `i`, where that is one.
                let weights =
                    |i: usize| rho.checked_sub(S * i).filter(|&ky| ky < k).map(|ky| self.w.add(ky * k));
                if S == 1 {
                    for kx in 0..k {
                        let xv: [float32x4_t; V] = std::array::from_fn(|v| vld1q_f32(row.add(4 * v + kx)));
                        for (i, acc) in acc.iter_mut().enumerate() {
                            if let Some(wr) = weights(i) {
                                let wv = *wr.add(kx);
                                for (a, &xv) in acc.iter_mut().zip(&xv) {
                                    *a = vfmaq_n_f32(*a, xv, wv);
                                }
                            }
                        }
                    }
                } else {
                    // Filter columns 2m (the even padded columns) and 2m + 1 (the odd ones).
                    for m in 0..k.div_ceil(2) {
                        let xv: [float32x4x2_t; V] =
                            std::array::from_fn(|v| vld2q_f32(row.add(8 * v + 2 * m)));
                        let odd = 2 * m + 1 < k;
                        for (i, acc) in acc.iter_mut().enumerate() {
                            if let Some(wr) = weights(i) {
                                let even_w = *wr.add(2 * m);
                                for (a, xv) in acc.iter_mut().zip(&xv) {
                                    *a = vfmaq_n_f32(*a, xv.0, even_w);
                                }
                                if odd {
                                    let odd_w = *wr.add(2 * m + 1);
                                    for (a, xv) in acc.iter_mut().zip(&xv) {
                                        *a = vfmaq_n_f32(*a, xv.1, odd_w);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some([lo, hi]) = self.clamp {
            // The IEEE maxNum / minNum forms return the number for a NaN lane, as f32::max does.
            let (lo, hi) = (vdupq_n_f32(lo), vdupq_n_f32(hi));
            acc.iter_mut().flatten().for_each(|a| *a = vminnmq_f32(vmaxnmq_f32(*a, lo), hi));
        }
        for (i, acc) in acc.iter().enumerate() {
            for (v, &sum) in acc.iter().enumerate() {
                // SAFETY: output row `r + i` holds columns `4v .. n` (the caller).
                unsafe { store(self.out.add((r + i) * self.out_w + 4 * v), sum, self.n - 4 * v) };
            }
        }
    }
}

/// Stores the first `n.min(4)` lanes of `sum` at `to`.
///
/// # Safety
/// NEON available; `to` has room for `n.min(4) >= 1` floats.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn store(to: *mut f32, sum: float32x4_t, n: usize) {
    // SAFETY: each arm writes `n.min(4)` floats.
    unsafe {
        match n {
            1 => vst1q_lane_f32::<0>(to, sum),
            2 => vst1_f32(to, vget_low_f32(sum)),
            3 => {
                vst1_f32(to, vget_low_f32(sum));
                vst1q_lane_f32::<2>(to.add(2), sum);
            }
            _ => vst1q_f32(to, sum),
        }
    }
}

#[cfg(all(test, target_arch = "aarch64"))]
mod tests {
    use super::*;
    use crate::arch::conformance::depthwise_by_definition;
    use crate::arch::{depthwise_small_plane, DEPTHWISE_3X3_MAX_WIDTH};
    use crate::testutil::Rng;

    /// One shape to test: filter side, stride, input and output extents, leading pads.
    #[derive(Clone, Copy, Debug)]
    struct Case {
        k: usize,
        stride: usize,
        in_h: usize,
        in_w: usize,
        out_h: usize,
        out_w: usize,
        pad_top: usize,
        pad_left: usize,
    }

    /// Runs every kernel of this file that takes `case` (with and without bias and clamp, NaN
    /// inputs when `nan`) against [`depthwise_by_definition`]; how many took it.
    fn check(rng: &mut Rng, case: Case, nan: bool) -> usize {
        let Case { k, stride, in_h, in_w, out_h, out_w, pad_top, pad_left } = case;
        let takes_small = depthwise_small_plane(k, stride, out_h, out_w, pad_top, pad_left).is_some();
        let takes_3x3 = k == 3
            && out_w <= DEPTHWISE_3X3_MAX_WIDTH
            && pad_top <= 2
            && pad_left <= 1
            && in_w + pad_left >= (stride * out_w + 3).saturating_sub(2 * stride);
        let channels = 1 + rng.below(3);
        let mut x = rng.vec(channels * in_h * in_w);
        if nan {
            // Mid-plane: every output near it reads it.
            x[in_h / 2 * in_w + in_w / 2] = f32::NAN;
        }
        let filters = rng.vec(k * k * channels);
        let biases = rng.vec(channels);
        let bias = Some(&biases[..]);
        for (bias, clamp) in
            [(None, None), (None, Some([0.0, f32::INFINITY])), (bias, Some([-0.5, 0.75])), (bias, None)]
        {
            let shape =
                DepthwiseChannels { in_h, in_w, out_h, out_w, stride, pad_top, pad_left, bias, clamp };
            let want = depthwise_by_definition(&filters, &x, k, &shape);
            let y0 = rng.vec(want.len() + 5);
            let small = |y: &mut [f32]| depthwise_small(&filters, &x, y, shape, k);
            let three = |y: &mut [f32]| {
                let mut parts: Vec<&mut [f32]> = y.chunks_mut(out_h * out_w).collect();
                depthwise_3x3(&filters, &x, 0..out_h, &mut parts, shape)
            };
            let runs = [
                ("depthwise_small", takes_small, &small as &dyn Fn(&mut [f32])),
                ("depthwise_3x3", takes_3x3, &three),
            ];
            for (name, _, run) in runs.into_iter().filter(|r| r.1) {
                let mut got = y0.clone();
                run(&mut got);
                for (idx, g) in got.iter().enumerate() {
                    let ok = match want.get(idx) {
                        Some(w) => {
                            (g - w).abs() <= 1e-5 * (k * k + 1) as f32 + 1e-6 || (g.is_nan() && w.is_nan())
                        }
                        None => g.to_bits() == y0[idx].to_bits(),
                    };
                    assert!(
                        ok,
                        "{name} {channels} channels of {shape:?} at {idx}: {g} vs {:?}",
                        want.get(idx)
                    );
                }
            }
        }
        usize::from(takes_small) + usize::from(takes_3x3)
    }

    /// Input extents around what the outputs read: `short` fewer (down to 1) or `long` more.
    fn input(stride: usize, k: usize, out: usize, pad: usize, short: usize, long: usize) -> usize {
        ((stride * (out - 1) + k).saturating_sub(pad) + long).saturating_sub(short).max(1)
    }

    #[test]
    fn every_width_height_and_stride() {
        // Every output width of both kernels' strips (tails of 1 to 4 lanes, 1 to 4 vectors, a
        // second strip), heights covering every row tile, both strides, every filter side.
        let mut rng = Rng::new(71);
        for k in 1..=7 {
            for stride in 1..=2 {
                for out_w in 1..=2 * 4 * TILE_VECTORS + 3 {
                    for out_h in 1..=2 * TILE_ROWS + 1 {
                        let (pad_top, pad_left) = (rng.below(k), rng.below(k.min(2)));
                        let in_w = input(stride, k, out_w, pad_left, rng.below(stride + 1), rng.below(3));
                        let in_h = input(stride, k, out_h, pad_top, rng.below(k + 1), rng.below(3));
                        let case = Case { k, stride, in_h, in_w, out_h, out_w, pad_top, pad_left };
                        let taken = check(&mut rng, case, false);
                        assert!(taken > 0 || (k != 3 && out_w > 16), "{case:?} taken by no kernel");
                    }
                }
            }
        }
    }

    #[test]
    fn every_padding() {
        // Every pad above and left of the input the kernels take, with inputs shorter and
        // narrower than the outputs read (zeros below and right) and longer and wider.
        let mut rng = Rng::new(72);
        for k in 1..=7 {
            for stride in 1..=2 {
                for pad_top in 0..k {
                    for pad_left in 0..k {
                        for (out_h, out_w, short, long) in
                            [(1, 3, 0, 0), (5, 5, k, 0), (6, 13, 1, 3), (3, 9, 0, 2)]
                        {
                            let in_w = input(stride, k, out_w, pad_left, short, long);
                            let in_h = input(stride, k, out_h, pad_top, short, long);
                            let case = Case { k, stride, in_h, in_w, out_h, out_w, pad_top, pad_left };
                            assert!(check(&mut rng, case, false) > 0, "{case:?} taken by no kernel");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tall_3x3_planes_go_in_bands() {
        // Planes whose padded rows do not fit the buffer at once: bands of whole tiles, then
        // the rest, each band reading the rows of the one before it.
        let mut rng = Rng::new(73);
        for (stride, out_w, out_h) in [
            (1, 64, 60),
            (1, 64, 64),
            (1, 61, 127),
            (1, 33, 120),
            (1, 1, 600),
            (2, 64, 16),
            (2, 64, 17),
            (2, 64, 64),
            (2, 63, 30),
            (2, 17, 61),
            (2, 5, 200),
            (2, 1, 190),
        ] {
            let (_, band) = bands(3, stride, out_h, out_w);
            assert!(band < out_h, "{out_h} rows of {out_w} at stride {stride} take one band");
            for (pad_top, pad_left) in [(0, 0), (1, 1), (2, 0), (2, 1)] {
                let in_w = input(stride, 3, out_w, pad_left, rng.below(stride + 1), 0);
                let in_h = input(stride, 3, out_h, pad_top, rng.below(4), rng.below(2));
                let case = Case { k: 3, stride, in_h, in_w, out_h, out_w, pad_top, pad_left };
                assert!(check(&mut rng, case, false) > 0, "{case:?} taken by no kernel");
            }
        }
    }

    #[test]
    fn nan_sums_clamp_to_lo() {
        // A NaN input makes NaN sums: clamped they become `lo`, as `f32::max` has it; unclamped
        // they stay NaN.
        let mut rng = Rng::new(74);
        for (k, stride, out_w, out_h) in [(3, 1, 7, 6), (3, 2, 21, 5), (5, 1, 14, 14), (7, 2, 4, 3)] {
            let case = Case {
                k,
                stride,
                in_h: input(stride, k, out_h, 1, 0, 0),
                in_w: input(stride, k, out_w, 1, 0, 0),
                out_h,
                out_w,
                pad_top: 1,
                pad_left: 1,
            };
            assert!(check(&mut rng, case, true) > 0, "{case:?} taken by no kernel");
        }
    }
}
