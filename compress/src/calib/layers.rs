//! The weight layers of a model and their candidate encodings (f32 and one codebook per width),
//! each with its size and its weight and output error.

use std::collections::BTreeMap;

use pith_format::ir::{self, TensorData};

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

/// Index into `model.constants` of each layer's weight.
pub(crate) fn constant_slots(model: &ir::Model, infos: &[LayerInfo]) -> Result<Vec<usize>, CalibError> {
    let by_name: BTreeMap<&str, usize> = model
        .constants
        .iter()
        .enumerate()
        .map(|(i, c)| (model.graph.values[c.value as usize].name.as_str(), i))
        .collect();
    infos
        .iter()
        .map(|info| {
            by_name.get(info.name.as_str()).copied().ok_or_else(|| {
                CalibError::Compress(CompressError::Graph(format!("weight '{}' vanished", info.name)))
            })
        })
        .collect()
}

/// `base` with each layer's constant (at `slots`) replaced by `datas`, in layer order.
pub(crate) fn assemble<'a>(
    base: &ir::Model,
    slots: &[usize],
    datas: impl Iterator<Item = &'a TensorData>,
) -> ir::Model {
    let mut model = base.clone();
    for (&slot, data) in slots.iter().zip(datas) {
        model.constants[slot].data = data.clone();
    }
    model
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
    Some(Candidate { bits: Some(bits), data: e.data, size, rel_error: e.rel_error, out_error, prune })
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
}
