//! ONNX protobuf → [`WorkModel`]: values, constants (initializers and `Constant` nodes), nodes,
//! and the opset-dependent canonicalisation that lets the runtime implement one semantics per op.

use std::collections::{BTreeMap, HashMap};

use pith_format::ir::{Attr, Dim, ElemType, Node, OpKind, ValueId};
use pith_runtime::Tensor;
use prost::Message;

use crate::error::CompressError;
use crate::onnx_proto::{
    attr_type, data_type, AttributeProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
    DATA_LOCATION_EXTERNAL,
};
use crate::work::WorkModel;

/// Decodes and imports an ONNX model.
pub(crate) fn import(onnx: &[u8]) -> Result<WorkModel, CompressError> {
    let model = ModelProto::decode(onnx)?;
    let opset = model
        .opset_import
        .iter()
        .filter(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .max()
        .ok_or(CompressError::NoDefaultOpset)?;
    let graph = model.graph.as_ref().ok_or(CompressError::MissingGraph)?;
    let mut work = Importer::new(opset, graph).run()?;
    work.props = metadata_props(&model)?;
    Ok(work)
}

/// The model's `metadata_props` by key: ONNX requires distinct, non-empty keys, and a `.pith`
/// file stores them so.
fn metadata_props(model: &ModelProto) -> Result<BTreeMap<String, String>, CompressError> {
    let mut props = BTreeMap::new();
    for p in &model.metadata_props {
        if p.key.is_empty() {
            return Err(CompressError::BadMetadata("an entry of metadata_props has an empty key".into()));
        }
        if props.insert(p.key.clone(), p.value.clone()).is_some() {
            return Err(CompressError::BadMetadata(format!("metadata_props has the key '{}' twice", p.key)));
        }
    }
    Ok(props)
}

/// Import state: the model being built and name lookups.
struct Importer<'a> {
    opset: i64,
    graph: &'a crate::onnx_proto::GraphProto,
    work: WorkModel,
    ids: HashMap<String, ValueId>,
    infos: HashMap<&'a str, &'a ValueInfoProto>,
    unknown_dims: usize,
    /// Values whose element type the model declares (the rest are inferred after sorting).
    declared: Vec<bool>,
}

impl<'a> Importer<'a> {
    fn new(opset: i64, graph: &'a crate::onnx_proto::GraphProto) -> Self {
        let infos = graph
            .input
            .iter()
            .chain(&graph.output)
            .chain(&graph.value_info)
            .map(|vi| (vi.name.as_str(), vi))
            .collect();
        Importer {
            opset,
            graph,
            work: WorkModel::default(),
            ids: HashMap::new(),
            infos,
            unknown_dims: 0,
            declared: Vec::new(),
        }
    }

    fn run(mut self) -> Result<WorkModel, CompressError> {
        for t in &self.graph.initializer {
            let data = tensor_from_proto(t, &t.name)?;
            self.define_const(&t.name, data)?;
        }
        for vi in &self.graph.input {
            if self.ids.contains_key(&vi.name) {
                continue; // an initializer listed as input (IR < 4): a constant, not a caller input
            }
            let id = self.define(&vi.name)?;
            self.work.graph.inputs.push(id);
        }
        // Define every node output first so input resolution does not depend on node order.
        let mut pending = Vec::new();
        for node in &self.graph.node {
            if let Some(ir_node) = self.define_node(node)? {
                pending.push((node, ir_node));
            }
        }
        for (proto, mut node) in pending {
            node.inputs = proto
                .input
                .iter()
                .map(|name| match name.as_str() {
                    "" => Ok(None),
                    name => self.lookup(name, &node.name).map(Some),
                })
                .collect::<Result<_, _>>()?;
            self.canonicalise(&mut node);
            self.work.graph.nodes.push(node);
        }
        for vi in &self.graph.output {
            let id = self.lookup(&vi.name, "graph output")?;
            self.work.graph.outputs.push(id);
        }
        crate::passes::topo::sort(&mut self.work)?;
        self.infer_elems();
        Ok(self.work)
    }

    /// Resolves a value name.
    fn lookup(&self, name: &str, node: &str) -> Result<ValueId, CompressError> {
        self.ids
            .get(name)
            .copied()
            .ok_or_else(|| CompressError::UndefinedValue { node: node.to_string(), value: name.to_string() })
    }

