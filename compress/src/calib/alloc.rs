//! Per-layer choice of encoding under a distortion budget.
//!
//! Each layer offers choices of `(bytes, predicted distortion)`; distortions add over layers.
//! [`allocate`] minimises total bytes subject to total distortion ≤ budget: a Lagrangian
//! relaxation (each layer independently minimises `bytes + λ·distortion`, with λ bisected to the
//! smallest value that meets the budget) followed by a greedy pass that spends the remaining
//! slack on the moves saving the most bytes per unit of distortion. Ties resolve to the earlier
//! choice and layer, so the result is deterministic.

/// One way to store a layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// Size under the size model.
    pub bytes: f64,
    /// Predicted contribution to the model's output distortion (`1 - cos`).
    pub distortion: f64,
}

/// Measured sensitivity of one layer: `(error, distortion)` points from quantising the layer
/// alone, and the prediction of the distortion at any other error between and beyond them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sensitivity {
    /// `(relative error, measured 1 - cos)`, sorted by error, errors > 0.
    points: Vec<(f64, f64)>,
}

/// Distortions below this are treated as this (log-space interpolation needs positive values).
const DISTORTION_FLOOR: f64 = 1e-12;

impl Sensitivity {
    /// From measured points; points with a non-positive or non-finite error are dropped.
    pub fn new(mut points: Vec<(f64, f64)>) -> Sensitivity {
        points.retain(|&(e, d)| e > 0.0 && e.is_finite() && d.is_finite());
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points.dedup_by(|a, b| a.0 == b.0);
        Sensitivity { points }
    }

    /// True when nothing was measured.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Predicted distortion at relative error `e`: quadratic in `e` (a small weight error moves
    /// the output linearly, and `1 - cos` is quadratic in that) beyond the measured points,
    /// log-log interpolation between them. 0 for `e = 0`; `None` when nothing was measured.
    pub fn predict(&self, e: f64) -> Option<f64> {
        let first = *self.points.first()?;
        let last = *self.points.last()?;
        if e <= 0.0 {
            return Some(0.0);
        }
        if e <= first.0 {
            return Some(first.1 * (e / first.0).powi(2));
        }
        if e >= last.0 {
            return Some(last.1 * (e / last.0).powi(2));
        }
        let i = self.points.iter().position(|p| p.0 >= e).unwrap_or(self.points.len() - 1);
        let ((e0, d0), (e1, d1)) = (self.points[i - 1], self.points[i]);
        let t = (e / e0).ln() / (e1 / e0).ln();
        let (l0, l1) = (d0.max(DISTORTION_FLOOR).ln(), d1.max(DISTORTION_FLOOR).ln());
        Some((l0 + t * (l1 - l0)).exp())
    }
}

/// Sum of the chosen distortions.
pub fn total_distortion(layers: &[Vec<Choice>], choice: &[usize]) -> f64 {
    layers.iter().zip(choice).map(|(c, &i)| c[i].distortion).sum()
}

/// Sum of the chosen sizes.
pub fn total_bytes(layers: &[Vec<Choice>], choice: &[usize]) -> f64 {
    layers.iter().zip(choice).map(|(c, &i)| c[i].bytes).sum()
}

/// True when every layer already has its smallest choice.
pub fn is_smallest(layers: &[Vec<Choice>], choice: &[usize]) -> bool {
    layers.iter().zip(choice).all(|(c, &i)| c.iter().all(|o| o.bytes >= c[i].bytes))
}

/// Index of the choice minimising `bytes + lambda·distortion` (first on ties).
fn best_for(choices: &[Choice], lambda: f64) -> usize {
    let cost = |c: &Choice| c.bytes + lambda * c.distortion;
    let mut best = 0;
    for (i, c) in choices.iter().enumerate() {
        if cost(c) < cost(&choices[best]) {
            best = i;
        }
    }
    best
}

/// The least-distortion choice of a layer (smallest bytes among equals).
fn safest(choices: &[Choice]) -> usize {
    let mut best = 0;
    for (i, c) in choices.iter().enumerate() {
        let b = &choices[best];
        if c.distortion < b.distortion || (c.distortion == b.distortion && c.bytes < b.bytes) {
            best = i;
        }
    }
    best
}

