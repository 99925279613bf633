//! Semantic checks shared by the writer (on an owned model) and the reader (on a parsed file):
//! definitions and topological order, constant shapes, codebook geometry and codebook contents.

use crate::error::FormatError;
use crate::ir::{CodebookKind, Dim, Graph, Value, ValueId};
use crate::view::{CentroidsView, CodebookView};

type Result<T> = std::result::Result<T, FormatError>;

/// Who defines a value, for error messages.
#[derive(Clone, Copy)]
enum Def {
    None,
    Input(usize),
    Constant(usize),
    Node(usize),
}

impl Def {
    fn describe(self, g: &Graph) -> String {
        match self {
            Def::None => "nothing".into(),
            Def::Input(i) => format!("graph input #{i}"),
            Def::Constant(i) => format!("constant #{i}"),
            Def::Node(i) => format!("node #{i} '{}'", g.nodes[i].name),
        }
    }
}

fn value_ref(g: &Graph, id: ValueId, context: impl FnOnce() -> String) -> Result<()> {
    if (id as usize) < g.values.len() {
        Ok(())
    } else {
        Err(FormatError::BadReference {
            what: "value id",
            index: id as u64,
            limit: g.values.len() as u64,
            context: context(),
        })
    }
}

/// Checks that every value is defined exactly once (graph input, constant or node output), that
/// nodes only read values defined before them, and that graph outputs are in range.
/// `constants` lists the value each constant defines, in constant order.
pub(crate) fn check_graph(g: &Graph, constants: &[ValueId]) -> Result<()> {
    let mut defs = vec![Def::None; g.values.len()];
    let define = |id: ValueId, by: Def, defs: &mut [Def]| -> Result<()> {
        let slot = &mut defs[id as usize];
        if let Def::None = slot {
            *slot = by;
            return Ok(());
        }
        Err(FormatError::DuplicateDefinition {
            id,
            name: g.values[id as usize].name.clone(),
            first: slot.describe(g),
            second: by.describe(g),
        })
    };
    for (i, &id) in g.inputs.iter().enumerate() {
        value_ref(g, id, || format!("graph input #{i}"))?;
        define(id, Def::Input(i), &mut defs)?;
    }
    for (i, &id) in constants.iter().enumerate() {
        value_ref(g, id, || format!("constant #{i}"))?;
        define(id, Def::Constant(i), &mut defs)?;
    }
    for (n, node) in g.nodes.iter().enumerate() {
        let ctx = || format!("node #{n} '{}'", node.name);
        for &id in node.inputs.iter().flatten() {
            value_ref(g, id, ctx)?;
            if let Def::None = defs[id as usize] {
                return Err(FormatError::UseBeforeDefinition {
                    node_index: n,
                    node: node.name.clone(),
                    id,
                    value: g.values[id as usize].name.clone(),
                });
            }
        }
        for &id in &node.outputs {
            value_ref(g, id, ctx)?;
            define(id, Def::Node(n), &mut defs)?;
        }
    }
    for (i, &id) in g.outputs.iter().enumerate() {
        value_ref(g, id, || format!("graph output #{i}"))?;
    }
    if let Some(id) = defs.iter().position(|d| matches!(d, Def::None)) {
        return Err(FormatError::Undefined { id: id as u32, name: g.values[id].name.clone() });
    }
    Ok(())
}

/// Builds a [`FormatError::BadConstant`] for value `id`.
pub(crate) fn bad_constant(id: ValueId, v: &Value, reason: impl Into<String>) -> FormatError {
    FormatError::BadConstant { id, name: v.name.clone(), reason: reason.into() }
}

/// Constants must have fewer elements than this (2^60).
pub(crate) const MAX_NUMEL: u64 = 1 << 60;

/// The fixed shape of a constant, reduced to what encodings need.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConstShape {
    /// Number of elements.
    pub numel: usize,
    /// `shape[0]`, or `None` for a scalar.
    pub rows: Option<usize>,
    /// Product of `shape[1..]` (1 for rank <= 1).
    pub row_len: usize,
}

