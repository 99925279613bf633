//! On-disk records (see `SPEC.md`): plain-old-data structs read in place with `bytemuck`.
//!
//! Every struct is `#[repr(C)]` with naturally aligned fields and no implicit padding, so its
//! in-memory layout is exactly the little-endian byte layout of the spec.

use bytemuck::{Pod, Zeroable};

#[cfg(target_endian = "big")]
compile_error!("pith-format reads little-endian records in place and needs a little-endian target");

/// The 8 magic bytes every `.pith` file starts with.
pub const MAGIC: [u8; 8] = *b"PITHFMT\0";
/// Alignment of every section, and of every tensor data blob up to format 1.1, in bytes.
pub const ALIGN: usize = 64;
/// Alignment of tensor data blobs from format 1.2 (enough for every element type and for SIMD
/// loads, which are unaligned anyway; small blobs such as biases no longer pad to 64 bytes).
pub const COMPACT_BLOB_ALIGN: usize = 16;
/// Sentinel in the ID pool for an omitted optional node input.
pub const NO_VALUE: u32 = u32::MAX;
/// Section flag: a reader that does not know this section kind may skip it.
pub const SECTION_OPTIONAL: u32 = 1;

/// Rounds `n` up to a multiple of [`ALIGN`].
pub fn align_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// File header (32 bytes at offset 0).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// Format major version.
    pub major: u16,
    /// Format minor version.
    pub minor: u16,
    /// Number of section table entries following the header.
    pub section_count: u32,
    /// Total file length in bytes.
    pub file_len: u64,
    /// Reserved, written as 0, ignored by readers.
    pub flags: u32,
    /// CRC-32 of header bytes 0..28 followed by the whole section table.
    pub header_crc: u32,
}

/// Bytes of the header covered by its own checksum.
pub const HEADER_CRC_SPAN: usize = 28;

/// One section table entry (32 bytes).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct SectionEntry {
    /// Section kind ([`SectionKind`] code).
    pub kind: u32,
    /// Bit 0: [`SECTION_OPTIONAL`]; other bits reserved.
    pub flags: u32,
    /// File offset, a multiple of [`ALIGN`].
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// CRC-32 of the section's bytes.
    pub crc: u32,
    /// Reserved, written as 0, ignored by readers.
    pub reserved: u32,
}

/// The section kinds of format 1.x, all required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum SectionKind {
    /// UTF-8 string pool.
    Strings = 1,
    /// One [`MetaRec`].
    Meta = 2,
    /// [`ValueRec`] array.
    Values = 3,
    /// [`DimRec`] array.
    Dims = 4,
    /// `u32` array of value ids.
    Ids = 5,
    /// [`NodeRec`] array.
    Nodes = 6,
    /// [`AttrRec`] array.
    Attrs = 7,
    /// `i64` array (integer-list attributes).
    Ints = 8,
    /// `f32` array (float-list attributes).
    Floats = 9,
    /// [`ConstRec`] array.
    Constants = 10,
    /// [`StrRef`] array: the names of symbolic dims.
    Symbols = 11,
    /// Tensor data blobs.
    Data = 12,
}

impl SectionKind {
    /// Every kind, in code (and writing) order.
    pub const ALL: [SectionKind; 12] = [
        SectionKind::Strings,
        SectionKind::Meta,
        SectionKind::Values,
        SectionKind::Dims,
        SectionKind::Ids,
        SectionKind::Nodes,
        SectionKind::Attrs,
        SectionKind::Ints,
        SectionKind::Floats,
        SectionKind::Constants,
        SectionKind::Symbols,
        SectionKind::Data,
    ];

    /// The kind with this code.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| *k as u32 == code)
    }

    /// Upper-case name used in the spec and in errors.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Strings => "STRINGS",
            SectionKind::Meta => "META",
            SectionKind::Values => "VALUES",
            SectionKind::Dims => "DIMS",
            SectionKind::Ids => "IDS",
            SectionKind::Nodes => "NODES",
            SectionKind::Attrs => "ATTRS",
            SectionKind::Ints => "INTS",
            SectionKind::Floats => "FLOATS",
            SectionKind::Constants => "CONSTANTS",
            SectionKind::Symbols => "SYMBOLS",
            SectionKind::Data => "DATA",
        }
    }
}

/// A byte range of the STRINGS section holding UTF-8 text.
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
#[repr(C)]
pub struct StrRef {
    /// Offset within STRINGS.
    pub off: u32,
    /// Length in bytes.
    pub len: u32,
}

/// A range of records in another section: `start .. start + count`.
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
#[repr(C)]
pub struct Span {
    /// First record.
    pub start: u32,
    /// Number of records.
    pub count: u32,
}

/// Graph-level metadata (24 bytes).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct MetaRec {
    /// Producer string.
    pub producer: StrRef,
    /// Graph inputs: a span of IDS.
    pub inputs: Span,
    /// Graph outputs: a span of IDS.
    pub outputs: Span,
}

/// Element type codes.
pub const ELEM_F32: u8 = 0;
/// See [`ELEM_F32`].
pub const ELEM_I64: u8 = 1;

