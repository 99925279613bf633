//! Axis-aligned boxes and the planar geometry DB post-processing needs: convex hull and
//! minimum-area enclosing rectangle.

/// An axis-aligned box in pixels of the original image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    /// Left edge.
    pub xmin: f32,
    /// Top edge.
    pub ymin: f32,
    /// Right edge.
    pub xmax: f32,
    /// Bottom edge.
    pub ymax: f32,
}

impl BBox {
    /// Area; zero for an inverted (empty) box.
    pub fn area(&self) -> f32 {
        (self.xmax - self.xmin).max(0.0) * (self.ymax - self.ymin).max(0.0)
    }

    /// Intersection over union; zero when either box is empty.
    pub fn iou(&self, other: &BBox) -> f32 {
        let inter = BBox {
            xmin: self.xmin.max(other.xmin),
            ymin: self.ymin.max(other.ymin),
            xmax: self.xmax.min(other.xmax),
            ymax: self.ymax.min(other.ymax),
        }
        .area();
        let union = self.area() + other.area() - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
}

/// A rotated rectangle: its four corners, in order around the rectangle.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RotatedRect {
    pub corners: [[f32; 2]; 4],
    /// Length of the side from `corners[0]` to `corners[1]`.
    pub width: f32,
    /// Length of the side from `corners[1]` to `corners[2]`.
    pub height: f32,
}

impl RotatedRect {
    /// The shorter side.
    pub fn short_side(&self) -> f32 {
        self.width.min(self.height)
    }

    /// The same rectangle grown by `d` on every side (negative shrinks, floored at zero size).
    pub fn expanded(&self, d: f32) -> RotatedRect {
        let c = self.corners;
        let centre = [(c[0][0] + c[2][0]) * 0.5, (c[0][1] + c[2][1]) * 0.5];
        let unit = |a: [f32; 2], b: [f32; 2], len: f32| {
            if len > 0.0 {
                [(b[0] - a[0]) / len, (b[1] - a[1]) / len]
            } else {
                [0.0, 0.0]
            }
        };
        let mut u = unit(c[0], c[1], self.width);
        let mut v = unit(c[1], c[2], self.height);
        // A degenerate side has no direction; pick the perpendicular of the other one.
        if u == [0.0, 0.0] && v == [0.0, 0.0] {
            u = [1.0, 0.0];
            v = [0.0, 1.0];
        } else if u == [0.0, 0.0] {
            u = [v[1], -v[0]];
        } else if v == [0.0, 0.0] {
            v = [-u[1], u[0]];
        }
        let hw = (self.width * 0.5 + d).max(0.0);
        let hh = (self.height * 0.5 + d).max(0.0);
        let corner = |su: f32, sv: f32| {
            [centre[0] + su * hw * u[0] + sv * hh * v[0], centre[1] + su * hw * u[1] + sv * hh * v[1]]
        };
        RotatedRect {
            corners: [corner(-1.0, -1.0), corner(1.0, -1.0), corner(1.0, 1.0), corner(-1.0, 1.0)],
            width: 2.0 * hw,
            height: 2.0 * hh,
        }
    }
}

fn cross(o: [f32; 2], a: [f32; 2], b: [f32; 2]) -> f32 {
    (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
}

/// Convex hull (Andrew's monotone chain), counter-clockwise in a y-up frame, without collinear
/// points. Fewer than three distinct input points come back as they are (deduplicated).
pub(crate) fn convex_hull(points: &[[f32; 2]]) -> Vec<[f32; 2]> {
    let mut pts: Vec<[f32; 2]> =
        points.iter().copied().filter(|p| p[0].is_finite() && p[1].is_finite()).collect();
    pts.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let mut hull = half_hull(pts.iter());
    hull.extend(half_hull(pts.iter().rev()));
    hull
}

/// One monotone chain of the hull over points sorted along x, without its last point (the
/// first point of the other chain).
fn half_hull<'a>(points: impl Iterator<Item = &'a [f32; 2]>) -> Vec<[f32; 2]> {
    let mut chain: Vec<[f32; 2]> = Vec::new();
    for &p in points {
        while let [.., a, b] = chain[..] {
            if cross(a, b, p) > 0.0 {
                break;
            }
            chain.pop();
        }
        chain.push(p);
    }
    chain.pop();
    chain
}

/// Minimum-area rectangle enclosing `points` (as OpenCV's `minAreaRect`). The optimum has a
/// side collinear with a hull edge, so every edge direction is tried; hulls of pixel blobs are
/// small, which keeps the quadratic scan cheap. `None` for no finite points.
pub(crate) fn min_area_rect(points: &[[f32; 2]]) -> Option<RotatedRect> {
    let hull = convex_hull(points);
    let n = hull.len();
    if n == 0 {
        return None;
    }
    let edges: Vec<[f32; 2]> = if n == 1 {
        vec![[1.0, 0.0]]
    } else {
        (0..n)
            .map(|i| {
                let (a, b) = (hull[i], hull[(i + 1) % n]);
                [b[0] - a[0], b[1] - a[1]]
            })
            .collect()
    };
    let mut best: Option<(f32, RotatedRect)> = None;
    for e in edges {
        let len = (e[0] * e[0] + e[1] * e[1]).sqrt();
        if len == 0.0 {
            continue;
        }
        let u = [e[0] / len, e[1] / len];
        let v = [-u[1], u[0]];
        let (mut umin, mut umax, mut vmin, mut vmax) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for p in &hull {
            let pu = p[0] * u[0] + p[1] * u[1];
            let pv = p[0] * v[0] + p[1] * v[1];
            umin = umin.min(pu);
            umax = umax.max(pu);
            vmin = vmin.min(pv);
            vmax = vmax.max(pv);
        }
        let area = (umax - umin) * (vmax - vmin);
        if best.as_ref().is_none_or(|(a, _)| area < *a) {
            let at = |pu: f32, pv: f32| [pu * u[0] + pv * v[0], pu * u[1] + pv * v[1]];
            let rect = RotatedRect {
                corners: [at(umin, vmin), at(umax, vmin), at(umax, vmax), at(umin, vmax)],
                width: umax - umin,
                height: vmax - vmin,
            };
            best = Some((area, rect));
        }
    }
    best.map(|(_, r)| r)
}

