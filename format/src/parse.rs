//! Parses the metadata sections (strings, symbols, values, dims, ids, nodes, attributes) into an owned
//! [`Graph`], checking every enum value, string and cross-section reference on the way.

use std::mem::size_of;

use bytemuck::Pod;

use crate::error::FormatError;
use crate::ir::{Attr, Dim, ElemType, Graph, Node, OpKind, Value, ValueId};
use crate::layout::*;
use crate::sections::Sections;

type Result<T> = std::result::Result<T, FormatError>;

/// Casts a section to its records, checking the length is a whole number of records.
pub(crate) fn records<T: Pod>(bytes: &[u8], kind: SectionKind) -> Result<&[T]> {
    if !bytes.len().is_multiple_of(size_of::<T>()) {
        return Err(FormatError::SectionSize {
            section: kind.name(),
            len: bytes.len() as u64,
            record: size_of::<T>(),
        });
    }
    // Sections start at 64-byte file offsets of a 64-byte aligned buffer, so this only fails on a
    // broken storage invariant; still an error, never a panic.
    bytemuck::try_cast_slice(bytes).map_err(|e| {
        FormatError::SectionTable(format!("section {} cannot be read in place: {e}", kind.name()))
    })
}

/// Borrowed metadata pools (symbols already decoded).
struct Pools<'a> {
    strings: &'a [u8],
    symbols: Vec<String>,
    ids: &'a [u32],
    dims: &'a [DimRec],
    attrs: &'a [AttrRec],
    ints: &'a [i64],
    floats: &'a [f32],
}

/// `items[span]`, range-checked.
fn slice<'a, T>(
    items: &'a [T],
    start: u64,
    count: u64,
    what: &'static str,
    ctx: &dyn Fn() -> String,
) -> Result<&'a [T]> {
    // `start` may be a full u64 (list attributes), so the sum is checked.
    let end = start.saturating_add(count);
    if end > items.len() as u64 {
        return Err(FormatError::BadReference {
            what,
            index: end,
            limit: items.len() as u64,
            context: ctx(),
        });
    }
    Ok(&items[start as usize..end as usize])
}

/// The UTF-8 string `r` of the pool `strings`, range-checked.
fn string(strings: &[u8], r: StrRef, ctx: &dyn Fn() -> String) -> Result<String> {
    let end = r.off as u64 + r.len as u64;
    if end > strings.len() as u64 {
        return Err(FormatError::BadString {
            context: ctx(),
            reason: format!("bytes {}..{end} outside the {}-byte string pool", r.off, strings.len()),
        });
    }
    match std::str::from_utf8(&strings[r.off as usize..end as usize]) {
        Ok(s) => Ok(s.to_owned()),
        Err(e) => Err(FormatError::BadString { context: ctx(), reason: format!("not UTF-8 ({e})") }),
    }
}

impl Pools<'_> {
    fn string(&self, r: StrRef, ctx: &dyn Fn() -> String) -> Result<String> {
        string(self.strings, r, ctx)
    }

    fn ids(&self, span: Span, what: &'static str, ctx: &dyn Fn() -> String) -> Result<&[u32]> {
        slice(self.ids, span.start as u64, span.count as u64, what, ctx)
    }

    fn dim(&self, d: DimRec, ctx: &dyn Fn() -> String) -> Result<Dim> {
        if d >= 0 {
            return Ok(Dim::Fixed(d as u64));
        }
        // -(d + 1) cannot overflow for any negative i64.
        let k = (-(d + 1)) as u64;
        match self.symbols.get(k as usize) {
            Some(s) => Ok(Dim::Symbol(s.clone())),
            None => Err(FormatError::BadReference {
                what: "SYMBOLS",
                index: k,
                limit: self.symbols.len() as u64,
                context: ctx(),
            }),
        }
    }

    fn attr(&self, a: &AttrRec, ctx: &dyn Fn() -> String) -> Result<Attr> {
        // Lists and strings: low 32 bits the start, high 32 bits the count.
        let (start, count) = (a.value & u32::MAX as u64, a.value >> 32);
        Ok(match a.kind {
            ATTR_INT => Attr::Int(a.value as i64),
            ATTR_FLOAT => Attr::Float(f32::from_bits(a.value as u32)),
            ATTR_INTS => Attr::Ints(slice(self.ints, start, count, "INTS", ctx)?.to_vec()),
            ATTR_FLOATS => Attr::Floats(slice(self.floats, start, count, "FLOATS", ctx)?.to_vec()),
            ATTR_STR => Attr::Str(self.string(StrRef { off: start as u32, len: count as u32 }, ctx)?),
            k => {
                return Err(FormatError::BadEnum { what: "attribute kind", value: k as u64, context: ctx() })
            }
        })
    }
}

