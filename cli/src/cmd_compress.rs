//! `pith compress`: ONNX in, `.pith` out, with a per-layer table; optionally calibration data
//! (`--calib`), per-layer widths under a fidelity floor (`--bits auto`), Huffman-coded indices
//! (`--entropy huffman`) and a JSON report (`--report`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use pith_compress::calib::{self, BitsChoice, CalibOptions, CalibSample, ModelInput, Prepared, TaskCheck};
use pith_compress::finetune::FinetuneOptions;
use pith_compress::{CompressOptions, Compressed, WeightFormat};
use pith_format::{Entropy, PithFile, WriteOptions};
use pith_runtime::tasks::{blazeface, ctc, db, ImagePreprocess, RgbImage};
use serde_json::{json, Value};

use crate::image_args::ImageArgs;
use crate::{augment, imageio, npy};

/// `--bits`: a fixed weight format or `auto`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bits {
    /// One format for every weight.
    Fixed(WeightFormat),
    /// Per-layer widths chosen on calibration data.
    Auto,
}

/// `--preprocess`: how calibration images become model inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preprocess {
    /// MediaPipe BlazeFace (short range, full range or back camera, by the input's size):
    /// letterbox to 128, 192 or 256 square, [-1, 1]; task check: same faces.
    Blazeface,
    /// PP-OCR det: resize (longer side at most 480) to multiples of 32, ImageNet normalisation;
    /// task check: same text boxes.
    PpocrDet,
    /// PP-OCR rec: a text line scaled to 48 px high (at least 320 wide, zero-padded on the
    /// right), [-1, 1], BGR; task check: the same class at every time step (`classes`).
    PpocrRec,
}

/// `--task`: the check every calibration sample's detections must pass besides the cosine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskArg {
    /// The same faces: BlazeFace outputs (short range, full range or back camera: a 128, 192 or
    /// 256 square input).
    Faces,
    /// The same text boxes: a DB text detector's probability map as the first output (any size).
    Text,
    /// The same top class in every row of a classifier's [N, classes] outputs, or at every time
    /// step of a CTC recognizer's [N, T, classes] (near ties, within 0.05, may change).
    Classes,
    /// The same greedy CTC reading of every line: a text recognizer's [1, T, classes] first
    /// output, class 0 the blank.
    Reading,
    /// The output cosine only.
    None,
}

impl Args {
    /// The task check: `--task`, or else the preset's (`--preprocess`).
    pub fn task_check(&self) -> Option<TaskCheck> {
        match (self.task, self.preprocess) {
            (Some(TaskArg::Faces), _) | (None, Some(Preprocess::Blazeface)) => Some(TaskCheck::BlazeFace),
            (Some(TaskArg::Text), _) | (None, Some(Preprocess::PpocrDet)) => Some(TaskCheck::Db),
            (Some(TaskArg::Classes), _) | (None, Some(Preprocess::PpocrRec)) => Some(TaskCheck::Classes),
            (Some(TaskArg::Reading), _) => Some(TaskCheck::Reading),
            (Some(TaskArg::None), _) | (None, None) => None,
        }
    }
}

/// `--entropy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EntropyArg {
    /// Packed indices, mapped in place.
    None,
    /// Canonical Huffman codes per tensor, decoded at load.
    Huffman,
}

/// Default of `--min-fidelity`: the output cosine floor on the calibration set.
pub const DEFAULT_MIN_FIDELITY: f64 = 0.999;

/// Longer side of PP-OCR calibration images (smaller than inference's 960 keeps compression fast).
pub const PPOCR_CALIB_SIDE: usize = 480;

