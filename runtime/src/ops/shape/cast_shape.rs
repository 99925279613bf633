//! Cast and Shape: the ops that change element types.

use pith_format::ir::{ElemType, Node};

use super::common::input;
use crate::error::OpError;
use crate::ops::{attrs, Arg, ExecCtx, Op, OpResult, Out};
use crate::tensor::{Tensor, TensorBuf};

/// ONNX Cast. Pith has two element types: floats map to f32, integers and booleans to i64.
#[derive(Debug)]
pub(crate) struct Cast {
    to: ElemType,
    /// BOOL target: every nonzero becomes 1.
    to_bool: bool,
}

/// ONNX `TensorProto.DataType` codes Pith accepts as Cast targets.
mod onnx_type {
    pub const FLOAT: i64 = 1;
    pub const UINT8: i64 = 2;
    pub const INT8: i64 = 3;
    pub const INT16: i64 = 5;
    pub const INT32: i64 = 6;
    pub const INT64: i64 = 7;
    pub const BOOL: i64 = 9;
    pub const DOUBLE: i64 = 11;
}

/// Builds Cast.
pub(crate) fn build_cast(node: &Node) -> OpResult<Box<dyn Op>> {
    use onnx_type::*;
    let to = attrs::int(node, "to", -1)?;
    let (to, to_bool) = match to {
        FLOAT | DOUBLE => (ElemType::F32, false),
        UINT8 | INT8 | INT16 | INT32 | INT64 => (ElemType::I64, false),
        BOOL => (ElemType::I64, true),
        -1 => return Err(OpError("attribute 'to' is required".into())),
        other => return Err(OpError(format!("cast to ONNX data type {other} is not supported"))),
    };
    Ok(Box::new(Cast { to, to_bool }))
}

impl Op for Cast {
    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        Ok(vec![(self.to, input(inputs, 0)?.shape.to_vec())])
    }

    fn eval(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Option<Vec<Tensor>>> {
        let x = input(inputs, 0)?;
        if !x.is_known() {
            return Ok(None);
        }
        let shape = x.shape.to_vec();
        let t = match (x.elem, self.to) {
            (ElemType::F32, ElemType::F32) => Tensor::from_f32(shape, x.f32s()?.into_owned()),
            (ElemType::I64, ElemType::F32) => {
                Tensor::from_f32(shape, x.i64s()?.iter().map(|&v| v as f32).collect())
            }
            (ElemType::F32, ElemType::I64) => {
                let v = x.f32s()?;
                let data = if self.to_bool {
                    v.iter().map(|&f| (f != 0.0) as i64).collect()
                } else {
                    // Truncation toward zero, as ONNX float-to-integer casts do.
                    v.iter().map(|&f| f as i64).collect()
                };
                Tensor::from_i64(shape, data)
            }
            (ElemType::I64, ElemType::I64) => {
                let v = x.i64s()?;
                let data =
                    if self.to_bool { v.iter().map(|&i| (i != 0) as i64).collect() } else { v.into_owned() };
                Tensor::from_i64(shape, data)
            }
        };
        Ok(Some(vec![t]))
    }

    fn run(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        _scratch: &mut [f32],
        _ctx: &ExecCtx,
    ) -> OpResult<()> {
        // Only f32 -> f32 reaches run time: integer results are produced at plan time.
        let x = input(inputs, 0)?;
        if x.elem != ElemType::F32 || self.to != ElemType::F32 {
            return Err(OpError("integer casts are evaluated at plan time".into()));
        }
        outputs[0].data.copy_from_slice(&x.f32s()?);
        Ok(())
    }
}

/// ONNX Shape (with the `start`/`end` attributes of opset 15).
#[derive(Debug)]
pub(crate) struct ShapeOp {
    start: i64,
    end: Option<i64>,
}

/// Builds Shape.
pub(crate) fn build_shape(node: &Node) -> OpResult<Box<dyn Op>> {
    Ok(Box::new(ShapeOp {
        start: attrs::int(node, "start", 0)?,
        end: node.attr("end").map(|_| attrs::int(node, "end", 0)).transpose()?,
    }))
}

