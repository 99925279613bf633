//! Huffman-coded codebook indices (format 1.1): round trips over every bit width and several index
//! distributions, determinism, versions, a blob built from SPEC.md alone, and hostile blobs (each
//! must be a `FormatError` naming the problem, never a panic or a giant allocation).

mod common;

use common::*;
use pith_format::ir::*;
use pith_format::{write, write_with, Entropy, FormatError, PithFile, TensorView, WriteOptions};

const HUFFMAN: WriteOptions = WriteOptions { entropy: Entropy::Huffman, compact: false };
const ENC_CODEBOOK: u8 = 3;
const ENC_CODEBOOK_HUFFMAN: u8 = 4;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dist {
    Uniform,
    Skewed,
    Single,
}

/// `rows × row_len` indices below `entries` drawn from `dist` with a fixed seed.
fn indices(dist: Dist, entries: usize, rows: usize, row_len: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = XorShift(seed | 1);
    (0..rows)
        .map(|_| {
            (0..row_len)
                .map(|_| match dist {
                    Dist::Uniform => rng.below(entries) as u8,
                    // P(k) = 2^-(k+1): a geometric distribution, like k-means clusters of weights.
                    Dist::Skewed => (rng.next().trailing_zeros() as usize).min(entries - 1) as u8,
                    Dist::Single => (entries / 2) as u8,
                })
                .collect()
        })
        .collect()
}

fn tensor(bits: u8, entries: usize, kind: CodebookKind, idx: &[Vec<u8>]) -> CodebookTensor {
    tensor_len(bits, entries, kind, idx, idx.first().map_or(0, |r| r.len()))
}

fn tensor_len(
    bits: u8,
    entries: usize,
    kind: CodebookKind,
    idx: &[Vec<u8>],
    row_len: usize,
) -> CodebookTensor {
    let rows = idx.len();
    let ncent = if kind == CodebookKind::PerRow { rows * entries } else { entries };
    CodebookTensor {
        bits,
        rows,
        row_len,
        entries,
        kind,
        centroids: Centroids::F32((0..ncent).map(|i| i as f32 * 0.5 - 1.0).collect()),
        scales: if kind == CodebookKind::SharedScaled { vec![2.0; rows] } else { vec![] },
        f16_scales: false,
        indices: pack(idx, bits),
    }
}

/// A model holding the given codebook constants (`dims`, tensor) and nothing else of note.
fn model(cbs: Vec<(Vec<u64>, CodebookTensor)>) -> Model {
    let mut values = vec![Value { name: "x".into(), elem: ElemType::F32, shape: Some(vec![Dim::Fixed(1)]) }];
    let mut constants = Vec::new();
    for (i, (dims, t)) in cbs.into_iter().enumerate() {
        constants.push(Constant { value: values.len() as ValueId, data: TensorData::Codebook(t) });
        values.push(Value {
            name: format!("w{i}"),
            elem: ElemType::F32,
            shape: Some(dims.into_iter().map(Dim::Fixed).collect()),
        });
    }
    Model {
        graph: Graph { values, nodes: vec![], inputs: vec![0], outputs: vec![0] },
        constants,
        producer: "t".into(),
        props: Default::default(),
    }
}

/// Checks that every constant of `h` (a Huffman-coded file) views exactly like in the model.
fn same_views(h: &PithFile, m: &Model) {
    for c in &m.constants {
        let TensorData::Codebook(cb) = &c.data else { continue };
        let Some(TensorView::Codebook(v)) = h.constant(c.value) else { panic!("codebook view expected") };
        assert_eq!(
            (v.bits, v.rows, v.row_len, v.row_stride, v.entries),
            (cb.bits, cb.rows, cb.row_len, cb.row_stride(), cb.entries)
        );
        assert_eq!(v.indices, &cb.indices[..], "indices of #{}", c.value);
        assert_eq!(v.indices.as_ptr() as usize % 64, 0, "decoded indices are 64-byte aligned");
    }
}

