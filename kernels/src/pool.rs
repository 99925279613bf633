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
//! Tasks are claimed, not assigned: each thread first takes the unclaimed tasks of its own share
//! (a contiguous block, so a thread keeps producing the same part of the output from layer to
//! layer, which the next layer then finds in that core's cache), then those left in the other
//! shares. A worker that the OS (or a hypervisor) has not scheduled yet when a job starts does
//! not hold the job up: the others run its share, and the late worker finds the job closed. The
//! caller waits only for tasks that were actually started.
//!
//! Handing a job over and closing it cost a few cache-line trips between cores, each 60-350 ns on
//! the 2-vCPU cloud hosts Pith is measured on, and an inference makes about a hundred such jobs. So
//! the caller posts a job on one line (epoch, job, task count) and the workers report leaving it
//! on another; no per-task completion count is kept (a worker's tasks are done when it leaves), a
//! thread stops claiming in a share once it has run the share's last task, and workers do not
//! look in the caller's share when it holds one task (the caller takes it at once). A job of two
//! parts and no work (`cargo bench -p pith-benches --bench pool`, 2-vCPU Zen 4, three alternating
//! runs) took 339-395 ns against 512-966 ns with a completion count on the epoch's line.
//!
//! One job runs at a time: a second caller (another thread sharing the kernel set, or a task that
//! itself splits work) runs its tasks on its own thread instead of waiting.
//!
//! A worker that is preempted while it runs a task (another app, or a hypervisor's other guest,
//! taking its core) holds the job up for as long as the OS keeps it off the core: a scheduler
//! time slice, milliseconds, many times a small model's whole inference. With a busy loop pinned
//! to the second core of a 2-vCPU host, BlazeFace at 2 threads had a p90 of 4.7 ms against 1.1
//! at 1 thread. So the caller times each job, and when waiting for stalled workers took more
//! than a quarter of its jobs' time ([`Backoff`]), the next jobs run on the caller alone for a
//! while (8 ms, 4× longer each time it recurs, up to 1 s), and then the workers are tried again.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN_TIME: Duration = Duration::from_micros(500);

/// How much longer than its own share the caller may wait for the workers' tasks before the
/// excess counts as lost to a stall. A worker that runs gets an equal share done in about the
/// caller's time; one that the OS took off its core is gone for a time slice, milliseconds.
const STALL_SLACK: Duration = Duration::from_micros(250);
/// Job time (the caller's, from each job's start to its end) over which stalls are weighed.
const WINDOW: Duration = Duration::from_millis(20);
/// The pool backs off when stalls cost more than 1 / `STALL_SHARE` of a window's job time: about
/// what a second thread saves on a small model (BlazeFace: 0.67 ms at 2 threads, 1.05 at 1).
/// Rarer stalls cost less than giving up the workers would (a host whose other guests take the
/// second vCPU for a millisecond or so a few times a second).
const STALL_SHARE: u32 = 4;
/// The first stretch of caller-only jobs; it grows [`BACKOFF_GROWTH`] times with each back-off
/// that follows within [`RECOVERY`] of the last one's end, up to [`MAX_BACKOFF`]. Under a
/// steady competitor the back-off soon lasts a second, and few jobs stall.
const MIN_BACKOFF: Duration = Duration::from_millis(8);
/// How many times longer each back-off is than the last, while stalls keep coming.
const BACKOFF_GROWTH: u32 = 4;
/// The longest stretch of caller-only jobs.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Time after a back-off ends within which the next one grows; later ones start again from
/// [`MIN_BACKOFF`].
const RECOVERY: Duration = Duration::from_secs(1);

/// When the pool's jobs run on the caller alone, because workers stalled too many of them.
#[derive(Debug, Default)]
struct Backoff {
    /// Jobs started before this run on the caller alone.
    until: Option<Instant>,
    /// The length of the last back-off.
    last: Duration,
    /// Job time recorded in the current window, and how much of it was lost to stalls.
    window: Duration,
    lost: Duration,
}

