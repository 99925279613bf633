//! Winograd F(m×m, 3×3) for stride-1, undilated, single-group 3×3 convolutions, m = 2 or 4.
//!
//! Each m×m output tile is computed from an (m+2)×(m+2) input tile: the input tile is
//! transformed (`V = Bᵀ d B`), the filter (`U = G g Gᵀ`, decoded and transformed per call: a
//! bounded panel, never stored), the (m+2)² element positions become as many GEMMs
//! `M_ξ = U_ξ · V_ξ` over (filters × input channels) × (input channels × tiles) on the path's
//! register-blocked [`Isa::gemm_rows`], and the output tile is `Aᵀ M A` (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016). F(2×2, 3×3) ([`f2`]) does 16
//! multiply-adds where the direct convolution does 36 (2.25× fewer), F(4×4, 3×3) ([`f4`]) 36
//! where it does 144 (4× fewer), with less transformed input per output too. The transforms are
//! additions, vectorised over a row of tiles by splitting the padded input rows into their m
//! column phases; on AVX-512, F(4×4, 3×3)'s split and transforms are written out in registers
//! (`f4_avx512`) and the products run on filters packed 8 per block (`gemm_avx512`).
//!
//! Work is split over output rows in whole tiles (m rows).

/// Runs `$body` with `$t0` and `$w` naming windows `$t0 .. $t0 + $w` that cover `0 .. $tiles`:
/// whole windows of [`WINDOW`] tiles, then, when `$tiles` is not a multiple, one more ending at
/// `$tiles` that overlaps the one before, so that every pass runs whole vectors and no scalar
/// remainder (a remainder of up to 15 tiles per row had taken a fifth of the transforms' time);
/// fewer tiles than a window take one pass of `$tiles`. The transforms write each tile's values
/// from its inputs alone, so a tile computed twice is written twice with the same values. The
/// window length goes through `black_box`: as a constant, the loop was unrolled before the loop
/// vectoriser saw it and came out as `xmm` or scalar code. A macro, not a function taking a
/// closure: a closure is compiled without its caller's `#[target_feature]`s, so it would not use
/// the path's vectors.
macro_rules! windows {
    ($tiles:expr, |$t0:ident, $w:ident| $body:block) => {{
        let tiles: usize = $tiles;
        if tiles < $crate::winograd::WINDOW {
            let ($t0, $w) = (0usize, tiles);
            $body
        } else {
            let mut start = 0;
            while start < tiles {
                let ($t0, $w) = (start.min(tiles - $crate::winograd::WINDOW), std::hint::black_box($crate::winograd::WINDOW));
                $body
                start += $crate::winograd::WINDOW;
            }
        }
    }};
}

mod f2;
mod f4;
#[cfg(target_arch = "x86_64")]
mod f4_avx512;
#[cfg(target_arch = "x86_64")]
mod gemm_avx512;

use std::ops::Range;

use crate::arch::Isa;
use crate::{ChannelActivation, Conv2dParams, WeightRows};

/// Most f32 elements of the transformed filters (`(m+2)² × out_c × in_c`, 1 MiB).
const U_BUDGET: usize = 1 << 18;
/// Most f32 elements of the transformed input of one block of tile rows (`(m+2)² × in_c ×
/// tiles`), when more than one tile row fits (1 MiB: the block stays in L2 while its GEMMs read
/// it).
const V_BUDGET: usize = 1 << 18;
/// Most f32 elements of the transformed input of a single tile row (2 MiB). Wider layers stay on
/// the direct path; up to this size one row of tiles per block, though it spills L2, measured
/// faster than the direct path: PP-OCRv4 det's 3×3 96→24 head conv at a full page (184×368, 1.1
/// MiB per tile row) took 29 ms against 39 ms (criterion `conv_layers`, 1 thread, Zen 4).
const V_ROW_LIMIT: usize = 1 << 19;

/// Fewest 4×4 output tiles a plane needs to take F(4×4, 3×3): with fewer, its GEMMs are too
/// narrow (a few tiles per row of `V`) and its costlier filter transform is not amortised, and
/// F(2×2, 3×3) is faster. 96→24 filters at 1 thread (Xeon, one-layer models, ms, F(4×4) /
/// F(2×2)): 8×16 0.123 / 0.096, 12×24 0.175 / 0.144, 16×32 (32 tiles) 0.248 / 0.245, 20×40 (50
/// tiles) 0.319 / 0.399.
const F4_MIN_TILES: usize = 48;

/// Tiles per vector-sized window of the transforms (see `windows!`).
const WINDOW: usize = 16;

