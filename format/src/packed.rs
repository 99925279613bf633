//! The PACKED section (format 1.2): metadata sections stored together as one DEFLATE stream.
//!
//! Fixed-size records make metadata easy to validate and view in place, but they are mostly
//! zeros and small repeated numbers: on BlazeFace the eleven metadata sections take 16 KB, more
//! than a fifth of a 4-bit model, and deflate to under 4 KB. A packed file carries them in one
//! PACKED section; the reader inflates it once at open into an aligned buffer and then reads the
//! records from there exactly as it reads them from the file. DATA is never packed: tensor data
//! stays mapped in place.
//!
//! Section layout: `u32 inflated_len`, `u32 reserved` (0), then a raw DEFLATE stream (RFC 1951)
//! that inflates to exactly `inflated_len` bytes and ends at the end of the section. The inflated
//! bytes are entries `u32 kind, u32 length, length bytes, zero padding to a multiple of 8`.

use std::ops::Range;

use crate::error::FormatError;
use crate::layout::SectionKind;
use crate::storage::AlignedBuf;

type Result<T> = std::result::Result<T, FormatError>;

/// Section kind code of PACKED.
pub const PACKED_KIND: u32 = 13;
/// Alignment of each section inside the inflated bytes (the largest record field is 8 bytes).
const ENTRY_ALIGN: usize = 8;
/// Bytes before the DEFLATE stream.
const PREFIX: usize = 8;
/// Bytes before each inflated section.
const ENTRY_HEAD: usize = 8;
/// Largest accepted `inflated_len`: a reader limit that bounds what a hostile file can make the
/// reader allocate (metadata of real models is kilobytes to a few megabytes).
pub const MAX_INFLATED: usize = 64 << 20;
/// DEFLATE cannot expand input more than about 1032×, so a larger claim is refused before
/// anything is allocated.
const MAX_RATIO: usize = 1032;
/// miniz_oxide's strongest standard level (deterministic output for the same input).
const LEVEL: u8 = 9;

fn err(msg: String) -> FormatError {
    FormatError::Packed(msg)
}

/// Whether sections of `kind` may be packed: every metadata section, never DATA.
pub fn packable(kind: SectionKind) -> bool {
    kind != SectionKind::Data
}

/// The PACKED section holding `sections` (kind, bytes), in the given order.
pub fn pack(sections: &[(SectionKind, &[u8])]) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    for &(kind, bytes) in sections {
        debug_assert!(packable(kind), "{} cannot be packed", kind.name());
        let len = u32::try_from(bytes.len())
            .map_err(|_| FormatError::TooLarge(format!("{} section exceeds 2^32 - 1 bytes", kind.name())))?;
        raw.extend_from_slice(&(kind as u32).to_le_bytes());
        raw.extend_from_slice(&len.to_le_bytes());
        raw.extend_from_slice(bytes);
        raw.resize(raw.len().next_multiple_of(ENTRY_ALIGN), 0);
    }
    if raw.len() > MAX_INFLATED {
        return Err(FormatError::TooLarge(format!(
            "packed metadata ({} bytes) exceeds the readers' limit of {MAX_INFLATED} bytes",
            raw.len()
        )));
    }
    Ok(deflate_prefixed(&raw))
}

/// `raw` (at most [`MAX_INFLATED`] bytes) as a section body: `u32 inflated_len`, `u32 reserved`
/// and the raw DEFLATE stream (the layout PACKED and PROPS share).
pub(crate) fn deflate_prefixed(raw: &[u8]) -> Vec<u8> {
    debug_assert!(raw.len() <= MAX_INFLATED);
    let mut out = Vec::with_capacity(PREFIX + raw.len() / 3);
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(raw, LEVEL));
    out
}

/// A PACKED section inflated: the buffer and each section's kind and byte range in it.
pub struct Unpacked {
    buf: AlignedBuf,
    entries: Vec<(SectionKind, Range<usize>)>,
}

impl Unpacked {
    /// The packed sections, in stored order.
    pub fn sections(&self) -> impl Iterator<Item = (SectionKind, &[u8])> + '_ {
        self.entries.iter().map(|(k, r)| (*k, &self.buf.bytes()[r.clone()]))
    }
}

