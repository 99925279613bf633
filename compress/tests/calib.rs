//! Calibration-driven compression of the bundled BlazeFace on synthetic inputs: sample checks,
//! fixed-width data-aware codebooks, `--bits auto` under a floor, and determinism.

use std::path::PathBuf;

use pith_compress::calib::{self, BitsChoice, CalibError, CalibOptions, CalibSample, Prepared};
use pith_compress::{Compressed, WeightFormat};
use pith_runtime::Tensor;

fn onnx() -> Vec<u8> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/models/blazeface_short_range.onnx");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A smooth deterministic "image" in [-1, 1] (no RNG: the same bytes on every run).
fn sample(seed: usize) -> CalibSample {
    let n = 128 * 128;
    let data = (0..3 * n)
        .map(|i| {
            let (c, y, x) = (i / n, (i % n) / 128, i % 128);
            ((x as f32 * 0.05 * (seed + 1) as f32 + c as f32).sin() * (y as f32 * 0.03 + seed as f32).cos())
                .clamp(-1.0, 1.0)
        })
        .collect();
    CalibSample {
        label: format!("synthetic{seed}"),
        inputs: vec![("input".into(), Tensor::from_f32(vec![1, 3, 128, 128], data))],
    }
}

fn compress(options: &CalibOptions, samples: &[CalibSample]) -> Result<Compressed, CalibError> {
    calib::compress_calibrated(Prepared::new(&onnx()).unwrap(), samples, options, &|_, _, _| {})
}

#[test]
fn bad_samples_are_typed_errors() {
    let options = CalibOptions::default();
    assert!(matches!(compress(&options, &[]), Err(CalibError::NoSamples)));
    let wrong = CalibSample {
        label: "small".into(),
        inputs: vec![("input".into(), Tensor::zeros(vec![1, 3, 64, 64]))],
    };
    let err = compress(&options, &[wrong]).unwrap_err();
    assert!(err.to_string().contains("expects [1, 3, 128, 128]"), "{err}");
    let renamed = CalibSample {
        label: "x".into(),
        inputs: vec![("image".into(), Tensor::zeros(vec![1, 3, 128, 128]))],
    };
    assert!(compress(&options, &[renamed]).unwrap_err().to_string().contains("no input named 'image'"));
    let bad = CalibOptions { bits: BitsChoice::Auto { min_fidelity: 1.5 }, ..options };
    assert!(matches!(compress(&bad, &[sample(0)]), Err(CalibError::Options(_))));
    let tune = Some(pith_compress::finetune::FinetuneOptions::default());
    let f16 = CalibOptions { bits: BitsChoice::Fixed(WeightFormat::F16), finetune: tune, ..options };
    let err = compress(&f16, &[sample(0)]).unwrap_err();
    assert!(err.to_string().contains("fine-tuning trains codebooks"), "{err}");
    let idle = tune.map(|t| pith_compress::finetune::FinetuneOptions { steps: 0, ..t });
    let none = CalibOptions { finetune: idle, ..options };
    assert!(matches!(compress(&none, &[sample(0)]), Err(CalibError::Options(_))));
}

#[test]
fn fixed_width_reports_output_error_and_fidelity_and_is_deterministic() {
    let samples = [sample(0), sample(1)];
    let options =
        CalibOptions { bits: BitsChoice::Fixed(WeightFormat::Codebook { bits: 4 }), ..Default::default() };
    let a = compress(&options, &samples).unwrap();
    let fid = a.report.fidelity.clone().unwrap();
    assert_eq!(fid.samples, 2);
    assert!(fid.cosine > 0.5 && fid.cosine <= 1.0, "{fid:?}");
    let coded: Vec<_> = a.report.layers.iter().filter(|l| l.bits == Some(4)).collect();
    assert!(!coded.is_empty());
    assert!(coded.iter().any(|l| l.out_error.is_some()), "no layer has an output error");
    let b = compress(&options, &samples).unwrap();
    assert_eq!(pith_format::write(&a.model).unwrap(), pith_format::write(&b.model).unwrap());
}

#[test]
fn auto_meets_the_floor_and_beats_f32() {
    let samples = [sample(0), sample(2)];
    let options = CalibOptions { bits: BitsChoice::Auto { min_fidelity: 0.99 }, ..Default::default() };
    let out = compress(&options, &samples).unwrap();
    let fid = out.report.fidelity.clone().unwrap();
    assert!(fid.passes(0.99), "{fid:?}");
    assert!(!out.report.search.is_empty());
    let f32_bytes: usize = out.report.layers.iter().map(|l| l.f32_bytes).sum();
    let bytes: usize = out.report.layers.iter().map(|l| l.bytes).sum();
    assert!(bytes * 2 < f32_bytes, "{bytes} vs {f32_bytes}");
    assert!(out.report.layers.iter().any(|l| l.predicted_distortion.is_some()));
}
