//! Codebook quantisation of one weight matrix: three candidate schemes, packing, and selection.
//!
//! The weight is seen as `rows` rows (slices along axis 0). Candidates:
//! * **per-tensor**: one f32 codebook of optimal 1-D k-means centroids;
//! * **scaled**: each row divided by its max magnitude (a scale per row, rounded to f16 so it is
//!   stored in 2 bytes), one pooled f32 codebook;
//! * **per-row**: one codebook per row with f16 centroids.
//!
//! Selection rule: candidates more than 1.5× the bytes of the smallest are discarded first (without
//! this, per-row codebooks of short rows, which are nearly lossless but store up to `2^bits` f16
//! centroids per row, would always win at 8 bits and barely compress). Among the rest, those
//! whose relative error `||W - Wq|| / ||W||` is at most 1.1× the best remaining error qualify, and
//! the one with the fewest bytes wins (ties: the order above). Errors are measured on the actual
//! decoded tensor ([`pith_format::CodebookView::decode_row`]).
//!
//! [`encode_with`] adds data-aware fitting ([`EncodeOptions`]); without pruning or usable
//! calibration statistics it is exactly [`encode`]. Otherwise every candidate is fitted as:
//! 1. **pruning** ([`crate::prune`]): one mask per tensor; pruned weights point at an exact-zero
//!    entry (f32 0, or f16 0 per row) that stays fixed, and k-means fits `2^bits - 1` centroids to
//!    the rest (PerRow rows without pruned weights keep all `2^bits`);
//! 2. **weighted k-means**: each weight's squared error counts `G_jj + λ` times (its input's
//!    activation energy; × `scale²` for the scaled candidate);
//! 3. **refit** ([`crate::refit`]): least-squares centroids on the output error `Σ dᵀGd`, then
//!    [`ALTERNATIONS`] rounds of output-aware re-assignment (plus, for the scaled candidate, the
//!    least-squares row scales) and refit, each kept only if the output error drops.
//!
//! With a gram the selection compares [`Encoded::out_error`] instead of `rel_error`.

use half::f16;
use pith_format::ir::{Centroids, CodebookKind, CodebookTensor, TensorData};
use pith_format::{CodebookView, TensorView};

use crate::kmeans;
use crate::prune;
use crate::refit::{Normal, Objective};

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
    /// With calibration statistics: the relative output error on them,
    /// `sqrt(Σ_r dᵀG d / Σ_r wᵀG w)` (`d = w - q` per row), which then drives the selection.
    /// Computed in f64 from the normal equations of the stored centroids (for SharedScaled the
    /// runtime's f32 rounding of `scale · centroid` is not modelled: about 1e-6 relative).
    pub out_error: Option<f64>,
}

impl Encoded {
    /// The error the selection compares: [`Encoded::out_error`] when known, else `rel_error`.
    pub fn score(&self) -> f64 {
        self.out_error.unwrap_or(self.rel_error)
    }
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
            // f16 scales as the compact layout stores them (the plain layout widens them to f32).
            let scale = if c.f16_scales { 2 } else { 4 };
            centroids + c.scales.len() * scale + c.indices.len()
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
    let f16_scales = kind == CodebookKind::SharedScaled && scales_fit_f16(&scales);
    TensorData::Codebook(CodebookTensor {
        bits,
        rows,
        row_len,
        entries,
        kind,
        centroids,
        scales,
        f16_scales,
        indices,
    })
}

/// `s` rounded to the nearest f16 value when that is a positive finite number (so a scale can be
/// stored in 2 bytes, format 1.3), else `s` itself. The rounding error (at most 2^-11 relative)
/// is far below any codebook's.
pub(crate) fn half_scale(s: f32) -> f32 {
    let h = f16::from_f32(s).to_f32();
    if h.is_finite() && h > 0.0 {
        h
    } else {
        s
    }
}

