//! The weight layers of a model and their candidate encodings (f32 and one codebook per width),
//! each with its size and its weight and output error.

use std::collections::BTreeMap;

use pith_format::ir::{self, Attr, Dim, ElemType, OpKind, TensorData};

use super::CalibError;
use crate::codebook::{self, EncodeOptions};
use crate::gram::RowGram;
use crate::work::WorkModel;
use crate::{weights, CompressError};

/// One weight tensor.
#[derive(Debug, Clone)]
pub(crate) struct LayerInfo {
    /// Value name.
    pub name: String,
    /// Shape (axis 0 = rows).
    pub shape: Vec<usize>,
    /// f32 values.
    pub w: Vec<f32>,
}

impl LayerInfo {
    /// Number of rows (at least 1).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1).max(1)
    }
}

/// One way to store a layer.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// Codebook bits; `None` = f32.
    pub bits: Option<u8>,
    /// The stored data.
    pub data: TensorData,
    /// Bytes under the allocator's size model (packed, or Huffman-estimated).
    pub size: usize,
    /// `||W - Wq|| / ||W||`.
    pub rel_error: f64,
    /// Relative output error on the calibration activations, when a Gram matrix is known.
    pub out_error: Option<f64>,
    /// Fraction of the weights pruned to an exact zero before fitting.
    pub prune: f32,
    /// Bias correction: what each row's bias gains, `(w - q)·μ` with `μ` the mean input patch
    /// of the row's group, so that the layer's output keeps its mean on the calibration data.
    /// Set for codebooks fitted to centred statistics ([`RowGram::centered`]).
    pub bias_shift: Option<Vec<f32>>,
}

impl Candidate {
    /// The error the distortion model scales with: output error when known, else weight error.
    pub fn error(&self) -> f64 {
        self.out_error.unwrap_or(self.rel_error)
    }
}

/// The weight layers of `work`, in order of first use.
pub(crate) fn layer_infos(work: &WorkModel) -> Vec<LayerInfo> {
    weights::weight_values(work)
        .into_iter()
        .map(|id| {
            let t = &work.consts[&id];
            LayerInfo {
                name: work.graph.values[id as usize].name.clone(),
                shape: t.shape.clone(),
                w: t.as_f32().expect("weight_values keeps f32 constants").to_vec(),
            }
        })
        .collect()
}

/// Where a layer's bias lives in the base model, for bias correction.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BiasSlot {
    /// The bias its one consumer adds: index into `model.constants`, and its f32 values.
    Constant {
        /// Index into `model.constants`.
        slot: usize,
        /// The bias before any correction (f32, before it is rounded to f16).
        values: Vec<f32>,
    },
    /// The consumer (a `Conv`, node index) adds no bias: a corrected layer gets one.
    Missing {
        /// Index into `model.graph.nodes`.
        node: usize,
    },
}

/// Where each layer's weight, and bias when the layer can take bias correction, lives in the
/// base model.
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    /// Index into `model.constants` of each layer's weight.
    pub weights: Vec<usize>,
    /// Each layer's bias slot, `None` when its bias cannot absorb a correction (see
    /// [`bias_slots`]).
    pub biases: Vec<Option<BiasSlot>>,
    /// Whether corrected biases are stored as f16 (as `weights::half_biases` stores the others).
    pub half: bool,
}

/// Index into `model.constants` of each layer's weight.
pub(crate) fn constant_slots(model: &ir::Model, infos: &[LayerInfo]) -> Result<Vec<usize>, CalibError> {
    let by_name = constants_by_name(model);
    infos
        .iter()
        .map(|info| {
            by_name.get(info.name.as_str()).copied().ok_or_else(|| {
                CalibError::Compress(CompressError::Graph(format!("weight '{}' vanished", info.name)))
            })
        })
        .collect()
}

/// Index into `model.constants` by value name.
fn constants_by_name(model: &ir::Model) -> BTreeMap<&str, usize> {
    model
        .constants
        .iter()
        .enumerate()
        .map(|(i, c)| (model.graph.values[c.value as usize].name.as_str(), i))
        .collect()
}