/// Everything `pith compress` was asked for.
#[derive(Debug, Clone)]
pub struct Args {
    /// `--bits`.
    pub bits: Bits,
    /// `--calib`.
    pub calib: Option<PathBuf>,
    /// `--preprocess`.
    pub preprocess: Option<Preprocess>,
    /// Explicit image preprocessing (`--input-size`, `--mean`, …), for models without a preset.
    pub image: ImageArgs,
    /// `--task` (`None`: the preset's check, if any).
    pub task: Option<TaskArg>,
    /// `--min-fidelity`.
    pub min_fidelity: f64,
    /// `--min-iou`.
    pub min_iou: f32,
    /// Not `--no-data-aware`.
    pub data_aware: bool,
    /// Not `--no-bias-correction`.
    pub bias_correction: bool,
    /// `--entropy`.
    pub entropy: EntropyArg,
    /// `--finetune` steps (0 = off).
    pub finetune: usize,
    /// `--finetune-reassign`: fine-tuning also moves weights between centroids.
    pub finetune_reassign: bool,
    /// `--augment`: variants per calibration image (0 = off).
    pub augment: usize,
    /// `--report`.
    pub report: Option<PathBuf>,
    /// `--plain-layout`: format 1.0 / 1.1 layout instead of the compact 1.2 one.
    pub plain_layout: bool,
    /// `--reproducible`: calibrate on the portable kernels, for the same bytes on every machine.
    pub reproducible: bool,
    /// `--prop KEY=VALUE` / `KEY=@FILE` entries, as given.
    pub props: Vec<String>,
    /// Not `--no-onnx-props`: keep the ONNX model's `metadata_props`.
    pub keep_onnx_props: bool,
}

/// Parses `--prop` entries into properties: `KEY=VALUE`, or `KEY=@FILE` for a file's UTF-8 text.
/// A later entry of the same key wins.
pub fn parse_props(entries: &[String]) -> Result<BTreeMap<String, String>> {
    let mut props = BTreeMap::new();
    for entry in entries {
        let Some((key, value)) = entry.split_once('=') else {
            bail!("--prop {entry:?}: expected KEY=VALUE or KEY=@FILE");
        };
        if key.is_empty() {
            bail!("--prop {entry:?}: the key is empty");
        }
        let value = match value.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("--prop {key}: reading {path} (UTF-8 text)"))?,
            None => value.to_string(),
        };
        props.insert(key.to_string(), value);
    }
    Ok(props)
}

/// Serialises `model` in the compact layout (format 1.2: deflated metadata, 16-byte blobs) or,
/// with `plain`, the 1.0 / 1.1 layout older readers read.
pub fn serialise(model: &pith_format::ir::Model, entropy: Entropy, plain: bool) -> Result<Vec<u8>> {
    let options = WriteOptions { entropy, compact: !plain };
    pith_format::write_with(model, &options).context("serialising the .pith file")
}

/// Parses `--bits`: `auto`, or what [`parse_bits`] accepts.
pub fn parse_bits_choice(s: &str) -> Result<Bits, String> {
    if s == "auto" {
        return Ok(Bits::Auto);
    }
    parse_bits(s).map(Bits::Fixed).map_err(|e| format!("{e}, or auto"))
}

/// Parses `--bits`: `1`..`8`, `f16` or `f32`.
pub fn parse_bits(s: &str) -> Result<WeightFormat, String> {
    match s {
        "f32" => Ok(WeightFormat::F32),
        "f16" => Ok(WeightFormat::F16),
        _ => match s.parse::<u8>() {
            Ok(b @ 1..=8) => Ok(WeightFormat::Codebook { bits: b }),
            _ => Err(format!("'{s}' is not a weight format: use 1..8, f16 or f32")),
        },
    }
}

/// Compresses `input` into `.pith` bytes; `quiet` hides the progress bar.
pub fn compress_file(input: &Path, weights: WeightFormat, quiet: bool) -> Result<(Compressed, Vec<u8>)> {
    let onnx = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let options = CompressOptions { weights };
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{spinner} compressing [{bar:30}] {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let compressed =
        pith_compress::compress_onnx_with_progress(&onnx, &options, &mut |done, total, layer| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(layer.to_string());
        })
        .with_context(|| format!("compressing {}", input.display()))?;
    bar.finish_and_clear();
    let bytes = serialise(&compressed.model, Entropy::None, false)?;
    Ok((compressed, bytes))
}

