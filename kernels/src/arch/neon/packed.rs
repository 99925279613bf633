//! Packed index rows on NEON, `dot_packed` and `decode_packed`: indices decoded 16 at a time in
//! registers, centroids looked up with byte-table instructions.
//!
//! Decoding: 16 indices at `bits` bits span exactly `2 * bits` bytes. Per 8 indices one `TBL`
//! gathers the two bytes each index spans into a u16 lane, a per-lane variable shift and a mask
//! leave the index in the low byte (`bits <= 8` and a start offset `< 8` never need a third byte).
//!
//! Lookup (`bits <= 6`): the f32 centroids are split into four byte planes (plane `b` holds byte
//! `b` of every centroid), so a `TBL` on each plane (1, 2 or 4 registers for 16, 32, 64 entries)
//! fetches one byte of 16 centroids at once; two rounds of zips reassemble the f32s for a
//! product, one `ST4` stores them decoded. At 7 and 8 bits the planes would need 32 or 64
//! registers, and taking indices out of vector lanes one by one costs more than reading them
//! from memory: 8-bit indices are the row's bytes, read straight, and 7-bit rows go through the
//! portable loop that takes each index from a word; their centroids are loaded one by one.

use super::super::{decode_packed_check, scalar};
use std::arch::aarch64::*;

/// Per bit width (index 0 unused): for index `i` of a 16-group, the byte it starts in and the
/// next one, side by side in byte pair `i % 8` of control `i / 8` (one `TBL` per 8 indices then
/// gives their u16 windows), and minus its start bit within that byte (a negative count makes
/// `vshlq_u16` shift right).
struct DecodeTables {
    pairs: [[[u8; 16]; 2]; 9],
    shift: [[i16; 16]; 9],
}

const TABLES: DecodeTables = {
    let mut t = DecodeTables { pairs: [[[0; 16]; 2]; 9], shift: [[0; 16]; 9] };
    let mut bits = 1;
    while bits <= 8 {
        let mut i = 0;
        while i < 16 {
            let bit = i * bits;
            t.pairs[bits][i / 8][2 * (i % 8)] = (bit / 8) as u8;
            // At 8 bits the last "next byte" is 16: out of table range, so TBL yields 0 (unused).
            t.pairs[bits][i / 8][2 * (i % 8) + 1] = (bit / 8 + 1) as u8;
            t.shift[bits][i] = -((bit % 8) as i16);
            i += 1;
        }
        bits += 1;
    }
    t
};

/// See [`crate::arch::Isa::dot_packed`].
pub(super) fn dot_packed(row: &[u8], bits: u8, lut: &[f32], x: &[f32]) -> f32 {
    // Widths the format never produces, and LUTs shorter than the contract: the reference's
    // semantics (and bound checks) as they are.
    if !(1..=8).contains(&bits) || lut.len() < 1 << bits || x.len() < 16 {
        return scalar::dot_packed(row, bits, lut, x);
    }
    let groups = x.len() / 16;
    // SAFETY: NEON was detected before this table was handed out (`super::neon`); `x` holds
    // `16 * groups` floats; `lut` holds `2^bits` entries; `row` is passed as a slice and only
    // read through bounds-checked copies or loads of 16 bytes that fit in it.
    let (s, consumed) = unsafe {
        match bits {
            1..=4 => dot_groups_tbl::<1>(row, bits, lut, x.as_ptr(), groups),
            5 => dot_groups_tbl::<2>(row, bits, lut, x.as_ptr(), groups),
            6 => dot_groups_tbl::<4>(row, bits, lut, x.as_ptr(), groups),
            7 => dot_groups_words(row, lut, x, groups),
            _ => dot_groups_bytes(row, lut, x, groups),
        }
    };
    // The groups end on a byte boundary, so the tail is a packed row of its own.
    let tail_row = row.get(consumed..).unwrap_or(&[]);
    s + scalar::dot_packed(tail_row, bits, lut, &x[consumed * 8 / bits as usize..])
}

