//! Matrix product with a packed weight operand, decoded a row (or a band of columns) at a time.
//!
//! `[N, K]` weights with few input rows (GEMV) never widen a row: [`Isa::dot_packed`] decodes the
//! packed indices in registers, so only packed bytes move; with int8 activations on, 4-bit rows
//! multiply an s8 copy of the input on int8 dot products instead ([`Int8Kernels::dot_nibbles`]).
//! `[K, N]` weights (ONNX MatMul) are decoded band by band of output columns and multiplied by
//! the GEMM tile ([`KnProduct`]). Work is split over output columns (one input row, or a few
//! with `[K, N]` weights) or input rows (several) across the worker threads.

use std::ops::Range;

use pith_format::TensorView;

#[cfg(doc)]
use crate::arch::int8::Int8Kernels;
use crate::arch::int8::{prepare_nibbles, DotNibblesFn, NIBBLE_BLOCK};
use crate::arch::{Isa, GEMV_BLOCK, PACKED_ROWS};
use crate::decode::PackedTables;
use crate::parallel::{split_rows, split_units};
use crate::{check_len, check_min_len, ChannelActivation, Int8RowTables, KernelError, Kernels, WeightRows};

/// How the `k × n` weight matrix is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[n, k]`: each stored row is one output's weights (ONNX Gemm with `transB = 1`).
    NK,
    /// `[k, n]`: each stored row is one input's fan-out (ONNX MatMul, Gemm with `transB = 0`).
    KN,
}

/// Scratch elements one worker of [`gemm`] needs: one decoded row, or the int8 GEMV's prepared
/// input (at least 1).
pub fn scratch_len(k: usize, n: usize, layout: WeightLayout) -> usize {
    match layout {
        // The packed GEMV's input, zero-padded to whole blocks; k.next_multiple_of(NIBBLE_BLOCK)
        // bytes fit in max(k, NIBBLE_BLOCK / 4) elements.
        WeightLayout::NK => k.next_multiple_of(GEMV_BLOCK).max(NIBBLE_BLOCK / 4),
        WeightLayout::KN => (k + KN_ROWS) * kn_columns(k, n),
    }
    .max(1)
}

/// Most f32 elements of the decoded weight block a `[K, N]` product multiplies at a time (128
/// KiB): every input channel's weights for a band of output columns, so that each output is
/// read and written once, its whole sum taken in the register tile. PP-OCRv3's recognizer head,
/// 40 inputs × 64 × 6625 at 8 bits, had decoded one weight row at a time and streamed its 1 MB
/// of outputs once per row: 2.2 ms at 1 thread.
const KN_PANEL_BUDGET: usize = 1 << 15;

/// Output columns per decoded block of a `[K, N]` product: as many as [`KN_PANEL_BUDGET`]
/// holds over the `k` rows, a multiple of 16 (whole vectors, and whole bytes of indices at any
/// width), at least 16.
fn kn_columns(k: usize, n: usize) -> usize {
    let fit = KN_PANEL_BUDGET / k.max(1) / 16 * 16;
    fit.clamp(16, n.next_multiple_of(16).max(16))
}

/// Input rows a `[K, N]` product multiplies per [`Isa::gemm_rows`] call.
const KN_ROWS: usize = 64;

/// How many convolution multiply-adds one weight of a packed GEMV counts as when deciding
/// whether to split it over threads: each weight is used once, so a GEMV runs at a fraction of
/// a convolution's rate. MobileNetV3-Small's squeeze-excite layer 144 -> 576 (a codebook per
/// row) takes 10 µs on Zen 5, 8 weights per ns where its 1×1 convolutions run 80-100
/// multiply-adds per ns, and its 83k weights stayed on one thread, below the split threshold;
/// split at 2 threads it takes 6.0 µs (one-layer model, `pith bench`), 576 -> 144 with a
/// scaled codebook 2.9 -> 2.35 µs.
const GEMV_WORK_WEIGHT: usize = 4;

/// Up to this many input rows, packed `[N, K]` rows are multiplied straight from their indices
/// (decoded in registers by [`Isa::dot_packed`]); above, a row is decoded once and reused.
const PACKED_DOT_MAX_M: usize = 4;

