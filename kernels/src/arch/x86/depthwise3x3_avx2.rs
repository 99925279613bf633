//! AVX2 [`Isa::depthwise_3x3`]: 3×3 depthwise filters at stride 1 or 2 over the planes (or a
//! band of their rows) of many channels in one call, for outputs of at most 64 columns
//! (BlazeFace's 64×64 to 8×8 stages, MobileNets' 56×56 to 7×7); rows of at most four vectors (32
//! columns) in one strip, wider ones in strips of 16 columns. (Over 112×112 the strips took
//! 1.15-1.5× the general kernel's time, so such planes stay on it.)
//!
//! Per channel, the general in-place kernels ([`Isa::depthwise_s1`], [`Isa::depthwise_s2`]) build
//! column masks per filter column and tile and load under `vmaskmovps` wherever a view touches the
//! padding; over such small planes that and the per-channel call cost more than the multiply-adds.
//! Here the masks are built once per call, and a row's view for a filter column is a plain
//! unaligned load (its stray lanes, a neighbour row's columns, cleared by an AND where they would
//! reach a real output) wherever the load stays inside the plane; only rows at the plane's top and
//! bottom load under masks. Tiles hold up to 8 accumulators: 8 output rows of one vector (4 at
//! stride 2, where 7 rows spilled accumulators: 576 channels of 14×14 → 7×7 took 0.068 ms against
//! 0.058), 4 of two, 2 of three or four. Each input row is checked once and then viewed per filter
//! column (checking per filter column and row: 8×8 planes 0.120 ms against 0.090). (Wider rows at
//! one output row per tile, three input rows loaded per output row, were slower than the general
//! kernel's column strips: 56×56 and 64×64 planes 8-14 %.)
//!
//! At stride 2 a vector of 8 outputs reads 16 input columns per filter column: two loads and one
//! in-lane `vshufps` keep the even ones, in the order 0 1 4 5 2 3 6 7, which the multiply-adds
//! keep (lane by lane) until one `vpermpd` per accumulator puts it right before the store.
//!
//! [`Isa::depthwise_3x3`]: crate::arch::Isa::depthwise_3x3
//! [`Isa::depthwise_s1`]: crate::arch::Isa::depthwise_s1
//! [`Isa::depthwise_s2`]: crate::arch::Isa::depthwise_s2

use std::arch::x86_64::*;
use std::ops::Range;

use super::avx2::lane_mask;
use crate::arch::{depthwise_3x3_check, DepthwiseChannels};

/// See [`Isa::depthwise_3x3`](crate::arch::Isa::depthwise_3x3).
pub(super) fn depthwise_3x3_avx2(
    w: &[f32],
    x: &[f32],
    rows: Range<usize>,
    y: &mut [&mut [f32]],
    s: DepthwiseChannels<'_>,
) {
    let Some(channels) = depthwise_3x3_check(w, x, &rows, y, &s) else { return };
    let y = &mut y[..channels];
    // SAFETY: this function is only in the AVX2 table, handed out after AVX2 + FMA were detected;
    // the check asserted that `w` and `x` hold `channels` filters and planes and `y` the rows
    // `rows` (inside the plane) of as many, a stride of 1 or 2, the padding the kernels handle
    // and output rows of at most 64 columns (at most four vectors in one strip, `V` of them;
    // wider rows in strips of two).
    unsafe {
        match (s.stride, s.out_w.div_ceil(8)) {
            (1, 1) => planes::<1, 1>(w, x, rows, y, &s),
            (1, 2) => planes::<1, 2>(w, x, rows, y, &s),
            (1, 3) => planes::<1, 3>(w, x, rows, y, &s),
            (1, 4) => planes::<1, 4>(w, x, rows, y, &s),
            (_, 1) => planes::<2, 1>(w, x, rows, y, &s),
            (_, 2) => planes::<2, 2>(w, x, rows, y, &s),
            (_, 3) => planes::<2, 3>(w, x, rows, y, &s),
            (2, 4) => planes::<2, 4>(w, x, rows, y, &s),
            (1, _) => wide::<1>(w, x, rows, y, &s),
            (_, _) => wide::<2>(w, x, rows, y, &s),
        }
    }
}

