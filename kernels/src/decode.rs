//! Row-at-a-time weight decoding: the only way kernels read weights.

use std::ops::Range;

use pith_format::ir::{row_stride, CodebookKind};
use pith_format::{CentroidsView, CodebookView, TensorView};

use crate::arch::DecodePacked;
use crate::KernelError;

/// A weight tensor seen as `rows` rows of `row_len` weights, validated once so that decoding any
/// row in range cannot fail.
///
/// Decoding is equivalent to [`TensorView::decode_row`] (and so to `CodebookView::decode_row`, the
/// reference semantics) but faster for codebooks: the row's codebook is widened to an f32 lookup
/// table with the row scale folded in, and indices are pulled from a bit accumulator.
#[derive(Debug, Clone, Copy)]
pub struct WeightRows<'a> {
    view: TensorView<'a>,
    rows: usize,
    row_len: usize,
    /// How 4-bit rows are widened ([`crate::Isa::decode_nibbles`]; the scalar path's by default).
    nibbles: Nibbles,
    /// How f16 codebooks are widened into tables ([`crate::Isa::widen_f16`]).
    widen: Widen,
    /// How 1-3- and 5-7-bit rows are widened when the path has a vector decoder
    /// ([`crate::Isa::decode_packed`]; else the portable eight-at-a-time loop).
    packed: Option<DecodePacked>,
    /// How decoded rows are multiplied by the column factors ([`crate::Isa::mul`]).
    mul: fn(&mut [f32], &[f32]),
    /// Factors every decoded row is multiplied by, column by column (one per input channel of a
    /// 1×1 layer: a squeeze-excite gate folded into the layer after it).
    column_scales: Option<&'a [f32]>,
}

/// A path's [`crate::Isa::decode_nibbles`].
type Nibbles = fn(&[u8], &[f32; 16], &mut [f32]);
/// A path's [`crate::Isa::widen_f16`].
type Widen = fn(&[half::f16], &mut [f32]);

/// Fewest indices for which a row goes through [`crate::Isa::decode_packed`]: a call loads its
/// table into registers, which shorter rows (depthwise filters of 9-25 weights) do not repay.
const VECTOR_DECODE_MIN: usize = 32;

/// Fewest short rows for which [`WeightRows::decode_rows`] builds its table of byte pairs (512
/// floats to fill, so not for a row or two). With it, 3×3 and 5×5 depthwise layers over 7×7
/// took 8-18 % less (Zen 3: 960 channels 3×3 0.038 -> 0.031 ms, 576 channels 5×5 0.052 -> 0.048).
const PAIR_TABLE_ROWS: usize = 8;

impl<'a> WeightRows<'a> {
    /// Views `view` as `rows` × `row_len`; errors if the sizes or the codebook layout do not fit.
    pub fn new(view: TensorView<'a>, rows: usize, row_len: usize) -> Result<Self, KernelError> {
        let want = rows * row_len;
        let bad = |msg: String| Err(KernelError::Weight(msg));
        match view {
            TensorView::F32(d) if d.len() != want => {
                return bad(format!("{} f32 values, expected {rows}x{row_len}", d.len()))
            }
            TensorView::F16(d) if d.len() != want => {
                return bad(format!("{} f16 values, expected {rows}x{row_len}", d.len()))
            }
            TensorView::I64(d) if d.len() != want => {
                return bad(format!("{} i64 values, expected {rows}x{row_len}", d.len()))
            }
            TensorView::Codebook(c) => check_codebook(&c, rows, row_len)?,
            _ => {}
        }
        let scalar = &crate::arch::scalar::ISA;
        Ok(WeightRows {
            view,
            rows,
            row_len,
            nibbles: scalar.decode_nibbles,
            widen: scalar.widen_f16,
            packed: scalar.decode_packed,
            mul: scalar.mul,
            column_scales: None,
        })
    }

    /// These rows, with 4-bit codebook rows widened by `isa`'s [`crate::Isa::decode_nibbles`],
    /// other widths by its [`crate::Isa::decode_packed`] (if it has one), f16 codebooks by its
    /// [`crate::Isa::widen_f16`] and column factors applied by its [`crate::Isa::mul`].
    pub fn with_isa(self, isa: &crate::Isa) -> Self {
        WeightRows {
            nibbles: isa.decode_nibbles,
            widen: isa.widen_f16,
            packed: isa.decode_packed,
            mul: isa.mul,
            ..self
        }
    }

    /// These rows with column `c` of every decoded row multiplied by `scales[c]` (the decoded
    /// weight times the factor, one product each): how a 1×1 layer takes a per-input-channel
    /// factor of its input (`W (s ⊙ x) = (W diag(s)) x`) without a pass over the input. Errors
    /// unless there is one factor per column. Packed and borrowed access
    /// ([`WeightRows::dense_row`], [`WeightRows::packed_row`]) then returns `None`: only decoding
    /// applies the factors.
    pub fn with_column_scales(self, scales: &'a [f32]) -> Result<Self, KernelError> {
        if scales.len() != self.row_len {
            return Err(KernelError::Weight(format!(
                "{} column factors for rows of {} weights",
                scales.len(),
                self.row_len
            )));
        }
        Ok(WeightRows { column_scales: Some(scales), ..self })
    }

