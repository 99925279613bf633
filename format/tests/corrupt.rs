//! Damaged files: truncation, flipped bytes, header and section-table corruption, versions,
//! unknown sections, and a fixed-seed mutation fuzz loop. Every case must be an `Err` naming the
//! problem, never a panic.

mod common;

use common::*;
use pith_format::ir::*;
use pith_format::{write, write_with, Entropy, FormatError, PithFile, TensorView, WriteOptions};

fn small_file() -> Vec<u8> {
    // Every section non-empty but the file small, so exhaustive loops stay fast.
    let mut values = vec![
        Value {
            name: "in".into(),
            elem: ElemType::F32,
            shape: Some(vec![Dim::Symbol("N".into()), Dim::Fixed(4)]),
        },
        Value { name: "w".into(), elem: ElemType::F32, shape: Some(vec![Dim::Fixed(2), Dim::Fixed(4)]) },
    ];
    values.push(Value { name: "y".into(), elem: ElemType::F32, shape: None });
    let cb = codebook(3, 6, CodebookKind::SharedScaled, true, 2, 4);
    let graph = Graph {
        values,
        nodes: vec![Node {
            name: "gemm".into(),
            op: OpKind::Gemm,
            inputs: vec![Some(0), Some(1), None],
            outputs: vec![2],
            attrs: vec![
                ("alpha".into(), Attr::Float(1.0)),
                ("transB".into(), Attr::Int(1)),
                ("ks".into(), Attr::Ints(vec![1, 2])),
                ("fs".into(), Attr::Floats(vec![0.5])),
                ("s".into(), Attr::Str("x".into())),
            ],
        }],
        inputs: vec![0],
        outputs: vec![2],
    };
    let m = Model {
        graph,
        constants: vec![Constant { value: 1, data: TensorData::Codebook(cb.tensor) }],
        producer: "p".into(),
        props: Default::default(),
    };
    write(&m).unwrap()
}

fn err(bytes: Vec<u8>) -> FormatError {
    match PithFile::from_bytes(bytes) {
        Ok(_) => panic!("corrupt file accepted"),
        Err(e) => e,
    }
}

#[test]
fn every_truncation_is_reported_as_truncation() {
    let bytes = small_file();
    assert!(PithFile::from_bytes(bytes.clone()).is_ok());
    for len in 0..bytes.len() {
        match err(bytes[..len].to_vec()) {
            FormatError::Truncated { needed, actual, .. } => {
                assert_eq!(actual, len as u64);
                assert!(needed > actual);
            }
            e => panic!("prefix of {len} bytes: unexpected {e:?}"),
        }
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(err(long), FormatError::TrailingBytes { .. }));
}

#[test]
fn truncation_at_each_section_boundary_with_a_consistent_header_is_caught() {
    // A file cut at a section boundary whose header was then fixed up (length + checksum):
    // the sections past the cut no longer fit.
    let bytes = small_file();
    for e in entries(&bytes) {
        for cut in [e.offset as usize, (e.offset + e.length) as usize] {
            if cut >= bytes.len() {
                continue;
            }
            let mut b = bytes[..cut].to_vec();
            b[16..24].copy_from_slice(&(cut as u64).to_le_bytes());
            reseal_header(&mut b);
            let e = err(b);
            assert!(
                matches!(&e, FormatError::SectionTable(m) if m.contains("does not fit")),
                "cut {cut}: {e:?}"
            );
        }
    }
}

#[test]
fn every_flipped_byte_is_detected() {
    let bytes = small_file();
    let table = entries(&bytes);
    for pos in 0..bytes.len() {
        let mut b = bytes.clone();
        b[pos] ^= 0x5a;
        let e = err(b);
        // Inside a non-empty section, the section's checksum names it.
        if let Some(s) = table.iter().find(|s| (s.offset..s.offset + s.length).contains(&(pos as u64))) {
            match &e {
                FormatError::Checksum { section, .. } => {
                    assert!(section.contains(&format!("#{}", s.kind - 1)), "{section}")
                }
                e => panic!("flip at {pos} in section kind {}: {e:?}", s.kind),
            }
        }
    }
}

#[test]
fn bad_magic_is_reported() {
    let mut b = small_file();
    b[0] = b'X';
    assert!(matches!(err(b), FormatError::BadMagic { .. }));
    assert!(matches!(err(b"not a pith file at all, clearly not".to_vec()), FormatError::BadMagic { .. }));
}

