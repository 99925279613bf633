//! Winograd F(2×2, 3×3) for stride-1, undilated, single-group 3×3 convolutions.
//!
//! Each 2×2 output tile is computed from a 4×4 input tile with 16 multiplies per (input channel,
//! filter) pair instead of 36: the input tile is transformed (`V = Bᵀ d B`), the filter
//! (`U = G g Gᵀ`, decoded and transformed per call: a bounded panel, never stored), the 16
//! element positions become 16 GEMMs `M_ξ = U_ξ · V_ξ` over (filters × input channels) ×
//! (input channels × tiles) on the path's register-blocked [`Isa::gemm_rows`], and the output
//! tile is `Aᵀ M A` (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//! That is 2.25× fewer multiply-adds; the transforms are additions, vectorised over a row of
//! tiles by splitting the padded input rows into even and odd columns.
//!
//! Work is split over output rows in whole tiles (pairs of rows).

use std::ops::Range;

use crate::arch::Isa;
use crate::{ChannelActivation, Conv2dParams, WeightRows};

/// Most f32 elements of the transformed filters (`16 × out_c × in_c`, 1 MiB).
const U_BUDGET: usize = 1 << 18;
/// Most f32 elements of the transformed input of one block of tile rows (`16 × in_c × tiles`),
/// when more than one tile row fits (1 MiB: the block stays in L2 while its 16 GEMMs read it).
const V_BUDGET: usize = 1 << 18;
/// Most f32 elements of the transformed input of a single tile row (2 MiB). Wider layers stay on
/// the direct path; up to this size one row of tiles per block, though it spills L2, measured
/// faster than the direct path: PP-OCRv4 det's 3×3 96→24 head conv at a full page (184×368, 1.1
/// MiB per tile row) took 29 ms against 39 ms (criterion `conv_layers`, 1 thread, Zen 4).
const V_ROW_LIMIT: usize = 1 << 19;

/// Whether `p` runs through Winograd: 3×3, stride 1, no dilation, one group, enough channels for
/// the GEMMs to outweigh the transforms, and filters small enough to transform per call.
pub(crate) fn applies(p: &Conv2dParams) -> bool {
    p.k_h == 3
        && p.k_w == 3
        && p.stride_h == 1
        && p.stride_w == 1
        && p.dil_h == 1
        && p.dil_w == 1
        && p.groups == 1
        && p.in_c >= 16
        && p.out_c >= 8
        && p.out_h >= 2
        && p.out_w >= 4
        && 16 * p.out_c * p.in_c <= U_BUDGET
        && 16 * p.in_c * p.out_w.div_ceil(2) <= V_ROW_LIMIT
}

/// Tiles per output row.
fn tiles_x(p: &Conv2dParams) -> usize {
    p.out_w.div_ceil(2)
}

/// Tile rows per GEMM block.
fn block_tile_rows(p: &Conv2dParams) -> usize {
    (V_BUDGET / (16 * p.in_c * tiles_x(p)).max(1)).clamp(1, p.out_h.div_ceil(2))
}

/// Scratch one worker needs: transformed filters, one block's transformed input and products,
/// one decoded filter, one channel's padded input rows of the block split into even and odd
/// columns, and the transforms' intermediate rows.
pub(crate) fn scratch_len(p: &Conv2dParams) -> usize {
    let (tx, trs) = (tiles_x(p), block_tile_rows(p));
    let n = trs * tx;
    16 * p.out_c * p.in_c
        + 16 * p.in_c * n
        + 16 * p.out_c * n
        + 9 * p.in_c
        + halves_len(p, trs)
        + 16 * (tx + 1)
}

/// Elements of the even/odd column halves of `2 * trs + 2` padded input rows of one channel.
fn halves_len(p: &Conv2dParams, trs: usize) -> usize {
    (2 * trs + 2) * 2 * (tiles_x(p) + 1)
}

/// The layer, shared by the workers.
pub(crate) struct Winograd<'a, 'w> {
    pub isa: Isa,
    pub rows: &'a WeightRows<'w>,
    pub bias: Option<&'a [f32]>,
    /// Applied per output channel.
    pub act: ChannelActivation<'a>,
    pub p: &'a Conv2dParams,
}

