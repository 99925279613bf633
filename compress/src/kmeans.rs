//! Optimal one-dimensional k-means (Ckmeans.1d.dp).
//!
//! In 1-D the optimal clusters are contiguous runs of the sorted values, so the optimum is a
//! dynamic programme over split points: `D[m][i]` is the least weighted squared error of the first
//! `i + 1` points in `m + 1` clusters, and `D[m][i] = min_j D[m-1][j-1] + cost(j, i)`. The optimal
//! `j` never decreases as `i` grows, so each layer is filled by divide and conquer in
//! `O(n log n)`, `O(k n log n)` overall. Costs come from prefix sums in O(1).
//!
//! Large inputs are first reduced to a few thousand weighted points (runs of sorted values; weight
//! = member count, value = member mean, see [`Points::histogram`]); the DP runs on those and one
//! nearest-centroid assignment plus mean update brings the centroids back to the actual members.

/// Inputs up to this many values are clustered exactly; larger ones through a histogram.
pub(crate) const EXACT_LIMIT: usize = 4096;
/// Maximum number of weighted points summarising a large input.
pub(crate) const HIST_BINS: usize = 4096;

/// Sorted, distinct points with positive weights.
#[derive(Debug, Clone, Default)]
pub(crate) struct Points {
    /// Point values, strictly increasing.
    pub x: Vec<f64>,
    /// Point weights (multiplicities).
    pub w: Vec<f64>,
}

impl Points {
    /// The distinct values of `values` weighted by their multiplicity. Values must be finite.
    pub fn exact(values: &[f32]) -> Points {
        let mut sorted = values.to_vec();
        sorted.sort_unstable_by(f32::total_cmp);
        let mut p = Points::default();
        for v in sorted {
            let v = v as f64;
            if p.x.last() == Some(&v) {
                *p.w.last_mut().expect("x and w grow together") += 1.0;
            } else {
                p.x.push(v);
                p.w.push(1.0);
            }
        }
        p
    }

    /// At most `groups` weighted points summarising `values`: runs of consecutive sorted values,
    /// each closed once it holds `2n / groups` values or spans `2 (max - min) / groups`, and
    /// placed at its members' mean. Equal-count closing keeps resolution where values are dense
    /// (plain equal-width bins are too coarse there when a few outliers stretch the range);
    /// equal-width closing keeps sparse tails from being lumped together. Values must be finite.
    pub fn histogram(values: &[f32], groups: usize) -> Points {
        let mut sorted = values.to_vec();
        sorted.sort_unstable_by(f32::total_cmp);
        let (Some(&lo), Some(&hi)) = (sorted.first(), sorted.last()) else {
            return Points::default();
        };
        let half = (groups / 2).max(1);
        let count_cap = sorted.len().div_ceil(half) as f64;
        let width_cap = (hi as f64 - lo as f64) / half as f64;
        let mut p = Points::default();
        let (mut start, mut sum, mut count) = (lo as f64, 0.0f64, 0.0f64);
        for v in sorted {
            let v = v as f64;
            if count > 0.0 && (count >= count_cap || v - start > width_cap) {
                p.push_group(sum / count, count);
                (start, sum, count) = (v, 0.0, 0.0);
            }
            sum += v;
            count += 1.0;
        }
        p.push_group(sum / count, count);
        p
    }

    /// The distinct values of `values` weighted by the sum of their `weights` (finite values,
    /// positive finite weights, one per value).
    pub fn exact_weighted(values: &[f32], weights: &[f64]) -> Points {
        let mut sorted: Vec<(f32, f64)> = values.iter().copied().zip(weights.iter().copied()).collect();
        sorted.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut p = Points::default();
        for (v, w) in sorted {
            let v = v as f64;
            if p.x.last() == Some(&v) {
                *p.w.last_mut().expect("x and w grow together") += w;
            } else {
                p.x.push(v);
                p.w.push(w);
            }
        }
        p
    }

    /// [`Points::histogram`] with per-value weights: runs close once they hold `2 W / groups` of
    /// the total weight `W` or span `2 (max - min) / groups`, and sit at their weighted mean.
    pub fn histogram_weighted(values: &[f32], weights: &[f64], groups: usize) -> Points {
        let mut sorted: Vec<(f32, f64)> = values.iter().copied().zip(weights.iter().copied()).collect();
        sorted.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let (Some(&(lo, _)), Some(&(hi, _))) = (sorted.first(), sorted.last()) else {
            return Points::default();
        };
        let half = (groups / 2).max(1);
        let total: f64 = sorted.iter().map(|p| p.1).sum();
        let weight_cap = total / half as f64;
        let width_cap = (hi as f64 - lo as f64) / half as f64;
        let mut p = Points::default();
        let (mut start, mut sum, mut weight) = (lo as f64, 0.0f64, 0.0f64);
        for (v, w) in sorted {
            let v = v as f64;
            if weight > 0.0 && (weight >= weight_cap || v - start > width_cap) {
                p.push_group(sum / weight, weight);
                (start, sum, weight) = (v, 0.0, 0.0);
            }
            sum += v * w;
            weight += w;
        }
        p.push_group(sum / weight, weight);
        p
    }

