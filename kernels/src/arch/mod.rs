//! Instruction-set-specific inner loops, chosen once at run time.
//!
//! Every path implements the same small set of micro-kernels ([`Isa`]); [`scalar`] is the reference
//! every other path is tested against. [`Isa::detect`] picks the best path the CPU supports, and the
//! `PITH_KERNEL` environment variable (`scalar`, `avx2`, `avx512`, `neon`) forces one.
//!
//! The function pointers of a SIMD path are only handed out by [`Isa::detect`] / [`Isa::by_name`]
//! after the CPU features they need were detected; that is what makes calling them safe.

#[cfg(test)]
mod conformance;
#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod conformance_fused;
#[macro_use]
mod depthwise;
pub(crate) mod epilogue;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod fused_parts;
pub mod int8;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

pub(crate) use depthwise::depthwise_rows_check;
#[cfg(target_arch = "x86_64")]
pub(crate) use depthwise::DepthwiseBlock;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use depthwise::{for_each_tile as depthwise_tiles, in_place_tiles, DepthwiseTile, InPlaceTile};
pub use depthwise::{DepthwisePlane, DepthwiseRows, PLANE_LANES};

use crate::KernelError;

/// One instruction-set path: a name and its micro-kernels.
#[derive(Clone, Copy)]
pub struct Isa {
    /// "scalar", "avx2", "avx512" or "neon".
    pub name: &'static str,
    /// f32 lanes of the path's vectors (1 on the scalar path): what a column strip of
    /// [`Isa::gemm_rows_at`] rounds up to.
    pub lanes: usize,
    /// `c[i * ldc + j] += sum_p a[i * k + p] * b[p * ldb + j]` for `i < a.len() / k`, `j < n`.
    /// `a` holds decoded weight rows (row-major, `k` each); `b` is `k` rows of activations.
    /// Rows of `b` may overlap (`ldb < n`: depthwise conv passes shifted views of one image row,
    /// `ldb` = dilation); rows of `c` may not when there are several.
    #[allow(clippy::type_complexity)] // the full signature documents the contract best
    pub gemm_rows: fn(a: &[f32], k: usize, b: &[f32], ldb: usize, n: usize, c: &mut [f32], ldc: usize),
    /// `c[i * ldc + j] = sum_p a[i * k + p] * b[offs[p] + j]` (overwriting `c`, unlike
    /// [`Isa::gemm_rows`]) with `offs.len() >= k`: the implicit-GEMM form of a convolution, whose
    /// "column" rows are shifted views of zero-padded input planes listed once per layer instead
    /// of being copied into an unfolded matrix.
    #[allow(clippy::type_complexity)]
    pub gemm_rows_at: fn(a: &[f32], k: usize, b: &[f32], offs: &[usize], n: usize, c: &mut [f32], ldc: usize),
    /// [`Isa::gemm_rows_at`] with its epilogue in the register tile: row `r`'s sums over columns
    /// `j < n`, plus its bias and residual, clamped, stored straight into its output row (see
    /// [`FusedRows`]), so a 1×1 convolution writes its output once instead of writing an
    /// accumulator and reading it back for a [`Isa::store_rows`] pass. `None` on paths without it.
    pub gemm_rows_fused: Option<GemmRowsFusedFn>,
    /// The 1×1 kernels on weights and inputs rounded to bf16 (products summed in f32), for
    /// sessions that choose bf16 products (`Kernels::with_bf16_products`); `None` on paths whose
    /// CPU has no bf16 dot products.
    pub bf16: Option<FusedBf16>,
    /// [`crate::Activation::store_rows`], compiled for this path.
    #[allow(clippy::type_complexity)]
    pub store_rows: fn(
        act: crate::Activation,
        src: &[f32],
        src_pitch: usize,
        bias: f32,
        residual: Option<&[f32]>,
        dst: &mut [f32],
        width: usize,
    ),
    /// [`crate::Activation::apply_slice`], compiled for this path.
    pub activate: fn(act: crate::Activation, xs: &mut [f32]),
    /// `ys = softmax(xs[..ys.len()])` over one contiguous row, compiled for this path (the same
    /// bits on every path; see the runtime's `Softmax`).
    ///
    /// # Panics
    /// If `xs` is shorter than `ys`.
    pub softmax_row: fn(xs: &[f32], ys: &mut [f32]),
    /// One output row of a 2×2, stride-2 max pool: `out[i] = max(r0[2i], r0[2i + 1], r1[2i],
    /// r1[2i + 1])` for `i < out.len()`, from the window's two input rows. With a NaN among the
    /// four, the result is one of them or NaN, by path.
    ///
    /// # Panics
    /// If `r0` or `r1` holds fewer than `2 * out.len()` values.
    pub max_2x2: fn(r0: &[f32], r1: &[f32], out: &mut [f32]),
    /// Splits pairs: `even[i] = src[2i]` and `odd[i] = src[2i + 1]` for `i < even.len()` (how a
    /// stride-2 convolution's input rows become the column phases of its padded planes).
    ///
    /// # Panics
    /// If `odd` is not as long as `even` or `src` holds fewer than `2 * even.len()` values.
    pub deinterleave: fn(src: &[f32], even: &mut [f32], odd: &mut [f32]),
    /// Transposes the `rows`×`cols` row-major matrix `src` into `dst`: `dst[c * rows + r] =
    /// src[r * cols + c]` (an NCHW → NHWC Transpose of one image: rows are channels, columns
    /// pixels). The vector paths move whole square tiles through registers.
    ///
    /// # Panics
    /// If `src` or `dst` holds fewer than `rows * cols` values.
    pub transpose: fn(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]),
    /// Decodes `out.len()` 4-bit indices, two per byte, low nibble first, through a 16-entry
    /// table: `out[i] = lut[nibble i of packed]` (how a 4-bit weight row is widened into a panel;
    /// the x86 paths turn 16 indices into weights with one permute from a register).
    ///
    /// # Panics
    /// If `packed` holds fewer than `out.len().div_ceil(2)` bytes.
    pub decode_nibbles: fn(packed: &[u8], lut: &[f32; 16], out: &mut [f32]),
    /// Decodes `out.len()` indices of `bits` (1-7) bits, packed LSB-first (index `i` starts at
    /// bit `i * bits`), through a table: `out[i] = lut[index i]` (how 1-3- and 5-7-bit weight
    /// rows are widened into panels; 4 bits take [`Isa::decode_nibbles`], 8 bits a byte read
    /// each). `None`: the portable decoder ([`scalar::decode_packed`] semantics, eight indices
    /// per word).
    ///
    /// # Panics
    /// If `bits` is outside 1..=7, `lut` holds fewer than `2^bits` entries or `packed` fewer than
    /// `ceil(out.len() * bits / 8)` bytes.
    pub decode_packed: Option<DecodePacked>,
    /// `dst[i] = src[i]` widened to f32, over the common length: f16 codebooks become lookup
    /// tables once per weight row, so this runs for every row of a per-row codebook (a
    /// squeeze-excite GEMV's 576 rows of 16 entries), where a general slice conversion's call
    /// and feature checks cost more than the conversion.
    pub widen_f16: fn(src: &[half::f16], dst: &mut [f32]),
    /// Dot product over the common length.
    pub dot: fn(a: &[f32], b: &[f32]) -> f32,
    /// `out[r] = sum_p a[r * k + p] * x[p]` for every `r < out.len()`: several weight rows
    /// against one column (a pointwise layer's pixels past its last whole vector), sharing each
    /// load of `x`. `None` on paths without it, which call [`Isa::dot`] per row.
    ///
    /// # Panics
    /// If `a` holds fewer than `out.len()` rows of `k` or `x` fewer than `k` values.
    pub dot_rows: Option<DotRowsFn>,
    /// `y[i] += a * x[i]` over the common length.
    pub axpy: fn(y: &mut [f32], a: f32, x: &[f32]),
    /// `y[i] *= x[i]` over the common length: one product each, so every path gives the same
    /// bits (filters scaled by a squeeze-excite gate, [`crate::WeightRows::with_column_scales`]).
    pub mul: fn(y: &mut [f32], x: &[f32]),
    /// Dot product of `x` with a packed index row decoded through `lut`:
    /// `sum_i lut[index_i] * x[i]` for `i < x.len()`, indices packed LSB-first at `bits` bits in `row`.
    /// `lut` has `2^bits` entries (unused entries zero), so no index can fall outside it.
    pub dot_packed: fn(row: &[u8], bits: u8, lut: &[f32], x: &[f32]) -> f32,
    /// Prepares the activations of a GEMV for [`Isa::dot_packed_rows`] at `bits` bits: writes the
    /// values of `x` into `xp[..x.len()]` in this path's block order (the portable paths copy
    /// them). When `xp` holds at least `x.len().next_multiple_of(GEMV_BLOCK)` values
    /// ([`GEMV_BLOCK`]), a path may write the last, partial block zero-padded to a whole one, so
    /// that `dot_packed_rows` reads it like the others. Called once per GEMV (per worker), not per
    /// weight row.
    ///
    /// # Panics
    /// If `xp` is shorter than `x`.
    pub gemv_prepare: fn(bits: u8, x: &[f32], xp: &mut [f32]),
    /// Several packed rows against one input: `out[r] = sum_i lut_r[index_{r,i}] * x[i]` for
    /// every `r < rows.len()`, each exactly what [`Isa::dot_packed`] computes for `rows[r]`, where
    /// `lut_r` is `luts[r]`, or `luts[0]` for every row when `luts` holds one table (a codebook
    /// shared by the rows: then any number of rows go in one call, see `row_table`). `xp` holds
    /// this path's [`Isa::gemv_prepare`] of `x` at the same `bits`, so the kernel can take the
    /// indices in the order they lie in a vector register (no shuffles) and share each load of
    /// `xp` between the rows.
    ///
    /// # Panics
    /// If `luts` holds neither one table nor one per row, `out` fewer entries than `rows`, or `xp`
    /// is shorter than `x`.
    #[allow(clippy::type_complexity)]
    pub dot_packed_rows:
        fn(rows: &[&[u8]], bits: u8, luts: &[[f32; 256]], x: &[f32], xp: &[f32], out: &mut [f32]),
    /// [`Isa::dot_packed_rows`] at 4 bits for rows that each have a codebook of their own, read
    /// straight from its f16 centroids: `tables[r]` (at most 16 entries; an index at or past its
    /// length weighs 0) for `rows[r]`, the sums `dot_packed_rows` gives with those tables
    /// widened, without an f32 table filled per row (a squeeze-excite layer's short rows spent
    /// more on filling tables than on their products). `xp` is [`Isa::gemv_prepare`] of `x` at
    /// 4 bits. `None` on paths without it.
    ///
    /// # Panics
    /// If `tables` and `rows` differ in length, a table holds more than 16 entries, `out` fewer
    /// entries than `rows`, or `xp` is shorter than `x`.
    pub dot_nibble_rows_f16: Option<DotNibbleRowsF16>,
    /// One depthwise filter `w` (`kh × kw`, row-major) at stride 1 over rows of `b` `ldb` apart:
    /// `c[r * ldc + j] = init + sum_{ky, kx} w[ky * kw + kx] * b[(r + ky) * ldb + kx + j]` (or
    /// `+= sum` when accumulating) for
    /// `r < rows`, `j < n` (see [`DepthwiseRows`]). Several output rows are computed together so
    /// that each loaded input vector feeds every output row it belongs to (a row of a `kh`-tall
    /// filter is read by `kh` output rows), which `gemm_rows_at`'s one-row-per-filter form
    /// cannot share.
    ///
    /// # Panics
    /// If `w`, `b` or `c` is shorter than the shape needs.
    pub depthwise_rows: DepthwiseFn,
    /// One depthwise filter `w` at stride 1 over one whole input plane `x` (unpadded, rows `in_w`
    /// apart) into output plane `y` (rows `out_w` apart), as a [`DepthwiseInPlace`] describes:
    /// `y[r * out_w + j] = init + sum w[ky * kw + kx] * x(r + ky - pad_top, j + kx - pad_left)`,
    /// where `x(i, c)` outside the plane is zero, clamped as [`DepthwiseInPlace::clamp`] says, for
    /// filters of at most [`DEPTHWISE_IN_PLACE_MAX_ROWS`] rows: [`Isa::depthwise_rows`]' register
    /// tiles, reading each input row in place under column masks instead of from a zero-padded
    /// copy. `None` on paths without masked loads, which pad the rows and use
    /// [`Isa::depthwise_rows`].
    ///
    /// # Panics
    /// If `w`, `x` or `y` is shorter than the shape needs, or the filter is too tall.
    pub depthwise_s1: Option<DepthwiseInPlaceFn>,
    /// [`Isa::depthwise_s1`] at stride 2 in both directions: `y[r * out_w + j] = init + sum
    /// w[ky * kw + kx] * x(2r + ky - pad_top, 2j + kx - pad_left)`. The x86 AVX-512 path loads
    /// each input row in place under column masks (so the layer needs neither a padded nor a
    /// stride-phase copy of its input) and splits even and odd columns in registers; `None` on
    /// paths without such a kernel, which use the stride-phase planes and [`Isa::gemm_rows_at`].
    ///
    /// # Panics
    /// If `w`, `x` or `y` is shorter than the shape needs, or the filter is too tall.
    pub depthwise_s2: Option<DepthwiseInPlaceFn>,
    /// One depthwise filter `w` at stride 1 over one whole input plane `x` into output plane `y`,
    /// as a [`DepthwisePlane`] describes: `y[i] = init + sum_t w[t] * x[i + offset(t)]` over the
    /// taps `t` whose input element exists, clamped as [`DepthwiseRows::clamp`] says, for every
    /// output element `i`. Every vector is full whatever the row width, and the input needs no
    /// padded copy: the x86 AVX-512 path loads each tap's input with the plane's masks. `None` on
    /// paths without masked loads, which use [`Isa::depthwise_rows`] over padded rows.
    ///
    /// # Panics
    /// If `w`, `x` or `y` is shorter than the plane needs.
    pub depthwise_plane: Option<DepthwisePlaneFn>,
    /// 3×3 depthwise filters at stride 1 or 2 over several channels' planes in one call (see
    /// [`DepthwiseChannels`]): filter `c` is `w[9c .. 9c + 9]` and reads plane `c` of `x`,
    /// writing output rows `rows` of channel `c` into `y[c]` (row `r` at `(r - rows.start) *
    /// out_w`), `y(r, j) = bias[c] + sum w[9c + 3ky + kx] * x(stride * r + ky - pad_top, stride *
    /// j + kx - pad_left)` with `x` zero outside the plane, clamped as
    /// [`DepthwiseChannels::clamp`] says. Every output is computed alike whatever `rows` is, so
    /// threads that split a layer by bands of rows compute the bits one thread does. For outputs
    /// of at most [`DEPTHWISE_3X3_MAX_WIDTH`] columns, where a per-channel call and its masks
    /// cost more than the multiply-adds. `None` on paths without it.
    ///
    /// # Panics
    /// If `w` is not whole filters, `x`, `y` or the bias hold fewer channels than `w`, a part of
    /// `y` is shorter than `rows`, `rows` reaches past the plane, or the shape is outside what
    /// [`DepthwiseChannels`] allows.
    pub depthwise_3x3: Option<Depthwise3x3Fn>,
    /// Widest output (at most [`DEPTHWISE_3X3_MAX_WIDTH`]) for which a layer takes
    /// [`Isa::depthwise_3x3`] rather than the per-channel kernels: on AVX-512, whose per-channel
    /// kernels fill 16 lanes per row, only planes of at most half a vector's width.
    pub depthwise_3x3_width: usize,
    /// Square `k`×`k` depthwise filters (`k` up to [`DEPTHWISE_SMALL_MAX_K`]) at stride 1 or 2
    /// over several channels' whole planes in one call, for outputs of at most
    /// [`DEPTHWISE_SMALL_MAX_WIDTH`] columns (MobileNetV3's 5×5 layers over 14×14 and 7×7):
    /// filter `c` is `w[k²c .. k²(c + 1)]`, `y(r, j) = bias[c] + sum w[k²c + k ky + kx] *
    /// x(stride * r + ky - pad_top, stride * j + kx - pad_left)` with `x` zero outside the plane,
    /// clamped as [`DepthwiseChannels::clamp`] says. Any padding below `k` on either side; the
    /// plane's padded copy must fit [`DEPTHWISE_SMALL_SCRATCH`] floats (see
    /// [`depthwise_small_plane`]). `None` on paths without it.
    ///
    /// # Panics
    /// If `w` is not whole filters, `x`, `y` or the bias hold fewer channels than `w`, or the
    /// shape is outside what [`depthwise_small_plane`] takes.
    pub depthwise_small: Option<DepthwiseSmallFn>,
    /// [`Isa::depthwise_small`]'s computation, 16 channels at a time in a pixel-major copy (a
    /// pixel's 16 channels in one vector, as NCHWc layouts hold them): every tap one aligned
    /// load and one multiply-add for 16 channels. For shapes [`depthwise_interleaved_fits`]
    /// takes (small planes, MobileNets' 7×7 and 14×14 stages); `None` on paths without it.
    ///
    /// # Panics
    /// If `w` is not whole filters, `x`, `y` or the bias hold fewer channels than `w`, or the
    /// shape is outside what [`depthwise_interleaved_fits`] takes.
    pub depthwise_interleaved: Option<DepthwiseSmallFn>,
    /// Kernels of the channel-blocked layout ([`crate::blocked`]); `None` on paths without them.
    pub blocked: Option<crate::blocked::BlockedKernels>,
    /// The int8 dot-product kernels of dynamic-range quantized convolutions and 4-bit GEMVs
    /// (on x86 without AVX-512 VNNI the GEMV only); `None` on paths whose CPU lacks int8 dot
    /// products (NEON without dotprod), which keep f32.
    pub int8: Option<int8::Int8Kernels>,
}

