//! MediaPipe BlazeFace face detectors (short range, full range, back camera): letterboxed square
//! input, SSD anchor decoding and weighted non-max suppression.
//!
//! Mirrors MediaPipe's face detection graphs: `ImageToTensorCalculator` (keep aspect ratio,
//! zero border, range [-1, 1]), `SsdAnchorsCalculator`, `TensorsToDetectionsCalculator`
//! (scales equal to the input side, reversed x/y order, sigmoid scores clipped at 100), weighted
//! `NonMaxSuppressionCalculator` (IoU, threshold 0.3) and letterbox removal. The three models
//! differ only in input side and anchor layout ([`FaceModel`]), which the model's input shape
//! tells apart.

use super::geometry::BBox;
use super::image::RgbImage;
use super::{f32_with_shape, TaskError};
use crate::tensor::Tensor;

/// Values per anchor in the regressor output: box (4) + 6 keypoints x (x, y).
const NUM_COORDS: usize = 16;
/// Keypoints per face.
const NUM_KEYPOINTS: usize = 6;

/// Which BlazeFace model: its input side and SSD anchor layout (MediaPipe's
/// `face_detection_*.pbtxt` options; `fixed_anchor_size`, so anchors are centres only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaceModel {
    /// `face_detection_short_range`: 128×128, strides 8, 16, 16, 16, two anchors per layer and
    /// cell (896).
    ShortRange,
    /// `face_detection_full_range`: 192×192, one stride-4 layer, one anchor per cell (2304).
    FullRange,
    /// `face_detection_back` (the rear-camera model): 256×256, strides 16, 32, 32, 32, two anchors
    /// per layer and cell (896).
    BackCamera,
}

impl FaceModel {
    /// Every model.
    pub const ALL: [FaceModel; 3] = [FaceModel::ShortRange, FaceModel::FullRange, FaceModel::BackCamera];

    /// Side of the square model input.
    pub fn input_size(self) -> usize {
        match self {
            FaceModel::ShortRange => 128,
            FaceModel::FullRange => 192,
            FaceModel::BackCamera => 256,
        }
    }

    /// Feature-map strides of the anchor layers; consecutive equal strides share one grid.
    fn strides(self) -> &'static [usize] {
        match self {
            FaceModel::ShortRange => &[8, 16, 16, 16],
            FaceModel::FullRange => &[4],
            FaceModel::BackCamera => &[16, 32, 32, 32],
        }
    }

    /// Anchors per cell contributed by each layer: aspect ratio 1.0, plus the interpolated
    /// scale where the config's `interpolated_scale_aspect_ratio` is positive.
    fn anchors_per_layer(self) -> usize {
        match self {
            FaceModel::FullRange => 1,
            FaceModel::ShortRange | FaceModel::BackCamera => 2,
        }
    }

    /// Number of anchors (and of model output rows).
    pub fn num_anchors(self) -> usize {
        let side = self.input_size();
        self.strides().iter().map(|s| side.div_ceil(*s).pow(2) * self.anchors_per_layer()).sum()
    }

    /// The model whose input has this NCHW shape (`None` for an unknown extent): 1×3×S×S with S
    /// one of the three input sides.
    pub fn for_input(shape: &[Option<usize>]) -> Result<FaceModel, TaskError> {
        let side = match shape {
            [_, Some(3), Some(h), Some(w)] if h == w => Some(*h),
            _ => None,
        };
        FaceModel::ALL.into_iter().find(|m| Some(m.input_size()) == side).ok_or_else(|| {
            TaskError::Preprocess {
                reason: format!(
                    "a BlazeFace input is NCHW 1x3x128x128 (short range), 1x3x192x192 (full range) or \
                 1x3x256x256 (back camera); this model's is {}",
                    shape
                        .iter()
                        .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
                        .collect::<Vec<_>>()
                        .join("x")
                ),
            }
        })
    }
}

/// Raw logits are clipped to this magnitude before the sigmoid.
const SCORE_CLIP: f32 = 100.0;

/// Thresholds for [`decode`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceOptions {
    /// Minimum sigmoid score for a detection to be kept (MediaPipe default 0.5).
    pub min_score: f32,
    /// IoU above which detections are merged by weighted NMS (MediaPipe default 0.3).
    pub iou_threshold: f32,
}

