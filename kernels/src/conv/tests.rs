use super::depthwise::{in_place_depthwise, small_3x3_kernel};
use super::pointwise::sliver_columns;
use super::slab::uses_depthwise_rows;
use super::*;
use crate::testutil::{
    assert_close, assert_close_within, decode_all, kernel_sets, kernel_sets_up_to, pointwise, random_weight,
    same_width_depthwise, Edge, Guarded, Rng, WeightKind,
};
use crate::Kernels;

/// Plain 7-loop convolution on fully decoded weights.
fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, p: &Conv2dParams) -> Vec<f32> {
    let (cin_g, cout_g) = (p.in_per_group(), p.out_per_group());
    let mut y = vec![0.0; p.batch * p.out_c * p.out_h * p.out_w];
    for b in 0..p.batch {
        for oc in 0..p.out_c {
            let g = oc / cout_g;
            for oy in 0..p.out_h {
                for ox in 0..p.out_w {
                    let mut s = bias.map_or(0.0, |b| b[oc]);
                    for c in 0..cin_g {
                        for ky in 0..p.k_h {
                            for kx in 0..p.k_w {
                                let iy = (oy * p.stride_h + ky * p.dil_h) as isize - p.pad_top as isize;
                                let ix = (ox * p.stride_w + kx * p.dil_w) as isize - p.pad_left as isize;
                                if iy < 0 || ix < 0 || iy >= p.in_h as isize || ix >= p.in_w as isize {
                                    continue;
                                }
                                let ic = g * cin_g + c;
                                let xv = x[((b * p.in_c + ic) * p.in_h + iy as usize) * p.in_w + ix as usize];
                                let wv = w[((oc * cin_g + c) * p.k_h + ky) * p.k_w + kx];
                                s += xv * wv;
                            }
                        }
                    }
                    y[((b * p.out_c + oc) * p.out_h + oy) * p.out_w + ox] = s;
                }
            }
        }
    }
    y
}

fn out_extent(input: usize, pad: usize, k: usize, s: usize, d: usize) -> usize {
    (input + pad - d * (k - 1) - 1) / s + 1
}

fn random_params(rng: &mut Rng, case: usize) -> Conv2dParams {
    let groups = [1, 1, 2, 3][rng.below(4)];
    let depthwise = case % 4 == 1;
    let pointwise = case % 4 == 2;
    let in_c = if depthwise { 1 + rng.below(6) } else { groups * (1 + rng.below(4)) };
    let groups = if depthwise { in_c } else { groups };
    let out_c = groups * (1 + rng.below(3));
    let (k_h, k_w) = if pointwise { (1, 1) } else { (1 + rng.below(4), 1 + rng.below(4)) };
    let (stride_h, stride_w, dil_h, dil_w) = if pointwise {
        (1, 1, 1, 1)
    } else {
        (1 + rng.below(3), 1 + rng.below(3), 1 + rng.below(2), 1 + rng.below(3))
    };
    let pads = if pointwise { [0; 4] } else { [rng.below(3), rng.below(3), rng.below(3), rng.below(3)] };
    let in_h = dil_h * (k_h - 1) + 1 + rng.below(9);
    let in_w = dil_w * (k_w - 1) + 1 + rng.below(11);
    Conv2dParams {
        batch: 1 + rng.below(2),
        in_c,
        in_h,
        in_w,
        out_c,
        out_h: out_extent(in_h, pads[0] + pads[2], k_h, stride_h, dil_h),
        out_w: out_extent(in_w, pads[1] + pads[3], k_w, stride_w, dil_w),
        k_h,
        k_w,
        stride_h,
        stride_w,
        pad_top: pads[0],
        pad_left: pads[1],
        dil_h,
        dil_w,
        groups,
    }
}

/// Runs `p` under every kernel set and checks each against the 7-loop reference.
/// Also checks the fused residual add (`conv2d_add`) the same way.
fn check_all_paths(rng: &mut Rng, sets: &[Kernels], p: &Conv2dParams, kind: WeightKind, with_bias: bool) {
    check_all_paths_within(rng, sets, p, kind, with_bias, 0.0);
}

/// [`check_all_paths`] with [`assert_close_within`]'s `range` slack.
fn check_all_paths_within(
    rng: &mut Rng,
    sets: &[Kernels],
    p: &Conv2dParams,
    kind: WeightKind,
    with_bias: bool,
    range: f32,
) {
    let assert_close = |got: &[f32], want: &[f32], what: &str| assert_close_within(got, want, range, what);
    let data = random_weight(rng, kind, p.out_c, p.filter_len());
    let wf = decode_all(&data, p.out_c);
    let x = rng.vec(p.batch * p.in_c * p.in_h * p.in_w);
    let bias = rng.vec(p.out_c);
    let bias = with_bias.then_some(&bias[..]);
    let want = reference(&x, &wf, bias, p);
    // The input against a no-access page after it, and before it for the residual calls, so a
    // kernel that reads past either end faults (see `Guarded`).
    let (x_end, x_start) = (Guarded::new(&x, Edge::End), Guarded::new(&x, Edge::Start));
    let (x, x_start) = (x_end.as_slice(), x_start.as_slice());
    for kernels in sets {
        let mut y = vec![f32::NAN; want.len()];
        // Stale scratch (NaN) must never leak into the result.
        let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(p)];
        kernels.conv2d(x, &data.view(), bias, p, Activation::None, &mut y, &mut scratch).unwrap();
        assert_close(&y, &want, &format!("{kernels:?} {kind:?} {p:?}"));
        // The fused residual add: y = conv + bias + residual.
        let residual = rng.vec(want.len());
        let want_add: Vec<f32> = want.iter().zip(&residual).map(|(w, r)| w + r).collect();
        // The same on a geometry prepared once (as the runtime runs a planned layer), and on one
        // prepared for the first kernel set (the call makes its own when the paths differ).
        for geometry in [kernels.conv_geometry(p).unwrap(), sets[0].conv_geometry(p).unwrap()] {
            let w = &data.view();
            for (r, want) in [(None, &want), (Some(&residual[..]), &want_add)] {
                y.fill(f32::NAN);
                scratch.fill(f32::NAN);
                let act = Activation::None;
                kernels.conv2d_prepared(&geometry, x, w, bias, r, None, act, &mut y, &mut scratch).unwrap();
                let what = format!("prepared, residual {}, {kernels:?} {kind:?} {p:?}", r.is_some());
                assert_close(&y, want, &what);
            }
        }
        scratch.fill(f32::NAN);
        y.fill(f32::NAN);
        let act = Activation::None;
        let residual_end = Guarded::new(&residual, Edge::End);
        kernels
            .conv2d_add(x_start, &data.view(), bias, residual_end.as_slice(), p, act, &mut y, &mut scratch)
            .unwrap();
        assert_close(&y, &want_add, &format!("residual {kernels:?} {kind:?} {p:?}"));
        // A residual of fewer channels: the missing ones add zero (a channel-padded skip).
        let (plane, rc) = (p.out_h * p.out_w, p.out_c / 2);
        let short: Vec<f32> =
            (0..p.batch).flat_map(|b| residual[b * p.out_c * plane..][..rc * plane].to_vec()).collect();
        let want_short: Vec<f32> = want
            .iter()
            .enumerate()
            .map(|(i, w)| if i / plane % p.out_c < rc { want_add[i] } else { *w })
            .collect();
        kernels.conv2d_add(x, &data.view(), bias, &short, p, act, &mut y, &mut scratch).unwrap();
        assert_close(&y, &want_short, &format!("{rc}-channel residual {kernels:?} {kind:?} {p:?}"));
        // A PRelu with a slope per output channel, after the residual.
        let slopes = prelu_slopes(rng, p.out_c);
        let act = ChannelActivation::PRelu(&slopes);
        kernels.conv2d_add(x_start, &data.view(), bias, &residual, p, act, &mut y, &mut scratch).unwrap();
        let want_prelu = per_channel_prelu(&want_add, &slopes, plane);
        assert_close(&y, &want_prelu, &format!("PRelu {kernels:?} {kind:?} {p:?}"));
    }
}

