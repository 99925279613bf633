//! The AVX2 GEMV for 3- to 7-bit indices: tables as byte planes, looked up with `vpshufb`.
//!
//! AVX2's `vpermps` looks up 8 entries, so a 16-entry table took two of them and a blend on bit 3
//! per 8 weights, plus a shift to bring the next index down: on Zen 3, where `vpermps` issues once
//! a cycle and shifts share the two shuffle pipes, about 6 shuffle-pipe slots per 8 weights; wider
//! tables went through gathers (5-7 bits: 2x slower than the f32 GEMV). Here the table is split
//! into four planes, plane `k` holding byte `k` of every entry, 16 entries per register (repeated
//! in both 128-bit lanes), and 32 indices, one per byte, are looked up at once with one `vpshufb`
//! per plane and 16 entries (entries past 16 take one more per 16, selected by the index's upper
//! bits, see [`lookup`]); byte and word unpacks put each entry's four bytes back together as 4 x 8
//! f32 weights. At 4 bits that is 3 shuffles per 8 weights (measured 1.7-1.9x faster than the
//! `vpermps` kernel at 4096 x 4096 on a Zen 3). The unpacks work inside each 128-bit lane, so
//! [`prepare`] gives the input the same order.
//!
//! A 4-bit block is 32 bytes, 64 indices: its low nibbles are the even columns, its high nibbles
//! the odd ones, each spread one per byte by an AND (and a 16-bit shift for the high ones). Other
//! widths take 32 indices (`4 * B` bytes) per block, spread one per byte in [`spread`]: each
//! index's 16-bit window is gathered into a word with `vpshufb`, shifted down by an unsigned
//! high multiply and masked, and the second register's words are shifted into the first's high
//! bytes.

use std::arch::x86_64::*;

use super::bounds::{self, Span};
use super::gemv_wide::PREFETCH;
use crate::arch::{permute_each_block, row_table, tables_from};

/// Columns per 4-bit block: 32 packed bytes.
const COLS: usize = 64;
/// Packed bytes per 4-bit block.
const BYTES: usize = 32;
/// Columns per block at the other widths (`4 * bits` packed bytes).
const WIDE_COLS: usize = 32;

/// Whether [`dot_rows`] takes rows of `bits`-bit indices.
pub(super) fn takes(bits: u8) -> bool {
    (3..=7).contains(&bits)
}

/// Writes `x` into `xp` in the order [`rows_sum`] leaves the weights of a 4-bit 64-column
/// block: half `h` (0: even columns, the low nibbles; 1: odd ones), vector `v`, lane `4 * l + t`
/// holds the index in byte `16 * l + 4 * v + t` of the block, column `2 * (16 * l + 4 * v + t)
/// + h`. The
/// last, partial block is zero-padded when `xp` has room for it, and copied unchanged otherwise
/// (its columns then go through the path's `dot_packed`).
///
/// At the other widths a block is 32 columns in one index per byte, [`spread`]'s order: lane
/// `l`'s index `q` in byte `2q` (q < 8) or `2(q - 8) + 1` of the lane, then [`slot`].
pub(super) fn prepare(bits: u8, x: &[f32], xp: &mut [f32]) {
    if bits == 4 {
        return permute_each_block(x, xp, COLS, |src, dst| {
            for (c, &value) in src.iter().enumerate() {
                let (byte, h) = (c / 2, c % 2);
                dst[h * 32 + slot(byte)] = value;
            }
        });
    }
    permute_each_block(x, xp, WIDE_COLS, |src, dst| {
        for (c, &value) in src.iter().enumerate() {
            // Lane l's index q lies in byte 2q (q < 8) or 2(q - 8) + 1 ([`spread`]).
            let (l, q) = (c / 16, c % 16);
            let byte = if q < 8 { 2 * q } else { 2 * (q - 8) + 1 };
            dst[slot(16 * l + byte)] = value;
        }
    });
}