/// The output tile side `m` (2 or 4) `p` runs through Winograd with, or `None` for the direct
/// path: 3×3, stride 1, no dilation, one group, enough channels for the GEMMs to outweigh the
/// transforms, and filters and a tile row's transformed input small enough to hold per call.
fn tile_side(p: &Conv2dParams) -> Option<usize> {
    let shape = p.k_h == 3
        && p.k_w == 3
        && p.stride_h == 1
        && p.stride_w == 1
        && p.dil_h == 1
        && p.dil_w == 1
        && p.groups == 1
        && p.in_c >= 16
        && p.out_c >= 8
        && p.out_h >= 2
        && p.out_w >= 4;
    let fits = |m: usize| {
        let points = (m + 2) * (m + 2);
        points * p.out_c * p.in_c <= U_BUDGET && points * p.in_c * p.out_w.div_ceil(m) <= V_ROW_LIMIT
    };
    let big = p.out_h >= 4 && p.out_w >= 8 && p.out_h.div_ceil(4) * p.out_w.div_ceil(4) >= F4_MIN_TILES;
    [4, 2].into_iter().filter(|_| shape).find(|&m| fits(m) && (m == 2 || big))
}

/// Whether `p` runs through Winograd (see [`tile_side`]).
pub(crate) fn applies(p: &Conv2dParams) -> bool {
    tile_side(p).is_some()
}

/// Output rows per tile of `p` (the alignment of a worker's rows): 1 when it does not run
/// through Winograd.
pub(crate) fn row_align(p: &Conv2dParams) -> usize {
    tile_side(p).unwrap_or(1)
}

/// The block sizes of one layer's Winograd pass.
#[derive(Clone, Copy)]
struct Blocks {
    /// Output tile side.
    m: usize,
    /// Tiles per output row.
    tx: usize,
    /// Tile rows per GEMM block.
    trs: usize,
}

impl Blocks {
    fn new(p: &Conv2dParams, m: usize) -> Blocks {
        let tx = p.out_w.div_ceil(m);
        let trs = (V_BUDGET / (Self::points_of(m) * p.in_c * tx).max(1)).clamp(1, p.out_h.div_ceil(m));
        Blocks { m, tx, trs }
    }

    fn points_of(m: usize) -> usize {
        (m + 2) * (m + 2)
    }

    /// Element positions of a tile: `(m+2)²`.
    fn points(self) -> usize {
        Self::points_of(self.m)
    }

    /// Elements of one column phase of a padded row: a phase holds one column of every tile
    /// and one past the last. (Rounding it up to whole vector windows for m = 4, so that the
    /// second split of each row runs without a masked last step, measured 3 % slower on a 96→24
    /// layer over 80×160.)
    fn half(self) -> usize {
        self.tx + 1
    }

    /// Elements of the column phases of the `m * trs + 2` padded input rows of one channel.
    fn halves_len(self) -> usize {
        (self.m * self.trs + 2) * self.m * self.half()
    }

    /// Elements the transforms' intermediate rows need: the input transform's `(m+2)²` rows of a
    /// phase, the output transform's (see [`f2::output`], [`f4::output`]), and, for m = 4, the
    /// split's two half-split rows.
    fn work_len(self) -> usize {
        let output = if self.m == 4 { 56 * self.tx } else { 12 * self.tx };
        (self.points() * self.half()).max(output)
    }
}

/// Scratch one worker needs: transformed filters, one block's transformed input and products,
/// one decoded filter, one channel's padded input rows of the block split into column phases,
/// and the transforms' intermediate rows (0 when `p` does not run through Winograd).
pub(crate) fn scratch_len(p: &Conv2dParams) -> usize {
    let Some(m) = tile_side(p) else { return 0 };
    let b = Blocks::new(p, m);
    let n = b.trs * b.tx;
    let filters = p.out_c.next_multiple_of(PACKED_FILTERS);
    b.points() * (filters * p.in_c + p.in_c * n + p.out_c * n) + 9 * p.in_c + b.halves_len() + b.work_len()
}

