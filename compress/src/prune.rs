//! Magnitude pruning: which weights are forced to an exact-zero codebook entry.
//!
//! One mask per tensor, shared by every codebook candidate so they are compared at the same
//! sparsity. Saliency is `|w|`, or `|w|·sqrt(G_jj + λ)` when an importance per weight is given
//! (the output energy removed by zeroing that weight alone, as in Wanda); the `round(p·n)`
//! least salient weights are pruned, ties broken by position so the mask is deterministic and the
//! count exact. For the scaled candidate this judges magnitude before row scaling: scaling rows
//! by their maximum does not change which weights matter for the output.

/// The mask (true = pruned) of the `round(fraction · w.len())` least salient weights of `w`;
/// `None` when that count is 0 (or `fraction` is not a positive number). `importance`, when
/// given, holds one positive weight per element.
pub(crate) fn mask(w: &[f32], fraction: f32, importance: Option<&[f64]>) -> Option<Vec<bool>> {
    let fraction = if fraction.is_nan() { 0.0 } else { fraction.clamp(0.0, 1.0) as f64 };
    let count = ((fraction * w.len() as f64).round() as usize).min(w.len());
    if count == 0 {
        return None;
    }
    let saliency: Vec<f64> = match importance {
        Some(imp) => w.iter().zip(imp).map(|(&v, &i)| (v as f64).powi(2) * i).collect(),
        None => w.iter().map(|&v| (v as f64).abs()).collect(),
    };
    let mut order: Vec<usize> = (0..w.len()).collect();
    let key = |&a: &usize, &b: &usize| saliency[a].total_cmp(&saliency[b]).then(a.cmp(&b));
    if count < w.len() {
        order.select_nth_unstable_by(count, key);
    }
    let mut pruned = vec![false; w.len()];
    for &i in &order[..count] {
        pruned[i] = true;
    }
    Some(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prunes_the_exact_count_of_smallest_magnitudes() {
        let w: Vec<f32> = (0..101).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.1).collect();
        let m = mask(&w, 0.3, None).unwrap();
        assert_eq!(m.iter().filter(|&&p| p).count(), 30);
        let kept_min = w.iter().zip(&m).filter(|(_, &p)| !p).map(|(v, _)| v.abs()).fold(f32::MAX, f32::min);
        let pruned_max = w.iter().zip(&m).filter(|(_, &p)| p).map(|(v, _)| v.abs()).fold(0.0, f32::max);
        assert!(pruned_max <= kept_min);
        assert!(mask(&w, 0.0, None).is_none());
        assert!(mask(&w, f32::NAN, None).is_none());
        assert!(mask(&w, 1.0, None).unwrap().iter().all(|&p| p));
    }

    #[test]
    fn importance_changes_the_choice() {
        // Equal magnitudes: the low-energy inputs go first.
        let w = [1.0f32, -1.0, 1.0, -1.0];
        let imp = [4.0, 0.5, 3.0, 0.25];
        assert_eq!(mask(&w, 0.5, Some(&imp)).unwrap(), vec![false, true, false, true]);
        // Ties are broken by position.
        assert_eq!(mask(&w, 0.5, None).unwrap(), vec![true, true, false, false]);
    }
}