/// Whether every scale is exactly an f16 value (then they are stored as f16).
pub(crate) fn scales_fit_f16(scales: &[f32]) -> bool {
    scales.iter().all(|&s| f16::from_f32(s).to_f32() == s)
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

/// Each row's largest magnitude, and `w` with every row divided by it (an all-zero row stays 0).
fn row_max_scaled(w: &[f32], rows: usize) -> (Vec<f32>, Vec<f32>) {
    let row_len = w.len() / rows;
    let scales: Vec<f32> =
        w.chunks_exact(row_len).map(|r| half_scale(r.iter().fold(0.0f32, |m, v| m.max(v.abs())))).collect();
    let normalised = w
        .iter()
        .enumerate()
        .map(|(i, &v)| match scales[i / row_len] {
            s if s > 0.0 => v / s,
            _ => 0.0,
        })
        .collect();
    (scales, normalised)
}

/// Per-row max-magnitude scales and one pooled f32 codebook of the scaled values.
pub(crate) fn shared_scaled(w: &[f32], rows: usize, bits: u8) -> TensorData {
    let (scales, normalised) = row_max_scaled(w, rows);
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
    /// Fraction (0..1) of the least salient weights set to an exact-zero codebook entry (see
    /// [`crate::prune`]: smallest `|w|`, or smallest `|w|·sqrt(G_jj)` with `gram` + `weighted`).
    pub prune: f32,
    /// Calibration statistics of the layer's input; `None` = plain (unweighted) k-means. A gram
    /// that does not fit the weight (see [`crate::gram::RowGram::fits`]) counts as `None`.
    pub gram: Option<&'a crate::gram::RowGram>,
    /// With `gram`: weight the k-means by the Gram diagonal (activation energy per input).
    pub weighted: bool,
    /// With `gram`: refit centroid values by least squares on the layer's output error,
    /// alternating with output-error-aware index re-assignment (see [`crate::refit`]).
    pub refit: bool,
}

/// Refit / re-assignment rounds after the first refit (each kept only if it lowers the error).
const ALTERNATIONS: usize = 2;

/// A codebook fit before packing.
#[derive(Debug, Clone)]
struct Fit {
    kind: CodebookKind,
    /// One ascending book (PerTensor, SharedScaled) or one per row (PerRow), holding exactly
    /// the stored values (f16-representable for PerRow).
    books: Vec<Vec<f32>>,
    /// Per book, the entry fixed at 0 for pruned weights.
    zero: Vec<Option<usize>>,
    /// Row scales (SharedScaled), empty otherwise.
    scales: Vec<f32>,
    /// One index per weight.
    idx: Vec<u8>,
}

impl Fit {
    /// Scale of row `r`.
    fn scale(&self, r: usize) -> f32 {
        self.scales.get(r).copied().unwrap_or(1.0)
    }

    /// Packs the fit.
    fn to_data(&self, bits: u8, rows: usize) -> TensorData {
        let entries = self.books.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let padded = self.books.iter().flat_map(|b| {
            // Pad short codebooks by repeating their last entry (never referenced).
            let pad = *b.last().unwrap_or(&0.0);
            b.iter().copied().chain(std::iter::repeat(pad)).take(entries)
        });
        let centroids = match self.kind {
            CodebookKind::PerRow => Centroids::F16(padded.map(f16::from_f32).collect()),
            _ => Centroids::F32(padded.collect()),
        };
        build(bits, rows, entries, self.kind, centroids, self.scales.clone(), &self.idx)
    }

    /// Sorts book `b` ascending and renumbers the indices of `rows` to match.
    fn sort_book(&mut self, b: usize, rows: std::ops::Range<usize>, row_len: usize) {
        let book = &self.books[b];
        let mut order: Vec<usize> = (0..book.len()).collect();
        order.sort_by(|&x, &y| book[x].total_cmp(&book[y]).then(x.cmp(&y)));
        if order.iter().enumerate().all(|(i, &o)| i == o) {
            return;
        }
        let mut new_of = vec![0u8; order.len()];
        for (new, &old) in order.iter().enumerate() {
            new_of[old] = new as u8;
        }
        self.books[b] = order.iter().map(|&o| book[o]).collect();
        self.zero[b] = self.zero[b].map(|z| new_of[z] as usize);
        for i in &mut self.idx[rows.start * row_len..rows.end * row_len] {
            *i = new_of[*i as usize];
        }
    }
}

/// Rounds a value to what a codebook of `kind` stores (f16 for PerRow, f32 otherwise); -0 → +0.
fn stored(kind: CodebookKind, v: f64) -> f32 {
    let v = match kind {
        CodebookKind::PerRow => f16::from_f64(v).to_f32(),
        _ => v as f32,
    };
    if v == 0.0 {
        0.0
    } else {
        v
    }
}

/// Ascending codebook of at most `k` entries for `values` (weighted when `weights` is given),
/// its fixed zero entry and the indices. With pruned values, `k - 1` centroids are fitted to the
/// rest and an exact 0 is added; pruned values point at it, the rest at their nearest entry.
/// Without pruning or weights this is exactly the plain candidates' clustering.
fn cluster(
    values: &[f32],
    weights: Option<&[f64]>,
    pruned: Option<&[bool]>,
    k: usize,
    kind: CodebookKind,
) -> (Vec<f32>, Option<usize>, Vec<u8>) {
    let pruned = pruned.filter(|p| p.iter().any(|&x| x));
    let (kept, kept_w): (Vec<f32>, Option<Vec<f64>>) = match pruned {
        None => (values.to_vec(), weights.map(<[f64]>::to_vec)),
        Some(p) => (
            values.iter().zip(p).filter(|(_, &p)| !p).map(|(&v, _)| v).collect(),
            weights.map(|w| w.iter().zip(p).filter(|(_, &p)| !p).map(|(&v, _)| v).collect()),
        ),
    };
    let k_fit = if pruned.is_some() { k - 1 } else { k };
    let mut book: Vec<f32> = if kept.is_empty() || k_fit == 0 {
        Vec::new()
    } else {
        match &kept_w {
            Some(w) => kmeans::centroids_weighted(&kept, w, k_fit),
            None => kmeans::centroids(&kept, k_fit),
        }
    };
    book.iter_mut().for_each(|c| *c = stored(kind, *c as f64));
    if pruned.is_some() {
        book.push(0.0);
        book.sort_by(f32::total_cmp);
    }
    book.dedup();
    let zero = pruned.and_then(|_| book.iter().position(|&c| c == 0.0));
    let idx = match (pruned, zero) {
        (Some(p), Some(z)) => values
            .iter()
            .zip(p)
            .map(|(&v, &p)| if p { z as u8 } else { kmeans::nearest(&book, v) as u8 })
            .collect(),
        _ => assign(values, &book),
    };
    (book, zero, idx)
}

/// Positive weights for k-means from raw importances (relative floor keeps every one > 0).
fn positive(weights: Vec<f64>) -> Vec<f64> {
    let max = weights.iter().copied().fold(0.0f64, f64::max);
    let floor = 1e-12 * max + f64::MIN_POSITIVE;
    weights.into_iter().map(|w| if w > floor { w } else { floor }).collect()
}

/// The per-tensor candidate.
fn fit_per_tensor(w: &[f32], bits: u8, imp: Option<&[f64]>, pruned: Option<&[bool]>) -> Fit {
    let kind = CodebookKind::PerTensor;
    let (book, zero, idx) = cluster(w, imp, pruned, 1 << bits, kind);
    Fit { kind, books: vec![book], zero: vec![zero], scales: Vec::new(), idx }
}

/// The shared-scaled candidate; k-means weights are `importance · scale²` (the output error of
/// a scaled value).
fn fit_shared_scaled(w: &[f32], rows: usize, bits: u8, imp: Option<&[f64]>, pruned: Option<&[bool]>) -> Fit {
    let kind = CodebookKind::SharedScaled;
    let row_len = w.len() / rows;
    let (scales, normalised) = row_max_scaled(w, rows);
    let weights = imp.map(|imp| {
        positive(imp.iter().enumerate().map(|(i, &m)| m * (scales[i / row_len] as f64).powi(2)).collect())
    });
    let (book, zero, idx) = cluster(&normalised, weights.as_deref(), pruned, 1 << bits, kind);
    Fit { kind, books: vec![book], zero: vec![zero], scales, idx }
}

/// The per-row candidate; `None` when a centroid does not fit in f16.
fn fit_per_row(
    w: &[f32],
    rows: usize,
    bits: u8,
    imp: Option<&[f64]>,
    pruned: Option<&[bool]>,
) -> Option<Fit> {
    let kind = CodebookKind::PerRow;
    let row_len = w.len() / rows;
    let (mut books, mut zero, mut idx) = (Vec::with_capacity(rows), Vec::with_capacity(rows), Vec::new());
    for r in 0..rows {
        let span = r * row_len..(r + 1) * row_len;
        let weights = imp.map(|i| positive(i[span.clone()].to_vec()));
        let (book, z, i) =
            cluster(&w[span.clone()], weights.as_deref(), pruned.map(|p| &p[span]), 1 << bits, kind);
        if book.iter().any(|c| !c.is_finite()) {
            return None;
        }
        books.push(book);
        zero.push(z);
        idx.extend(i);
    }
    Some(Fit { kind, books, zero, scales: Vec::new(), idx })
}

/// A book's state before a re-assignment round: entries, zero entry, indices of its rows and
/// the row scales (SharedScaled has one book; other kinds have no scales).
type Snapshot = (Vec<f32>, Option<usize>, Vec<u8>, Vec<f32>);

/// What refining a fit needs besides the fit.
struct Refine<'a> {
    w: &'a [f32],
    row_len: usize,
    obj: &'a Objective<'a>,
    pruned: Option<&'a [bool]>,
    refit: bool,
}

