//! A minimal RGB8 image and bilinear resampling.

use super::TaskError;

/// An 8-bit RGB image, row-major, 3 bytes per pixel, no row padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes, R G B per pixel.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Wraps an RGB8 buffer, checking its length and that the image is not empty.
    pub fn new(width: usize, height: usize, pixels: Vec<u8>) -> Result<RgbImage, TaskError> {
        check_size(width, height, 3, pixels.len())?;
        Ok(RgbImage { width, height, pixels })
    }

    /// Builds an RGB image from an 8-bit greyscale buffer (`width * height` bytes).
    pub fn from_gray(width: usize, height: usize, gray: &[u8]) -> Result<RgbImage, TaskError> {
        check_size(width, height, 1, gray.len())?;
        let pixels = gray.iter().flat_map(|&g| [g, g, g]).collect();
        Ok(RgbImage { width, height, pixels })
    }

    /// A black image.
    pub fn black(width: usize, height: usize) -> RgbImage {
        RgbImage { width, height, pixels: vec![0; width * height * 3] }
    }

    /// The pixel at (`x`, `y`); `None` outside the image.
    pub fn get(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y * self.width + x) * 3;
        let p = self.pixels.get(i..i + 3)?;
        Some([p[0], p[1], p[2]])
    }

    /// Sets the pixel at (`x`, `y`); coordinates outside the image are ignored.
    pub fn put(&mut self, x: i64, y: i64, rgb: [u8; 3]) {
        if x < 0 || y < 0 || x as usize >= self.width || y as usize >= self.height {
            return;
        }
        let i = (y as usize * self.width + x as usize) * 3;
        if let Some(p) = self.pixels.get_mut(i..i + 3) {
            p.copy_from_slice(&rgb);
        }
    }

    /// The part of the image in columns `x0..x1` and rows `y0..y1`, clipped to the image; an
    /// error when nothing of it lies inside (or the buffer is malformed).
    pub fn crop(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> Result<RgbImage, TaskError> {
        check_size(self.width, self.height, 3, self.pixels.len())?;
        let (x1, y1) = (x1.min(self.width), y1.min(self.height));
        if x0 >= x1 || y0 >= y1 {
            return Err(TaskError::EmptyImage {
                width: x1.saturating_sub(x0),
                height: y1.saturating_sub(y0),
            });
        }
        let row = |y: usize| &self.pixels[(y * self.width + x0) * 3..(y * self.width + x1) * 3];
        let pixels = (y0..y1).flat_map(row).copied().collect();
        Ok(RgbImage { width: x1 - x0, height: y1 - y0, pixels })
    }

    /// Bilinear sample at continuous pixel coordinates (pixel centres at integers), clamping
    /// to the edge; returns black for an empty or malformed image.
    pub(crate) fn sample(&self, x: f32, y: f32) -> [f32; 3] {
        if self.width == 0 || self.height == 0 || self.pixels.len() < self.width * self.height * 3 {
            return [0.0; 3];
        }
        let max_x = (self.width - 1) as f32;
        let max_y = (self.height - 1) as f32;
        let x = x.clamp(0.0, max_x);
        let y = y.clamp(0.0, max_y);
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let x1 = (x0 + 1).min(self.width - 1);
        let y1 = (y0 + 1).min(self.height - 1);
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let px = |xx: usize, yy: usize, c: usize| self.pixels[(yy * self.width + xx) * 3 + c] as f32;
        let mut out = [0.0; 3];
        for (c, o) in out.iter_mut().enumerate() {
            let top = px(x0, y0, c) * (1.0 - fx) + px(x1, y0, c) * fx;
            let bottom = px(x0, y1, c) * (1.0 - fx) + px(x1, y1, c) * fx;
            *o = top * (1.0 - fy) + bottom * fy;
        }
        out
    }
}

