//! Result overlays: face boxes with keypoints, text-box outlines.

use super::blazeface::Face;
use super::db::TextBox;
use super::image::RgbImage;

/// Face box colour.
const FACE_COLOUR: [u8; 3] = [0, 255, 0];
/// Keypoint colour.
const KEYPOINT_COLOUR: [u8; 3] = [255, 0, 0];
/// Text box colour.
const TEXT_COLOUR: [u8; 3] = [255, 0, 0];
/// Keypoint dot radius in pixels.
const DOT_RADIUS: i64 = 2;

/// Draws each face's box (2 px outline) and its six keypoints (filled dots).
/// Anything outside the image is clipped.
pub fn draw_faces(img: &mut RgbImage, faces: &[Face]) {
    for f in faces {
        let b = f.bbox;
        let corners = [[b.xmin, b.ymin], [b.xmax, b.ymin], [b.xmax, b.ymax], [b.xmin, b.ymax]];
        draw_polygon(img, &corners, FACE_COLOUR);
        for &[x, y] in &f.keypoints {
            if !(x.is_finite() && y.is_finite()) {
                continue;
            }
            let (cx, cy) = (x.round() as i64, y.round() as i64);
            for dy in -DOT_RADIUS..=DOT_RADIUS {
                for dx in -DOT_RADIUS..=DOT_RADIUS {
                    if dx * dx + dy * dy <= DOT_RADIUS * DOT_RADIUS {
                        img.put(cx.saturating_add(dx), cy.saturating_add(dy), KEYPOINT_COLOUR);
                    }
                }
            }
        }
    }
}

/// Draws each text box as a closed quadrilateral, 2 px thick. Anything outside the image is
/// clipped.
pub fn draw_text_boxes(img: &mut RgbImage, boxes: &[TextBox]) {
    for b in boxes {
        draw_polygon(img, &b.points, TEXT_COLOUR);
    }
}

/// A closed polygon outline, 2 px thick.
fn draw_polygon(img: &mut RgbImage, pts: &[[f32; 2]], rgb: [u8; 3]) {
    for i in 0..pts.len() {
        let (a, b) = (pts[i], pts[(i + 1) % pts.len()]);
        draw_line(img, a, b, rgb);
    }
}

/// A 2 px thick line: Bresenham with a 2x2 brush, after clipping the segment to (a margin
/// around) the image so far-away or huge coordinates cost nothing.
fn draw_line(img: &mut RgbImage, a: [f32; 2], b: [f32; 2], rgb: [u8; 3]) {
    let bounds = [-2.0, -2.0, img.width as f64 + 2.0, img.height as f64 + 2.0];
    let Some((p, q)) = clip_segment(a.map(f64::from), b.map(f64::from), bounds) else {
        return;
    };
    let (mut x0, mut y0) = (p[0].round() as i64, p[1].round() as i64);
    let (x1, y1) = (q[0].round() as i64, q[1].round() as i64);
    let dx = (x1 - x0).abs();
    let dy = -(y1 - y0).abs();
    let sx = if x0 < x1 { 1 } else { -1 };
    let sy = if y0 < y1 { 1 } else { -1 };
    let mut err = dx + dy;
    loop {
        for (ox, oy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            img.put(x0 + ox, y0 + oy, rgb);
        }
        if x0 == x1 && y0 == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x0 += sx;
        }
        if e2 <= dx {
            err += dx;
            y0 += sy;
        }
    }
}

/// Liang-Barsky clipping of segment `a`-`b` to `[xmin, ymin, xmax, ymax]`; `None` when the
/// segment misses the rectangle or has non-finite ends.
fn clip_segment(a: [f64; 2], b: [f64; 2], r: [f64; 4]) -> Option<([f64; 2], [f64; 2])> {
    if !a.iter().chain(b.iter()).all(|v| v.is_finite()) {
        return None;
    }
    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [(-dx, a[0] - r[0]), (dx, r[2] - a[0]), (-dy, a[1] - r[1]), (dy, r[3] - a[1])] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
        }
    }
    if t0 > t1 {
        return None;
    }
    Some(([a[0] + t0 * dx, a[1] + t0 * dy], [a[0] + t1 * dx, a[1] + t1 * dy]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::geometry::BBox;

    fn count(img: &RgbImage, rgb: [u8; 3]) -> usize {
        img.pixels.chunks(3).filter(|p| *p == rgb).count()
    }

    #[test]
    fn face_box_and_keypoints_are_drawn() {
        let mut img = RgbImage::black(40, 40);
        let face = Face {
            bbox: BBox { xmin: 5.0, ymin: 5.0, xmax: 30.0, ymax: 30.0 },
            score: 0.9,
            keypoints: [[15.0, 15.0]; 6],
        };
        draw_faces(&mut img, &[face]);
        assert_eq!(img.get(5, 5), Some(FACE_COLOUR));
        assert_eq!(img.get(17, 6), Some(FACE_COLOUR)); // second row of the 2 px top edge
        assert_eq!(img.get(15, 15), Some(KEYPOINT_COLOUR));
        assert_eq!(img.get(20, 20), Some([0, 0, 0]));
    }

    #[test]
    fn shapes_partly_or_wildly_outside_do_not_panic() {
        let mut img = RgbImage::black(20, 10);
        let face = Face {
            bbox: BBox { xmin: -15.0, ymin: 3.0, xmax: 1e30, ymax: 40.0 },
            score: 0.5,
            keypoints: [[-1.0, -1.0], [19.0, 9.0], [f32::NAN, 0.0], [1e20, 1e20], [0.0, 0.0], [25.0, 5.0]],
        };
        draw_faces(&mut img, &[face]);
        // The visible part of the top edge is drawn.
        assert_eq!(img.get(10, 3), Some(FACE_COLOUR));
        let tb =
            TextBox { points: [[-5.0, -5.0], [30.0, 2.0], [f32::INFINITY, 8.0], [2.0, 50.0]], score: 1.0 };
        draw_text_boxes(&mut img, &[tb]);
        assert!(count(&img, TEXT_COLOUR) > 0);
        assert_eq!(img.pixels.len(), 20 * 10 * 3);
    }

    #[test]
    fn text_box_outline_is_closed() {
        let mut img = RgbImage::black(30, 30);
        let tb = TextBox { points: [[3.0, 3.0], [25.0, 3.0], [25.0, 20.0], [3.0, 20.0]], score: 1.0 };
        draw_text_boxes(&mut img, &[tb]);
        for (x, y) in [(3, 3), (14, 3), (25, 10), (14, 20), (3, 12), (4, 12)] {
            assert_eq!(img.get(x, y), Some(TEXT_COLOUR), "({x}, {y})");
        }
        assert_eq!(img.get(14, 12), Some([0, 0, 0]));
    }

    #[test]
    fn clip_segment_cases() {
        let r = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(clip_segment([-5.0, 5.0], [15.0, 5.0], r), Some(([0.0, 5.0], [10.0, 5.0])));
        assert_eq!(clip_segment([-5.0, -5.0], [-1.0, 20.0], r), None);
        assert_eq!(clip_segment([f64::NAN, 0.0], [1.0, 1.0], r), None);
    }
}
