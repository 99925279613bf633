//! [`PithFile`]: opens, validates once, then serves the graph and zero-copy constant views.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::ErrorKind;
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use half::f16;

use crate::error::FormatError;
use crate::huffman::{self, Packing};
use crate::ir::{CodebookKind, ElemType, Graph, Value, ValueId};
use crate::layout::*;
use crate::parse::{parse_graph, records};
use crate::sections::{read_sections, Section};
use crate::storage::{AlignedBuf, Storage};
use crate::validate::{self, bad_constant, CodebookParams};
use crate::view::{CentroidsView, CodebookView, TensorView};
use crate::writer::Entropy;

type Result<T> = std::result::Result<T, FormatError>;

/// A validated constant: its encoding and the absolute file ranges of its parts.
#[derive(Debug, Clone)]
struct ConstEntry {
    value: ValueId,
    encoding: Encoding,
    /// The stored data: elements, packed indices, or Huffman-coded indices.
    data: Range<usize>,
    /// Huffman-coded indices: their packed form, an index into `PithFile::decoded`.
    decoded: Option<usize>,
    centroids: Range<usize>,
    scales: Range<usize>,
    /// f16 scales: their f32 form, an index into `PithFile::decoded`.
    decoded_scales: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
enum Encoding {
    F32,
    F16,
    I64,
    Codebook {
        bits: u8,
        entries: usize,
        kind: CodebookKind,
        f16_centroids: bool,
        f16_scales: bool,
        rows: usize,
        row_len: usize,
        row_stride: usize,
        /// Indices Huffman-coded in the file (encoding 4).
        huffman: bool,
    },
}

/// What entropy decoding cost at open ([`PithFile::entropy_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntropyStats {
    /// Number of constants whose indices are Huffman-coded in the file.
    pub huffman_tensors: usize,
    /// Bytes of Huffman blobs in the file (headers, code-length tables and bitstreams).
    pub coded_bytes: usize,
    /// Bytes of packed indices they decode to (held in memory, not mapped).
    pub decoded_bytes: usize,
    /// Wall time spent checking and decoding them at open (not counting the other validation).
    pub decode_time: Duration,
}

/// A validated `.pith` file: the parsed graph plus constant data used in place.
///
/// Everything is validated once by [`PithFile::open`] / [`PithFile::from_bytes`]; the accessors
/// then never fail.
pub struct PithFile {
    storage: Storage,
    graph: Graph,
    producer: String,
    props: BTreeMap<String, String>,
    version: (u16, u16),
    constants: Vec<ConstEntry>,
    /// For each value id, its index in `constants` or `u32::MAX`.
    const_index: Vec<u32>,
    /// Packed indices of the Huffman-coded constants, decoded at open.
    decoded: Vec<AlignedBuf>,
    entropy: EntropyStats,
}

impl std::fmt::Debug for PithFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PithFile")
            .field("version", &self.version)
            .field("producer", &self.producer)
            .field("file_len", &self.file_len())
            .field("values", &self.graph.values.len())
            .field("nodes", &self.graph.nodes.len())
            .field("constants", &self.constants.len())
            .finish()
    }
}

