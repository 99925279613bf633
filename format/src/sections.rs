//! Header and section table: magic, version, lengths, bounds, alignment, overlap, zero padding and
//! checksums. After [`read_sections`] every section slice is in bounds and checksummed; after
//! [`TableSections::resolve`] the metadata sections stored in a PACKED section (format 1.2) have
//! joined them and every required section is present.

use std::collections::BTreeMap;
use std::mem::size_of;

use crate::error::FormatError;
use crate::layout::{Header, SectionEntry, SectionKind, ALIGN, HEADER_CRC_SPAN, MAGIC, SECTION_OPTIONAL};
use crate::packed::{self, Unpacked, PACKED_KIND};
use crate::props::{self, PROPS_KIND};
use crate::{FORMAT_MAJOR, FORMAT_MINOR};

type Result<T> = std::result::Result<T, FormatError>;

/// One required section: its bytes and their file offset (0 for a section inflated from PACKED,
/// which is never DATA, the one section whose offset is used).
#[derive(Clone, Copy, Default)]
pub(crate) struct Section<'a> {
    pub bytes: &'a [u8],
    pub offset: usize,
}

/// The sections named by the section table, checked, before PACKED is inflated.
pub(crate) struct TableSections<'a> {
    /// `(major, minor)` from the header.
    pub version: (u16, u16),
    parts: [Option<Section<'a>>; SectionKind::ALL.len()],
    /// The PACKED section's bytes, if the file has one.
    packed: Option<&'a [u8]>,
    /// The PROPS section's bytes, if the file has one.
    props: Option<&'a [u8]>,
}

impl<'a> TableSections<'a> {
    /// Inflates the PACKED section, if any (format 1.2 and later only).
    pub fn unpack(&self) -> Result<Option<Unpacked>> {
        let Some(bytes) = self.packed else { return Ok(None) };
        if self.version.1 < 2 {
            return Err(table_err(format!(
                "a PACKED section needs format 1.2, but the file says {}.{}",
                self.version.0, self.version.1
            )));
        }
        packed::unpack(bytes).map(Some)
    }

    /// The model's properties from the PROPS section (format 1.4 and later only); empty without
    /// one.
    pub fn props(&self) -> Result<BTreeMap<String, String>> {
        let Some(bytes) = self.props else { return Ok(BTreeMap::new()) };
        if self.version.1 < 4 {
            return Err(table_err(format!(
                "a PROPS section needs format 1.4, but the file says {}.{}",
                self.version.0, self.version.1
            )));
        }
        props::decode(bytes)
    }

    /// The complete sections: those of the table plus those inflated into `unpacked` (which
    /// must come from [`Self::unpack`]). A kind in both places, or in neither, is an error.
    pub fn resolve<'b>(self, unpacked: Option<&'b Unpacked>) -> Result<Sections<'b>>
    where
        'a: 'b,
    {
        let mut parts: [Option<Section<'b>>; SectionKind::ALL.len()] = self.parts;
        for (kind, bytes) in unpacked.into_iter().flat_map(|u| u.sections()) {
            let slot = &mut parts[kind as usize - 1];
            if slot.is_some() {
                return Err(table_err(format!("{} is both in the section table and in PACKED", kind.name())));
            }
            *slot = Some(Section { bytes, offset: 0 });
        }
        for k in SectionKind::ALL {
            if parts[k as usize - 1].is_none() {
                return Err(table_err(format!("missing required {} section", k.name())));
            }
        }
        Ok(Sections { version: self.version, parts })
    }
}

/// The validated sections of a file, all present.
pub(crate) struct Sections<'a> {
    /// `(major, minor)` from the header.
    pub version: (u16, u16),
    parts: [Option<Section<'a>>; SectionKind::ALL.len()],
}

impl<'a> Sections<'a> {
    /// The section of `kind` (present: [`read_sections`] refuses files missing one).
    pub fn get(&self, kind: SectionKind) -> Section<'a> {
        self.parts[kind as usize - 1].unwrap_or_default()
    }
}

fn table_err(msg: String) -> FormatError {
    FormatError::SectionTable(msg)
}

/// CRC-32 of header bytes 0..28 followed by the section table (`head` = bytes 0..table end).
pub(crate) fn header_crc(head: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&head[..HEADER_CRC_SPAN]);
    h.update(&head[size_of::<Header>()..]);
    h.finalize()
}

