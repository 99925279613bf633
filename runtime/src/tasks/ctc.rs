//! PP-OCR text-line recognition: PaddleOCR's `get_rotate_crop_image` (a detected box cut out
//! and straightened) and `resize_norm_img` (scaled to 48 pixels high, at least 320 wide,
//! zero-padded on the right) before the model, and `CTCLabelDecode` after it (the best class of
//! every time step, repeats merged, blanks dropped).

use super::image::{check_size, resize_bilinear, RgbImage};
use super::TaskError;
use crate::tensor::Tensor;

/// Index of CTC's blank class (PaddleOCR puts it first).
pub const BLANK: usize = 0;

/// Parameters of the recognizer's input (PaddleOCR PP-OCRv3/v4 defaults: `rec_image_shape`
/// 3×48×320).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecOptions {
    /// Input height in pixels.
    pub height: usize,
    /// Narrowest input: shorter lines are padded to it.
    pub min_width: usize,
    /// Widest input: longer lines are squeezed to it (PaddleOCR has no cap; one keeps a
    /// pathological aspect ratio from asking for a huge tensor).
    pub max_width: usize,
}

impl Default for RecOptions {
    fn default() -> Self {
        RecOptions { height: 48, min_width: 320, max_width: 48 * 40 }
    }
}

impl RecOptions {
    /// The input width for a `width × height` line and the width its pixels take in it (the
    /// rest is padding): the line keeps its aspect ratio at the input height, rounded up as
    /// PaddleOCR's `ceil`.
    pub fn widths(&self, width: usize, height: usize) -> (usize, usize) {
        let scaled = (self.height as f64 * width as f64 / height.max(1) as f64).ceil() as usize;
        let min_width = self.min_width.max(1);
        let input = scaled.clamp(min_width, self.max_width.max(min_width));
        (input, scaled.clamp(1, input))
    }
}

