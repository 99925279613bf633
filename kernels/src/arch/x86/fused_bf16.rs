//! AVX-512 BF16 [`FusedBf16`]: the products of a 1×1 layer on weights and inputs rounded to
//! bf16, summed in f32 by `vdpbf16ps` (two products per f32 lane, 32 per instruction, where
//! `vfmadd231ps` does 16), with the f32 kernel's epilogue.
//!
//! Layout: a weight row's pairs of adjacent inputs `(w[2i], w[2i + 1])` are one 32-bit lane (a
//! pair row, see [`FusedBf16`]: 4-bit rows decoded straight into it through a table of 16 bf16,
//! others rounded over their own f32 values); the input is packed strip by strip of at most
//! [`BF16_STRIP`](crate::arch::BF16_STRIP) columns, input rows `2i` and `2i + 1` interleaved per
//! column (one 32-bit lane per column), so a register tile broadcasts one weight pair and loads
//! the strip's pairs as they lie. A strip is packed once for every row of the panel, into the
//! caller's scratch; when the scratch holds every strip of the columns, the caller can keep them
//! for its next panel of filters over the same columns. A 16-bit pair of an odd depth's last row
//! takes a zero. Single columns (a 7×7 plane's 49th) are dot products of pair rows
//! ([`FusedBf16::dot_rows`]).
//!
//! Measured before it was built (a stand-alone model of this tile against the f32 tile of the
//! same loop, Zen 5, 1 thread): 0.49-0.51 of its time at 320 → 1280, 960 → 320 and 160 → 960 over
//! 7×7, 0.51-0.54 over 14×14, 0.58-0.64 over 56×56 and 112×112, the packing included.
//!
//! [`FusedBf16`]: crate::arch::FusedBf16

use std::arch::x86_64::*;

use super::avx512::lane_mask;
use super::fused_avx512::store;
use crate::arch::fused_parts::Epilogue;
use crate::arch::{
    bf16_packed_len, bf16_strip_len, gemm_rows_fused_check, FusedBf16, FusedRows, BF16_STRIP as STRIP,
};

/// Weight rows per register tile.
const MR: usize = 8;

/// This path's bf16 1×1 kernels.
pub(super) const KERNELS: FusedBf16 =
    FusedBf16 { gemm: gemm_rows_fused_bf16, pairs_in_place, decode_nibbles, dot_rows };

/// See [`FusedBf16::gemm`].
#[allow(clippy::too_many_arguments)]
fn gemm_rows_fused_bf16(
    a: &[f32],
    k: usize,
    b: &[f32],
    offs: &[usize],
    n: usize,
    out: FusedRows<'_, '_>,
    strips: &mut [f32],
    pack: bool,
) {
    let Some(m) = gemm_rows_fused_check(a, k, b, offs, n, &out) else { return };
    let (pairs, strip) = (k.div_ceil(2), bf16_strip_len(k));
    // Every strip of the columns, or one at a time (then packed here, whatever `pack` says).
    let all = strips.len() >= bf16_packed_len(k, n);
    assert!(strips.len() >= strip, "gemm_rows_fused_bf16: strip scratch too short");
    // SAFETY: this function is only in the table when AVX-512 F/BW/VL and BF16 were detected
    // (see `super::avx512`); the checks cover `a` (m rows of k), `b` (k rows at `offs`, n
    // columns each), the output rows and the strips (`pairs * STRIP` lanes each, every strip of
    // the `n` columns when `all`).
    unsafe {
        let sink = Epilogue::new(out);
        let mut j = 0;
        while j < n {
            let w = (n - j).min(STRIP);
            let at = if all { j / STRIP * strip } else { 0 };
            if pack || !all {
                pack_strip(b, offs, k, j, w, &mut strips[at..at + strip]);
            }
            let mut i = 0;
            while i < m {
                let r = (m - i).min(MR);
                let (ap, bp) = (a.as_ptr().add(i * k).cast::<u32>(), strips.as_ptr().add(at).cast::<u32>());
                tile_for(r, w, ap, k, pairs, bp, sink, (i, j));
                i += r;
            }
            j += w;
        }
    }
}

