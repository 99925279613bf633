//! The real models end to end: f32 fidelity to onnxruntime, 8-bit codebook fidelity (raw
//! outputs and detected faces / text boxes), int8 activations (same detections), and a 4-bit
//! report; for the models nothing was tuned for, f32 fidelity, the detector's 8-bit cosine, the
//! classifier's calls at 8 and 4 bits and the recognizer's reading at 8 bits.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use pith_compress::WeightFormat;
use pith_format::PithFile;
use pith_runtime::tasks::blazeface::FaceModel;
use pith_runtime::tasks::geometry::BBox;
use pith_runtime::tasks::{blazeface, ctc, db};
use pith_runtime::{Session, SessionOptions, Tensor};
use pith_tests::{
    check_outputs, compile, cosine, data_dir, input_names, load_rgb, model_path, npy_files, read_npy,
    run_on_npy_inputs, sanitize,
};

const BLAZEFACE: &str = "blazeface_short_range.onnx";
const PPOCR: &str = "ppocr_v4_det.onnx";
/// Trained models no kernel, pass or compression setting was tuned for (first run in the
/// thirty-ninth session): PaddleOCR's PP-OCRv3 text detector and its text-line direction
/// classifier.
const PPOCR_V3: &str = "ppocr_v3_det.onnx";
/// MediaPipe's full-range and back-camera BlazeFace models, untuned too.
const BLAZEFACE_FULL: &str = "blazeface_full_range.onnx";
const BLAZEFACE_BACK: &str = "blazeface_back.onnx";
const PPOCR_CLS: &str = "ppocr_mobile_v2_cls.onnx";
/// PaddleOCR's PP-OCRv3 text recognizer (a MobileNetV1-style backbone, an SVTR neck with
/// attention and LayerNorm written out as ONNX ops, a 6625-class CTC head; first run in the
/// forty-third session).
const PPOCR_REC: &str = "ppocr_v3_rec.onnx";

/// f32 `.pith` vs onnxruntime: `|a - b| <= TOL * max(1, |b|)`.
const TOL: f64 = 1e-4;
/// Minimum output cosine of the 8-bit models vs onnxruntime.
const COS8_BLAZEFACE: f64 = 0.999;
const COS8_PPOCR: f64 = 0.997;
/// Detections of the 8-bit model must overlap the f32 model's at least this much.
const MIN_IOU: f32 = 0.9;

/// Weight encodings under test (a local key: `WeightFormat` need not be `Hash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Weights {
    F32,
    Bits(u8),
}

impl Weights {
    fn format(self) -> WeightFormat {
        match self {
            Weights::F32 => WeightFormat::F32,
            Weights::Bits(bits) => WeightFormat::Codebook { bits },
        }
    }
}

type Slot = Arc<OnceLock<Arc<PithFile>>>;