/// The shape of constant value `id`: it must be declared and fully fixed, and its element count
/// must fit in memory arithmetic (checked, so absurd dims are an error rather than an overflow).
pub(crate) fn const_shape(id: ValueId, v: &Value) -> Result<ConstShape> {
    let bad = |reason: String| FormatError::BadShape { id, name: v.name.clone(), reason };
    let dims = v.shape.as_ref().ok_or_else(|| bad("constants need a declared shape".into()))?;
    let mut fixed = Vec::with_capacity(dims.len());
    for (i, d) in dims.iter().enumerate() {
        match d {
            Dim::Fixed(n) => fixed.push(*n),
            Dim::Symbol(s) => return Err(bad(format!("dim {i} is symbolic ('{s}')"))),
        }
    }
    let too_big = || bad(format!("{fixed:?} has too many elements"));
    let to_usize = |n: u64| usize::try_from(n).map_err(|_| too_big());
    let mut row_len: u64 = 1;
    for &d in fixed.iter().skip(1) {
        row_len = row_len.checked_mul(d).ok_or_else(too_big)?;
    }
    let numel = match fixed.first() {
        Some(&d0) => d0.checked_mul(row_len).ok_or_else(too_big)?,
        None => 1,
    };
    // A fixed, platform-independent cap far beyond any real tensor; `to_usize` below adds the
    // platform's own limit on 32-bit targets.
    if numel >= MAX_NUMEL {
        return Err(too_big());
    }
    Ok(ConstShape {
        numel: to_usize(numel)?,
        rows: fixed.first().map(|&d| to_usize(d)).transpose()?,
        row_len: to_usize(row_len)?,
    })
}

/// `numel * elem_size`, checked.
pub(crate) fn data_len(id: ValueId, v: &Value, shape: &ConstShape, elem_size: usize) -> Result<usize> {
    shape.numel.checked_mul(elem_size).ok_or_else(|| bad_constant(id, v, "data size overflows"))
}

/// Codebook parameters as stored (before validation).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CodebookParams {
    pub bits: u64,
    pub entries: u64,
    pub kind: CodebookKind,
    pub rows: u64,
    pub row_len: u64,
}

/// Byte and element counts a valid codebook tensor has.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CodebookLayout {
    pub bits: u8,
    pub entries: usize,
    pub rows: usize,
    pub row_len: usize,
    pub row_stride: usize,
    pub indices_len: usize,
    pub centroid_count: usize,
    pub scale_count: usize,
}

/// Validates codebook parameters against the constant's shape and computes the lengths of its parts.
pub(crate) fn codebook_layout(
    id: ValueId,
    v: &Value,
    shape: &ConstShape,
    p: CodebookParams,
) -> Result<CodebookLayout> {
    let bad = |r: String| bad_constant(id, v, r);
    if !(1..=8).contains(&p.bits) {
        return Err(bad(format!("codebook bits {} not in 1..=8", p.bits)));
    }
    let bits = p.bits as u8;
    if p.entries < 1 || p.entries > 1 << bits {
        return Err(bad(format!(
            "codebook entries {} not in 1..={} for {bits} bits",
            p.entries,
            1u32 << bits
        )));
    }
    let rows = shape.rows.ok_or_else(|| bad("a codebook tensor needs rank >= 1".into()))?;
    if p.rows != rows as u64 {
        return Err(bad(format!("codebook rows {} != shape[0] {rows}", p.rows)));
    }
    if p.row_len != shape.row_len as u64 {
        return Err(bad(format!(
            "codebook row_len {} != product of shape[1..] {}",
            p.row_len, shape.row_len
        )));
    }
    let overflow = || bad("codebook size overflows".into());
    let row_stride = shape.row_len.checked_mul(bits as usize).ok_or_else(overflow)?.div_ceil(8);
    let indices_len = rows.checked_mul(row_stride).ok_or_else(overflow)?;
    let entries = p.entries as usize;
    let (centroid_count, scale_count) = match p.kind {
        CodebookKind::PerTensor => (entries, 0),
        CodebookKind::PerRow => (rows.checked_mul(entries).ok_or_else(overflow)?, 0),
        CodebookKind::SharedScaled => (entries, rows),
    };
    Ok(CodebookLayout {
        bits,
        entries,
        rows,
        row_len: shape.row_len,
        row_stride,
        indices_len,
        centroid_count,
        scale_count,
    })
}

