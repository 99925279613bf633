//! Fidelity of a candidate model to the uncompressed one on calibration samples: the output
//! cosine (per output over all samples, the minimum over outputs), and optionally a task check
//! (the same detections, matched at IoU ≥ a threshold, [`MIN_IOU`] by default).
//!
//! A detection whose score lies less than [`BORDERLINE`] above the task's decision threshold is
//! *borderline*: the model itself barely makes that decision (BlazeFace finds a "face" in a cat
//! photo of the calibration set at 0.535 against 0.5), so compression may flip it either way,
//! and its box, mostly made of weak anchors, is not held to the IoU floor. Every other detection
//! must be kept, and every detection the candidate adds must be borderline.

use std::sync::Arc;

use pith_format::ir;
use pith_format::PithFile;
use pith_kernels::{exp_neg_abs, sigmoid};
use pith_runtime::tasks::blazeface::{self, FaceModel, FaceOptions, Letterbox};
use pith_runtime::tasks::ctc;
use pith_runtime::tasks::db::{self, DbOptions, DbResize};
use pith_runtime::tasks::geometry::BBox;
use pith_runtime::{Session, SessionOptions, Tensor};
use rayon::prelude::*;

use super::{CalibError, CalibSample};

/// Default IoU a candidate detection must reach with its reference detection.
pub const MIN_IOU: f32 = 0.9;
/// Score distance above the decision threshold (BlazeFace's 0.5 face score, DB's 0.6 box score)
/// within which a detection is borderline.
pub const BORDERLINE: f32 = 0.05;

/// One detection of the task check, in input pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Its box (axis-aligned).
    pub bbox: BBox,
    /// Its score is less than [`BORDERLINE`] above the decision threshold.
    pub borderline: bool,
}

/// A task whose detections must survive compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskCheck {
    /// BlazeFace: the same faces (outputs told apart by last dimension 16 / 1).
    BlazeFace,
    /// DB text detection (PP-OCR det): the same text boxes from the first output.
    Db,
    /// A classifier: the same top class in every row of its `[N, classes]` (or `[classes]`)
    /// outputs, or at every time step of a CTC recognizer's `[N, T, classes]` (the same greedy
    /// reading); a row whose two best values lie within [`BORDERLINE`] of each other (on the
    /// output's own scale: probabilities or logits) may change.
    Classes,
    /// A CTC text recognizer (first output `[1, T, classes]`, class 0 the blank): the same
    /// greedy reading of every sample (the best class per step, repeats merged, blanks dropped).
    /// Steps may change where the reading does not (a blank beside a repeated character), which
    /// per-step [`TaskCheck::Classes`] would refuse.
    Reading,
}

/// How much more than other elements fine-tuning weighs an element that decides detections.
const TASK_EMPHASIS: f32 = 20.0;

impl TaskCheck {
    /// Fine-tuning's loss weights for a sample's reference `outputs` (graph order; see
    /// [`crate::finetune::OutputWeights`]): BlazeFace stresses the face logits near the
    /// detection threshold (logit 0) and the box regressors of anchors in proportion to their
    /// score; DB stresses the probability map's pixels near its binarisation threshold, where
    /// box outlines are decided.
    pub fn emphasis(&self, outputs: &[Tensor]) -> Vec<Option<Vec<f32>>> {
        let mut out: Vec<Option<Vec<f32>>> = vec![None; outputs.len()];
        match self {
            TaskCheck::BlazeFace => {
                let by_last = |n: usize| outputs.iter().position(|t| t.shape.last() == Some(&n));
                let (Some(r), Some(c)) = (by_last(16), by_last(1)) else { return out };
                let Some(logits) = outputs[c].as_f32() else { return out };
                // The kernels' exp and sigmoid, not libm's: the same bits on every CPU.
                let near = |l: f32| 1.0 + TASK_EMPHASIS * exp_neg_abs(l * l / 8.0);
                out[c] = Some(logits.iter().map(|&l| near(l)).collect());
                let rows = outputs[r].numel() / logits.len().max(1);
                let score = |l: f32| sigmoid(l.clamp(-50.0, 50.0));
                out[r] = Some(
                    logits
                        .iter()
                        .flat_map(|&l| std::iter::repeat_n(1.0 + TASK_EMPHASIS * score(l), rows))
                        .collect(),
                );
            }
            TaskCheck::Db => {
                let thresh = DbOptions::default().thresh;
                if let Some(p) = outputs.first().and_then(Tensor::as_f32) {
                    let near = |x: f32| {
                        let z = (x - thresh) / 0.1;
                        1.0 + TASK_EMPHASIS * exp_neg_abs(z * z)
                    };
                    out[0] = Some(p.iter().map(|&x| near(x)).collect());
                }
            }
            // Every value of a classifier's row takes part in its decision: no emphasis.
            TaskCheck::Classes | TaskCheck::Reading => {}
        }
        out
    }
}

