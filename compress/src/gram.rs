//! Second-moment (Gram) statistics of the activations a weight's rows multiply, gathered on
//! calibration data. They turn weight error into *output* error: for a weight row `w` (one output
//! channel) quantised to `q`, the layer's mean squared output error on the calibration inputs is
//! `(w - q)ᵀ G (w - q) / count`, where `G` is the Gram matrix of the input patches the row sees.
//!
//! Patches are accumulated in batches: `B` patches are gathered as the columns of an
//! `row_len × B` matrix `P` and `P Pᵀ` is added to the sums (upper triangle, mirrored afterwards),
//! so the `row_len²` sums are touched once per batch rather than once per patch.

/// Patches gathered before they are folded into the sums.
const BATCH: usize = 64;

/// Geometry of a 2-D convolution, enough to cut input patches (ONNX `Conv` attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Strides along H and W.
    pub strides: [usize; 2],
    /// Pads: top, left, bottom, right.
    pub pads: [usize; 4],
    /// Dilations along H and W.
    pub dilations: [usize; 2],
    /// Number of groups (channels per group = C / group).
    pub group: usize,
}

impl ConvGeometry {
    /// Output height and width for an `h × w` input, `None` when the kernel does not fit or a
    /// stride/dilation is zero.
    pub fn output_size(&self, h: usize, w: usize) -> Option<[usize; 2]> {
        let dim = |len: usize, pad: usize, k: usize, s: usize, d: usize| -> Option<usize> {
            if s == 0 || d == 0 || k == 0 {
                return None;
            }
            let span = d * (k - 1) + 1;
            (len + pad).checked_sub(span).map(|rest| rest / s + 1)
        };
        let oh = dim(h, self.pads[0] + self.pads[2], self.kernel[0], self.strides[0], self.dilations[0])?;
        let ow = dim(w, self.pads[1] + self.pads[3], self.kernel[1], self.strides[1], self.dilations[1])?;
        Some([oh, ow])
    }
}

/// Gram matrices of one weight's input patches, one per group.
///
/// For a Conv weight `[M, C/group, kh, kw]`, a row is one output channel of `row_len =
/// C/group·kh·kw` values, and rows `g·M/group .. (g+1)·M/group` see the patches of group `g`.
/// For a Gemm weight with `transB = 1` (`[N, K]`), `groups = 1` and `row_len = K`.
#[derive(Debug, Clone, PartialEq)]
pub struct RowGram {
    /// Number of groups.
    pub groups: usize,
    /// Length of one weight row (= one patch).
    pub row_len: usize,
    /// `groups · row_len · row_len` sums of `x xᵀ` over patches, row-major per group.
    pub sums: Vec<f64>,
    /// Number of patches accumulated per group.
    pub count: u64,
    /// `groups · row_len` sums of the patches themselves (their mean times `count`).
    pub patch_sums: Vec<f64>,
    /// Whether `sums` hold the patches' deviations from their mean (see [`RowGram::centered`]).
    pub centered: bool,
}

/// `count` indices spread evenly over `0..n` (centres of `count` equal strips), ascending.
fn spread(n: usize, count: usize) -> Vec<usize> {
    let count = count.min(n);
    (0..count).map(|t| ((2 * t + 1) * n) / (2 * count)).collect()
}

/// The output positions whose input patches feed an accumulator, for one Conv input.
struct PatchGrid {
    /// Images in the batch.
    images: usize,
    /// Channels, height and width of the input.
    chw: [usize; 3],
    /// Output positions `(y, x)` taken in every image.
    positions: Vec<(usize, usize)>,
}

impl PatchGrid {
    /// The grid of at most `max_patches` positions per image (see [`RowGram::add_conv_input`]);
    /// `None` (with a warning when the input does not match) when nothing is to be added.
    fn new(
        groups: usize,
        row_len: usize,
        x_len: usize,
        shape: &[usize],
        geom: &ConvGeometry,
        max_patches: usize,
    ) -> Option<PatchGrid> {
        let &[n, c, h, w] = shape else {
            log::warn!("gram: conv input of rank {} skipped", shape.len());
            return None;
        };
        let [kh, kw] = geom.kernel;
        let fits = geom.group == groups
            && geom.group > 0
            && c.is_multiple_of(geom.group)
            && (c / geom.group) * kh * kw == row_len
            && x_len == n * c * h * w;
        let Some([oh, ow]) = geom.output_size(h, w).filter(|_| fits) else {
            log::warn!("gram: conv input {shape:?} does not match {geom:?} / row_len {row_len}");
            return None;
        };
        if max_patches == 0 || oh * ow == 0 || row_len == 0 {
            return None;
        }
        let (ys, xs) = if oh * ow <= max_patches {
            ((0..oh).collect::<Vec<_>>(), (0..ow).collect::<Vec<_>>())
        } else {
            let ny = ((max_patches as f64 * oh as f64 / ow as f64).sqrt().round() as usize).clamp(1, oh);
            let nx = (max_patches / ny).clamp(1, ow);
            let ny = (max_patches / nx).clamp(1, oh);
            (spread(oh, ny), spread(ow, nx))
        };
        let positions = ys.iter().flat_map(|&y| xs.iter().map(move |&x| (y, x))).collect();
        Some(PatchGrid { images: n, chw: [c, h, w], positions })
    }

