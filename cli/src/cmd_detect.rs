//! `pith detect faces|text`: task post-processing on a real image, JSON on stdout; text boxes
//! optionally read by a recognizer (`--rec`, its character set from the model or `--charset`).

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use pith_format::PithFile;
use pith_runtime::session::SessionOptions;
use pith_runtime::tasks::blazeface::FaceOptions;
use pith_runtime::tasks::ctc::Charset;
use pith_runtime::tasks::db::DbOptions;
use pith_runtime::tasks::draw;

use crate::{cmd_run, imageio, pipeline};

/// The detection task to run.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Task {
    /// BlazeFace face detection (short range, full range or back camera, by the input size).
    Faces,
    /// DB (PP-OCR det) text detection.
    Text,
}

/// Runs the command; `reader` is the recognizer and, if given, its character set file.
pub fn run(
    task: Task,
    model: &Path,
    image: &Path,
    out: Option<&Path>,
    reader: Option<(&Path, Option<&Path>)>,
    options: SessionOptions,
) -> Result<()> {
    let mut img = imageio::load(image)?;
    let mut session = cmd_run::open_session(model, options)?;
    let json = match task {
        Task::Faces if reader.is_some() => bail!("--rec reads text boxes: use it with `pith detect text`"),
        Task::Faces => {
            let faces = pipeline::detect_faces(&mut session, &img, &FaceOptions::default())?;
            draw::draw_faces(&mut img, &faces);
            serde_json::json!({ "image": image.display().to_string(), "faces": pipeline::faces_json(&faces) })
        }
        Task::Text => {
            let boxes = pipeline::detect_text(&mut session, &img, &DbOptions::default())?;
            let readings = match reader {
                Some((rec, charset)) => {
                    let mut rec_session = cmd_run::open_session(rec, options)?;
                    let charset = match charset {
                        Some(path) => load_charset(path)?,
                        None => model_charset(rec_session.model(), rec)?,
                    };
                    Some(pipeline::read_text(&mut rec_session, &img, &boxes, &charset)?)
                }
                None => None,
            };
            draw::draw_text_boxes(&mut img, &boxes);
            let boxes = pipeline::text_json(&boxes, readings.as_deref());
            serde_json::json!({ "image": image.display().to_string(), "text_boxes": boxes })
        }
    };
    // writeln! rather than println!: a closed pipe (`pith detect .. | head`) is an error the
    // caller handles quietly, not a panic.
    writeln!(std::io::stdout().lock(), "{}", serde_json::to_string_pretty(&json)?)?;
    if let Some(out) = out {
        imageio::save_png(out, &img)?;
        eprintln!("annotated image written to {}", out.display());
    }
    Ok(())
}

/// The property under which PaddleOCR's recognizers carry their character set (one character per
/// line), kept from the ONNX metadata by `pith compress`.
pub const CHARSET_PROP: &str = "character";

/// The character set a recognizer carries in its [`CHARSET_PROP`] property.
pub fn model_charset(model: &PithFile, path: &Path) -> Result<Charset> {
    match model.prop(CHARSET_PROP) {
        Some(text) => Ok(Charset::paddle(text, true)),
        None => bail!(
            "the recognizer {} carries no character set (no '{CHARSET_PROP}' property: its ONNX \
             model had none, or an older pith compressed it); pass --charset FILE",
            path.display()
        ),
    }
}

/// Reads a recognizer's character set: UTF-8 text, one character per line.
pub fn load_charset(path: &Path) -> Result<Charset> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!("reading the character set {} (UTF-8 text, one per line)", path.display())
    })?;
    Ok(Charset::paddle(&text, true))
}
