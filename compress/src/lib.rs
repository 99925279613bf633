//! ONNX import and compression passes: ONNX protobuf → [`pith_format::ir::Model`].
//!
//! Pipeline: decode and import → drop `Identity` → constant folding (through the runtime's ops)
//! → fold BatchNormalization and constant per-channel Mul/Add into Conv → recognise decomposed
//! HardSwish → fold constant Mul/Add into the pointwise Conv they feed → dead-code elimination → drop default-valued attributes
//! → topological sort → weight encoding ([`WeightFormat`], or per layer from calibration data in
//! [`calib`]) → compacted [`ir::Model`]. The output is a pure function of the input bytes and
//! options.

#![warn(missing_docs)]

pub mod calib;
mod codebook;
mod error;
pub mod finetune;
pub mod gram;
mod import;
mod kmeans;
pub mod onnx_proto;
mod passes;
mod prune;
mod refit;
mod weights;
mod work;

use std::collections::BTreeMap;

use pith_format::ir::{self, TensorData, ValueId};
use pith_runtime::TensorBuf;

pub use error::CompressError;
pub use weights::ZERO_BLOCK;
use work::WorkModel;

/// How weight tensors (Conv/ConvTranspose/Gemm/MatMul input 1) are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// Plain f32 (lossless).
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// Optimal k-means codebook with `bits`-bit indices (1..=8).
    Codebook {
        /// Bits per index, 1..=8.
        bits: u8,
    },
}

/// Options of [`compress_onnx`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompressOptions {
    /// Weight storage format.
    pub weights: WeightFormat,
}

/// What happened to one weight tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    /// Value name of the weight.
    pub name: String,
    /// Weight shape.
    pub shape: Vec<usize>,
    /// Storage encoding, as [`pith_format::TensorView::encoding_name`] names it.
    pub encoding: String,
    /// Bytes of stored data.
    pub bytes: usize,
    /// Bytes the weight takes as f32.
    pub f32_bytes: usize,
    /// `||W - Wq||_2 / ||W||_2` of the stored weight.
    pub rel_error: f32,
    /// Bits per codebook index, `None` when the weight is stored as f32 or f16.
    pub bits: Option<u8>,
    /// Fraction of weights stored as exact zeros (pruned or zero in the source).
    pub sparsity: f32,
    /// Fraction of the aligned blocks of [`ZERO_BLOCK`] weights along a row that are all zero:
    /// what a kernel skipping zero blocks could skip (at unstructured pruning, far less than
    /// `sparsity`).
    pub zero_blocks: f32,
    /// Relative output error `sqrt(Σ (w-q)ᵀG(w-q) / Σ wᵀGw)` of the layer on the calibration
    /// activations (Gram `G`; for a bias-corrected layer, the statistics it was fitted to: half of
    /// the input mean's term taken out, see `gram::RowGram::centered`); `None` without
    /// calibration data.
    pub out_error: Option<f32>,
    /// Whether the layer's bias was moved by its bias correction (calibrated compression).
    pub bias_corrected: bool,
    /// With `--bits auto`: the predicted contribution of this layer to the model's output
    /// distortion `1 - cos`, from its measured sensitivity.
    pub predicted_distortion: Option<f64>,
}

/// Summary of one compression run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    /// One row per weight tensor, in order of first use.
    pub layers: Vec<LayerReport>,
    /// Size of the ONNX input.
    pub onnx_bytes: usize,
    /// Bytes of all constant data of the output model (payloads only).
    pub total_bytes: usize,
    /// Fidelity of the output model measured on the calibration set (`None` without one).
    pub fidelity: Option<calib::Fidelity>,
    /// With `--bits auto`: every whole-model verification of the budget search, in order.
    pub search: Vec<calib::SearchStep>,
    /// With fine-tuning: what it did.
    pub finetune: Option<finetune::FinetuneReport>,
}

/// A compressed model and its report.
#[derive(Debug, Clone)]
pub struct Compressed {
    /// The model, ready for [`pith_format::write`].
    pub model: ir::Model,
    /// Per-layer report.
    pub report: Report,
}

/// Imports, optimises and compresses an ONNX model.
pub fn compress_onnx(onnx: &[u8], options: &CompressOptions) -> Result<Compressed, CompressError> {
    compress_onnx_with_progress(onnx, options, &mut |_, _, _| {})
}

