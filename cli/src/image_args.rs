//! Explicit image preprocessing flags (`--input-size`, `--fit`, `--pad`, `--mean`, `--std`,
//! `--layout`, `--channels`) for models without a bundled preset, resolved against the model
//! input's declared shape into an [`ImagePreprocess`].

use anyhow::{bail, Result};
use pith_runtime::tasks::preprocess::{Channels, Fit, ImagePreprocess, Layout};

/// `--fit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FitArg {
    /// Scale each axis to fill the input.
    Stretch,
    /// Keep the aspect ratio, centre, fill the border with --pad.
    Letterbox,
}

/// `--layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LayoutArg {
    /// 1 x C x H x W.
    Nchw,
    /// 1 x H x W x C.
    Nhwc,
}

/// `--channels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChannelsArg {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red (OpenCV's order).
    Bgr,
    /// One luma channel.
    Gray,
}

/// A comma-separated list of floats (`--mean`, `--std`).
#[derive(Debug, Clone, PartialEq)]
pub struct Floats(pub Vec<f32>);

/// Parses `0.485,0.456,0.406` (or one value).
pub fn parse_floats(s: &str) -> Result<Floats, String> {
    let values: Result<Vec<f32>, _> = s.split(',').map(|v| v.trim().parse::<f32>()).collect();
    match values {
        Ok(v) if v.iter().all(|x| x.is_finite()) => Ok(Floats(v)),
        _ => Err(format!("'{s}' is not a comma-separated list of numbers")),
    }
}

/// Parses `WxH`.
pub fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let parsed = s.split_once(['x', 'X']).and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(format!("'{s}' is not a size WIDTHxHEIGHT such as 640x480")),
    }
}

/// How images become inputs of a model without a preset.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct ImageArgs {
    /// Images: model input size WIDTHxHEIGHT (default: the input's declared size).
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub input_size: Option<(usize, usize)>,
    /// Images: how another aspect ratio fits the input size (default: stretch).
    #[arg(long, value_enum)]
    pub fit: Option<FitArg>,
    /// Images: letterbox border pixel value, 0-255 (default: 0).
    #[arg(long, value_name = "0-255")]
    pub pad: Option<u8>,
    /// Images: per-channel mean on the 0-1 scale, one value or one per channel in tensor order;
    /// each value is (pixel / 255 - mean) / std (default: 0).
    #[arg(long, value_name = "M[,M,M]", value_parser = parse_floats)]
    pub mean: Option<Floats>,
    /// Images: per-channel standard deviation on the 0-1 scale (default: 1).
    #[arg(long, value_name = "S[,S,S]", value_parser = parse_floats)]
    pub std: Option<Floats>,
    /// Images: tensor layout (default: read from the input's declared shape).
    #[arg(long, value_enum)]
    pub layout: Option<LayoutArg>,
    /// Images: channel order (default: rgb, or gray for a one-channel input).
    #[arg(long, value_enum)]
    pub channels: Option<ChannelsArg>,
}

impl ImageArgs {
    /// Whether any of the flags was given.
    pub fn is_set(&self) -> bool {
        *self != ImageArgs::default()
    }

