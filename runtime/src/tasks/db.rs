//! PP-OCR DBNet text detection: PaddleOCR's `DetResizeForTest` + `NormalizeImage` before the
//! model, `DBPostProcess` (fast box score, rectangle unclip) after it.

use super::geometry::{min_area_rect, order_clockwise, BBox};
use super::image::{resize_bilinear, RgbImage};
use super::{f32_with_shape, TaskError};
use crate::tensor::Tensor;

/// ImageNet channel means (R, G, B) applied after scaling to [0, 1].
pub(crate) const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (R, G, B).
pub(crate) const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Model input sides must be multiples of this (the network downsamples by 32).
const ALIGN: usize = 32;

/// Parameters of DB pre- and post-processing (PaddleOCR defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbOptions {
    /// Images whose longer side exceeds this are scaled down to it.
    pub limit_side_len: usize,
    /// Probability above which a pixel counts as text.
    pub thresh: f32,
    /// Minimum mean probability inside a box for it to be kept.
    pub box_thresh: f32,
    /// How far boxes are grown: offset = area * ratio / perimeter.
    pub unclip_ratio: f32,
    /// At most this many connected regions are considered.
    pub max_candidates: usize,
    /// Boxes whose short side (in probability-map pixels) is below this are dropped.
    pub min_size: f32,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            limit_side_len: 960,
            thresh: 0.3,
            box_thresh: 0.6,
            unclip_ratio: 1.5,
            max_candidates: 1000,
            min_size: 3.0,
        }
    }
}

/// A detected text region in pixels of the original image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextBox {
    /// Corners clockwise from the top-left.
    pub points: [[f32; 2]; 4],
    /// Mean text probability inside the (un-grown) box.
    pub score: f32,
}

impl TextBox {
    /// The axis-aligned box enclosing the corners.
    pub fn aabb(&self) -> BBox {
        let xs = self.points.map(|p| p[0]);
        let ys = self.points.map(|p| p[1]);
        BBox {
            xmin: xs.iter().copied().fold(f32::INFINITY, f32::min),
            ymin: ys.iter().copied().fold(f32::INFINITY, f32::min),
            xmax: xs.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            ymax: ys.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        }
    }
}

/// How the original image was resized for the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbResize {
    /// Original width in pixels.
    pub src_width: usize,
    /// Original height in pixels.
    pub src_height: usize,
    /// Model input width (a multiple of 32).
    pub width: usize,
    /// Model input height (a multiple of 32).
    pub height: usize,
}

impl DbResize {
    /// The resize PaddleOCR's `DetResizeForTest` (limit type "max") picks: shrink so the longer
    /// side is at most `limit_side_len` (never enlarge), then round each side to the nearest
    /// multiple of 32, at least 32.
    pub fn new(src_width: usize, src_height: usize, limit_side_len: usize) -> DbResize {
        let longer = src_width.max(src_height);
        let ratio = if longer > limit_side_len { limit_side_len as f64 / longer as f64 } else { 1.0 };
        let align = |side: usize| {
            let scaled = (side as f64 * ratio).floor();
            // Python's round() rounds halves to even.
            let units = (scaled / ALIGN as f64).round_ties_even() as usize;
            (units * ALIGN).max(ALIGN)
        };
        DbResize { src_width, src_height, width: align(src_width), height: align(src_height) }
    }
}

/// Resizes `img` as [`DbResize::new`] and normalises it into a 1x3xHxW NCHW tensor
/// (`(v / 255 - mean) / std` per RGB channel).
pub fn preprocess(img: &RgbImage, opts: &DbOptions) -> (Tensor, DbResize) {
    let resize = DbResize::new(img.width, img.height, opts.limit_side_len);
    let (w, h) = (resize.width, resize.height);
    let resized = resize_bilinear(img, w, h);
    let plane = w * h;
    let mut data = vec![0.0f32; 3 * plane];
    for (i, px) in resized.pixels.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * plane + i] = (px[c] as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    (Tensor::from_f32(vec![1, 3, h, w], data), resize)
}