/// Expands `body` once per listed value, with `$i` a constant of that value: every accumulator
/// index becomes a constant (with loops, LLVM kept the accumulators in an array on the stack, and
/// 20 layers over 16×16 took 0.278 ms against 0.205).
macro_rules! unrolled {
    ($i:ident in [$($n:literal),*] $body:block) => {
        $({
            #[allow(non_upper_case_globals)]
            const $i: usize = $n;
            $body
        })*
    };
}

/// The order of the outputs in a stride-2 vector after `vshufps`: lane `l` holds output `8v +
/// S2_ORDER[l]`.
const S2_ORDER: [usize; 8] = [0, 1, 4, 5, 2, 3, 6, 7];

/// Most vectors one strip of an output row takes.
const MAX_VECTORS: usize = 4;

/// What a call computes once for every tile at stride `S`.
struct Setup<const S: usize> {
    /// Per filter column and output vector, in the order the view's lanes come in: lanes whose
    /// input column lies inside the row. Only the first output vector's view for filter column 0
    /// and the last vector's for column 2 (and column 1 at stride 2) can hold a column outside the
    /// row that a real output reads (see [`depthwise_3x3_check`]): those views, when loaded
    /// plainly, are ANDed with it.
    keep: [[__m256; MAX_VECTORS]; 3],
    /// Per filter column, output vector and load (`S` loads per view): the lanes inside the row,
    /// for `vmaskmovps` in rows near the plane's edges.
    load: [[[__m256i; 2]; MAX_VECTORS]; 3],
    /// Input rows `plain_first ..= plain_last` have all their loads inside the plane (none when
    /// `plain_last < plain_first`).
    plain_first: usize,
    /// See `plain_first`.
    plain_last: isize,
}

impl<const S: usize> Setup<S> {
    #[target_feature(enable = "avx2,fma")]
    fn new(s: &DepthwiseChannels<'_>, j0: usize, vectors: usize) -> Self {
        let (in_w, pl) = (s.in_w as isize, s.pad_left as isize);
        let inside = |col: isize| (0..in_w).contains(&col);
        let bits = |lanes: [bool; 8]| {
            _mm256_setr_epi32(
                -(lanes[0] as i32),
                -(lanes[1] as i32),
                -(lanes[2] as i32),
                -(lanes[3] as i32),
                -(lanes[4] as i32),
                -(lanes[5] as i32),
                -(lanes[6] as i32),
                -(lanes[7] as i32),
            )
        };
        // Output column of lane l of vector v, and the input column filter column kx reads.
        let out_col = |v: usize, l: usize| j0 + 8 * v + if S == 1 { l } else { S2_ORDER[l] };
        let in_col = |kx: usize, j: usize| (S * j + kx) as isize - pl;
        let keep = std::array::from_fn(|kx| {
            std::array::from_fn(|v| {
                _mm256_castsi256_ps(bits(std::array::from_fn(|l| inside(in_col(kx, out_col(v, l))))))
            })
        });
        // Load `k` of a view starts at input column S (j0 + 8v) + kx - pad_left + 8k.
        let first = |kx: usize, v: usize| (S * (j0 + 8 * v) + kx) as isize - pl;
        let load = std::array::from_fn(|kx| {
            std::array::from_fn(|v| {
                std::array::from_fn(|k| {
                    bits(std::array::from_fn(|l| inside(first(kx, v) + (8 * k + l) as isize)))
                })
            })
        });
        // Row r's loads reach from element r * in_w + S j0 - pad_left to r * in_w + S j0 + 8SV + 1
        // - pad_left (filter column 2's last load of the last vector).
        let plane = (s.in_h * s.in_w) as isize;
        let start = (S * j0) as isize - pl;
        let plain_last = (plane - start - (8 * S * vectors) as isize - 2).div_euclid(in_w);
        let plain_first = if start >= 0 { 0 } else { ((-start) as usize).div_ceil(s.in_w) };
        Setup { keep, load, plain_first, plain_last }
    }
}