/// Each layer's bias, where a correction can go: the weight feeds exactly one node, as input
/// 1 of a `Conv` or of a `Gemm` with `transB = 1`, `transA = 0` and unit `alpha` and `beta`
/// (the layouts whose input statistics are captured), and that node's bias is a rank-1
/// constant of one value per weight row that nothing else reads, or is absent on a `Conv`.
pub(crate) fn bias_slots(model: &ir::Model, infos: &[LayerInfo], weights: &[usize]) -> Vec<Option<BiasSlot>> {
    let g = &model.graph;
    let constant_of: BTreeMap<ir::ValueId, usize> =
        model.constants.iter().enumerate().map(|(i, c)| (c.value, i)).collect();
    // Per value, the nodes reading it (once per input slot); a graph output counts as a reader.
    let mut readers: Vec<Vec<Option<usize>>> = vec![Vec::new(); g.values.len()];
    for (n, node) in g.nodes.iter().enumerate() {
        for &v in node.inputs.iter().flatten() {
            readers[v as usize].push(Some(n));
        }
    }
    for &v in &g.outputs {
        readers[v as usize].push(None);
    }
    infos
        .iter()
        .zip(weights)
        .map(|(info, &slot)| {
            let wid = model.constants[slot].value;
            let &[Some(node)] = readers[wid as usize].as_slice() else { return None };
            let n = &g.nodes[node];
            if n.inputs.get(1) != Some(&Some(wid)) {
                return None;
            }
            let int = |name: &str, default: i64| match n.attr(name) {
                Some(Attr::Int(v)) => *v,
                _ => default,
            };
            let unit = |name: &str| match n.attr(name) {
                Some(Attr::Float(v)) => *v == 1.0,
                None => true,
                _ => false,
            };
            let fits = match n.op {
                OpKind::Conv => info.shape.len() == 4,
                OpKind::Gemm => {
                    info.shape.len() == 2
                        && int("transB", 0) == 1
                        && int("transA", 0) == 0
                        && unit("alpha")
                        && unit("beta")
                }
                _ => false,
            };
            if !fits {
                return None;
            }
            match n.inputs.get(2).copied().flatten() {
                None if n.op == OpKind::Conv => Some(BiasSlot::Missing { node }),
                None => None,
                Some(b) => {
                    let &slot = constant_of.get(&b)?;
                    let rank1 = matches!(&g.values[b as usize].shape, Some(dims) if dims.len() == 1);
                    let values: Vec<f32> = match &model.constants[slot].data {
                        TensorData::F32(v) => v.clone(),
                        TensorData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
                        _ => return None,
                    };
                    (rank1 && values.len() == info.rows() && readers[b as usize].len() == 1)
                        .then_some(BiasSlot::Constant { slot, values })
                }
            }
        })
        .collect()
}

/// `base` with each layer's constant (at `slots`) replaced by its pick's data, in layer order,
/// and the pick's bias correction added to the layer's bias (a `Conv` without one gets one).
pub(crate) fn assemble<'a>(
    base: &ir::Model,
    slots: &Slots,
    picks: impl Iterator<Item = &'a Candidate>,
) -> ir::Model {
    let mut model = base.clone();
    for (l, pick) in picks.enumerate().take(slots.weights.len()) {
        place(&mut model, slots, l, pick);
    }
    model
}

/// Stores `pick` as layer `l` of `model` (a copy of the base model), with its bias correction.
pub(crate) fn place(model: &mut ir::Model, slots: &Slots, l: usize, pick: &Candidate) {
    let slot = slots.weights[l];
    model.constants[slot].data = pick.data.clone();
    if let (Some(bias), Some(shift)) = (&slots.biases[l], &pick.bias_shift) {
        set_bias(model, slot, bias, shift, slots.half);
    }
}