/// One value (16 bytes).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct ValueRec {
    /// Value name.
    pub name: StrRef,
    /// First dim of the shape in DIMS (0 when `rank` is 0).
    pub dims_start: u32,
    /// Element type code.
    pub elem: u8,
    /// 0: shape unknown (`rank` must be 0); 1: shape given by DIMS `dims_start .. +rank`.
    pub has_shape: u8,
    /// Number of dims (0 = scalar).
    pub rank: u16,
}

/// One dimension (8 bytes): `>= 0` a fixed extent; `< 0` the symbol `SYMBOLS[-(d + 1)]`.
pub type DimRec = i64;

/// One node (24 bytes). Its inputs are IDS `ids_start .. +n_inputs`, its outputs the
/// `n_outputs` ids right after them.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct NodeRec {
    /// Node name.
    pub name: StrRef,
    /// First input id in IDS; [`NO_VALUE`] there marks an omitted optional input.
    pub ids_start: u32,
    /// First attribute in ATTRS.
    pub attrs_start: u32,
    /// Operator code (`OpKind::code`).
    pub op: u16,
    /// Number of inputs.
    pub n_inputs: u16,
    /// Number of outputs.
    pub n_outputs: u16,
    /// Number of attributes.
    pub n_attrs: u16,
}

/// Attribute kind codes.
pub const ATTR_INT: u16 = 0;
/// See [`ATTR_INT`].
pub const ATTR_FLOAT: u16 = 1;
/// See [`ATTR_INT`].
pub const ATTR_INTS: u16 = 2;
/// See [`ATTR_INT`].
pub const ATTR_FLOATS: u16 = 3;
/// See [`ATTR_INT`].
pub const ATTR_STR: u16 = 4;

/// One attribute (16 bytes). The meaning of `value` depends on `kind` (see the spec).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct AttrRec {
    /// Name: offset within STRINGS.
    pub name_off: u32,
    /// Name: length in bytes.
    pub name_len: u16,
    /// Kind code.
    pub kind: u16,
    /// Payload: i64 bits, f32 bits, or `start | count << 32` of a list or string.
    pub value: u64,
}

/// Constant encoding codes.
pub const ENC_F32: u8 = 0;
/// See [`ENC_F32`].
pub const ENC_F16: u8 = 1;
/// See [`ENC_F32`].
pub const ENC_I64: u8 = 2;
/// See [`ENC_F32`].
pub const ENC_CODEBOOK: u8 = 3;
/// Codebook with Huffman-coded indices (format 1.1). See [`ENC_F32`].
pub const ENC_CODEBOOK_HUFFMAN: u8 = 4;

/// Centroid precision codes.
pub const CENTROIDS_F32: u8 = 0;
/// See [`CENTROIDS_F32`].
pub const CENTROIDS_F16: u8 = 1;

/// `ConstRec::scale_type`: SharedScaled scales stored as f32.
pub const SCALES_F32: u8 = 0;
/// See [`SCALES_F32`]: scales stored as f16 (format 1.3).
pub const SCALES_F16: u8 = 1;

/// A byte range of the DATA section (which is capped at 4 GiB).
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
#[repr(C)]
pub struct Blob {
    /// Offset within DATA, a multiple of [`ALIGN`].
    pub offset: u32,
    /// Length in bytes.
    pub len: u32,
}

/// One constant (36 bytes). Codebook rows and row length are derived from the value's shape.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct ConstRec {
    /// The value it defines.
    pub value: u32,
    /// Encoding code.
    pub encoding: u8,
    /// Codebook: bits per index; else 0.
    pub bits: u8,
    /// Codebook: `CodebookKind` code; else 0.
    pub cb_kind: u8,
    /// Codebook: centroid precision code; else 0.
    pub centroid_type: u8,
    /// Codebook: entries per codebook; else 0.
    pub entries: u16,
    /// Codebook: scale precision code ([`SCALES_F32`], or [`SCALES_F16`] from format 1.3); else 0.
    pub scale_type: u8,
    /// Reserved, 0.
    pub reserved: u8,
    /// Element data (plain encodings), packed indices (codebook) or Huffman-coded indices.
    pub data: Blob,
    /// Codebook centroids; else empty.
    pub centroids: Blob,
    /// SharedScaled per-row scales; else empty.
    pub scales: Blob,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sizes_match_the_spec() {
        assert_eq!(std::mem::size_of::<Header>(), 32);
        assert_eq!(std::mem::size_of::<SectionEntry>(), 32);
        assert_eq!(std::mem::size_of::<MetaRec>(), 24);
        assert_eq!(std::mem::size_of::<ValueRec>(), 16);
        assert_eq!(std::mem::size_of::<DimRec>(), 8);
        assert_eq!(std::mem::size_of::<NodeRec>(), 24);
        assert_eq!(std::mem::size_of::<AttrRec>(), 16);
        assert_eq!(std::mem::size_of::<ConstRec>(), 36);
    }

    #[test]
    fn section_kind_codes_round_trip() {
        for k in SectionKind::ALL {
            assert_eq!(SectionKind::from_code(k as u32), Some(k));
        }
        assert_eq!(SectionKind::from_code(0), None);
        assert_eq!(SectionKind::from_code(13), None);
    }
}
