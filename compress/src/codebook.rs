//! Codebook quantisation of one weight matrix: three candidate schemes, packing, and selection.
//!
//! The weight is seen as `rows` rows (slices along axis 0). Candidates:
//! * **per-tensor**: one f32 codebook of optimal 1-D k-means centroids;
//! * **scaled**: each row divided by its max magnitude (f32 scale per row), one pooled f32 codebook;
//! * **per-row**: one codebook per row with f16 centroids.
//!
//! Selection rule: candidates more than 1.5× the bytes of the smallest are discarded first (without
//! this, per-row codebooks of short rows, which are nearly lossless but store up to `2^bits` f16
//! centroids per row, would always win at 8 bits and barely compress). Among the rest, those
//! whose relative error `||W - Wq|| / ||W||` is at most 1.1× the best remaining error qualify, and
//! the one with the fewest bytes wins (ties: the order above). Errors are measured on the actual
//! decoded tensor ([`pith_format::CodebookView::decode_row`]).

use half::f16;
use pith_format::ir::{Centroids, CodebookKind, CodebookTensor, TensorData};

use crate::kmeans;

/// Error slack a smaller candidate may have relative to the most accurate one.
pub(crate) const ERROR_SLACK: f64 = 1.1;
/// Size slack a more accurate candidate may have relative to the smallest one.
pub(crate) const SIZE_SLACK: f64 = 1.5;

/// One encoded weight with its cost and accuracy.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    /// The stored data.
    pub data: TensorData,
    /// Bytes of stored data (centroids, scales and packed indices).
    pub bytes: usize,
    /// `||W - Wq||_2 / ||W||_2` (0 for an all-zero tensor).
    pub rel_error: f64,
}

/// Bytes of constant data `data` occupies (payload only, no headers).
pub(crate) fn data_bytes(data: &TensorData) -> usize {
    match data {
        TensorData::F32(v) => v.len() * 4,
        TensorData::F16(v) => v.len() * 2,
        TensorData::I64(v) => v.len() * 8,
        TensorData::Codebook(c) => {
            let centroids = match &c.centroids {
                Centroids::F32(v) => v.len() * 4,
                Centroids::F16(v) => v.len() * 2,
            };
            centroids + c.scales.len() * 4 + c.indices.len()
        }
    }
}

/// Decodes `data` (holding `w.len()` elements in `rows` rows) and measures its error against `w`.
pub(crate) fn relative_error(w: &[f32], rows: usize, data: &TensorData) -> f64 {
    let view = data.view();
    let row_len = w.len() / rows.max(1);
    let mut buf = vec![0.0f32; row_len];
    let (mut err, mut norm) = (0.0f64, 0.0f64);
    for r in 0..rows {
        view.decode_row(rows, r, &mut buf);
        for (a, b) in w[r * row_len..(r + 1) * row_len].iter().zip(&buf) {
            err += (*a as f64 - *b as f64).powi(2);
            norm += (*a as f64).powi(2);
        }
    }
    if norm == 0.0 {
        err.sqrt()
    } else {
        (err / norm).sqrt()
    }
}

/// Packs `indices` (each `< 2^bits`) LSB-first at `bits` bits into `out` (zeroed, one row's stride).
pub(crate) fn pack_row(indices: &[u8], bits: u8, out: &mut [u8]) {
    for (i, &idx) in indices.iter().enumerate() {
        let bit = i * bits as usize;
        let (byte, shift) = (bit / 8, bit % 8);
        let v = (idx as u16) << shift;
        out[byte] |= v as u8;
        if shift + bits as usize > 8 {
            out[byte + 1] |= (v >> 8) as u8;
        }
    }
}

/// Builds a codebook tensor from per-element indices.
fn build(
    bits: u8,
    rows: usize,
    entries: usize,
    kind: CodebookKind,
    centroids: Centroids,
    scales: Vec<f32>,
    idx: &[u8],
) -> TensorData {
    let row_len = idx.len() / rows;
    let stride = pith_format::ir::row_stride(row_len, bits);
    let mut indices = vec![0u8; rows * stride];
    for r in 0..rows {
        pack_row(&idx[r * row_len..(r + 1) * row_len], bits, &mut indices[r * stride..(r + 1) * stride]);
    }
    TensorData::Codebook(CodebookTensor { bits, rows, row_len, entries, kind, centroids, scales, indices })
}

/// Indices of the nearest centroid for each value.
fn assign(values: &[f32], centroids: &[f32]) -> Vec<u8> {
    values.iter().map(|&v| kmeans::nearest(centroids, v) as u8).collect()
}

