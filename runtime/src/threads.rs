//! Whether a session's runs use its worker threads or only the caller's: chosen by timing both.
//!
//! Splitting a layer over threads pays only while the threads hand work over quickly. On the
//! 2-vCPU Zen 5 cloud host Pith was benchmarked on, the time for two threads to pass a cache
//! line back and forth (`pith bench`'s `core_round_trip_ns`) moved between about 45 and 400 ns
//! every few minutes (the host placing the vCPUs on cores that share a cache, or not). In the
//! slow state, with every run split, BlazeFace took 0.59 ms on two threads against 0.41 on one
//! and MobileNetV3-Small 0.94-0.95 against 0.82-0.84 (onnxruntime likewise), while PP-OCRv4 det
//! at 320×640, whose layers are large, still ran faster on two (8.2 against 9.3 ms). A fixed
//! rule per layer cannot know which state the host is in; timing the session's own runs does:
//! tuned, the same two-thread sessions took 0.41-0.43 ms and 0.84-0.85 ms (one of three
//! MobileNetV3 sessions 0.94: its calibration chose the threads, and only its probes moved it),
//! and in the fast state 0.26-0.27 and 0.53 ms, as without tuning.
//!
//! So each plan (input-shape set) keeps a [`ThreadTuner`]: after the plan's first run it times
//! [`SAMPLES`] runs on the caller alone (after one more, not counted), then (after one run that
//! wakes the workers, not counted either) as many on the threads, then runs the faster way;
//! while threads win, one run in [`SERIAL_PROBE_EVERY`] goes serial (one in
//! [`EARLY_SERIAL_PROBE_EVERY`] over the plan's first runs, unless the threads won by a clear
//! margin: [`CLEAR_WIN_BELOW`]), and while the caller alone
//! wins, two runs in [`PARALLEL_PROBE_EVERY`] use the threads (the first wakes the parked
//! workers and is not counted), so a change of state is found within a few hundred runs. The
//! other way must take less than [`SWITCH_BELOW`] of the current one's time (the medians of the
//! last [`SAMPLES`] runs each way) to take over.
//!
//! The serial runs come first because a session's first threaded runs are slow for a reason of
//! their own: the OS places a new worker thread on its creator's core and moves it a few
//! milliseconds later. On the Zen 5 host in the fast state, MobileNetV3-Small's first threaded
//! runs took up to 0.78 ms against 0.45 once settled (serial: 0.69); timed right after the
//! plan's first run, as they were, they made 3 sessions in 10 choose the caller alone, and 20 runs
//! later those still ran serial (`pith bench --threads 2 --iters 20`: median 0.69-0.71 ms against
//! 0.48-0.51). Timed after the serial ones, the threaded samples come once the workers have
//! settled.
//!
//! Outputs do not depend on the choice beyond rounding: a few kernels cut sums by threads (a
//! 1×1 layer split by input channels adds the threads' partial sums), so the two ways may
//! differ in the last bits, as they already could when the worker pool backed off a stalled
//! worker.

use std::time::Duration;

/// Runs timed each way before the first choice, and kept each way for later ones.
pub const SAMPLES: usize = 3;

/// Runs of a plan before its first choice: the first run, [`SAMPLES`] + 1 serial ones (the
/// first not counted), one that wakes the workers and [`SAMPLES`] on the threads. A benchmark
/// that warms a session up for this many runs times the way the session settled on (and its
/// probes), not its calibration.
pub const CALIBRATION_RUNS: u64 = 2 * SAMPLES as u64 + 3;

/// While the threads are faster, one run in this many goes serial to see whether that changed.
/// The cost is one slower run in this many (BlazeFace at 2 threads: 0.14 ms / 128 per run).
pub const SERIAL_PROBE_EVERY: u64 = 128;

