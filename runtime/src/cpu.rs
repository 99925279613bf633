//! The default thread count: the fast physical cores this process may use.
//!
//! Two hardware threads of one core share its FMA units, so on SMT machines (most x86 desktops
//! and servers) running a thread per logical CPU adds contention, not multiply-adds; onnxruntime
//! defaults to physical cores for the same reason.
//!
//! Phones mix cores of two or three speeds (Arm big.LITTLE / DynamIQ: say one Cortex-X, three
//! Cortex-A7xx and four Cortex-A5xx), as do Intel's hybrid desktops (P- and E-cores). A layer
//! split evenly over all of them waits for its part on the slowest core, so a session that used
//! every core would run slower than one on the fast cores alone; ncnn and MNN default to the big
//! cores for this reason. Where Linux (and Android) describe the cores' speeds in sysfs, the
//! default counts only the fast ones, told apart as ncnn tells them: a core is slow when its
//! speed is below the middle of the slowest and the fastest core's speeds. A session's worker
//! threads are then kept to those cores ([`crate::SessionOptions::pin_fast_cores`]).

use std::collections::BTreeSet;
use std::path::Path;

/// Fast physical cores this process may use: the machine's physical cores (`num_cpus`), at most
/// the CPUs the scheduler gives the process (affinity mask, cgroup quota) and, on machines whose
/// cores run at two or more speeds, at most the fast ones ([`fast_cores`]); at least 1. Worked
/// out once per process (it reads `/proc` and `/sys` on Linux; every `SessionOptions::default()`
/// asks).
pub fn default_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        let allowed = std::thread::available_parallelism().map_or(1, |n| n.get());
        let fast = this_machines_fast_cores().map(|f| f.cores);
        let threads = threads_for(num_cpus::get_physical(), allowed, fast);
        log::debug!(
            "default threads {threads}: {} physical cores, {allowed} CPUs allowed, fast cores {fast:?}",
            num_cpus::get_physical()
        );
        threads
    })
}

/// Where Linux describes the CPUs.
const SYSFS_CPUS: &str = "/sys/devices/system/cpu";

/// [`default_threads`] from its counts (`fast`: `None` when the cores do not differ in speed or
/// the system does not say).
fn threads_for(physical: usize, allowed: usize, fast: Option<usize>) -> usize {
    physical.min(allowed).min(fast.unwrap_or(usize::MAX)).max(1)
}

/// What sysfs says of one logical CPU.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct CpuSpeed {
    /// `N` of its `cpuN` directory: the id the OS schedules it by.
    id: usize,
    /// `cpu_capacity`: the scheduler's relative speed of the core at its top frequency (1024 for
    /// the fastest; arm64 derives it from the device tree's per-core DMIPS/MHz, so it tells an
    /// in-order little core from an out-of-order big one even at a similar clock).
    capacity: Option<u64>,
    /// `cpufreq/cpuinfo_max_freq`, kHz.
    max_freq_khz: Option<u64>,
    /// `topology/thread_siblings_list`: the logical CPUs of its physical core ("0,8", "0-1"), the
    /// same string for each; `None` when not given (each logical CPU then counts as a core).
    core: Option<String>,
}

/// Physical cores of the faster kind, when the CPUs under `root` (Linux's
/// `/sys/devices/system/cpu`) report speeds that differ; `None` when every reporting core runs at
/// the same speed, or fewer than two report one (virtual machines often report none). The
/// speed is `cpu_capacity` where at least two CPUs have it, else the top frequency; a core is
/// slow when its speed is below the middle of the slowest and fastest (ncnn's rule). CPUs that
/// report no speed (offline ones) are left out.
pub fn fast_cores(root: &Path) -> Option<usize> {
    let all = read_cpus(root);
    let cpus = fast_logical_cpus(&all)?;
    let cores: BTreeSet<String> =
        cpus.iter().map(|c| c.core.clone().unwrap_or_else(|| format!("cpu{}", c.id))).collect();
    Some(cores.len())
}

/// The logical CPUs (ids as the OS numbers them, ascending) of the cores [`fast_cores`] counts:
/// every hardware thread of each fast core; `None` where it gives `None`.
pub fn fast_cpus(root: &Path) -> Option<Vec<usize>> {
    let all = read_cpus(root);
    let mut ids: Vec<usize> = fast_logical_cpus(&all)?.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    Some(ids)
}

/// This machine's fast cores, when its cores run at several speeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastCores {
    /// Physical cores ([`fast_cores`]).
    pub cores: usize,
    /// Their logical CPUs ([`fast_cpus`]).
    pub cpus: Vec<usize>,
}