/// Filters per block of the packed layout (see [`Winograd::packs_filters`]).
const PACKED_FILTERS: usize = 8;

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
    /// Output rows `rows` (starting at a multiple of [`row_align`]) of every filter of image `xb`
    /// into `out` (`out[oc]` holds those rows), adding the first `residual_channels` planes of
    /// `residual`.
    ///
    /// # Panics
    /// If `p` does not run through Winograd (see [`applies`]).
    pub(crate) fn run(
        &self,
        xb: &[f32],
        residual: Option<(&[f32], usize)>,
        rows: Range<usize>,
        out: &mut [&mut [f32]],
        scratch: &mut [f32],
    ) {
        let p = self.p;
        let b = Blocks::new(p, tile_side(p).expect("a Winograd layer"));
        let (cin, cout, tx, m) = (p.in_c, p.out_c, b.tx, b.m);
        let (points, half) = (b.points(), b.half());
        let n_max = b.trs * tx;
        // Transformed filters, their rows padded to whole packed blocks when packed.
        let packed = self.packs_filters();
        let filters = if packed { cout.next_multiple_of(PACKED_FILTERS) } else { cout };
        let (u, rest) = scratch.split_at_mut(points * filters * cin);
        let (v, rest) = rest.split_at_mut(points * cin * n_max);
        let (mm, rest) = rest.split_at_mut(points * cout * n_max);
        let (filter, rest) = rest.split_at_mut(9 * cin);
        let (halves, work) = rest.split_at_mut(b.halves_len());
        self.transform_filters(m, u, filter, packed);
        let t = Transforms::for_isa(&self.isa, m);
        let (ty_start, ty_end) = (rows.start / m, rows.end.div_ceil(m));
        let mut ty0 = ty_start;
        while ty0 < ty_end {
            let trs = b.trs.min(ty_end - ty0);
            let n = trs * tx;
            // Channel by channel, padded input rows m·ty0 .. m·(ty0 + trs) + 2 split into
            // column phases, then transformed while the split rows are still in L1 (splitting
            // every channel first, then transforming, sent a band of all channels through L2
            // twice).
            let band = m * trs + 2;
            let hc = &mut halves[..band * m * half];
            for (ic, xc) in xb.chunks_exact(p.in_h * p.in_w).take(cin).enumerate() {
                for (r, phases) in hc.chunks_exact_mut(m * half).enumerate() {
                    let row = (m * ty0 + r).checked_sub(p.pad_top).filter(|&iy| iy < p.in_h);
                    let xrow = row.map(|iy| &xc[iy * p.in_w..][..p.in_w]);
                    match t.split4.filter(|_| m == 4) {
                        Some(split4) => split4(xrow, p.pad_left, phases, half),
                        None => split_phases(self.isa.deinterleave, xrow, p.pad_left, m, phases, half, work),
                    }
                }
                for tr in 0..trs {
                    let rows_in = &hc[m * tr * m * half..][..(m + 2) * m * half];
                    (t.input)(rows_in, tx, work, v, ic * n + tr * tx, cin * n);
                }
            }
            let mm = &mut mm[..points * cout * n];
            if packed {
                self.packed_products(u, v, mm, n);
            } else {
                crate::zero(mm);
                for (xi, (uxi, mxi)) in
                    u.chunks_exact(cout * cin).zip(mm.chunks_exact_mut(cout * n)).enumerate()
                {
                    (self.isa.gemm_rows)(uxi, cin, &v[xi * cin * n..][..cin * n], n, n, mxi, n);
                }
            }
            for (oc, plane) in out.iter_mut().enumerate() {
                let bias = self.bias.map_or(0.0, |b| b[oc]);
                for tr in 0..trs {
                    let ty = ty0 + tr;
                    let tile_rows = (t.output)(mm, oc * n + tr * tx, cout * n, tx, work);
                    // Output rows m·ty .. m·ty + m that are ours (and exist).
                    for (dy, src) in tile_rows.chunks_exact(m * tx).enumerate() {
                        let oy = m * ty + dy;
                        if oy < rows.start || oy >= rows.end {
                            continue;
                        }
                        let res = residual
                            .filter(|&(_, channels)| oc < channels)
                            .map(|(r, _)| &r[(oc * p.out_h + oy) * p.out_w..][..p.out_w]);
                        let dst = &mut plane[(oy - rows.start) * p.out_w..][..p.out_w];
                        (self.isa.store_rows)(self.act.of(oc), src, m * tx, bias, res, dst, p.out_w);
                    }
                }
            }
            ty0 += trs;
        }
    }

    /// Whether the products run on filters packed in blocks of [`PACKED_FILTERS`] (AVX-512's
    /// `gemm_avx512`), else on the path's [`Isa::gemm_rows`].
    fn packs_filters(&self) -> bool {
        cfg!(target_arch = "x86_64") && self.isa.name == "avx512"
    }

    /// `M_ξ = U_ξ · V_ξ` for every point ξ of a block of `n` tiles, on packed filters `u` (see
    /// [`Winograd::transform_filters`]) into `mm` (`[ξ][oc][n]`, overwritten).
    fn packed_products(&self, u: &[f32], v: &[f32], mm: &mut [f32], n: usize) {
        let (cin, cout) = (self.p.in_c, self.p.out_c);
        let filters = cout.next_multiple_of(PACKED_FILTERS);
        #[cfg(target_arch = "x86_64")]
        for (xi, (uxi, mxi)) in u.chunks_exact(filters * cin).zip(mm.chunks_exact_mut(cout * n)).enumerate() {
            let vxi = &v[xi * cin * n..][..cin * n];
            for (block, (ub, mb)) in
                uxi.chunks_exact(PACKED_FILTERS * cin).zip(mxi.chunks_mut(PACKED_FILTERS * n)).enumerate()
            {
                let rows = (cout - block * PACKED_FILTERS).min(PACKED_FILTERS);
                gemm_avx512::block_product(ub, cin, vxi, n, n, mb, n, rows);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (u, v, mm, n, cin, filters);
    }

    /// `U_ξ = (G g Gᵀ)[ξ]` for every filter `g` (row `oc`, 3×3 taps per input channel): laid out
    /// `u[ξ][oc][ic]`, or, when `packed`, in blocks of [`PACKED_FILTERS`] filters, each input
    /// channel's weights of a block together (`u[ξ][oc / 8][ic][oc % 8]`; the last block's
    /// missing filters are left as they are: their sums are never stored).
    fn transform_filters(&self, m: usize, u: &mut [f32], filter: &mut [f32], packed: bool) {
        if m == 4 {
            self.transform_filters_with::<36>(f4::filter, u, filter, packed)
        } else {
            self.transform_filters_with::<16>(f2::filter, u, filter, packed)
        }
    }

    /// [`Winograd::transform_filters`] with `transform` (`P` values per filter), inlined so that
    /// each tile size gets its own unrolled loop (a small plane does not amortise this pass: it
    /// took a third of a 96→24 layer over 8×16).
    #[inline(always)]
    fn transform_filters_with<const P: usize>(
        &self,
        transform: impl Fn(&[f32], &mut [f32]),
        u: &mut [f32],
        filter: &mut [f32],
        packed: bool,
    ) {
        let (cin, cout) = (self.p.in_c, self.p.out_c);
        let filters = if packed { cout.next_multiple_of(PACKED_FILTERS) } else { cout };
        let mut tile = [0.0f32; P];
        for oc in 0..cout {
            self.rows.decode(oc, filter);
            let (block, lane) = (oc / PACKED_FILTERS, oc % PACKED_FILTERS);
            for (ic, g) in filter.chunks_exact(9).enumerate() {
                transform(g, &mut tile);
                for (xi, &val) in tile.iter().enumerate() {
                    let at = if packed {
                        xi * filters * cin + (block * cin + ic) * PACKED_FILTERS + lane
                    } else {
                        (xi * cout + oc) * cin + ic
                    };
                    u[at] = val;
                }
            }
        }
    }
}

/// `N` rows of `len` elements, `pitch` apart, from the start of `buf`.
///
/// # Panics
/// If `buf` is shorter than `(N - 1) * pitch + len`, or `len > pitch` with `N > 1`.
#[inline(always)]
fn rows_mut<const N: usize>(buf: &mut [f32], pitch: usize, len: usize) -> [&mut [f32]; N] {
    let mut rest = buf;
    let mut rows: [&mut [f32]; N] = [(); N].map(|_| &mut [][..]);
    for (i, row) in rows.iter_mut().enumerate() {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(if i + 1 < N { pitch } else { len });
        *row = &mut head[..len];
        rest = tail;
    }
    rows
}

/// Elements `t0 .. t0 + w` of `r`.
#[inline(always)]
fn win(r: &[f32], t0: usize, w: usize) -> &[f32] {
    &r[t0..][..w]
}

/// Splits one padded input row (`None`: a padding row) into its `m` column phases, `half` each,
/// back to back in `phases`: phase `j` holds padded columns `m·t + j`, where padded column `c`
/// is `xrow[c - pad_left]` inside the row and 0 outside. m = 4 splits twice, through two
/// half-split rows in `work` (at least `4 * half` elements).
fn split_phases(
    deinterleave: fn(&[f32], &mut [f32], &mut [f32]),
    xrow: Option<&[f32]>,
    pad_left: usize,
    m: usize,
    phases: &mut [f32],
    half: usize,
    work: &mut [f32],
) {
    if m == 2 {
        let (even, odd) = phases.split_at_mut(half);
        return split_columns(deinterleave, xrow, pad_left, even, odd);
    }
    let (even, odd) = work[..4 * half].split_at_mut(2 * half);
    split_columns(deinterleave, xrow, pad_left, even, odd);
    let [p0, p1, p2, p3] = rows_mut::<4>(phases, half, half);
    // Even padded columns 4t and 4t + 2, odd ones 4t + 1 and 4t + 3.
    deinterleave(even, p0, p2);
    deinterleave(odd, p1, p3);
}

/// Splits one padded input row (`None`: a padding row) into its even and odd columns with the
/// path's `deinterleave`: padded column `c` is `xrow[c - pad_left]` inside the row, 0 outside.
fn split_columns(
    deinterleave: fn(&[f32], &mut [f32], &mut [f32]),
    xrow: Option<&[f32]>,
    pad_left: usize,
    even: &mut [f32],
    odd: &mut [f32],
) {
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
    deinterleave(&xrow[..2 * ns], &mut first[f0..f0 + ns], &mut second[s0..s0 + ns]);
    if nf > ns {
        first[f0 + nf - 1] = xrow[xrow.len() - 1];
    }
}

/// The tile transforms of one tile size, compiled for the kernel path in use: plain loops that
/// vectorise with the baseline target's 4 lanes, or with AVX2 / AVX-512 in `#[target_feature]`
/// copies.
struct Transforms {
    input: InputFn,
    output: OutputFn,
    /// The path's own 4-phase row split for m = 4, if it has one (else [`split_phases`]).
    split4: Option<Split4Fn>,
}

/// `f4_avx512::split4`: one padded row (`None`: a padding row) into its 4 column phases.
type Split4Fn = fn(Option<&[f32]>, usize, &mut [f32], usize);

/// [`f2::input`], [`f4::input`].
type InputFn = fn(&[f32], usize, &mut [f32], &mut [f32], usize, usize);
/// [`f2::output`], [`f4::output`].
type OutputFn = for<'w> fn(&[f32], usize, usize, usize, &'w mut [f32]) -> &'w [f32];