/// Stores `bias + shift` as the bias of the layer whose weight is constant `weight`.
fn set_bias(model: &mut ir::Model, weight: usize, bias: &BiasSlot, shift: &[f32], half: bool) {
    let values: Vec<f32> = match bias {
        BiasSlot::Constant { values, .. } => values.iter().zip(shift).map(|(b, d)| b + d).collect(),
        BiasSlot::Missing { .. } => shift.to_vec(),
    };
    let halves: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
    let data = if half && halves.iter().all(|v| v.is_finite()) {
        TensorData::F16(halves)
    } else {
        TensorData::F32(values)
    };
    match *bias {
        BiasSlot::Constant { slot, .. } => model.constants[slot].data = data,
        BiasSlot::Missing { node } => {
            let weight_name = &model.graph.values[model.constants[weight].value as usize].name;
            let id = model.graph.values.len() as ir::ValueId;
            model.graph.values.push(ir::Value {
                name: format!("{weight_name}.corrected_bias"),
                elem: ElemType::F32,
                shape: Some(vec![Dim::Fixed(shift.len() as u64)]),
            });
            model.constants.push(ir::Constant { value: id, data });
            let inputs = &mut model.graph.nodes[node].inputs;
            inputs.resize(3, None);
            inputs[2] = Some(id);
        }
    }
}

/// The candidates of one layer: f32 first, then a codebook per width in `widths` (see
/// [`candidate`]).
#[cfg(test)]
pub(crate) fn candidates(
    info: &LayerInfo,
    widths: &[u8],
    gram: Option<&RowGram>,
    data_aware: bool,
    entropy: bool,
) -> Vec<Candidate> {
    let mut out = lossless(info, gram, false);
    out.extend(widths.iter().filter_map(|&b| candidate(info, b, 0.0, gram, data_aware, entropy)));
    out
}

/// The usable Gram matrix of a layer (accumulated and fitting its shape).
fn usable<'a>(info: &LayerInfo, gram: Option<&'a RowGram>) -> Option<&'a RowGram> {
    gram.filter(|g| g.count > 0 && g.fits(info.rows(), info.w.len() / info.rows()))
}

/// The f32 candidate, and with `f16` the half-precision one when every value fits in f16.
pub(crate) fn lossless(info: &LayerInfo, gram: Option<&RowGram>, f16: bool) -> Vec<Candidate> {
    let (w, rows) = (&info.w, info.rows());
    let gram = usable(info, gram);
    let mut out = vec![Candidate {
        bits: None,
        data: TensorData::F32(w.clone()),
        size: w.len() * 4,
        rel_error: 0.0,
        out_error: gram.map(|_| 0.0),
        prune: 0.0,
        bias_shift: None,
    }];
    let h: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
    if f16 && info.shape.len() >= 2 && h.iter().all(|v| v.is_finite()) {
        let data = TensorData::F16(h);
        out.push(Candidate {
            bits: None,
            size: w.len() * 2,
            rel_error: codebook::relative_error(w, rows, &data),
            out_error: gram.and_then(|g| codebook::output_error(w, rows, &data, g)),
            prune: 0.0,
            bias_shift: None,
            data,
        });
    }
    out
}

/// The `bits`-bit codebook of a layer, with the `prune` fraction of its weights (least important
/// first) set to an exact zero, when it is allowed ([`weights::codebook_allowed`]) and smaller
/// than f32: fitted to the Gram matrix when `data_aware` and one is usable, else plain
/// k-means. Its size is the packed size, or with `entropy` the Huffman-coded estimate.
pub(crate) fn candidate(
    info: &LayerInfo,
    bits: u8,
    prune: f32,
    gram: Option<&RowGram>,
    data_aware: bool,
    entropy: bool,
) -> Option<Candidate> {
    let (w, rows) = (&info.w, info.rows());
    let gram = usable(info, gram);
    if !weights::codebook_allowed(w, &info.shape, bits) {
        return None;
    }
    let e = match gram {
        Some(g) if data_aware => {
            let opts = EncodeOptions { prune, gram: Some(g), weighted: true, refit: true };
            codebook::encode_with(w, rows, bits, &opts)
        }
        _ if prune > 0.0 => {
            let opts = EncodeOptions { prune, gram: None, weighted: false, refit: false };
            codebook::encode_with(w, rows, bits, &opts)
        }
        _ => codebook::encode(w, rows, bits),
    };
    if e.bytes >= w.len() * 4 {
        return None;
    }
    let size = match (&e.data, entropy) {
        (TensorData::Codebook(cb), true) => {
            e.bytes - cb.indices.len() + codebook::index_entropy_bytes(&e.data)
        }
        _ => e.bytes,
    };
    let out_error = e.out_error.or_else(|| gram.and_then(|g| codebook::output_error(w, rows, &e.data, g)));
    let bias_shift = gram.filter(|g| g.centered && data_aware).map(|g| bias_shift(w, rows, &e.data, g));
    Some(Candidate {
        bits: Some(bits),
        data: e.data,
        size,
        rel_error: e.rel_error,
        out_error,
        prune,
        bias_shift,
    })
}

