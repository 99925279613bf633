//! Centroid fine-tuning by distillation: the compressed model (the student) is trained to
//! reproduce the uncompressed model's outputs (the teacher) on the calibration inputs, where
//! only codebook values, per-row scales, uncompressed weights and biases move. Every weight
//! keeps its codebook index, so the file's size and its pruning mask are unchanged: this is
//! Deep Compression's centroid update, driven by a teacher instead of labels. With
//! [`FinetuneOptions::reassign`] weights may also change index (latent f32 weights trained
//! through a straight-through estimator); the size and the pruning mask still stay.
//!
//! * `net` runs the graph forward through the runtime's own ops (the student computes exactly
//!   what a session computes) and back through `grad`, one rule per op kind;
//! * `params` maps a weight's gradient onto its centroids (`dL/dc_k = Σ_{idx(w)=k} dL/dw`,
//!   times the row scale for shared-scaled codebooks) and steps them with Adam;
//! * the loss is, per graph output, `||s - t||² / ||t||²` summed over the samples: the quantity
//!   whose smallness makes the output cosine (the fidelity the compressor verifies) close to 1.
//!
//! Training is full-batch and deterministic: samples run in parallel, their gradients are summed
//! in sample order.

mod grad;
mod net;
mod params;

use pith_format::ir;
use pith_kernels::Isa;
use pith_runtime::Tensor;
use rayon::prelude::*;

use crate::calib::CalibSample;
use net::Net;
use params::Params;

/// Options of [`finetune`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FinetuneOptions {
    /// Full-batch Adam steps.
    pub steps: usize,
    /// Step size relative to each tensor's RMS value (Adam moves a parameter by about this
    /// fraction of its tensor's typical magnitude per step at first), decayed to zero by a
    /// cosine schedule.
    pub rel_lr: f32,
    /// Also move weights between centroids: quantisation-aware training with a
    /// straight-through estimator on latent f32 weights (see `params`). Pruned weights stay
    /// pruned; the file's size is unchanged (packed indices), its indices are not.
    pub reassign: bool,
    /// Run both passes on the portable scalar kernels (as
    /// [`pith_runtime::SessionOptions::portable_kernels`]), so the tuned values are the same
    /// bits on every CPU; otherwise the path [`Isa::detect`] picks, faster, whose sums differ
    /// in their last bits from other paths'.
    pub portable_kernels: bool,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        FinetuneOptions { steps: 100, rel_lr: 1e-3, reassign: false, portable_kernels: false }
    }
}

/// Why fine-tuning could not run.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    /// The graph holds an op (or an op configuration) without a backward rule.
    #[error("fine-tuning: node '{node}' ({op}): {msg}")]
    Unsupported {
        /// Node name.
        node: String,
        /// ONNX op type.
        op: String,
        /// What is missing.
        msg: String,
    },
    /// The runtime's op failed on the forward pass.
    #[error("fine-tuning: node '{node}' failed on sample {sample}: {msg}")]
    Forward {
        /// Node name.
        node: String,
        /// Sample position.
        sample: usize,
        /// The op's error.
        msg: String,
    },
    /// The model itself is inconsistent (a value with no producer, a shape mismatch).
    #[error("fine-tuning: {0}")]
    Model(String),
}

/// What fine-tuning did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FinetuneReport {
    /// Loss (sum over outputs of the relative squared error) before the first step.
    pub initial_loss: f64,
    /// Loss of the returned parameters (the lowest measured).
    pub final_loss: f64,
    /// Steps run.
    pub steps: usize,
    /// Parameters that moved (centroids, scales, f32 weights, biases).
    pub parameters: usize,
}

/// Per-element loss weights of a sample's outputs, from the teacher's outputs (graph order):
/// `None` for an output weighs every element 1. A task uses it to stress what decides its
/// result (scores near a detection threshold, the boxes of detected objects).
pub type OutputWeights<'a> = &'a (dyn Fn(&[Tensor]) -> Vec<Option<Vec<f32>>> + Sync);