/// The form of [`Isa::gemm_rows_fused`]: decoded weight rows `a` (`k` each), activations `b` with
/// row `p` at `offs[p]`, `n` columns, and where the rows go.
pub type GemmRowsFusedFn =
    fn(a: &[f32], k: usize, b: &[f32], offs: &[usize], n: usize, out: FusedRows<'_, '_>);

/// A path's 1×1 kernels on bf16 products ([`Isa::bf16`]). They take weight rows of `k` values
/// as *pair rows*: each row keeps its place (`k` floats apart) and holds, in its first
/// `k.div_ceil(2)` 32-bit lanes, the pairs `(w[2i], w[2i + 1])` rounded to bf16 (to nearest, ties
/// to even), the even value in the low half, a zero after an odd last value.
#[derive(Debug, Clone, Copy)]
pub struct FusedBf16 {
    /// [`Isa::gemm_rows_fused`] on pair rows `a` and the input rounded to bf16: `strips` is
    /// scratch for the input packed in bf16, at least [`bf16_strip_len`]`(k)` floats, one strip
    /// at a time, packed in every call; or [`bf16_packed_len`]`(k, n)`, every strip of the
    /// columns, packed when `pack` is set and otherwise taken as the previous call left them (the
    /// same `k`, `b`, `offs` and `n`).
    pub gemm: GemmRowsFusedBf16Fn,
    /// Rounds the rows of `k` values of `a` into pair rows, in place.
    pub pairs_in_place: fn(a: &mut [f32], k: usize),
    /// Decodes a row of `row.len()` 4-bit indices (two per byte of `packed`, the low nibble
    /// first) through `table`, rounded to bf16, into the pair row `row`.
    pub decode_nibbles: fn(packed: &[u8], table: &[f32; 16], row: &mut [f32]),
    /// `out[r]` = the sum of the bf16 products of pair row `r` of `a` (`out.len()` rows of `k`)
    /// and the pair row `column` (one column of the input, rounded the same way).
    pub dot_rows: fn(a: &[f32], k: usize, column: &[f32], out: &mut [f32]),
}