/// Each model is compressed once per encoding per test binary, even with tests in parallel.
fn pith(model: &'static str, weights: Weights) -> Arc<PithFile> {
    static CACHE: OnceLock<Mutex<HashMap<(&'static str, Weights), Slot>>> = OnceLock::new();
    let slot =
        CACHE.get_or_init(Default::default).lock().unwrap().entry((model, weights)).or_default().clone();
    slot.get_or_init(|| {
        let onnx = std::fs::read(model_path(model)).expect("reading the bundled model");
        let file = compile(&onnx, weights.format())
            .unwrap_or_else(|e| panic!("compiling {model} with {weights:?}: {e:#}"));
        eprintln!("{model} {weights:?}: {} bytes", file.file_len());
        Arc::new(file)
    })
    .clone()
}

fn session_with(model: &'static str, weights: Weights, options: SessionOptions) -> Session {
    Session::new(pith(model, weights), options)
        .unwrap_or_else(|e| panic!("session for {model} {weights:?} {options:?}: {e}"))
}

/// Sessions with int8 activations, if this CPU's kernel path has int8 kernels (`None`, with a
/// note in the log, if not: the kernels' own tests cover the int8 path on every CPU).
fn int8_options(threads: usize) -> Option<SessionOptions> {
    let options = SessionOptions { threads, int8_activations: true, ..Default::default() };
    let supported = pith_kernels::Kernels::new(1).is_ok_and(|k| k.with_int8_activations(true).is_ok());
    if !supported {
        eprintln!("int8 activations: this CPU's kernel path has no int8 kernels, skipped");
    }
    supported.then_some(options)
}

/// Sessions with bf16 products, if this CPU's kernel path has them (`None`, with a note in the
/// log, if not: AVX-512 BF16 only).
fn bf16_options(threads: usize) -> Option<SessionOptions> {
    let options = SessionOptions { threads, bf16_products: true, ..Default::default() };
    let supported = pith_kernels::Kernels::new(1).is_ok_and(|k| k.with_bf16_products(true).is_ok());
    if !supported {
        eprintln!("bf16 products: this CPU's kernel path has none, skipped");
    }
    supported.then_some(options)
}

fn golden_dir(name: &str) -> PathBuf {
    data_dir().join("golden").join(name)
}

fn run_golden(model: &'static str, weights: Weights, golden: &str) -> Vec<(String, Tensor)> {
    run_golden_with(model, weights, golden, SessionOptions::default())
}

fn run_golden_with(
    model: &'static str,
    weights: Weights,
    golden: &str,
    options: SessionOptions,
) -> Vec<(String, Tensor)> {
    let mut s = session_with(model, weights, options);
    run_on_npy_inputs(&mut s, &pith(model, weights), &golden_dir(golden))
        .unwrap_or_else(|e| panic!("running {model} {weights:?} on {golden}: {e:#}"))
}

/// Cosine of every output against the golden of the same name, as (name, cosine).
fn cosines(outputs: &[(String, Tensor)], golden: &str) -> Vec<(String, f64)> {
    let files = npy_files(&golden_dir(golden), "output.").unwrap();
    assert_eq!(files.len(), outputs.len(), "output count of {golden}");
    outputs
        .iter()
        .map(|(name, t)| {
            let (_, path) = files
                .iter()
                .find(|(k, _)| *k == sanitize(name))
                .unwrap_or_else(|| panic!("no golden for output '{name}'"));
            let expected = read_npy(path).unwrap();
            assert_eq!(t.shape, expected.shape, "shape of '{name}'");
            (name.clone(), cosine(t.as_f32().unwrap(), &expected.data))
        })
        .collect()
}

fn assert_f32_matches(model: &'static str, golden: &str) {
    let outputs = run_golden(model, Weights::F32, golden);
    check_outputs(&outputs, &golden_dir(golden), TOL)
        .unwrap_or_else(|e| panic!("{model} f32 vs onnxruntime on {golden}: {e:#}"));
}

#[test]
fn blazeface_f32_matches_onnxruntime() {
    assert_f32_matches(BLAZEFACE, "blazeface");
    assert_f32_matches(BLAZEFACE, "blazeface_camera");
}

#[test]
fn ppocr_f32_matches_onnxruntime() {
    assert_f32_matches(PPOCR, "ppocr");
}

#[test]
fn untuned_models_f32_matches_onnxruntime() {
    assert_f32_matches(PPOCR_V3, "ppocr_v3");
    assert_f32_matches(BLAZEFACE_FULL, "blazeface_full_range");
    assert_f32_matches(BLAZEFACE_BACK, "blazeface_back");
    assert_f32_matches(PPOCR_CLS, "ppocr_cls");
    assert_f32_matches(PPOCR_CLS, "ppocr_cls_flipped");
    assert_f32_matches(PPOCR_REC, "ppocr_rec");
}

/// A CTC reading as class indices (the characters themselves are in the model's metadata).
fn ctc_reading(probs: &Tensor) -> Vec<usize> {
    ctc::decode(probs, None).unwrap().classes
}

/// The recognizer reads the page's first line ("Region-based segmentation", 25 characters) the
/// same at 8 bits as onnxruntime does in f32.
#[test]
fn untuned_recognizer_reads_the_same_line_at_8_bits() {
    let files = npy_files(&golden_dir("ppocr_rec"), "output.").unwrap();
    let expected = read_npy(&files[0].1).unwrap();
    let expected = Tensor::from_f32(expected.shape, expected.data);
    let want = ctc_reading(&expected);
    assert_eq!(want.len(), 25, "onnxruntime's reading of the line: {want:?}");
    let out = run_golden(PPOCR_REC, Weights::Bits(8), "ppocr_rec");
    assert_eq!(ctc_reading(&out[0].1), want);
}

#[test]
fn untuned_detector_8bit_cosine() {
    assert_cosine(PPOCR_V3, Weights::Bits(8), "ppocr_v3", COS8_PPOCR);
}

/// The direction classifier's call (upright / turned 180°) on the page's first text line, both
/// ways round, survives plain 8- and 4-bit codebooks with a clear margin.
#[test]
fn untuned_classifier_keeps_its_calls_at_8_and_4_bits() {
    for golden in ["ppocr_cls", "ppocr_cls_flipped"] {
        let files = npy_files(&golden_dir(golden), "output.").unwrap();
        let expected = read_npy(&files[0].1).unwrap().data;
        let class = usize::from(expected[1] > expected[0]);
        assert!(expected[class] > 0.9, "{golden}: onnxruntime is unsure: {expected:?}");
        for weights in [Weights::Bits(8), Weights::Bits(4)] {
            let out = run_golden(PPOCR_CLS, weights, golden);
            let p = out[0].1.as_f32().unwrap();
            assert!(p[class] > 0.8, "{golden} {weights:?}: probabilities {p:?}, onnxruntime {expected:?}");
        }
    }
}

fn assert_cosine(model: &'static str, weights: Weights, golden: &str, min: f64) {
    assert_cosine_with(model, weights, golden, SessionOptions::default(), min)
}

fn assert_cosine_with(
    model: &'static str,
    weights: Weights,
    golden: &str,
    options: SessionOptions,
    min: f64,
) {
    for (name, cos) in cosines(&run_golden_with(model, weights, golden, options), golden) {
        eprintln!("{model} {weights:?} {options:?} on {golden}: output '{name}' cosine {cos:.6}");
        assert!(cos >= min, "{model} {weights:?} on {golden}: output '{name}' cosine {cos:.6} < {min}");
    }
}

#[test]
fn blazeface_8bit_cosine() {
    assert_cosine(BLAZEFACE, Weights::Bits(8), "blazeface", COS8_BLAZEFACE);
    assert_cosine(BLAZEFACE, Weights::Bits(8), "blazeface_camera", COS8_BLAZEFACE);
}

#[test]
fn ppocr_8bit_cosine() {
    assert_cosine(PPOCR, Weights::Bits(8), "ppocr", COS8_PPOCR);
}

#[test]
fn a_session_computes_the_same_bits_on_any_thread_count() {
    // Sessions of 1 to 4 threads, every run split over its threads (no thread tuning), give
    // the same bits, with f32 activations and, where the CPU has them, int8 activations and
    // bf16 products: the 1×1 projections that split by input channels (PP-OCR det's over 12×24
    // here) sum the same shares of the depth whatever the thread count, and every other split
    // computes each output as one thread would.
    let precisions =
        [("f32", Some(SessionOptions::default())), ("int8", int8_options(1)), ("bf16", bf16_options(1))];
    for (precision, options) in precisions {
        let Some(options) = options else { continue };
        for (model, golden) in [(PPOCR, "ppocr"), (PPOCR_V3, "ppocr_v3"), (BLAZEFACE, "blazeface")] {
            let run = |threads| {
                let options = SessionOptions { threads, tune_threads: false, ..options };
                run_golden_with(model, Weights::Bits(4), golden, options)
            };
            let one = run(1);
            for threads in 2..=4 {
                for ((name, a), (_, b)) in one.iter().zip(&run(threads)) {
                    let (a, b) = (a.as_f32().unwrap(), b.as_f32().unwrap());
                    let same = a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{model} {precision}, {threads} threads: '{name}' differs from one thread's"
                    );
                }
            }
        }
    }
}