/// 16 bytes of `row` from `off`, zero-filled past its end (the reference reads missing bytes as 0).
///
/// # Safety
/// NEON available.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load_bytes(row: &[u8], off: usize) -> uint8x16_t {
    if off + 16 <= row.len() {
        // SAFETY (of the load): `off + 16 <= row.len()` was just checked.
        vld1q_u8(row.as_ptr().add(off))
    } else {
        let mut buf = [0u8; 16];
        let rest = row.get(off..).unwrap_or(&[]);
        buf[..rest.len()].copy_from_slice(rest);
        vld1q_u8(buf.as_ptr())
    }
}

/// The constant vectors that unpack 16 indices of one bit width, loaded once per row.
#[derive(Clone, Copy)]
struct Decoder {
    pairs: [uint8x16_t; 2],
    shift: [int16x8_t; 2],
    mask: uint8x16_t,
}

impl Decoder {
    /// # Safety
    /// NEON available; `1 <= bits <= 8`.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn new(bits: usize) -> Decoder {
        let (pairs, sh) = (&TABLES.pairs[bits], TABLES.shift[bits].as_ptr());
        Decoder {
            pairs: [vld1q_u8(pairs[0].as_ptr()), vld1q_u8(pairs[1].as_ptr())],
            shift: [vld1q_s16(sh), vld1q_s16(sh.add(8))],
            mask: vdupq_n_u8(((1u16 << bits) - 1) as u8),
        }
    }

    /// The 16 indices packed at the start of `bytes`, one per byte lane: per 8 indices one `TBL`
    /// for their two-byte windows, one shift; one `UZP1` keeps the low bytes, one AND the index.
    ///
    /// # Safety
    /// NEON available.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn decode16(&self, bytes: uint8x16_t) -> uint8x16_t {
        let w0 = vshlq_u16(vreinterpretq_u16_u8(vqtbl1q_u8(bytes, self.pairs[0])), self.shift[0]);
        let w1 = vshlq_u16(vreinterpretq_u16_u8(vqtbl1q_u8(bytes, self.pairs[1])), self.shift[1]);
        let idx = vuzp1q_u8(vreinterpretq_u8_u16(w0), vreinterpretq_u8_u16(w1));
        vandq_u8(idx, self.mask)
    }
}

/// Up to `16 * T` f32 centroids split into byte planes: plane `b` holds byte `b` of every
/// centroid in `T` registers (16 entries each; unused registers zero), so one `TBL` per plane
/// fetches one byte of 16 centroids at once.
#[derive(Clone, Copy)]
struct BytePlanes<const T: usize>([[uint8x16_t; 4]; 4]);

impl<const T: usize> BytePlanes<T> {
    /// The planes of `lut[..2^bits]`, zero-padded to `16 * T` entries (never indexed: indices
    /// are `< 2^bits`). Each plane is split in memory and loaded by one `LD1` of `T` registers,
    /// which puts them in consecutive registers, as a multi-register `TBL` takes them (split by
    /// `LD4` from the centroids, the planes came out interleaved, and the compiler copied four
    /// registers into place for every lookup).
    ///
    /// # Safety
    /// NEON available; `T` in {1, 2, 4}; `2^bits <= 16 * T`; `lut` holds `2^bits` floats.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn new(lut: &[f32], bits: usize) -> Self {
        let mut bytes = [[0u8; 64]; 4];
        for (e, v) in lut[..1 << bits].iter().enumerate() {
            for (plane, byte) in bytes.iter_mut().zip(v.to_le_bytes()) {
                plane[e] = byte;
            }
        }
        let mut planes = [[vdupq_n_u8(0); 4]; 4];
        for (regs, plane) in planes.iter_mut().zip(&bytes) {
            // SAFETY: each plane holds 64 bytes, at least the `16 * T` loaded.
            unsafe {
                let p = plane.as_ptr();
                match T {
                    1 => regs[0] = vld1q_u8(p),
                    2 => {
                        let q = vld1q_u8_x2(p);
                        [regs[0], regs[1]] = [q.0, q.1];
                    }
                    _ => {
                        let q = vld1q_u8_x4(p);
                        *regs = [q.0, q.1, q.2, q.3];
                    }
                }
            }
        }
        BytePlanes(planes)
    }

    /// Byte `b` of the centroids at the 16 indices `idx` (each `< 16 * T`) in result `b`: the
    /// centroids' little-endian bytes, as `st4` would store them interleaved.
    ///
    /// # Safety
    /// NEON available.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn lookup(&self, idx: uint8x16_t) -> uint8x16x4_t {
        let byte = |p: &[uint8x16_t; 4]| match T {
            1 => vqtbl1q_u8(p[0], idx),
            2 => vqtbl2q_u8(uint8x16x2_t(p[0], p[1]), idx),
            _ => vqtbl4q_u8(uint8x16x4_t(p[0], p[1], p[2], p[3]), idx),
        };
        uint8x16x4_t(byte(&self.0[0]), byte(&self.0[1]), byte(&self.0[2]), byte(&self.0[3]))
    }
}

