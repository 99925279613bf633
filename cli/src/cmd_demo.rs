//! `pith demo`: compress the bundled detectors, run them on the bundled images, print and draw the
//! results; then read the text boxes with the bundled recognizer at 8 bits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use pith_compress::WeightFormat;
use pith_runtime::session::{Session, SessionOptions};
use pith_runtime::tasks::blazeface::FaceOptions;
use pith_runtime::tasks::db::{DbOptions, TextBox};
use pith_runtime::tasks::draw;
use pith_runtime::tasks::geometry::BBox;
use pith_runtime::tasks::image::RgbImage;

use crate::cmd_compress::{compress_auto_file, compress_file, human_bytes, Preprocess, DEFAULT_MIN_FIDELITY};
use crate::cmd_detect::model_charset;
use crate::{imageio, pipeline};

/// Where the bundled models and images live in a source checkout.
pub fn default_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data")
}

/// One compression setting the demo shows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Setting {
    /// One weight format for every layer.
    Fixed(WeightFormat),
    /// `--bits auto` on the model's calibration images (`calib/<model>/`), checked by the task.
    Auto,
}

const SETTINGS: [Setting; 4] = [
    Setting::Fixed(WeightFormat::F32),
    Setting::Fixed(WeightFormat::Codebook { bits: 8 }),
    Setting::Fixed(WeightFormat::Codebook { bits: 4 }),
    Setting::Auto,
];

fn label(s: Setting) -> String {
    match s {
        Setting::Fixed(WeightFormat::F32) => "f32".into(),
        Setting::Fixed(WeightFormat::F16) => "f16".into(),
        Setting::Fixed(WeightFormat::Codebook { bits }) => format!("{bits}bit"),
        Setting::Auto => "auto".into(),
    }
}

/// How the demo compresses one model with [`Setting::Auto`].
struct AutoCalib<'a> {
    /// Calibration images (never the demo's test image).
    dir: &'a Path,
    preprocess: Preprocess,
    /// IoU every calibration detection must keep (above 0.9: a margin for unseen images).
    min_iou: f32,
}

/// Compresses `onnx` with each setting, writes the files, prints sizes, and returns sessions in the same order.
fn compress_all(
    onnx: &Path,
    stem: &str,
    auto: &AutoCalib<'_>,
    out_dir: &Path,
    threads: usize,
) -> Result<Vec<Session>> {
    let onnx_len =
        std::fs::metadata(onnx).with_context(|| format!("reading {}", onnx.display()))?.len() as usize;
    println!("{stem}: ONNX {}", human_bytes(onnx_len));
    let mut sessions = Vec::new();
    for w in SETTINGS {
        let start = Instant::now();
        let (_, bytes) = match w {
            Setting::Fixed(format) => compress_file(onnx, format, true)?,
            Setting::Auto => compress_auto_file(onnx, auto.dir, auto.preprocess, auto.min_iou)?,
        };
        let path = out_dir.join(format!("{stem}_{}.pith", label(w)));
        std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "  {:>5}: {:>10} ({:5.2}x smaller), compressed in {:.2} s -> {}",
            label(w),
            human_bytes(bytes.len()),
            onnx_len as f64 / bytes.len() as f64,
            start.elapsed().as_secs_f64(),
            path.display()
        );
        let file = pith_format::PithFile::open(&path)?;
        sessions.push(Session::new(Arc::new(file), SessionOptions { threads, ..Default::default() })?);
    }
    Ok(sessions)
}

/// How many boxes of `found` match one of `reference` at IoU >= 0.9, as "m/n".
fn agreement(found: &[BBox], reference: &[BBox]) -> String {
    let matched = found.iter().filter(|b| reference.iter().any(|r| b.iou(r) >= 0.9)).count();
    format!(
        "{matched} of {} boxes match the f32 result at IoU >= 0.9 (f32 found {})",
        found.len(),
        reference.len()
    )
}