/// Slopes for `channels` channels, of both signs and above 1 (a slope is any real).
fn prelu_slopes(rng: &mut Rng, channels: usize) -> Vec<f32> {
    rng.vec(channels).iter().map(|v| 3.0 * v).collect()
}

/// `y` (NCHW, planes of `plane`) through a PRelu with one slope per channel.
fn per_channel_prelu(y: &[f32], slopes: &[f32], plane: usize) -> Vec<f32> {
    let c = slopes.len();
    y.iter().enumerate().map(|(i, &v)| if v >= 0.0 { v } else { slopes[i / plane.max(1) % c] * v }).collect()
}

#[test]
fn matches_reference_on_random_shapes_encodings_paths_and_threads() {
    let mut rng = Rng::new(42);
    let sets = kernel_sets();
    let kinds = WeightKind::all();
    for case in 0..120 {
        let p = random_params(&mut rng, case);
        check_all_paths(&mut rng, &sets, &p, kinds[case % kinds.len()], case % 3 != 0);
    }
}

/// A random depthwise convolution at `stride` (channel multiplier 1 or 2): filters up to
/// `max_k` (rows, columns), inputs up to `max_in` or of size `big`, pads up to past the
/// filter; `None` when the draw has no output.
fn random_depthwise(
    rng: &mut Rng,
    stride: usize,
    max_k: [usize; 2],
    max_in: [usize; 2],
    big: Option<[usize; 2]>,
) -> Option<Conv2dParams> {
    let (k_h, k_w) = (1 + rng.below(max_k[0]), 1 + rng.below(max_k[1]));
    let [in_h, in_w] = big.unwrap_or_else(|| [1 + rng.below(max_in[0]), 1 + rng.below(max_in[1])]);
    let pads = [rng.below(k_h + 1), rng.below(k_w + 1), rng.below(k_h + 1), rng.below(k_w + 1)];
    let out =
        |len: usize, lo: usize, hi: usize, k: usize| (len + lo + hi).checked_sub(k).map(|r| r / stride + 1);
    let out_h = out(in_h, pads[0], pads[2], k_h)?;
    let out_w = out(in_w, pads[1], pads[3], k_w)?;
    let in_c = 1 + rng.below(5);
    Some(Conv2dParams {
        batch: 1 + rng.below(2),
        in_c,
        in_h,
        in_w,
        out_c: in_c * (1 + rng.below(2)),
        out_h,
        out_w,
        k_h,
        k_w,
        stride_h: stride,
        stride_w: stride,
        pad_top: pads[0],
        pad_left: pads[1],
        dil_h: 1,
        dil_w: 1,
        groups: in_c,
    })
}

/// Checks layer `p` with random `kind` weights and a bias under activations the depthwise
/// kernels finish in their store (ReLU, Clip) and one they leave to the epilogue (HardSwish),
/// on every path; returns the weights, input, bias and unactivated reference output.
fn check_fused_activations(
    rng: &mut Rng,
    sets: &[Kernels],
    p: &Conv2dParams,
    kind: WeightKind,
) -> (pith_format::ir::TensorData, Vec<f32>, Vec<f32>, Vec<f32>) {
    let data = random_weight(rng, kind, p.out_c, p.filter_len());
    let x = rng.vec(p.batch * p.in_c * p.in_h * p.in_w);
    let bias = rng.vec(p.out_c);
    let plain = reference(&x, &decode_all(&data, p.out_c), Some(&bias), p);
    // The input against a no-access page after it, and before it for the PRelu calls.
    let (x_end, x_start) = (Guarded::new(&x, Edge::End), Guarded::new(&x, Edge::Start));
    for (act, f) in [
        (Activation::Relu, (|v: f32| v.max(0.0)) as fn(f32) -> f32),
        (Activation::Clip { min: -0.2, max: 0.3 }, |v: f32| v.clamp(-0.2, 0.3)),
        (Activation::HardSwish, |v: f32| v * (v / 6.0 + 0.5).clamp(0.0, 1.0)),
    ] {
        let want: Vec<f32> = plain.iter().map(|&v| f(v)).collect();
        for kernels in sets {
            let mut y = vec![f32::NAN; want.len()];
            let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(p)];
            kernels
                .conv2d(x_end.as_slice(), &data.view(), Some(&bias), p, act, &mut y, &mut scratch)
                .unwrap();
            assert_close(&y, &want, &format!("{act:?} {kernels:?} {p:?}"));
        }
    }
    // A slope per channel: never a clamp the store can apply, so the kernels' own epilogue.
    let slopes = prelu_slopes(rng, p.out_c);
    let want = per_channel_prelu(&plain, &slopes, p.out_h * p.out_w);
    for kernels in sets {
        let mut y = vec![f32::NAN; want.len()];
        let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(p)];
        let act = ChannelActivation::PRelu(&slopes);
        kernels.conv2d(x_start.as_slice(), &data.view(), Some(&bias), p, act, &mut y, &mut scratch).unwrap();
        assert_close(&y, &want, &format!("PRelu {kernels:?} {p:?}"));
    }
    (data, x, bias, plain)
}