/// The choice per layer (an index into its list) with the fewest total bytes found whose total
/// distortion stays within `budget`. When even the least-distortion choices exceed the budget,
/// those are returned. Every layer must offer at least one choice.
pub fn allocate(layers: &[Vec<Choice>], budget: f64) -> Vec<usize> {
    let pick = |lambda: f64| -> Vec<usize> { layers.iter().map(|c| best_for(c, lambda)).collect() };
    let safe: Vec<usize> = layers.iter().map(|c| safest(c)).collect();
    if total_distortion(layers, &safe) > budget {
        return safe;
    }
    // λ = 0 picks the smallest choices; a large enough λ the safest. Bisect in log space.
    let mut choice = pick(0.0);
    if total_distortion(layers, &choice) > budget {
        let (mut lo, mut hi) = (1e-12f64, 1e-12f64);
        while total_distortion(layers, &pick(hi)) > budget && hi < 1e300 {
            lo = hi;
            hi *= 16.0;
        }
        for _ in 0..100 {
            let mid = (lo * hi).sqrt();
            if total_distortion(layers, &pick(mid)) > budget {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        choice = pick(hi);
        if total_distortion(layers, &choice) > budget {
            choice = safe;
        }
    }
    fill(layers, &mut choice, budget);
    choice
}

/// Greedily applies the single-layer move that saves the most bytes per unit of added
/// distortion while the total stays within `budget`, until no move fits.
fn fill(layers: &[Vec<Choice>], choice: &mut [usize], budget: f64) {
    let mut total = total_distortion(layers, choice);
    loop {
        let mut best: Option<(usize, usize, f64)> = None;
        for (l, options) in layers.iter().enumerate() {
            let cur = options[choice[l]];
            for (i, o) in options.iter().enumerate() {
                let saved = cur.bytes - o.bytes;
                let added = o.distortion - cur.distortion;
                if saved <= 0.0 || total + added > budget {
                    continue;
                }
                let rate = if added <= 0.0 { f64::INFINITY } else { saved / added };
                if best.is_none_or(|(_, _, r)| rate > r) {
                    best = Some((l, i, rate));
                }
            }
        }
        let Some((l, i, _)) = best else { break };
        total += layers[l][i].distortion - layers[l][choice[l]].distortion;
        choice[l] = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer of `n` weights: f32, then widths 1..=8 with distortion `k · 4^-bits`.
    fn layer(n: f64, k: f64) -> Vec<Choice> {
        let mut c = vec![Choice { bytes: 4.0 * n, distortion: 0.0 }];
        for bits in 1..=8 {
            c.push(Choice { bytes: n * bits as f64 / 8.0 + 64.0, distortion: k * 4f64.powi(-bits) });
        }
        c
    }

    fn model() -> Vec<Vec<Choice>> {
        vec![layer(1000.0, 1.0), layer(50_000.0, 0.01), layer(20_000.0, 5.0), layer(300.0, 0.5)]
    }

    /// Exhaustive optimum for small instances.
    fn brute(layers: &[Vec<Choice>], budget: f64) -> f64 {
        let mut best = f64::INFINITY;
        let mut idx = vec![0usize; layers.len()];
        loop {
            if total_distortion(layers, &idx) <= budget {
                best = best.min(total_bytes(layers, &idx));
            }
            let mut l = 0;
            loop {
                if l == layers.len() {
                    return best;
                }
                idx[l] += 1;
                if idx[l] < layers[l].len() {
                    break;
                }
                idx[l] = 0;
                l += 1;
            }
        }
    }

    #[test]
    fn respects_the_budget_and_spends_bits_where_they_matter() {
        let layers = model();
        for budget in [1e-5, 1e-4, 1e-3, 1e-2] {
            let c = allocate(&layers, budget);
            assert!(total_distortion(&layers, &c) <= budget, "budget {budget}");
        }
        let c = allocate(&layers, 1e-3);
        // The large, insensitive layer gets fewer bits than the sensitive one.
        let bits = |l: usize| c[l]; // index = bits for codebook choices
        assert!(bits(1) < bits(2), "{c:?}");
    }

    #[test]
    fn close_to_the_exhaustive_optimum() {
        let layers = model();
        for budget in [3e-5, 1e-4, 1e-3, 1e-2] {
            let got = total_bytes(&layers, &allocate(&layers, budget));
            let opt = brute(&layers, budget);
            assert!(got <= opt * 1.05, "budget {budget}: {got} vs optimum {opt}");
        }
    }

    #[test]
    fn beats_every_uniform_width_that_fits() {
        let layers = model();
        let budget = 2e-3;
        let got = total_bytes(&layers, &allocate(&layers, budget));
        for bits in 1..=8 {
            let uniform = vec![bits; layers.len()];
            if total_distortion(&layers, &uniform) <= budget {
                assert!(got <= total_bytes(&layers, &uniform), "{bits}-bit uniform is smaller");
            }
        }
    }

    #[test]
    fn sensitivity_is_quadratic_outside_and_log_linear_between_points() {
        let s = Sensitivity::new(vec![(0.1, 1e-2), (0.01, 1e-5)]);
        assert_eq!(s.predict(0.0), Some(0.0));
        assert!((s.predict(0.2).unwrap() - 4e-2).abs() < 1e-12);
        assert!((s.predict(0.001).unwrap() - 1e-7).abs() < 1e-15);
        // Between: slope 3 in log-log (1e-5 -> 1e-2 over one decade of error).
        let mid = s.predict(0.1f64.sqrt() * 0.1f64.sqrt() * 0.1f64.sqrt().sqrt()).unwrap();
        assert!(mid > 1e-5 && mid < 1e-2);
        let half = s.predict((0.1f64 * 0.01).sqrt()).unwrap();
        assert!((half.log10() + 3.5).abs() < 1e-9, "{half}");
        assert_eq!(Sensitivity::new(vec![(0.0, 1.0)]).predict(0.5), None);
    }

    #[test]
    fn extremes() {
        let layers = model();
        // Zero budget: every layer lossless (f32).
        assert_eq!(allocate(&layers, 0.0), vec![0; 4]);
        // Unlimited budget: the smallest choice everywhere.
        let c = allocate(&layers, f64::INFINITY);
        assert!(is_smallest(&layers, &c), "{c:?}");
        // Impossible budget (negative): the safest choices.
        assert_eq!(allocate(&layers, -1.0), vec![0; 4]);
    }

    #[test]
    fn looser_budgets_never_cost_more() {
        let layers = model();
        let mut last = f64::INFINITY;
        for budget in [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1] {
            let b = total_bytes(&layers, &allocate(&layers, budget));
            assert!(b <= last, "budget {budget}: {b} > {last}");
            last = b;
        }
    }
}
