//! Semantic validation tests. Invalid models are serialised with the unvalidating encoder (or
//! patched and resealed) so the file's checksums are right and the reader's validation — not a
//! checksum — must catch the problem. Each case also checks `write` refuses the same model.

use std::mem::size_of;

use crate::ir::*;
use crate::layout::*;
use crate::sections::header_crc;
use crate::storage::Storage;
use crate::writer::encode;
use crate::{write, FormatError, PithFile, TensorView};

fn val(name: &str, elem: ElemType, dims: Option<&[u64]>) -> Value {
    Value { name: name.into(), elem, shape: dims.map(|d| d.iter().map(|&n| Dim::Fixed(n)).collect()) }
}

fn node(name: &str, op: OpKind, inputs: &[Option<ValueId>], outputs: &[ValueId]) -> Node {
    Node {
        name: name.into(),
        op,
        inputs: inputs.to_vec(),
        outputs: outputs.to_vec(),
        attrs: vec![("alpha".into(), Attr::Float(0.5))],
    }
}

/// x[N,4] · w[2,4]ᵀ → y, with `w` an f32 constant.
fn base() -> Model {
    let mut x = val("x", ElemType::F32, Some(&[]));
    x.shape = Some(vec![Dim::Symbol("N".into()), Dim::Fixed(4)]);
    Model {
        graph: Graph {
            values: vec![x, val("w", ElemType::F32, Some(&[2, 4])), val("y", ElemType::F32, None)],
            nodes: vec![node("NODENAME", OpKind::Gemm, &[Some(0), Some(1), None], &[2])],
            inputs: vec![0],
            outputs: vec![2],
        },
        constants: vec![Constant { value: 1, data: TensorData::F32((0..8).map(|i| i as f32).collect()) }],
        producer: "unit".into(),
        props: Default::default(),
    }
}

/// The reader's error for the unvalidated encoding of `m`, after checking `write` refuses `m`
/// with the same kind of error.
fn rejected(m: &Model) -> FormatError {
    let w = write(m).expect_err("write accepted an invalid model");
    let r = PithFile::from_bytes(encode(m).unwrap()).expect_err("reader accepted an invalid file");
    assert_eq!(std::mem::discriminant(&w), std::mem::discriminant(&r), "writer: {w}\nreader: {r}");
    r
}