/// Extracts text boxes from the 1x1xHxW probability map, where H x W is the model input
/// size recorded in `resize`.
pub fn decode(prob: &Tensor, resize: &DbResize, opts: &DbOptions) -> Result<Vec<TextBox>, TaskError> {
    let (w, h) = (resize.width, resize.height);
    let pred = f32_with_shape(prob, "probability map", &[1, 1, h, w])?;
    let bitmap: Vec<bool> = pred.iter().map(|&p| p > opts.thresh).collect();
    let regions = connected_regions(&bitmap, w, h, opts.max_candidates);
    let sx = resize.src_width as f32 / w as f32;
    let sy = resize.src_height as f32 / h as f32;
    let max_x = resize.src_width.saturating_sub(1) as f32;
    let max_y = resize.src_height.saturating_sub(1) as f32;
    let mut boxes = Vec::new();
    for hull_points in regions {
        let Some(rect) = min_area_rect(&hull_points) else {
            continue;
        };
        if rect.short_side() < opts.min_size {
            continue;
        }
        let score = box_score_fast(pred, w, h, &rect.corners);
        if score < opts.box_thresh {
            continue;
        }
        // Offsetting a rectangle outward by d and taking the min-area rectangle of the
        // rounded result is the rectangle grown by d per side.
        let perimeter = 2.0 * (rect.width + rect.height);
        let d = rect.width * rect.height * opts.unclip_ratio / perimeter;
        let grown = rect.expanded(d);
        if grown.short_side() < opts.min_size + 2.0 {
            continue;
        }
        let points = grown.corners.map(|[x, y]| {
            [(x * sx).round_ties_even().clamp(0.0, max_x), (y * sy).round_ties_even().clamp(0.0, max_y)]
        });
        boxes.push(TextBox { points: order_clockwise(points), score });
    }
    log::debug!("db: {} text boxes", boxes.len());
    Ok(boxes)
}