/// The form of [`FusedBf16::gemm`].
pub type GemmRowsFusedBf16Fn = fn(
    a: &[f32],
    k: usize,
    b: &[f32],
    offs: &[usize],
    n: usize,
    out: FusedRows<'_, '_>,
    strips: &mut [f32],
    pack: bool,
);

/// Columns of the input that [`FusedBf16::gemm`] packs at a time.
pub const BF16_STRIP: usize = 48;

/// Scratch floats [`FusedBf16::gemm`] needs for a depth of `k`: one packed strip of
/// [`BF16_STRIP`] columns, each a 32-bit pair of bf16 inputs per two input rows.
pub fn bf16_strip_len(k: usize) -> usize {
    k.div_ceil(2) * BF16_STRIP
}

/// Scratch floats of every strip of `n` columns of [`FusedBf16::gemm`]'s input.
pub fn bf16_packed_len(k: usize, n: usize) -> usize {
    n.div_ceil(BF16_STRIP) * bf16_strip_len(k)
}

/// Where [`Isa::gemm_rows_fused`] writes: for every row `r < a.len() / k` and column `j < n`,
/// `dst[r][col + j] = act_r((sum_p a[r * k + p] * b[offs[p] + j] + residual(r, j)) + bias[r])`.
pub struct FusedRows<'a, 'd> {
    /// One output row per weight row, each at least `col + n` long (a filter's output plane).
    pub dst: &'a mut [&'d mut [f32]],
    /// First column written in every row of `dst`.
    pub col: usize,
    /// One bias per row, or none (0).
    pub bias: Option<&'a [f32]>,
    /// Rows added before the activation, if any.
    pub residual: Option<ResidualRows<'a>>,
    /// Applied to every result before it is stored.
    pub act: FusedActivation<'a>,
}