/// Output rows `rows` of the channels of `y` (each its part), `V` vectors per row at stride
/// `S`, tiles of `8 / V` output rows (4 for one vector at stride 2) from the first of `rows`.
///
/// # Safety
/// AVX2 + FMA available; `w` and `x` hold `y.len()` filters of 9 and input planes of `s.in_h ×
/// s.in_w`, `rows.end <= s.out_h` and each part of `y` holds its rows of `s.out_w`,
/// with `8 * (V - 1) < s.out_w <= 8 * V`, `V` at most 4, `S == s.stride` 1 or 2 and the padding
/// [`depthwise_3x3_check`] allows; `s.bias`, when given, holds `y.len()` values.
#[target_feature(enable = "avx2,fma")]
unsafe fn planes<const S: usize, const V: usize>(
    w: &[f32],
    x: &[f32],
    rows: Range<usize>,
    y: &mut [&mut [f32]],
    s: &DepthwiseChannels<'_>,
) {
    let setup = Setup::<S>::new(s, 0, V);
    let in_plane = s.in_h * s.in_w;
    let rows_per_tile = if S == 2 && V == 1 { 4 } else { 8 / V };
    for (c, part) in y.iter_mut().enumerate() {
        let init = s.bias.map_or(0.0, |b| b[c]);
        let mut o0 = rows.start;
        while o0 < rows.end {
            let t = Tile {
                w: w[9 * c..].as_ptr(),
                x: x[c * in_plane..].as_ptr(),
                y: part.as_mut_ptr(),
                y_at: (o0 - rows.start) * s.out_w,
                limit: rows.len() * s.out_w,
                first_row: (S * o0) as isize - s.pad_top as isize,
                in_h: s.in_h,
                in_w: s.in_w,
                pad_left: s.pad_left,
                out_w: s.out_w,
                col0: 0,
                init,
                clamp: s.clamp,
            };
            let tile_rows = (rows.end - o0).min(rows_per_tile);
            // A whole tile whose input rows all load plainly takes the loop without row checks.
            let last_row = t.first_row + (S * (tile_rows - 1) + 2) as isize;
            let interior = tile_rows == rows_per_tile
                && t.first_row >= setup.plain_first as isize
                && last_row <= setup.plain_last;
            // SAFETY: as this function's contract; output rows o0 .. o0 + tile_rows of channel c,
            // inside its part (and, for an interior tile, input rows that all load plainly).
            unsafe {
                match (V, tile_rows) {
                    (1, _) if interior && S == 2 => tile::<S, 1, 4, true>(t, &setup),
                    (1, _) if interior => tile::<S, 1, 8, true>(t, &setup),
                    (2, _) if interior => tile::<S, 2, 4, true>(t, &setup),
                    (3, _) if interior => tile::<S, 3, 2, true>(t, &setup),
                    (_, _) if interior => tile::<S, 4, 2, true>(t, &setup),
                    (1, 8) => tile::<S, 1, 8, false>(t, &setup),
                    (1, 7) => tile::<S, 1, 7, false>(t, &setup),
                    (1, 6) => tile::<S, 1, 6, false>(t, &setup),
                    (1, 5) => tile::<S, 1, 5, false>(t, &setup),
                    (1, 4) => tile::<S, 1, 4, false>(t, &setup),
                    (1, 3) => tile::<S, 1, 3, false>(t, &setup),
                    (1, 2) => tile::<S, 1, 2, false>(t, &setup),
                    (1, _) => tile::<S, 1, 1, false>(t, &setup),
                    (2, 4) => tile::<S, 2, 4, false>(t, &setup),
                    (2, 3) => tile::<S, 2, 3, false>(t, &setup),
                    (2, 2) => tile::<S, 2, 2, false>(t, &setup),
                    (2, _) => tile::<S, 2, 1, false>(t, &setup),
                    (3, 2) => tile::<S, 3, 2, false>(t, &setup),
                    (3, _) => tile::<S, 3, 1, false>(t, &setup),
                    (_, 2) => tile::<S, 4, 2, false>(t, &setup),
                    _ => tile::<S, 4, 1, false>(t, &setup),
                }
            }
            o0 += tile_rows;
        }
    }
}