    /// Appends a group, merging it into the last one if rounding made their means equal.
    fn push_group(&mut self, x: f64, w: f64) {
        match (self.x.last_mut(), self.w.last_mut()) {
            (Some(lx), Some(lw)) if *lx >= x => {
                *lx = (*lx * *lw + x * w) / (*lw + w);
                *lw += w;
            }
            _ => {
                self.x.push(x);
                self.w.push(w);
            }
        }
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.x.len()
    }
}

/// Prefix sums of centred weighted moments, giving any run's squared error in O(1).
struct Moments {
    s0: Vec<f64>,
    s1: Vec<f64>,
    s2: Vec<f64>,
}

impl Moments {
    fn new(p: &Points) -> Moments {
        let total: f64 = p.w.iter().sum();
        // Centring keeps `s2 - s1²/s0` from cancelling catastrophically.
        let mean = p.x.iter().zip(&p.w).map(|(x, w)| x * w).sum::<f64>() / total;
        let n = p.len();
        let (mut s0, mut s1, mut s2) = (vec![0.0; n + 1], vec![0.0; n + 1], vec![0.0; n + 1]);
        for i in 0..n {
            let (x, w) = (p.x[i] - mean, p.w[i]);
            s0[i + 1] = s0[i] + w;
            s1[i + 1] = s1[i] + w * x;
            s2[i + 1] = s2[i] + w * x * x;
        }
        Moments { s0, s1, s2 }
    }

    /// Weighted squared error of points `j..=i` around their mean.
    #[inline]
    fn cost(&self, j: usize, i: usize) -> f64 {
        let w = self.s0[i + 1] - self.s0[j];
        let s = self.s1[i + 1] - self.s1[j];
        let q = self.s2[i + 1] - self.s2[j];
        (q - s * s / w).max(0.0)
    }
}

/// Optimal partition of `p` into `min(k, p.len())` contiguous clusters; returns each cluster's
/// first point index (ascending, starting with 0).
pub(crate) fn optimal_splits(p: &Points, k: usize) -> Vec<usize> {
    let n = p.len();
    let k = k.min(n);
    if k == 0 {
        return Vec::new();
    }
    if k == n {
        return (0..n).collect();
    }
    let m = Moments::new(p);
    let mut prev: Vec<f64> = (0..n).map(|i| m.cost(0, i)).collect();
    let mut cur = vec![f64::INFINITY; n];
    // arg[layer][i]: first index of the last cluster in the best split of points 0..=i.
    let mut arg = vec![vec![0u32; n]; k];
    for (layer, arg_row) in arg.iter_mut().enumerate().skip(1) {
        // Every later cluster needs at least one point, and the last layer only needs i = n-1.
        let hi = n - 1 - (k - 1 - layer);
        let lo = if layer == k - 1 { n - 1 } else { layer };
        let mut fill = Fill { m: &m, prev: &prev, cur: &mut cur, arg: arg_row, layer };
        fill.run(lo, hi, layer, hi);
        std::mem::swap(&mut prev, &mut cur);
    }
    let mut starts = vec![0usize; k];
    let mut i = n - 1;
    for layer in (1..k).rev() {
        let j = arg[layer][i] as usize;
        starts[layer] = j;
        i = j - 1;
    }
    starts
}

/// One DP layer filled by divide and conquer over the monotone optimal split.
struct Fill<'a> {
    m: &'a Moments,
    prev: &'a [f64],
    cur: &'a mut [f64],
    arg: &'a mut [u32],
    layer: usize,
}

impl Fill<'_> {
    fn run(&mut self, ilo: usize, ihi: usize, jlo: usize, jhi: usize) {
        if ilo > ihi {
            return;
        }
        let mid = ilo + (ihi - ilo) / 2;
        let (mut best, mut best_j) = (f64::INFINITY, jlo.max(self.layer));
        for j in jlo.max(self.layer)..=jhi.min(mid) {
            let v = self.prev[j - 1] + self.m.cost(j, mid);
            if v < best {
                best = v;
                best_j = j;
            }
        }
        self.cur[mid] = best;
        self.arg[mid] = best_j as u32;
        if mid > ilo {
            self.run(ilo, mid - 1, jlo, best_j);
        }
        self.run(mid + 1, ihi, best_j, jhi);
    }
}