    /// The factors of [`WeightRows::with_column_scales`], if any.
    pub(crate) fn column_scales(&self) -> Option<&'a [f32]> {
        self.column_scales
    }

    /// These rows without column factors (what the packed indices alone encode).
    pub(crate) fn unscaled(self) -> Self {
        WeightRows { column_scales: None, ..self }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Weights per row.
    pub fn row_len(&self) -> usize {
        self.row_len
    }

    /// Row `r` of an f32 tensor, borrowed; `None` for other encodings.
    pub fn dense_row(&self, r: usize) -> Option<&'a [f32]> {
        if self.column_scales.is_some() {
            return None;
        }
        match self.view {
            TensorView::F32(d) => d.get(r * self.row_len..(r + 1) * self.row_len),
            _ => None,
        }
    }

    /// Rows `rows` of an f32 tensor, borrowed (contiguous, `row_len` values each); `None` for
    /// other encodings.
    pub fn dense_rows(&self, rows: Range<usize>) -> Option<&'a [f32]> {
        if self.column_scales.is_some() || rows.end > self.rows {
            return None;
        }
        match self.view {
            TensorView::F32(d) => d.get(rows.start * self.row_len..rows.end * self.row_len),
            _ => None,
        }
    }

    /// For a codebook tensor: fills `lut` with row `r`'s decoded entries (row scale folded in,
    /// unused slots below `2^bits` zero; later slots untouched, as no index reaches them) and
    /// returns the row's packed indices and their width, for [`crate::arch::Isa::dot_packed`].
    /// `None` for other encodings.
    pub fn packed_row(&self, r: usize, lut: &mut [f32; 256]) -> Option<(&'a [u8], u8)> {
        if self.column_scales.is_some() {
            return None;
        }
        match self.view {
            TensorView::Codebook(c) if r < self.rows => {
                fill_lut(&c, r, lut, self.widen);
                let bytes = &c.indices[r * c.row_stride..(r + 1) * c.row_stride];
                Some((bytes, c.bits))
            }
            _ => None,
        }
    }

    /// Decodes rows `rows` into `out`, one after another (`row_len` values each): the same
    /// values as [`WeightRows::decode`] row by row, but a codebook shared by every row (per
    /// tensor, or scaled per row) is widened into its table once, not once per row. Depthwise
    /// filters are rows of 9-25 weights, where the table took most of a row's decoding.
    ///
    /// # Panics
    /// If `rows` reaches past the tensor's rows or `out` holds fewer than `rows.len() * row_len`
    /// values (caller bugs, as for `decode`).
    pub fn decode_rows(&self, rows: Range<usize>, out: &mut [f32]) {
        let n = self.row_len;
        assert!(rows.end <= self.rows, "rows {rows:?} of {} rows", self.rows);
        let out = &mut out[..rows.len() * n];
        self.unscaled().decode_rows_unscaled(rows, out);
        if let Some(scales) = self.column_scales {
            out.chunks_exact_mut(n.max(1)).for_each(|row| (self.mul)(row, scales));
        }
    }

    /// Rows `rows` as pair rows of bf16 (see [`crate::arch::FusedBf16`]), row `i` in
    /// `out[i * row_len..]`: 4-bit rows of a shared codebook (per tensor, or scaled per row)
    /// decoded straight through the row's table rounded to bf16, others decoded in f32 and then
    /// rounded. Either way each weight is its f32 decoding rounded to nearest.
    ///
    /// # Panics
    /// As [`WeightRows::decode_rows`].
    pub(crate) fn decode_rows_bf16(
        &self,
        rows: Range<usize>,
        out: &mut [f32],
        bf16: &crate::arch::FusedBf16,
    ) {
        let n = self.row_len;
        assert!(rows.end <= self.rows, "rows {rows:?} of {} rows", self.rows);
        let out = &mut out[..rows.len() * n];
        let mut lut = [0.0f32; 256];
        match self.packed_tables(&mut lut) {
            Some((4, PackedTables::Shared(scales))) if n > 0 => {
                let nibble_lut: [f32; 16] = std::array::from_fn(|i| lut[i]);
                for (r, row) in rows.zip(out.chunks_exact_mut(n)) {
                    // The products `decode_rows` makes, centroid times the row's scale.
                    let table = row_table(&nibble_lut, scales, r);
                    (bf16.decode_nibbles)(self.packed_indices(r), &table, row);
                }
            }
            _ => {
                self.decode_rows(rows, out);
                (bf16.pairs_in_place)(out, n);
            }
        }
    }

    /// [`WeightRows::decode_rows`] without the column factors.
    fn decode_rows_unscaled(&self, rows: Range<usize>, out: &mut [f32]) {
        let n = self.row_len;
        let mut lut = [0.0f32; 256];
        let Some((bits, PackedTables::Shared(scales))) = self.packed_tables(&mut lut).filter(|_| n > 0)
        else {
            match self.view {
                TensorView::Codebook(c) if c.kind == CodebookKind::PerRow && c.bits == 4 && n >= 32 => {
                    self.decode_nibble_rows(&c, rows, out)
                }
                _ => rows.zip(out.chunks_exact_mut(n.max(1))).for_each(|(r, row)| self.decode(r, row)),
            }
            return;
        };
        let nibble_lut: [f32; 16] = std::array::from_fn(|i| lut[i]);
        if bits == 4 && n < 32 && rows.len() >= PAIR_TABLE_ROWS {
            // Short rows (depthwise filters of 9-25 weights), enough of them to build a table
            // of both weights of every byte: one 8-byte read per byte instead of two lookups,
            // and the row's scale applied as the pair is stored (the same products).
            let pairs: [[f32; 2]; 256] = std::array::from_fn(|b| [nibble_lut[b & 15], nibble_lut[b >> 4]]);
            for (r, row) in rows.zip(out.chunks_exact_mut(n)) {
                let scale = scales.map_or(1.0, |s| s[r]);
                let bytes = self.packed_indices(r);
                let mut two = row.chunks_exact_mut(2);
                for (dst, &b) in (&mut two).zip(bytes) {
                    let [lo, hi] = pairs[b as usize];
                    dst[0] = lo * scale;
                    dst[1] = hi * scale;
                }
                if let [last] = two.into_remainder() {
                    *last = nibble_lut[(bytes[n / 2] & 15) as usize] * scale;
                }
            }
            return;
        }
        for (r, row) in rows.zip(out.chunks_exact_mut(n)) {
            // The path's vector nibble decoder pays from one 32-index block on, with the row's
            // scale in its table (each weight is still one product, centroid times scale);
            // shorter rows (depthwise filters) decode faster inline.
            match bits {
                4 if n >= 32 => {
                    let table = row_table(&nibble_lut, scales, r);
                    (self.nibbles)(self.packed_indices(r), &table, row)
                }
                bits => {
                    decode_indices(bits, self.packed_indices(r), &lut, row, self.packed);
                    if let Some(scales) = scales {
                        row.iter_mut().for_each(|w| *w *= scales[r]);
                    }
                }
            }
        }
    }

    /// Rows `rows` of a 4-bit codebook with a table per row, through the path's vector nibble
    /// decoder, each row's table widened straight into place (as [`WeightRows::decode`] does
    /// row by row, with its checks and table fill per call: 8 % of a 160 -> 960 layer over 7×7).
    fn decode_nibble_rows(&self, c: &CodebookView<'_>, rows: Range<usize>, out: &mut [f32]) {
        let mut table = [0.0f32; 16];
        let entries = c.entries.min(16);
        for (r, row) in rows.zip(out.chunks_exact_mut(self.row_len)) {
            let base = r * c.entries;
            match c.centroids {
                CentroidsView::F16(v) => (self.widen)(&v[base..base + entries], &mut table[..entries]),
                CentroidsView::F32(v) => table[..entries].copy_from_slice(&v[base..base + entries]),
            }
            (self.nibbles)(c.row_indices(r), &table, row);
        }
    }

    /// For a codebook tensor: its index width and how a GEMV finds each row's table. When every
    /// row shares one codebook (per tensor, or scaled per row), `lut` receives it unscaled (as
    /// [`WeightRows::packed_row`] fills it) and the rows' scales come back, if any, to multiply
    /// each row's sum: no table is built per row. `None` for other encodings.
    /// `None` too with column factors (see [`WeightRows::unscaled`]).
    pub(crate) fn packed_tables(&self, lut: &mut [f32; 256]) -> Option<(u8, PackedTables<'a>)> {
        let TensorView::Codebook(c) = self.view else { return None };
        if self.column_scales.is_some() {
            return None;
        }
        let tables = match c.kind {
            CodebookKind::PerRow => PackedTables::PerRow,
            CodebookKind::PerTensor => PackedTables::Shared(None),
            CodebookKind::SharedScaled => PackedTables::Shared(Some(&c.scales[..self.rows])),
        };
        if let PackedTables::Shared(_) = tables {
            fill_lut_scaled(&c, 0, 1.0, lut, self.widen);
        }
        Some((c.bits, tables))
    }

    /// For a 4-bit tensor with a codebook of at most 16 f16 centroids per row and no column
    /// factors: every row's centroids (row `r`'s at `r * entries..`) and `entries`, which
    /// [`crate::arch::Isa::dot_nibble_rows_f16`] reads as they are stored. `None` otherwise.
    pub(crate) fn nibble_centroids_f16(&self) -> Option<(&'a [half::f16], usize)> {
        match (self.view, self.column_scales) {
            (TensorView::Codebook(c), None)
                if c.kind == CodebookKind::PerRow && c.bits == 4 && (1..=16).contains(&c.entries) =>
            {
                match c.centroids {
                    CentroidsView::F16(v) if v.len() >= self.rows * c.entries => Some((v, c.entries)),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Row `r`'s packed indices (empty unless this is a codebook tensor).
    pub(crate) fn packed_indices(&self, r: usize) -> &'a [u8] {
        match self.view {
            TensorView::Codebook(c) if r < self.rows => c.row_indices(r),
            _ => &[],
        }
    }

    /// For a 4-bit codebook tensor: its tables as the int8 GEMV reads them (from `prepared`,
    /// when given, which must have been made from these rows); `None` otherwise.
    pub(crate) fn nibble_tables(&self, prepared: Option<&'a Int8RowTables>) -> Option<NibbleTables<'a>> {
        if self.column_scales.is_some() {
            return None;
        }
        match self.view {
            TensorView::Codebook(c) if c.bits == 4 => {
                let shared = (c.kind != CodebookKind::PerRow && prepared.is_none()).then(|| {
                    let mut lut = [0.0f32; 16];
                    fill_lut_scaled(&c, 0, 1.0, &mut lut, self.widen);
                    s8_table(&lut)
                });
                Some(NibbleTables { view: c, shared, prepared, widen: self.widen })
            }
            _ => None,
        }
    }

    /// Decodes columns `cols` of row `r` into `out[..cols.len()]`: the values
    /// [`WeightRows::decode`] writes at those columns. `cols.start` must be a multiple of 8,
    /// where a whole byte of indices starts at any width.
    ///
    /// # Panics
    /// If `r >= rows`, `cols` reaches past the row or does not start at a multiple of 8, or
    /// `out` is shorter than `cols` (caller bugs).
    pub fn decode_columns(&self, r: usize, cols: Range<usize>, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} out of {} rows", self.rows);
        assert!(
            cols.end <= self.row_len && cols.start.is_multiple_of(8),
            "columns {cols:?} of {}",
            self.row_len
        );
        let n = self.row_len;
        let out = &mut out[..cols.len()];
        let at = r * n + cols.start;
        match self.view {
            TensorView::F32(d) => out.copy_from_slice(&d[at..at + cols.len()]),
            TensorView::F16(d) => out.iter_mut().zip(&d[at..]).for_each(|(o, v)| *o = v.to_f32()),
            TensorView::I64(d) => out.iter_mut().zip(&d[at..]).for_each(|(o, v)| *o = *v as f32),
            TensorView::Codebook(c) => {
                let bits = c.bits as usize;
                let first = cols.start * bits / 8;
                let bytes = &c.row_indices(r)[first..first + (cols.len() * bits).div_ceil(8)];
                decode_codebook_indices(&c, r, bytes, out, self.nibbles, self.widen, self.packed)
            }
        }
        if let Some(scales) = self.column_scales {
            (self.mul)(out, &scales[cols]);
        }
    }

    /// Decodes the weights of row `r` at columns `cols` (each below `row_len`, which the caller
    /// guarantees: checking every column per row took half the time) into `out[..cols.len()]`:
    /// the values [`WeightRows::decode`] writes there, without decoding the rest of the row (a
    /// convolution's taps that read only padding are never decoded).
    ///
    /// # Panics
    /// If `r >= rows` or `out` is shorter than `cols`; a column past the row may give any value
    /// or panic (caller bugs).
    pub(crate) fn decode_gather(&self, r: usize, cols: &[usize], out: &mut [f32]) {
        assert!(r < self.rows, "row {r} out of {} rows", self.rows);
        let n = self.row_len;
        let out = &mut out[..cols.len()];
        match self.view {
            TensorView::F32(d) => {
                let row = &d[r * n..(r + 1) * n];
                out.iter_mut().zip(cols).for_each(|(o, &c)| *o = row[c]);
            }
            TensorView::F16(d) => {
                let row = &d[r * n..(r + 1) * n];
                out.iter_mut().zip(cols).for_each(|(o, &c)| *o = row[c].to_f32());
            }
            TensorView::I64(d) => {
                let row = &d[r * n..(r + 1) * n];
                out.iter_mut().zip(cols).for_each(|(o, &c)| *o = row[c] as f32);
            }
            TensorView::Codebook(c) => {
                debug_assert!(cols.iter().all(|&col| col < n), "a column past the row of {n}");
                let mut lut = [0.0f32; 256];
                fill_lut(&c, r, &mut lut, self.widen);
                let (bytes, bits) = (c.row_indices(r), c.bits as usize);
                match bits {
                    // A byte per index, or two per byte: no bit arithmetic across bytes.
                    8 => out.iter_mut().zip(cols).for_each(|(o, &col)| *o = lut[usize::from(bytes[col])]),
                    4 => out.iter_mut().zip(cols).for_each(|(o, &col)| {
                        *o = lut[usize::from(bytes[col / 2] >> (col % 2 * 4) & 15)];
                    }),
                    _ => {
                        let mask = (1u16 << bits) - 1;
                        for (o, &col) in out.iter_mut().zip(cols) {
                            // The index's bits start in byte `bit / 8` and may run into the next:
                            // one two-byte read, except for a last byte with none after it.
                            let (bit, at) = (col * bits, col * bits / 8);
                            let pair = match bytes.get(at..at + 2) {
                                Some(two) => u16::from_le_bytes([two[0], two[1]]),
                                None => u16::from(bytes[at]),
                            };
                            *o = lut[usize::from(pair >> (bit % 8) & mask)];
                        }
                    }
                }
            }
        }
        if let Some(scales) = self.column_scales {
            out.iter_mut().zip(cols).for_each(|(o, &c)| *o *= scales[c]);
        }
    }

    /// [`WeightRows::decode_gather`] for strictly ascending `cols`: with a vector decoder for
    /// the width ([`crate::Isa::decode_packed`]), the stretches of the row that hold the columns
    /// are decoded whole, 1024 columns at a time, and the columns picked from them. A 5-bit
    /// 64×1024×3×3 layer over a one-row map, two thirds of whose taps read padding, had gathered
    /// its live weights index by index (see the forty-fifth session in `docs/kernels.md`).
    ///
    /// # Panics
    /// As [`WeightRows::decode_gather`]; columns out of order may give any values or panic.
    pub(crate) fn decode_ascending(&self, r: usize, cols: &[usize], out: &mut [f32]) {
        const CHUNK: usize = 1024;
        let (TensorView::Codebook(c), Some(vector)) = (self.view, self.packed) else {
            return self.decode_gather(r, cols, out);
        };
        if matches!(c.bits, 4 | 8) || cols.len() < VECTOR_DECODE_MIN {
            return self.decode_gather(r, cols, out);
        }
        assert!(r < self.rows, "row {r} out of {} rows", self.rows);
        debug_assert!(cols.windows(2).all(|w| w[0] < w[1]), "columns not ascending");
        let (n, bits) = (self.row_len, c.bits as usize);
        let out = &mut out[..cols.len()];
        let mut lut = [0.0f32; 128];
        fill_lut(&c, r, &mut lut, self.widen);
        let bytes = c.row_indices(r);
        let mut chunk = [0.0f32; CHUNK];
        let mut i = 0;
        while i < cols.len() {
            // A stretch from a multiple of 8 columns, where a whole byte of indices starts.
            let start = cols[i] / 8 * 8;
            let len = CHUNK.min(n - start);
            vector(&bytes[start * bits / 8..], c.bits, &lut, &mut chunk[..len]);
            while i < cols.len() && cols[i] < start + len {
                out[i] = chunk[cols[i] - start];
                i += 1;
            }
        }
        if let Some(scales) = self.column_scales {
            out.iter_mut().zip(cols).for_each(|(o, &c)| *o *= scales[c]);
        }
    }

    /// Decodes row `r` into `out[..row_len]`.
    ///
    /// # Panics
    /// If `r >= rows` or `out.len() < row_len` (caller bugs; kernels size both from the same params).
    pub fn decode(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} out of {} rows", self.rows);
        let n = self.row_len;
        let out = &mut out[..n];
        match self.view {
            TensorView::F32(d) => out.copy_from_slice(&d[r * n..(r + 1) * n]),
            TensorView::F16(d) => {
                for (o, v) in out.iter_mut().zip(&d[r * n..(r + 1) * n]) {
                    *o = v.to_f32();
                }
            }
            TensorView::I64(d) => {
                for (o, v) in out.iter_mut().zip(&d[r * n..(r + 1) * n]) {
                    *o = *v as f32;
                }
            }
            TensorView::Codebook(c) => {
                decode_codebook_indices(&c, r, c.row_indices(r), out, self.nibbles, self.widen, self.packed)
            }
        }
        if let Some(scales) = self.column_scales {
            (self.mul)(out, scales);
        }
    }
}

/// How the rows of a packed GEMV find their tables ([`WeightRows::packed_tables`]).
#[derive(Debug, Clone, Copy)]
pub(crate) enum PackedTables<'a> {
    /// One codebook for every row; row `r`'s sum is multiplied by `scales[r]` when given.
    Shared(Option<&'a [f32]>),
    /// A codebook per row ([`WeightRows::packed_row`] fills each row's table).
    PerRow,
}

/// A 4-bit codebook tensor's entries rounded to s8, one table per row, for the int8 GEMV
/// ([`crate::arch::int8::Int8Kernels::dot_nibbles`]). A shared codebook (per tensor, or scaled
/// per row) is rounded once for every row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NibbleTables<'a> {
    view: CodebookView<'a>,
    /// The shared codebook's table and step (scale 1), if it is shared.
    shared: Option<([u8; 16], f32)>,
    /// Every row's table, rounded once for the session.
    prepared: Option<&'a Int8RowTables>,
    /// How f16 codebooks are widened.
    widen: Widen,
}