/// Recomputes every section checksum and the header checksum.
fn reseal(b: &mut [u8]) {
    let n = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    let table_end = size_of::<Header>() + n * size_of::<SectionEntry>();
    for i in 0..n {
        let at = size_of::<Header>() + i * size_of::<SectionEntry>();
        let mut e: SectionEntry = bytemuck::pod_read_unaligned(&b[at..at + 32]);
        e.crc = crc32fast::hash(&b[e.offset as usize..(e.offset + e.length) as usize]);
        b[at..at + 32].copy_from_slice(bytemuck::bytes_of(&e));
    }
    let crc = header_crc(&b[..table_end]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// File offset of the section of `kind`.
fn section_at(b: &[u8], kind: SectionKind) -> usize {
    let at = size_of::<Header>() + (kind as usize - 1) * size_of::<SectionEntry>();
    let e: SectionEntry = bytemuck::pod_read_unaligned(&b[at..at + 32]);
    assert_eq!(e.kind, kind as u32);
    e.offset as usize
}

/// Encodes `m`, applies `patch` to the bytes, reseals, and returns the reader's error.
fn patched(m: &Model, patch: impl FnOnce(&mut Vec<u8>)) -> FormatError {
    let mut b = encode(m).unwrap();
    patch(&mut b);
    reseal(&mut b);
    PithFile::from_bytes(b).expect_err("reader accepted a patched file")
}

/// Writes the low `width` bytes of `v` at `at` (little-endian).
fn put(b: &mut [u8], at: usize, width: usize, v: u64) {
    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
}

#[test]
fn base_model_is_valid() {
    let b = write(&base()).unwrap();
    assert_eq!(b, encode(&base()).unwrap());
    PithFile::from_bytes(b).unwrap();
}

#[test]
fn copied_storage_serves_aligned_views() {
    let b = write(&base()).unwrap();
    // An odd start forces the copy path that unaligned caller buffers take.
    let mut shifted = vec![0u8];
    shifted.extend_from_slice(&b);
    let f = PithFile::from_storage(Storage::copied(&shifted[1..])).unwrap();
    let Some(TensorView::F32(w)) = f.constant(1) else { panic!("w is an f32 constant") };
    assert_eq!(w.as_ptr() as usize % ALIGN, 0);
    assert_eq!(w, &[0., 1., 2., 3., 4., 5., 6., 7.]);
}

#[test]
fn absurd_dims_are_an_error_not_an_overflow() {
    // Extents beyond i64::MAX cannot be stored at all (DIMS are i64); the writer's shape check
    // still comes first.
    let mut m = base();
    m.graph.values[1] = val("w", ElemType::F32, Some(&[u64::MAX, 2]));
    assert!(matches!(write(&m), Err(FormatError::BadShape { id: 1, .. })));
    for dims in [[1u64 << 62, 4], [1 << 32, 1 << 32], [i64::MAX as u64, 2], [1 << 60, 1]] {
        let mut m = base();
        m.graph.values[1] = val("w", ElemType::F32, Some(&dims));
        let e = rejected(&m);
        assert!(
            matches!(&e, FormatError::BadShape { id: 1, reason, .. } if reason.contains("too many")),
            "{e:?}"
        );
    }
    // A huge but representable count is a length mismatch, not an allocation.
    let mut m = base();
    m.graph.values[1] = val("w", ElemType::F32, Some(&[1 << 40, 4]));
    assert!(matches!(rejected(&m), FormatError::BadConstant { id: 1, .. }));
}

#[test]
fn constant_shapes_must_be_fixed() {
    let mut m = base();
    m.graph.values[1].shape = None;
    assert!(matches!(rejected(&m), FormatError::BadShape { id: 1, .. }));
    m.graph.values[1].shape = Some(vec![Dim::Symbol("K".into()), Dim::Fixed(4)]);
    let e = rejected(&m);
    assert!(e.to_string().contains("symbolic ('K')"), "{e}");
}

#[test]
fn data_length_and_element_type_must_match() {
    let mut m = base();
    m.constants[0].data = TensorData::F32(vec![0.0; 7]);
    let e = rejected(&m);
    assert!(matches!(e, FormatError::BadConstant { id: 1, .. }), "{e:?}");
    let mut m = base();
    m.constants[0].data = TensorData::I64(vec![0; 8]);
    let e = rejected(&m);
    assert!(e.to_string().contains("element type"), "{e}");
}

fn pack(idx: &[&[u8]], bits: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for row in idx {
        let start = out.len();
        out.resize(start + (row.len() * bits as usize).div_ceil(8), 0);
        for (i, &v) in row.iter().enumerate() {
            for b in 0..bits as usize {
                let bit = i * bits as usize + b;
                out[start + bit / 8] |= ((v >> b) & 1) << (bit % 8);
            }
        }
    }
    out
}

/// `base` with `w` replaced by a 2×`row_len` codebook tensor.
fn with_codebook(bits: u8, entries: usize, idx: &[&[u8]]) -> Model {
    let mut m = base();
    let row_len = idx[0].len();
    m.graph.values[1] = val("w", ElemType::F32, Some(&[idx.len() as u64, row_len as u64]));
    m.constants[0].data = TensorData::Codebook(CodebookTensor {
        bits,
        rows: idx.len(),
        row_len,
        entries,
        kind: CodebookKind::PerTensor,
        centroids: Centroids::F32((0..entries).map(|i| i as f32).collect()),
        scales: vec![],
        f16_scales: false,
        indices: pack(idx, bits),
    });
    m
}

#[test]
fn codebook_indices_beyond_entries_are_caught() {
    // (bits, entries, bad row, bad pos, bad index): generic path (3, 5, 7) and byte-table path.
    for (bits, entries, row, pos, index) in [
        (3, 5, 1, 2, 6),
        (5, 17, 0, 4, 31),
        (4, 10, 1, 0, 12),
        (8, 200, 1, 3, 255),
        (1, 1, 0, 1, 1),
        (2, 3, 1, 4, 3),
    ] {
        let mut r0 = vec![0u8; 5];
        let mut r1 = vec![(entries - 1) as u8; 5];
        [&mut r0, &mut r1][row][pos] = index as u8;
        let m = with_codebook(bits, entries, &[&r0, &r1]);
        match rejected(&m) {
            FormatError::IndexOutOfRange { id: 1, row: r, pos: p, index: i, entries: e, .. } => {
                assert_eq!((r, p, i, e), (row, pos, index, entries), "bits {bits}")
            }
            e => panic!("bits {bits}: {e:?}"),
        }
    }
}

#[test]
fn full_codebooks_accept_every_index() {
    let row: Vec<u8> = (0..8).collect();
    let m = with_codebook(3, 8, &[&row, &row]);
    let f = PithFile::from_bytes(write(&m).unwrap()).unwrap();
    let mut out = [0.0; 8];
    f.constant(1).unwrap().decode_row(2, 1, &mut out);
    assert_eq!(out, [0., 1., 2., 3., 4., 5., 6., 7.]);
}

#[test]
fn spec_packing_example_holds() {
    // SPEC.md: bits = 3, indices 5, 2, 7 -> bytes D5 01.
    let m = with_codebook(3, 8, &[&[5, 2, 7], &[0, 0, 0]]);
    let f = PithFile::from_bytes(write(&m).unwrap()).unwrap();
    let Some(TensorView::Codebook(c)) = f.constant(1) else { panic!("w is a codebook constant") };
    assert_eq!(c.row_indices(0), &[0xD5, 0x01]);
    let mut out = [0.0; 3];
    c.decode_row(0, &mut out);
    assert_eq!(out, [5.0, 2.0, 7.0]);
    assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926, "SPEC.md CRC check value");
}

#[test]
fn empty_codebook_with_huge_row_count_is_cheap() {
    // shape [2^59, 0]: no indices at all, so validation must not loop over the rows.
    let mut m = with_codebook(3, 5, &[&[0], &[0]]);
    m.graph.values[1] = val("w", ElemType::F32, Some(&[1 << 59, 0]));
    if let TensorData::Codebook(c) = &mut m.constants[0].data {
        (c.rows, c.row_len, c.indices) = (1 << 59, 0, vec![]);
    }
    let f = PithFile::from_bytes(write(&m).unwrap()).unwrap();
    assert_eq!(f.constant(1).unwrap().numel(), 0);
}

#[test]
fn list_attribute_ranges_are_checked_without_overflow() {
    let mut m = base();
    m.graph.nodes[0].attrs = vec![("pads".into(), Attr::Ints(vec![1, 2]))];
    // AttrRec.value = start | count << 32, count 2: a start of u32::MAX would wrap in 32 bits.
    for start in [u32::MAX as u64, 1] {
        let e = patched(&m, |b| {
            let at = section_at(b, SectionKind::Attrs) + 8; // AttrRec.value
            put(b, at, 8, start | 2 << 32);
        });
        assert!(
            matches!(&e, FormatError::BadReference { what: "INTS", context, .. } if context.contains("'pads'")),
            "{e:?}"
        );
    }
}

#[test]
fn codebook_padding_bits_must_be_zero() {
    let mut m = with_codebook(3, 8, &[&[1, 2, 3], &[4, 5, 6]]); // 9 bits per row: 7 padding bits
    if let TensorData::Codebook(c) = &mut m.constants[0].data {
        c.indices[3] |= 0x80;
    }
    let e = rejected(&m);
    assert!(e.to_string().contains("row 1: padding bits"), "{e}");
}

#[test]
fn codebook_geometry_is_checked() {
    type Patch = fn(&mut CodebookTensor);
    let cases: [(&str, Patch); 7] = [
        ("bits 0 not in 1..=8", |c| c.bits = 0),
        ("bits 9 not in 1..=8", |c| c.bits = 9),
        ("entries 0", |c| c.entries = 0),
        ("entries 9 not in 1..=8", |c| c.entries = 9),
        ("rows 3 != shape[0] 2", |c| c.rows = 3),
        ("row_len 4 != product", |c| c.row_len = 4),
        ("codebook centroids", |c| c.centroids = Centroids::F32(vec![0.0; 3])),
    ];
    for (msg, f) in cases {
        let mut m = with_codebook(3, 8, &[&[1, 2, 3], &[4, 5, 6]]);
        if let TensorData::Codebook(c) = &mut m.constants[0].data {
            f(c);
        }
        // The file does not store rows and row_len (the reader derives them from the shape), so
        // only the writer can see those two disagree with the shape.
        let e = if msg.starts_with("row") { write(&m).unwrap_err() } else { rejected(&m) };
        assert!(e.to_string().contains(msg), "expected '{msg}': {e}");
    }
    // In a file, a wrong shape shows up as index bytes that do not match the derived geometry.
    let mut m = with_codebook(3, 8, &[&[1, 2, 3], &[4, 5, 6]]);
    m.graph.values[1] = val("w", ElemType::F32, Some(&[3, 3]));
    let e = PithFile::from_bytes(encode(&m).unwrap()).unwrap_err();
    assert!(e.to_string().contains("codebook indices is 4 bytes, expected 6"), "{e}");
}

#[test]
fn non_finite_centroids_and_scales_are_refused() {
    let mut m = with_codebook(3, 8, &[&[1, 2, 3], &[4, 5, 6]]);
    if let TensorData::Codebook(c) = &mut m.constants[0].data {
        c.centroids = Centroids::F32(vec![0., 1., 2., f32::NAN, 4., 5., 6., 7.]);
    }
    assert!(matches!(rejected(&m), FormatError::NonFinite { what: "centroid", pos: 3, .. }));
    if let TensorData::Codebook(c) = &mut m.constants[0].data {
        c.centroids = Centroids::F32(vec![0.0; 8]);
        c.kind = CodebookKind::SharedScaled;
        c.scales = vec![1.0, f32::INFINITY];
    }
    assert!(matches!(rejected(&m), FormatError::NonFinite { what: "scale", pos: 1, .. }));
}

#[test]
fn cycles_and_use_before_definition_name_the_node() {
    // a: v3 -> v2 ; b: v2 -> v3  (a cycle)
    let mut m = base();
    m.graph.values.push(val("v3", ElemType::F32, None));
    m.graph.nodes =
        vec![node("a", OpKind::Relu, &[Some(3)], &[2]), node("b", OpKind::Relu, &[Some(2)], &[3])];
    let e = rejected(&m);
    assert!(
        matches!(&e, FormatError::UseBeforeDefinition { node_index: 0, node, id: 3, value, .. } if node == "a" && value == "v3"),
        "{e:?}"
    );
    assert!(e.to_string().contains("cyclic"));
    // Acyclic but out of order.
    m.graph.nodes =
        vec![node("late", OpKind::Relu, &[Some(2)], &[3]), node("early", OpKind::Relu, &[Some(0)], &[2])];
    assert!(matches!(rejected(&m), FormatError::UseBeforeDefinition { node_index: 0, .. }));
}

#[test]
fn duplicate_definitions_are_refused() {
    let mut m = base();
    m.graph.nodes.push(node("again", OpKind::Relu, &[Some(0)], &[2]));
    let e = rejected(&m);
    assert!(
        matches!(&e, FormatError::DuplicateDefinition { id: 2, first, second, .. }
            if first == "node #0 'NODENAME'" && second == "node #1 'again'"),
        "{e:?}"
    );
    let mut m = base();
    m.graph.inputs.push(1); // also a constant
    assert!(rejected(&m).to_string().contains("graph input #1 and by constant #0"));
    let mut m = base();
    m.constants.push(m.constants[0].clone());
    assert!(matches!(rejected(&m), FormatError::DuplicateDefinition { id: 1, .. }));
}

#[test]
fn undefined_values_and_bad_ids_are_refused() {
    let mut m = base();
    m.graph.values.push(val("orphan", ElemType::F32, None));
    assert!(matches!(rejected(&m), FormatError::Undefined { id: 3, .. }));
    let mut m = base();
    m.graph.outputs.push(17);
    let e = rejected(&m);
    assert!(
        matches!(&e, FormatError::BadReference { index: 17, limit: 3, context, .. } if context.contains("graph output")),
        "{e:?}"
    );
    let mut m = base();
    m.graph.nodes[0].inputs[2] = Some(99);
    let e = rejected(&m);
    assert!(e.to_string().contains("node #0 'NODENAME'"), "{e}");
    let mut m = base();
    m.constants[0].value = 50;
    assert!(matches!(rejected(&m), FormatError::BadReference { index: 50, .. }));
}

#[test]
fn bad_op_code_is_named() {
    let e = patched(&base(), |b| {
        let at = section_at(b, SectionKind::Nodes) + 16; // NodeRec.op
        put(b, at, 2, 999);
    });
    assert!(
        matches!(&e, FormatError::BadEnum { what: "op code", value: 999, context } if context.contains("NODENAME")),
        "{e:?}"
    );
}

#[test]
fn non_utf8_strings_are_refused() {
    let e = patched(&base(), |b| {
        let s = section_at(b, SectionKind::Strings);
        let pos = b[s..].windows(8).position(|w| w == b"NODENAME").unwrap();
        b[s + pos] = 0xff;
    });
    assert!(
        matches!(&e, FormatError::BadString { context, reason } if context == "name of node #0" && reason.contains("UTF-8")),
        "{e:?}"
    );
}

#[test]
fn out_of_range_string_refs_are_refused() {
    let e = patched(&base(), |b| {
        let at = section_at(b, SectionKind::Values) + 4; // ValueRec.name.len of value #0
        put(b, at, 4, u32::MAX as u64);
    });
    assert!(matches!(&e, FormatError::BadString { context, .. } if context == "name of value #0"), "{e:?}");
}

#[test]
fn bad_enum_values_are_named() {
    let m = base();
    // (section, byte offset within the first record, field width, field value, field name)
    let cases = [
        (SectionKind::Values, 12, 1, 7, "element type"),
        (SectionKind::Values, 13, 1, 2, "has_shape flag"),
        (SectionKind::Attrs, 6, 2, 9, "attribute kind"),
        (SectionKind::Constants, 4, 1, 5, "encoding"),
    ];
    for (kind, off, width, value, what) in cases {
        let e = patched(&m, |b| {
            let at = section_at(b, kind) + off;
            put(b, at, width, value);
        });
        assert!(
            matches!(&e, FormatError::BadEnum { what: w, value: v, .. } if *w == what && *v == value),
            "{what}: {e:?}"
        );
    }
    let cb = with_codebook(3, 8, &[&[1, 2, 3], &[4, 5, 6]]);
    for (off, what) in [(6, "codebook kind"), (7, "centroid type")] {
        let e = patched(&cb, |b| {
            let at = section_at(b, SectionKind::Constants) + off;
            put(b, at, 1, 3);
        });
        assert!(matches!(&e, FormatError::BadEnum { what: w, .. } if *w == what), "{what}: {e:?}");
    }
}

#[test]
fn dims_encode_extents_and_symbols() {
    // base(): x = [N, 4] (DIMS -1, 4), then w = [2, 4] (DIMS 2, 4); one symbol, "N".
    let b = write(&base()).unwrap();
    let dims = section_at(&b, SectionKind::Dims);
    let d = |i: usize| i64::from_le_bytes(b[dims + 8 * i..dims + 8 * i + 8].try_into().unwrap());
    assert_eq!([d(0), d(1), d(2), d(3)], [-1, 4, 2, 4]);
    // A symbol index past SYMBOLS is a named bad reference, also for the most negative dim.
    for bad in [-2i64, i64::MIN] {
        let e = patched(&base(), |b| {
            let at = section_at(b, SectionKind::Dims);
            put(b, at, 8, bad as u64);
        });
        assert!(
            matches!(&e, FormatError::BadReference { what: "SYMBOLS", limit: 1, context, .. } if context.contains("'x'")),
            "{bad}: {e:?}"
        );
    }
}

#[test]
fn equal_shapes_and_int_lists_are_stored_once() {
    let mut m = base();
    m.graph.values[2].shape = m.graph.values[1].shape.clone(); // y: [2, 4] like w
    m.graph.nodes[0].attrs = vec![
        ("pads".into(), Attr::Ints(vec![1, 2])),
        ("strides".into(), Attr::Ints(vec![1, 2])),
        ("dilations".into(), Attr::Ints(vec![1])),
    ];
    let f = PithFile::from_bytes(write(&m).unwrap()).unwrap();
    assert_eq!(f.graph(), &m.graph);
    let b = write(&m).unwrap();
    let len = |kind: SectionKind| {
        let at = size_of::<Header>() + (kind as usize - 1) * size_of::<SectionEntry>();
        let e: SectionEntry = bytemuck::pod_read_unaligned(&b[at..at + 32]);
        e.length as usize
    };
    assert_eq!(len(SectionKind::Dims), 4 * 8, "[N, 4] and one shared [2, 4]");
    assert_eq!(len(SectionKind::Ints), 3 * 8, "[1, 2] once, then [1]");
}

#[test]
fn format_limits_are_too_large_errors() {
    let mut m = base();
    m.graph.values[2].shape = Some(vec![Dim::Fixed(1 << 63)]);
    assert!(matches!(write(&m), Err(FormatError::TooLarge(msg)) if msg.contains("dim extent")));
    let mut m = base();
    m.graph.nodes[0].attrs = vec![("n".repeat(70_000), Attr::Int(1))];
    assert!(matches!(write(&m), Err(FormatError::TooLarge(msg)) if msg.contains("attribute name")));
}

#[test]
fn misaligned_or_out_of_bounds_blobs_are_refused() {
    let e = patched(&base(), |b| {
        let at = section_at(b, SectionKind::Constants) + 12; // ConstRec.data.offset
        put(b, at, 4, 4);
    });
    assert!(e.to_string().contains("not a multiple of 64"), "{e}");
    let e = patched(&base(), |b| {
        let at = section_at(b, SectionKind::Constants) + 12;
        put(b, at, 4, u32::MAX as u64 - 63);
    });
    assert!(e.to_string().contains("outside the"), "{e}");
}

#[test]
fn plain_constants_must_not_set_codebook_fields() {
    let e = patched(&base(), |b| {
        let at = section_at(b, SectionKind::Constants) + 5; // ConstRec.bits
        put(b, at, 1, 4);
    });
    assert!(e.to_string().contains("non-zero codebook fields"), "{e}");
    let e = patched(&base(), |b| {
        let at = section_at(b, SectionKind::Constants) + 20; // ConstRec.centroids.offset
        put(b, at, 4, 64);
    });
    assert!(e.to_string().contains("non-zero codebook fields"), "{e}");
}

#[test]
fn meta_must_hold_one_record() {
    let mut b = encode(&base()).unwrap();
    let at = size_of::<Header>() + (SectionKind::Meta as usize - 1) * size_of::<SectionEntry>();
    let mut e: SectionEntry = bytemuck::pod_read_unaligned(&b[at..at + 32]);
    e.length = 0;
    b[at..at + 32].copy_from_slice(bytemuck::bytes_of(&e));
    // The record's bytes are now padding: zero them.
    b[e.offset as usize..e.offset as usize + 24].fill(0);
    reseal(&mut b);
    let err = PithFile::from_bytes(b).unwrap_err();
    assert!(err.to_string().contains("META must hold exactly one record"), "{err}");
}

#[test]
fn node_and_value_ranges_are_checked() {
    // NodeRec.n_outputs (offset 20): outputs run past IDS.
    let e = patched(&base(), |b| {
        let at = section_at(b, SectionKind::Nodes) + 20;
        put(b, at, 2, u16::MAX as u64);
    });
    assert!(matches!(&e, FormatError::BadReference { what: "IDS (outputs)", .. }), "{e:?}");
    // NodeRec.ids_start (offset 8) at u32::MAX: the end is computed without wrapping.
    let e = patched(&base(), |b| {
        let at = section_at(b, SectionKind::Nodes) + 8;
        put(b, at, 4, u32::MAX as u64);
    });
    assert!(matches!(&e, FormatError::BadReference { what: "IDS (inputs)", .. }), "{e:?}");
    // NodeRec.n_attrs (offset 22).
    let e = patched(&base(), |b| {
        let at = section_at(b, SectionKind::Nodes) + 22;
        put(b, at, 2, 2);
    });
    assert!(matches!(&e, FormatError::BadReference { what: "ATTRS", .. }), "{e:?}");
    // ValueRec.rank (offset 14) of value #2 'y', which has no shape.
    let e = patched(&base(), |b| {
        let at = section_at(b, SectionKind::Values) + 2 * 16 + 14;
        put(b, at, 2, 1);
    });
    assert!(
        matches!(&e, FormatError::BadReference { what: "rank of a value without shape", context, .. } if context.contains("'y'")),
        "{e:?}"
    );
    // ValueRec.rank of value #0 'x' beyond DIMS.
    let e = patched(&base(), |b| {
        let at = section_at(b, SectionKind::Values) + 14;
        put(b, at, 2, 5);
    });
    assert!(matches!(&e, FormatError::BadReference { what: "DIMS", .. }), "{e:?}");
}

#[test]
fn dim_extent_is_the_fixed_size_only() {
    assert_eq!(Dim::Fixed(7).extent(), Some(7));
    assert_eq!(Dim::Symbol("batch".into()).extent(), None);
    #[cfg(target_pointer_width = "32")]
    assert_eq!(Dim::Fixed(u64::MAX).extent(), None);
}