/// Fine-tunes the codebook centroids, row scales, f32/f16 weights and biases of `student`
/// so its outputs on `samples` approach those of `teacher` (the same graph with f32 weights).
/// The loss of each output is `Σ w (s - t)² / Σ w t²` over all samples, with `weights` from
/// `emphasis` (1 without). When a step raises the loss above `OVERSHOOT` times the lowest
/// so far, training returns to that point and halves the step size (which grows back while
/// steps do not overshoot). Returns the tuned model with the parameters of the lowest loss.
pub fn finetune(
    teacher: &ir::Model,
    student: &ir::Model,
    samples: &[CalibSample],
    options: &FinetuneOptions,
    emphasis: Option<OutputWeights<'_>>,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(ir::Model, FinetuneReport), FinetuneError> {
    let isa = if options.portable_kernels {
        Isa::scalar()
    } else {
        Isa::detect().map_err(|e| FinetuneError::Model(format!("no kernel path: {e}")))?
    };
    let teacher_net = Net::new(teacher, &[], isa)?;
    let targets: Vec<Vec<Tensor>> = samples
        .par_iter()
        .enumerate()
        .map(|(i, s)| teacher_net.run(i, &s.inputs, &[]))
        .collect::<Result<_, _>>()?;
    drop(teacher_net);
    let weights: Vec<Vec<Option<Vec<f32>>>> = targets
        .iter()
        .map(|t| {
            let mut w = emphasis.map_or_else(Vec::new, |f| f(t));
            w.resize(t.len(), None);
            w
        })
        .collect();
    let norms = output_norms(&targets, &weights);

    let mut params = Params::new(student, options.reassign)?;
    let net = Net::new(student, &params.values(), isa)?;
    let mut best: Option<Best> = None;
    let mut damping = 1.0f32;
    let mut report = FinetuneReport { parameters: params.count(), ..Default::default() };
    for step in 0..=options.steps {
        progress(step, options.steps);
        let dense = params.dense();
        let per_sample: Vec<(f64, Vec<Vec<f32>>)> = samples
            .par_iter()
            .enumerate()
            .map(|(i, s)| {
                let trace = net.forward(i, &s.inputs, &dense)?;
                let mut loss = 0.0f64;
                let d_out: Vec<Vec<f32>> = net
                    .outputs(&trace)
                    .iter()
                    .zip(&targets[i])
                    .zip(&norms)
                    .zip(&weights[i])
                    .map(|(((s, t), &norm), w)| {
                        let t = t.as_f32().unwrap_or(&[]);
                        let mut d = vec![0.0f32; s.len()];
                        for (j, ((d, &s), &t)) in d.iter_mut().zip(s.iter()).zip(t).enumerate() {
                            let w = w.as_ref().and_then(|w| w.get(j)).map_or(1.0, |&w| w as f64);
                            let e = (s - t) as f64;
                            loss += w * e * e / norm;
                            *d = (2.0 * w * e / norm) as f32;
                        }
                        d
                    })
                    .collect();
                let grads = net.backward(i, &trace, &dense, d_out)?;
                Ok((loss, grads))
            })
            .collect::<Result<_, FinetuneError>>()?;
        let loss: f64 = per_sample.iter().map(|(l, _)| l).sum();
        if step == 0 {
            report.initial_loss = loss;
        }
        log::debug!("fine-tune step {step}: loss {loss:.4e} (step scale {damping})");
        let improved = best.as_ref().is_none_or(|b| loss < b.loss);
        let diverged = best.as_ref().is_some_and(|b| loss > OVERSHOOT * b.loss);
        let total = if !diverged {
            let mut grads = per_sample.into_iter().map(|(_, g)| g);
            let mut total = grads.next().unwrap_or_default();
            for g in grads {
                for (t, g) in total.iter_mut().zip(g) {
                    for (t, g) in t.iter_mut().zip(g) {
                        *t += g;
                    }
                }
            }
            if improved {
                best = Some(Best { loss, params: params.clone(), grads: total.clone() });
                report.final_loss = loss;
            }
            damping = (damping * 1.25).min(1.0);
            total
        } else {
            // The last steps overshot: back to the best point, and a shorter step along its
            // direction.
            let b = best.as_ref().expect("step 0 always improves");
            params = b.params.clone();
            damping *= 0.5;
            b.grads.clone()
        };
        if step == options.steps {
            break;
        }
        params.step(&total, damping * step_size(options.rel_lr, step, options.steps));
        report.steps = step + 1;
    }
    let best = best.ok_or_else(|| FinetuneError::Model("no step ran".into()))?.params;
    log::info!(
        "fine-tune: loss {:.4e} -> {:.4e} over {} steps ({} parameters)",
        report.initial_loss,
        report.final_loss,
        report.steps,
        report.parameters
    );
    Ok((best.write_back(student), report))
}