#[test]
fn small_square_depthwise_matches_the_reference() {
    // MobileNetV3's 5x5 layers (14x14 and 7x7 at stride 1, 28->14 and 14->7 at stride 2,
    // "same" and TensorFlow's stride-2 padding) and 7x7 filters, with as many channels as
    // take several kernel calls, every activation the layer can fuse, one layer each too
    // wide (17 columns) and too padded (a pad of 5) for the many-channel kernel, and a 3x3
    // one padded more than the 3x3 kernel takes.
    let mut rng = Rng::new(83);
    let sets = kernel_sets();
    let shapes = [
        (5, 1, [14, 14], [2, 2]),
        (5, 1, [7, 7], [2, 2]),
        (5, 2, [28, 28], [2, 2]),
        (5, 2, [14, 14], [1, 1]),
        (7, 1, [9, 9], [3, 3]),
        (7, 2, [15, 16], [3, 2]),
        (5, 1, [17, 17], [2, 2]),
        (5, 1, [6, 6], [5, 5]),
        (3, 1, [8, 8], [2, 2]),
    ];
    for (case, (k, stride, [in_h, in_w], [pad_top, pad_left])) in shapes.into_iter().enumerate() {
        let channels = [3, 40, 97][case % 3];
        let out = |len: usize, pad: usize| (len + 2 * pad - k) / stride + 1;
        let p = Conv2dParams {
            batch: 1 + case % 2,
            in_c: channels,
            out_c: channels,
            in_h,
            in_w,
            out_h: out(in_h, pad_top),
            out_w: out(in_w, pad_left),
            k_h: k,
            k_w: k,
            stride_h: stride,
            stride_w: stride,
            pad_top,
            pad_left,
            dil_h: 1,
            dil_w: 1,
            groups: channels,
        };
        let wide = p.out_w > crate::arch::DEPTHWISE_SMALL_MAX_WIDTH || pad_top >= k;
        for kernels in &sets {
            let takes = matches!(small_channels_kernel(kernels.isa(), &p), Some(SmallChannels::Square(_)));
            let has =
                kernels.isa().depthwise_small.is_some() && small_3x3_kernel(kernels.isa(), &p).is_none();
            assert_eq!(takes, has && !wide, "{kernels:?} {p:?}");
        }
        let kind = WeightKind::all()[case % WeightKind::all().len()];
        check_all_paths(&mut rng, &sets, &p, kind, case % 2 == 0);
        check_fused_activations(&mut rng, &sets, &p, kind);
    }
}

/// 150 random depthwise layers of `stride` (filters up to `max_k`, planes up to `max_in`, every
/// tenth over `big`), each taking the path `takes` says, checked on every path with and without
/// fused activations; more than 100 of them must have an output.
fn check_depthwise_borders(
    seed: u64,
    stride: usize,
    [max_k, max_in, big]: [[usize; 2]; 3],
    takes: fn(&Conv2dParams) -> bool,
) {
    let mut rng = Rng::new(seed);
    let sets = kernel_sets();
    let kinds = WeightKind::all();
    let mut cases = 0;
    for case in 0..150 {
        let big = (case % 10 == 0).then_some(big);
        let Some(p) = random_depthwise(&mut rng, stride, max_k, max_in, big) else { continue };
        assert!(takes(&p), "{p:?}");
        cases += 1;
        let kind = kinds[case % kinds.len()];
        check_all_paths(&mut rng, &sets, &p, kind, case % 2 == 0);
        check_fused_activations(&mut rng, &sets, &p, kind);
    }
    assert!(cases > 100, "only {cases} shapes had an output");
}

#[test]
fn stride_2_depthwise_covers_every_border_on_every_path() {
    // Pads up to past the filter, planes smaller than the filter, odd and even sizes,
    // channel multipliers, filters up to 5x7, with and without bias and clamps.
    check_depthwise_borders(78, 2, [[5, 7], [12, 14], [41, 38]], in_place_depthwise);
}

#[test]
fn stride_1_depthwise_rows_cover_every_border() {
    // Pads up to past the filter (output rows and columns with no tap inside), planes
    // narrower or shorter than the filter, channel multipliers, residuals, fused clamps.
    check_depthwise_borders(77, 1, [[5, 5], [9, 12], [40, 37]], uses_depthwise_rows);
}

#[test]
fn small_plane_depthwise_covers_every_border_on_every_path() {
    // Same-width stride-1 layers (what `Isa::depthwise_plane` takes where the path has it):
    // short rows and rows that leave vectors half empty, pads past the filter, dilations,
    // channel multipliers, clamps, an activation the kernel cannot finish and residuals,
    // which both take the row path.
    let mut rng = Rng::new(79);
    let sets = kernel_sets();
    let kinds = WeightKind::all();
    let mut planes = 0;
    for case in 0..100 {
        let in_w = [1 + rng.below(15), 17 + rng.below(6), 33 + rng.below(3)][case % 3];
        let Some(one) = same_width_depthwise(&mut rng, [5, 7], in_w, (1024 / in_w).min(24)) else {
            continue;
        };
        let in_c = 1 + rng.below(5);
        let (batch, out_c) = (1 + rng.below(2), in_c * (1 + rng.below(2)));
        let p = Conv2dParams { batch, in_c, out_c, groups: in_c, ..one };
        let avx512 = sets.iter().find(|k| k.isa().name == "avx512");
        planes += avx512.is_some_and(|k| plane_kernel(k.isa(), &p).is_some()) as usize;
        let kind = kinds[case % kinds.len()];
        check_all_paths(&mut rng, &sets, &p, kind, case % 2 == 0);
        let (data, x, bias, plain) = check_fused_activations(&mut rng, &sets, &p, kind);
        // A residual over every output channel: the row path, then the epilogue.
        let res = rng.vec(plain.len());
        let want: Vec<f32> = plain.iter().zip(&res).map(|(v, r)| (v + r).max(0.0)).collect();
        for kernels in &sets {
            let mut y = vec![f32::NAN; want.len()];
            let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(&p)];
            let w = data.view();
            kernels
                .conv2d_add(&x, &w, Some(&bias), &res, &p, Activation::Relu, &mut y, &mut scratch)
                .unwrap();
            assert_close(&y, &want, &format!("residual {kernels:?} {p:?}"));
        }
    }
    if sets.iter().any(|k| k.isa().name == "avx512") {
        assert!(planes > 40, "only {planes} layers took the plane kernel");
    }
}

#[test]
fn sliver_columns_take_dot_products_only_where_they_pay() {
    // 49 = 3 x 16 + 1: one dot product per filter instead of a fourth vector, at k = 160.
    assert_eq!(sliver_columns(16, 49, 160), 1);
    assert_eq!(sliver_columns(8, 49, 320), 1);
    assert_eq!(sliver_columns(8, 49, 160), 1);
    assert_eq!(sliver_columns(8, 196, 576), 0);
    assert_eq!(sliver_columns(16, 49, 96), 1);
    // Short reductions, several columns, whole vectors, one vector or less: vectors.
    assert_eq!(sliver_columns(16, 49, 48), 0);
    assert_eq!(sliver_columns(16, 196, 384), 0);
    assert_eq!(sliver_columns(16, 64, 960), 0);
    assert_eq!(sliver_columns(16, 9, 960), 0);
    assert_eq!(sliver_columns(1, 49, 960), 0);
}

/// A 1×1, stride-1, unpadded convolution over `[h, w]` planes.
#[test]
fn pointwise_split_by_pixels_matches_the_reference() {
    // Few filters over planes of a few hundred pixels per thread: split by rows on the
    // threaded sets. Odd extents (rows end mid-vector, a thread's range starts mid-plane),
    // one filter, long reductions with sliver columns, full and partial residuals.
    let mut rng = Rng::new(91);
    let sets = kernel_sets();
    let mut split = 0;
    for (case, (in_c, out_c, [h, w])) in
        [(24, 6, [40, 37]), (5, 17, [33, 29]), (200, 20, [23, 49]), (3, 1, [64, 13])].into_iter().enumerate()
    {
        let p = pointwise(1 + case % 2, in_c, out_c, [h, w]);
        split += sets.iter().filter(|k| pointwise_by_pixels(k, &p)).count();
        let kinds = WeightKind::all();
        check_all_paths(&mut rng, &sets, &p, kinds[case % kinds.len()], true);
        check_fused_activations(&mut rng, &sets, &p, kinds[(case + 1) % kinds.len()]);
    }
    // Every threaded set splits every layer above by pixels; one thread never does.
    let threaded = sets.iter().filter(|k| k.threads() > 1).count();
    assert_eq!(split, 4 * threaded);
}