impl Backoff {
    /// Whether a job starting at `now` runs on the caller alone.
    fn serial(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// Records a job in which the caller spent `own` on its tasks and then `waited` for the
    /// workers' ones, ending at `now`. Once the window holds [`WINDOW`] of job time, returns the
    /// back-off it starts if stalls took more than 1 / [`STALL_SHARE`] of it.
    fn record(&mut self, own: Duration, waited: Duration, now: Instant) -> Option<Duration> {
        self.window += own + waited;
        if waited > own + STALL_SLACK {
            self.lost += waited - own;
        }
        if self.window < WINDOW {
            return None;
        }
        let (window, lost) = (std::mem::take(&mut self.window), std::mem::take(&mut self.lost));
        if lost * STALL_SHARE <= window {
            return None;
        }
        let recent = self.until.is_some_and(|end| now.saturating_duration_since(end) < RECOVERY);
        let next =
            if recent { (self.last * BACKOFF_GROWTH).clamp(MIN_BACKOFF, MAX_BACKOFF) } else { MIN_BACKOFF };
        self.last = next;
        self.until = Some(now + next);
        Some(next)
    }
}

/// A job: called once with each task index, and the slot of the thread running it (0 for the
/// caller, `1..=workers` for the workers), so a task can use per-thread scratch: no two tasks run
/// on one slot at once.
type Task<'a> = dyn Fn(usize, usize) + Sync + 'a;

/// State shared by the caller and the workers.
struct Shared {
    /// What the caller publishes per job, on one cache line that the workers read.
    posted: Posted,
    /// Each thread's share of the current job's tasks (slot 0 is the caller's).
    shares: Vec<Share>,
    /// Workers inside the current job (between entering it and leaving it), on a line of its own.
    active: Counter,
    /// A worker's task panicked during the current job.
    panicked: AtomicBool,
    /// Set once, when the pool is dropped.
    shutdown: AtomicBool,
    /// Workers parked on `wake` (read by the caller to skip the condvar when none is).
    sleeping: AtomicUsize,
    /// Whether jobs are counted into the three fields below ([`WorkerPool::set_counting`]).
    counting: AtomicBool,
    /// Each thread's time in jobs' tasks, in nanoseconds (slot 0 the caller's).
    busy_ns: Vec<Counter>,
    /// Jobs counted.
    jobs: AtomicU64,
    /// The caller's time waiting for workers' tasks after its own, in nanoseconds.
    waited_ns: AtomicU64,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a poisoned lock is still usable.
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims and runs tasks of the current job `f` on `slot` until none is left, its own share
    /// first, then the others' in turn; `Err` if one panicked.
    fn run_tasks(&self, f: &Task<'_>, slot: usize) -> std::thread::Result<()> {
        let start = self.counting.load(Ordering::Relaxed).then(Instant::now);
        let result = self.claim_and_run(f, slot);
        if let (Some(start), Some(busy)) = (start, self.busy_ns.get(slot)) {
            busy.0.fetch_add(nanos(start.elapsed()), Ordering::Relaxed);
        }
        result
    }

    /// The body of [`Shared::run_tasks`].
    fn claim_and_run(&self, f: &Task<'_>, slot: usize) -> std::thread::Result<()> {
        let n = self.shares.len();
        let tasks = self.posted.tasks.load(Ordering::Relaxed);
        // The caller claims its own share as soon as it posts the job: a worker that looks at a
        // share of one task there would find it taken, at the cost of fetching its line.
        let skip_caller = slot != 0 && tasks.div_ceil(n) <= 1;
        let mut result = Ok(());
        for (i, share) in (0..n).map(|i| ((slot + i) % n, &self.shares[(slot + i) % n])) {
            if i == 0 && skip_caller {
                continue;
            }
            let end = share.end.load(Ordering::Relaxed);
            loop {
                let t = share.next.fetch_add(1, Ordering::Relaxed);
                if t >= end {
                    break;
                }
                if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(t, slot))) {
                    result = Err(payload);
                }
                // The share's last task: no claim is left to try (another thread may hold the
                // line by now, to look for one).
                if t + 1 >= end {
                    break;
                }
            }
        }
        result
    }
}

/// The caller's side of a job, on one cache line: written once when the job starts (and
/// `closed` once when all its tasks are claimed), read by every worker.
#[derive(Default)]
#[repr(align(64))]
struct Posted {
    /// Bumped once per job (and at shutdown).
    epoch: AtomicU64,
    /// The last epoch whose job is closed: every task claimed, the job pointer no longer valid
    /// for a worker that had not yet entered it.
    closed: AtomicU64,
    /// The current job: a `*const &Task` on the caller's stack, valid while the job is open and
    /// for every worker counted in `active`.
    job: AtomicPtr<()>,
    /// The current job's task count.
    tasks: AtomicUsize,
}