impl Default for FaceOptions {
    fn default() -> Self {
        FaceOptions { min_score: 0.5, iou_threshold: 0.3 }
    }
}

/// A detected face in pixels of the original image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Face {
    /// Bounding box (not clipped to the image).
    pub bbox: BBox,
    /// Detection confidence in [0, 1].
    pub score: f32,
    /// Right eye, left eye, nose tip, mouth centre, right ear tragion, left ear tragion (x, y).
    pub keypoints: [[f32; 2]; 6],
}

/// How the original image was placed in the square model input: the image is centred in a
/// square region of side `max(width, height)` source pixels, which is scaled to the input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Original image width in pixels.
    pub src_width: usize,
    /// Original image height in pixels.
    pub src_height: usize,
    /// Side of the square region, in source pixels, that maps onto the model input.
    side: f32,
    /// Source-pixel x of the region's left edge (zero or negative: padding on the left).
    left: f32,
    /// Source-pixel y of the region's top edge.
    top: f32,
}

impl Letterbox {
    /// The letterbox for an image of the given size.
    pub fn new(src_width: usize, src_height: usize) -> Letterbox {
        let (w, h) = (src_width as f32, src_height as f32);
        let side = w.max(h).max(1.0);
        Letterbox { src_width, src_height, side, left: (w - side) * 0.5, top: (h - side) * 0.5 }
    }

    /// Maps a point normalised to the model input ([0, 1] across it) to original pixels.
    pub fn to_source(&self, x: f32, y: f32) -> [f32; 2] {
        [x * self.side + self.left, y * self.side + self.top]
    }
}

/// Letterboxes `img` into `model`'s 1x3xSxS NCHW input with values in [-1, 1]; padding is black
/// (-1), as MediaPipe's zero border.
pub fn preprocess(img: &RgbImage, model: FaceModel) -> (Tensor, Letterbox) {
    let side = model.input_size();
    let lb = Letterbox::new(img.width, img.height);
    let plane = side * side;
    let mut data = vec![-1.0f32; 3 * plane];
    let step = lb.side / side as f32;
    let (w, h) = (img.width as f32, img.height as f32);
    for v in 0..side {
        // Source coordinates of this output pixel's centre, with source pixel centres at integers.
        let sy = lb.top + (v as f32 + 0.5) * step - 0.5;
        if sy < -0.5 || sy > h - 0.5 {
            continue;
        }
        for u in 0..side {
            let sx = lb.left + (u as f32 + 0.5) * step - 0.5;
            if sx < -0.5 || sx > w - 0.5 {
                continue;
            }
            let rgb = img.sample(sx, sy);
            for (c, val) in rgb.iter().enumerate() {
                data[c * plane + v * side + u] = val / 127.5 - 1.0;
            }
        }
    }
    (Tensor::from_f32(vec![1, 3, side, side], data), lb)
}

/// `model`'s anchor centres (x, y), normalised to the input, in model output order.
///
/// SSD anchors as MediaPipe's configs: layers with equal strides share one grid whose cells hold
/// the anchors of all of them, cells are visited row by row, and with `fixed_anchor_size` every
/// anchor has unit size, so only centres matter.
pub fn anchors(model: FaceModel) -> Vec<[f32; 2]> {
    let (strides, side) = (model.strides(), model.input_size());
    let mut out = Vec::with_capacity(model.num_anchors());
    let mut layer = 0;
    while layer < strides.len() {
        let stride = strides[layer];
        let mut per_cell = 0;
        while layer < strides.len() && strides[layer] == stride {
            per_cell += model.anchors_per_layer();
            layer += 1;
        }
        let grid = side.div_ceil(stride);
        for y in 0..grid {
            for x in 0..grid {
                let centre = [(x as f32 + 0.5) / grid as f32, (y as f32 + 0.5) / grid as f32];
                out.extend(std::iter::repeat_n(centre, per_cell));
            }
        }
    }
    out
}

/// A detection in coordinates normalised to the model input.
#[derive(Debug, Clone, Copy)]
struct RawDetection {
    bbox: BBox,
    score: f32,
    keypoints: [[f32; 2]; NUM_KEYPOINTS],
}

