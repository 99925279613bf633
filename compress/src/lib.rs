//! ONNX import and compression passes.
