//! Serialises an owned [`Model`] into `.pith` bytes (layout in `SPEC.md`).
//!
//! Output is deterministic: it depends only on the model (strings are pooled in first-use order,
//! sections are written in kind order, every gap is zero-filled).

use std::collections::HashMap;

use bytemuck::Zeroable;

use crate::error::FormatError;
use crate::ir::{Attr, Centroids, Constant, Dim, ElemType, Model, TensorData, ValueId};
use crate::layout::*;
use crate::sections::header_crc;
use crate::validate::{self, CodebookParams};
use crate::view::{CentroidsView, CodebookView};
use crate::{FORMAT_MAJOR, FORMAT_MINOR};

type Result<T> = std::result::Result<T, FormatError>;

/// Validates `model` exactly as the reader would and serialises it.
///
/// The same model always yields the same bytes.
pub fn write(model: &Model) -> Result<Vec<u8>> {
    check_model(model)?;
    encode(model)
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

fn too_large(what: &str) -> FormatError {
    FormatError::TooLarge(format!("{what} exceeds 2^32 entries"))
}

fn to_u32(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| too_large(what))
}

/// Accumulates the metadata pools while walking the model.
#[derive(Default)]
struct Builder<'m> {
    strings: Vec<u8>,
    string_refs: HashMap<&'m str, StrRef>,
    values: Vec<ValueRec>,
    dims: Vec<DimRec>,
    ids: Vec<u32>,
    nodes: Vec<NodeRec>,
    attrs: Vec<AttrRec>,
    ints: Vec<i64>,
    floats: Vec<f32>,
    constants: Vec<ConstRec>,
    data: Vec<u8>,
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

    /// Appends `bytes` to DATA at the next 64-byte boundary.
    fn blob(&mut self, bytes: &[u8]) -> Blob {
        if bytes.is_empty() {
            return Blob::default();
        }
        let offset = align_up(self.data.len());
        self.data.resize(offset, 0);
        self.data.extend_from_slice(bytes);
        Blob { offset: offset as u64, len: bytes.len() as u64 }
    }

    fn attr(&mut self, name: &'m str, a: &'m Attr) -> Result<AttrRec> {
        let name = self.string(name)?;
        let (kind, len, value) = match a {
            Attr::Int(i) => (ATTR_INT, 0, *i as u64),
            Attr::Float(f) => (ATTR_FLOAT, 0, f.to_bits() as u64),
            Attr::Ints(v) => {
                let start = self.ints.len();
                self.ints.extend_from_slice(v);
                (ATTR_INTS, to_u32(v.len(), "attribute list")?, start as u64)
            }
            Attr::Floats(v) => {
                let start = self.floats.len();
                self.floats.extend_from_slice(v);
                (ATTR_FLOATS, to_u32(v.len(), "attribute list")?, start as u64)
            }
            Attr::Str(s) => {
                let r = self.string(s)?;
                (ATTR_STR, r.len, r.off as u64)
            }
        };
        Ok(AttrRec { name, kind, len, value })
    }

    fn constant(&mut self, c: &Constant) -> ConstRec {
        let mut rec = ConstRec::zeroed();
        rec.value = c.value;
        match &c.data {
            TensorData::F32(d) => {
                rec.encoding = ENC_F32;
                rec.data = self.blob(bytemuck::cast_slice(d));
            }
            TensorData::F16(d) => {
                rec.encoding = ENC_F16;
                rec.data = self.blob(bytemuck::cast_slice(d));
            }
            TensorData::I64(d) => {
                rec.encoding = ENC_I64;
                rec.data = self.blob(bytemuck::cast_slice(d));
            }
            TensorData::Codebook(cb) => {
                rec.encoding = ENC_CODEBOOK;
                rec.bits = cb.bits as u32;
                rec.cb_kind = cb.kind as u32;
                rec.entries = cb.entries as u32;
                rec.rows = cb.rows as u64;
                rec.row_len = cb.row_len as u64;
                rec.data = self.blob(&cb.indices);
                (rec.centroid_type, rec.centroids) = match &cb.centroids {
                    Centroids::F32(v) => (CENTROIDS_F32, self.blob(bytemuck::cast_slice(v))),
                    Centroids::F16(v) => (CENTROIDS_F16, self.blob(bytemuck::cast_slice(v))),
                };
                rec.scales = self.blob(bytemuck::cast_slice(&cb.scales));
            }
        }
        rec
    }
}

fn span(start: usize, end: usize, what: &str) -> Result<Span> {
    Ok(Span { start: to_u32(start, what)?, count: to_u32(end - start, what)? })
}

/// Serialises `model` without validating it. The reader rejects whatever is invalid; tests use
/// this to produce well-checksummed files with semantic errors.
pub(crate) fn encode(model: &Model) -> Result<Vec<u8>> {
    let g = &model.graph;
    let mut b = Builder::default();
    for v in &g.values {
        let name = b.string(&v.name)?;
        let start = b.dims.len();
        for d in v.shape.iter().flatten() {
            let rec = match d {
                Dim::Fixed(n) => DimRec { kind: DIM_FIXED, reserved: 0, extent: *n, name: StrRef::default() },
                Dim::Symbol(s) => DimRec { kind: DIM_SYMBOL, reserved: 0, extent: 0, name: b.string(s)? },
            };
            b.dims.push(rec);
        }
        let dims = span(start, b.dims.len(), "DIMS")?;
        b.values.push(ValueRec { name, elem: v.elem as u32, has_shape: v.shape.is_some() as u32, dims });
    }
    for n in &g.nodes {
        let name = b.string(&n.name)?;
        let inputs = b.ids(n.inputs.iter().map(|i| i.unwrap_or(NO_VALUE)))?;
        let outputs = b.ids(n.outputs.iter().copied())?;
        let start = b.attrs.len();
        for (k, a) in &n.attrs {
            let rec = b.attr(k, a)?;
            b.attrs.push(rec);
        }
        b.nodes.push(NodeRec {
            name,
            op: n.op.code() as u32,
            reserved: 0,
            inputs,
            outputs,
            attrs: span(start, b.attrs.len(), "ATTRS")?,
        });
    }
    let meta = MetaRec {
        producer: b.string(&model.producer)?,
        inputs: b.ids(g.inputs.iter().copied())?,
        outputs: b.ids(g.outputs.iter().copied())?,
    };
    for c in &model.constants {
        let rec = b.constant(c);
        b.constants.push(rec);
    }
    to_u32(b.ints.len(), "INTS")?;
    to_u32(b.floats.len(), "FLOATS")?;
    to_u32(b.constants.len(), "CONSTANTS")?;

    let sections: [(SectionKind, &[u8]); 11] = [
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
        (SectionKind::Data, &b.data),
    ];
    Ok(assemble(&sections))
}

/// Lays out header, section table and sections, each section at a 64-byte boundary.
fn assemble(sections: &[(SectionKind, &[u8])]) -> Vec<u8> {
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
        entries.push(SectionEntry {
            kind: *kind as u32,
            flags: 0,
            offset: offset as u64,
            length: bytes.len() as u64,
            crc: crc32fast::hash(bytes),
            reserved: 0,
        });
    }
    let mut header = Header {
        magic: MAGIC,
        major: FORMAT_MAJOR,
        minor: FORMAT_MINOR,
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
