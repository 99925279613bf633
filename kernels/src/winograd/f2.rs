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

/// `V = Bᵀ d B` for the `tiles` tiles of one tile row: `rows4` holds 4 padded input rows, each as
/// its 2 column phases (`even | odd`, `tiles + 1` each); row `ξ` of the result goes to
/// `v[ξ * stride + at ..]`. `work` holds 16 rows of `tiles + 1`. Its rows of tiles are short
/// where F(2×2, 3×3) is chosen, so it keeps plain loops (with their scalar remainders) rather
/// than [`super::f4`]'s windows.
#[inline(always)]
pub(super) fn input(rows4: &[f32], tiles: usize, work: &mut [f32], v: &mut [f32], at: usize, stride: usize) {
    // The phases' pitch, derived here rather than passed in: the compiler then proves the rows
    // apart and vectorises without runtime overlap checks (given the pitch as a parameter, the
    // checks failed and the scalar loop ran: a 96→24 layer over 16×32 took 13 % longer).
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
pub(super) fn output<'w>(
    m: &[f32],
    at: usize,
    stride: usize,
    tiles: usize,
    work: &'w mut [f32],
) -> &'w [f32] {
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