#[test]
fn paths_that_are_not_files_are_named_as_such() {
    // mmap of a directory or a device fails with "No such device"; the reader says what it is.
    let dir = std::env::temp_dir();
    let e = PithFile::open(&dir).unwrap_err();
    assert!(
        matches!(&e, FormatError::Io { source, .. } if source.kind() == std::io::ErrorKind::IsADirectory)
    );
    assert!(e.to_string().ends_with("is a directory"), "{e}");
    #[cfg(unix)]
    {
        let e = PithFile::open("/dev/null").unwrap_err();
        assert!(e.to_string().ends_with("not a regular file"), "{e}");
    }
    let e = PithFile::open(dir.join("pith-no-such-model.pith")).unwrap_err();
    assert!(matches!(&e, FormatError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound));
}

#[test]
fn newer_major_version_is_refused_with_an_upgrade_hint() {
    let mut b = small_file();
    b[8..10].copy_from_slice(&7u16.to_le_bytes());
    b[10..12].copy_from_slice(&3u16.to_le_bytes());
    let e = err(b);
    assert!(matches!(e, FormatError::NewerVersion { major: 7, minor: 3 }));
    assert_eq!(e.to_string(), "format version 7.3 is newer than this reader (1.4); upgrade Pith");

    let mut b = small_file();
    b[8..10].copy_from_slice(&0u16.to_le_bytes());
    assert!(matches!(err(b), FormatError::UnsupportedVersion { major: 0, .. }));
}

#[test]
fn newer_minor_version_is_read() {
    let mut b = small_file();
    b[10..12].copy_from_slice(&9u16.to_le_bytes());
    reseal_header(&mut b);
    let f = PithFile::from_bytes(b).unwrap();
    assert_eq!(f.version(), (1, 9));
}

#[test]
fn header_checksum_protects_the_table() {
    let mut b = small_file();
    b[32 + 8] ^= 1; // first entry's offset, without resealing
    let e = err(b);
    assert!(matches!(&e, FormatError::Checksum { section, .. } if section == "header"), "{e:?}");
}

fn patched_table(f: impl FnOnce(&mut Vec<Entry>)) -> FormatError {
    let mut b = small_file();
    let mut t = entries(&b);
    f(&mut t);
    for (i, e) in t.into_iter().enumerate() {
        set_entry(&mut b, i, e);
    }
    reseal_header(&mut b);
    err(b)
}

fn table_msg(e: FormatError) -> String {
    match e {
        FormatError::SectionTable(m) => m,
        e => panic!("expected a section table error, got {e:?}"),
    }
}

#[test]
fn section_table_corruption_is_named() {
    let m = table_msg(patched_table(|t| t[2].offset += 8));
    assert!(m.contains("VALUES") && m.contains("multiple of 64"), "{m}");
    let m = table_msg(patched_table(|t| t[0].offset = u64::MAX - 4));
    assert!(m.contains("STRINGS") && m.contains("does not fit"), "{m}");
    let m = table_msg(patched_table(|t| t[3].length = u64::MAX));
    assert!(m.contains("DIMS"), "{m}");
    let m = table_msg(patched_table(|t| t[1].offset = 0));
    assert!(m.contains("overlaps the header"), "{m}");
    let m = table_msg(patched_table(|t| t[4].kind = 99));
    assert!(m.contains("unknown section kind 99"), "{m}");
    let m = table_msg(patched_table(|t| {
        t[4].kind = 99;
        t[4].flags = 1;
    }));
    assert!(m.contains("missing required IDS"), "{m}");
    let m = table_msg(patched_table(|t| t[4].kind = t[5].kind));
    assert!(m.contains("duplicate NODES"), "{m}");
    let m = table_msg(patched_table(|t| t[6] = t[5]));
    assert!(m.contains("duplicate") || m.contains("overlap"), "{m}");
    let m = table_msg(patched_table(|t| {
        let k = t[6].kind;
        t[6] = t[5];
        t[6].kind = k; // ATTRS claims the NODES bytes: overlap
    }));
    assert!(m.contains("overlaps the previous"), "{m}");
}

#[test]
fn section_count_beyond_the_file_is_truncation() {
    let mut b = small_file();
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(err(b), FormatError::Truncated { what: "section table", .. }));
}