/// Where the unpacks leave the weight of index byte `i` (0..32) of a register: vector `i % 16 /
/// 4`, lane `4 * (i / 16) + i % 4`.
fn slot(i: usize) -> usize {
    let (l, v, t) = (i / 16, i % 16 / 4, i % 4);
    v * 8 + l * 4 + t
}

/// [`crate::arch::Isa::dot_packed_rows`] at 3 to 7 bits: each row's whole blocks (and a partial
/// last one when `xp` holds it zero-padded) through [`rows_sum`], the rest through `dot` (the
/// path's one-row product). A shared table is split into planes once per call.
///
/// # Safety
/// AVX2 and FMA must be available; `bits` is 3..=7 ([`takes`]); `luts` holds one table or one
/// per row; `xp` is [`prepare`]'s output for `x` at `bits`.
pub(super) unsafe fn dot_rows(
    rows: &[&[u8]],
    bits: u8,
    luts: &[[f32; 256]],
    x: &[f32],
    xp: &[f32],
    out: &mut [f32],
    dot: fn(&[u8], u8, &[f32], &[f32]) -> f32,
) {
    let (cols, bytes) = if bits == 4 { (COLS, BYTES) } else { (WIDE_COLS, 4 * bits as usize) };
    let blocks = bounds::whole_blocks(rows, x.len(), cols, bytes);
    let tail = bounds::tail_bytes(rows, bits, x.len(), xp.len(), blocks, cols, bytes);
    let done = if tail > 0 { x.len() } else { blocks * cols };
    let span = Span { blocks, tail };
    let shared = (luts.len() == 1).then(|| Planes::new(&luts[0], bits));
    let windows = Windows::new(bits as usize);
    const CHUNK: usize = 64;
    for (c, (rows, out)) in rows.chunks(CHUNK).zip(out.chunks_mut(CHUNK)).enumerate() {
        let mut sums = [0.0f32; CHUNK];
        let xp = xp.as_ptr();
        // SAFETY (both calls): the caller guarantees AVX2 + FMA and bits 3..=7; `whole_blocks`
        // and `tail_bytes` guarantee every row `blocks * bytes + tail` bytes and `xp`
        // `(blocks + (tail > 0)) * cols` values; one table for all rows, or one for one row.
        let sum = |rows: &[&[u8]], planes: &Planes, sums: &mut [f32]| unsafe {
            match bits {
                3 => rows_sum::<3>(rows, planes, &windows, xp, span, sums),
                4 => rows_sum::<4>(rows, planes, &windows, xp, span, sums),
                5 => rows_sum::<5>(rows, planes, &windows, xp, span, sums),
                6 => rows_sum::<6>(rows, planes, &windows, xp, span, sums),
                _ => rows_sum::<7>(rows, planes, &windows, xp, span, sums),
            }
        };
        match &shared {
            // A shared table stays in registers across the chunk's rows.
            Some(planes) => sum(rows, planes, &mut sums),
            None => {
                let mut planes = Planes([[[0u8; 16]; 4]; 8]);
                for (r, (row, s)) in rows.iter().zip(&mut sums).enumerate() {
                    planes.fill(row_table(luts, c * CHUNK + r), bits);
                    sum(std::slice::from_ref(row), &planes, std::slice::from_mut(s));
                }
            }
        }
        bounds::add_row_tails(dot, rows, bits, tables_from(luts, c * CHUNK), x, done, &sums, out);
    }
}

