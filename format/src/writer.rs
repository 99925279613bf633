//! Serialises an owned [`Model`] into `.pith` bytes (layout in `SPEC.md`).
//!
//! Output is deterministic: it depends only on the model (strings are pooled in first-use order,
//! sections are written in kind order, every gap is zero-filled).

use std::collections::HashMap;

use bytemuck::Zeroable;

use crate::error::FormatError;
use crate::huffman;
use half::f16;

use crate::ir::{Attr, Centroids, CodebookKind, Constant, Dim, ElemType, Model, TensorData, ValueId};
use crate::layout::*;
use crate::packed;
use crate::props;
use crate::sections::header_crc;
use crate::validate::{self, bad_constant, CodebookParams};
use crate::view::{CentroidsView, CodebookView};
use crate::FORMAT_MAJOR;

type Result<T> = std::result::Result<T, FormatError>;

/// Entropy coding applied to codebook index streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Entropy {
    /// Indices stored packed at `bits` bits (mapped in place at load).
    #[default]
    None,
    /// Canonical Huffman codes per tensor, decoded once at load into the packed form.
    Huffman,
}

/// Options of [`write_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteOptions {
    /// Entropy coding of codebook indices.
    pub entropy: Entropy,
    /// Compact layout (format 1.2): the metadata sections DEFLATE-compressed into one PACKED
    /// section (inflated once at open) and data blobs aligned to 16 bytes instead of 64. It
    /// takes about three quarters off the metadata, which matters for models of tens of
    /// kilobytes. Codebook scales marked [`crate::ir::CodebookTensor::f16_scales`] are stored
    /// as f16 only in this layout (format 1.3); files without it store them as f32 (the same
    /// values) and stay readable by 1.0 / 1.1 readers.
    pub compact: bool,
}

/// Validates `model` exactly as the reader would and serialises it.
///
/// The same model always yields the same bytes.
pub fn write(model: &Model) -> Result<Vec<u8>> {
    write_with(model, &WriteOptions::default())
}

/// [`write()`] with options. With [`Entropy::Huffman`], each codebook tensor's indices are stored
/// Huffman-coded (canonical codes per tensor, at most 12 bits per code word) when that makes the
/// tensor smaller, and packed otherwise. The file records the lowest format version its features
/// need: with [`WriteOptions::compact`] 1.3 when some scales are stored as f16, else 1.2;
/// without it 1.1 with at least one Huffman-coded tensor, else 1.0.
///
/// The same model and options always yield the same bytes.
pub fn write_with(model: &Model, options: &WriteOptions) -> Result<Vec<u8>> {
    check_model(model)?;
    encode_with(model, options)
}

/// Every check the reader performs, applied to an owned model.
fn check_model(model: &Model) -> Result<()> {
    let g = &model.graph;
    let ids: Vec<ValueId> = model.constants.iter().map(|c| c.value).collect();
    validate::check_graph(g, &ids)?;
    model.constants.iter().try_for_each(|c| check_constant(model, c))
}

