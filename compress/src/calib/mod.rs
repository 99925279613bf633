//! Calibration-driven compression: fidelity measured against the uncompressed model on real
//! inputs, data-aware codebooks, and per-layer bit allocation under a fidelity floor.
//!
//! Flow of [`compress_calibrated`]:
//! 1. the f32 model runs every calibration sample once: the reference outputs (and, with a
//!    [`TaskCheck`], the reference detections);
//! 2. with `data_aware`, the input activation of every Conv / Gemm weight is captured
//!    (`capture`) into a [`crate::gram::RowGram`] that weights the codebook fit;
//!    With `bias_correction`, a layer whose bias can take it is fitted to the patches'
//!    deviations from their mean (half the mean's term kept, `BIAS_CORRECTION_MEAN_KEPT`) and
//!    each of its codebooks carries the bias shift that restores its output's mean;
//! 3. every weight is encoded at each candidate width (`layers`), with its weight error and its
//!    output error on the calibration activations;
//! 4. with [`BitsChoice::Auto`], each layer's sensitivity is probed by quantising it alone
//!    (at each of [`PROBE_BITS`]) and measuring `1 - cos` of the outputs, the distortion of every
//!    other width is predicted from those points ([`alloc::Sensitivity`]), and [`alloc::allocate`] picks the smallest model under a
//!    predicted budget; the whole model is then verified for real and the budget is tightened or
//!    loosened (a few bisection steps); the smallest verified model that passes is kept, then
//!    refined by verified single-layer moves to smaller candidates, largest saving first.
//!
//! Fidelity ([`Fidelity`]) is the minimum, over samples and outputs, of the cosine between the
//! candidate's and the reference's outputs, plus the task check when one is named.

pub mod alloc;
mod capture;
mod error;
pub mod fidelity;
mod layers;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use pith_format::ir::{self, Dim, TensorData};
use pith_runtime::Tensor;
use rayon::prelude::*;

use crate::finetune::{self, FinetuneOptions, FinetuneReport};
pub use error::CalibError;
pub use fidelity::{Fidelity, TaskCheck, TaskOutcome};

use crate::work::WorkModel;
use crate::{weights, CompressError, Compressed, LayerReport, Report, WeightFormat};
use layers::{Candidate, LayerInfo, Slots};

/// Widths of the single-layer quantisations that probe each layer's sensitivity.
pub const PROBE_BITS: [u8; 2] = [4, 8];
/// At most this many calibration samples (the first ones) are used to probe sensitivities.
pub const PROBE_SAMPLES: usize = 3;
/// At most this many whole-model verifications in the budget search.
const MAX_VERIFY: usize = 12;
/// A refinement move must keep every matched detection this much above the IoU threshold (or
/// at least as high as before the refinement, when that was lower).
const REFINE_IOU_MARGIN: f32 = 0.03;
/// At most this many single-layer moves are verified after the budget search.
const REFINE_TRIALS: usize = 60;
/// With `--entropy huffman`, the pruned candidates the search also considers: this fraction
/// of each layer's weights (least important first) set to an exact-zero entry ...
const PRUNE_FRACTION: f32 = 0.3;
/// ... at these widths. They are tried after the refinement, one verified layer at a time.
const PRUNE_BITS: [u8; 4] = [3, 4, 5, 6];
/// At most this many layers are tried pruned.
const PRUNE_TRIALS: usize = 16;
/// With bias correction, the share of the input mean's term kept in the statistics the
/// codebooks are fitted to (see [`crate::gram::RowGram::centered`]). Measured by 5-fold
/// cross-validation over BlazeFace's calibration set at floor 0.995 (15 held-out judgements;
/// kept share: mean bytes, held-out cosine mean / min, task failures): 1 (no correction): 81,475,
/// 0.9931 / 0.9864, 1; 0.75: 75,373, 0.9917 / 0.9865, 2; 0.5: 74,390, 0.9923 / 0.9847, 1; 0.25:
/// 71,350, 0.9884 / 0.9733, 4; 0: 71,782, 0.9906 / 0.9690, 2. On PP-OCRv4 det (3 folds, floor
/// 0.999): 1: 792,101 bytes, a text box lost; 0.5: 750,997 bytes, none lost.
const BIAS_CORRECTION_MEAN_KEPT: f64 = 0.5;
/// Output positions sampled per image when accumulating a Conv input Gram matrix.
const MAX_PATCHES: usize = 256;

/// One calibration input set: a tensor for every graph input, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibSample {
    /// Where the sample came from (a file name), for messages.
    pub label: String,
    /// `(input name, tensor)` for every graph input.
    pub inputs: Vec<(String, Tensor)>,
}