/// Validates header and section table and returns the sections it names.
pub(crate) fn read_sections(bytes: &[u8]) -> Result<TableSections<'_>> {
    let len = bytes.len() as u64;
    let header_len = size_of::<Header>();
    if bytes.len() < header_len {
        return Err(FormatError::Truncated { what: "header", needed: header_len as u64, actual: len });
    }
    let header: Header = bytemuck::pod_read_unaligned(&bytes[..header_len]);
    if header.magic != MAGIC {
        return Err(FormatError::BadMagic { found: header.magic });
    }
    let (major, minor) = (header.major, header.minor);
    if major > FORMAT_MAJOR {
        return Err(FormatError::NewerVersion { major, minor });
    }
    if major < FORMAT_MAJOR {
        return Err(FormatError::UnsupportedVersion { major, minor });
    }
    if minor > FORMAT_MINOR {
        log::debug!("reading format {major}.{minor} with a {FORMAT_MAJOR}.{FORMAT_MINOR} reader");
    }
    let entry_len = size_of::<SectionEntry>();
    // u32 count * 32 + 32 cannot overflow u64.
    let table_end = header_len as u64 + header.section_count as u64 * entry_len as u64;
    if table_end > len {
        return Err(FormatError::Truncated { what: "section table", needed: table_end, actual: len });
    }
    let table_end = table_end as usize;
    let computed = header_crc(&bytes[..table_end]);
    if computed != header.header_crc {
        return Err(FormatError::Checksum { section: "header".into(), stored: header.header_crc, computed });
    }
    if header.file_len > len {
        return Err(FormatError::Truncated { what: "whole file", needed: header.file_len, actual: len });
    }
    if header.file_len < len {
        return Err(FormatError::TrailingBytes { expected: header.file_len, actual: len });
    }

    let mut parts = [None; SectionKind::ALL.len()];
    let mut packed = None;
    let mut props = None;
    // Bounded by the file length: the table fits in the file.
    let mut ranges = Vec::with_capacity(header.section_count as usize);
    for (i, raw) in bytes[header_len..table_end].chunks_exact(entry_len).enumerate() {
        let e: SectionEntry = bytemuck::pod_read_unaligned(raw);
        let kind = SectionKind::from_code(e.kind);
        let name = match kind {
            Some(k) => k.name().to_string(),
            None if e.kind == PACKED_KIND => "PACKED".to_string(),
            None if e.kind == PROPS_KIND => "PROPS".to_string(),
            None => format!("kind {}", e.kind),
        };
        let what = format!("section #{i} ({name})");
        let end = e.offset.checked_add(e.length).filter(|&end| end <= len).ok_or_else(|| {
            table_err(format!(
                "{what} at offset {} with length {} does not fit in the {len}-byte file",
                e.offset, e.length
            ))
        })?;
        if e.offset < table_end as u64 {
            return Err(table_err(format!(
                "{what} at offset {} overlaps the header or section table (ends at {table_end})",
                e.offset
            )));
        }
        if !e.offset.is_multiple_of(ALIGN as u64) {
            return Err(table_err(format!("{what} offset {} is not a multiple of {ALIGN}", e.offset)));
        }
        let (start, end) = (e.offset as usize, end as usize);
        let section = &bytes[start..end];
        let computed = crc32fast::hash(section);
        if computed != e.crc {
            return Err(FormatError::Checksum { section: what, stored: e.crc, computed });
        }
        ranges.push((start, end));
        match kind {
            Some(k) => {
                let slot = &mut parts[k as usize - 1];
                if slot.is_some() {
                    return Err(table_err(format!("{what}: duplicate {name} section")));
                }
                *slot = Some(Section { bytes: section, offset: start });
            }
            None if e.kind == PACKED_KIND => {
                if packed.replace(section).is_some() {
                    return Err(table_err(format!("{what}: duplicate PACKED section")));
                }
            }
            None if e.kind == PROPS_KIND => {
                if props.replace(section).is_some() {
                    return Err(table_err(format!("{what}: duplicate PROPS section")));
                }
            }
            None if e.flags & SECTION_OPTIONAL != 0 => {
                log::debug!("skipping unknown optional {what}");
            }
            None => {
                return Err(table_err(format!(
                    "{what}: unknown section kind {} not marked optional; a newer writer made \
                     this file",
                    e.kind
                )))
            }
        }
    }
    check_gaps(bytes, table_end, &mut ranges)?;
    Ok(TableSections { version: (major, minor), parts, packed, props })
}

/// Sections must not overlap and every byte outside header, table and sections must be zero,
/// so that no byte of the file escapes a checksum.
fn check_gaps(bytes: &[u8], table_end: usize, ranges: &mut [(usize, usize)]) -> Result<()> {
    ranges.sort_unstable();
    let mut prev = table_end;
    for &(start, end) in ranges.iter() {
        if start < prev {
            return Err(table_err(format!(
                "section at offset {start} overlaps the previous one (ends at {prev})"
            )));
        }
        zero_padding(bytes, prev, start)?;
        prev = end;
    }
    zero_padding(bytes, prev, bytes.len())
}

fn zero_padding(bytes: &[u8], start: usize, end: usize) -> Result<()> {
    match bytes[start..end].iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(i) => Err(FormatError::NonZeroPadding { offset: (start + i) as u64 }),
    }
}