/// Inflates and checks the PACKED section `section`: its prefix, that the stream inflates to
/// exactly the declared length and ends with the section, and that the entries are known,
/// packable, distinct kinds, in bounds, zero-padded and cover the inflated bytes exactly.
pub fn unpack(section: &[u8]) -> Result<Unpacked> {
    let buf = inflate_prefixed(section, err)?;
    let entries = entries(buf.bytes())?;
    Ok(Unpacked { buf, entries })
}

/// Inflates a section body written by [`deflate_prefixed`], checking its prefix, the declared
/// length against the reader's limits (before allocating) and that the stream inflates to exactly
/// that length and ends with the section. `err` names the section in the error.
pub(crate) fn inflate_prefixed(section: &[u8], err: fn(String) -> FormatError) -> Result<AlignedBuf> {
    if section.len() < PREFIX {
        return Err(err(format!("{} bytes, shorter than its {PREFIX}-byte prefix", section.len())));
    }
    let word = |at: usize, bytes: &[u8]| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let (len, reserved) = (word(0, section) as usize, word(4, section));
    if reserved != 0 {
        return Err(err(format!("reserved prefix field is {reserved}, must be 0")));
    }
    let stream = &section[PREFIX..];
    if len > MAX_INFLATED || len > stream.len().saturating_mul(MAX_RATIO) {
        return Err(err(format!(
            "declares {len} inflated bytes from a {}-byte stream (limit {MAX_INFLATED}, at most \
             {MAX_RATIO}x the stream)",
            stream.len()
        )));
    }
    let mut buf = AlignedBuf::zeroed(len);
    inflate_exact(stream, buf.bytes_mut()).map_err(err)?;
    Ok(buf)
}

/// Inflates `stream` into `out`, which it must fill exactly, consuming the whole stream; the
/// error says what is wrong with the stream.
fn inflate_exact(stream: &[u8], out: &mut [u8]) -> std::result::Result<(), String> {
    use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
    use miniz_oxide::inflate::TINFLStatus;
    let mut state = Box::<DecompressorOxide>::default();
    let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let (status, read, written) = decompress(&mut state, stream, out, 0, flags);
    match status {
        TINFLStatus::Done if written == out.len() && read == stream.len() => Ok(()),
        TINFLStatus::Done if written != out.len() => {
            Err(format!("inflates to {written} bytes, but declares {}", out.len()))
        }
        TINFLStatus::Done => Err(format!("{} bytes follow the DEFLATE stream", stream.len() - read)),
        TINFLStatus::HasMoreOutput => Err(format!("inflates to more than the declared {} bytes", out.len())),
        TINFLStatus::NeedsMoreInput | TINFLStatus::FailedCannotMakeProgress => {
            Err("the DEFLATE stream is truncated".into())
        }
        other => Err(format!("the DEFLATE stream is corrupt ({other:?})")),
    }
}

