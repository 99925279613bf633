//! The transforms of Winograd F(4×4, 3×3): 6×6 input tiles, 4×4 output tiles, 36 products per
//! (input channel, filter) pair and 16 outputs instead of 144, with the interpolation points
//! 0, ±1, ±2 and ∞ (Lavin & Gray, 2016; the matrices every Winograd library uses for this size).
//! Its transforms scale values by up to 8 and 1/24, so the sums lose a few more bits than
//! F(2×2, 3×3)'s: about 1e-6 of the output's magnitude in f32 against 1e-7.

/// `G` applied to the column `(g0, g1, g2)`, its fractions as products with rounded reciprocals
/// (divisions took most of a call's filter transforms, which a small plane does not amortise).
#[inline(always)]
fn g_column(g0: f32, g1: f32, g2: f32) -> [f32; 6] {
    const SIXTH: f32 = 1.0 / 6.0;
    const TWELFTH: f32 = 1.0 / 12.0;
    const TWENTY_FOURTH: f32 = 1.0 / 24.0;
    let (sum, alt) = (g0 + g2 + g1, g0 + g2 - g1);
    let (quarter, wide) = (g0 * TWENTY_FOURTH + g2 * SIXTH, g1 * TWELFTH);
    [g0 * 0.25, -sum * SIXTH, -alt * SIXTH, quarter + wide, quarter - wide, g2]
}

/// `G g Gᵀ` of one 3×3 filter `g` (row-major) into `u` (36 values, row-major 6×6).
#[inline(always)]
pub(super) fn filter(g: &[f32], u: &mut [f32]) {
    let mut gg = [[0.0f32; 3]; 6];
    for c in 0..3 {
        for (a, val) in g_column(g[c], g[3 + c], g[6 + c]).into_iter().enumerate() {
            gg[a][c] = val;
        }
    }
    for (a, r) in gg.iter().enumerate() {
        u[a * 6..a * 6 + 6].copy_from_slice(&g_column(r[0], r[1], r[2]));
    }
}

