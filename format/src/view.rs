//! Zero-copy views of constant tensor data, borrowed from a mapped file or an owned [`crate::ir::TensorData`].

use crate::ir::{CodebookKind, TensorData};
use half::f16;

/// Borrowed centroids of a codebook.
#[derive(Debug, Clone, Copy)]
pub enum CentroidsView<'a> {
    /// f32 centroids.
    F32(&'a [f32]),
    /// f16 centroids.
    F16(&'a [f16]),
}

impl CentroidsView<'_> {
    /// Centroid `i` widened to f32.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            CentroidsView::F32(c) => c[i],
            CentroidsView::F16(c) => c[i].to_f32(),
        }
    }

    /// Number of centroids.
    pub fn len(&self) -> usize {
        match self {
            CentroidsView::F32(c) => c.len(),
            CentroidsView::F16(c) => c.len(),
        }
    }

    /// True when there are no centroids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A borrowed codebook-indexed weight matrix (`rows` × `row_len`), validated by whoever built it:
/// every index is below `entries`, and the slices have the lengths their fields imply.
#[derive(Debug, Clone, Copy)]
pub struct CodebookView<'a> {
    /// Bits per index, 1..=8.
    pub bits: u8,
    /// Number of rows (`shape[0]`).
    pub rows: usize,
    /// Weights per row.
    pub row_len: usize,
    /// Bytes per packed row.
    pub row_stride: usize,
    /// Entries per codebook.
    pub entries: usize,
    /// Sharing scheme.
    pub kind: CodebookKind,
    /// Centroids (`entries`, or `rows * entries` for PerRow).
    pub centroids: CentroidsView<'a>,
    /// Per-row scales (SharedScaled only).
    pub scales: &'a [f32],
    /// `rows * row_stride` packed index bytes.
    pub indices: &'a [u8],
}

impl<'a> CodebookView<'a> {
    /// The packed index bytes of row `r`.
    #[inline]
    pub fn row_indices(&self, r: usize) -> &'a [u8] {
        &self.indices[r * self.row_stride..(r + 1) * self.row_stride]
    }

    /// Index `i` of packed row bytes `row` at `bits` bits (LSB-first bitstream).
    #[inline]
    pub fn index_at(row: &[u8], bits: u8, i: usize) -> usize {
        let bit = i * bits as usize;
        let byte = bit / 8;
        let shift = bit % 8;
        let lo = row[byte] as u16;
        let hi = if shift + bits as usize > 8 { row[byte + 1] as u16 } else { 0 };
        (((lo | (hi << 8)) >> shift) & ((1u16 << bits) - 1)) as usize
    }

    /// Scalar reference decode of row `r` into `out[..row_len]`: the definition every fast kernel must match.
    pub fn decode_row(&self, r: usize, out: &mut [f32]) {
        let row = self.row_indices(r);
        let out = &mut out[..self.row_len];
        let (base, scale) = match self.kind {
            CodebookKind::PerTensor => (0, 1.0),
            CodebookKind::PerRow => (r * self.entries, 1.0),
            CodebookKind::SharedScaled => (0, self.scales[r]),
        };
        for (i, o) in out.iter_mut().enumerate() {
            *o = self.centroids.get(base + Self::index_at(row, self.bits, i)) * scale;
        }
    }
}

/// A borrowed view of one constant tensor's data.
#[derive(Debug, Clone, Copy)]
pub enum TensorView<'a> {
    /// Plain f32.
    F32(&'a [f32]),
    /// f16.
    F16(&'a [f16]),
    /// i64.
    I64(&'a [i64]),
    /// Codebook-indexed weights.
    Codebook(CodebookView<'a>),
}

impl TensorView<'_> {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        match self {
            TensorView::F32(d) => d.len(),
            TensorView::F16(d) => d.len(),
            TensorView::I64(d) => d.len(),
            TensorView::Codebook(c) => c.rows * c.row_len,
        }
    }

    /// A short name of the storage encoding ("f32", "f16", "i64", "cb4/per-row", ...).
    pub fn encoding_name(&self) -> String {
        match self {
            TensorView::F32(_) => "f32".into(),
            TensorView::F16(_) => "f16".into(),
            TensorView::I64(_) => "i64".into(),
            TensorView::Codebook(c) => {
                let kind = match c.kind {
                    CodebookKind::PerTensor => "per-tensor",
                    CodebookKind::PerRow => "per-row",
                    CodebookKind::SharedScaled => "scaled",
                };
                let prec = match c.centroids {
                    CentroidsView::F32(_) => "",
                    CentroidsView::F16(_) => "/f16",
                };
                format!("cb{}/{}{}", c.bits, kind, prec)
            }
        }
    }

    /// Decodes row `r` (a slice along axis 0 of `rows` equal rows) into `out`; works for every encoding.
    /// `rows` is ignored for codebook tensors, which know their own.
    pub fn decode_row(&self, rows: usize, r: usize, out: &mut [f32]) {
        match self {
            TensorView::Codebook(c) => c.decode_row(r, out),
            TensorView::F32(d) => {
                let n = d.len() / rows;
                out[..n].copy_from_slice(&d[r * n..(r + 1) * n]);
            }
            TensorView::F16(d) => {
                let n = d.len() / rows;
                for (o, v) in out[..n].iter_mut().zip(&d[r * n..(r + 1) * n]) {
                    *o = v.to_f32();
                }
            }
            TensorView::I64(d) => {
                let n = d.len() / rows;
                for (o, v) in out[..n].iter_mut().zip(&d[r * n..(r + 1) * n]) {
                    *o = *v as f32;
                }
            }
        }
    }
}

impl TensorData {
    /// A borrowed view of this data. Owned codebook tensors are trusted to be well formed.
    pub fn view(&self) -> TensorView<'_> {
        match self {
            TensorData::F32(d) => TensorView::F32(d),
            TensorData::F16(d) => TensorView::F16(d),
            TensorData::I64(d) => TensorView::I64(d),
            TensorData::Codebook(c) => TensorView::Codebook(CodebookView {
                bits: c.bits,
                rows: c.rows,
                row_len: c.row_len,
                row_stride: c.row_stride(),
                entries: c.entries,
                kind: c.kind,
                centroids: match &c.centroids {
                    crate::ir::Centroids::F32(v) => CentroidsView::F32(v),
                    crate::ir::Centroids::F16(v) => CentroidsView::F16(v),
                },
                scales: &c.scales,
                indices: &c.indices,
            }),
        }
    }
}