/// [`FastCores`] of this machine, read from sysfs once per process; `None` where [`fast_cores`]
/// gives `None`.
pub fn this_machines_fast_cores() -> Option<&'static FastCores> {
    static FAST: std::sync::OnceLock<Option<FastCores>> = std::sync::OnceLock::new();
    FAST.get_or_init(|| {
        let root = Path::new(SYSFS_CPUS);
        Some(FastCores { cores: fast_cores(root)?, cpus: fast_cpus(root)? })
    })
    .as_ref()
}

/// The logical CPUs of the faster kind among `cpus`, by [`fast_cores`]' rule.
fn fast_logical_cpus(cpus: &[CpuSpeed]) -> Option<Vec<&CpuSpeed>> {
    let reported = |speed: fn(&CpuSpeed) -> Option<u64>| -> Vec<(u64, &CpuSpeed)> {
        cpus.iter().filter_map(|c| speed(c).map(|s| (s, c))).collect()
    };
    let mut speeds = reported(|c| c.capacity);
    if speeds.len() < 2 {
        speeds = reported(|c| c.max_freq_khz);
    }
    let slowest = speeds.iter().map(|&(s, _)| s).min()?;
    let fastest = speeds.iter().map(|&(s, _)| s).max()?;
    let middle = slowest + (fastest - slowest) / 2;
    if speeds.len() < 2 || middle == fastest {
        return None;
    }
    Some(speeds.into_iter().filter(|&(s, _)| s >= middle).map(|(_, c)| c).collect())
}