/// A loss this many times the best so far counts as an overshoot (Adam's full-batch path is
/// not monotone; smaller rises are part of its progress).
const OVERSHOOT: f64 = 1.5;

/// The lowest-loss point so far, with its gradient (an overshooting step is retried from here
/// at half the size).
struct Best {
    loss: f64,
    params: Params,
    grads: Vec<Vec<f32>>,
}

/// The relative step size of step `step` of `steps`: a linear warm-up over the first tenth
/// (Adam's first steps move every parameter by about the full step size at once, which
/// throws an already-close student off), then a cosine decay to zero.
fn step_size(rel_lr: f32, step: usize, steps: usize) -> f32 {
    let warm = (steps / 10).max(1);
    let ramp = ((step + 1) as f32 / warm as f32).min(1.0);
    let frac = step as f32 / steps.max(1) as f32;
    rel_lr * ramp * half_cosine(frac)
}

/// `(1 + cos(π·frac)) / 2` for `frac` in `[0, 1]`, in arithmetic alone: libm's `cos` may round
/// differently on other CPUs (or in its FMA variant), and the schedule must be the same bits
/// everywhere for `portable_kernels` to give the same file. A Taylor series of `sin` around the
/// middle, `cos(π·f) = -sin(π·(f - ½))`, with terms to the 19th power (error below 1e-12).
fn half_cosine(frac: f32) -> f32 {
    let x = std::f64::consts::PI * (frac.clamp(0.0, 1.0) as f64 - 0.5);
    let x2 = x * x;
    let (mut term, mut sin) = (x, x);
    for k in 1..10 {
        term *= -x2 / ((2 * k) * (2 * k + 1)) as f64;
        sin += term;
    }
    (0.5 * (1.0 - sin)) as f32
}

