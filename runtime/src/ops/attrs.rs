//! Typed access to node attributes, with errors that name the attribute.

use pith_format::ir::{Attr, Node};

use super::OpResult;
use crate::error::OpError;

/// Integer attribute `name`, or `default` when absent.
pub fn int(node: &Node, name: &str, default: i64) -> OpResult<i64> {
    match node.attr(name) {
        None => Ok(default),
        Some(Attr::Int(v)) => Ok(*v),
        Some(other) => Err(wrong_type(name, "an integer", other)),
    }
}

/// Float attribute `name`, or `default` when absent.
pub fn float(node: &Node, name: &str, default: f32) -> OpResult<f32> {
    match node.attr(name) {
        None => Ok(default),
        Some(Attr::Float(v)) => Ok(*v),
        Some(Attr::Int(v)) => Ok(*v as f32),
        Some(other) => Err(wrong_type(name, "a float", other)),
    }
}

/// Integer-list attribute `name`, or `None` when absent.
pub fn ints(node: &Node, name: &str) -> OpResult<Option<Vec<i64>>> {
    match node.attr(name) {
        None => Ok(None),
        Some(Attr::Ints(v)) => Ok(Some(v.clone())),
        Some(Attr::Int(v)) => Ok(Some(vec![*v])),
        Some(other) => Err(wrong_type(name, "a list of integers", other)),
    }
}

/// Float-list attribute `name`, or `None` when absent.
pub fn floats(node: &Node, name: &str) -> OpResult<Option<Vec<f32>>> {
    match node.attr(name) {
        None => Ok(None),
        Some(Attr::Floats(v)) => Ok(Some(v.clone())),
        Some(other) => Err(wrong_type(name, "a list of floats", other)),
    }
}

/// String attribute `name`, or `default` when absent.
pub fn string(node: &Node, name: &str, default: &str) -> OpResult<String> {
    match node.attr(name) {
        None => Ok(default.to_string()),
        Some(Attr::Str(v)) => Ok(v.clone()),
        Some(other) => Err(wrong_type(name, "a string", other)),
    }
}

fn wrong_type(name: &str, want: &str, got: &Attr) -> OpError {
    OpError(format!("attribute '{name}' must be {want}, found {got:?}"))
}