/// See [`crate::Kernels::gemm`]; `tables`, for `[N, K]` weights, are their int8 GEMV tables
/// prepared once ([`crate::Kernels::gemm_int8`]).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    kernels: &Kernels,
    a: &[f32],
    m: usize,
    k: usize,
    n: usize,
    w: &TensorView<'_>,
    layout: WeightLayout,
    tables: Option<&Int8RowTables>,
    bias: Option<&[f32]>,
    act: ChannelActivation<'_>,
    y: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), KernelError> {
    check_len("gemm input", a.len(), m * k)?;
    act.check(n)?;
    check_len("gemm output", y.len(), m * n)?;
    if let Some(b) = bias {
        check_len("gemm bias", b.len(), n)?;
    }
    if let Some(t) = tables {
        if layout != WeightLayout::NK || t.rows() != n {
            let msg = format!("int8 tables of {} rows for {layout:?} weights of {n} outputs", t.rows());
            return Err(KernelError::Weight(msg));
        }
    }
    let per_task = scratch_len(k, n, layout);
    check_min_len("gemm scratch", scratch.len(), per_task * kernels.threads())?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let isa = kernels.isa();
    match layout {
        WeightLayout::NK => {
            let rows = WeightRows::new(*w, n, k)?.with_isa(&isa);
            let int8 = kernels.int8_kernels().and_then(|k| k.dot_nibbles);
            let prod = NkProduct { isa, int8, tables, rows: &rows, a, k, bias, act };
            if m == 1 {
                // GEMV: split the outputs (one weight row each) over the workers.
                let row_work = k * GEMV_WORK_WEIGHT;
                split_units(kernels, n, 1, row_work, y, scratch, per_task, |js, ys, s| {
                    prod.run(0..1, js, ys, s)
                });
            } else {
                split_units(kernels, m, n, n * k, y, scratch, per_task, |is, ys, s| {
                    prod.run(is, 0..n, ys, s)
                });
            }
        }
        WeightLayout::KN => {
            let rows = WeightRows::new(*w, k, n)?.with_isa(&isa);
            let product = KnProduct { isa, rows: &rows, a, k, n, bias, act, band: kn_columns(k, n) };
            if m <= KN_ROWS && kernels.threads() > 1 {
                // Few input rows: the threads take bands of output columns, so each decodes
                // only its bands' weights (split by rows, every thread decoded all of them: the
                // recognizer head above ran no faster on two threads than on one).
                split_rows(kernels, n, 1, m * k, 16, 1, y, scratch, per_task, |cols, parts, s| {
                    product.columns(m, cols, parts, s)
                });
            } else {
                split_units(kernels, m, n, n * k, y, scratch, per_task, |is, ys, panel| {
                    product.rows(is, ys, panel)
                });
            }
        }
    }
    Ok(())
}

/// `y[i, j] = act(bias[j] + a[i, :] · W[:, j])` with `W` stored `[K, N]`: band by band of
/// output columns, every weight row's part of the band decoded once (f32 weights read in place)
/// and multiplied by [`Isa::gemm_rows`] into the outputs, each output's whole sum taken in the
/// register tile, so each output is read and written once.
struct KnProduct<'a, 'w> {
    isa: Isa,
    rows: &'a WeightRows<'w>,
    a: &'a [f32],
    k: usize,
    n: usize,
    bias: Option<&'a [f32]>,
    act: ChannelActivation<'a>,
    /// Output columns per decoded band ([`kn_columns`]).
    band: usize,
}