#[test]
fn unknown_optional_sections_are_skipped_and_required_ones_refused() {
    let b = small_file();
    let f = PithFile::from_bytes(relayout(&b, &[(1000, 1, b"future data".to_vec())])).unwrap();
    assert_eq!(f.graph(), PithFile::from_bytes(b.clone()).unwrap().graph());
    let m = table_msg(err(relayout(&b, &[(1000, 0, b"future data".to_vec())])));
    assert!(m.contains("kind 1000") && m.contains("not marked optional"), "{m}");
}

#[test]
fn non_zero_padding_is_refused() {
    let b = small_file();
    let t = entries(&b);
    // The gap after the first section up to the second.
    let gap = (t[0].offset + t[0].length) as usize;
    assert!(gap < t[1].offset as usize, "test needs a padding gap");
    let mut c = b.clone();
    c[gap] = 1;
    assert!(matches!(err(c), FormatError::NonZeroPadding { offset } if offset == gap as u64));
}

#[test]
fn section_sizes_must_be_whole_records() {
    // Shrink VALUES by one byte (kept in bounds, checksum fixed): not a multiple of 16.
    let e = patched_table(|t| t[2].length -= 1);
    // The checksum no longer matches the shortened range unless resealed; reseal sections too.
    assert!(matches!(e, FormatError::Checksum { .. }), "{e:?}");
    let mut b = small_file();
    let mut t = entries(&b);
    t[2].length -= 1;
    set_entry(&mut b, 2, t[2]);
    reseal(&mut b);
    // The dropped byte is now padding: zero it so the size check is what fires.
    let cut = (t[2].offset + t[2].length) as usize;
    b[cut] = 0;
    reseal(&mut b);
    let e = err(b);
    assert!(matches!(e, FormatError::SectionSize { section: "VALUES", record: 16, .. }), "{e:?}");
}