/// The activations [`Isa::gemm_rows_fused`] applies in its register tile: each the same function
/// of one value as the [`crate::Activation`] it stands for (see [`FusedActivation::of_row`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FusedActivation<'a> {
    /// The sums as they are.
    None,
    /// Clamped to `lo..=hi` (`max` first, so NaN becomes `lo`): ReLU, ReLU6, Clip.
    Clamp([f32; 2]),
    /// `scale * HardSwish(x) + shift` (a plain HardSwish: 1 and 0).
    HardSwish {
        /// Factor after the HardSwish.
        scale: f32,
        /// Term added last.
        shift: f32,
    },
    /// `x` where `x >= 0`, else `slopes[r] * x` on row `r` (PRelu, or LeakyRelu with one slope
    /// repeated): one slope per row.
    Leaky(&'a [f32]),
}

impl FusedActivation<'_> {
    /// What row `r` applies, as an [`crate::Activation`].
    pub fn of_row(self, r: usize) -> crate::Activation {
        use crate::Activation;
        match self {
            FusedActivation::None => Activation::None,
            FusedActivation::Clamp([min, max]) => Activation::Clip { min, max },
            FusedActivation::HardSwish { scale, shift } if scale == 1.0 && shift == 0.0 => {
                Activation::HardSwish
            }
            FusedActivation::HardSwish { scale, shift } => Activation::HardSwishAffine { scale, shift },
            FusedActivation::Leaky(slopes) => Activation::LeakyRelu(slopes[r]),
        }
    }
}

/// The residual rows of [`FusedRows`]: rows `r < rows` add `data[r * pitch + j]` to column `j`;
/// later rows have no residual (a residual that covers only the first output channels).
#[derive(Clone, Copy)]
pub struct ResidualRows<'a> {
    /// Row 0's first residual value, then the other rows `pitch` apart.
    pub data: &'a [f32],
    /// Elements from one row's start to the next.
    pub pitch: usize,
    /// Rows that have a residual.
    pub rows: usize,
}

/// Checks [`Isa::gemm_rows_fused`] operands (panicking on a caller bug, like slice indexing
/// would) and returns the row count `a.len() / k`, or `None` when there is nothing to do.
#[inline]
pub(crate) fn gemm_rows_fused_check(
    a: &[f32],
    k: usize,
    b: &[f32],
    offs: &[usize],
    n: usize,
    out: &FusedRows<'_, '_>,
) -> Option<usize> {
    if k == 0 || n == 0 || a.len() < k {
        return None;
    }
    let m = a.len() / k;
    assert!(offs.len() >= k, "gemm_rows_fused: {} offsets for {k} rows", offs.len());
    // max(o + n) as max(o) + n: a plain maximum vectorises.
    let reach = offs[..k].iter().copied().max().unwrap_or(0).saturating_add(n);
    assert!(reach <= b.len(), "gemm_rows_fused: b is too short");
    fused_rows_check("gemm_rows_fused", out, m, n);
    Some(m)
}

/// Checks that `out` takes `m` rows of `n` columns: output rows, biases and slopes for each, and
/// residual values for the rows that have one (panicking, named `kernel`, on a caller bug).
pub(crate) fn fused_rows_check(kernel: &str, out: &FusedRows<'_, '_>, m: usize, n: usize) {
    assert!(out.dst.len() >= m, "{kernel}: {} output rows for {m} weight rows", out.dst.len());
    let end = out.col.checked_add(n).unwrap_or_else(|| panic!("{kernel}: column overflow"));
    assert!(out.dst[..m].iter().all(|row| row.len() >= end), "{kernel}: an output row is too short");
    if let Some(bias) = out.bias {
        assert!(bias.len() >= m, "{kernel}: {} biases for {m} rows", bias.len());
    }
    if let FusedActivation::Leaky(slopes) = out.act {
        assert!(slopes.len() >= m, "{kernel}: {} slopes for {m} rows", slopes.len());
    }
    if let Some(res) = out.residual {
        let rows = res.rows.min(m);
        assert!(
            rows == 0 || res.data.len() >= (rows - 1) * res.pitch + n,
            "{kernel}: the residual is too short"
        );
    }
}

/// The form of [`Isa::depthwise_plane`]: filter `w`, input plane `x`, output plane `y`, the
/// plane's taps, the sums' start and the clamp.
pub type DepthwisePlaneFn =
    fn(w: &[f32], x: &[f32], y: &mut [f32], plane: &DepthwisePlane, init: f32, clamp: Option<[f32; 2]>);

/// The form of [`Isa::depthwise_rows`]: filter `w`, input rows `b`, output rows `c`, and their
/// shape.
pub type DepthwiseFn = fn(w: &[f32], b: &[f32], c: &mut [f32], shape: DepthwiseRows);

/// The form of [`Isa::depthwise_s1`] and [`Isa::depthwise_s2`]: filter `w`, input plane `x`,
/// output plane `y`, and their shape.
pub type DepthwiseInPlaceFn = fn(w: &[f32], x: &[f32], y: &mut [f32], shape: DepthwiseInPlace);

/// Tallest filter [`Isa::depthwise_s1`] and [`Isa::depthwise_s2`] take.
pub const DEPTHWISE_IN_PLACE_MAX_ROWS: usize = 5;

/// Shape of one [`Isa::depthwise_s1`] or [`Isa::depthwise_s2`] call: one channel's filter over
/// its whole plane, read in place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthwiseInPlace {
    /// Filter rows (1 to [`DEPTHWISE_IN_PLACE_MAX_ROWS`]).
    pub kh: usize,
    /// Filter columns.
    pub kw: usize,
    /// Input rows.
    pub in_h: usize,
    /// Input columns (the input's row pitch).
    pub in_w: usize,
    /// Zero rows above the input.
    pub pad_top: usize,
    /// Zero columns left of the input.
    pub pad_left: usize,
    /// Output rows.
    pub out_h: usize,
    /// Output columns (the output's row pitch).
    pub out_w: usize,
    /// What each sum starts from: 0, or the filter's bias.
    pub init: f32,
    /// `[lo, hi]`: each sum is clamped to `lo..=hi` (`x.max(lo).min(hi)`, so NaN becomes `lo`)
    /// before it is stored: a fused ReLU / ReLU6 / Clip.
    pub clamp: Option<[f32; 2]>,
}