/// How weight widths are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BitsChoice {
    /// One encoding for every weight (codebooks fitted with the calibration data when
    /// `data_aware`); the fidelity is measured and reported, not enforced.
    Fixed(WeightFormat),
    /// Per-layer width (1..=8 bits or f32) from measured sensitivity: the smallest model whose
    /// [`Fidelity`] on the calibration set stays at or above `min_fidelity`.
    Auto {
        /// Floor on the minimum output cosine (e.g. 0.999).
        min_fidelity: f64,
    },
}

/// Options of [`compress_calibrated`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibOptions {
    /// Width choice.
    pub bits: BitsChoice,
    /// Fit codebooks to the calibration activations (activation-weighted k-means, least-squares
    /// centroid refit); `false` = plain k-means, for comparison.
    pub data_aware: bool,
    /// With `data_aware`: bias correction. Where a layer's bias can absorb it (see
    /// `layers::bias_slots`), the bias moves by the mean of the layer's output error on the
    /// calibration data, and its codebooks are fitted to the error that remains (the input
    /// patches' deviations from their mean).
    pub bias_correction: bool,
    /// Also require the same detections as the reference (BlazeFace faces / DB text boxes).
    pub task: Option<TaskCheck>,
    /// IoU each reference detection must reach with its match in the task check (a value above
    /// the 0.9 a held-out check uses leaves a margin for inputs outside the calibration set).
    pub min_iou: f32,
    /// Size model of the allocator: bytes after Huffman coding of the indices (estimated from
    /// the index entropy) instead of packed bytes.
    pub entropy: bool,
    /// Fine-tune centroids and biases against the uncompressed model ([`crate::finetune`])
    /// after the widths are chosen; with [`BitsChoice::Auto`] the search then aims below the
    /// floor by [`FINETUNE_RELAX`] factors and keeps the smallest model that passes after tuning.
    pub finetune: Option<FinetuneOptions>,
    /// Run every calibration and verification pass on the portable reference kernels
    /// ([`pith_runtime::SessionOptions::portable_kernels`]), so the file is the same bytes on
    /// every CPU and architecture (the fastest kernels' sums differ in their last bits from path
    /// to path, which can tip the search's choices). About 2-3× the time on x86 with AVX2 or
    /// AVX-512. Fine-tuning then runs on them as well ([`FinetuneOptions::portable_kernels`]).
    pub portable_kernels: bool,
}

impl Default for CalibOptions {
    fn default() -> Self {
        CalibOptions {
            bits: BitsChoice::Auto { min_fidelity: 0.999 },
            data_aware: true,
            bias_correction: true,
            task: None,
            min_iou: fidelity::MIN_IOU,
            entropy: false,
            finetune: None,
            portable_kernels: false,
        }
    }
}

/// One whole-model verification of the budget search.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchStep {
    /// Predicted distortion budget (`1 - cos`) the allocation was made for; NaN for a uniform
    /// width tried as a fallback and for a refinement move.
    pub budget: f64,
    /// Predicted total distortion of the allocation.
    pub predicted: f64,
    /// Bytes of the weights under the allocator's size model.
    pub bytes: usize,
    /// Measured fidelity on the calibration set.
    pub fidelity: Fidelity,
    /// Whether it met the floor (cosine and task check).
    pub passed: bool,
}

/// A graph input of a prepared model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInput {
    /// Value name.
    pub name: String,
    /// Declared extents; `None` for a symbolic (or undeclared) dimension.
    pub shape: Option<Vec<Option<usize>>>,
}

/// An imported and optimised model, before weight encoding.
#[derive(Debug, Clone)]
pub struct Prepared {
    work: WorkModel,
    onnx_bytes: usize,
}

impl Prepared {
    /// Imports `onnx` and runs the graph passes.
    pub fn new(onnx: &[u8]) -> Result<Prepared, CompressError> {
        Ok(Prepared { work: crate::prepare(onnx)?, onnx_bytes: onnx.len() })
    }

    /// The graph inputs, in order.
    pub fn inputs(&self) -> Vec<ModelInput> {
        let g = &self.work.graph;
        g.inputs
            .iter()
            .map(|&id| {
                let v = &g.values[id as usize];
                let shape = v.shape.as_ref().map(|dims| dims.iter().map(Dim::extent).collect());
                ModelInput { name: v.name.clone(), shape }
            })
            .collect()
    }
}

/// Progress callback: `(stage, done, total)`; may be called from several threads.
pub type Progress<'a> = &'a (dyn Fn(&str, usize, usize) + Sync);

