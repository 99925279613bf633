//! ONNX `BatchNormalization` in inference mode: `y = scale * (x - mean) / sqrt(var + epsilon) + B`
//! per channel (axis 1), folded into one multiply-add per element.

use pith_format::ir::{ElemType, Node};
use pith_kernels::Activation;

use super::binary::PARALLEL_MIN_ELEMENTS;
use super::{attrs, Arg, ExecCtx, Op, OpResult, Out};
use crate::op_bail;

/// Inference-mode batch normalisation.
#[derive(Debug)]
struct BatchNorm {
    epsilon: f32,
    /// Applied to each output plane while it is in cache (a fused activation node).
    activation: Activation,
}

/// Builds the op for a `BatchNormalization` node whose output then goes through `activation`;
/// training mode and its extra outputs are refused.
pub fn build_batch_norm(node: &Node, activation: Activation) -> OpResult<Box<dyn Op>> {
    if attrs::int(node, "training_mode", 0)? != 0 {
        op_bail!("training_mode is not supported (inference only)");
    }
    if node.outputs.len() > 1 {
        op_bail!("the running mean/variance outputs (training mode) are not supported");
    }
    Ok(Box::new(BatchNorm { epsilon: attrs::float(node, "epsilon", 1e-5)?, activation }))
}

const PARAMS: [&str; 4] = ["scale", "B", "mean", "var"];

impl BatchNorm {
    fn channels(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<usize> {
        let Some(Some(x)) = inputs.first() else {
            op_bail!("missing input X");
        };
        if x.shape.len() < 2 {
            op_bail!("input must have rank >= 2 (N, C, ...), has shape {:?}", x.shape);
        }
        let c = x.shape[1];
        for (i, name) in PARAMS.iter().enumerate() {
            match inputs.get(i + 1) {
                Some(Some(p)) if p.numel() == c => {}
                Some(Some(p)) => op_bail!("{name} has {} values for {c} channels", p.numel()),
                _ => op_bail!("missing input {name}"),
            }
        }
        Ok(c)
    }
}

impl Op for BatchNorm {
    fn infer(&self, inputs: &[Option<Arg<'_>>]) -> OpResult<Vec<(ElemType, Vec<usize>)>> {
        self.channels(inputs)?;
        let shape = inputs[0].as_ref().map(|x| x.shape.to_vec()).unwrap_or_default();
        Ok(vec![(ElemType::F32, shape)])
    }

    fn run(
        &self,
        inputs: &[Option<Arg<'_>>],
        outputs: &mut [Out<'_>],
        _scratch: &mut [f32],
        ctx: &ExecCtx,
    ) -> OpResult<()> {
        let c = self.channels(inputs)?;
        let arg = |i: usize| inputs[i].as_ref().map(|a| a.f32s()).transpose();
        let (Some(x), Some(scale), Some(bias), Some(mean), Some(var)) =
            (arg(0)?, arg(1)?, arg(2)?, arg(3)?, arg(4)?)
        else {
            op_bail!("missing input");
        };
        let plane: usize = inputs[0].as_ref().map_or(0, |a| a.shape[2..].iter().product());
        let y = &mut *outputs[0].data;
        if plane == 0 || c == 0 {
            return Ok(());
        }
        let affine = |ch: usize| {
            let a = scale[ch] / (var[ch] + self.epsilon).sqrt();
            (a, bias[ch] - mean[ch] * a)
        };
        // Split over the threads like the element-wise ops: each part walks the plane segments
        // it covers (PP-OCRv4's head BatchNorm, 24 x 160 x 320, ran on one thread).
        ctx.kernels.for_each_part(y, PARALLEL_MIN_ELEMENTS, |start, part| {
            let mut done = 0;
            while done < part.len() {
                let at = start + done;
                let n = (plane - at % plane).min(part.len() - done);
                let (a, b) = affine(at / plane % c);
                let seg = &mut part[done..done + n];
                for (o, &v) in seg.iter_mut().zip(&x[at..at + n]) {
                    *o = v * a + b;
                }
                ctx.kernels.activate(self.activation, seg);
                done += n;
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::testing::{act, assert_close, node, run, run_with, values};
    use pith_format::ir::{Attr, OpKind};

    #[test]
    fn threaded_run_matches_the_formula_across_planes() {
        // 3 threads cut 2 x 5 planes of 301 x 263 into parts that start and end mid-plane.
        let shape = [2, 5, 301, 263];
        let n: usize = shape.iter().product();
        assert!(n >= 2 * PARALLEL_MIN_ELEMENTS && !(n / 3).is_multiple_of(301 * 263), "splits mid-plane");
        let x = values(1, n);
        let (scale, b, mean) = (values(2, 5), values(3, 5), values(4, 5));
        let var: Vec<f32> = values(5, 5).iter().map(|v| v.abs() + 0.1).collect();
        let bn = node(OpKind::BatchNormalization, 5, vec![]);
        let op = build_batch_norm(&bn, Activation::Relu).unwrap();
        let c = [5];
        let ctx = ExecCtx { kernels: pith_kernels::Kernels::new(3).unwrap() };
        let args = [act(&shape, &x), act(&c, &scale), act(&c, &b), act(&c, &mean), act(&c, &var)];
        let got = run_with(&*op, &args, &ctx).unwrap();
        let want: Vec<f32> = (0..n)
            .map(|i| {
                let ch = (i / (301 * 263)) % 5;
                (scale[ch] * (x[i] - mean[ch]) / (var[ch] + 1e-5).sqrt() + b[ch]).max(0.0)
            })
            .collect();
        assert_close(&got[0].1, &want);
    }

    #[test]
    fn normalises_per_channel() {
        let shape = [2, 3, 2, 5];
        let x = values(1, 60);
        let scale = values(2, 3);
        let b = values(3, 3);
        let mean = values(4, 3);
        let var: Vec<f32> = values(5, 3).iter().map(|v| v.abs() + 0.1).collect();
        let bn = node(OpKind::BatchNormalization, 5, vec![("epsilon", Attr::Float(1e-3))]);
        let op = build_batch_norm(&bn, Activation::None).unwrap();
        let c = [3];
        let got = run(&*op, &[act(&shape, &x), act(&c, &scale), act(&c, &b), act(&c, &mean), act(&c, &var)])
            .unwrap();
        let want: Vec<f32> = (0..60)
            .map(|i| {
                let ch = (i / 10) % 3;
                scale[ch] * (x[i] - mean[ch]) / (var[ch] + 1e-3).sqrt() + b[ch]
            })
            .collect();
        assert_close(&got[0].1, &want);
        // Wrong parameter length, training mode and extra outputs are refused.
        assert!(op
            .infer(&[act(&shape, &x), act(&[2], &scale[..2]), act(&c, &b), act(&c, &mean), act(&c, &var)])
            .is_err());
        let training = node(OpKind::BatchNormalization, 5, vec![("training_mode", Attr::Int(1))]);
        assert!(build_batch_norm(&training, Activation::None).is_err());
        let mut n = node(OpKind::BatchNormalization, 5, vec![]);
        n.outputs.push(9);
        assert!(build_batch_norm(&n, Activation::None).is_err());
    }
}