/// Runs the demo.
pub fn run(data_dir: &Path, out_dir: &Path, threads: usize) -> Result<()> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    println!("== Face detection (BlazeFace short range) ==");
    let calib = data_dir.join("calib/blazeface");
    let auto = AutoCalib { dir: &calib, preprocess: Preprocess::Blazeface, min_iou: 0.9 };
    let mut sessions = compress_all(
        &data_dir.join("models/blazeface_short_range.onnx"),
        "blazeface",
        &auto,
        out_dir,
        threads,
    )?;
    let portrait_path = data_dir.join("images/astronaut.png");
    let portrait = imageio::load(&portrait_path)?;
    let mut reference = Vec::new();
    for (w, session) in SETTINGS.iter().zip(sessions.iter_mut()) {
        let faces = pipeline::detect_faces(session, &portrait, &FaceOptions::default())?;
        let boxes: Vec<BBox> = faces.iter().map(|f| f.bbox).collect();
        println!("{} weights, {} face(s) in {}:", label(*w), faces.len(), portrait_path.display());
        println!("{}", serde_json::to_string(&pipeline::faces_json(&faces))?);
        if *w == Setting::Fixed(WeightFormat::F32) {
            reference = boxes;
        } else {
            println!("  {}", agreement(&boxes, &reference));
            let mut img = portrait.clone();
            draw::draw_faces(&mut img, &faces);
            let path = out_dir.join(format!("faces_{}.png", label(*w)));
            imageio::save_png(&path, &img)?;
            println!("  annotated: {}", path.display());
        }
    }

    println!("\n== Text detection (PP-OCRv4 det) ==");
    let calib = data_dir.join("calib/ppocr");
    let auto = AutoCalib { dir: &calib, preprocess: Preprocess::PpocrDet, min_iou: 0.9 };
    let mut sessions =
        compress_all(&data_dir.join("models/ppocr_v4_det.onnx"), "ppocr_det", &auto, out_dir, threads)?;
    let page_path = data_dir.join("images/page.png");
    let page = imageio::load(&page_path)?;
    let mut auto_boxes = Vec::new();
    for (w, session) in SETTINGS.iter().zip(sessions.iter_mut()) {
        let boxes = pipeline::detect_text(session, &page, &DbOptions::default())?;
        if *w == Setting::Auto {
            auto_boxes = boxes.clone();
        }
        let aabbs: Vec<BBox> = boxes.iter().map(|b| b.aabb()).collect();
        println!("{} weights, {} text box(es) in {}:", label(*w), boxes.len(), page_path.display());
        println!("{}", serde_json::to_string(&pipeline::text_json(&boxes, None))?);
        if *w == Setting::Fixed(WeightFormat::F32) {
            reference = aabbs;
        } else {
            println!("  {}", agreement(&aabbs, &reference));
            let mut img = page.clone();
            draw::draw_text_boxes(&mut img, &boxes);
            let path = out_dir.join(format!("text_{}.png", label(*w)));
            imageio::save_png(&path, &img)?;
            println!("  annotated: {}", path.display());
        }
    }
    read_boxes(data_dir, out_dir, threads, &page, &auto_boxes)?;
    println!(
        "\nNote: plain 4-bit k-means damages PP-OCRv4 det; `auto` picks each layer's width on the \
         calibration images in {} (not the test images) under an output-cosine floor of {} and the \
         same detections.",
        data_dir.join("calib").display(),
        DEFAULT_MIN_FIDELITY
    );
    Ok(())
}

/// Reads the `auto` detector's text boxes with PP-OCRv3 rec at plain 8 bits (its `auto` search
/// takes a minute and a half; `--preprocess ppocr-rec` in the README).
fn read_boxes(
    data_dir: &Path,
    out_dir: &Path,
    threads: usize,
    page: &RgbImage,
    boxes: &[TextBox],
) -> Result<()> {
    println!("\n== Text recognition (PP-OCRv3 rec, 8-bit weights) of the `auto` detector's boxes ==");
    let onnx = data_dir.join("models/ppocr_v3_rec.onnx");
    let start = Instant::now();
    let (_, bytes) = compress_file(&onnx, WeightFormat::Codebook { bits: 8 }, true)?;
    let path = out_dir.join("ppocr_rec_8bit.pith");
    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "ppocr_rec: {} ({:.2}x smaller than ONNX), compressed in {:.2} s -> {}",
        human_bytes(bytes.len()),
        std::fs::metadata(&onnx)?.len() as f64 / bytes.len() as f64,
        start.elapsed().as_secs_f64(),
        path.display()
    );
    let file = Arc::new(pith_format::PithFile::open(&path)?);
    let mut session = Session::new(Arc::clone(&file), SessionOptions { threads, ..Default::default() })?;
    // PaddleOCR's ONNX recognizer carries its character set as metadata; the .pith file keeps it.
    let charset = model_charset(&file, &path)?;
    for (b, r) in boxes.iter().zip(pipeline::read_text(&mut session, page, boxes, &charset)?) {
        let [x, y] = b.points[0];
        println!("  ({x:>5.1}, {y:>5.1})  {:?}  confidence {:.3}", r.text, r.confidence);
    }
    Ok(())
}
