//! Write → read round trips: graph equality, zero-copy views, determinism, mmap-based open.

mod common;

use common::full_model;
use pith_format::ir::*;
use pith_format::{
    write, write_with, CentroidsView, Entropy, FormatError, PithFile, TensorView, WriteOptions, FORMAT_MAJOR,
    FORMAT_MINOR,
};

/// Checks every constant of `f` against the model it was written from.
fn check_constants(f: &PithFile, m: &Model, cb_idx: &[common::CbIndices]) {
    let ids: Vec<ValueId> = f.constant_ids().collect();
    assert_eq!(ids, m.constants.iter().map(|c| c.value).collect::<Vec<_>>());
    for c in &m.constants {
        let v = f.constant(c.value).expect("constant present");
        match (&c.data, v) {
            (TensorData::F32(d), TensorView::F32(s)) => assert_eq!(d, s),
            (TensorData::F16(d), TensorView::F16(s)) => assert_eq!(d, s),
            (TensorData::I64(d), TensorView::I64(s)) => assert_eq!(d, s),
            (TensorData::Codebook(cb), TensorView::Codebook(s)) => {
                assert_eq!(
                    (s.bits, s.rows, s.row_len, s.entries, s.kind),
                    (cb.bits, cb.rows, cb.row_len, cb.entries, cb.kind)
                );
                assert_eq!(s.indices, &cb.indices[..]);
                assert_eq!(s.scales, &cb.scales[..]);
                match (&cb.centroids, s.centroids) {
                    (Centroids::F32(a), CentroidsView::F32(b)) => assert_eq!(&a[..], b),
                    (Centroids::F16(a), CentroidsView::F16(b)) => assert_eq!(&a[..], b),
                    other => panic!("centroid precision changed: {other:?}"),
                }
                // Decoding the file's view must give centroid[idx] (× scale) for the indices we packed.
                let idx = &cb_idx.iter().find(|(id, _)| *id == c.value).unwrap().1;
                let cent = |i: usize| match &cb.centroids {
                    Centroids::F32(a) => a[i],
                    Centroids::F16(a) => a[i].to_f32(),
                };
                let mut row = vec![0.0; cb.row_len];
                for (r, ridx) in idx.iter().enumerate() {
                    v.decode_row(cb.rows, r, &mut row);
                    for (i, &k) in ridx.iter().enumerate() {
                        let want = match cb.kind {
                            CodebookKind::PerTensor => cent(k as usize),
                            CodebookKind::PerRow => cent(r * cb.entries + k as usize),
                            CodebookKind::SharedScaled => cb.scales[r] * cent(k as usize),
                        };
                        assert_eq!(row[i], want, "{} row {r} pos {i}", v.encoding_name());
                    }
                }
                let want_bytes = cb.indices.len()
                    + cb.scales.len() * 4
                    + match &cb.centroids {
                        Centroids::F32(a) => a.len() * 4,
                        Centroids::F16(a) => a.len() * 2,
                    };
                assert_eq!(f.constant_bytes(c.value), want_bytes);
            }
            (d, v) => panic!("encoding changed: {d:?} vs {v:?}"),
        }
        // Data is used in place at 64-byte aligned addresses.
        let ptr = match v {
            TensorView::F32(s) => s.as_ptr() as usize,
            TensorView::F16(s) => s.as_ptr() as usize,
            TensorView::I64(s) => s.as_ptr() as usize,
            TensorView::Codebook(s) => s.indices.as_ptr() as usize,
        };
        // Blobs are 64-byte aligned up to format 1.1 and 16-byte aligned in the compact 1.2 layout.
        let align = if f.version().1 >= 2 { 16 } else { 64 };
        assert_eq!(ptr % align, 0, "constant #{} is not {align}-byte aligned", c.value);
    }
    assert!(f.constant(0).is_none(), "graph input is not a constant");
    assert_eq!(f.constant_bytes(0), 0);
    assert!(f.constant(u32::MAX).is_none());
}

#[test]
fn full_model_round_trips_through_bytes() {
    let (m, cb_idx) = full_model();
    let bytes = write(&m).unwrap();
    let len = bytes.len();
    let f = PithFile::from_bytes(bytes).unwrap();
    assert_eq!(f.graph(), &m.graph);
    assert_eq!(f.producer(), m.producer);
    // Without Huffman-coded tensors the writer records 1.0, the lowest version that describes the file.
    assert_eq!(f.version(), (FORMAT_MAJOR, 0));
    assert_eq!(FORMAT_MINOR, 4);
    assert_eq!(f.file_len(), len);
    check_constants(&f, &m, &cb_idx);
    assert_eq!(f.constant_bytes(m.constants[0].value), 12 * 4);
}

