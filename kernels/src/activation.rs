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
    /// `clamp(alpha * x + beta, 0, 1) + plus`: a HardSigmoid followed by a scalar `Add`
    /// (a squeeze-excite gate `x * s + x` computed as `x * (s + 1)`).
    HardSigmoidPlus {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
        /// Added after the clamp.
        plus: f32,
    },
    /// `x * clamp(x / 6 + 1/2, 0, 1)` (as ONNX: `alpha = 1/6` multiplies, no division).
    HardSwish,
    /// `scale * HardSwish(x) + shift`: a HardSwish followed by a scalar `Mul` and/or `Add`
    /// (PP-LCNetV3's learnable affine block), applied in the same pass.
    HardSwishAffine {
        /// Factor on the HardSwish.
        scale: f32,
        /// Added last.
        shift: f32,
    },
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
}

/// The activation a layer applies to each output channel: the same one for every channel, or a
/// `PRelu` with one slope per channel (MediaPipe's face and hand models), which is channel `c`'s
/// `LeakyRelu(slopes[c])`. The kernels apply it per channel in their epilogue, so a per-channel
/// `PRelu` costs no pass of its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChannelActivation<'a> {
    /// One activation for every channel.
    Same(Activation),
    /// `x` if `x >= 0`, else `slopes[c] * x` on channel `c`.
    PRelu(&'a [f32]),
}

impl ChannelActivation<'_> {
    /// Channel `c`'s activation.
    ///
    /// # Panics
    /// If a per-channel slope list is shorter than `c + 1` (a caller bug: the kernels check it
    /// against the layer's channels before use).
    #[inline]
    pub fn of(&self, c: usize) -> Activation {
        match *self {
            ChannelActivation::Same(act) => act,
            ChannelActivation::PRelu(slopes) => Activation::LeakyRelu(slopes[c]),
        }
    }

    /// The activation, when every channel has the same one.
    pub fn same(&self) -> Option<Activation> {
        match *self {
            ChannelActivation::Same(act) => Some(act),
            ChannelActivation::PRelu(_) => None,
        }
    }

    /// Checks that a per-channel activation has one slope for each of `channels` channels.
    pub(crate) fn check(&self, channels: usize) -> Result<(), crate::KernelError> {
        match *self {
            ChannelActivation::PRelu(slopes) if slopes.len() != channels => Err(crate::KernelError::Length {
                what: "PRelu slopes",
                expected: channels,
                got: slopes.len(),
            }),
            _ => Ok(()),
        }
    }
}

impl From<Activation> for ChannelActivation<'_> {
    fn from(act: Activation) -> Self {
        ChannelActivation::Same(act)
    }
}