/// Every `cpu<N>` directory under `root`, in no particular order (an unreadable or missing
/// `root` gives none).
fn read_cpus(root: &Path) -> Vec<CpuSpeed> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let id = name.to_str()?.strip_prefix("cpu")?;
            let id = id.bytes().all(|b| b.is_ascii_digit()).then(|| id.parse::<usize>().ok())??;
            let dir = e.path();
            let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok().map(|s| s.trim().to_owned());
            let number = |file: &str| read(file).and_then(|s| s.parse::<u64>().ok()).filter(|&n| n > 0);
            Some(CpuSpeed {
                id,
                capacity: number("cpu_capacity"),
                max_freq_khz: number("cpufreq/cpuinfo_max_freq"),
                core: read("topology/thread_siblings_list").filter(|s| !s.is_empty()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn physical_cores_bounded_by_what_the_process_may_use() {
        assert_eq!(threads_for(8, 16, None), 8, "SMT: one thread per core");
        assert_eq!(threads_for(32, 2, None), 2, "a container's quota or affinity mask");
        assert_eq!(threads_for(8, 8, Some(4)), 4, "big.LITTLE: the big cores");
        assert_eq!(threads_for(8, 2, Some(4)), 2, "a phone app confined to two CPUs");
        assert_eq!(threads_for(0, 4, None), 1);
        assert_eq!(threads_for(4, 0, Some(0)), 1);
        let n = default_threads();
        assert!(n >= 1 && n <= std::thread::available_parallelism().map_or(1, |n| n.get()));
    }

    /// A fake `/sys/devices/system/cpu`: per CPU its capacity, top frequency (kHz) and siblings
    /// list, each written only when given.
    struct FakeSysfs(PathBuf);

    impl FakeSysfs {
        fn new(name: &str, cpus: &[(Option<u64>, Option<u64>, Option<&str>)]) -> FakeSysfs {
            let root = std::env::temp_dir().join(format!("pith-cpu-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            for (i, &(capacity, freq, siblings)) in cpus.iter().enumerate() {
                let dir = root.join(format!("cpu{i}"));
                std::fs::create_dir_all(dir.join("cpufreq")).unwrap();
                std::fs::create_dir_all(dir.join("topology")).unwrap();
                if let Some(c) = capacity {
                    std::fs::write(dir.join("cpu_capacity"), format!("{c}\n")).unwrap();
                }
                if let Some(f) = freq {
                    std::fs::write(dir.join("cpufreq/cpuinfo_max_freq"), format!("{f}\n")).unwrap();
                }
                if let Some(s) = siblings {
                    std::fs::write(dir.join("topology/thread_siblings_list"), format!("{s}\n")).unwrap();
                }
            }
            // Entries that are not CPUs.
            std::fs::create_dir_all(root.join("cpufreq")).unwrap();
            std::fs::create_dir_all(root.join("cpuidle")).unwrap();
            std::fs::write(root.join("online"), format!("0-{}\n", cpus.len().saturating_sub(1))).unwrap();
            FakeSysfs(root)
        }
    }

    impl Drop for FakeSysfs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn phones_count_their_big_cores() {
        // Snapdragon 810: four Cortex-A57 at 2.0 GHz, four Cortex-A53 at 1.55 GHz; frequencies only.
        let a53 = (None, Some(1_555_200), None);
        let a57 = (None, Some(1_958_400), None);
        let sd810 = FakeSysfs::new("sd810", &[a53, a53, a53, a53, a57, a57, a57, a57]);
        assert_eq!(fast_cores(&sd810.0), Some(4));
        assert_eq!(fast_cpus(&sd810.0), Some(vec![4, 5, 6, 7]));
        // A DynamIQ phone (Snapdragon 8 Gen 2: one X3, four A715/A710, three A510) with the
        // scheduler's capacities: the prime and big cores are fast.
        let (x3, a7xx, a510) = (
            (Some(1024), Some(3_187_200), Some("7")),
            (Some(870), Some(2_803_200), None),
            (Some(325), Some(2_016_000), None),
        );
        let phone = FakeSysfs::new("sd8g2", &[a510, a510, a510, a7xx, a7xx, a7xx, a7xx, x3]);
        assert_eq!(fast_cores(&phone.0), Some(5));
        assert_eq!(fast_cpus(&phone.0), Some(vec![3, 4, 5, 6, 7]));
        // A middle kind slower than the middle of the range (two Cortex-X1 at 1024, two A76 at
        // 480, four A55 at 250): only the fastest kind splits a layer evenly with itself.
        let (x1, a76, a55) = ((Some(1024), None, None), (Some(480), None, None), (Some(250), None, None));
        let three = FakeSysfs::new("three", &[a55, a55, a55, a55, a76, a76, x1, x1]);
        assert_eq!(fast_cores(&three.0), Some(2));
        assert_eq!(fast_cpus(&three.0), Some(vec![6, 7]));
        // Little cores clocked as high as the big ones (two Cortex-A76 and six A55, all at
        // 2.0 GHz): the capacities tell them apart, the clocks would not.
        let (big, little) = ((Some(1024), Some(2_000_000), None), (Some(400), Some(2_000_000), None));
        let close = FakeSysfs::new("close", &[little, little, little, little, little, little, big, big]);
        assert_eq!(fast_cores(&close.0), Some(2));
    }

    #[test]
    fn hybrid_desktops_count_physical_p_cores() {
        // Two P-cores with two threads each at 5.0 GHz, four E-cores at 3.8 GHz.
        let p = |s: &'static str| (None, Some(5_000_000), Some(s));
        let e = |s: &'static str| (None, Some(3_800_000), Some(s));
        let cpus = [p("0-1"), p("0-1"), p("2-3"), p("2-3"), e("4"), e("5"), e("6"), e("7")];
        let hybrid = FakeSysfs::new("hybrid", &cpus);
        assert_eq!(fast_cores(&hybrid.0), Some(2));
        // Every hardware thread of the P-cores.
        assert_eq!(fast_cpus(&hybrid.0), Some(vec![0, 1, 2, 3]));
    }

    #[test]
    fn uniform_or_silent_cores_leave_the_count_alone() {
        let same = (Some(1024), Some(3_000_000), None);
        let uniform = FakeSysfs::new("uniform", &[same; 4]);
        assert_eq!(fast_cores(&uniform.0), None);
        assert_eq!(fast_cpus(&uniform.0), None);
        // A cloud VM: no capacity, no cpufreq.
        let silent = FakeSysfs::new("silent", &[(None, None, Some("0")), (None, None, Some("1"))]);
        assert_eq!(fast_cores(&silent.0), None);
        // One CPU reporting a speed is no comparison; offline CPUs (reporting none) are left out.
        let one = FakeSysfs::new("one", &[(None, Some(2_000_000), None), (None, None, None)]);
        assert_eq!(fast_cores(&one.0), None);
        let offline = FakeSysfs::new(
            "offline",
            &[(None, Some(1_000_000), None), (None, None, None), (None, Some(2_000_000), None)],
        );
        assert_eq!(fast_cores(&offline.0), Some(1));
        assert_eq!(fast_cpus(&offline.0), Some(vec![2]));
        assert_eq!(fast_cores(Path::new("/nonexistent/pith/cpus")), None);
        // Garbage in a file reads as no speed.
        let odd = FakeSysfs::new("odd", &[(None, Some(2_000_000), None), (None, Some(1_000_000), None)]);
        std::fs::write(odd.0.join("cpu1/cpufreq/cpuinfo_max_freq"), "fast\n").unwrap();
        assert_eq!(fast_cores(&odd.0), None);
    }
}