/// Outcome of the task check over the calibration samples.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskOutcome {
    /// On every sample, every firm reference detection matched and no firm detection added.
    pub passed: bool,
    /// Lowest IoU of a firm reference detection with its match (1 when there were none).
    pub min_iou: f32,
    /// Firm (not borderline) detections of the reference over all samples.
    pub detections: usize,
    /// Borderline detections of the reference over all samples (free to flip).
    pub borderline: usize,
    /// The first failure, in words (empty when passed).
    pub detail: String,
}

/// Fidelity of a model to the reference on a set of samples.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fidelity {
    /// Minimum over outputs of the output cosine, each taken over all samples together (the
    /// outputs of every sample concatenated).
    pub cosine: f64,
    /// Minimum over samples and outputs of the per-sample output cosine (reported, not enforced:
    /// on a sample whose reference output is nearly zero it measures noise).
    pub worst_sample_cosine: f64,
    /// Samples measured.
    pub samples: usize,
    /// The task check, when one was asked for.
    pub task: Option<TaskOutcome>,
}

impl Fidelity {
    /// True when the cosine reaches `floor` and the task check (if any) passed.
    pub fn passes(&self, floor: f64) -> bool {
        self.cosine >= floor && self.task.as_ref().is_none_or(|t| t.passed)
    }
}

/// Running sums of a cosine similarity (f64), so one cosine can span several samples.
#[derive(Debug, Clone, Copy, Default)]
struct CosineSums {
    dot: f64,
    na: f64,
    nb: f64,
    /// Set when the lengths differed or a value was not finite: the cosine is then -1.
    broken: bool,
}

impl CosineSums {
    fn add(&mut self, a: &[f32], b: &[f32]) {
        if a.len() != b.len() {
            self.broken = true;
            return;
        }
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (f64::from(x), f64::from(y));
            self.dot += x * y;
            self.na += x * x;
            self.nb += y * y;
        }
    }

    fn cosine(&self) -> f64 {
        let Self { dot, na, nb, broken } = *self;
        if broken || !(dot.is_finite() && na.is_finite() && nb.is_finite()) {
            return -1.0;
        }
        if na == 0.0 && nb == 0.0 {
            return 1.0;
        }
        (dot / (na.sqrt() * nb.sqrt()).max(f64::MIN_POSITIVE)).clamp(-1.0, 1.0)
    }
}

/// Cosine similarity accumulated in f64; 1 for two zero vectors, -1 when a value is not finite
/// or the lengths differ (so a broken output always fails).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let mut sums = CosineSums::default();
    sums.add(a, b);
    sums.cosine()
}