/// See [`FusedBf16::pairs_in_place`].
fn pairs_in_place(a: &mut [f32], k: usize) {
    if k == 0 {
        return;
    }
    for row in a.chunks_exact_mut(k) {
        // SAFETY: only in the table when AVX-512 F/BW/VL and BF16 were detected.
        unsafe { row_to_pairs(row) }
    }
}

/// Rounds a row of `k` f32 to bf16 (to nearest, ties to even) in place: afterwards its first
/// `k.div_ceil(2)` 32-bit lanes hold the pairs `(w[2i], w[2i + 1])`, low half first (a zero after
/// an odd last value).
///
/// # Safety
/// AVX-512 F, BW, VL and BF16 available.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn row_to_pairs(row: &mut [f32]) {
    let k = row.len();
    let p = row.as_mut_ptr();
    let mut c = 0;
    while c < k {
        let (lo, hi) = (lane_mask(k - c), lane_mask((k - c).saturating_sub(16)));
        // SAFETY: columns c .. c + 32 of the row (masked to its end) are read; their bf16 are
        // written at bytes 2c .. 2c + 64, below byte 4c + 128 where the next unread value
        // starts, and inside the row. A masked lane reads as zero: an odd row's last pair gets a
        // zero above.
        unsafe {
            let x = _mm512_maskz_loadu_ps(lo, p.add(c));
            let y = _mm512_maskz_loadu_ps(hi, p.add(c + 16));
            // One instruction for 32 values: `y`'s in the upper half.
            let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(y, x));
            _mm512_mask_storeu_epi16(p.cast::<u16>().add(c).cast(), word_mask(k - c), h);
        }
        c += 32;
    }
}

/// The mask of the first `n.min(32)` 16-bit words, rounded up to whole pairs.
#[inline]
fn word_mask(n: usize) -> __mmask32 {
    let words = n.min(32).next_multiple_of(2);
    if words == 32 {
        u32::MAX
    } else {
        (1u32 << words) - 1
    }
}

/// See [`FusedBf16::decode_nibbles`].
fn decode_nibbles(packed: &[u8], table: &[f32; 16], row: &mut [f32]) {
    let n = row.len();
    assert!(packed.len() >= n.div_ceil(2), "decode_nibbles: {} bytes for {n} indices", packed.len());
    // SAFETY: only in the table when AVX-512 F/BW/VL and BF16 were detected; `packed` holds the
    // row's bytes (checked) and `row` its `n` floats.
    unsafe { decode_nibbles_impl(packed.as_ptr(), table, row.as_mut_ptr(), n) }
}

/// [`decode_nibbles`] on `n` indices at `packed` into the `n` floats at `row`.
///
/// # Safety
/// AVX-512 F, BW, VL and BF16 available; `packed` holds `n.div_ceil(2)` bytes, `row` `n` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn decode_nibbles_impl(packed: *const u8, table: &[f32; 16], row: *mut f32, n: usize) {
    // SAFETY: the caller's contract: 32 indices (16 bytes, masked to the row's end) read per step;
    // their 32 bf16 words (masked to whole pairs of the row) written at word i, inside the row's
    // first n.next_multiple_of(2) words, which its n floats hold.
    unsafe {
        // The 16 entries rounded once, in the low words of a vector `vpermw` indexes.
        let bf: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(table.as_ptr())));
        let words = _mm512_zextsi256_si512(bf);
        let nibble = _mm512_set1_epi32(0xF);
        let mut i = 0;
        while i < n {
            let bytes = (n - i).min(32).div_ceil(2);
            let b = _mm_maskz_loadu_epi8(((1u32 << bytes) - 1) as __mmask16, packed.add(i / 2).cast());
            // Byte j's low nibble is index 2j, its high nibble index 2j + 1: one dword each.
            let d = _mm512_cvtepu8_epi32(b);
            let pair = _mm512_or_si512(
                _mm512_and_si512(d, nibble),
                _mm512_slli_epi32::<16>(_mm512_srli_epi32::<4>(d)),
            );
            // An odd row's last pair takes a zero above its value.
            let keep = if n - i >= 32 { u32::MAX } else { (1u32 << (n - i)) - 1 };
            let w = _mm512_maskz_permutexvar_epi16(keep, pair, words);
            _mm512_mask_storeu_epi16(row.cast::<u16>().add(i).cast(), word_mask(n - i), w);
            i += 32;
        }
    }
}

