//! Bad input anywhere in the pipeline yields a typed error naming the problem, never a panic.

use std::sync::Arc;

use pith_compress::{compress_onnx, CompressOptions, WeightFormat};
use pith_format::PithFile;
use pith_runtime::{RuntimeError, Session, SessionOptions, Tensor};
use pith_tests::{compile, data_dir, decode_rgb, image_path, model_path};

fn blazeface_onnx() -> Vec<u8> {
    std::fs::read(model_path("blazeface_short_range.onnx")).unwrap()
}

fn blazeface_session() -> Session {
    let file = compile(&blazeface_onnx(), WeightFormat::F32).unwrap();
    Session::new(Arc::new(file), SessionOptions::default()).unwrap()
}

#[test]
fn unknown_op_is_named_with_its_node() {
    let onnx = std::fs::read(data_dir().join("bad/unknown_op.onnx")).unwrap();
    let err = compress_onnx(&onnx, &CompressOptions::default())
        .expect_err("a model with an Erf node must not compress");
    let msg = err.to_string();
    assert!(msg.contains("Erf"), "error does not name the op: {msg}");
    assert!(msg.contains("mystery_erf"), "error does not name the node: {msg}");
}

#[test]
fn garbage_and_truncated_onnx_are_errors() {
    let onnx = blazeface_onnx();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("text", b"this is not an ONNX model".to_vec()),
        ("all 0xff", vec![0xff; 4096]),
        ("first 100 bytes", onnx[..100].to_vec()),
        ("first half", onnx[..onnx.len() / 2].to_vec()),
        ("all but the last byte", onnx[..onnx.len() - 1].to_vec()),
    ];
    for (what, bytes) in cases {
        assert!(
            compress_onnx(&bytes, &CompressOptions::default()).is_err(),
            "{what}: compressed without error"
        );
    }
}

#[test]
fn wrong_input_shape_names_the_input() {
    let mut session = blazeface_session();
    for shape in [vec![1, 3, 64, 64], vec![1, 3, 128], vec![1, 4, 128, 128]] {
        let x = Tensor::zeros(shape.clone());
        match session.run(&[("input", x)]) {
            Err(RuntimeError::Input { name, msg }) => {
                assert_eq!(name, "input", "shape {shape:?}: {msg}")
            }
            Err(other) => panic!("shape {shape:?}: expected an input error, got {other}"),
            Ok(_) => panic!("shape {shape:?}: ran without error"),
        }
    }
    // The session is still usable after refusing bad inputs.
    let ok = session.run(&[("input", Tensor::zeros(vec![1, 3, 128, 128]))]);
    assert!(ok.is_ok(), "valid input after bad ones: {:?}", ok.err());
}

#[test]
fn missing_or_wrongly_typed_input_is_an_error() {
    let mut session = blazeface_session();
    let err = session.run(&[]).expect_err("no inputs must fail");
    assert!(err.to_string().contains("'input'"), "error does not name the input: {err}");
    let err = session
        .run(&[("image", Tensor::zeros(vec![1, 3, 128, 128]))])
        .expect_err("a misnamed input must fail");
    assert!(err.to_string().contains("input"), "unhelpful error: {err}");
    let ints = Tensor::from_i64(vec![1, 3, 128, 128], vec![0; 3 * 128 * 128]);
    assert!(session.run(&[("input", ints)]).is_err(), "an i64 tensor for an f32 input must fail");
}

#[test]
fn corrupt_png_is_a_decode_error() {
    let png = std::fs::read(image_path("page.png")).unwrap();
    assert!(decode_rgb(&png).is_ok(), "the intact image must decode");
    for cut in [0, 8, 100, png.len() / 2, png.len() - 20] {
        assert!(decode_rgb(&png[..cut]).is_err(), "PNG cut at {cut} decoded");
    }
}

#[test]
fn truncated_or_corrupt_pith_is_a_format_error() {
    let model = compress_onnx(&blazeface_onnx(), &CompressOptions::default()).unwrap().model;
    let bytes = pith_format::write(&model).unwrap();
    assert!(PithFile::from_bytes(bytes.clone()).is_ok(), "the intact file must load");
    let n = bytes.len();
    for cut in [0, 1, 4, 8, 16, 64, n / 3, n / 2, n - 1] {
        assert!(
            PithFile::from_bytes(bytes[..cut].to_vec()).is_err(),
            "file cut at {cut} of {n} bytes loaded"
        );
    }
    let mut bad_magic = bytes.clone();
    bad_magic[0] ^= 0xff;
    assert!(PithFile::from_bytes(bad_magic).is_err(), "corrupt magic loaded");
}