/// Weighted means of the clusters starting at `starts`.
fn cluster_means(p: &Points, starts: &[usize]) -> Vec<f64> {
    (0..starts.len())
        .map(|c| {
            let end = starts.get(c + 1).copied().unwrap_or(p.len());
            let (mut sw, mut swx) = (0.0, 0.0);
            for i in starts[c]..end {
                sw += p.w[i];
                swx += p.w[i] * p.x[i];
            }
            swx / sw
        })
        .collect()
}

/// Optimal centroids (ascending) of `p` for `k` clusters.
pub(crate) fn centroids_of(p: &Points, k: usize) -> Vec<f64> {
    cluster_means(p, &optimal_splits(p, k))
}

/// At most `k` ascending centroids for `values` (finite): exact Ckmeans for small inputs,
/// histogram Ckmeans plus one mean update for large ones.
pub(crate) fn centroids(values: &[f32], k: usize) -> Vec<f32> {
    if values.len() <= EXACT_LIMIT {
        return centroids_of(&Points::exact(values), k).into_iter().map(|c| c as f32).collect();
    }
    let coarse = centroids_of(&Points::histogram(values, HIST_BINS), k);
    let coarse: Vec<f32> = coarse.into_iter().map(|c| c as f32).collect();
    // One Lloyd update: move each centroid to the mean of the values now nearest to it.
    let mut sum = vec![0.0f64; coarse.len()];
    let mut count = vec![0usize; coarse.len()];
    for &v in values {
        let c = nearest(&coarse, v);
        sum[c] += v as f64;
        count[c] += 1;
    }
    let mut out: Vec<f32> = coarse
        .iter()
        .enumerate()
        .filter(|(c, _)| count[*c] > 0)
        .map(|(c, _)| (sum[c] / count[c] as f64) as f32)
        .collect();
    out.dedup();
    out
}

/// At most `k` ascending centroids minimising `Σ weights[i] (values[i] - c)²` (finite values,
/// positive finite weights): exact weighted Ckmeans up to [`EXACT_LIMIT`] values, weighted
/// histogram Ckmeans plus one weighted mean update beyond. With all weights equal the clusters
/// are those of [`centroids`] on the exact path.
pub(crate) fn centroids_weighted(values: &[f32], weights: &[f64], k: usize) -> Vec<f32> {
    if values.len() <= EXACT_LIMIT {
        let p = Points::exact_weighted(values, weights);
        return centroids_of(&p, k).into_iter().map(|c| c as f32).collect();
    }
    let coarse = centroids_of(&Points::histogram_weighted(values, weights, HIST_BINS), k);
    let coarse: Vec<f32> = coarse.into_iter().map(|c| c as f32).collect();
    let mut sum = vec![0.0f64; coarse.len()];
    let mut weight = vec![0.0f64; coarse.len()];
    for (&v, &w) in values.iter().zip(weights) {
        let c = nearest(&coarse, v);
        sum[c] += v as f64 * w;
        weight[c] += w;
    }
    let mut out: Vec<f32> =
        (0..coarse.len()).filter(|&c| weight[c] > 0.0).map(|c| (sum[c] / weight[c]) as f32).collect();
    out.dedup();
    out
}

