//! The `.pith` file format: see `SPEC.md` in this crate for every byte.
//!
//! * [`write`] turns an owned [`ir::Model`] into file bytes.
//! * [`PithFile::open`] maps a file (no copy of tensor data), validates it once, and then hands out
//!   the parsed [`ir::Graph`] and zero-copy [`TensorView`]s of its constants.

pub mod ir;
mod view;

pub use view::{CentroidsView, CodebookView, TensorView};

// CONTRACT (to be implemented in reader.rs / writer.rs / error.rs):
//
// pub const FORMAT_MAJOR: u16; pub const FORMAT_MINOR: u16;
// #[derive(thiserror::Error, Debug)] pub enum FormatError { ... each names the problem ... }
// pub fn write(model: &ir::Model) -> Result<Vec<u8>, FormatError>;      // deterministic bytes
// pub struct PithFile { .. }  // Send + Sync
// impl PithFile {
//     pub fn open(path: impl AsRef<std::path::Path>) -> Result<PithFile, FormatError>;  // memmap2, validate
//     pub fn from_bytes(bytes: Vec<u8>) -> Result<PithFile, FormatError>;              // validate
//     pub fn graph(&self) -> &ir::Graph;
//     pub fn constant(&self, value: ir::ValueId) -> Option<TensorView<'_>>;   // None if not a constant
//     pub fn constant_ids(&self) -> impl Iterator<Item = ir::ValueId> + '_;
//     pub fn version(&self) -> (u16, u16);
//     pub fn producer(&self) -> &str;
//     pub fn file_len(&self) -> usize;
//     pub fn constant_bytes(&self, value: ir::ValueId) -> usize;  // bytes the constant occupies in the file
// }

mod stub {
    //! Temporary stand-ins so dependent crates compile; replaced by the real reader and writer.
    use crate::ir;
    use crate::TensorView;

    /// Errors of the format crate.
    #[derive(Debug, thiserror::Error)]
    pub enum FormatError {
        /// Placeholder.
        #[error("{0}")]
        Other(String),
    }

    /// A validated `.pith` file.
    pub struct PithFile {
        graph: ir::Graph,
    }

    impl PithFile {
        /// Maps and validates a file.
        pub fn open(_path: impl AsRef<std::path::Path>) -> Result<PithFile, FormatError> {
            Err(FormatError::Other("not implemented".into()))
        }
        /// Validates in-memory bytes.
        pub fn from_bytes(_bytes: Vec<u8>) -> Result<PithFile, FormatError> {
            Err(FormatError::Other("not implemented".into()))
        }
        /// The graph.
        pub fn graph(&self) -> &ir::Graph {
            &self.graph
        }
        /// A constant's data.
        pub fn constant(&self, _value: ir::ValueId) -> Option<TensorView<'_>> {
            None
        }
    }

    /// Serialises a model.
    pub fn write(_model: &ir::Model) -> Result<Vec<u8>, FormatError> {
        Err(FormatError::Other("not implemented".into()))
    }
}
pub use stub::{write, FormatError, PithFile};