/// Compresses `prepared` using `samples` as calibration data (see the module documentation).
pub fn compress_calibrated(
    prepared: Prepared,
    samples: &[CalibSample],
    options: &CalibOptions,
    progress: Progress<'_>,
) -> Result<Compressed, CalibError> {
    check_options(options)?;
    check_samples(&prepared.inputs(), samples)?;
    // Portable calibration tunes on the portable kernels too.
    let finetune = options
        .finetune
        .map(|f| FinetuneOptions { portable_kernels: f.portable_kernels || options.portable_kernels, ..f });
    let Prepared { work, onnx_bytes } = prepared;
    let infos = layers::layer_infos(&work);
    let base = crate::finish(work, BTreeMap::new());
    // Fine-tuning's teacher: the graph with every weight and bias in f32.
    let teacher = finetune.map(|_| base.clone());
    let weight_slots = layers::constant_slots(&base, &infos)?;
    let biases = if options.data_aware && options.bias_correction {
        layers::bias_slots(&base, &infos, &weight_slots)
    } else {
        vec![None; infos.len()]
    };

    let clock = std::time::Instant::now();
    let lap = |stage: &str| log::info!("calibration: {stage} done at {:.2} s", clock.elapsed().as_secs_f64());
    progress("reference", 0, samples.len());
    let runner = fidelity::Runner { portable: options.portable_kernels };
    let eval = fidelity::Evaluator::new(runner, &base, samples, options.task, options.min_iou)?;
    progress("reference", samples.len(), samples.len());
    lap("reference");

    let mut grams = if options.data_aware {
        capture::grams(runner, &base, &infos, samples, MAX_PATCHES, progress)?
    } else {
        vec![None; infos.len()]
    };
    // Layers whose bias takes the mean of their output error are fitted to what remains.
    for (gram, bias) in grams.iter_mut().zip(&biases) {
        if let (Some(g), Some(_)) = (gram.as_mut(), bias) {
            *g = g.centered(BIAS_CORRECTION_MEAN_KEPT);
        }
    }
    log::info!("calibration: bias correction for {} layer(s)", biases.iter().flatten().count());
    lap("capture");
    // Every candidate below, so every verification, carries f16 biases (see
    // `weights::half_biases`); the reference outputs above came from the f32 model.
    let mut base = base;
    let half = options.bits != BitsChoice::Fixed(WeightFormat::F32);
    if half {
        let n = weights::half_biases(&mut base);
        log::info!("calibration: {n} biases stored as f16");
    }
    let slots = Slots { weights: weight_slots, biases, half };

    let widths: Vec<u8> = match options.bits {
        BitsChoice::Fixed(WeightFormat::Codebook { bits }) => vec![bits],
        BitsChoice::Fixed(_) => Vec::new(),
        BitsChoice::Auto { .. } => (1..=8).collect(),
    };
    let auto = matches!(options.bits, BitsChoice::Auto { .. });
    // One job per (layer, width), so large layers spread over the workers.
    // One job per (layer, width, pruning), so large layers spread over the workers. Pruning
    // saves bytes only once the indices are entropy-coded, so it is searched only then.
    let prunes: &[f32] = if auto && options.entropy { &[0.0, PRUNE_FRACTION] } else { &[0.0] };
    let jobs: Vec<(usize, u8, f32)> = (0..infos.len())
        .flat_map(|l| widths.iter().flat_map(move |&b| prunes.iter().map(move |&p| (l, b, p))))
        .filter(|&(_, b, p)| p == 0.0 || PRUNE_BITS.contains(&b))
        .collect();
    let done = AtomicUsize::new(0);
    progress("encode", 0, jobs.len());
    let coded: Vec<Option<Candidate>> = jobs
        .par_iter()
        .map(|&(l, bits, prune)| {
            let c = layers::candidate(
                &infos[l],
                bits,
                prune,
                grams[l].as_ref(),
                options.data_aware,
                options.entropy,
            );
            progress("encode", done.fetch_add(1, Ordering::Relaxed) + 1, jobs.len());
            c
        })
        .collect();
    let mut cands: Vec<Vec<Candidate>> =
        infos.iter().zip(&grams).map(|(info, g)| layers::lossless(info, g.as_ref(), auto)).collect();
    // A corrected conv without a bias gains one: its codebooks pay for it.
    let added_bias = |l: usize| match slots.biases[l] {
        Some(layers::BiasSlot::Missing { .. }) => infos[l].rows() * if half { 2 } else { 4 },
        _ => 0,
    };
    for (&(l, _, _), c) in jobs.iter().zip(coded) {
        let with_bias = |c: Candidate| match c.bias_shift {
            Some(_) => Candidate { size: c.size + added_bias(l), ..c },
            None => c,
        };
        cands[l].extend(c.map(with_bias));
    }
    lap("encode");

    // With fine-tuning: the tuned model and what tuning did.
    let mut finetuned: Option<(ir::Model, FinetuneReport)> = None;
    let (choice, predicted, search) = match options.bits {
        BitsChoice::Fixed(WeightFormat::F16) => {
            (cands.iter().map(|_| 0).collect(), vec![None; infos.len()], Vec::new())
        }
        BitsChoice::Fixed(_) => {
            // The chosen width when it is stored smaller than f32, else f32 (index 0).
            let choice = cands.iter().map(|c| if c.len() > 1 { c.len() - 1 } else { 0 }).collect();
            (choice, vec![None; infos.len()], Vec::new())
        }
        BitsChoice::Auto { min_fidelity } => {
            let sens = probe_sensitivities(&eval, &base, &slots, &cands, progress)?;
            lap("probe");
            let plain =
                auto_search(&eval, &base, &slots, &cands, &sens, min_fidelity, options.min_iou, progress)?;
            match (&teacher, finetune) {
                (Some(teacher), Some(ft)) => {
                    let tuned = relaxed_search(
                        &eval,
                        teacher,
                        &base,
                        &slots,
                        &cands,
                        &sens,
                        (min_fidelity, options.min_iou),
                        plain,
                        samples,
                        &ft,
                        progress,
                    )?;
                    lap("fine-tune");
                    finetuned = Some((tuned.3, tuned.4));
                    (tuned.0, tuned.1, tuned.2)
                }
                _ => plain,
            }
        }
    };

    let mut chosen: Vec<Candidate> = cands.iter().zip(&choice).map(|(c, &i)| c[i].clone()).collect();
    if let BitsChoice::Fixed(WeightFormat::F16) = options.bits {
        let f16 = weights_f16(&infos);
        for (pick, data) in chosen.iter_mut().zip(f16) {
            pick.data = data;
        }
    }
    lap("search");
    let mut model = layers::assemble(&base, &slots, chosen.iter());
    if let (Some(teacher), Some(ft), None) = (&teacher, finetune, &finetuned) {
        if matches!(options.bits, BitsChoice::Fixed(WeightFormat::Codebook { .. })) {
            finetuned = Some(tune(teacher, &model, samples, &ft, options.task, progress)?);
        }
    }
    let finetune_report = finetuned.map(|(tuned, report)| {
        model = tuned;
        report
    });
    progress("verify", 0, 1);
    let fidelity = eval.measure(&model, None, true)?;
    progress("verify", 1, 1);
    let layer_reports: Vec<LayerReport> = infos
        .iter()
        .zip(&chosen)
        .zip(&predicted)
        .map(|((info, cand), pred)| {
            let data = &cand.data;
            let rel = if matches!(data, TensorData::F16(_)) {
                crate::codebook::relative_error(&info.w, info.rows(), data)
            } else {
                cand.rel_error
            };
            let mut r = weights::layer_report(&info.name, &info.shape, &info.w, data, rel);
            r.out_error = cand.out_error.map(|e| e as f32);
            r.bias_corrected = cand.bias_shift.is_some();
            r.predicted_distortion = *pred;
            r
        })
        .collect();
    let total_bytes = model.constants.iter().map(|c| crate::codebook::data_bytes(&c.data)).sum();
    Ok(Compressed {
        model,
        report: Report {
            layers: layer_reports,
            onnx_bytes,
            total_bytes,
            fidelity: Some(fidelity),
            search,
            finetune: finetune_report,
        },
    })
}

