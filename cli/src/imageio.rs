//! Image files in and out of [`RgbImage`], through the `image` crate.

use std::path::Path;

use anyhow::{Context, Result};
use pith_runtime::tasks::image::RgbImage;

/// Decodes a PNG or JPEG file into RGB8.
pub fn load(path: &Path) -> Result<RgbImage> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("opening image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("reading image {}", path.display()))?
        .decode()
        .with_context(|| format!("decoding image {}", path.display()))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    Ok(RgbImage { width: w as usize, height: h as usize, pixels: img.into_raw() })
}

/// Encodes an RGB8 image as PNG.
pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.pixels.clone())
        .context("image buffer does not match its size")?;
    buf.save_with_format(path, image::ImageFormat::Png).with_context(|| format!("writing {}", path.display()))
}
