//! The shape of [`Isa::depthwise_rows`] and what its SIMD implementations share: the operand
//! check and the split of a call into register tiles; and [`DepthwisePlane`], the masks of
//! [`Isa::depthwise_plane`].
//!
//! A SIMD path computes [`TILE_ROWS`] output rows at a time, so each input vector it loads for
//! filter column `kx` feeds every output row one of the filter's rows reaches: `TILE_ROWS + kh - 1`
//! loads for `TILE_ROWS * kh` FMAs, where one row at a time needs a load per FMA. The paths make
//! the tile's output rows and filter rows const generics, so the accumulators stay in registers;
//! filters taller than [`PASS_ROWS`] run as several passes, the later ones accumulating.
//!
//! [`Isa::depthwise_rows`]: super::Isa::depthwise_rows
//! [`Isa::depthwise_plane`]: super::Isa::depthwise_plane

/// Shape of one [`Isa::depthwise_rows`](super::Isa::depthwise_rows) call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthwiseRows {
    /// Filter rows.
    pub kh: usize,
    /// Filter columns.
    pub kw: usize,
    /// Elements between rows of `b`.
    pub ldb: usize,
    /// Output rows.
    pub rows: usize,
    /// Output columns per row.
    pub n: usize,
    /// Elements between rows of `c` (at least `n` when there are several rows).
    pub ldc: usize,
    /// Add to `c` instead of overwriting it.
    pub accumulate: bool,
    /// What each output starts from when not accumulating: 0, or the filter's bias, which then
    /// needs no pass of its own.
    pub init: f32,
    /// `[lo, hi]`: each finished sum is clamped to `lo..=hi` (`x.max(lo).min(hi)`, so NaN becomes
    /// `lo`) before it is stored: a fused ReLU / ReLU6 / Clip. Applied after the last filter row.
    pub clamp: Option<[f32; 2]>,
}

/// Checks [`Isa::depthwise_rows`](super::Isa::depthwise_rows) operands (panicking on a caller
/// bug, like slice indexing would); `false` when there is nothing to compute (no output, or an
/// empty filter, which only the scalar path's zero-fill handles).
pub(crate) fn depthwise_rows_check(w: &[f32], b: &[f32], c: &[f32], s: &DepthwiseRows) -> bool {
    if s.rows == 0 || s.n == 0 {
        return false;
    }
    assert!(s.rows == 1 || s.n <= s.ldc, "depthwise_rows: output rows overlap");
    assert!(c.len() >= (s.rows - 1) * s.ldc + s.n, "depthwise_rows: c is too short");
    if s.kh == 0 || s.kw == 0 {
        return false;
    }
    assert!(w.len() >= s.kh * s.kw, "depthwise_rows: {} weights for a {}x{} filter", w.len(), s.kh, s.kw);
    let reach = (s.rows + s.kh - 2) * s.ldb + s.kw - 1 + s.n;
    assert!(b.len() >= reach, "depthwise_rows: b is too short");
    true
}

/// Lanes of one [`DepthwisePlane`] block: output elements whose tap masks one `u16` holds (an
/// AVX-512 vector of f32).
pub const PLANE_LANES: usize = 16;

/// A stride-1 depthwise filter's taps over a whole input plane whose rows are as wide as the
/// output's, flattened: output element `i` (row `i / w`, column `i % w`) reads input element
/// `i + offset(t)` for tap `t` when that lies inside the input, and padding (zero) when not. A
/// small plane then runs as a few whole vectors per tap, with no padded copy of the input and no
/// half-empty vector per short row; what [`Isa::depthwise_plane`](super::Isa::depthwise_plane)
/// computes.
///
/// Built once per layer call and shared by every channel (and worker): the masks depend on the
/// geometry only. Its fields are private, so every mask bit it holds marks an in-bounds input
/// element, which is what lets a kernel load masked vectors at offsets that may start before or
/// end after the plane.
#[derive(Debug, Clone)]
pub struct DepthwisePlane {
    /// Output elements (`out_h * w`).
    len: usize,
    /// Input elements (`in_h * w`).
    in_len: usize,
    /// Filter taps (`k_h * k_w`), in filter order.
    taps: usize,
    /// Input offset of each tap from the output element it feeds.
    offsets: Vec<isize>,
    /// `masks[t * blocks + v]`: bit `l` set when output element `PLANE_LANES * v + l` exists and
    /// tap `t` of it reads a real input element.
    masks: Vec<u16>,
}

