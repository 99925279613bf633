//! Output-error objective of a codebook fit on calibration statistics, and the least-squares
//! centroid refit and index re-assignment that minimise it.
//!
//! For a weight row `w` of group `g` decoded as `q = s·A c` (`A` the one-hot assignment matrix,
//! `c` the codebook, `s` the row scale or 1) the output error on the calibration data is
//! `E = (w - q)ᵀ G (w - q) = wᵀGw - 2 s cᵀ(AᵀGw) + s² cᵀ(AᵀGA) c`. One pass over the row
//! (`row_len²` additions, see [`Objective::accumulate`]) yields the normal-equation terms `AᵀGA`
//! and `AᵀGw`; from them the error of any codebook is `O(K²)` and the best one a `K × K` solve.
//!
//! Fitting uses the damped matrix `G + λI`, `λ = DAMP · mean(diag G)` per group (as GPTQ does,
//! with a stronger damping): with few calibration patches the raw `G` is (nearly) singular and an
//! undamped fit moves weights along directions the calibration data barely excites, which
//! overfits. On PP-OCRv4 det (6 calibration images, 2 held-out; 3 and 4 bits) the held-out output
//! error for DAMP = 0.01 / 0.05 / 0.1 / 0.2 / 1.0 was lowest at 0.1 and 0.2 (within 2% of each
//! other, 8-12% below 0.01); the milder 0.1 is used. Reported errors use the raw `G`, and a step
//! is kept only when it does not increase that raw error.

use std::borrow::Cow;

use crate::gram::RowGram;
use crate::kmeans;

/// Damping added to the Gram diagonal for fitting, relative to the group's mean diagonal.
pub(crate) const DAMP: f64 = 0.1;

/// One group's Gram matrix restricted to its support: the input positions whose row of `G` holds
/// a non-zero. A position that only ever reads padding (the outer taps of a 3×3 filter over a
/// one-row map, two thirds of a recognizer's 3×3 weights) has an all-zero row and column, so its
/// weights cannot change the output error; leaving it out of every `G` sweep makes the sweeps
/// `(support / row_len)²` as long, with the same results.
struct Support<'a> {
    /// Positions in the support, ascending.
    idx: Vec<usize>,
    /// `pos[j]`: where position `j` lies in `idx` (`usize::MAX` outside the support).
    pos: Vec<usize>,
    /// `G[idx, idx]`, row-major (borrowed when the support is every position).
    gram: Cow<'a, [f64]>,
    /// The full diagonal of `G`.
    diag: Vec<f64>,
}

impl<'a> Support<'a> {
    fn new(gm: &'a [f64], len: usize) -> Support<'a> {
        let idx: Vec<usize> =
            (0..len).filter(|&j| gm[j * len..(j + 1) * len].iter().any(|&v| v != 0.0)).collect();
        let mut pos = vec![usize::MAX; len];
        for (p, &j) in idx.iter().enumerate() {
            pos[j] = p;
        }
        let gram = if idx.len() == len {
            Cow::Borrowed(gm)
        } else {
            Cow::Owned(idx.iter().flat_map(|&i| idx.iter().map(move |&j| gm[i * len + j])).collect())
        };
        let diag = (0..len).map(|j| gm[j * len + j]).collect();
        Support { idx, pos, gram, diag }
    }

    /// Whether every position is in the support.
    fn full(&self) -> bool {
        self.idx.len() == self.pos.len()
    }

    /// Row `p` of the restricted matrix (position `idx[p]`).
    fn row(&self, p: usize) -> &[f64] {
        let n = self.idx.len();
        &self.gram[p * n..(p + 1) * n]
    }

    /// `v[i] += a · G[j, i]` for every position `i` (`j` in the support at `p`).
    fn add_row(&self, p: usize, a: f64, v: &mut [f64]) {
        let row = self.row(p);
        if self.full() {
            v.iter_mut().zip(row).for_each(|(v, g)| *v += a * g);
        } else {
            for (&i, g) in self.idx.iter().zip(row) {
                v[i] += a * g;
            }
        }
    }
}

/// The output-error objective of one weight tensor.
pub(crate) struct Objective<'a> {
    /// Each group's Gram matrix on its support.
    support: Vec<Support<'a>>,
    row_len: usize,
    rows_per_group: usize,
    /// Damping per group.
    lambda: Vec<f64>,
    /// Positive floor for importances of inputs without energy.
    floor: f64,
    /// Raw `wᵀGw` per row.
    pub wgw: Vec<f64>,
}

