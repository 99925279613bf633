//! The error type of the format crate: every variant names what is wrong and where.

use std::path::PathBuf;

/// Everything that can be wrong with a `.pith` file or with a model handed to [`crate::write`].
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Reading or mapping the file failed.
    #[error("cannot read '{}': {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file ends before a structure it must contain.
    #[error("file is truncated: {what} needs {needed} bytes but the file has {actual}")]
    Truncated {
        /// The structure that does not fit ("header", "section table", "whole file").
        what: &'static str,
        /// Bytes it needs from the start of the file.
        needed: u64,
        /// Bytes the file has.
        actual: u64,
    },
    /// The file is longer than its header says.
    #[error("file has {actual} bytes but its header says {expected}: trailing bytes")]
    TrailingBytes {
        /// Length recorded in the header.
        expected: u64,
        /// Actual length.
        actual: u64,
    },
    /// The first 8 bytes are not the `.pith` magic.
    #[error("not a .pith file: bad magic {found:02x?}")]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// The file's major version is newer than this reader.
    #[error(
        "format version {major}.{minor} is newer than this reader ({}.{}); upgrade Pith",
        crate::FORMAT_MAJOR,
        crate::FORMAT_MINOR
    )]
    NewerVersion {
        /// The file's major version.
        major: u16,
        /// The file's minor version.
        minor: u16,
    },
    /// The file's major version is older than any this reader supports.
    #[error(
        "format version {major}.{minor} is no longer supported by this reader ({}.{})",
        crate::FORMAT_MAJOR,
        crate::FORMAT_MINOR
    )]
    UnsupportedVersion {
        /// The file's major version.
        major: u16,
        /// The file's minor version.
        minor: u16,
    },
    /// A CRC-32 does not match the bytes it covers.
    #[error("checksum mismatch in {section}: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// "header" or the section name.
        section: String,
        /// The checksum recorded in the file.
        stored: u32,
        /// The checksum of the bytes actually present.
        computed: u32,
    },
    /// The section table is inconsistent (bounds, alignment, overlap, duplicates, missing or unknown kinds).
    #[error("bad section table: {0}")]
    SectionTable(String),
    /// The PACKED section (deflated metadata, format 1.2) is malformed.
    #[error("bad PACKED metadata section: {0}")]
    Packed(String),
    /// The PROPS section (the model's properties, format 1.4) is malformed.
    #[error("bad PROPS section: {0}")]
    Props(String),
    /// A byte outside every section (padding) is not zero.
    #[error("non-zero padding byte at file offset {offset}")]
    NonZeroPadding {
        /// File offset of the first non-zero padding byte.
        offset: u64,
    },
    /// A section's length is not a whole number of its records.
    #[error("section {section}: length {len} is not a multiple of its {record}-byte record")]
    SectionSize {
        /// Section name.
        section: &'static str,
        /// Its length in bytes.
        len: u64,
        /// Record size in bytes.
        record: usize,
    },
    /// A string reference points outside the string pool or is not UTF-8.
    #[error("bad string for {context}: {reason}")]
    BadString {
        /// What the string is (e.g. "name of node #3").
        context: String,
        /// What is wrong.
        reason: String,
    },
    /// An enumerated field holds a value this version does not define.
    #[error("invalid {what} {value} in {context}")]
    BadEnum {
        /// The field ("op code", "element type", ...).
        what: &'static str,
        /// The value found.
        value: u64,
        /// Where (e.g. "node #3 'conv1'").
        context: String,
    },
    /// An index into another table is out of range.
    #[error("{what} {index} out of range (limit {limit}) in {context}")]
    BadReference {
        /// What the index refers to ("value id", "dims", "attrs", ...).
        what: &'static str,
        /// The index (start of a range, or the end for a range overflow).
        index: u64,
        /// The exclusive limit.
        limit: u64,
        /// Where.
        context: String,
    },
    /// A value is defined twice (as graph input, constant or node output).
    #[error("value #{id} '{name}' is defined twice: by {first} and by {second}")]
    DuplicateDefinition {
        /// Value id.
        id: u32,
        /// Value name.
        name: String,
        /// The first definition.
        first: String,
        /// The second definition.
        second: String,
    },
    /// A node reads a value not yet defined: a cycle, or nodes out of topological order.
    #[error(
        "node #{node_index} '{node}' uses value #{id} '{value}' before it is defined \
         (cyclic graph or nodes not in topological order)"
    )]
    UseBeforeDefinition {
        /// Index of the node.
        node_index: usize,
        /// Node name.
        node: String,
        /// Value id.
        id: u32,
        /// Value name.
        value: String,
    },
    /// A value is never defined.
    #[error("value #{id} '{name}' is never defined (not a graph input, constant or node output)")]
    Undefined {
        /// Value id.
        id: u32,
        /// Value name.
        name: String,
    },
    /// A constant's shape is missing, symbolic, or too large.
    #[error("constant value #{id} '{name}': bad shape: {reason}")]
    BadShape {
        /// Value id.
        id: u32,
        /// Value name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A constant's encoding parameters or data lengths are inconsistent.
    #[error("constant value #{id} '{name}': {reason}")]
    BadConstant {
        /// Value id.
        id: u32,
        /// Value name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A codebook index is not below the codebook's entry count.
    #[error(
        "constant value #{id} '{name}': codebook index {index} at row {row}, position {pos} \
         is not below the {entries} entries"
    )]
    IndexOutOfRange {
        /// Value id.
        id: u32,
        /// Value name.
        name: String,
        /// Row of the bad index.
        row: usize,
        /// Position within the row.
        pos: usize,
        /// The index found.
        index: usize,
        /// Codebook entries.
        entries: usize,
    },
    /// A Huffman-coded index stream is malformed (header, code-length table or bitstream).
    #[error("constant value #{id} '{name}': bad Huffman-coded indices: {reason}")]
    BadHuffman {
        /// Value id.
        id: u32,
        /// Value name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A centroid or scale is NaN or infinite.
    #[error("constant value #{id} '{name}': {what} #{pos} is not finite ({value})")]
    NonFinite {
        /// Value id.
        id: u32,
        /// Value name.
        name: String,
        /// "centroid" or "scale".
        what: &'static str,
        /// Position in its array.
        pos: usize,
        /// The value.
        value: f32,
    },
    /// The model is too large for the format's 32-bit indices.
    #[error("model too large for the format: {0}")]
    TooLarge(String),
}