impl DepthwisePlane {
    /// The plane of layer `p`, or `None` unless it is depthwise (one input channel per group),
    /// stride 1 and its input and output rows have the same width (any padding, dilation, filter
    /// and plane size: the caller decides what is worth it; the description takes
    /// `taps * len / PLANE_LANES` masks).
    pub fn new(p: &crate::Conv2dParams) -> Option<Self> {
        let fits = p.in_per_group() == 1 && (p.stride_h, p.stride_w) == (1, 1) && p.in_w == p.out_w;
        if !fits || p.groups == 0 {
            return None;
        }
        let (w, len) = (p.out_w, p.out_h * p.out_w);
        let blocks = len.div_ceil(PLANE_LANES);
        // Each tap's displacement in rows and columns.
        let shifts: Vec<[isize; 2]> = (0..p.k_h)
            .flat_map(|ky| (0..p.k_w).map(move |kx| (ky, kx)))
            .map(|(ky, kx)| {
                [(ky * p.dil_h) as isize - p.pad_top as isize, (kx * p.dil_w) as isize - p.pad_left as isize]
            })
            .collect();
        let offsets = shifts.iter().map(|&[dy, dx]| dy * w as isize + dx).collect();
        let mut masks = vec![0u16; shifts.len() * blocks];
        for (t, &[dy, dx]) in shifts.iter().enumerate() {
            let tap = &mut masks[t * blocks..][..blocks];
            // The tap reads inside the plane at columns c0..c1 of every output row whose input
            // row y + dy exists: a run of bits per row (built on every call of the layer, so
            // a word at a time rather than an element at a time).
            let (c0, c1) =
                ((-dx).clamp(0, w as isize) as usize, (w as isize - dx).clamp(0, w as isize) as usize);
            for y in (0..p.out_h).filter(|&y| (0..p.in_h as isize).contains(&(y as isize + dy))) {
                set_bits(tap, y * w + c0, y * w + c1.max(c0));
            }
        }
        Some(DepthwisePlane { len, in_len: p.in_h * w, taps: shifts.len(), offsets, masks })
    }

    /// Output elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the plane has no output element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Filter taps.
    pub fn taps(&self) -> usize {
        self.taps
    }

    /// Blocks of [`PLANE_LANES`] output elements (the last may be partial).
    pub(crate) fn blocks(&self) -> usize {
        self.len.div_ceil(PLANE_LANES)
    }

    /// Input offset of tap `t` from the output element it feeds.
    pub(crate) fn offset(&self, t: usize) -> isize {
        self.offsets[t]
    }

    /// The masks of tap `t`, one per block.
    pub(crate) fn masks(&self, t: usize) -> &[u16] {
        &self.masks[t * self.blocks()..][..self.blocks()]
    }

    /// Checks [`Isa::depthwise_plane`](super::Isa::depthwise_plane) operands, panicking on a
    /// caller bug like slice indexing would.
    pub(crate) fn check(&self, w: &[f32], x: &[f32], y: &[f32]) {
        assert!(w.len() >= self.taps, "depthwise_plane: {} weights for {} taps", w.len(), self.taps);
        assert!(x.len() >= self.in_len, "depthwise_plane: input of {} < {}", x.len(), self.in_len);
        assert!(y.len() >= self.len, "depthwise_plane: output of {} < {}", y.len(), self.len);
    }
}

/// Sets bits `start..end` of `words` (bit `i` is bit `i % 16` of word `i / 16`).
fn set_bits(words: &mut [u16], start: usize, end: usize) {
    let mut i = start;
    while i < end {
        let (word, bit) = (i / PLANE_LANES, i % PLANE_LANES);
        let n = (PLANE_LANES - bit).min(end - i);
        words[word] |= (u16::MAX >> (PLANE_LANES - n)) << bit;
        i += n;
    }
}

/// Output rows of one SIMD register tile.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) const TILE_ROWS: usize = 4;

/// Filter rows of one SIMD pass.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) const PASS_ROWS: usize = 5;

/// One register tile's work: `rows` (at most [`TILE_ROWS`]) output rows of `kh` (at most
/// [`PASS_ROWS`]) filter rows, as element offsets into the call's `w`, `b` and `c`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DepthwiseBlock {
    /// Offset of the pass's first filter row in `w` (rows stay `kw` apart).
    pub w: usize,
    /// Filter rows of the pass.
    pub kh: usize,
    /// Offset of the tile's first input row in `b`.
    pub b: usize,
    /// Offset of the tile's first output row in `c`.
    pub c: usize,
    /// Output rows of the tile.
    pub rows: usize,
    /// Add to `c` (a later pass, or an accumulating call).
    pub accumulate: bool,
    /// The pass reaches the filter's last row (its sums are final).
    pub last: bool,
}