/// Bias correction of `data`, the stored form of `w` (`rows` rows): row `r` gains `(w_r - q_r)·μ`,
/// `μ` the mean input patch of its group in `gram`, so its output's mean on the calibration data
/// is the original's.
fn bias_shift(w: &[f32], rows: usize, data: &TensorData, gram: &RowGram) -> Vec<f32> {
    let row_len = w.len() / rows;
    let rows_per_group = rows / gram.groups;
    let means: Vec<Vec<f64>> = (0..gram.groups).map(|g| gram.mean(g)).collect();
    let mut q = vec![0.0f32; row_len];
    (0..rows)
        .map(|r| {
            data.view().decode_row(rows, r, &mut q);
            let mean = &means[r / rows_per_group];
            let d: f64 = w[r * row_len..(r + 1) * row_len]
                .iter()
                .zip(&q)
                .zip(mean)
                .map(|((&a, &b), m)| (a as f64 - b as f64) * m)
                .sum();
            d as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(rows: usize, row_len: usize) -> LayerInfo {
        let w = (0..rows * row_len).map(|i| ((i * 7919 % 997) as f32 / 498.0 - 1.0) * 0.3).collect();
        LayerInfo { name: "w".into(), shape: vec![rows, row_len], w }
    }

    #[test]
    fn candidates_start_with_f32_and_shrink_with_width() {
        let layer = info(16, 64);
        let c = candidates(&layer, &[2, 4, 8], None, true, false);
        assert_eq!(c[0].bits, None);
        assert_eq!(c[0].size, 16 * 64 * 4);
        let bits: Vec<_> = c.iter().map(|c| c.bits).collect();
        assert_eq!(bits, [None, Some(2), Some(4), Some(8)]);
        assert!(c[1].size < c[2].size && c[2].size < c[3].size);
        assert!(c[1].rel_error > c[2].rel_error && c[2].rel_error > c[3].rel_error);
        assert!(c.iter().all(|c| c.out_error.is_none()));
    }

    #[test]
    fn output_error_with_identity_gram_is_the_weight_error() {
        let layer = info(8, 16);
        let mut g = RowGram::new(1, 16);
        for i in 0..16 {
            g.sums[i * 16 + i] = 1.0;
        }
        g.count = 1;
        for data_aware in [false, true] {
            let c = candidates(&layer, &[3], Some(&g), data_aware, false);
            let (out, rel) = (c[1].out_error.unwrap(), c[1].rel_error);
            assert!((out - rel).abs() < 1e-6, "{out} vs {rel}");
            assert_eq!(c[0].out_error, Some(0.0));
        }
    }

    #[test]
    fn entropy_size_model_is_at_most_the_packed_size() {
        let layer = info(16, 64);
        let packed = candidates(&layer, &[4], None, false, false);
        let coded = candidates(&layer, &[4], None, false, true);
        assert!(coded[1].size <= packed[1].size, "{} vs {}", coded[1].size, packed[1].size);
        assert!(coded[1].size * 2 > packed[1].size);
    }

    /// `n` input rows of `k` values with per-position offsets (post-activation inputs have a
    /// mean far from zero).
    fn offset_rows(n: usize, k: usize) -> Vec<f32> {
        (0..n * k)
            .map(|i| ((i * 2654435761 % 1009) as f32 / 504.0 - 1.0) + 1.5 + (i % k) as f32 * 0.1)
            .collect()
    }

    /// `Σ_s (w_r·x_s - (q_r·x_s + shift_r))²` over every row and sample, and the largest gap
    /// between the two outputs' means over the samples.
    fn output_gap(layer: &LayerInfo, c: &Candidate, x: &[f32]) -> (f64, f64) {
        let (rows, k) = (layer.rows(), layer.w.len() / layer.rows());
        let n = x.len() / k;
        let mut q = vec![0.0f32; k];
        let (mut sq, mut worst_mean) = (0.0f64, 0.0f64);
        for r in 0..rows {
            c.data.view().decode_row(rows, r, &mut q);
            let shift = c.bias_shift.as_ref().map_or(0.0, |s| s[r] as f64);
            let mut mean = 0.0f64;
            for s in 0..n {
                let xs = &x[s * k..(s + 1) * k];
                let want: f64 =
                    layer.w[r * k..(r + 1) * k].iter().zip(xs).map(|(&a, &b)| a as f64 * b as f64).sum();
                let got: f64 = q.iter().zip(xs).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() + shift;
                sq += (want - got).powi(2);
                mean += (want - got) / n as f64;
            }
            worst_mean = worst_mean.max(mean.abs());
        }
        (sq, worst_mean)
    }

    #[test]
    fn bias_correction_keeps_output_means_and_lowers_the_output_error() {
        let layer = info(12, 48);
        let x = offset_rows(200, 48);
        let mut g = RowGram::new(1, 48);
        g.add_rows(&x, 200);
        let centred = g.centered(0.0);
        for bits in [2, 3, 4] {
            let plain = candidate(&layer, bits, 0.0, Some(&g), true, false).unwrap();
            let corrected = candidate(&layer, bits, 0.0, Some(&centred), true, false).unwrap();
            assert!(plain.bias_shift.is_none());
            let (plain_err, plain_mean) = output_gap(&layer, &plain, &x);
            let (err, mean) = output_gap(&layer, &corrected, &x);
            assert!(mean < 1e-4, "{bits} bits: output mean moved by {mean} (uncorrected: {plain_mean})");
            assert!(plain_mean > 1e-3, "{bits} bits: the uncorrected mean moved only {plain_mean}");
            assert!(err < 0.9 * plain_err, "{bits} bits: error {err} vs {plain_err} without correction");
        }
        // Without data-aware fitting there is no correction.
        assert!(candidate(&layer, 3, 0.0, Some(&centred), false, false).unwrap().bias_shift.is_none());
    }

    /// A model `x -> Conv(w0, b0) -> Conv(w1) -> y` on `[1, 4, 2, 2]`, and its layers.
    fn two_convs() -> (ir::Model, Vec<LayerInfo>) {
        use crate::passes::test_util::{act, constant, input, push};
        let mut work = WorkModel::default();
        let x = input(&mut work, "x");
        let w0 = constant(&mut work, "w0", &[6, 4, 1, 1], (0..24).map(|i| i as f32 * 0.1 - 1.0).collect());
        let b0 = constant(&mut work, "b0", &[6], vec![0.5; 6]);
        let w1 = constant(&mut work, "w1", &[3, 6, 1, 1], (0..18).map(|i| 0.3 - i as f32 * 0.05).collect());
        let (h, y) = (act(&mut work, "h"), act(&mut work, "y"));
        push(&mut work, "c0", OpKind::Conv, &[Some(x), Some(w0), Some(b0)], &[h]);
        push(&mut work, "c1", OpKind::Conv, &[Some(h), Some(w1)], &[y]);
        work.graph.outputs.push(y);
        work.graph.values[x as usize].shape =
            Some(vec![Dim::Fixed(1), Dim::Fixed(4), Dim::Fixed(2), Dim::Fixed(2)]);
        let infos = layer_infos(&work);
        (crate::finish(work, BTreeMap::new()), infos)
    }

    fn run(model: &ir::Model, x: &[f32]) -> Vec<f32> {
        let mut session = super::super::fidelity::Runner::default().session(model).unwrap();
        let out =
            session.run(&[("x", pith_runtime::Tensor::from_f32(vec![1, 4, 2, 2], x.to_vec()))]).unwrap();
        out[0].1.as_f32().unwrap().to_vec()
    }

    #[test]
    fn assembled_models_carry_the_shift_in_existing_and_added_biases() {
        let (model, infos) = two_convs();
        let weights = constant_slots(&model, &infos).unwrap();
        let biases = bias_slots(&model, &infos, &weights);
        assert_eq!(
            biases[0],
            Some(BiasSlot::Constant { slot: biases_slot(&model, "b0"), values: vec![0.5; 6] })
        );
        assert!(matches!(biases[1], Some(BiasSlot::Missing { .. })), "{:?}", biases[1]);
        let keep = |l: usize, shift: Vec<f32>| Candidate {
            bits: None,
            data: TensorData::F32(infos[l].w.clone()),
            size: 0,
            rel_error: 0.0,
            out_error: None,
            prune: 0.0,
            bias_shift: Some(shift),
        };
        let x: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
        let before = run(&model, &x);
        // The first conv's bias moves by 0 (unchanged output); the second gets a bias of 1, 2, 3.
        let picks = [keep(0, vec![0.0; 6]), keep(1, vec![1.0, 2.0, 3.0])];
        for half in [false, true] {
            let slots = Slots { weights: weights.clone(), biases: biases.clone(), half };
            let after = assemble(&model, &slots, picks.iter());
            assert_eq!(after.constants.len(), model.constants.len() + 1);
            let got = run(&after, &x);
            for (i, (a, b)) in got.iter().zip(&before).enumerate() {
                let want = b + [1.0, 2.0, 3.0][i / 4];
                assert!((a - want).abs() < 1e-3, "half {half}: element {i}: {a} vs {want}");
            }
            let added = &after.constants.last().unwrap().data;
            assert_eq!(matches!(added, TensorData::F16(_)), half);
        }
    }

    fn biases_slot(model: &ir::Model, name: &str) -> usize {
        constants_by_name(model)[name]
    }

    #[test]
    fn shared_weights_and_scaled_gemms_take_no_correction() {
        let (mut model, infos) = two_convs();
        let weights = constant_slots(&model, &infos).unwrap();
        // The first conv's bias also read by a second node: no correction for that layer.
        let b0 = model.constants[biases_slot(&model, "b0")].value;
        let mut extra = model.graph.nodes[1].clone();
        extra.inputs = vec![Some(b0), Some(b0)];
        extra.op = OpKind::Add;
        model.graph.nodes.push(extra);
        let biases = bias_slots(&model, &infos, &weights);
        assert_eq!(biases[0], None);
        assert!(biases[1].is_some());
        // The second conv turned into a Gemm with a bias: corrected at beta = 1, not at beta = 2.
        let id = model.graph.values.len() as ir::ValueId;
        model.graph.values.push(ir::Value {
            name: "b1".into(),
            elem: ElemType::F32,
            shape: Some(vec![Dim::Fixed(3)]),
        });
        model.constants.push(ir::Constant { value: id, data: TensorData::F32(vec![0.25; 3]) });
        let gemm = [infos[0].clone(), LayerInfo { shape: vec![3, 6], ..infos[1].clone() }];
        let node = &mut model.graph.nodes[1];
        node.op = OpKind::Gemm;
        node.inputs.push(Some(id));
        for (beta, corrected) in [(1.0, true), (2.0, false)] {
            model.graph.nodes[1].attrs =
                vec![("transB".into(), Attr::Int(1)), ("beta".into(), Attr::Float(beta))];
            let biases = bias_slots(&model, &gemm, &weights);
            assert_eq!(biases[1].is_some(), corrected, "beta {beta}: {:?}", biases[1]);
        }
    }
}