    /// The recipe for input `name` whose declared shape is `declared` (`None` entries are
    /// symbolic; `None` overall when undeclared).
    pub fn resolve(&self, name: &str, declared: Option<&[Option<usize>]>) -> Result<ImagePreprocess> {
        let shape_text = || {
            declared.map_or_else(
                || "undeclared".to_string(),
                |d| {
                    let dims: Vec<String> =
                        d.iter().map(|x| x.map_or_else(|| "?".to_string(), |v| v.to_string())).collect();
                    format!("[{}]", dims.join(", "))
                },
            )
        };
        if let Some(d) = declared {
            if d.len() != 4 {
                bail!("input '{name}' has shape {}: images feed 4-D NCHW or NHWC inputs", shape_text());
            }
            if let Some(n) = d[0].filter(|&n| n != 1) {
                bail!("input '{name}' declares a batch of {n}: an image makes a batch of 1");
            }
        }
        let is_channels = |v: Option<usize>| matches!(v, Some(1) | Some(3));
        let layout = match (self.layout, declared) {
            (Some(LayoutArg::Nchw), _) => Layout::Nchw,
            (Some(LayoutArg::Nhwc), _) => Layout::Nhwc,
            (None, None) => Layout::Nchw,
            (None, Some(d)) => match (is_channels(d[1]), is_channels(d[3])) {
                (true, false) => Layout::Nchw,
                (false, true) => Layout::Nhwc,
                _ => bail!(
                    "cannot tell the layout of input '{name}' from its shape {}: pass --layout nchw or nhwc",
                    shape_text()
                ),
            },
        };
        let (c_dim, h_dim, w_dim) = match layout {
            Layout::Nchw => (1, 2, 3),
            Layout::Nhwc => (3, 1, 2),
        };
        let dim = |i: usize| declared.and_then(|d| d[i]);
        let channels = match (self.channels, dim(c_dim)) {
            (Some(ChannelsArg::Gray), None | Some(1)) => Channels::Gray,
            (Some(ChannelsArg::Rgb), None | Some(3)) => Channels::Rgb,
            (Some(ChannelsArg::Bgr), None | Some(3)) => Channels::Bgr,
            (None, Some(1)) => Channels::Gray,
            (None, None | Some(3)) => Channels::Rgb,
            (Some(c), Some(n)) => bail!("--channels {c:?} does not fit input '{name}' with {n} channel(s)"),
            (None, Some(n)) => {
                bail!("input '{name}' has {n} channels ({}): images give 1 or 3", shape_text())
            }
        };
        let (width, height) = match (self.input_size, dim(w_dim), dim(h_dim)) {
            (Some((w, h)), dw, dh) => {
                if dw.is_some_and(|d| d != w) || dh.is_some_and(|d| d != h) {
                    bail!("--input-size {w}x{h} does not match input '{name}' of shape {}", shape_text());
                }
                (w, h)
            }
            (None, Some(w), Some(h)) => (w, h),
            (None, _, _) => {
                bail!(
                    "input '{name}' ({}) has no fixed height and width: pass --input-size WxH",
                    shape_text()
                )
            }
        };
        let c = channels.count();
        let per_channel = |flag: &str, values: &Option<Floats>, default: f32| -> Result<[f32; 3]> {
            let Some(Floats(v)) = values else { return Ok([default; 3]) };
            let mut out = [default; 3];
            match v.len() {
                1 => out = [v[0]; 3],
                n if n == c => out[..n].copy_from_slice(v),
                n => bail!("--{flag} has {n} values; input '{name}' takes 1 or {c}"),
            }
            if out.iter().any(|x| x.abs() > 1.0) {
                bail!(
                    "--{flag} {v:?} is not on the 0-1 scale (pixel / 255): divide pixel-unit values by 255, \
                     e.g. 123.675 -> 0.485"
                );
            }
            Ok(out)
        };
        let recipe = ImagePreprocess {
            width,
            height,
            fit: match self.fit {
                Some(FitArg::Letterbox) => Fit::Letterbox,
                Some(FitArg::Stretch) | None => Fit::Stretch,
            },
            pad: self.pad.unwrap_or(0),
            mean: per_channel("mean", &self.mean, 0.0)?,
            std: per_channel("std", &self.std, 1.0)?,
            layout,
            channels,
        };
        recipe.validate()?;
        Ok(recipe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut ImageArgs)) -> ImageArgs {
        let mut a = ImageArgs::default();
        f(&mut a);
        a
    }

    fn err(a: &ImageArgs, shape: Option<&[Option<usize>]>) -> String {
        format!("{:#}", a.resolve("x", shape).unwrap_err())
    }