/// Widest plane [`Isa::depthwise_3x3`] takes.
pub const DEPTHWISE_3X3_MAX_WIDTH: usize = 64;

/// The form of [`Isa::depthwise_3x3`]: filters `w` (9 per channel), input planes `x` (back to
/// back), the output rows to compute, each channel's part of the output (those rows of its
/// plane), and the planes' shape.
pub type Depthwise3x3Fn = fn(
    w: &[f32],
    x: &[f32],
    rows: std::ops::Range<usize>,
    y: &mut [&mut [f32]],
    shape: DepthwiseChannels<'_>,
);

/// Shape of one [`Isa::depthwise_3x3`] or [`Isa::depthwise_small`] call: every channel's planes,
/// in and out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthwiseChannels<'a> {
    /// Input rows.
    pub in_h: usize,
    /// Input columns (the input's row pitch).
    pub in_w: usize,
    /// Output rows.
    pub out_h: usize,
    /// Output columns (the output's row pitch; 1 to [`DEPTHWISE_3X3_MAX_WIDTH`]).
    pub out_w: usize,
    /// 1 or 2, both ways.
    pub stride: usize,
    /// Zero rows above the input (at most 2).
    pub pad_top: usize,
    /// Zero columns left of the input (at most 1), with `in_w + pad_left >= stride * (out_w - 2)
    /// + 3`: only the last output reads right of the input.
    pub pad_left: usize,
    /// What channel `c`'s sums start from (`bias[c]`), or 0 for every channel.
    pub bias: Option<&'a [f32]>,
    /// `[lo, hi]`: each sum is clamped to `lo..=hi` (`x.max(lo).min(hi)`, so NaN becomes `lo`)
    /// before it is stored: a fused ReLU / ReLU6 / Clip.
    pub clamp: Option<[f32; 2]>,
}

/// The form of [`Isa::dot_rows`]: weight rows `a` (`k` each), one column `x`, a sum per row.
pub type DotRowsFn = fn(a: &[f32], k: usize, x: &[f32], out: &mut [f32]);

/// `Some(step)` when `offs[p] = offs[0] + p * step` for every `p`, so that row `p` of `b + offs[0]`
/// lies at `p * step`: the rows of a 1×1 convolution (its input planes), which a kernel can step
/// through instead of loading an offset per row.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline]
pub(crate) fn evenly_spaced(offs: &[usize]) -> Option<usize> {
    let step = match offs {
        [first, second, ..] => second.checked_sub(*first)?,
        _ => 0,
    };
    // Without an early exit the comparisons vectorise: a 1×1 layer's call over 7×7 checks 160-960
    // offsets per 48 filters. A wrapped difference cannot equal `step`: both offsets index a slice.
    offs.windows(2).fold(true, |even, w| even & (w[1].wrapping_sub(w[0]) == step)).then_some(step)
}

/// Checks [`Isa::max_2x2`] operands (panicking on a caller bug, as every path must).
pub(crate) fn max_2x2_check(r0: &[f32], r1: &[f32], out: &[f32]) {
    let n = out.len();
    assert!(r0.len() >= 2 * n && r1.len() >= 2 * n, "max_2x2: input rows shorter than {} values", 2 * n);
}

/// Checks [`Isa::transpose`] operands (panicking on a caller bug, as every path must); returns
/// `rows * cols`.
pub(crate) fn transpose_check(src: &[f32], rows: usize, cols: usize, dst: &[f32]) -> usize {
    let n = rows.checked_mul(cols).expect("transpose: rows * cols overflows");
    assert!(src.len() >= n && dst.len() >= n, "transpose: {rows}x{cols} needs {n} values in and out");
    n
}

/// A transpose of one `side`×`side` tile: `dst[j * dst_pitch + i] = src[i * src_pitch + j]`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) type TransposeTile = unsafe fn(src: *const f32, src_pitch: usize, dst: *mut f32, dst_pitch: usize);

/// The vector paths' [`Isa::transpose`]: whole `side`×`side` tiles through `tile`, the scalar
/// path for the last rows and columns, a copy for a single row or column.
///
/// # Safety
/// `tile` must be callable on this CPU (its target features detected) and transpose exactly
/// one `side`×`side` tile, reading and writing nothing else.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) unsafe fn transpose_by_tiles(
    src: &[f32],
    rows: usize,
    cols: usize,
    dst: &mut [f32],
    side: usize,
    tile: TransposeTile,
) {
    let n = transpose_check(src, rows, cols, dst);
    if rows == 1 || cols == 1 {
        // A single row or column: the same values in the same order.
        return dst[..n].copy_from_slice(&src[..n]);
    }
    let (whole_rows, whole_cols) = (rows / side * side, cols / side * side);
    for r in (0..whole_rows).step_by(side) {
        for c in (0..whole_cols).step_by(side) {
            // SAFETY: `tile` runs on this CPU (the caller's promise); tile (r, c) reads rows
            // r..r + side <= rows at columns c..c + side <= cols and writes rows c..c + side <=
            // cols at columns r..r + side <= rows of the transposed matrix: inside the
            // `rows * cols` values checked above.
            unsafe { tile(src.as_ptr().add(r * cols + c), cols, dst.as_mut_ptr().add(c * rows + r), rows) }
        }
    }
    scalar::transpose_part(src, rows, cols, 0..whole_rows, whole_cols..cols, dst);
    scalar::transpose_part(src, rows, cols, whole_rows..rows, 0..cols, dst);
}

/// Checks [`Isa::deinterleave`] operands (panicking on a caller bug, as every path must).
pub(crate) fn deinterleave_check(src: &[f32], even: &[f32], odd: &[f32]) {
    let n = even.len();
    assert_eq!(odd.len(), n, "deinterleave: {n} even and {} odd outputs", odd.len());
    assert!(src.len() >= 2 * n, "deinterleave: {} values for {n} pairs", src.len());
}

/// See [`Isa::decode_packed`].
pub type DecodePacked = fn(packed: &[u8], bits: u8, lut: &[f32], out: &mut [f32]);

/// Checks [`Isa::decode_packed`] operands (panicking on a caller bug, as every path must).
pub(crate) fn decode_packed_check(packed: &[u8], bits: u8, lut: &[f32], out: &[f32]) {
    let n = out.len();
    assert!((1..=7).contains(&bits), "decode_packed: {bits}-bit indices");
    assert!(lut.len() >= 1 << bits, "decode_packed: {} table entries for {bits}-bit indices", lut.len());
    let need = (n * bits as usize).div_ceil(8);
    assert!(packed.len() >= need, "decode_packed: {} bytes for {n} {bits}-bit indices", packed.len());
}

/// Checks [`Isa::decode_nibbles`] operands (panicking on a caller bug, as every path must).
pub(crate) fn decode_nibbles_check(packed: &[u8], out: &[f32]) {
    let n = out.len();
    assert!(packed.len() >= n.div_ceil(2), "decode_nibbles: {} bytes for {n} indices", packed.len());
}