/// Parses the graph and producer string. References to values are range-checked here;
/// definitions and ordering are checked by `validate::check_graph`.
pub(crate) fn parse_graph(s: &Sections<'_>) -> Result<(Graph, String)> {
    let strings = s.get(SectionKind::Strings).bytes;
    let symbol_recs: &[StrRef] = records(s.get(SectionKind::Symbols).bytes, SectionKind::Symbols)?;
    let symbols = symbol_recs
        .iter()
        .enumerate()
        .map(|(i, r)| string(strings, *r, &|| format!("symbol #{i}")))
        .collect::<Result<Vec<_>>>()?;
    let pools = Pools {
        strings,
        symbols,
        ids: records(s.get(SectionKind::Ids).bytes, SectionKind::Ids)?,
        dims: records(s.get(SectionKind::Dims).bytes, SectionKind::Dims)?,
        attrs: records(s.get(SectionKind::Attrs).bytes, SectionKind::Attrs)?,
        ints: records(s.get(SectionKind::Ints).bytes, SectionKind::Ints)?,
        floats: records(s.get(SectionKind::Floats).bytes, SectionKind::Floats)?,
    };
    let meta: &[MetaRec] = records(s.get(SectionKind::Meta).bytes, SectionKind::Meta)?;
    let [meta] = meta else {
        return Err(FormatError::SectionTable(format!(
            "META must hold exactly one record, found {}",
            meta.len()
        )));
    };
    let value_recs: &[ValueRec] = records(s.get(SectionKind::Values).bytes, SectionKind::Values)?;
    let node_recs: &[NodeRec] = records(s.get(SectionKind::Nodes).bytes, SectionKind::Nodes)?;
    let nvalues = value_recs.len();
    if nvalues > NO_VALUE as usize {
        return Err(FormatError::TooLarge(format!("{nvalues} values")));
    }

    let mut values = Vec::with_capacity(nvalues);
    for (i, r) in value_recs.iter().enumerate() {
        let name = pools.string(r.name, &|| format!("name of value #{i}"))?;
        let ctx = || format!("value #{i} '{name}'");
        let elem = match r.elem {
            ELEM_F32 => ElemType::F32,
            ELEM_I64 => ElemType::I64,
            e => return Err(FormatError::BadEnum { what: "element type", value: e as u64, context: ctx() }),
        };
        let dims = slice(pools.dims, r.dims_start as u64, r.rank as u64, "DIMS", &ctx)?;
        let shape = match r.has_shape {
            0 if dims.is_empty() => None,
            0 => {
                return Err(FormatError::BadReference {
                    what: "rank of a value without shape",
                    index: dims.len() as u64,
                    limit: 0,
                    context: ctx(),
                })
            }
            1 => Some(dims.iter().map(|&d| pools.dim(d, &ctx)).collect::<Result<Vec<_>>>()?),
            f => {
                return Err(FormatError::BadEnum { what: "has_shape flag", value: f as u64, context: ctx() })
            }
        };
        values.push(Value { name, elem, shape });
    }

    let value_id = |id: u32, ctx: &dyn Fn() -> String| -> Result<ValueId> {
        if (id as usize) < nvalues {
            Ok(id)
        } else {
            Err(FormatError::BadReference {
                what: "value id",
                index: id as u64,
                limit: nvalues as u64,
                context: ctx(),
            })
        }
    };

    let mut nodes = Vec::with_capacity(node_recs.len());
    for (i, r) in node_recs.iter().enumerate() {
        let name = pools.string(r.name, &|| format!("name of node #{i}"))?;
        let ctx = || format!("node #{i} '{name}'");
        let op = OpKind::from_code(r.op).ok_or_else(|| FormatError::BadEnum {
            what: "op code",
            value: r.op as u64,
            context: ctx(),
        })?;
        let (n_in, n_out) = (r.n_inputs as u32, r.n_outputs as u32);
        // u32 + u16 cannot overflow u64; `slice` bounds the end.
        let inputs = slice(pools.ids, r.ids_start as u64, n_in as u64, "IDS (inputs)", &ctx)?
            .iter()
            .map(|&id| match id {
                NO_VALUE => Ok(None),
                id => value_id(id, &ctx).map(Some),
            })
            .collect::<Result<Vec<_>>>()?;
        let outputs =
            slice(pools.ids, r.ids_start as u64 + n_in as u64, n_out as u64, "IDS (outputs)", &ctx)?
                .iter()
                .map(|&id| value_id(id, &ctx))
                .collect::<Result<Vec<_>>>()?;
        let attr_recs = slice(pools.attrs, r.attrs_start as u64, r.n_attrs as u64, "ATTRS", &ctx)?;
        let mut attrs = Vec::with_capacity(attr_recs.len());
        for (k, a) in attr_recs.iter().enumerate() {
            let name_ref = StrRef { off: a.name_off, len: a.name_len as u32 };
            let aname = pools.string(name_ref, &|| format!("name of attribute #{k} of {}", ctx()))?;
            let actx = || format!("attribute '{aname}' of {}", ctx());
            let attr = pools.attr(a, &actx)?;
            attrs.push((aname, attr));
        }
        nodes.push(Node { name, op, inputs, outputs, attrs });
    }

    let producer = pools.string(meta.producer, &|| "producer".into())?;
    let graph_ids = |span: Span, what: &'static str| -> Result<Vec<ValueId>> {
        let ctx = || format!("graph {what}");
        pools.ids(span, "IDS", &ctx)?.iter().map(|&id| value_id(id, &ctx)).collect()
    };
    let graph = Graph {
        inputs: graph_ids(meta.inputs, "inputs")?,
        outputs: graph_ids(meta.outputs, "outputs")?,
        values,
        nodes,
    };
    Ok((graph, producer))
}