#[test]
fn pointwise_split_by_depth_matches_the_reference() {
    // Projections over small planes: summed in two shares of the depth on every set (one
    // thread included), the partial sums added up by pixel ranges (the last one short), with
    // every epilogue (bias, full and partial residuals, a PRelu per channel), uneven shares of
    // the depth, several panels of filters, odd extents and two images.
    let mut rng = Rng::new(93);
    let sets = kernel_sets();
    let cases = [(192, 32, [28, 28]), (160, 49, [14, 14]), (150, 7, [15, 14]), (144, 30, [14, 15])];
    for (case, (in_c, out_c, [h, w])) in cases.into_iter().enumerate() {
        let p = pointwise(1 + case % 2, in_c, out_c, [h, w]);
        assert!(pointwise_by_depth(&p), "{p:?} not split by depth");
        let kinds = WeightKind::all();
        check_all_paths(&mut rng, &sets, &p, kinds[case % kinds.len()], true);
        check_fused_activations(&mut rng, &sets, &p, kinds[(case + 1) % kinds.len()]);
    }
    // Projections over planes under 14×14 are not split by depth (BlazeFace full range's 192 ->
    // 64 over 12×12).
    assert!(!pointwise_by_depth(&pointwise(1, 192, 64, [12, 12])), "a 12×12 plane split by depth");
    // Nor 128-deep ones (BlazeFace full range's 128 -> 64 over 24×24).
    assert!(!pointwise_by_depth(&pointwise(1, 128, 64, [24, 24])), "128 inputs split by depth");
    // Shallower projections split by pixels (MobileNetV3-Small's 72 -> 24 over 28×28).
    let shallow = pointwise(1, 72, 24, [28, 28]);
    assert!(!pointwise_by_depth(&shallow), "72 inputs split by depth");
    assert!(sets.iter().any(|k| k.threads() > 1 && pointwise_by_pixels(k, &shallow)));
}

#[test]
fn a_layer_computes_the_same_bits_on_any_thread_count_and_on_the_caller_alone() {
    // A layer's results depend neither on the session's thread count nor on whether the pool
    // runs its jobs on the caller alone (a stalled worker's back-off, the thread tuner's serial
    // mode): projections split by depth sum the same shares, cut by filters on more threads
    // (the 320 -> 150 layer: four panels, two groups at 3 and 4 threads), the other splits
    // compute each output as one thread would. Every encoding, a residual on the projections.
    let mut rng = Rng::new(41);
    let layers = [
        pointwise(1, 192, 32, [28, 28]),
        pointwise(2, 144, 30, [14, 15]),
        pointwise(1, 320, 150, [14, 14]),
        pointwise(1, 24, 96, [56, 56]),
        // 3×3, padded: dense (split by rows) and depthwise (by channels).
        Conv2dParams { k_h: 3, k_w: 3, pad_top: 1, pad_left: 1, ..pointwise(1, 19, 21, [9, 10]) },
        Conv2dParams {
            k_h: 3,
            k_w: 3,
            pad_top: 1,
            pad_left: 1,
            groups: 32,
            ..pointwise(1, 32, 32, [20, 20])
        },
        // Over planes of 64×64 and more, split by bands of rows: depthwise (in place; 5×5 at
        // stride 2 too, bands of uneven height) and a 1×1 layer of many filters.
        Conv2dParams {
            k_h: 3,
            k_w: 3,
            pad_top: 1,
            pad_left: 1,
            groups: 16,
            ..pointwise(1, 16, 16, [64, 66])
        },
        Conv2dParams {
            k_h: 5,
            k_w: 5,
            stride_h: 2,
            stride_w: 2,
            pad_top: 2,
            pad_left: 2,
            groups: 8,
            out_h: 67,
            out_w: 65,
            ..pointwise(1, 8, 8, [133, 130])
        },
        pointwise(1, 8, 100, [64, 65]),
        // 3×3 layers into 64×64 (BlazeFace's, and one at stride 2): one thread runs them with
        // the 3×3 many-channel kernel on NEON and AVX2 (up to 64 columns), on AVX-512 with the
        // in-place one; both go by bands of rows.
        Conv2dParams {
            k_h: 3,
            k_w: 3,
            pad_top: 1,
            pad_left: 1,
            groups: 24,
            ..pointwise(1, 24, 24, [64, 64])
        },
        Conv2dParams {
            k_h: 3,
            k_w: 3,
            stride_h: 2,
            stride_w: 2,
            pad_top: 1,
            pad_left: 1,
            groups: 8,
            out_h: 64,
            out_w: 64,
            ..pointwise(1, 8, 8, [128, 128])
        },
    ];
    let sets = kernel_sets_up_to(4);
    for p in &layers[6..] {
        let banded = |k: &Kernels| {
            splits_by_bands(k, p)
                && (p.groups == 1
                    || in_place_kernel(k.isa(), p).is_some()
                    || small_3x3_kernel(k.isa(), p).is_some())
        };
        assert!(sets.iter().any(banded), "{p:?} not split by bands");
        assert!(!sets.iter().any(|k| k.threads() == 1 && banded(k)), "{p:?} split on one thread");
        assert!(p.groups > 1 || sets.iter().all(|k| !banded(k) || pointwise_by_pixels(k, p)));
    }
    let mut by_depth = 0;
    for (case, p) in layers.iter().enumerate() {
        let kind = WeightKind::all()[case * 3 % WeightKind::all().len()];
        let data = random_weight(&mut rng, kind, p.out_c, p.filter_len());
        let x = rng.vec(p.batch * p.in_c * p.in_h * p.in_w);
        let bias = rng.vec(p.out_c);
        let out_len = p.batch * p.out_c * p.out_h * p.out_w;
        let residual = pointwise_by_depth(p).then(|| rng.vec(out_len));
        by_depth += usize::from(residual.is_some());
        let run = |kernels: &Kernels| {
            let mut y = vec![f32::NAN; out_len];
            let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(p)];
            let (w, act) = (data.view(), Activation::Relu);
            match &residual {
                Some(r) => kernels.conv2d_add(&x, &w, Some(&bias), r, p, act, &mut y, &mut scratch),
                None => kernels.conv2d(&x, &w, Some(&bias), p, act, &mut y, &mut scratch),
            }
            .unwrap();
            y
        };
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
        for one in sets.iter().filter(|k| k.threads() == 1) {
            let want = run(one);
            for kernels in sets.iter().filter(|k| k.isa().name == one.isa().name && k.threads() > 1) {
                let what = format!("{kernels:?} {kind:?} {p:?}");
                assert!(same(&run(kernels), &want), "{what}: other bits than on one thread");
                kernels.set_serial(true);
                let serial = run(kernels);
                kernels.set_serial(false);
                assert!(same(&serial, &want), "{what}: other bits on the caller alone");
            }
        }
    }
    assert_eq!(by_depth, 3, "the three projections split by depth");
}