/// Output rows `rows` of the channels of `y` at stride `S`, for output rows wider than four
/// vectors: strips of 16 columns (the last one narrower), each with its own masks, 4 output rows
/// per tile (BlazeFace's 64×64 3×3 layers 43 → 38 µs, MobileNetV2's 56×56 one 0.212 → 0.192
/// ms). A row tile's strips go right to left, so a partial last vector may be stored whole: what
/// it spills over is the next row's first columns, stored later.
///
/// # Safety
/// As [`planes`], for output rows of 33 to 64 columns (no `V`).
#[target_feature(enable = "avx2,fma")]
unsafe fn wide<const S: usize>(
    w: &[f32],
    x: &[f32],
    rows: Range<usize>,
    y: &mut [&mut [f32]],
    s: &DepthwiseChannels<'_>,
) {
    const R: usize = 4;
    // At most 64 columns (the check's bound): four strips, on the stack rather than in a Vec
    // allocated per call.
    const MAX_STRIPS: usize = crate::arch::DEPTHWISE_3X3_MAX_WIDTH / 16;
    let count = s.out_w.div_ceil(16).min(MAX_STRIPS);
    let all: [(usize, usize, Setup<S>); MAX_STRIPS] = std::array::from_fn(|i| {
        let j0 = 16 * i.min(count - 1);
        let vectors = (s.out_w - j0).min(16).div_ceil(8);
        (j0, vectors, Setup::<S>::new(s, j0, vectors))
    });
    let strips = &all[..count];
    let in_plane = s.in_h * s.in_w;
    for (c, part) in y.iter_mut().enumerate() {
        let init = s.bias.map_or(0.0, |b| b[c]);
        let mut o0 = rows.start;
        while o0 < rows.end {
            let tile_rows = (rows.end - o0).min(R);
            let first_row = (S * o0) as isize - s.pad_top as isize;
            let last_row = first_row + (S * (tile_rows - 1) + 2) as isize;
            for (j0, vectors, setup) in strips.iter().rev() {
                let t = Tile {
                    w: w[9 * c..].as_ptr(),
                    x: x[c * in_plane..].as_ptr().wrapping_add(S * j0),
                    y: part.as_mut_ptr(),
                    y_at: (o0 - rows.start) * s.out_w + j0,
                    limit: rows.len() * s.out_w,
                    first_row,
                    in_h: s.in_h,
                    in_w: s.in_w,
                    pad_left: s.pad_left,
                    out_w: s.out_w,
                    col0: *j0,
                    init,
                    clamp: s.clamp,
                };
                let interior =
                    tile_rows == R && first_row >= setup.plain_first as isize && last_row <= setup.plain_last;
                // SAFETY: as this function's contract; output rows o0 .. o0 + tile_rows and
                // columns j0 .. j0 + 8 * vectors (at most out_w) of channel c, inside its part,
                // read through the strip's setup (and, for an interior tile, input rows that all
                // load plainly).
                unsafe {
                    match (vectors, tile_rows) {
                        (2, _) if interior => tile::<S, 2, R, true>(t, setup),
                        (_, _) if interior => tile::<S, 1, R, true>(t, setup),
                        (2, 4) => tile::<S, 2, 4, false>(t, setup),
                        (2, 3) => tile::<S, 2, 3, false>(t, setup),
                        (2, 2) => tile::<S, 2, 2, false>(t, setup),
                        (2, _) => tile::<S, 2, 1, false>(t, setup),
                        (_, 4) => tile::<S, 1, 4, false>(t, setup),
                        (_, 3) => tile::<S, 1, 3, false>(t, setup),
                        (_, 2) => tile::<S, 1, 2, false>(t, setup),
                        _ => tile::<S, 1, 1, false>(t, setup),
                    }
                }
            }
            o0 += tile_rows;
        }
    }
}

/// One tile's filter, input plane and output rows, as raw pointers.
#[derive(Clone, Copy)]
struct Tile {
    /// The channel's 9 weights.
    w: *const f32,
    /// The channel's input plane.
    x: *const f32,
    /// The channel's output part (the call's rows of its plane).
    y: *mut f32,
    /// Element of `y` where the tile's first output row starts.
    y_at: usize,
    /// Elements of `y` the call writes: a vector may be stored whole when it ends within them
    /// (what it spills over is a later row of the part, stored after it); the part's last row
    /// stores its last vector under a mask, so nothing past the part is written (another
    /// thread's rows, when a layer goes by bands).
    limit: usize,
    /// Input row (possibly negative: padding) that filter row 0 of the tile's first output row
    /// reads.
    first_row: isize,
    /// Rows of the input plane.
    in_h: usize,
    /// Columns of the input plane.
    in_w: usize,
    /// Zero columns left of the input.
    pad_left: usize,
    /// Columns of the output plane.
    out_w: usize,
    /// The tile's first output column (`x` and `y_at` already count it).
    col0: usize,
    /// What each sum starts from.
    init: f32,
    /// Clamp applied before the store.
    clamp: Option<[f32; 2]>,
}