impl<'a> NibbleTables<'a> {
    /// Row `r`'s packed indices.
    pub(crate) fn indices(&self, r: usize) -> &'a [u8] {
        self.view.row_indices(r)
    }

    /// Row `r`'s table (each entry's s8 weight plus 128; unused entries 0 + 128) and the weight
    /// one s8 step stands for.
    pub(crate) fn row(&self, r: usize, table: &mut [u8; 16]) -> f32 {
        let c = &self.view;
        if let Some(p) = self.prepared {
            *table = p.tables[r];
            return p.steps[r];
        }
        match self.shared {
            Some((shared, step)) => {
                *table = shared;
                if c.kind == CodebookKind::SharedScaled {
                    step * c.scales[r]
                } else {
                    step
                }
            }
            None => {
                let mut lut = [0.0f32; 16];
                fill_lut(c, r, &mut lut, self.widen);
                let (t, step) = s8_table(&lut);
                *table = t;
                step
            }
        }
    }
}

/// A 4-bit codebook weight's per-row s8 tables for the int8 GEMV, rounded once (a session keeps
/// them with the layer, as it keeps [`crate::Int8Filters`]): without them every call rounds
/// every row's codebook again, which for per-row codebooks (a table of 16 f16 centroids per row)
/// cost more than the dot products of MobileNetV3-Small's squeeze-excite layers. 20 bytes per
/// row. Used by [`crate::Kernels::gemm_int8`]; the results are the same bits as without them.
#[derive(Debug, Clone)]
pub struct Int8RowTables {
    /// Each row's table: s8 weights plus 128, one per 4-bit index.
    tables: Vec<[u8; 16]>,
    /// The weight one s8 step of each row's table stands for.
    steps: Vec<f32>,
}