    fn claim(&mut self, name: &str) -> Result<(), CompressError> {
        if self.ids.contains_key(name) || self.work.has_name(name) {
            return Err(CompressError::DuplicateValue { value: name.to_string() });
        }
        Ok(())
    }

    /// Defines a non-constant value, with type and shape from the graph's value infos.
    fn define(&mut self, name: &str) -> Result<ValueId, CompressError> {
        self.claim(name)?;
        let tensor_type =
            self.infos.get(name).and_then(|vi| vi.r#type.as_ref()).and_then(|ty| ty.tensor_type.as_ref());
        let (elem, shape) = match tensor_type {
            Some(tt) => (elem_of(tt.elem_type), tt.shape.as_ref().map(|s| self.dims(&s.dim))),
            None => (None, None),
        };
        let id = self.work.add_value(name.to_string(), elem.unwrap_or(ElemType::F32), shape);
        self.mark_declared(id, elem.is_some());
        self.ids.insert(name.to_string(), id);
        Ok(id)
    }

    fn define_const(&mut self, name: &str, data: Tensor) -> Result<ValueId, CompressError> {
        self.claim(name)?;
        let id = self.work.add_const(name, data);
        self.mark_declared(id, true);
        self.ids.insert(name.to_string(), id);
        Ok(id)
    }

    fn mark_declared(&mut self, id: ValueId, declared: bool) {
        let i = id as usize;
        if self.declared.len() <= i {
            self.declared.resize(i + 1, false);
        }
        self.declared[i] = declared;
    }

    /// Infers the element type of values the model leaves undeclared, in topological order:
    /// `Shape` yields i64, `Cast` follows `to`, every other op follows its first input.
    fn infer_elems(&mut self) {
        self.declared.resize(self.work.graph.values.len(), false);
        let graph = &mut self.work.graph;
        for n in 0..graph.nodes.len() {
            let node = &graph.nodes[n];
            let elem = match node.op {
                OpKind::Shape => ElemType::I64,
                OpKind::Cast => match node.attr("to") {
                    Some(Attr::Int(to)) => elem_of(*to as i32).unwrap_or(ElemType::F32),
                    _ => ElemType::F32,
                },
                _ => node
                    .inputs
                    .iter()
                    .flatten()
                    .next()
                    .map_or(ElemType::F32, |&v| graph.values[v as usize].elem),
            };
            for &out in &graph.nodes[n].outputs.clone() {
                if !self.declared[out as usize] {
                    graph.values[out as usize].elem = elem;
                }
            }
        }
    }

    fn dims(&mut self, dims: &[crate::onnx_proto::Dimension]) -> Vec<Dim> {
        dims.iter()
            .map(|d| match (&d.dim_value, &d.dim_param) {
                (Some(v), _) if *v >= 0 => Dim::Fixed(*v as u64),
                // "?" is how exporters such as Paddle2ONNX write "unknown" for every free
                // dimension (PP-OCRv3 det: `[?, 3, ?, ?]`); it does not tie them together, as a
                // shared name otherwise would, so each becomes its own symbol.
                (_, Some(p)) if !p.is_empty() && p != "?" => Dim::Symbol(p.clone()),
                _ => {
                    self.unknown_dims += 1;
                    Dim::Symbol(format!("unk_{}", self.unknown_dims - 1))
                }
            })
            .collect()
    }

    /// Defines a node's outputs; returns the node (inputs unresolved), or `None` for a `Constant`
    /// node, which becomes a constant.
    fn define_node(&mut self, proto: &NodeProto) -> Result<Option<Node>, CompressError> {
        let unsupported = || CompressError::UnsupportedOp {
            op_type: proto.op_type.clone(),
            domain: proto.domain.clone(),
            node: proto.name.clone(),
        };
        if !(proto.domain.is_empty() || proto.domain == "ai.onnx") {
            return Err(unsupported());
        }
        let op = OpKind::from_onnx_name(&proto.op_type).ok_or_else(unsupported)?;
        if op == OpKind::Constant {
            let out = match proto.output.as_slice() {
                [out] if !out.is_empty() => out,
                _ => {
                    return Err(CompressError::Graph(format!(
                        "Constant node '{}' must have exactly one output",
                        proto.name
                    )))
                }
            };
            let data = constant_node_value(proto)?;
            self.define_const(out, data)?;
            return Ok(None);
        }
        let mut attrs = proto
            .attribute
            .iter()
            .map(|a| Ok((a.name.clone(), convert_attr(a, proto)?)))
            .collect::<Result<Vec<_>, CompressError>>()?;
        attrs.sort_by(|a, b| a.0.cmp(&b.0));
        // Trailing omitted outputs are dropped; an omitted output in the middle gets a dummy value.
        let used = proto.output.iter().rposition(|o| !o.is_empty()).map_or(0, |p| p + 1);
        let mut outputs = Vec::with_capacity(used);
        for (i, name) in proto.output[..used].iter().enumerate() {
            let name = if name.is_empty() {
                self.work.unique_name(&format!("{}:unused_output_{i}", proto.name))
            } else {
                name.clone()
            };
            outputs.push(self.define(&name)?);
        }
        Ok(Some(Node { name: proto.name.clone(), op, inputs: Vec::new(), outputs, attrs }))
    }

    /// Rewrites opset-dependent forms into the one form the runtime implements.
    fn canonicalise(&self, node: &mut Node) {
        match node.op {
            OpKind::Softmax => {
                let default_axis = if self.opset < 13 { 1 } else { -1 };
                if node.attr("axis").is_none() {
                    set_attr(node, "axis", Attr::Int(default_axis));
                }
                if self.opset < 13 {
                    set_attr(node, "coerce_2d", Attr::Int(1));
                }
            }
            OpKind::Resize if self.opset < 11 && node.inputs.len() == 2 => {
                // Opset 10 Resize is (X, scales); later opsets are (X, roi, scales, sizes).
                node.inputs.insert(1, None);
            }
            _ => {}
        }
    }
}

/// Sets attribute `name`, keeping the attribute list sorted by name.
fn set_attr(node: &mut Node, name: &str, value: Attr) {
    match node.attrs.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
        Ok(i) => node.attrs[i].1 = value,
        Err(i) => node.attrs.insert(i, (name.to_string(), value)),
    }
}

