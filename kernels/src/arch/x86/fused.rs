//! What the AVX2 and AVX-512 [`Isa::gemm_rows_fused`] kernels share: the choice of loop for the
//! input's layout ([`run`]), L1-sized column blocks and the depth-blocked loop. Each path brings
//! its register tiles and its stores ([`FusedTiles`]).
//!
//! [`Isa::gemm_rows_fused`]: crate::arch::Isa::gemm_rows_fused

pub(super) use crate::arch::fused_parts::{Act, Epilogue};
use crate::arch::{evenly_spaced, BRows, FusedRows, Listed, Strided};

impl<'d> Epilogue<'d> {
    /// The same rows from column `c0` of the output (and of the residual) on.
    ///
    /// # Safety
    /// Every row (and residual row) holds columns past `col + c0`.
    unsafe fn shifted(self, c0: usize) -> Epilogue<'d> {
        let mut part = self;
        part.col += c0;
        if !part.residual.is_null() {
            // SAFETY: the caller guarantees the residual rows reach past `c0`.
            part.residual = unsafe { part.residual.add(c0) };
        }
        part
    }

    /// Column strips of `nr` per column block of a tile loop over `m` weight rows of depth `k`:
    /// as many (up to 16) as fit in L1 beside the weight rows, so a tile's stores fall between
    /// loads of other strips. With one strip, a row block's stores and the next row block's
    /// loads of the same strip 4K-alias when planes lie a multiple of 4 KiB apart (BlazeFace's
    /// 64×64 and 32×32: its 24→24 layers took 30 % longer on Zen 3 than with the accumulator
    /// pass); a block that overflows L1 costs more (a 96→96 layer over 80×160 took 5-8 % longer
    /// with 16 strips).
    pub(super) fn l1_strips(self, k: usize, m: usize, nr: usize) -> usize {
        let free = FUSED_L1_BYTES.saturating_sub(m * k * 4);
        (free / (k * nr * 4).max(1)).clamp(1, 16)
    }
}

/// Bytes of L1 a column block of the fused kernels and their weight rows may fill (see
/// [`Epilogue::l1_strips`]; 32 KiB L1 less a few lines for the output rows).
const FUSED_L1_BYTES: usize = 28 << 10;

/// f32 elements in a 4 KiB page: rows this many apart map to the same L1 sets.
const PAGE_FLOATS: usize = 1024;

/// Floats (16 KiB) of the L1-sized block into which [`run`] copies input rows that would
/// otherwise share an L1 set.
const PAGE_ROWS_BLOCK: usize = 4096;

/// Most rows of `b` per depth block of [`deep`]: a strip of that many rows stays in
/// L1 while the weight rows stream over it. Of 64, 96, 128, 192 and 256 on Zen 3 (AVX2), 128 was
/// fastest (320->1280 over 7×7: 0.69 ms unblocked, 0.63-0.66 at 64-256).
const KB_DEPTH: usize = 128;

/// Rows whose partial sums [`deep`] carries between depth blocks.
const KB_ROWS: usize = 48;

/// A path's register tiles for [`run`].
pub(super) trait FusedTiles {
    /// Columns of one register tile's strip.
    const NR: usize;
    /// Most weight rows of one register tile.
    const MR: usize;
    /// Whether [`run`] first copies input rows whose planes lie a whole number of 4 KiB pages
    /// apart into one contiguous block (see there).
    const COPIES_PAGE_ALIASED_ROWS: bool;
    /// One weight row's partial sums over a strip, carried between depth blocks.
    type Carry: Copy;

    /// `m` weight rows `a` (`k` each) against `k` rows of `b` found through `rows`, `n` columns,
    /// into `sink`.
    ///
    /// # Safety
    /// The path's CPU features are available; `a`, `b` (through `rows`) and `sink` cover every
    /// row and column named.
    unsafe fn rows<B: BRows>(
        a: *const f32,
        k: usize,
        m: usize,
        b: *const f32,
        rows: B,
        n: usize,
        sink: Epilogue<'_>,
    );

