//! `pith bench --gemv ROWSxCOLS --bits B`: one matrix-vector product on random packed weights,
//! against the f32 product of the same shape and a `memcpy` of the packed bytes (the memory
//! bandwidth a streaming kernel can hope for).
//!
//! The product runs as a one-node `Gemm` model (`transB = 1`, i.e. `[rows, cols]` weights, one
//! output per stored row) through [`Session`], exactly as a dense layer of a real model does; the
//! session's per-run overhead (a few microseconds) is included.

use std::fmt;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use pith_format::ir::{
    row_stride, Attr, Constant, Dim, ElemType, Graph, Model, Node, OpKind, TensorData, Value,
};
use pith_format::PithFile;
use pith_runtime::session::{Session, SessionOptions};
use pith_runtime::Tensor;

use super::synth::{random_codebook_matrix, random_f32s};
use super::{time_iters, warm_up_runs};

/// Parses `ROWSxCOLS` (both at least 1).
pub fn parse_matrix(s: &str) -> Result<(usize, usize), String> {
    let err = || format!("'{s}' is not a matrix size: use ROWSxCOLS, e.g. 4096x4096");
    let (r, c) = s.split_once('x').ok_or_else(err)?;
    match (r.parse::<usize>(), c.parse::<usize>()) {
        (Ok(r), Ok(c)) if r > 0 && c > 0 => Ok((r, c)),
        _ => Err(err()),
    }
}

/// One measurement: medians of the packed and f32 products and the `memcpy` bandwidth.
#[derive(Debug, Clone, PartialEq)]
pub struct GemvReport {
    /// Bits per weight index.
    pub bits: u8,
    /// Rows (outputs) of the weight matrix.
    pub rows: usize,
    /// Columns (inputs) of the weight matrix.
    pub cols: usize,
    /// Worker threads of the sessions.
    pub threads: usize,
    /// Whether the packed product ran on int8 activations (`--int8`).
    pub int8: bool,
    /// Packed index bytes of the weight matrix.
    pub packed_bytes: usize,
    /// Median time of the packed product, microseconds.
    pub median_us: f64,
    /// Median time of the f32 product, microseconds.
    pub f32_median_us: f64,
    /// Median time of a `memcpy` of `packed_bytes`, microseconds.
    pub memcpy_median_us: f64,
}

/// Bytes per microsecond, in GB/s.
fn gbps(bytes: usize, us: f64) -> f64 {
    bytes as f64 / us / 1e3
}

impl GemvReport {
    /// Packed weight bytes streamed per second by the packed product, GB/s.
    pub fn gbps(&self) -> f64 {
        gbps(self.packed_bytes, self.median_us)
    }

    /// Bytes per second of the `memcpy`, GB/s.
    pub fn memcpy_gbps(&self) -> f64 {
        gbps(self.packed_bytes, self.memcpy_median_us)
    }
}

impl fmt::Display for GemvReport {
    /// The one line `pith bench --gemv` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gemv bits={} rows={} cols={} threads={}{} median_us={:.1} gbps={:.2} f32_median_us={:.1} \
             speedup_vs_f32={:.2} memcpy_gbps={:.2} roofline={:.2}",
            self.bits,
            self.rows,
            self.cols,
            self.threads,
            if self.int8 { " int8" } else { "" },
            self.median_us,
            self.gbps(),
            self.f32_median_us,
            self.f32_median_us / self.median_us,
            self.memcpy_gbps(),
            self.gbps() / self.memcpy_gbps(),
        )
    }
}

/// `y[1, rows] = x[1, cols] · Wᵀ` with `W` (`[rows, cols]`) the constant `weight`.
pub fn gemv_model(weight: TensorData, rows: usize, cols: usize) -> Model {
    let value = |name: &str, dims: &[usize]| Value {
        name: name.into(),
        elem: ElemType::F32,
        shape: Some(dims.iter().map(|&d| Dim::Fixed(d as u64)).collect()),
    };
    let graph = Graph {
        values: vec![value("x", &[1, cols]), value("w", &[rows, cols]), value("y", &[1, rows])],
        nodes: vec![Node {
            name: "gemv".into(),
            op: OpKind::Gemm,
            inputs: vec![Some(0), Some(1)],
            outputs: vec![2],
            attrs: vec![("transB".into(), Attr::Int(1))],
        }],
        inputs: vec![0],
        outputs: vec![2],
    };
    Model {
        graph,
        constants: vec![Constant { value: 1, data: weight }],
        producer: "pith bench".into(),
        props: Default::default(),
    }
}

