//! Errors of the compressor; each names the op, node or tensor at fault.

/// Everything that can go wrong turning an ONNX model into a Pith model.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// The bytes are not a valid ONNX protobuf.
    #[error("malformed ONNX protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The model has no graph.
    #[error("ONNX model has no graph")]
    MissingGraph,
    /// The model's `metadata_props` break ONNX's rules (an empty or repeated key).
    #[error("ONNX model metadata: {0}")]
    BadMetadata(String),
    /// The model declares no opset for the default (`ai.onnx`) domain.
    #[error("ONNX model imports no opset for the default ai.onnx domain")]
    NoDefaultOpset,
    /// An operator Pith cannot run.
    #[error("unsupported operator '{op_type}' (domain '{domain}') in node '{node}'")]
    UnsupportedOp {
        /// ONNX `op_type`.
        op_type: String,
        /// ONNX domain.
        domain: String,
        /// Node name.
        node: String,
    },
    /// A tensor stores its data in an external file.
    #[error("tensor '{tensor}': external data not supported")]
    ExternalData {
        /// Tensor name.
        tensor: String,
    },
    /// A tensor has an element type Pith cannot represent.
    #[error("tensor '{tensor}': unsupported ONNX data type {data_type}")]
    UnsupportedDataType {
        /// Tensor name.
        tensor: String,
        /// ONNX `TensorProto.DataType` code.
        data_type: i32,
    },
    /// A tensor's payload is inconsistent with its declared shape or type.
    #[error("tensor '{tensor}': {msg}")]
    BadTensor {
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        msg: String,
    },
    /// A node attribute cannot be represented or is invalid.
    #[error("node '{node}' ({op_type}): attribute '{attr}': {msg}")]
    BadAttribute {
        /// Node name.
        node: String,
        /// ONNX `op_type`.
        op_type: String,
        /// Attribute name.
        attr: String,
        /// What is wrong.
        msg: String,
    },
    /// A node reads a value nothing defines.
    #[error("node '{node}' reads undefined value '{value}'")]
    UndefinedValue {
        /// Node name (or "graph output").
        node: String,
        /// Value name.
        value: String,
    },
    /// Two definitions of the same value name.
    #[error("value '{value}' is defined more than once")]
    DuplicateValue {
        /// Value name.
        value: String,
    },
    /// The graph has a cycle through this node.
    #[error("graph has a cycle through node '{node}'")]
    Cycle {
        /// Name of a node on the cycle.
        node: String,
    },
    /// Any other structural problem of the graph.
    #[error("{0}")]
    Graph(String),
}