/// [`finetune::finetune`] of `model` against `teacher`, reporting progress as "fine-tune".
fn tune(
    teacher: &ir::Model,
    model: &ir::Model,
    samples: &[CalibSample],
    options: &FinetuneOptions,
    task: Option<TaskCheck>,
    progress: Progress<'_>,
) -> Result<(ir::Model, FinetuneReport), CalibError> {
    let report = |done: usize, total: usize| progress("fine-tune", done, total);
    // Every third sample is held out of training, so the verification that follows (on all
    // samples) also measures inputs the tuning never saw.
    let train: Vec<CalibSample> = if samples.len() >= 3 {
        samples.iter().enumerate().filter(|(i, _)| i % 3 != 2).map(|(_, s)| s.clone()).collect()
    } else {
        samples.to_vec()
    };
    let emphasis = |outputs: &[Tensor]| task.map_or_else(Vec::new, |t| t.emphasis(outputs));
    Ok(finetune::finetune(teacher, model, &train, options, Some(&emphasis), &report)?)
}

/// Factors by which the fine-tuning search relaxes the distortion floor `1 - min_fidelity`
/// before tuning, most aggressive first; the first whose tuned model passes the real floor wins.
pub const FINETUNE_RELAX: [f64; 3] = [20.0, 8.0, 3.0];

