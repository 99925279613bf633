//! Persistent worker threads that spin briefly between jobs.
//!
//! An inference runs dozens of kernels back to back, many of them tens of microseconds long
//! (BlazeFace's 37 convolutions take about 1 ms together). Waking a sleeping thread costs a
//! futex call and a trip through the scheduler, which on a VM or a loaded phone is more than such
//! a kernel takes: with rayon's pool, splitting them made BlazeFace slower on 2 threads than on 1.
//! Workers here spin on an epoch counter for up to [`SPIN_TIME`] after each job, so a job handed
//! out during an inference starts within a cache-line transfer; then they park on a condvar, so
//! an idle session costs no CPU.
//!
//! One job runs at a time: a second caller (another thread sharing the kernel set, or a task that
//! itself splits work) runs its tasks on its own thread instead of waiting.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN_TIME: Duration = Duration::from_micros(500);

/// A job: called once with each task index.
type Task<'a> = dyn Fn(usize) + Sync + 'a;

/// State shared by the caller and the workers.
#[derive(Default)]
struct Shared {
    /// Bumped once per job (and at shutdown); each worker runs every epoch once.
    epoch: AtomicU64,
    /// The current job: a `*const &Task` on the caller's stack, valid until `pending` is 0.
    job: AtomicPtr<()>,
    /// Tasks of the current job; worker `id` runs task `id` when `id < tasks`.
    tasks: AtomicUsize,
    /// Workers that have not yet finished the current epoch.
    pending: AtomicUsize,
    /// A worker's task panicked during the current job.
    panicked: AtomicBool,
    /// Set once, when the pool is dropped.
    shutdown: AtomicBool,
    /// Workers parked on `wake` (read by the caller to skip the condvar when none is).
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a poisoned lock is still usable.
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A pool of `workers` threads; the caller's thread runs task 0 of every job itself.
pub(crate) struct WorkerPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    /// Held while a job runs, so jobs never interleave.
    busy: Mutex<()>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool").field("workers", &self.handles.len()).finish()
    }
}

impl WorkerPool {
    /// Starts `workers` threads named `pith-worker-<i>`.
    pub(crate) fn new(workers: usize) -> std::io::Result<WorkerPool> {
        let shared = Arc::new(Shared::default());
        let mut pool = WorkerPool { shared, handles: Vec::with_capacity(workers), busy: Mutex::new(()) };
        for id in 1..=workers {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("pith-worker-{id}"))
                .spawn(move || work(&shared, id))?;
            // Pushed one by one: if a later spawn fails, Drop stops the ones already running.
            pool.handles.push(handle);
        }
        Ok(pool)
    }

    /// Worker threads (not counting the caller's).
    pub(crate) fn workers(&self) -> usize {
        self.handles.len()
    }

    /// Runs `f(t)` for every `t < tasks` (at most `workers() + 1`), task 0 on the caller's
    /// thread, and returns when all are done. A panic in any task is re-raised here, after every
    /// task has finished.
    pub(crate) fn run(&self, tasks: usize, f: &Task<'_>) {
        assert!(tasks <= self.workers() + 1, "{tasks} tasks for {} workers", self.workers());
        let _busy = match self.busy.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            // Another job is running (a nested or concurrent call): run this one here.
            Err(TryLockError::WouldBlock) => {
                (0..tasks).for_each(f);
                return;
            }
        };
        if tasks <= 1 {
            (0..tasks).for_each(f);
            return;
        }
        let s = &*self.shared;
        let job: *const &Task<'_> = &f;
        s.job.store(job as *mut (), Ordering::Relaxed);
        s.tasks.store(tasks, Ordering::Relaxed);
        s.pending.store(self.workers(), Ordering::Relaxed);
        // Publishes the stores above to every worker that sees the new epoch. SeqCst pairs with
        // the parking worker's SeqCst increment of `sleeping` (see `work`), so either this thread
        // sees a parked worker and notifies it, or that worker sees the new epoch.
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _g = s.lock();
            s.wake.notify_all();
        }
        let mine = panic::catch_unwind(AssertUnwindSafe(|| f(0)));
        // Wait even if task 0 panicked: workers may still be using what `f` borrows.
        let start = Instant::now();
        while s.pending.load(Ordering::Acquire) != 0 {
            if start.elapsed() < SPIN_TIME {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Err(payload) = mine {
            panic::resume_unwind(payload);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a kernel task panicked on a worker thread");
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _g = s.lock();
            s.wake.notify_all();
        }
        for handle in self.handles.drain(..) {
            // A worker only ends by returning (tasks are caught), so join cannot report a panic
            // worth propagating from a destructor.
            let _ = handle.join();
        }
    }
}