    /// Writes the patches of `chunk` (positions of image `image`, group `g`) as the columns of
    /// `batch`: `batch[i · chunk.len() + p]` is value `i` of patch `p`.
    fn gather(
        &self,
        x: &[f32],
        geom: &ConvGeometry,
        image: usize,
        g: usize,
        chunk: &[(usize, usize)],
        batch: &mut [f64],
    ) {
        let [c, h, w] = self.chw;
        let [kh, kw] = geom.kernel;
        let cg = c / geom.group;
        let chans = &x[(image * c + g * cg) * h * w..(image * c + (g + 1) * cg) * h * w];
        let b = chunk.len();
        for (p, &(oy, ox)) in chunk.iter().enumerate() {
            let y0 = (oy * geom.strides[0]) as isize - geom.pads[0] as isize;
            let x0 = (ox * geom.strides[1]) as isize - geom.pads[1] as isize;
            for ci in 0..cg {
                for ky in 0..kh {
                    let iy = y0 + (ky * geom.dilations[0]) as isize;
                    for kx in 0..kw {
                        let ix = x0 + (kx * geom.dilations[1]) as isize;
                        let inside = (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
                        let v = if inside {
                            chans[ci * h * w + iy as usize * w + ix as usize] as f64
                        } else {
                            0.0
                        };
                        batch[((ci * kh + ky) * kw + kx) * b + p] = v;
                    }
                }
            }
        }
    }
}

impl RowGram {
    /// An empty accumulator.
    pub fn new(groups: usize, row_len: usize) -> RowGram {
        RowGram {
            groups,
            row_len,
            sums: vec![0.0; groups * row_len * row_len],
            count: 0,
            patch_sums: vec![0.0; groups * row_len],
            centered: false,
        }
    }

    /// The mean patch of group `g` (zeros before any patch).
    pub fn mean(&self, g: usize) -> Vec<f64> {
        let n = self.count.max(1) as f64;
        self.patch_sums[g * self.row_len..(g + 1) * self.row_len].iter().map(|s| s / n).collect()
    }

    /// The statistics of the patches' deviations from their mean, with the share `keep` of the
    /// mean's own term left in: `Σ (x - μ)(x - μ)ᵀ + keep · count · μ μᵀ = Σ x xᵀ - (1 - keep) ·
    /// count · μ μᵀ` per group. A layer whose bias absorbs the mean of its output error (bias
    /// correction: the bias moves by `(w - q)·μ`) makes only the deviations' part of the error
    /// on these patches, so its codebooks are fitted to it; `keep > 0` still charges errors
    /// along the mean, because other inputs' means differ from the calibration set's and the
    /// correction is exact only for the latter. Diagonal entries are clamped at zero against
    /// rounding.
    pub fn centered(&self, keep: f64) -> RowGram {
        let len = self.row_len;
        let n = self.count.max(1) as f64 / (1.0 - keep.clamp(0.0, 1.0));
        let mut out = self.clone();
        for g in 0..self.groups {
            let s = &self.patch_sums[g * len..(g + 1) * len];
            let gm = &mut out.sums[g * len * len..(g + 1) * len * len];
            for i in 0..len {
                for j in 0..len {
                    gm[i * len + j] -= s[i] * s[j] / n;
                }
                gm[i * len + i] = gm[i * len + i].max(0.0);
            }
        }
        out.centered = true;
        out
    }

    /// The Gram matrix of group `g` (`row_len × row_len`, row-major).
    pub fn group(&self, g: usize) -> &[f64] {
        let n = self.row_len * self.row_len;
        &self.sums[g * n..(g + 1) * n]
    }

    /// The diagonal of group `g`'s Gram matrix (the energy of each input position).
    pub fn diag(&self, g: usize) -> Vec<f64> {
        let gm = self.group(g);
        (0..self.row_len).map(|j| gm[j * self.row_len + j]).collect()
    }