    #[test]
    fn parsers_accept_sizes_and_lists_and_name_bad_ones() {
        assert_eq!(parse_size("640x480"), Ok((640, 480)));
        assert!(parse_size("640").unwrap_err().contains("WIDTHxHEIGHT"));
        assert!(parse_size("0x4").is_err());
        assert_eq!(parse_floats("0.5, 0.25,1"), Ok(Floats(vec![0.5, 0.25, 1.0])));
        assert!(parse_floats("0.5,,1").is_err());
        assert!(parse_floats("nan").is_err());
    }

    #[test]
    fn layout_channels_and_size_come_from_the_declared_shape() {
        let a = args(|a| a.mean = Some(Floats(vec![0.5])));
        let nchw = a.resolve("x", Some(&[Some(1), Some(3), Some(224), Some(320)])).unwrap();
        assert_eq!(
            (nchw.layout, nchw.channels, nchw.width, nchw.height),
            (Layout::Nchw, Channels::Rgb, 320, 224)
        );
        assert_eq!(nchw.mean, [0.5; 3]);
        let nhwc = a.resolve("x", Some(&[None, Some(96), Some(64), Some(1)])).unwrap();
        assert_eq!(
            (nhwc.layout, nhwc.channels, nhwc.width, nhwc.height),
            (Layout::Nhwc, Channels::Gray, 64, 96)
        );
    }

    #[test]
    fn flags_override_and_must_agree_with_the_shape() {
        let dynamic: &[Option<usize>] = &[Some(1), Some(3), None, None];
        assert!(err(&ImageArgs::default(), Some(dynamic)).contains("--input-size"));
        let a = args(|a| {
            a.input_size = Some((640, 320));
            a.channels = Some(ChannelsArg::Bgr);
            a.std = Some(Floats(vec![0.1, 0.2, 0.3]));
            a.fit = Some(FitArg::Letterbox);
            a.pad = Some(114);
        });
        let r = a.resolve("x", Some(dynamic)).unwrap();
        assert_eq!(
            (r.width, r.height, r.channels, r.fit, r.pad),
            (640, 320, Channels::Bgr, Fit::Letterbox, 114)
        );
        assert_eq!(r.std, [0.1, 0.2, 0.3]);
        let fixed: &[Option<usize>] = &[Some(1), Some(3), Some(300), Some(300)];
        assert!(err(&a, Some(fixed)).contains("does not match"));
        let gray = args(|a| a.channels = Some(ChannelsArg::Gray));
        assert!(err(&gray, Some(fixed)).contains("3 channel"));
        let two = args(|a| a.mean = Some(Floats(vec![0.1, 0.2])));
        assert!(err(&two, Some(fixed)).contains("2 values"));
        let pixels = args(|a| a.mean = Some(Floats(vec![123.675, 116.28, 103.53])));
        assert!(err(&pixels, Some(fixed)).contains("0-1 scale"));
    }

    #[test]
    fn shapes_images_cannot_feed_are_refused() {
        let a = ImageArgs::default();
        assert!(err(&a, Some(&[Some(1), Some(3), Some(8)])).contains("4-D"));
        assert!(err(&a, Some(&[Some(4), Some(3), Some(8), Some(8)])).contains("batch of 4"));
        assert!(err(&a, Some(&[Some(1), Some(3), Some(8), Some(3)])).contains("--layout"));
        assert!(err(&a, Some(&[Some(1), Some(5), Some(8), Some(8)])).contains("--layout"));
        let nchw = args(|a| a.layout = Some(LayoutArg::Nchw));
        assert!(err(&nchw, Some(&[Some(1), Some(5), Some(8), Some(8)])).contains("5 channels"));
        assert!(a.resolve("x", None).unwrap_err().to_string().contains("--input-size"));
        let sized = args(|a| a.input_size = Some((4, 2)));
        assert_eq!(sized.resolve("x", None).unwrap().shape(), vec![1, 3, 2, 4]);
    }
}
