//! Drops attributes that restate the ONNX default of their operator.
//!
//! Converters write defaults out in full (`dilations=[1,1]`, `group=1`, `pads=[0,0,0,0]` on every
//! convolution); each costs a 16-byte record plus its payload in the file, which on a small model
//! is a visible share of the bytes. The runtime applies the same defaults when an attribute is
//! absent (`pith_runtime` ops read them with ONNX's defaults), so the graph means the same.

use pith_format::ir::{Attr, OpKind};

use crate::work::WorkModel;

/// One default: the attribute `name` of the listed ops is redundant when it equals `default`.
struct AttrDefault {
    ops: &'static [OpKind],
    name: &'static str,
    default: Value,
}

/// Default value shapes: one integer, or a list whose every element is the given integer.
enum Value {
    Int(i64),
    AllInts(i64),
    Str(&'static str),
}

const CONV_POOL: &[OpKind] = &[OpKind::Conv, OpKind::ConvTranspose, OpKind::MaxPool, OpKind::AveragePool];
const CONV: &[OpKind] = &[OpKind::Conv, OpKind::ConvTranspose];
const POOL: &[OpKind] = &[OpKind::MaxPool, OpKind::AveragePool];

/// The defaults this pass removes (ONNX operator specifications, opset 11+).
const DEFAULTS: &[AttrDefault] = &[
    AttrDefault { ops: CONV_POOL, name: "strides", default: Value::AllInts(1) },
    AttrDefault { ops: CONV_POOL, name: "dilations", default: Value::AllInts(1) },
    AttrDefault { ops: CONV_POOL, name: "pads", default: Value::AllInts(0) },
    AttrDefault { ops: CONV_POOL, name: "auto_pad", default: Value::Str("NOTSET") },
    AttrDefault { ops: CONV, name: "group", default: Value::Int(1) },
    AttrDefault { ops: POOL, name: "ceil_mode", default: Value::Int(0) },
    AttrDefault { ops: &[OpKind::AveragePool], name: "count_include_pad", default: Value::Int(0) },
    AttrDefault { ops: &[OpKind::MaxPool], name: "storage_order", default: Value::Int(0) },
];

/// Whether `attr` equals `default`.
fn is_default(attr: &Attr, default: &Value) -> bool {
    match (attr, default) {
        (Attr::Int(v), Value::Int(d)) => v == d,
        (Attr::Ints(v), Value::AllInts(d)) => v.iter().all(|x| x == d),
        (Attr::Str(s), Value::Str(d)) => s == d,
        _ => false,
    }
}

/// Removes default-valued attributes from every node; returns how many were removed.
pub(crate) fn drop_default_attrs(work: &mut WorkModel) -> usize {
    let mut removed = 0;
    for node in &mut work.graph.nodes {
        let before = node.attrs.len();
        node.attrs.retain(|(name, attr)| {
            !DEFAULTS
                .iter()
                .any(|d| d.ops.contains(&node.op) && d.name == name && is_default(attr, &d.default))
        });
        removed += before - node.attrs.len();
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_util::*;

    #[test]
    fn drops_only_default_values_of_the_listed_ops() {
        let mut w = WorkModel::default();
        let x = input(&mut w, "x");
        let (y, z) = (act(&mut w, "y"), act(&mut w, "z"));
        push(&mut w, "conv", OpKind::Conv, &[Some(x)], &[y]);
        push(&mut w, "concat", OpKind::Concat, &[Some(y)], &[z]);
        w.graph.nodes[0].attrs = vec![
            ("dilations".into(), Attr::Ints(vec![1, 1])),
            ("group".into(), Attr::Int(1)),
            ("kernel_shape".into(), Attr::Ints(vec![3, 3])),
            ("pads".into(), Attr::Ints(vec![0, 1, 0, 1])),
            ("strides".into(), Attr::Ints(vec![1, 1])),
        ];
        // `group` means nothing to Concat: it must survive even with a "default" value.
        w.graph.nodes[1].attrs = vec![("axis".into(), Attr::Int(1)), ("group".into(), Attr::Int(1))];
        assert_eq!(drop_default_attrs(&mut w), 3);
        let names = |n: usize| w.graph.nodes[n].attrs.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(names(0), ["kernel_shape", "pads"]);
        assert_eq!(names(1), ["axis", "group"]);
    }
}
