//! Generic image-to-tensor preprocessing for models without a bundled task: resize (stretched or
//! letterboxed), per-channel normalisation, channel order and tensor layout, as an app would do
//! with OpenCV or TFLite Support's `ImageProcessor` before calling a custom model.
//!
//! Resampling is bilinear with half-pixel centres and rounds to 8 bits, as `cv2.resize` does on
//! a `uint8` image; a value is then `(pixel / 255 - mean[c]) / std[c]`.

use super::image::{check_size, resize_bilinear, RgbImage};
use super::TaskError;
use crate::tensor::Tensor;

/// Largest tensor [`ImagePreprocess`] builds, in elements (a 4096 × 4096 RGB image, 192 MiB of
/// f32), so a typo in a size cannot ask for gigabytes.
pub const MAX_ELEMENTS: usize = 3 << 24;

/// How an image of another aspect ratio is fitted to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fit {
    /// Scale each axis independently to fill the input.
    #[default]
    Stretch,
    /// Scale by one factor so the whole image fits, centred; the border takes the pad value.
    Letterbox,
}

/// Memory order of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// `1 × C × H × W` (ONNX's usual image layout).
    #[default]
    Nchw,
    /// `1 × H × W × C` (TensorFlow's).
    Nhwc,
}

/// Which colour values the tensor's channels hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Channels {
    /// Red, green, blue.
    #[default]
    Rgb,
    /// Blue, green, red (OpenCV's order).
    Bgr,
    /// One channel: luma `0.299 R + 0.587 G + 0.114 B` (ITU-R BT.601).
    Gray,
}

impl Channels {
    /// Channels in the tensor.
    pub fn count(self) -> usize {
        match self {
            Channels::Rgb | Channels::Bgr => 3,
            Channels::Gray => 1,
        }
    }
}

/// An image-to-tensor recipe: `1 × C × height × width` (or NHWC) f32.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePreprocess {
    /// Input width in pixels.
    pub width: usize,
    /// Input height in pixels.
    pub height: usize,
    /// How other aspect ratios are fitted.
    pub fit: Fit,
    /// Pixel value (0-255, every channel) of a letterbox's border.
    pub pad: u8,
    /// Per-channel mean on the 0-1 scale, in tensor channel order (one value used for gray).
    pub mean: [f32; 3],
    /// Per-channel standard deviation on the 0-1 scale, in tensor channel order.
    pub std: [f32; 3],
    /// Tensor layout.
    pub layout: Layout,
    /// Channel order or gray.
    pub channels: Channels,
}

impl ImagePreprocess {
    /// A stretch-to-size recipe with values in [0, 1], RGB, NCHW.
    pub fn new(width: usize, height: usize) -> ImagePreprocess {
        ImagePreprocess {
            width,
            height,
            fit: Fit::Stretch,
            pad: 0,
            mean: [0.0; 3],
            std: [1.0; 3],
            layout: Layout::Nchw,
            channels: Channels::Rgb,
        }
    }

    /// Checks the recipe: a non-empty size within [`MAX_ELEMENTS`], finite means and finite
    /// non-zero standard deviations.
    pub fn validate(&self) -> Result<(), TaskError> {
        let bad = |reason: String| Err(TaskError::Preprocess { reason });
        let c = self.channels.count();
        let elements = self.width.checked_mul(self.height).and_then(|n| n.checked_mul(c));
        if self.width == 0 || self.height == 0 {
            return bad(format!("input size {}x{} is empty", self.width, self.height));
        }
        if elements.is_none_or(|n| n > MAX_ELEMENTS) {
            return bad(format!("input size {}x{} is too large", self.width, self.height));
        }
        for (i, (&m, &s)) in self.mean.iter().zip(&self.std).take(c).enumerate() {
            if !m.is_finite() {
                return bad(format!("mean of channel {i} is not finite"));
            }
            if !s.is_finite() || s == 0.0 {
                return bad(format!("std of channel {i} is {s}: it must be finite and non-zero"));
            }
        }
        Ok(())
    }

    /// The tensor's shape.
    pub fn shape(&self) -> Vec<usize> {
        let (c, h, w) = (self.channels.count(), self.height, self.width);
        match self.layout {
            Layout::Nchw => vec![1, c, h, w],
            Layout::Nhwc => vec![1, h, w, c],
        }
    }

