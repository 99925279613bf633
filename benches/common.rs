//! Criterion settings shared by the bench targets (`mod common;` in each).

use std::time::Duration;

use criterion::Criterion;

/// Settings that keep `cargo bench -p pith-benches` to a few minutes on two cores: 10 samples,
/// a short warm-up, `secs` of measurement per benchmark, no plots.
pub fn quick(secs: f32) -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs_f32(secs))
        .without_plots()
}