/// One f32 codebook for the whole tensor.
pub(crate) fn per_tensor(w: &[f32], rows: usize, bits: u8) -> TensorData {
    let c = kmeans::centroids(w, 1 << bits);
    let idx = assign(w, &c);
    build(bits, rows, c.len(), CodebookKind::PerTensor, Centroids::F32(c), Vec::new(), &idx)
}

/// Per-row max-magnitude scales and one pooled f32 codebook of the scaled values.
pub(crate) fn shared_scaled(w: &[f32], rows: usize, bits: u8) -> TensorData {
    let row_len = w.len() / rows;
    let scales: Vec<f32> =
        w.chunks_exact(row_len).map(|r| r.iter().fold(0.0f32, |m, v| m.max(v.abs()))).collect();
    let normalised: Vec<f32> = w
        .iter()
        .enumerate()
        .map(|(i, &v)| match scales[i / row_len] {
            s if s > 0.0 => v / s,
            _ => 0.0,
        })
        .collect();
    let c = kmeans::centroids(&normalised, 1 << bits);
    let idx = assign(&normalised, &c);
    build(bits, rows, c.len(), CodebookKind::SharedScaled, Centroids::F32(c), scales, &idx)
}

/// One f16 codebook per row; `None` when a centroid does not fit in f16.
pub(crate) fn per_row(w: &[f32], rows: usize, bits: u8) -> Option<TensorData> {
    let row_len = w.len() / rows;
    let books: Vec<Vec<f16>> = w
        .chunks_exact(row_len)
        .map(|r| {
            // Round to f16 first so indices point at the values actually stored.
            let mut c: Vec<f16> = kmeans::centroids(r, 1 << bits).into_iter().map(f16::from_f32).collect();
            c.dedup();
            c
        })
        .collect();
    if books.iter().flatten().any(|c| !c.is_finite()) {
        return None;
    }
    let entries = books.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let mut centroids = Vec::with_capacity(rows * entries);
    let mut idx = Vec::with_capacity(w.len());
    for (book, row) in books.iter().zip(w.chunks_exact(row_len)) {
        let wide: Vec<f32> = book.iter().map(|c| c.to_f32()).collect();
        idx.extend(assign(row, &wide));
        // Pad short codebooks by repeating their last entry (never referenced).
        let pad = *book.last().unwrap_or(&f16::ZERO);
        centroids.extend(book.iter().copied().chain(std::iter::repeat(pad)).take(entries));
    }
    Some(build(bits, rows, entries, CodebookKind::PerRow, Centroids::F16(centroids), Vec::new(), &idx))
}

/// Bytes the per-row candidate will take (an upper bound: f16 rounding may merge centroids).
fn per_row_bytes(w: &[f32], rows: usize, bits: u8) -> usize {
    let row_len = w.len() / rows;
    let entries = w
        .chunks_exact(row_len)
        .map(|r| {
            let mut r = r.to_vec();
            r.sort_unstable_by(f32::total_cmp);
            r.dedup();
            r.len().min(1 << bits)
        })
        .max()
        .unwrap_or(1);
    rows * entries * 2 + rows * pith_format::ir::row_stride(row_len, bits)
}

/// How [`encode_with`] should fit a codebook beyond plain k-means.
#[allow(dead_code)] // wired up by the calibration pass
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EncodeOptions<'a> {
    /// Fraction (0..1) of the smallest-magnitude weights set to an exact-zero codebook entry.
    pub prune: f32,
    /// Calibration statistics of the layer's input; `None` = plain (unweighted) k-means.
    pub gram: Option<&'a crate::gram::RowGram>,
    /// With `gram`: weight the k-means by the Gram diagonal (activation energy per input).
    pub weighted: bool,
    /// With `gram`: refit centroid values by least squares on the layer's output error.
    pub refit: bool,
}

/// The best codebook encoding of `w` under `opts` (STUB: ignores `opts` until the data-aware
/// fitting lands; same result as [`encode`]).
#[allow(dead_code)] // wired up by the calibration pass
pub(crate) fn encode_with(w: &[f32], rows: usize, bits: u8, opts: &EncodeOptions) -> Encoded {
    let _ = opts;
    encode(w, rows, bits)
}

/// The best codebook encoding of `w` (finite values, `rows` rows) at `bits` bits per index.
pub(crate) fn encode(w: &[f32], rows: usize, bits: u8) -> Encoded {
    let score = |data: TensorData| Encoded {
        bytes: data_bytes(&data),
        rel_error: relative_error(w, rows, &data),
        data,
    };
    let mut scored = vec![score(per_tensor(w, rows, bits)), score(shared_scaled(w, rows, bits))];
    let smallest = scored.iter().map(|e| e.bytes).min().expect("two candidates");
    // The per-row candidate is the slow one; skip it when its size already rules it out.
    if per_row_bytes(w, rows, bits) as f64 <= smallest as f64 * SIZE_SLACK {
        scored.extend(per_row(w, rows, bits).map(score));
    }
    select(scored)
}

