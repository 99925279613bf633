//! Element-wise activations that kernels can fuse into their epilogue.

/// An activation applied to every output element after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, min), max)`.
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// `x` if `x >= 0`, else `alpha * x`.
    LeakyRelu(f32),
    /// `clamp(alpha * x + beta, 0, 1)`.
    HardSigmoid {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// `x * clamp(x / 6 + 1/2, 0, 1)` (as ONNX: `alpha = 1/6` multiplies, no division).
    HardSwish,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
}

impl Activation {
    /// The activation of one value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Relu => x.max(0.0),
            Activation::Clip { min, max } => x.max(min).min(max),
            Activation::LeakyRelu(alpha) => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * x
                }
            }
            Activation::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            Activation::HardSwish => x * (x * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0),
            Activation::Sigmoid => sigmoid(x),
        }
    }

    /// Writes `dst` row by row (rows of `width`) as the activation of `bias` plus the rows of
    /// `src` that start `src_pitch` apart, plus the same rows of `residual` (laid out like `dst`)
    /// if given: one pass that drops the padding columns of an accumulator and applies the whole
    /// epilogue, with the variant chosen once, not per row.
    pub fn store_rows(
        self,
        src: &[f32],
        src_pitch: usize,
        bias: f32,
        residual: Option<&[f32]>,
        dst: &mut [f32],
        width: usize,
    ) {
        fn each(
            src: &[f32],
            pitch: usize,
            residual: Option<&[f32]>,
            dst: &mut [f32],
            width: usize,
            f: impl Fn(f32) -> f32,
        ) {
            if width == 0 {
                return;
            }
            let rows = dst.chunks_exact_mut(width).zip(src.chunks(pitch.max(1)));
            match residual {
                Some(res) => {
                    for ((drow, srow), rrow) in rows.zip(res.chunks_exact(width)) {
                        for ((d, &s), &r) in drow.iter_mut().zip(&srow[..width]).zip(rrow) {
                            *d = f(s + r);
                        }
                    }
                }
                None => {
                    for (drow, srow) in rows {
                        for (d, &s) in drow.iter_mut().zip(&srow[..width]) {
                            *d = f(s);
                        }
                    }
                }
            }
        }
        let (b, r) = (bias, residual);
        match self {
            Activation::None => each(src, src_pitch, r, dst, width, |x| x + b),
            Activation::Relu => each(src, src_pitch, r, dst, width, |x| (x + b).max(0.0)),
            Activation::Clip { min, max } => {
                each(src, src_pitch, r, dst, width, |x| (x + b).max(min).min(max))
            }
            Activation::LeakyRelu(alpha) => each(src, src_pitch, r, dst, width, |x| {
                let x = x + b;
                if x >= 0.0 {
                    x
                } else {
                    alpha * x
                }
            }),
            Activation::HardSigmoid { alpha, beta } => {
                each(src, src_pitch, r, dst, width, |x| (alpha * (x + b) + beta).clamp(0.0, 1.0))
            }
            Activation::HardSwish => each(src, src_pitch, r, dst, width, |x| {
                let x = x + b;
                x * (x * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0)
            }),
            Activation::Sigmoid => each(src, src_pitch, r, dst, width, |x| sigmoid(x + b)),
        }
    }

    /// Applies the activation in place.
    pub fn apply_slice(self, xs: &mut [f32]) {
        // One loop per variant, so each body is branch-free and the compiler vectorises it
        // (a per-element `match` would not be).
        fn each(xs: &mut [f32], f: impl Fn(f32) -> f32) {
            for x in xs {
                *x = f(*x);
            }
        }
        match self {
            Activation::None => {}
            Activation::Relu => each(xs, |x| x.max(0.0)),
            Activation::Clip { min, max } => each(xs, |x| x.max(min).min(max)),
            Activation::LeakyRelu(alpha) => each(xs, |x| if x >= 0.0 { x } else { alpha * x }),
            Activation::HardSigmoid { alpha, beta } => each(xs, |x| (alpha * x + beta).clamp(0.0, 1.0)),
            Activation::HardSwish => each(xs, |x| x * (x * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0)),
            Activation::Sigmoid => each(xs, sigmoid),
        }
    }
}

/// Logistic sigmoid, written so that large `|x|` neither overflows nor loses the tails.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::manual_clamp)] // the definitions, written out independently
    fn each_activation_matches_its_definition() {
        let xs = [-7.5f32, -3.0, -1.0, -0.25, 0.0, 0.4, 2.9, 3.0, 6.5, 90.0, -90.0];
        for &x in &xs {
            assert_eq!(Activation::None.apply(x), x);
            assert_eq!(Activation::Relu.apply(x), if x > 0.0 { x } else { 0.0 });
            let c = Activation::Clip { min: -1.0, max: 2.5 }.apply(x);
            assert_eq!(
                c,
                if x < -1.0 {
                    -1.0
                } else if x > 2.5 {
                    2.5
                } else {
                    x
                }
            );
            assert_eq!(Activation::LeakyRelu(0.1).apply(x), if x < 0.0 { 0.1 * x } else { x });
            let hs = Activation::HardSigmoid { alpha: 0.2, beta: 0.5 }.apply(x);
            assert!((hs - (0.2 * x + 0.5).clamp(0.0, 1.0)).abs() < 1e-7);
            let hw = Activation::HardSwish.apply(x);
            let relu6 = (x + 3.0).clamp(0.0, 6.0);
            assert!((hw - x * relu6 / 6.0).abs() < 1e-5, "hardswish({x})");
            let s = Activation::Sigmoid.apply(x);
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((s as f64 - want).abs() < 1e-6, "sigmoid({x})");
            assert!(s.is_finite());
        }
        let mut v = xs.to_vec();
        Activation::Relu.apply_slice(&mut v);
        assert!(v.iter().all(|&x| x >= 0.0));
        // store_rows: rows of 3 taken 4 apart (the 4th column of each is padding, dropped).
        let all = [
            Activation::None,
            Activation::Relu,
            Activation::Clip { min: -1.0, max: 2.5 },
            Activation::LeakyRelu(0.1),
            Activation::HardSigmoid { alpha: 0.2, beta: 0.5 },
            Activation::HardSwish,
            Activation::Sigmoid,
        ];
        for act in all {
            let mut dst = [f32::NAN; 6];
            act.store_rows(&xs[..7], 4, 0.5, None, &mut dst, 3);
            let want = [xs[0], xs[1], xs[2], xs[4], xs[5], xs[6]].map(|x| act.apply(x + 0.5));
            assert_eq!(dst, want, "{act:?}");
            let residual = [1.0, -2.0, 0.25, 3.0, -0.5, 8.0];
            act.store_rows(&xs[..7], 4, 0.5, Some(&residual), &mut dst, 3);
            let sums = [xs[0], xs[1], xs[2], xs[4], xs[5], xs[6]];
            for ((d, s), r) in dst.iter().zip(sums).zip(residual) {
                assert_eq!(*d, act.apply(s + r + 0.5), "{act:?} with a residual");
            }
        }
    }
}