/// [`compress_onnx`] calling `progress(done, total, layer)` before each weight tensor is encoded
/// and once at the end with `done == total`.
pub fn compress_onnx_with_progress(
    onnx: &[u8],
    options: &CompressOptions,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Compressed, CompressError> {
    if let WeightFormat::Codebook { bits } = options.weights {
        if !(1..=8).contains(&bits) {
            return Err(CompressError::Graph(format!("codebook bits must be 1..=8, got {bits}")));
        }
    }
    let work = prepare(onnx)?;
    let (encoded, layers) = weights::encode_weights(&work, &options.weights, progress);
    let model = finish(work, encoded);
    let total_bytes = model.constants.iter().map(|c| codebook::data_bytes(&c.data)).sum();
    Ok(Compressed {
        model,
        report: Report { layers, onnx_bytes: onnx.len(), total_bytes, ..Default::default() },
    })
}

/// Imports `onnx` and runs the graph passes (everything before weight encoding).
fn prepare(onnx: &[u8]) -> Result<WorkModel, CompressError> {
    let mut work = import::import(onnx)?;
    let identities = passes::identity::remove_identities(&mut work);
    let folded = passes::fold::fold_constants(&mut work);
    let bns = passes::bn_fold::fold_batch_norms(&mut work);
    let affines = passes::affine::fold_affine(&mut work);
    let hardswishes = passes::hardswish::fuse_hardswish(&mut work);
    let affines = affines + passes::affine::fold_affine_into_pointwise(&mut work);
    let dead = passes::dce::eliminate_dead(&mut work);
    let attrs = passes::attrs::drop_default_attrs(&mut work);
    passes::topo::sort(&mut work)?;
    log::info!(
        "removed {identities} Identity, folded {folded} constant nodes, {bns} BatchNorms and {affines} \
         Mul/Add into convolutions, recognised {hardswishes} HardSwish, dropped {dead} dead nodes and \
         {attrs} default-valued attributes; {} nodes left",
        work.graph.nodes.len()
    );
    Ok(work)
}

/// Forgets the declared shapes of intermediate values (node outputs that are not graph outputs).
///
/// The runtime infers every intermediate shape from the inputs' shapes and checks declared
/// shapes only of graph inputs, graph outputs and constants, so storing the others would only
/// bloat the file. Names stay: error messages use them. `keep` lists the graph inputs,
/// graph outputs and constants.
fn drop_intermediate_shapes(values: &mut [ir::Value], keep_ids: impl Iterator<Item = ValueId>) {
    let mut keep = vec![false; values.len()];
    for id in keep_ids {
        keep[id as usize] = true;
    }
    for (v, keep) in values.iter_mut().zip(keep) {
        if !keep {
            v.shape = None;
        }
    }
}

/// Builds the output model: drops values nothing references, renumbers the rest in their
/// original order, forgets intermediate shapes, and attaches constant data (encoded weights
/// replacing their f32 data).
fn finish(work: WorkModel, mut encoded: BTreeMap<ValueId, TensorData>) -> ir::Model {
    let WorkModel { graph, consts, props, .. } = work;
    let mut used = vec![false; graph.values.len()];
    let referenced = graph
        .inputs
        .iter()
        .chain(&graph.outputs)
        .chain(consts.keys())
        .chain(graph.nodes.iter().flat_map(|n| n.outputs.iter()))
        .chain(graph.nodes.iter().flat_map(|n| n.inputs.iter().flatten()));
    for &v in referenced {
        used[v as usize] = true;
    }
    let mut remap = vec![ValueId::MAX; graph.values.len()];
    let mut values = Vec::new();
    for (old, value) in graph.values.into_iter().enumerate() {
        if used[old] {
            remap[old] = values.len() as ValueId;
            values.push(value);
        }
    }
    let kept_shapes = graph.inputs.iter().chain(&graph.outputs).chain(consts.keys());
    drop_intermediate_shapes(&mut values, kept_shapes.map(|&old| remap[old as usize]));
    let map = |v: &ValueId| remap[*v as usize];
    let nodes = graph
        .nodes
        .into_iter()
        .map(|n| ir::Node {
            inputs: n.inputs.iter().map(|v| v.as_ref().map(map)).collect(),
            outputs: n.outputs.iter().map(map).collect(),
            ..n
        })
        .collect();
    let constants = consts
        .into_iter()
        .map(|(id, t)| ir::Constant {
            value: map(&id),
            data: encoded.remove(&id).unwrap_or(match t.buf {
                TensorBuf::F32(v) => TensorData::F32(v),
                TensorBuf::I64(v) => TensorData::I64(v),
            }),
        })
        .collect();
    ir::Model {
        graph: ir::Graph {
            values,
            nodes,
            inputs: graph.inputs.iter().map(map).collect(),
            outputs: graph.outputs.iter().map(map).collect(),
        },
        constants,
        producer: format!("pith-compress {}", env!("CARGO_PKG_VERSION")),
        props,
    }
}
