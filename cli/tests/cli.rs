//! End-to-end tests of the `pith` binary: the commands users and scripts drive, and their errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data").join(rel)
}

/// A `calib` folder in `dir` holding copies of bundled data files: `(source under tests/data,
/// name in the folder)`.
fn calib_dir(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let calib = dir.join("calib");
    std::fs::create_dir_all(&calib).unwrap();
    for (from, to) in files {
        std::fs::copy(data(from), calib.join(to)).unwrap();
    }
    calib
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

/// [`pith`] with one environment variable set.
fn pith_env(args: &[&str], key: &str, value: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pith")).args(args).env(key, value).output().expect("pith runs")
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
    for want in ["format 1.3", "input  input F32 1x3x128x128", "output regressors", "Conv", "cb4/"] {
        assert!(text.contains(want), "'{want}' missing from inspect output:\n{text}");
    }

    // --plain-layout writes the 1.0 layout older readers take: same model, larger file.
    let plain = dir.join("plain.pith");
    let model = data("models/blazeface_short_range.onnx");
    let args = ["compress", model.to_str().unwrap(), "-o", plain.to_str().unwrap(), "--bits", "4"];
    let o = pith(&[&args[..], &["--plain-layout"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let o = pith(&["inspect", plain.to_str().unwrap()]);
    assert!(stdout(&o).contains("format 1.0"), "{}", stdout(&o));
    let size = |p: &std::path::Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&plain) > size(&dir.join("f.pith")) + 8192,
        "{} vs {}",
        size(&plain),
        size(&dir.join("f.pith"))
    );
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

    // The full-range (192x192) and back-camera (256x256) models: the input size picks the anchors.
    for name in ["blazeface_full_range", "blazeface_back"] {
        let model = dir.join(format!("{name}.pith"));
        let onnx = data(&format!("models/{name}.onnx"));
        let o = pith(&["compress", onnx.to_str().unwrap(), "-o", model.to_str().unwrap(), "--bits", "8"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = pith(&[
            "detect",
            "faces",
            model.to_str().unwrap(),
            data("images/astronaut.png").to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let json: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("stdout is JSON");
        let faces = json["faces"].as_array().expect("faces array");
        assert_eq!(faces.len(), 1, "{name}: {json}");
        let b: Vec<f64> = faces[0]["bbox"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert!(b[0] > 150.0 && b[2] < 300.0 && b[1] > 50.0 && b[3] < 200.0, "{name}: {b:?}");
    }
    // A model whose input is no BlazeFace size is named.
    let text = dir.join("ppocr.pith");
    let onnx = data("models/ppocr_mobile_v2_cls.onnx");
    let o = pith(&["compress", onnx.to_str().unwrap(), "-o", text.to_str().unwrap(), "--bits", "8"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o =
        pith(&["detect", "faces", text.to_str().unwrap(), data("images/astronaut.png").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("a BlazeFace input is NCHW 1x3x128x128 (short range)"), "{}", stderr(&o));
}

/// `pith detect text --rec --charset`: the page's text boxes, each read by the recognizer at
/// f32 weights; the first line is the page's title.
#[test]
fn detect_text_reads_each_box_with_a_recognizer() {
    let dir = scratch("read");
    let (det, rec) = (dir.join("det.pith"), dir.join("rec.pith"));
    for (onnx, out) in [("models/ppocr_v4_det.onnx", &det), ("models/ppocr_v3_rec.onnx", &rec)] {
        let onnx = data(onnx);
        let o = pith(&["compress", onnx.to_str().unwrap(), "-o", out.to_str().unwrap(), "--bits", "f32"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let keys = data("models/ppocr_v3_rec_keys.txt");
    let page = data("images/page.png");
    let args = |rec: &Path| {
        let mut a = vec!["detect", "text", det.to_str().unwrap(), page.to_str().unwrap()];
        a.extend(["--rec", rec.to_str().unwrap(), "--charset", keys.to_str().unwrap()]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |a: &[String]| pith(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let o = run(&args(&rec));
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("stdout is JSON");
    let boxes = json["text_boxes"].as_array().expect("text_boxes array");
    assert!(boxes.len() >= 4, "{json}");
    let texts: Vec<&str> = boxes.iter().map(|b| b["text"].as_str().expect("every box has text")).collect();
    assert_eq!(texts[0], "Region-based segmentation", "{texts:?}");
    assert!(texts.contains(&"histogram of grey values:"), "{texts:?}");
    for b in boxes {
        let c = b["text_confidence"].as_f64().unwrap();
        assert!(c > 0.5 && c <= 1.0, "{b}");
    }
    // Without --charset the recognizer's own `character` property (its ONNX metadata, kept by
    // `pith compress`) reads the same text.
    let own = run(&args(&rec)[..6]);
    assert!(own.status.success(), "{}", stderr(&own));
    assert_eq!(stdout(&own), stdout(&o));
    let o = pith(&["inspect", rec.to_str().unwrap()]);
    assert!(stdout(&o).contains("property character = (26249 bytes, 6623 lines"), "{}", stdout(&o));
    // A detector given as the recognizer fails with the reason, not a panic.
    let o = run(&args(&det));
    assert!(!o.status.success() && stderr(&o).contains("error"), "{}", stderr(&o));
    // A model without a character set needs --charset; faces have no text to read.
    let o = run(&args(&det)[..6]);
    assert!(!o.status.success() && stderr(&o).contains("carries no character set"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--charset FILE"), "{}", stderr(&o));
    let mut faces = args(&rec);
    faces[1] = "faces".into();
    let o = run(&faces);
    assert!(!o.status.success() && stderr(&o).contains("pith detect text"), "{}", stderr(&o));
}

#[test]
fn compress_sets_and_drops_model_properties() {
    let dir = scratch("props");
    let labels = dir.join("labels.txt");
    std::fs::write(&labels, "face\nbackground\n").unwrap();
    let (face, rec) = (dir.join("face.pith"), dir.join("rec.pith"));
    let label_arg = format!("labels=@{}", labels.display());
    let onnx = data("models/blazeface_short_range.onnx");
    let compress = |extra: &[&str]| {
        let mut a = vec!["compress", onnx.to_str().unwrap(), "-o", face.to_str().unwrap()];
        a.extend(extra);
        pith(&a)
    };
    let o = compress(&["--prop", &label_arg, "--prop", "source=a=b", "--prop", "source=mediapipe"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info = stdout(&pith(&["inspect", face.to_str().unwrap()]));
    assert!(info.contains("format 1.4"), "{info}");
    assert!(info.contains("property labels = (16 bytes, 2 lines, starting \"face\")"), "{info}");
    assert!(info.contains("property source = \"mediapipe\""), "the later entry wins: {info}");
    // Bad entries fail before compressing, naming the entry.
    for (bad, want) in
        [("=x", "the key is empty"), ("novalue", "expected KEY=VALUE"), ("k=@/no/such/file", "reading")]
    {
        let o = compress(&["--prop", bad]);
        assert!(!o.status.success() && stderr(&o).contains(want), "{bad}: {}", stderr(&o));
    }
    // --no-onnx-props leaves the recognizer's character set out; --prop entries stay.
    let rec_onnx = data("models/ppocr_v3_rec.onnx");
    let o = pith(&[
        "compress",
        rec_onnx.to_str().unwrap(),
        "-o",
        rec.to_str().unwrap(),
        "--bits",
        "f16",
        "--no-onnx-props",
        "--prop",
        "k=v",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info = stdout(&pith(&["inspect", rec.to_str().unwrap()]));
    assert!(info.contains("property k = \"v\"") && !info.contains("property character"), "{info}");
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
    for key in ["load_ms=", "median_ms=", "p90_ms=", "p99_ms="] {
        let value = line.split(key).nth(1).unwrap().split(' ').next().unwrap();
        assert!(value.parse::<f64>().unwrap() >= 0.0, "{key} in {line}");
    }
    // The kernel path goes to stderr, one of the paths the kernels crate has; `PITH_KERNEL`
    // forces the portable one.
    let err = stderr(&o);
    let path = err.lines().find_map(|l| l.strip_prefix("kernels=")).unwrap_or_else(|| panic!("{err}"));
    assert!(["scalar", "avx2", "avx512", "neon"].contains(&path), "{path}");
    let o = pith_env(
        &["bench", model.to_str().unwrap(), "--threads", "1", "--iters", "1"],
        "PITH_KERNEL",
        "scalar",
    );
    assert!(o.status.success() && stderr(&o).lines().any(|l| l == "kernels=scalar"), "{}", stderr(&o));
}

/// `--memory-limit` refuses a model whose plan needs more (naming the need and the limit),
/// lets it run with room to spare, and rejects a malformed size.
#[test]
fn memory_limit_refuses_or_runs() {
    let dir = scratch("memory_limit");
    let model = compress(&dir, "4");
    let model = model.to_str().unwrap();
    let o = pith(&["bench", model, "--threads", "1", "--iters", "1", "--memory-limit", "64K"]);
    assert!(!o.status.success(), "BlazeFace ran within 64 KiB");
    let err = stderr(&o);
    assert!(err.contains("over the session's limit of 65536"), "{err}");
    let o = pith(&["bench", model, "--threads", "1", "--iters", "1", "--memory-limit", "64M"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = pith(&["bench", model, "--iters", "1", "--memory-limit", "12Q"]);
    assert!(!o.status.success() && stderr(&o).contains("unknown unit 'Q'"), "{}", stderr(&o));
}

#[test]
fn a_zero_thread_count_and_a_directory_as_model_are_refused_by_name() {
    let o = pith(&["bench", "--gemv", "64x64", "--bits", "4", "--threads", "0"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("invalid value '0' for '--threads <THREADS>': must be at least 1"),
        "{}",
        stderr(&o)
    );
    let dir = std::env::temp_dir();
    let o = pith(&["bench", dir.to_str().unwrap(), "--iters", "1"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.trim_end().ends_with("is a directory") && err.matches("is a directory").count() == 1,
        "{err}"
    );
}

/// `--int8` either runs (the line says so) or, on a CPU without int8 dot products, fails naming
/// the kernel path, for a model and for `--gemv`.
#[test]
fn bench_int8_runs_or_names_the_missing_instructions() {
    let dir = scratch("bench_int8");
    let model = compress(&dir, "4");
    let o = pith(&["bench", model.to_str().unwrap(), "--threads", "2", "--iters", "3", "--int8"]);
    if o.status.success() {
        assert!(stdout(&o).starts_with("bench model=face_4.pith threads=2 int8 iters=3 "), "{}", stdout(&o));
    } else {
        assert!(stderr(&o).contains("int8 dot-product"), "{}", stderr(&o));
    }
    let o = pith(&["bench", "--gemv", "64x64", "--bits", "4", "--threads", "1", "--iters", "3", "--int8"]);
    if o.status.success() {
        assert!(
            stdout(&o).starts_with("gemv bits=4 rows=64 cols=64 threads=1 int8 median_us="),
            "{}",
            stdout(&o)
        );
    } else {
        assert!(stderr(&o).contains("int8 dot-product"), "{}", stderr(&o));
    }
}

#[test]
fn bench_profile_prints_one_line_per_operator_kind() {
    let dir = scratch("bench_profile");
    let model = compress(&dir, "4");
    let o = pith(&["bench", model.to_str().unwrap(), "--threads", "1", "--iters", "2", "--profile"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let ops: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("op=")).collect();
    // BlazeFace: its 37 convolutions (the residual Add + Relu after 16 of them, and the channel
    // Pad of 11 of those skips, fused into them by the session), the pools, and a total line.
    let conv = ops.iter().find(|l| l.starts_with("Conv ")).unwrap_or_else(|| panic!("{out}"));
    assert!(conv.contains("calls_per_run=37 "), "{conv}");
    assert!(ops.iter().any(|l| l.starts_with("MaxPool ")), "{out}");
    let fused = ["Relu ", "Add ", "Pad "];
    assert!(!ops.iter().any(|l| fused.iter().any(|f| l.starts_with(f))), "fused: {out}");
    // Then the ten slowest nodes, most expensive first.
    let nodes: Vec<&str> = out.lines().filter(|l| l.starts_with("node=")).collect();
    assert_eq!(nodes.len(), 10, "{out}");
    let ms: Vec<f64> = nodes
        .iter()
        .map(|l| l.split("ms_per_run=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(ms.windows(2).all(|w| w[0] >= w[1]), "{out}");
    assert!(nodes.iter().all(|l| l.contains(" op=")), "{out}");
    // Each names its output value, so a line maps onto the ONNX graph.
    assert!(
        nodes.iter().all(|l| l.split(" out=").nth(1).is_some_and(|rest| !rest.starts_with(' '))),
        "{out}"
    );
    assert!(ops.last().unwrap().starts_with("all ms_per_run="), "{out}");
    // One thread shares no jobs: no line on how threads spent them, nor per node.
    assert!(!out.lines().any(|l| l.starts_with("threads ")), "{out}");
    assert!(!out.contains("split_jobs_per_run="), "{out}");
    let o = pith(&[
        "bench",
        model.to_str().unwrap(),
        "--threads",
        "2",
        "--fixed-threads",
        "--iters",
        "3",
        "--profile",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let line = out.lines().find_map(|l| l.strip_prefix("threads ")).unwrap_or_else(|| panic!("{out}"));
    let field = |name: &str| line.split(name).nth(1).and_then(|r| r.split(' ').next()).unwrap_or("");
    // How many jobs were shared depends on the host (a stalled worker makes the pool run jobs on
    // the caller alone for a while), so only the form is checked: a count, the caller's and the
    // worker's busy time, the caller's wait.
    assert!(field("jobs_per_run=").parse::<u64>().is_ok(), "{line}");
    let busy: Vec<f64> = field("busy_ms_per_run=").split(',').map(|v| v.parse().unwrap()).collect();
    assert_eq!(busy.len(), 2, "{line}");
    assert!(field("waited_ms_per_run=").parse::<f64>().is_ok_and(|w| w >= 0.0), "{line}");
    // The node line says how that node shared the threads, in the same form.
    let node = out.lines().find(|l| l.starts_with("node=")).unwrap_or_else(|| panic!("{out}"));
    let field = |name: &str| node.split(name).nth(1).and_then(|r| r.split(' ').next()).unwrap_or("");
    assert!(field("split_jobs_per_run=").parse::<f64>().is_ok(), "{node}");
    let busy: Vec<f64> = field("busy_ms_per_run=").split(',').map(|v| v.parse().unwrap()).collect();
    assert_eq!(busy.len(), 2, "{node}");
    // `--profile N` lists N nodes (BlazeFace runs more than 40 after fusion).
    let o = pith(&["bench", model.to_str().unwrap(), "--threads", "1", "--iters", "1", "--profile", "40"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().filter(|l| l.starts_with("node=")).count(), 40, "{}", stdout(&o));
    let o = pith(&["bench", "--gemv", "8x8", "--bits", "4", "--profile"]);
    assert!(!o.status.success() && stderr(&o).contains("--profile"), "{}", stderr(&o));
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
    std::fs::write(&wrong, raw_npy("(1, 3, 64, 64)", 3 * 64 * 64 * 4)).unwrap();
    let o = pith(&["run", model.to_str().unwrap(), "--input", &format!("input={}", wrong.display())]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("input 'input'"), "{}", stderr(&o));

    // A header promising far more data than the file holds, and a shape no tensor may have:
    // errors before anything is allocated for them.
    let cases = [
        ("(1, 3, 10000, 10000)".to_string(), "needs 1200000000 bytes of data, the file holds"),
        (format!("({},)", 1u64 << 40), "exceeds 1073741824 elements"),
    ];
    for (shape, expected) in cases {
        let huge = dir.join("huge.npy");
        std::fs::write(&huge, raw_npy(&shape, 64)).unwrap();
        let o = pith(&["run", model.to_str().unwrap(), "--input", &format!("input={}", huge.display())]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(expected), "{}", stderr(&o));
    }
    let o =
        pith(&["bench", model.to_str().unwrap(), "--shape", "input=1x3x999999999x999999", "--iters", "1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("input 'input': shape [1, 3, 999999999, 999999] exceeds"), "{}", stderr(&o));

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

/// Writes a little-endian f32 `.npy` file of `shape` filled with `value`.
fn write_npy(path: &Path, shape: &[usize], value: f32) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}", dims.join(", "));
    let padded = format!("{header:<117}\n");
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    npy.extend_from_slice(padded.as_bytes());
    for _ in 0..shape.iter().product::<usize>() {
        npy.extend_from_slice(&value.to_le_bytes());
    }
    std::fs::write(path, npy).unwrap();
}

fn compress_args(dir: &Path, extra: &[&str]) -> Output {
    let model = data("models/blazeface_short_range.onnx");
    let out = dir.join("out.pith");
    let mut args = vec!["compress", model.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    pith(&args)
}

#[test]
fn calibration_errors_are_clear() {
    let dir = scratch("calib-errors");
    let o = compress_args(&dir, &["--bits", "auto"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--bits auto needs calibration data"), "{}", stderr(&o));

    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = compress_args(&dir, &["--bits", "auto", "--calib", empty.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("holds no .npy files or images"), "{}", stderr(&o));

    let missing = dir.join("missing");
    let o = compress_args(&dir, &["--bits", "4", "--calib", missing.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("listing calibration folder"), "{}", stderr(&o));

    let wrong = dir.join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    write_npy(&wrong.join("input.a.npy"), &[1, 3, 64, 64], 0.5);
    let o = compress_args(&dir, &["--bits", "4", "--calib", wrong.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("the model expects [1, 3, 128, 128]"), "{}", stderr(&o));

    let named = dir.join("named");
    std::fs::create_dir_all(&named).unwrap();
    write_npy(&named.join("image.a.npy"), &[1, 3, 128, 128], 0.5);
    let o = compress_args(&dir, &["--bits", "4", "--calib", named.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("<input name>.<anything>.npy"), "{}", stderr(&o));

    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let png = std::fs::read(data("images/page.png")).unwrap();
    std::fs::write(images.join("page.png"), &png[..png.len() / 2]).unwrap();
    let o = compress_args(&dir, &["--bits", "4", "--calib", images.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("need --preprocess"), "{}", stderr(&o));
    let o = compress_args(
        &dir,
        &["--bits", "4", "--calib", images.to_str().unwrap(), "--preprocess", "blazeface"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("decoding image"), "{}", stderr(&o));

    let o = compress_args(&dir, &["--preprocess", "blazeface"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("pass --calib"), "{}", stderr(&o));
    let o = compress_args(&dir, &["--bits", "nine"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("or auto"), "{}", stderr(&o));
}

#[test]
fn calibrated_auto_writes_a_report_and_is_deterministic() {
    let dir = scratch("calib-auto");
    let calib = calib_dir(
        &dir,
        &[
            ("golden/blazeface/input.input.npy", "input.portrait.npy"),
            ("golden/blazeface_camera/input.input.npy", "input.camera.npy"),
            ("images/astronaut.png", "astronaut.png"),
        ],
    );
    let report = dir.join("report.json");
    let args = [
        "--bits",
        "auto",
        "--min-fidelity",
        "0.99",
        "--calib",
        calib.to_str().unwrap(),
        "--preprocess",
        "blazeface",
        "--entropy",
        "huffman",
        "--report",
        report.to_str().unwrap(),
    ];
    let o = compress_args(&dir, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for want in [
        "fidelity on 3 calibration samples",
        "task check passed",
        "huffman:",
        "layers by width",
        "bias correction in",
    ] {
        assert!(text.contains(want), "'{want}' missing from:\n{text}");
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(json["fidelity"]["cosine"].as_f64().unwrap() >= 0.99, "{json}");
    assert_eq!(json["fidelity"]["task"]["passed"], true);
    assert_eq!(json["bias_correction"], true);
    let layers = json["layers"].as_array().unwrap();
    assert!(layers.iter().any(|l| l["bias_corrected"] == true), "no layer bias-corrected");
    assert!(layers.iter().any(|l| l["bits"].as_u64().is_some_and(|b| b < 8)), "no narrow layer");
    for key in ["name", "bits", "sparsity", "bytes", "weight_error", "output_error"] {
        assert!(layers[0].get(key).is_some(), "layer field {key} missing");
    }
    let totals = &json["totals"];
    assert!(totals["ratio_vs_onnx"].as_f64().unwrap() > 2.0, "{totals}");
    assert!(totals["huffman_file_bytes"].as_u64().unwrap() <= totals["file_bytes"].as_u64().unwrap() + 64);
    let first = std::fs::read(dir.join("out.pith")).unwrap();

    // Same input and calibration files: same bytes (fixed width, to keep the test short).
    let fixed = ["--bits", "4", "--calib", calib.to_str().unwrap(), "--preprocess", "blazeface"];
    let o = compress_args(&dir, &fixed);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = std::fs::read(dir.join("out.pith")).unwrap();
    let o = compress_args(&dir, &fixed);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(a, std::fs::read(dir.join("out.pith")).unwrap(), "two runs differ");
    assert_ne!(a, first);

    // Without bias correction: the biases keep their values (other bytes), and the report says so.
    let plain = [&fixed[..], &["--no-bias-correction", "--report", report.to_str().unwrap()]].concat();
    let o = compress_args(&dir, &plain);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(a, std::fs::read(dir.join("out.pith")).unwrap(), "bias correction changed nothing");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["bias_correction"], false);
    assert!(json["layers"].as_array().unwrap().iter().all(|l| l["bias_corrected"] == false));
}

/// A version 1.0 `.npy` file of little-endian f32 with header shape `shape` (Python tuple syntax)
/// followed by `data_bytes` zero bytes, whatever the shape says.
fn raw_npy(shape: &str, data_bytes: usize) -> Vec<u8> {
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    let padded = format!("{header:<117}\n");
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    npy.extend_from_slice(padded.as_bytes());
    npy.resize(npy.len() + data_bytes, 0);
    npy
}

#[test]
fn explicit_image_flags_feed_calibration_and_run() {
    let dir = scratch("image-flags");
    let calib = calib_dir(&dir, &[("images/astronaut.png", "astronaut.png")]);
    let calib_dir = calib.to_str().unwrap();
    let letterbox = ["--fit", "letterbox", "--mean", "0.5", "--std", "0.5"];

    // BlazeFace's preprocessing spelled out: calibrates without a task check (cosine only).
    let o = compress_args(&dir, &[&["--bits", "4", "--calib", calib_dir], &letterbox[..]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("fidelity on 1 calibration samples"), "{text}");
    assert!(!text.contains("task check"), "{text}");
    // `--task` adds a detector's check to a model calibrated through the flags; a check that does
    // not fit the model's outputs, or one without calibration data, is named.
    let o = compress_args(
        &dir,
        &[&["--bits", "4", "--calib", calib_dir, "--task", "faces"], &letterbox[..]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("task check passed (1 detections"), "{}", stdout(&o));
    let o = compress_args(
        &dir,
        &[&["--bits", "4", "--calib", calib_dir, "--task", "text"], &letterbox[..]].concat(),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("task check: model output 'probability map' has shape [1, 896, 16]"),
        "{}",
        stderr(&o)
    );
    let o = compress_args(&dir, &["--bits", "4", "--task", "faces"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--task checks the calibration samples' detections"), "{}", stderr(&o));

    // The flags and a preset together, or flags that contradict the model, are refused.
    let o = compress_args(
        &dir,
        &["--bits", "4", "--calib", calib_dir, "--preprocess", "blazeface", "--mean", "0.5"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--preprocess blazeface already fixes"), "{}", stderr(&o));
    let o = compress_args(&dir, &["--bits", "4", "--calib", calib_dir, "--input-size", "64x64"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--input-size 64x64 does not match input 'input'"), "{}", stderr(&o));
    let o = compress_args(&dir, &["--bits", "4", "--calib", calib_dir, "--mean", "127.5"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("0-1 scale"), "{}", stderr(&o));
    let o = compress_args(&dir, &["--bits", "4", "--mean", "0.5"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("apply to calibration images: pass --calib"), "{}", stderr(&o));

    // `pith run` reads the image through the same flags: the astronaut's face scores high.
    let model = compress(&dir, "f32");
    let out_dir = dir.join("outputs");
    let input = format!("input={}", data("images/astronaut.png").display());
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            model.to_str().unwrap(),
            "--input",
            &input,
            "--output-dir",
            out_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        pith(&args)
    };
    let o = run(&letterbox);
    assert!(o.status.success(), "{}", stderr(&o));
    let scores = npy_f32(&std::fs::read(out_dir.join("classificators.npy")).unwrap());
    let best = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert!(best > 1.0, "no confident face: best logit {best}");
    // A tenfold contrast (std 0.05) saturates the picture: no anchor scores a face.
    let o = run(&["--fit", "letterbox", "--mean", "0.5", "--std", "0.05"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let scores = npy_f32(&std::fs::read(out_dir.join("classificators.npy")).unwrap());
    assert!(scores.iter().all(|&s| s < 0.0), "the statistics changed nothing");

    let o = run(&[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs the preprocessing flags"), "{}", stderr(&o));
    let o = run(&["--channels", "gray"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not fit input 'input' with 3 channel(s)"), "{}", stderr(&o));
}

#[test]
fn classes_task_check_guards_a_classifiers_calls() {
    // PaddleOCR's direction classifier on a real text line, upright and turned 180°, as .npy
    // calibration samples: `--task classes` asks every sample to keep its top class.
    let dir = scratch("classes");
    let calib = calib_dir(
        &dir,
        &[
            ("golden/ppocr_cls/input.x.npy", "x.line.npy"),
            ("golden/ppocr_cls_flipped/input.x.npy", "x.turned.npy"),
        ],
    );
    let model = data("models/ppocr_mobile_v2_cls.onnx");
    let out = dir.join("cls.pith");
    let compress = |bits: &str| {
        let args = ["compress", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--bits", bits];
        pith(&[&args[..], &["--calib", calib.to_str().unwrap(), "--task", "classes"]].concat())
    };
    let o = compress("auto");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("task check passed (2 class decisions kept; 0 near ties)"), "{}", stdout(&o));
    // At 2 bits the turned line reads as upright: reported, with the sample and the classes.
    let o = compress("2");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("task check FAILED: sample 1 (turned.npy): row 0: class 1 became 0"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn reproducible_calibration_writes_the_portable_paths_bytes_whatever_the_kernel_path() {
    let dir = scratch("reproducible");
    let calib = calib_dir(
        &dir,
        &[
            ("golden/blazeface/input.input.npy", "input.portrait.npy"),
            ("golden/blazeface_camera/input.input.npy", "input.camera.npy"),
        ],
    );
    let model = data("models/blazeface_short_range.onnx");
    let out = dir.join("out.pith");
    let compress = |kernel: &str, extra: &[&str]| -> Vec<u8> {
        let mut args = vec![
            "compress",
            model.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--bits",
            "4",
            "--calib",
            calib.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = pith_env(&args, "PITH_KERNEL", kernel);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(&out).unwrap()
    };
    // The fastest paths' sums differ in their last bits, and with them the calibrated codebooks
    // and the fine-tuned centroids; --reproducible calibrates and tunes on the portable path
    // whichever path the CPU (or PITH_KERNEL) picks.
    for tuning in [&[][..], &["--finetune", "3"][..]] {
        let with = |flag: &'static str| [tuning, &[flag][..]].concat();
        let portable = compress("scalar", tuning);
        assert_eq!(compress("", &with("--reproducible")), portable, "--reproducible {tuning:?}");
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            let avx2 = compress("avx2", &with("--reproducible"));
            assert_eq!(avx2, portable, "--reproducible {tuning:?} with PITH_KERNEL=avx2");
        }
    }
}
