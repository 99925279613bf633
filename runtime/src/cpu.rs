//! The default thread count: the physical cores this process may use.
//!
//! Two hardware threads of one core share its FMA units, so on SMT machines (most x86 desktops
//! and servers) running a thread per logical CPU adds contention, not multiply-adds; onnxruntime
//! defaults to physical cores for the same reason.

/// Physical cores this process may use: the machine's physical cores (`num_cpus`), at most the
/// CPUs the scheduler gives the process (affinity mask, cgroup quota), at least 1. Worked out
/// once per process (it reads `/proc` on Linux; every `SessionOptions::default()` asks).
pub fn default_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        let allowed = std::thread::available_parallelism().map_or(1, |n| n.get());
        threads_for(num_cpus::get_physical(), allowed)
    })
}

/// [`default_threads`] from its two counts.
fn threads_for(physical: usize, allowed: usize) -> usize {
    physical.min(allowed).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_cores_bounded_by_what_the_process_may_use() {
        assert_eq!(threads_for(8, 16), 8, "SMT: one thread per core");
        assert_eq!(threads_for(32, 2), 2, "a container's quota or affinity mask");
        assert_eq!(threads_for(0, 4), 1);
        assert_eq!(threads_for(4, 0), 1);
        let n = default_threads();
        assert!(n >= 1 && n <= std::thread::available_parallelism().map_or(1, |n| n.get()));
    }
}