#[test]
fn pointwise_with_an_input_scale_matches_the_scaled_input() {
    // A squeeze-excite gate folded into the filters: the same as convolving the gated input,
    // on every path and thread count, for each way the layer splits (by filters, pixels and
    // depth), a plane of one pixel (no GEMV shortcut), two images, every encoding, with a
    // residual and a clamp.
    let mut rng = Rng::new(95);
    let sets = kernel_sets();
    let cases = [(24, 40, [7, 9]), (192, 32, [28, 28]), (16, 48, [33, 31]), (40, 24, [1, 1]), (5, 3, [2, 3])];
    for (case, (in_c, out_c, hw)) in cases.into_iter().enumerate() {
        let p = pointwise(1 + case % 2, in_c, out_c, hw);
        for kind in WeightKind::all() {
            let data = random_weight(&mut rng, kind, p.out_c, p.filter_len());
            let (x, scale) = (rng.vec(p.batch * p.in_c * hw[0] * hw[1]), rng.vec(p.batch * p.in_c));
            let gated: Vec<f32> = x.iter().enumerate().map(|(i, v)| v * scale[i / (hw[0] * hw[1])]).collect();
            let bias = rng.vec(p.out_c);
            let residual = rng.vec(p.batch * p.out_c * hw[0] * hw[1]);
            let act = Activation::Clip { min: -0.5, max: 0.5 };
            let want = reference(&gated, &decode_all(&data, p.out_c), Some(&bias), &p)
                .iter()
                .zip(&residual)
                .map(|(y, r)| act.apply(y + r))
                .collect::<Vec<_>>();
            for k in &sets {
                let mut y = vec![f32::NAN; want.len()];
                let mut s = vec![0.0; k.conv2d_scratch_len(&p)];
                k.conv2d_scaled_input(
                    &x,
                    &scale,
                    &data.view(),
                    Some(&bias),
                    Some(&residual),
                    &p,
                    act,
                    &mut y,
                    &mut s,
                )
                .unwrap();
                assert_close(&y, &want, &format!("{kind:?} {p:?} on {k:?}"));
                // The same on the layer's prepared geometry.
                y.fill(f32::NAN);
                let (g, w, r) = (k.conv_geometry(&p).unwrap(), &data.view(), Some(&residual[..]));
                k.conv2d_prepared(&g, &x, w, Some(&bias), r, Some(&scale), act, &mut y, &mut s).unwrap();
                assert_close(&y, &want, &format!("prepared {kind:?} {p:?} on {k:?}"));
            }
        }
    }
}

#[test]
fn an_input_scale_is_refused_where_it_does_not_apply() {
    let k = Kernels::default();
    let mut rng = Rng::new(96);
    let p = pointwise(1, 8, 4, [3, 3]);
    let data = random_weight(&mut rng, WeightKind::F32, 4, 8);
    let (x, mut y, mut s) = (rng.vec(72), vec![0.0; 36], vec![0.0; k.conv2d_scratch_len(&p)]);
    let err = k
        .conv2d_scaled_input(&x, &[1.0; 7], &data.view(), None, None, &p, Activation::None, &mut y, &mut s)
        .unwrap_err();
    assert!(err.to_string().contains("input scale"), "{err}");
    // A 3×3 depthwise layer over the same input.
    let q = Conv2dParams { out_c: 8, k_h: 3, k_w: 3, pad_top: 1, pad_left: 1, groups: 8, ..p };
    let dw = random_weight(&mut rng, WeightKind::F32, 8, 9);
    let mut y = vec![0.0; 72];
    let err = k
        .conv2d_scaled_input(&x, &[1.0; 8], &dw.view(), None, None, &q, Activation::None, &mut y, &mut s)
        .unwrap_err();
    assert!(err.to_string().contains("1×1"), "{err}");
}

#[test]
fn pointwise_sliver_columns_match_the_reference() {
    // Planes a column or two past whole vectors, long enough reductions for the dot-product
    // columns on every SIMD path, several panels and tiles, a residual and a clamp.
    let mut rng = Rng::new(81);
    let sets = kernel_sets();
    for (in_c, out_c, [h, w]) in [(320, 37, [7, 7]), (700, 20, [1, 17]), (300, 100, [3, 11])] {
        let p = pointwise(2, in_c, out_c, [h, w]);
        assert_eq!(sliver_columns(16, h * w, in_c), 1, "{p:?} takes a dot-product column");
        let kind = WeightKind::Codebook(4, pith_format::ir::CodebookKind::PerRow, false);
        check_all_paths(&mut rng, &sets, &p, kind, true);
        let data = random_weight(&mut rng, kind, p.out_c, p.filter_len());
        let x = rng.vec(p.batch * p.in_c * h * w);
        let (bias, res) = (rng.vec(out_c), rng.vec(p.batch * out_c * h * w));
        let plain = reference(&x, &decode_all(&data, out_c), Some(&bias), &p);
        let want: Vec<f32> = plain.iter().zip(&res).map(|(v, r)| (v + r).clamp(-0.5, 0.5)).collect();
        for kernels in &sets {
            let mut y = vec![f32::NAN; want.len()];
            let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(&p)];
            let act = Activation::Clip { min: -0.5, max: 0.5 };
            kernels.conv2d_add(&x, &data.view(), Some(&bias), &res, &p, act, &mut y, &mut scratch).unwrap();
            assert_close(&y, &want, &format!("{kernels:?} {p:?}"));
        }
    }
}

/// Every kernel set of [`kernel_sets`] that can take bf16 products, with them on.
fn bf16_sets() -> Vec<Kernels> {
    let sets: Vec<Kernels> =
        kernel_sets().into_iter().filter_map(|k| k.with_bf16_products(true).ok()).collect();
    if sets.is_empty() {
        eprintln!("no kernel path with bf16 products on this CPU: bf16 checks skipped");
    }
    sets
}