/// The tiles of a call that [`depthwise_rows_check`] accepted, passes in filter-row order, so
/// every block after a pass's first reads `b` rows `< rows + kh - 1` and writes `c` rows `< rows`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn blocks(s: &DepthwiseRows, mut run: impl FnMut(DepthwiseBlock)) {
    let mut ky0 = 0;
    while ky0 < s.kh {
        let kh = (s.kh - ky0).min(PASS_ROWS);
        let mut r0 = 0;
        while r0 < s.rows {
            let rows = (s.rows - r0).min(TILE_ROWS);
            let accumulate = s.accumulate || ky0 > 0;
            let last = ky0 + kh == s.kh;
            run(DepthwiseBlock {
                w: ky0 * s.kw,
                kh,
                b: (r0 + ky0) * s.ldb,
                c: r0 * s.ldc,
                rows,
                accumulate,
                last,
            });
            r0 += rows;
        }
        ky0 += kh;
    }
}

/// Operands of one register tile, as raw pointers at its block's start (what the SIMD paths'
/// `#[target_feature]` tile functions take).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Clone, Copy)]
pub(crate) struct DepthwiseTile {
    /// The pass's first filter row.
    pub w: *const f32,
    /// Filter columns (the filter's row length).
    pub kw: usize,
    /// The tile's first input row.
    pub b: *const f32,
    /// Elements between input rows.
    pub ldb: usize,
    /// The tile's first output row.
    pub c: *mut f32,
    /// Elements between output rows.
    pub ldc: usize,
    /// Output columns.
    pub n: usize,
    /// Add to the output instead of overwriting it.
    pub accumulate: bool,
    /// The sums' start when not accumulating ([`DepthwiseRows::init`]).
    pub init: f32,
    /// The clamp of the stored sums ([`DepthwiseRows::clamp`]), for a pass's last block only.
    pub clamp: Option<[f32; 2]>,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl DepthwiseTile {
    /// The tile of block `blk`.
    ///
    /// # Safety
    /// `blk` must come from [`blocks`] of a shape `s` that [`depthwise_rows_check`] accepted for
    /// `w`, `b` and `c`.
    unsafe fn new(w: &[f32], b: &[f32], c: &mut [f32], s: &DepthwiseRows, blk: DepthwiseBlock) -> Self {
        // SAFETY: the block's offsets lie inside the checked slices (see `blocks`).
        unsafe {
            DepthwiseTile {
                w: w.as_ptr().add(blk.w),
                kw: s.kw,
                b: b.as_ptr().add(blk.b),
                ldb: s.ldb,
                c: c.as_mut_ptr().add(blk.c),
                ldc: s.ldc,
                n: s.n,
                accumulate: blk.accumulate,
                init: s.init,
                clamp: if blk.last { s.clamp } else { None },
            }
        }
    }
}

/// A SIMD path's [`Isa::depthwise_rows`](super::Isa::depthwise_rows): checks the operands
/// (leaving an empty output or filter to the scalar path), then hands `run` every block with its
/// tile, whose pointers cover exactly what the block reads and writes.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn for_each_tile(
    w: &[f32],
    b: &[f32],
    c: &mut [f32],
    s: DepthwiseRows,
    mut run: impl FnMut(DepthwiseBlock, DepthwiseTile),
) {
    if !depthwise_rows_check(w, b, c, &s) {
        return super::scalar::depthwise_rows(w, b, c, s);
    }
    blocks(&s, |blk| {
        // SAFETY: `blk` comes from `blocks` of a shape the check accepted for `w`, `b` and `c`.
        let tile = unsafe { DepthwiseTile::new(w, b, c, &s, blk) };
        run(blk, tile)
    });
}