/// Sum over the first `groups` 16-index groups via byte-plane table lookups, with `T` registers
/// per plane (`16 * T >= 2^bits` entries). Returns the sum and the bytes of `row` consumed (as
/// every `dot_groups_*`: whole groups, whose indices end on a byte boundary).
///
/// # Safety
/// NEON available; `1 <= bits <= 8`, `2^bits <= 16 * T`, `T` in {1, 2, 4}; `lut` holds `2^bits`
/// floats; `x` holds `16 * groups` floats.
#[target_feature(enable = "neon")]
unsafe fn dot_groups_tbl<const T: usize>(
    row: &[u8],
    bits: u8,
    lut: &[f32],
    x: *const f32,
    groups: usize,
) -> (f32, usize) {
    let bits = bits as usize;
    let planes = BytePlanes::<T>::new(lut, bits);
    let dec = Decoder::new(bits);
    let mut acc = [vdupq_n_f32(0.0); 4];
    let step = 2 * bits;
    for g in 0..groups {
        let b = planes.lookup(dec.decode16(load_bytes(row, g * step)));
        // Bytes 0|1 and 2|3 as u16 halves, then halves as u32: centroids 0-3, 4-7, 8-11, 12-15.
        let l01 = vreinterpretq_u16_u8(vzip1q_u8(b.0, b.1));
        let h01 = vreinterpretq_u16_u8(vzip2q_u8(b.0, b.1));
        let l23 = vreinterpretq_u16_u8(vzip1q_u8(b.2, b.3));
        let h23 = vreinterpretq_u16_u8(vzip2q_u8(b.2, b.3));
        let w = [vzip1q_u16(l01, l23), vzip2q_u16(l01, l23), vzip1q_u16(h01, h23), vzip2q_u16(h01, h23)];
        let xg = x.add(16 * g);
        for (v, (lane, &wv)) in acc.iter_mut().zip(&w).enumerate() {
            *lane = vfmaq_f32(*lane, vreinterpretq_f32_u16(wv), vld1q_f32(xg.add(4 * v)));
        }
    }
    let sum = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    (vaddvq_f32(sum), groups * step)
}

/// [`dot_groups_tbl`] for 8-bit rows, which need no decoding: each index is a byte of `row`, read
/// straight, its centroid loaded into a vector lane (a `u8` indexes the 256-entry table without a
/// bounds check). Only groups whose 16 bytes lie in `row` are taken; the caller's tail reads the
/// rest as [`scalar::dot_packed`] does (missing bytes are index 0).
///
/// # Safety
/// NEON available; `lut` holds 256 floats; `x` holds `16 * groups` floats.
#[target_feature(enable = "neon")]
unsafe fn dot_groups_bytes(row: &[u8], lut: &[f32], x: &[f32], groups: usize) -> (f32, usize) {
    let table: &[f32; 256] = lut[..256].try_into().expect("256 entries");
    let groups = groups.min(row.len() / 16);
    let mut acc = [vdupq_n_f32(0.0); 4];
    for (idx, xs) in row.chunks_exact(16).zip(x.chunks_exact(16)).take(groups) {
        for (v, lane) in acc.iter_mut().enumerate() {
            let c: [f32; 4] = std::array::from_fn(|l| table[idx[4 * v + l] as usize]);
            // SAFETY: `c` holds 4 floats and `xs` 16, of which these 4.
            *lane = unsafe { vfmaq_f32(*lane, vld1q_f32(c.as_ptr()), vld1q_f32(xs[4 * v..].as_ptr())) };
        }
    }
    let sum = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    (vaddvq_f32(sum), 16 * groups)
}

