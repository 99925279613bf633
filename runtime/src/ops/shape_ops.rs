//! Structural ops: Concat, Slice, Split, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Pad, Cast,
//! Shape, Gather, Identity.
//!
//! Each works on f32 and i64 data: i64 tensors (shape arithmetic) are only ever computed at plan time
//! through [`super::Op::eval`]; f32 activations are moved at run time.

use pith_format::ir::{Node, OpKind};

use super::OpResult;
use crate::error::OpError;

#[path = "shape/cast_shape.rs"]
mod cast_shape;
#[path = "shape/common.rs"]
mod common;
#[path = "shape/concat_split.rs"]
mod concat_split;
#[path = "shape/gather.rs"]
mod gather;
#[path = "shape/pad.rs"]
mod pad;
#[path = "shape/reshape.rs"]
mod reshape;
#[path = "shape/slice.rs"]
mod slice;

/// Builds the op for `node`.
pub fn build(node: &Node) -> OpResult<Box<dyn super::Op>> {
    match node.op {
        OpKind::Concat => concat_split::build_concat(node),
        OpKind::Split => concat_split::build_split(node),
        OpKind::Slice => slice::build_slice(node),
        OpKind::Transpose => slice::build_transpose(node),
        OpKind::Reshape | OpKind::Flatten | OpKind::Squeeze | OpKind::Unsqueeze | OpKind::Identity => {
            reshape::build(node)
        }
        OpKind::Pad => pad::build_pad(node),
        OpKind::Gather => gather::build_gather(node),
        OpKind::Cast => cast_shape::build_cast(node),
        OpKind::Shape => cast_shape::build_shape(node),
        other => Err(OpError(format!("{} is not a structural op", other.onnx_name()))),
    }
}
