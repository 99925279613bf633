//! End-to-end tests of the `pith` binary: the commands users and scripts drive, and their errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data").join(rel)
}

/// A fresh scratch folder per test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pith-cli-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn pith(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pith")).args(args).output().expect("pith runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn compress(dir: &Path, bits: &str) -> PathBuf {
    let out = dir.join(format!("face_{bits}.pith"));
    let o = pith(&[
        "compress",
        data("models/blazeface_short_range.onnx").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--bits",
        bits,
    ]);
    assert!(o.status.success(), "compress failed: {}", stderr(&o));
    out
}

#[test]
fn compress_prints_a_layer_table_and_inspect_describes_the_file() {
    let dir = scratch("inspect");
    let o = pith(&[
        "compress",
        data("models/blazeface_short_range.onnx").to_str().unwrap(),
        "-o",
        dir.join("f.pith").to_str().unwrap(),
        "--bits",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.contains("cb4/"), "no 4-bit layer in:\n{table}");
    assert!(table.contains("x smaller"), "no total line in:\n{table}");

    let o = pith(&["inspect", dir.join("f.pith").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for want in ["format 1.", "input  input F32 1x3x128x128", "output regressors", "Conv", "cb4/"] {
        assert!(text.contains(want), "'{want}' missing from inspect output:\n{text}");
    }
}

#[test]
fn run_writes_npy_outputs_that_match_onnxruntime() {
    let dir = scratch("run");
    let model = compress(&dir, "f32");
    let input = format!("input={}", data("golden/blazeface/input.input.npy").display());
    let out_dir = dir.join("outputs");
    let o =
        pith(&["run", model.to_str().unwrap(), "--input", &input, "--output-dir", out_dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in ["regressors", "classificators"] {
        let got = std::fs::read(out_dir.join(format!("{name}.npy"))).unwrap();
        let want = std::fs::read(data(&format!("golden/blazeface/output.{name}.npy"))).unwrap();
        let (got, want) = (npy_f32(&got), npy_f32(&want));
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{name}: {g} vs {w}");
        }
    }
}

/// The f32 payload of a little-endian `.npy` file (header length from its preamble).
fn npy_f32(bytes: &[u8]) -> Vec<f32> {
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let (header_len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12)
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("<f4"), "not float32: {header}");
    bytes[start + header_len..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[test]
fn detect_faces_prints_json_and_writes_an_annotated_png() {
    let dir = scratch("detect");
    let model = compress(&dir, "8");
    let annotated = dir.join("faces.png");
    let o = pith(&[
        "detect",
        "faces",
        model.to_str().unwrap(),
        data("images/astronaut.png").to_str().unwrap(),
        "--out",
        annotated.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("stdout is JSON");
    let faces = json["faces"].as_array().expect("faces array");
    assert_eq!(faces.len(), 1, "{json}");
    let bbox: Vec<f64> = faces[0]["bbox"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // The astronaut's face sits left of centre in the upper half of the 512x512 portrait.
    assert!(bbox[0] > 150.0 && bbox[2] < 300.0 && bbox[1] > 50.0 && bbox[3] < 200.0, "{bbox:?}");
    assert_eq!(faces[0]["keypoints"].as_array().unwrap().len(), 6);
    let png = std::fs::read(&annotated).unwrap();
    assert_eq!(&png[1..4], b"PNG");
}

#[test]
fn bench_prints_one_parsable_line() {
    let dir = scratch("bench");
    let model = compress(&dir, "4");
    let o = pith(&["bench", model.to_str().unwrap(), "--threads", "1", "--iters", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o);
    let line = line.trim();
    assert!(line.starts_with("bench model=face_4.pith threads=1 iters=3 load_ms="), "{line}");
    for key in ["load_ms=", "median_ms=", "p90_ms="] {
        let value = line.split(key).nth(1).unwrap().split(' ').next().unwrap();
        assert!(value.parse::<f64>().unwrap() >= 0.0, "{key} in {line}");
    }
}

#[test]
fn bad_inputs_fail_with_a_clear_message() {
    let dir = scratch("bad");
    // A truncated PNG.
    let png = std::fs::read(data("images/page.png")).unwrap();
    let broken = dir.join("broken.png");
    std::fs::write(&broken, &png[..png.len() / 2]).unwrap();
    let model = compress(&dir, "8");
    let o = pith(&["detect", "faces", model.to_str().unwrap(), broken.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("decoding image"), "{}", stderr(&o));

    // An ONNX model with an op Pith does not support.
    let o = pith(&[
        "compress",
        data("bad/unknown_op.onnx").to_str().unwrap(),
        "-o",
        dir.join("x.pith").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Erf"), "{}", stderr(&o));

    // A truncated model file.
    let bytes = std::fs::read(&model).unwrap();
    let cut = dir.join("cut.pith");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let o = pith(&["inspect", cut.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("opening"), "{}", stderr(&o));

    // A wrong input shape.
    let wrong = dir.join("wrong.npy");
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 64, 64), }";
    let padded = format!("{header:<117}\n");
    npy.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    npy.extend_from_slice(padded.as_bytes());
    npy.extend(std::iter::repeat_n(0u8, 3 * 64 * 64 * 4));
    std::fs::write(&wrong, npy).unwrap();
    let o = pith(&["run", model.to_str().unwrap(), "--input", &format!("input={}", wrong.display())]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("input 'input'"), "{}", stderr(&o));

    // Bad --bits.
    let o = pith(&["compress", "x.onnx", "-o", "y.pith", "--bits", "9"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a weight format"), "{}", stderr(&o));
}

#[test]
fn bench_gemv_prints_the_documented_line() {
    let o = pith(&["bench", "--gemv", "64x96", "--bits", "3", "--threads", "1", "--iters", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o);
    let line = line.trim();
    assert!(line.starts_with("gemv bits=3 rows=64 cols=96 threads=1 median_us="), "{line}");
    for key in ["median_us=", "gbps=", "f32_median_us=", "speedup_vs_f32=", "memcpy_gbps=", "roofline="] {
        let value = line.split(&format!(" {key}")).nth(1).unwrap_or_else(|| panic!("{key} missing: {line}"));
        let value = value.split(' ').next().unwrap();
        assert!(value.parse::<f64>().unwrap() > 0.0, "{key} in {line}");
    }
}