impl Winograd<'_, '_> {
    /// Output rows `rows` (starting at an even row) of every filter of image `xb` into `out`
    /// (`out[oc]` holds those rows), adding the first `residual_channels` planes of `residual`.
    pub(crate) fn run(
        &self,
        xb: &[f32],
        residual: Option<(&[f32], usize)>,
        rows: Range<usize>,
        out: &mut [&mut [f32]],
        scratch: &mut [f32],
    ) {
        let p = self.p;
        let (cin, cout, tx) = (p.in_c, p.out_c, tiles_x(p));
        let trs_max = block_tile_rows(p);
        let n_max = trs_max * tx;
        let (u, rest) = scratch.split_at_mut(16 * cout * cin);
        let (v, rest) = rest.split_at_mut(16 * cin * n_max);
        let (m, rest) = rest.split_at_mut(16 * cout * n_max);
        let (filter, rest) = rest.split_at_mut(9 * cin);
        let (halves, work) = rest.split_at_mut(halves_len(p, trs_max));
        self.transform_filters(u, filter);
        let t = Transforms::for_isa(&self.isa);
        let (ty_start, ty_end) = (rows.start / 2, rows.end.div_ceil(2));
        let half = tx + 1;
        let mut ty0 = ty_start;
        while ty0 < ty_end {
            let trs = trs_max.min(ty_end - ty0);
            let n = trs * tx;
            // Channel by channel, padded input rows 2ty0 .. 2(ty0 + trs) + 2 split by column
            // parity, then transformed while the split rows are still in L1 (splitting every
            // channel first, then transforming, sent a band of all channels through L2 twice).
            let band = 2 * trs + 2;
            let hc = &mut halves[..band * 2 * half];
            for (ic, xc) in xb.chunks_exact(p.in_h * p.in_w).take(cin).enumerate() {
                for (r, h) in hc.chunks_exact_mut(2 * half).enumerate() {
                    let (even, odd) = h.split_at_mut(half);
                    let row = (2 * ty0 + r).checked_sub(p.pad_top).filter(|&iy| iy < p.in_h);
                    (t.split)(row.map(|iy| &xc[iy * p.in_w..][..p.in_w]), p.pad_left, even, odd);
                }
                for tr in 0..trs {
                    let rows4 = &hc[2 * tr * 2 * half..][..4 * 2 * half];
                    (t.input)(rows4, tx, work, v, ic * n + tr * tx, cin * n);
                }
            }
            let m = &mut m[..16 * cout * n];
            crate::zero(m);
            for (xi, (uxi, mxi)) in u.chunks_exact(cout * cin).zip(m.chunks_exact_mut(cout * n)).enumerate() {
                (self.isa.gemm_rows)(uxi, cin, &v[xi * cin * n..][..cin * n], n, n, mxi, n);
            }
            for (oc, plane) in out.iter_mut().enumerate() {
                let bias = self.bias.map_or(0.0, |b| b[oc]);
                for tr in 0..trs {
                    let ty = ty0 + tr;
                    let pair = (t.output)(m, oc * n + tr * tx, cout * n, tx, work);
                    // Output rows 2ty and 2ty + 1 that are ours (and exist).
                    for (dy, src) in pair.chunks_exact(2 * tx).enumerate() {
                        let oy = 2 * ty + dy;
                        if oy < rows.start || oy >= rows.end {
                            continue;
                        }
                        let res = residual
                            .filter(|&(_, channels)| oc < channels)
                            .map(|(r, _)| &r[(oc * p.out_h + oy) * p.out_w..][..p.out_w]);
                        let dst = &mut plane[(oy - rows.start) * p.out_w..][..p.out_w];
                        (self.isa.store_rows)(self.act.of(oc), src, 2 * tx, bias, res, dst, p.out_w);
                    }
                }
            }
            ty0 += trs;
        }
    }

    /// `u[ξ][oc][ic] = (G g Gᵀ)[ξ]` for every filter `g` (row `oc`, 3×3 taps per input channel).
    fn transform_filters(&self, u: &mut [f32], filter: &mut [f32]) {
        let (cin, cout) = (self.p.in_c, self.p.out_c);
        for oc in 0..cout {
            self.rows.decode(oc, filter);
            for (ic, g) in filter.chunks_exact(9).enumerate() {
                // G g: 4 rows of 3.
                let mut gg = [[0.0f32; 3]; 4];
                for c in 0..3 {
                    let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
                    gg[0][c] = g0;
                    gg[1][c] = 0.5 * (g0 + g1 + g2);
                    gg[2][c] = 0.5 * (g0 - g1 + g2);
                    gg[3][c] = g2;
                }
                // (G g) Gᵀ: 4 columns per row.
                for (a, r) in gg.iter().enumerate() {
                    let cols = [r[0], 0.5 * (r[0] + r[1] + r[2]), 0.5 * (r[0] - r[1] + r[2]), r[2]];
                    for (j, &val) in cols.iter().enumerate() {
                        u[((a * 4 + j) * cout + oc) * cin + ic] = val;
                    }
                }
            }
        }
    }
}