impl KnProduct<'_, '_> {
    /// The band of columns `j0..j0 + w` of every weight row as `(b, ldb)` for
    /// [`Isa::gemm_rows`]: the f32 weights themselves, or decoded into `panel`.
    fn band<'p>(&'p self, j0: usize, w: usize, panel: &'p mut [f32]) -> (&'p [f32], usize) {
        match self.rows.dense_rows(0..self.k) {
            Some(d) => (&d[j0..], self.n),
            None => {
                for (r, row) in panel[..self.k * w].chunks_exact_mut(w).enumerate() {
                    self.rows.decode_columns(r, j0..j0 + w, row);
                }
                (&panel[..self.k * w], w)
            }
        }
    }

    /// Input rows `is` into `ys` (their whole output rows, `n` each).
    fn rows(&self, is: Range<usize>, ys: &mut [f32], panel: &mut [f32]) {
        let (k, n) = (self.k, self.n);
        for yrow in ys.chunks_exact_mut(n) {
            match self.bias {
                Some(b) => yrow.copy_from_slice(b),
                None => yrow.fill(0.0),
            }
        }
        for j0 in (0..n).step_by(self.band) {
            let w = self.band.min(n - j0);
            let (b, ldb) = self.band(j0, w, panel);
            for (i0, yc) in is.clone().step_by(KN_ROWS).zip(ys.chunks_mut(KN_ROWS * n)) {
                let mi = yc.len() / n;
                (self.isa.gemm_rows)(&self.a[i0 * k..(i0 + mi) * k], k, b, ldb, w, &mut yc[j0..], n);
            }
        }
        match self.act.same() {
            Some(act) => (self.isa.activate)(act, ys),
            // A slope per output column.
            None => {
                for yrow in ys.chunks_exact_mut(n) {
                    yrow.iter_mut().enumerate().for_each(|(j, v)| *v = self.act.of(j).apply(*v));
                }
            }
        }
    }

    /// Columns `cols` of all `m` (at most [`KN_ROWS`]) output rows, `parts[i]` holding row `i`'s:
    /// each band's sums in a block of `scratch` after the panel, then copied out.
    fn columns(&self, m: usize, cols: Range<usize>, parts: &mut [&mut [f32]], scratch: &mut [f32]) {
        let k = self.k;
        let (panel, block) = scratch.split_at_mut(k * self.band);
        for j0 in cols.clone().step_by(self.band) {
            let w = self.band.min(cols.end - j0);
            let block = &mut block[..m * w];
            for row in block.chunks_exact_mut(w) {
                match self.bias {
                    Some(b) => row.copy_from_slice(&b[j0..j0 + w]),
                    None => row.fill(0.0),
                }
            }
            let (b, ldb) = self.band(j0, w, panel);
            (self.isa.gemm_rows)(&self.a[..m * k], k, b, ldb, w, block, w);
            for (part, row) in parts.iter_mut().zip(block.chunks_exact(w)) {
                let out = &mut part[j0 - cols.start..][..w];
                out.copy_from_slice(row);
                match self.act.same() {
                    Some(act) => (self.isa.activate)(act, out),
                    None => out.iter_mut().zip(j0..).for_each(|(v, j)| *v = self.act.of(j).apply(*v)),
                }
            }
        }
    }
}

/// `y[i, j] = act(bias[j] + a[i, :] · W[j, :])` with `W` stored `[N, K]`.
struct NkProduct<'a, 'w> {
    isa: Isa,
    /// The int8 GEMV, when int8 activations are on and the path has one.
    int8: Option<DotNibblesFn>,
    /// The weights' int8 GEMV tables, when prepared.
    tables: Option<&'a Int8RowTables>,
    rows: &'a WeightRows<'w>,
    a: &'a [f32],
    k: usize,
    bias: Option<&'a [f32]>,
    act: ChannelActivation<'a>,
}

impl NkProduct<'_, '_> {
    /// Outputs `is × js` into `y` (row-major, `js.len()` per row); `wrow` holds one decoded row.
    fn run(&self, is: Range<usize>, js: Range<usize>, y: &mut [f32], wrow: &mut [f32]) {
        if is.len() == 1
            && (self.gemv_int8(is.start, js.clone(), y, wrow)
                || self.gemv_packed(is.start, js.clone(), y, wrow))
        {
            return;
        }
        let (k, width) = (self.k, js.len());
        let mut lut = [0.0f32; 256];
        for (jl, j) in js.enumerate() {
            let b = self.bias.map_or(0.0, |b| b[j]);
            let mut out = |dot: &dyn Fn(&[f32]) -> f32| {
                for (il, i) in is.clone().enumerate() {
                    y[il * width + jl] = self.act.of(j).apply(b + dot(&self.a[i * k..(i + 1) * k]));
                }
            };
            let packed = if is.len() <= PACKED_DOT_MAX_M { self.rows.packed_row(j, &mut lut) } else { None };
            if let Some(row) = self.rows.dense_row(j) {
                out(&|x| (self.isa.dot)(row, x));
            } else if let Some((idx, bits)) = packed {
                out(&|x| (self.isa.dot_packed)(idx, bits, &lut, x));
            } else {
                self.rows.decode(j, wrow);
                out(&|x| (self.isa.dot)(&wrow[..k], x));
            }
        }
    }
}