/// Decodes `model`'s outputs into faces in original-image pixels, best first.
///
/// `regressors` must be 1xAx16 and `classificators` 1xAx1 (logits), both f32, with A the
/// model's anchor count.
pub fn decode(
    model: FaceModel,
    regressors: &Tensor,
    classificators: &Tensor,
    letterbox: &Letterbox,
    opts: &FaceOptions,
) -> Result<Vec<Face>, TaskError> {
    let n = model.num_anchors();
    let reg = f32_with_shape(regressors, "regressors", &[1, n, NUM_COORDS])?;
    let cls = f32_with_shape(classificators, "classificators", &[1, n, 1])?;
    let scale = model.input_size() as f32;
    let mut raw = Vec::new();
    for (i, anchor) in anchors(model).iter().enumerate() {
        let logit = cls[i].clamp(-SCORE_CLIP, SCORE_CLIP);
        let score = 1.0 / (1.0 + (-logit).exp());
        // NaN scores are rejected too.
        if score.is_nan() || score < opts.min_score {
            continue;
        }
        let r = &reg[i * NUM_COORDS..(i + 1) * NUM_COORDS];
        let (cx, cy) = (r[0] / scale + anchor[0], r[1] / scale + anchor[1]);
        let (w, h) = (r[2] / scale, r[3] / scale);
        let valid = w >= 0.0 && h >= 0.0 && cx.is_finite() && cy.is_finite();
        if !valid {
            continue;
        }
        let mut keypoints = [[0.0; 2]; NUM_KEYPOINTS];
        for (k, kp) in keypoints.iter_mut().enumerate() {
            *kp = [r[4 + 2 * k] / scale + anchor[0], r[5 + 2 * k] / scale + anchor[1]];
        }
        raw.push(RawDetection {
            bbox: BBox { xmin: cx - w * 0.5, ymin: cy - h * 0.5, xmax: cx + w * 0.5, ymax: cy + h * 0.5 },
            score,
            keypoints,
        });
    }
    let merged = weighted_nms(raw, opts.iou_threshold);
    Ok(merged
        .into_iter()
        .map(|d| {
            let [xmin, ymin] = letterbox.to_source(d.bbox.xmin, d.bbox.ymin);
            let [xmax, ymax] = letterbox.to_source(d.bbox.xmax, d.bbox.ymax);
            Face {
                bbox: BBox { xmin, ymin, xmax, ymax },
                score: d.score,
                keypoints: d.keypoints.map(|[x, y]| letterbox.to_source(x, y)),
            }
        })
        .collect())
}