/// Checks [`Isa::dot_rows`] operands (panicking on a caller bug, like slice indexing would).
/// (The AVX2 and NEON paths have the kernel.)
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn dot_rows_check(a: &[f32], k: usize, x: &[f32], out: &[f32]) {
    let rows = out.len();
    assert!(
        rows.checked_mul(k).is_some_and(|len| len <= a.len()),
        "dot_rows: {} weights hold fewer than {rows} rows of {k}",
        a.len()
    );
    assert!(x.len() >= k, "dot_rows: a column of {} values for depth {k}", x.len());
}

/// Largest filter side [`Isa::depthwise_small`] takes.
pub const DEPTHWISE_SMALL_MAX_K: usize = 7;

/// Widest output [`Isa::depthwise_small`] takes (two vectors of 8 lanes).
pub const DEPTHWISE_SMALL_MAX_WIDTH: usize = 16;

/// Floats of the zero-padded copy of an input plane that [`Isa::depthwise_small`] keeps on the
/// stack (16 KiB).
pub const DEPTHWISE_SMALL_SCRATCH: usize = 4096;

/// Most padded input pixels (the rows × columns its outputs read) of a plane that
/// [`Isa::depthwise_interleaved`] takes: its pixel-major copy of 16 channels lives on the stack
/// (40 KiB).
pub const DEPTHWISE_INTERLEAVED_MAX_PADDED: usize = 640;

/// Most output pixels of a plane that [`Isa::depthwise_interleaved`] takes.
pub const DEPTHWISE_INTERLEAVED_MAX_OUT: usize = 256;

/// Whether [`Isa::depthwise_interleaved`] takes a `k`×`k` filter at `stride` into `out_h ×
/// out_w` outputs with these leading pads: a filter side of 1 to [`DEPTHWISE_SMALL_MAX_K`],
/// stride 1 or 2, pads below `k`, at most [`DEPTHWISE_INTERLEAVED_MAX_OUT`] outputs and
/// [`DEPTHWISE_INTERLEAVED_MAX_PADDED`] padded input pixels.
pub fn depthwise_interleaved_fits(
    k: usize,
    stride: usize,
    out_h: usize,
    out_w: usize,
    pad_top: usize,
    pad_left: usize,
) -> bool {
    let reach = |out: usize| (out.max(1) - 1) * stride + k;
    (1..=DEPTHWISE_SMALL_MAX_K).contains(&k)
        && matches!(stride, 1 | 2)
        && out_h > 0
        && out_w > 0
        && pad_top < k
        && pad_left < k
        && out_h * out_w <= DEPTHWISE_INTERLEAVED_MAX_OUT
        && reach(out_h) * reach(out_w) <= DEPTHWISE_INTERLEAVED_MAX_PADDED
}

/// Checks [`Isa::depthwise_interleaved`] operands (panicking on a caller bug); the number of
/// channels, or `None` when there is no output to compute.
#[cfg(target_arch = "x86_64")]
pub(crate) fn depthwise_interleaved_check(
    w: &[f32],
    x: &[f32],
    y: &[f32],
    s: &DepthwiseChannels<'_>,
    k: usize,
) -> Option<usize> {
    assert!(
        depthwise_interleaved_fits(k, s.stride, s.out_h, s.out_w, s.pad_top, s.pad_left),
        "depthwise interleaved {k}x{k}: {s:?} is not supported"
    );
    depthwise_planes_check(k, w, x, y, s)
}

/// The form of [`Isa::depthwise_small`]: filters `w` (`k`×`k` per channel), input planes `x`,
/// output planes `y`, back to back, their shape, and `k`.
pub type DepthwiseSmallFn = fn(w: &[f32], x: &[f32], y: &mut [f32], shape: DepthwiseChannels<'_>, k: usize);

/// How [`Isa::depthwise_small`] lays out its zero-padded copy of a plane: `rows` rows of `pitch`
/// floats; at stride 2 each row holds its even columns, then its odd ones (`phase` floats each),
/// so that every filter tap reads a run of consecutive floats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmallPlane {
    /// Padded rows the outputs read.
    pub rows: usize,
    /// Floats per padded row: `stride * phase`.
    pub pitch: usize,
    /// Floats per phase of a row: what the widest tap reads (whole vectors from its first
    /// column), plus a vector of slack that the copy's last whole-vector store may fill with
    /// zeros.
    pub phase: usize,
    /// Vectors of 8 per output row (1 or 2).
    pub vectors: usize,
}

/// The padded copy [`Isa::depthwise_small`] makes for a `k`×`k` filter at `stride` with these
/// output extents and leading pads, or `None` when the kernel does not take the shape (a filter
/// side outside 1..=[`DEPTHWISE_SMALL_MAX_K`], a stride other than 1 or 2, an output wider than
/// [`DEPTHWISE_SMALL_MAX_WIDTH`] or empty, a pad of `k` or more, or a copy larger than
/// [`DEPTHWISE_SMALL_SCRATCH`]).
pub fn depthwise_small_plane(
    k: usize,
    stride: usize,
    out_h: usize,
    out_w: usize,
    pad_top: usize,
    pad_left: usize,
) -> Option<SmallPlane> {
    let takes = (1..=DEPTHWISE_SMALL_MAX_K).contains(&k)
        && matches!(stride, 1 | 2)
        && (1..=DEPTHWISE_SMALL_MAX_WIDTH).contains(&out_w)
        && out_h > 0
        && pad_top < k
        && pad_left < k;
    if !takes {
        return None;
    }
    let vectors = out_w.div_ceil(8);
    let phase = (k - 1) / stride + 8 * vectors + 8;
    let (rows, pitch) = ((out_h - 1) * stride + k, stride * phase);
    (rows * pitch <= DEPTHWISE_SMALL_SCRATCH).then_some(SmallPlane { rows, pitch, phase, vectors })
}

/// Checks [`Isa::depthwise_small`] operands (panicking on a caller bug); the number of channels
/// and the padded layout, or `None` when there is nothing to compute. (The x86 and NEON paths have
/// the kernel.)
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn depthwise_small_check(
    w: &[f32],
    x: &[f32],
    y: &[f32],
    s: &DepthwiseChannels<'_>,
    k: usize,
) -> Option<(usize, SmallPlane)> {
    let Some(plane) = depthwise_small_plane(k, s.stride, s.out_h, s.out_w, s.pad_top, s.pad_left) else {
        panic!("depthwise {k}x{k}: {s:?} is not supported");
    };
    let channels = depthwise_planes_check(k, w, x, y, s)?;
    Some((channels, plane))
}

/// The operand checks both many-channel depthwise kernels share, for `k`×`k` filters: whole
/// filters in `w`, a non-empty input plane, and input planes and biases for every channel. The
/// number of channels.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn depthwise_channels_check(k: usize, w: &[f32], x: &[f32], s: &DepthwiseChannels<'_>) -> usize {
    let taps = k * k;
    assert!(w.len().is_multiple_of(taps), "depthwise {k}x{k}: {} weights are not whole filters", w.len());
    assert!(s.in_h > 0 && s.in_w > 0, "depthwise {k}x{k}: an empty {}x{} input plane", s.in_h, s.in_w);
    let channels = w.len() / taps;
    assert!(
        x.len() >= channels * s.in_h * s.in_w,
        "depthwise {k}x{k}: input of {} < {channels} planes of {}x{}",
        x.len(),
        s.in_h,
        s.in_w
    );
    if let Some(b) = s.bias {
        assert!(b.len() >= channels, "depthwise {k}x{k}: {} biases for {channels} channels", b.len());
    }
    channels
}