/// Matches candidate detections to reference ones: every firm reference detection (in order)
/// takes the distinct candidate of best IoU, which must reach `min_iou`; then each borderline
/// reference detection takes a remaining candidate at IoU ≥ `min_iou` if there is one; every
/// candidate left must be borderline. `Ok(lowest firm IoU)` (1 without firm detections).
pub fn match_detections(
    reference: &[Detection],
    candidate: &[Detection],
    min_iou: f32,
) -> Result<f32, String> {
    let mut used = vec![false; candidate.len()];
    let best_free = |r: &BBox, used: &[bool]| {
        candidate
            .iter()
            .enumerate()
            .filter(|(j, _)| !used[*j])
            .map(|(j, c)| (j, r.iou(&c.bbox)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    };
    let mut lowest = 1.0f32;
    for (i, r) in reference.iter().enumerate().filter(|(_, r)| !r.borderline) {
        match best_free(&r.bbox, &used) {
            Some((j, iou)) if iou >= min_iou => {
                used[j] = true;
                lowest = lowest.min(iou);
            }
            Some((_, iou)) if iou > 0.0 => return Err(format!("reference detection {i}: best IoU {iou:.3}")),
            _ => return Err(format!("reference detection {i} lost")),
        }
    }
    for r in reference.iter().filter(|r| r.borderline) {
        if let Some((j, iou)) = best_free(&r.bbox, &used) {
            used[j] |= iou >= min_iou;
        }
    }
    match candidate.iter().enumerate().find(|(j, c)| !used[*j] && !c.borderline) {
        Some((j, _)) => {
            Err(format!("detection {j} is new ({} vs {} in the reference)", candidate.len(), reference.len()))
        }
        None => Ok(lowest),
    }
}

/// A classifier's decisions in `outputs`: one per row of every output shaped `[N, classes]`,
/// `[classes]` or `[N, T, classes]` (at least two classes), in output and row order, as a [`Detection`] whose box's
/// `xmin` is the top class and `ymin` the row; borderline when the runner-up is within
/// [`BORDERLINE`].
fn class_decisions(outputs: &[(String, Tensor)]) -> Result<Vec<Detection>, String> {
    let mut out = Vec::new();
    for (_, t) in outputs {
        let classes = match t.shape[..] {
            [c] | [_, c] | [_, _, c] if c >= 2 => c,
            _ => continue,
        };
        let values = t.as_f32().ok_or("a classifier output is not f32")?;
        for v in values.chunks_exact(classes) {
            let (mut best, mut second) = (0, usize::MAX);
            for (c, &x) in v.iter().enumerate().skip(1) {
                if x > v[best] {
                    (best, second) = (c, best);
                } else if second == usize::MAX || x > v[second] {
                    second = c;
                }
            }
            let second = if second == usize::MAX { 1 } else { second };
            // Rows are numbered across outputs, in order.
            let (c, r) = (best as f32, out.len() as f32);
            let margin = v[best] - v[second];
            out.push(Detection {
                bbox: BBox { xmin: c, ymin: r, xmax: c + 1.0, ymax: r + 1.0 },
                // NaN margins count as firm: a broken output must fail.
                borderline: margin < BORDERLINE,
            });
        }
    }
    if out.is_empty() {
        return Err(
            "no classifier output ([classes], [N, classes] or [N, T, classes], at least 2 classes)".into()
        );
    }
    Ok(out)
}

/// Compares class decisions row by row: every firm reference row keeps its class.
fn match_classes(reference: &[Detection], candidate: &[Detection]) -> Result<f32, String> {
    if reference.len() != candidate.len() {
        return Err(format!(
            "{} class decisions against {} in the reference",
            candidate.len(),
            reference.len()
        ));
    }
    for (row, (r, c)) in reference.iter().zip(candidate).enumerate() {
        if !r.borderline && r.bbox.xmin != c.bbox.xmin {
            return Err(format!("row {row}: class {} became {}", r.bbox.xmin, c.bbox.xmin));
        }
    }
    Ok(1.0)
}

/// The detections of `task` in model outputs for input `input` (boxes in input pixels).
pub fn detections(
    task: TaskCheck,
    input: &Tensor,
    outputs: &[(String, Tensor)],
) -> Result<Vec<Detection>, String> {
    match task {
        TaskCheck::BlazeFace => {
            let by_last =
                |n: usize| {
                    outputs.iter().find(|(_, t)| t.shape.last() == Some(&n)).map(|(_, t)| t).ok_or_else(
                        || format!("no output with last dimension {n}; is this a BlazeFace model?"),
                    )
                };
            let dims: Vec<Option<usize>> = input.shape.iter().map(|&d| Some(d)).collect();
            let model = FaceModel::for_input(&dims).map_err(|e| e.to_string())?;
            let lb = Letterbox::new(model.input_size(), model.input_size());
            let options = FaceOptions::default();
            let faces = blazeface::decode(model, by_last(16)?, by_last(1)?, &lb, &options)
                .map_err(|e| e.to_string())?;
            let borderline = |score: f32| score < options.min_score + BORDERLINE;
            Ok(faces.iter().map(|f| Detection { bbox: f.bbox, borderline: borderline(f.score) }).collect())
        }
        TaskCheck::Db => {
            let (h, w) = match input.shape[..] {
                [_, _, h, w] => (h, w),
                _ => return Err(format!("DB input must be NCHW, got {:?}", input.shape)),
            };
            let resize = DbResize { src_width: w, src_height: h, width: w, height: h };
            let (_, prob) = outputs.first().ok_or("the model has no output")?;
            let options = DbOptions::default();
            let boxes = db::decode(prob, &resize, &options).map_err(|e| e.to_string())?;
            let borderline = |score: f32| score < options.box_thresh + BORDERLINE;
            Ok(boxes.iter().map(|b| Detection { bbox: b.aabb(), borderline: borderline(b.score) }).collect())
        }
        TaskCheck::Classes => class_decisions(outputs),
        TaskCheck::Reading => {
            let (_, probs) = outputs.first().ok_or("the model has no output")?;
            let reading = ctc::decode(probs, None).map_err(|e| e.to_string())?;
            Ok(reading
                .classes
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    let (c, i) = (c as f32, i as f32);
                    Detection {
                        bbox: BBox { xmin: c, ymin: i, xmax: c + 1.0, ymax: i + 1.0 },
                        borderline: false,
                    }
                })
                .collect())
        }
    }
}