impl Int8RowTables {
    /// The tables of `view` seen as `rows` × `row_len`: `Ok(None)` unless it is a 4-bit codebook
    /// (the only width the int8 GEMV takes); errors if the view does not fit the shape.
    pub fn new(view: &TensorView<'_>, rows: usize, row_len: usize) -> Result<Option<Self>, KernelError> {
        let Some(tables) = WeightRows::new(*view, rows, row_len)?.nibble_tables(None) else {
            return Ok(None);
        };
        let mut out = Int8RowTables { tables: vec![[0; 16]; rows], steps: vec![0.0; rows] };
        for (r, (table, step)) in out.tables.iter_mut().zip(&mut out.steps).enumerate() {
            *step = tables.row(r, table);
        }
        Ok(Some(out))
    }

    /// Rows the tables were made for.
    pub fn rows(&self) -> usize {
        self.tables.len()
    }
}

/// `lut` rounded to s8 with one step (its largest magnitude over 127), each entry stored plus 128.
fn s8_table(lut: &[f32; 16]) -> ([u8; 16], f32) {
    let max = lut.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    // An all-zero table gets inv = inf and 0 * inf = NaN, which `as` turns into 0.
    let inv = 127.0 / max;
    // Adding and taking away 1.5 * 2^23 rounds |x| <= 127 to an integer (half to even) without
    // the library call `round` is on baseline x86-64: it took 6 % of MobileNetV3-Small's time,
    // whose squeeze-excite GEMVs build a table per row.
    const MAGIC: f32 = 12_582_912.0;
    (std::array::from_fn(|v| ((((lut[v] * inv) + MAGIC) - MAGIC) as i32 + 128) as u8), max / 127.0)
}

