//! 2-D transposed convolution (NCHW, ONNX weight layout `[in_c, out_c / groups, k_h, k_w]`).
//!
//! Output channels are split over the worker threads, or, when input rows make disjoint output
//! rows (stride equal to the kernel, unpadded: upsampling), input rows are, each worker computing
//! every channel of its rows. For a block of output channels, the weights are decoded into a
//! transposed panel (rows: output channel × tap, columns: input channels), multiplied with a tile
//! of input pixels by [`Isa::gemm_rows`], and each product row is placed (or scattered) at its
//! tap's output positions.

use std::ops::Range;

use pith_format::TensorView;

use crate::arch::Isa;
use crate::conv::valid_range;
use crate::parallel::{split_rows, split_units, with_plane_offsets, TASKS_PER_THREAD};
use crate::{check_len, check_min_len, Activation, Conv2dParams, KernelError, Kernels, WeightRows};

/// f32 elements of a transposed weight panel.
const PANEL_BUDGET: usize = 64 * 1024;
/// f32 elements of a product tile (panel rows × input pixels).
const PRODUCT_BUDGET: usize = 64 * 1024;

/// Weights per row (input channel): `out_c / groups * k_h * k_w`.
fn row_len(p: &Conv2dParams) -> usize {
    p.out_per_group() * p.k_h * p.k_w
}

/// Output channels per panel.
fn block_channels(p: &Conv2dParams) -> usize {
    let per_channel = p.k_h * p.k_w * p.in_per_group();
    (PANEL_BUDGET / per_channel.max(1)).clamp(1, p.out_per_group().max(1))
}

/// Input pixels per product tile (whole input rows when [`disjoint_rows`]).
fn tile_pixels(p: &Conv2dParams) -> usize {
    let rows = block_channels(p) * p.k_h * p.k_w;
    let t = (PRODUCT_BUDGET / rows.max(1)).clamp(1, (p.in_h * p.in_w).max(1));
    if disjoint_rows(p) {
        (t / p.in_w.max(1)).max(1) * p.in_w
    } else {
        t
    }
}

/// Stride equal to the kernel, no dilation, padding or output padding (PP-OCRv4's 2×2 / 2
/// upsampling): every output gets exactly one tap, and input rows `r0..r1` make exactly output
/// rows `r0 * k_h .. r1 * k_h`, so a tile of whole input rows can be finished (bias, taps,
/// activation) while its outputs are in cache.
fn disjoint_rows(p: &Conv2dParams) -> bool {
    p.stride_h == p.k_h
        && p.stride_w == p.k_w
        && p.dil_h == 1
        && p.dil_w == 1
        && p.pad_top == 0
        && p.pad_left == 0
        && p.out_h == p.in_h * p.k_h
        && p.out_w == p.in_w * p.k_w
}

/// Scratch elements one worker of [`conv_transpose2d`] needs (at least 1): a panel, one decoded
/// row and a product tile.
pub fn scratch_len(p: &Conv2dParams) -> usize {
    if p.groups == 0 {
        return 1;
    }
    let rows = block_channels(p) * p.k_h * p.k_w;
    (rows * p.in_per_group() + row_len(p) + rows * tile_pixels(p)).max(1)
}

