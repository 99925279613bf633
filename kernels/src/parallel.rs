//! Splitting a kernel's output over the session's worker threads.

use std::ops::Range;

use crate::Kernels;

/// Runs `f(units, y_part, scratch_part)` over `units` independent units of `unit_len` contiguous
/// output elements each (`y.len() == units * unit_len`), split into at most `kernels.threads()`
/// contiguous ranges of at least `kernels.min_task_work` multiply-adds (`unit_work` per unit).
/// Each call gets its own `per_task` elements of `scratch`, which must hold
/// `kernels.threads() * per_task`.
///
/// The caller's thread runs the first range itself while the pool's `threads - 1` workers take
/// the others; with one range `f` runs once on the caller's thread, with no pool overhead.
#[allow(clippy::too_many_arguments)]
pub(crate) fn split_units<F>(
    kernels: &Kernels,
    units: usize,
    unit_len: usize,
    unit_work: usize,
    y: &mut [f32],
    scratch: &mut [f32],
    per_task: usize,
    f: F,
) where
    F: Fn(Range<usize>, &mut [f32], &mut [f32]) + Sync,
{
    let worth = units.saturating_mul(unit_work) / kernels.min_task_work.max(1);
    let tasks = kernels.threads().min(units).min(worth).max(1);
    let per_task = per_task.max(1);
    match kernels.pool() {
        Some(pool) if tasks > 1 && unit_len > 0 => {
            let per_units = units.div_ceil(tasks);
            let f = &f;
            let mut parts = y.chunks_mut(per_units * unit_len).zip(scratch.chunks_mut(per_task));
            let (y0, s0) = parts.next().expect("tasks > 1 means units > 0");
            pool.in_place_scope(|scope| {
                for (t, (yc, sc)) in parts.enumerate() {
                    let start = (t + 1) * per_units;
                    scope.spawn(move |_| f(start..start + yc.len() / unit_len, yc, sc));
                }
                f(0..per_units, y0, s0);
            });
        }
        _ => f(0..units, y, scratch),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::Isa;

    /// The ranges `split_units` hands out, sorted; checks each task got its own output part.
    fn ranges(kernels: &Kernels, units: usize, unit_work: usize) -> Vec<Range<usize>> {
        let seen = Mutex::new(Vec::new());
        let mut y = vec![0.0; units * 2];
        let mut scratch = vec![0.0; kernels.threads() * 3];
        split_units(kernels, units, 2, unit_work, &mut y, &mut scratch, 3, |r, ys, s| {
            assert_eq!(ys.len(), r.len() * 2);
            assert!(s.len() >= 3);
            s.fill(r.start as f32);
            ys.fill(r.start as f32);
            seen.lock().unwrap().push(r);
        });
        let mut v = seen.into_inner().unwrap();
        v.sort_by_key(|r| r.start);
        for r in &v {
            assert!(y[r.start * 2..r.end * 2].iter().all(|&x| x == r.start as f32));
        }
        v
    }

    #[test]
    fn splits_into_contiguous_ranges_only_when_worth_it() {
        let mut k = Kernels::with_isa(Isa::scalar(), 3).unwrap();
        assert_eq!(ranges(&k, 7, 1 << 24), vec![0..3, 3..6, 6..7]);
        assert_eq!(ranges(&k, 2, 1 << 24), vec![0..1, 1..2]);
        assert_eq!(ranges(&k, 7, 1), vec![0..7], "tiny work stays on one thread");
        k.min_task_work = 1;
        assert_eq!(ranges(&k, 7, 1), vec![0..3, 3..6, 6..7]);
        assert_eq!(ranges(&k, 0, 1), vec![0..0]);
        assert_eq!(ranges(&Kernels::default(), 7, 1 << 24), vec![0..7]);
    }
}