/// Until a plan has run [`SERIAL_PROBE_EVERY`] times, the serial probes come this often instead:
/// three runs each way decide on noisy samples (a MobileNetV3-Small session in the slow state,
/// 0.94 ms on the threads and 0.84 alone, first chose the threads, and the probes of one run in
/// 128 moved it so late that the median of its 200 timed runs stayed 0.94).
pub const EARLY_SERIAL_PROBE_EVERY: u64 = 8;

/// The early probes are left out while the threads' median time is below this share of the
/// caller's alone: a win that clear is not a noisy sample's. In the fast state of the Zen 5 host
/// the threads took 0.55-0.67 of the serial time (MobileNetV2 1.6 against 2.9 ms at 2 threads,
/// MobileNetV3-Small 0.42-0.45 against 0.67-0.69, BlazeFace 0.26 against 0.39), and one early
/// probe in 8 (a serial run of 2.98 ms among threaded ones of 1.62 for MobileNetV2, of 0.69
/// among 0.42 for MobileNetV3-Small) made a session's first 128 runs 8-10 % slower on average;
/// in the slow state the threads, when they win at all, win by less (MobileNetV2 2.61 against
/// 2.9 ms).
pub const CLEAR_WIN_BELOW: f64 = 0.75;

/// While the caller alone is faster, the threads are tried in two runs of this many.
pub const PARALLEL_PROBE_EVERY: u64 = 16;

/// The way not in use takes over when its median time is below this share of the current way's.
pub const SWITCH_BELOW: f64 = 0.9;

/// How a run uses the session's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Layers split over the worker threads as their size warrants.
    Threads,
    /// Every layer on the caller's thread.
    Serial,
}

/// The last [`SAMPLES`] run times of one way.
#[derive(Debug, Clone, Copy, Default)]
struct Recent {
    times: [Duration; SAMPLES],
    len: usize,
    next: usize,
}

impl Recent {
    fn push(&mut self, t: Duration) {
        self.times[self.next] = t;
        self.next = (self.next + 1) % SAMPLES;
        self.len = (self.len + 1).min(SAMPLES);
    }

    /// The median of the kept times, once [`SAMPLES`] are kept.
    fn median(&self) -> Option<Duration> {
        (self.len == SAMPLES).then(|| {
            let mut t = self.times;
            t.sort_unstable();
            t[SAMPLES / 2]
        })
    }
}

/// The choice between [`Way::Threads`] and [`Way::Serial`] for one plan; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct ThreadTuner {
    /// Runs started with this tuner.
    runs: u64,
    /// The way that was faster, once both were timed (threads until then).
    serial_wins: bool,
    threads: Recent,
    serial: Recent,
    /// Whether the current run's time is kept (not a first run or a waking probe).
    counted: bool,
}

impl ThreadTuner {
    /// The way to run the next run; [`ThreadTuner::record`] takes its time.
    pub fn next_way(&mut self) -> Way {
        let r = self.runs;
        self.runs += 1;
        let samples = SAMPLES as u64;
        let (way, counted) = if r == 0 {
            // The plan's first run pays for first touches of its buffers.
            (Way::Threads, false)
        } else if r == 1 {
            // The first serial run is slow too (in the slow state 0.76-0.87 ms for
            // MobileNetV3-Small against 0.67-0.70 for the next ones).
            (Way::Serial, false)
        } else if r <= samples + 1 {
            (Way::Serial, true)
        } else if r == samples + 2 {
            // The workers parked during the serial runs: this run wakes them.
            (Way::Threads, false)
        } else if r < CALIBRATION_RUNS {
            (Way::Threads, true)
        } else if self.serial_wins {
            match r % PARALLEL_PROBE_EVERY {
                // The workers have parked: the first run wakes them.
                0 => (Way::Threads, false),
                1 => (Way::Threads, true),
                _ => (Way::Serial, true),
            }
        } else if r.is_multiple_of(if r < SERIAL_PROBE_EVERY && !self.clear_win() {
            EARLY_SERIAL_PROBE_EVERY
        } else {
            SERIAL_PROBE_EVERY
        }) {
            (Way::Serial, true)
        } else {
            (Way::Threads, true)
        };
        self.counted = counted;
        way
    }