/// See [`FusedBf16::dot_rows`].
fn dot_rows(a: &[f32], k: usize, column: &[f32], out: &mut [f32]) {
    let pairs = k.div_ceil(2);
    assert!(column.len() >= pairs, "dot_rows: a column of {} lanes for a depth of {k}", column.len());
    assert!(
        out.is_empty() || a.len() >= (out.len() - 1) * k + pairs,
        "dot_rows: {} values for {} rows of {k}",
        a.len(),
        out.len()
    );
    // SAFETY: only in the table when AVX-512 F/BW/VL and BF16 were detected; the asserts cover
    // every row's pairs and the column's.
    unsafe { dot_rows_impl(a.as_ptr().cast(), k, column.as_ptr().cast(), out) }
}

/// [`dot_rows`] with four rows at a time (four independent sums).
///
/// # Safety
/// AVX-512 F, BW, VL and BF16 available; `a` holds `out.len()` rows of `k.div_ceil(2)` lanes
/// `k` apart, `x` `k.div_ceil(2)` lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn dot_rows_impl(a: *const u32, k: usize, x: *const u32, out: &mut [f32]) {
    let pairs = k.div_ceil(2);
    let mut r = 0;
    // SAFETY: the caller's contract; loads are masked to each row's pairs.
    unsafe {
        while r < out.len() {
            let rows = (out.len() - r).min(4);
            let mut acc = [_mm512_setzero_ps(); 4];
            let mut c = 0;
            while c < pairs {
                let mask = lane_mask(pairs - c);
                let xv: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi32(mask, x.add(c).cast()));
                for (q, acc) in acc.iter_mut().enumerate().take(rows) {
                    let row = a.add((r + q) * k + c);
                    let wv: __m512bh = std::mem::transmute(_mm512_maskz_loadu_epi32(mask, row.cast()));
                    *acc = _mm512_dpbf16_ps(*acc, wv, xv);
                }
                c += 16;
            }
            for (q, acc) in acc.iter().enumerate().take(rows) {
                out[r + q] = _mm512_reduce_add_ps(*acc);
            }
            r += rows;
        }
    }
}

/// Packs columns `j .. j + w` of the `k` input rows at `offs` into `strip`: lane `i * STRIP + c`
/// holds rows `2i` and `2i + 1` of column `j + c` as bf16, the even row in the low half (zero for
/// a missing odd row). Lanes `c >= w` are left as they are: no tile reads them.
///
/// # Safety
/// AVX-512 F, BW, VL and BF16 available; every row `offs[p]` of `b` holds columns `.. j + w`;
/// `strip` holds `k.div_ceil(2) * STRIP` floats; `w <= STRIP`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn pack_strip(b: &[f32], offs: &[usize], k: usize, j: usize, w: usize, strip: &mut [f32]) {
    let out = strip.as_mut_ptr().cast::<u32>();
    for i in 0..k.div_ceil(2) {
        // The rows' first packed column; an odd depth's last pair has no odd row.
        let even = b.as_ptr().wrapping_add(offs[2 * i] + j);
        let odd = (2 * i + 1 < k).then(|| b.as_ptr().wrapping_add(offs[2 * i + 1] + j));
        let mut c = 0;
        while c < w {
            let mask = lane_mask(w - c);
            // SAFETY: columns j + c .. (masked to j + w) of both rows, inside `b` (the contract);
            // lanes i * STRIP + c .. (masked) of the strip, inside it. Masked-off lanes are not
            // accessed.
            unsafe {
                let lo = _mm512_maskz_loadu_ps(mask, even.add(c));
                let hi = odd.map_or(_mm512_setzero_ps(), |odd| _mm512_maskz_loadu_ps(mask, odd.add(c)));
                _mm512_mask_storeu_epi32(out.add(i * STRIP + c).cast(), mask, pairs_of(lo, hi));
            }
            c += 16;
        }
    }
}