/// Normal-equation terms of one codebook, summed over rows with their scales.
#[derive(Debug, Clone)]
pub(crate) struct Normal {
    /// Entries.
    pub k: usize,
    /// `Σ s² AᵀGA`, `k × k` row-major.
    pub h: Vec<f64>,
    /// `Σ s AᵀGw`.
    pub rhs: Vec<f64>,
    /// Damping added to the diagonal of `h`: `Σ s² λ·(members)`.
    pub h_damp: Vec<f64>,
    /// Damping added to `rhs`: `Σ s λ·(sum of members' weights)`.
    pub rhs_damp: Vec<f64>,
    /// `Σ wᵀGw` of the rows summed.
    pub wgw: f64,
}

impl Normal {
    fn new(k: usize) -> Normal {
        Normal {
            k,
            h: vec![0.0; k * k],
            rhs: vec![0.0; k],
            h_damp: vec![0.0; k],
            rhs_damp: vec![0.0; k],
            wgw: 0.0,
        }
    }

    /// Raw output error `Σ (w - q)ᵀ G (w - q)` for codebook `c` (clamped at 0 against rounding).
    pub fn error(&self, c: &[f64]) -> f64 {
        let k = self.k;
        let mut e = self.wgw;
        for a in 0..k {
            let row: f64 = (0..k).map(|b| self.h[a * k + b] * c[b]).sum();
            e += c[a] * (row - 2.0 * self.rhs[a]);
        }
        e.max(0.0)
    }

    /// The codebook minimising the damped error with entry `fixed` (if any) and entries without
    /// members kept at `old`; `None` when the system cannot be solved.
    pub fn solve(&self, old: &[f64], fixed: Option<usize>) -> Option<Vec<f64>> {
        let k = self.k;
        let free: Vec<usize> =
            (0..k).filter(|&a| Some(a) != fixed && self.h[a * k + a] + self.h_damp[a] > 0.0).collect();
        let n = free.len();
        if n == 0 {
            return Some(old.to_vec());
        }
        let mut is_free = vec![false; k];
        free.iter().for_each(|&a| is_free[a] = true);
        let mean_diag = free.iter().map(|&a| self.h[a * k + a] + self.h_damp[a]).sum::<f64>() / n as f64;
        let mut ridge = 1e-10 * mean_diag;
        for _ in 0..4 {
            let mut m = vec![0.0; n * n];
            let mut b = vec![0.0; n];
            for (p, &a) in free.iter().enumerate() {
                for (q, &c) in free.iter().enumerate() {
                    m[p * n + q] = self.h[a * k + c];
                }
                m[p * n + p] += self.h_damp[a] + ridge;
                // Entries outside `free` stay at `old` (the fixed one at 0): move their coupling
                // to the right side.
                let outside: f64 = (0..k)
                    .filter(|&c| !is_free[c])
                    .map(|c| self.h[a * k + c] * if Some(c) == fixed { 0.0 } else { old[c] })
                    .sum();
                b[p] = self.rhs[a] + self.rhs_damp[a] + ridge * old[a] - outside;
            }
            if cholesky_solve(&mut m, n, &mut b) && b.iter().all(|v| v.is_finite()) {
                let mut out = old.to_vec();
                if let Some(z) = fixed {
                    out[z] = 0.0;
                }
                for (p, &a) in free.iter().enumerate() {
                    out[a] = b[p];
                }
                return Some(out);
            }
            ridge = (ridge * 1e3).max(1e-12);
        }
        None
    }
}