/// Worker `id`'s loop: wait for a new epoch (spinning, then parked), run task `id` if the job
/// has one, acknowledge; until shutdown.
fn work(s: &Shared, id: usize) {
    let mut seen = 0u64;
    loop {
        let idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            spins = spins.wrapping_add(1);
            // Reading the clock costs tens of nanoseconds: only every 64 spins.
            if !spins.is_multiple_of(64) || idle_since.elapsed() < SPIN_TIME {
                std::hint::spin_loop();
                continue;
            }
            let mut guard = s.lock();
            s.sleeping.fetch_add(1, Ordering::SeqCst);
            while s.epoch.load(Ordering::SeqCst) == seen {
                guard = s.wake.wait(guard).unwrap_or_else(PoisonError::into_inner);
            }
            s.sleeping.fetch_sub(1, Ordering::SeqCst);
            break;
        }
        seen = s.epoch.load(Ordering::Acquire);
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        if id < s.tasks.load(Ordering::Relaxed) {
            let job = s.job.load(Ordering::Relaxed) as *const &Task<'_>;
            // SAFETY: the caller stored a pointer to its `&Task` before bumping the epoch (which
            // this thread acquired above) and does not return, so the reference and everything
            // it borrows stay alive, until `pending` reaches 0, which needs this worker's
            // decrement below. Jobs never overlap (`busy`), so the pointer is this epoch's.
            let f: &Task<'_> = unsafe { *job };
            if panic::catch_unwind(AssertUnwindSafe(|| f(id))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn every_task_runs_once_per_job_across_many_jobs() {
        let pool = WorkerPool::new(3).unwrap();
        let counts: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
        for job in 0..2000 {
            let tasks = 1 + job % 4;
            pool.run(tasks, &|t| {
                counts[t].fetch_add(1, Ordering::Relaxed);
            });
        }
        let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(got, vec![2000, 1500, 1000, 500]);
    }

    #[test]
    fn parked_workers_wake_for_the_next_job() {
        let pool = WorkerPool::new(2).unwrap();
        for _ in 0..3 {
            // Longer than SPIN_TIME: the workers park before the job arrives.
            std::thread::sleep(SPIN_TIME * 4);
            let sum = AtomicUsize::new(0);
            pool.run(3, &|t| {
                sum.fetch_add(t + 1, Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 6);
        }
    }

    #[test]
    fn tasks_borrow_the_callers_data_and_write_disjoint_parts() {
        let pool = WorkerPool::new(2).unwrap();
        let input: Vec<u64> = (0..3000).collect();
        let parts: Vec<Mutex<u64>> = (0..3).map(|_| Mutex::new(0)).collect();
        pool.run(3, &|t| {
            *parts[t].lock().unwrap() = input[t * 1000..(t + 1) * 1000].iter().sum();
        });
        let total: u64 = parts.iter().map(|p| *p.lock().unwrap()).sum();
        assert_eq!(total, input.iter().sum::<u64>());
    }

    #[test]
    fn a_panicking_task_is_reported_after_all_finish_and_the_pool_still_works() {
        let pool = WorkerPool::new(2).unwrap();
        for bad in 0..3 {
            let finished = AtomicUsize::new(0);
            let result = panic::catch_unwind(AssertUnwindSafe(|| {
                pool.run(3, &|t| {
                    if t == bad {
                        panic!("task {t} fails");
                    }
                    finished.fetch_add(1, Ordering::Relaxed);
                })
            }));
            assert!(result.is_err(), "task {bad}'s panic must reach the caller");
            assert_eq!(finished.load(Ordering::Relaxed), 2);
        }
        let ran = AtomicUsize::new(0);
        pool.run(3, &|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn nested_and_concurrent_jobs_run_without_deadlock() {
        let pool = Arc::new(WorkerPool::new(2).unwrap());
        let inner = AtomicUsize::new(0);
        pool.run(3, &|_| {
            // The pool is busy: the nested job runs on this thread.
            pool.run(2, &|_| {
                inner.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(inner.load(Ordering::Relaxed), 6);
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let n = AtomicUsize::new(0);
                    for _ in 0..200 {
                        pool.run(3, &|_| {
                            n.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                    n.load(Ordering::Relaxed)
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 600);
        }
    }

    #[test]
    #[should_panic(expected = "tasks for")]
    fn more_tasks_than_threads_is_a_caller_bug() {
        WorkerPool::new(1).unwrap().run(3, &|_| {});
    }
}