/// [`dot_groups_tbl`] for 7-bit rows, whose table is too long for registers: 64 indices (56
/// bytes) at a time decoded by the portable word decoder ([`crate::decode::decode_7bit_words`]) into a
/// buffer, then multiplied four lanes at a time (taking each index out of a vector lane cost
/// more, see [`decode_packed`]). Only whole chunks whose bytes lie in `row` are taken; returns the
/// sum and the bytes consumed, the caller's tail takes the rest.
///
/// # Safety
/// NEON available; `lut` holds 128 floats; `x` holds `16 * groups` floats.
#[target_feature(enable = "neon")]
unsafe fn dot_groups_words(row: &[u8], lut: &[f32], x: &[f32], groups: usize) -> (f32, usize) {
    const CHUNK: usize = 64;
    const BYTES: usize = CHUNK * 7 / 8;
    let chunks = (16 * groups / CHUNK).min(row.len() / BYTES);
    let mut buf = [0.0f32; CHUNK];
    let mut acc = [vdupq_n_f32(0.0); 4];
    for (packed, xs) in row.chunks_exact(BYTES).zip(x.chunks_exact(CHUNK)).take(chunks) {
        crate::decode::decode_7bit_words(packed, lut, &mut buf);
        for (v, (w, xv)) in buf.chunks_exact(4).zip(xs.chunks_exact(4)).enumerate() {
            // SAFETY: both chunks hold 4 floats.
            acc[v % 4] = unsafe { vfmaq_f32(acc[v % 4], vld1q_f32(w.as_ptr()), vld1q_f32(xv.as_ptr())) };
        }
    }
    let sum = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
    (vaddvq_f32(sum), BYTES * chunks)
}

/// See [`crate::arch::Isa::decode_packed`]: 16 indices per step, decoded in registers
/// ([`Decoder`]); tables of up to 64 entries are looked up by [`BytePlanes`] and the four byte
/// planes stored interleaved by `ST4` (which gives the centroids' bytes in order); 7-bit rows
/// by the portable word decoder ([`crate::decode::decode_7bit_words`]: `llvm-mca`'s models put
/// taking each index out of a vector lane at 2.2-2.7 times its cycles, see `docs/kernels.md`);
/// the indices past the last whole 16 by [`scalar::decode_packed`].
pub(super) fn decode_packed(packed: &[u8], bits: u8, lut: &[f32], out: &mut [f32]) {
    decode_packed_check(packed, bits, lut, out);
    if bits == 7 {
        return crate::decode::decode_7bit_words(packed, lut, out);
    }
    let groups = out.len() / 16;
    let o = out.as_mut_ptr();
    // SAFETY: NEON was detected before this table was handed out (`super::neon`). The check
    // asserted `1 <= bits <= 6` here, `2^bits` entries in `lut` and the bytes of every index
    // in `packed`, which `load_bytes` reads through a bounds-checked copy where 16 bytes from a
    // group's start pass its end; `out` holds `16 * groups` floats.
    unsafe {
        match bits {
            1..=4 => decode_groups_tbl::<1>(packed, bits, lut, o, groups),
            5 => decode_groups_tbl::<2>(packed, bits, lut, o, groups),
            _ => decode_groups_tbl::<4>(packed, bits, lut, o, groups),
        }
    }
    // 16 indices end on a byte boundary, so the rest is a packed row of its own.
    let used = groups * 2 * bits as usize;
    scalar::decode_packed(&packed[used..], bits, lut, &mut out[16 * groups..]);
}

