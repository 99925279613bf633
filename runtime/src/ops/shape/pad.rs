//! Pad: constant, reflect and edge padding (negative pads crop).

use std::any::Any;

use pith_format::ir::Node;
use pith_kernels::Kernels;

use super::common::{input, norm_axes, param, strides, Elem, Move, Mover};
use crate::error::OpError;
use crate::ops::{attrs, Arg, AxisList, Op, OpResult, Prepared};
use crate::tensor::MAX_TENSOR_ELEMENTS;

/// How out-of-range positions are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Constant,
    Reflect,
    Edge,
}

/// ONNX Pad.
#[derive(Debug)]
pub(crate) struct Pad {
    mode: Mode,
    /// `pads` attribute (opset < 11), else input 1.
    pads_attr: Option<Vec<i64>>,
    /// `value` attribute (opset < 11), else input 2.
    value_attr: f32,
}

/// Builds Pad.
pub(crate) fn build_pad(node: &Node) -> OpResult<Box<dyn Op>> {
    let mode = match attrs::string(node, "mode", "constant")?.as_str() {
        "constant" => Mode::Constant,
        "reflect" => Mode::Reflect,
        "edge" => Mode::Edge,
        other => return Err(OpError(format!("pad mode '{other}' is not supported"))),
    };
    Mover::boxed(Pad {
        mode,
        pads_attr: attrs::ints(node, "pads")?,
        value_attr: attrs::float(node, "value", 0.0)?,
    })
}

/// One padded axis: its input extent `dim`, the pad before it (`begin`, negative: a crop) and
/// its output extent.
struct PaddedAxis {
    axis: usize,
    begin: i64,
    dim: i64,
    out: usize,
}

