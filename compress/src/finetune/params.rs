//! The trainable parameters of a compressed model and their Adam state.
//!
//! Trainable: the weights and biases of `Conv`, `ConvTranspose`, `Gemm` and of a 2-D `MatMul`
//! right operand. A codebook weight trains its centroids (and per-row scales) while its
//! indices stay fixed; an exact-zero centroid is a pruning entry and stays zero. An f32 or f16
//! tensor trains its values. Values go back in their stored precision (f16 rounding included).
//!
//! With re-assignment (quantisation-aware training with a straight-through estimator), a
//! codebook weight also keeps a latent f32 value, started at its decoded value: each step the
//! weight's gradient moves the latent value (Adam, [`LATENT_LR`] times the centroids' step)
//! and the weight's index moves to the centroid nearest the latent value (scaled by the row's
//! scale). Pruned weights (those on an exact-zero entry) keep their latent value and index, and
//! no other weight moves onto a zero entry, so the pruning mask is unchanged.

use half::f16;
use pith_format::ir::{self, Centroids, CodebookKind, CodebookTensor, OpKind, TensorData, ValueId};
use pith_format::CodebookView;
use pith_runtime::Tensor;

use super::FinetuneError;
use crate::work::concrete_shape;

/// How one trainable tensor is parameterised.
#[derive(Debug, Clone)]
enum Form {
    /// Codebook weight: `w[e] = scale(row) * centroids[base(row) + idx[e]]`.
    Codebook {
        kind: CodebookKind,
        row_len: usize,
        entries: usize,
        /// One unpacked index per element.
        idx: Vec<u8>,
        centroids: Adam,
        /// Row scales (SharedScaled only; empty otherwise).
        scales: Adam,
        /// Whether the stored centroids are f16.
        half: bool,
        /// Latent f32 weights, one per element, with re-assignment (pruned ones frozen).
        latent: Option<Box<Adam>>,
    },
    /// Plain tensor, stored as f16 when `half`.
    Dense { values: Adam, half: bool },
}

/// One parameter vector with its Adam moments.
#[derive(Debug, Clone)]
struct Adam {
    p: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    /// Entries that never move (pruning's zero entries).
    frozen: Vec<bool>,
    /// Absolute step size at `rel_lr == 1`: the RMS of the initial non-zero values.
    scale: f32,
    t: i32,
}

impl Adam {
    fn new(p: Vec<f32>, freeze_zeros: bool) -> Adam {
        let nz: Vec<f32> = p.iter().copied().filter(|v| *v != 0.0).collect();
        let scale = if nz.is_empty() {
            0.0
        } else {
            (nz.iter().map(|v| v * v).sum::<f32>() / nz.len() as f32).sqrt()
        };
        let frozen = p.iter().map(|&v| freeze_zeros && v == 0.0).collect();
        Adam { m: vec![0.0; p.len()], v: vec![0.0; p.len()], frozen, scale, t: 0, p }
    }

    /// One Adam step along gradient `g` with step size `rel_lr * scale`.
    fn step(&mut self, g: &[f32], rel_lr: f32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        self.t += 1;
        let lr = rel_lr * self.scale;
        let (c1, c2) = (1.0 - B1.powi(self.t), 1.0 - B2.powi(self.t));
        let moments = self.m.iter_mut().zip(self.v.iter_mut());
        for (((p, (m, v)), &frozen), &g) in self.p.iter_mut().zip(moments).zip(&self.frozen).zip(g) {
            if frozen || !g.is_finite() {
                continue;
            }
            *m = B1 * *m + (1.0 - B1) * g;
            *v = B2 * *v + (1.0 - B2) * g * g;
            let vhat = (*v / c2).sqrt();
            if vhat > 0.0 {
                *p -= lr * (*m / c1) / vhat;
            }
        }
    }
}

/// One trainable constant.
#[derive(Debug, Clone)]
struct Slot {
    value: ValueId,
    shape: Vec<usize>,
    form: Form,
}

/// Every trainable constant of a model, in a fixed order.
#[derive(Debug, Clone)]
pub(super) struct Params {
    slots: Vec<Slot>,
}