/// Per graph output, `Σ_samples Σ w t²` (at least a tiny positive value, so an all-zero output
/// does not divide by zero).
fn output_norms(targets: &[Vec<Tensor>], weights: &[Vec<Option<Vec<f32>>>]) -> Vec<f64> {
    let outputs = targets.first().map_or(0, Vec::len);
    (0..outputs)
        .map(|o| {
            let mut sum = 0.0f64;
            for (t, w) in targets.iter().zip(weights) {
                let Some(v) = t.get(o).and_then(Tensor::as_f32) else { continue };
                let w = w.get(o).and_then(Option::as_ref);
                for (j, &x) in v.iter().enumerate() {
                    let w = w.and_then(|w| w.get(j)).map_or(1.0, |&w| w as f64);
                    sum += w * (x as f64) * (x as f64);
                }
            }
            sum.max(1e-12)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::passes::test_util::{act, constant, input, push};
    use crate::work::WorkModel;
    use pith_format::ir::{Attr, OpKind, TensorData};

    /// Conv 3x3 (8 -> 16) → Relu → Conv 1x1 (16 -> 4): the teacher in f32 and the student with
    /// both weights as 2-bit codebooks.
    fn models() -> (ir::Model, ir::Model) {
        let mut w = WorkModel::default();
        let x = input(&mut w, "x");
        let wave = |n: usize, f: f32| (0..n).map(|i| (i as f32 * f).sin() * 0.5).collect::<Vec<f32>>();
        let w1 = constant(&mut w, "w1", &[16, 8, 3, 3], wave(16 * 72, 0.37));
        let b1 = constant(&mut w, "b1", &[16], wave(16, 1.3));
        let w2 = constant(&mut w, "w2", &[4, 16, 1, 1], wave(64, 0.71));
        let (h, r, y) = (act(&mut w, "h"), act(&mut w, "r"), act(&mut w, "y"));
        push(&mut w, "conv1", OpKind::Conv, &[Some(x), Some(w1), Some(b1)], &[h]);
        w.graph.nodes.last_mut().unwrap().attrs = vec![("pads".into(), Attr::Ints(vec![1, 1, 1, 1]))];
        push(&mut w, "relu", OpKind::Relu, &[Some(h)], &[r]);
        push(&mut w, "conv2", OpKind::Conv, &[Some(r), Some(w2)], &[y]);
        w.graph.outputs = vec![y];
        let teacher = crate::finish(w, Default::default());
        let mut student = teacher.clone();
        for c in &mut student.constants {
            let shape = teacher.graph.values[c.value as usize].shape.clone().unwrap();
            if let (TensorData::F32(v), 4) = (&c.data, shape.len()) {
                let rows = if v.len() == 16 * 72 { 16 } else { 4 };
                c.data = crate::codebook::encode(v, rows, 2).data;
            }
        }
        (teacher, student)
    }

    fn samples() -> Vec<CalibSample> {
        (0..3)
            .map(|s| {
                let v = (0..8 * 36).map(|i| ((i * 7 + s * 13) as f32 * 0.23).cos()).collect();
                CalibSample {
                    label: format!("s{s}"),
                    inputs: vec![("x".into(), Tensor::from_f32(vec![1, 8, 6, 6], v))],
                }
            })
            .collect()
    }

    #[test]
    fn tuning_lowers_the_loss_keeps_indices_and_is_deterministic() {
        let (teacher, student) = models();
        assert!(student.constants.iter().any(|c| matches!(c.data, TensorData::Codebook(_))));
        let options = FinetuneOptions { steps: 40, rel_lr: 1e-2, reassign: false, portable_kernels: false };
        let (tuned, report) = finetune(&teacher, &student, &samples(), &options, None, &|_, _| {}).unwrap();
        assert!(report.initial_loss > 0.0);
        assert!(report.final_loss < 0.5 * report.initial_loss, "{report:?}");
        for (a, b) in student.constants.iter().zip(&tuned.constants) {
            if let (TensorData::Codebook(a), TensorData::Codebook(b)) = (&a.data, &b.data) {
                assert_eq!(a.indices, b.indices, "tuning must not move a weight to another centroid");
                assert_ne!(a.centroids, b.centroids, "centroids must move");
            }
        }
        let (again, _) = finetune(&teacher, &student, &samples(), &options, None, &|_, _| {}).unwrap();
        assert_eq!(pith_format::write(&tuned).unwrap(), pith_format::write(&again).unwrap());
    }

    #[test]
    fn reassignment_moves_indices_lowers_the_loss_and_is_deterministic() {
        let (teacher, student) = models();
        let options = FinetuneOptions { steps: 40, rel_lr: 1e-2, reassign: true, portable_kernels: false };
        let (tuned, report) = finetune(&teacher, &student, &samples(), &options, None, &|_, _| {}).unwrap();
        assert!(report.final_loss < 0.5 * report.initial_loss, "{report:?}");
        let moved = student
            .constants
            .iter()
            .zip(&tuned.constants)
            .filter(|(a, b)| match (&a.data, &b.data) {
                (TensorData::Codebook(a), TensorData::Codebook(b)) => a.indices != b.indices,
                _ => false,
            })
            .count();
        assert!(moved > 0, "re-assignment must move at least one weight to another centroid");
        let (again, _) = finetune(&teacher, &student, &samples(), &options, None, &|_, _| {}).unwrap();
        assert_eq!(pith_format::write(&tuned).unwrap(), pith_format::write(&again).unwrap());
        // The written indices are the ones the tuned parameters decode with.
        let p = Params::new(&tuned, true).unwrap();
        let dense = p.dense();
        let q = Params::new(&tuned, false).unwrap();
        assert_eq!(
            dense.iter().map(|t| t.as_f32().unwrap().to_vec()).collect::<Vec<_>>(),
            q.dense().iter().map(|t| t.as_f32().unwrap().to_vec()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_arithmetic_half_cosine_follows_libms() {
        for i in 0..=1000 {
            let f = i as f32 / 1000.0;
            let want = 0.5 * (1.0 + (std::f64::consts::PI * f as f64).cos());
            assert!((half_cosine(f) as f64 - want).abs() < 1e-7, "{f}: {} against {want}", half_cosine(f));
        }
        assert!(half_cosine(1.0) < 1e-9 && half_cosine(0.0) == 1.0);
    }

    #[test]
    fn the_step_size_warms_up_then_decays() {
        let s: Vec<f32> = (0..=100).map(|i| step_size(1.0, i, 100)).collect();
        assert!(s[0] < s[5] && s[5] < s[9]);
        assert!((s[9] - s[10]).abs() < 0.05);
        assert!(s[50] < s[10] && s[99] < 0.01);
    }
}