/// The allocation search with fine-tuning: for each factor of [`FINETUNE_RELAX`], the search
/// runs at the relaxed floor, the allocation is fine-tuned and verified at the real floor; the first that passes and is smaller than `plain` (the
/// untuned search's result) is kept. Otherwise `plain` is tuned too, and kept tuned if it
/// still passes. Returns the choice, its predictions, the search steps, the tuned model and
/// the tuning report.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn relaxed_search(
    eval: &fidelity::Evaluator,
    teacher: &ir::Model,
    base: &ir::Model,
    slots: &Slots,
    cands: &[Vec<Candidate>],
    sens: &[alloc::Sensitivity],
    (min_fidelity, min_iou): (f64, f32),
    plain: (Vec<usize>, Vec<Option<f64>>, Vec<SearchStep>),
    samples: &[CalibSample],
    options: &FinetuneOptions,
    progress: Progress<'_>,
) -> Result<(Vec<usize>, Vec<Option<f64>>, Vec<SearchStep>, ir::Model, FinetuneReport), CalibError> {
    let size = |choice: &[usize]| -> usize { choice.iter().zip(cands).map(|(&i, c)| c[i].size).sum() };
    let assemble =
        |choice: &[usize]| layers::assemble(base, slots, choice.iter().zip(cands).map(|(&i, c)| &c[i]));
    // The samples held out of training make the verification a test on unseen inputs too.
    let accept = |f: &Fidelity| f.passes(min_fidelity);
    let (plain_choice, plain_pred, mut steps) = plain;
    let plain_bytes = size(&plain_choice);
    for factor in FINETUNE_RELAX {
        let floor = 1.0 - (1.0 - min_fidelity) * factor;
        let (choice, pred, more) = auto_search(eval, base, slots, cands, sens, floor, min_iou, progress)?;
        steps.extend(more);
        let bytes = size(&choice);
        if bytes >= plain_bytes {
            log::info!("fine-tune search at floor {floor:.6}: {bytes} bytes, no smaller than {plain_bytes}");
            continue;
        }
        let (tuned, report) = tune(teacher, &assemble(&choice), samples, options, eval.task(), progress)?;
        let fidelity = eval.measure(&tuned, None, true)?;
        let passed = accept(&fidelity);
        log::info!(
            "fine-tune search at floor {floor:.6}: {bytes} bytes, tuned cosine {:.6}, {} {}",
            fidelity.cosine,
            if passed { "pass" } else { "fail" },
            fidelity
                .task
                .as_ref()
                .map_or(String::new(), |t| format!("(min IoU {:.3}) {}", t.min_iou, t.detail))
        );
        steps.push(SearchStep { budget: f64::NAN, predicted: f64::NAN, bytes, fidelity, passed });
        if passed {
            return Ok((choice, pred, steps, tuned, report));
        }
    }
    let plain_model = assemble(&plain_choice);
    let (tuned, report) = tune(teacher, &plain_model, samples, options, eval.task(), progress)?;
    let fidelity = eval.measure(&tuned, None, true)?;
    let keep = fidelity.passes(min_fidelity);
    steps.push(SearchStep {
        budget: f64::NAN,
        predicted: f64::NAN,
        bytes: plain_bytes,
        fidelity,
        passed: keep,
    });
    if keep {
        Ok((plain_choice, plain_pred, steps, tuned, report))
    } else {
        log::warn!(
            "the tuned model failed the floor (cosine {:.6}{}); keeping the untuned allocation",
            steps.last().map_or(0.0, |s| s.fidelity.cosine),
            steps
                .last()
                .and_then(|s| s.fidelity.task.as_ref())
                .map_or(String::new(), |t| format!(", {}", t.detail))
        );
        let untouched =
            FinetuneReport { initial_loss: report.initial_loss, final_loss: report.initial_loss, ..report };
        Ok((plain_choice, plain_pred, steps, plain_model, untouched))
    }
}

/// Every weight as f16 (f32 when a value overflows f16).
fn weights_f16(infos: &[LayerInfo]) -> Vec<TensorData> {
    infos
        .iter()
        .map(|info| {
            let h: Vec<half::f16> = info.w.iter().map(|&v| half::f16::from_f32(v)).collect();
            if info.shape.len() >= 2 && h.iter().all(|v| v.is_finite()) {
                TensorData::F16(h)
            } else {
                TensorData::F32(info.w.clone())
            }
        })
        .collect()
}

/// Rejects option values no search can satisfy.
fn check_options(options: &CalibOptions) -> Result<(), CalibError> {
    match options.bits {
        BitsChoice::Auto { min_fidelity } if !(min_fidelity > -1.0 && min_fidelity <= 1.0) => {
            Err(CalibError::Options(format!("minimum fidelity must be in (-1, 1], got {min_fidelity}")))
        }
        _ if !(options.min_iou > 0.0 && options.min_iou <= 1.0) => {
            Err(CalibError::Options(format!("minimum IoU must be in (0, 1], got {}", options.min_iou)))
        }
        BitsChoice::Fixed(WeightFormat::Codebook { bits }) if !(1..=8).contains(&bits) => {
            Err(CalibError::Options(format!("codebook bits must be 1..=8, got {bits}")))
        }
        BitsChoice::Fixed(WeightFormat::F32 | WeightFormat::F16) if options.finetune.is_some() => {
            Err(CalibError::Options("fine-tuning trains codebooks: use codebook bits (1..=8) or auto".into()))
        }
        _ if options.finetune.is_some_and(|f| f.steps == 0 || !(f.rel_lr > 0.0 && f.rel_lr.is_finite())) => {
            Err(CalibError::Options("fine-tuning needs at least one step and a positive step size".into()))
        }
        _ => Ok(()),
    }
}