    /// Resizes, normalises and lays out `img`.
    pub fn apply(&self, img: &RgbImage) -> Result<Tensor, TaskError> {
        self.validate()?;
        check_size(img.width, img.height, 3, img.pixels.len())?;
        let fitted = self.fit_image(img);
        let c = self.channels.count();
        let plane = self.width * self.height;
        let mut data = vec![0.0f32; plane * c];
        for (i, px) in fitted.pixels.chunks_exact(3).enumerate() {
            let values = match self.channels {
                Channels::Rgb => [px[0] as f32, px[1] as f32, px[2] as f32],
                Channels::Bgr => [px[2] as f32, px[1] as f32, px[0] as f32],
                Channels::Gray => {
                    [0.299 * px[0] as f32 + 0.587 * px[1] as f32 + 0.114 * px[2] as f32, 0.0, 0.0]
                }
            };
            for (ch, &v) in values.iter().enumerate().take(c) {
                let x = (v / 255.0 - self.mean[ch]) / self.std[ch];
                match self.layout {
                    Layout::Nchw => data[ch * plane + i] = x,
                    Layout::Nhwc => data[i * c + ch] = x,
                }
            }
        }
        Ok(Tensor::from_f32(self.shape(), data))
    }

    /// `img` resized to the input size: stretched, or scaled to fit and centred on a border of
    /// the pad value.
    fn fit_image(&self, img: &RgbImage) -> RgbImage {
        let (w, h) = (self.width, self.height);
        match self.fit {
            Fit::Stretch => resize_bilinear(img, w, h),
            Fit::Letterbox => {
                let scale = (w as f64 / img.width as f64).min(h as f64 / img.height as f64);
                let inner_w = ((img.width as f64 * scale).round() as usize).clamp(1, w);
                let inner_h = ((img.height as f64 * scale).round() as usize).clamp(1, h);
                let inner = resize_bilinear(img, inner_w, inner_h);
                let (left, top) = ((w - inner_w) / 2, (h - inner_h) / 2);
                let mut out = RgbImage { width: w, height: h, pixels: vec![self.pad; w * h * 3] };
                for y in 0..inner_h {
                    let src = &inner.pixels[y * inner_w * 3..(y + 1) * inner_w * 3];
                    let start = ((top + y) * w + left) * 3;
                    out.pixels[start..start + inner_w * 3].copy_from_slice(src);
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(width: usize, height: usize, f: impl Fn(usize, usize) -> [u8; 3]) -> RgbImage {
        let mut img = RgbImage::black(width, height);
        for y in 0..height {
            for x in 0..width {
                img.put(x as i64, y as i64, f(x, y));
            }
        }
        img
    }

    #[test]
    fn same_size_stretch_normalises_each_channel_in_nchw() {
        let img = image(3, 2, |x, y| [(10 * x) as u8, (100 + y) as u8, 255]);
        let mut p = ImagePreprocess::new(3, 2);
        p.mean = [0.5, 0.0, 1.0];
        p.std = [0.5, 2.0, 1.0];
        let t = p.apply(&img).unwrap();
        assert_eq!(t.shape, vec![1, 3, 2, 3]);
        let d = t.as_f32().unwrap();
        // Channel 0, pixel (2, 1): (20 / 255 - 0.5) / 0.5.
        assert_eq!(d[5], (20.0 / 255.0 - 0.5) / 0.5);
        // Channel 1, pixel (0, 1): (101 / 255) / 2.
        assert_eq!(d[6 + 3], (101.0 / 255.0) / 2.0);
        // Channel 2: 255 / 255 - 1 = 0 everywhere.
        assert!(d[12..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn nhwc_interleaves_and_bgr_swaps_channels() {
        let img = image(2, 1, |x, _| [1 + x as u8, 50, 200]);
        let mut p = ImagePreprocess::new(2, 1);
        p.layout = Layout::Nhwc;
        p.channels = Channels::Bgr;
        p.std = [1.0 / 255.0; 3];
        let t = p.apply(&img).unwrap();
        assert_eq!(t.shape, vec![1, 1, 2, 3]);
        let d: Vec<f32> = t.as_f32().unwrap().iter().map(|v| v.round()).collect();
        assert_eq!(d, vec![200.0, 50.0, 1.0, 200.0, 50.0, 2.0]);
    }

    #[test]
    fn gray_takes_luma_with_one_channels_statistics() {
        let img = image(1, 1, |_, _| [255, 0, 0]);
        let mut p = ImagePreprocess::new(1, 1);
        p.channels = Channels::Gray;
        p.mean = [0.1, 9.0, 9.0];
        let t = p.apply(&img).unwrap();
        assert_eq!(t.shape, vec![1, 1, 1, 1]);
        let v = t.as_f32().unwrap()[0];
        assert!((v - (0.299 - 0.1)).abs() < 1e-6, "{v}");
    }

    #[test]
    fn letterbox_centres_the_image_on_the_pad_value() {
        // A 4x2 white image into 4x4: rows 1 and 2 white, rows 0 and 3 the pad.
        let img = image(4, 2, |_, _| [255; 3]);
        let mut p = ImagePreprocess::new(4, 4);
        p.fit = Fit::Letterbox;
        p.pad = 51;
        let d = p.apply(&img).unwrap().as_f32().unwrap().to_vec();
        for ch in 0..3 {
            for y in 0..4 {
                let want = if y == 1 || y == 2 { 1.0 } else { 0.2 };
                for x in 0..4 {
                    assert_eq!(d[ch * 16 + y * 4 + x], want, "c{ch} ({x},{y})");
                }
            }
        }
        // A tall image is padded left and right instead.
        let tall = image(1, 4, |_, _| [255; 3]);
        p.width = 3;
        p.height = 4;
        let d = p.apply(&tall).unwrap().as_f32().unwrap().to_vec();
        assert_eq!(&d[..3], &[0.2, 1.0, 0.2]);
    }

    #[test]
    fn stretch_resizes_as_resize_bilinear() {
        let img = image(5, 3, |x, y| [(x * 40) as u8, (y * 90) as u8, (x * y * 10) as u8]);
        let p = ImagePreprocess::new(8, 6);
        let d = p.apply(&img).unwrap().as_f32().unwrap().to_vec();
        let r = resize_bilinear(&img, 8, 6);
        for (i, px) in r.pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                assert_eq!(d[c * 48 + i], px[c] as f32 / 255.0);
            }
        }
    }

    /// A photo-like test image: smooth gradients plus a few hard edges.
    fn scene(width: usize, height: usize) -> RgbImage {
        image(width, height, |x, y| {
            let edge = if (x / 7 + y / 5) % 3 == 0 { 60 } else { 0 };
            [(x * 255 / width) as u8, (y * 255 / height) as u8, ((x + 2 * y) % 190) as u8 + edge]
        })
    }

    #[test]
    fn stretch_with_imagenet_statistics_is_the_ppocr_preset_bit_for_bit() {
        let img = scene(157, 71);
        let (want, resize) = super::super::db::preprocess(&img, &super::super::db::DbOptions::default());
        let mut p = ImagePreprocess::new(resize.width, resize.height);
        p.mean = super::super::db::MEAN;
        p.std = super::super::db::STD;
        assert_eq!(p.apply(&img).unwrap(), want);
    }

    #[test]
    fn letterbox_to_128_with_half_statistics_is_close_to_the_blazeface_preset() {
        // The preset samples the photo straight into the letterbox in f32; the recipe resizes
        // to 8 bits first (as cv2.resize), so values differ by rounding and the inner size's
        // (a smooth image, so the grids' offsets move values little).
        for (w, h) in [(300, 200), (90, 160), (128, 128)] {
            // No content pixel is black, so -1 marks the border only.
            let img = image(w, h, |x, y| {
                [(10 + x * 240 / w) as u8, (10 + y * 240 / h) as u8, (10 + (x + y) * 100 / (w + h)) as u8]
            });
            let (want, _) =
                super::super::blazeface::preprocess(&img, super::super::blazeface::FaceModel::ShortRange);
            let mut p = ImagePreprocess::new(128, 128);
            p.fit = Fit::Letterbox;
            p.mean = [0.5; 3];
            p.std = [0.5; 3];
            let got = p.apply(&img).unwrap();
            assert_eq!(got.shape, want.shape);
            let (g, e) = (got.as_f32().unwrap(), want.as_f32().unwrap());
            let mean_abs = g.iter().zip(e).map(|(a, b)| (a - b).abs()).sum::<f32>() / g.len() as f32;
            let pad_agrees = g.iter().zip(e).filter(|(a, b)| (**a == -1.0) == (**b == -1.0)).count();
            assert!(mean_abs < 0.02, "{w}x{h}: mean |difference| {mean_abs}");
            assert!(
                pad_agrees as f32 >= 0.99 * g.len() as f32,
                "{w}x{h}: border placed differently: {pad_agrees} of {}",
                g.len()
            );
        }
    }

    #[test]
    fn bad_recipes_and_images_are_named_errors() {
        let img = image(2, 2, |_, _| [0; 3]);
        let mut p = ImagePreprocess::new(0, 4);
        assert!(matches!(p.apply(&img), Err(TaskError::Preprocess { reason }) if reason.contains("empty")));
        p = ImagePreprocess::new(1 << 20, 1 << 20);
        assert!(
            matches!(p.apply(&img), Err(TaskError::Preprocess { reason }) if reason.contains("too large"))
        );
        p = ImagePreprocess::new(2, 2);
        p.std[1] = 0.0;
        assert!(
            matches!(p.apply(&img), Err(TaskError::Preprocess { reason }) if reason.contains("channel 1"))
        );
        p.std[1] = 1.0;
        p.mean[2] = f32::NAN;
        assert!(matches!(p.apply(&img), Err(TaskError::Preprocess { reason }) if reason.contains("mean")));
        // Gray reads only the first channel's statistics.
        p.channels = Channels::Gray;
        assert!(p.apply(&img).is_ok());
        let malformed = RgbImage { width: 2, height: 2, pixels: vec![0; 5] };
        assert!(matches!(p.apply(&malformed), Err(TaskError::ImageSize { expected: 12, got: 5, .. })));
    }
}