impl ShapeOp {
    fn dims(&self, shape: &[usize]) -> Vec<i64> {
        let r = shape.len() as i64;
        let clamp = |v: i64| if v < 0 { v + r } else { v }.clamp(0, r) as usize;
        let (s, e) = (clamp(self.start), clamp(self.end.unwrap_or(r)));
        shape[s..e.max(s)].iter().map(|&d| d as i64).collect()
    }
}

impl Op for ShapeOp {
    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        Ok(vec![(ElemType::I64, vec![self.dims(input(inputs, 0)?.shape).len()])])
    }

    /// Needs only the input's shape, so it folds even when the input is an activation.
    fn eval(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Option<Vec<Tensor>>> {
        let d = self.dims(input(inputs, 0)?.shape);
        Ok(Some(vec![Tensor { shape: vec![d.len()], buf: TensorBuf::I64(d) }]))
    }

    fn run(
        &self,
        _inputs: &[Option<Arg<'_>>],
        _outputs: &mut [Out<'_>],
        _scratch: &mut [f32],
        _ctx: &ExecCtx,
    ) -> OpResult<()> {
        Err(OpError("Shape is evaluated at plan time".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::test_util::*;
    use super::*;
    use pith_format::ir::{Attr, OpKind};

    fn cast(to: i64) -> Box<dyn Op> {
        build_cast(&node(OpKind::Cast, 1, 1, vec![("to", Attr::Int(to))])).unwrap()
    }

    #[test]
    fn casts_between_floats_and_integers() {
        let f = Tensor::from_f32(vec![4], vec![1.9, -1.9, 0.0, 3.0]);
        assert_eq!(eval(&*cast(7), &[known(&f)]).unwrap()[0], ints(&[1, -1, 0, 3]));
        assert_eq!(eval(&*cast(9), &[known(&f)]).unwrap()[0], ints(&[1, 1, 0, 1]));
        let i = ints(&[2, 0, -5]);
        assert_eq!(
            eval(&*cast(1), &[known(&i)]).unwrap()[0],
            Tensor::from_f32(vec![3], vec![2.0, 0.0, -5.0])
        );
        assert_eq!(eval(&*cast(6), &[known(&i)]).unwrap()[0], i);
        assert_eq!(eval(&*cast(9), &[known(&i)]).unwrap()[0], ints(&[1, 0, 1]));
        assert_eq!(eval(&*cast(11), &[known(&f)]).unwrap()[0], f);
    }

    #[test]
    fn float_activation_casts_at_run_time_integer_ones_cannot() {
        let f = Tensor::from_f32(vec![2], vec![0.5, 2.0]);
        assert!(cast(1).eval(&[unknown(&[2])]).unwrap().is_none());
        assert_eq!(run(&*cast(1), &[act(&f)]).unwrap()[0], f);
        assert!(cast(7).eval(&[unknown(&[2])]).unwrap().is_none());
        assert!(build_cast(&node(OpKind::Cast, 1, 1, vec![("to", Attr::Int(10))])).is_err());
        assert!(build_cast(&node(OpKind::Cast, 1, 1, vec![])).is_err());
    }

    #[test]
    fn shape_of_an_activation_with_start_and_end() {
        let s = |attrs| {
            let op = build_shape(&node(OpKind::Shape, 1, 1, attrs)).unwrap();
            let t = eval(&*op, &[unknown(&[1, 3, 5, 7])]).unwrap().remove(0);
            assert_eq!(op.infer(&[unknown(&[1, 3, 5, 7])]).unwrap()[0].1, t.shape);
            t.as_i64().unwrap().to_vec()
        };
        assert_eq!(s(vec![]), vec![1, 3, 5, 7]);
        assert_eq!(s(vec![("start", Attr::Int(-2))]), vec![5, 7]);
        assert_eq!(s(vec![("start", Attr::Int(1)), ("end", Attr::Int(-1))]), vec![3, 5]);
        assert_eq!(s(vec![("start", Attr::Int(3)), ("end", Attr::Int(1))]), Vec::<i64>::new());
        assert_eq!(s(vec![("end", Attr::Int(100))]), vec![1, 3, 5, 7]);
    }
}