/// Compares two greedy CTC readings (from [`detections`]): the same classes in the same order.
fn match_reading(reference: &[Detection], candidate: &[Detection]) -> Result<f32, String> {
    let classes = |d: &[Detection]| d.iter().map(|d| d.bbox.xmin as usize).collect::<Vec<_>>();
    let (want, got) = (classes(reference), classes(candidate));
    if want != got {
        let at = want.iter().zip(&got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
        return Err(format!(
            "the reading of {} characters became {} characters, first difference at character {at}",
            want.len(),
            got.len()
        ));
    }
    Ok(1.0)
}

/// How the compressor's sessions run: one thread each (samples run in parallel instead, and a
/// layer's sums then never depend on how many cores the machine has), on the CPU's fastest
/// kernels or, for files that are the same bits on every machine, the portable ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Runner {
    /// [`SessionOptions::portable_kernels`].
    pub portable: bool,
}

impl Runner {
    fn options(self) -> SessionOptions {
        SessionOptions { threads: 1, portable_kernels: self.portable, ..SessionOptions::default() }
    }

    /// Loads an in-memory model into a session, as a `.pith` file would be.
    pub fn session(self, model: &ir::Model) -> Result<Session, CalibError> {
        let file = PithFile::from_bytes(pith_format::write(model)?)?;
        Session::new(Arc::new(file), self.options()).map_err(|e| CalibError::Session(e.to_string()))
    }
}

/// Runs `session` on calibration sample `index`.
pub(crate) fn run(
    session: &mut Session,
    samples: &[CalibSample],
    index: usize,
) -> Result<Vec<(String, Tensor)>, CalibError> {
    let feeds: Vec<(&str, Tensor)> =
        samples[index].inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    session.run(&feeds).map_err(|source| CalibError::Run { index, source })
}

/// The reference (uncompressed) outputs and detections, and the measurement of candidates.
#[derive(Debug)]
pub(crate) struct Evaluator<'a> {
    runner: Runner,
    samples: &'a [CalibSample],
    task: Option<TaskCheck>,
    min_iou: f32,
    outputs: Vec<Vec<(String, Tensor)>>,
    detections: Vec<Vec<Detection>>,
}