/// `R` output rows of `V` vectors at stride `S`: every input row the tile reaches is checked
/// once, loaded once per filter column (that column's view) and feeds the output rows that read
/// it. `INTERIOR`: every input row the tile reads lies in [`Setup::plain_first`] ..=
/// [`Setup::plain_last`], so none is checked.
///
/// # Safety
/// As [`planes`], with the tile's output rows inside the output plane, and with `INTERIOR` its
/// input rows as that says.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const S: usize, const V: usize, const R: usize, const INTERIOR: bool>(t: Tile, s: &Setup<S>) {
    let mut acc = [[_mm256_set1_ps(t.init); V]; R];
    // SAFETY: the channel's 9 weights.
    let wk: [__m256; 9] = std::array::from_fn(|k| unsafe { _mm256_set1_ps(*t.w.add(k)) });
    // The tile reads input rows first_row + i for i < S (R - 1) + 3 (those inside the plane),
    // each checked once, then viewed per filter column.
    unrolled!(i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16] {
        let row = t.first_row + i as isize;
        if i < S * (R - 1) + 3 && (INTERIOR || (0..t.in_h as isize).contains(&row)) {
            let r = row as usize;
            let plain = INTERIOR || (r >= s.plain_first && row <= s.plain_last);
            unrolled!(kx in [0, 1, 2] {
                // Where filter column kx's view of row r starts: may lie before the plane (row 0,
                // left padding), so the address is formed without claiming it is inside.
                let at = t.x.wrapping_add(r * t.in_w + kx).wrapping_sub(t.pad_left);
                let xv: [__m256; V] = std::array::from_fn(|v| {
                    let at = at.wrapping_add(S * 8 * v);
                    // SAFETY: a plain row's loads lie inside the plane (see `Setup::plain_first`);
                    // otherwise every lane a mask sets is a column of row r, inside the plane, and
                    // `vmaskmovps` does not access the others.
                    let view = unsafe {
                        match (S, plain) {
                            (1, true) => _mm256_loadu_ps(at),
                            (1, false) => _mm256_maskload_ps(at, s.load[kx][v][0]),
                            (_, true) => {
                                _mm256_shuffle_ps::<0x88>(_mm256_loadu_ps(at), _mm256_loadu_ps(at.add(8)))
                            }
                            (_, false) => _mm256_shuffle_ps::<0x88>(
                                _mm256_maskload_ps(at, s.load[kx][v][0]),
                                _mm256_maskload_ps(at.wrapping_add(8), s.load[kx][v][1]),
                            ),
                        }
                    };
                    // Only these views can hold a stray column a real output reads (`Setup::keep`).
                    let stray = (kx == 0 && v == 0) || (v == V - 1 && (kx == 2 || (kx == 1 && S == 2)));
                    if plain && stray {
                        _mm256_and_ps(view, s.keep[kx][v])
                    } else {
                        view
                    }
                });
                unrolled!(ky in [0, 1, 2] {
                    // Input row first_row + i is filter row ky of output row (i - ky) / S.
                    let out_row = i.checked_sub(ky).filter(|d| d.is_multiple_of(S)).map(|d| d / S);
                    if let Some(o) = out_row.filter(|&o| o < R) {
                        for (a, &xv) in acc[o].iter_mut().zip(&xv) {
                            *a = _mm256_fmadd_ps(wk[3 * ky + kx], xv, *a);
                        }
                    }
                });
            });
        }
    });
    if let Some([lo, hi]) = t.clamp {
        let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
        acc.as_flattened_mut().iter_mut().for_each(|a| *a = _mm256_min_ps(_mm256_max_ps(*a, lo), hi));
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, &a) in acc.iter().enumerate() {
            // Stride 2: 64-bit pairs 0 2 1 3 put the lanes in order (see `S2_ORDER`).
            let a =
                if S == 1 { a } else { _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(a))) };
            let at = t.y_at + r * t.out_w + 8 * v;
            let n = t.out_w - t.col0 - 8 * v;
            // SAFETY: the row's columns 8v .. min(8v + 8, out_w) are the call's output; a whole
            // store ends within it (`limit`), over rows stored after this one.
            unsafe {
                if n >= 8 || at + 8 <= t.limit {
                    _mm256_storeu_ps(t.y.add(at), a);
                } else {
                    _mm256_maskstore_ps(t.y.add(at), lane_mask(n), a);
                }
            }
        }
    }
}