/// `Σ a_i b_i` in eight interleaved partial sums (so it vectorises; fixed order, deterministic).
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// [`dot`] of an f64 and an f32 slice.
fn dot_f32(a: &[f64], b: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, &y)| x * y as f64).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l] as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Solves `m x = b` in place (`m` symmetric positive definite, `n × n`); false if not SPD.
fn cholesky_solve(m: &mut [f64], n: usize, b: &mut [f64]) -> bool {
    for j in 0..n {
        let mut d = m[j * n + j];
        for p in 0..j {
            d -= m[j * n + p] * m[j * n + p];
        }
        if d <= 0.0 || !d.is_finite() {
            return false;
        }
        let d = d.sqrt();
        m[j * n + j] = d;
        for i in j + 1..n {
            let mut v = m[i * n + j];
            for p in 0..j {
                v -= m[i * n + p] * m[j * n + p];
            }
            m[i * n + j] = v / d;
        }
    }
    for i in 0..n {
        let mut v = b[i];
        for p in 0..i {
            v -= m[i * n + p] * b[p];
        }
        b[i] = v / m[i * n + i];
    }
    for i in (0..n).rev() {
        let mut v = b[i];
        for p in i + 1..n {
            v -= m[p * n + i] * b[p];
        }
        b[i] = v / m[i * n + i];
    }
    true
}