impl Activation {
    /// The activation of one value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Relu => at_least(x, 0.0),
            Activation::Clip { min, max } => at_most(at_least(x, min), max),
            Activation::LeakyRelu(alpha) => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * x
                }
            }
            Activation::HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            Activation::HardSigmoidPlus { alpha, beta, plus } => (alpha * x + beta).clamp(0.0, 1.0) + plus,
            Activation::HardSwish => x * (x * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0),
            Activation::HardSwishAffine { scale, shift } => hard_swish_affine(x, scale, shift),
            Activation::Sigmoid => sigmoid(x),
        }
    }

    /// This activation followed by `y * c` (`Mul`) or `y + c` (`Add`) with a scalar `c`, when
    /// that is still one activation: a HardSwish (plain or already followed by such steps) takes
    /// both, a HardSigmoid an `Add`.
    pub fn then_scalar(self, add: bool, c: f32) -> Option<Activation> {
        let (scale, shift) = match self {
            Activation::HardSwish => (1.0, 0.0),
            Activation::HardSwishAffine { scale, shift } => (scale, shift),
            Activation::HardSigmoid { alpha, beta } if add => {
                return Some(Activation::HardSigmoidPlus { alpha, beta, plus: c })
            }
            Activation::HardSigmoidPlus { alpha, beta, plus } if add => {
                return Some(Activation::HardSigmoidPlus { alpha, beta, plus: plus + c })
            }
            _ => return None,
        };
        Some(if add {
            Activation::HardSwishAffine { scale, shift: shift + c }
        } else {
            Activation::HardSwishAffine { scale: scale * c, shift: shift * c }
        })
    }

    /// Writes `dst` row by row (rows of `width`) as the activation of `bias` plus the rows of
    /// `src` that start `src_pitch` apart, plus the same rows of `residual` (laid out like `dst`)
    /// if given: one pass that drops the padding columns of an accumulator and applies the whole
    /// epilogue, with the variant chosen once, not per row.
    #[inline(always)]
    pub fn store_rows(
        self,
        src: &[f32],
        src_pitch: usize,
        bias: f32,
        residual: Option<&[f32]>,
        dst: &mut [f32],
        width: usize,
    ) {
        // Inlined, so each path's `#[target_feature]` copy of the epilogue vectorises it with its
        // own vector width (a separate function would be compiled for the baseline target).
        #[inline(always)]
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
            Activation::Relu => each(src, src_pitch, r, dst, width, |x| at_least(x + b, 0.0)),
            Activation::Clip { min, max } => {
                each(src, src_pitch, r, dst, width, |x| at_most(at_least(x + b, min), max))
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
            Activation::HardSigmoidPlus { alpha, beta, plus } => {
                each(src, src_pitch, r, dst, width, |x| (alpha * (x + b) + beta).clamp(0.0, 1.0) + plus)
            }
            Activation::HardSwish => each(src, src_pitch, r, dst, width, |x| {
                let x = x + b;
                x * (x * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0)
            }),
            Activation::HardSwishAffine { scale, shift } => {
                each(src, src_pitch, r, dst, width, |x| hard_swish_affine(x + b, scale, shift))
            }
            Activation::Sigmoid => each(src, src_pitch, r, dst, width, |x| sigmoid(x + b)),
        }
    }

    /// Applies the activation in place.
    #[inline(always)]
    pub fn apply_slice(self, xs: &mut [f32]) {
        // One loop per variant, so each body is branch-free and the compiler vectorises it
        // (a per-element `match` would not be).
        #[inline(always)]
        fn each(xs: &mut [f32], f: impl Fn(f32) -> f32) {
            for x in xs {
                *x = f(*x);
            }
        }
        match self {
            Activation::None => {}
            Activation::Relu => each(xs, |x| at_least(x, 0.0)),
            Activation::Clip { min, max } => each(xs, |x| at_most(at_least(x, min), max)),
            Activation::LeakyRelu(alpha) => each(xs, |x| if x >= 0.0 { x } else { alpha * x }),
            Activation::HardSigmoid { alpha, beta } => each(xs, |x| (alpha * x + beta).clamp(0.0, 1.0)),
            Activation::HardSigmoidPlus { alpha, beta, plus } => {
                each(xs, |x| (alpha * x + beta).clamp(0.0, 1.0) + plus)
            }
            Activation::HardSwish => each(xs, |x| x * (x * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0)),
            Activation::HardSwishAffine { scale, shift } => each(xs, |x| hard_swish_affine(x, scale, shift)),
            Activation::Sigmoid => each(xs, sigmoid),
        }
    }
}

/// `scale * HardSwish(x) + shift`.
#[inline(always)]
fn hard_swish_affine(x: f32, scale: f32, shift: f32) -> f32 {
    (x * (x * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0)) * scale + shift
}

/// Logistic sigmoid, written so that large `|x|` neither overflows nor loses the tails.
///
/// Branch-free on [`exp_neg_abs`], so loops over it vectorise (libm's `expf` is a call per
/// element: PP-OCRv4's 205 Ki-element output map took 1 ms per run on it).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    // e = exp(-|x|) <= 1; sigmoid(|x|) = 1 / (1 + e), sigmoid(-|x|) = e / (1 + e).
    let e = exp_neg_abs(x);
    let num = if x >= 0.0 { 1.0 } else { e };
    num / (1.0 + e)
}