/// Pairs every box of `reference` with a distinct box of `candidate` at IoU >= [`MIN_IOU`];
/// the counts must be equal, so nothing is missing or extra. Returns a description of failures.
fn match_boxes(reference: &[BBox], candidate: &[BBox]) -> Result<(), String> {
    if reference.len() != candidate.len() {
        return Err(format!("{} boxes vs {} reference boxes", candidate.len(), reference.len()));
    }
    let mut used = vec![false; candidate.len()];
    for (i, r) in reference.iter().enumerate() {
        let best = candidate
            .iter()
            .enumerate()
            .filter(|(j, _)| !used[*j])
            .map(|(j, c)| (j, r.iou(c)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((j, iou)) if iou >= MIN_IOU => used[j] = true,
            Some((_, iou)) => return Err(format!("reference box {i} {r:?}: best IoU {iou:.3}")),
            None => return Err(format!("reference box {i} {r:?} unmatched")),
        }
    }
    Ok(())
}

fn faces(weights: Weights) -> Vec<blazeface::Face> {
    faces_with(weights, SessionOptions::default())
}

fn faces_with(weights: Weights, options: SessionOptions) -> Vec<blazeface::Face> {
    faces_of(BLAZEFACE, FaceModel::ShortRange, weights, options)
}

/// The faces `model` (a BlazeFace of layout `kind`) finds on the portrait.
fn faces_of(
    model: &'static str,
    kind: FaceModel,
    weights: Weights,
    options: SessionOptions,
) -> Vec<blazeface::Face> {
    let img = load_rgb("astronaut.png").expect("decoding astronaut.png");
    let (input, letterbox) = blazeface::preprocess(&img, kind);
    let pith = pith(model, weights);
    let name = input_names(&pith).remove(0);
    let mut s = session_with(model, weights, options);
    let out = s.run(&[(name.as_str(), input)]).expect("running BlazeFace");
    // Converted models name their outputs differently: regressors carry 16 values per anchor.
    let by_last =
        |n: usize| &out.iter().find(|(_, t)| t.shape.last() == Some(&n)).expect("BlazeFace output").1;
    blazeface::decode(kind, by_last(16), by_last(1), &letterbox, &blazeface::FaceOptions::default())
        .expect("decoding faces")
}

/// The full-range and back-camera BlazeFace models, which nothing was tuned for, find the
/// portrait's one face where the short-range model does, and keep it at plain 8 bits. (At plain
/// 4 bits, without calibration, the back-camera model adds three false faces: see the
/// calibrated test in `compression.rs`.)
#[test]
fn untuned_face_detectors_find_the_portraits_face() {
    let short = faces(Weights::F32);
    assert_eq!(short.len(), 1, "short range: {short:?}");
    for (model, kind) in [(BLAZEFACE_FULL, FaceModel::FullRange), (BLAZEFACE_BACK, FaceModel::BackCamera)] {
        let reference = faces_of(model, kind, Weights::F32, SessionOptions::default());
        assert_eq!(reference.len(), 1, "{model}: {reference:?}");
        let iou = reference[0].bbox.iou(&short[0].bbox);
        assert!(iou > 0.75, "{model}: the face at IoU {iou:.3} with short range's");
        let got = faces_of(model, kind, Weights::Bits(8), SessionOptions::default());
        assert_eq!(got.len(), 1, "{model} 8-bit: {got:?}");
        let iou = got[0].bbox.iou(&reference[0].bbox);
        assert!(iou >= MIN_IOU, "{model} 8-bit: IoU {iou:.3} with the f32 face");
    }
}

#[test]
fn blazeface_8bit_finds_the_same_faces() {
    let reference = faces(Weights::F32);
    let quantized = faces(Weights::Bits(8));
    eprintln!("faces f32: {reference:?}\nfaces 8-bit: {quantized:?}");
    assert!(!reference.is_empty(), "the f32 model finds no face on the portrait");
    let boxes = |f: &[blazeface::Face]| f.iter().map(|f| f.bbox).collect::<Vec<_>>();
    if let Err(e) = match_boxes(&boxes(&reference), &boxes(&quantized)) {
        panic!("8-bit faces differ from f32 faces: {e}");
    }
}

fn text_boxes(weights: Weights) -> Vec<BBox> {
    text_boxes_with(weights, SessionOptions::default())
}

fn text_boxes_with(weights: Weights, options: SessionOptions) -> Vec<BBox> {
    let img = load_rgb("page.png").expect("decoding page.png");
    let db_options = db::DbOptions::default();
    let (input, resize) = db::preprocess(&img, &db_options);
    let pith = pith(PPOCR, weights);
    let name = input_names(&pith).remove(0);
    let mut s = session_with(PPOCR, weights, options);
    let out = s.run(&[(name.as_str(), input)]).expect("running PP-OCR");
    db::decode(&out[0].1, &resize, &db_options)
        .expect("decoding text boxes")
        .iter()
        .map(|b| b.aabb())
        .collect()
}

#[test]
fn ppocr_8bit_finds_the_same_text_boxes() {
    let reference = text_boxes(Weights::F32);
    let quantized = text_boxes(Weights::Bits(8));
    eprintln!("text boxes: {} with f32, {} with 8-bit", reference.len(), quantized.len());
    assert!(!reference.is_empty(), "the f32 model finds no text on the page");
    if let Err(e) = match_boxes(&reference, &quantized) {
        panic!("8-bit text boxes differ from f32 text boxes: {e}");
    }
}

/// 4-bit codebooks are reported, not asserted: the known result is that PP-OCR degrades badly.
#[test]
fn four_bit_report() {
    for (model, golden) in [(BLAZEFACE, "blazeface"), (PPOCR, "ppocr")] {
        for (name, cos) in cosines(&run_golden(model, Weights::Bits(4), golden), golden) {
            eprintln!("4-bit {model} on {golden}: output '{name}' cosine {cos:.6}");
        }
    }
    let faces = faces(Weights::Bits(4));
    eprintln!("4-bit BlazeFace: {} face(s) on the portrait", faces.len());
}

/// Minimum output cosine (against onnxruntime fp32) with int8 activations in the 1×1 layers and
/// f32 weights (measured on Zen 4 / AVX-512 VNNI: BlazeFace 0.9916-0.9987, PP-OCRv4 det 0.9976).
const COS_INT8_BLAZEFACE: f64 = 0.99;
const COS_INT8_PPOCR: f64 = 0.995;
/// The same with 8-bit codebook weights on PP-OCRv4 det (measured 0.9926; 0.9996 without int8).
const COS_INT8_PPOCR_8BIT: f64 = 0.99;
/// Minimum output cosine (against onnxruntime fp32) with bf16 products in the 1×1 layers and f32
/// weights (measured on Zen 5: BlazeFace 0.999961-0.999994, PP-OCRv4 det 0.999942).
const COS_BF16: f64 = 0.9999;

#[test]
fn blazeface_int8_activations_keep_the_faces() {
    let Some(options) = int8_options(2) else { return };
    for golden in ["blazeface", "blazeface_camera"] {
        assert_cosine_with(BLAZEFACE, Weights::F32, golden, options, COS_INT8_BLAZEFACE);
    }
    // 4-bit weights lose more to their codebooks than to 8-bit activations: only the faces count.
    for weights in [Weights::F32, Weights::Bits(4)] {
        let (reference, int8) = (faces(weights), faces_with(weights, options));
        eprintln!("faces {weights:?}: {reference:?}\nwith int8 activations: {int8:?}");
        assert!(!reference.is_empty(), "no face on the portrait");
        let boxes = |f: &[blazeface::Face]| f.iter().map(|f| f.bbox).collect::<Vec<_>>();
        if let Err(e) = match_boxes(&boxes(&reference), &boxes(&int8)) {
            panic!("{weights:?}: int8 activations change the faces: {e}");
        }
    }
}

#[test]
fn bf16_products_keep_the_faces_and_the_text_boxes() {
    // Onnxruntime's f32 outputs on the bundled images, and the detections of the f32 session,
    // from sessions whose 1×1 layers multiply in bf16 (1 and 2 threads).
    for threads in [1, 2] {
        let Some(options) = bf16_options(threads) else { return };
        for golden in ["blazeface", "blazeface_camera"] {
            assert_cosine_with(BLAZEFACE, Weights::F32, golden, options, COS_BF16);
        }
        assert_cosine_with(PPOCR, Weights::F32, "ppocr", options, COS_BF16);
        for weights in [Weights::F32, Weights::Bits(4)] {
            let (reference, bf16) = (faces(weights), faces_with(weights, options));
            assert!(!reference.is_empty(), "no face on the portrait");
            let boxes = |f: &[blazeface::Face]| f.iter().map(|f| f.bbox).collect::<Vec<_>>();
            if let Err(e) = match_boxes(&boxes(&reference), &boxes(&bf16)) {
                panic!("{weights:?}, {threads} threads: bf16 products change the faces: {e}");
            }
        }
        let (reference, bf16) = (text_boxes(Weights::Bits(8)), text_boxes_with(Weights::Bits(8), options));
        assert!(!reference.is_empty(), "no text on the page");
        if let Err(e) = match_boxes(&reference, &bf16) {
            panic!("{threads} threads: bf16 products change the text boxes: {e}");
        }
    }
}

#[test]
fn bf16_products_are_refused_with_int8_activations() {
    let options = SessionOptions { int8_activations: true, bf16_products: true, ..Default::default() };
    let Err(err) = Session::new(pith(BLAZEFACE, Weights::F32), options) else {
        panic!("a session took int8 activations and bf16 products at once");
    };
    assert!(err.to_string().contains("choose one"), "{err}");
}

#[test]
fn ppocr_int8_activations_keep_the_text_boxes() {
    let Some(options) = int8_options(2) else { return };
    for (weights, min) in [(Weights::F32, COS_INT8_PPOCR), (Weights::Bits(8), COS_INT8_PPOCR_8BIT)] {
        assert_cosine_with(PPOCR, weights, "ppocr", options, min);
        let (reference, int8) = (text_boxes(weights), text_boxes_with(weights, options));
        eprintln!(
            "text boxes {weights:?}: {} without, {} with int8 activations",
            reference.len(),
            int8.len()
        );
        assert!(!reference.is_empty(), "no text on the page");
        if let Err(e) = match_boxes(&reference, &int8) {
            panic!("{weights:?}: int8 activations change the text boxes: {e}");
        }
    }
}