/// Mutates a valid file many times (resealing checksums half of the time so the parser and
/// validator see the damage); opening must return Ok or Err and never panic. Accepted files must
/// be fully usable.
#[test]
fn random_mutations_never_panic() {
    let (m, _) = full_model();
    let base = write(&m).unwrap();
    let small = small_file();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut errs) = (0, 0);
    for iter in 0..6000 {
        let mut b = if iter % 2 == 0 { small.clone() } else { base.clone() };
        // Aim most mutations at the metadata (before DATA) where structure lives.
        let meta_end = section(&b, 12).start.max(1);
        for _ in 0..1 + rng.below(4) {
            let pos = if rng.below(4) == 0 { rng.below(b.len()) } else { rng.below(meta_end) };
            match rng.below(5) {
                0 => b[pos] = rng.next() as u8,
                1 => b[pos] ^= 1 << rng.below(8),
                2 => b[pos] = [0, 0xff, 0x80, 0x7f][rng.below(4)],
                // Whole fields with boundary values: what overflows and huge counts come from.
                _ => {
                    let at = pos & !7;
                    let v: u64 =
                        [0, 1, u32::MAX as u64, u64::MAX, 1 << 62, 1 << 31, 64, rng.next()][rng.below(8)];
                    let width = if rng.below(2) == 0 { 4 } else { 8 };
                    let end = (at + width).min(b.len());
                    b[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
                }
            }
        }
        if rng.below(8) == 0 {
            let n = rng.below(b.len());
            b.truncate(n);
        }
        if rng.below(2) == 0 && b.len() >= 32 + 32 * 12 {
            reseal(&mut b);
        }
        match PithFile::from_bytes(b) {
            Ok(f) => {
                ok += 1;
                for id in f.constant_ids().collect::<Vec<_>>() {
                    let v = f.constant(id).expect("listed constant has a view");
                    let rows =
                        f.graph().values[id as usize].shape.as_ref().and_then(|s| s.first()).map_or(1, |d| {
                            match d {
                                Dim::Fixed(n) => *n as usize,
                                Dim::Symbol(_) => 1,
                            }
                        });
                    let mut out = vec![0.0; v.numel().max(1)];
                    for r in 0..rows {
                        v.decode_row(rows, r, &mut out);
                    }
                }
            }
            Err(e) => {
                errs += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(errs > 3000, "mutations should mostly be caught ({ok} ok, {errs} errors)");
}

const COMPACT: WriteOptions = WriteOptions { entropy: Entropy::None, compact: true };
/// Section kind code of PACKED (format 1.2).
const PACKED: u32 = 13;

/// The inflated bytes of a compact file's PACKED section (layout from SPEC.md).
fn inflate(b: &[u8]) -> Vec<u8> {
    let s = &b[section(b, PACKED)];
    let out = miniz_oxide::inflate::decompress_to_vec(&s[8..]).unwrap();
    assert_eq!(out.len() as u32, u32::from_le_bytes(s[..4].try_into().unwrap()));
    out
}

/// `b` with its PACKED section replaced by `inflated`, deflated and resealed.
fn repack(b: &[u8], inflated: &[u8]) -> Vec<u8> {
    let mut payload = (inflated.len() as u32).to_le_bytes().to_vec();
    payload.extend_from_slice(&[0; 4]);
    payload.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(inflated, 6));
    let mut table = entries(b);
    let others: Vec<(u32, u32, Vec<u8>)> = table
        .drain(..)
        .filter(|e| e.kind != PACKED)
        .map(|e| (e.kind, e.flags, b[e.offset as usize..(e.offset + e.length) as usize].to_vec()))
        .collect();
    let only_packed = relayout_only(b, &[(PACKED, 0, payload)]);
    relayout(&only_packed, &others)
}

/// A file with the header of `b` and exactly the sections `secs`.
fn relayout_only(b: &[u8], secs: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
    let mut head = b[..32].to_vec();
    head[12..16].copy_from_slice(&0u32.to_le_bytes());
    relayout(&head, secs)
}

#[test]
fn compact_files_open_and_their_packed_section_is_checked() {
    let (m, _) = full_model();
    let b = write_with(&m, &COMPACT).unwrap();
    let f = PithFile::from_bytes(b.clone()).unwrap();
    assert_eq!((f.version(), f.graph()), ((1, 2), &m.graph));
    assert_eq!(entries(&b).iter().map(|e| e.kind).collect::<Vec<_>>(), [PACKED, 12]);
    // Re-deflating the same metadata at another level gives an equivalent file.
    assert_eq!(PithFile::from_bytes(repack(&b, &inflate(&b))).unwrap().graph(), &m.graph);

    // A PACKED section in a file that claims 1.1.
    let mut old = b.clone();
    old[10..12].copy_from_slice(&1u16.to_le_bytes());
    reseal_header(&mut old);
    assert!(table_msg(err(old)).contains("needs format 1.2"));
    // A packed kind also in the table, a second PACKED, and no PACKED at all.
    let m1 = table_msg(err(relayout(&b, &[(1, 0, b"dup".to_vec())])));
    assert!(m1.contains("STRINGS is both in the section table and in PACKED"), "{m1}");
    let packed = b[section(&b, PACKED)].to_vec();
    assert!(table_msg(err(relayout(&b, &[(PACKED, 0, packed)]))).contains("duplicate PACKED"));
    let data = b[section(&b, 12)].to_vec();
    assert!(table_msg(err(relayout_only(&b, &[(12, 0, data)]))).contains("missing required STRINGS"));
    // A damaged stream, resealed so the checksum passes.
    let mut bad = b.clone();
    let at = section(&bad, PACKED).start + 8;
    bad[at] ^= 0xff;
    reseal(&mut bad);
    assert!(matches!(err(bad), FormatError::Packed(_) | FormatError::Checksum { .. }));
}

/// Mutates the inflated metadata of a compact file (then deflates it again, so the records, not
/// the stream, carry the damage), and the stream itself: never a panic, accepted files usable.
#[test]
fn compact_metadata_mutations_never_panic() {
    let (m, _) = full_model();
    let base = write_with(&m, &COMPACT).unwrap();
    let inflated = inflate(&base);
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let (mut ok, mut errs) = (0, 0);
    for iter in 0..1500 {
        let b = if iter % 4 == 3 {
            let mut b = base.clone();
            let s = section(&b, PACKED);
            let pos = s.start + rng.below(s.len());
            b[pos] = rng.next() as u8;
            reseal(&mut b);
            b
        } else {
            let mut raw = inflated.clone();
            for _ in 0..1 + rng.below(3) {
                let pos = rng.below(raw.len());
                match rng.below(3) {
                    0 => raw[pos] = rng.next() as u8,
                    1 => raw[pos] ^= 1 << rng.below(8),
                    _ => {
                        let at = pos & !3;
                        let v = [0u32, 1, u32::MAX, 1 << 31, rng.next() as u32][rng.below(5)];
                        let end = (at + 4).min(raw.len());
                        raw[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
                    }
                }
            }
            repack(&base, &raw)
        };
        match PithFile::from_bytes(b) {
            Ok(f) => {
                ok += 1;
                for id in f.constant_ids().collect::<Vec<_>>() {
                    assert!(f.constant(id).is_some());
                }
            }
            Err(e) => {
                errs += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(errs > 700, "mutations should mostly be caught ({ok} ok, {errs} errors)");
}

/// The inflated offset of packed section `kind`'s contents (entries from SPEC.md).
fn packed_entry(inflated: &[u8], kind: u32) -> usize {
    let mut at = 0;
    while at < inflated.len() {
        let k = u32::from_le_bytes(inflated[at..at + 4].try_into().unwrap());
        let len = u32::from_le_bytes(inflated[at + 4..at + 8].try_into().unwrap()) as usize;
        if k == kind {
            return at + 8;
        }
        at = (at + 8 + len).next_multiple_of(8);
    }
    panic!("no packed section of kind {kind}");
}

#[test]
fn compact_blobs_need_16_byte_alignment() {
    let (m, _) = full_model();
    let b = write_with(&m, &COMPACT).unwrap();
    let inflated = inflate(&b);
    let data_offset = packed_entry(&inflated, 10) + 12; // first ConstRec's data.offset
    let offset = u32::from_le_bytes(inflated[data_offset..data_offset + 4].try_into().unwrap());
    let with_offset = |o: u32| {
        let mut raw = inflated.clone();
        raw[data_offset..data_offset + 4].copy_from_slice(&o.to_le_bytes());
        PithFile::from_bytes(repack(&b, &raw))
    };
    assert_eq!(offset % 16, 0, "the writer aligns compact blobs to 16 bytes");
    let e = with_offset(offset + 8).unwrap_err().to_string();
    assert!(e.contains("not a multiple of 16"), "{e}");
}

/// The full model with its SharedScaled codebooks marked for f16 scales (their scales,
/// `0.5 + row`, are f16 values).
fn half_scaled_model() -> Model {
    let (mut m, _) = full_model();
    for c in &mut m.constants {
        if let TensorData::Codebook(cb) = &mut c.data {
            cb.f16_scales = cb.kind == CodebookKind::SharedScaled;
        }
    }
    m
}

/// Offset, in the inflated metadata, of the record of the first constant whose codebook kind is
/// `kind` (records from SPEC.md: 36 bytes, `cb_kind` at byte 6).
fn const_rec(inflated: &[u8], kind: u8) -> usize {
    let start = packed_entry(inflated, 10);
    let len = u32::from_le_bytes(inflated[start - 4..start].try_into().unwrap()) as usize;
    (start..start + len)
        .step_by(36)
        .find(|&at| inflated[at + 4] >= 3 && inflated[at + 6] == kind)
        .expect("a codebook constant of that kind")
}

#[test]
fn f16_scales_round_trip_in_the_compact_layout_and_their_record_is_checked() {
    let m = half_scaled_model();
    let (plain_model, _) = full_model();
    let b = write_with(&m, &COMPACT).unwrap();
    let f = PithFile::from_bytes(b.clone()).unwrap();
    assert_eq!(f.version(), (1, 3));
    // The same tensors as with f32 scales, for 2 bytes less per row.
    let g = PithFile::from_bytes(write_with(&plain_model, &COMPACT).unwrap()).unwrap();
    assert_eq!(g.version(), (1, 2));
    let mut scaled = 0;
    for c in &m.constants {
        let (TensorView::Codebook(a), TensorView::Codebook(b)) =
            (f.constant(c.value).unwrap(), g.constant(c.value).unwrap())
        else {
            continue;
        };
        assert_eq!(a.scales, b.scales);
        if a.kind == CodebookKind::SharedScaled {
            scaled += 1;
            assert!(!a.scales.is_empty());
            assert_eq!(f.constant_bytes(c.value) + 2 * a.rows, g.constant_bytes(c.value));
        }
    }
    assert!(scaled > 0);
    // The plain layout stores them as f32: readable by 1.0 readers.
    let p = PithFile::from_bytes(write(&m).unwrap()).unwrap();
    assert_eq!(p.version(), (1, 0));

    // The writer refuses a scale that is not an f16 value, and f16 scales without scales.
    let mut bad = m.clone();
    let mut bad_kind = m.clone();
    for c in &mut bad.constants {
        if let TensorData::Codebook(cb) = &mut c.data {
            if cb.f16_scales {
                cb.scales[0] = 0.1;
            }
        }
    }
    for c in &mut bad_kind.constants {
        if let TensorData::Codebook(cb) = &mut c.data {
            cb.f16_scales |= cb.kind == CodebookKind::PerTensor;
        }
    }
    let e = write_with(&bad, &COMPACT).unwrap_err().to_string();
    assert!(e.contains("is not an f16 value"), "{e}");
    let e = write_with(&bad_kind, &COMPACT).unwrap_err().to_string();
    assert!(e.contains("f16 scales on a codebook without scales"), "{e}");

    // The reader: f16 scales in a file that says 1.2, an unknown scale type, the reserved
    // byte, f16 scales on a codebook without scales, and f32 scales with an f16 blob.
    let inflated = inflate(&b);
    let rec = const_rec(&inflated, 2);
    let mut old = b.clone();
    old[10..12].copy_from_slice(&2u16.to_le_bytes());
    reseal_header(&mut old);
    let e = err(old).to_string();
    assert!(e.contains("need format 1.3"), "{e}");
    let patched = |at: usize, v: u8| {
        let mut raw = inflated.clone();
        raw[at] = v;
        err(repack(&b, &raw)).to_string()
    };
    let e = patched(rec + 10, 7);
    assert!(e.contains("scale type"), "{e}");
    let e = patched(rec + 11, 1);
    assert!(e.contains("reserved byte is 1"), "{e}");
    let e = patched(const_rec(&inflated, 0) + 10, 1);
    assert!(e.contains("f16 scales on a codebook without scales"), "{e}");
    let e = patched(rec + 10, 0);
    assert!(e.contains("codebook scales"), "{e}");
}

/// Section kind code of PROPS (format 1.4).
const PROPS: u32 = 14;

/// The full model with properties: a recognizer's character set and an empty value.
fn model_with_props() -> Model {
    let (mut m, _) = full_model();
    m.props.insert("character".into(), "a\nb\n字\n".repeat(40));
    m.props.insert("empty".into(), String::new());
    m
}

/// `inflated` as a PROPS section body (layout from SPEC.md).
fn props_section(inflated: &[u8]) -> Vec<u8> {
    let mut payload = (inflated.len() as u32).to_le_bytes().to_vec();
    payload.extend_from_slice(&[0; 4]);
    payload.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(inflated, 6));
    payload
}

/// `b` with its PROPS section's bytes replaced by `props` (same kind and flags).
fn with_props_section(b: &[u8], props: Vec<u8>) -> Vec<u8> {
    let secs: Vec<(u32, u32, Vec<u8>)> = entries(b)
        .iter()
        .map(|e| {
            let bytes = if e.kind == PROPS {
                props.clone()
            } else {
                b[e.offset as usize..(e.offset + e.length) as usize].to_vec()
            };
            (e.kind, e.flags, bytes)
        })
        .collect();
    relayout_only(b, &secs)
}

#[test]
fn properties_round_trip_in_an_optional_section_before_data() {
    let m = model_with_props();
    for options in [WriteOptions::default(), COMPACT] {
        let b = write_with(&m, &options).unwrap();
        let f = PithFile::from_bytes(b.clone()).unwrap();
        assert_eq!(f.version(), (1, 4));
        assert_eq!(f.props(), &m.props);
        assert_eq!(f.prop("empty"), Some(""));
        assert_eq!(f.prop("absent"), None);
        assert_eq!(f.graph(), &m.graph);
        let table = entries(&b);
        let n = table.len();
        assert_eq!((table[n - 2].kind, table[n - 2].flags), (PROPS, 1), "PROPS, marked optional");
        assert_eq!(table[n - 1].kind, 12, "DATA stays last");
        // Deflated: the repeated character set takes a fraction of its 400 bytes.
        assert!(table[n - 2].length < 100, "{} bytes", table[n - 2].length);
        assert_eq!(b, write_with(&m, &options).unwrap(), "deterministic");
    }
    // Without properties there is no PROPS section and the version stays what the rest needs.
    let (plain, _) = full_model();
    let b = write_with(&plain, &COMPACT).unwrap();
    assert!(entries(&b).iter().all(|e| e.kind != PROPS));
    assert_eq!(PithFile::from_bytes(b).unwrap().version(), (1, 2));
}

#[test]
fn a_reader_that_skips_optional_sections_reads_the_model_without_its_properties() {
    // What a 1.3 reader does with the file: the PROPS entry, marked optional, dropped.
    let m = model_with_props();
    let b = write_with(&m, &COMPACT).unwrap();
    let without: Vec<(u32, u32, Vec<u8>)> = entries(&b)
        .iter()
        .filter(|e| e.kind != PROPS)
        .map(|e| (e.kind, e.flags, b[e.offset as usize..(e.offset + e.length) as usize].to_vec()))
        .collect();
    let f = PithFile::from_bytes(relayout_only(&b, &without)).unwrap();
    assert_eq!(f.graph(), &m.graph);
    assert!(f.props().is_empty());
}

#[test]
fn bad_properties_are_named() {
    let m = model_with_props();
    let b = write_with(&m, &COMPACT).unwrap();
    // A PROPS section in a file that claims 1.3.
    let mut old = b.clone();
    old[10..12].copy_from_slice(&3u16.to_le_bytes());
    reseal_header(&mut old);
    assert!(table_msg(err(old)).contains("a PROPS section needs format 1.4, but the file says 1.3"));
    // Two PROPS sections.
    let props = b[section(&b, PROPS)].to_vec();
    assert!(table_msg(err(relayout(&b, &[(PROPS, 1, props)]))).contains("duplicate PROPS"));
    // Records that break the rules, in a well-formed stream.
    let entry = |k: &[u8], v: &[u8]| {
        [&(k.len() as u32).to_le_bytes()[..], &(v.len() as u32).to_le_bytes(), k, v].concat()
    };
    let cases: [(Vec<u8>, &str); 4] = [
        ([entry(b"b", b""), entry(b"a", b"")].concat(), "ascending order"),
        (entry(b"k", &[0xc3]), "value is not UTF-8"),
        (entry(b"", b"v"), "empty key"),
        (entry(b"k", b"v")[..9].to_vec(), "runs past the inflated end"),
    ];
    for (raw, want) in cases {
        match err(with_props_section(&b, props_section(&raw))) {
            FormatError::Props(msg) => assert!(msg.contains(want), "{msg} (expected '{want}')"),
            e => panic!("expected a PROPS error, got {e:?}"),
        }
    }
    // A damaged stream, resealed so the checksum passes.
    let mut bad = b.clone();
    let at = section(&bad, PROPS).start + 8;
    bad[at] ^= 0xff;
    reseal(&mut bad);
    assert!(matches!(err(bad), FormatError::Props(_)));
}

/// Mutates the properties' inflated records and their stream: never a panic, and a file that
/// opens has properties it can hand out.
#[test]
fn property_mutations_never_panic() {
    let b = write_with(&model_with_props(), &COMPACT).unwrap();
    let s = &b[section(&b, PROPS)];
    let inflated = miniz_oxide::inflate::decompress_to_vec(&s[8..]).unwrap();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut errs) = (0, 0);
    for iter in 0..600 {
        let file = if iter % 3 == 2 {
            let mut b = b.clone();
            let s = section(&b, PROPS);
            let pos = s.start + rng.below(s.len());
            b[pos] = rng.next() as u8;
            reseal(&mut b);
            b
        } else {
            let mut raw = inflated.clone();
            let pos = rng.below(raw.len());
            match rng.below(3) {
                0 => raw[pos] = rng.next() as u8,
                1 => raw[pos] ^= 1 << rng.below(8),
                _ => raw.truncate(pos),
            }
            with_props_section(&b, props_section(&raw))
        };
        match PithFile::from_bytes(file) {
            Ok(f) => {
                ok += 1;
                assert!(f.props().keys().all(|k| !k.is_empty()));
            }
            Err(e) => {
                errs += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(errs > 200 && ok > 0, "{ok} ok, {errs} errors");
}