/// Checks every sample feeds exactly the graph inputs, with f32 tensors of the declared shapes.
pub fn check_samples(inputs: &[ModelInput], samples: &[CalibSample]) -> Result<(), CalibError> {
    if samples.is_empty() {
        return Err(CalibError::NoSamples);
    }
    for (index, s) in samples.iter().enumerate() {
        let bad = |msg: String| CalibError::Sample { index, label: s.label.clone(), msg };
        for (name, _) in &s.inputs {
            if !inputs.iter().any(|i| &i.name == name) {
                return Err(bad(format!("the model has no input named '{name}'")));
            }
        }
        for input in inputs {
            let mut found = s.inputs.iter().filter(|(n, _)| *n == input.name);
            let Some((_, t)) = found.next() else {
                return Err(bad(format!("no tensor for model input '{}'", input.name)));
            };
            if found.next().is_some() {
                return Err(bad(format!("two tensors for model input '{}'", input.name)));
            }
            let Some(data) = t.as_f32() else {
                return Err(bad(format!("input '{}' must be f32", input.name)));
            };
            if data.len() != t.numel() || data.is_empty() {
                return Err(bad(format!(
                    "input '{}' holds {} values for shape {:?}",
                    input.name,
                    data.len(),
                    t.shape
                )));
            }
            if let Some(dims) = &input.shape {
                let fits = dims.len() == t.shape.len()
                    && dims.iter().zip(&t.shape).all(|(d, &e)| d.is_none_or(|d| d == e));
                if !fits {
                    let want: Vec<String> =
                        dims.iter().map(|d| d.map_or("?".to_string(), |d| d.to_string())).collect();
                    return Err(bad(format!(
                        "input '{}' has shape {:?}, the model expects [{}]",
                        input.name,
                        t.shape,
                        want.join(", ")
                    )));
                }
            }
            if data.iter().any(|v| !v.is_finite()) {
                return Err(bad(format!("input '{}' holds non-finite values", input.name)));
            }
        }
    }
    Ok(())
}

/// Per layer, its [`alloc::Sensitivity`]: the layer alone quantised at [`PROBE_BITS`] widths
/// (the nearest available candidates), `1 - cos` of the outputs measured on the first
/// [`PROBE_SAMPLES`] samples. Layers with no codebook candidate get none.
fn probe_sensitivities(
    eval: &fidelity::Evaluator,
    base: &ir::Model,
    slots: &Slots,
    cands: &[Vec<Candidate>],
    progress: Progress<'_>,
) -> Result<Vec<alloc::Sensitivity>, CalibError> {
    let probe_samples: Vec<usize> = (0..eval.samples().min(PROBE_SAMPLES)).collect();
    let mut probes: Vec<(usize, usize)> = Vec::new();
    for (l, c) in cands.iter().enumerate() {
        let mut picked: Vec<usize> = PROBE_BITS
            .iter()
            .filter_map(|&want| {
                // The probe width, or the narrowest available one above it, or the widest below.
                let coded = || c.iter().enumerate().filter_map(|(i, c)| c.bits.map(|b| (i, b)));
                let above = coded().filter(|&(_, b)| b >= want).min_by_key(|&(_, b)| b);
                above.or_else(|| coded().max_by_key(|&(_, b)| b)).map(|(i, _)| i)
            })
            .collect();
        picked.dedup();
        probes.extend(picked.into_iter().map(|i| (l, i)));
    }
    let done = AtomicUsize::new(0);
    progress("probe", 0, probes.len());
    let measured: Vec<f64> = probes
        .par_iter()
        .map(|&(l, i)| {
            let mut model = base.clone();
            layers::place(&mut model, slots, l, &cands[l][i]);
            let fid = eval.measure(&model, Some(&probe_samples), false)?;
            progress("probe", done.fetch_add(1, Ordering::Relaxed) + 1, probes.len());
            Ok((1.0 - fid.cosine).max(0.0))
        })
        .collect::<Result<_, CalibError>>()?;
    let mut points: Vec<Vec<(f64, f64)>> = vec![Vec::new(); cands.len()];
    for (&(l, i), &d) in probes.iter().zip(&measured) {
        let c = &cands[l][i];
        log::debug!("probe {} at {:?} bits: 1-cos {d:.3e} at error {:.3e}", l, c.bits, c.error());
        points[l].push((c.error(), d));
    }
    Ok(points.into_iter().map(alloc::Sensitivity::new).collect())
}