/// See [`crate::Kernels::conv_transpose2d`].
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d(
    kernels: &Kernels,
    x: &[f32],
    w: &TensorView<'_>,
    scale: Option<&[f32]>,
    bias: Option<&[f32]>,
    p: &Conv2dParams,
    act: Activation,
    y: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    p.check()?;
    let in_plane = p.in_h * p.in_w;
    let out_plane = p.out_h * p.out_w;
    check_len("conv-transpose input", x.len(), p.batch * p.in_c * in_plane)?;
    check_len("conv-transpose output", y.len(), p.batch * p.out_c * out_plane)?;
    if let Some(b) = bias {
        check_len("conv-transpose bias", b.len(), p.out_c)?;
    }
    if let Some(s) = scale {
        check_len("conv-transpose scale", s.len(), p.out_c)?;
    }
    let per_task = scratch_len(p);
    check_min_len("conv-transpose scratch", scratch.len(), per_task * kernels.threads())?;
    let rows = WeightRows::new(*w, p.in_c, row_len(p))?.with_isa(&kernels.isa());
    if out_plane == 0 || p.out_c == 0 {
        return Ok(());
    }
    let layer = Layer { isa: kernels.isa(), rows: &rows, scale, bias, act, p };
    for (b, yb) in y.chunks_exact_mut(p.out_c * out_plane).enumerate() {
        let xb = &x[b * p.in_c * in_plane..][..p.in_c * in_plane];
        if disjoint_rows(p) {
            // Input rows make disjoint output rows: split them, so a layer with few output
            // channels (PP-OCRv4's last upsampling has one) still spreads over the threads.
            let row_work = p.in_w * p.in_per_group() * p.out_c * p.k_h * p.k_w;
            let row_len = p.k_h * p.out_w;
            split_rows(
                kernels,
                p.in_h,
                row_len,
                row_work,
                1,
                TASKS_PER_THREAD,
                yb,
                scratch,
                per_task,
                |rs, parts, s| layer.input_rows(xb, rs, parts, s),
            );
            continue;
        }
        let work = in_plane * row_len(p) / p.out_per_group().max(1) * p.in_per_group();
        split_units(kernels, p.out_c, out_plane, work, yb, scratch, per_task, |ocs, ys, s| {
            layer.channels(xb, ocs, ys, s)
        });
    }
    Ok(())
}

/// One layer's weights, epilogue and geometry, shared by the worker threads.
struct Layer<'a, 'w> {
    isa: Isa,
    rows: &'a WeightRows<'w>,
    /// Per output channel, a factor its decoded weights are multiplied by (a fused BatchNorm).
    scale: Option<&'a [f32]>,
    bias: Option<&'a [f32]>,
    act: Activation,
    p: &'a Conv2dParams,
}

impl Layer<'_, '_> {
    /// Computes output channels `ocs` of one image into `y` (their planes, back to back).
    fn channels(&self, xb: &[f32], ocs: Range<usize>, y: &mut [f32], scratch: &mut [f32]) {
        let p = self.p;
        let (cin_g, cout_g) = (p.in_per_group(), p.out_per_group());
        let (in_plane, out_plane) = (p.in_h * p.in_w, p.out_h * p.out_w);
        for (ocl, yplane) in y.chunks_exact_mut(out_plane).enumerate() {
            yplane.fill(self.bias.map_or(0.0, |b| b[ocs.start + ocl]));
        }
        for (g, oc, end) in self.channel_blocks(ocs.clone()) {
            let xg = &xb[g * cin_g * in_plane..][..cin_g * in_plane];
            let yblock = &mut y[(oc - ocs.start) * out_plane..(end - ocs.start) * out_plane];
            self.block(xg, g, oc - g * cout_g..end - g * cout_g, yblock, scratch);
        }
        (self.isa.activate)(self.act, y);
    }

    /// For [`disjoint_rows`] layers: every output channel of input rows `rs` of one image, where
    /// `parts[oc]` is channel `oc`'s output rows `rs.start * k_h .. rs.end * k_h`.
    fn input_rows(&self, xb: &[f32], rs: Range<usize>, parts: &mut [&mut [f32]], scratch: &mut [f32]) {
        let p = self.p;
        // Where each input channel's plane starts (the GEMM's rows of `b`).
        with_plane_offsets(p.in_per_group(), p.in_h * p.in_w, |planes| {
            self.input_rows_at(xb, rs, parts, scratch, planes)
        })
    }