impl Pad {
    /// The input shape and its padded axes, checked: pads that overflow, crop past an extent,
    /// reflect beyond one, or make an output larger than any tensor may be are errors.
    fn padded_axes<'a>(&self, inputs: &[Option<Arg<'a>>]) -> OpResult<(&'a [usize], Vec<PaddedAxis>)> {
        let shape = input(inputs, 0)?.shape;
        let pads = match param(inputs, 1, "pads")? {
            Some(p) => p.into_owned(),
            None => self.pads_attr.clone().ok_or_else(|| OpError("pads are required".into()))?,
        };
        let axes = match param(inputs, 3, "axes")? {
            Some(a) => norm_axes(&a, shape.len())?,
            None => (0..shape.len()).collect(),
        };
        if pads.len() != 2 * axes.len() {
            return Err(OpError(format!(
                "{} pads for {} axes (need begins then ends)",
                pads.len(),
                axes.len()
            )));
        }
        let mut padded = Vec::with_capacity(axes.len());
        for (k, &axis) in axes.iter().enumerate() {
            let (begin, end, dim) = (pads[k], pads[k + axes.len()], shape[axis] as i64);
            let out = dim.checked_add(begin).and_then(|n| n.checked_add(end)).ok_or_else(|| {
                OpError(format!("pads {begin}, {end} overflow extent {dim} of axis {axis}"))
            })?;
            if out < 0 {
                return Err(OpError(format!(
                    "pads {begin}, {end} crop more than extent {dim} of axis {axis}"
                )));
            }
            if out as u64 > MAX_TENSOR_ELEMENTS as u64 {
                return Err(OpError(format!(
                    "pads {begin}, {end} make axis {axis} {out} long, over the limit of \
                     {MAX_TENSOR_ELEMENTS} elements per tensor"
                )));
            }
            if self.mode != Mode::Constant && out > 0 && dim == 0 {
                return Err(OpError(format!("cannot {:?}-pad empty axis {axis}", self.mode)));
            }
            if self.mode == Mode::Reflect && (begin >= dim || end >= dim) {
                return Err(OpError(format!(
                    "reflect pads {begin}, {end} must be smaller than extent {dim} of axis {axis}"
                )));
            }
            padded.push(PaddedAxis { axis, begin, dim, out: out as usize });
        }
        Ok((shape, padded))
    }

    /// For every axis, the source index of each output index (`None`: the constant). Built only
    /// when the op runs (its output exists, so every extent is within the tensor limit), not
    /// for shape inference.
    fn maps(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<Vec<Option<usize>>>> {
        let (shape, padded) = self.padded_axes(inputs)?;
        let mut maps: Vec<Vec<Option<usize>>> = shape.iter().map(|&d| (0..d).map(Some).collect()).collect();
        for PaddedAxis { axis, begin, dim, out } in padded {
            maps[axis] = (0..out as i64)
                .map(|o| {
                    // Saturating: a crop of nearly `i64::MAX` with a pad as large after it.
                    let i = o.saturating_sub(begin);
                    match self.mode {
                        _ if (0..dim).contains(&i) => Some(i as usize),
                        Mode::Constant => None,
                        Mode::Edge => Some(i.clamp(0, dim - 1) as usize),
                        Mode::Reflect if i < 0 => Some((-i) as usize),
                        Mode::Reflect => Some((2 * (dim - 1) - i) as usize),
                    }
                })
                .collect();
        }
        Ok(maps)
    }

    /// How the copy runs for inputs of these shapes (a session's runs reuse it).
    fn layout(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<PadLayout> {
        let shape = input(inputs, 0)?.shape;
        let mut maps = self.maps(inputs)?;
        // Trailing axes that are left as they are move as whole blocks of `block` elements.
        let kept = maps
            .iter()
            .zip(shape)
            .rev()
            .take_while(|(map, &dim)| map.len() == dim && map.iter().enumerate().all(|(i, &m)| m == Some(i)))
            .count();
        maps.truncate(maps.len() - kept);
        let runs = maps.last().map(|inner| runs(inner)).unwrap_or_default();
        Ok(PadLayout { input: shape.to_vec(), maps, runs })
    }
}

/// Where Pad's output elements come from, for inputs of one shape.
struct PadLayout {
    /// The input shape.
    input: Vec<usize>,
    /// The source index of each output index (`None`: the constant) of every axis up to the
    /// last one padded; the axes after it move as whole blocks.
    maps: Vec<Vec<Option<usize>>>,
    /// The last map as runs (see [`runs`]).
    runs: Vec<(Option<usize>, usize)>,
}

impl PadLayout {
    /// Pads `src` (of the input shape) into `dst` with `fill`.
    fn pad<T: Elem>(&self, src: &[T], fill: T, dst: &mut [T]) {
        if dst.is_empty() {
            return;
        }
        let shape = &self.input[..];
        let Some((inner_map, outer_maps)) = self.maps.split_last() else {
            dst.copy_from_slice(src);
            return;
        };
        let block: usize = shape[self.maps.len()..].iter().product();
        let in_strides = strides(shape);
        let outer_shape: AxisList<usize> = outer_maps.iter().map(Vec::len).collect();
        let mut idx: AxisList<usize> = smallvec::smallvec![0; outer_shape.len()];
        for row in dst.chunks_exact_mut(inner_map.len() * block) {
            // Source offset of this output row, if no outer index falls in the constant border.
            let base = idx
                .iter()
                .zip(outer_maps)
                .zip(&in_strides)
                .try_fold(0, |acc, ((&i, map), &s)| map[i].map(|m| acc + m * s));
            match base {
                None => row.fill(fill),
                Some(base) => {
                    let mut out = row;
                    for &(first, len) in &self.runs {
                        let (part, rest) = out.split_at_mut(len * block);
                        match first {
                            None => part.fill(fill),
                            Some(m) => part.copy_from_slice(&src[base + m * block..][..len * block]),
                        }
                        out = rest;
                    }
                }
            }
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < outer_shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
}

impl Pad {
    /// The constant of constant padding.
    fn fill<T: Elem>(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<T> {
        Ok(match inputs.get(2).and_then(Option::as_ref) {
            Some(v) => *T::read(v)?.first().ok_or_else(|| OpError("constant_value is empty".into()))?,
            None => T::from_f32(self.value_attr),
        })
    }
}

impl Move for Pad {
    fn shapes(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<Vec<usize>>> {
        let (shape, padded) = self.padded_axes(inputs)?;
        let mut out = shape.to_vec();
        for PaddedAxis { axis, out: extent, .. } in padded {
            out[axis] = extent;
        }
        Ok(vec![out])
    }

    fn apply<T: Elem>(&self, inputs: &[Option<Arg<'_>>], src: &[&[T]], dst: &mut [&mut [T]]) -> OpResult<()> {
        self.layout(inputs)?.pad(src[0], self.fill(inputs)?, dst[0]);
        Ok(())
    }

    /// The maps and runs, built once per plan.
    fn prepare(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Option<Prepared>> {
        Ok(Some(std::sync::Arc::new(self.layout(inputs)?)))
    }

    fn apply_prepared<T: Elem>(
        &self,
        prepared: &(dyn Any + Send + Sync),
        kernels: &Kernels,
        inputs: &[Option<Arg<'_>>],
        src: &[&[T]],
        dst: &mut [&mut [T]],
    ) -> OpResult<()> {
        match prepared.downcast_ref::<PadLayout>() {
            Some(layout) if layout.input == input(inputs, 0)?.shape => {
                layout.pad(src[0], self.fill(inputs)?, dst[0]);
                Ok(())
            }
            _ => self.apply_on(kernels, inputs, src, dst),
        }
    }
}

/// Splits an axis map into runs `(first source index or None for the constant, length)` whose
/// source indices are consecutive, so each run is one copy or one fill.
fn runs(map: &[Option<usize>]) -> Vec<(Option<usize>, usize)> {
    let mut runs: Vec<(Option<usize>, usize)> = Vec::new();
    for &m in map {
        match (runs.last_mut(), m) {
            (Some((None, len)), None) => *len += 1,
            (Some((Some(first), len)), Some(m)) if *first + *len == m => *len += 1,
            _ => runs.push((m, 1)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::super::common::test_util::*;
    use super::*;
    use crate::tensor::Tensor;
    use pith_format::ir::{Attr, OpKind};

    /// Reference: pad along each axis independently with explicit per-index rules.
    fn reference(x: &Tensor, pads: &[i64], mode: &str, value: f32) -> Tensor {
        let r = x.shape.len();
        let shape: Vec<usize> =
            (0..r).map(|d| (x.shape[d] as i64 + pads[d] + pads[d + r]) as usize).collect();
        let n = shape.iter().product();
        let data = (0..n)
            .map(|i| {
                let o = unravel(i, &shape);
                let mut m = vec![0; r];
                for d in 0..r {
                    let dim = x.shape[d] as i64;
                    let mut j = o[d] as i64 - pads[d];
                    if j < 0 || j >= dim {
                        match mode {
                            "constant" => return value,
                            "edge" => j = j.clamp(0, dim - 1),
                            _ => j = if j < 0 { -j } else { 2 * dim - 2 - j },
                        }
                    }
                    m[d] = j as usize;
                }
                x.as_f32().unwrap()[ravel(&m, &x.shape)]
            })
            .collect();
        Tensor::from_f32(shape, data)
    }

    fn pad(x: &Tensor, pads: &[i64], mode: &str, value: f32) -> OpResult<Tensor> {
        let op = build_pad(&node(OpKind::Pad, 3, 1, vec![("mode", Attr::Str(mode.into()))]))?;
        let (p, v) = (ints(pads), Tensor::from_f32(vec![], vec![value]));
        Ok(run(&*op, &[act(x), known(&p), known(&v)])?.remove(0))
    }

    #[test]
    fn every_mode_matches_reference() {
        let x = iota(&[2, 3, 4]);
        for mode in ["constant", "reflect", "edge"] {
            for pads in [[0, 1, 2, 1, 0, 3], [1, 0, 0, 0, 2, 1], [0, 0, 0, 0, 0, 0]] {
                let got = pad(&x, &pads, mode, -7.0).unwrap();
                assert_eq!(got, reference(&x, &pads, mode, -7.0), "{mode} {pads:?}");
            }
        }
    }

    #[test]
    fn untouched_trailing_axes_move_as_blocks() {
        // Channel padding of NCHW (BlazeFace) and pads on leading axes only: the trailing axes are
        // copied as whole blocks; reflect/edge runs of length 1 copy single blocks.
        let x = iota(&[2, 3, 2, 5]);
        let cases: [[i64; 8]; 4] = [
            [0, 0, 0, 0, 0, 2, 0, 0],
            [0, 2, 0, 0, 1, 1, 0, 0],
            [1, 1, 0, 0, 0, 2, 0, 0],
            [0, -1, 0, 0, 0, 1, 1, 0],
        ];
        for mode in ["constant", "reflect", "edge"] {
            for pads in cases {
                let got = pad(&x, &pads, mode, 3.5).unwrap();
                assert_eq!(got, reference(&x, &pads, mode, 3.5), "{mode} {pads:?}");
            }
        }
        let pads = [0, 0, 0, 0, 0, 13, 0, 0];
        assert_eq!(pad(&x, &pads, "constant", 0.0).unwrap(), reference(&x, &pads, "constant", 0.0));
    }

    #[test]
    fn runs_merge_consecutive_sources_and_fills() {
        let map = [None, None, Some(2), Some(3), Some(1), None, Some(0)];
        assert_eq!(runs(&map), vec![(None, 2), (Some(2), 2), (Some(1), 1), (None, 1), (Some(0), 1)]);
        assert!(runs(&[]).is_empty());
    }

    #[test]
    fn pads_past_the_tensor_limit_or_i64_are_errors() {
        let x = iota(&[1, 2]);
        let huge = pad(&x, &[0, 1 << 40, 0, 0], "constant", 0.0).unwrap_err();
        assert!(huge.0.contains("over the limit"), "{huge}");
        let overflow = pad(&x, &[0, i64::MAX, 0, 1], "constant", 0.0).unwrap_err();
        assert!(overflow.0.contains("overflow"), "{overflow}");
        // A crop of nearly `i64::MAX` before the axis and a pad as large after it leave 3
        // positions, all past the input's end: edge padding repeats the last element.
        let far = pad(&x, &[0, i64::MIN + 2, 0, i64::MAX], "edge", 0.0).unwrap();
        assert_eq!(far, Tensor::from_f32(vec![1, 3], vec![1.0; 3]));
    }

    #[test]
    fn negative_pads_crop() {
        let x = iota(&[3, 4]);
        let got = pad(&x, &[-1, 1, 0, -2], "constant", 0.0).unwrap();
        assert_eq!(got, Tensor::from_f32(vec![2, 3], vec![0.0, 4.0, 5.0, 0.0, 8.0, 9.0]));
    }

    #[test]
    fn attribute_form_axes_input_and_integers() {
        let op = build_pad(&node(
            OpKind::Pad,
            1,
            1,
            vec![("pads", attr_ints(&[1, 2])), ("value", Attr::Float(9.0))],
        ))
        .unwrap();
        let v = ints(&[5, 6]);
        assert_eq!(eval(&*op, &[known(&v)]).unwrap()[0], ints(&[9, 5, 6, 9, 9]));
        // Opset 18 axes input: pad only axis -1.
        let op = build_pad(&node(OpKind::Pad, 4, 1, vec![])).unwrap();
        let (x, p, a) = (iota(&[2, 2]), ints(&[1, 0]), ints(&[-1]));
        let got = run(&*op, &[act(&x), known(&p), None, known(&a)]).unwrap().remove(0);
        assert_eq!(got, Tensor::from_f32(vec![2, 3], vec![0.0, 0.0, 1.0, 0.0, 2.0, 3.0]));
    }

    #[test]
    fn refuses_bad_pads() {
        let x = iota(&[2, 3]);
        assert!(pad(&x, &[0, 3, 0, 0], "reflect", 0.0).is_err(), "reflect wider than extent");
        assert!(pad(&x, &[-3, 0, 0, 0], "constant", 0.0).is_err(), "crops too much");
        assert!(pad(&x, &[1, 1], "constant", 0.0).is_err(), "wrong count");
        assert!(pad(&x, &[0, 0, 0, 0], "wrap", 0.0).is_err(), "unknown mode");
    }
}
