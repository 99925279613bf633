//! `pith`: compress ONNX models to `.pith`, run, inspect, detect and benchmark them.

mod augment;
mod cmd_bench;
mod cmd_compress;
mod cmd_demo;
mod cmd_detect;
mod cmd_inspect;
mod cmd_run;
mod image_args;
mod imageio;
mod npy;
mod pipeline;
mod report;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use pith_runtime::session::SessionOptions;

#[derive(Parser)]
#[command(name = "pith", version, about = "On-device inference for compressed neural networks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Default thread count: the (fast) physical cores this process may use.
fn default_threads() -> usize {
    pith_runtime::default_threads()
}

/// Parses `--threads`: at least 1, the caller's own thread (0 would otherwise run as 1 while
/// the output said 0).
fn thread_count(arg: &str) -> Result<usize, String> {
    match arg.parse::<usize>() {
        Ok(0) => Err("must be at least 1 (the calling thread counts as one)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Compress an ONNX model into a .pith file.
    Compress {
        /// The ONNX model.
        input: PathBuf,
        /// The .pith file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Weight encoding: codebook bits 1..8, f16 / f32 (uncompressed), or auto (per-layer
        /// widths chosen on --calib data under --min-fidelity).
        #[arg(long, default_value = "8", value_parser = cmd_compress::parse_bits_choice)]
        bits: cmd_compress::Bits,
        /// Folder of calibration inputs: <input name>.<anything>.npy files, and PNG/JPEG images
        /// with --preprocess or the explicit image flags below.
        #[arg(long, value_name = "DIR")]
        calib: Option<PathBuf>,
        /// How calibration images become model inputs (and which task check applies); for other
        /// models give the explicit image flags instead.
        #[arg(long, value_enum)]
        preprocess: Option<cmd_compress::Preprocess>,
        #[command(flatten)]
        image: image_args::ImageArgs,
        /// With --calib: the detections every calibration sample must keep besides the output
        /// cosine (at --min-iou). Default: the --preprocess preset's check, else none.
        #[arg(long, value_enum)]
        task: Option<cmd_compress::TaskArg>,
        /// With --bits auto: floor on the output cosine over the calibration set (each output's
        /// values of every sample together; the lowest over outputs).
        #[arg(long, default_value_t = cmd_compress::DEFAULT_MIN_FIDELITY)]
        min_fidelity: f64,
        /// Task check: IoU each calibration detection must keep with the uncompressed model's.
        #[arg(long, default_value_t = 0.9)]
        min_iou: f32,
        /// Fit codebooks with plain k-means, ignoring the calibration activations.
        #[arg(long)]
        no_data_aware: bool,
        /// Keep biases as they are (no bias correction of the calibrated codebooks).
        #[arg(long)]
        no_bias_correction: bool,
        /// Entropy coding of the codebook indices in the written file.
        #[arg(long, value_enum, default_value = "none")]
        entropy: cmd_compress::EntropyArg,
        /// With --calib: fine-tune centroids and biases for this many full-batch steps against
        /// the uncompressed model on the calibration inputs (0 = off). With --bits auto, the
        /// search then aims lower and keeps the smallest model that passes after tuning.
        #[arg(long, value_name = "STEPS", default_value_t = 0)]
        finetune: usize,
        /// With --finetune: also move weights between centroids (quantisation-aware training
        /// with a straight-through estimator on a latent f32 copy of every codebook weight);
        /// pruned weights stay pruned.
        #[arg(long)]
        finetune_reassign: bool,
        /// Add this many deterministic variants of every calibration image (flip, zoomed crop,
        /// brightness / contrast), before preprocessing.
        #[arg(long, value_name = "N", default_value_t = 0)]
        augment: usize,
        /// Write the per-layer report and totals as JSON here.
        #[arg(long, value_name = "FILE.json")]
        report: Option<PathBuf>,
        /// Write the format 1.0 / 1.1 layout (metadata uncompressed, 64-byte aligned blobs) that
        /// older Pith readers understand, instead of the smaller 1.2 layout.
        #[arg(long)]
        plain_layout: bool,
        /// With --calib: run the calibration and verification on the portable reference kernels,
        /// so the file is the same bytes on every CPU and architecture (the fastest kernels' last
        /// bits differ from path to path and can tip the search); about 2-3x the time on x86.
        /// Fine-tuning (--finetune) runs on them too. Without --calib the output is the same
        /// everywhere already.
        #[arg(long)]
        reproducible: bool,
        /// Set the model property KEY (stored in the file, read back by `PithFile::prop` and
        /// `pith inspect`) to VALUE, or to the UTF-8 text of FILE with KEY=@FILE; repeatable.
        /// Replaces the ONNX model's metadata entry of the same key.
        #[arg(long = "prop", value_name = "KEY=VALUE")]
        props: Vec<String>,
        /// Leave the ONNX model's metadata_props out of the file (--prop entries are still kept).
        #[arg(long)]
        no_onnx_props: bool,
    },
    /// Run one inference: .npy inputs (or PNG/JPEG with the image flags), one .npy per output.
    Run {
        /// The .pith model.
        model: PathBuf,
        /// NAME=FILE.npy (or NAME=IMAGE.png / .jpg with the image flags), once per input.
        #[arg(long = "input", required = true)]
        inputs: Vec<String>,
        #[command(flatten)]
        image: image_args::ImageArgs,
        /// Where to write <output name>.npy files.
        #[arg(long, default_value = ".")]
        output_dir: PathBuf,
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Describe a .pith file: inputs, outputs, ops, tensors.
    Inspect {
        /// The .pith model.
        model: PathBuf,
    },
    /// Detect faces or text in an image, JSON on stdout.
    Detect {
        /// Which task.
        task: cmd_detect::Task,
        /// The .pith model.
        model: PathBuf,
        /// A PNG or JPEG image.
        image: PathBuf,
        /// Write an annotated PNG here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// With `text`: read each box with this CTC text recognizer (.pith; PP-OCR rec). Its
        /// character set is the model's `character` property (PaddleOCR's ONNX metadata, kept
        /// by `pith compress`) unless --charset names one.
        #[arg(long)]
        rec: Option<PathBuf>,
        /// The recognizer's character set: one character per line, as PaddleOCR's dictionaries
        /// (class 0 is CTC's blank, a space follows the last line).
        #[arg(long, requires = "rec")]
        charset: Option<PathBuf>,
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Time inference (load once, warm up, run K times), or one packed GEMV with --gemv.
    Bench {
        /// The .pith model (not with --gemv).
        #[arg(required_unless_present = "gemv", conflicts_with = "gemv")]
        model: Option<PathBuf>,
        /// Instead of a model, time a GEMV on random ROWSxCOLS packed weights against f32 and memcpy.
        #[arg(long, value_name = "ROWSxCOLS", value_parser = cmd_bench::gemv::parse_matrix, requires = "bits")]
        gemv: Option<(usize, usize)>,
        /// Bits per weight index of the --gemv matrix (1..8).
        #[arg(long, requires = "gemv", value_parser = clap::value_parser!(u8).range(1..=8))]
        bits: Option<u8>,
        /// NAME=FILE.npy; inputs not given get random data of their declared shape.
        #[arg(long = "input")]
        inputs: Vec<String>,
        /// NAME=DxDxD for inputs with symbolic dimensions.
        #[arg(long = "shape")]
        shapes: Vec<String>,
        #[command(flatten)]
        session: SessionArgs,
        /// Timed inferences.
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// Then run as many more inferences timing every operator, and print one line per
        /// operator kind (`op=… calls_per_run=… ms_per_run=… share=…%`) and one per node for the
        /// NODES slowest nodes (default 10: `node=… op=… out=<output value> ms_per_run=…`, at
        /// several threads with `split_jobs_per_run=… busy_ms_per_run=<caller>,<worker>…`).
        #[arg(long, value_name = "NODES", num_args = 0..=1, default_missing_value = "10")]
        profile: Option<usize>,
    },
    /// Compress the bundled detectors and run them on the bundled images.
    Demo {
        /// Folder with models/ and images/ (default: the source tree's tests/data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Where to write .pith files and annotated images.
        #[arg(long, default_value = "out/demo")]
        out_dir: PathBuf,
        /// Worker threads.
        #[arg(long, default_value_t = default_threads(), value_parser = thread_count)]
        threads: usize,
    },
}

/// How `run`, `detect` and `bench` set up their session.
#[derive(clap::Args)]
struct SessionArgs {
    /// Worker threads (default: the physical cores this process may use; on CPUs with cores of
    /// several speeds, as phones' big.LITTLE, only the fast ones).
    #[arg(long, default_value_t = default_threads(), value_parser = thread_count)]
    threads: usize,
    /// Run 1x1 convolutions and 4-bit GEMVs on 8-bit activations and int8 dot products
    /// (dynamic-range quantization: faster, with 8-bit activation error; x86 without AVX-512
    /// VNNI runs only the GEMVs on int8; needs AVX2 or NEON dotprod).
    #[arg(long)]
    int8: bool,
    /// Multiply the weights and inputs of 1x1 convolutions rounded to bf16 (8 significant bits,
    /// sums in f32) on bf16 dot products: about twice the f32 multiply-adds per instruction on
    /// AMD Zen 4/5, but a third of them on Intel Xeons (Emerald Rapids measured: 1.6x slower);
    /// needs x86 AVX-512 BF16 (Zen 4 and later, Xeon from Cooper Lake); not with --int8.
    #[arg(long, conflicts_with = "int8")]
    bf16: bool,
    /// Refuse inputs whose plan needs more activation memory than this many bytes (arena plus
    /// every thread's scratch; weights are mapped, not counted); a K, M or G suffix multiplies
    /// by 1024, 1024^2 or 1024^3.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    memory_limit: Option<usize>,
    /// Keep every activation in planar NCHW (by default chains of 1x1 and depthwise layers over
    /// 7x7 to 28x28 planes run channel-blocked, NCHW16c, where the CPU has the kernels).
    #[arg(long)]
    planar: bool,
    /// Split layers over the threads on every run (by default, with several threads, the session
    /// times runs on the threads and on one thread and runs the faster way).
    #[arg(long)]
    fixed_threads: bool,
    /// Let the OS place the worker threads on any core (by default, on CPUs with cores of several
    /// speeds, as phones' big.LITTLE, they are kept to the fast ones; Linux and Android)
    #[arg(long)]
    no_pin: bool,
}

impl SessionArgs {
    /// The session options these flags ask for.
    fn options(&self) -> SessionOptions {
        SessionOptions {
            threads: self.threads,
            int8_activations: self.int8,
            bf16_products: self.bf16,
            memory_limit: self.memory_limit,
            blocked_layout: !self.planar,
            tune_threads: !self.fixed_threads,
            portable_kernels: false,
            pin_fast_cores: !self.no_pin,
        }
    }
}

/// A byte count, optionally with a K, M or G suffix (powers of 1024).
fn parse_bytes(text: &str) -> Result<usize, String> {
    let (digits, unit) = match text.trim().char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text.trim()[..i], c.to_ascii_uppercase()),
        _ => (text.trim(), 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        other => return Err(format!("unknown unit '{other}' (use K, M or G)")),
    };
    let n: usize = digits.parse().map_err(|e| format!("'{text}' is not a byte count: {e}"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("'{text}' is too large"))
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Compress {
            input,
            output,
            bits,
            calib,
            preprocess,
            image,
            task,
            min_fidelity,
            min_iou,
            no_data_aware,
            no_bias_correction,
            entropy,
            finetune,
            finetune_reassign,
            augment,
            report,
            plain_layout,
            reproducible,
            props,
            no_onnx_props,
        } => {
            let args = cmd_compress::Args {
                bits,
                calib,
                preprocess,
                image,
                task,
                min_fidelity,
                min_iou,
                data_aware: !no_data_aware,
                bias_correction: !no_bias_correction,
                entropy,
                finetune,
                finetune_reassign,
                augment,
                report,
                plain_layout,
                reproducible,
                props,
                keep_onnx_props: !no_onnx_props,
            };
            cmd_compress::run_with(&input, &output, &args)
        }
        Command::Run { model, inputs, image, output_dir, session } => {
            cmd_run::run(&model, &inputs, &image, &output_dir, session.options())
        }
        Command::Inspect { model } => cmd_inspect::run(&model),
        Command::Detect { task, model, image, out, rec, charset, session } => {
            let reader = rec.as_deref().map(|rec| (rec, charset.as_deref()));
            cmd_detect::run(task, &model, &image, out.as_deref(), reader, session.options())
        }
        Command::Bench { model, gemv, bits, inputs, shapes, session, iters, profile } => {
            let options = session.options();
            cmd_bench::dispatch(model.as_deref(), gemv, bits, &inputs, &shapes, options, iters, profile)
        }
        Command::Demo { data_dir, out_dir, threads } => {
            cmd_demo::run(&data_dir.unwrap_or_else(cmd_demo::default_data_dir), &out_dir, threads)
        }
    };
    if let Err(err) = result {
        // A closed pipe (`pith inspect m.pith | head`) is the reader's choice, not a failure.
        let broken_pipe = err.chain().any(|e| {
            e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        });
        if broken_pipe {
            return;
        }
        eprintln!("error: {}", report::error_line(&err));
        std::process::exit(1);
    }
}
