//! The bytes behind a [`crate::PithFile`]: a read-only memory map, or an owned buffer whose start is
//! 64-byte aligned so that tensor blobs (at 64-byte file offsets) are aligned in memory too.

use std::fs::File;

use bytemuck::{Pod, Zeroable};
use memmap2::Mmap;

use crate::layout::ALIGN;

/// A 64-byte, 64-aligned chunk: a `Vec` of these is an aligned byte buffer without `unsafe`.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C, align(64))]
struct Chunk([u8; ALIGN]);

/// An owned byte buffer whose start is 64-byte aligned (holds decoded entropy-coded tensors).
pub(crate) struct AlignedBuf {
    chunks: Vec<Chunk>,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> AlignedBuf {
        AlignedBuf { chunks: vec![Chunk([0; ALIGN]); len.div_ceil(ALIGN)], len }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<Chunk, u8>(&self.chunks)[..self.len]
    }

    /// The bytes, mutably.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<Chunk, u8>(&mut self.chunks)[..self.len]
    }
}

/// File bytes with a 64-byte aligned start.
pub(crate) enum Storage {
    /// A read-only mapping (page aligned).
    Mapped(Mmap),
    /// A caller's buffer that happened to be aligned already.
    Vec(Vec<u8>),
    /// A copy into an aligned buffer.
    Copied(AlignedBuf),
}

impl Storage {
    /// Maps `file` read-only.
    pub fn map(file: &File) -> std::io::Result<Storage> {
        // SAFETY: the mapping is read-only and lives as long as the `Storage`. Like every
        // mmap-based reader, we rely on the file not being truncated or rewritten by another
        // process while mapped; Pith never writes to a file it has open.
        let map = unsafe { Mmap::map(file) }?;
        Ok(Storage::Mapped(map))
    }

    /// Takes `bytes`, copying them into an aligned buffer only when their start is not aligned.
    pub fn from_vec(bytes: Vec<u8>) -> Storage {
        if (bytes.as_ptr() as usize).is_multiple_of(ALIGN) {
            Storage::Vec(bytes)
        } else {
            Storage::copied(&bytes)
        }
    }

    /// Copies `bytes` into a fresh 64-byte aligned buffer.
    pub fn copied(bytes: &[u8]) -> Storage {
        let mut buf = AlignedBuf::zeroed(bytes.len());
        buf.bytes_mut().copy_from_slice(bytes);
        Storage::Copied(buf)
    }

    /// The file bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Vec(v) => v,
            Storage::Copied(buf) => buf.bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_storage_is_aligned_and_preserves_bytes() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        // `copied` from an odd offset is the path an unaligned caller buffer takes.
        for s in [Storage::from_vec(bytes[1..].to_vec()), Storage::copied(&bytes[1..])] {
            assert_eq!(s.bytes().as_ptr() as usize % ALIGN, 0);
            assert_eq!(s.bytes(), &bytes[1..]);
        }
        assert!(matches!(Storage::copied(&bytes[3..]), Storage::Copied(AlignedBuf { len: 997, .. })));
        let mut b = AlignedBuf::zeroed(130);
        assert_eq!(b.bytes().as_ptr() as usize % ALIGN, 0);
        assert!(b.bytes().iter().all(|&x| x == 0) && b.bytes().len() == 130);
        b.bytes_mut()[129] = 7;
        assert_eq!(b.bytes()[129], 7);
        assert!(Storage::copied(&[]).bytes().is_empty());
        assert!(Storage::from_vec(Vec::new()).bytes().is_empty());
    }

    #[test]
    fn mapped_storage_reads_the_file() {
        let path = std::env::temp_dir().join(format!("pith-storage-{}.bin", std::process::id()));
        std::fs::write(&path, b"hello mapped world").unwrap();
        let s = Storage::map(&File::open(&path).unwrap()).unwrap();
        assert_eq!(s.bytes(), b"hello mapped world");
        assert_eq!(s.bytes().as_ptr() as usize % ALIGN, 0);
        drop(s);
        std::fs::remove_file(&path).unwrap();
    }
}