/// Human-readable byte count.
pub fn human_bytes(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{:.2} MiB", n as f64 / (1 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// Prints the per-layer table and totals.
pub fn print_report(compressed: &Compressed, file_bytes: usize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let report = &compressed.report;
    writeln!(
        out,
        "{:<48} {:>18} {:>16} {:>10} {:>10} {:>6} {:>10} {:>10}",
        "layer", "shape", "encoding", "bytes", "rel.err", "sparse", "out.err", "pred.1-cos"
    )?;
    for l in &report.layers {
        let shape = l.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x");
        let mut name = l.name.clone();
        if name.len() > 47 {
            name = format!("…{}", &name[name.len() - 46..]);
        }
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2e}"));
        writeln!(
            out,
            "{:<48} {:>18} {:>16} {:>10} {:>10.2e} {:>6.3} {:>10} {:>10}",
            name,
            shape,
            l.encoding,
            l.bytes,
            l.rel_error,
            l.sparsity,
            opt(l.out_error.map(f64::from)),
            opt(l.predicted_distortion)
        )?;
    }
    let ratio = report.onnx_bytes as f64 / file_bytes.max(1) as f64;
    writeln!(
        out,
        "total: {} (.pith) vs {} (ONNX): {:.2}x smaller; weights {} -> {}",
        human_bytes(file_bytes),
        human_bytes(report.onnx_bytes),
        ratio,
        human_bytes(report.layers.iter().map(|l| l.f32_bytes).sum()),
        human_bytes(report.layers.iter().map(|l| l.bytes).sum()),
    )?;
    let mut histogram: BTreeMap<String, usize> = BTreeMap::new();
    for l in &report.layers {
        *histogram.entry(l.bits.map_or_else(|| l.encoding.clone(), |b| format!("{b}-bit"))).or_default() += 1;
    }
    let hist: Vec<String> = histogram.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    writeln!(out, "layers by width: {}", hist.join(", "))?;
    let corrected = report.layers.iter().filter(|l| l.bias_corrected).count();
    if corrected > 0 {
        writeln!(out, "bias correction in {corrected} of {} layer(s)", report.layers.len())?;
    }
    let pruned: Vec<_> = report.layers.iter().filter(|l| l.sparsity > 0.0).collect();
    if !pruned.is_empty() {
        // What a kernel that skips all-zero blocks could skip: with unstructured pruning, a
        // small fraction of the zeros.
        let weights = |l: &&pith_compress::LayerReport| (l.f32_bytes / 4) as f64;
        let total: f64 = pruned.iter().map(weights).sum::<f64>().max(1.0);
        let zeros: f64 = pruned.iter().map(|l| weights(l) * f64::from(l.sparsity)).sum();
        let blocks: f64 = pruned.iter().map(|l| weights(l) * f64::from(l.zero_blocks)).sum();
        writeln!(
            out,
            "zeros in {} layer(s): {:.1}% of their weights, {:.2}% of their {}-weight blocks all zero",
            pruned.len(),
            100.0 * zeros / total,
            100.0 * blocks / total,
            pith_compress::ZERO_BLOCK
        )?;
    }
    Ok(())
}

/// How calibration images become inputs: a preset, or the explicit flags' recipe.
enum ImageRecipe {
    /// `--preprocess`.
    Preset(Preprocess),
    /// `--input-size`, `--mean`, … resolved against the model input.
    Explicit(ImagePreprocess),
}