/// `Bᵀ` applied to `(d0, .., d5)`.
#[inline(always)]
fn b_t(d0: f32, d1: f32, d2: f32, d3: f32, d4: f32, d5: f32) -> [f32; 6] {
    [
        4.0 * d0 - 5.0 * d2 + d4,
        d4 + d3 - 4.0 * (d1 + d2),
        d4 - d3 + 4.0 * (d1 - d2),
        d4 - d2 + 2.0 * (d3 - d1),
        d4 - d2 - 2.0 * (d3 - d1),
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// `V = Bᵀ d B` for the `tiles` tiles of one tile row: `rows` holds 6 padded input rows, each as
/// its 4 column phases (phase `j` holds padded columns `4t + j`, `tiles + 1` each); row `ξ` of
/// the result goes to `v[ξ * stride + at ..]`. `work` holds 36 rows of `tiles + 1`.
#[inline(always)]
pub(super) fn input(rows: &[f32], tiles: usize, work: &mut [f32], v: &mut [f32], at: usize, stride: usize) {
    // The phases' pitch, derived here rather than passed in: the compiler then proves the rows
    // apart and vectorises without runtime overlap checks (given the pitch as a parameter, the
    // checks failed and the scalar loop ran: a 96→24 layer over 16×32 took 13 % longer).
    let half = tiles + 1;
    // Along each row, tile t reads (d0, .., d5) = (p0[t], p1[t], p2[t], p3[t], p0[t + 1],
    // p1[t + 1]); work row i * 6 + j holds component j of row i for every tile.
    for (i, row) in rows.chunks_exact(4 * half).take(6).enumerate() {
        let phase = |j: usize| &row[j * half..][..half];
        let (p0, p1, p2, p3) = (phase(0), phase(1), phase(2), phase(3));
        let ws = super::rows_mut::<6>(&mut work[i * 6 * half..], half, tiles);
        b_t_rows([p0, p1, p2, p3, &p0[1..], &p1[1..]], ws, tiles);
    }
    // Across rows, component by component: V row a * 6 + j.
    for j in 0..6 {
        let r = |i: usize| &work[(i * 6 + j) * half..][..tiles];
        let vs = super::rows_mut::<6>(&mut v[j * stride + at..], 6 * stride, tiles);
        b_t_rows([r(0), r(1), r(2), r(3), r(4), r(5)], vs, tiles);
    }
}

/// `outs[j][t] = Bᵀ(ins[0][t], .., ins[5][t])[j]` for every tile `t < tiles`, window by window
/// (see `windows!`; the six stores spelled out, which the vectoriser turns into whole vectors
/// where a loop over the outputs was not: twice the time).
#[inline(always)]
fn b_t_rows(ins: [&[f32]; 6], outs: [&mut [f32]; 6], tiles: usize) {
    let [i0, i1, i2, i3, i4, i5] = ins;
    let [o0, o1, o2, o3, o4, o5] = outs;
    windows!(tiles, |t0, w| {
        let (d0, d1, d2) = (super::win(i0, t0, w), super::win(i1, t0, w), super::win(i2, t0, w));
        let (d3, d4, d5) = (super::win(i3, t0, w), super::win(i4, t0, w), super::win(i5, t0, w));
        let (w0, w1, w2) = (&mut o0[t0..][..w], &mut o1[t0..][..w], &mut o2[t0..][..w]);
        let (w3, w4, w5) = (&mut o3[t0..][..w], &mut o4[t0..][..w], &mut o5[t0..][..w]);
        for l in 0..w {
            let r = b_t(d0[l], d1[l], d2[l], d3[l], d4[l], d5[l]);
            (w0[l], w1[l], w2[l], w3[l], w4[l], w5[l]) = (r[0], r[1], r[2], r[3], r[4], r[5]);
        }
    });
}

/// `Aᵀ` applied to `(m0, .., m5)`.
#[inline(always)]
fn a_t(m0: f32, m1: f32, m2: f32, m3: f32, m4: f32, m5: f32) -> [f32; 4] {
    let (p12, m12, p34, m34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [m0 + p12 + p34, m12 + 2.0 * m34, p12 + 4.0 * p34, m12 + 8.0 * m34 + m5]
}

/// `outs[j][t] = Aᵀ(ins[0][t], .., ins[5][t])[j]` for every tile `t < tiles`, as [`b_t_rows`].
#[inline(always)]
fn a_t_rows(ins: [&[f32]; 6], outs: [&mut [f32]; 4], tiles: usize) {
    let [i0, i1, i2, i3, i4, i5] = ins;
    let [o0, o1, o2, o3] = outs;
    windows!(tiles, |t0, w| {
        let (d0, d1, d2) = (super::win(i0, t0, w), super::win(i1, t0, w), super::win(i2, t0, w));
        let (d3, d4, d5) = (super::win(i3, t0, w), super::win(i4, t0, w), super::win(i5, t0, w));
        let (y0, y1, y2, y3) =
            (&mut o0[t0..][..w], &mut o1[t0..][..w], &mut o2[t0..][..w], &mut o3[t0..][..w]);
        for l in 0..w {
            let y = a_t(d0[l], d1[l], d2[l], d3[l], d4[l], d5[l]);
            (y0[l], y1[l], y2[l], y3[l]) = (y[0], y[1], y[2], y[3]);
        }
    });
}

/// `Aᵀ M A` for the `tiles` tiles of one tile row of one filter, whose 36 products are at
/// `m[ξ * stride + at ..]`: returns the four output rows (`4 * tiles` columns each, back to back)
/// in `work` (which holds at least `56 * tiles` elements).
#[inline(always)]
pub(super) fn output<'w>(
    m: &[f32],
    at: usize,
    stride: usize,
    tiles: usize,
    work: &'w mut [f32],
) -> &'w [f32] {
    let (s, rest) = work.split_at_mut(24 * tiles);
    let (phases, out) = rest.split_at_mut(16 * tiles);
    // Along columns, per row a: s row a * 4 + c holds component c of every tile.
    for a in 0..6 {
        let mm = |b: usize| &m[(a * 6 + b) * stride + at..][..tiles];
        let ss = super::rows_mut::<4>(&mut s[a * 4 * tiles..], tiles, tiles);
        a_t_rows([mm(0), mm(1), mm(2), mm(3), mm(4), mm(5)], ss, tiles);
    }
    // Across rows: output row r's column phase c (columns 4t + c) at (r * 4 + c) * tiles.
    for c in 0..4 {
        let sv = |a: usize| &s[(a * 4 + c) * tiles..][..tiles];
        let ys = super::rows_mut::<4>(&mut phases[c * tiles..], 4 * tiles, tiles);
        a_t_rows([sv(0), sv(1), sv(2), sv(3), sv(4), sv(5)], ys, tiles);
    }
    // The phases interleaved into whole rows.
    let out = &mut out[..16 * tiles];
    for (r, row) in out.chunks_exact_mut(4 * tiles).enumerate() {
        let ph = |c: usize| &phases[(r * 4 + c) * tiles..][..tiles];
        let (q0, q1, q2, q3) = (ph(0), ph(1), ph(2), ph(3));
        for (t, quad) in row.chunks_exact_mut(4).enumerate() {
            quad.copy_from_slice(&[q0[t], q1[t], q2[t], q3[t]]);
        }
    }
    out
}
