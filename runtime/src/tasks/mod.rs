//! Task post-processing: turn raw model outputs into faces and text boxes.
