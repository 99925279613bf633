//! The owned, in-memory graph representation shared by the writer, the reader and the compressor.
//!
//! The reader parses the small metadata (values, nodes, attributes) into these types once at open time;
//! tensor data stays in the mapped file and is handed out as [`crate::TensorView`]s.

use std::collections::BTreeMap;

use half::f16;

/// Index of a value (graph input, constant or node output) in [`Graph::values`].
pub type ValueId = u32;

/// Element type of a graph value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ElemType {
    /// 32-bit IEEE float: every activation and every float constant, whatever its storage encoding.
    F32 = 0,
    /// 64-bit signed integer: shapes, indices, axes.
    I64 = 1,
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A known extent.
    Fixed(u64),
    /// A named extent bound when the session sees its inputs (ONNX `dim_param`).
    Symbol(String),
}

impl Dim {
    /// The extent when it is fixed (and fits a `usize`); `None` for a symbol.
    pub fn extent(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => usize::try_from(*n).ok(),
            Dim::Symbol(_) => None,
        }
    }
}

/// A typed attribute value, as in ONNX.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// A single integer.
    Int(i64),
    /// A single float.
    Float(f32),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A list of floats.
    Floats(Vec<f32>),
    /// A UTF-8 string (ONNX stores bytes; Pith requires UTF-8).
    Str(String),
}

macro_rules! op_kinds {
    ($($name:ident = $code:literal),* $(,)?) => {
        /// The operators a `.pith` graph may contain, with their stable on-disk codes.
        /// Semantics follow the ONNX operator of the same name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum OpKind { $(
            #[doc = concat!("ONNX `", stringify!($name), "`.")]
            $name = $code,
        )* }

        impl OpKind {
            /// Every operator, in code order.
            pub const ALL: &'static [OpKind] = &[$(OpKind::$name),*];

            /// The on-disk code.
            pub fn code(self) -> u16 { self as u16 }

            /// The operator with this on-disk code, if any.
            pub fn from_code(code: u16) -> Option<Self> {
                match code { $($code => Some(OpKind::$name),)* _ => None }
            }

            /// The ONNX `op_type` string.
            pub fn onnx_name(self) -> &'static str {
                match self { $(OpKind::$name => stringify!($name),)* }
            }

            /// The operator for an ONNX `op_type` string, if Pith supports it.
            pub fn from_onnx_name(name: &str) -> Option<Self> {
                match name { $(stringify!($name) => Some(OpKind::$name),)* _ => None }
            }
        }
    };
}

op_kinds! {
    Conv = 1, ConvTranspose = 2, Gemm = 3, MatMul = 4, BatchNormalization = 5,
    Add = 10, Sub = 11, Mul = 12, Div = 13, Pow = 14, Sqrt = 15,
    Relu = 20, PRelu = 21, LeakyRelu = 22, Clip = 23, Sigmoid = 24, HardSigmoid = 25, HardSwish = 26, Tanh = 27,
    MaxPool = 30, AveragePool = 31, GlobalAveragePool = 32, Resize = 33,
    Concat = 40, Slice = 41, Split = 42, Reshape = 43, Flatten = 44, Transpose = 45, Squeeze = 46, Unsqueeze = 47, Pad = 48,
    Softmax = 50, ReduceMean = 51,
    Cast = 60, Shape = 61, Gather = 62, Constant = 63, Identity = 64,
}

/// A named value of the graph: a graph input, a constant, or the output of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    /// Unique name (ONNX value name).
    pub name: String,
    /// Element type.
    pub elem: ElemType,
    /// Declared shape, if known. Constants always have a fully fixed shape.
    pub shape: Option<Vec<Dim>>,
}

/// One operator application.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Node name (may be empty), used in error messages.
    pub name: String,
    /// The operator.
    pub op: OpKind,
    /// Inputs in ONNX order; `None` is an omitted optional input (ONNX empty name).
    pub inputs: Vec<Option<ValueId>>,
    /// Outputs in ONNX order.
    pub outputs: Vec<ValueId>,
    /// Attributes by name, in a stable order.
    pub attrs: Vec<(String, Attr)>,
}