    /// [`Layer::input_rows`] with `planes[c]`, where input plane `c` of a group starts.
    fn input_rows_at(
        &self,
        xb: &[f32],
        rs: Range<usize>,
        parts: &mut [&mut [f32]],
        scratch: &mut [f32],
        planes: &[usize],
    ) {
        let p = self.p;
        let (cin_g, cout_g, taps) = (p.in_per_group(), p.out_per_group(), p.k_h * p.k_w);
        let in_plane = p.in_h * p.in_w;
        let tile = tile_pixels(p);
        for (g, oc, end) in self.channel_blocks(0..p.out_c) {
            let xg = &xb[g * cin_g * in_plane..][..cin_g * in_plane];
            let ocls = oc - g * cout_g..end - g * cout_g;
            let rows = ocls.len() * taps;
            let (panel, product) = self.decode_panel(g, ocls, scratch);
            let mut r0 = rs.start;
            while r0 < rs.end {
                // Whole input rows per tile (`tile_pixels` is a multiple of in_w here).
                let nr = (tile / p.in_w.max(1)).max(1).min(rs.end - r0);
                let (t0, t) = (r0 * p.in_w, nr * p.in_w);
                let z = &mut product[..rows * t];
                self.products(panel, cin_g, &xg[t0..], planes, t, z);
                let out_rows = (r0 - rs.start) * p.k_h * p.out_w..(r0 - rs.start + nr) * p.k_h * p.out_w;
                for (ocl, part) in parts[oc..end].iter_mut().enumerate() {
                    let bias = self.bias.map_or(0.0, |b| b[oc + ocl]);
                    let out = &mut part[out_rows.clone()];
                    place_tile(&z[ocl * taps * t..][..taps * t], t, p, bias, out);
                    (self.isa.activate)(self.act, out);
                }
                r0 += nr;
            }
        }
    }

    /// `z[r * t + j] = sum_c panel[r * cin + c] * x[planes[c] + j]`: every tap row of a panel over
    /// `t` input pixels, overwriting `z` (no zeroed accumulator to read back).
    fn products(&self, panel: &[f32], cin: usize, x: &[f32], planes: &[usize], t: usize, z: &mut [f32]) {
        (self.isa.gemm_rows_at)(panel, cin, x, planes, t, z, t)
    }

    /// The panels of output channels `ocs`: `(g, start, end)` for runs of at most
    /// [`block_channels`] channels, each inside one group `g`.
    fn channel_blocks(&self, ocs: Range<usize>) -> impl Iterator<Item = (usize, usize, usize)> {
        let (cout_g, block) = (self.p.out_per_group().max(1), block_channels(self.p));
        let mut oc = ocs.start;
        std::iter::from_fn(move || {
            (oc < ocs.end).then(|| {
                let g = oc / cout_g;
                let end = ocs.end.min((g + 1) * cout_g).min(oc + block);
                let run = (g, oc, end);
                oc = end;
                run
            })
        })
    }

    /// Decodes group `g`'s weights for its local output channels `ocls` into the front of
    /// `scratch`, transposed: `panel[(ocl, tap)][ic] = W[ic][ocl][tap]` (times the channel's
    /// scale, if any); returns the panel and the scratch after the decoded row (the product
    /// tile's room).
    fn decode_panel<'s>(
        &self,
        g: usize,
        ocls: Range<usize>,
        scratch: &'s mut [f32],
    ) -> (&'s [f32], &'s mut [f32]) {
        let p = self.p;
        let (cin_g, taps) = (p.in_per_group(), p.k_h * p.k_w);
        let (panel, rest) = scratch.split_at_mut(ocls.len() * taps * cin_g);
        let (wrow, product) = rest.split_at_mut(row_len(p));
        for ic in 0..cin_g {
            self.rows.decode(g * cin_g + ic, wrow);
            let part = &wrow[ocls.start * taps..ocls.end * taps];
            match self.scale {
                Some(scale) => {
                    let first = g * p.out_per_group() + ocls.start;
                    for (r, &v) in part.iter().enumerate() {
                        panel[r * cin_g + ic] = v * scale[first + r / taps];
                    }
                }
                None => {
                    for (r, &v) in part.iter().enumerate() {
                        panel[r * cin_g + ic] = v;
                    }
                }
            }
        }
        (panel, product)
    }

    /// Adds the contribution of group `g`'s input `xg` to its local output channels `ocls`
    /// (planes filled with the bias; layers that are not [`disjoint_rows`]).
    fn block(&self, xg: &[f32], g: usize, ocls: Range<usize>, y: &mut [f32], scratch: &mut [f32]) {
        let p = self.p;
        let (cin_g, taps) = (p.in_per_group(), p.k_h * p.k_w);
        let in_plane = p.in_h * p.in_w;
        let rows = ocls.len() * taps;
        let (panel, product) = self.decode_panel(g, ocls, scratch);
        let tile = tile_pixels(p);
        // Where each input channel's plane starts (the GEMM's rows of `b`).
        with_plane_offsets(cin_g, in_plane, |planes| {
            let mut t0 = 0;
            while t0 < in_plane {
                let t = tile.min(in_plane - t0);
                let z = &mut product[..rows * t];
                self.products(panel, cin_g, &xg[t0..], planes, t, z);
                for (ocl, yplane) in y.chunks_exact_mut(p.out_h * p.out_w).enumerate() {
                    scatter_tile(&z[ocl * taps * t..][..taps * t], t0, t, p, yplane);
                }
                t0 += t;
            }
        })
    }
}