impl PithFile {
    /// Maps the file at `path` read-only (tensor data is not copied) and validates it.
    /// Huffman-coded index streams are decoded once here into owned packed buffers.
    pub fn open(path: impl AsRef<Path>) -> Result<PithFile> {
        let path = path.as_ref();
        let io = |source| FormatError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            // Mapping a directory or a device fails with an unhelpful "No such device".
            let kind = if meta.is_dir() { ErrorKind::IsADirectory } else { ErrorKind::InvalidInput };
            let msg = if meta.is_dir() { "is a directory" } else { "not a regular file" };
            return Err(io(std::io::Error::new(kind, msg)));
        }
        let len = meta.len();
        if len == 0 {
            // Mapping an empty file is an error on some platforms; report what it really is.
            return Err(FormatError::Truncated {
                what: "header",
                needed: std::mem::size_of::<Header>() as u64,
                actual: 0,
            });
        }
        Self::from_storage(Storage::map(&file).map_err(io)?)
    }

    /// Validates in-memory file bytes, copying them only if their start is not 64-byte aligned.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<PithFile> {
        Self::from_storage(Storage::from_vec(bytes))
    }

    pub(crate) fn from_storage(storage: Storage) -> Result<PithFile> {
        let bytes = storage.bytes();
        let table = read_sections(bytes)?;
        let unpacked = table.unpack()?;
        let props = table.props()?;
        let sections = table.resolve(unpacked.as_ref())?;
        let (graph, producer) = parse_graph(&sections)?;
        let recs: &[ConstRec] = records(sections.get(SectionKind::Constants).bytes, SectionKind::Constants)?;
        let ids: Vec<ValueId> = recs.iter().map(|r| r.value).collect();
        validate::check_graph(&graph, &ids)?;
        let data = sections.get(SectionKind::Data);
        let blob_align = blob_align(sections.version);
        let mut constants = Vec::with_capacity(recs.len());
        let mut const_index = vec![u32::MAX; graph.values.len()];
        let mut decoded = Vec::new();
        let mut entropy = EntropyStats::default();
        for (i, r) in recs.iter().enumerate() {
            // check_graph range-checked the id and that no value has two definitions.
            let v = &graph.values[r.value as usize];
            let mut entry = const_entry(v, r, data, blob_align)?;
            if let Encoding::Codebook { huffman: true, .. } = entry.encoding {
                if sections.version.1 < 1 {
                    return Err(bad_constant(
                        r.value,
                        v,
                        format!(
                            "Huffman-coded indices (encoding {ENC_CODEBOOK_HUFFMAN}) need format 1.1, \
                             but the file says {}.{}",
                            sections.version.0, sections.version.1
                        ),
                    ));
                }
                let start = Instant::now();
                let buf = decode_huffman(bytes, &entry, v)?;
                entropy.decode_time += start.elapsed();
                entropy.huffman_tensors += 1;
                entropy.coded_bytes += entry.data.len();
                entropy.decoded_bytes += buf.bytes().len();
                entry.decoded = Some(decoded.len());
                decoded.push(buf);
            }
            if let Encoding::Codebook { f16_scales: true, .. } = entry.encoding {
                if sections.version.1 < 3 {
                    let reason = format!(
                        "f16 scales (scale type {SCALES_F16}) need format 1.3, but the file says {}.{}",
                        sections.version.0, sections.version.1
                    );
                    return Err(bad_constant(r.value, v, reason));
                }
                entry.decoded_scales = Some(decoded.len());
                decoded.push(widen_scales(&bytes[entry.scales.clone()]));
            }
            let view = make_view(bytes, &decoded, &entry).map_err(|e| bad_constant(r.value, v, e))?;
            if let TensorView::Codebook(c) = &view {
                validate::check_codebook_contents(r.value, &graph.values[r.value as usize], c)?;
            }
            const_index[r.value as usize] = i as u32;
            constants.push(entry);
        }
        let version = sections.version;
        log::debug!(
            "validated .pith {}.{}: {} bytes, {} nodes, {} constants",
            version.0,
            version.1,
            bytes.len(),
            graph.nodes.len(),
            constants.len()
        );
        if entropy.huffman_tensors > 0 {
            log::debug!(
                "decoded {} Huffman-coded tensors: {} -> {} bytes in {:?}",
                entropy.huffman_tensors,
                entropy.coded_bytes,
                entropy.decoded_bytes,
                entropy.decode_time
            );
        }
        Ok(PithFile { storage, graph, producer, props, version, constants, const_index, decoded, entropy })
    }

    /// The graph, parsed once at open.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    fn entry(&self, value: ValueId) -> Option<&ConstEntry> {
        let i = *self.const_index.get(value as usize)?;
        self.constants.get(i as usize)
    }

    /// A view of constant `value`'s data; `None` if `value` is not a constant. The view borrows
    /// the mapped file (zero-copy), or for Huffman-coded indices the packed buffer decoded at open;
    /// both look the same (packed rows, at least 16-byte aligned: 64 up to format 1.1).
    pub fn constant(&self, value: ValueId) -> Option<TensorView<'_>> {
        // Validated at open, so `make_view` cannot fail here.
        make_view(self.storage.bytes(), &self.decoded, self.entry(value)?).ok()
    }

    /// The entropy coding of constant `value`'s indices in the file: [`Entropy::Huffman`] for a
    /// Huffman-coded codebook tensor, [`Entropy::None`] otherwise (also for non-constants).
    pub fn constant_entropy(&self, value: ValueId) -> Entropy {
        match self.entry(value).map(|e| e.encoding) {
            Some(Encoding::Codebook { huffman: true, .. }) => Entropy::Huffman,
            _ => Entropy::None,
        }
    }

    /// What entropy decoding cost at open: how many tensors were Huffman-coded, their coded and
    /// decoded sizes, and the time spent decoding them. All zero for a file without entropy coding.
    pub fn entropy_stats(&self) -> EntropyStats {
        self.entropy
    }

    /// The value ids of every constant, in file order.
    pub fn constant_ids(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.constants.iter().map(|c| c.value)
    }

    /// Bytes constant `value`'s data occupies in the file (data or indices + centroids + scales,
    /// without alignment padding; Huffman-coded indices count at their coded size); 0 if `value`
    /// is not a constant.
    pub fn constant_bytes(&self, value: ValueId) -> usize {
        self.entry(value).map_or(0, |e| e.data.len() + e.centroids.len() + e.scales.len())
    }

    /// The file's format `(major, minor)` version.
    pub fn version(&self) -> (u16, u16) {
        self.version
    }

    /// The producer string recorded by the writer.
    pub fn producer(&self) -> &str {
        &self.producer
    }

    /// The model's properties (ONNX `metadata_props`, carried in the PROPS section), by key;
    /// empty when the file has none.
    pub fn props(&self) -> &BTreeMap<String, String> {
        &self.props
    }

    /// The property `key`, if the model has it.
    pub fn prop(&self, key: &str) -> Option<&str> {
        self.props.get(key).map(String::as_str)
    }

    /// Length of the file in bytes.
    pub fn file_len(&self) -> usize {
        self.storage.bytes().len()
    }
}