/// [`depthwise_channels_check`] for a kernel that writes whole output planes back to back into
/// `y`: also that `y` holds them. The number of channels, or `None` when there is no output.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn depthwise_planes_check(
    k: usize,
    w: &[f32],
    x: &[f32],
    y: &[f32],
    s: &DepthwiseChannels<'_>,
) -> Option<usize> {
    let channels = depthwise_channels_check(k, w, x, s);
    let outputs = channels * s.out_h * s.out_w;
    assert!(
        y.len() >= outputs,
        "depthwise {k}x{k}: output of {} < {channels} planes of {}x{}",
        y.len(),
        s.out_h,
        s.out_w
    );
    (outputs > 0).then_some(channels)
}

/// Checks [`Isa::depthwise_3x3`] operands (panicking on a caller bug); the number of channels,
/// or `None` when there is nothing to compute. (The x86 and NEON paths have the kernel.)
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn depthwise_3x3_check(
    w: &[f32],
    x: &[f32],
    rows: &std::ops::Range<usize>,
    y: &[&mut [f32]],
    s: &DepthwiseChannels<'_>,
) -> Option<usize> {
    assert!(
        (1..=DEPTHWISE_3X3_MAX_WIDTH).contains(&s.out_w),
        "depthwise 3x3: output rows of {} columns are not supported",
        s.out_w
    );
    assert!(matches!(s.stride, 1 | 2), "depthwise 3x3: stride {} is not supported", s.stride);
    // Only the first output may read left of the row and only the last right of it (the kernels
    // clear stray columns in those views alone).
    assert!(
        s.pad_top <= 2
            && s.pad_left <= 1
            && s.in_w + s.pad_left >= (s.stride * s.out_w + 3).saturating_sub(2 * s.stride),
        "depthwise 3x3: padding {}x{} with {} input and {} output columns is not supported",
        s.pad_top,
        s.pad_left,
        s.in_w,
        s.out_w
    );
    assert!(
        rows.start <= rows.end && rows.end <= s.out_h,
        "depthwise 3x3: output rows {rows:?} of a plane of {}",
        s.out_h
    );
    let channels = depthwise_channels_check(3, w, x, s);
    assert!(y.len() >= channels, "depthwise 3x3: {} output parts for {channels} channels", y.len());
    let part = rows.len() * s.out_w;
    for (c, out) in y[..channels].iter().enumerate() {
        assert!(
            out.len() >= part,
            "depthwise 3x3: channel {c}'s output part of {} < {rows:?} rows",
            out.len()
        );
    }
    (channels > 0 && part > 0).then_some(channels)
}

/// Checks [`Isa::depthwise_s1`] / [`Isa::depthwise_s2`] operands (panicking on a caller bug);
/// `false` when there is nothing to compute.
pub(crate) fn depthwise_in_place_check(w: &[f32], x: &[f32], y: &[f32], s: &DepthwiseInPlace) -> bool {
    assert!(
        (1..=DEPTHWISE_IN_PLACE_MAX_ROWS).contains(&s.kh) && s.kw >= 1,
        "depthwise in place: a {}x{} filter is not supported",
        s.kh,
        s.kw
    );
    assert!(w.len() >= s.kh * s.kw, "depthwise in place: {} weights for a {}x{} filter", w.len(), s.kh, s.kw);
    assert!(x.len() >= s.in_h * s.in_w, "depthwise in place: input of {} < {}x{}", x.len(), s.in_h, s.in_w);
    assert!(
        y.len() >= s.out_h * s.out_w,
        "depthwise in place: output of {} < {}x{}",
        y.len(),
        s.out_h,
        s.out_w
    );
    s.out_h > 0 && s.out_w > 0
}

/// Columns that [`Isa::gemv_prepare`]'s `xp` should be rounded up to, so that every path can
/// zero-pad its last block (the widest block: 512 one-bit indices in a 64-byte register).
pub const GEMV_BLOCK: usize = 512;

/// Rows [`Isa::dot_packed_rows`] gets at a time from the GEMV (the x86 kernels share each load of
/// the prepared input between this many rows).
pub const PACKED_ROWS: usize = 4;

/// Writes `x` into `xp` in the block order of the x86 multi-row GEMV kernels: a block of
/// `lanes * per` columns is one register of `lanes` 32-bit words of packed indices, word `l`
/// holding the `per` indices of columns `l * per .. (l + 1) * per` (LSB first), so shifting the
/// register right by `k * bits` puts column `l * per + k` in lane `l`. In `xp` those columns come
/// first for `k = 0`, then `k = 1`, ...: `xp[b * lanes * per + k * lanes + l] = x[b * lanes * per
/// + l * per + k]`. Columns after the last whole block are laid out the same way as a block
/// padded with zeros when `xp` has room for it, and copied unchanged otherwise.
#[cfg(any(target_arch = "x86_64", test))]
pub(crate) fn permute_blocks(x: &[f32], xp: &mut [f32], lanes: usize, per: usize) {
    let block = lanes * per;
    // A transpose of `lanes` rows of `per` columns, written without a division per value (the
    // GEMV prepares its input on every call: `i % per`, `i / per` cost a few microseconds at 4k).
    permute_each_block(x, xp, block, |src, dst| {
        for (l, word) in src.chunks(per).enumerate() {
            for (k, &v) in word.iter().enumerate() {
                dst[k * lanes + l] = v;
            }
        }
    });
}

/// Writes `x` into `xp` one `block` of values at a time through `permute` (a block's values,
/// `dst` its place in `xp`); the last, partial block goes through `permute` into a zeroed whole
/// block when `xp` has room for it, and is copied unchanged otherwise.
#[cfg(any(target_arch = "x86_64", test))]
pub(crate) fn permute_each_block(
    x: &[f32],
    xp: &mut [f32],
    block: usize,
    permute: impl Fn(&[f32], &mut [f32]),
) {
    let whole = x.len() / block * block;
    for (src, dst) in x[..whole].chunks_exact(block).zip(xp.chunks_exact_mut(block)) {
        permute(src, dst);
    }
    let rest = &x[whole..];
    if !rest.is_empty() && xp.len() >= whole + block {
        let dst = &mut xp[whole..whole + block];
        dst.fill(0.0);
        permute(rest, dst);
    } else {
        xp[whole..x.len()].copy_from_slice(rest);
    }
}

/// See [`Isa::dot_nibble_rows_f16`].
pub type DotNibbleRowsF16 =
    fn(rows: &[&[u8]], tables: &[&[half::f16]], x: &[f32], xp: &[f32], out: &mut [f32]);