/// Applies the selection rule (see the module documentation) to scored candidates.
pub(crate) fn select(scored: Vec<Encoded>) -> Encoded {
    let smallest = scored.iter().map(|e| e.bytes).min().unwrap_or(0) as f64;
    let affordable: Vec<Encoded> =
        scored.into_iter().filter(|e| e.bytes as f64 <= smallest * SIZE_SLACK).collect();
    let best = affordable.iter().map(|e| e.rel_error).fold(f64::INFINITY, f64::min);
    affordable
        .into_iter()
        .filter(|e| e.rel_error <= best * ERROR_SLACK + 1e-12)
        .min_by_key(|e| e.bytes)
        .expect("the most accurate affordable candidate always qualifies")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32)).collect()
    }

    /// The decoded tensor of every candidate equals centroid lookup of the assigned indices.
    #[test]
    fn packing_round_trips_through_decode_row() {
        for bits in [1u8, 3, 4, 5, 8] {
            let (rows, row_len) = (6, 37); // odd row length: rows end mid-byte
            let w = values(rows * row_len);
            let c = kmeans::centroids(&w, 1 << bits);
            let idx = assign(&w, &c);
            let data = build(
                bits,
                rows,
                c.len(),
                CodebookKind::PerTensor,
                Centroids::F32(c.clone()),
                Vec::new(),
                &idx,
            );
            let TensorData::Codebook(cb) = &data else { unreachable!() };
            assert_eq!(cb.indices.len(), rows * cb.row_stride());
            let view = data.view();
            let mut out = vec![0.0; row_len];
            for r in 0..rows {
                view.decode_row(rows, r, &mut out);
                for i in 0..row_len {
                    assert_eq!(out[i], c[idx[r * row_len + i] as usize], "bits={bits} r={r} i={i}");
                }
            }
        }
    }

    #[test]
    fn every_candidate_decodes_close_to_the_weights() {
        let (rows, w) = (8, values(8 * 72));
        for (name, data) in [
            ("per-tensor", per_tensor(&w, rows, 8)),
            ("scaled", shared_scaled(&w, rows, 8)),
            ("per-row", per_row(&w, rows, 8).unwrap()),
        ] {
            let e = relative_error(&w, rows, &data);
            assert!(e < 0.01, "{name}: relative error {e}");
            assert!(data_bytes(&data) > 0);
        }
    }

    fn scored(bytes: usize, rel_error: f64) -> Encoded {
        Encoded { data: TensorData::F32(Vec::new()), bytes, rel_error }
    }

    #[test]
    fn selection_prefers_small_within_slack() {
        // 100 bytes at 0.0105 is within 1.1x of the best affordable error (0.01): it wins.
        let e = select(vec![scored(100, 0.0105), scored(140, 0.01), scored(400, 0.0)]);
        assert_eq!((e.bytes, e.rel_error), (100, 0.0105));
        // Too inaccurate relative to the 140-byte candidate: the larger one wins.
        let e = select(vec![scored(100, 0.02), scored(140, 0.01), scored(400, 0.0)]);
        assert_eq!(e.bytes, 140);
        // Beyond 1.5x the smallest, accuracy does not buy a candidate in.
        let e = select(vec![scored(100, 0.02), scored(151, 0.001)]);
        assert_eq!(e.bytes, 100);
    }

    #[test]
    fn encode_returns_an_affordable_accurate_candidate() {
        let (rows, w) = (16, values(16 * 64));
        let chosen = encode(&w, rows, 4);
        let all = [per_tensor(&w, rows, 4), shared_scaled(&w, rows, 4), per_row(&w, rows, 4).unwrap()];
        let smallest = all.iter().map(data_bytes).min().unwrap();
        assert!(chosen.bytes as f64 <= smallest as f64 * SIZE_SLACK);
        assert_eq!(chosen.rel_error, relative_error(&w, rows, &chosen.data));
        assert!(chosen.rel_error < 0.1, "{}", chosen.rel_error);
    }

    #[test]
    fn per_row_is_exact_when_rows_have_few_values() {
        // Each row holds 3 distinct values: 2-bit per-row codebooks represent it exactly.
        let w: Vec<f32> = (0..4 * 20).map(|i| ((i % 3) as f32 - 1.0) * (1 + i / 20) as f32).collect();
        let data = per_row(&w, 4, 2).unwrap();
        assert_eq!(relative_error(&w, 4, &data), 0.0);
    }
}