/// The Pith element type of an ONNX data type, if representable.
fn elem_of(dt: i32) -> Option<ElemType> {
    use data_type::*;
    match dt {
        FLOAT | DOUBLE | FLOAT16 => Some(ElemType::F32),
        INT64 | INT32 | INT16 | INT8 | UINT16 | UINT8 | BOOL => Some(ElemType::I64),
        _ => None,
    }
}

fn convert_attr(a: &AttributeProto, node: &NodeProto) -> Result<Attr, CompressError> {
    let bad = |msg: String| CompressError::BadAttribute {
        node: node.name.clone(),
        op_type: node.op_type.clone(),
        attr: a.name.clone(),
        msg,
    };
    Ok(match a.r#type {
        attr_type::FLOAT => Attr::Float(a.f),
        attr_type::INT => Attr::Int(a.i),
        attr_type::STRING => {
            Attr::Str(String::from_utf8(a.s.clone()).map_err(|_| bad("string is not UTF-8".into()))?)
        }
        attr_type::FLOATS => Attr::Floats(a.floats.clone()),
        attr_type::INTS => Attr::Ints(a.ints.clone()),
        other => return Err(bad(format!("unsupported attribute type {other}"))),
    })
}

/// The tensor a `Constant` node defines.
fn constant_node_value(node: &NodeProto) -> Result<Tensor, CompressError> {
    let [a] = node.attribute.as_slice() else {
        return Err(CompressError::Graph(format!(
            "Constant node '{}' must have exactly one attribute",
            node.name
        )));
    };
    let name = node.output.first().map_or(node.name.as_str(), String::as_str);
    match (a.name.as_str(), a.r#type) {
        ("value", attr_type::TENSOR) => match &a.t {
            Some(t) => tensor_from_proto(t, name),
            None => Err(CompressError::BadTensor {
                tensor: name.to_string(),
                msg: "Constant 'value' attribute holds no tensor".into(),
            }),
        },
        ("value_float", attr_type::FLOAT) => Ok(Tensor::from_f32(vec![], vec![a.f])),
        ("value_floats", attr_type::FLOATS) => Ok(Tensor::from_f32(vec![a.floats.len()], a.floats.clone())),
        ("value_int", attr_type::INT) => Ok(Tensor::from_i64(vec![], vec![a.i])),
        ("value_ints", attr_type::INTS) => Ok(Tensor::from_i64(vec![a.ints.len()], a.ints.clone())),
        (attr, _) => Err(CompressError::BadAttribute {
            node: node.name.clone(),
            op_type: node.op_type.clone(),
            attr: attr.to_string(),
            msg: "unsupported Constant attribute".into(),
        }),
    }
}

