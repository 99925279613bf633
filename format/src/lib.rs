//! The `.pith` file format: a memory-mappable container for one inference graph and its
//! (possibly codebook-compressed) constant tensors. `SPEC.md` in this crate documents every byte.
//!
//! * [`write()`] validates an owned [`ir::Model`] and turns it into file bytes (deterministically).
//! * [`PithFile::open`] maps a file read-only (tensor data is never copied), validates everything
//!   once, and then hands out the parsed [`ir::Graph`] and zero-copy [`TensorView`]s of its
//!   constants; [`PithFile::from_bytes`] does the same for bytes in memory. Huffman-coded index
//!   streams ([`write_with`] with [`Entropy::Huffman`]) are decoded once at open into owned,
//!   aligned packed buffers, whose views look exactly like mapped ones. The compact layout
//!   ([`WriteOptions::compact`], format 1.2) stores the metadata DEFLATE-compressed (`packed`).
//!   The model's properties ([`ir::Model::props`], such as a recognizer's character set) travel
//!   in the optional PROPS section (format 1.4, `props`), read by [`PithFile::props`].
//!
//! Module map: `layout` (on-disk records), `sections` (header, table, checksums), `parse`
//! (metadata to [`ir::Graph`]), `validate` (rules shared by reader and writer), `reader`,
//! `writer`, `huffman` (entropy coding of index streams), `packed` (deflated metadata), `props`
//! (the model's key/value properties), `storage` (mmap or 64-byte aligned
//! buffer), `error` ([`FormatError`]).
#![warn(missing_docs)]

pub mod ir;

mod error;
mod huffman;
mod layout;
mod packed;
mod parse;
mod props;
mod reader;
mod sections;
mod storage;
mod validate;
mod view;
mod writer;

#[cfg(test)]
mod tests;

pub use error::FormatError;
pub use reader::{EntropyStats, PithFile};
pub use view::{CentroidsView, CodebookView, TensorView};
pub use writer::{write, write_with, Entropy, WriteOptions};

/// Major format version this crate writes and the newest it reads; files with a newer major
/// version are refused.
pub const FORMAT_MAJOR: u16 = 1;
/// Newest minor format version this crate writes; files with any minor version of [`FORMAT_MAJOR`]
/// are read. The writer records the lowest minor version whose features a file uses: 4 when the
/// model has properties (an optional PROPS section, which older readers skip), 3 when some
/// codebook stores its row scales as f16, 2 for the compact layout (PACKED metadata, 16-byte
/// blobs), 1 when some constant is Huffman-coded, 0 otherwise, so files without those features
/// stay readable by older readers.
pub const FORMAT_MINOR: u16 = 4;