    /// One depth block of [`deep`]: `sum_p a[i * lda + p] * b[p * step + 0..w]` over the block's
    /// `kl` rows for `r` weight rows (at most [`FusedTiles::MR`]), `w <= NR`, added to the rows'
    /// partial sums in `carry` (unless this is the `first` block) and left there, or, after the
    /// `last` block, handed to `sink` as rows `at.0 ..` at column `at.1`.
    ///
    /// # Safety
    /// The path's CPU features are available; `a` holds `r` rows of `kl` values `lda` apart,
    /// `b` `kl` rows of `w` values `step` apart, `carry` `r` partial sums, and `sink` rows
    /// `at.0 .. at.0 + r` with columns `at.1 .. at.1 + w`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn deep_tile(
        r: usize,
        a: *const f32,
        lda: usize,
        kl: usize,
        b: *const f32,
        step: usize,
        w: usize,
        carry: *mut Self::Carry,
        first: bool,
        last: bool,
        sink: Epilogue<'_>,
        at: (usize, usize),
    );
}

/// Products deeper than [`KB_DEPTH`] over rows `step` apart (1×1 convolutions with many input
/// channels) on path `T`: strip by strip of `NR` columns, the depth is cut into even blocks of
/// at most [`KB_DEPTH`] rows of `b`, each of which stays in L1 while up to [`KB_ROWS`] weight rows
/// stream over it; their partial sums wait in registers' worth of stack between blocks.
/// Unblocked, a strip of 320-960 rows overflows L1 and every block of weight rows reads it again
/// from L2: MobileNetV2's 1×1 layers over 7×7 took 7-12 % longer (Zen 3, AVX2, 320->1280 0.63
/// against 0.69 ms in one-layer models).
///
/// # Safety
/// `T`'s CPU features are available; `a` holds `m` rows of `k`, `b` `k` rows of `n` values `step`
/// apart, and `sink` `m` rows of `n` columns.
unsafe fn deep<T: FusedTiles>(
    a: *const f32,
    k: usize,
    m: usize,
    b: *const f32,
    step: usize,
    n: usize,
    sink: Epilogue<'_>,
) {
    // Left unset: a depth block's tiles write their rows' sums before a later block reads them
    // (zeroing the 9 KiB took 1-2 % of a 160 -> 960 layer over 7×7, 20 calls of 48 rows).
    let mut carry = std::mem::MaybeUninit::<[T::Carry; KB_ROWS]>::uninit();
    let carry = carry.as_mut_ptr().cast::<T::Carry>();
    let depth = k.div_ceil(k.div_ceil(KB_DEPTH));
    let mut j = 0;
    while j < n {
        let w = (n - j).min(T::NR);
        let mut i0 = 0;
        while i0 < m {
            let rows_end = m.min(i0 + KB_ROWS);
            let mut k0 = 0;
            while k0 < k {
                let kl = (k - k0).min(depth);
                let (first, last) = (k0 == 0, k0 + kl == k);
                let mut i = i0;
                while i < rows_end {
                    let r = (rows_end - i).min(T::MR);
                    // SAFETY: rows i..i+r of `a` and the sink, depth k0..k0+kl of `a` and `b` and
                    // columns j..j+w of `b` and the sink are within the caller's bounds; `carry`
                    // holds KB_ROWS >= rows_end - i0 rows, of which these use i-i0 .. i-i0+r.
                    unsafe {
                        let (ap, bp, c) = (a.add(i * k + k0), b.add(k0 * step + j), carry.add(i - i0));
                        T::deep_tile(r, ap, k, kl, bp, step, w, c, first, last, sink, (i, j));
                    }
                    i += r;
                }
                k0 += kl;
            }
            i0 = rows_end;
        }
        j += w;
    }
}

