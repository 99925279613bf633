//! Glue from an image to task results: preprocess, run the session, post-process.

use anyhow::{bail, Context, Result};
use pith_runtime::session::Session;
use pith_runtime::tasks::blazeface::{self, Face, FaceModel, FaceOptions};
use pith_runtime::tasks::ctc::{self, Charset, Reading, RecOptions};
use pith_runtime::tasks::db::{self, DbOptions, TextBox};
use pith_runtime::tasks::image::RgbImage;
use pith_runtime::Tensor;
use serde_json::{json, Value};

/// Runs a single-input model on one tensor and returns its outputs.
fn run_single(session: &mut Session, input: Tensor) -> Result<Vec<(String, Tensor)>> {
    let inputs = session.inputs();
    if inputs.len() != 1 {
        bail!("expected a model with one input, this one has {}", inputs.len());
    }
    let name = inputs[0].name.clone();
    Ok(session.run(&[(name.as_str(), input)])?)
}

/// Detects faces with a BlazeFace model (short range, full range or back camera, told apart by
/// the input's declared size).
pub fn detect_faces(session: &mut Session, img: &RgbImage, opts: &FaceOptions) -> Result<Vec<Face>> {
    let model = face_model(session)?;
    let (input, letterbox) = blazeface::preprocess(img, model);
    let outputs = run_single(session, input)?;
    // Regressors carry 16 values per anchor, scores 1: tell them apart by shape, not by name,
    // so converted models with other output names work too.
    let by_last_dim = |n: usize| {
        outputs.iter().find(|(_, t)| t.shape.last() == Some(&n)).map(|(_, t)| t).with_context(|| {
            format!("model has no output with last dimension {n}; is this a BlazeFace model?")
        })
    };
    let faces = blazeface::decode(model, by_last_dim(16)?, by_last_dim(1)?, &letterbox, opts)?;
    Ok(faces)
}

/// The BlazeFace model a session's single input declares (1x3xSxS).
pub fn face_model(session: &Session) -> Result<FaceModel> {
    let inputs = session.inputs();
    let shape = match inputs.as_slice() {
        [input] => input.shape.as_deref().unwrap_or(&[]).iter().map(|d| d.extent()).collect::<Vec<_>>(),
        _ => bail!("expected a model with one input, this one has {}", inputs.len()),
    };
    Ok(FaceModel::for_input(&shape)?)
}

/// Detects text boxes with a DB text detector (PP-OCR det).
pub fn detect_text(session: &mut Session, img: &RgbImage, opts: &DbOptions) -> Result<Vec<TextBox>> {
    let (input, resize) = db::preprocess(img, opts);
    let outputs = run_single(session, input)?;
    let (_, prob) = outputs.first().context("model has no output")?;
    Ok(db::decode(prob, &resize, opts)?)
}

/// Reads the text of each box with a CTC recognizer (PP-OCR rec): the box is cut out and
/// straightened, scaled to the recognizer's input and decoded greedily through `charset`.
pub fn read_text(
    session: &mut Session,
    img: &RgbImage,
    boxes: &[TextBox],
    charset: &Charset,
) -> Result<Vec<Reading>> {
    boxes
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let line = ctc::crop_line(img, &b.points).with_context(|| format!("text box {i}"))?;
            let outputs = run_single(session, ctc::preprocess(&line, &RecOptions::default())?)?;
            let (_, probs) = outputs.first().context("recognizer has no output")?;
            ctc::decode(probs, Some(charset)).with_context(|| format!("reading text box {i}"))
        })
        .collect()
}

/// Rounds to `decimals` places for compact JSON.
fn round(v: f32, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (v as f64 * scale).round() / scale
}

fn round2(v: f32) -> f64 {
    round(v, 2)
}

/// Faces as JSON.
pub fn faces_json(faces: &[Face]) -> Value {
    Value::Array(
        faces
            .iter()
            .map(|f| {
                json!({
                    "bbox": [round2(f.bbox.xmin), round2(f.bbox.ymin), round2(f.bbox.xmax), round2(f.bbox.ymax)],
                    "score": round(f.score, 4),
                    "keypoints": f.keypoints.iter().map(|p| [round2(p[0]), round2(p[1])]).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}

/// Text boxes as JSON, each with its text and the recognizer's confidence when `readings`
/// holds one per box.
pub fn text_json(boxes: &[TextBox], readings: Option<&[Reading]>) -> Value {
    Value::Array(
        boxes
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut v = json!({
                    "points": b.points.iter().map(|p| [round2(p[0]), round2(p[1])]).collect::<Vec<_>>(),
                    "score": round(b.score, 4),
                });
                if let Some(r) = readings.and_then(|r| r.get(i)) {
                    v["text"] = json!(r.text);
                    v["text_confidence"] = json!(round(r.confidence, 4));
                }
                v
            })
            .collect(),
    )
}