#[test]
fn bf16_products_stay_within_their_rounding_of_the_f32_result() {
    // Each product of two factors rounded to bf16 (8 significant bits: off by at most 2^-8
    // each) is off by at most 2^-7 of itself, so an output by at most 2^-7 of the sum of its
    // products' magnitudes (the f32 reference on |x| and |w|), plus the sums' own rounding.
    // Expansions and projections (split by depth on several threads), sliver columns (dot
    // products of pair rows), odd depths (a zero in the last pair), widths across strips of
    // 48, two images, residuals, every encoding, 1-3 threads; the 2000-deep layer needs more
    // strip than the accumulator holds and runs in f32.
    let mut rng = Rng::new(97);
    let sets = bf16_sets();
    let kinds = WeightKind::all();
    let cases = [
        (16, 96, [12, 11]),
        (24, 7, [9, 49]),
        (320, 37, [7, 7]),
        (3, 5, [4, 5]),
        (961, 20, [2, 9]),
        (2000, 3, [3, 5]),
        (201, 20, [14, 14]),
        (192, 200, [7, 7]),
    ];
    let mut by_depth = 0;
    for (case, (in_c, out_c, [h, w])) in cases.into_iter().enumerate() {
        let mut p = pointwise(1 + case % 2, in_c, out_c, [h, w]);
        // The last layer in two groups of 96 inputs and 100 filters (several panels each),
        // whose packed input must not pass from one group to the next, and whose sliver
        // column each panel gathers and rounds for itself.
        p.groups = if case == cases.len() - 1 { 2 } else { 1 };
        by_depth += usize::from(pointwise_by_depth(&p));
        let kind = kinds[case * 5 % kinds.len()];
        let data = random_weight(&mut rng, kind, out_c, p.filter_len());
        let wf = decode_all(&data, out_c);
        let x: Vec<f32> = rng.vec(p.batch * in_c * h * w).iter().map(|v| v - 0.5).collect();
        let (bias, res) = (rng.vec(out_c), rng.vec(p.batch * out_c * h * w));
        let plain = reference(&x, &wf, Some(&bias), &p);
        let want: Vec<f32> = plain.iter().zip(&res).map(|(v, r)| v + r).collect();
        let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<f32>>();
        let magnitude = reference(&abs(&x), &abs(&wf), None, &p);
        for kernels in &sets {
            let mut y = vec![f32::NAN; want.len()];
            let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(&p)];
            let act = Activation::None;
            kernels.conv2d_add(&x, &data.view(), Some(&bias), &res, &p, act, &mut y, &mut scratch).unwrap();
            for (i, ((g, w), m)) in y.iter().zip(&want).zip(&magnitude).enumerate() {
                let bound = m / 128.0 + 1e-4 * (1.0 + w.abs());
                assert!(
                    (g - w).abs() <= bound,
                    "{kernels:?} {kind:?} {p:?} element {i}: {g} vs {w} (bound {bound})"
                );
            }
        }
    }
    // The 201 -> 20 layer splits by depth.
    assert_eq!(by_depth, 1, "the layers split by depth");
}

#[test]
fn bf16_products_round_both_factors() {
    // Inputs of 1 + 2^-10 round to 1 in bf16 and weights of 1 - 2^-12 to 1: 96 products
    // then sum to exactly 96, where f32 sums 96 (1 + 2^-10)(1 - 2^-12). Columns in whole
    // vectors (48 per row), one sliver column (the 49th: a dot product of pair rows), and
    // 192 split by depth on the threaded sets, over 128 inputs.
    const K: usize = 128;
    let sets = bf16_sets();
    let f32_sum = K as f32 * (1.0 + 1.0 / 1024.0) * (1.0 - 1.0 / 4096.0);
    assert!((f32_sum - K as f32).abs() > 1e-2, "the f32 sum must differ from the bf16 one");
    for (h, w) in [(4, 12), (7, 7), (12, 16)] {
        let p = pointwise(1, K, 16, [h, w]);
        let data = pith_format::ir::TensorData::F32(vec![1.0 - 1.0 / 4096.0; 16 * K]);
        let x = vec![1.0 + 1.0 / 1024.0; K * h * w];
        for kernels in &sets {
            if (h, w) == (7, 7) {
                assert_eq!(sliver_columns(kernels.isa().lanes, h * w, K), 1, "no sliver column");
            }
            let mut y = vec![f32::NAN; 16 * h * w];
            let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(&p)];
            kernels.conv2d(&x, &data.view(), None, &p, Activation::None, &mut y, &mut scratch).unwrap();
            for (i, &v) in y.iter().enumerate() {
                assert!((v - K as f32).abs() < 1e-4, "{kernels:?} {h}x{w} element {i}: {v}, want {K}");
            }
        }
    }
}

#[test]
fn bf16_products_need_a_path_that_has_them() {
    let scalar = Kernels::with_isa(crate::arch::scalar::ISA, 1).unwrap();
    let err = scalar.with_bf16_products(true).unwrap_err().to_string();
    assert!(err.contains("bf16") && err.contains("scalar"), "{err}");
    assert!(Kernels::with_isa(crate::arch::scalar::ISA, 1).unwrap().with_bf16_products(false).is_ok());
}

#[test]
fn taps_that_read_only_padding_are_skipped_and_one_row_maps_split_by_filters() {
    // (in_h, in_w, k_h, k_w, stride, dilation, pads top/left/bottom/right, taps multiplied of
    // one input channel): 3×3 over a map one row high (the outer kernel rows read only padding,
    // as in text recognizers' necks) or one column wide, a single pixel, a dilated 3×3 whose
    // outer rows miss a 2-row map, a strided one, a 5×5 over 2 rows; and one with every tap live.
    let cases = [
        (1, 40, 3, 3, (1, 1), (1, 1), [1, 1, 1, 1], 3),
        (40, 1, 3, 3, (1, 1), (1, 1), [1, 1, 1, 1], 3),
        (1, 1, 3, 3, (1, 1), (1, 1), [1, 1, 1, 1], 1),
        (2, 9, 3, 3, (1, 1), (2, 1), [2, 1, 2, 1], 3),
        (1, 17, 3, 3, (2, 2), (1, 1), [1, 1, 1, 1], 3),
        (2, 9, 5, 5, (1, 1), (1, 1), [2, 2, 2, 2], 15),
        (6, 7, 3, 3, (1, 1), (1, 1), [1, 1, 1, 1], 9),
    ];
    let mut rng = Rng::new(77);
    let sets = kernel_sets();
    for (i, &(in_h, in_w, k_h, k_w, (sh, sw), (dh, dw), pads, live)) in cases.iter().enumerate() {
        let (in_c, out_c) = (5 + i, 7 + 2 * i);
        let out_h = out_extent(in_h, pads[0] + pads[2], k_h, sh, dh);
        let out_w = out_extent(in_w, pads[1] + pads[3], k_w, sw, dw);
        let p = Conv2dParams {
            batch: 1 + i % 2,
            in_c,
            in_h,
            in_w,
            out_c,
            out_h,
            out_w,
            k_h,
            k_w,
            stride_h: sh,
            stride_w: sw,
            pad_top: pads[0],
            pad_left: pads[1],
            dil_h: dh,
            dil_w: dw,
            groups: 1,
        };
        assert_eq!(Slab::new(&p).taps(&p).multiplied(), in_c * live, "{p:?}");
        for kind in [WeightKind::F32, WeightKind::all()[14], WeightKind::all()[24]] {
            check_all_paths(&mut rng, &sets, &p, kind, i % 2 == 0);
        }
    }
}