fn check_constant(model: &Model, c: &Constant) -> Result<()> {
    let id = c.value;
    // check_graph has range-checked every constant's value id.
    let v = &model.graph.values[id as usize];
    let shape = validate::const_shape(id, v)?;
    let want = match c.data {
        TensorData::I64(_) => ElemType::I64,
        _ => ElemType::F32,
    };
    if v.elem != want {
        return Err(validate::bad_constant(
            id,
            v,
            format!("element type {:?} does not match its data encoding", v.elem),
        ));
    }
    let count = |what: &str, got: usize, want: usize| {
        if got == want {
            Ok(())
        } else {
            Err(validate::bad_constant(id, v, format!("{what}: {got} elements, expected {want}")))
        }
    };
    match &c.data {
        TensorData::F32(d) => count("f32 data", d.len(), shape.numel),
        TensorData::F16(d) => count("f16 data", d.len(), shape.numel),
        TensorData::I64(d) => count("i64 data", d.len(), shape.numel),
        TensorData::Codebook(cb) => {
            let params = CodebookParams {
                bits: cb.bits as u64,
                entries: cb.entries as u64,
                kind: cb.kind,
                rows: cb.rows as u64,
                row_len: cb.row_len as u64,
            };
            let lay = validate::codebook_layout(id, v, &shape, params)?;
            count("codebook index bytes", cb.indices.len(), lay.indices_len)?;
            let centroids = match &cb.centroids {
                Centroids::F32(c) => CentroidsView::F32(c),
                Centroids::F16(c) => CentroidsView::F16(c),
            };
            count("codebook centroids", centroids.len(), lay.centroid_count)?;
            count("codebook scales", cb.scales.len(), lay.scale_count)?;
            if cb.f16_scales {
                if cb.kind != CodebookKind::SharedScaled {
                    return Err(bad_constant(id, v, "f16 scales on a codebook without scales"));
                }
                if let Some(pos) = cb.scales.iter().position(|&s| f16::from_f32(s).to_f32() != s) {
                    let reason = format!("scale {pos} ({}) is not an f16 value", cb.scales[pos]);
                    return Err(bad_constant(id, v, reason));
                }
            }
            let view = CodebookView {
                bits: lay.bits,
                rows: lay.rows,
                row_len: lay.row_len,
                row_stride: lay.row_stride,
                entries: lay.entries,
                kind: cb.kind,
                centroids,
                scales: &cb.scales,
                indices: &cb.indices,
            };
            validate::check_codebook_contents(id, v, &view)
        }
    }
}

fn to_u32(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| FormatError::TooLarge(format!("{what} ({n}) exceeds 2^32 - 1")))
}

fn to_u16(n: usize, what: &str) -> Result<u16> {
    u16::try_from(n).map_err(|_| FormatError::TooLarge(format!("{what} ({n}) exceeds 65535")))
}

/// Accumulates the metadata pools while walking the model.
#[derive(Default)]
struct Builder<'m> {
    strings: Vec<u8>,
    string_refs: HashMap<&'m str, StrRef>,
    values: Vec<ValueRec>,
    dims: Vec<DimRec>,
    /// Pooled dim sequences: values of equal shape share their DIMS records.
    dim_runs: HashMap<Vec<DimRec>, u32>,
    symbols: Vec<StrRef>,
    symbol_ids: HashMap<&'m str, i64>,
    /// Pooled integer lists (strides, pads, ... repeat across nodes).
    int_runs: HashMap<Vec<i64>, u32>,
    ids: Vec<u32>,
    nodes: Vec<NodeRec>,
    attrs: Vec<AttrRec>,
    ints: Vec<i64>,
    floats: Vec<f32>,
    constants: Vec<ConstRec>,
    data: Vec<u8>,
    /// Entropy coding to try on codebook indices.
    entropy: Entropy,
    /// Alignment of data blobs.
    blob_align: usize,
    /// Store scales marked f16 as f16 (the compact layout).
    half_scales: bool,
}

impl<'m> Builder<'m> {
    fn string(&mut self, s: &'m str) -> Result<StrRef> {
        if let Some(r) = self.string_refs.get(s) {
            return Ok(*r);
        }
        let r = StrRef {
            off: to_u32(self.strings.len(), "string pool")?,
            len: to_u32(s.len(), "string length")?,
        };
        self.strings.extend_from_slice(s.as_bytes());
        to_u32(self.strings.len(), "string pool")?;
        self.string_refs.insert(s, r);
        Ok(r)
    }

    fn ids(&mut self, ids: impl IntoIterator<Item = u32>) -> Result<Span> {
        let start = self.ids.len();
        self.ids.extend(ids);
        span(start, self.ids.len(), "IDS")
    }