impl Params {
    /// The trainable constants of `model`; with `reassign`, codebook weights also keep latent
    /// values and may change centroid.
    pub fn new(model: &ir::Model, reassign: bool) -> Result<Params, FinetuneError> {
        let mut wanted: Vec<ValueId> = Vec::new();
        for node in &model.graph.nodes {
            let slots: &[usize] = match node.op {
                OpKind::Conv | OpKind::ConvTranspose | OpKind::Gemm => &[1, 2],
                OpKind::MatMul => &[1],
                _ => continue,
            };
            for &s in slots {
                if let Some(Some(v)) = node.inputs.get(s) {
                    if !wanted.contains(v) {
                        wanted.push(*v);
                    }
                }
            }
        }
        let mut slots = Vec::new();
        for value in wanted {
            let Some(c) = model.constants.iter().find(|c| c.value == value) else { continue };
            let shape = model.graph.values[value as usize]
                .shape
                .as_deref()
                .and_then(concrete_shape)
                .ok_or_else(|| FinetuneError::Model(format!("constant {value} has no fixed shape")))?;
            let form = match &c.data {
                TensorData::F32(v) => Form::Dense { values: Adam::new(v.clone(), false), half: false },
                TensorData::F16(v) => Form::Dense {
                    values: Adam::new(v.iter().map(|x| x.to_f32()).collect(), false),
                    half: true,
                },
                TensorData::Codebook(cb) => codebook_form(cb, reassign),
                TensorData::I64(_) => continue,
            };
            // A batched MatMul operand (rank > 2) is not a trainable weight.
            if shape.len() > 2
                && model.graph.nodes.iter().any(|n| n.op == OpKind::MatMul && n.inputs[1] == Some(value))
            {
                continue;
            }
            slots.push(Slot { value, shape, form });
        }
        Ok(Params { slots })
    }

    /// The value ids of the trainable constants, in slot order.
    pub fn values(&self) -> Vec<ValueId> {
        self.slots.iter().map(|s| s.value).collect()
    }

    /// Number of scalar parameters that can move.
    pub fn count(&self) -> usize {
        self.slots
            .iter()
            .map(|s| match &s.form {
                Form::Codebook { centroids, scales, latent, .. } => {
                    centroids.frozen.iter().filter(|f| !**f).count()
                        + scales.p.len()
                        + latent.as_ref().map_or(0, |l| l.frozen.iter().filter(|f| !**f).count())
                }
                Form::Dense { values, .. } => values.p.len(),
            })
            .sum()
    }

    /// Every trainable tensor decoded to f32, in slot order.
    pub fn dense(&self) -> Vec<Tensor> {
        self.slots.iter().map(|s| Tensor::from_f32(s.shape.clone(), decode(&s.form, s.shape[0]))).collect()
    }

    /// Number of codebook weights whose index differs from `other`'s (the same model's
    /// parameters at another point).
    #[cfg(test)]
    pub fn moved_indices(&self, other: &Params) -> usize {
        let idx = |f: &Form| match f {
            Form::Codebook { idx, .. } => idx.clone(),
            Form::Dense { .. } => Vec::new(),
        };
        self.slots
            .iter()
            .zip(&other.slots)
            .map(|(a, b)| idx(&a.form).iter().zip(&idx(&b.form)).filter(|(x, y)| x != y).count())
            .sum()
    }

