//! Splitting a kernel's output over the session's worker threads.

use std::cell::Cell;
use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use crate::Kernels;

/// Tasks [`split_units`] cuts per thread for a job of at least [`BALANCE_MIN_WORK`] per thread:
/// threads that take the next task as they finish one balance themselves when one of them runs
/// slower (a core shared with another process, or a hypervisor's other guest), where one part
/// per thread waits for the slowest.
pub(crate) const TASKS_PER_THREAD: usize = 2;

/// Runs `f(units, y_part, scratch_part)` over `units` independent units of `unit_len` contiguous
/// output elements each (`y.len() == units * unit_len`, or the last unit shorter), split into at most
/// `kernels.threads() * TASKS_PER_THREAD` contiguous ranges of at least `kernels.min_task_work`
/// multiply-adds (`unit_work` per unit). Each call gets its thread's `per_task` elements of
/// `scratch`, which must hold `kernels.threads() * per_task`.
///
/// The caller's thread and the pool's workers take ranges until none is left; with one range
/// `f` runs once on the caller's thread, with no pool overhead.
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
    split_units_into(kernels, TASKS_PER_THREAD, units, unit_len, unit_work, y, scratch, per_task, f)
}

/// [`split_units`] with at most `tasks_per_thread` tasks per thread (at least one).
#[allow(clippy::too_many_arguments)]
pub(crate) fn split_units_into<F>(
    kernels: &Kernels,
    tasks_per_thread: usize,
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
    let work = units.saturating_mul(unit_work);
    let worth = work / kernels.min_task_work.max(1);
    let (pool, threads) = kernels.pool_now();
    let tasks = (threads * balanced(tasks_per_thread, work, threads)).min(units).min(worth).max(1);
    let per_task = per_task.max(1);
    match pool {
        Some(pool) if tasks > 1 && unit_len > 0 => {
            let per_units = units.div_ceil(tasks);
            with_claims(y.chunks_mut(per_units * unit_len), |parts| {
                with_slots(scratch, per_task, pool.workers() + 1, |slots| {
                    pool.run(parts.len(), &|t, slot| {
                        if let Some(yc) = claim(parts, t) {
                            let mut sc = slots[slot].lock().unwrap_or_else(PoisonError::into_inner);
                            let start = t * per_units;
                            f(start..start + yc.len().div_ceil(unit_len), yc, &mut sc);
                        }
                    })
                })
            });
        }
        _ => f(0..units, y, scratch),
    }
}

/// Multiply-adds per thread (about 10 µs) from which a job is cut into several tasks per thread
/// (the caller's count, so that a fast thread can take over the rest of a slow one's share);
/// smaller jobs take one task per thread, as each task has its own setup (decoded panels,
/// quantized blocks, slab edges) and a thread that takes another's task reads what the other
/// wrote. At 2 threads on a Xeon (alternating runs), against two tasks for every job: BlazeFace
/// 0.514 → 0.501 ms, MobileNetV3-Small `--int8` 0.806 → 0.792, PP-OCRv4 det alike (11.40 /
/// 11.36); one task for every job measured the same as this on all three, 2^22 alike. With a
/// busy-looping process on one of the two vCPUs all three settings ran alike (the pool backs off
/// to the caller alone, see `WorkerPool::backed_off`).
const BALANCE_MIN_WORK: usize = 1 << 20;

/// Runs `f(i, part, scratch_part)` on each of the `count` output parts `parts` yields, one task
/// per part, parts of any length and from any buffers. Tasks go to the caller and the pool's
/// workers when the job (`work` multiply-adds in all) is worth it, else all run on the caller,
/// one after the other. Each call gets its thread's `per_task` elements of `scratch`, which
/// must hold `kernels.threads() * per_task`.
pub(crate) fn split_parts<'a, F>(
    kernels: &Kernels,
    parts: impl Iterator<Item = &'a mut [f32]>,
    count: usize,
    work: usize,
    scratch: &mut [f32],
    per_task: usize,
    f: F,
) where
    F: Fn(usize, &mut [f32], &mut [f32]) + Sync,
{
    let worth = work / kernels.min_task_work.max(1);
    match kernels.pool_now() {
        (Some(pool), threads) if threads > 1 && count > 1 && worth > 1 => {
            with_claims(parts, |claims| {
                with_slots(scratch, per_task.max(1), pool.workers() + 1, |slots| {
                    pool.run(claims.len(), &|t, slot| {
                        if let Some(part) = claim(claims, t) {
                            let mut sc = slots[slot].lock().unwrap_or_else(PoisonError::into_inner);
                            f(t, part, &mut sc);
                        }
                    })
                })
            });
        }
        _ => parts.enumerate().for_each(|(i, part)| f(i, part, scratch)),
    }
}