    /// The DIMS start of `shape`, appending its records unless an equal run exists.
    fn shape(&mut self, shape: &'m [Dim]) -> Result<u32> {
        let mut recs = Vec::with_capacity(shape.len());
        for d in shape {
            recs.push(match d {
                Dim::Fixed(n) => i64::try_from(*n)
                    .map_err(|_| FormatError::TooLarge(format!("dim extent {n} exceeds 2^63 - 1")))?,
                Dim::Symbol(s) => self.symbol(s)?,
            });
        }
        if recs.is_empty() {
            return Ok(0);
        }
        if let Some(&start) = self.dim_runs.get(&recs) {
            return Ok(start);
        }
        let start = to_u32(self.dims.len(), "DIMS")?;
        self.dims.extend_from_slice(&recs);
        to_u32(self.dims.len(), "DIMS")?;
        self.dim_runs.insert(recs, start);
        Ok(start)
    }

    /// The DIMS encoding `-(1 + k)` of symbol `s`, interning it as SYMBOLS record `k`.
    fn symbol(&mut self, s: &'m str) -> Result<i64> {
        if let Some(&d) = self.symbol_ids.get(s) {
            return Ok(d);
        }
        let r = self.string(s)?;
        let d = -1 - i64::from(to_u32(self.symbols.len(), "SYMBOLS")?);
        self.symbols.push(r);
        self.symbol_ids.insert(s, d);
        Ok(d)
    }

    /// Appends `bytes` to DATA at the next multiple of the blob alignment.
    fn blob(&mut self, bytes: &[u8]) -> Result<Blob> {
        if bytes.is_empty() {
            return Ok(Blob::default());
        }
        let offset = self.data.len().next_multiple_of(self.blob_align);
        self.data.resize(offset, 0);
        self.data.extend_from_slice(bytes);
        // Blob fields are u32: DATA is capped at 4 GiB.
        to_u32(self.data.len(), "DATA bytes")?;
        Ok(Blob { offset: offset as u32, len: bytes.len() as u32 })
    }

    /// `start | count << 32` of `v` in INTS, appending it unless an equal list exists.
    fn ints(&mut self, v: &[i64]) -> Result<u64> {
        let count = to_u32(v.len(), "attribute list")? as u64;
        let start = match self.int_runs.get(v) {
            Some(&start) => start,
            None => {
                let start = to_u32(self.ints.len(), "INTS")?;
                self.ints.extend_from_slice(v);
                to_u32(self.ints.len(), "INTS")?;
                self.int_runs.insert(v.to_vec(), start);
                start
            }
        };
        Ok(start as u64 | count << 32)
    }

    fn attr(&mut self, name: &'m str, a: &'m Attr) -> Result<AttrRec> {
        let name = self.string(name)?;
        let name_len = to_u16(name.len as usize, "attribute name length")?;
        let (kind, value) = match a {
            Attr::Int(i) => (ATTR_INT, *i as u64),
            Attr::Float(f) => (ATTR_FLOAT, f.to_bits() as u64),
            Attr::Ints(v) => (ATTR_INTS, self.ints(v)?),
            Attr::Floats(v) => {
                let start = to_u32(self.floats.len(), "FLOATS")? as u64;
                self.floats.extend_from_slice(v);
                to_u32(self.floats.len(), "FLOATS")?;
                (ATTR_FLOATS, start | (v.len() as u64) << 32)
            }
            Attr::Str(s) => {
                let r = self.string(s)?;
                (ATTR_STR, r.off as u64 | (r.len as u64) << 32)
            }
        };
        Ok(AttrRec { name_off: name.off, name_len, kind, value })
    }