impl Refine<'_> {
    /// The book row `r` uses.
    fn book_of(fit: &Fit, r: usize) -> usize {
        if fit.books.len() > 1 {
            r
        } else {
            0
        }
    }

    /// Normal-equation terms of every book, over the rows of the books marked in `live`.
    fn terms(&self, fit: &Fit, live: &[bool], rows: usize) -> Vec<Normal> {
        let mut accs: Vec<Normal> = fit.books.iter().map(|b| self.obj.normal(b.len())).collect();
        let rows: Vec<usize> = (0..rows).filter(|&r| live[Self::book_of(fit, r)]).collect();
        let unit = |r| Self::book_of(fit, r);
        self.obj.accumulate(&rows, self.w, &fit.idx, |r| fit.scale(r) as f64, unit, &mut accs);
        accs
    }

    /// Rows of book `b`.
    fn rows_of(fit: &Fit, b: usize, rows: usize) -> std::ops::Range<usize> {
        if fit.books.len() > 1 {
            b..b + 1
        } else {
            0..rows
        }
    }

    /// The raw output error `Σ dᵀGd` of `fit`, lowered first with `refit`: least-squares
    /// centroids, then up to `rounds` rounds of re-assignment + refit. Every book (one, or one per
    /// row for PerRow) runs this in lockstep so each Gram sweep serves a block of rows; a book
    /// keeps a step only when its raw error drops, and stops at the first step that does not.
    fn fit(&self, fit: &mut Fit, rows: usize, rounds: usize) -> f64 {
        let nb = fit.books.len();
        let wide = |book: &[f32]| -> Vec<f64> { book.iter().map(|&c| c as f64).collect() };
        // A book is refitted only when its K×K solves are cheap (K ≤ 32) or cost no more than
        // its Gram passes (K³ ≤ rows·row_len²): per-row books of 2^8 entries on rows of a few
        // hundred weights would take seconds to refit for a gain below f16 rounding.
        let book_rows = |b: usize| Self::rows_of(fit, b, rows).len() as f64;
        let mut live: Vec<bool> = (0..nb)
            .map(|b| {
                let k = fit.books[b].len() as f64;
                let pass = book_rows(b) * (self.row_len as f64).powi(2);
                k > 0.0 && k.powi(3) <= pass.max(32.0f64.powi(3))
            })
            .collect();
        let mut normals = self.terms(fit, &vec![true; nb], rows);
        let mut err: Vec<f64> = (0..nb).map(|b| normals[b].error(&wide(&fit.books[b]))).collect();
        if !self.refit {
            return err.iter().sum();
        }
        for round in 0..=rounds {
            let mut current = err.clone();
            let mut snapshots: Vec<Option<Snapshot>> = vec![None; nb];
            if round > 0 {
                for b in (0..nb).filter(|&b| live[b]) {
                    let span = Self::rows_of(fit, b, rows);
                    let idx = fit.idx[span.start * self.row_len..span.end * self.row_len].to_vec();
                    snapshots[b] = Some((fit.books[b].clone(), fit.zero[b], idx, fit.scales.clone()));
                }
                let live_rows: Vec<usize> = (0..rows).filter(|&r| live[Self::book_of(fit, r)]).collect();
                let books = &fit.books;
                let changed = self.obj.reassign(
                    &live_rows,
                    self.w,
                    self.pruned,
                    &mut fit.idx,
                    |r| &books[if books.len() > 1 { r } else { 0 }],
                    &mut fit.scales,
                );
                let mut moved = vec![0usize; nb];
                for (&r, c) in live_rows.iter().zip(changed) {
                    moved[Self::book_of(fit, r)] += c;
                }
                for b in 0..nb {
                    live[b] &= moved[b] > 0;
                }
                if !live.iter().any(|&l| l) {
                    break;
                }
                normals = self.terms(fit, &live, rows);
                for b in (0..nb).filter(|&b| live[b]) {
                    current[b] = normals[b].error(&wide(&fit.books[b]));
                }
            }
            for b in (0..nb).filter(|&b| live[b]) {
                let Some(c) = normals[b].solve(&wide(&fit.books[b]), fit.zero[b]) else { continue };
                let c: Vec<f32> = c.iter().map(|&v| stored(fit.kind, v)).collect();
                let e = normals[b].error(&wide(&c));
                if c.iter().all(|v| v.is_finite()) && e <= current[b] {
                    fit.books[b] = c;
                    fit.sort_book(b, Self::rows_of(fit, b, rows), self.row_len);
                    current[b] = e;
                }
            }
            for b in 0..nb {
                if !live[b] {
                    continue;
                }
                match snapshots[b].take() {
                    Some((book, zero, idx, scales)) if current[b] >= err[b] => {
                        let span = Self::rows_of(fit, b, rows);
                        fit.books[b] = book;
                        fit.zero[b] = zero;
                        fit.scales = scales;
                        fit.idx[span.start * self.row_len..span.end * self.row_len].copy_from_slice(&idx);
                        live[b] = false;
                    }
                    _ => err[b] = current[b],
                }
            }
        }
        err.iter().sum()
    }
}