/// Tasks per thread for a job of `work` multiply-adds over `threads` threads: `wanted` (at least
/// one) when each thread's share is long enough for a slow thread's lag to matter, else one.
fn balanced(wanted: usize, work: usize, threads: usize) -> usize {
    if work / threads.max(1) >= BALANCE_MIN_WORK {
        wanted.max(1)
    } else {
        1
    }
}

/// Runs `f` on `scratch` cut into one `per_task` part per thread slot (`threads` of them, the
/// caller's and each worker's), each locked by the one task running on that slot; the list is
/// one the calling thread keeps from job to job (see [`with_plane_list`]).
fn with_slots<'a, R>(
    scratch: &'a mut [f32],
    per_task: usize,
    threads: usize,
    f: impl FnOnce(&[Mutex<&'a mut [f32]>]) -> R,
) -> R {
    let mut slots: Vec<Mutex<&'a mut [f32]>> = recycle(SPARE_SLOTS.take());
    slots.extend(scratch.chunks_mut(per_task).map(Mutex::new));
    assert!(slots.len() >= threads, "scratch holds {} of {threads} slots", slots.len());
    let result = f(&slots);
    SPARE_SLOTS.set(recycle(slots));
    result
}

/// Runs `f` on one claim per part, each taken once by its task (uncontended locks: a few
/// nanoseconds), in a list the calling thread keeps from job to job.
fn with_claims<'a, R>(
    parts: impl Iterator<Item = &'a mut [f32]>,
    f: impl FnOnce(&[Mutex<Option<&'a mut [f32]>>]) -> R,
) -> R {
    let mut claims: Vec<Mutex<Option<&'a mut [f32]>>> = recycle(SPARE_CLAIMS.take());
    claims.extend(parts.map(|p| Mutex::new(Some(p))));
    let result = f(&claims);
    SPARE_CLAIMS.set(recycle(claims));
    result
}

/// Task `t`'s part, if it has one left.
fn claim<T>(parts: &[Mutex<Option<T>>], t: usize) -> Option<T> {
    parts.get(t)?.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// Runs `f(rows, parts, scratch_part)` over contiguous ranges of the `plane_rows` rows (of
/// `row_len` elements) of every plane of `y` (`y.len()` a multiple of `plane_rows * row_len`):
/// `parts[i]` is rows `rows` of plane `i`; ranges start at multiples of `align` rows. There are
/// at most `tasks_per_thread` ranges per thread (more let a fast thread take over the rest of a
/// slow one's, at the cost of each range's own setup), each of at least
/// `kernels.min_task_work` multiply-adds (`row_work` per row, over all planes). Each call gets
/// its thread's `per_task` elements of `scratch`, which must hold `kernels.threads() * per_task`.
///
/// This is the spatial split: every worker computes all planes (filters) of its rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn split_rows<F>(
    kernels: &Kernels,
    plane_rows: usize,
    row_len: usize,
    row_work: usize,
    align: usize,
    tasks_per_thread: usize,
    y: &mut [f32],
    scratch: &mut [f32],
    per_task: usize,
    f: F,
) where
    F: Fn(Range<usize>, &mut [&mut [f32]], &mut [f32]) + Sync,
{
    let plane = plane_rows * row_len;
    let work = plane_rows.saturating_mul(row_work);
    let worth = work / kernels.min_task_work.max(1);
    // One thread runs one range: the whole plane (the call below without a pool).
    let (pool, threads) = kernels.pool_now();
    let tasks_per_thread = if pool.is_some() { balanced(tasks_per_thread, work, threads) } else { 1 };
    let tasks = (threads * tasks_per_thread).min(plane_rows).min(worth).max(1);
    let per_task = per_task.max(1);
    if plane == 0 {
        return;
    }
    // Ranges start at multiples of `align` rows (Winograd's 2-row output tiles).
    let per_rows = plane_rows.div_ceil(tasks).next_multiple_of(align.max(1));
    let tasks = plane_rows.div_ceil(per_rows).max(1);
    let pool = pool.filter(|_| tasks > 1);
    let Some(pool) = pool else {
        // One range, the whole of every plane.
        return with_plane_list(y.chunks_exact_mut(plane), |planes| f(0..plane_rows, planes, scratch));
    };
    // Each plane's rows, cut at the same row boundaries and dealt out to the tasks' lists (kept
    // by the calling thread from job to job, each task's locked by that task alone).
    let mut parts: Vec<Mutex<Vec<&mut [f32]>>> = recycle_lists(SPARE_ROW_PARTS.take());
    parts.resize_with(parts.len().max(tasks), || Mutex::new(Vec::new()));
    for mut rest in y.chunks_exact_mut(plane) {
        for task in parts[..tasks].iter_mut() {
            let (part, tail) = rest.split_at_mut((per_rows * row_len).min(rest.len()));
            task.get_mut().unwrap_or_else(PoisonError::into_inner).push(part);
            rest = tail;
        }
    }
    let range = |t: usize| (t * per_rows).min(plane_rows)..((t + 1) * per_rows).min(plane_rows);
    with_slots(scratch, per_task, pool.workers() + 1, |slots| {
        pool.run(tasks, &|t, slot| {
            let mut pt = parts[t].lock().unwrap_or_else(PoisonError::into_inner);
            let mut st = slots[slot].lock().unwrap_or_else(PoisonError::into_inner);
            f(range(t), &mut pt, &mut st);
        })
    });
    SPARE_ROW_PARTS.set(recycle_lists(parts));
}

/// [`recycle`] for a list of locked lists, keeping each inner list's capacity too.
fn recycle_lists<'b>(lists: Vec<Mutex<Vec<&mut [f32]>>>) -> Vec<Mutex<Vec<&'b mut [f32]>>> {
    lists
        .into_iter()
        .map(|m| Mutex::new(recycle(m.into_inner().unwrap_or_else(PoisonError::into_inner))))
        .collect()
}

thread_local! {
    /// This thread's spare list of output planes, empty: its capacity is kept for the next.
    static SPARE_PLANES: Cell<Vec<&'static mut [f32]>> = const { Cell::new(Vec::new()) };
    /// This thread's spare list of offsets, empty.
    static SPARE_OFFSETS: Cell<Vec<usize>> = const { Cell::new(Vec::new()) };
    /// This thread's spare lists for splitting a job: claims on output parts, scratch slots and
    /// per-task lists of row parts, all empty.
    static SPARE_CLAIMS: Cell<Vec<Mutex<Option<&'static mut [f32]>>>> = const { Cell::new(Vec::new()) };
    static SPARE_SLOTS: Cell<Vec<Mutex<&'static mut [f32]>>> = const { Cell::new(Vec::new()) };
    static SPARE_ROW_PARTS: Cell<Vec<Mutex<Vec<&'static mut [f32]>>>> = const { Cell::new(Vec::new()) };
}

/// Entries each thread's spare plane and offset lists start with ([`reserve_spares`]): more than
/// one task of a mobile model's widest layer takes (MobileNetV2's has 1280 output channels).
const SPARE_ENTRIES: usize = 2048;

/// Gives this thread's spare plane and offset lists room for [`SPARE_ENTRIES`] entries up front.
/// Pool workers do it as they start, and the thread that makes a pool as it does: which thread
/// takes which task varies from run to run, so a thread's first task of a kind may come in any
/// run, and without the room its list would grow then (a steady run would allocate).
pub(crate) fn reserve_spares() {
    let mut planes = SPARE_PLANES.take();
    planes.reserve(SPARE_ENTRIES);
    SPARE_PLANES.set(planes);
    let mut offsets = SPARE_OFFSETS.take();
    offsets.reserve(SPARE_ENTRIES);
    SPARE_OFFSETS.set(offsets);
}

/// `v`'s allocation, emptied, for elements of another lifetime (a list of plane slices borrows
/// one call's output, so it outlives the call only as capacity; the runtime keeps its executor's
/// argument lists the same way). Collecting a vector's own iterator into elements of the same
/// size and alignment reuses its buffer (std's in-place iteration; were it not to, the list would
/// be allocated again, as a new one is, and `tests/allocations.rs` would say so).
pub fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().map(|_| unreachable!("the vector was emptied")).collect()
}

/// Runs `f` on `planes` gathered into a list, whose buffer the calling thread keeps from call to
/// call: a kernel that takes its output as a list of planes allocates no list once each thread
/// has made one as long (an inference runs a hundred such kernels). A nested call makes a list of
/// its own.
pub(crate) fn with_plane_list<'a, R>(
    planes: impl Iterator<Item = &'a mut [f32]>,
    f: impl FnOnce(&mut [&'a mut [f32]]) -> R,
) -> R {
    let mut list: Vec<&'a mut [f32]> = recycle(SPARE_PLANES.take());
    list.extend(planes);
    let result = f(&mut list);
    SPARE_PLANES.set(recycle(list));
    result
}

/// Runs `f` on `[0, stride, 2 * stride, ..]` (`count` offsets: where each input plane of a 1×1
/// layer starts), in a list the calling thread keeps from call to call, as [`with_plane_list`].
pub(crate) fn with_plane_offsets<R>(count: usize, stride: usize, f: impl FnOnce(&[usize]) -> R) -> R {
    with_offsets(|list| list.extend((0..count).map(|c| c * stride)), f)
}

/// Runs `f` on the offsets `fill` pushes into an empty list that the calling thread keeps from
/// call to call, as [`with_plane_list`].
pub(crate) fn with_offsets<R>(fill: impl FnOnce(&mut Vec<usize>), f: impl FnOnce(&[usize]) -> R) -> R {
    let mut list = SPARE_OFFSETS.take();
    list.clear();
    fill(&mut list);
    let result = f(&list);
    SPARE_OFFSETS.set(list);
    result
}

/// Runs `f(start, part)` over contiguous parts of `out` (`part = out[start..start + part.len()]`),
/// one per thread when every part gets at least `min_len` elements, else once on the caller's
/// thread. Parts start at multiples of 16 elements (64 bytes: whole cache lines per thread).
pub(crate) fn split_elements<F>(kernels: &Kernels, out: &mut [f32], min_len: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    split_aligned(kernels, out, 16, min_len, f)
}

/// [`split_elements`] with parts starting at multiples of `align` elements (whole rows of a
/// row-wise operation).
pub(crate) fn split_aligned<F>(kernels: &Kernels, out: &mut [f32], align: usize, min_len: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    let (pool, threads) = kernels.pool_now();
    let tasks = threads.min(out.len() / min_len.max(1)).max(1);
    match pool {
        Some(pool) if tasks > 1 => {
            let part = out.len().div_ceil(tasks).next_multiple_of(align.max(1));
            with_claims(out.chunks_mut(part), |parts| {
                pool.run(parts.len(), &|t, _| {
                    if let Some(chunk) = claim(parts, t) {
                        f(t * part, chunk);
                    }
                })
            });
        }
        _ => f(0, out),
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
    fn recycled_lists_keep_their_buffer_across_lifetimes() {
        let mut a = [0.0f32; 8];
        let mut list: Vec<&mut [f32]> = Vec::with_capacity(16);
        list.extend(a.chunks_mut(2));
        let (ptr, cap) = (list.as_ptr() as usize, list.capacity());
        let spare: Vec<&'static mut [f32]> = recycle(list);
        assert!(spare.is_empty());
        assert_eq!((spare.as_ptr() as usize, spare.capacity()), (ptr, cap), "the buffer is reused");
        let mut b = [1.0f32; 4];
        let mut again: Vec<&mut [f32]> = recycle(spare);
        again.push(&mut b);
        assert_eq!((again.as_ptr() as usize, again.capacity()), (ptr, cap));
    }

    #[test]
    fn pool_threads_start_with_room_in_their_spare_lists() {
        // A fresh thread's lists are empty until it reserves; a pool's workers and its maker
        // reserve as they start.
        let capacities = || {
            let (planes, offsets) = (SPARE_PLANES.take(), SPARE_OFFSETS.take());
            let seen = (planes.capacity(), offsets.capacity());
            SPARE_PLANES.set(planes);
            SPARE_OFFSETS.set(offsets);
            seen
        };
        assert_eq!(std::thread::spawn(capacities).join().unwrap(), (0, 0));
        let reserved = std::thread::spawn(move || {
            reserve_spares();
            capacities()
        });
        let (planes, offsets) = reserved.join().unwrap();
        assert!(planes >= SPARE_ENTRIES && offsets >= SPARE_ENTRIES, "{planes}, {offsets}");
        let (made, workers) = std::thread::spawn(move || {
            let pool = crate::pool::WorkerPool::new(2).unwrap();
            let seen = Mutex::new(Vec::new());
            // Enough tasks that each worker takes some whatever the timing: each records its
            // thread's capacities once it is running.
            for _ in 0..100 {
                pool.run(64, &|_, slot| {
                    if slot > 0 {
                        seen.lock().unwrap().push(capacities());
                    }
                    std::thread::sleep(std::time::Duration::from_micros(20));
                });
            }
            (capacities(), seen.into_inner().unwrap())
        })
        .join()
        .unwrap();
        assert!(made.0 >= SPARE_ENTRIES && made.1 >= SPARE_ENTRIES, "{made:?}");
        assert!(!workers.is_empty(), "no worker took a task");
        for (planes, offsets) in workers {
            assert!(planes >= SPARE_ENTRIES && offsets >= SPARE_ENTRIES, "a worker's {planes}, {offsets}");
        }
    }

    #[test]
    fn element_parts_cover_the_output_once_and_only_split_when_large() {
        let k = Kernels::with_isa(Isa::scalar(), 3).unwrap();
        // The counts below assume no stall backed the pool off (qemu stalls often).
        k.pool().unwrap().ignore_stalls();
        for (len, min_len, want_parts) in
            [(1000, 100, 3), (1000, 400, 2), (1000, 1000, 1), (5, 1, 1), (0, 1, 1)]
        {
            let parts = Mutex::new(Vec::new());
            let mut out = vec![-1.0f32; len];
            split_elements(&k, &mut out, min_len, |start, part| {
                assert_eq!(start % 16, 0);
                for (i, v) in part.iter_mut().enumerate() {
                    *v = (start + i) as f32;
                }
                parts.lock().unwrap().push(start);
            });
            assert!(out.iter().enumerate().all(|(i, &v)| v == i as f32), "len {len}");
            let n = parts.into_inner().unwrap().len();
            // 5 elements in parts of 16: one part however many threads.
            assert_eq!(n, want_parts, "len {len}, min_len {min_len}");
        }
    }

    #[test]
    fn row_parts_cover_every_plane_once_and_only_split_when_worth_it() {
        for (threads, rows, row_work, min_work, per_thread, want) in [
            (3, 7, 10, 1, 1, vec![0..3, 3..6, 6..7]),
            (3, 7, 10, 30, 1, vec![0..4, 4..7]),
            (3, 7, 10, 1000, 1, vec![Range { start: 0, end: 7 }]),
            // Two ranges per thread for a job long enough: more, smaller ranges, still one scratch
            // part per thread; a short one keeps one range per thread.
            (3, 7, BALANCE_MIN_WORK, 1, 2, vec![0..2, 2..4, 4..6, 6..7]),
            (3, 13, BALANCE_MIN_WORK, 1, 2, vec![0..3, 3..6, 6..9, 9..12, 12..13]),
            (3, 7, 10, 1, 2, vec![0..3, 3..6, 6..7]),
            // One thread: one range, whatever the ranges per thread.
            (1, 13, 10, 1, 4, vec![Range { start: 0, end: 13 }]),
        ] {
            let mut k = Kernels::with_isa(Isa::scalar(), threads).unwrap();
            k.min_task_work = min_work;
            if let Some(pool) = k.pool() {
                pool.ignore_stalls();
            }
            let (planes, row_len) = (3, 5);
            let mut y = vec![-1.0f32; planes * rows * row_len];
            let seen = Mutex::new(Vec::new());
            let mut scratch = vec![0.0; 3 * 2];
            split_rows(&k, rows, row_len, row_work, 1, per_thread, &mut y, &mut scratch, 2, |r, parts, s| {
                assert_eq!(parts.len(), planes);
                assert!(s.len() >= 2);
                for (i, part) in parts.iter_mut().enumerate() {
                    assert_eq!(part.len(), r.len() * row_len);
                    for (j, v) in part.iter_mut().enumerate() {
                        *v = (i * rows * row_len + r.start * row_len + j) as f32;
                    }
                }
                seen.lock().unwrap().push(r);
            });
            assert!(y.iter().enumerate().all(|(i, &v)| v == i as f32), "rows {rows} min_work {min_work}");
            let mut seen = seen.into_inner().unwrap();
            seen.sort_by_key(|r| r.start);
            assert_eq!(seen, want);
        }
    }

    #[test]
    fn splits_into_contiguous_ranges_only_when_worth_it() {
        // Up to two ranges per thread (3 threads here).
        let mut k = Kernels::with_isa(Isa::scalar(), 3).unwrap();
        assert_eq!(ranges(&k, 12, 1 << 24), vec![0..2, 2..4, 4..6, 6..8, 8..10, 10..12]);
        assert_eq!(ranges(&k, 7, 1 << 24), vec![0..2, 2..4, 4..6, 6..7]);
        assert_eq!(ranges(&k, 12, 1 << 16), vec![0..4, 4..8, 8..12], "a short job: one range per thread");
        assert_eq!(ranges(&k, 2, 1 << 24), vec![0..1, 1..2]);
        assert_eq!(ranges(&k, 7, 1), vec![0..7], "tiny work stays on one thread");
        k.min_task_work = 3;
        assert_eq!(ranges(&k, 7, 1), vec![0..4, 4..7]);
        assert_eq!(ranges(&k, 0, 1), vec![0..0]);
        assert_eq!(ranges(&Kernels::default(), 7, 1 << 24), vec![0..7]);
    }

    #[test]
    fn work_goes_as_one_task_while_the_pool_is_backed_off() {
        let mut k = Kernels::with_isa(Isa::scalar(), 3).unwrap();
        k.min_task_work = 1;
        k.pool().unwrap().back_off_for(std::time::Duration::from_secs(60));
        assert_eq!(ranges(&k, 12, 1 << 24), vec![0..12]);
        let (rows, row_len) = (7, 5);
        let mut y = vec![0.0f32; rows * row_len];
        let mut scratch = vec![0.0; 3 * 2];
        let seen = Mutex::new(Vec::new());
        split_rows(&k, rows, row_len, 1 << 20, 1, 2, &mut y, &mut scratch, 2, |r, _, _| {
            seen.lock().unwrap().push(r);
        });
        assert_eq!(seen.into_inner().unwrap(), vec![0..rows]);
        let parts = Mutex::new(0);
        let mut out = vec![0.0f32; 1000];
        split_elements(&k, &mut out, 16, |_, _| *parts.lock().unwrap() += 1);
        assert_eq!(parts.into_inner().unwrap(), 1);
        // Once the back-off is over, the work is cut for every thread again.
        k.pool().unwrap().back_off_for(std::time::Duration::ZERO);
        assert_eq!(ranges(&k, 12, 1 << 24).len(), 6);
    }
}