/// Splits inflated bytes into their section entries.
fn entries(bytes: &[u8]) -> Result<Vec<(SectionKind, Range<usize>)>> {
    let mut out: Vec<(SectionKind, Range<usize>)> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes.len() - at < ENTRY_HEAD {
            return Err(err(format!("entry at inflated offset {at} is cut off")));
        }
        let code = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let kind = SectionKind::from_code(code).filter(|&k| packable(k)).ok_or_else(|| {
            err(format!("entry at inflated offset {at} has kind {code}, not a metadata section"))
        })?;
        if out.iter().any(|(k, _)| *k == kind) {
            return Err(err(format!("{} appears twice", kind.name())));
        }
        let start = at + ENTRY_HEAD;
        let end = start
            .checked_add(len)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| err(format!("{} ({len} bytes) runs past the inflated end", kind.name())))?;
        let next = end.next_multiple_of(ENTRY_ALIGN);
        if next > bytes.len() {
            return Err(err(format!("{} lacks its padding to a multiple of {ENTRY_ALIGN}", kind.name())));
        }
        if bytes[end..next].iter().any(|&b| b != 0) {
            return Err(err(format!("non-zero padding after {}", kind.name())));
        }
        out.push((kind, start..end));
        at = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let strings = b"conv_0/weightconv_0/bias".to_vec();
        let ints: Vec<u8> = [1i64, 1, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        pack(&[(SectionKind::Strings, &strings), (SectionKind::Ints, &ints), (SectionKind::Floats, &[])])
            .unwrap()
    }

    #[test]
    fn round_trips_sections_in_order_and_aligned() {
        let packed = sample();
        let u = unpack(&packed).unwrap();
        let got: Vec<(SectionKind, Vec<u8>)> = u.sections().map(|(k, b)| (k, b.to_vec())).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (SectionKind::Strings, b"conv_0/weightconv_0/bias".to_vec()));
        assert_eq!(got[1].0, SectionKind::Ints);
        assert_eq!(got[1].1[..8], 1i64.to_le_bytes());
        assert_eq!(got[2], (SectionKind::Floats, Vec::new()));
        for (_, b) in u.sections() {
            assert_eq!(b.as_ptr() as usize % ENTRY_ALIGN, 0);
        }
        assert_eq!(packed, sample(), "deterministic");
    }

    fn with_prefix(len: u32, reserved: u32, stream: &[u8]) -> Vec<u8> {
        [&len.to_le_bytes()[..], &reserved.to_le_bytes(), stream].concat()
    }

    fn message(bytes: &[u8]) -> String {
        match unpack(bytes) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted a bad PACKED section"),
        }
    }

    #[test]
    fn refuses_bad_prefixes_and_streams() {
        let good = sample();
        let len = u32::from_le_bytes(good[..4].try_into().unwrap());
        let stream = &good[PREFIX..];
        assert!(message(&good[..5]).contains("shorter than its 8-byte prefix"));
        assert!(message(&with_prefix(len, 1, stream)).contains("reserved"));
        assert!(message(&with_prefix(len + 8, 0, stream)).contains("inflates to"));
        assert!(message(&with_prefix(len - 8, 0, stream)).contains("more than the declared"));
        assert!(message(&with_prefix(u32::MAX, 0, stream)).contains("declares"));
        assert!(message(&with_prefix(len, 0, &stream[..stream.len() - 3])).contains("truncated"));
        let trailing = [stream, &[0u8, 0][..]].concat();
        assert!(message(&with_prefix(len, 0, &trailing)).contains("follow the DEFLATE stream"));
        // A block type of 3 is invalid DEFLATE.
        assert!(message(&with_prefix(len, 0, &[0xff; 16])).contains("corrupt"));
    }

    fn packed_raw(raw: &[u8]) -> Vec<u8> {
        with_prefix(raw.len() as u32, 0, &miniz_oxide::deflate::compress_to_vec(raw, LEVEL))
    }

    fn entry(kind: u32, len: u32, body: &[u8]) -> Vec<u8> {
        [&kind.to_le_bytes()[..], &len.to_le_bytes(), body].concat()
    }

    #[test]
    fn refuses_bad_entries() {
        let data = entry(SectionKind::Data as u32, 0, &[]);
        assert!(message(&packed_raw(&data)).contains("kind 12, not a metadata section"));
        assert!(message(&packed_raw(&entry(99, 0, &[]))).contains("kind 99"));
        let twice = [entry(1, 0, &[]), entry(1, 0, &[])].concat();
        assert!(message(&packed_raw(&twice)).contains("STRINGS appears twice"));
        assert!(message(&packed_raw(&entry(1, 9, &[0; 8]))).contains("runs past"));
        assert!(message(&packed_raw(&entry(1, 3, &[b'a', b'b', b'c', 0, 7, 0, 0, 0]))).contains("padding"));
        assert!(message(&packed_raw(&[1, 0, 0, 0])).contains("cut off"));
        assert!(message(&packed_raw(&entry(1, 3, b"abc"))).contains("lacks its padding"));
        // An empty PACKED section body is fine (no sections packed).
        assert_eq!(unpack(&packed_raw(&[])).unwrap().sections().count(), 0);
    }
}