    /// Whether the statistics can weigh a `rows × row_len` weight: same row length, rows split
    /// evenly into the groups, at least one patch, finite sums and some positive energy.
    pub fn fits(&self, rows: usize, row_len: usize) -> bool {
        self.groups > 0
            && rows.is_multiple_of(self.groups)
            && row_len == self.row_len
            && self.count > 0
            && self.sums.len() == self.groups * row_len * row_len
            && self.sums.iter().all(|v| v.is_finite())
            && (0..self.groups).any(|g| self.diag(g).iter().any(|&d| d > 0.0))
    }

    /// Adds the patches of a Conv input `x` of shape `[N, C, H, W]`, at most `max_patches`
    /// output positions per image (chosen deterministically, spread over the image).
    ///
    /// Positions form a strided grid: `ny × nx ≤ max_patches` rows and columns picked at the
    /// centres of equal strips of the output, `ny : nx` following the output's aspect ratio. Every
    /// output position is taken when there are at most `max_patches`. Padding contributes zeros.
    /// An input that does not match the accumulator (rank, group count, patch length, data
    /// length) is skipped with a warning.
    pub fn add_conv_input(&mut self, x: &[f32], shape: &[usize], geom: &ConvGeometry, max_patches: usize) {
        let Some(grid) = PatchGrid::new(self.groups, self.row_len, x.len(), shape, geom, max_patches) else {
            return;
        };
        let len = self.row_len;
        let mut batch = vec![0.0f64; len * BATCH];
        for image in 0..grid.images {
            for g in 0..geom.group {
                for chunk in grid.positions.chunks(BATCH) {
                    let b = chunk.len();
                    grid.gather(x, geom, image, g, chunk, &mut batch[..len * b]);
                    self.add_batch(g, &batch[..len * b], b);
                }
            }
            self.count += grid.positions.len() as u64;
        }
        self.mirror();
    }

    /// Adds the rows of a Gemm/MatMul activation `x` (`[.., K]`), each row one sample; at most
    /// `max_rows` rows, spread evenly over `x`. Skipped with a warning when `K != row_len`, the
    /// accumulator has several groups, or `x` is not a whole number of rows.
    pub fn add_rows(&mut self, x: &[f32], max_rows: usize) {
        let len = self.row_len;
        if self.groups != 1 || len == 0 || !x.len().is_multiple_of(len) {
            log::warn!("gram: {} values do not form rows of {len} (groups {})", x.len(), self.groups);
            return;
        }
        let picked = spread(x.len() / len, max_rows);
        let mut batch = vec![0.0f64; len * BATCH];
        for chunk in picked.chunks(BATCH) {
            let b = chunk.len();
            for (p, &r) in chunk.iter().enumerate() {
                for (i, &v) in x[r * len..(r + 1) * len].iter().enumerate() {
                    batch[i * b + p] = v as f64;
                }
            }
            self.add_batch(0, &batch[..len * b], b);
        }
        self.count += picked.len() as u64;
        self.mirror();
    }

    /// Adds `P Pᵀ` to the upper triangle of group `g`, `P` being `row_len × b` (row-major).
    fn add_batch(&mut self, g: usize, p: &[f64], b: usize) {
        let len = self.row_len;
        let sums = &mut self.sums[g * len * len..(g + 1) * len * len];
        for (i, total) in self.patch_sums[g * len..(g + 1) * len].iter_mut().enumerate() {
            *total += p[i * b..(i + 1) * b].iter().sum::<f64>();
        }
        // Rows of zeros add nothing: inputs that read only padding in this batch (the outer
        // taps of a 3×3 filter over a one-row map, two thirds of its rows) are skipped.
        let live: Vec<usize> =
            (0..len).filter(|&i| p[i * b..(i + 1) * b].iter().any(|&v| v != 0.0)).collect();
        for (n, &i) in live.iter().enumerate() {
            let pi = &p[i * b..(i + 1) * b];
            for &j in &live[n..] {
                let pj = &p[j * b..(j + 1) * b];
                sums[i * len + j] += crate::refit::dot(pi, pj);
            }
        }
    }

    /// Copies every group's upper triangle onto its lower triangle.
    fn mirror(&mut self) {
        let len = self.row_len;
        for gm in self.sums.chunks_exact_mut((len * len).max(1)) {
            for i in 0..len {
                for j in 0..i {
                    gm[i * len + j] = gm[j * len + i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761u32) ^ seed.wrapping_mul(40503)) % 1000) as f32 / 500.0
                    - 1.0
            })
            .collect()
    }