/// A planned session over [`gemv_model`] of `weight`.
fn gemv_session(weight: TensorData, rows: usize, cols: usize, options: SessionOptions) -> Result<Session> {
    let bytes = pith_format::write(&gemv_model(weight, rows, cols)).context("writing the GEMV model")?;
    let file = PithFile::from_bytes(bytes).context("reading the GEMV model back")?;
    let mut session = Session::new(Arc::new(file), options)?;
    session.plan(&[("x", vec![1, cols])])?;
    Ok(session)
}

/// Rounds the three timings are interleaved in, so a slow spell of a shared host (frequency,
/// a neighbour's memory traffic) lands on all three instead of skewing their ratios.
const ROUNDS: usize = 5;

/// Untimed runs of each measurement at the start of every round. The f32 product streams 4x the
/// packed bytes through the caches, so what runs after it starts cold: with one warm-up call (the
/// default of 20 iterations, 4 a round) the 8 MB memcpy of a 4096x4096 4-bit matrix ran at
/// 11.8 GB/s, with 100 or 400 iterations at 23.9-26.4 (Zen 3), which made `roofline` read 1.44
/// where it was 0.64-0.71.
const WARM_RUNS: usize = 3;

/// [`WARM_RUNS`] untimed calls of `f`, then [`time_iters`].
fn warm_then_time(iters: usize, f: &mut impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..WARM_RUNS {
        f()?;
    }
    time_iters(iters, warm_up_runs(iters, false), f)
}

/// Times the packed product (with `options`: threads, int8 activations), the f32 product (same
/// threads, f32 activations) and the `memcpy`: `iters` runs each after a warm-up, taken in
/// [`ROUNDS`] interleaved rounds.
pub fn measure(
    rows: usize,
    cols: usize,
    bits: u8,
    options: SessionOptions,
    iters: usize,
) -> Result<GemvReport> {
    // The product on the threads asked for, every run (not the session's faster way).
    let options = SessionOptions { tune_threads: false, ..options };
    let threads = options.threads;
    let Some(packed) = random_codebook_matrix(rows, cols, bits, 1) else {
        bail!("cannot build a {rows}x{cols} matrix at {bits} bits (bits must be 1..=8)");
    };
    let packed_bytes = rows * row_stride(cols, bits);
    let x = Tensor::from_f32(vec![1, cols], random_f32s(cols, 2));
    let feeds = [("x", x)];

    let mut packed = gemv_session(packed, rows, cols, options)?;
    let dense = TensorData::F32(random_f32s(rows * cols, 3));
    let plain = SessionOptions { threads, tune_threads: false, ..Default::default() };
    let mut dense = gemv_session(dense, rows, cols, plain)?;
    let src = vec![0x5au8; packed_bytes];
    let mut dst = vec![0u8; packed_bytes];

    let (mut packed_s, mut dense_s, mut copy_s) = (Vec::new(), Vec::new(), Vec::new());
    let per_round = iters.div_ceil(ROUNDS);
    let mut run_packed = || packed.run(&feeds).map(drop).map_err(Into::into);
    let mut run_dense = || dense.run(&feeds).map(drop).map_err(Into::into);
    let mut copy = || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        Ok(())
    };
    for _ in 0..ROUNDS {
        packed_s.extend(warm_then_time(per_round, &mut run_packed)?);
        dense_s.extend(warm_then_time(per_round, &mut run_dense)?);
        copy_s.extend(warm_then_time(per_round, &mut copy)?);
    }
    let median = |times: &mut Vec<f64>| {
        times.sort_by(f64::total_cmp);
        super::percentile(times, 0.5)
    };
    let (median_s, f32_median_s) = (median(&mut packed_s), median(&mut dense_s));

    Ok(GemvReport {
        bits,
        rows,
        cols,
        threads,
        int8: options.int8_activations,
        packed_bytes,
        median_us: median_s * 1e6,
        f32_median_us: f32_median_s * 1e6,
        memcpy_median_us: median(&mut copy_s) * 1e6,
    })
}