/// Converts an ONNX tensor to f32 or i64 data, checking its payload against its shape.
pub(crate) fn tensor_from_proto(t: &TensorProto, name: &str) -> Result<Tensor, CompressError> {
    let bad = |msg: String| CompressError::BadTensor { tensor: name.to_string(), msg };
    if t.data_location == DATA_LOCATION_EXTERNAL || !t.external_data.is_empty() {
        return Err(CompressError::ExternalData { tensor: name.to_string() });
    }
    let shape = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}"))))
        .collect::<Result<Vec<usize>, _>>()?;
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("element count overflows".into()))?;
    let raw = |size: usize| -> Result<Option<std::slice::ChunksExact<'_, u8>>, CompressError> {
        if t.raw_data.is_empty() {
            return Ok(None);
        }
        if Some(t.raw_data.len()) != numel.checked_mul(size) {
            return Err(bad(format!(
                "raw_data has {} bytes, shape {:?} needs {} of {size} bytes",
                t.raw_data.len(),
                shape,
                numel
            )));
        }
        Ok(Some(t.raw_data.chunks_exact(size)))
    };
    let check = |len: usize| {
        if len == numel {
            Ok(())
        } else {
            Err(bad(format!("{len} elements stored, shape {shape:?} needs {numel}")))
        }
    };
    use data_type::*;
    match t.data_type {
        FLOAT => {
            let data = match raw(4)? {
                Some(c) => c.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                None => t.float_data.clone(),
            };
            check(data.len())?;
            Ok(Tensor::from_f32(shape, data))
        }
        DOUBLE => {
            let data: Vec<f32> = match raw(8)? {
                Some(c) => c.map(|b| f64::from_le_bytes(b.try_into().expect("chunk of 8")) as f32).collect(),
                None => t.double_data.iter().map(|&v| v as f32).collect(),
            };
            check(data.len())?;
            Ok(Tensor::from_f32(shape, data))
        }
        FLOAT16 => {
            let data: Vec<f32> = match raw(2)? {
                Some(c) => c.map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                None => t.int32_data.iter().map(|&v| half::f16::from_bits(v as u16).to_f32()).collect(),
            };
            check(data.len())?;
            Ok(Tensor::from_f32(shape, data))
        }
        INT64 => {
            let data = match raw(8)? {
                Some(c) => c.map(|b| i64::from_le_bytes(b.try_into().expect("chunk of 8"))).collect(),
                None => t.int64_data.clone(),
            };
            check(data.len())?;
            Ok(Tensor::from_i64(shape, data))
        }
        INT32 | INT16 | UINT16 | INT8 | UINT8 | BOOL => {
            let data: Vec<i64> = match (t.data_type, raw(int_size(t.data_type))?) {
                (INT32, Some(c)) => c.map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64).collect(),
                (INT16, Some(c)) => c.map(|b| i16::from_le_bytes([b[0], b[1]]) as i64).collect(),
                (UINT16, Some(c)) => c.map(|b| u16::from_le_bytes([b[0], b[1]]) as i64).collect(),
                (INT8, Some(c)) => c.map(|b| b[0] as i8 as i64).collect(),
                (_, Some(c)) => c.map(|b| b[0] as i64).collect(),
                (_, None) => t.int32_data.iter().map(|&v| v as i64).collect(),
            };
            check(data.len())?;
            Ok(Tensor::from_i64(shape, data))
        }
        other => Err(CompressError::UnsupportedDataType { tensor: name.to_string(), data_type: other }),
    }
}

/// Bytes per element of the narrow integer types stored in `raw_data`.
fn int_size(dt: i32) -> usize {
    match dt {
        data_type::INT32 => 4,
        data_type::INT16 | data_type::UINT16 => 2,
        _ => 1,
    }
}