/// The alignment every blob offset must have in a file of `version`: 64 up to 1.1, 16 from 1.2.
fn blob_align(version: (u16, u16)) -> usize {
    if version.1 >= 2 {
        COMPACT_BLOB_ALIGN
    } else {
        ALIGN
    }
}

/// Checks constant record `r` against its value and the DATA section (whose blobs must start at
/// multiples of `align`); returns its entry.
fn const_entry(v: &Value, r: &ConstRec, data: Section<'_>, align: usize) -> Result<ConstEntry> {
    let id = r.value;
    let bad = |reason: String| bad_constant(id, v, reason);
    let shape = validate::const_shape(id, v)?;
    let check_elem = |want: ElemType, enc: &str| {
        if v.elem == want {
            Ok(())
        } else {
            Err(bad(format!("element type {:?} does not match encoding {enc}", v.elem)))
        }
    };
    let check_len = |what: &str, got: u32, want: usize| {
        if got as u64 == want as u64 {
            Ok(())
        } else {
            Err(bad(format!("{what} is {got} bytes, expected {want}")))
        }
    };
    let blob = |b: Blob, what: &str| -> Result<Range<usize>> {
        if !(b.offset as usize).is_multiple_of(align) {
            return Err(bad(format!("{what} blob offset {} is not a multiple of {align}", b.offset)));
        }
        // u32 + u32 cannot overflow u64.
        let end = b.offset as u64 + b.len as u64;
        if end > data.bytes.len() as u64 {
            return Err(bad(format!(
                "{what} blob at {}+{} lies outside the {}-byte DATA section",
                b.offset,
                b.len,
                data.bytes.len()
            )));
        }
        Ok(data.offset + b.offset as usize..data.offset + end as usize)
    };
    let plain = |elem: ElemType, enc: &str, size: usize, encoding: Encoding| {
        check_elem(elem, enc)?;
        let unused = [r.bits as u32, r.cb_kind as u32, r.centroid_type as u32, r.entries as u32]
            .into_iter()
            .chain([r.scale_type as u32, r.reserved as u32])
            .chain([r.centroids.offset, r.centroids.len, r.scales.offset, r.scales.len]);
        if unused.into_iter().any(|x| x != 0) {
            return Err(bad(format!("{enc} constant has non-zero codebook fields")));
        }
        check_len(&format!("{enc} data"), r.data.len, validate::data_len(id, v, &shape, size)?)?;
        Ok(ConstEntry {
            value: id,
            encoding,
            data: blob(r.data, "data")?,
            decoded: None,
            centroids: 0..0,
            scales: 0..0,
            decoded_scales: None,
        })
    };
    match r.encoding {
        ENC_F32 => plain(ElemType::F32, "f32", 4, Encoding::F32),
        ENC_F16 => plain(ElemType::F32, "f16", 2, Encoding::F16),
        ENC_I64 => plain(ElemType::I64, "i64", 8, Encoding::I64),
        ENC_CODEBOOK | ENC_CODEBOOK_HUFFMAN => {
            let huffman = r.encoding == ENC_CODEBOOK_HUFFMAN;
            check_elem(ElemType::F32, "codebook")?;
            let enum_err = |what, value: u8| FormatError::BadEnum {
                what,
                value: value as u64,
                context: format!("constant value #{id} '{}'", v.name),
            };
            let kind = match r.cb_kind {
                0 => CodebookKind::PerTensor,
                1 => CodebookKind::PerRow,
                2 => CodebookKind::SharedScaled,
                k => return Err(enum_err("codebook kind", k)),
            };
            let (f16_centroids, csize) = match r.centroid_type {
                CENTROIDS_F32 => (false, 4),
                CENTROIDS_F16 => (true, 2),
                t => return Err(enum_err("centroid type", t)),
            };
            let params = CodebookParams {
                bits: r.bits as u64,
                entries: r.entries as u64,
                kind,
                // Not stored: derived from the shape (a scalar has none and is refused).
                rows: shape.rows.map_or(0, |n| n as u64),
                row_len: shape.row_len as u64,
            };
            let lay = validate::codebook_layout(id, v, &shape, params)?;
            if !huffman {
                // Huffman blob sizes are checked when decoding.
                check_len("codebook indices", r.data.len, lay.indices_len)?;
            }
            let centroid_bytes =
                lay.centroid_count.checked_mul(csize).ok_or_else(|| bad("centroid size overflows".into()))?;
            check_len("codebook centroids", r.centroids.len, centroid_bytes)?;
            let (f16_scales, ssize) = match r.scale_type {
                SCALES_F32 => (false, 4),
                SCALES_F16 if kind == CodebookKind::SharedScaled => (true, 2),
                SCALES_F16 => return Err(bad("f16 scales on a codebook without scales".into())),
                t => return Err(enum_err("scale type", t)),
            };
            if r.reserved != 0 {
                return Err(bad(format!("reserved byte is {}, not 0", r.reserved)));
            }
            let scale_bytes =
                lay.scale_count.checked_mul(ssize).ok_or_else(|| bad("scale size overflows".into()))?;
            check_len("codebook scales", r.scales.len, scale_bytes)?;
            Ok(ConstEntry {
                value: id,
                encoding: Encoding::Codebook {
                    bits: lay.bits,
                    entries: lay.entries,
                    kind,
                    f16_centroids,
                    f16_scales,
                    rows: lay.rows,
                    row_len: lay.row_len,
                    row_stride: lay.row_stride,
                    huffman,
                },
                data: blob(r.data, "indices")?,
                decoded: None,
                centroids: blob(r.centroids, "centroids")?,
                scales: blob(r.scales, "scales")?,
                decoded_scales: None,
            })
        }
        e => Err(FormatError::BadEnum {
            what: "encoding",
            value: e as u64,
            context: format!("constant value #{id} '{}'", v.name),
        }),
    }
}