/// Splits one padded input row (`None`: a padding row) into its even and odd columns:
/// padded column `c` is `xrow[c - pad_left]` inside the row, 0 outside.
#[inline(always)]
fn split_columns(xrow: Option<&[f32]>, pad_left: usize, even: &mut [f32], odd: &mut [f32]) {
    let Some(xrow) = xrow else {
        crate::zero(even);
        crate::zero(odd);
        return;
    };
    // The first input column lands in `odd` when the padding is odd. Input column 2k goes to
    // first[k], 2k + 1 to second[k]; everything else is padding.
    let (f0, s0) = if pad_left.is_multiple_of(2) {
        (pad_left / 2, pad_left / 2)
    } else {
        (pad_left / 2, pad_left / 2 + 1)
    };
    let (nf, ns) = (xrow.len().div_ceil(2), xrow.len() / 2);
    let (first, second) = if pad_left.is_multiple_of(2) { (even, odd) } else { (odd, even) };
    first[..f0].fill(0.0);
    first[f0 + nf..].fill(0.0);
    second[..s0].fill(0.0);
    second[s0 + ns..].fill(0.0);
    // One pass over column pairs: a stride-2 group the compiler turns into two-register
    // shuffles (a `step_by(2)` walk per half did not vectorise).
    let (first, second) = (&mut first[f0..f0 + nf], &mut second[s0..s0 + ns]);
    for ((a, b), pair) in first.iter_mut().zip(second.iter_mut()).zip(xrow.chunks_exact(2)) {
        *a = pair[0];
        *b = pair[1];
    }
    if nf > ns {
        first[nf - 1] = xrow[xrow.len() - 1];
    }
}

/// `V = Bᵀ d B` for the `tiles` tiles of one tile row: `rows4` holds 4 padded input rows, each as
/// `even | odd` halves of `tiles + 1`; row `ξ` of the result goes to `v[ξ * stride + at ..]`.
/// `work` holds 16 rows of `tiles + 1`.
#[inline(always)]
fn input_transform(rows4: &[f32], tiles: usize, work: &mut [f32], v: &mut [f32], at: usize, stride: usize) {
    let half = tiles + 1;
    // Along each row: r_i = (d0 - d2, d1 + d2, d2 - d1, d1 - d3), (d0, d1, d2, d3) = (e[t], o[t],
    // e[t + 1], o[t + 1]); work row i * 4 + j holds component j of row i for every tile.
    for (i, row) in rows4.chunks_exact(2 * half).enumerate() {
        let (e, o) = row.split_at(half);
        let (e0, e1, o0, o1) = (&e[..tiles], &e[1..], &o[..tiles], &o[1..]);
        let w = &mut work[i * 4 * half..][..4 * half];
        let (w0, rest) = w.split_at_mut(half);
        let (w1, rest) = rest.split_at_mut(half);
        let (w2, w3) = rest.split_at_mut(half);
        let (w0, w1, w2, w3) = (&mut w0[..tiles], &mut w1[..tiles], &mut w2[..tiles], &mut w3[..tiles]);
        for t in 0..tiles {
            w0[t] = e0[t] - e1[t];
            w1[t] = o0[t] + e1[t];
            w2[t] = e1[t] - o0[t];
            w3[t] = o0[t] - o1[t];
        }
    }
    // Across rows: (R0 - R2, R1 + R2, R2 - R1, R1 - R3), component by component.
    for j in 0..4 {
        let r = |i: usize| &work[(i * 4 + j) * half..][..tiles];
        let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
        for (a, f) in [(0usize, 0u8), (1, 1), (2, 2), (3, 3)] {
            let dst = &mut v[(a * 4 + j) * stride + at..][..tiles];
            match f {
                0 => dst.iter_mut().zip(r0.iter().zip(r2)).for_each(|(d, (x, y))| *d = x - y),
                1 => dst.iter_mut().zip(r1.iter().zip(r2)).for_each(|(d, (x, y))| *d = x + y),
                2 => dst.iter_mut().zip(r2.iter().zip(r1)).for_each(|(d, (x, y))| *d = x - y),
                _ => dst.iter_mut().zip(r1.iter().zip(r3)).for_each(|(d, (x, y))| *d = x - y),
            }
        }
    }
}