#[test]
fn every_op_and_attr_kind_is_covered() {
    let (m, _) = full_model();
    for op in OpKind::ALL {
        assert!(m.graph.nodes.iter().any(|n| n.op == *op), "{op:?} missing from the test model");
    }
    let kinds: Vec<_> =
        m.graph.nodes.iter().flat_map(|n| &n.attrs).map(|(_, a)| std::mem::discriminant(a)).collect();
    for a in
        [Attr::Int(0), Attr::Float(0.0), Attr::Ints(vec![]), Attr::Floats(vec![]), Attr::Str(String::new())]
    {
        assert!(kinds.contains(&std::mem::discriminant(&a)), "{a:?} kind missing");
    }
}

#[test]
fn writing_is_deterministic() {
    let (m, _) = full_model();
    let a = write(&m).unwrap();
    let b = write(&m.clone()).unwrap();
    assert_eq!(a, b);
    let (m2, _) = full_model();
    assert_eq!(a, write(&m2).unwrap());
}

const COMPACT: WriteOptions = WriteOptions { entropy: Entropy::None, compact: true };

#[test]
fn compact_layout_round_trips_and_is_smaller() {
    let (m, cb_idx) = full_model();
    let plain = write(&m).unwrap();
    let compact = write_with(&m, &COMPACT).unwrap();
    assert_eq!(compact, write_with(&m.clone(), &COMPACT).unwrap(), "deterministic");
    assert!(compact.len() < plain.len(), "compact {} vs plain {} bytes", compact.len(), plain.len());
    let f = PithFile::from_bytes(compact).unwrap();
    assert_eq!(f.version(), (FORMAT_MAJOR, 2));
    assert_eq!(f.graph(), &m.graph);
    assert_eq!(f.producer(), m.producer);
    check_constants(&f, &m, &cb_idx);
    // Through a mapped file too, and combined with Huffman-coded indices.
    let both = WriteOptions { entropy: Entropy::Huffman, compact: true };
    let path = temp_path("compact");
    std::fs::write(&path, write_with(&m, &both).unwrap()).unwrap();
    let f = PithFile::open(&path).unwrap();
    assert_eq!(f.version(), (FORMAT_MAJOR, 2));
    assert_eq!(f.graph(), &m.graph);
    check_constants(&f, &m, &cb_idx);
    drop(f);
    std::fs::remove_file(&path).unwrap();
    let empty = PithFile::from_bytes(write_with(&Model::default(), &COMPACT).unwrap()).unwrap();
    assert_eq!(empty.graph(), &Model::default().graph);
}

#[test]
fn empty_model_round_trips() {
    let m = Model::default();
    let f = PithFile::from_bytes(write(&m).unwrap()).unwrap();
    assert_eq!(f.graph(), &m.graph);
    assert_eq!(f.producer(), "");
    assert_eq!(f.constant_ids().count(), 0);
}

fn temp_path(tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("pith-format-{tag}-{}-{n}.pith", std::process::id()))
}

#[test]
fn open_maps_a_file_and_reads_it() {
    let (m, cb_idx) = full_model();
    let bytes = write(&m).unwrap();
    let path = temp_path("open");
    std::fs::write(&path, &bytes).unwrap();
    let f = PithFile::open(&path).unwrap();
    assert_eq!(f.graph(), &m.graph);
    assert_eq!(f.file_len(), bytes.len());
    check_constants(&f, &m, &cb_idx);
    // Views stay valid while the PithFile is shared across threads.
    std::thread::scope(|s| {
        s.spawn(|| assert!(f.constant(m.constants[0].value).is_some()));
    });
    drop(f);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn open_errors_name_the_path() {
    let path = temp_path("missing");
    let err = PithFile::open(&path).unwrap_err();
    assert!(matches!(err, FormatError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");

    let empty = temp_path("empty");
    std::fs::write(&empty, b"").unwrap();
    let err = PithFile::open(&empty).unwrap_err();
    std::fs::remove_file(&empty).unwrap();
    assert!(matches!(err, FormatError::Truncated { what: "header", .. }), "{err:?}");
}

#[test]
fn open_of_a_corrupt_file_fails() {
    let (m, _) = full_model();
    let mut bytes = write(&m).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x40;
    let path = temp_path("corrupt");
    std::fs::write(&path, &bytes).unwrap();
    let err = PithFile::open(&path).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(err, FormatError::Checksum { .. }), "{err:?}");
}
