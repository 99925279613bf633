//! The transforms of Winograd F(2×2, 3×3): 4×4 input tiles, 2×2 output tiles, 16 products per
//! (input channel, filter) pair instead of 36 (Lavin & Gray, 2016).

/// `G g Gᵀ` of one 3×3 filter `g` (row-major) into `u` (16 values, row-major 4×4).
#[inline(always)]
pub(super) fn filter(g: &[f32], u: &mut [f32]) {
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
        u[a * 4..a * 4 + 4].copy_from_slice(&cols);
    }
}

/// `V = Bᵀ d B` for the `tiles` tiles of one tile row: `rows` holds 4 padded input rows, each as
/// its 2 column phases (`even | odd`, `half` apart, each at least `tiles + 1` long); row `ξ` of
/// the result goes to `v[ξ * stride + at ..]`. `work` holds 16 rows of `half`.
#[inline(always)]
pub(super) fn input(
    rows: &[f32],
    tiles: usize,
    half: usize,
    work: &mut [f32],
    v: &mut [f32],
    at: usize,
    stride: usize,
) {
    debug_assert!(half > tiles);
    // Along each row: r_i = (d0 - d2, d1 + d2, d2 - d1, d1 - d3), (d0, d1, d2, d3) = (e[t], o[t],
    // e[t + 1], o[t + 1]); work row i * 4 + j holds component j of row i for every tile.
    for (i, row) in rows.chunks_exact(2 * half).take(4).enumerate() {
        let (e, o) = row.split_at(half);
        let mut ws = super::rows_mut::<4>(&mut work[i * 4 * half..], half, tiles);
        windows!(tiles, |t0, w| {
            let (d0, d1) = (super::win(e, t0, w), super::win(o, t0, w));
            let (d2, d3) = (super::win(e, t0 + 1, w), super::win(o, t0 + 1, w));
            let [w0, w1, w2, w3] = &mut ws;
            let (w0, w1, w2, w3) =
                (&mut w0[t0..][..w], &mut w1[t0..][..w], &mut w2[t0..][..w], &mut w3[t0..][..w]);
            for l in 0..w {
                (w0[l], w1[l], w2[l], w3[l]) = (d0[l] - d2[l], d1[l] + d2[l], d2[l] - d1[l], d1[l] - d3[l]);
            }
        });
    }
    // Across rows: (R0 - R2, R1 + R2, R2 - R1, R1 - R3), component by component: V row a * 4 + j.
    for j in 0..4 {
        let r = |i: usize| &work[(i * 4 + j) * half..][..tiles];
        let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
        let mut vs = super::rows_mut::<4>(&mut v[j * stride + at..], 4 * stride, tiles);
        windows!(tiles, |t0, w| {
            let (d0, d1) = (super::win(r0, t0, w), super::win(r1, t0, w));
            let (d2, d3) = (super::win(r2, t0, w), super::win(r3, t0, w));
            let [v0, v1, v2, v3] = &mut vs;
            let (v0, v1, v2, v3) =
                (&mut v0[t0..][..w], &mut v1[t0..][..w], &mut v2[t0..][..w], &mut v3[t0..][..w]);
            for l in 0..w {
                (v0[l], v1[l], v2[l], v3[l]) = (d0[l] - d2[l], d1[l] + d2[l], d2[l] - d1[l], d1[l] - d3[l]);
            }
        });
    }
}

/// `Aᵀ M A` for the `tiles` tiles of one tile row of one filter, whose 16 products are at
/// `m[ξ * stride + at ..]`: returns the two output rows (`2 * tiles` columns each, back to back)
/// in `work` (which holds at least `12 * tiles` elements).
#[inline(always)]
pub(super) fn output<'w>(
    m: &[f32],
    at: usize,
    stride: usize,
    tiles: usize,
    work: &'w mut [f32],
) -> &'w [f32] {
    let (s, pair) = work.split_at_mut(8 * tiles);
    // Along columns, per row a: s_a0 = m_a0 + m_a1 + m_a2, s_a1 = m_a1 - m_a2 - m_a3.
    for a in 0..4 {
        let mm = |b: usize| &m[(a * 4 + b) * stride + at..][..tiles];
        let (m0, m1, m2, m3) = (mm(0), mm(1), mm(2), mm(3));
        let mut ss = super::rows_mut::<2>(&mut s[a * 2 * tiles..], tiles, tiles);
        windows!(tiles, |t0, w| {
            let (d0, d1) = (super::win(m0, t0, w), super::win(m1, t0, w));
            let (d2, d3) = (super::win(m2, t0, w), super::win(m3, t0, w));
            let [sa0, sa1] = &mut ss;
            let (sa0, sa1) = (&mut sa0[t0..][..w], &mut sa1[t0..][..w]);
            for l in 0..w {
                (sa0[l], sa1[l]) = (d0[l] + d1[l] + d2[l], d1[l] - d2[l] - d3[l]);
            }
        });
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