impl NkProduct<'_, '_> {
    /// The GEMV of input row `i` over packed codebook rows `js` into `y` (`js.len()` values):
    /// the input is prepared once into `xp` ([`Isa::gemv_prepare`], `k` values of the worker's
    /// scratch rounded up to [`GEMV_BLOCK`], so the kernel's last block is zero-padded rather
    /// than each row's tail taken apart), then the weight rows share it ([`Isa::dot_packed_rows`],
    /// whose kernels share each load of it between [`PACKED_ROWS`] rows). A codebook shared by
    /// every row is widened into one table once per call and [`GEMV_BATCH`] rows go per kernel
    /// call, a row scale multiplying the row's sum; a per-row codebook fills a table per row and
    /// goes [`PER_ROW_BATCH`] rows per call. `false` (nothing written) when the weights are not
    /// packed indices.
    fn gemv_packed(&self, i: usize, js: Range<usize>, y: &mut [f32], xp: &mut [f32]) -> bool {
        let k = self.k;
        let mut shared = [[0.0f32; 256]; 1];
        let Some((bits, tables)) = self.rows.packed_tables(&mut shared[0]) else { return false };
        let x = &self.a[i * k..(i + 1) * k];
        let padded = k.next_multiple_of(GEMV_BLOCK).min(xp.len());
        let xp = &mut xp[..padded];
        (self.isa.gemv_prepare)(bits, x, xp);
        // Only a per-row codebook zeroes a table per row of its batch (16 KiB), not every call.
        let straight = self.isa.dot_nibble_rows_f16.zip(self.rows.nibble_centroids_f16());
        match (tables, straight) {
            (PackedTables::Shared(_), _) => {
                self.gemv_batches(bits, x, xp, js.clone(), y, Batches::Shared(&mut shared, tables))
            }
            (PackedTables::PerRow, Some((dot, (centroids, entries)))) if bits == 4 => {
                self.gemv_batches(bits, x, xp, js.clone(), y, Batches::PerRowF16(dot, centroids, entries))
            }
            (PackedTables::PerRow, _) => {
                let mut luts = [[0.0f32; 256]; PER_ROW_BATCH];
                self.gemv_batches(bits, x, xp, js.clone(), y, Batches::PerRow(&mut luts))
            }
        }
        self.finish(js, y);
        true
    }

    /// [`NkProduct::gemv_packed`]'s kernel calls over rows `js` ([`Batches`]): for a shared
    /// codebook [`GEMV_BATCH`] rows per call against one table, each sum then times its row's
    /// scale, if any; for per-row codebooks as many rows per call as there are tables, each row's
    /// table filled here; for per-row f16 codebooks at 4 bits [`GEMV_BATCH`] rows per call, the
    /// kernel reading the centroids as stored. Each group of [`PACKED_ROWS`] rows comes from the
    /// quarters of `js`, so the kernel reads that many long contiguous streams instead of
    /// restarting them every few KiB (measured about 10 % faster at 4096×4096, 4 bits).
    fn gemv_batches(
        &self,
        bits: u8,
        x: &[f32],
        xp: &[f32],
        js: Range<usize>,
        y: &mut [f32],
        mut how: Batches<'_, '_>,
    ) {
        let (batch, scales) = match &how {
            Batches::Shared(_, PackedTables::Shared(scales)) => (GEMV_BATCH, *scales),
            Batches::Shared(..) | Batches::PerRowF16(..) => (GEMV_BATCH, None),
            Batches::PerRow(luts) => (luts.len().min(GEMV_BATCH), None),
        };
        let mut rows: [&[u8]; GEMV_BATCH] = [&[]; GEMV_BATCH];
        let mut centroids: [&[half::f16]; GEMV_BATCH] = [&[]; GEMV_BATCH];
        let mut at = [0usize; GEMV_BATCH];
        let mut out = [0.0f32; GEMV_BATCH];
        let mut n = 0;
        let quarter = js.len().div_ceil(PACKED_ROWS);
        for q in 0..quarter {
            // Rows q, q + quarter, ...: stepped by hand, as `step_by` divides to count its steps
            // (a tenth of a 1024 × 576 GEMV with a codebook per row).
            let mut jl = q;
            while jl < js.len() {
                let j = js.start + jl;
                rows[n] = match &mut how {
                    Batches::Shared(..) => self.rows.packed_indices(j),
                    // Every row of a codebook tensor is packed.
                    Batches::PerRow(luts) => self.rows.packed_row(j, &mut luts[n]).map_or(&[], |(r, _)| r),
                    Batches::PerRowF16(_, all, entries) => {
                        centroids[n] = &all[j * *entries..(j + 1) * *entries];
                        self.rows.packed_indices(j)
                    }
                };
                at[n] = jl;
                n += 1;
                jl += quarter;
            }
            if n + PACKED_ROWS <= batch && q + 1 < quarter {
                continue;
            }
            match &how {
                Batches::Shared(luts, _) => {
                    (self.isa.dot_packed_rows)(&rows[..n], bits, &luts[..1], x, xp, &mut out[..n])
                }
                Batches::PerRow(luts) => {
                    (self.isa.dot_packed_rows)(&rows[..n], bits, &luts[..n], x, xp, &mut out[..n])
                }
                Batches::PerRowF16(dot, ..) => dot(&rows[..n], &centroids[..n], x, xp, &mut out[..n]),
            }
            for (&jl, &s) in at.iter().zip(&out).take(n) {
                y[jl] = scales.map_or(s, |scales| s * scales[js.start + jl]);
            }
            n = 0;
        }
    }