/// MediaPipe's weighted non-max suppression: repeatedly take the best remaining detection,
/// gather every remaining one overlapping it by more than `iou_threshold`, and replace the
/// group by its score-weighted average box and keypoints, keeping the best score.
fn weighted_nms(mut dets: Vec<RawDetection>, iou_threshold: f32) -> Vec<RawDetection> {
    // Stable sort keeps anchor order among ties, as MediaPipe's.
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut out = Vec::new();
    let mut remaining = dets;
    while let Some(&best) = remaining.first() {
        let mut rest = Vec::with_capacity(remaining.len());
        let mut sum_w = 0.0f32;
        let mut acc = [0.0f32; 4 + 2 * NUM_KEYPOINTS];
        for (i, d) in remaining.iter().enumerate() {
            if i != 0 && best.bbox.iou(&d.bbox) <= iou_threshold {
                rest.push(*d);
                continue;
            }
            let w = d.score;
            sum_w += w;
            let b = d.bbox;
            for (a, v) in acc[..4].iter_mut().zip([b.xmin, b.ymin, b.xmax, b.ymax]) {
                *a += v * w;
            }
            for (a, v) in acc[4..].iter_mut().zip(d.keypoints.iter().flatten()) {
                *a += v * w;
            }
        }
        let mut merged = best;
        if sum_w > 0.0 {
            let m = acc.map(|v| v / sum_w);
            merged.bbox = BBox { xmin: m[0], ymin: m[1], xmax: m[2], ymax: m[3] };
            for (k, kp) in merged.keypoints.iter_mut().enumerate() {
                *kp = [m[4 + 2 * k], m[5 + 2 * k]];
            }
        }
        out.push(merged);
        remaining = rest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: FaceModel = FaceModel::ShortRange;
    const NUM_ANCHORS: usize = 896;

    fn outputs() -> (Vec<f32>, Vec<f32>) {
        (vec![0.0; NUM_ANCHORS * NUM_COORDS], vec![-10.0; NUM_ANCHORS])
    }

    fn tensors(reg: Vec<f32>, cls: Vec<f32>) -> (Tensor, Tensor) {
        (
            Tensor::from_f32(vec![1, NUM_ANCHORS, NUM_COORDS], reg),
            Tensor::from_f32(vec![1, NUM_ANCHORS, 1], cls),
        )
    }

    #[test]
    fn anchor_layout_matches_ssd_config() {
        let a = anchors(SHORT);
        assert_eq!(a.len(), NUM_ANCHORS);
        // Stride 8: 16x16 grid, two anchors per cell, row-major.
        assert_eq!(a[0], [0.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[1], a[0]);
        assert_eq!(a[2], [1.5 / 16.0, 0.5 / 16.0]);
        assert_eq!(a[32], [0.5 / 16.0, 1.5 / 16.0]);
        assert_eq!(a[511], [15.5 / 16.0, 15.5 / 16.0]);
        // Three stride-16 layers merged: 8x8 grid, six anchors per cell.
        assert_eq!(a[512], [0.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a[517], a[512]);
        assert_eq!(a[518], [1.5 / 8.0, 0.5 / 8.0]);
        assert_eq!(a[895], [7.5 / 8.0, 7.5 / 8.0]);
        assert_eq!(a[890], a[895]);
        assert_ne!(a[889], a[895]);
    }

    #[test]
    fn full_range_and_back_camera_anchor_layouts() {
        let full = anchors(FaceModel::FullRange);
        // One stride-4 layer over 192: a 48x48 grid, one anchor per cell.
        assert_eq!((full.len(), FaceModel::FullRange.num_anchors()), (2304, 2304));
        assert_eq!(full[0], [0.5 / 48.0, 0.5 / 48.0]);
        assert_eq!(full[1], [1.5 / 48.0, 0.5 / 48.0]);
        assert_eq!(full[48], [0.5 / 48.0, 1.5 / 48.0]);
        // The back-camera model is short range's layout at twice the stride over twice the side.
        let back = anchors(FaceModel::BackCamera);
        assert_eq!((back.len(), FaceModel::BackCamera.num_anchors()), (896, 896));
        assert_eq!(back, anchors(SHORT));
        assert_eq!(SHORT.num_anchors(), NUM_ANCHORS);
    }

    #[test]
    fn the_input_shape_picks_the_model() {
        let side = |s: usize| [Some(1), Some(3), Some(s), Some(s)];
        for m in FaceModel::ALL {
            assert_eq!(FaceModel::for_input(&side(m.input_size())).unwrap(), m);
        }
        for bad in [
            &side(160)[..],
            &[Some(1), Some(3), Some(128), Some(96)],
            &[None, Some(3), None, None],
            &[Some(3)],
        ] {
            let err = FaceModel::for_input(bad).unwrap_err().to_string();
            assert!(err.contains("1x3x192x192 (full range)"), "{err}");
        }
    }

    #[test]
    fn a_full_range_face_decodes_at_its_scale() {
        // Anchor (10, 20) of the 48x48 grid, a box of 0.25 x 0.5 of the input.
        let model = FaceModel::FullRange;
        let n = model.num_anchors();
        let (mut reg, mut cls) = (vec![0.0; n * NUM_COORDS], vec![-10.0; n]);
        let i = 20 * 48 + 10;
        cls[i] = 2.0;
        reg[i * NUM_COORDS..i * NUM_COORDS + 4].copy_from_slice(&[19.2, 0.0, 48.0, 96.0]);
        let reg = Tensor::from_f32(vec![1, n, NUM_COORDS], reg);
        let cls = Tensor::from_f32(vec![1, n, 1], cls);
        let faces = decode(model, &reg, &cls, &Letterbox::new(192, 192), &FaceOptions::default()).unwrap();
        assert_eq!(faces.len(), 1);
        let cx = (10.5 / 48.0 + 0.1) * 192.0;
        let b = faces[0].bbox;
        assert!(
            ((b.xmin + b.xmax) / 2.0 - cx).abs() < 1e-3 && (b.xmax - b.xmin - 48.0).abs() < 1e-3,
            "{b:?}"
        );
        assert!((b.ymax - b.ymin - 96.0).abs() < 1e-3, "{b:?}");
        // Short range's outputs do not fit the full-range layout.
        let short = Tensor::zeros(vec![1, NUM_ANCHORS, NUM_COORDS]);
        assert!(decode(model, &short, &cls, &Letterbox::new(9, 9), &FaceOptions::default()).is_err());
    }

    #[test]
    fn preprocess_letterboxes_non_square_image() {
        // 256x128 white image: scaled by 0.5 into a 128x64 band centred vertically.
        let img = RgbImage::new(256, 128, vec![255; 256 * 128 * 3]).unwrap();
        let (t, lb) = preprocess(&img, SHORT);
        assert_eq!(t.shape, vec![1, 3, 128, 128]);
        let d = t.as_f32().unwrap();
        let at = |c: usize, y: usize, x: usize| d[c * 128 * 128 + y * 128 + x];
        assert_eq!(at(0, 0, 64), -1.0);
        assert_eq!(at(2, 31, 5), -1.0);
        assert_eq!(at(1, 32, 0), 1.0);
        assert_eq!(at(0, 95, 127), 1.0);
        assert_eq!(at(0, 96, 64), -1.0);
        assert_eq!(lb.to_source(0.0, 0.25), [0.0, 0.0]);
        assert_eq!(lb.to_source(1.0, 0.75), [256.0, 128.0]);
    }

    #[test]
    fn preprocess_fills_the_models_side() {
        let img = RgbImage::new(3, 3, vec![255; 27]).unwrap();
        for m in FaceModel::ALL {
            let (t, _) = preprocess(&img, m);
            assert_eq!(t.shape, vec![1, 3, m.input_size(), m.input_size()]);
            assert!(t.as_f32().unwrap().iter().all(|&v| v == 1.0));
        }
    }

    #[test]
    fn preprocess_maps_mid_grey_to_zero() {
        let img = RgbImage::from_gray(4, 4, &[0; 16]).unwrap();
        let (t, _) = preprocess(&img, SHORT);
        assert!(t.as_f32().unwrap().iter().all(|&v| v == -1.0));
        let img = RgbImage::new(1, 1, vec![255, 0, 51]).unwrap();
        let d = preprocess(&img, SHORT).0;
        let d = d.as_f32().unwrap();
        assert_eq!((d[0], d[128 * 128]), (1.0, -1.0));
        assert!((d[2 * 128 * 128] + 0.6).abs() < 1e-6);
    }

    #[test]
    fn decode_single_anchor_through_non_square_letterbox() {
        // 200 wide x 100 high: side 200, the image spans input rows 32..96.
        let lb = Letterbox::new(200, 100);
        let (mut reg, mut cls) = outputs();
        let i = 512 + (3 * 8 + 4) * 6; // a stride-16 anchor near the centre
        let anchor = anchors(SHORT)[i];
        cls[i] = 3.0;
        let r = &mut reg[i * NUM_COORDS..(i + 1) * NUM_COORDS];
        r[..4].copy_from_slice(&[6.4, -12.8, 32.0, 25.6]); // dx=+0.05, dy=-0.1, w=0.25, h=0.2
        for k in 0..NUM_KEYPOINTS {
            r[4 + 2 * k] = k as f32 * 1.28;
            r[5 + 2 * k] = -(k as f32) * 2.56;
        }
        let (reg, cls) = tensors(reg, cls);
        let faces = decode(SHORT, &reg, &cls, &lb, &FaceOptions::default()).unwrap();
        assert_eq!(faces.len(), 1);
        let f = faces[0];
        assert!((f.score - 1.0 / (1.0 + (-3.0f32).exp())).abs() < 1e-6);
        let (cx, cy) = ((anchor[0] + 0.05) * 200.0, (anchor[1] - 0.1) * 200.0 - 50.0);
        let close = |a: f32, b: f32| (a - b).abs() < 1e-3;
        assert!(close(f.bbox.xmin, cx - 25.0) && close(f.bbox.xmax, cx + 25.0), "{f:?}");
        assert!(close(f.bbox.ymin, cy - 20.0) && close(f.bbox.ymax, cy + 20.0), "{f:?}");
        for k in 0..NUM_KEYPOINTS {
            let ex = (anchor[0] + k as f32 * 0.01) * 200.0;
            let ey = (anchor[1] - k as f32 * 0.02) * 200.0 - 50.0;
            assert!(close(f.keypoints[k][0], ex) && close(f.keypoints[k][1], ey), "kp {k}");
        }
    }

    #[test]
    fn weighted_nms_merges_overlaps_and_keeps_separate() {
        let lb = Letterbox::new(128, 128);
        let (mut reg, mut cls) = outputs();
        // Two anchors of one stride-16 cell: same centre, boxes shifted by 4 px (high IoU).
        let (a, b, far) = (512 + 8 * 3 * 6, 512 + 8 * 3 * 6 + 1, 512 + 8 * 6 * 6 + 6 * 6);
        for (idx, dx, logit) in [(a, 0.0, 4.0), (b, 4.0, 1.0), (far, 0.0, 2.0)] {
            cls[idx] = logit;
            reg[idx * NUM_COORDS..idx * NUM_COORDS + 4].copy_from_slice(&[dx, 0.0, 20.0, 20.0]);
        }
        let (reg, cls) = tensors(reg, cls);
        let faces = decode(SHORT, &reg, &cls, &lb, &FaceOptions::default()).unwrap();
        assert_eq!(faces.len(), 2);
        let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
        let (sa, sb) = (sig(4.0), sig(1.0));
        assert!((faces[0].score - sa).abs() < 1e-6);
        assert!(faces[0].score > faces[1].score);
        // Merged centre is the score-weighted mean of the two centres.
        let ax = anchors(SHORT)[a][0] * 128.0;
        let expect_cx = (ax * sa + (ax + 4.0) * sb) / (sa + sb);
        let got_cx = (faces[0].bbox.xmin + faces[0].bbox.xmax) / 2.0;
        assert!((got_cx - expect_cx).abs() < 1e-3, "{got_cx} vs {expect_cx}");
        let fx = anchors(SHORT)[far][0] * 128.0;
        assert!(((faces[1].bbox.xmin + faces[1].bbox.xmax) / 2.0 - fx).abs() < 1e-3);
    }

    #[test]
    fn low_and_nan_scores_are_dropped() {
        let (reg, mut cls) = outputs();
        cls[3] = f32::NAN;
        cls[4] = -0.1;
        let (reg, cls) = tensors(reg, cls);
        let faces = decode(SHORT, &reg, &cls, &Letterbox::new(10, 10), &FaceOptions::default()).unwrap();
        assert!(faces.is_empty());
    }

    #[test]
    fn bad_shapes_are_errors() {
        let lb = Letterbox::new(10, 10);
        let opts = FaceOptions::default();
        let reg = Tensor::zeros(vec![1, NUM_ANCHORS, 16]);
        let cls = Tensor::zeros(vec![1, NUM_ANCHORS, 1]);
        let short = Tensor::zeros(vec![1, 895, 16]);
        assert!(matches!(
            decode(SHORT, &short, &cls, &lb, &opts),
            Err(TaskError::Shape { name: "regressors", .. })
        ));
        let wide = Tensor::zeros(vec![1, NUM_ANCHORS, 2]);
        assert!(matches!(
            decode(SHORT, &reg, &wide, &lb, &opts),
            Err(TaskError::Shape { name: "classificators", .. })
        ));
        let ints = Tensor::from_i64(vec![1, NUM_ANCHORS, 1], vec![0; NUM_ANCHORS]);
        assert!(matches!(
            decode(SHORT, &reg, &ints, &lb, &opts),
            Err(TaskError::NotF32 { name: "classificators" })
        ));
    }
}