/// [`crate::arch::Isa::dot_nibble_rows_f16`] on AVX2: each row's f16 centroids widened into 16
/// floats on the stack (F16C where present) and split into planes, its whole blocks (and a
/// partial last one when `xp` holds it zero-padded) through [`rows_sum`], the rest through `dot`
/// with the widened table: the sums [`dot_rows`] gives at 4 bits with those tables, without the
/// GEMV filling a 256-entry table per row and calling for each.
///
/// # Safety
/// AVX2 and FMA must be available; `tables` holds one list of at most 16 centroids per row;
/// `out` at least `rows.len()` entries; `xp` is [`prepare`]'s output for `x` at 4 bits.
pub(super) unsafe fn dot_nibble_rows_f16(
    rows: &[&[u8]],
    tables: &[&[half::f16]],
    x: &[f32],
    xp: &[f32],
    out: &mut [f32],
    dot: fn(&[u8], u8, &[f32], &[f32]) -> f32,
) {
    let blocks = bounds::whole_blocks(rows, x.len(), COLS, BYTES);
    let tail = bounds::tail_bytes(rows, 4, x.len(), xp.len(), blocks, COLS, BYTES);
    let done = if tail > 0 { x.len() } else { blocks * COLS };
    let span = Span { blocks, tail };
    let windows = Windows::new(4);
    let f16c = is_x86_feature_detected!("f16c");
    let mut planes = Planes([[[0u8; 16]; 4]; 8]);
    for ((row, table), o) in rows.iter().zip(tables).zip(out.iter_mut()) {
        let mut raw = [0u16; 16];
        raw.iter_mut().zip(*table).for_each(|(r, v)| *r = v.to_bits());
        let lut: [f32; 16] = if f16c {
            // SAFETY: F16C was detected just now; `raw` holds 16 values.
            unsafe { widen16_f16c(&raw) }
        } else {
            std::array::from_fn(|i| half::f16::from_bits(raw[i]).to_f32())
        };
        // SAFETY: the caller guarantees AVX2 + FMA; `lut` holds 16 floats; `whole_blocks` and
        // `tail_bytes` guarantee the row `blocks * 32 + tail` bytes and `xp` the span's blocks.
        let mut sum = 0.0f32;
        unsafe {
            split16(lut.as_ptr(), &mut planes.0[0]);
            rows_sum::<4>(
                std::slice::from_ref(row),
                &planes,
                &windows,
                xp.as_ptr(),
                span,
                std::slice::from_mut(&mut sum),
            );
        }
        *o = if done < x.len() { sum + dot(&row[done / 2..], 4, &lut, &x[done..]) } else { sum };
    }
}

/// 16 f16 bit patterns widened to f32.
///
/// # Safety
/// F16C (and AVX) must be available.
#[target_feature(enable = "avx,f16c")]
unsafe fn widen16_f16c(raw: &[u16; 16]) -> [f32; 16] {
    let mut out = [0.0f32; 16];
    for h in 0..2 {
        // SAFETY: 8 u16 at `raw[8 * h..]`, 8 floats at `out[8 * h..]`.
        unsafe {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(raw[8 * h..].as_ptr().cast()));
            _mm256_storeu_ps(out[8 * h..].as_mut_ptr(), v);
        }
    }
    out
}

/// A table's four byte planes in 16-entry registers: `0[s][k][i]` is byte `k` (little-endian) of
/// entry `16 * s + i` (registers past the table's `2^bits` entries are zero).
struct Planes([[[u8; 16]; 4]; 8]);

impl Planes {
    fn new(lut: &[f32; 256], bits: u8) -> Self {
        let mut planes = Planes([[[0u8; 16]; 4]; 8]);
        planes.fill(lut, bits);
        planes
    }

    /// Splits the table's first `max(16, 2^bits)` entries into planes, 16 at a time by a byte
    /// shuffle and a 4×4 word transpose: per-row codebooks refill them for every row, where the
    /// scalar loop (and zeroing) took about as long as a 576-column row's sum.
    fn fill(&mut self, lut: &[f32; 256], bits: u8) {
        for (s, planes) in self.0.iter_mut().enumerate().take(subtables(bits as usize)) {
            // SAFETY: AVX2 was detected before the path that calls this was handed out; the
            // subtable's 16 entries lie in the 256-entry table (s < 8).
            unsafe { split16(lut[16 * s..].as_ptr(), planes) }
        }
    }
}