/// Checks [`Isa::dot_nibble_rows_f16`] operands (panicking on a caller bug).
#[cfg(target_arch = "x86_64")]
pub(crate) fn dot_nibble_rows_f16_check(
    rows: &[&[u8]],
    tables: &[&[half::f16]],
    x: &[f32],
    xp: &[f32],
    out: &[f32],
) {
    assert_eq!(
        tables.len(),
        rows.len(),
        "dot_nibble_rows_f16: {} tables for {} rows",
        tables.len(),
        rows.len()
    );
    assert!(tables.iter().all(|t| t.len() <= 16), "dot_nibble_rows_f16: a table of more than 16 entries");
    assert!(out.len() >= rows.len(), "dot_nibble_rows_f16: {} outputs for {} rows", out.len(), rows.len());
    assert!(xp.len() >= x.len(), "dot_nibble_rows_f16: prepared input is shorter than x");
}

/// Checks [`Isa::dot_packed_rows`] operands (panicking on a caller bug).
pub(crate) fn dot_packed_rows_check(rows: &[&[u8]], luts: &[[f32; 256]], x: &[f32], xp: &[f32], out: &[f32]) {
    assert!(
        luts.len() == 1 || luts.len() >= rows.len(),
        "dot_packed_rows: {} tables for {} rows",
        luts.len(),
        rows.len()
    );
    assert!(out.len() >= rows.len(), "dot_packed_rows: {} outputs for {} rows", out.len(), rows.len());
    assert!(xp.len() >= x.len(), "dot_packed_rows: prepared input is shorter than x");
}

/// Row `r`'s table in an [`Isa::dot_packed_rows`] table list: its own, or the one every row
/// shares when the list holds a single table.
#[inline]
pub(crate) fn row_table(luts: &[[f32; 256]], r: usize) -> &[f32; 256] {
    &luts[if luts.len() == 1 { 0 } else { r }]
}

/// The tables of rows `r..` in an [`Isa::dot_packed_rows`] table list (a single shared table
/// stays the whole list).
#[cfg(target_arch = "x86_64")]
pub(crate) fn tables_from(luts: &[[f32; 256]], r: usize) -> &[[f32; 256]] {
    if luts.len() == 1 {
        luts
    } else {
        &luts[r..]
    }
}

/// How a micro-kernel finds row `p` of its `b` operand: a fixed stride or a list of offsets.
/// Monomorphised into each path's register-blocked loop, so both forms share one kernel.
pub(crate) trait BRows: Copy {
    /// Whether the kernel adds to `c` (`gemm_rows`) or overwrites it (`gemm_rows_at`).
    const ACCUMULATE: bool;

    /// Element offset of row `p` from the start of `b`.
    ///
    /// # Safety
    /// `p` must be below the `k` the kernel was checked for (a listed form holds `k` offsets).
    unsafe fn offset(self, p: usize) -> usize;
}

/// Rows `ldb` elements apart.
#[derive(Clone, Copy)]
pub(crate) struct Strided(pub usize);

impl BRows for Strided {
    const ACCUMULATE: bool = true;
    #[inline(always)]
    unsafe fn offset(self, p: usize) -> usize {
        p * self.0
    }
}

/// Rows at listed offsets (a raw pointer so the form is `Copy` into `#[target_feature]` loops).
#[derive(Clone, Copy)]
pub(crate) struct Listed(pub *const usize);

impl BRows for Listed {
    const ACCUMULATE: bool = false;
    #[inline(always)]
    unsafe fn offset(self, p: usize) -> usize {
        // SAFETY: the caller guarantees `p < k` and the list holds at least `k` offsets.
        unsafe { *self.0.add(p) }
    }
}

/// Checks `gemm_rows` operands (panicking on a caller bug, like slice indexing would) and returns
/// the row count `a.len() / k`, or `None` when there is nothing to do.
pub(crate) fn gemm_rows_check(
    a: &[f32],
    k: usize,
    b: &[f32],
    ldb: usize,
    n: usize,
    c: &[f32],
    ldc: usize,
) -> Option<usize> {
    let m = output_rows(a, k, n, c, ldc, "gemm_rows")?;
    // Rows of b may overlap (they are only read).
    assert!(b.len() >= (k - 1) * ldb + n, "gemm_rows: b is too short");
    Some(m)
}

/// The row count `a.len() / k` of a `gemm_rows` / `gemm_rows_at` call (`None`: nothing to do),
/// after checking that `c` holds that many rows of `n` (which may not overlap unless there is
/// one).
fn output_rows(a: &[f32], k: usize, n: usize, c: &[f32], ldc: usize, what: &str) -> Option<usize> {
    if k == 0 || n == 0 || a.len() < k {
        return None;
    }
    let m = a.len() / k;
    assert!((m == 1 || n <= ldc) && c.len() >= (m - 1) * ldc + n, "{what}: c is too short");
    Some(m)
}

/// Checks `gemm_rows_at` operands the way the reference's slicing would (panicking on a caller
/// bug) and returns the row count `a.len() / k`, or `None` when there is nothing to do.
pub(crate) fn gemm_rows_at_check(
    a: &[f32],
    k: usize,
    b: &[f32],
    offs: &[usize],
    n: usize,
    c: &[f32],
    ldc: usize,
) -> Option<usize> {
    let m = output_rows(a, k, n, c, ldc, "gemm_rows_at")?;
    assert!(offs.len() >= k, "gemm_rows_at: {} offsets for {k} rows", offs.len());
    // max(o + n) as max(o) + n: a plain maximum vectorises.
    let reach = offs[..k].iter().copied().max().unwrap_or(0).saturating_add(n);
    assert!(reach <= b.len(), "gemm_rows_at: b is too short");
    Some(m)
}

impl std::fmt::Debug for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Isa").field("name", &self.name).finish()
    }
}

impl PartialEq for Isa {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Isa {
    /// The portable reference path.
    pub fn scalar() -> Isa {
        scalar::ISA
    }

    /// Every path this CPU can run, best last.
    pub fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut paths = vec![Isa::scalar()];
        #[cfg(target_arch = "aarch64")]
        paths.extend(neon::neon());
        #[cfg(target_arch = "x86_64")]
        paths.extend(x86::avx2().into_iter().chain(x86::avx512()));
        paths
    }

    /// The path named `name`, if this CPU can run it; an error names what is missing.
    pub fn by_name(name: &str) -> Result<Isa, KernelError> {
        const KNOWN: [&str; 4] = ["scalar", "avx2", "avx512", "neon"];
        if !KNOWN.contains(&name) {
            return Err(KernelError::Params(format!(
                "unknown kernel path '{name}' (expected one of {KNOWN:?})"
            )));
        }
        Isa::available().into_iter().find(|i| i.name == name).ok_or_else(|| {
            KernelError::Params(format!("kernel path '{name}' is not supported by this CPU or build"))
        })
    }

    /// `PITH_KERNEL` if set (an error if the CPU lacks it), else the best available path.
    pub fn detect() -> Result<Isa, KernelError> {
        match std::env::var("PITH_KERNEL") {
            Ok(name) if !name.is_empty() => Isa::by_name(&name),
            _ => Ok(*Isa::available().last().expect("scalar is always available")),
        }
    }
}