#[test]
fn every_width_and_distribution_round_trips() {
    let kinds = [CodebookKind::PerTensor, CodebookKind::PerRow, CodebookKind::SharedScaled];
    let mut cbs = Vec::new();
    let mut expect = Vec::new();
    for bits in 1..=8u8 {
        for (d, dist) in [Dist::Uniform, Dist::Skewed, Dist::Single].into_iter().enumerate() {
            let full = 1usize << bits;
            // Odd row lengths (3 × 7 = 21, 5 × 3 = 15) leave padding bits in each packed row.
            let (rows, a, b) = if d == 1 { (37, 3, 7) } else { (41, 5, 3) };
            let entries = if bits > 1 && d == 0 && bits % 2 == 0 { full - 1 } else { full };
            let idx = indices(dist, entries, rows, a * b, 0x1234 + bits as u64 * 7 + d as u64);
            let t = tensor(bits, entries, kinds[(bits as usize + d) % 3], &idx);
            expect.push((bits, dist, entries == full));
            cbs.push((vec![rows as u64, a as u64, b as u64], t));
        }
    }
    // A tensor with no rows and one with empty rows: nothing to code, stored packed.
    cbs.push((vec![0, 5], tensor_len(4, 16, CodebookKind::PerTensor, &[], 5)));
    cbs.push((vec![3, 0], tensor(4, 16, CodebookKind::PerTensor, &[vec![], vec![], vec![]])));
    let m = model(cbs);
    let plain = PithFile::from_bytes(write(&m).unwrap()).unwrap();
    let bytes = write_with(&m, &HUFFMAN).unwrap();
    let h = PithFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(h.graph(), &m.graph);
    assert_eq!((plain.version(), h.version()), ((1, 0), (1, 1)));
    same_views(&h, &m);

    let (mut n, mut coded, mut decoded) = (0, 0, 0);
    for (c, &(bits, dist, full)) in
        m.constants.iter().zip(expect.iter().chain([(0, Dist::Single, true); 2].iter()))
    {
        let (hb, pb) = (h.constant_bytes(c.value), plain.constant_bytes(c.value));
        let TensorData::Codebook(cb) = &c.data else { unreachable!() };
        let side = pb - cb.indices.len();
        match h.constant_entropy(c.value) {
            Entropy::Huffman => {
                assert!(hb < pb, "Huffman kept although not smaller: {bits} {dist:?}");
                n += 1;
                coded += hb - side;
                decoded += cb.indices.len();
            }
            Entropy::None => assert_eq!(hb, pb),
        }
        assert_eq!(plain.constant_entropy(c.value), Entropy::None);
        let want = match (bits, dist) {
            (0, _) | (1, _) => Entropy::None,
            (_, Dist::Uniform) if full => Entropy::None,
            (_, Dist::Skewed | Dist::Single) => Entropy::Huffman,
            _ => h.constant_entropy(c.value),
        };
        assert_eq!(h.constant_entropy(c.value), want, "bits {bits} {dist:?}");
    }
    let s = h.entropy_stats();
    assert_eq!((s.huffman_tensors, s.coded_bytes, s.decoded_bytes), (n, coded, decoded));
    assert!(n >= 14, "{n} Huffman-coded tensors");
    assert_eq!(plain.entropy_stats(), Default::default());

    // Determinism, and the same through a mapped file.
    assert_eq!(bytes, write_with(&m, &HUFFMAN).unwrap());
    let path = std::env::temp_dir().join(format!("pith-huffman-{}.pith", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let mapped = PithFile::open(&path).unwrap();
    same_views(&mapped, &m);
    assert_eq!(mapped.entropy_stats().decoded_bytes, decoded);
    drop(mapped);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn large_tensors_round_trip() {
    // Enough indices (300 × 111 per tensor) for the decoder's two-symbol table at every width.
    let mut cbs = Vec::new();
    for bits in 2..=8u8 {
        for (d, dist) in [Dist::Skewed, Dist::Uniform].into_iter().enumerate() {
            let entries = (1usize << bits) - d * 3;
            let idx = indices(dist, entries, 300, 111, 99 + bits as u64 * 3 + d as u64);
            cbs.push((vec![300, 111], tensor(bits, entries, CodebookKind::PerRow, &idx)));
        }
    }
    let m = model(cbs);
    let h = PithFile::from_bytes(write_with(&m, &HUFFMAN).unwrap()).unwrap();
    same_views(&h, &m);
    assert!(h.entropy_stats().huffman_tensors >= 7);
}

#[test]
fn huffman_files_are_smaller_for_skewed_indices() {
    let idx = indices(Dist::Skewed, 16, 64, 99, 7);
    let m = model(vec![(vec![64, 99], tensor(4, 16, CodebookKind::PerRow, &idx))]);
    let (p, h) = (write(&m).unwrap(), write_with(&m, &HUFFMAN).unwrap());
    // ~2 bits per index instead of 4.
    assert!(h.len() + 64 * 99 * 4 / 8 / 3 < p.len(), "{} vs {}", h.len(), p.len());
    // Uniform full-alphabet indices do not compress (rows of 100 have no padding to save): the
    // file stays 1.0 and identical.
    let idx = indices(Dist::Uniform, 16, 64, 100, 7);
    let m = model(vec![(vec![64, 100], tensor(4, 16, CodebookKind::PerRow, &idx))]);
    assert!(write(&m).unwrap() == write_with(&m, &HUFFMAN).unwrap());
}

/// A small valid 4-bit model (3 rows of 7 indices, symbols 0..13) and its unpacked indices.
fn small() -> (Model, Vec<Vec<u8>>) {
    let idx: Vec<Vec<u8>> = (0..3).map(|r| (0..7).map(|i| ((r * 5 + i * i) % 13) as u8).collect()).collect();
    (model(vec![(vec![3, 7], tensor(4, 16, CodebookKind::PerTensor, &idx))]), idx)
}

/// Code lengths 1, 2, ..., 12, 12 for symbols 0..13 of 16: complete (Kraft sum exactly 1).
fn long_lengths() -> Vec<u8> {
    let mut l: Vec<u8> = (1..=12).collect();
    l.extend([12, 0, 0, 0]);
    l
}

/// The small model with its index blob replaced by `blob` (encoding 4, header 1.1).
fn with_blob(blob: &[u8]) -> Result<PithFile, FormatError> {
    let (m, _) = small();
    PithFile::from_bytes(replace_const_data(&write(&m).unwrap(), 0, ENC_CODEBOOK_HUFFMAN, blob, 1))
}

fn huffman_err(blob: &[u8]) -> String {
    match with_blob(blob) {
        Err(FormatError::BadHuffman { id: 1, name, reason }) => {
            assert_eq!(name, "w0");
            reason
        }
        other => panic!("expected a Huffman error, got {other:?}"),
    }
}

fn flat(idx: &[Vec<u8>]) -> Vec<u8> {
    idx.concat()
}

#[test]
fn a_blob_built_from_the_spec_decodes() {
    let (m, idx) = small();
    let f = with_blob(&spec_huffman_blob(&long_lengths(), &flat(&idx))).unwrap();
    same_views(&f, &m);
    assert_eq!(f.constant_entropy(1), Entropy::Huffman);
    // A lone used symbol has a 1-bit code "0".
    let one: Vec<Vec<u8>> = vec![vec![9; 77]; 3];
    let m1 = model(vec![(vec![3, 77], tensor(4, 16, CodebookKind::PerTensor, &one))]);
    let mut lengths = vec![0u8; 16];
    lengths[9] = 1;
    let blob = spec_huffman_blob(&lengths, &flat(&one));
    let f = PithFile::from_bytes(replace_const_data(&write(&m1).unwrap(), 0, ENC_CODEBOOK_HUFFMAN, &blob, 1));
    same_views(&f.unwrap(), &m1);
    // The writer's own blob for this model is exactly that.
    let w = write_with(&m1, &HUFFMAN).unwrap();
    assert!(w == replace_const_data(&write(&m1).unwrap(), 0, ENC_CODEBOOK_HUFFMAN, &blob, 1));
}

#[test]
fn bad_code_length_tables_are_refused() {
    let (_, idx) = small();
    let s = flat(&idx);
    let mut over = long_lengths();
    over[13] = 12; // one code too many
    assert!(huffman_err(&spec_huffman_blob(&over, &s)).contains("over-subscribed"));
    let mut incomplete = long_lengths();
    incomplete[12] = 0; // symbol 12 is not used by the stream below
    let s11: Vec<u8> = s.iter().map(|&x| x.min(11)).collect();
    assert!(huffman_err(&spec_huffman_blob(&incomplete, &s11)).contains("incomplete"));
    let mut long = vec![0u8; 16];
    long[0] = 1;
    long[1] = 13;
    assert!(huffman_err(&spec_huffman_blob(&long, &[0; 21])).contains("exceeds the limit of 12"));
    let mut none = spec_huffman_blob(&[0; 16], &[]);
    none[..8].copy_from_slice(&21u64.to_le_bytes());
    none.extend([0; 3]);
    assert!(huffman_err(&none).contains("no symbol"));
    // A lone symbol must have length 1.
    let mut lone = vec![0u8; 16];
    lone[3] = 2;
    assert!(huffman_err(&spec_huffman_blob(&lone, &[3; 21])).contains("incomplete"));
}

#[test]
fn symbol_tables_larger_than_the_codebook_are_refused() {
    let (_, idx) = small();
    // 17 code lengths for a 16-entry (2^4) codebook: symbol 16 cannot be an index.
    let mut l17 = long_lengths();
    l17.push(0);
    let e = huffman_err(&spec_huffman_blob(&l17, &flat(&idx)));
    assert!(e.contains("declares 17 symbols") && e.contains("16 entries"), "{e}");
    let e = huffman_err(&spec_huffman_blob(&long_lengths()[..15], &flat(&idx)));
    assert!(e.contains("declares 15 symbols"), "{e}");
}

#[test]
fn truncated_and_overlong_streams_are_refused() {
    let (_, idx) = small();
    let s = flat(&idx);
    // Drop the last index: the declared bit count and the bytes agree, but the stream runs dry.
    let short = spec_huffman_blob(&long_lengths(), &s[..20]);
    let e = huffman_err(&short);
    assert!(e.contains("ends before"), "{e}");
    // A blob cut short: its length disagrees with its header.
    let good = spec_huffman_blob(&long_lengths(), &s);
    let e = huffman_err(&good[..good.len() - 1]);
    assert!(e.contains("blob is") && e.contains("take"), "{e}");
    // Trailing garbage bytes after the stream.
    let mut trailing = good.clone();
    trailing.extend([0, 0]);
    assert!(huffman_err(&trailing).contains("blob is"));
    // Extra valid code words after the last index (declared in bit_count): left over.
    let mut extra = s.clone();
    extra.extend([0, 0, 0]);
    let e = huffman_err(&spec_huffman_blob(&long_lengths(), &extra));
    assert!(e.contains("left over"), "{e}");
    // Non-zero padding bits after the last code word.
    let mut pad = good.clone();
    let bits = u64::from_le_bytes(pad[..8].try_into().unwrap());
    assert_ne!(bits % 8, 0, "test needs padding bits");
    *pad.last_mut().unwrap() |= 1;
    assert!(huffman_err(&pad).contains("padding bits"));
    // Shorter than a header.
    assert!(huffman_err(&good[..5]).contains("shorter than"));
    let mut reserved = good.clone();
    reserved[10] = 1;
    assert!(huffman_err(&reserved).contains("reserved"));
}

#[test]
fn invalid_code_words_are_refused() {
    // A lone symbol's code is "0": a 1 bit in the stream is no code word.
    let mut lengths = vec![0u8; 16];
    lengths[2] = 1;
    let mut blob = spec_huffman_blob(&lengths, &[2; 21]);
    blob[12 + 16] |= 0x20; // third bit of the stream
    let e = huffman_err(&blob);
    assert!(e.contains("invalid code word at bit 2"), "{e}");
}

#[test]
fn declared_bit_counts_outside_the_possible_range_are_refused() {
    let (_, idx) = small();
    let good = spec_huffman_blob(&long_lengths(), &flat(&idx));
    for bits in [0u64, 20, 21 * 12 + 1, u64::MAX] {
        let mut b = good.clone();
        b[..8].copy_from_slice(&bits.to_le_bytes());
        let e = huffman_err(&b);
        assert!(e.contains(&format!("declares {bits} bits for 21 indices")), "{e}");
    }
}

#[test]
fn huge_declared_shapes_do_not_allocate() {
    // The constant claims 2^40 rows of 7 (7 TiB of packed indices) but its blob codes 21 indices:
    // refused from the blob's bit count, before anything is allocated.
    let (m, idx) = small();
    let b = replace_const_data(
        &write(&m).unwrap(),
        0,
        ENC_CODEBOOK_HUFFMAN,
        &spec_huffman_blob(&long_lengths(), &flat(&idx)),
        1,
    );
    let dims = section(&b, 4);
    let mut d = b[dims.clone()].to_vec();
    // The DIMS run of w0 is [3, 7]; x's is [1] (the writer pools distinct runs).
    let at = d.chunks_exact(8).position(|c| i64::from_le_bytes(c.try_into().unwrap()) == 3).unwrap() * 8;
    d[at..at + 8].copy_from_slice(&(1i64 << 40).to_le_bytes());
    let b = replace_sections(&b, &[(4, d)], 1);
    match PithFile::from_bytes(b) {
        Err(FormatError::BadHuffman { reason, .. }) => {
            assert!(reason.contains(&format!("for {} indices", 7u64 << 40)), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn huffman_constants_need_format_1_1() {
    let (_, idx) = small();
    let (m, _) = small();
    let blob = spec_huffman_blob(&long_lengths(), &flat(&idx));
    let b = replace_const_data(&write(&m).unwrap(), 0, ENC_CODEBOOK_HUFFMAN, &blob, 0);
    let e = PithFile::from_bytes(b).unwrap_err();
    assert!(
        matches!(&e, FormatError::BadConstant { .. }) && e.to_string().contains("need format 1.1"),
        "{e}"
    );
    // The packed encoding is still fine in a 1.1 file.
    let p = write(&m).unwrap();
    let data = p[section(&p, 12)][..12].to_vec(); // 3 rows × 4 bytes of packed indices
    let f = PithFile::from_bytes(replace_const_data(&p, 0, ENC_CODEBOOK, &data, 1)).unwrap();
    assert_eq!(f.version(), (1, 1));
}

/// Random damage to a Huffman-coded file (checksums resealed) is an error or a usable file. The
/// large tensor is decoded with the two-symbol table, the small one without.
#[test]
fn random_blob_mutations_never_panic() {
    let small = indices(Dist::Skewed, 64, 9, 31, 3);
    let large = indices(Dist::Skewed, 16, 300, 111, 5);
    let bases: Vec<(Vec<u8>, usize, usize)> = [(6, 64, small), (4, 16, large)]
        .into_iter()
        .map(|(bits, entries, idx)| {
            let (rows, row_len) = (idx.len(), idx[0].len());
            let m = model(vec![(
                vec![rows as u64, row_len as u64],
                tensor(bits, entries, CodebookKind::PerRow, &idx),
            )]);
            (write_with(&m, &HUFFMAN).unwrap(), rows, row_len)
        })
        .collect();
    let mut rng = XorShift(0xdead_beef);
    let mut errs = 0;
    for iter in 0..3000 {
        let (base, rows, row_len) = &bases[iter % 2];
        let data = section(base, 12);
        let mut b = base.clone();
        for _ in 0..1 + rng.below(3) {
            // Mostly the index blob: header, code lengths and stream start.
            let pos = data.start + rng.below(12 + 64 + 40);
            b[pos] ^= 1 << rng.below(8);
        }
        reseal(&mut b);
        match PithFile::from_bytes(b) {
            Ok(f) => {
                let v = f.constant(1).unwrap();
                let mut row = vec![0.0; *row_len];
                for r in 0..*rows {
                    v.decode_row(*rows, r, &mut row);
                }
            }
            Err(e) => {
                errs += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(errs > 2000, "{errs}");
}