/// Allocation under a predicted budget, verified on the whole calibration set, with the budget
/// scaled up while the model passes and down while it fails. Returns the chosen candidate per
/// layer, the predicted distortion per layer and the search steps.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn auto_search(
    eval: &fidelity::Evaluator,
    base: &ir::Model,
    slots: &Slots,
    cands: &[Vec<Candidate>],
    sens: &[alloc::Sensitivity],
    min_fidelity: f64,
    min_iou: f32,
    progress: Progress<'_>,
) -> Result<(Vec<usize>, Vec<Option<f64>>, Vec<SearchStep>), CalibError> {
    let tables: Vec<Vec<alloc::Choice>> = cands
        .iter()
        .zip(sens)
        .map(|(c, s)| {
            c.iter()
                .map(|c| {
                    // A layer without a measurement keeps only its lossless choices affordable;
                    // pruned candidates are left to the verified pruning pass.
                    let d = s.predict(c.error()).unwrap_or(if c.error() > 0.0 { f64::INFINITY } else { 0.0 });
                    let d = if c.prune > 0.0 { f64::INFINITY } else { d };
                    alloc::Choice { bytes: c.size as f64, distortion: d }
                })
                .collect()
        })
        .collect();
    let budget = (1.0 - min_fidelity).max(0.0);
    let mut steps: Vec<SearchStep> = Vec::new();
    let mut tried: Vec<(Vec<usize>, bool)> = Vec::new();
    // (scale, choice) of the smallest passing allocation, and the smallest failing scale.
    let mut best: Option<(f64, Vec<usize>, usize)> = None;
    let mut fail_scale: Option<f64> = None;
    let mut scale = 1.0f64;
    for step in 0..MAX_VERIFY {
        progress("verify", step, MAX_VERIFY);
        let choice = alloc::allocate(&tables, budget * scale);
        let bytes: usize = choice.iter().zip(cands).map(|(&i, c)| c[i].size).sum();
        let passed = match tried.iter().find(|(c, _)| *c == choice) {
            Some(&(_, passed)) => passed,
            None => {
                let model = layers::assemble(base, slots, choice.iter().zip(cands).map(|(&i, c)| &c[i]));
                let fidelity = eval.measure(&model, None, true)?;
                let passed = fidelity.passes(min_fidelity);
                let predicted = alloc::total_distortion(&tables, &choice);
                log::info!(
                    "budget {:.3e}: predicted 1-cos {predicted:.3e}, {bytes} bytes, cosine {:.6}, {} {}",
                    budget * scale,
                    fidelity.cosine,
                    if passed { "pass" } else { "fail" },
                    fidelity.task.as_ref().map_or("", |t| t.detail.as_str())
                );
                steps.push(SearchStep { budget: budget * scale, predicted, bytes, fidelity, passed });
                tried.push((choice.clone(), passed));
                passed
            }
        };
        if passed {
            if best.as_ref().is_none_or(|b| bytes <= b.2) {
                best = Some((scale, choice.clone(), bytes));
            }
        } else {
            fail_scale = Some(fail_scale.map_or(scale, |f: f64| f.min(scale)));
        }
        let lo = best.as_ref().map(|b| b.0);
        scale = match (lo, fail_scale) {
            (Some(lo), Some(hi)) if lo >= hi || hi / lo < 1.15 => break,
            (Some(lo), Some(hi)) => (lo * hi).sqrt(),
            (Some(_), None) if alloc::is_smallest(&tables, &choice) => break,
            (Some(lo), None) => lo * 4.0,
            (None, Some(hi)) if hi < 1e-6 => break,
            (None, Some(hi)) => hi / 4.0,
            (None, None) => break,
        };
    }
    // The additive model can misjudge strongly interacting layers: never return more than
    // the best uniform width that passes (tried from 8 bits down while they pass).
    for bits in (1..=8u8).rev() {
        let choice: Vec<usize> =
            cands.iter().map(|c| c.iter().position(|c| c.bits == Some(bits)).unwrap_or(0)).collect();
        let bytes: usize = choice.iter().zip(cands).map(|(&i, c)| c[i].size).sum();
        if best.as_ref().is_some_and(|b| b.2 <= bytes) {
            continue;
        }
        let model = layers::assemble(base, slots, choice.iter().zip(cands).map(|(&i, c)| &c[i]));
        let fidelity = eval.measure(&model, None, true)?;
        let passed = fidelity.passes(min_fidelity);
        log::info!(
            "uniform {bits}-bit: {bytes} bytes, cosine {:.6}, {}",
            fidelity.cosine,
            if passed { "pass" } else { "fail" }
        );
        let predicted = alloc::total_distortion(&tables, &choice);
        steps.push(SearchStep { budget: f64::NAN, predicted, bytes, fidelity, passed });
        if !passed {
            break;
        }
        best = Some((0.0, choice, bytes));
    }
    progress("verify", MAX_VERIFY, MAX_VERIFY);
    let choice = match best {
        Some((_, mut c, _)) => {
            refine(eval, base, slots, cands, &mut c, min_fidelity, min_iou, &mut steps, progress)?;
            c
        }
        None => {
            log::warn!("no allocation met the fidelity floor {min_fidelity}; keeping every weight f32");
            vec![0; cands.len()]
        }
    };
    let predicted = choice.iter().zip(&tables).map(|(&i, t)| Some(t[i].distortion)).collect();
    Ok((choice, predicted, steps))
}

