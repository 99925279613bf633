//! Huffman-coded codebook indices (`--entropy huffman`): what they save and what they cost at load.
//!
//! Setup (not timed) compresses the bundled BlazeFace and PP-OCRv4 det at 8, 4 and 3 bits, writes
//! each with and without [`Entropy::Huffman`] and prints one `huffman-size` line per pair (file
//! bytes, and index bytes packed vs coded). For the 4-bit models it then prints `huffman-decode`:
//! the best and the median over 50 opens of the decode time alone ([`PithFile::entropy_stats`])
//! and the MB/s of decoded packed indices (on a shared machine the best is the CPU-bound figure).
//! Criterion times `PithFile::open` (mmap + full validation, + decoding for the Huffman file) of
//! both 4-bit files; its throughput is the decoded index bytes.
//! Run: `cargo bench -p pith-benches --bench huffman`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pith_benches::model_path;
use pith_compress::{compress_onnx, CompressOptions, WeightFormat};
use pith_format::ir::{Model, TensorData};
use pith_format::{write, write_with, Entropy, PithFile, WriteOptions};

const MODELS: [(&str, &str); 2] =
    [("blazeface", "blazeface_short_range.onnx"), ("ppocr_det", "ppocr_v4_det.onnx")];

fn compressed(file: &str, bits: u8) -> Model {
    let path = model_path(file);
    let onnx = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    compress_onnx(&onnx, &CompressOptions { weights: WeightFormat::Codebook { bits } })
        .unwrap_or_else(|e| panic!("compressing {file}: {e}"))
        .model
}

/// Packed index bytes of every codebook constant.
fn index_bytes(m: &Model) -> usize {
    m.constants
        .iter()
        .map(|c| match &c.data {
            TensorData::Codebook(cb) => cb.indices.len(),
            _ => 0,
        })
        .sum()
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("pith-bench-{}-{name}.pith", std::process::id()));
    std::fs::write(&path, bytes).expect("writing a temp file");
    path
}

fn bench_huffman(c: &mut Criterion) {
    let huffman = WriteOptions { entropy: Entropy::Huffman, compact: false };
    for (name, file) in MODELS {
        for bits in [8u8, 4, 3] {
            let m = compressed(file, bits);
            let plain = write(&m).expect("writing a compressed model");
            let coded = write_with(&m, &huffman).expect("writing a compressed model");
            let f = PithFile::from_bytes(coded.clone()).expect("reading back");
            let s = f.entropy_stats();
            let packed_idx = index_bytes(&m);
            // Indices as stored: Huffman blobs plus the tensors left packed.
            let stored_idx = packed_idx - s.decoded_bytes + s.coded_bytes;
            let tensors = m.constants.iter().filter(|c| matches!(c.data, TensorData::Codebook(_))).count();
            println!(
                "huffman-size model={name} bits={bits} file_packed={} file_huffman={} file_ratio={:.3} \
                 index_packed={packed_idx} index_stored={stored_idx} index_ratio={:.3} huffman_tensors={}/{tensors}",
                plain.len(),
                coded.len(),
                coded.len() as f64 / plain.len() as f64,
                stored_idx as f64 / packed_idx as f64,
                s.huffman_tensors,
            );
            if bits != 4 {
                continue;
            }
            let (pp, hp) =
                (temp_file(&format!("{name}-packed"), &plain), temp_file(&format!("{name}-huff"), &coded));
            let mut times: Vec<Duration> =
                (0..50).map(|_| PithFile::open(&hp).expect("opening").entropy_stats().decode_time).collect();
            times.sort();
            let (best, median) = (times[0], times[times.len() / 2]);
            let mbps = |t: Duration| s.decoded_bytes as f64 / t.as_secs_f64() / 1e6;
            println!(
                "huffman-decode model={name} bits=4 tensors={} coded_bytes={} decoded_bytes={} \
                 best_decode_us={} median_decode_us={} best_mb_per_s={:.1} median_mb_per_s={:.1}",
                s.huffman_tensors,
                s.coded_bytes,
                s.decoded_bytes,
                best.as_micros(),
                median.as_micros(),
                mbps(best),
                mbps(median)
            );
            let mut group = c.benchmark_group(format!("open_{name}_4bit"));
            group.throughput(Throughput::Bytes(s.decoded_bytes as u64));
            group.bench_function("packed", |b| b.iter(|| PithFile::open(&pp).expect("opening")));
            group.bench_function("huffman", |b| b.iter(|| PithFile::open(&hp).expect("opening")));
            group.finish();
            for p in [pp, hp] {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

criterion_group! {
    name = benches;
    config = common::quick(2.0);
    targets = bench_huffman
}
criterion_main!(benches);