pub(crate) fn check_size(width: usize, height: usize, channels: usize, got: usize) -> Result<(), TaskError> {
    if width == 0 || height == 0 {
        return Err(TaskError::EmptyImage { width, height });
    }
    let expected = width.checked_mul(height).and_then(|n| n.checked_mul(channels));
    if expected != Some(got) {
        return Err(TaskError::ImageSize {
            width,
            height,
            channels,
            expected: expected.unwrap_or(usize::MAX),
            got,
        });
    }
    Ok(())
}

/// Resizes to `w` x `h` with bilinear interpolation and half-pixel centres (as OpenCV's
/// `INTER_LINEAR`, without anti-aliasing when shrinking).
pub fn resize_bilinear(img: &RgbImage, w: usize, h: usize) -> RgbImage {
    let mut out = RgbImage::black(w, h);
    if w == 0 || h == 0 {
        return out;
    }
    let sx = img.width as f32 / w as f32;
    let sy = img.height as f32 / h as f32;
    for y in 0..h {
        let src_y = (y as f32 + 0.5) * sy - 0.5;
        for x in 0..w {
            let src_x = (x as f32 + 0.5) * sx - 0.5;
            let v = img.sample(src_x, src_y);
            let i = (y * w + x) * 3;
            for (dst, val) in out.pixels[i..i + 3].iter_mut().zip(v) {
                *dst = val.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_length_and_emptiness() {
        assert!(RgbImage::new(2, 2, vec![0; 12]).is_ok());
        assert!(matches!(
            RgbImage::new(2, 2, vec![0; 11]),
            Err(TaskError::ImageSize { expected: 12, got: 11, .. })
        ));
        assert!(matches!(RgbImage::new(0, 2, vec![]), Err(TaskError::EmptyImage { .. })));
        assert!(RgbImage::from_gray(3, 1, &[1, 2]).is_err());
    }

    #[test]
    fn crop_clips_to_the_image_and_refuses_empty_parts() {
        let img = RgbImage::new(3, 2, (0..18).collect()).unwrap();
        let c = img.crop(1, 0, 3, 1).unwrap();
        assert_eq!((c.width, c.height, c.pixels), (2, 1, vec![3, 4, 5, 6, 7, 8]));
        // Clipped at the right and bottom edges.
        let c = img.crop(2, 1, 10, 10).unwrap();
        assert_eq!((c.width, c.height, c.pixels), (1, 1, vec![15, 16, 17]));
        assert!(matches!(img.crop(3, 0, 5, 2), Err(TaskError::EmptyImage { .. })));
        assert!(matches!(img.crop(1, 1, 1, 2), Err(TaskError::EmptyImage { .. })));
        let bad = RgbImage { width: 3, height: 2, pixels: vec![0; 5] };
        assert!(matches!(bad.crop(0, 0, 1, 1), Err(TaskError::ImageSize { .. })));
    }

    #[test]
    fn from_gray_replicates_channels() {
        let img = RgbImage::from_gray(2, 1, &[7, 200]).unwrap();
        assert_eq!(img.pixels, vec![7, 7, 7, 200, 200, 200]);
    }

    #[test]
    fn resize_upscale_interpolates_and_keeps_constant() {
        // 2x1 gradient upscaled to 4x1: half-pixel centres give 0, 0.25, 0.75, 1 of the span.
        let img = RgbImage::from_gray(2, 1, &[0, 200]).unwrap();
        let r = resize_bilinear(&img, 4, 1);
        let g: Vec<u8> = r.pixels.chunks(3).map(|p| p[0]).collect();
        assert_eq!(g, vec![0, 50, 150, 200]);
        let flat = RgbImage::new(3, 3, vec![9; 27]).unwrap();
        assert!(resize_bilinear(&flat, 5, 2).pixels.iter().all(|&v| v == 9));
    }

    #[test]
    fn resize_of_empty_is_black_not_panic() {
        let empty = RgbImage::black(0, 0);
        let r = resize_bilinear(&empty, 2, 2);
        assert_eq!(r.pixels, vec![0; 12]);
    }
}