/// The best codebook encoding of `w` under `opts`. With neither pruning nor a usable gram this
/// is [`encode`]. Otherwise the three candidates are fitted with the pruned weights on a fixed
/// zero entry, (with `weighted`) importance-weighted k-means, (with `refit`) least-squares
/// centroids and output-aware re-assignment; with a gram the selection compares `out_error`.
#[allow(dead_code)] // wired up by the calibration pass
pub(crate) fn encode_with(w: &[f32], rows: usize, bits: u8, opts: &EncodeOptions) -> Encoded {
    encode_with_rounds(w, rows, bits, opts, ALTERNATIONS)
}

/// [`encode_with`] with `rounds` re-assignment + refit rounds after the first refit.
pub(crate) fn encode_with_rounds(
    w: &[f32],
    rows: usize,
    bits: u8,
    opts: &EncodeOptions,
    rounds: usize,
) -> Encoded {
    let rows = rows.max(1);
    let obj = opts.gram.and_then(|g| Objective::new(g, w, rows));
    let row_len = w.len() / rows;
    let imp: Option<Vec<f64>> =
        obj.as_ref().filter(|_| opts.weighted).map(|o| (0..rows).flat_map(|r| o.importance(r)).collect());
    let pruned = prune::mask(w, opts.prune, imp.as_deref());
    if obj.is_none() && pruned.is_none() {
        return encode(w, rows, bits);
    }
    let pruned = pruned.as_deref();
    let imp = imp.as_deref();
    let mut fits = vec![fit_per_tensor(w, bits, imp, pruned), fit_shared_scaled(w, rows, bits, imp, pruned)];
    let smallest = fits.iter().map(|f| data_bytes(&f.to_data(bits, rows))).min().expect("two candidates");
    if per_row_bytes(w, rows, bits) as f64 <= smallest as f64 * SIZE_SLACK {
        fits.extend(fit_per_row(w, rows, bits, imp, pruned));
    }
    let scored = fits
        .into_iter()
        .map(|mut fit| {
            let out_error = obj.as_ref().map(|obj| {
                let refine = Refine { w, row_len, obj, pruned, refit: opts.refit };
                obj.relative(refine.fit(&mut fit, rows, rounds))
            });
            let data = fit.to_data(bits, rows);
            Encoded { bytes: data_bytes(&data), rel_error: relative_error(w, rows, &data), out_error, data }
        })
        .collect();
    select(scored)
}