/// For [`disjoint_rows`] layers: writes one channel's products `z` (`k_h * k_w` rows of `t`
/// input pixels, whole input rows) plus `bias` into `out`, the output rows they make: output row
/// `r * k_h + ky` is the taps `(ky, 0..k_w)` of the tile's input row `r`, interleaved.
fn place_tile(z: &[f32], t: usize, p: &Conv2dParams, bias: f32, out: &mut [f32]) {
    let (kh, kw, w) = (p.k_h, p.k_w, p.in_w);
    for (r, orows) in out.chunks_exact_mut(kh * p.out_w).enumerate() {
        let pix = r * w;
        for (ky, orow) in orows.chunks_exact_mut(p.out_w).enumerate() {
            let tap = |kx: usize| &z[(ky * kw + kx) * t + pix..][..w];
            if kw == 2 {
                // The common 2x2 / 2 case as one interleaving loop.
                let (a, b) = (tap(0), tap(1));
                for ((o, &x0), &x1) in orow.chunks_exact_mut(2).zip(a).zip(b) {
                    o[0] = x0 + bias;
                    o[1] = x1 + bias;
                }
            } else {
                for kx in 0..kw {
                    for (o, &v) in orow[kx..].iter_mut().step_by(kw).zip(tap(kx)) {
                        *o = v + bias;
                    }
                }
            }
        }
    }
}