    fn constant(&mut self, c: &Constant) -> Result<ConstRec> {
        let mut rec = ConstRec::zeroed();
        rec.value = c.value;
        match &c.data {
            TensorData::F32(d) => {
                rec.encoding = ENC_F32;
                rec.data = self.blob(bytemuck::cast_slice(d))?;
            }
            TensorData::F16(d) => {
                rec.encoding = ENC_F16;
                rec.data = self.blob(bytemuck::cast_slice(d))?;
            }
            TensorData::I64(d) => {
                rec.encoding = ENC_I64;
                rec.data = self.blob(bytemuck::cast_slice(d))?;
            }
            TensorData::Codebook(cb) => {
                // rows and row_len are not stored: readers derive them from the shape, which
                // `write` checks they match.
                rec.encoding = ENC_CODEBOOK;
                rec.bits = cb.bits;
                rec.cb_kind = cb.kind as u8;
                rec.entries = to_u16(cb.entries, "codebook entries")?;
                rec.data = match self.entropy {
                    Entropy::None => self.blob(&cb.indices)?,
                    Entropy::Huffman => {
                        let coded =
                            huffman::encode(&cb.indices, cb.bits, cb.entries, cb.row_len, cb.row_stride());
                        if coded.len() < cb.indices.len() {
                            rec.encoding = ENC_CODEBOOK_HUFFMAN;
                            self.blob(&coded)?
                        } else {
                            self.blob(&cb.indices)?
                        }
                    }
                };
                (rec.centroid_type, rec.centroids) = match &cb.centroids {
                    Centroids::F32(v) => (CENTROIDS_F32, self.blob(bytemuck::cast_slice(v))?),
                    Centroids::F16(v) => (CENTROIDS_F16, self.blob(bytemuck::cast_slice(v))?),
                };
                rec.scales = if cb.f16_scales && self.half_scales {
                    rec.scale_type = SCALES_F16;
                    let half: Vec<f16> = cb.scales.iter().map(|&s| f16::from_f32(s)).collect();
                    self.blob(bytemuck::cast_slice(&half))?
                } else {
                    self.blob(bytemuck::cast_slice(&cb.scales))?
                };
            }
        }
        Ok(rec)
    }
}

fn span(start: usize, end: usize, what: &str) -> Result<Span> {
    Ok(Span { start: to_u32(start, what)?, count: to_u32(end - start, what)? })
}

/// Serialises `model` without validating it. The reader rejects whatever is invalid; tests use
/// this to produce well-checksummed files with semantic errors.
#[cfg(test)]
pub(crate) fn encode(model: &Model) -> Result<Vec<u8>> {
    encode_with(model, &WriteOptions::default())
}

/// Serialises `model` with `options`, without validating it (the writer validates first).
/// Huffman coding needs valid codebook tensors (indices `< entries`).
pub(crate) fn encode_with(model: &Model, options: &WriteOptions) -> Result<Vec<u8>> {
    let g = &model.graph;
    let blob_align = if options.compact { COMPACT_BLOB_ALIGN } else { ALIGN };
    let mut b =
        Builder { entropy: options.entropy, blob_align, half_scales: options.compact, ..Builder::default() };
    for v in &g.values {
        let name = b.string(&v.name)?;
        let shape = v.shape.as_deref().unwrap_or_default();
        let rank = to_u16(shape.len(), "rank")?;
        let dims_start = b.shape(shape)?;
        b.values.push(ValueRec {
            name,
            dims_start,
            elem: v.elem as u8,
            has_shape: v.shape.is_some() as u8,
            rank,
        });
    }
    for n in &g.nodes {
        let name = b.string(&n.name)?;
        let inputs = b.ids(n.inputs.iter().map(|i| i.unwrap_or(NO_VALUE)))?;
        // Outputs directly follow the inputs, so one start serves both.
        b.ids(n.outputs.iter().copied())?;
        let attrs_start = to_u32(b.attrs.len(), "ATTRS")?;
        for (k, a) in &n.attrs {
            let rec = b.attr(k, a)?;
            b.attrs.push(rec);
        }
        to_u32(b.attrs.len(), "ATTRS")?;
        b.nodes.push(NodeRec {
            name,
            ids_start: inputs.start,
            attrs_start,
            op: n.op.code(),
            n_inputs: to_u16(n.inputs.len(), "node inputs")?,
            n_outputs: to_u16(n.outputs.len(), "node outputs")?,
            n_attrs: to_u16(n.attrs.len(), "node attributes")?,
        });
    }
    let meta = MetaRec {
        producer: b.string(&model.producer)?,
        inputs: b.ids(g.inputs.iter().copied())?,
        outputs: b.ids(g.outputs.iter().copied())?,
    };
    for c in &model.constants {
        let rec = b.constant(c)?;
        b.constants.push(rec);
    }
    to_u32(b.constants.len(), "CONSTANTS")?;
    // The lowest minor version whose features the file uses.
    let minor = if !model.props.is_empty() {
        4
    } else if b.constants.iter().any(|c| c.scale_type == SCALES_F16) {
        3
    } else if options.compact {
        2
    } else if b.constants.iter().any(|c| c.encoding == ENC_CODEBOOK_HUFFMAN) {
        1
    } else {
        0
    };

    let sections: [(SectionKind, &[u8]); 12] = [
        (SectionKind::Strings, &b.strings),
        (SectionKind::Meta, bytemuck::bytes_of(&meta)),
        (SectionKind::Values, bytemuck::cast_slice(&b.values)),
        (SectionKind::Dims, bytemuck::cast_slice(&b.dims)),
        (SectionKind::Ids, bytemuck::cast_slice(&b.ids)),
        (SectionKind::Nodes, bytemuck::cast_slice(&b.nodes)),
        (SectionKind::Attrs, bytemuck::cast_slice(&b.attrs)),
        (SectionKind::Ints, bytemuck::cast_slice(&b.ints)),
        (SectionKind::Floats, bytemuck::cast_slice(&b.floats)),
        (SectionKind::Constants, bytemuck::cast_slice(&b.constants)),
        (SectionKind::Symbols, bytemuck::cast_slice(&b.symbols)),
        (SectionKind::Data, &b.data),
    ];
    let (metadata, data) = sections.split_at(sections.len() - 1);
    let mut stored: Vec<(Stored, &[u8])> = Vec::with_capacity(sections.len() + 1);
    let packed;
    if options.compact {
        packed = packed::pack(metadata)?;
        stored.push((Stored::Packed, &packed));
    } else {
        stored.extend(metadata.iter().map(|&(k, bytes)| (Stored::Kind(k), bytes)));
    }
    // The properties go just before DATA, which stays the last section.
    let props = if model.props.is_empty() { None } else { Some(props::encode(&model.props)?) };
    if let Some(props) = &props {
        stored.push((Stored::Props, props));
    }
    stored.push((Stored::Kind(data[0].0), data[0].1));
    Ok(assemble(&stored, minor))
}