/// Loads the calibration folder: `.npy` files named `<input name>.<key>.npy` (files sharing a
/// key form one sample), and PNG/JPEG images through the preset `preprocess` or else the explicit
/// recipe `image` (resolved against the model input's declared shape), each followed by `augment`
/// deterministic variants ([`augment::variants`]; images are ordered by [`augment::interleave`]
/// so fine-tuning's held-out samples are whole images). Files are visited in name order, so the
/// samples (and the compressed model) do not depend on the directory order.
pub fn load_calibration(
    dir: &Path,
    inputs: &[ModelInput],
    preprocess: Option<Preprocess>,
    image: &ImageArgs,
    augment: usize,
) -> Result<Vec<CalibSample>> {
    let mut files = Vec::new();
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("listing calibration folder {}", dir.display()))?
    {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    let mut npys: BTreeMap<String, Vec<(String, pith_runtime::Tensor)>> = BTreeMap::new();
    let mut groups: Vec<Vec<CalibSample>> = Vec::new();
    for path in files {
        let file = path.file_name().and_then(|f| f.to_str()).unwrap_or_default().to_string();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
        match ext.as_str() {
            "npy" => {
                let input = inputs
                    .iter()
                    .filter(|i| file.starts_with(&format!("{}.", i.name)))
                    .max_by_key(|i| i.name.len())
                    .with_context(|| {
                        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
                        format!(
                            "{}: a calibration .npy must be named <input name>.<anything>.npy (inputs: {})",
                            path.display(),
                            names.join(", ")
                        )
                    })?;
                let key = file[input.name.len() + 1..file.len() - 4].to_string();
                let tensor = npy::read(&path)?;
                npys.entry(key).or_default().push((input.name.clone(), tensor));
            }
            "png" | "jpg" | "jpeg" => {
                if preprocess.is_none() && !image.is_set() {
                    bail!(
                        "{}: calibration images need --preprocess (blazeface, ppocr-det or ppocr-rec) or explicit \
                         preprocessing flags (--input-size, --fit, --mean, --std, --layout, --channels)",
                        path.display()
                    );
                }
                if inputs.len() != 1 {
                    bail!(
                        "{}: images can only feed a model with one input; this one has {}",
                        path.display(),
                        inputs.len()
                    );
                }
                let recipe = match preprocess {
                    Some(preset) => ImageRecipe::Preset(preset),
                    None => {
                        ImageRecipe::Explicit(image.resolve(&inputs[0].name, inputs[0].shape.as_deref())?)
                    }
                };
                let img = imageio::load(&path)?;
                let prep = |img: &RgbImage| -> Result<pith_runtime::Tensor> {
                    Ok(match &recipe {
                        ImageRecipe::Preset(Preprocess::Blazeface) => {
                            let dims = inputs[0].shape.as_deref().unwrap_or(&[]);
                            blazeface::preprocess(img, blazeface::FaceModel::for_input(dims)?).0
                        }
                        ImageRecipe::Preset(Preprocess::PpocrRec) => {
                            ctc::preprocess(img, &ctc::RecOptions::default())
                                .with_context(|| format!("preprocessing {}", path.display()))?
                        }
                        ImageRecipe::Preset(Preprocess::PpocrDet) => {
                            let opts =
                                db::DbOptions { limit_side_len: PPOCR_CALIB_SIDE, ..Default::default() };
                            db::preprocess(img, &opts).0
                        }
                        ImageRecipe::Explicit(recipe) => {
                            recipe.apply(img).with_context(|| format!("preprocessing {}", path.display()))?
                        }
                    })
                };
                let mut group = vec![CalibSample {
                    label: file.clone(),
                    inputs: vec![(inputs[0].name.clone(), prep(&img)?)],
                }];
                for (suffix, variant) in augment::variants(&img, &file, augment) {
                    group.push(CalibSample {
                        label: format!("{file}{suffix}"),
                        inputs: vec![(inputs[0].name.clone(), prep(&variant)?)],
                    });
                }
                groups.push(group);
            }
            _ => log::warn!("calibration: skipping {} (not .npy, .png or .jpg)", path.display()),
        }
    }
    let mut samples = augment::interleave(groups);
    for (key, inputs) in npys {
        samples.push(CalibSample { label: format!("{key}.npy"), inputs });
    }
    if samples.is_empty() {
        bail!("calibration folder {} holds no .npy files or images", dir.display());
    }
    Ok(samples)
}