/// 8-connected regions of `bitmap` in raster order of their first pixel, at most `max`.
/// Each region is returned as the leftmost and rightmost pixel of each of its rows, which
/// have the same convex hull as the whole region.
fn connected_regions(bitmap: &[bool], w: usize, h: usize, max: usize) -> Vec<Vec<[f32; 2]>> {
    let mut seen = vec![false; bitmap.len()];
    let mut regions = Vec::new();
    let mut stack = Vec::new();
    for start in 0..bitmap.len() {
        if regions.len() >= max {
            break;
        }
        if !bitmap[start] || seen[start] {
            continue;
        }
        // Per-row x extent of this region, keyed by row.
        let mut rows: std::collections::BTreeMap<usize, (usize, usize)> = Default::default();
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            let e = rows.entry(y).or_insert((x, x));
            e.0 = e.0.min(x);
            e.1 = e.1.max(x);
            for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let j = ny * w + nx;
                    if bitmap[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        let points = rows
            .into_iter()
            .flat_map(|(y, (x0, x1))| [[x0 as f32, y as f32], [x1 as f32, y as f32]])
            .collect();
        regions.push(points);
    }
    regions
}

/// PaddleOCR's "fast" box score: mean probability over the pixels covered by the polygon
/// whose corners are `quad` truncated to integers (borders included, as `cv2.fillPoly`).
fn box_score_fast(pred: &[f32], w: usize, h: usize, quad: &[[f32; 2]; 4]) -> f32 {
    let clampi = |v: f32, hi: usize| (v.max(0.0) as usize).min(hi - 1);
    let xs = quad.map(|p| p[0]);
    let ys = quad.map(|p| p[1]);
    let xmin = clampi(xs.iter().copied().fold(f32::INFINITY, f32::min).floor(), w);
    let xmax = clampi(xs.iter().copied().fold(f32::NEG_INFINITY, f32::max).ceil(), w);
    let ymin = clampi(ys.iter().copied().fold(f32::INFINITY, f32::min).floor(), h);
    let ymax = clampi(ys.iter().copied().fold(f32::NEG_INFINITY, f32::max).ceil(), h);
    let poly = quad.map(|[x, y]| [(x - xmin as f32).trunc(), (y - ymin as f32).trunc()]);
    let (mut sum, mut count) = (0.0f64, 0usize);
    for y in ymin..=ymax {
        for x in xmin..=xmax {
            if inside_convex(&poly, (x - xmin) as f32, (y - ymin) as f32) {
                sum += pred[y * w + x] as f64;
                count += 1;
            }
        }
    }
    if count == 0 {
        0.0
    } else {
        (sum / count as f64) as f32
    }
}

/// Whether (x, y) lies inside or on the boundary of the convex polygon `poly` (either winding).
fn inside_convex(poly: &[[f32; 2]; 4], x: f32, y: f32) -> bool {
    let (mut pos, mut neg) = (false, false);
    for i in 0..4 {
        let (a, b) = (poly[i], poly[(i + 1) % 4]);
        let c = (b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]);
        pos |= c > 1e-4;
        neg |= c < -1e-4;
    }
    !(pos && neg)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probability map of the given model size, background 0.05.
    struct Map {
        w: usize,
        h: usize,
        data: Vec<f32>,
    }

    impl Map {
        fn new(w: usize, h: usize) -> Map {
            Map { w, h, data: vec![0.05; w * h] }
        }
        fn fill(&mut self, p: f32, inside: impl Fn(f32, f32) -> bool) {
            for y in 0..self.h {
                for x in 0..self.w {
                    if inside(x as f32, y as f32) {
                        self.data[y * self.w + x] = p;
                    }
                }
            }
        }
        fn tensor(&self) -> Tensor {
            Tensor::from_f32(vec![1, 1, self.h, self.w], self.data.clone())
        }
    }

    #[test]
    fn resize_rounds_to_multiples_of_32() {
        let r = DbResize::new(300, 250, 960);
        assert_eq!((r.width, r.height), (288, 256));
        let big = DbResize::new(1920, 1000, 960);
        assert_eq!((big.width, big.height), (960, 512)); // 500 -> 512
        let tiny = DbResize::new(5, 3, 960);
        assert_eq!((tiny.width, tiny.height), (32, 32));
        let page = DbResize::new(384, 191, 960);
        assert_eq!((page.width, page.height), (384, 192));
    }

    #[test]
    fn preprocess_shape_and_normalisation() {
        let img = RgbImage::new(70, 40, [255u8, 0, 128].repeat(70 * 40)).unwrap();
        let (t, r) = preprocess(&img, &DbOptions::default());
        assert_eq!(t.shape, vec![1, 3, 32, 64]);
        assert_eq!((r.width % 32, r.height % 32), (0, 0));
        let d = t.as_f32().unwrap();
        let plane = 32 * 64;
        let expect = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128.0 / 255.0 - 0.406) / 0.225];
        for c in 0..3 {
            assert!((d[c * plane + 100] - expect[c]).abs() < 1e-5, "channel {c}");
        }
    }

    #[test]
    fn finds_axis_aligned_and_rotated_text_and_filters_noise() {
        // Original 300x250 -> model 288x256.
        let resize = DbResize::new(300, 250, 960);
        let mut m = Map::new(resize.width, resize.height);
        // Axis-aligned line: pixel centres x 20..=120, y 30..=45.
        m.fill(0.9, |x, y| (20.0..=120.0).contains(&x) && (30.0..=45.0).contains(&y));
        // Rotated line: 100 x 24 around (170, 170), 0.4 rad.
        let (s, c) = 0.4f32.sin_cos();
        m.fill(0.8, |x, y| {
            let (dx, dy) = (x - 170.0, y - 170.0);
            (dx * c + dy * s).abs() <= 50.0 && (-dx * s + dy * c).abs() <= 12.0
        });
        // A 2x2 speck (short side 1 < min_size) and a faint region (below box_thresh).
        m.fill(0.95, |x, y| (250.0..=251.0).contains(&x) && (20.0..=21.0).contains(&y));
        m.fill(0.45, |x, y| (200.0..=260.0).contains(&x) && (60.0..=90.0).contains(&y));

        let boxes = decode(&m.tensor(), &resize, &DbOptions::default()).unwrap();
        assert_eq!(boxes.len(), 2, "{boxes:?}");
        let (kx, ky) = (300.0 / 288.0, 250.0 / 256.0);

        // Expected axis-aligned result: centres span 100 x 15, grown by area*1.5/perimeter.
        let d = 100.0 * 15.0 * 1.5 / (2.0 * 115.0);
        let expect = BBox {
            xmin: (20.0 - d) * kx,
            ymin: (30.0 - d) * ky,
            xmax: (120.0 + d) * kx,
            ymax: (45.0 + d) * ky,
        };
        let straight = boxes.iter().find(|b| b.aabb().xmax < 150.0).expect("axis-aligned box");
        assert!(straight.aabb().iou(&expect) > 0.95, "{straight:?} vs {expect:?}");
        assert!((straight.score - 0.9).abs() < 1e-3);

        let tilted = boxes.iter().find(|b| b.aabb().xmin > 80.0).expect("rotated box");
        // Border pixels of a rotated box partly fall outside the blob, diluting the mean.
        assert!(tilted.score > 0.7 && tilted.score <= 0.8, "{}", tilted.score);
        let [tl, tr, _, bl] = tilted.points;
        // Long side along the rotation (in model pixels), short side across it.
        let long = ((tr[0] - tl[0]) / kx).hypot((tr[1] - tl[1]) / ky);
        let short = ((bl[0] - tl[0]) / kx).hypot((bl[1] - tl[1]) / ky);
        let d = 100.0 * 24.0 * 1.5 / (2.0 * 124.0);
        assert!((long - (100.0 + 2.0 * d)).abs() < 4.0, "long {long}");
        assert!((short - (24.0 + 2.0 * d)).abs() < 4.0, "short {short}");
        let angle = ((tr[1] - tl[1]) / ky).atan2((tr[0] - tl[0]) / kx);
        assert!((angle - 0.4).abs() < 0.05, "angle {angle}");
        let centre = tilted.points.iter().fold([0.0, 0.0], |a, p| [a[0] + p[0] / 4.0, a[1] + p[1] / 4.0]);
        assert!((centre[0] - 170.0 * kx).abs() < 2.0 && (centre[1] - 170.0 * ky).abs() < 2.0);
    }

    #[test]
    fn boxes_are_clipped_to_the_image() {
        let resize = DbResize::new(64, 64, 960);
        let mut m = Map::new(64, 64);
        m.fill(0.9, |x, y| x <= 20.0 && (10.0..=30.0).contains(&y));
        let boxes = decode(&m.tensor(), &resize, &DbOptions::default()).unwrap();
        assert_eq!(boxes.len(), 1);
        for p in boxes[0].points {
            assert!((0.0..=63.0).contains(&p[0]) && (0.0..=63.0).contains(&p[1]));
        }
        assert_eq!(boxes[0].points[0][0], 0.0);
    }

    #[test]
    fn max_candidates_limits_regions() {
        let resize = DbResize::new(64, 64, 960);
        let mut m = Map::new(64, 64);
        m.fill(0.9, |x, y| (2.0..=20.0).contains(&x) && (2.0..=12.0).contains(&y));
        m.fill(0.9, |x, y| (2.0..=20.0).contains(&x) && (30.0..=40.0).contains(&y));
        let opts = DbOptions { max_candidates: 1, ..Default::default() };
        assert_eq!(decode(&m.tensor(), &resize, &opts).unwrap().len(), 1);
        assert_eq!(decode(&m.tensor(), &resize, &DbOptions::default()).unwrap().len(), 2);
    }

    #[test]
    fn wrong_map_shape_is_an_error() {
        let resize = DbResize::new(64, 64, 960);
        let wrong = Tensor::zeros(vec![1, 1, 32, 64]);
        let err = decode(&wrong, &resize, &DbOptions::default()).unwrap_err();
        assert!(matches!(err, TaskError::Shape { name: "probability map", .. }));
        let two = Tensor::zeros(vec![1, 2, 64, 64]);
        assert!(decode(&two, &resize, &DbOptions::default()).is_err());
    }
}