/// Rejects codebook views whose slices are too short for `rows` × `row_len`, so decoding never
/// indexes out of bounds. Indices at or above `entries` decode as 0 (see [`decode_codebook_indices`]).
fn check_codebook(c: &CodebookView<'_>, rows: usize, row_len: usize) -> Result<(), KernelError> {
    let fail = |msg: String| Err(KernelError::Weight(msg));
    if c.rows != rows || c.row_len != row_len {
        return fail(format!("codebook is {}x{}, expected {rows}x{row_len}", c.rows, c.row_len));
    }
    if !(1..=8).contains(&c.bits) {
        return fail(format!("codebook index width {} is not in 1..=8", c.bits));
    }
    if c.row_stride != row_stride(row_len, c.bits) {
        return fail(format!("codebook row stride {} is wrong", c.row_stride));
    }
    if c.indices.len() < rows * c.row_stride {
        return fail(format!("codebook has only {} index bytes", c.indices.len()));
    }
    let centroids = match c.kind {
        CodebookKind::PerRow => rows * c.entries,
        _ => c.entries,
    };
    if c.entries == 0 || c.entries > 256 || c.centroids.len() < centroids {
        return fail(format!("codebook has {} centroids for {} entries", c.centroids.len(), c.entries));
    }
    if c.kind == CodebookKind::SharedScaled && c.scales.len() < rows {
        return fail(format!("codebook has {} scales for {rows} rows", c.scales.len()));
    }
    Ok(())
}

/// Row `r`'s 16 weights of a shared 4-bit codebook: each centroid times the row's scale, if the
/// rows have scales.
fn row_table(nibble_lut: &[f32; 16], scales: Option<&[f32]>, r: usize) -> [f32; 16] {
    scales.map_or(*nibble_lut, |s| nibble_lut.map(|c| c * s[r]))
}