    /// One Adam step: `grads[i]` is the gradient of the loss with respect to the decoded
    /// tensor of slot `i` (as [`Params::dense`] returns it). With re-assignment, the latent
    /// weights step along the same gradient and every unpruned weight then takes the centroid
    /// nearest its latent value.
    pub fn step(&mut self, grads: &[Vec<f32>], rel_lr: f32) {
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            match &mut slot.form {
                Form::Dense { values, .. } => values.step(g, rel_lr),
                Form::Codebook { kind, row_len, entries, idx, centroids, scales, latent, .. } => {
                    let mut dc = vec![0.0f32; centroids.p.len()];
                    let mut ds = vec![0.0f32; scales.p.len()];
                    for (e, (&i, &g)) in idx.iter().zip(g.iter()).enumerate() {
                        let r = e / *row_len;
                        let i = i as usize;
                        match kind {
                            CodebookKind::PerTensor => dc[i] += g,
                            CodebookKind::PerRow => dc[r * *entries + i] += g,
                            CodebookKind::SharedScaled => {
                                dc[i] += g * scales.p[r];
                                ds[r] += g * centroids.p[i];
                            }
                        }
                    }
                    centroids.step(&dc, rel_lr);
                    if !ds.is_empty() {
                        scales.step(&ds, rel_lr);
                    }
                    if let Some(latent) = latent {
                        latent.step(g, rel_lr * LATENT_LR);
                        reassign(*kind, *row_len, *entries, idx, centroids, scales, latent);
                    }
                }
            }
        }
    }

    /// `model` with every trainable constant replaced by the current parameters, in its stored
    /// encoding (same precision; the indices repacked when re-assignment moved them).
    pub fn write_back(&self, model: &ir::Model) -> ir::Model {
        let mut out = model.clone();
        for slot in &self.slots {
            let Some(c) = out.constants.iter_mut().find(|c| c.value == slot.value) else { continue };
            match (&slot.form, &mut c.data) {
                (Form::Dense { values, half: false }, data) => *data = TensorData::F32(values.p.clone()),
                (Form::Dense { values, half: true }, data) => {
                    *data = TensorData::F16(values.p.iter().map(|&v| f16::from_f32(v)).collect())
                }
                (Form::Codebook { centroids, scales, half, idx, latent, .. }, TensorData::Codebook(cb)) => {
                    if latent.is_some() {
                        let stride = cb.row_stride();
                        cb.indices.iter_mut().for_each(|b| *b = 0);
                        for (r, ids) in idx.chunks(cb.row_len.max(1)).enumerate().take(cb.rows) {
                            crate::codebook::pack_row(
                                ids,
                                cb.bits,
                                &mut cb.indices[r * stride..(r + 1) * stride],
                            );
                        }
                    }
                    cb.centroids = if *half {
                        Centroids::F16(centroids.p.iter().map(|&v| f16::from_f32(v)).collect())
                    } else {
                        Centroids::F32(centroids.p.clone())
                    };
                    // Tuned scales go back to f16 where the tensor stores them so.
                    cb.scales = scales.p.clone();
                    if cb.f16_scales {
                        cb.scales.iter_mut().for_each(|s| *s = crate::codebook::half_scale(*s));
                        cb.f16_scales = crate::codebook::scales_fit_f16(&cb.scales);
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// Step size of the latent weights relative to the centroids' (both relative to their
/// tensor's RMS value): a latent weight must travel half a centroid spacing to change index.
/// BlazeFace 3-bit cross-validation (5 folds, 100 steps): 1× left the held-out cosine where
/// centroid-only tuning has it, 3× raised its mean by 0.003, 10× lowered it by 0.02.
pub(super) const LATENT_LR: f32 = 3.0;

/// Moves every unpruned weight of a codebook tensor to the centroid nearest its latent value
/// (`scale(row) * c` for shared-scaled books; a row with a zero or non-finite scale keeps its
/// indices). Frozen (zero) entries take no weight; ties go to the lower entry.
fn reassign(
    kind: CodebookKind,
    row_len: usize,
    entries: usize,
    idx: &mut [u8],
    centroids: &Adam,
    scales: &Adam,
    latent: &Adam,
) {
    // The usable entries of book `b`, sorted by value.
    let book = |b: usize| -> Vec<(f32, u8)> {
        let mut v: Vec<(f32, u8)> = (0..entries)
            .filter(|&k| !centroids.frozen[b * entries + k] && centroids.p[b * entries + k].is_finite())
            .map(|k| (centroids.p[b * entries + k], k as u8))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        v
    };
    let shared = (kind != CodebookKind::PerRow).then(|| book(0));
    for (r, (ids, lat)) in idx.chunks_mut(row_len.max(1)).zip(latent.p.chunks(row_len.max(1))).enumerate() {
        let own;
        let sorted = match &shared {
            Some(s) => s,
            None => {
                own = book(r);
                &own
            }
        };
        if sorted.is_empty() {
            continue;
        }
        let scale = if kind == CodebookKind::SharedScaled { scales.p[r] } else { 1.0 };
        if scale == 0.0 || !scale.is_finite() {
            continue;
        }
        let frozen = &latent.frozen[r * row_len..];
        for (j, (id, &w)) in ids.iter_mut().zip(lat).enumerate() {
            if frozen[j] || !w.is_finite() {
                continue;
            }
            let t = w / scale;
            let p = sorted.partition_point(|&(c, _)| c < t);
            let best = match (p.checked_sub(1).map(|q| sorted[q]), sorted.get(p)) {
                (Some(lo), Some(hi)) => {
                    if t - lo.0 <= hi.0 - t {
                        lo
                    } else {
                        *hi
                    }
                }
                (Some(lo), None) => lo,
                (None, Some(hi)) => *hi,
                (None, None) => continue,
            };
            *id = best.1;
        }
    }
}

/// The trainable form of a codebook tensor; with `reassign`, latent weights start at the
/// decoded values, pruned weights frozen.
fn codebook_form(cb: &CodebookTensor, reassign: bool) -> Form {
    let stride = cb.row_stride();
    let mut idx = Vec::with_capacity(cb.rows * cb.row_len);
    for r in 0..cb.rows {
        let row = &cb.indices[r * stride..(r + 1) * stride];
        idx.extend((0..cb.row_len).map(|i| CodebookView::index_at(row, cb.bits, i) as u8));
    }
    let (centroids, half) = match &cb.centroids {
        Centroids::F32(v) => (v.clone(), false),
        Centroids::F16(v) => (v.iter().map(|x| x.to_f32()).collect(), true),
    };
    let mut form = Form::Codebook {
        kind: cb.kind,
        row_len: cb.row_len,
        entries: cb.entries,
        idx,
        centroids: Adam::new(centroids, true),
        scales: Adam::new(cb.scales.clone(), false),
        half,
        latent: None,
    };
    if reassign {
        let values = decode(&form, cb.rows);
        if let Form::Codebook { kind, row_len, entries, idx, centroids, latent, .. } = &mut form {
            let mut l = Adam::new(values, false);
            for (e, (&i, f)) in idx.iter().zip(l.frozen.iter_mut()).enumerate() {
                let book = if *kind == CodebookKind::PerRow { e / *row_len } else { 0 };
                *f = centroids.frozen.get(book * *entries + i as usize).copied().unwrap_or(true);
            }
            *latent = Some(Box::new(l));
        }
    }
    form
}

/// The f32 values of a parameterised tensor of `rows` rows.
fn decode(form: &Form, rows: usize) -> Vec<f32> {
    match form {
        Form::Dense { values, .. } => values.p.clone(),
        Form::Codebook { kind, row_len, entries, idx, centroids, scales, .. } => {
            let mut out = Vec::with_capacity(rows * row_len);
            for (e, &i) in idx.iter().enumerate() {
                let r = e / row_len;
                out.push(match kind {
                    CodebookKind::PerTensor => centroids.p[i as usize],
                    CodebookKind::PerRow => centroids.p[r * entries + i as usize],
                    CodebookKind::SharedScaled => scales.p[r] * centroids.p[i as usize],
                });
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codebook(kind: CodebookKind) -> CodebookTensor {
        let (rows, row_len, bits, entries) = (3, 5, 2, 4);
        let stride = pith_format::ir::row_stride(row_len, bits);
        let mut indices = vec![0u8; rows * stride];
        for r in 0..rows {
            let ids: Vec<u8> = (0..row_len).map(|i| ((r + 2 * i) % entries) as u8).collect();
            crate::codebook::pack_row(&ids, bits, &mut indices[r * stride..(r + 1) * stride]);
        }
        let n = if kind == CodebookKind::PerRow { rows * entries } else { entries };
        CodebookTensor {
            bits,
            rows,
            row_len,
            entries,
            kind,
            centroids: Centroids::F32(
                (0..n).map(|i| if i == 0 { 0.0 } else { 0.1 * i as f32 - 0.35 }).collect(),
            ),
            scales: if kind == CodebookKind::SharedScaled { vec![0.5, 2.0, 1.5] } else { Vec::new() },
            f16_scales: false,
            indices,
        }
    }

    #[test]
    fn decode_matches_the_format_reference_for_every_kind() {
        for kind in [CodebookKind::PerTensor, CodebookKind::PerRow, CodebookKind::SharedScaled] {
            let cb = codebook(kind);
            let data = TensorData::Codebook(cb.clone());
            let mut want = vec![0.0f32; 15];
            for r in 0..3 {
                data.view().decode_row(3, r, &mut want[r * 5..(r + 1) * 5]);
            }
            assert_eq!(decode(&codebook_form(&cb, false), 3), want, "{kind:?}");
        }
    }

    #[test]
    fn centroid_gradient_is_the_sum_of_its_weights_gradients() {
        let cb = codebook(CodebookKind::SharedScaled);
        let mut form = codebook_form(&cb, false);
        let before = decode(&form, 3);
        // A gradient of 1 on every weight: each centroid moves against the sum of its weights'
        // row scales, so every non-frozen centroid with weights decreases; the zero entry stays.
        let mut slot = Params { slots: vec![Slot { value: 0, shape: vec![3, 5], form: form.clone() }] };
        slot.step(&[vec![1.0; 15]], 0.1);
        form = slot.slots[0].form.clone();
        let Form::Codebook { centroids, idx, .. } = &form else { unreachable!() };
        assert_eq!(centroids.p[0], 0.0, "a pruning entry must stay zero");
        let used: Vec<usize> = (1..4).filter(|k| idx.iter().any(|&i| i as usize == *k)).collect();
        assert!(!used.is_empty());
        let Form::Codebook { centroids: c0, .. } = codebook_form(&cb, false) else { unreachable!() };
        for k in used {
            assert!(centroids.p[k] < c0.p[k], "centroid {k} must decrease");
        }
        assert_ne!(decode(&form, 3), before);
    }

    #[test]
    fn reassignment_keeps_the_pruning_mask_and_moves_indices() {
        for kind in [CodebookKind::PerTensor, CodebookKind::PerRow, CodebookKind::SharedScaled] {
            let cb = codebook(kind);
            let form = codebook_form(&cb, true);
            let Form::Codebook { idx: before, .. } = &form else { unreachable!() };
            let mut p = Params { slots: vec![Slot { value: 0, shape: vec![3, 5], form: form.clone() }] };
            let start = p.clone();
            // Push the weights of the first half up and the rest down, hard, for a few steps.
            let g: Vec<f32> = (0..15).map(|e| if e < 7 { -1.0 } else { 1.0 }).collect();
            for _ in 0..30 {
                p.step(std::slice::from_ref(&g), 0.1);
            }
            let Form::Codebook { idx: after, centroids, .. } = &p.slots[0].form else { unreachable!() };
            let entries = 4;
            for (e, (&a, &b)) in before.iter().zip(after).enumerate() {
                let book = if kind == CodebookKind::PerRow { e / 5 } else { 0 };
                let zero = |i: u8| centroids.frozen[book * entries + i as usize];
                assert_eq!(zero(a), zero(b), "{kind:?}: element {e} changed pruning ({a} -> {b})");
                if zero(a) {
                    assert_eq!(a, b);
                }
            }
            assert!(p.moved_indices(&start) > 0, "{kind:?}: no index moved");
            // The moved indices are written back and decode as the parameters do.
            let model = ir::Model {
                constants: vec![ir::Constant { value: 0, data: TensorData::Codebook(cb.clone()) }],
                ..Default::default()
            };
            let out = p.write_back(&model);
            let TensorData::Codebook(written) = &out.constants[0].data else { unreachable!() };
            assert_eq!(decode(&codebook_form(written, false), 3), decode(&p.slots[0].form, 3), "{kind:?}");
        }
    }
}