impl<'a> Evaluator<'a> {
    /// Runs the reference model on every sample.
    pub fn new(
        runner: Runner,
        reference: &ir::Model,
        samples: &'a [CalibSample],
        task: Option<TaskCheck>,
        min_iou: f32,
    ) -> Result<Evaluator<'a>, CalibError> {
        let outputs = run_all(runner, reference, samples, &(0..samples.len()).collect::<Vec<_>>())?;
        let detections = match task {
            Some(task) => outputs
                .iter()
                .zip(samples)
                .map(|(out, s)| detections(task, &s.inputs[0].1, out))
                .collect::<Result<Vec<_>, String>>()
                .map_err(CalibError::Task)?,
            None => Vec::new(),
        };
        Ok(Evaluator { runner, samples, task, min_iou, outputs, detections })
    }

    /// The task check, if one was asked for.
    pub fn task(&self) -> Option<TaskCheck> {
        self.task
    }

    /// Number of calibration samples.
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// Fidelity of `model` on the samples `subset` (all when `None`); the task check only when
    /// `with_task` and a task was given.
    pub fn measure(
        &self,
        model: &ir::Model,
        subset: Option<&[usize]>,
        with_task: bool,
    ) -> Result<Fidelity, CalibError> {
        let all: Vec<usize> = (0..self.samples.len()).collect();
        let ids = subset.unwrap_or(&all);
        let outputs = run_all(self.runner, model, self.samples, ids)?;
        // One cosine per output over all samples together: a sample whose reference output is
        // nearly zero (a text map of a page without text) then weighs by its energy, instead of
        // letting the noise in its near-zero vector decide the minimum.
        let n_outputs = self.outputs.first().map_or(0, Vec::len);
        let mut sums = vec![CosineSums::default(); n_outputs];
        let mut worst_sample = 1.0f64;
        for (&i, out) in ids.iter().zip(&outputs) {
            for (k, ((_, got), (_, want))) in out.iter().zip(&self.outputs[i]).enumerate() {
                match (got.as_f32(), want.as_f32()) {
                    (Some(a), Some(b)) if got.shape == want.shape => {
                        sums[k].add(a, b);
                        worst_sample = worst_sample.min(cosine(a, b));
                    }
                    (None, None) => {}
                    _ => sums[k].broken = true,
                }
            }
        }
        let cos = sums.iter().map(CosineSums::cosine).fold(1.0f64, f64::min);
        let task = match self.task {
            Some(task) if with_task => {
                let mut outcome = TaskOutcome { passed: true, min_iou: 1.0, ..TaskOutcome::default() };
                for (&i, out) in ids.iter().zip(&outputs) {
                    let reference = &self.detections[i];
                    let borderline = reference.iter().filter(|d| d.borderline).count();
                    outcome.detections += reference.len() - borderline;
                    outcome.borderline += borderline;
                    let got = detections(task, &self.samples[i].inputs[0].1, out);
                    let matched = got.and_then(|got| match task {
                        TaskCheck::Classes => match_classes(reference, &got),
                        TaskCheck::Reading => match_reading(reference, &got),
                        TaskCheck::BlazeFace | TaskCheck::Db => {
                            match_detections(reference, &got, self.min_iou)
                        }
                    });
                    match matched {
                        Ok(iou) => outcome.min_iou = outcome.min_iou.min(iou),
                        Err(e) if outcome.passed => {
                            outcome.passed = false;
                            outcome.detail = format!("sample {i} ({}): {e}", self.samples[i].label);
                        }
                        Err(_) => {}
                    }
                }
                Some(outcome)
            }
            _ => None,
        };
        Ok(Fidelity { cosine: cos, worst_sample_cosine: worst_sample, samples: ids.len(), task })
    }
}