/// Fast decode of indices `bytes` of codebook row `r` (a view checked by [`check_codebook`]; the
/// whole row's indices, or a byte-aligned part of them) into `out`, one weight per index: 4-bit
/// rows through `nibbles`, f16 codebooks widened by `widen`.
fn decode_codebook_indices(
    c: &CodebookView<'_>,
    r: usize,
    bytes: &[u8],
    out: &mut [f32],
    nibbles: Nibbles,
    widen: Widen,
    packed: Option<DecodePacked>,
) {
    // A table of at least 2^bits slots, so no index can fall outside it, sized to the width:
    // zeroing a 256-slot table for every row cost more than decoding a 9-weight depthwise row.
    match c.bits {
        4 => {
            let mut lut = [0.0f32; 16];
            fill_lut(c, r, &mut lut, widen);
            nibbles(bytes, &lut, out);
        }
        1..=3 => decode_with_lut::<16>(c, r, bytes, out, widen, packed),
        5 | 6 => decode_with_lut::<64>(c, r, bytes, out, widen, packed),
        _ => decode_with_lut::<256>(c, r, bytes, out, widen, packed),
    }
}

/// [`decode_codebook_indices`] through an `N`-slot table (`N >= 2^bits`).
#[inline(always)]
fn decode_with_lut<const N: usize>(
    c: &CodebookView<'_>,
    r: usize,
    bytes: &[u8],
    out: &mut [f32],
    widen: Widen,
    packed: Option<DecodePacked>,
) {
    let mut lut = [0.0f32; N];
    fill_lut(c, r, &mut lut, widen);
    decode_indices(c.bits, bytes, &lut, out, packed);
}

/// Row `r`'s codebook widened to f32 with its scale folded in, as many entries as `lut` holds;
/// slots from `entries` up to `2^bits` (all a `bits`-wide index can name) are zeroed, and later
/// ones left as they are: no reader looks past `2^bits`. This runs once per row of every codebook
/// layer, so it matters where rows are short: a squeeze-excite 144→576 conv over a 1×1 plane
/// (MobileNetV3) took 0.063–0.082 ms when every 4-bit table zeroed all 256 slots and widened its
/// f16 centroids one call each, 0.052–0.060 now (`pith bench --profile`, alternating builds).
/// f16 centroids are widened by `widen`.
fn fill_lut(c: &CodebookView<'_>, r: usize, lut: &mut [f32], widen: Widen) {
    let (base, scale) = match c.kind {
        CodebookKind::PerTensor => (0, 1.0),
        CodebookKind::PerRow => (r * c.entries, 1.0),
        CodebookKind::SharedScaled => (0, c.scales[r]),
    };
    fill_lut_scaled(c, base, scale, lut, widen)
}

/// [`fill_lut`] from the codebook at centroid `base`, times `scale`.
fn fill_lut_scaled(c: &CodebookView<'_>, base: usize, scale: f32, lut: &mut [f32], widen: Widen) {
    let reach = (1usize << c.bits.min(8)).min(lut.len());
    let used = c.entries.min(reach);
    lut[used..reach].fill(0.0);
    let table = &mut lut[..used];
    match c.centroids {
        CentroidsView::F32(v) => {
            for (t, &x) in table.iter_mut().zip(&v[base..base + c.entries]) {
                *t = x * scale;
            }
        }
        CentroidsView::F16(v) => {
            // One vector conversion of the whole table (the path's), not a call per entry.
            widen(&v[base..base + used], table);
            if scale != 1.0 {
                table.iter_mut().for_each(|t| *t *= scale);
            }
        }
    }
}

/// Decodes `out.len()` indices of width `bits`, packed LSB-first in `bytes`, through `lut`
/// (`N >= 2^bits` slots); rows of at least [`VECTOR_DECODE_MIN`] 1-3- or 5-7-bit indices through
/// `packed`, the path's vector decoder, when it has one.
#[inline(always)]
fn decode_indices<const N: usize>(
    bits: u8,
    bytes: &[u8],
    lut: &[f32; N],
    out: &mut [f32],
    packed: Option<DecodePacked>,
) {
    if let Some(vector) = packed.filter(|_| out.len() >= VECTOR_DECODE_MIN && !matches!(bits, 4 | 8)) {
        return vector(bytes, bits, lut, out);
    }
    match bits {
        8 => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = lut[b as usize];
            }
        }
        4 => {
            let mut it = out.chunks_exact_mut(2);
            for (pair, &b) in (&mut it).zip(bytes) {
                pair[0] = lut[(b & 15) as usize];
                pair[1] = lut[(b >> 4) as usize];
            }
            if let [last] = it.into_remainder() {
                *last = lut[(bytes[bytes.len() - 1] & 15) as usize];
            }
        }
        1 => decode_groups::<1, N>(bytes, lut, out),
        2 => decode_groups::<2, N>(bytes, lut, out),
        3 => decode_groups::<3, N>(bytes, lut, out),
        5 => decode_groups::<5, N>(bytes, lut, out),
        6 => decode_groups::<6, N>(bytes, lut, out),
        _ => decode_groups::<7, N>(bytes, lut, out),
    }
}

/// The portable decoder of [`crate::Isa::decode_packed`] at 7 bits ([`decode_groups`], eight
/// indices per word), for a vector path to fall back on where it is the faster (NEON, whose
/// 128-entry tables do not fit its registers).
///
/// # Panics
/// If `lut` holds fewer than 128 entries or `packed` fewer than `ceil(out.len() * 7 / 8)` bytes.
#[cfg(any(test, target_arch = "aarch64"))]
pub(crate) fn decode_7bit_words(packed: &[u8], lut: &[f32], out: &mut [f32]) {
    crate::arch::decode_packed_check(packed, 7, lut, out);
    decode_groups::<7, 128>(packed, lut[..128].try_into().expect("128 entries"), out);
}