/// `ys = softmax(xs)` over one contiguous row (`ys.len()` values of `xs`): the largest value
/// taken off, each `exp` through [`exp_neg_abs`] (its argument is at most 0), divided by their
/// sum. Maximum and sum run in 16 independent lanes in a fixed order, so every path's copy
/// ([`crate::Isa::softmax_row`]) gives the same bits; NaNs are ignored by the maximum and
/// spread through the sum, as a plain loop would.
#[inline(always)]
pub(crate) fn softmax_row(xs: &[f32], ys: &mut [f32]) {
    const LANES: usize = 16;
    let xs = &xs[..ys.len()];
    let whole = ys.len() / LANES * LANES;
    // The last partial chunk, padded with -inf, which neither raises the maximum nor adds to the
    // sum (its exponential is 0): short rows (attention over 40 positions) stay on the vectors.
    let mut tail = [f32::NEG_INFINITY; LANES];
    tail[..ys.len() - whole].copy_from_slice(&xs[whole..]);
    let larger = |m: f32, v: f32| if v > m { v } else { m };
    let mut top = tail;
    for c in xs[..whole].chunks_exact(LANES) {
        for (t, &v) in top.iter_mut().zip(c) {
            *t = larger(*t, v);
        }
    }
    let max = top.into_iter().fold(f32::NEG_INFINITY, larger);
    let mut acc = [0.0f32; LANES];
    for t in tail.iter_mut() {
        *t = exp_neg_abs(*t - max);
    }
    for (a, &t) in acc.iter_mut().zip(&tail) {
        *a += t;
    }
    for (yc, xc) in ys[..whole].chunks_exact_mut(LANES).zip(xs[..whole].chunks_exact(LANES)) {
        for ((y, &x), a) in yc.iter_mut().zip(xc).zip(acc.iter_mut()) {
            *y = exp_neg_abs(x - max);
            *a += *y;
        }
    }
    let rest = ys.len() - whole;
    ys[whole..].copy_from_slice(&tail[..rest]);
    let sum = acc.iter().sum::<f32>();
    for y in ys.iter_mut() {
        *y /= sum;
    }
}

/// `exp(-|x|)`, relative error below 3e-7 (0 past `|x|` = 87.3, where the result would be
/// denormal), NaN for NaN. A Cephes-style reduction `exp(r) * 2^n` with a degree-6 polynomial,
/// using only arithmetic and bit operations that vectorise.
#[inline(always)]
pub fn exp_neg_abs(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so n * LN2_HI is exact for |n| < 2^11.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer (no `round` call).
    const ROUND: f32 = 12_582_912.0;
    let a = -x.abs();
    // A comparison, not `max`, so NaN stays NaN.
    let clamped = if a < -87.3 { -87.3 } else { a };
    let shifted = clamped * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (clamped - n * LN2_HI) - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // n is in -126..=0 here: 2^n is a normal float built from its exponent bits. `shifted`
    // holds n in its low mantissa bits (its bits are those of ROUND plus n), read with integer
    // arithmetic: `n as i32` is a saturating conversion, which the compiler did lane by lane
    // (AVX-512, a sigmoid over 205 Ki elements, PP-OCRv4 det's output map: 0.30 -> 0.10 ms).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    let y = e * scale;
    if a < -87.3 {
        0.0
    } else {
        y
    }
}

/// `x.max(lo)` for a bound `lo` that is not NaN (a NaN `x` gives `lo`, as `f32::max` does),
/// written as the compare-and-select that one `maxps` computes: vectorised, `f32::max` also
/// needs a NaN compare and a blend per vector (seen in the pointwise epilogue's profile).
#[inline(always)]
fn at_least(x: f32, lo: f32) -> f32 {
    if x > lo {
        x
    } else {
        lo
    }
}

