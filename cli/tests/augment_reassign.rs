//! End-to-end tests of `pith compress --augment N` and `--finetune-reassign`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data").join(rel)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pith-cli-aug-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `pith compress` of BlazeFace into `out` with `extra` flags.
fn compress(out: &Path, extra: &[&str]) -> Output {
    let model = data("models/blazeface_short_range.onnx");
    let mut args = vec!["compress", model.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_pith")).args(&args).output().expect("pith runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn augmented_calibration_counts_variants_and_is_deterministic() {
    let dir = scratch("augment");
    let calib = dir.join("calib");
    std::fs::create_dir_all(&calib).unwrap();
    for name in ["grace.png", "camera.png"] {
        std::fs::copy(data(&format!("calib/blazeface/{name}")), calib.join(name)).unwrap();
    }
    let c = calib.to_str().unwrap();
    let base = ["--bits", "4", "--calib", c, "--preprocess", "blazeface"];
    let mut args = base.to_vec();
    args.extend(["--augment", "2", "--finetune", "3", "--finetune-reassign"]);
    let (a, b) = (dir.join("a.pith"), dir.join("b.pith"));
    let o = compress(&a, &args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("fidelity on 6 calibration samples"), "{}", text(&o));
    let o = compress(&b, &args);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "same flags, same bytes");

    let plain = dir.join("plain.pith");
    let o = compress(&plain, &base);
    assert!(text(&o).contains("fidelity on 2 calibration samples"), "{}", text(&o));
}

#[test]
fn the_new_flags_need_what_they_apply_to() {
    let dir = scratch("flags");
    let out = dir.join("x.pith");
    let o = compress(&out, &["--bits", "4", "--augment", "2"]);
    assert!(!o.status.success() && text(&o).contains("pass --calib"), "{}", text(&o));
    let calib = data("calib/blazeface");
    let o = compress(
        &out,
        &[
            "--bits",
            "4",
            "--calib",
            calib.to_str().unwrap(),
            "--preprocess",
            "blazeface",
            "--finetune-reassign",
        ],
    );
    assert!(!o.status.success() && text(&o).contains("pass --finetune STEPS"), "{}", text(&o));
}
