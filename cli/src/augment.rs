//! Calibration augmentation (`pith compress --augment N`): every calibration image also yields
//! `N` deterministic variants before preprocessing, cycling through a horizontal flip, a crop
//! rescaled back to the image's size (zoom 0.7–0.9 at an offset), and a brightness / contrast
//! change; from the fourth variant on, each kind is combined with another one at new
//! parameters. Parameters come from a hash of the file name and the variant's number, so an
//! image gets the same variants in every run and in every folder it appears in.
//!
//! [`interleave`] orders the samples so that fine-tuning's held-out split (every third sample)
//! holds out whole images: all variants of an image sit on held-out positions or none do.

use image::imageops::{self, FilterType};
use pith_runtime::tasks::image::RgbImage;

/// What one variant does to its image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    /// Mirror left-right.
    Flip,
    /// Crop `zoom` of each side at offset fractions `(fx, fy)` of the slack, then resize back.
    Zoom {
        /// Fraction of the width and height kept, in [0.7, 0.9].
        zoom: f32,
        /// Horizontal offset of the crop as a fraction of `width - crop width`.
        fx: f32,
        /// Vertical offset of the crop as a fraction of `height - crop height`.
        fy: f32,
    },
    /// `contrast` (percent, as `image::imageops::contrast` takes it) then `brightness` (added
    /// to every channel).
    Tone {
        /// Contrast change in percent, in [-30, 30].
        contrast: f32,
        /// Brightness offset, in [-30, 30].
        brightness: i32,
    },
}