/// Outputs of `model` on the samples `ids`, in order (samples run in parallel, one session each
/// per worker).
fn run_all(
    runner: Runner,
    model: &ir::Model,
    samples: &[CalibSample],
    ids: &[usize],
) -> Result<Vec<Vec<(String, Tensor)>>, CalibError> {
    let file = Arc::new(PithFile::from_bytes(pith_format::write(model)?)?);
    ids.par_iter()
        .map_init(
            || Session::new(file.clone(), runner.options()).map_err(|e| e.to_string()),
            |session, &i| match session {
                Ok(s) => run(s, samples, i),
                Err(e) => Err(CalibError::Session(e.clone())),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emphasis_stresses_what_decides_detections() {
        // BlazeFace: 3 anchors with logits far below, at, and above the threshold.
        let reg = Tensor::from_f32(vec![1, 3, 16], vec![0.5; 48]);
        let cls = Tensor::from_f32(vec![1, 3, 1], vec![-20.0, 0.0, 8.0]);
        let w = TaskCheck::BlazeFace.emphasis(&[reg, cls]);
        let (r, c) = (w[0].as_ref().unwrap(), w[1].as_ref().unwrap());
        assert!(c[1] > 10.0 * c[0] && c[1] > c[2], "{c:?}");
        assert_eq!(r.len(), 48);
        assert!(r[0] < 1.01 && r[40] > 10.0, "a detected anchor's box must weigh more");
        // DB: pixels at the binarisation threshold weigh most.
        let map = Tensor::from_f32(vec![1, 1, 1, 3], vec![0.0, 0.3, 0.9]);
        let w = TaskCheck::Db.emphasis(&[map]);
        let m = w[0].as_ref().unwrap();
        assert!(m[1] > 10.0 * m[0] && m[1] > 10.0 * m[2], "{m:?}");
    }

    #[test]
    fn cosine_of_parallel_orthogonal_and_broken_vectors() {
        assert!((cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-12);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[-1.0, 0.0]) + 1.0).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[0.0, 0.0]), 1.0);
        assert_eq!(cosine(&[f32::NAN, 1.0], &[1.0, 1.0]), -1.0);
        assert_eq!(cosine(&[1.0], &[1.0, 2.0]), -1.0);
        // A small perturbation costs about half its squared relative size.
        let a: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.1).sin()).collect();
        let b: Vec<f32> = a.iter().enumerate().map(|(i, v)| v + 0.01 * (i as f32 * 7.3).cos()).collect();
        let d = 1.0 - cosine(&a, &b);
        assert!(d > 1e-6 && d < 1e-4, "{d}");
    }

    fn bx(x: f32, y: f32, s: f32) -> BBox {
        BBox { xmin: x, ymin: y, xmax: x + s, ymax: y + s }
    }

    fn firm(x: f32, y: f32, s: f32) -> Detection {
        Detection { bbox: bx(x, y, s), borderline: false }
    }

    fn weak(x: f32, y: f32, s: f32) -> Detection {
        Detection { bbox: bx(x, y, s), borderline: true }
    }

    #[test]
    fn firm_detections_must_match_at_high_iou() {
        let reference = [firm(0.0, 0.0, 10.0), firm(50.0, 50.0, 20.0)];
        let shifted = [firm(50.5, 50.0, 20.0), firm(0.0, 0.2, 10.0)];
        let iou = match_detections(&reference, &shifted, MIN_IOU).unwrap();
        assert!(iou > 0.9 && iou < 1.0, "{iou}");
        assert!(match_detections(&reference, &shifted[..1], MIN_IOU).unwrap_err().contains("lost"));
        let moved = [firm(0.0, 0.0, 10.0), firm(55.0, 50.0, 20.0)];
        assert!(match_detections(&reference, &moved, MIN_IOU).unwrap_err().contains("best IoU"));
        assert_eq!(match_detections(&[], &[], MIN_IOU), Ok(1.0));
        assert!(match_detections(&reference, &shifted, 0.99).is_err());
        // A firm detection the reference lacks fails; a borderline one does not.
        let extra = [shifted[0], shifted[1], firm(100.0, 0.0, 10.0)];
        assert!(match_detections(&reference, &extra, MIN_IOU).unwrap_err().contains("new"));
        let extra = [shifted[0], shifted[1], weak(100.0, 0.0, 10.0)];
        assert_eq!(match_detections(&reference, &extra, MIN_IOU), Ok(iou));
        // A firm reference detection may be kept by a candidate that became borderline.
        assert!(match_detections(&reference[..1], &[weak(0.0, 0.2, 10.0)], MIN_IOU).is_ok());
    }

    #[test]
    fn borderline_detections_may_flip_or_move() {
        let reference = [firm(0.0, 0.0, 10.0), weak(50.0, 50.0, 20.0)];
        let kept = firm(0.0, 0.2, 10.0);
        let iou = match_detections(&reference, &[kept], MIN_IOU).unwrap();
        assert!(iou > 0.9 && iou < 1.0);
        // Moved far (its candidate is then an unmatched leftover, itself borderline).
        assert_eq!(match_detections(&reference, &[kept, weak(58.0, 50.0, 20.0)], MIN_IOU), Ok(iou));
        // Kept but turned firm: it matches the borderline reference, so it is not new.
        assert_eq!(match_detections(&reference, &[kept, firm(50.0, 50.5, 20.0)], MIN_IOU), Ok(iou));
        // Turned firm somewhere else: a new confident detection.
        assert!(match_detections(&reference, &[kept, firm(80.0, 50.0, 20.0)], MIN_IOU).is_err());
        // The firm one must still be there.
        assert!(match_detections(&reference, &[weak(50.0, 50.0, 20.0)], MIN_IOU).is_err());
    }

    #[test]
    fn class_decisions_keep_firm_rows_and_free_near_ties() {
        let out = |v: Vec<f32>| vec![("p".to_string(), Tensor::from_f32(vec![2, 3], v))];
        // Row 0: class 2 by a wide margin; row 1: classes 0 and 1 within 0.05.
        let reference = class_decisions(&out(vec![0.1, 0.2, 0.7, 0.48, 0.46, 0.06])).unwrap();
        assert_eq!((reference[0].bbox.xmin, reference[0].borderline), (2.0, false));
        assert_eq!((reference[1].bbox.xmin, reference[1].borderline), (0.0, true));
        // The near tie may flip; the firm row may not.
        let flipped_tie = class_decisions(&out(vec![0.1, 0.2, 0.7, 0.40, 0.54, 0.06])).unwrap();
        assert!(match_classes(&reference, &flipped_tie).is_ok());
        let flipped_firm = class_decisions(&out(vec![0.5, 0.2, 0.3, 0.48, 0.46, 0.06])).unwrap();
        let err = match_classes(&reference, &flipped_firm).unwrap_err();
        assert!(err.contains("row 0: class 2 became 0"), "{err}");
        // A broken output is never a near tie.
        let nan = class_decisions(&out(vec![f32::NAN, 0.2, 0.7, 0.48, 0.46, 0.06])).unwrap();
        assert!(!nan[0].borderline && match_classes(&reference, &nan).is_err());
        // A CTC recognizer's [1, T, classes]: one decision per time step.
        let steps =
            vec![("p".to_string(), Tensor::from_f32(vec![1, 2, 3], vec![0.1, 0.2, 0.7, 0.9, 0.05, 0.05]))];
        let per_step = class_decisions(&steps).unwrap();
        assert_eq!(
            per_step.iter().map(|d| (d.bbox.xmin, d.bbox.ymin)).collect::<Vec<_>>(),
            [(2.0, 0.0), (0.0, 1.0)]
        );
        // Outputs that are no classifier's are refused by name.
        let map = vec![("map".to_string(), Tensor::zeros(vec![1, 1, 4, 4]))];
        assert!(class_decisions(&map).unwrap_err().contains("no classifier output"));
        assert_eq!(TaskCheck::Classes.emphasis(&[Tensor::zeros(vec![1, 3])]), vec![None]);
    }

    #[test]
    fn readings_ignore_steps_that_do_not_change_the_text() {
        // Steps (classes 0-3): a a _ b  → "ab".
        let steps = |v: [usize; 4]| {
            let mut p = vec![0.0f32; 16];
            for (t, &c) in v.iter().enumerate() {
                p[t * 4 + c] = 1.0;
            }
            vec![("p".to_string(), Tensor::from_f32(vec![1, 4, 4], p))]
        };
        let x = Tensor::zeros(vec![1, 3, 48, 320]);
        let read = |v| detections(TaskCheck::Reading, &x, &steps(v)).unwrap();
        let reference = read([1, 1, 0, 2]);
        assert_eq!(reference.len(), 2);
        // The blank moved: same text, though two steps changed class.
        assert!(match_reading(&reference, &read([1, 0, 2, 2])).is_ok());
        // A character replaced, dropped or added.
        let err = match_reading(&reference, &read([1, 1, 0, 3])).unwrap_err();
        assert!(err.contains("first difference at character 1"), "{err}");
        assert!(match_reading(&reference, &read([1, 1, 0, 0])).is_err());
        assert!(match_reading(&reference, &read([1, 0, 1, 2])).is_err());
        // Not a recognizer's output.
        let map = vec![("map".to_string(), Tensor::zeros(vec![1, 1, 4, 4]))];
        assert!(detections(TaskCheck::Reading, &x, &map).is_err());
    }

    #[test]
    fn fidelity_passes_needs_cosine_and_task() {
        let mut f = Fidelity { cosine: 0.9995, worst_sample_cosine: 0.99, samples: 2, task: None };
        assert!(f.passes(0.999));
        assert!(!f.passes(0.9999));
        f.task = Some(TaskOutcome { passed: false, ..Default::default() });
        assert!(!f.passes(0.999));
    }
}