    /// Adds the bias of outputs `js` to their sums in `y` and applies the activation: over the
    /// whole slice, vectorised, rather than output by output (on a squeeze-excite layer's short
    /// rows, 144 -> 576 at 4 bits, the per-output epilogue took 5 % of the GEMV: 10.2 -> 9.7 µs
    /// on Zen 5). The same operations in the same order as `act(bias + sum)`.
    fn finish(&self, js: Range<usize>, y: &mut [f32]) {
        let y = &mut y[..js.len()];
        if let Some(b) = self.bias {
            y.iter_mut().zip(&b[js.clone()]).for_each(|(v, &b)| *v += b);
        }
        match self.act.same() {
            Some(act) => (self.isa.activate)(act, y),
            None => y.iter_mut().zip(js).for_each(|(v, j)| *v = self.act.of(j).apply(*v)),
        }
    }
}

/// Where [`NkProduct::gemv_batches`] finds its rows' tables.
enum Batches<'l, 'a> {
    /// One table (filled) for every row, and the rows' scales if any.
    Shared(&'l mut [[f32; 256]; 1], PackedTables<'a>),
    /// A table per row of a call, each filled as its row is taken.
    PerRow(&'l mut [[f32; 256]]),
    /// 4-bit rows whose f16 centroids the kernel reads as stored: every row's (`entries` each).
    PerRowF16(crate::arch::DotNibbleRowsF16, &'a [half::f16], usize),
}

/// Rows of a shared codebook one [`Isa::dot_packed_rows`] call of the GEMV takes (their slices
/// and sums live on the stack); more per call spreads its fixed costs (bounds, dispatch) over
/// more rows, which short rows (squeeze-excite, 144 or 576 columns) feel.
const GEMV_BATCH: usize = 64;

/// Rows of per-row codebooks per [`Isa::dot_packed_rows`] call (each with its own table).
const PER_ROW_BATCH: usize = 16;

/// Longest row the int8 GEMV takes: its i32 sums (up to 255 · 127 per weight) must not overflow.
const INT8_GEMV_MAX_K: usize = 1 << 16;

impl NkProduct<'_, '_> {
    /// [`NkProduct::gemv_packed`] on int8 dot products, for 4-bit codebook rows when int8
    /// activations are on: the input row is rounded to s8 with one step (its largest magnitude
    /// over 127) into `xp` once, and each row's codebook to s8 ([`crate::WeightRows`]' tables,
    /// rounded once for a shared codebook); `y[j] = act(bias + step_x * step_j * (dot_j - 128 *
    /// sum(x)))`, the tables holding s8 + 128. `false` (nothing written) for other weights, or an
    /// input that is not finite (the f32 path then carries the NaN or infinity through).
    fn gemv_int8(&self, i: usize, js: Range<usize>, y: &mut [f32], xp: &mut [f32]) -> bool {
        let k = self.k;
        let (Some(dot), Some(tables)) = (self.int8, self.rows.nibble_tables(self.tables)) else {
            return false;
        };
        if k > INT8_GEMV_MAX_K {
            return false;
        }
        let x = &self.a[i * k..(i + 1) * k];
        let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if !max.is_finite() {
            return false;
        }
        let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
        let xp: &mut [i8] = bytemuck::cast_slice_mut(&mut xp[..k.next_multiple_of(NIBBLE_BLOCK) / 4]);
        let offset = 128 * prepare_nibbles(x, inv, xp);
        let step_x = max / 127.0;
        let quarter = js.len().div_ceil(PACKED_ROWS);
        for q in 0..quarter {
            let mut rows: [&[u8]; PACKED_ROWS] = [&[]; PACKED_ROWS];
            let mut table = [[0u8; 16]; PACKED_ROWS];
            let (mut step, mut at) = ([0.0f32; PACKED_ROWS], [0usize; PACKED_ROWS]);
            let mut n = 0;
            // Stepped by hand, as in `gemv_batches` (`step_by` divides to count its steps).
            let mut jl = q;
            while jl < js.len() {
                rows[n] = tables.indices(js.start + jl);
                step[n] = tables.row(js.start + jl, &mut table[n]);
                at[n] = jl;
                n += 1;
                jl += quarter;
            }
            let mut out = [0i32; PACKED_ROWS];
            dot(&rows[..n], &table[..n], xp, k, &mut out[..n]);
            for t in 0..n {
                y[at[t]] = (out[t] - offset) as f32 * step[t] * step_x;
            }
        }
        self.finish(js, y);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, decode_all, kernel_sets, random_weight, Rng, WeightKind};
    use crate::Activation;
    use crate::Kernels;

    #[test]
    fn matches_reference_for_both_layouts_and_every_encoding() {
        let mut rng = Rng::new(9);
        let sets = kernel_sets();
        for (case, kind) in WeightKind::all().into_iter().enumerate() {
            // m = 1 (GEMV, split over N), 2..=4 (packed dot), 5..=7 (decoded rows, split over M).
            let m = [1, 1, 3, 6][case % 4] + rng.below(2);
            let (k, n) = (1 + rng.below(70), 1 + rng.below(40));
            for layout in [WeightLayout::NK, WeightLayout::KN] {
                let (rows, row_len) = match layout {
                    WeightLayout::NK => (n, k),
                    WeightLayout::KN => (k, n),
                };
                let data = random_weight(&mut rng, kind, rows, row_len);
                let wf = decode_all(&data, rows);
                let a = rng.vec(m * k);
                let bias = rng.vec(n);
                let bias = (case % 2 == 0).then_some(&bias[..]);
                // ReLU, none, or a PRelu slope per output column (both signs).
                let slopes: Vec<f32> = rng.vec(n).iter().map(|v| 2.0 * v).collect();
                let act = match case % 3 {
                    0 => ChannelActivation::Same(Activation::Relu),
                    1 => ChannelActivation::PRelu(&slopes),
                    _ => ChannelActivation::Same(Activation::None),
                };
                let mut want = vec![0.0; m * n];
                for i in 0..m {
                    for j in 0..n {
                        let mut s = bias.map_or(0.0, |b| b[j]);
                        for kk in 0..k {
                            let wv = match layout {
                                WeightLayout::NK => wf[j * k + kk],
                                WeightLayout::KN => wf[kk * n + j],
                            };
                            s += a[i * k + kk] * wv;
                        }
                        want[i * n + j] = act.of(j).apply(s);
                    }
                }
                // The input rows against a no-access page (see `testutil::Guarded`).
                let a = crate::testutil::Guarded::new(&a, crate::testutil::Edge::End);
                for kernels in &sets {
                    let mut y = vec![f32::NAN; m * n];
                    let mut scratch = vec![0.0; kernels.gemm_scratch_len(k, n, layout)];
                    let w = data.view();
                    kernels.gemm(a.as_slice(), m, k, n, &w, layout, bias, act, &mut y, &mut scratch).unwrap();
                    assert_close(&y, &want, &format!("{kernels:?} {kind:?} {layout:?} {m}x{k}x{n} {act:?}"));
                }
            }
        }
    }

    #[test]
    fn kn_products_over_several_column_bands_and_row_chunks_match_reference() {
        // [K, N] weights (MatMul): 300 input channels give bands of 96 columns, so 250 outputs
        // take two whole bands and a partial one; 70 input rows take two calls of at most
        // KN_ROWS (split over threads by rows), 40 one (split by bands of columns). Every
        // encoding, every kernel path, one and two threads.
        let (k, n) = (300, 250);
        assert!(
            kn_columns(k, n) < n && 40 <= KN_ROWS && 70 > KN_ROWS,
            "the shapes must span bands and row chunks"
        );
        let mut rng = Rng::new(31);
        let sets = kernel_sets();
        assert!(sets.iter().any(|s| s.threads() > 1), "a set with threads splits by columns");
        for (case, kind) in WeightKind::all().into_iter().enumerate() {
            let m = [40, 70][case % 2];
            let data = random_weight(&mut rng, kind, k, n);
            let wf = decode_all(&data, k);
            let a = rng.vec(m * k);
            let bias = rng.vec(n);
            // ReLU, or a PRelu slope per output column (both signs), which each band must take
            // at its own columns.
            let slopes: Vec<f32> = rng.vec(n).iter().map(|v| 2.0 * v).collect();
            let act = match case % 3 {
                0 => ChannelActivation::PRelu(&slopes),
                _ => ChannelActivation::Same(Activation::Relu),
            };
            let mut want = vec![0.0; m * n];
            for i in 0..m {
                for j in 0..n {
                    let s: f32 = (0..k).map(|kk| a[i * k + kk] * wf[kk * n + j]).sum();
                    want[i * n + j] = act.of(j).apply(bias[j] + s);
                }
            }
            for kernels in &sets {
                let mut y = vec![f32::NAN; m * n];
                let mut scratch = vec![0.0; kernels.gemm_scratch_len(k, n, WeightLayout::KN)];
                let w = data.view();
                kernels
                    .gemm(&a, m, k, n, &w, WeightLayout::KN, Some(&bias), act, &mut y, &mut scratch)
                    .unwrap();
                assert_close(&y, &want, &format!("{kernels:?} {kind:?} {m}x{k}x{n}"));
            }
        }
    }

    #[test]
    fn packed_gemv_matches_reference_over_whole_blocks_and_tails() {
        // m = 1 over packed rows: whole 64-byte blocks of every width plus odd tails (and rows
        // shorter than one block: squeeze-excite layers), row counts that leave 1..3 rows in the
        // last kernel call, and some above GEMV_BATCH (several batches of a shared table or of
        // per-row tables, a partial last one), every codebook kind, split over workers.
        let mut rng = Rng::new(21);
        let sets = kernel_sets();
        for (case, kind) in WeightKind::all().into_iter().skip(2).enumerate() {
            let WeightKind::Codebook(bits, ..) = kind else { unreachable!() };
            let k = match case % 5 {
                4 => 1 + rng.below(150),
                tail => (512 / bits as usize) * (1 + rng.below(2)) + [0, 1, 63, 100][tail],
            };
            // Shared-table kinds (case % 3 == 2), and per-row ones of even widths (case % 6 == 4).
            let many = case % 3 == 2 || case % 6 == 4;
            let n = if many { GEMV_BATCH + rng.below(3 * GEMV_BATCH) } else { 1 + rng.below(11) };
            let data = random_weight(&mut rng, kind, n, k);
            let wf = decode_all(&data, n);
            let a = rng.vec(k);
            let bias = rng.vec(n);
            let want: Vec<f32> =
                (0..n).map(|j| bias[j] + (0..k).map(|kk| a[kk] * wf[j * k + kk]).sum::<f32>()).collect();
            for kernels in &sets {
                let mut y = vec![f32::NAN; n];
                let mut scratch = vec![f32::NAN; kernels.gemm_scratch_len(k, n, WeightLayout::NK)];
                let w = data.view();
                let act = Activation::None;
                kernels
                    .gemm(&a, 1, k, n, &w, WeightLayout::NK, Some(&bias), act, &mut y, &mut scratch)
                    .unwrap();
                let scale: Vec<f32> = want.iter().map(|v| v / (k as f32).sqrt()).collect();
                let got: Vec<f32> = y.iter().map(|v| v / (k as f32).sqrt()).collect();
                assert_close(&got, &scale, &format!("{kernels:?} {kind:?} 1x{k}x{n}"));
            }
        }
    }

    #[test]
    fn rejects_mismatched_lengths() {
        let w = vec![0.0f32; 6];
        let view = TensorView::F32(&w);
        let mut y = vec![0.0; 4];
        let lay = WeightLayout::NK;
        let mut s = vec![0.0; scratch_len(3, 2, lay)];
        let a = ChannelActivation::Same(Activation::None);
        let k = Kernels::default();
        assert!(gemm(&k, &[0.0; 6], 2, 3, 2, &view, lay, None, None, a, &mut y, &mut s).is_ok());
        let one_slope = ChannelActivation::PRelu(&[0.5]);
        assert!(gemm(&k, &[0.0; 6], 2, 3, 2, &view, lay, None, None, one_slope, &mut y, &mut s).is_err());
        assert!(gemm(&k, &[0.0; 5], 2, 3, 2, &view, lay, None, None, a, &mut y, &mut s).is_err());
        assert!(gemm(&k, &[0.0; 6], 2, 3, 2, &view, lay, None, Some(&[0.0]), a, &mut y, &mut s).is_err());
        assert!(gemm(&k, &[0.0; 8], 2, 4, 2, &view, lay, None, None, a, &mut y, &mut s).is_err());
    }

    #[test]
    fn int8_gemv_stays_within_the_quantization_bound_on_4_bit_rows() {
        use pith_format::ir::CodebookKind;
        let mut rng = Rng::new(31);
        let mut sets = Vec::new();
        for isa in
            crate::Isa::available().into_iter().filter(|i| i.int8.is_some_and(|k| k.dot_nibbles.is_some()))
        {
            for threads in 1..=3 {
                let mut k = Kernels::with_isa(isa, threads).unwrap().with_int8_activations(true).unwrap();
                k.min_task_work = 1;
                sets.push(k);
            }
        }
        let kinds = [CodebookKind::PerTensor, CodebookKind::PerRow, CodebookKind::SharedScaled];
        for case in 0..12 {
            let kind = WeightKind::Codebook(4, kinds[case % 3], case % 2 == 0);
            let k = 1 + (case * 97 + rng.below(40)) % 400;
            let n = 1 + rng.below(13);
            let data = random_weight(&mut rng, kind, n, k);
            let wf = decode_all(&data, n);
            // Half the cases non-negative, as after a ReLU: the +128 offset of the tables then matters.
            let shift = if case % 2 == 0 { 1.0 } else { 0.0 };
            let a: Vec<f32> = rng.vec(k).iter().map(|v| (v + shift) * 2.0).collect();
            let bias = rng.vec(n);
            // Half a step of the input's and of the row's largest magnitude per product.
            let step_x = a.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
            let (want, bound): (Vec<f32>, Vec<f32>) = (0..n)
                .map(|j| {
                    let row = &wf[j * k..(j + 1) * k];
                    let step_w = row.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                    let s = bias[j] + row.iter().zip(&a).map(|(w, x)| w * x).sum::<f32>();
                    let e: f32 = row
                        .iter()
                        .zip(&a)
                        .map(|(w, x)| (w.abs() + step_w / 2.0) * step_x / 2.0 + x.abs() * step_w / 2.0)
                        .sum();
                    (s, e * 1.001 + 1e-5 * (1.0 + s.abs()))
                })
                .unzip();
            let mut f32_result = vec![0.0; n];
            let plain = Kernels::with_isa(crate::Isa::scalar(), 1).unwrap();
            let mut scratch = vec![0.0; plain.gemm_scratch_len(k, n, WeightLayout::NK)];
            let none = Activation::None;
            plain
                .gemm(
                    &a,
                    1,
                    k,
                    n,
                    &data.view(),
                    WeightLayout::NK,
                    Some(&bias),
                    none,
                    &mut f32_result,
                    &mut scratch,
                )
                .unwrap();
            for kernels in &sets {
                let mut y = vec![f32::NAN; n];
                let mut scratch = vec![f32::NAN; kernels.gemm_scratch_len(k, n, WeightLayout::NK)];
                kernels
                    .gemm(
                        &a,
                        1,
                        k,
                        n,
                        &data.view(),
                        WeightLayout::NK,
                        Some(&bias),
                        none,
                        &mut y,
                        &mut scratch,
                    )
                    .unwrap();
                for j in 0..n {
                    assert!(
                        (y[j] - want[j]).abs() <= bound[j],
                        "{kernels:?} {kind:?} k={k} j={j}: {} vs {} (bound {})",
                        y[j],
                        want[j],
                        bound[j]
                    );
                }
                // The int8 path ran: its rounding shows somewhere.
                assert!(
                    y.iter().zip(&f32_result).any(|(a, b)| a != b) || k < 4,
                    "{kernels:?} {kind:?} k={k}: same bits as f32"
                );
                // Tables prepared once give the same bits as tables rounded per call.
                let tables = Int8RowTables::new(&data.view(), n, k).unwrap().expect("a 4-bit codebook");
                let mut yt = vec![f32::NAN; n];
                let (w, b) = (data.view(), Some(&bias[..]));
                kernels.gemm_int8(&a, 1, k, n, &w, &tables, b, none, &mut yt, &mut scratch).unwrap();
                assert_eq!(yt, y, "{kernels:?} {kind:?} k={k}: prepared tables");
            }
        }
    }

    #[test]
    fn int8_row_tables_take_only_4_bit_codebooks_of_their_own_shape() {
        use pith_format::ir::CodebookKind;
        let mut rng = Rng::new(32);
        let (n, k) = (5, 40);
        for bits in [3, 8] {
            let data = random_weight(&mut rng, WeightKind::Codebook(bits, CodebookKind::PerRow, false), n, k);
            assert!(Int8RowTables::new(&data.view(), n, k).unwrap().is_none(), "{bits}-bit");
        }
        let data = random_weight(&mut rng, WeightKind::Codebook(4, CodebookKind::PerRow, false), n, k);
        assert!(Int8RowTables::new(&data.view(), n + 1, k).is_err(), "a shape the view does not hold");
        let tables = Int8RowTables::new(&data.view(), n, k).unwrap().unwrap();
        assert_eq!(tables.rows(), n);
        // Tables of another row count are refused, never read past their end.
        let kernels = Kernels::with_isa(crate::Isa::scalar(), 1).unwrap();
        let (a, mut y) = (rng.vec(k / 2), vec![0.0; n * 2]);
        let mut scratch = vec![0.0; kernels.gemm_scratch_len(k / 2, n * 2, WeightLayout::NK)];
        let w = data.view();
        let err =
            kernels.gemm_int8(&a, 1, k / 2, n * 2, &w, &tables, None, Activation::None, &mut y, &mut scratch);
        assert!(matches!(err, Err(KernelError::Weight(_))), "{err:?}");
    }
}
