//! Chooses the storage encoding of each weight tensor.
//!
//! Weights are the constant input 1 of `Conv`, `ConvTranspose`, `Gemm` (B) and `MatMul`. Every
//! other constant (biases, shapes, BN parameters, ...) stays f32/i64. A weight stays f32 when:
//! * it has fewer than 2 dimensions (codebooks are row-based);
//! * it is a batched (rank > 2) `MatMul` right operand: the runtime multiplies those as plain f32
//!   matrices, so a codebook would be widened in full on every inference;
//! * it holds a non-finite value;
//! * for F16, a value overflows f16;
//! * for codebooks, it has fewer than `max(64, 4 * 2^bits)` elements (the codebook would cost
//!   about as much as the weights), or the chosen codebook is not smaller than f32.

use std::collections::BTreeMap;

use half::f16;
use pith_format::ir::{self, OpKind, TensorData, ValueId};

use crate::codebook::{self, data_bytes, relative_error};
use crate::work::WorkModel;
use crate::{LayerReport, WeightFormat};

/// Constant weight values in order of first use by a weight-taking node.
pub(crate) fn weight_values(work: &WorkModel) -> Vec<ValueId> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for node in &work.graph.nodes {
        if !matches!(node.op, OpKind::Conv | OpKind::ConvTranspose | OpKind::Gemm | OpKind::MatMul) {
            continue;
        }
        if let Some(Some(w)) = node.inputs.get(1) {
            let Some(t) = work.consts.get(w) else { continue };
            let batched_matmul = node.op == OpKind::MatMul && t.shape.len() > 2;
            if t.as_f32().is_some() && !batched_matmul && seen.insert(*w) {
                out.push(*w);
            }
        }
    }
    out
}

/// Encodes every weight per `format`; returns the encoded data by value and one report row each.
pub(crate) fn encode_weights(
    work: &WorkModel,
    format: &WeightFormat,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> (BTreeMap<ValueId, TensorData>, Vec<LayerReport>) {
    let ids = weight_values(work);
    let mut encoded = BTreeMap::new();
    let mut layers = Vec::with_capacity(ids.len());
    for (done, &id) in ids.iter().enumerate() {
        let name = &work.graph.values[id as usize].name;
        progress(done, ids.len(), name);
        let t = &work.consts[&id];
        let w = t.as_f32().expect("weight_values keeps f32 constants");
        let rows = t.shape.first().copied().unwrap_or(1);
        let (data, rel_error) = encode_one(w, &t.shape, format);
        let data = data.unwrap_or_else(|| TensorData::F32(w.to_vec()));
        let rel_error = rel_error.unwrap_or_else(|| relative_error(w, rows.max(1), &data));
        layers.push(layer_report(name, &t.shape, w, &data, rel_error));
        encoded.insert(id, data);
    }
    progress(ids.len(), ids.len(), "");
    (encoded, layers)
}

/// The report row of weight `name` (`shape`, f32 values `w`) stored as `data`; the
/// calibration-only fields (`out_error`, `predicted_distortion`) are left `None`.
pub(crate) fn layer_report(
    name: &str,
    shape: &[usize],
    w: &[f32],
    data: &TensorData,
    rel_error: f64,
) -> LayerReport {
    let zeros = zeros(data, shape.first().copied().unwrap_or(1).max(1), w.len());
    LayerReport {
        name: name.to_string(),
        shape: shape.to_vec(),
        encoding: data.view().encoding_name(),
        bytes: data_bytes(data),
        f32_bytes: w.len() * 4,
        rel_error: rel_error as f32,
        bits: match data {
            TensorData::Codebook(c) => Some(c.bits),
            _ => None,
        },
        sparsity: zeros.sparsity,
        zero_blocks: zeros.blocks,
        out_error: None,
        bias_corrected: false,
        predicted_distortion: None,
    }
}

/// Weights per block of [`LayerReport::zero_blocks`]: one AVX2 vector of f32, the least a SIMD
/// kernel could skip.
pub const ZERO_BLOCK: usize = 8;

/// How a stored weight's exact zeros lie.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Zeros {
    /// Fraction of the values that decode to exactly zero.
    pub sparsity: f32,
    /// Fraction of the aligned [`ZERO_BLOCK`]-value blocks of the rows that are all zero.
    pub blocks: f32,
}