impl Node {
    /// The attribute called `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }
}

/// The dataflow graph: values, nodes in a topological order, and the graph's inputs and outputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    /// Every value; indexed by [`ValueId`].
    pub values: Vec<Value>,
    /// Nodes, topologically sorted (every input is a graph input, a constant, or an earlier node's output).
    pub nodes: Vec<Node>,
    /// Values fed by the caller.
    pub inputs: Vec<ValueId>,
    /// Values returned to the caller.
    pub outputs: Vec<ValueId>,
}

/// How the centroids of a codebook-indexed tensor are shared across rows (slices along axis 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CodebookKind {
    /// One codebook for the whole tensor: `w = centroids[idx]`.
    PerTensor = 0,
    /// One codebook per row: `w = centroids[row * entries + idx]`.
    PerRow = 1,
    /// One shared codebook and one scale per row (stored as f32, or f16 with
    /// [`CodebookTensor::f16_scales`]): `w = scales[row] * centroids[idx]`.
    SharedScaled = 2,
}

/// Storage precision of codebook centroids.
#[derive(Debug, Clone, PartialEq)]
pub enum Centroids {
    /// f32 centroids.
    F32(Vec<f32>),
    /// f16 centroids.
    F16(Vec<f16>),
}

/// A weight tensor stored as packed codebook indices.
///
/// The tensor is seen as a matrix of `rows = shape[0]` rows of `row_len = numel / rows` weights.
/// Each row's indices are packed LSB-first at `bits` bits each into `row_stride = ceil(row_len * bits / 8)`
/// bytes; the unused high bits of a row's last byte are zero.
#[derive(Debug, Clone, PartialEq)]
pub struct CodebookTensor {
    /// Bits per index, 1..=8.
    pub bits: u8,
    /// Number of rows (`shape[0]`).
    pub rows: usize,
    /// Weights per row.
    pub row_len: usize,
    /// Entries per codebook (`<= 2^bits`).
    pub entries: usize,
    /// Sharing scheme.
    pub kind: CodebookKind,
    /// `entries` centroids (PerTensor, SharedScaled) or `rows * entries` (PerRow).
    pub centroids: Centroids,
    /// Per-row scales for SharedScaled (`rows` of them), empty otherwise.
    pub scales: Vec<f32>,
    /// Store the scales as f16 (format 1.3, half the bytes); each must then be exactly an f16
    /// value (the writer refuses one that is not).
    pub f16_scales: bool,
    /// `rows * row_stride` bytes of packed indices.
    pub indices: Vec<u8>,
}

impl CodebookTensor {
    /// Bytes per packed row.
    pub fn row_stride(&self) -> usize {
        row_stride(self.row_len, self.bits)
    }
}

/// Bytes needed for one row of `row_len` indices at `bits` bits each.
pub fn row_stride(row_len: usize, bits: u8) -> usize {
    (row_len * bits as usize).div_ceil(8)
}

/// Owned data of a constant tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Plain f32.
    F32(Vec<f32>),
    /// f16, widened to f32 when used.
    F16(Vec<f16>),
    /// i64 (shapes, indices, axes).
    I64(Vec<i64>),
    /// Packed codebook indices.
    Codebook(CodebookTensor),
}

/// A constant: the value it defines and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Constant {
    /// The value this constant defines; its `shape` must be fully fixed.
    pub value: ValueId,
    /// The data.
    pub data: TensorData,
}

/// A whole model as the writer takes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    /// The graph.
    pub graph: Graph,
    /// Constant tensors; each defines one value of the graph.
    pub constants: Vec<Constant>,
    /// Free-form producer string (e.g. "pith-compress 0.1.0").
    pub producer: String,
    /// The model's properties (ONNX `metadata_props`: a recognizer's `character` set, labels,
    /// versions), stored in the PROPS section when not empty. Keys must not be empty.
    pub props: BTreeMap<String, String>,
}