/// Orders four corners clockwise (in image coordinates, y down) starting at the top-left, the
/// way PaddleOCR does: the two left-most points give top-left and bottom-left by y, the two
/// right-most give top-right and bottom-right.
pub(crate) fn order_clockwise(pts: [[f32; 2]; 4]) -> [[f32; 2]; 4] {
    let mut p = pts;
    p.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    let (tl, bl) = if p[0][1] <= p[1][1] { (p[0], p[1]) } else { (p[1], p[0]) };
    let (tr, br) = if p[2][1] <= p[3][1] { (p[2], p[3]) } else { (p[3], p[2]) };
    [tl, tr, br, bl]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_and_area() {
        let a = BBox { xmin: 0.0, ymin: 0.0, xmax: 2.0, ymax: 2.0 };
        let b = BBox { xmin: 1.0, ymin: 0.0, xmax: 3.0, ymax: 2.0 };
        assert_eq!(a.area(), 4.0);
        assert!((a.iou(&b) - 2.0 / 6.0).abs() < 1e-6);
        assert_eq!(a.iou(&a), 1.0);
        let far = BBox { xmin: 10.0, ymin: 10.0, xmax: 11.0, ymax: 11.0 };
        assert_eq!(a.iou(&far), 0.0);
        let empty = BBox { xmin: 1.0, ymin: 1.0, xmax: 0.0, ymax: 0.0 };
        assert_eq!(empty.area(), 0.0);
        assert_eq!(empty.iou(&empty), 0.0);
    }

    #[test]
    fn hull_drops_interior_and_collinear_points() {
        let pts = [[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [2.0, 2.0], [0.0, 2.0], [1.0, 1.0]];
        let h = convex_hull(&pts);
        assert_eq!(h.len(), 4);
        assert!(!h.contains(&[1.0, 1.0]) && !h.contains(&[1.0, 0.0]));
    }

    fn rotated_rect_points(cx: f32, cy: f32, w: f32, h: f32, angle: f32) -> Vec<[f32; 2]> {
        let (s, c) = angle.sin_cos();
        let mut pts = Vec::new();
        // Corners plus interior and edge samples.
        for i in 0..=4 {
            for j in 0..=4 {
                let a = (i as f32 / 4.0 - 0.5) * w;
                let b = (j as f32 / 4.0 - 0.5) * h;
                pts.push([cx + a * c - b * s, cy + a * s + b * c]);
            }
        }
        pts
    }

    #[test]
    fn min_area_rect_recovers_rotated_rectangles() {
        for &(w, h, angle) in
            &[(40.0f32, 10.0f32, 0.3f32), (12.0, 30.0, -0.7), (20.0, 20.0, 0.0), (50.0, 8.0, 1.2)]
        {
            let pts = rotated_rect_points(100.0, 60.0, w, h, angle);
            let r = min_area_rect(&pts).unwrap();
            let (lo, hi) = (r.width.min(r.height), r.width.max(r.height));
            assert!((lo - w.min(h)).abs() < 1e-2, "{w}x{h}@{angle}: {r:?}");
            assert!((hi - w.max(h)).abs() < 1e-2, "{w}x{h}@{angle}: {r:?}");
            let cx: f32 = r.corners.iter().map(|p| p[0]).sum::<f32>() / 4.0;
            let cy: f32 = r.corners.iter().map(|p| p[1]).sum::<f32>() / 4.0;
            assert!((cx - 100.0).abs() < 1e-2 && (cy - 60.0).abs() < 1e-2);
        }
    }

    #[test]
    fn min_area_rect_of_triangle_and_degenerate_sets() {
        // Right triangle with legs 4 and 3: the best rectangle is the 4x3 one on the legs.
        let r = min_area_rect(&[[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]]).unwrap();
        assert!((r.width * r.height - 12.0).abs() < 1e-4, "{r:?}");
        let line = min_area_rect(&[[0.0, 0.0], [3.0, 4.0]]).unwrap();
        assert!((line.width.max(line.height) - 5.0).abs() < 1e-5 && line.short_side() == 0.0);
        let dot = min_area_rect(&[[2.0, 2.0]]).unwrap();
        assert_eq!(dot.short_side(), 0.0);
        assert!(min_area_rect(&[]).is_none());
        assert!(min_area_rect(&[[f32::NAN, 0.0]]).is_none());
    }

    #[test]
    fn expanded_grows_each_side() {
        let r = min_area_rect(&[[0.0, 0.0], [10.0, 0.0], [10.0, 4.0], [0.0, 4.0]]).unwrap();
        let e = r.expanded(1.5);
        assert!((e.width.max(e.height) - 13.0).abs() < 1e-5);
        assert!((e.short_side() - 7.0).abs() < 1e-5);
        let xs: Vec<f32> = e.corners.iter().map(|p| p[0]).collect();
        assert!((xs.iter().cloned().fold(f32::MAX, f32::min) + 1.5).abs() < 1e-5);
    }

    #[test]
    fn order_clockwise_from_top_left() {
        let o = order_clockwise([[10.0, 10.0], [0.0, 0.0], [0.0, 10.0], [10.0, 0.0]]);
        assert_eq!(o, [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0], [0.0, 10.0]]);
    }
}