/// [`decode_indices`] at `B` bits (1-7), eight indices at a time: eight `B`-bit indices fill
/// exactly `B` bytes, so each group of eight is one little-endian word read at byte `g * B`, its
/// indices shifts of it, with no per-index test for a byte to refill. Against the former
/// byte-by-byte bitstream loop this took the PP-OCRv3 recognizer's `auto` file (5-7-bit layers
/// over few pixels, whose time is decoding) from 12.7-12.9 to 11.3-11.4 ms, the time of its
/// plain 8-bit file (see the forty-fifth session in `docs/kernels.md`).
#[inline(always)]
fn decode_groups<const B: usize, const N: usize>(bytes: &[u8], lut: &[f32; N], out: &mut [f32]) {
    let mask = (1u64 << B) - 1;
    let tail_at = (out.len() / 8) * B;
    let mut groups = out.chunks_exact_mut(8);
    for (g, dst) in (&mut groups).enumerate() {
        let at = g * B;
        // Eight bytes from the group's first: its B bytes, then bytes the shifts never reach
        // (zeros past the end of `bytes`).
        let word = match bytes.get(at..at + 8) {
            Some(eight) => u64::from_le_bytes(eight.try_into().expect("8 bytes")),
            None => padded_word::<B>(bytes, at),
        };
        for (k, o) in dst.iter_mut().enumerate() {
            *o = lut[((word >> (k * B)) & mask) as usize];
        }
    }
    let tail = groups.into_remainder();
    if !tail.is_empty() {
        // Fewer than eight indices left: at most B bytes, read as one padded word.
        let word = padded_word::<B>(bytes, tail_at);
        for (k, o) in tail.iter_mut().enumerate() {
            *o = lut[((word >> (k * B)) & mask) as usize];
        }
    }
}