/// Checks an in-place depthwise call and hands `run` each register tile of [`TILE_ROWS`] output
/// rows at `stride`, as a block (for the dispatch) and its [`InPlaceTile`]. `run` may call a
/// tile of its path on it: each driver is only in its path's table, handed out after the path's
/// features were detected; the check asserted the filter, the input plane and the output plane,
/// and a tile writes output rows `r0 .. r0 + rows` (< out_h) and reads only input elements inside
/// the plane.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn in_place_tiles(
    stride: usize,
    w: &[f32],
    x: &[f32],
    y: &mut [f32],
    s: super::DepthwiseInPlace,
    mut run: impl FnMut(DepthwiseBlock, InPlaceTile),
) {
    if !super::depthwise_in_place_check(w, x, y, &s) {
        return;
    }
    let mut r0 = 0;
    while r0 < s.out_h {
        let rows = (s.out_h - r0).min(TILE_ROWS);
        let t = InPlaceTile {
            w: w.as_ptr(),
            x: x.as_ptr(),
            // SAFETY: r0 < out_h, and the check asserted `y` holds out_h rows of out_w.
            y: unsafe { y.as_mut_ptr().add(r0 * s.out_w) },
            first_row: (stride * r0) as isize - s.pad_top as isize,
            rows_left: s.out_h - r0,
            shape: s,
        };
        run(DepthwiseBlock { w: 0, kh: s.kh, b: 0, c: 0, rows, accumulate: false, last: true }, t);
        r0 += rows;
    }
}

/// One register tile of an in-place depthwise call: its output rows' filter, input plane and
/// output, as raw pointers (what the `#[target_feature]` tiles take).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[derive(Clone, Copy)]
pub(crate) struct InPlaceTile {
    /// The filter (`kh × kw`).
    pub(crate) w: *const f32,
    /// The whole input plane.
    pub(crate) x: *const f32,
    /// The tile's first output row.
    pub(crate) y: *mut f32,
    /// Input row (possibly negative: padding) that filter row 0 of the tile's first output row
    /// reads.
    pub(crate) first_row: isize,
    /// Output rows from the tile's first to the plane's last.
    pub(crate) rows_left: usize,
    /// The call's shape.
    pub(crate) shape: super::DepthwiseInPlace,
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl InPlaceTile {
    /// Whether the `rows` input rows from the tile's first all lie in the plane (so a tile that
    /// reads them needs no row test).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    pub(crate) fn reads_rows_inside(&self, rows: usize) -> bool {
        self.first_row >= 0 && self.first_row + rows as isize <= self.shape.in_h as isize
    }

    /// Whether a vector of `lanes` outputs stored at column `col` of the tile's output row `r` may
    /// be stored whole although fewer of its lanes are outputs of its strip: the strip holds all
    /// of its row (`row_strip`, so what spills over lies in the rows after it, which are stored
    /// later) and the vector ends inside the output plane.
    #[inline]
    pub(crate) fn stores_whole(&self, row_strip: bool, r: usize, col: usize, lanes: usize) -> bool {
        row_strip && r * self.shape.out_w + col + lanes <= self.rows_left * self.shape.out_w
    }
}

// `depthwise_dispatch!` and the NEON tiles' matches spell out every tile size.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const _: () = assert!(TILE_ROWS == 4 && PASS_ROWS == 5);

/// Calls `$tile::<R, KH>($args)` for a [`DepthwiseBlock`]'s output rows `R` and filter rows `KH`
/// (the x86 tiles; NEON's compute every row of a tile, for code size, and take the rows at run
/// time).
#[cfg(target_arch = "x86_64")]
macro_rules! depthwise_dispatch {
    ($tile:ident, $blk:expr, $($arg:expr),*) => {{
        let blk: $crate::arch::DepthwiseBlock = $blk;
        macro_rules! rows {
            ($kh:literal) => {
                match blk.rows {
                    4 => $tile::<4, $kh>($($arg),*),
                    3 => $tile::<3, $kh>($($arg),*),
                    2 => $tile::<2, $kh>($($arg),*),
                    _ => $tile::<1, $kh>($($arg),*),
                }
            };
        }
        match blk.kh {
            5 => rows!(5),
            4 => rows!(4),
            3 => rows!(3),
            2 => rows!(2),
            _ => rows!(1),
        }
    }};
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_every_row_and_filter_row_once() {
        let s = DepthwiseRows {
            kh: 7,
            kw: 2,
            ldb: 10,
            rows: 9,
            n: 3,
            ldc: 5,
            accumulate: false,
            init: 0.0,
            clamp: None,
        };
        let mut seen = vec![vec![0; s.kh]; s.rows];
        blocks(&s, |b| {
            let (ky0, r0) = (b.w / s.kw, b.c / s.ldc);
            assert_eq!(b.b, (r0 + ky0) * s.ldb);
            assert!(b.rows <= TILE_ROWS && b.kh <= PASS_ROWS);
            assert_eq!(b.accumulate, ky0 > 0, "only later passes accumulate");
            for row in &mut seen[r0..r0 + b.rows] {
                for hit in &mut row[ky0..ky0 + b.kh] {
                    *hit += 1;
                }
            }
        });
        assert!(seen.iter().flatten().all(|&h| h == 1), "{seen:?}");
    }
}