#[test]
fn many_filters_span_panels_groups_and_workers() {
    // 100 and 53 filters: several 48-filter panels with a ragged last one, worker ranges that
    // cross group boundaries, and output planes that are not a multiple of any vector width.
    let mut rng = Rng::new(8);
    let sets = kernel_sets();
    let base = Conv2dParams {
        batch: 2,
        in_c: 6,
        in_h: 9,
        in_w: 13,
        out_c: 100,
        out_h: 9,
        out_w: 13,
        k_h: 1,
        k_w: 1,
        stride_h: 1,
        stride_w: 1,
        pad_top: 0,
        pad_left: 0,
        dil_h: 1,
        dil_w: 1,
        groups: 2,
    };
    let conv3 =
        Conv2dParams { in_c: 4, out_c: 53, k_h: 3, k_w: 3, pad_top: 1, pad_left: 1, groups: 1, ..base };
    let depthwise = Conv2dParams { in_c: 7, out_c: 7, groups: 7, ..conv3 };
    let kind = WeightKind::Codebook(4, pith_format::ir::CodebookKind::PerRow, false);
    // Strided depthwise over a 13-wide row: three phases of unequal length.
    let strided = Conv2dParams { stride_h: 2, stride_w: 3, out_h: 5, out_w: 5, ..depthwise };
    // A 1x1 plane (squeeze-excite): the matrix-vector path.
    let gemv = Conv2dParams { in_c: 50, in_h: 1, in_w: 1, out_c: 37, out_h: 1, out_w: 1, groups: 1, ..base };
    for p in [base, conv3, depthwise, strided, gemv] {
        check_all_paths(&mut rng, &sets, &p, kind, true);
        check_all_paths(&mut rng, &sets, &p, WeightKind::F32, false);
    }
}

#[test]
fn phase_planes_cover_every_stride_dilation_and_border() {
    // Depthwise (direct) and 3-channel strided (phased) convs over small widths, left pads,
    // strides and dilations: odd and even pads put a single leading or trailing column in a
    // phase plane, and pad_right 1 makes the last taps read the zero border.
    let mut rng = Rng::new(11);
    let sets = kernel_sets();
    for (in_c, groups, out_c) in [(2, 2, 4), (3, 1, 5)] {
        for stride_w in 1..=3 {
            for dil_w in 1..=2 {
                for pad_left in 0..=2 {
                    for in_w in [1, 2, 5, 8] {
                        if in_w + pad_left + 1 < 2 * dil_w + 1 {
                            continue;
                        }
                        let p = Conv2dParams {
                            batch: 1,
                            in_c,
                            in_h: 5,
                            in_w,
                            out_c,
                            out_h: out_extent(5, 1, 2, 2, 1),
                            out_w: out_extent(in_w, pad_left + 1, 3, stride_w, dil_w),
                            k_h: 2,
                            k_w: 3,
                            stride_h: 2,
                            stride_w,
                            pad_top: 1,
                            pad_left,
                            dil_h: 1,
                            dil_w,
                            groups,
                        };
                        check_all_paths(&mut rng, &sets, &p, WeightKind::F32, true);
                    }
                }
            }
        }
    }
}

#[test]
fn slabs_zero_only_the_rows_outside_the_input_that_they_read() {
    // Several slabs per image: interior ones skip the zeroing, the first and last (rows of
    // top or bottom padding, as many as the filter reaches) need it; a stale row from the
    // slab before would show in the last output rows. Heights that end a slab exactly at the
    // input's last row and one past it, strides 1 and 2, filters 3 and 5 tall.
    let mut rng = Rng::new(31);
    let sets = kernel_sets();
    for (k, stride, pads, in_h) in [
        (3, 1, [1, 1], 41),
        (3, 1, [0, 2], 40),
        (5, 1, [2, 2], 37),
        (3, 2, [1, 1], 45),
        (5, 2, [2, 1], 50),
        (3, 1, [2, 0], 39),
    ] {
        // 24 channels of 64 columns: slabs of a few rows; 4 filters: no Winograd.
        let (in_c, in_w, out_c) = (24, 64, 4);
        let out_h = (in_h + pads[0] + pads[1] - k) / stride + 1;
        let p = Conv2dParams {
            batch: 1,
            in_c,
            in_h,
            in_w,
            out_c,
            out_h,
            out_w: (in_w + 2 - 3) / stride + 1,
            k_h: k,
            k_w: 3,
            stride_h: stride,
            stride_w: stride,
            pad_top: pads[0],
            pad_left: 1,
            dil_h: 1,
            dil_w: 1,
            groups: 1,
        };
        let slab = Slab::new(&p);
        assert!(slab.rows >= 1 && 3 * slab.rows <= p.out_h, "{} slab rows of {}", slab.rows, p.out_h);
        let data = random_weight(&mut rng, WeightKind::F32, out_c, p.filter_len());
        let x = rng.vec(in_c * in_h * in_w);
        let want = reference(&x, &decode_all(&data, out_c), None, &p);
        for kernels in &sets {
            let mut y = vec![f32::NAN; want.len()];
            let mut s = vec![f32::NAN; kernels.conv2d_scratch_len(&p)];
            kernels.conv2d(&x, &data.view(), None, &p, Activation::None, &mut y, &mut s).unwrap();
            assert_close(&y, &want, &format!("{p:?} on {kernels:?}"));
        }
    }
}

#[test]
fn slabs_and_accumulator_blocks_split_rows_and_activation_is_fused() {
    // 8 input channels make slabs of fewer rows than the output (a ragged last one), and 192
    // filters over 52- and 26-column phase planes make accumulator blocks of fewer rows than
    // a slab.
    let mut rng = Rng::new(3);
    for (stride, dil) in [(1, 1), (2, 2)] {
        let (in_c, in_h, in_w, out_c) = (8, 60, 50, 192);
        let out = |n: usize| (n + 2 - dil * 2 - 1) / stride + 1;
        let p = Conv2dParams {
            batch: 1,
            in_c,
            in_h,
            in_w,
            out_c,
            out_h: out(in_h),
            out_w: out(in_w),
            k_h: 3,
            k_w: 3,
            stride_h: stride,
            stride_w: stride,
            pad_top: 1,
            pad_left: 1,
            dil_h: dil,
            dil_w: dil,
            groups: 1,
        };
        let slab = Slab::new(&p);
        assert!(slab.rows < p.out_h && !p.out_h.is_multiple_of(slab.rows), "{}", slab.rows);
        assert!(slab.sub_rows(out_c) < slab.rows && slab.panel_rows == out_c);
        let data = random_weight(&mut rng, WeightKind::F32, out_c, p.filter_len());
        let x = rng.vec(in_c * in_h * in_w);
        let mut y = vec![0.0; out_c * p.out_h * p.out_w];
        let act = Activation::Clip { min: -0.5, max: 0.5 };
        let want: Vec<f32> =
            reference(&x, &decode_all(&data, out_c), None, &p).into_iter().map(|v| act.apply(v)).collect();
        let residual = rng.vec(y.len());
        let conv = reference(&x, &decode_all(&data, out_c), None, &p);
        let want_add: Vec<f32> = conv.iter().zip(&residual).map(|(c, r)| act.apply(c + r)).collect();
        for kernels in kernel_sets() {
            let mut scratch = vec![f32::NAN; kernels.conv2d_scratch_len(&p)];
            kernels.conv2d(&x, &data.view(), None, &p, act, &mut y, &mut scratch).unwrap();
            assert_close(&y, &want, &format!("{kernels:?} stride {stride}"));
            kernels.conv2d_add(&x, &data.view(), None, &residual, &p, act, &mut y, &mut scratch).unwrap();
            assert_close(&y, &want_add, &format!("{kernels:?} stride {stride}, residual then activation"));
        }
    }
}