/// A counter on a cache line of its own, so that threads counting their own time do not slow
/// each other, and the workers' count of who is inside a job does not share the line the
/// caller posts jobs on.
#[derive(Default)]
#[repr(align(64))]
struct Counter(AtomicU64);

/// Nanoseconds of `d`, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One thread's share of a job: tasks `next..end` are unclaimed (claimed by `fetch_add` on
/// `next`, by the owner or another thread). Aligned to a cache line, so claims in one share do
/// not slow another's.
#[derive(Default)]
#[repr(align(64))]
struct Share {
    next: AtomicUsize,
    end: AtomicUsize,
}

/// Spins on `until` for [`SPIN_TIME`], then yields the thread between checks.
fn wait(until: impl Fn() -> bool) {
    let start = Instant::now();
    while !until() {
        if start.elapsed() < SPIN_TIME {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// A pool of `workers` threads; the caller's thread takes part in every job.
pub(crate) struct WorkerPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    /// Held while a job runs, so jobs never interleave; guards the stall back-off.
    busy: Mutex<Backoff>,
    /// When the pool was made: the origin of `serial_until`.
    created: Instant,
    /// The end of the current back-off, in nanoseconds after `created` (0: none yet), readable
    /// without the lock: see [`WorkerPool::backed_off`].
    serial_until: AtomicU64,
    /// Jobs run on the caller alone until this is cleared ([`WorkerPool::set_serial`]).
    serial: AtomicBool,
    /// Stalls never start a back-off ([`WorkerPool::ignore_stalls`]).
    #[cfg(test)]
    ignore_stalls: AtomicBool,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool").field("workers", &self.handles.len()).finish()
    }
}

impl WorkerPool {
    /// Starts `workers` threads named `pith-worker-<i>`.
    #[cfg(test)]
    pub(crate) fn new(workers: usize) -> std::io::Result<WorkerPool> {
        WorkerPool::on_cpus(workers, None)
    }

    /// [`WorkerPool::new`], each worker kept to those of logical CPUs `cpus` it may run on (see
    /// [`crate::affinity::pin_current_thread`]).
    pub(crate) fn on_cpus(workers: usize, cpus: Option<Arc<[usize]>>) -> std::io::Result<WorkerPool> {
        let shared = Arc::new(Shared {
            posted: Posted::default(),
            shares: (0..=workers).map(|_| Share::default()).collect(),
            active: Counter::default(),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleeping: AtomicUsize::new(0),
            counting: AtomicBool::new(false),
            busy_ns: (0..=workers).map(|_| Counter::default()).collect(),
            jobs: AtomicU64::new(0),
            waited_ns: AtomicU64::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut pool = WorkerPool {
            shared,
            handles: Vec::with_capacity(workers),
            busy: Mutex::new(Backoff::default()),
            created: Instant::now(),
            serial_until: AtomicU64::new(0),
            serial: AtomicBool::new(false),
            #[cfg(test)]
            ignore_stalls: AtomicBool::new(false),
        };
        for id in 1..=workers {
            let (shared, cpus) = (Arc::clone(&pool.shared), cpus.clone());
            let handle = std::thread::Builder::new().name(format!("pith-worker-{id}")).spawn(move || {
                if let Some(cpus) = cpus {
                    let on = crate::affinity::pin_current_thread(&cpus);
                    log::debug!("worker {id} runs on CPUs {on:?}");
                }
                work(&shared, id)
            })?;
            // Pushed one by one: if a later spawn fails, Drop stops the ones already running.
            pool.handles.push(handle);
        }
        crate::parallel::reserve_spares();
        Ok(pool)
    }

    /// Worker threads (not counting the caller's).
    pub(crate) fn workers(&self) -> usize {
        self.handles.len()
    }

    /// Backs the workers off for `pause` from now, as a stall would (tests of the callers).
    #[cfg(test)]
    pub(crate) fn back_off_for(&self, pause: Duration) {
        let until = Instant::now() + pause;
        self.busy.lock().unwrap_or_else(PoisonError::into_inner).until = Some(until);
        self.publish_back_off(until);
    }

    /// Makes a back-off that lasts `until` visible to [`WorkerPool::backed_off`].
    fn publish_back_off(&self, until: Instant) {
        let nanos = until.saturating_duration_since(self.created).as_nanos();
        self.serial_until.store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Keeps the workers on every job however long they stall it: for tests that check how a
    /// kernel splits its work, on hosts (qemu, a loaded CI runner) where stalls are common.
    #[cfg(test)]
    pub(crate) fn ignore_stalls(&self) {
        self.ignore_stalls.store(true, Ordering::Relaxed);
    }

    /// Whether stalled jobs may start a back-off: always, but in tests that turned it off.
    fn stalls_back_off(&self) -> bool {
        #[cfg(test)]
        return !self.ignore_stalls.load(Ordering::Relaxed);
        #[cfg(not(test))]
        true
    }

    /// Whether jobs run on the caller alone now, after a worker stalled one: a kernel then
    /// gains nothing from cutting its work into tasks for several threads (each costs a
    /// task's setup) and should make one.
    pub(crate) fn backed_off(&self) -> bool {
        if self.serial.load(Ordering::Relaxed) {
            return true;
        }
        let until = self.serial_until.load(Ordering::Relaxed);
        until > 0 && self.created.elapsed().as_nanos() < u128::from(until)
    }

    /// With `on`, every job runs on the caller alone (as during a back-off) until called again
    /// with `false`: for a caller that found its work faster on one thread.
    pub(crate) fn set_serial(&self, on: bool) {
        self.serial.store(on, Ordering::Relaxed);
    }

    /// Starts or stops counting the jobs that run on several threads into
    /// [`WorkerPool::take_counts`] (two clock reads per thread and job while on).
    pub(crate) fn set_counting(&self, on: bool) {
        self.shared.counting.store(on, Ordering::Relaxed);
    }

    /// What was counted since the last call, and starts again from zero.
    pub(crate) fn take_counts(&self) -> crate::ThreadWork {
        let s = &*self.shared;
        let take = |c: &AtomicU64| Duration::from_nanos(c.swap(0, Ordering::Relaxed));
        crate::ThreadWork {
            jobs: s.jobs.swap(0, Ordering::Relaxed),
            busy: s.busy_ns.iter().map(|c| take(&c.0)).collect(),
            waited: take(&s.waited_ns),
        }
    }

    /// Runs `f(t, slot)` once for every `t < tasks`, on whichever thread claims it first (the
    /// caller's included), and returns when all are done. A panic in any task is re-raised here,
    /// after every task has finished. While workers are backed off after a stall, every task
    /// runs on the caller (slot 0).
    pub(crate) fn run(&self, tasks: usize, f: &Task<'_>) {
        let mut backoff = match self.busy.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            // Another job is running (a nested or concurrent call): run this one here, where
            // it is the only job using its slots.
            Err(TryLockError::WouldBlock) => {
                (0..tasks).for_each(|t| f(t, 0));
                return;
            }
        };
        let start = Instant::now();
        if tasks <= 1 || backoff.serial(start) || self.serial.load(Ordering::Relaxed) {
            (0..tasks).for_each(|t| f(t, 0));
            return;
        }
        let s = &*self.shared;
        let job: *const &Task<'_> = &f;
        s.posted.job.store(job as *mut (), Ordering::Relaxed);
        s.posted.tasks.store(tasks, Ordering::Relaxed);
        // Contiguous shares, as even as the count allows; with fewer tasks than threads the
        // caller's is never empty.
        let n = s.shares.len();
        for (i, share) in s.shares.iter().enumerate() {
            share.next.store((i * tasks).div_ceil(n), Ordering::Relaxed);
            share.end.store(((i + 1) * tasks).div_ceil(n), Ordering::Relaxed);
        }
        // Publishes the stores above to every worker that sees the new epoch. SeqCst pairs with
        // the parking worker's SeqCst increment of `sleeping` (see `work`), so either this thread
        // sees a parked worker and notifies it, or that worker sees the new epoch.
        let epoch = s.posted.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _g = s.lock();
            s.wake.notify_all();
        }
        let mine = s.run_tasks(f, 0);
        let own_end = Instant::now();
        // Every task is claimed (this thread took what was left in every share): close the job,
        // then wait for the workers inside it to leave, which they do once their claimed tasks
        // are done (even if one of this thread's panicked: they may be using what `f` borrows).
        // SeqCst pairs with the worker's SeqCst increment of `active` and load of `closed`:
        // either this thread sees the worker inside and waits for it, or the worker sees the job
        // closed and never reads `job` (nor claims a task). The worker's release decrement
        // publishes its tasks' writes. (A worker preempted inside a job, even between claims,
        // stalls it here too.)
        s.posted.closed.store(epoch, Ordering::SeqCst);
        wait(|| s.active.0.load(Ordering::SeqCst) == 0);
        let end = Instant::now();
        if s.counting.load(Ordering::Relaxed) {
            s.jobs.fetch_add(1, Ordering::Relaxed);
            s.waited_ns.fetch_add(nanos(end - own_end), Ordering::Relaxed);
        }
        let pause = self.stalls_back_off().then(|| backoff.record(own_end - start, end - own_end, end));
        if let Some(pause) = pause.flatten() {
            self.publish_back_off(end + pause);
            log::debug!(
                "workers stalled jobs (the last one waited {:?}, the caller's share took {:?}): caller-only jobs for {pause:?}",
                end - own_end,
                own_end - start
            );
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
        s.posted.epoch.fetch_add(1, Ordering::SeqCst);
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

/// Worker `slot`'s loop: wait for a new epoch (spinning, then parked), take tasks of its job
/// while it is open; until shutdown.
fn work(s: &Shared, slot: usize) {
    crate::parallel::reserve_spares();
    let mut seen = 0u64;
    // A new worker parks at once: no job is near while the session is still being built, and a
    // thread the OS first places on its creator's core would spin there, taking that core from
    // the session's setup until it is moved (0.5 ms more to load BlazeFace at 2 threads, one
    // run in two).
    let mut started = false;
    loop {
        let idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.posted.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            spins = spins.wrapping_add(1);
            // Reading the clock costs tens of nanoseconds: only every 64 spins.
            if started && (!spins.is_multiple_of(64) || idle_since.elapsed() < SPIN_TIME) {
                std::hint::spin_loop();
                continue;
            }
            let mut guard = s.lock();
            s.sleeping.fetch_add(1, Ordering::SeqCst);
            while s.posted.epoch.load(Ordering::SeqCst) == seen {
                guard = s.wake.wait(guard).unwrap_or_else(PoisonError::into_inner);
            }
            s.sleeping.fetch_sub(1, Ordering::SeqCst);
            break;
        }
        seen = s.posted.epoch.load(Ordering::Acquire);
        started = true;
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        s.active.0.fetch_add(1, Ordering::SeqCst);
        // Epochs only grow: a job closed at or after `seen` may already be gone, and so may a
        // later job's pointer in `job`.
        if s.posted.closed.load(Ordering::SeqCst) < seen {
            let job = s.posted.job.load(Ordering::Relaxed) as *const &Task<'_>;
            // SAFETY: job `seen` was not closed after this worker entered `active` (the SeqCst
            // pair with the caller's store of `closed`), so its caller is still waiting for
            // `active` to reach 0 and cannot have started a later job (jobs never overlap:
            // `busy`): `job` holds job `seen`'s pointer (stored before its epoch was bumped, which
            // this thread acquired), and the `&Task` and everything it borrows stay alive until
            // this worker's decrement below.
            let f: &Task<'_> = unsafe { *job };
            if s.run_tasks(f, slot).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.active.0.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn workers_run_on_the_cpus_they_are_given_and_the_caller_keeps_its_own() {
        let caller = crate::affinity::current_thread_cpus().unwrap();
        let last = *caller.last().unwrap();
        let pool = WorkerPool::on_cpus(2, Some(vec![last].into())).unwrap();
        pool.ignore_stalls();
        let seen = Mutex::new(Vec::new());
        let task = |_: usize, slot: usize| {
            let start = Instant::now();
            while start.elapsed() < Duration::from_micros(200) {
                std::hint::spin_loop();
            }
            seen.lock().unwrap().push((slot, crate::affinity::current_thread_cpus().unwrap()));
        };
        (0..50).for_each(|_| pool.run(3, &task));
        let seen = seen.into_inner().unwrap();
        assert!(seen.iter().any(|(slot, _)| *slot != 0), "no worker took a task");
        for (slot, cpus) in seen {
            let want = if slot == 0 { caller.clone() } else { vec![last] };
            assert_eq!(cpus, want, "slot {slot}");
        }
    }

    #[test]
    fn every_task_runs_once_per_job_across_many_jobs() {
        let pool = WorkerPool::new(3).unwrap();
        let counts: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
        for job in 0..2000 {
            let tasks = 1 + job % 4;
            pool.run(tasks, &|t, _| {
                counts[t].fetch_add(1, Ordering::Relaxed);
            });
        }
        let got: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(got, vec![2000, 1500, 1000, 500]);
    }

    #[test]
    fn counted_jobs_add_up_each_threads_task_time_and_start_again_when_taken() {
        let pool = WorkerPool::new(1).unwrap();
        pool.ignore_stalls();
        let task = Duration::from_micros(50);
        let spin = |_: usize, _: usize| {
            let start = Instant::now();
            while start.elapsed() < task {
                std::hint::spin_loop();
            }
        };
        // Not counting: nothing is recorded.
        (0..5).for_each(|_| pool.run(2, &spin));
        assert_eq!(
            pool.take_counts(),
            crate::ThreadWork { busy: vec![Duration::ZERO; 2], ..Default::default() }
        );
        pool.set_counting(true);
        (0..20).for_each(|_| pool.run(4, &spin));
        // A job of one task runs on the caller alone and is not a shared job.
        (0..7).for_each(|_| pool.run(1, &spin));
        let work = pool.take_counts();
        assert_eq!((work.jobs, work.busy.len()), (20, 2));
        // Every task spun at least `task`, on whichever thread claimed it.
        let busy: Duration = work.busy.iter().sum();
        assert!(busy >= task * 80, "{work:?}");
        assert_eq!(pool.take_counts().jobs, 0, "taking starts again from zero");
        pool.set_counting(false);
        pool.run(2, &spin);
        assert_eq!(pool.take_counts().jobs, 0);
    }

    #[test]
    fn a_serial_pool_runs_every_task_on_the_caller_until_released() {
        let pool = WorkerPool::new(2).unwrap();
        let slots: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        pool.set_serial(true);
        assert!(pool.backed_off());
        for _ in 0..50 {
            pool.run(6, &|_, slot| {
                slots[slot].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(slots[0].load(Ordering::Relaxed), 300);
        pool.set_serial(false);
        assert!(!pool.backed_off());
        let sum = AtomicUsize::new(0);
        pool.run(6, &|t, _| {
            sum.fetch_add(t, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 15);
    }

    #[test]
    fn parked_workers_wake_for_the_next_job() {
        let pool = WorkerPool::new(2).unwrap();
        for _ in 0..3 {
            // Longer than SPIN_TIME: the workers park before the job arrives.
            std::thread::sleep(SPIN_TIME * 4);
            let sum = AtomicUsize::new(0);
            pool.run(3, &|t, _| {
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
        pool.run(3, &|t, _| {
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
                pool.run(3, &|t, _| {
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
        pool.run(3, &|_, _| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn nested_and_concurrent_jobs_run_without_deadlock() {
        let pool = Arc::new(WorkerPool::new(2).unwrap());
        let inner = AtomicUsize::new(0);
        pool.run(3, &|_, _| {
            // The pool is busy: the nested job runs on this thread.
            pool.run(2, &|_, _| {
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
                        pool.run(3, &|_, _| {
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
    fn stalls_that_cost_a_quarter_of_the_job_time_back_off_longer_while_they_recur() {
        let (ms, us) = (Duration::from_millis, Duration::from_micros);
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert!(!b.serial(t0));
        // Jobs of 1 ms with short waits: never a back-off.
        for _ in 0..100 {
            assert_eq!(b.record(ms(1), us(200), t0), None);
        }
        assert!(!b.serial(t0));
        // One 3 ms stall in a window of 20 ms of job time costs less than a quarter: no back-off.
        let mut b = Backoff::default();
        assert_eq!(b.record(ms(1), ms(4), t0), None);
        for _ in 0..15 {
            assert_eq!(b.record(ms(1), us(10), t0), None);
        }
        assert_eq!(b.window, Duration::ZERO, "the window closed");
        // Two in the next window cost more: a back-off.
        let mut now = t0;
        let stalled_window = |b: &mut Backoff, now: Instant| {
            assert_eq!(b.record(ms(1), ms(4), now), None);
            assert_eq!(b.record(ms(1), ms(4), now), None);
            (0..10).map(|_| b.record(ms(1), us(10), now)).find_map(|r| r)
        };
        assert_eq!(stalled_window(&mut b, now), Some(MIN_BACKOFF));
        assert!(b.serial(now + MIN_BACKOFF - ms(1)));
        assert!(!b.serial(now + MIN_BACKOFF));
        // Back-offs that recur within a second of the last one's end grow, up to the cap.
        let mut want = MIN_BACKOFF;
        for _ in 0..8 {
            now += want + RECOVERY - ms(1);
            want = (want * BACKOFF_GROWTH).min(MAX_BACKOFF);
            assert_eq!(stalled_window(&mut b, now), Some(want));
        }
        assert_eq!(want, MAX_BACKOFF);
        // After a stall-free second the next one starts over.
        now += MAX_BACKOFF + RECOVERY;
        assert_eq!(stalled_window(&mut b, now), Some(MIN_BACKOFF));
    }

    /// Runs jobs of two tasks until a worker takes one (false if none did in 200 jobs). The
    /// worker's task sleeps `worker_sleep`; the caller's 200 µs, long enough for a spinning
    /// worker to claim the other (a parked one may wake after the caller took both).
    fn a_worker_runs_a_task(pool: &WorkerPool, worker_sleep: Duration) -> bool {
        (0..200).any(|_| {
            let on_worker = AtomicBool::new(false);
            pool.run(2, &|_, slot| {
                if slot == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                } else {
                    on_worker.store(true, Ordering::Relaxed);
                    std::thread::sleep(worker_sleep);
                }
            });
            on_worker.load(Ordering::Relaxed)
        })
    }

    #[test]
    fn a_worker_that_stalls_a_job_sends_the_next_ones_to_the_caller_until_the_back_off_ends() {
        let pool = WorkerPool::new(1).unwrap();
        // A task that sleeps on the worker stands in for a preempted worker.
        assert!(a_worker_runs_a_task(&pool, Duration::from_millis(20)), "the worker never took a task");
        assert!(
            pool.busy.lock().unwrap().until.is_some(),
            "a 20 ms wait for the worker, its whole window, must start a back-off"
        );
        assert!(pool.serial_until.load(Ordering::Relaxed) > 0, "the back-off is not published");
        // Backed off (made long here, so the check does not race the clock): caller only.
        pool.back_off_for(Duration::from_secs(60));
        assert!(pool.backed_off());
        for _ in 0..50 {
            let ran = AtomicUsize::new(0);
            pool.run(4, &|_, slot| {
                assert_eq!(slot, 0, "a backed-off pool ran a task on a worker");
                ran.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(ran.load(Ordering::Relaxed), 4);
        }
        // Once the back-off is over, the worker takes tasks again.
        pool.back_off_for(Duration::ZERO);
        assert!(!pool.backed_off());
        assert!(
            a_worker_runs_a_task(&pool, Duration::ZERO),
            "the worker never took a task after the back-off"
        );
    }

    #[test]
    fn a_pool_that_ignores_stalls_keeps_its_workers_after_one() {
        // What the kernel tests' sets rely on: their split choices must not depend on the host.
        let pool = WorkerPool::new(1).unwrap();
        pool.ignore_stalls();
        assert!(a_worker_runs_a_task(&pool, Duration::from_millis(20)), "the worker never took a task");
        assert!(pool.busy.lock().unwrap().until.is_none(), "a stall started a back-off");
        assert!(!pool.backed_off());
    }

    #[test]
    fn more_tasks_than_threads_each_run_once_with_one_slot_per_thread_at_a_time() {
        let pool = WorkerPool::new(2).unwrap();
        let in_use: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for tasks in [2, 5, 17] {
            let ran: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..200 {
                pool.run(tasks, &|t, slot| {
                    assert_eq!(in_use[slot].fetch_add(1, Ordering::SeqCst), 0, "slot {slot} shared");
                    ran[t].fetch_add(1, Ordering::Relaxed);
                    std::hint::black_box((0..200 * (t % 3)).sum::<usize>());
                    in_use[slot].fetch_sub(1, Ordering::SeqCst);
                });
            }
            assert!(ran.iter().all(|r| r.load(Ordering::Relaxed) == 200), "{tasks} tasks");
        }
    }
}
