//! Prints the per-layer report of compressing an ONNX model: `compress_report MODEL.onnx BITS`
//! (BITS = 0 for f32, 16 for f16, 1..=8 for codebooks).

use pith_compress::{compress_onnx, CompressOptions, WeightFormat};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(bits)) = (args.get(1), args.get(2).and_then(|b| b.parse::<u8>().ok())) else {
        eprintln!("usage: compress_report MODEL.onnx BITS");
        std::process::exit(2);
    };
    let weights = match bits {
        0 => WeightFormat::F32,
        16 => WeightFormat::F16,
        b => WeightFormat::Codebook { bits: b },
    };
    let fail = |msg: String| -> ! {
        eprintln!("{msg}");
        std::process::exit(1)
    };
    let onnx = std::fs::read(path).unwrap_or_else(|e| fail(format!("{path}: {e}")));
    let t = std::time::Instant::now();
    let out =
        compress_onnx(&onnx, &CompressOptions { weights }).unwrap_or_else(|e| fail(format!("{path}: {e}")));
    let elapsed = t.elapsed();
    for l in &out.report.layers {
        println!(
            "{:40} {:>16} {:>18} {:>8} / {:>8}  err {:.5}",
            l.name,
            format!("{:?}", l.shape),
            l.encoding,
            l.bytes,
            l.f32_bytes,
            l.rel_error
        );
    }
    println!(
        "onnx {} bytes -> constants {} bytes in {:.2?}",
        out.report.onnx_bytes, out.report.total_bytes, elapsed
    );
}
