//! On-disk records (see `SPEC.md`): plain-old-data structs read in place with `bytemuck`.
//!
//! Every struct is `#[repr(C)]` with naturally aligned fields and no implicit padding, so its
//! in-memory layout is exactly the little-endian byte layout of the spec.

use bytemuck::{Pod, Zeroable};

#[cfg(target_endian = "big")]
compile_error!("pith-format reads little-endian records in place and needs a little-endian target");

/// The 8 magic bytes every `.pith` file starts with.
pub const MAGIC: [u8; 8] = *b"PITHFMT\0";
/// Alignment of every section and every tensor data blob, in bytes.
pub const ALIGN: usize = 64;
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
    /// Tensor data blobs.
    Data = 11,
}

impl SectionKind {
    /// Every kind, in code (and writing) order.
    pub const ALL: [SectionKind; 11] = [
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
pub const ELEM_F32: u32 = 0;
/// See [`ELEM_F32`].
pub const ELEM_I64: u32 = 1;

/// One value (24 bytes).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct ValueRec {
    /// Value name.
    pub name: StrRef,
    /// Element type code.
    pub elem: u32,
    /// 0: shape unknown (`dims` must be empty); 1: shape given by `dims`.
    pub has_shape: u32,
    /// Dimensions: a span of DIMS.
    pub dims: Span,
}

/// Dim kind: fixed extent.
pub const DIM_FIXED: u32 = 0;
/// Dim kind: symbolic name.
pub const DIM_SYMBOL: u32 = 1;

/// One dimension (24 bytes).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct DimRec {
    /// [`DIM_FIXED`] or [`DIM_SYMBOL`].
    pub kind: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// Extent (fixed); 0 for a symbol.
    pub extent: u64,
    /// Symbol name; `{0, 0}` for a fixed dim.
    pub name: StrRef,
}

/// One node (40 bytes).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct NodeRec {
    /// Node name.
    pub name: StrRef,
    /// Operator code (`OpKind::code`).
    pub op: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// Inputs: a span of IDS; [`NO_VALUE`] marks an omitted optional input.
    pub inputs: Span,
    /// Outputs: a span of IDS.
    pub outputs: Span,
    /// Attributes: a span of ATTRS.
    pub attrs: Span,
}

/// Attribute kind codes.
pub const ATTR_INT: u32 = 0;
/// See [`ATTR_INT`].
pub const ATTR_FLOAT: u32 = 1;
/// See [`ATTR_INT`].
pub const ATTR_INTS: u32 = 2;
/// See [`ATTR_INT`].
pub const ATTR_FLOATS: u32 = 3;
/// See [`ATTR_INT`].
pub const ATTR_STR: u32 = 4;

/// One attribute (24 bytes). The meaning of `len` and `value` depends on `kind` (see the spec).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct AttrRec {
    /// Attribute name.
    pub name: StrRef,
    /// Kind code.
    pub kind: u32,
    /// Element count (INTS/FLOATS), byte length (STR), else 0.
    pub len: u32,
    /// Payload: i64 bits, f32 bits, or a start index / string offset.
    pub value: u64,
}

/// Constant encoding codes.
pub const ENC_F32: u32 = 0;
/// See [`ENC_F32`].
pub const ENC_F16: u32 = 1;
/// See [`ENC_F32`].
pub const ENC_I64: u32 = 2;
/// See [`ENC_F32`].
pub const ENC_CODEBOOK: u32 = 3;

/// Centroid precision codes.
pub const CENTROIDS_F32: u32 = 0;
/// See [`CENTROIDS_F32`].
pub const CENTROIDS_F16: u32 = 1;

/// A byte range of the DATA section.
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
#[repr(C)]
pub struct Blob {
    /// Offset within DATA, a multiple of [`ALIGN`].
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One constant (88 bytes).
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct ConstRec {
    /// The value it defines.
    pub value: u32,
    /// Encoding code.
    pub encoding: u32,
    /// Codebook: bits per index; else 0.
    pub bits: u32,
    /// Codebook: `CodebookKind` code; else 0.
    pub cb_kind: u32,
    /// Codebook: centroid precision code; else 0.
    pub centroid_type: u32,
    /// Codebook: entries per codebook; else 0.
    pub entries: u32,
    /// Codebook: rows; else 0.
    pub rows: u64,
    /// Codebook: weights per row; else 0.
    pub row_len: u64,
    /// Element data (plain encodings) or packed indices (codebook).
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
        assert_eq!(std::mem::size_of::<ValueRec>(), 24);
        assert_eq!(std::mem::size_of::<DimRec>(), 24);
        assert_eq!(std::mem::size_of::<NodeRec>(), 40);
        assert_eq!(std::mem::size_of::<AttrRec>(), 24);
        assert_eq!(std::mem::size_of::<ConstRec>(), 88);
    }

    #[test]
    fn section_kind_codes_round_trip() {
        for k in SectionKind::ALL {
            assert_eq!(SectionKind::from_code(k as u32), Some(k));
        }
        assert_eq!(SectionKind::from_code(0), None);
        assert_eq!(SectionKind::from_code(12), None);
    }
}