/// `planes[k][i]` = byte `k` of `src[i]`, for 16 floats.
///
/// # Safety
/// AVX2 must be available; 16 floats must be readable at `src`.
#[target_feature(enable = "avx2")]
unsafe fn split16(src: *const f32, planes: &mut [[u8; 16]; 4]) {
    // Within each 4 entries: their byte 0s, byte 1s, byte 2s, byte 3s.
    let group = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    // SAFETY: the caller guarantees 16 floats at `src`.
    let q: [__m128i; 4] =
        std::array::from_fn(|j| unsafe { _mm_shuffle_epi8(_mm_loadu_si128(src.add(4 * j).cast()), group) });
    let (t0, t1) = (_mm_unpacklo_epi32(q[0], q[1]), _mm_unpacklo_epi32(q[2], q[3]));
    let (t2, t3) = (_mm_unpackhi_epi32(q[0], q[1]), _mm_unpackhi_epi32(q[2], q[3]));
    let out = [
        _mm_unpacklo_epi64(t0, t1),
        _mm_unpackhi_epi64(t0, t1),
        _mm_unpacklo_epi64(t2, t3),
        _mm_unpackhi_epi64(t2, t3),
    ];
    for (plane, v) in planes.iter_mut().zip(out) {
        // SAFETY: a plane is 16 bytes.
        unsafe { _mm_storeu_si128(plane.as_mut_ptr().cast(), v) }
    }
}

/// 16-entry registers a `B`-bit table spans.
const fn subtables(b: usize) -> usize {
    if b <= 4 {
        1
    } else {
        1 << (b - 4)
    }
}

/// Each row's sum over the span, against one table: per block one load, the indices spread one
/// per byte (two nibble masks at 4 bits, [`spread`] otherwise), the plane lookups, sixteen
/// unpacks per 32 weights and one FMA per 8.
///
/// # Safety
/// AVX2 and FMA must be available; `B` is 3..=7; every row holds at least `span.blocks * bytes +
/// span.tail` bytes (`bytes` 32 at 4 bits, `4 * B` otherwise), `xp` at least `span.count()`
/// blocks of floats (64 at 4 bits, 32 otherwise) and `sums` at least `rows.len()` entries.
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_sum<const B: usize>(
    rows: &[&[u8]],
    planes: &Planes,
    windows: &Windows,
    xp: *const f32,
    span: Span,
    sums: &mut [f32],
) {
    let (cols, bytes) = if B == 4 { (COLS, BYTES) } else { (WIDE_COLS, 4 * B) };
    // SAFETY: each plane is 16 bytes.
    let t: [[__m256i; 4]; 8] = std::array::from_fn(|s| {
        std::array::from_fn(|k| {
            if s < subtables(B) {
                unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(planes.0[s][k].as_ptr().cast())) }
            } else {
                _mm256_setzero_si256()
            }
        })
    });
    // SAFETY: the window constants are 32 bytes each.
    let (gather, shift) = unsafe {
        let load = |p: *const u8| _mm256_loadu_si256(p.cast());
        (
            [load(windows.gather[0].as_ptr()), load(windows.gather[1].as_ptr())],
            [load(windows.shift[0].as_ptr().cast()), load(windows.shift[1].as_ptr().cast())],
        )
    };
    let mask = _mm256_set1_epi16(((1u32 << B) - 1) as i16);
    let low = _mm256_set1_epi8(0x0F);
    // The register loads read 32 bytes from a block's start (4 bits), or 16 from it and 16 from
    // `2 * B` bytes on (each lane's 16 indices).
    let reach = if B == 4 { 32 } else { 2 * B + 16 };
    let consts = Consts { gather, shift, mask, low };
    for (row, sum) in rows.iter().zip(sums.iter_mut()) {
        let mut acc = [_mm256_setzero_ps(); 4];
        // Whole blocks with `reach` bytes in the row are read in place; the rest (the last one or
        // two, and a partial one) from a copy of the block's own bytes in a zeroed block, whose
        // missing indices read as 0 against `xp`'s zero padding (AVX2 has no byte-masked load).
        let direct = if row.len() >= reach { span.blocks.min((row.len() - reach) / bytes + 1) } else { 0 };
        for blk in 0..direct {
            let at = blk * bytes;
            // A row is one short stream (2 KiB at 4096 4-bit columns); fetch ahead, as the AVX-512
            // kernels do.
            _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(at + PREFETCH).cast());
            // SAFETY: `reach` bytes from `at` lie in `row` (blk < direct); the caller guarantees
            // `cols` floats of `xp` per block.
            unsafe { block::<B>(row.as_ptr().add(at), xp.add(blk * cols), &t, &consts, &mut acc) };
        }
        for blk in direct..span.count() {
            let at = blk * bytes;
            let own = if blk < span.blocks { bytes } else { span.tail };
            let mut last = [0u8; 32];
            last[..own].copy_from_slice(&row[at..at + own]);
            // SAFETY: `last` holds 32 >= `reach` bytes; as above for `xp`.
            unsafe { block::<B>(last.as_ptr(), xp.add(blk * cols), &t, &consts, &mut acc) };
        }
        *sum = super::avx2::hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    }
}

