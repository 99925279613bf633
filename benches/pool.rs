//! What splitting a job over the session's threads costs: one job of element-wise work cut into
//! two parts (`Kernels::for_each_part`, the pool every kernel splits its work through) on a
//! 2-thread kernel set (`two-threads`), against the same work on a 1-thread one (`one-thread`,
//! the baseline: no hand-over). At 32 elements per part the work is nothing and the time is the
//! pool's hand-over and close (two cache-line trips at the least); at 8,192 (0.6-0.8 µs of work
//! per part on a 2-vCPU Zen 4: 1.14-1.60 µs for both parts on one thread) it shows what a small
//! layer gains from the second thread.
//! Run: `cargo bench -p pith-benches --bench pool`.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use pith_kernels::Kernels;

fn bench_pool(c: &mut Criterion) {
    let one = Kernels::new(1).expect("a 1-thread kernel set");
    let two = Kernels::new(2).expect("a 2-thread kernel set");
    let mut g = c.benchmark_group("pool_job");
    for per_part in [32usize, 8192] {
        let mut out = vec![1.0f32; 2 * per_part];
        for (name, kernels) in [("one-thread", &one), ("two-threads", &two)] {
            g.bench_with_input(BenchmarkId::new(name, per_part), &per_part, |b, &per_part| {
                b.iter(|| {
                    kernels.for_each_part(black_box(&mut out), per_part, |_, part| {
                        part.iter_mut().for_each(|x| *x = *x * 0.999 + 0.001);
                    })
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::quick(2.0);
    targets = bench_pool
}
criterion_main!(benches);
