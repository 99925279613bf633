//! Bad input anywhere in the pipeline yields a typed error naming the problem, never a panic.

use std::sync::Arc;

use pith_compress::{compress_onnx, CompressOptions, WeightFormat};
use pith_format::PithFile;
use pith_runtime::{RuntimeError, Session, SessionOptions, Tensor};
use pith_tests::{compile, data_dir, decode_rgb, image_path, model_path};

fn blazeface_onnx() -> Vec<u8> {
    std::fs::read(model_path("blazeface_short_range.onnx")).unwrap()
}

fn blazeface_session() -> Session {
    let file = compile(&blazeface_onnx(), WeightFormat::F32).unwrap();
    Session::new(Arc::new(file), SessionOptions::default()).unwrap()
}

#[test]
fn unknown_op_is_named_with_its_node() {
    let onnx = std::fs::read(data_dir().join("bad/unknown_op.onnx")).unwrap();
    let err = compress_onnx(&onnx, &CompressOptions::default())
        .expect_err("a model with an Erf node must not compress");
    let msg = err.to_string();
    assert!(msg.contains("Erf"), "error does not name the op: {msg}");
    assert!(msg.contains("mystery_erf"), "error does not name the node: {msg}");
}

#[test]
fn garbage_and_truncated_onnx_are_errors() {
    let onnx = blazeface_onnx();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("text", b"this is not an ONNX model".to_vec()),
        ("all 0xff", vec![0xff; 4096]),
        ("first 100 bytes", onnx[..100].to_vec()),
        ("first half", onnx[..onnx.len() / 2].to_vec()),
        ("all but the last byte", onnx[..onnx.len() - 1].to_vec()),
    ];
    for (what, bytes) in cases {
        assert!(
            compress_onnx(&bytes, &CompressOptions::default()).is_err(),
            "{what}: compressed without error"
        );
    }
}

#[test]
fn wrong_input_shape_names_the_input() {
    let mut session = blazeface_session();
    for shape in [vec![1, 3, 64, 64], vec![1, 3, 128], vec![1, 4, 128, 128]] {
        let x = Tensor::zeros(shape.clone());
        match session.run(&[("input", x)]) {
            Err(RuntimeError::Input { name, msg }) => {
                assert_eq!(name, "input", "shape {shape:?}: {msg}")
            }
            Err(other) => panic!("shape {shape:?}: expected an input error, got {other}"),
            Ok(_) => panic!("shape {shape:?}: ran without error"),
        }
    }
    // The session is still usable after refusing bad inputs.
    let ok = session.run(&[("input", Tensor::zeros(vec![1, 3, 128, 128]))]);
    assert!(ok.is_ok(), "valid input after bad ones: {:?}", ok.err());
}

#[test]
fn missing_or_wrongly_typed_input_is_an_error() {
    let mut session = blazeface_session();
    let err = session.run(&[]).expect_err("no inputs must fail");
    assert!(err.to_string().contains("'input'"), "error does not name the input: {err}");
    let err = session
        .run(&[("image", Tensor::zeros(vec![1, 3, 128, 128]))])
        .expect_err("a misnamed input must fail");
    assert!(err.to_string().contains("input"), "unhelpful error: {err}");
    let ints = Tensor::from_i64(vec![1, 3, 128, 128], vec![0; 3 * 128 * 128]);
    assert!(session.run(&[("input", ints)]).is_err(), "an i64 tensor for an f32 input must fail");
}

#[test]
fn corrupt_png_is_a_decode_error() {
    let png = std::fs::read(image_path("page.png")).unwrap();
    assert!(decode_rgb(&png).is_ok(), "the intact image must decode");
    for cut in [0, 8, 100, png.len() / 2, png.len() - 20] {
        assert!(decode_rgb(&png[..cut]).is_err(), "PNG cut at {cut} decoded");
    }
}

#[test]
fn truncated_or_corrupt_pith_is_a_format_error() {
    let model = compress_onnx(&blazeface_onnx(), &CompressOptions::default()).unwrap().model;
    let bytes = pith_format::write(&model).unwrap();
    assert!(PithFile::from_bytes(bytes.clone()).is_ok(), "the intact file must load");
    let n = bytes.len();
    for cut in [0, 1, 4, 8, 16, 64, n / 3, n / 2, n - 1] {
        assert!(
            PithFile::from_bytes(bytes[..cut].to_vec()).is_err(),
            "file cut at {cut} of {n} bytes loaded"
        );
    }
    let mut bad_magic = bytes.clone();
    bad_magic[0] ^= 0xff;
    assert!(PithFile::from_bytes(bad_magic).is_err(), "corrupt magic loaded");
}