#[test]
fn winograd_matches_the_reference_on_odd_extents_pads_and_threads() {
    let mut rng = Rng::new(31);
    let sets = kernel_sets();
    let kind = WeightKind::Codebook(4, pith_format::ir::CodebookKind::PerRow, false);
    // (in_h, in_w, pad_top, pad_left, pad_bottom, pad_right, tile side): odd and even
    // outputs, no padding, one-sided padding, and padding wider than a tile; the planes of at
    // least 48 4×4 tiles take them, with extents that leave 0-3 rows and columns of a last
    // tile, rows of fewer and more tiles than a vector window, and every left padding
    // modulo 4.
    let cases = [
        (9, 13, 1, 1, 1, 1, 2),
        (8, 10, 0, 0, 0, 0, 2),
        (7, 12, 2, 0, 1, 2, 2),
        (14, 70, 2, 2, 1, 0, 4),
        (9, 83, 0, 0, 2, 2, 4),
        (17, 48, 1, 1, 1, 1, 4),
        (11, 64, 0, 3, 0, 0, 4),
    ];
    for (in_h, in_w, pt, pl, pb, pr, side) in cases {
        let p = Conv2dParams {
            batch: 2,
            in_c: 17,
            in_h,
            in_w,
            out_c: 9,
            out_h: in_h + pt + pb - 2,
            out_w: in_w + pl + pr - 2,
            k_h: 3,
            k_w: 3,
            stride_h: 1,
            stride_w: 1,
            pad_top: pt,
            pad_left: pl,
            dil_h: 1,
            dil_w: 1,
            groups: 1,
        };
        assert!(crate::winograd::applies(&p), "{p:?}");
        assert_eq!(crate::winograd::row_align(&p), side, "{p:?}");
        // F(4×4, 3×3)'s transforms scale by up to 8 and 1/24: its error is a few 1e-6 of
        // the largest output (1.15e-4 against outputs up to 44 here), where F(2×2, 3×3)
        // meets the per-element tolerance.
        let range = if side == 4 { 1e-5 } else { 0.0 };
        check_all_paths_within(&mut rng, &sets, &p, kind, true, range);
        check_all_paths_within(&mut rng, &sets, &p, WeightKind::F32, false, range);
    }
}

#[test]
fn rejects_bad_buffers_and_params() {
    let mut rng = Rng::new(5);
    let p = random_params(&mut rng, 0);
    let data = random_weight(&mut rng, WeightKind::F32, p.out_c, p.filter_len());
    let x = vec![0.0; p.batch * p.in_c * p.in_h * p.in_w];
    let mut y = vec![0.0; p.batch * p.out_c * p.out_h * p.out_w];
    let mut s = vec![0.0; scratch_len(&p)];
    let a = ChannelActivation::Same(Activation::None);
    let k = Kernels::default();
    assert!(conv2d(&k, None, &x[1..], &data.view(), None, None, None, &p, a, &mut y, &mut s).is_err());
    // One PRelu slope too few: an error, not a panic in the epilogue.
    let slopes = vec![0.5; p.out_c - 1];
    let prelu = ChannelActivation::PRelu(&slopes);
    let err = conv2d(&k, None, &x, &data.view(), None, None, None, &p, prelu, &mut y, &mut s).unwrap_err();
    assert!(err.to_string().contains("PRelu slopes"), "{err}");
    let mut short = vec![0.0; scratch_len(&p) - 1];
    assert!(conv2d(&k, None, &x, &data.view(), None, None, None, &p, a, &mut y, &mut short).is_err());
    let short_residual = vec![0.0; y.len() - 1];
    assert!(k.conv2d_add(&x, &data.view(), None, &short_residual, &p, a, &mut y, &mut s).is_err());
    let long_residual = vec![0.0; y.len() + p.batch * p.out_h * p.out_w];
    assert!(k.conv2d_add(&x, &data.view(), None, &long_residual, &p, a, &mut y, &mut s).is_err());
    let bad = Conv2dParams { stride_h: 0, ..p };
    assert!(conv2d(&k, None, &x, &data.view(), None, None, None, &bad, a, &mut y, &mut s).is_err());
    let bad = Conv2dParams { out_c: p.out_c + 1, groups: 1, ..p };
    assert!(conv2d(&k, None, &x, &data.view(), None, None, None, &bad, a, &mut y, &mut s).is_err());
    assert!(k.conv_geometry(&Conv2dParams { stride_h: 0, ..p }).is_err());
    // A geometry prepared for another layer is refused, not trusted.
    let other = k.conv_geometry(&Conv2dParams { pad_top: p.pad_top + 1, ..p }).unwrap();
    let err =
        conv2d(&k, Some(&other), &x, &data.view(), None, None, None, &p, a, &mut y, &mut s).unwrap_err();
    assert!(err.to_string().contains("another layer"), "{err}");
}

#[test]
fn empty_outputs_succeed_under_every_kernel_set() {
    let mut rng = Rng::new(6);
    let p = Conv2dParams { batch: 2, out_c: 0, ..random_params(&mut rng, 0) };
    let p = Conv2dParams { groups: 1, in_c: p.in_c.max(1), ..p };
    let x = rng.vec(p.batch * p.in_c * p.in_h * p.in_w);
    let w: [f32; 0] = [];
    for kernels in kernel_sets() {
        let mut s = vec![0.0; kernels.conv2d_scratch_len(&p)];
        let view = TensorView::F32(&w);
        kernels.conv2d(&x, &view, None, &p, Activation::None, &mut [], &mut s).unwrap();
        let pt = Conv2dParams { in_c: 0, out_c: p.in_c, ..p };
        let mut s = vec![0.0; kernels.conv_transpose2d_scratch_len(&pt)];
        let mut y = vec![f32::NAN; p.batch * pt.out_c * p.out_h * p.out_w];
        kernels.conv_transpose2d(&[], &view, None, None, &pt, Activation::None, &mut y, &mut s).unwrap();
        assert!(y.iter().all(|&v| v == 0.0), "no inputs: bias-free output is zero");
    }
}

#[test]
fn valid_range_matches_brute_force() {
    for out_len in 0..6 {
        for stride in 1..4 {
            for off in -5isize..5 {
                for in_len in 0..7 {
                    let (lo, hi) = valid_range(out_len, stride, off, in_len);
                    for o in 0..out_len {
                        let i = o as isize * stride as isize + off;
                        let inside = i >= 0 && i < in_len as isize;
                        assert_eq!(inside, o >= lo && o < hi, "{out_len} {stride} {off} {in_len} {o}");
                    }
                }
            }
        }
    }
}