/// Adds one channel's products `z` (`k_h * k_w` rows of `t` input pixels starting at `t0`) to
/// the output positions their taps reach.
fn scatter_tile(z: &[f32], t0: usize, t: usize, p: &Conv2dParams, yplane: &mut [f32]) {
    for ky in 0..p.k_h {
        let offy = (ky * p.dil_h) as isize - p.pad_top as isize;
        for kx in 0..p.k_w {
            let zr = &z[(ky * p.k_w + kx) * t..][..t];
            let offx = (kx * p.dil_w) as isize - p.pad_left as isize;
            let (ix_lo, ix_hi) = valid_range(p.in_w, p.stride_w, offx, p.out_w);
            // Walk the tile one input row segment at a time.
            let mut done = 0;
            while done < t {
                let pix = t0 + done;
                let (iy, ix0) = (pix / p.in_w, pix % p.in_w);
                let n = (p.in_w - ix0).min(t - done);
                let seg = &zr[done..done + n];
                done += n;
                let oy = (iy * p.stride_h) as isize + offy;
                if oy < 0 || oy >= p.out_h as isize {
                    continue;
                }
                let yrow = &mut yplane[oy as usize * p.out_w..][..p.out_w];
                for ix in ix_lo.max(ix0)..ix_hi.min(ix0 + n) {
                    yrow[((ix * p.stride_w) as isize + offx) as usize] += seg[ix - ix0];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, decode_all, kernel_sets, random_weight, Rng, WeightKind};

    /// Plain scatter loop on fully decoded weights.
    fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, p: &Conv2dParams) -> Vec<f32> {
        let (cin_g, cout_g) = (p.in_per_group(), p.out_per_group());
        let mut y = vec![0.0; p.batch * p.out_c * p.out_h * p.out_w];
        for b in 0..p.batch {
            for oc in 0..p.out_c {
                for o in 0..p.out_h * p.out_w {
                    y[(b * p.out_c + oc) * p.out_h * p.out_w + o] = bias.map_or(0.0, |b| b[oc]);
                }
            }
            for ic in 0..p.in_c {
                let g = ic / cin_g;
                for ocl in 0..cout_g {
                    let oc = g * cout_g + ocl;
                    for iy in 0..p.in_h {
                        for ix in 0..p.in_w {
                            for ky in 0..p.k_h {
                                for kx in 0..p.k_w {
                                    let oy = (iy * p.stride_h + ky * p.dil_h) as isize - p.pad_top as isize;
                                    let ox = (ix * p.stride_w + kx * p.dil_w) as isize - p.pad_left as isize;
                                    if oy < 0 || ox < 0 || oy >= p.out_h as isize || ox >= p.out_w as isize {
                                        continue;
                                    }
                                    let xv = x[((b * p.in_c + ic) * p.in_h + iy) * p.in_w + ix];
                                    let wv = w[((ic * cout_g + ocl) * p.k_h + ky) * p.k_w + kx];
                                    y[((b * p.out_c + oc) * p.out_h + oy as usize) * p.out_w
                                        + ox as usize] += xv * wv;
                                }
                            }
                        }
                    }
                }
            }
        }
        y
    }

    /// Runs `p` under every kernel set against the reference, with a fused activation, without
    /// and with a scale per output channel.
    fn check_all_paths(rng: &mut Rng, sets: &[Kernels], p: &Conv2dParams, kind: WeightKind, with_bias: bool) {
        let data = random_weight(rng, kind, p.in_c, row_len(p));
        let wf = decode_all(&data, p.in_c);
        let x = rng.vec(p.batch * p.in_c * p.in_h * p.in_w);
        let bias = rng.vec(p.out_c);
        let bias = with_bias.then_some(&bias[..]);
        let scale: Vec<f32> = rng.vec(p.out_c).iter().map(|v| v * 3.0).collect();
        let act = Activation::LeakyRelu(0.3);
        let sums = reference(&x, &wf, None, p);
        let plane = p.out_h * p.out_w;
        let want = |scale: Option<&[f32]>| -> Vec<f32> {
            let channel = |i: usize| i / plane % p.out_c;
            let scaled = |i: usize, v: f32| scale.map_or(v, |s| v * s[channel(i)]);
            sums.iter()
                .enumerate()
                .map(|(i, &v)| act.apply(scaled(i, v) + bias.map_or(0.0, |b| b[channel(i)])))
                .collect()
        };
        // The input against a no-access page (see `testutil::Guarded`).
        let x = crate::testutil::Guarded::new(&x, crate::testutil::Edge::End);
        for scale in [None, Some(&scale[..])] {
            let want = want(scale);
            for kernels in sets {
                let mut y = vec![f32::NAN; want.len()];
                let mut scratch = vec![0.0; kernels.conv_transpose2d_scratch_len(p)];
                kernels
                    .conv_transpose2d(x.as_slice(), &data.view(), scale, bias, p, act, &mut y, &mut scratch)
                    .unwrap();
                assert_close(&y, &want, &format!("{kernels:?} {kind:?} {p:?} scale {}", scale.is_some()));
            }
        }
    }

    #[test]
    fn matches_reference_on_random_shapes_encodings_paths_and_threads() {
        let mut rng = Rng::new(11);
        let sets = kernel_sets();
        let kinds = WeightKind::all();
        for case in 0..60 {
            let groups = 1 + rng.below(3);
            let in_c = groups * (1 + rng.below(3));
            let out_c = groups * (1 + rng.below(3));
            let (k_h, k_w) = (1 + rng.below(4), 1 + rng.below(4));
            let (stride_h, stride_w) = (1 + rng.below(3), 1 + rng.below(3));
            let (dil_h, dil_w) = (1 + rng.below(2), 1 + rng.below(2));
            let (in_h, in_w) = (1 + rng.below(6), 1 + rng.below(7));
            let (pads, out_pad) = ([rng.below(3), rng.below(3), rng.below(2), rng.below(2)], rng.below(2));
            let full = |i: usize, s: usize, d: usize, k: usize| (i - 1) * s + d * (k - 1) + 1;
            let out_h = full(in_h, stride_h, dil_h, k_h) + out_pad;
            let out_w = full(in_w, stride_w, dil_w, k_w);
            let p = Conv2dParams {
                batch: 1 + rng.below(2),
                in_c,
                in_h,
                in_w,
                out_c,
                out_h: (out_h).saturating_sub(pads[0] + pads[2]).max(1),
                out_w: (out_w).saturating_sub(pads[1] + pads[3]).max(1),
                k_h,
                k_w,
                stride_h,
                stride_w,
                pad_top: pads[0],
                pad_left: pads[1],
                dil_h,
                dil_w,
                groups,
            };
            check_all_paths(&mut rng, &sets, &p, kinds[case % kinds.len()], case % 2 == 0);
        }
    }

    #[test]
    fn several_panels_and_tiles() {
        let mut rng = Rng::new(12);
        let sets = kernel_sets();
        let base = Conv2dParams {
            batch: 1,
            in_c: 2,
            in_h: 20,
            in_w: 17,
            out_c: 16,
            out_h: 41,
            out_w: 35,
            k_h: 4,
            k_w: 4,
            stride_h: 2,
            stride_w: 2,
            pad_top: 1,
            pad_left: 1,
            dil_h: 1,
            dil_w: 1,
            groups: 1,
        };
        // 256 product rows: tiles of 256 input pixels, ending mid-row of the 17-wide input.
        assert!(tile_pixels(&base) < base.in_h * base.in_w);
        // 1024 inputs x 9 taps: panels of 7 channels, so 10 output channels take two.
        let wide = Conv2dParams {
            in_c: 1024,
            in_h: 4,
            in_w: 4,
            out_c: 10,
            out_h: 9,
            out_w: 9,
            k_h: 3,
            k_w: 3,
            pad_top: 0,
            pad_left: 0,
            ..base
        };
        assert!(block_channels(&wide) < wide.out_c);
        let kind = WeightKind::Codebook(4, pith_format::ir::CodebookKind::SharedScaled, true);
        // Stride equal to the kernel (2x2 / 2 and 3x1 / 3x1), unpadded: tiles of whole input rows
        // finished one by one, including the last partial tile and grouped channels.
        let disjoint = Conv2dParams {
            in_c: 24,
            in_h: 45,
            in_w: 33,
            out_c: 24,
            out_h: 90,
            out_w: 66,
            k_h: 2,
            k_w: 2,
            pad_top: 0,
            pad_left: 0,
            ..base
        };
        let tall = Conv2dParams {
            k_h: 3,
            k_w: 1,
            stride_h: 3,
            stride_w: 1,
            out_h: 135,
            out_w: 33,
            groups: 3,
            ..disjoint
        };
        assert!(tile_pixels(&disjoint) < disjoint.in_h * disjoint.in_w);
        // One output channel (PP-OCRv4's last upsampling: only the row split spreads it over
        // threads), and channels in two panels of one row split.
        let single = Conv2dParams { out_c: 1, ..disjoint };
        let panels =
            Conv2dParams { in_c: 1024, in_h: 5, in_w: 6, out_c: 20, out_h: 10, out_w: 12, ..disjoint };
        assert!(block_channels(&panels) < panels.out_c);
        for p in [disjoint, tall, single, panels] {
            assert!(disjoint_rows(&p) && tile_pixels(&p).is_multiple_of(p.in_w), "{p:?}");
        }
        for p in [base, wide, disjoint, tall, single, panels] {
            check_all_paths(&mut rng, &sets, &p, kind, true);
        }
        check_all_paths(&mut rng, &sets, &disjoint, WeightKind::F32, false);
    }

    #[test]
    fn rejects_weight_of_wrong_shape() {
        let mut rng = Rng::new(2);
        let p = Conv2dParams {
            batch: 1,
            in_c: 2,
            in_h: 3,
            in_w: 3,
            out_c: 2,
            out_h: 6,
            out_w: 6,
            k_h: 2,
            k_w: 2,
            stride_h: 2,
            stride_w: 2,
            dil_h: 1,
            dil_w: 1,
            groups: 1,
            ..Default::default()
        };
        let data = random_weight(&mut rng, WeightKind::F32, 2, 9);
        let x = vec![0.0; 18];
        let mut y = vec![0.0; 72];
        let mut s = vec![0.0; scratch_len(&p)];
        let err = conv_transpose2d(
            &Kernels::default(),
            &x,
            &data.view(),
            None,
            None,
            &p,
            Activation::None,
            &mut y,
            &mut s,
        );
        assert!(matches!(err, Err(KernelError::Weight(_))));
    }
}
