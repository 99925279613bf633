//! How long two threads of this process take to hand a cache line back and forth: what every
//! multi-threaded job pays to start and to finish. On the 2-vCPU Zen 5 cloud host of the
//! thirty-first session it moved between about 45 and 400 ns every few minutes (the host placing
//! the two vCPUs on cores that share a cache or not), and two-thread inference of small models
//! followed it: BlazeFace at 2 threads with every run split over them took 0.27 ms at 45-50 ns
//! and 0.59 ms at 360-390 ns, slower than one thread's 0.41 (onnxruntime likewise: 0.95 against
//! 0.64). `pith bench` prints it, measured just before timing a model on several threads, so a
//! two-thread figure comes with the state the host was in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Round trips timed (after as many untimed ones, so both threads are running).
const ROUND_TRIPS: u64 = 2000;

/// Spins before a waiting thread yields its core, so a machine with one free core (or an
/// overloaded one) still finishes, slowly, instead of spinning against a descheduled partner.
const SPINS_BEFORE_YIELD: u32 = 1 << 12;

/// Waits until `flag` holds `value`.
fn wait_for(flag: &AtomicU64, value: u64) {
    let mut spins = 0u32;
    while flag.load(Ordering::Acquire) != value {
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(SPINS_BEFORE_YIELD) {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// The mean time of [`ROUND_TRIPS`] hand-offs of one cache line between this thread and a
/// second one, in nanoseconds; `None` if the second thread cannot be started.
pub fn round_trip_ns() -> Option<f64> {
    let flag = AtomicU64::new(0);
    let total = 2 * ROUND_TRIPS;
    std::thread::scope(|scope| {
        let partner = std::thread::Builder::new()
            .name("pith-latency-probe".into())
            .spawn_scoped(scope, || {
                for i in 0..total {
                    wait_for(&flag, 2 * i + 1);
                    flag.store(2 * i + 2, Ordering::Release);
                }
            })
            .ok()?;
        let mut start = Instant::now();
        for i in 0..total {
            if i == ROUND_TRIPS {
                start = Instant::now();
            }
            flag.store(2 * i + 1, Ordering::Release);
            wait_for(&flag, 2 * i + 2);
        }
        let elapsed = start.elapsed();
        partner.join().ok()?;
        Some(elapsed.as_secs_f64() * 1e9 / ROUND_TRIPS as f64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_trip_is_timed_between_two_running_threads() {
        let ns = round_trip_ns().expect("a second thread starts");
        // Even on an overloaded machine, where each hand-off waits for a yield, well under 10 ms.
        assert!(ns.is_finite() && ns > 0.0 && ns < 1e7, "{ns}");
    }
}