/// The transforms of variant `v` (0-based) of the image named `name`: one for the first three
/// variants (flip, zoom, tone), two from the fourth on.
pub fn transforms(name: &str, v: usize) -> Vec<Transform> {
    let mut rng = SplitMix(fnv1a(name.as_bytes()) ^ (v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut kind = |k: usize| match k % 3 {
        0 => Transform::Flip,
        1 => Transform::Zoom { zoom: 0.7 + 0.2 * rng.unit(), fx: rng.unit(), fy: rng.unit() },
        _ => Transform::Tone {
            contrast: -30.0 + 60.0 * rng.unit(),
            brightness: (-30.0 + 60.0 * rng.unit()).round() as i32,
        },
    };
    let first = kind(v);
    if v < 3 {
        vec![first]
    } else {
        // Later rounds pair each kind with the next one, so no variant repeats an earlier one.
        vec![first, kind(v + 1 + (v / 3 - 1) % 2)]
    }
}

/// `n` variants of `img` (named `name`, which seeds their parameters), each with a label
/// suffix naming its transforms.
pub fn variants(img: &RgbImage, name: &str, n: usize) -> Vec<(String, RgbImage)> {
    (0..n)
        .map(|v| {
            let ts = transforms(name, v);
            let mut out = to_image(img);
            for t in &ts {
                out = apply(&out, *t);
            }
            let label: Vec<&str> = ts
                .iter()
                .map(|t| match t {
                    Transform::Flip => "flip",
                    Transform::Zoom { .. } => "zoom",
                    Transform::Tone { .. } => "tone",
                })
                .collect();
            (format!("#{v}-{}", label.join("+")), from_image(out))
        })
        .collect()
}

/// Orders per-image groups of samples (an image followed by its variants; groups in file
/// order) so that every third sample, the one fine-tuning holds out of training, belongs to
/// every third image: groups are taken three at a time and their samples interleaved
/// (`a0 b0 c0 a1 b1 c1 ...`), so `c`'s samples sit at positions `≡ 2 (mod 3)`. A last set of
/// one or two groups is appended group by group; some of its samples then fall on held-out
/// positions, but they are variants of images that train, so no held-out image's variant
/// trains. Without variants (groups of one) the order is the input order.
pub fn interleave<T>(groups: Vec<Vec<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(groups.iter().map(Vec::len).sum());
    let mut groups = groups.into_iter().peekable();
    loop {
        let mut set: Vec<std::vec::IntoIter<T>> = Vec::new();
        while set.len() < 3 {
            match groups.next() {
                Some(g) => set.push(g.into_iter()),
                None => break,
            }
        }
        if set.is_empty() {
            break;
        }
        let full = set.len() == 3 && set.iter().map(|g| g.len()).min() == set.iter().map(|g| g.len()).max();
        if full {
            while set[0].len() > 0 {
                for g in &mut set {
                    out.extend(g.next());
                }
            }
        } else {
            for g in set {
                out.extend(g);
            }
        }
    }
    out
}

/// One transform of an RGB image; the output has the input's size.
fn apply(img: &image::RgbImage, t: Transform) -> image::RgbImage {
    let (w, h) = img.dimensions();
    match t {
        Transform::Flip => imageops::flip_horizontal(img),
        Transform::Zoom { zoom, fx, fy } => {
            let cw = ((w as f32 * zoom).round() as u32).clamp(1, w);
            let ch = ((h as f32 * zoom).round() as u32).clamp(1, h);
            let x = ((w - cw) as f32 * fx).round() as u32;
            let y = ((h - ch) as f32 * fy).round() as u32;
            let crop = imageops::crop_imm(img, x.min(w - cw), y.min(h - ch), cw, ch).to_image();
            imageops::resize(&crop, w, h, FilterType::Triangle)
        }
        Transform::Tone { contrast, brightness } => {
            imageops::colorops::brighten(&imageops::colorops::contrast(img, contrast), brightness)
        }
    }
}

fn to_image(img: &RgbImage) -> image::RgbImage {
    image::RgbImage::from_raw(img.width as u32, img.height as u32, img.pixels.clone())
        .unwrap_or_else(|| image::RgbImage::new(img.width as u32, img.height as u32))
}

fn from_image(img: image::RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    RgbImage { width: w as usize, height: h as usize, pixels: img.into_raw() }
}

/// FNV-1a, 64-bit: a stable hash of the file name (unlike `std`'s hasher, fixed across runs
/// and versions).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// SplitMix64: a small deterministic generator.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> RgbImage {
        // 3x2, every byte distinct.
        RgbImage { width: 3, height: 2, pixels: (0..18).map(|i| (i * 13) as u8).collect() }
    }

    #[test]
    fn yields_the_asked_number_of_same_sized_variants() {
        let img = RgbImage { width: 40, height: 30, pixels: (0..3600).map(|i| (i % 251) as u8).collect() };
        for n in [0, 1, 3, 7] {
            let v = variants(&img, "a.png", n);
            assert_eq!(v.len(), n);
            for (label, out) in &v {
                assert_eq!((out.width, out.height, out.pixels.len()), (40, 30, 3600), "{label}");
                assert_ne!(out.pixels, img.pixels, "{label} must change the image");
            }
            let labels: Vec<&String> = v.iter().map(|(l, _)| l).collect();
            let mut unique = labels.clone();
            unique.dedup();
            assert_eq!(unique, labels);
        }
    }

    #[test]
    fn variants_are_deterministic_and_depend_on_the_name() {
        let img =
            RgbImage { width: 40, height: 30, pixels: (0..3600).map(|i| (i * 7 % 256) as u8).collect() };
        let a = variants(&img, "a.png", 5);
        let b = variants(&img, "a.png", 5);
        assert_eq!(
            a.iter().map(|(_, i)| &i.pixels).collect::<Vec<_>>(),
            b.iter().map(|(_, i)| &i.pixels).collect::<Vec<_>>()
        );
        assert_ne!(transforms("a.png", 1), transforms("b.png", 1));
        for v in 0..9 {
            for t in transforms("x.jpg", v) {
                match t {
                    Transform::Zoom { zoom, fx, fy } => {
                        assert!(
                            (0.7..=0.9).contains(&zoom)
                                && (0.0..1.0).contains(&fx)
                                && (0.0..1.0).contains(&fy)
                        )
                    }
                    Transform::Tone { contrast, brightness } => {
                        assert!(contrast.abs() <= 30.0 && brightness.abs() <= 30)
                    }
                    Transform::Flip => {}
                }
            }
        }
    }

    #[test]
    fn the_first_variant_is_a_horizontal_flip() {
        let img = tiny();
        let (label, flipped) = &variants(&img, "t.png", 1)[0];
        assert_eq!(label, "#0-flip");
        for y in 0..2 {
            for x in 0..3 {
                let src = &img.pixels[(y * 3 + x) * 3..][..3];
                let dst = &flipped.pixels[(y * 3 + (2 - x)) * 3..][..3];
                assert_eq!(src, dst, "pixel ({x}, {y})");
            }
        }
    }

    #[test]
    fn interleaving_holds_out_whole_images() {
        // 7 images with 3 variants each: image k's samples are (k, 0..4).
        let groups: Vec<Vec<(usize, usize)>> = (0..7).map(|k| (0..4).map(|v| (k, v)).collect()).collect();
        let order = interleave(groups);
        assert_eq!(order.len(), 28);
        let held: Vec<usize> =
            order.iter().enumerate().filter(|(i, _)| i % 3 == 2).map(|(_, s)| s.0).collect();
        let train: Vec<usize> =
            order.iter().enumerate().filter(|(i, _)| i % 3 != 2).map(|(_, s)| s.0).collect();
        for k in &held {
            assert!(!train.contains(k) || *k == 6, "image {k} both trains and is held out");
        }
        assert!(held.contains(&2) && held.contains(&5));
        // Without variants the order is the file order.
        assert_eq!(interleave((0..5).map(|k| vec![k]).collect()), vec![0, 1, 2, 3, 4]);
    }
}