/// Relative output error `sqrt(Σ_r dᵀG d / Σ_r wᵀG w)` of any stored form `data` of `w`
/// (`rows` rows) on the statistics `gram`, by decoding it; `None` when `gram` does not fit `w`.
/// Use it to measure an encoding on held-out data (`out_error` is measured on the fitting data).
#[allow(dead_code)] // used by the calibration pass and the bit allocator
pub(crate) fn output_error(
    w: &[f32],
    rows: usize,
    data: &TensorData,
    gram: &crate::gram::RowGram,
) -> Option<f64> {
    let rows = rows.max(1);
    let row_len = w.len() / rows;
    let mut d = vec![0.0f32; w.len()];
    for (r, dr) in d.chunks_exact_mut(row_len.max(1)).enumerate() {
        data.view().decode_row(rows, r, dr);
        for (q, &v) in dr.iter_mut().zip(&w[r * row_len..]) {
            *q = v - *q;
        }
    }
    let obj = Objective::new(gram, w, rows)?;
    let err: f64 = obj.energies(&d).iter().sum();
    Some(obj.relative(err))
}

/// Estimated bytes of the index stream of `data` as the writer's per-tensor Huffman option
/// (`pith_format::Entropy::Huffman`) stores it: a Huffman code is built from the histogram of all
/// indices (ties broken by entry, so it is deterministic; the writer's 12-bit length limit is
/// ignored, which matters only for extremely skewed histograms), and the estimate is the blob
/// size `12 + entries + ceil(Σ count·code_length / 8)` (header, code-length table, code words),
/// capped by the packed size since the writer keeps whichever is smaller. A lone used entry costs
/// 1 bit per index. 0 for data that is not a codebook.
#[allow(dead_code)] // used by the bit allocator
pub(crate) fn index_entropy_bytes(data: &TensorData) -> usize {
    /// Header bytes of a Huffman blob (`u64` bit count, `u16` symbols, `u16` reserved).
    const HUFFMAN_HEADER: usize = 12;
    let TensorData::Codebook(cb) = data else { return 0 };
    let TensorView::Codebook(view) = data.view() else { return 0 };
    let mut counts = vec![0u64; 1 << cb.bits];
    for r in 0..cb.rows {
        let row = view.row_indices(r);
        for i in 0..cb.row_len {
            counts[CodebookView::index_at(row, cb.bits, i)] += 1;
        }
    }
    let lengths = huffman_lengths(&counts);
    let bits: u64 = counts.iter().zip(&lengths).map(|(&c, &l)| c * l as u64).sum();
    let huffman = HUFFMAN_HEADER + cb.entries + bits.div_ceil(8) as usize;
    huffman.min(cb.indices.len())
}

/// Huffman code lengths for `counts` (0 for unused symbols, at least 1 for used ones).
fn huffman_lengths(counts: &[u64]) -> Vec<u32> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut lengths = vec![0u32; counts.len()];
    // Nodes: (weight, tie-break id); members tracked per node.
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut heap = BinaryHeap::new();
    for (s, &c) in counts.iter().enumerate().filter(|(_, &c)| c > 0) {
        heap.push(Reverse((c, members.len())));
        members.push(vec![s]);
    }
    if heap.len() == 1 {
        lengths[members[0][0]] = 1;
    }
    while heap.len() > 1 {
        let Reverse((wa, a)) = heap.pop().expect("two nodes");
        let Reverse((wb, b)) = heap.pop().expect("two nodes");
        let mut merged = std::mem::take(&mut members[a]);
        merged.extend(std::mem::take(&mut members[b]));
        for &s in &merged {
            lengths[s] += 1;
        }
        heap.push(Reverse((wa + wb, members.len())));
        members.push(merged);
    }
    lengths
}