/// Lane `l` of the result: `lo[l]` rounded to bf16 in the low half, `hi[l]` in the high one (the
/// pair of two rows' values that `vdpbf16ps` multiplies by a weight pair).
///
/// # Safety
/// AVX-512 F and BF16 available.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn pairs_of(lo: __m512, hi: __m512) -> __m512i {
    // SAFETY: a 256-bit vector of 16 bf16 read as 16 words.
    let round = |v: __m512| -> __m512i {
        _mm512_cvtepu16_epi32(unsafe { std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v)) })
    };
    _mm512_or_si512(round(lo), _mm512_slli_epi32::<16>(round(hi)))
}

/// Calls [`tile`] with `R` the row count `r` (1 to [`MR`]) and `V` the vectors of `w` columns.
///
/// # Safety
/// As [`tile`].
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn tile_for(
    r: usize,
    w: usize,
    a: *const u32,
    lda: usize,
    pairs: usize,
    b: *const u32,
    sink: Epilogue<'_>,
    at: (usize, usize),
) {
    macro_rules! rows {
        ($v:literal) => {
            match r {
                8 => tile::<8, $v>(a, lda, pairs, b, w, sink, at),
                7 => tile::<7, $v>(a, lda, pairs, b, w, sink, at),
                6 => tile::<6, $v>(a, lda, pairs, b, w, sink, at),
                5 => tile::<5, $v>(a, lda, pairs, b, w, sink, at),
                4 => tile::<4, $v>(a, lda, pairs, b, w, sink, at),
                3 => tile::<3, $v>(a, lda, pairs, b, w, sink, at),
                2 => tile::<2, $v>(a, lda, pairs, b, w, sink, at),
                _ => tile::<1, $v>(a, lda, pairs, b, w, sink, at),
            }
        };
    }
    // SAFETY: the caller's contract.
    unsafe {
        if w > 32 {
            rows!(3)
        } else if w > 16 {
            rows!(2)
        } else {
            rows!(1)
        }
    }
}

/// `R` weight rows (pairs at `a`, rows `lda` floats apart) against a packed strip `b` of `pairs`
/// rows, `w <= 16 V` columns, summed in registers and handed to `sink` as rows `at.0 ..` at
/// column `at.1`.
///
/// # Safety
/// AVX-512 F, BW, VL and BF16 available; `a` holds `R` rows of `pairs` lanes `lda` apart, `b`
/// `pairs` rows of [`BF16_STRIP`](crate::arch::BF16_STRIP) lanes (the first `w` packed), and `sink` rows `at.0 .. at.0 + R` with
/// columns `at.1 .. at.1 + w`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn tile<const R: usize, const V: usize>(
    a: *const u32,
    lda: usize,
    pairs: usize,
    b: *const u32,
    w: usize,
    sink: Epilogue<'_>,
    at: (usize, usize),
) {
    let masks: [__mmask16; V] = std::array::from_fn(|v| lane_mask(w.saturating_sub(16 * v)));
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    // SAFETY: the caller's contract; lanes past `w` of the strip are loaded (they are inside it)
    // but never stored.
    unsafe {
        for p in 0..pairs {
            let bp = b.add(p * STRIP);
            let x: [__m512bh; V] =
                std::array::from_fn(|v| std::mem::transmute(_mm512_loadu_si512(bp.add(16 * v).cast())));
            for (r, acc) in acc.iter_mut().enumerate() {
                let wv: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r * lda + p) as i32));
                for (acc, &x) in acc.iter_mut().zip(&x) {
                    *acc = _mm512_dpbf16_ps(*acc, wv, x);
                }
            }
        }
        for (r, acc) in acc.into_iter().enumerate() {
            store(sink, at.0 + r, at.1, acc, masks);
        }
    }
}