/// Measured refinement of a passing allocation: repeatedly tries the single-layer move to a
/// smaller candidate that saves the most bytes (among layers not yet refused), verifies the
/// whole model, and keeps the move when it still passes (with [`REFINE_IOU_MARGIN`] on the
/// task check). At most [`REFINE_TRIALS`] trials; a
/// layer whose move fails is not tried again.
#[allow(clippy::too_many_arguments)]
fn refine(
    eval: &fidelity::Evaluator,
    base: &ir::Model,
    slots: &Slots,
    cands: &[Vec<Candidate>],
    choice: &mut [usize],
    min_fidelity: f64,
    min_iou: f32,
    steps: &mut Vec<SearchStep>,
    progress: Progress<'_>,
) -> Result<(), CalibError> {
    // Single moves push layers to the edge of the calibration set; the task check keeps a
    // margin (up to what the starting point has) so detections on other inputs hold up.
    let start = layers::assemble(base, slots, choice.iter().zip(cands).map(|(&i, c)| &c[i]));
    let start_iou = eval.measure(&start, None, true)?.task.map(|t| t.min_iou);
    let floor_iou = start_iou.map(|s| s.min(min_iou + REFINE_IOU_MARGIN));
    let accept = |f: &Fidelity| {
        f.passes(min_fidelity) && f.task.as_ref().zip(floor_iou).is_none_or(|(t, floor)| t.min_iou >= floor)
    };
    // Verifies `choice` with layer `l` moved to candidate `i`, logs the outcome after `what`,
    // records the step and says whether it passed (the caller keeps or drops the move).
    let mut try_move = |choice: &[usize], l: usize, i: usize, what: &str| -> Result<bool, CalibError> {
        let mut trial = choice.to_vec();
        trial[l] = i;
        let model = layers::assemble(base, slots, trial.iter().zip(cands).map(|(&i, c)| &c[i]));
        let fidelity = eval.measure(&model, None, true)?;
        let passed = accept(&fidelity);
        let verdict = if passed { "keep" } else { "undo" };
        log::info!(
            "{what} layer {l} at {:?} bits: cosine {:.6}, {verdict}",
            cands[l][i].bits,
            fidelity.cosine
        );
        let bytes = trial.iter().zip(cands).map(|(&i, c)| c[i].size).sum();
        steps.push(SearchStep { budget: f64::NAN, predicted: f64::NAN, bytes, fidelity, passed });
        Ok(passed)
    };
    let mut frozen = vec![false; cands.len()];
    for trial in 0..REFINE_TRIALS {
        progress("refine", trial, REFINE_TRIALS);
        // Per layer, the next smaller candidate: the largest one below the current size.
        let next = |l: usize| -> Option<usize> {
            let cur = cands[l][choice[l]].size;
            (0..cands[l].len())
                .filter(|&i| cands[l][i].size < cur && cands[l][i].prune == 0.0)
                .max_by_key(|&i| (cands[l][i].size, usize::MAX - i))
        };
        let best = (0..cands.len())
            .filter(|&l| !frozen[l])
            .filter_map(|l| next(l).map(|i| (l, i, cands[l][choice[l]].size - cands[l][i].size)))
            .max_by_key(|&(l, _, saved)| (saved, usize::MAX - l));
        let Some((l, i, saved)) = best else { break };
        if try_move(choice, l, i, &format!("refine (-{saved} bytes)"))? {
            choice[l] = i;
        } else {
            frozen[l] = true;
        }
    }
    // Pruning last: per layer, largest first, its pruned candidate at the chosen width.
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by_key(|&l| (std::cmp::Reverse(cands[l][choice[l]].size), l));
    let mut trials = 0;
    for l in order {
        let cur = &cands[l][choice[l]];
        let Some(i) = (0..cands[l].len()).find(|&i| {
            cands[l][i].prune > 0.0 && cands[l][i].bits == cur.bits && cands[l][i].size < cur.size
        }) else {
            continue;
        };
        if trials == PRUNE_TRIALS {
            break;
        }
        trials += 1;
        if try_move(choice, l, i, "prune")? {
            choice[l] = i;
        }
    }
    progress("refine", REFINE_TRIALS, REFINE_TRIALS);
    Ok(())
}