/// The best codebook encoding of `w` (finite values, `rows` rows) at `bits` bits per index.
pub(crate) fn encode(w: &[f32], rows: usize, bits: u8) -> Encoded {
    let score = |data: TensorData| Encoded {
        bytes: data_bytes(&data),
        rel_error: relative_error(w, rows, &data),
        out_error: None,
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
    let best = affordable.iter().map(Encoded::score).fold(f64::INFINITY, f64::min);
    affordable
        .into_iter()
        .filter(|e| e.score() <= best * ERROR_SLACK + 1e-12)
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
        Encoded { data: TensorData::F32(Vec::new()), bytes, rel_error, out_error: None }
    }

    #[test]
    fn shared_scales_are_stored_as_f16_when_every_one_fits() {
        let (rows, row_len) = (5, 40);
        let mut w = values(rows * row_len);
        let TensorData::Codebook(cb) = shared_scaled(&w, rows, 4) else { panic!("a codebook") };
        assert!(cb.f16_scales);
        assert!(cb.scales.iter().all(|&s| half::f16::from_f32(s).to_f32() == s && s > 0.0));
        // A row beyond f16's range keeps every scale in f32.
        w[0] = 1e6;
        let TensorData::Codebook(cb) = shared_scaled(&w, rows, 4) else { panic!("a codebook") };
        assert!(!cb.f16_scales && cb.scales[0] == 1e6);
        // Other kinds have no scales to store.
        let TensorData::Codebook(cb) = per_tensor(&w, rows, 4) else { panic!("a codebook") };
        assert!(!cb.f16_scales);
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

#[cfg(test)]
mod data_aware_tests {
    use super::*;
    use crate::gram::RowGram;
    use crate::kmeans::tests::lcg_values;

    /// Weights with per-row scales that differ and a heavy tail.
    fn weights(rows: usize, row_len: usize, seed: u64) -> Vec<f32> {
        lcg_values(rows * row_len, seed)
            .iter()
            .enumerate()
            .map(|(i, &v)| v * v * v * (1.0 + (i / row_len % 5) as f32) + 0.05 * v)
            .collect()
    }

    /// A Gram of `samples` activations with strongly unequal input energies (a 1000x spread)
    /// and correlated neighbouring inputs.
    fn gram(row_len: usize, samples: usize, seed: u64) -> RowGram {
        let z = lcg_values(samples * row_len, seed);
        let mut x = vec![0.0f32; samples * row_len];
        for s in 0..samples {
            for j in 0..row_len {
                let energy = 10f32.powf(-3.0 * ((j * 7) % row_len) as f32 / row_len as f32).sqrt();
                let prev = if j > 0 { z[s * row_len + j - 1] } else { 0.0 };
                x[s * row_len + j] = energy * (z[s * row_len + j] + 0.8 * prev);
            }
        }
        let mut g = RowGram::new(1, row_len);
        g.add_rows(&x, samples);
        g
    }

    /// [`gram`] with the inputs at positions `j % 3 != 1` always zero, as the outer taps of a
    /// 3×3 filter over a one-row map: their rows and columns of G are zero.
    fn gram_with_dead_inputs(row_len: usize, samples: usize, seed: u64) -> RowGram {
        let full = gram(row_len, samples, seed);
        let mut g = full.clone();
        for i in 0..row_len {
            for j in 0..row_len {
                if i % 3 != 1 || j % 3 != 1 {
                    g.sums[i * row_len + j] = 0.0;
                }
            }
            if i % 3 != 1 {
                g.patch_sums[i] = 0.0;
            }
        }
        g
    }

    /// `sqrt(Σ dᵀGd / Σ wᵀGw)` by decoding every row (independent of the normal equations).
    fn decoded_out_error(w: &[f32], rows: usize, data: &TensorData, gram: &RowGram) -> f64 {
        let len = w.len() / rows;
        let mut q = vec![0.0f32; len];
        let (mut num, mut den) = (0.0, 0.0);
        for r in 0..rows {
            data.view().decode_row(rows, r, &mut q);
            let gm = gram.group(r / (rows / gram.groups));
            let row = &w[r * len..(r + 1) * len];
            for i in 0..len {
                for j in 0..len {
                    let g = gm[i * len + j];
                    num += (row[i] - q[i]) as f64 * g * (row[j] - q[j]) as f64;
                    den += row[i] as f64 * g * row[j] as f64;
                }
            }
        }
        (num / den).sqrt()
    }

    fn opts(gram: Option<&RowGram>, prune: f32, weighted: bool, refit: bool) -> EncodeOptions<'_> {
        EncodeOptions { prune, gram, weighted, refit }
    }

    #[test]
    fn plain_options_reproduce_encode() {
        let (rows, len) = (12, 45);
        let w = weights(rows, len, 1);
        for bits in [2u8, 4, 8] {
            let a = encode_with(&w, rows, bits, &EncodeOptions::default());
            let b = encode(&w, rows, bits);
            assert_eq!(a.data, b.data);
            assert_eq!(a.out_error, None);
            // The generic fits equal the plain candidates without pruning or weights.
            assert_eq!(fit_per_tensor(&w, bits, None, None).to_data(bits, rows), per_tensor(&w, rows, bits));
            assert_eq!(
                fit_shared_scaled(&w, rows, bits, None, None).to_data(bits, rows),
                shared_scaled(&w, rows, bits)
            );
            assert_eq!(
                fit_per_row(&w, rows, bits, None, None).unwrap().to_data(bits, rows),
                per_row(&w, rows, bits).unwrap()
            );
        }
    }

    #[test]
    fn unusable_grams_fall_back_to_plain() {
        let (rows, len) = (8, 33);
        let w = weights(rows, len, 2);
        let empty = RowGram::new(1, len);
        let mut dead = RowGram::new(1, len);
        dead.add_rows(&vec![0.0; 10 * len], 10);
        assert_eq!(dead.count, 10);
        let wrong = gram(len + 1, 50, 1);
        for g in [&empty, &dead, &wrong] {
            let e = encode_with(&w, rows, 3, &opts(Some(g), 0.0, true, true));
            assert_eq!(e.data, encode(&w, rows, 3).data);
            assert_eq!(e.out_error, None);
            let p = encode_with(&w, rows, 3, &opts(Some(g), 0.25, true, true));
            assert!(p.rel_error.is_finite() && p.out_error.is_none());
        }
    }

    #[test]
    fn out_error_matches_decoded_output_error() {
        let (rows, len) = (10, 37);
        let w = weights(rows, len, 3);
        // Every input live, and two thirds of them dead (the Gram's support path).
        for (live, g) in [("all", gram(len, 200, 4)), ("a third", gram_with_dead_inputs(len, 200, 4))] {
            for bits in [1u8, 3, 5, 8] {
                for (prune, weighted, refit) in
                    [(0.0, false, false), (0.3, true, false), (0.0, true, true), (0.2, true, true)]
                {
                    let e = encode_with(&w, rows, bits, &opts(Some(&g), prune, weighted, refit));
                    let want = decoded_out_error(&w, rows, &e.data, &g);
                    let got = e.out_error.unwrap();
                    assert!(
                        (got - want).abs() <= 1e-4 * want.max(1e-9),
                        "{live} inputs live, bits={bits}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn data_aware_fitting_lowers_output_error() {
        let (rows, len) = (32, 96);
        let w = weights(rows, len, 5);
        let g = gram(len, 400, 6);
        for bits in [2u8, 3, 4] {
            let err = |weighted, refit| {
                encode_with(&w, rows, bits, &opts(Some(&g), 0.0, weighted, refit)).out_error.unwrap()
            };
            let (plain, weighted, refit) = (err(false, false), err(true, false), err(true, true));
            eprintln!("bits {bits}: plain {plain:.4} weighted {weighted:.4} weighted+refit {refit:.4}");
            assert!(weighted < plain, "bits={bits}: weighted {weighted} vs plain {plain}");
            assert!(refit < 0.9 * weighted, "bits={bits}: refit {refit} vs weighted {weighted}");
        }
    }

    #[test]
    fn refit_never_increases_output_error() {
        let (rows, len) = (9, 41);
        let w = weights(rows, len, 7);
        for (samples, seed, dead) in [(300, 8, false), (20, 9, false), (300, 12, true)] {
            // 20 samples < 41 inputs: a singular Gram; `dead`: two thirds of the inputs never
            // carry a value.
            let g = if dead { gram_with_dead_inputs(len, samples, seed) } else { gram(len, samples, seed) };
            let obj = Objective::new(&g, &w, rows).unwrap();
            for bits in 1..=8u8 {
                for prune in [0.0, 0.4] {
                    let mask = prune::mask(&w, prune, None);
                    let pruned = mask.as_deref();
                    let mut fits = vec![
                        fit_per_tensor(&w, bits, None, pruned),
                        fit_shared_scaled(&w, rows, bits, None, pruned),
                    ];
                    fits.extend(fit_per_row(&w, rows, bits, None, pruned));
                    for fit in fits {
                        let refine = |refit| Refine { w: &w, row_len: len, obj: &obj, pruned, refit };
                        let before = refine(false).fit(&mut fit.clone(), rows, ALTERNATIONS);
                        let mut refitted = fit.clone();
                        let after = refine(true).fit(&mut refitted, rows, ALTERNATIONS);
                        assert!(
                            after <= before * (1.0 + 1e-12),
                            "{:?} bits={bits}: {after} > {before}",
                            fit.kind
                        );
                        let data = refitted.to_data(bits, rows);
                        let decoded = decoded_out_error(&w, rows, &data, &g);
                        let rel = obj.relative(after);
                        assert!(
                            (rel - decoded).abs() <= 1e-4 * decoded.max(1e-9),
                            "{:?} bits={bits} prune={prune} samples={samples}: {rel} vs {decoded}",
                            fit.kind
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn gram_support_fits_as_the_whole_gram_does() {
        // Dead inputs leave the Gram sweeps; the same Gram with a diagonal far below rounding at
        // the dead positions takes the dense path. Both must fit the same codebooks.
        let (rows, len) = (6, 39);
        let w = weights(rows, len, 13);
        let sparse = gram_with_dead_inputs(len, 150, 14);
        let mut dense = sparse.clone();
        for j in (0..len).filter(|j| j % 3 != 1) {
            dense.sums[j * len + j] = 1e-200;
        }
        let (a, b) = (Objective::new(&sparse, &w, rows).unwrap(), Objective::new(&dense, &w, rows).unwrap());
        assert_eq!((a.support_sizes(), b.support_sizes()), (vec![13], vec![39]));
        for bits in [2u8, 4] {
            let fits = [fit_per_tensor(&w, bits, None, None), fit_shared_scaled(&w, rows, bits, None, None)];
            for fit in fits.into_iter().chain(fit_per_row(&w, rows, bits, None, None)) {
                let run = |obj| {
                    let mut f = fit.clone();
                    let e =
                        Refine { w: &w, row_len: len, obj, pruned: None, refit: true }.fit(&mut f, rows, 3);
                    (f, e)
                };
                let ((fa, ea), (fb, eb)) = (run(&a), run(&b));
                assert_eq!(fa.idx, fb.idx, "{:?} bits={bits}", fit.kind);
                assert_eq!(fa.books, fb.books, "{:?} bits={bits}", fit.kind);
                assert!((ea - eb).abs() <= 1e-12 * eb, "{:?} bits={bits}: {ea} vs {eb}", fit.kind);
            }
        }
    }

    #[test]
    fn pruned_weights_decode_to_exact_zero_in_every_kind() {
        let (rows, len) = (7, 29);
        let w = weights(rows, len, 10);
        let g = gram(len, 100, 11);
        let obj = Objective::new(&g, &w, rows).unwrap();
        for bits in 1..=8u8 {
            for frac in [0.1f32, 0.5, 0.9] {
                let want = (frac as f64 * w.len() as f64).round() as usize;
                let mask = prune::mask(&w, frac, None).unwrap();
                let mut fits = vec![
                    fit_per_tensor(&w, bits, None, Some(&mask)),
                    fit_shared_scaled(&w, rows, bits, None, Some(&mask)),
                ];
                fits.push(fit_per_row(&w, rows, bits, None, Some(&mask)).unwrap());
                for mut fit in fits {
                    Refine { w: &w, row_len: len, obj: &obj, pruned: Some(&mask), refit: true }.fit(
                        &mut fit,
                        rows,
                        ALTERNATIONS,
                    );
                    let data = fit.to_data(bits, rows);
                    let mut out = vec![0.0f32; len];
                    let mut zeros = 0;
                    for r in 0..rows {
                        data.view().decode_row(rows, r, &mut out);
                        for j in 0..len {
                            if mask[r * len + j] {
                                assert_eq!(out[j].to_bits(), 0, "{:?} bits={bits} frac={frac}", fit.kind);
                            }
                            zeros += (out[j] == 0.0) as usize;
                        }
                    }
                    assert!(zeros >= want, "{:?} bits={bits}: {zeros} zeros < {want}", fit.kind);
                }
            }
            // Through the selection too, with and without a gram.
            for gram in [None, Some(&g)] {
                let e = encode_with(&w, rows, bits, &opts(gram, 0.5, true, true));
                let mut out = vec![0.0f32; len];
                let mut zeros = 0;
                for r in 0..rows {
                    e.data.view().decode_row(rows, r, &mut out);
                    zeros += out.iter().filter(|&&v| v == 0.0).count();
                }
                assert!(zeros >= w.len() / 2, "bits={bits}: {zeros}");
            }
        }
    }

    #[test]
    fn every_bit_width_and_odd_row_length_encodes_validly() {
        let (rows, len) = (5, 53);
        let w = weights(rows, len, 12);
        let g = gram(len, 150, 13);
        let mut last = f64::INFINITY;
        for bits in 1..=8u8 {
            let e = encode_with(&w, rows, bits, &opts(Some(&g), 0.0, true, true));
            let TensorData::Codebook(cb) = &e.data else { panic!("codebook expected") };
            assert_eq!((cb.bits, cb.rows, cb.row_len), (bits, rows, len));
            assert!(cb.entries <= 1 << bits);
            let view = e.data.view();
            let TensorView::Codebook(v) = view else { unreachable!() };
            for r in 0..rows {
                for i in 0..len {
                    assert!(CodebookView::index_at(v.row_indices(r), bits, i) < cb.entries);
                }
            }
            let out = e.out_error.unwrap();
            assert!(out.is_finite() && out <= last * 1.2 + 1e-9, "bits={bits}: {out} after {last}");
            last = out;
        }
        assert!(last < 0.01, "{last}");
    }

    #[test]
    fn encoding_is_deterministic() {
        let (rows, len) = (16, 40);
        let w = weights(rows, len, 14);
        let g = gram(len, 120, 15);
        for o in
            [opts(Some(&g), 0.3, true, true), opts(None, 0.3, false, false), opts(Some(&g), 0.0, false, true)]
        {
            let (a, b) = (encode_with(&w, rows, 4, &o), encode_with(&w, rows, 4, &o));
            assert_eq!(a.data, b.data);
            assert_eq!(a.out_error.map(f64::to_bits), b.out_error.map(f64::to_bits));
        }
    }

    #[test]
    fn entropy_estimate_rewards_skewed_indices() {
        let (rows, len) = (16, 64);
        let w = weights(rows, len, 16);
        let dense = encode_with(&w, rows, 4, &EncodeOptions::default()).data;
        let sparse = encode_with(&w, rows, 4, &opts(None, 0.9, false, false)).data;
        let packed = |d: &TensorData| match d {
            TensorData::Codebook(c) => c.indices.len(),
            _ => unreachable!(),
        };
        let (de, se) = (index_entropy_bytes(&dense), index_entropy_bytes(&sparse));
        assert!(de <= packed(&dense) && se <= packed(&sparse));
        // 90% zeros: a bit or so per index instead of 4.
        assert!(se * 2 < packed(&sparse), "{se} vs {}", packed(&sparse));
        assert!(se < de);
        assert_eq!(index_entropy_bytes(&TensorData::F32(vec![1.0])), 0);
        // Huffman lengths: counts 5,1,1,1 → 1,2,3,3 (or an equivalent optimum of cost 5+2+3+3).
        let l = huffman_lengths(&[5, 1, 1, 1, 0]);
        assert_eq!(l[4], 0);
        assert_eq!(5 * l[0] + l[1] + l[2] + l[3], 13);
        assert_eq!(huffman_lengths(&[0, 7]), vec![0, 1]);
    }
}

#[cfg(test)]
#[path = "codebook_bench.rs"]
mod bench;
