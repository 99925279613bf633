//! Placeholder: being implemented.

use super::OpResult;
use pith_format::ir::Node;

/// Builds the op for `node`.
pub fn build(node: &Node) -> OpResult<Box<dyn super::Op>> {
    Err(crate::error::OpError(format!(
        "{} is not implemented yet",
        node.op.onnx_name()
    )))
}