/// Compresses `input` with `--bits auto` on the calibration folder `calib` (the demo's path):
/// returns the result and its packed `.pith` bytes.
pub fn compress_auto_file(
    input: &Path,
    calib: &Path,
    preprocess: Preprocess,
    min_iou: f32,
) -> Result<(Compressed, Vec<u8>)> {
    let onnx = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let args = Args {
        bits: Bits::Auto,
        calib: Some(calib.to_path_buf()),
        preprocess: Some(preprocess),
        image: ImageArgs::default(),
        task: None,
        min_fidelity: DEFAULT_MIN_FIDELITY,
        min_iou,
        data_aware: true,
        bias_correction: true,
        entropy: EntropyArg::None,
        finetune: 0,
        finetune_reassign: false,
        augment: 0,
        report: None,
        plain_layout: false,
        reproducible: false,
        props: Vec::new(),
        keep_onnx_props: true,
    };
    let compressed = compress_calibrated(&onnx, &args, calib)
        .with_context(|| format!("compressing {}", input.display()))?;
    let bytes = serialise(&compressed.model, Entropy::None, false)?;
    Ok((compressed, bytes))
}

/// Compresses with calibration data; the progress bar names the stage.
fn compress_calibrated(onnx: &[u8], args: &Args, dir: &Path) -> Result<Compressed> {
    let prepared = Prepared::new(onnx).context("importing the model")?;
    let samples = load_calibration(dir, &prepared.inputs(), args.preprocess, &args.image, args.augment)?;
    let options = CalibOptions {
        bits: match args.bits {
            Bits::Fixed(f) => BitsChoice::Fixed(f),
            Bits::Auto => BitsChoice::Auto { min_fidelity: args.min_fidelity },
        },
        data_aware: args.data_aware,
        bias_correction: args.bias_correction,
        task: args.task_check(),
        min_iou: args.min_iou,
        entropy: args.entropy == EntropyArg::Huffman,
        finetune: (args.finetune > 0).then(|| FinetuneOptions {
            steps: args.finetune,
            reassign: args.finetune_reassign,
            ..FinetuneOptions::default()
        }),
        portable_kernels: args.reproducible,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:>9} [{bar:30}] {pos}/{len} {elapsed}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let progress = |stage: &str, done: usize, total: usize| {
        if bar.message() != stage {
            bar.set_message(stage.to_string());
            bar.set_length(total as u64);
        }
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    log::info!("calibration: {} samples from {}", samples.len(), dir.display());
    let out = calib::compress_calibrated(prepared, &samples, &options, &progress)
        .context("compressing with calibration data")?;
    bar.finish_and_clear();
    Ok(out)
}

/// Runs the command.
pub fn run_with(input: &Path, output: &Path, args: &Args) -> Result<()> {
    if output.exists() && output.is_dir() {
        bail!("{} is a directory", output.display());
    }
    if args.bits == Bits::Auto && args.calib.is_none() {
        bail!("--bits auto needs calibration data: pass --calib DIR");
    }
    if args.finetune > 0 && args.calib.is_none() {
        bail!("--finetune trains on calibration data: pass --calib DIR");
    }
    if args.finetune_reassign && args.finetune == 0 {
        bail!("--finetune-reassign applies to fine-tuning: pass --finetune STEPS");
    }
    if args.augment > 0 && args.calib.is_none() {
        bail!("--augment applies to calibration images: pass --calib DIR");
    }
    if args.preprocess.is_some() && args.calib.is_none() {
        bail!("--preprocess applies to calibration images: pass --calib DIR");
    }
    if args.task.is_some() && args.calib.is_none() {
        bail!("--task checks the calibration samples' detections: pass --calib DIR");
    }
    if args.image.is_set() && args.calib.is_none() {
        bail!("image preprocessing flags apply to calibration images: pass --calib DIR");
    }
    if let (Some(preset), true) = (args.preprocess, args.image.is_set()) {
        bail!(
            "--preprocess {} already fixes the image preprocessing: drop the explicit flags \
             (--input-size, --fit, --pad, --mean, --std, --layout, --channels) or the preset",
            clap::ValueEnum::to_possible_value(&preset)
                .map_or_else(String::new, |v| v.get_name().to_string())
        );
    }
    // Read before compressing, so a missing file fails at once.
    let props = parse_props(&args.props)?;
    let start = Instant::now();
    let mut compressed = match (&args.calib, args.bits) {
        (Some(dir), _) => {
            let onnx = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
            compress_calibrated(&onnx, args, dir)
                .with_context(|| format!("compressing {}", input.display()))?
        }
        (None, Bits::Fixed(w)) => compress_file(input, w, false)?.0,
        (None, Bits::Auto) => unreachable!("checked above"),
    };
    if !args.keep_onnx_props {
        compressed.model.props.clear();
    }
    compressed.model.props.extend(props);
    let packed = serialise(&compressed.model, Entropy::None, args.plain_layout)?;
    let huffman = match args.entropy {
        EntropyArg::Huffman => Some(serialise(&compressed.model, Entropy::Huffman, args.plain_layout)?),
        EntropyArg::None => None,
    };
    let bytes = huffman.as_ref().unwrap_or(&packed);
    std::fs::write(output, bytes).with_context(|| format!("writing {}", output.display()))?;
    let elapsed = start.elapsed().as_secs_f64();
    print_report(&compressed, packed.len())?;
    let mut out = std::io::stdout().lock();
    let mut decode = None;
    if let Some(h) = &huffman {
        let file = PithFile::from_bytes(h.clone()).context("reading the Huffman-coded file back")?;
        let stats = file.entropy_stats();
        let secs = stats.decode_time.as_secs_f64();
        let mbps = if secs > 0.0 { stats.decoded_bytes as f64 / secs / 1e6 } else { 0.0 };
        writeln!(
            out,
            "huffman: {} (.pith) vs {} packed: {:.2}x smaller than ONNX; {} tensors decoded at load in {:.2} ms ({mbps:.0} MB/s of packed indices)",
            human_bytes(h.len()),
            human_bytes(packed.len()),
            compressed.report.onnx_bytes as f64 / h.len().max(1) as f64,
            stats.huffman_tensors,
            secs * 1e3,
        )?;
        decode = Some((stats, mbps));
    }
    if let Some(f) = &compressed.report.fidelity {
        let task = match &f.task {
            Some(t) if t.passed && args.task_check() == Some(TaskCheck::Reading) => {
                format!(", task check passed (every reading kept, {} characters)", t.detections)
            }
            Some(t) if t.passed && args.task_check() == Some(TaskCheck::Classes) => {
                format!(
                    ", task check passed ({} class decisions kept; {} near ties)",
                    t.detections, t.borderline
                )
            }
            Some(t) if t.passed => {
                format!(
                    ", task check passed ({} detections, min IoU {:.3}; {} borderline)",
                    t.detections, t.min_iou, t.borderline
                )
            }
            Some(t) => format!(", task check FAILED: {}", t.detail),
            None => String::new(),
        };
        writeln!(
            out,
            "fidelity on {} calibration samples: output cosine {:.6} (worst single sample {:.6}){task}",
            f.samples, f.cosine, f.worst_sample_cosine
        )?;
    }
    if let Some(ft) = &compressed.report.finetune {
        writeln!(
            out,
            "fine-tuned {} parameters over {} steps: distillation loss {:.4e} -> {:.4e}",
            ft.parameters, ft.steps, ft.initial_loss, ft.final_loss
        )?;
    }
    writeln!(out, "wrote {} in {:.2} s", output.display(), elapsed)?;
    if let Some(path) = &args.report {
        let json =
            report_json(&compressed, packed.len(), huffman.as_ref().map(Vec::len), decode, elapsed, args);
        let text = serde_json::to_string_pretty(&json).context("formatting the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The `--report` JSON document.
fn report_json(
    c: &Compressed,
    packed: usize,
    huffman: Option<usize>,
    decode: Option<(pith_format::EntropyStats, f64)>,
    seconds: f64,
    args: &Args,
) -> Value {
    let r = &c.report;
    let layers: Vec<Value> = r
        .layers
        .iter()
        .map(|l| {
            json!({
                "name": l.name,
                "shape": l.shape,
                "encoding": l.encoding,
                "bits": l.bits,
                "sparsity": l.sparsity,
                "zero_blocks": l.zero_blocks,
                "bytes": l.bytes,
                "f32_bytes": l.f32_bytes,
                "weight_error": l.rel_error,
                "output_error": l.out_error,
                "bias_corrected": l.bias_corrected,
                "predicted_distortion": l.predicted_distortion,
            })
        })
        .collect();
    let mut histogram = BTreeMap::new();
    for l in &r.layers {
        let key = l.bits.map_or_else(|| l.encoding.clone(), |b| b.to_string());
        *histogram.entry(key).or_insert(0usize) += 1;
    }
    let fidelity = r.fidelity.as_ref().map(|f| {
        json!({
            "samples": f.samples,
            "cosine": f.cosine,
            "worst_sample_cosine": f.worst_sample_cosine,
            "task": f.task.as_ref().map(|t| json!({
                "passed": t.passed, "min_iou": t.min_iou, "detections": t.detections,
                "borderline": t.borderline, "detail": t.detail,
            })),
        })
    });
    let search: Vec<Value> = r
        .search
        .iter()
        .map(|s| {
            json!({
                "budget": s.budget, "predicted": s.predicted, "bytes": s.bytes,
                "cosine": s.fidelity.cosine, "passed": s.passed,
            })
        })
        .collect();
    json!({
        "bits": match args.bits { Bits::Auto => "auto".to_string(), Bits::Fixed(w) => format!("{w:?}") },
        "min_fidelity": (args.bits == Bits::Auto).then_some(args.min_fidelity),
        "task": args.task_check().map(|t| match t {
            TaskCheck::BlazeFace => "faces",
            TaskCheck::Db => "text",
            TaskCheck::Classes => "classes",
            TaskCheck::Reading => "reading",
        }),
        "min_iou": args.task_check().map(|_| args.min_iou),
        "data_aware": args.calib.is_some() && args.data_aware,
        "bias_correction": args.calib.is_some() && args.data_aware && args.bias_correction,
        "augment": args.augment,
        "finetune_reassign": args.finetune_reassign,
        "layers": layers,
        "bits_histogram": histogram,
        "totals": {
            "onnx_bytes": r.onnx_bytes,
            "weights_f32_bytes": r.layers.iter().map(|l| l.f32_bytes).sum::<usize>(),
            "weights_bytes": r.layers.iter().map(|l| l.bytes).sum::<usize>(),
            "constants_bytes": r.total_bytes,
            "file_bytes": packed,
            "ratio_vs_onnx": r.onnx_bytes as f64 / packed.max(1) as f64,
            "huffman_file_bytes": huffman,
            "huffman_ratio_vs_onnx": huffman.map(|h| r.onnx_bytes as f64 / h.max(1) as f64),
            "huffman_decode_ms": decode.map(|(s, _)| s.decode_time.as_secs_f64() * 1e3),
            "huffman_decode_mb_per_s": decode.map(|(_, m)| m),
        },
        "fidelity": fidelity,
        "finetune": r.finetune.as_ref().map(|f| serde_json::json!({
            "steps": f.steps, "parameters": f.parameters,
            "initial_loss": f.initial_loss, "final_loss": f.final_loss,
        })),
        "search": search,
        "seconds": seconds,
    })
}