/// `Aᵀ M A` for the `tiles` tiles of one tile row of one filter, whose 16 products are at
/// `m[ξ * stride + at ..]`: returns the two output rows (`2 * tiles` columns each, back to back)
/// in `work` (which holds at least `16 * (tiles + 1)` elements).
#[inline(always)]
fn output_transform<'w>(m: &[f32], at: usize, stride: usize, tiles: usize, work: &'w mut [f32]) -> &'w [f32] {
    let (s, pair) = work.split_at_mut(8 * tiles);
    let mm = |xi: usize| &m[xi * stride + at..][..tiles];
    // Along columns, per row a: s_a0 = m_a0 + m_a1 + m_a2, s_a1 = m_a1 - m_a2 - m_a3.
    for a in 0..4 {
        let (m0, m1, m2, m3) = (mm(a * 4), mm(a * 4 + 1), mm(a * 4 + 2), mm(a * 4 + 3));
        let (sa0, sa1) = s[a * 2 * tiles..][..2 * tiles].split_at_mut(tiles);
        for t in 0..tiles {
            sa0[t] = m0[t] + m1[t] + m2[t];
            sa1[t] = m1[t] - m2[t] - m3[t];
        }
    }
    // Across rows: y0 = s_0 + s_1 + s_2, y1 = s_1 - s_2 - s_3, columns interleaved.
    let sv = |a: usize, c: usize| &s[(a * 2 + c) * tiles..][..tiles];
    let (row0, row1) = pair[..4 * tiles].split_at_mut(2 * tiles);
    for c in 0..2 {
        let (s0, s1, s2, s3) = (sv(0, c), sv(1, c), sv(2, c), sv(3, c));
        for t in 0..tiles {
            row0[2 * t + c] = s0[t] + s1[t] + s2[t];
            row1[2 * t + c] = s1[t] - s2[t] - s3[t];
        }
    }
    &pair[..4 * tiles]
}

/// The tile transforms, compiled for the kernel path in use: plain loops that vectorise with
/// the baseline target's 4 lanes, or with AVX2 / AVX-512 in `#[target_feature]` copies.
struct Transforms {
    split: SplitFn,
    input: InputFn,
    output: OutputFn,
}

/// [`split_columns`].
type SplitFn = fn(Option<&[f32]>, usize, &mut [f32], &mut [f32]);
/// [`input_transform`].
type InputFn = fn(&[f32], usize, &mut [f32], &mut [f32], usize, usize);
/// [`output_transform`].
type OutputFn = for<'w> fn(&[f32], usize, usize, usize, &'w mut [f32]) -> &'w [f32];

impl Transforms {
    fn for_isa(isa: &Isa) -> Transforms {
        #[cfg(target_arch = "x86_64")]
        {
            if isa.name == "avx512" {
                return Transforms {
                    split: x86::split_avx512,
                    input: x86::input_avx512,
                    output: x86::output_avx512,
                };
            }
            if isa.name == "avx2" {
                return Transforms {
                    split: x86::split_avx2,
                    input: x86::input_avx2,
                    output: x86::output_avx2,
                };
            }
        }
        let _ = isa;
        Transforms { split: split_columns, input: input_transform, output: output_transform }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{input_transform, output_transform, split_columns};

    /// Safe entry points and `#[target_feature]` bodies for the three transforms.
    macro_rules! transforms {
        ($features:literal, $split:ident, $split_tf:ident, $input:ident, $input_tf:ident, $output:ident, $output_tf:ident) => {
            pub(super) fn $split(x: Option<&[f32]>, pad: usize, even: &mut [f32], odd: &mut [f32]) {
                // SAFETY: `Transforms::for_isa` hands this out only for a path whose table was
                // given after these features were detected; the body is safe Rust.
                unsafe { $split_tf(x, pad, even, odd) }
            }

            #[target_feature(enable = $features)]
            unsafe fn $split_tf(x: Option<&[f32]>, pad: usize, even: &mut [f32], odd: &mut [f32]) {
                split_columns(x, pad, even, odd)
            }

            pub(super) fn $input(rows4: &[f32], t: usize, w: &mut [f32], v: &mut [f32], at: usize, s: usize) {
                // SAFETY: as above.
                unsafe { $input_tf(rows4, t, w, v, at, s) }
            }

            #[target_feature(enable = $features)]
            unsafe fn $input_tf(rows4: &[f32], t: usize, w: &mut [f32], v: &mut [f32], at: usize, s: usize) {
                input_transform(rows4, t, w, v, at, s)
            }

            pub(super) fn $output<'w>(
                m: &[f32],
                at: usize,
                s: usize,
                t: usize,
                w: &'w mut [f32],
            ) -> &'w [f32] {
                // SAFETY: as above.
                unsafe { $output_tf(m, at, s, t, w) }
            }

            #[target_feature(enable = $features)]
            unsafe fn $output_tf<'w>(
                m: &[f32],
                at: usize,
                s: usize,
                t: usize,
                w: &'w mut [f32],
            ) -> &'w [f32] {
                output_transform(m, at, s, t, w)
            }
        };
    }

    transforms!(
        "avx2,fma",
        split_avx2,
        split_avx2_tf,
        input_avx2,
        input_avx2_tf,
        output_avx2,
        output_avx2_tf
    );
    transforms!(
        "avx512f,avx2,fma",
        split_avx512,
        split_avx512_tf,
        input_avx512,
        input_avx512_tf,
        output_avx512,
        output_avx512_tf
    );
}