/// Checks and decodes the Huffman-coded indices of codebook entry `e` into packed rows.
fn decode_huffman(bytes: &[u8], e: &ConstEntry, v: &Value) -> Result<AlignedBuf> {
    let bad = |reason: String| FormatError::BadHuffman { id: e.value, name: v.name.clone(), reason };
    let Encoding::Codebook { bits, entries, rows, row_len, row_stride, .. } = e.encoding else {
        return Err(bad("not a codebook tensor".into()));
    };
    // rows * row_len and rows * row_stride were computed with overflow checks from the shape.
    let parsed = huffman::parse(&bytes[e.data.clone()], entries, rows * row_len).map_err(bad)?;
    // `parse` checked the stream holds at least one bit per index, so this allocation is at most
    // 2 * 8 times the blob's size.
    let mut buf = AlignedBuf::zeroed(rows * row_stride);
    huffman::decode(&parsed, Packing { bits, rows, row_len, row_stride }, buf.bytes_mut()).map_err(bad)?;
    Ok(buf)
}

/// The f32 form of a blob of f16 scales (a blob offset is a multiple of 16, so the f16 values
/// are aligned; the length was checked to be even).
fn widen_scales(blob: &[u8]) -> AlignedBuf {
    let mut buf = AlignedBuf::zeroed(blob.len() * 2);
    for (out, half) in buf.bytes_mut().chunks_exact_mut(4).zip(blob.chunks_exact(2)) {
        let v = f16::from_le_bytes([half[0], half[1]]).to_f32();
        out.copy_from_slice(&v.to_le_bytes());
    }
    buf
}