/// Checks a codebook tensor's contents: finite centroids and scales, zero padding bits at the end
/// of each packed row, and every index below `entries`.
pub(crate) fn check_codebook_contents(id: ValueId, v: &Value, c: &CodebookView<'_>) -> Result<()> {
    let non_finite = |what, pos, value| FormatError::NonFinite { id, name: v.name.clone(), what, pos, value };
    let centroid = match c.centroids {
        CentroidsView::F32(s) => s.iter().position(|x| !x.is_finite()),
        CentroidsView::F16(s) => s.iter().position(|x| !x.is_finite()),
    };
    if let Some(pos) = centroid {
        return Err(non_finite("centroid", pos, c.centroids.get(pos)));
    }
    if let Some(pos) = c.scales.iter().position(|x| !x.is_finite()) {
        return Err(non_finite("scale", pos, c.scales[pos]));
    }
    let pad = (c.row_len * c.bits as usize) % 8;
    if pad != 0 {
        for r in 0..c.rows {
            let last = c.indices[r * c.row_stride + c.row_stride - 1];
            if last >> pad != 0 {
                return Err(bad_constant(
                    id,
                    v,
                    format!("row {r}: padding bits of the last index byte are not zero"),
                ));
            }
        }
    }
    if c.entries >= 1 << c.bits || c.row_stride == 0 {
        // Every bit pattern is a valid index, or there are no indices at all (`row_len` 0, where
        // `rows` is not bounded by the data length and must not drive a loop).
        return Ok(());
    }
    if 8 % c.bits == 0 {
        // Indices never straddle bytes: a 256-entry table says which bytes hold a bad index.
        // Padding fields are zero (checked above), hence valid. Only rows holding such a byte
        // are decoded, to report the exact position.
        let per_byte = 8 / c.bits as usize;
        let mask = (1usize << c.bits) - 1;
        let mut bad_byte = [false; 256];
        for (b, slot) in bad_byte.iter_mut().enumerate() {
            *slot = (0..per_byte).any(|k| (b >> (k * c.bits as usize)) & mask >= c.entries);
        }
        for (r, row) in c.indices.chunks_exact(c.row_stride).enumerate() {
            if row.iter().any(|&b| bad_byte[b as usize]) {
                scan_row(id, v, c, r)?;
            }
        }
        Ok(())
    } else {
        (0..c.rows).try_for_each(|r| scan_row(id, v, c, r))
    }
}

/// Checks every index of row `r` with a bit accumulator; reports the first bad one.
fn scan_row(id: ValueId, v: &Value, c: &CodebookView<'_>, r: usize) -> Result<()> {
    let bits = c.bits as u32;
    let mask = (1u32 << bits) - 1;
    let mut bytes = c.row_indices(r).iter();
    let (mut acc, mut have) = (0u32, 0u32);
    for pos in 0..c.row_len {
        while have < bits {
            // The row has exactly ceil(row_len * bits / 8) bytes, so this never runs dry.
            acc |= (*bytes.next().unwrap_or(&0) as u32) << have;
            have += 8;
        }
        let index = (acc & mask) as usize;
        acc >>= bits;
        have -= bits;
        if index >= c.entries {
            return Err(FormatError::IndexOutOfRange {
                id,
                name: v.name.clone(),
                row: r,
                pos,
                index,
                entries: c.entries,
            });
        }
    }
    Ok(())
}