    /// Records how long the run [`ThreadTuner::next_way`] last chose took, `way` being what it chose.
    pub fn record(&mut self, way: Way, took: Duration) {
        if !std::mem::take(&mut self.counted) {
            return;
        }
        match way {
            Way::Threads => self.threads.push(took),
            Way::Serial => self.serial.push(took),
        }
        if let (Some(threads), Some(serial)) = (self.threads.median(), self.serial.median()) {
            if self.serial_wins && threads.as_secs_f64() < SWITCH_BELOW * serial.as_secs_f64() {
                self.serial_wins = false;
            } else if !self.serial_wins && serial.as_secs_f64() < SWITCH_BELOW * threads.as_secs_f64() {
                self.serial_wins = true;
            }
        }
    }

    /// Whether the threads' median time is below [`CLEAR_WIN_BELOW`] of the caller's alone.
    fn clear_win(&self) -> bool {
        match (self.threads.median(), self.serial.median()) {
            (Some(threads), Some(serial)) => threads.as_secs_f64() < CLEAR_WIN_BELOW * serial.as_secs_f64(),
            _ => false,
        }
    }

    /// Whether runs go serial now (outside probes).
    pub fn serial_wins(&self) -> bool {
        self.serial_wins
    }

    /// The way runs go now outside probes (threads until the calibration chose), without
    /// counting a run: for runs that must not probe, such as profiled ones.
    pub fn settled_way(&self) -> Way {
        if self.serial_wins {
            Way::Serial
        } else {
            Way::Threads
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` runs against a machine where threaded runs take `threads` and serial ones
    /// `serial` (µs); returns how many went serial.
    fn drive(tuner: &mut ThreadTuner, n: usize, threads: u64, serial: u64) -> usize {
        let mut serial_runs = 0;
        for _ in 0..n {
            let way = tuner.next_way();
            let us = match way {
                Way::Threads => threads,
                Way::Serial => {
                    serial_runs += 1;
                    serial
                }
            };
            tuner.record(way, Duration::from_micros(us));
        }
        serial_runs
    }

    #[test]
    fn threads_stay_while_they_are_faster_with_a_rare_serial_probe() {
        let mut t = ThreadTuner::default();
        // The calibration's serial runs, one in EARLY_SERIAL_PROBE_EVERY until run
        // SERIAL_PROBE_EVERY (the threads win, not by a clear margin), then one in
        // SERIAL_PROBE_EVERY.
        let serial = drive(&mut t, 1000, 340, 400);
        assert!(!t.serial_wins());
        let early =
            (CALIBRATION_RUNS..SERIAL_PROBE_EVERY).filter(|r| r % EARLY_SERIAL_PROBE_EVERY == 0).count();
        let late = (1000 / SERIAL_PROBE_EVERY) as usize;
        assert_eq!(serial, SAMPLES + 1 + early + late);
    }

    #[test]
    fn a_clear_win_of_the_threads_skips_the_early_probes() {
        // Threads at 0.6 of the serial time: after the calibration's 4 serial runs, the next
        // serial run is the late probe at run SERIAL_PROBE_EVERY.
        let mut t = ThreadTuner::default();
        let serial = drive(&mut t, SERIAL_PROBE_EVERY as usize, 270, 450);
        assert_eq!(serial, SAMPLES + 1);
        assert_eq!(drive(&mut t, 1, 270, 450), 1, "the late probe");
        // At 0.8 of it, the early probes run.
        let mut t = ThreadTuner::default();
        let serial = drive(&mut t, SERIAL_PROBE_EVERY as usize, 360, 450);
        let early =
            (CALIBRATION_RUNS..SERIAL_PROBE_EVERY).filter(|r| r % EARLY_SERIAL_PROBE_EVERY == 0).count();
        assert_eq!(serial, SAMPLES + 1 + early);
    }

    #[test]
    fn the_caller_alone_takes_over_when_faster_and_threads_return_when_they_recover() {
        let mut t = ThreadTuner::default();
        drive(&mut t, 10, 580, 400);
        assert!(t.serial_wins(), "decided after the calibration");
        // Serial most of the time, the threads tried twice every PARALLEL_PROBE_EVERY runs.
        let serial = drive(&mut t, 160, 580, 400);
        assert_eq!(serial, 160 - 2 * 160 / PARALLEL_PROBE_EVERY as usize);
        assert!(t.serial_wins());
        // The host recovers: within a few probes the threads are back.
        drive(&mut t, 4 * PARALLEL_PROBE_EVERY as usize, 270, 400);
        assert!(!t.serial_wins());
    }

    #[test]
    fn a_wrong_first_choice_is_corrected_by_the_early_probes() {
        let mut t = ThreadTuner::default();
        // The calibration saw serial runs slower than they are (a noisy host).
        drive(&mut t, 7, 940, 1200);
        assert!(!t.serial_wins());
        // Serial is faster: the early probes find it within a few of them.
        drive(&mut t, 3 * EARLY_SERIAL_PROBE_EVERY as usize, 940, 840);
        assert!(t.serial_wins());
    }

    #[test]
    fn threads_take_over_again_only_by_a_clear_margin() {
        let mut t = ThreadTuner::default();
        drive(&mut t, 10, 500, 400);
        assert!(t.serial_wins());
        // Threads 5 % faster than serial: within the margin, serial stays.
        drive(&mut t, 200, 380, 400);
        assert!(t.serial_wins());
    }

    #[test]
    fn first_runs_and_waking_probes_are_not_counted() {
        let mut t = ThreadTuner::default();
        // A slow first run (and slow first threaded run of each probe pair) must not tip it.
        assert_eq!(t.next_way(), Way::Threads);
        t.record(Way::Threads, Duration::from_millis(50));
        // So are the first serial run and the one that wakes the workers after the serial ones.
        assert_eq!(t.next_way(), Way::Serial);
        t.record(Way::Serial, Duration::from_millis(50));
        drive(&mut t, SAMPLES, 270, 400);
        assert_eq!(t.next_way(), Way::Threads);
        t.record(Way::Threads, Duration::from_millis(50));
        drive(&mut t, 9, 270, 400);
        assert!(!t.serial_wins());
        assert_eq!(t.threads.median(), Some(Duration::from_micros(270)));
    }

    #[test]
    fn the_calibration_times_the_caller_alone_first_then_the_threads() {
        let mut t = ThreadTuner::default();
        let ways: Vec<Way> = (0..CALIBRATION_RUNS)
            .map(|_| {
                let way = t.next_way();
                t.record(way, Duration::from_micros(300));
                way
            })
            .collect();
        let (s, th) = (Way::Serial, Way::Threads);
        assert_eq!(ways, [th, s, s, s, s, th, th, th, th]);
        assert_eq!((t.serial.len, t.threads.len), (SAMPLES, SAMPLES), "three runs are not counted");
    }

    #[test]
    fn slow_threaded_runs_at_the_start_do_not_decide_the_calibration() {
        // Threads at 450 µs once settled, serial 690; the first threaded runs after the plan's
        // first are slow (a new worker still on its creator's core). They fall on serial runs.
        let mut t = ThreadTuner::default();
        for r in 0..40u64 {
            let way = t.next_way();
            let us = match way {
                Way::Serial if r == 1 => 850,
                Way::Serial => 690,
                Way::Threads if r <= 3 => 780,
                Way::Threads => 450,
            };
            t.record(way, Duration::from_micros(us));
            if r + 1 >= CALIBRATION_RUNS {
                assert!(!t.serial_wins(), "run {r} chose the caller alone");
            }
        }
    }
}