    /// Direct convolution by scattering every input pixel into the outputs it reaches: a
    /// formulation independent of im2col. Returns `[N, M, OH, OW]`.
    fn conv_scatter(x: &[f32], shape: [usize; 4], wt: &[f32], m: usize, geom: &ConvGeometry) -> Vec<f64> {
        let [n, c, h, w] = shape;
        let [oh, ow] = geom.output_size(h, w).unwrap();
        let [kh, kw] = geom.kernel;
        let (cg, mg) = (c / geom.group, m / geom.group);
        let mut out = vec![0.0f64; n * m * oh * ow];
        for b in 0..n {
            for ch in 0..c {
                let g = ch / cg;
                for y in 0..h {
                    for xx in 0..w {
                        let v = x[((b * c + ch) * h + y) * w + xx] as f64;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let ny =
                                    y as isize + geom.pads[0] as isize - (ky * geom.dilations[0]) as isize;
                                let nx =
                                    xx as isize + geom.pads[1] as isize - (kx * geom.dilations[1]) as isize;
                                if ny < 0 || nx < 0 {
                                    continue;
                                }
                                let (ny, nx) = (ny as usize, nx as usize);
                                if ny % geom.strides[0] != 0 || nx % geom.strides[1] != 0 {
                                    continue;
                                }
                                let (oy, ox) = (ny / geom.strides[0], nx / geom.strides[1]);
                                if oy >= oh || ox >= ow {
                                    continue;
                                }
                                for o in g * mg..(g + 1) * mg {
                                    let wv = wt[((o * cg + (ch - g * cg)) * kh + ky) * kw + kx] as f64;
                                    out[((b * m + o) * oh + oy) * ow + ox] += wv * v;
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// With every position taken, `wᵀ G_g w` equals the sum of squared conv outputs of row `w`.
    fn check_geometry(c: usize, m: usize, geom: ConvGeometry, hw: [usize; 2]) {
        let shape = [2, c, hw[0], hw[1]];
        let x = values(shape.iter().product(), 3);
        let row_len = c / geom.group * geom.kernel[0] * geom.kernel[1];
        let wt = values(m * row_len, 11);
        let mut gram = RowGram::new(geom.group, row_len);
        gram.add_conv_input(&x, &shape, &geom, usize::MAX);
        let [oh, ow] = geom.output_size(hw[0], hw[1]).unwrap();
        assert_eq!(gram.count, (2 * oh * ow) as u64);
        let out = conv_scatter(&x, shape, &wt, m, &geom);
        for o in 0..m {
            let g = o / (m / geom.group);
            let gm = gram.group(g);
            let row = &wt[o * row_len..(o + 1) * row_len];
            let mut quad = 0.0;
            for i in 0..row_len {
                for j in 0..row_len {
                    quad += row[i] as f64 * gm[i * row_len + j] * row[j] as f64;
                }
            }
            let energy: f64 = (0..2)
                .flat_map(|b| (0..oh * ow).map(move |p| (b, p)))
                .map(|(b, p)| {
                    let v = out[(b * m + o) * oh * ow + p];
                    v * v
                })
                .sum();
            assert!((quad - energy).abs() <= 1e-9 * energy.max(1.0), "{geom:?} o={o}: {quad} vs {energy}");
        }
        for g in 0..geom.group {
            let gm = gram.group(g);
            for i in 0..row_len {
                for j in 0..row_len {
                    assert_eq!(gm[i * row_len + j], gm[j * row_len + i]);
                }
            }
        }
    }

    #[test]
    fn conv_gram_matches_direct_convolution() {
        let geom = |kernel, strides, pads, dilations, group| ConvGeometry {
            kernel,
            strides,
            pads,
            dilations,
            group,
        };
        check_geometry(3, 4, geom([3, 3], [1, 1], [1, 1, 1, 1], [1, 1], 1), [5, 6]);
        check_geometry(4, 6, geom([3, 2], [2, 1], [1, 0, 2, 1], [1, 2], 2), [7, 5]);
        check_geometry(4, 4, geom([3, 3], [2, 2], [2, 2, 2, 2], [2, 2], 4), [6, 7]); // depthwise
        check_geometry(6, 6, geom([1, 1], [1, 1], [0, 0, 0, 0], [1, 1], 1), [3, 4]);
        check_geometry(2, 4, geom([5, 5], [3, 3], [0, 0, 0, 0], [1, 1], 1), [5, 5]);
        // one position
    }

    #[test]
    fn conv_subsampling_is_bounded_spread_and_deterministic() {
        let geom =
            ConvGeometry { kernel: [3, 3], strides: [1, 1], pads: [1; 4], dilations: [1, 1], group: 2 };
        let shape = [3, 4, 16, 24];
        let x = values(shape.iter().product(), 5);
        let mut a = RowGram::new(2, 18);
        a.add_conv_input(&x, &shape, &geom, 20);
        assert!(a.count > 0 && a.count <= 3 * 20, "{}", a.count);
        let mut b = RowGram::new(2, 18);
        b.add_conv_input(&x, &shape, &geom, 20);
        assert_eq!(a, b);
        // The grid covers the image: both ends of each axis are within one strip of the border.
        let ys = spread(16, 4);
        assert_eq!(ys, vec![2, 6, 10, 14]);
        assert_eq!(spread(5, 9), vec![0, 1, 2, 3, 4]);
        // Nothing is added for a mismatched input or a zero budget.
        let mut c = RowGram::new(2, 18);
        c.add_conv_input(&x, &shape, &geom, 0);
        c.add_conv_input(&x, &[3, 4, 16], &geom, 10);
        c.add_conv_input(&x[1..], &shape, &geom, 10);
        assert_eq!(c, RowGram::new(2, 18));
        assert!(!c.fits(4, 18));
        assert!(a.fits(4, 18) && !a.fits(3, 18) && !a.fits(4, 17));
    }

    #[test]
    fn rows_gram_is_sum_of_outer_products() {
        let (k, n) = (5, 7);
        let x = values(n * k, 9);
        let mut g = RowGram::new(1, k);
        g.add_rows(&x, 100);
        assert_eq!(g.count, n as u64);
        for i in 0..k {
            for j in 0..k {
                let want: f64 = (0..n).map(|r| x[r * k + i] as f64 * x[r * k + j] as f64).sum();
                assert!((g.group(0)[i * k + j] - want).abs() < 1e-12);
            }
        }
        let mut h = RowGram::new(1, k);
        h.add_rows(&x, 3);
        assert_eq!(h.count, 3);
        h.add_rows(&x[..k + 1], 3); // not whole rows: skipped
        assert_eq!(h.count, 3);
    }

    #[test]
    fn centered_statistics_are_the_deviations_from_the_mean() {
        let (k, n) = (4, 9);
        let x: Vec<f32> = values(n * k, 3).iter().enumerate().map(|(i, v)| v + (i % k) as f32).collect();
        let mut g = RowGram::new(1, k);
        g.add_rows(&x, 100);
        let mean: Vec<f64> =
            (0..k).map(|i| (0..n).map(|r| x[r * k + i] as f64).sum::<f64>() / n as f64).collect();
        for (got, want) in g.mean(0).iter().zip(&mean) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        let c = g.centered(0.0);
        assert!(c.centered && !g.centered);
        for i in 0..k {
            for j in 0..k {
                let want: f64 =
                    (0..n).map(|r| (x[r * k + i] as f64 - mean[i]) * (x[r * k + j] as f64 - mean[j])).sum();
                assert!((c.group(0)[i * k + j] - want).abs() < 1e-9, "({i}, {j})");
                let half = want + 0.5 * n as f64 * mean[i] * mean[j];
                assert!((g.centered(0.5).group(0)[i * k + j] - half).abs() < 1e-9, "({i}, {j}) half kept");
            }
        }
        assert_eq!(g.centered(1.0).sums, g.sums);
    }

    #[test]
    fn conv_patch_means_count_padding_as_zero() {
        // 2 groups of 1 channel, 3×3 kernel, pad 1: every output position's patch, padding zero.
        let (c, h, w) = (2, 4, 5);
        let x = values(c * h * w, 5);
        let geom =
            ConvGeometry { kernel: [3, 3], strides: [1, 1], pads: [1, 1, 1, 1], dilations: [1, 1], group: 2 };
        let mut g = RowGram::new(2, 9);
        g.add_conv_input(&x, &[1, c, h, w], &geom, 1000);
        assert_eq!(g.count, (h * w) as u64);
        for grp in 0..2 {
            let mean = g.mean(grp);
            for ky in 0..3 {
                for kx in 0..3 {
                    let mut sum = 0.0f64;
                    for oy in 0..h as isize {
                        for ox in 0..w as isize {
                            let (iy, ix) = (oy + ky as isize - 1, ox + kx as isize - 1);
                            if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                                sum += x[grp * h * w + iy as usize * w + ix as usize] as f64;
                            }
                        }
                    }
                    let want = sum / (h * w) as f64;
                    assert!((mean[ky * 3 + kx] - want).abs() < 1e-12, "group {grp} tap ({ky}, {kx})");
                }
            }
        }
    }
}