/// Decodes the first `groups` 16-index groups of `packed` into `out` through [`BytePlanes`]
/// of `T` registers per plane.
///
/// # Safety
/// NEON available; `1 <= bits <= 6`, `2^bits <= 16 * T`, `T` in {1, 2, 4}; `lut` holds `2^bits`
/// floats; `out` holds `16 * groups` floats.
#[target_feature(enable = "neon")]
unsafe fn decode_groups_tbl<const T: usize>(
    packed: &[u8],
    bits: u8,
    lut: &[f32],
    out: *mut f32,
    groups: usize,
) {
    let bits = bits as usize;
    let planes = BytePlanes::<T>::new(lut, bits);
    let dec = Decoder::new(bits);
    for g in 0..groups {
        let bytes = planes.lookup(dec.decode16(load_bytes(packed, g * 2 * bits)));
        // SAFETY: the caller guarantees 16 floats (64 bytes) at `out + 16 * g`.
        unsafe { vst4q_u8(out.add(16 * g).cast(), bytes) };
    }
}

#[cfg(all(test, target_arch = "aarch64"))]
mod tests {
    use super::super::tests::isa;
    use super::*;
    use crate::testutil::Rng;

    /// `idx` packed LSB-first at `bits` bits.
    fn pack(idx: &[usize], bits: u8) -> Vec<u8> {
        let mut row = vec![0u8; (idx.len() * bits as usize).div_ceil(8)];
        for (i, &v) in idx.iter().enumerate() {
            for b in 0..bits as usize {
                if v >> b & 1 == 1 {
                    let bit = i * bits as usize + b;
                    row[bit / 8] |= 1 << (bit % 8);
                }
            }
        }
        row
    }

    fn check(row: &[u8], bits: u8, lut: &[f32], x: &[f32], what: &str) {
        let want = scalar::dot_packed(row, bits, lut, x);
        let got = (isa().dot_packed)(row, bits, lut, x);
        let scale: f32 = 1.0 + x.iter().map(|v| v.abs()).sum::<f32>();
        assert!((got - want).abs() <= 1e-5 * scale, "{what}: got {got}, want {want}");
    }

    #[test]
    fn matches_scalar_for_every_width_and_length() {
        let mut rng = Rng::new(21);
        for bits in 1..=8u8 {
            for n in 0..68 {
                let lut = rng.vec(1 << bits);
                let idx: Vec<usize> = (0..n).map(|_| rng.below(1 << bits)).collect();
                let row = pack(&idx, bits);
                let x = rng.vec(n);
                check(&row, bits, &lut, &x, &format!("bits {bits} n {n}"));
                // Against the definition too, so a shared decoding mistake cannot hide.
                let direct: f32 = idx.iter().zip(&x).map(|(&i, &v)| lut[i] * v).sum();
                let got = (isa().dot_packed)(&row, bits, &lut, &x);
                assert!((got - direct).abs() <= 1e-4, "bits {bits} n {n}: {got} vs {direct}");
            }
        }
    }

    #[test]
    fn long_rows_short_rows_and_long_luts_match_scalar() {
        let mut rng = Rng::new(22);
        for bits in 1..=8u8 {
            let n = 200 + rng.below(50);
            let extra = rng.below(3);
            let lut = rng.vec((1 << bits) + extra);
            let idx: Vec<usize> = (0..n).map(|_| rng.below(1 << bits)).collect();
            let row = pack(&idx, bits);
            let x = rng.vec(n);
            check(&row, bits, &lut, &x, &format!("bits {bits} long"));
            // A row shorter than `x` needs reads as zero indices past its end.
            let cut = rng.below(row.len());
            check(&row[..cut], bits, &lut, &x, &format!("bits {bits} cut at {cut}"));
            // Trailing bytes past the last index are ignored.
            let mut padded = row.clone();
            padded.extend([0xAB; 20]);
            check(&padded, bits, &lut, &x, &format!("bits {bits} padded"));
        }
    }

    #[test]
    fn decode16_extracts_every_index() {
        let mut rng = Rng::new(23);
        for bits in 1..=8usize {
            let idx: Vec<usize> = (0..16).map(|_| rng.below(1 << bits)).collect();
            let row = pack(&idx, bits as u8);
            let mut out = [0u8; 16];
            // SAFETY: NEON is baseline on aarch64 (and `isa()` asserts it was detected).
            unsafe {
                let _ = isa();
                vst1q_u8(out.as_mut_ptr(), Decoder::new(bits).decode16(load_bytes(&row, 0)));
            }
            let got: Vec<usize> = out.iter().map(|&v| v as usize).collect();
            assert_eq!(got, idx, "bits {bits}");
        }
    }
}
