//! Which logical CPUs a thread runs on: the worker pool keeps its threads on a chosen set (a
//! phone's fast cores) where the OS lets a thread choose (Linux and Android).
//!
//! A thread only ever narrows the CPUs it may use here: the set it is given is intersected with
//! the CPUs it may already run on (a `taskset`, a cgroup's cpuset), so a pool never escapes
//! limits its process was started under. Where the intersection is empty, the thread keeps its
//! CPUs.

/// The logical CPUs the calling thread may run on, in ascending order; `None` where the OS has
/// no per-thread affinity or does not say.
pub fn current_thread_cpus() -> Option<Vec<usize>> {
    imp::current()
}

/// Restricts the calling thread to those of `cpus` it may already run on, and returns the CPUs
/// it may run on afterwards (unchanged when none of `cpus` is among them); `None` where the OS
/// has no per-thread affinity or refused.
pub fn pin_current_thread(cpus: &[usize]) -> Option<Vec<usize>> {
    let allowed = imp::current()?;
    let pinned: Vec<usize> = allowed.iter().copied().filter(|c| cpus.contains(c)).collect();
    if pinned.is_empty() || pinned == allowed {
        return Some(allowed);
    }
    imp::set(&pinned)?;
    imp::current()
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    /// CPUs a `cpu_set_t` can name (1024 on glibc, musl and bionic).
    fn capacity() -> usize {
        8 * std::mem::size_of::<libc::cpu_set_t>()
    }

    pub(super) fn current() -> Option<Vec<usize>> {
        // SAFETY: `cpu_set_t` is plain bits, valid when zeroed; `sched_getaffinity` writes at
        // most `size_of::<cpu_set_t>()` bytes into `set`, which lives for the call, and reads
        // nothing else. Pid 0 is the calling thread.
        let set = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return None;
            }
            set
        };
        // SAFETY: `CPU_ISSET` reads bit `c` of `set`, and `c` is below the set's capacity.
        Some((0..capacity()).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
    }

    pub(super) fn set(cpus: &[usize]) -> Option<()> {
        // SAFETY: as in `current`; `CPU_SET` writes bit `c` of `set` for the `c` below its
        // capacity (others are skipped), and `sched_setaffinity` reads
        // `size_of::<cpu_set_t>()` bytes of `set` and changes only the calling thread's mask.
        let done = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in cpus.iter().filter(|&&c| c < capacity()) {
                libc::CPU_SET(c, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        (done == 0).then_some(())
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    // macOS and iOS place threads by quality of service, not by CPU; Windows is not a target.
    pub(super) fn current() -> Option<Vec<usize>> {
        None
    }

    pub(super) fn set(_cpus: &[usize]) -> Option<()> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_thread_narrows_its_cpus_and_never_widens_them() {
        std::thread::spawn(|| {
            let allowed = current_thread_cpus().expect("Linux reports a thread's CPUs");
            assert!(!allowed.is_empty());
            // CPUs the thread may not use are left out; with none of its own the set stays.
            let outside = 1 + allowed.iter().max().unwrap();
            assert_eq!(pin_current_thread(&[outside]), Some(allowed.clone()));
            assert_eq!(current_thread_cpus(), Some(allowed.clone()));
            // Narrowed to its last CPU (and one it may not use), it runs there only.
            let last = *allowed.last().unwrap();
            assert_eq!(pin_current_thread(&[last, outside]), Some(vec![last]));
            assert_eq!(current_thread_cpus(), Some(vec![last]));
            // Asked for all of them again, it cannot widen its set.
            assert_eq!(pin_current_thread(&allowed), Some(vec![last]));
        })
        .join()
        .unwrap();
    }
}