impl Transforms {
    fn for_isa(isa: &Isa, m: usize) -> Transforms {
        #[cfg(target_arch = "x86_64")]
        {
            match (isa.name, m) {
                ("avx512", 4) => {
                    return Transforms {
                        input: f4_avx512::input,
                        output: f4_avx512::output,
                        split4: Some(f4_avx512::split4),
                    }
                }
                ("avx512", _) => {
                    return Transforms {
                        input: x86::f2_input_avx512,
                        output: x86::f2_output_avx512,
                        split4: None,
                    }
                }
                ("avx2", 4) => {
                    return Transforms {
                        input: x86::f4_input_avx2,
                        output: x86::f4_output_avx2,
                        split4: None,
                    }
                }
                ("avx2", _) => {
                    return Transforms {
                        input: x86::f2_input_avx2,
                        output: x86::f2_output_avx2,
                        split4: None,
                    }
                }
                _ => {}
            }
        }
        let _ = isa;
        if m == 4 {
            Transforms { input: f4::input, output: f4::output, split4: None }
        } else {
            Transforms { input: f2::input, output: f2::output, split4: None }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    /// Safe entry points and `#[target_feature]` bodies for one tile size's transforms.
    macro_rules! transforms {
        ($features:literal, $tile:ident, $input:ident, $input_tf:ident, $output:ident, $output_tf:ident) => {
            pub(super) fn $input(rows: &[f32], t: usize, w: &mut [f32], v: &mut [f32], at: usize, s: usize) {
                // SAFETY: `Transforms::for_isa` hands this out only for a path whose table was
                // given after these features were detected; the body is safe Rust.
                unsafe { $input_tf(rows, t, w, v, at, s) }
            }

            #[target_feature(enable = $features)]
            unsafe fn $input_tf(rows: &[f32], t: usize, w: &mut [f32], v: &mut [f32], at: usize, s: usize) {
                super::$tile::input(rows, t, w, v, at, s)
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
                super::$tile::output(m, at, s, t, w)
            }
        };
    }

    transforms!("avx2,fma", f2, f2_input_avx2, f2_input_avx2_tf, f2_output_avx2, f2_output_avx2_tf);
    transforms!(
        "avx512f,avx2,fma",
        f2,
        f2_input_avx512,
        f2_input_avx512_tf,
        f2_output_avx512,
        f2_output_avx512_tf
    );
    transforms!("avx2,fma", f4, f4_input_avx2, f4_input_avx2_tf, f4_output_avx2, f4_output_avx2_tf);
    // AVX-512's F(4×4) transforms are written out in `f4_avx512`.
}
