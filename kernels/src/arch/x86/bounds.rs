//! Bounds logic shared by the x86 paths: what the unsafe inner loops may assume.

/// Groups of `lanes` indices the vector loop of `dot_packed` may take, or `None` when the input
/// is unusual (bits outside 1..=8, a short LUT, a short row) and the scalar path should decide.
///
/// A group `g` of `lanes` indices starts at byte `g * lanes * bits / 8` (`lanes` is a multiple of
/// 8, so groups are byte-aligned) and the vector loop reads `read_span` bytes from each
/// `lanes / 8`-th of it, i.e. at most `(lanes / 8 - 1) * bits + read_span` bytes from its start.
pub(super) fn vector_groups(
    row: &[u8],
    bits: u8,
    lut: &[f32],
    x: &[f32],
    lanes: usize,
    read_span: usize,
) -> Option<usize> {
    let b = bits as usize;
    if !(1..=8).contains(&bits) || lut.len() < 1 << b || row.len() * 8 < x.len() * b {
        return None;
    }
    let group_bytes = lanes / 8 * b;
    let reach = group_bytes - b + read_span;
    let fit = if row.len() >= reach { (row.len() - reach) / group_bytes + 1 } else { 0 };
    Some(fit.min(x.len() / lanes))
}

/// A byte-load mask selecting the first `n` bytes (all 64 when `n >= 64`).
pub(super) fn byte_mask(n: usize) -> u64 {
    if n >= 64 {
        !0
    } else {
        (1u64 << n) - 1
    }
}

/// The blocks a multi-row GEMV kernel reads: `blocks` whole ones, then, when `tail > 0`, one
/// more of which only the first `tail` bytes are loaded (the rest read as zero indices, against
/// the zero padding of `xp`).
#[derive(Clone, Copy)]
pub(super) struct Span {
    /// Whole blocks.
    pub(super) blocks: usize,
    /// Bytes of the partial last block (0: none).
    pub(super) tail: usize,
}

impl Span {
    /// Blocks to visit, the partial one included.
    pub(super) fn count(self) -> usize {
        self.blocks + usize::from(self.tail > 0)
    }

    /// The byte mask of block `blk`'s load: every byte of a whole block (`full` bytes), the
    /// first `tail` of the partial one.
    pub(super) fn mask(self, blk: usize, full: usize) -> u64 {
        byte_mask(if blk < self.blocks { full } else { self.tail })
    }
}

/// Whole blocks of `cols` columns (`bytes` packed bytes each) that `x` and every row hold: the
/// span the multi-row GEMV kernels may read (a row too short for `x` is left to `dot_packed`'s
/// own checks on the tail).
pub(super) fn whole_blocks(rows: &[&[u8]], x_len: usize, cols: usize, bytes: usize) -> usize {
    let n = x_len / cols;
    // Rows of one tensor all hold `x`'s blocks: one compare each, not a division.
    if rows.iter().all(|row| row.len() >= n * bytes) {
        return n;
    }
    rows.iter().fold(n, |n, row| n.min(row.len() / bytes))
}

/// Packed bytes of a last, partial block that the multi-row GEMV kernels read as one more block
/// (0: none). There is one when `x` ends inside block `blocks`, `xp` holds that whole block (which
/// `gemv_prepare` then zero-pads, so the columns past `x` add nothing) and every row holds the
/// block's bytes up to `x`'s last index; the kernel loads just those bytes, so a row needs no
/// `dot_packed` tail (which cost a squeeze-excite GEMV's 144-wide rows half their time).
pub(super) fn tail_bytes(
    rows: &[&[u8]],
    bits: u8,
    x_len: usize,
    xp_len: usize,
    blocks: usize,
    cols: usize,
    bytes: usize,
) -> usize {
    let rest = x_len.saturating_sub(blocks * cols);
    if rest == 0 || rest >= cols || xp_len < (blocks + 1) * cols {
        return 0;
    }
    let need = (rest * bits as usize).div_ceil(8);
    if rows.iter().all(|row| row.len() >= blocks * bytes + need) {
        need
    } else {
        0
    }
}

/// `out[r] = sums[r] + dot(rows[r] from column from)`: the multi-row kernels' block sums plus each
/// row's remaining columns through the path's `dot_packed` (`sums` empty and `from` 0: whole rows).
#[allow(clippy::too_many_arguments)]
pub(super) fn add_row_tails(
    dot: fn(&[u8], u8, &[f32], &[f32]) -> f32,
    rows: &[&[u8]],
    bits: u8,
    luts: &[[f32; 256]],
    x: &[f32],
    from: usize,
    sums: &[f32],
    out: &mut [f32],
) {
    for (r, (row, o)) in rows.iter().zip(out.iter_mut()).enumerate() {
        let lut = crate::arch::row_table(luts, r);
        let head = sums.get(r).copied().unwrap_or(0.0);
        let tail =
            if from < x.len() { dot(&row[from * bits as usize / 8..], bits, lut, &x[from..]) } else { 0.0 };
        *o = head + tail;
    }
}

/// `lut` copied into `N` zero-padded slots (LUTs shorter than a register).
pub(super) fn padded_lut<const N: usize>(lut: &[f32]) -> [f32; N] {
    let mut t = [0.0f32; N];
    let n = lut.len().min(N);
    t[..n].copy_from_slice(&lut[..n]);
    t
}

/// Little-endian u64 at `p`.
///
/// # Safety
/// `p..p + 8` must be readable.
#[inline(always)]
pub(super) unsafe fn read_u64(p: *const u8) -> u64 {
    // SAFETY: the caller guarantees 8 readable bytes; read_unaligned has no alignment requirement.
    u64::from_le(unsafe { p.cast::<u64>().read_unaligned() })
}