/// The per-call constants of [`block`].
struct Consts {
    gather: [__m256i; 2],
    shift: [__m256i; 2],
    mask: __m256i,
    low: __m256i,
}

/// One block's products into `acc`: its indices spread one per byte (two nibble masks at 4 bits,
/// [`spread`] otherwise), the plane lookups, sixteen unpacks per 32 weights and one FMA per 8.
///
/// # Safety
/// AVX2 and FMA must be available; `src` holds 32 readable bytes at 4 bits, `2 * B + 16` otherwise;
/// `xp` holds the block's floats (64 at 4 bits, 32 otherwise).
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn block<const B: usize>(
    src: *const u8,
    xp: *const f32,
    t: &[[__m256i; 4]; 8],
    c: &Consts,
    acc: &mut [__m256; 4],
) {
    let halves: [__m256i; 2] = if B == 4 {
        // SAFETY: 32 bytes at `src` (the caller).
        let packed = unsafe { _mm256_loadu_si256(src.cast()) };
        [_mm256_and_si256(packed, c.low), _mm256_and_si256(_mm256_srli_epi16::<4>(packed), c.low)]
    } else {
        // SAFETY: 2 * B + 16 bytes at `src` (the caller).
        let raw = unsafe { _mm256_loadu2_m128i(src.add(2 * B).cast(), src.cast()) };
        [spread(raw, &c.gather, &c.shift, c.mask), _mm256_setzero_si256()]
    };
    for (h, idx) in halves.into_iter().enumerate().take(if B == 4 { 2 } else { 1 }) {
        let p = lookup::<B>(idx, t);
        let (lo01, hi01) = (_mm256_unpacklo_epi8(p[0], p[1]), _mm256_unpackhi_epi8(p[0], p[1]));
        let (lo23, hi23) = (_mm256_unpacklo_epi8(p[2], p[3]), _mm256_unpackhi_epi8(p[2], p[3]));
        let w = [
            _mm256_unpacklo_epi16(lo01, lo23),
            _mm256_unpackhi_epi16(lo01, lo23),
            _mm256_unpacklo_epi16(hi01, hi23),
            _mm256_unpackhi_epi16(hi01, hi23),
        ];
        for (v, (acc, w)) in acc.iter_mut().zip(w).enumerate() {
            // SAFETY: the block's floats of `xp` (the caller).
            let xv = unsafe { _mm256_loadu_ps(xp.add(h * 32 + v * 8)) };
            *acc = _mm256_fmadd_ps(_mm256_castsi256_ps(w), xv, *acc);
        }
    }
}