/// What a written section holds: one of the section kinds, the PACKED metadata or the PROPS.
#[derive(Clone, Copy)]
enum Stored {
    Kind(SectionKind),
    Packed,
    Props,
}

/// Lays out header, section table and sections, each section at a 64-byte boundary.
fn assemble(sections: &[(Stored, &[u8])], minor: u16) -> Vec<u8> {
    let header_len = std::mem::size_of::<Header>();
    let table_end = header_len + sections.len() * std::mem::size_of::<SectionEntry>();
    let total: usize = sections.iter().map(|(_, s)| align_up(s.len())).sum();
    let mut out = Vec::with_capacity(align_up(table_end) + total);
    out.resize(table_end, 0);
    let mut entries = Vec::with_capacity(sections.len());
    for (kind, bytes) in sections {
        let offset = align_up(out.len());
        out.resize(offset, 0);
        out.extend_from_slice(bytes);
        let (kind, flags) = match *kind {
            Stored::Kind(k) => (k as u32, 0),
            Stored::Packed => (packed::PACKED_KIND, 0),
            // Optional: readers older than 1.4 skip it.
            Stored::Props => (props::PROPS_KIND, SECTION_OPTIONAL),
        };
        entries.push(SectionEntry {
            kind,
            flags,
            offset: offset as u64,
            length: bytes.len() as u64,
            crc: crc32fast::hash(bytes),
            reserved: 0,
        });
    }
    let mut header = Header {
        magic: MAGIC,
        major: FORMAT_MAJOR,
        minor,
        section_count: entries.len() as u32,
        file_len: out.len() as u64,
        flags: 0,
        header_crc: 0,
    };
    out[header_len..table_end].copy_from_slice(bytemuck::cast_slice(&entries));
    out[..header_len].copy_from_slice(bytemuck::bytes_of(&header));
    header.header_crc = header_crc(&out[..table_end]);
    out[..header_len].copy_from_slice(bytemuck::bytes_of(&header));
    out
}