/// `x.min(hi)` for a bound `hi` that is not NaN, as one `minps` (see [`at_least`]).
#[inline(always)]
fn at_most(x: f32, hi: f32) -> f32 {
    if x < hi {
        x
    } else {
        hi
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
            let lab = Activation::HardSwish.then_scalar(false, 1.5).and_then(|a| a.then_scalar(true, -0.25));
            let want = hw * 1.5 - 0.25;
            assert!((lab.unwrap().apply(x) - want).abs() < 1e-5, "hardswish * 1.5 - 0.25 at {x}");
            let s = Activation::Sigmoid.apply(x);
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((s as f64 - want).abs() < 1e-6, "sigmoid({x})");
            assert!(s.is_finite());
        }
        for i in -20_000..=20_000 {
            let x = i as f32 * 0.005;
            let want = (-(x as f64).abs()).exp();
            let got = exp_neg_abs(x) as f64;
            let tol = if x.abs() > 87.3 { 1e-37 } else { 3e-7 * want };
            assert!((got - want).abs() <= tol, "exp(-|{x}|): {got} vs {want}");
            let s = sigmoid(x) as f64;
            let want = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((s - want).abs() <= 1e-7 + 3e-7 * want, "sigmoid({x}): {s} vs {want}");
        }
        for x in [87.0f32, -87.0, 87.4, 200.0, -1e30, f32::INFINITY, f32::NEG_INFINITY] {
            let want = (-(x as f64).abs()).exp();
            // Past 87.3 the result would be denormal: flushed to 0.
            assert!((exp_neg_abs(x) as f64 - want).abs() <= 3e-7 * want + 1e-37, "exp(-|{x}|)");
        }
        assert_eq!((sigmoid(f32::INFINITY), sigmoid(f32::NEG_INFINITY)), (1.0, 0.0));
        assert!(sigmoid(f32::NAN).is_nan() && exp_neg_abs(f32::NAN).is_nan());
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
            Activation::HardSwishAffine { scale: 1.5, shift: -0.25 },
            Activation::HardSigmoidPlus { alpha: 0.2, beta: 0.5, plus: 1.0 },
            Activation::Sigmoid,
        ];
        assert_eq!(Activation::Relu.then_scalar(true, 1.0), None, "a Relu takes no affine step");
        let gate = Activation::HardSigmoid { alpha: 0.2, beta: 0.5 };
        assert_eq!(gate.then_scalar(false, 2.0), None, "a HardSigmoid takes no factor");
        assert_eq!(gate.then_scalar(true, 1.0).unwrap().apply(0.5), gate.apply(0.5) + 1.0);
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

    #[test]
    fn relu_and_clip_match_f32_max_and_min_on_every_path_including_nan() {
        // Written as compare-and-select for one maxps / minps; the values must stay those of
        // f32::max / f32::min: a NaN input gives the lower bound.
        let mut xs: Vec<f32> = (0..45).map(|i| (i as f32 - 22.0) * 0.37).collect();
        xs[3] = f32::NAN;
        xs[20] = f32::NAN;
        xs[44] = f32::INFINITY;
        xs[7] = f32::NEG_INFINITY;
        for act in [Activation::Relu, Activation::Clip { min: -1.5, max: 6.0 }] {
            let want: Vec<f32> = xs
                .iter()
                .map(|&x| match act {
                    Activation::Clip { min, max } => x.max(min).min(max),
                    _ => x.max(0.0),
                })
                .collect();
            let got: Vec<f32> = xs.iter().map(|&x| act.apply(x)).collect();
            assert_eq!(got, want, "{act:?} apply");
            for isa in crate::arch::Isa::available() {
                let mut slice = xs.clone();
                (isa.activate)(act, &mut slice);
                assert_eq!(slice, want, "{act:?} activate on {}", isa.name);
                let mut dst = vec![0.0; xs.len()];
                (isa.store_rows)(act, &xs, xs.len(), 0.0, None, &mut dst, xs.len());
                assert_eq!(dst, want, "{act:?} store_rows on {}", isa.name);
            }
        }
    }
}