/// Byte `k` of the table entries of 32 indices (one per byte), for each plane `k`: one `vpshufb`
/// per 16-entry register; past 16 entries, register `s` reads `index ^ 16s` raised by 0x70 with
/// saturation, so an index outside its 16 entries has bit 7 set and reads as zero, and the
/// registers' bytes are ORed.
#[inline]
#[target_feature(enable = "avx2")]
fn lookup<const B: usize>(idx: __m256i, t: &[[__m256i; 4]; 8]) -> [__m256i; 4] {
    if subtables(B) == 1 {
        return std::array::from_fn(|k| _mm256_shuffle_epi8(t[0][k], idx));
    }
    let raise = _mm256_set1_epi8(0x70);
    let mut p = [_mm256_setzero_si256(); 4];
    for (s, t) in t.iter().enumerate().take(subtables(B)) {
        let sel = _mm256_adds_epu8(_mm256_xor_si256(idx, _mm256_set1_epi8((16 * s) as i8)), raise);
        for (p, t) in p.iter_mut().zip(t) {
            *p = _mm256_or_si256(*p, _mm256_shuffle_epi8(*t, sel));
        }
    }
    p
}

/// The constants of [`spread`] at one width: per word of the two registers, the bytes of the
/// 16-bit window holding its index, and the multiplier whose high half shifts it down.
struct Windows {
    gather: [[u8; 32]; 2],
    shift: [[u16; 16]; 2],
}

impl Windows {
    /// Index `q` (0..16) of a lane's `2 * bits` bytes starts at bit `q * bits`: its window is
    /// the byte holding that bit and the next (`window >> s`, `s` its offset, 1..=7), or, for
    /// an index starting a byte, the byte before it (a zero byte before byte 0) and that byte
    /// (`s` = 8), so that the multiplier `2^(16 - s)` fits 16 bits. Register 0 takes the lane's
    /// indices 0..8, register 1 indices 8..16.
    fn new(bits: usize) -> Self {
        let mut gather = [[0u8; 32]; 2];
        let mut shift = [[0u16; 16]; 2];
        for r in 0..2 {
            for lane in 0..2 {
                for w in 0..8 {
                    let bit = (8 * r + w) * bits;
                    let (lo, hi, s) = match (bit / 8, bit % 8) {
                        // 0x80 makes `vpshufb` write a zero byte.
                        (0, 0) => (0x80, 0, 8),
                        (byte, 0) => (byte - 1, byte, 8),
                        (byte, s) => (byte, byte + 1, s),
                    };
                    gather[r][lane * 16 + 2 * w] = lo as u8;
                    gather[r][lane * 16 + 2 * w + 1] = hi as u8;
                    shift[r][lane * 8 + w] = 1 << (16 - s);
                }
            }
        }
        Windows { gather, shift }
    }
}

/// 32 indices of `bits` bits, each lane's 16 from its `2 * bits` bytes of `raw`, one per byte:
/// window gather ([`Windows`]), high multiply, mask, and the second register's words shifted
/// into the first's high bytes (lane index `q` in byte `2q` for q < 8, `2(q - 8) + 1` after).
#[inline]
#[target_feature(enable = "avx2")]
fn spread(raw: __m256i, gather: &[__m256i; 2], shift: &[__m256i; 2], mask: __m256i) -> __m256i {
    let words: [__m256i; 2] = std::array::from_fn(|r| {
        let window = _mm256_shuffle_epi8(raw, gather[r]);
        _mm256_and_si256(mulhi_epu16(window, shift[r]), mask)
    });
    _mm256_or_si256(words[0], _mm256_slli_epi16::<8>(words[1]))
}

/// `vpmulhuw`, opaque to the compiler: written as the intrinsic, LLVM rewrote the high multiply,
/// together with the mask and merge after it (a word pack, then the shift and OR of [`spread`]),
/// into 32-bit multiplies with widening and narrowing shuffles (3-bit GEMV 4.0-4.4 ms at 4096 x
/// 4096 against 2.9 for the `vpermps` kernel it replaces).
#[inline]
#[target_feature(enable = "avx2")]
fn mulhi_epu16(a: __m256i, b: __m256i) -> __m256i {
    let r: __m256i;
    // SAFETY: one register-only AVX2 instruction (the caller's target feature); it touches no
    // memory, stack or flags.
    unsafe {
        std::arch::asm!(
            "vpmulhuw {r}, {a}, {b}",
            r = lateout(ymm_reg) r,
            a = in(ymm_reg) a,
            b = in(ymm_reg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    r
}