/// [`Zeros`] of the `len` stored values of `data`, in `rows` rows.
pub(crate) fn zeros(data: &TensorData, rows: usize, len: usize) -> Zeros {
    if len == 0 || rows == 0 {
        return Zeros { sparsity: 0.0, blocks: 0.0 };
    }
    let row_len = len / rows;
    let mut buf = vec![0.0f32; row_len];
    let (mut zeros, mut zero_blocks) = (0, 0);
    for r in 0..rows {
        let row: &[f32] = match data {
            TensorData::F32(v) => &v[r * row_len..][..row_len],
            TensorData::F16(v) => {
                for (b, x) in buf.iter_mut().zip(&v[r * row_len..][..row_len]) {
                    *b = x.to_f32();
                }
                &buf
            }
            TensorData::I64(v) => {
                for (b, &x) in buf.iter_mut().zip(&v[r * row_len..][..row_len]) {
                    *b = if x == 0 { 0.0 } else { 1.0 };
                }
                &buf
            }
            TensorData::Codebook(_) => {
                data.view().decode_row(rows, r, &mut buf);
                &buf
            }
        };
        zeros += row.iter().filter(|x| **x == 0.0).count();
        zero_blocks += row.chunks_exact(ZERO_BLOCK).filter(|b| b.iter().all(|x| *x == 0.0)).count();
    }
    let blocks = rows * (row_len / ZERO_BLOCK);
    Zeros {
        sparsity: zeros as f32 / len as f32,
        blocks: if blocks == 0 { 0.0 } else { zero_blocks as f32 / blocks as f32 },
    }
}

/// True when `w` (shape `shape`) may be stored as a `bits`-bit codebook: at least 2 dimensions,
/// finite values, and enough elements that the codebook does not cost about as much as the weights.
pub(crate) fn codebook_allowed(w: &[f32], shape: &[usize], bits: u8) -> bool {
    shape.len() >= 2 && shape[0] > 0 && w.len() >= 64.max(4usize << bits) && w.iter().all(|v| v.is_finite())
}

/// Stores the biases (input 2 of `Conv`, `ConvTranspose`, `Gemm`) of `model` as f16 where every
/// value is finite in f16; returns how many were converted. A bias is a few hundred values per
/// layer and f16's relative rounding (2^-11) is far below any codebook's error, so the
/// calibrated pipeline applies this before it verifies candidates.
pub(crate) fn half_biases(model: &mut ir::Model) -> usize {
    let biases: std::collections::BTreeSet<ValueId> = model
        .graph
        .nodes
        .iter()
        .filter(|n| matches!(n.op, OpKind::Conv | OpKind::ConvTranspose | OpKind::Gemm))
        .filter_map(|n| n.inputs.get(2).copied().flatten())
        .collect();
    let mut converted = 0;
    for c in model.constants.iter_mut().filter(|c| biases.contains(&c.value)) {
        let TensorData::F32(v) = &c.data else { continue };
        let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        if h.iter().all(|x| x.is_finite()) {
            c.data = TensorData::F16(h);
            converted += 1;
        }
    }
    converted
}