/// Runs the command: prints one `gemv ...` line.
pub fn run(rows: usize, cols: usize, bits: u8, options: SessionOptions, iters: usize) -> Result<()> {
    println!("{}", measure(rows, cols, bits, options, iters)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pith_format::TensorView;

    #[test]
    fn matrix_sizes_parse_and_bad_ones_are_named() {
        assert_eq!(parse_matrix("4096x1024"), Ok((4096, 1024)));
        for bad in ["4096", "0x4", "4x0", "ax4", "4x4x4", ""] {
            let err = parse_matrix(bad).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }

    #[test]
    fn random_codebook_matrix_is_valid_and_uses_every_index() {
        for bits in 1..=8u8 {
            let (rows, cols) = (37, 301);
            let data = random_codebook_matrix(rows, cols, bits, 7).unwrap();
            // The reader validates lengths and that every index is below the codebook size.
            let model = gemv_model(data, rows, cols);
            let file = PithFile::from_bytes(pith_format::write(&model).unwrap()).unwrap();
            let TensorView::Codebook(cb) = file.constant(1).unwrap() else { panic!("not a codebook") };
            assert_eq!((cb.bits, cb.rows, cb.row_len, cb.entries), (bits, rows, cols, 1 << bits));
            let mut seen = vec![false; cb.entries];
            for r in 0..rows {
                for i in 0..cols {
                    seen[pith_format::CodebookView::index_at(cb.row_indices(r), bits, i)] = true;
                }
            }
            // 11137 uniform draws miss one of <= 256 entries with negligible probability; a packing
            // bug that drops high bits would leave the upper entries unused.
            assert!(seen.iter().all(|&s| s), "bits={bits}: unused entries");
        }
        assert!(random_codebook_matrix(2, 2, 0, 1).is_none());
        assert!(random_codebook_matrix(2, 2, 9, 1).is_none());
        assert!(random_codebook_matrix(usize::MAX, 2, 8, 1).is_none());
    }

    #[test]
    fn the_session_gemv_matches_a_dense_product_of_the_decoded_rows() {
        let (rows, cols, bits) = (19, 70, 3);
        let data = random_codebook_matrix(rows, cols, bits, 5).unwrap();
        let TensorView::Codebook(cb) = data.view() else { panic!("not a codebook") };
        let x = random_f32s(cols, 6);
        let mut row = vec![0.0; cols];
        let expected: Vec<f32> = (0..rows)
            .map(|r| {
                cb.decode_row(r, &mut row);
                row.iter().zip(&x).map(|(w, v)| w * v).sum()
            })
            .collect();
        for threads in [1, 2] {
            let options = SessionOptions { threads, ..Default::default() };
            let mut session = gemv_session(data.clone(), rows, cols, options).unwrap();
            let out = session.run(&[("x", Tensor::from_f32(vec![1, cols], x.clone()))]).unwrap();
            let y = out[0].1.as_f32().unwrap();
            for (got, want) in y.iter().zip(&expected) {
                assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{got} vs {want}");
            }
        }
    }

    #[test]
    fn measure_reports_consistent_numbers() {
        let r = measure(64, 128, 4, SessionOptions { threads: 1, ..SessionOptions::default() }, 3).unwrap();
        assert_eq!(r.packed_bytes, 64 * 64);
        assert!(r.median_us > 0.0 && r.f32_median_us > 0.0 && r.memcpy_median_us > 0.0);
        let line = r.to_string();
        assert!(line.starts_with("gemv bits=4 rows=64 cols=128 threads=1 median_us="), "{line}");
        assert!(line.contains(" roofline="), "{line}");
    }
}