impl<'a> Objective<'a> {
    /// The objective of weight `w` seen as `rows` rows; `None` when `gram` does not fit it
    /// (see [`RowGram::fits`]).
    pub fn new(gram: &'a RowGram, w: &[f32], rows: usize) -> Option<Objective<'a>> {
        if rows == 0 || !w.len().is_multiple_of(rows) || !gram.fits(rows, w.len() / rows) {
            return None;
        }
        let row_len = w.len() / rows;
        let support: Vec<Support> = (0..gram.groups).map(|g| Support::new(gram.group(g), row_len)).collect();
        let lambda: Vec<f64> =
            support.iter().map(|s| DAMP * s.diag.iter().sum::<f64>() / row_len.max(1) as f64).collect();
        let total: f64 = support.iter().flat_map(|s| &s.diag).sum();
        let floor = 1e-9 * total / (gram.groups * row_len) as f64 + f64::MIN_POSITIVE;
        let rows_per_group = rows / gram.groups;
        let mut obj = Objective { support, row_len, rows_per_group, lambda, floor, wgw: Vec::new() };
        obj.wgw = obj.row_energies(w);
        Some(obj)
    }

    /// Positions in each group's support (tests).
    #[cfg(test)]
    pub(crate) fn support_sizes(&self) -> Vec<usize> {
        self.support.iter().map(|s| s.idx.len()).collect()
    }

    /// Group of row `r`.
    fn group(&self, r: usize) -> usize {
        r / self.rows_per_group
    }

    /// Importance of each weight of row `r` for diagonal weighting: `G_jj + λ` (floored > 0).
    pub fn importance(&self, r: usize) -> Vec<f64> {
        let g = self.group(r);
        self.support[g].diag.iter().map(|d| (d + self.lambda[g]).max(self.floor)).collect()
    }

    /// Total raw `wᵀGw` (the denominator of the relative output error).
    pub fn total_wgw(&self) -> f64 {
        self.wgw.iter().sum()
    }

    /// Relative output error `sqrt(E / Σ wᵀGw)` (or `sqrt(E)` when the weights carry no energy).
    pub fn relative(&self, e: f64) -> f64 {
        let d = self.total_wgw();
        if d > 0.0 {
            (e / d).sqrt()
        } else {
            e.sqrt()
        }
    }

    /// Empty normal terms for a `k`-entry codebook.
    pub fn normal(&self, k: usize) -> Normal {
        Normal::new(k)
    }

    /// Splits ascending `rows` into blocks of consecutive entries of one group, at most
    /// `max_len` long (the Gram of the group is then streamed once per block, not once per row).
    fn blocks<'r>(&self, rows: &'r [usize], max_len: usize) -> Vec<&'r [usize]> {
        let mut out = Vec::new();
        let mut start = 0;
        for i in 1..=rows.len() {
            if i == rows.len() || i - start >= max_len || self.group(rows[i]) != self.group(rows[start]) {
                out.push(&rows[start..i]);
                start = i;
            }
        }
        out
    }

    /// Rows per block when each row needs `floats` f64 of scratch (about 2 MiB in all, 1..=8).
    fn block_len(floats: usize) -> usize {
        ((1usize << 18) / floats.max(1)).clamp(1, 8)
    }

    /// `G x` for each `x` of a block of rows of group `g`, into `out` (one Gram sweep).
    fn matvec_block(&self, g: usize, xs: &[Vec<f64>], out: &mut [Vec<f64>]) {
        let sup = &self.support[g];
        let n = sup.idx.len();
        // Sums over the support; positions outside it get 0 (their rows of G are zero).
        let mut sums: Vec<Vec<f64>> = vec![vec![0.0; n]; xs.len()];
        // G is symmetric: G x = Σ_j x_j G[j, :], contiguous multiply-adds that vectorise (a
        // dot-product form would be one serial f64 add chain).
        for (p, &j) in sup.idx.iter().enumerate() {
            let gj = sup.row(p);
            for (x, o) in xs.iter().zip(sums.iter_mut()) {
                let xj = x[j];
                if xj != 0.0 {
                    o.iter_mut().zip(gj).for_each(|(o, g)| *o += xj * g);
                }
            }
        }
        for (o, s) in out.iter_mut().zip(sums) {
            if sup.full() {
                *o = s;
            } else {
                o.clear();
                o.resize(self.row_len, 0.0);
                for (&i, v) in sup.idx.iter().zip(s) {
                    o[i] = v;
                }
            }
        }
    }

    /// Raw `xᵀGx` of every row of `x` (a tensor shaped like the weight).
    pub fn energies(&self, x: &[f32]) -> Vec<f64> {
        self.row_energies(x)
    }

    /// Raw `wᵀGw` of every row of `w`.
    fn row_energies(&self, w: &[f32]) -> Vec<f64> {
        let len = self.row_len;
        let rows: Vec<usize> = (0..w.len() / len).collect();
        let mut out = vec![0.0; rows.len()];
        let mut gx = Vec::new();
        for block in self.blocks(&rows, Self::block_len(2 * len)) {
            let xs: Vec<Vec<f64>> = block
                .iter()
                .map(|&r| w[r * len..(r + 1) * len].iter().map(|&v| v as f64).collect())
                .collect();
            gx.resize(xs.len(), Vec::new());
            self.matvec_block(self.group(block[0]), &xs, &mut gx);
            for ((&r, x), gx) in block.iter().zip(&xs).zip(&gx) {
                out[r] = dot(x, gx).max(0.0);
            }
        }
        out
    }

    /// Adds the normal-equation terms of `rows` (ascending) to `accs[unit(r)]`: row `r` holds
    /// weights `w[r·len..]`, indices `idx[r·len..]` into that unit's `k`-entry codebook, and
    /// decodes with scale `scale(r)`.
    pub fn accumulate(
        &self,
        rows: &[usize],
        w: &[f32],
        idx: &[u8],
        scale: impl Fn(usize) -> f64,
        unit: impl Fn(usize) -> usize,
        accs: &mut [Normal],
    ) {
        let len = self.row_len;
        let k_max = rows.iter().map(|&r| accs[unit(r)].k).max().unwrap_or(1);
        let mut ys: Vec<Vec<f64>> = Vec::new();
        let mut by_cluster = Vec::new();
        for block in self.blocks(rows, Self::block_len(k_max * len)) {
            let g = self.group(block[0]);
            let sup = &self.support[g];
            let n = sup.idx.len();
            ys.resize(block.len(), Vec::new());
            // y[b][i] = Σ_{j in cluster b} G[j][i] over the support (G is zero elsewhere): per
            // weight, one contiguous add of a Gram row.
            for (y, &r) in ys.iter_mut().zip(block) {
                y.clear();
                y.resize(accs[unit(r)].k * n, 0.0);
            }
            for (p, &j) in sup.idx.iter().enumerate() {
                let gj = sup.row(p);
                for (y, &r) in ys.iter_mut().zip(block) {
                    let a = idx[r * len + j] as usize;
                    for (d, s) in y[a * n..(a + 1) * n].iter_mut().zip(gj) {
                        *d += s;
                    }
                }
            }
            for (y, &r) in ys.iter().zip(block) {
                let acc = &mut accs[unit(r)];
                let (ri, wr) = (&idx[r * len..(r + 1) * len], &w[r * len..(r + 1) * len]);
                let (s, k, lam) = (scale(r), acc.k, self.lambda[g]);
                let s2 = s * s;
                let mut members = vec![false; k];
                for &a in ri {
                    members[a as usize] = true;
                }
                by_cluster.resize(k, 0.0);
                for b in (0..k).filter(|&b| members[b]) {
                    let yb = &y[b * n..(b + 1) * n];
                    by_cluster.iter_mut().for_each(|v| *v = 0.0);
                    if sup.full() {
                        for (&a, &v) in ri.iter().zip(yb) {
                            by_cluster[a as usize] += v;
                        }
                        acc.rhs[b] += s * dot_f32(yb, wr);
                    } else {
                        let mut yw = 0.0;
                        for (&i, &v) in sup.idx.iter().zip(yb) {
                            by_cluster[ri[i] as usize] += v;
                            yw += v * wr[i] as f64;
                        }
                        acc.rhs[b] += s * yw;
                    }
                    for (a, v) in by_cluster.iter().enumerate() {
                        acc.h[a * k + b] += s2 * v;
                    }
                }
                for (&a, &v) in ri.iter().zip(wr) {
                    acc.h_damp[a as usize] += s2 * lam;
                    acc.rhs_damp[a as usize] += s * lam * v as f64;
                }
                acc.wgw += self.wgw[r];
            }
        }
    }

    /// One pass of iterated conditional modes over `rows`: each unpruned weight in turn moves to
    /// the codebook entry that most lowers the damped error `dᵀ(G + λI)d` of its row given the
    /// others (the entry nearest to `q_j + ((G + λI)d)_j / (G_jj + λ)`, the minimum of a 1-D
    /// parabola). Row `r` decodes as `scales[r] · book(r)[idx]` (f32 product, as the runtime
    /// does; `scales` empty = 1), `book(r)` ascending. With scales, each row's scale is first
    /// set to its damped least-squares optimum `uᵀ(G+λI)w / uᵀ(G+λI)u` (`u = book[idx]`) when
    /// that is a positive finite f32. Returns how many indices (and scales) changed per row.
    pub fn reassign<'b>(
        &self,
        rows: &[usize],
        w: &[f32],
        pruned: Option<&[bool]>,
        idx: &mut [u8],
        book: impl Fn(usize) -> &'b [f32],
        scales: &mut [f32],
    ) -> Vec<usize> {
        let len = self.row_len;
        let scaled = !scales.is_empty();
        let mut changed = Vec::with_capacity(rows.len());
        let mut gxs: Vec<Vec<f64>> = Vec::new();
        for block in self.blocks(rows, Self::block_len(3 * len)) {
            let g = self.group(block[0]);
            let (sup, lam) = (&self.support[g], self.lambda[g]);
            let wide =
                |r: usize| -> Vec<f64> { w[r * len..(r + 1) * len].iter().map(|&v| v as f64).collect() };
            let unscaled = |r: usize| -> Vec<f64> {
                let b = book(r);
                idx[r * len..(r + 1) * len].iter().map(|&a| b[a as usize] as f64).collect()
            };
            // Without scales: (G+λI)d directly. With scales: (G+λI)w and (G+λI)u, so the scale
            // can be refitted before d = w - s u is formed.
            let xs: Vec<Vec<f64>> = if scaled {
                block.iter().flat_map(|&r| [wide(r), unscaled(r)]).collect()
            } else {
                block
                    .iter()
                    .map(|&r| wide(r).iter().zip(unscaled(r)).map(|(w, u)| w - (u as f32) as f64).collect())
                    .collect()
            };
            gxs.resize(xs.len(), Vec::new());
            self.matvec_block(g, &xs, &mut gxs);
            for (x, gx) in xs.iter().zip(gxs.iter_mut()) {
                gx.iter_mut().zip(x).for_each(|(v, x)| *v += lam * x);
            }
            for (t, &r) in block.iter().enumerate() {
                let b = book(r);
                let mut n = 0;
                let mut gd = if scaled {
                    let (u, gw, gu) = (&xs[2 * t + 1], &gxs[2 * t], &gxs[2 * t + 1]);
                    let (num, den) = (dot(u, gw), dot(u, gu));
                    let fitted = crate::codebook::half_scale((num / den) as f32);
                    if den > 0.0 && fitted.is_finite() && fitted > 0.0 && fitted != scales[r] {
                        scales[r] = fitted;
                        n += 1;
                    }
                    let s = scales[r] as f64;
                    gw.iter().zip(gu).map(|(gw, gu)| gw - s * gu).collect()
                } else {
                    std::mem::take(&mut gxs[t])
                };
                let s = if scaled { scales[r] } else { 1.0 };
                if s.is_nan() || s <= 0.0 || b.is_empty() {
                    changed.push(n);
                    continue;
                }
                let q = |a: u8| (b[a as usize] * s) as f64;
                for j in 0..len {
                    if pruned.is_some_and(|p| p[r * len + j]) {
                        continue;
                    }
                    let gjj = sup.diag[j] + lam;
                    if gjj.is_nan() || gjj <= 0.0 {
                        continue;
                    }
                    let cur = idx[r * len + j];
                    let qj = q(cur);
                    let a = kmeans::nearest(b, ((qj + gd[j] / gjj) / s as f64) as f32) as u8;
                    if a == cur {
                        continue;
                    }
                    let delta = qj - q(a);
                    if 2.0 * delta * gd[j] + delta * delta * gjj >= 0.0 {
                        continue;
                    }
                    idx[r * len + j] = a;
                    n += 1;
                    if sup.pos[j] != usize::MAX {
                        sup.add_row(sup.pos[j], delta, &mut gd);
                    }
                    gd[j] += delta * lam;
                }
                changed.push(n);
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_spd_systems() {
        let mut m = vec![4.0, 2.0, 0.6, 2.0, 5.0, 1.0, 0.6, 1.0, 3.0];
        let a = m.clone();
        let x = [1.0, -2.0, 0.5];
        let mut b: Vec<f64> = (0..3).map(|i| (0..3).map(|j| a[i * 3 + j] * x[j]).sum()).collect();
        assert!(cholesky_solve(&mut m, 3, &mut b));
        for i in 0..3 {
            assert!((b[i] - x[i]).abs() < 1e-12);
        }
        let mut singular = vec![1.0, 1.0, 1.0, 1.0];
        assert!(!cholesky_solve(&mut singular, 2, &mut [1.0, 2.0]));
    }
}