/// Index of the centroid nearest to `v` among ascending `centroids` (ties go to the lower one).
#[inline]
pub(crate) fn nearest(centroids: &[f32], v: f32) -> usize {
    let i = centroids.partition_point(|&c| c < v);
    if i == 0 {
        0
    } else if i == centroids.len() || (v - centroids[i - 1]) <= (centroids[i] - v) {
        i - 1
    } else {
        i
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1).
    pub(crate) fn lcg_values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn sse(values: &[f32], centroids: &[f32]) -> f64 {
        values
            .iter()
            .map(|&v| {
                let d = (v - centroids[nearest(centroids, v)]) as f64;
                d * d
            })
            .sum()
    }

    /// Least squared error over every assignment of `values` to `k` labels.
    fn brute_force(values: &[f32], k: usize) -> f64 {
        let n = values.len();
        let mut best = f64::INFINITY;
        let mut labels = vec![0usize; n];
        loop {
            let mut sum = vec![0.0f64; k];
            let mut cnt = vec![0.0f64; k];
            for (v, &l) in values.iter().zip(&labels) {
                sum[l] += *v as f64;
                cnt[l] += 1.0;
            }
            let err: f64 =
                values.iter().zip(&labels).map(|(v, &l)| (*v as f64 - sum[l] / cnt[l]).powi(2)).sum();
            best = best.min(err);
            // Next assignment in base k.
            let mut i = 0;
            while i < n && labels[i] == k - 1 {
                labels[i] = 0;
                i += 1;
            }
            if i == n {
                return best;
            }
            labels[i] += 1;
        }
    }

    #[test]
    fn dp_matches_brute_force_on_tiny_inputs() {
        for seed in 0..12u64 {
            let n = 1 + (seed as usize * 7) % 12;
            let mut values = lcg_values(n, seed);
            if seed % 3 == 0 && n > 2 {
                values[1] = values[0]; // duplicates exercise the weighted path
            }
            for k in 1..=3 {
                let c = centroids(&values, k);
                assert!(c.len() <= k);
                let dp = sse(&values, &c);
                let bf = brute_force(&values, k);
                assert!(
                    (dp - bf).abs() <= 1e-9 + 1e-6 * bf,
                    "n={n} k={k} seed={seed}: dp {dp} vs brute force {bf}"
                );
            }
        }
    }

    #[test]
    fn splits_are_contiguous_and_sorted() {
        let p = Points::exact(&lcg_values(300, 7));
        let s = optimal_splits(&p, 16);
        assert_eq!(s.len(), 16);
        assert_eq!(s[0], 0);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn histogram_path_is_close_to_exact() {
        // Heavier-tailed data than uniform: cube of uniform values.
        let values: Vec<f32> = lcg_values(20_000, 3).iter().map(|v| v * v * v).collect();
        for k in [4, 16, 256] {
            let exact: Vec<f32> =
                centroids_of(&Points::exact(&values), k).into_iter().map(|c| c as f32).collect();
            let approx = centroids(&values, k);
            let (e, a) = (sse(&values, &exact), sse(&values, &approx));
            assert!(a >= e * (1.0 - 1e-6), "k={k}: approx {a} below optimum {e}");
            assert!(a <= e * 1.02, "k={k}: histogram {a} vs exact {e}");
        }
    }

    fn weighted_sse(values: &[f32], weights: &[f64], centroids: &[f32]) -> f64 {
        values
            .iter()
            .zip(weights)
            .map(|(&v, &w)| w * ((v - centroids[nearest(centroids, v)]) as f64).powi(2))
            .sum()
    }

    #[test]
    fn unit_weights_reproduce_the_unweighted_centroids() {
        let values = lcg_values(1000, 5);
        let ones = vec![1.0; values.len()];
        for k in [2, 8, 64] {
            assert_eq!(centroids_weighted(&values, &ones, k), centroids(&values, k), "k={k}");
        }
    }

    #[test]
    fn weighted_dp_is_optimal_over_splits() {
        // Integer weights = repeated points: the weighted optimum equals the unweighted one of the
        // expanded multiset.
        for seed in 0..6u64 {
            let values = lcg_values(9, seed);
            let weights: Vec<f64> = (0..9).map(|i| (1 + (i * 5 + seed as usize) % 4) as f64).collect();
            let expanded: Vec<f32> =
                values.iter().zip(&weights).flat_map(|(&v, &w)| std::iter::repeat_n(v, w as usize)).collect();
            for k in 1..=3 {
                let cw = centroids_weighted(&values, &weights, k);
                let ce = centroids(&expanded, k);
                let (a, b) = (weighted_sse(&values, &weights, &cw), sse(&expanded, &ce));
                assert!((a - b).abs() <= 1e-9 + 1e-6 * b, "seed={seed} k={k}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn heavy_points_attract_centroids_on_the_histogram_path() {
        let values: Vec<f32> = lcg_values(20_000, 4).iter().map(|v| v * v * v).collect();
        // Values above 0.5 carry 1000x the weight: the weighted error there must beat unweighted.
        let weights: Vec<f64> = values.iter().map(|&v| if v > 0.5 { 1000.0 } else { 1.0 }).collect();
        let (cw, cu) = (centroids_weighted(&values, &weights, 8), centroids(&values, 8));
        assert!(cw.windows(2).all(|w| w[0] < w[1]));
        let (ew, eu) = (weighted_sse(&values, &weights, &cw), weighted_sse(&values, &weights, &cu));
        assert!(ew < 0.5 * eu, "weighted {ew} vs unweighted {eu}");
    }

    #[test]
    fn nearest_picks_closest() {
        let c = [-1.0, 0.0, 2.0];
        assert_eq!(nearest(&c, -5.0), 0);
        assert_eq!(nearest(&c, -0.4), 1);
        assert_eq!(nearest(&c, 0.9), 1);
        assert_eq!(nearest(&c, 1.1), 2);
        assert_eq!(nearest(&c, 9.0), 2);
    }
}