/// [`Isa::gemm_rows_fused`](crate::arch::Isa::gemm_rows_fused) on path `T`, for operands
/// `gemm_rows_fused_check` accepted with `m` rows.
///
/// # Safety
/// `T`'s CPU features are available, and the check passed for these operands and `m`.
pub(super) unsafe fn run<T: FusedTiles>(
    a: &[f32],
    k: usize,
    m: usize,
    b: &[f32],
    offs: &[usize],
    n: usize,
    out: FusedRows<'_, '_>,
) {
    let sink = Epilogue::new(out);
    // SAFETY: the check asserted `k` offsets with `n` elements of `b` after each, `m` output rows
    // of at least `col + n` values, `m` biases when there are any, `m` slopes for a leaky
    // activation, and `n` residual values at `r * pitch` for every row `r` below both `m` and the
    // residual's row count. Evenly spaced, row `p` of `b + offs[0]` at `p * step` is `b +
    // offs[p]`, the same rows. A copied chunk holds `k` rows of `chunk` (`k * chunk <=
    // PAGE_ROWS_BLOCK`, `chunk >= NR` as `k <= PAGE_ROWS_BLOCK / NR`), of which the
    // kernel reads the `w` columns just copied from columns `c0 ..` of `b`'s rows (`c0 + w <=
    // n`) and writes columns `c0 ..` of the output and reads the same of the residual: the sink
    // shifted by `c0`.
    unsafe {
        match evenly_spaced(&offs[..k]) {
            // (At most as many rows as leave a whole strip of each in the block.)
            Some(step)
                if T::COPIES_PAGE_ALIASED_ROWS
                    && step > 0
                    && step % PAGE_FLOATS == 0
                    && k <= PAGE_ROWS_BLOCK / T::NR
                    && m > T::MR =>
            {
                // Planes a whole number of 4 KiB pages apart (64×64, 32×32): a column of every
                // row falls in one L1 set, so a block of 24 rows cannot stay in L1 while each
                // block of filters streams over it. Copied chunk by chunk into one contiguous
                // block, it does (AVX2 tiles: BlazeFace 1.128 -> 1.100 ms at 1 thread on Zen 3;
                // the AVX-512 tiles do not copy, see `fused_avx512`). One block
                // of filters (at most `MR` rows) reads each input value once, so the copy would
                // only add a pass: BlazeFace full range's 32 -> 8 layers over 96×96 took
                // 0.069-0.079 ms copied and 0.044-0.048 read in place (one-layer model, 1 thread,
                // Emerald Rapids Xeon, six alternating pairs).
                let mut block = std::mem::MaybeUninit::<[f32; PAGE_ROWS_BLOCK]>::uninit();
                let block = block.as_mut_ptr().cast::<f32>();
                let chunk = (PAGE_ROWS_BLOCK / k / T::NR * T::NR).min(16 * T::NR);
                let rows = b.as_ptr().add(offs[0]);
                let mut c0 = 0;
                while c0 < n {
                    let w = (n - c0).min(chunk);
                    for p in 0..k {
                        std::ptr::copy_nonoverlapping(rows.add(p * step + c0), block.add(p * chunk), w);
                    }
                    T::rows(a.as_ptr(), k, m, block, Strided(chunk), w, sink.shifted(c0));
                    c0 += w;
                }
            }
            // Deep products in blocks of depth that stay in L1.
            Some(step) if k > KB_DEPTH => deep::<T>(a.as_ptr(), k, m, b.as_ptr().add(offs[0]), step, n, sink),
            // A 1×1 convolution's rows are its input planes, evenly spaced: the kernel then
            // steps through `b` instead of loading an offset per row (3-5 % of a 320->1280
            // layer over 7×7 and of a 576->96 one over 14×14 on Zen 3).
            Some(step) => T::rows(a.as_ptr(), k, m, b.as_ptr().add(offs[0]), Strided(step), n, sink),
            None => T::rows(a.as_ptr(), k, m, b.as_ptr(), Listed(offs.as_ptr()), n, sink),
        }
    }
}