/// Every op case's ONNX file with a few bytes changed (100 variants each from a fixed seed:
/// random bytes, flipped bits, runs of 0xff, boundary values), compiled, planned and run on the
/// case's inputs: each must end in outputs or an error, never a panic or an abort (a mutated Pad
/// once asked for 55 GB at plan time and aborted the process).
#[test]
fn mutated_op_models_end_in_a_result_or_an_error() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    // xorshift64: the variants are the same on every run.
    let mut rng = Mutator(0x9E37_79B9_7F4A_7C15);
    let root = data_dir().join("ops");
    let mut dirs: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    let (mut variants, mut errors, mut panics) = (0, 0, Vec::new());
    for dir in dirs.iter().filter(|d| d.join("model.onnx").is_file()) {
        let onnx = std::fs::read(dir.join("model.onnx")).unwrap();
        for _ in 0..100 {
            let mut bytes = onnx.clone();
            let at = rng.below(bytes.len());
            rng.mutate(&mut bytes, at, 5);
            variants += 1;
            let outcome = catch_unwind(AssertUnwindSafe(|| -> anyhow::Result<()> {
                let file = Arc::new(compile(&bytes, WeightFormat::F32)?);
                let mut session = Session::new(file.clone(), SessionOptions::default())?;
                pith_tests::run_on_npy_inputs(&mut session, &file, dir)?;
                Ok(())
            }));
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(_)) => errors += 1,
                Err(_) => panics.push(format!("{} byte {at}", dir.display())),
            }
        }
    }
    assert!(panics.is_empty(), "{} of {variants} variants panicked: {panics:?}", panics.len());
    // The mutations must reach the parser and the planner, not only weight bytes.
    assert!(errors * 5 > variants, "only {errors} of {variants} variants were refused");
}

/// A `.pith` file's bytes changed, then re-sealed the way a hostile writer would: every
/// section's CRC-32 and the header's recomputed, so the checksums cannot catch the change and
/// the reader's validation, the planner and the kernels meet it. BlazeFace at 4 bits, packed and
/// Huffman-coded with compact (deflated) metadata, and in f16; 300 variants of each from a fixed
/// seed (10,000 of each passed once, in 18 s): a byte of a random section (metadata sections are
/// small, so each gets its share), a byte anywhere after the section table (mostly weights:
/// indices, centroids, scales, Huffman streams), or a field of the section table. Each file must
/// load and run on a fixed input of its declared shape or end in an error, never a panic or an
/// abort.
#[test]
fn resealed_mutated_pith_files_end_in_a_result_or_an_error() {
    const VARIANTS: usize = 300;
    use pith_format::{Entropy, WriteOptions};
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let mut rng = Mutator(0x2545_F491_4F6C_DD1D);
    let model = |weights| compress_onnx(&blazeface_onnx(), &CompressOptions { weights }).unwrap().model;
    let (codebook, f16) = (model(WeightFormat::Codebook { bits: 4 }), model(WeightFormat::F16));
    let huffman = WriteOptions { entropy: Entropy::Huffman, compact: true };
    let files = [
        ("4-bit packed", pith_format::write(&codebook).unwrap()),
        ("4-bit Huffman, compact", pith_format::write_with(&codebook, &huffman).unwrap()),
        ("f16", pith_format::write(&f16).unwrap()),
    ];
    for (what, original) in files {
        assert!(PithFile::from_bytes(original.clone()).is_ok(), "{what}: the intact file must load");
        let sections = section_ranges(&original);
        let table_end = 32 + 32 * sections.len();
        let (mut loaded, mut ran, mut panics) = (0, 0, Vec::new());
        for variant in 0..VARIANTS {
            let mut bytes = original.clone();
            let at = match rng.below(3) {
                0 => {
                    let (start, end) = sections[rng.below(sections.len())];
                    start + rng.below(end - start)
                }
                1 => table_end + rng.below(bytes.len() - table_end),
                // A field of one entry: kind, flags, offset, length (not its CRC, re-sealed).
                _ => 32 + 32 * rng.below(sections.len()) + rng.below(24),
            };
            rng.mutate(&mut bytes, at, 4);
            reseal(&mut bytes);
            let outcome = catch_unwind(AssertUnwindSafe(|| -> anyhow::Result<(bool, bool)> {
                let file = match PithFile::from_bytes(bytes) {
                    Ok(file) => file,
                    Err(_) => return Ok((false, false)),
                };
                let options = SessionOptions { threads: 1, ..Default::default() };
                let Ok(mut session) = Session::new(Arc::new(file), options) else { return Ok((true, false)) };
                let mut feeds = Vec::new();
                for value in session.inputs() {
                    let dims = value.shape.clone().unwrap_or_default();
                    let shape: Vec<usize> = dims
                        .iter()
                        .map(|d| match d {
                            pith_format::ir::Dim::Fixed(n) => (*n as usize).min(512),
                            pith_format::ir::Dim::Symbol(_) => 8,
                        })
                        .collect();
                    let n: usize = shape.iter().product();
                    if n > 1 << 22 {
                        return Ok((true, false));
                    }
                    let data = (0..n).map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0).collect();
                    feeds.push((value.name.clone(), Tensor::from_f32(shape, data)));
                }
                let feeds: Vec<(&str, Tensor)> = feeds.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
                Ok((true, session.run(&feeds).is_ok()))
            }));
            match outcome {
                Ok(Ok((l, r))) => {
                    loaded += usize::from(l);
                    ran += usize::from(r);
                }
                Ok(Err(_)) => {}
                Err(_) => panics.push(format!("variant {variant}, byte {at}")),
            }
        }
        eprintln!("{what}: {VARIANTS} re-sealed variants, {loaded} loaded, {ran} ran");
        assert!(panics.is_empty(), "{what}: {} variants panicked: {panics:?}", panics.len());
        // The re-sealing worked: mutations got past the checksums into loaded files, and the
        // validation refused some of them.
        assert!(
            loaded > VARIANTS / 10 && loaded < VARIANTS,
            "{what}: {loaded} of {VARIANTS} variants loaded"
        );
    }
}