/// Builds the view of a checked entry (`decoded` holds the packed form of Huffman-coded
/// entries). Fails only if a blob is misaligned in memory.
fn make_view<'a>(
    bytes: &'a [u8],
    decoded: &'a [AlignedBuf],
    e: &ConstEntry,
) -> std::result::Result<TensorView<'a>, String> {
    fn cast<T: bytemuck::Pod>(b: &[u8]) -> std::result::Result<&[T], String> {
        bytemuck::try_cast_slice(b).map_err(|err| format!("blob cannot be used in place: {err}"))
    }
    let data = match e.decoded {
        Some(i) => decoded[i].bytes(),
        None => &bytes[e.data.clone()],
    };
    Ok(match e.encoding {
        Encoding::F32 => TensorView::F32(cast::<f32>(data)?),
        Encoding::F16 => TensorView::F16(cast::<f16>(data)?),
        Encoding::I64 => TensorView::I64(cast::<i64>(data)?),
        Encoding::Codebook { bits, entries, kind, f16_centroids, rows, row_len, row_stride, .. } => {
            let scales = match e.decoded_scales {
                Some(i) => decoded[i].bytes(),
                None => &bytes[e.scales.clone()],
            };
            let c = &bytes[e.centroids.clone()];
            TensorView::Codebook(CodebookView {
                bits,
                rows,
                row_len,
                row_stride,
                entries,
                kind,
                centroids: if f16_centroids {
                    CentroidsView::F16(cast::<f16>(c)?)
                } else {
                    CentroidsView::F32(cast::<f32>(c)?)
                },
                scales: cast::<f32>(scales)?,
                indices: data,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pith_file_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PithFile>();
    }
}