/// The encoding of one weight (`None` = keep f32) and its error when already measured.
fn encode_one(w: &[f32], shape: &[usize], format: &WeightFormat) -> (Option<TensorData>, Option<f64>) {
    if shape.len() < 2 || w.iter().any(|v| !v.is_finite()) {
        return (None, Some(0.0));
    }
    match *format {
        WeightFormat::F32 => (None, Some(0.0)),
        WeightFormat::F16 => {
            let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            if h.iter().any(|v| !v.is_finite()) {
                log::warn!("weight overflows f16; kept as f32");
                return (None, Some(0.0));
            }
            (Some(TensorData::F16(h)), None)
        }
        WeightFormat::Codebook { bits } => {
            let bits = bits.clamp(1, 8);
            if !codebook_allowed(w, shape, bits) {
                return (None, Some(0.0));
            }
            let e = codebook::encode(w, shape[0], bits);
            if e.bytes >= w.len() * 4 {
                return (None, Some(0.0));
            }
            (Some(e.data), Some(e.rel_error))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_util::*;

    #[test]
    fn encodes_conv_weight_but_not_bias_or_small_weights() {
        let mut w = WorkModel::default();
        let x = input(&mut w, "x");
        let big: Vec<f32> = (0..16 * 8 * 9).map(|i| (i as f32 * 0.37).sin()).collect();
        let wv = constant(&mut w, "w", &[16, 8, 3, 3], big);
        let bv = constant(&mut w, "b", &[16], vec![0.5; 16]);
        let small = constant(&mut w, "w_small", &[2, 2, 1, 1], vec![1.0, 2.0, 3.0, 4.0]);
        let (y, z) = (act(&mut w, "y"), act(&mut w, "z"));
        push(&mut w, "conv", OpKind::Conv, &[Some(x), Some(wv), Some(bv)], &[y]);
        push(&mut w, "conv2", OpKind::Conv, &[Some(y), Some(small)], &[z]);
        let mut calls = Vec::new();
        let (enc, layers) = encode_weights(&w, &WeightFormat::Codebook { bits: 4 }, &mut |d, t, n: &str| {
            calls.push((d, t, n.to_string()))
        });
        assert_eq!(enc.len(), 2);
        assert!(!enc.contains_key(&bv));
        assert!(matches!(enc[&wv], TensorData::Codebook(_)));
        assert!(matches!(enc[&small], TensorData::F32(_)));
        assert_eq!(layers.len(), 2);
        assert!(layers[0].encoding.starts_with("cb4/"), "{}", layers[0].encoding);
        assert!(layers[0].bytes < layers[0].f32_bytes / 4);
        assert!(layers[0].rel_error > 0.0 && layers[0].rel_error < 0.2);
        assert_eq!(calls.first(), Some(&(0, 2, "w".to_string())));
        assert_eq!(calls.last().map(|c| c.0), Some(2));
    }

    #[test]
    fn zeros_count_values_and_whole_aligned_blocks() {
        // Two rows of 20: row 0 has its first block of 8 zero and 4 more zeros in the next,
        // row 1 one zero per block; the last 4 values of a row are no whole block.
        let mut v = vec![1.0f32; 40];
        v[..12].fill(0.0);
        for i in [20, 29, 38] {
            v[i] = 0.0;
        }
        let f16s: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
        for data in [TensorData::F32(v.clone()), TensorData::F16(f16s)] {
            assert_eq!(zeros(&data, 2, 40), Zeros { sparsity: 15.0 / 40.0, blocks: 1.0 / 4.0 });
        }
        // Pruned codebook weights decode to exact zeros; unstructured, they rarely fill a block.
        let w: Vec<f32> = (0..64 * 64).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1).collect();
        let opts = crate::codebook::EncodeOptions { prune: 0.3, gram: None, weighted: false, refit: false };
        let enc = crate::codebook::encode_with(&w, 64, 4, &opts);
        let z = zeros(&enc.data, 64, w.len());
        assert!((z.sparsity - 0.3).abs() < 0.01, "{z:?}");
        assert!(z.blocks < 0.05, "{z:?}");
        assert_eq!(zeros(&TensorData::F32(vec![]), 1, 0), Zeros { sparsity: 0.0, blocks: 0.0 });
    }

    #[test]
    fn batched_matmul_weights_stay_f32() {
        let mut w = WorkModel::default();
        let x = input(&mut w, "x");
        let data: Vec<f32> = (0..2 * 32 * 32).map(|i| (i as f32 * 0.11).cos()).collect();
        let batched = constant(&mut w, "b3", &[2, 32, 32], data[..].to_vec());
        let plain = constant(&mut w, "b2", &[64, 32], data);
        let (y, z) = (act(&mut w, "y"), act(&mut w, "z"));
        push(&mut w, "mm3", OpKind::MatMul, &[Some(x), Some(batched)], &[y]);
        push(&mut w, "mm2", OpKind::MatMul, &[Some(x), Some(plain)], &[z]);
        let (enc, _) = encode_weights(&w, &WeightFormat::Codebook { bits: 4 }, &mut |_, _, _| {});
        assert!(!enc.contains_key(&batched), "a rank-3 MatMul operand must stay f32");
        assert!(matches!(enc[&plain], TensorData::Codebook(_)));
    }
}