/// Byte mutations from a fixed seed (xorshift64): the same variants on every run.
struct Mutator(u64);

impl Mutator {
    /// The next number below `n` (0 when `n` is 0).
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }

    /// Changes `bytes` at `at`: a random byte, a flipped bit, a run of 0xff (up to `longest_run`
    /// bytes, cut at the end) or a boundary value (0, 1, 0x7f, 0x80, 0xff).
    fn mutate(&mut self, bytes: &mut [u8], at: usize, longest_run: usize) {
        match self.below(4) {
            0 => bytes[at] = self.below(256) as u8,
            1 => bytes[at] ^= 1 << self.below(8),
            2 => {
                let end = (at + 1 + self.below(longest_run)).min(bytes.len());
                bytes[at..end].fill(0xff)
            }
            _ => bytes[at] = [0, 1, 0x7f, 0x80, 0xff][self.below(5)],
        }
    }
}

/// The byte ranges of a `.pith` file's sections, from its section table (SPEC.md: a 32-byte
/// header whose bytes 12..16 count the 32-byte entries after it; an entry's offset at 8..16 and
/// length at 16..24).
fn section_ranges(bytes: &[u8]) -> Vec<(usize, usize)> {
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    let count = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    (0..count).map(|i| 32 + 32 * i).map(|e| (u64_at(e + 8), u64_at(e + 8) + u64_at(e + 16))).collect()
}

/// Recomputes the CRC-32 of every section that lies inside the file (entry bytes 24..28), then
/// the header's (header bytes 0..28 followed by the section table, stored at 28..32).
fn reseal(bytes: &mut [u8]) {
    let count = (u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize).min((bytes.len() - 32) / 32);
    let table_end = 32 + 32 * count;
    for e in (32..table_end).step_by(32) {
        let field = |at: usize| u64::from_le_bytes(bytes[e + at..e + at + 8].try_into().unwrap());
        let (offset, length) = (field(8), field(16));
        if let Some(end) = offset.checked_add(length).filter(|&end| end <= bytes.len() as u64) {
            let crc = crc32fast::hash(&bytes[offset as usize..end as usize]);
            bytes[e + 24..e + 28].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..28]);
    h.update(&bytes[32..table_end]);
    let crc = h.finalize();
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
}