/// The line inside a detected box (corners clockwise from the top-left, as [`super::TextBox`]
/// gives them), straightened into an upright image: as wide as the longer of the box's top and
/// bottom edges and as tall as the longer of its sides, each pixel sampled bilinearly from where
/// it lies in the box (edges clamped), as PaddleOCR's `get_rotate_crop_image`; a crop at least
/// 1.5 times taller than wide is turned a quarter counter-clockwise (vertical text read
/// sideways). An error for a box of less than one pixel or with non-finite corners.
pub fn crop_line(img: &RgbImage, points: &[[f32; 2]; 4]) -> Result<RgbImage, TaskError> {
    check_size(img.width, img.height, 3, img.pixels.len())?;
    let dist = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let [p0, p1, p2, p3] = *points;
    let width = dist(p0, p1).max(dist(p3, p2));
    let height = dist(p0, p3).max(dist(p1, p2));
    let finite = points.iter().flatten().all(|v| v.is_finite());
    let fits = width * height <= super::preprocess::MAX_ELEMENTS as f32;
    if !(finite && fits && width >= 1.0 && height >= 1.0) {
        return Err(TaskError::Preprocess { reason: format!("text box {points:?} is not a line to crop") });
    }
    let (w, h) = (width as usize, height as usize);
    let mut out = RgbImage::black(w, h);
    for y in 0..h {
        let t = y as f32 / h as f32;
        for x in 0..w {
            let s = x as f32 / w as f32;
            // Bilinear in the corners: the perspective map for a rectangle or parallelogram.
            let at = |k: usize| {
                (1.0 - s) * (1.0 - t) * p0[k] + s * (1.0 - t) * p1[k] + s * t * p2[k] + (1.0 - s) * t * p3[k]
            };
            let v = img.sample(at(0), at(1));
            let i = (y * w + x) * 3;
            for (dst, val) in out.pixels[i..i + 3].iter_mut().zip(v) {
                *dst = val.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    if h as f32 >= 1.5 * w as f32 {
        // A quarter turn counter-clockwise: column w-1-x of the crop becomes row x.
        let mut turned = RgbImage::black(h, w);
        for y in 0..h {
            for x in 0..w {
                let (src, dst) = ((y * w + x) * 3, ((w - 1 - x) * h + y) * 3);
                turned.pixels[dst..dst + 3].copy_from_slice(&out.pixels[src..src + 3]);
            }
        }
        out = turned;
    }
    Ok(out)
}

/// A text line's input: `1 × 3 × height × W` NCHW in BGR order (PaddleOCR's recognizers were
/// trained on OpenCV's channel order), values `pixel / 127.5 - 1`, zero past the line's width.
pub fn preprocess(img: &RgbImage, opts: &RecOptions) -> Result<Tensor, TaskError> {
    check_size(img.width, img.height, 3, img.pixels.len())?;
    if opts.height == 0 {
        return Err(TaskError::Preprocess { reason: "recognizer input height is 0".into() });
    }
    let (width, inner) = opts.widths(img.width, img.height);
    if width.checked_mul(opts.height).is_none_or(|n| n > super::preprocess::MAX_ELEMENTS / 3) {
        let reason = format!("recognizer input {width}x{} is too large", opts.height);
        return Err(TaskError::Preprocess { reason });
    }
    let resized = resize_bilinear(img, inner, opts.height);
    let plane = width * opts.height;
    let mut data = vec![0.0f32; 3 * plane];
    for (i, px) in resized.pixels.chunks_exact(3).enumerate() {
        let at = (i / inner) * width + i % inner;
        for (c, &v) in px.iter().rev().enumerate() {
            data[c * plane + at] = v as f32 / 127.5 - 1.0;
        }
    }
    Ok(Tensor::from_f32(vec![1, 3, opts.height, width], data))
}

/// The characters of a CTC head's classes: class 0 is the blank, class `i` the dictionary's
/// entry `i - 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charset {
    symbols: Vec<String>,
}

impl Charset {
    /// PaddleOCR's convention: the blank, one entry per line of `dict` (a final newline adds no
    /// entry; `\r\n` line ends are read as `\n`), then a space when `use_space` (its
    /// `use_space_char`, on for the bundled recognizers).
    pub fn paddle(dict: &str, use_space: bool) -> Charset {
        let mut symbols = vec![String::new()];
        symbols.extend(dict.lines().map(|l| l.strip_suffix('\r').unwrap_or(l).to_string()));
        if use_space {
            symbols.push(" ".to_string());
        }
        Charset { symbols }
    }

    /// Classes including the blank.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Always false: the blank is a class.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The text of class `class`, `None` past the end (the blank is `""`).
    pub fn symbol(&self, class: usize) -> Option<&str> {
        self.symbols.get(class).map(String::as_str)
    }
}

/// A decoded line.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The kept classes, in order (no blanks, no merged repeats).
    pub classes: Vec<usize>,
    /// Their characters joined (empty without a [`Charset`]).
    pub text: String,
    /// Mean probability of the kept classes (0 when none was kept), as PaddleOCR reports.
    pub confidence: f32,
}

/// The best class and its value at each time step of a `[1, T, C]` or `[T, C]` output.
pub fn best_classes(probs: &Tensor) -> Result<Vec<(usize, f32)>, TaskError> {
    let classes = match probs.shape[..] {
        [1, _, c] | [_, c] if c >= 2 => c,
        _ => {
            return Err(TaskError::Shape {
                name: "recognizer probabilities",
                expected: "[1, T, classes] or [T, classes], at least 2 classes".into(),
                got: probs.shape.clone(),
            })
        }
    };
    let data = probs.as_f32().ok_or(TaskError::NotF32 { name: "recognizer probabilities" })?;
    if data.len() != probs.numel() {
        return Err(TaskError::Shape {
            name: "recognizer probabilities",
            expected: format!("{:?} with {} elements", probs.shape, probs.numel()),
            got: vec![data.len()],
        });
    }
    Ok(data
        .chunks_exact(classes)
        .map(|row| {
            // The first maximum, as numpy's argmax; a NaN never wins.
            let first = (0, f32::NEG_INFINITY);
            row.iter().enumerate().fold(first, |best, (c, &v)| if v > best.1 { (c, v) } else { best })
        })
        .collect())
}

/// Greedy CTC decoding of a recognizer's per-step probabilities: the best class per step,
/// repeats merged, blanks dropped, mapped through `charset` when given. A class the charset does
/// not hold is an error (the charset belongs to another model).
pub fn decode(probs: &Tensor, charset: Option<&Charset>) -> Result<Reading, TaskError> {
    let best = best_classes(probs)?;
    if let Some(set) = charset {
        // `best_classes` checked the shape: its last dimension is the class count.
        if probs.shape.last() != Some(&set.len()) {
            return Err(TaskError::Shape {
                name: "recognizer probabilities",
                expected: format!("{} classes (the character set's, blank included)", set.len()),
                got: probs.shape.clone(),
            });
        }
    }
    let mut reading = Reading { classes: Vec::new(), text: String::new(), confidence: 0.0 };
    let mut sum = 0.0f64;
    let mut previous = None;
    for &(class, p) in &best {
        if class != BLANK && previous != Some(class) {
            reading.classes.push(class);
            sum += p as f64;
            if let Some(symbol) = charset.and_then(|s| s.symbol(class)) {
                reading.text.push_str(symbol);
            }
        }
        previous = Some(class);
    }
    if !reading.classes.is_empty() {
        reading.confidence = (sum / reading.classes.len() as f64) as f32;
    }
    Ok(reading)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probs(steps: &[usize], classes: usize) -> Tensor {
        let mut data = vec![0.01f32; steps.len() * classes];
        for (t, &c) in steps.iter().enumerate() {
            data[t * classes + c] = 0.9 - 0.1 * (t % 2) as f32;
        }
        Tensor::from_f32(vec![1, steps.len(), classes], data)
    }

    #[test]
    fn widths_keep_the_aspect_ratio_between_the_bounds() {
        let o = RecOptions::default();
        // 100×20 at 48 high is 240 wide: padded to 320.
        assert_eq!(o.widths(100, 20), (320, 240));
        // 290×26 → ceil(535.38) = 536, no padding.
        assert_eq!(o.widths(290, 26), (536, 536));
        // A very long line is squeezed to the cap.
        assert_eq!(o.widths(10_000, 10), (1920, 1920));
        // A one-pixel-wide sliver still gets one column.
        assert_eq!(o.widths(1, 1000), (320, 1));
    }

    #[test]
    fn preprocess_pads_with_zero_and_swaps_to_bgr() {
        let mut img = RgbImage::black(10, 48);
        for y in 0..48 {
            for x in 0..10 {
                img.put(x, y, [255, 0, 51]);
            }
        }
        let t = preprocess(&img, &RecOptions::default()).unwrap();
        assert_eq!(t.shape, vec![1, 3, 48, 320]);
        let d = t.as_f32().unwrap();
        let plane = 48 * 320;
        // Channel 0 is blue (51 → -0.6), channel 2 red (255 → 1).
        assert!((d[0] - (51.0 / 127.5 - 1.0)).abs() < 1e-6);
        assert_eq!(d[plane], -1.0);
        assert_eq!(d[2 * plane + 47 * 320 + 9], 1.0);
        // Past the line's 10 columns: padding.
        assert_eq!(d[2 * plane + 47 * 320 + 10], 0.0);
        assert!(preprocess(&RgbImage { width: 2, height: 2, pixels: vec![0; 3] }, &RecOptions::default())
            .is_err());
        let flat = RecOptions { height: 0, ..Default::default() };
        assert!(matches!(preprocess(&img, &flat), Err(TaskError::Preprocess { .. })));
        let huge = RecOptions { height: 1 << 20, min_width: 1 << 20, max_width: 1 << 20 };
        assert!(matches!(preprocess(&img, &huge), Err(TaskError::Preprocess { .. })));
    }

    #[test]
    fn crop_line_straightens_a_box_and_turns_tall_ones() {
        // A 6×4 image whose pixel (x, y) holds red x·10, green y·10.
        let mut img = RgbImage::black(6, 4);
        for y in 0..4 {
            for x in 0..6 {
                img.put(x, y, [(x * 10) as u8, (y * 10) as u8, 0]);
            }
        }
        // An axis-aligned box from (1, 1) to (5, 3): a 4×2 crop of the same pixels.
        let c = crop_line(&img, &[[1.0, 1.0], [5.0, 1.0], [5.0, 3.0], [1.0, 3.0]]).unwrap();
        assert_eq!((c.width, c.height), (4, 2));
        assert_eq!(c.get(0, 0), Some([10, 10, 0]));
        assert_eq!(c.get(3, 1), Some([40, 20, 0]));
        // The same box listed from its top-right corner: its "top edge" is the right side, so
        // the crop is 2 wide and 4 high, turned a quarter counter-clockwise.
        let c = crop_line(&img, &[[5.0, 1.0], [5.0, 3.0], [1.0, 3.0], [1.0, 1.0]]).unwrap();
        assert_eq!((c.width, c.height), (4, 2));
        assert_eq!((c.get(0, 0), c.get(0, 1)), (Some([50, 20, 0]), Some([50, 10, 0])));
        // A tall box (1 wide, 3 high) is turned a quarter counter-clockwise: 3 wide, 1 high, its
        // bottom pixel first.
        let c = crop_line(&img, &[[2.0, 0.0], [3.0, 0.0], [3.0, 3.0], [2.0, 3.0]]).unwrap();
        assert_eq!((c.width, c.height), (3, 1));
        assert_eq!(c.pixels, vec![20, 0, 0, 20, 10, 0, 20, 20, 0]);
        // Degenerate and non-finite boxes are refused.
        for bad in [[[1.0, 1.0]; 4], [[f32::NAN, 0.0], [4.0, 0.0], [4.0, 2.0], [0.0, 2.0]]] {
            assert!(matches!(crop_line(&img, &bad), Err(TaskError::Preprocess { .. })));
        }
    }

    #[test]
    fn decode_merges_repeats_and_drops_blanks() {
        let set = Charset::paddle("a\nb\r\nc\n", true);
        assert_eq!(set.len(), 5);
        assert_eq!(set.symbol(4), Some(" "));
        // a a _ a b _ _ space c c → "aab c" (the blank splits the two a's).
        let p = probs(&[1, 1, 0, 1, 2, 0, 0, 4, 3, 3], 5);
        let r = decode(&p, Some(&set)).unwrap();
        assert_eq!(r.classes, vec![1, 1, 2, 4, 3]);
        assert_eq!(r.text, "aab c");
        // Kept steps 0, 3, 4, 7, 8: values 0.9, 0.8, 0.9, 0.8, 0.9.
        assert!((r.confidence - 0.86).abs() < 1e-6, "{}", r.confidence);
        // Without a charset: classes only.
        assert_eq!(decode(&p, None).unwrap().text, "");
        // All blank: nothing read, confidence 0.
        let blank = decode(&probs(&[0, 0], 5), Some(&set)).unwrap();
        assert_eq!((blank.classes.len(), blank.confidence), (0, 0.0));
    }

    #[test]
    fn decode_refuses_wrong_shapes_and_charsets() {
        let set = Charset::paddle("a\nb", false);
        let err = decode(&probs(&[1], 5), Some(&set)).unwrap_err();
        assert!(err.to_string().contains("3 classes"), "{err}");
        for shape in [vec![2, 3, 4], vec![4], vec![3, 1]] {
            let t = Tensor::zeros(shape);
            assert!(matches!(decode(&t, None), Err(TaskError::Shape { .. })));
        }
        // A NaN never becomes the best class.
        let t = Tensor::from_f32(vec![2, 3], vec![f32::NAN, 0.5, 0.2, 0.1, f32::NAN, 0.3]);
        assert_eq!(best_classes(&t).unwrap().iter().map(|b| b.0).collect::<Vec<_>>(), vec![1, 2]);
    }
}