/// The (at most) `B` bytes of `bytes` from `at` as a little-endian word, zero-padded: a group
/// near the end of a row, where eight bytes cannot be read.
#[inline(always)]
fn padded_word<const B: usize>(bytes: &[u8], at: usize) -> u64 {
    let mut padded = [0u8; 8];
    let have = &bytes[at.min(bytes.len())..bytes.len().min(at + B)];
    padded[..have.len()].copy_from_slice(have);
    u64::from_le_bytes(padded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{random_weight, Edge, Guarded, Rng, WeightKind};

    #[test]
    fn seven_bit_word_decoder_matches_the_reference() {
        let mut rng = Rng::new(11);
        for n in (0..40).chain([127, 128, 129, 300]) {
            let need = (n * 7usize).div_ceil(8);
            let packed: Vec<u8> = (0..need).map(|_| rng.below(256) as u8).collect();
            let extra = rng.below(3);
            let lut = rng.vec(128 + extra);
            let (mut want, mut got) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            crate::arch::scalar::decode_packed(&packed, 7, &lut, &mut want);
            // Exactly the bytes the indices need, against a no-access page.
            let exact = Guarded::new(&packed, Edge::End);
            decode_7bit_words(exact.as_slice(), &lut, &mut got);
            assert_eq!(got, want, "n {n}");
        }
        let short = std::panic::catch_unwind(|| decode_7bit_words(&[0; 7], &[0.0; 64], &mut [0.0; 8]));
        assert!(short.is_err(), "7-bit indices need 128 entries");
    }

    #[test]
    fn matches_reference_decode_for_every_encoding() {
        let mut rng = Rng::new(7);
        for kind in WeightKind::all() {
            // Up to 5 rows, and more than `PAIR_TABLE_ROWS` short ones (odd and even lengths).
            let shapes =
                [(1, 1), (3, 7), (5, 13), (2, 64), (4, 33), (3, 97), (12, 9), (16, 25), (10, 2), (9, 1)];
            for &(rows, row_len) in &shapes {
                let data = random_weight(&mut rng, kind, rows, row_len);
                let view = data.view();
                for isa in crate::Isa::available() {
                    let w = WeightRows::new(view, rows, row_len).unwrap().with_isa(&isa);
                    let mut fast = vec![f32::NAN; row_len + 3];
                    let mut reference = vec![0.0; row_len];
                    for r in 0..rows {
                        w.decode(r, &mut fast);
                        view.decode_row(rows, r, &mut reference);
                        assert_eq!(
                            &fast[..row_len],
                            &reference[..],
                            "{} {kind:?} {rows}x{row_len}",
                            isa.name
                        );
                        assert!(fast[row_len].is_nan(), "wrote past the row");
                    }
                    // Rows decoded together (a shared codebook's table widened once): the same
                    // bits, over all rows and over the rows after the first.
                    for first in [0, rows / 2] {
                        let mut together = vec![f32::NAN; (rows - first) * row_len + 1];
                        w.decode_rows(first..rows, &mut together);
                        for (r, got) in (first..rows).zip(together.chunks_exact(row_len)) {
                            view.decode_row(rows, r, &mut reference);
                            assert_eq!(
                                got,
                                &reference[..],
                                "{} {kind:?} {rows}x{row_len} rows {first}..",
                                isa.name
                            );
                        }
                        assert!(together[(rows - first) * row_len].is_nan(), "wrote past the rows");
                    }
                    // Any columns, in any order, repeated.
                    let picks: Vec<usize> = (0..row_len).rev().step_by(3).chain([0, row_len - 1]).collect();
                    for r in 0..rows {
                        view.decode_row(rows, r, &mut reference);
                        let mut got = vec![f32::NAN; picks.len() + 1];
                        w.decode_gather(r, &picks, &mut got);
                        let want: Vec<f32> = picks.iter().map(|&c| reference[c]).collect();
                        assert_eq!(
                            &got[..picks.len()],
                            &want[..],
                            "{} {kind:?} {rows}x{row_len} row {r}",
                            isa.name
                        );
                        assert!(got[picks.len()].is_nan(), "wrote past the picks");
                    }
                    // Bands of columns from byte-aligned starts (odd ends, the whole row, none).
                    let bands = [(0, row_len), (0, row_len / 2), (8, row_len), (16, row_len - 1), (8, 8)];
                    for r in 0..rows {
                        view.decode_row(rows, r, &mut reference);
                        for &(start, end) in bands.iter().filter(|&&(s, e)| s <= e && e <= row_len) {
                            let mut part = vec![f32::NAN; end - start + 1];
                            w.decode_columns(r, start..end, &mut part);
                            let what = format!(
                                "{} {kind:?} {rows}x{row_len} row {r} columns {start}..{end}",
                                isa.name
                            );
                            assert_eq!(&part[..end - start], &reference[start..end], "{what}");
                            assert!(part[end - start].is_nan(), "{what}: wrote past the band");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ascending_columns_decode_as_gathered() {
        let mut rng = Rng::new(11);
        for kind in WeightKind::all() {
            for &(rows, row_len) in &[(2, 40), (2, 300), (1, 1031), (2, 9 * 250)] {
                let data = random_weight(&mut rng, kind, rows, row_len);
                let factors = rng.vec(row_len);
                // A 3×3 filter's middle row of taps (a one-row map's live taps), every fifth column,
                // the whole row, a few columns spread past several stretches.
                let patterns: [Vec<usize>; 4] = [
                    (0..row_len).filter(|c| (3..6).contains(&(c % 9))).collect(),
                    (0..row_len).step_by(5).collect(),
                    (0..row_len).collect(),
                    (0..row_len).filter(|c| c % 97 == 1 || *c + 1 == row_len).collect(),
                ];
                for isa in crate::Isa::available() {
                    let plain = WeightRows::new(data.view(), rows, row_len).unwrap().with_isa(&isa);
                    for w in [plain, plain.with_column_scales(&factors).unwrap()] {
                        for cols in &patterns {
                            for r in 0..rows {
                                let mut want = vec![f32::NAN; cols.len() + 1];
                                let mut got = vec![f32::NAN; cols.len() + 1];
                                w.decode_gather(r, cols, &mut want);
                                w.decode_ascending(r, cols, &mut got);
                                let what =
                                    format!("{} {kind:?} {rows}x{row_len} {} columns", isa.name, cols.len());
                                assert_eq!(got[..cols.len()], want[..cols.len()], "{what}");
                                assert!(got[cols.len()].is_nan(), "{what}: wrote past the columns");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn indices_past_the_entries_decode_to_zero_and_extra_entries_are_ignored() {
        // 2 bits, 3 entries: index 3 has no centroid. 4 bits, 20 entries: only 16 reachable; 4
        // bits, 13 entries: 13-15 have none. Rows of 9 decode one at a time, rows of 40 of a 4-bit
        // table per row together (`decode_nibble_rows`).
        let cases = [(2u8, 3usize, 9), (4, 20, 9), (4, 13, 40), (4, 20, 40), (6, 40, 9), (8, 200, 9)];
        for (bits, entries, row_len) in cases {
            for kind in [CodebookKind::PerTensor, CodebookKind::PerRow] {
                let rows = 2;
                let books = if kind == CodebookKind::PerRow { rows } else { 1 };
                let centroids: Vec<f32> = (0..books * entries).map(|e| e as f32 + 0.5).collect();
                let idx: Vec<usize> = (0..rows * row_len).map(|i| (i * 5 + 3) % (1 << bits)).collect();
                let stride = row_stride(row_len, bits);
                let mut packed = vec![0u8; rows * stride];
                for (i, &v) in idx.iter().enumerate() {
                    let (r, i) = (i / row_len, i % row_len);
                    for b in 0..bits as usize {
                        let bit = i * bits as usize + b;
                        packed[r * stride + bit / 8] |= (((v >> b) & 1) as u8) << (bit % 8);
                    }
                }
                let view = CodebookView {
                    bits,
                    rows,
                    row_len,
                    row_stride: stride,
                    entries,
                    kind,
                    centroids: CentroidsView::F32(&centroids),
                    scales: &[],
                    indices: &packed,
                };
                let w = WeightRows::new(TensorView::Codebook(view), rows, row_len).unwrap();
                let want: Vec<f32> = idx
                    .iter()
                    .enumerate()
                    .map(|(at, &i)| {
                        let base = if kind == CodebookKind::PerRow { at / row_len * entries } else { 0 };
                        if i < entries {
                            (base + i) as f32 + 0.5
                        } else {
                            0.0
                        }
                    })
                    .collect();
                let mut out = vec![f32::NAN; rows * row_len];
                for (r, row) in out.chunks_exact_mut(row_len).enumerate() {
                    w.decode(r, row);
                }
                assert_eq!(out, want, "bits {bits}, {entries} entries, {kind:?}, one row at a time");
                out.fill(f32::NAN);
                w.decode_rows(0..rows, &mut out);
                assert_eq!(out, want, "bits {bits}, {entries} entries, {kind:?}, rows together");
            }
        }
    }

    #[test]
    fn rejects_mismatched_shapes_and_short_codebooks() {
        let mut rng = Rng::new(1);
        let data = random_weight(&mut rng, WeightKind::F32, 2, 3);
        assert!(WeightRows::new(data.view(), 3, 2).is_ok()); // same numel is fine for dense
        assert!(WeightRows::new(data.view(), 2, 4).is_err());
        let cb = random_weight(&mut rng, WeightKind::Codebook(3, CodebookKind::SharedScaled, false), 4, 5);
        assert!(WeightRows::new(cb.view(), 2, 10).is_err());
        let TensorView::Codebook(mut v) = cb.view() else { unreachable!() };
        v.indices = &v.indices[..v.indices.len() - 1];
        assert!(WeightRows::new(TensorView::Codebook(v), 4, 5).is_err());
        v = match cb.view() {
            TensorView::Codebook(v) => v,
            _ => unreachable!(),
        };
        v.scales = &v.scales[..3];
        assert!(WeightRows::new(TensorView::Codebook(v), 4, 5).is_err());
    }
}
