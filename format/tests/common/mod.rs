//! Shared test helpers: a model exercising every op, attribute kind and encoding, an independent
//! index packer, and a tiny spec-based section-table editor (written from SPEC.md, not from the
//! crate's internals, so it doubles as a check that the spec is sufficient).
#![allow(dead_code)]

use half::f16;
use pith_format::ir::*;

/// Packs `idx` (rows × row_len) LSB-first at `bits` bits, each row padded to a whole byte.
pub fn pack(idx: &[Vec<u8>], bits: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for row in idx {
        let stride = (row.len() * bits as usize).div_ceil(8);
        let start = out.len();
        out.resize(start + stride, 0);
        for (i, &v) in row.iter().enumerate() {
            for b in 0..bits as usize {
                if v >> b & 1 == 1 {
                    let bit = i * bits as usize + b;
                    out[start + bit / 8] |= 1 << (bit % 8);
                }
            }
        }
    }
    out
}

/// A codebook constant plus the unpacked indices it was built from.
pub struct Cb {
    pub tensor: CodebookTensor,
    pub idx: Vec<Vec<u8>>,
}

/// Builds a codebook tensor of `rows` × `row_len` with deterministic indices below `entries`.
pub fn codebook(bits: u8, entries: usize, kind: CodebookKind, f16c: bool, rows: usize, row_len: usize) -> Cb {
    let idx: Vec<Vec<u8>> = (0..rows)
        .map(|r| (0..row_len).map(|i| ((r * 7 + i * 3 + i / 5) % entries) as u8).collect())
        .collect();
    let ncent = if kind == CodebookKind::PerRow { rows * entries } else { entries };
    let cents: Vec<f32> = (0..ncent).map(|i| i as f32 * 0.25 - 3.0).collect();
    let centroids = if f16c {
        Centroids::F16(cents.iter().map(|&c| f16::from_f32(c)).collect())
    } else {
        Centroids::F32(cents)
    };
    let scales = if kind == CodebookKind::SharedScaled {
        (0..rows).map(|r| 0.5 + r as f32).collect()
    } else {
        Vec::new()
    };
    Cb {
        tensor: CodebookTensor {
            bits,
            rows,
            row_len,
            entries,
            kind,
            centroids,
            scales,
            f16_scales: false,
            indices: pack(&idx, bits),
        },
        idx,
    }
}

fn fixed(dims: &[u64]) -> Option<Vec<Dim>> {
    Some(dims.iter().map(|&d| Dim::Fixed(d)).collect())
}

/// The unpacked indices (rows of indices) of the codebook constant defining a value.
pub type CbIndices = (ValueId, Vec<Vec<u8>>);

/// A model with every encoding (all codebook bit widths, kinds and centroid precisions), every
/// op code and every attribute kind, plus the unpacked indices of each codebook constant
/// (keyed by value id).
pub fn full_model() -> (Model, Vec<CbIndices>) {
    let mut values = vec![Value {
        name: "x".into(),
        elem: ElemType::F32,
        shape: Some(vec![Dim::Symbol("N".into()), Dim::Fixed(3), Dim::Fixed(8), Dim::Fixed(8)]),
    }];
    let mut constants = Vec::new();
    let mut add_const = |values: &mut Vec<Value>, name: &str, elem, dims: &[u64], data| {
        let id = values.len() as ValueId;
        values.push(Value { name: name.into(), elem, shape: fixed(dims) });
        constants.push(Constant { value: id, data });
        id
    };
    let w32 = add_const(
        &mut values,
        "w_f32",
        ElemType::F32,
        &[4, 3],
        TensorData::F32((0..12).map(|i| i as f32 * -1.5).collect()),
    );
    add_const(
        &mut values,
        "w_f16",
        ElemType::F32,
        &[2, 5],
        TensorData::F16((0..10).map(|i| f16::from_f32(i as f32 / 8.0)).collect()),
    );
    add_const(&mut values, "shape", ElemType::I64, &[3], TensorData::I64(vec![-1, 0, i64::MAX]));
    add_const(&mut values, "scalar", ElemType::F32, &[], TensorData::F32(vec![42.0]));
    add_const(&mut values, "empty", ElemType::F32, &[0, 4], TensorData::F32(vec![]));
    let mut cb_idx = Vec::new();
    let kinds = [CodebookKind::PerTensor, CodebookKind::PerRow, CodebookKind::SharedScaled];
    for bits in 1..=8u8 {
        for (k, &kind) in kinds.iter().enumerate() {
            // Both full (2^bits) and partial codebooks; odd row lengths leave padding bits.
            let full = 1usize << bits;
            let entries = if (bits as usize + k).is_multiple_of(2) { full } else { (full * 3 / 4).max(1) };
            let (rows, a, b) = (3, 2, 5 + bits as usize % 3);
            let cb = codebook(bits, entries, kind, k == 1, rows, a * b);
            let id = add_const(
                &mut values,
                &format!("cb{bits}_{k}"),
                ElemType::F32,
                &[rows as u64, a as u64, b as u64],
                TensorData::Codebook(cb.tensor),
            );
            cb_idx.push((id, cb.idx));
        }
    }
    let mut nodes = Vec::new();
    let mut prev = 0;
    for (i, &op) in OpKind::ALL.iter().enumerate() {
        let out = values.len() as ValueId;
        values.push(Value {
            name: format!("{}_out", op.onnx_name()),
            elem: if i % 4 == 0 { ElemType::I64 } else { ElemType::F32 },
            shape: match i % 3 {
                0 => None,
                1 => Some(vec![]),
                _ => Some(vec![Dim::Symbol("N".into()), Dim::Fixed(i as u64), Dim::Symbol("ü".into())]),
            },
        });
        let attrs = match i % 6 {
            0 => vec![("axis".into(), Attr::Int(-(i as i64)))],
            1 => vec![("alpha".into(), Attr::Float(0.125 * i as f32)), ("beta".into(), Attr::Float(-1e30))],
            2 => vec![
                ("pads".into(), Attr::Ints(vec![0, 1, -2, i64::MIN])),
                ("empty".into(), Attr::Ints(vec![])),
            ],
            3 => vec![
                ("scales".into(), Attr::Floats(vec![1.0, 2.5, f32::MIN_POSITIVE])),
                ("none".into(), Attr::Floats(vec![])),
            ],
            4 => vec![
                ("mode".into(), Attr::Str("nearest ✓".into())),
                ("blank".into(), Attr::Str(String::new())),
            ],
            _ => vec![],
        };
        nodes.push(Node {
            name: if i == 3 { String::new() } else { format!("node_{i}") },
            op,
            inputs: vec![Some(prev), None, Some(w32)],
            outputs: vec![out],
            attrs,
        });
        prev = out;
    }
    let graph = Graph { inputs: vec![0], outputs: vec![prev, w32], values, nodes };
    (Model { graph, constants, producer: "pith-format tests ✓".into(), props: Default::default() }, cb_idx)
}

/// One section table entry, read as SPEC.md describes.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub kind: u32,
    pub flags: u32,
    pub offset: u64,
    pub length: u64,
    pub crc: u32,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// The section table of a well-formed file.
pub fn entries(b: &[u8]) -> Vec<Entry> {
    // Clamped to what fits, so damaged files (fuzzing) never make the helper panic.
    let n = (u32_at(b, 12) as usize).min(b.len().saturating_sub(32) / 32);
    (0..n)
        .map(|i| {
            let o = 32 + 32 * i;
            Entry {
                kind: u32_at(b, o),
                flags: u32_at(b, o + 4),
                offset: u64_at(b, o + 8),
                length: u64_at(b, o + 16),
                crc: u32_at(b, o + 24),
            }
        })
        .collect()
}

/// Writes entry `i` back into the table.
pub fn set_entry(b: &mut [u8], i: usize, e: Entry) {
    let o = 32 + 32 * i;
    b[o..o + 4].copy_from_slice(&e.kind.to_le_bytes());
    b[o + 4..o + 8].copy_from_slice(&e.flags.to_le_bytes());
    b[o + 8..o + 16].copy_from_slice(&e.offset.to_le_bytes());
    b[o + 16..o + 24].copy_from_slice(&e.length.to_le_bytes());
    b[o + 24..o + 28].copy_from_slice(&e.crc.to_le_bytes());
}

/// Recomputes the header checksum (bytes 0..28 then the table).
pub fn reseal_header(b: &mut [u8]) {
    let table_end = (32 + 32 * u32_at(b, 12) as usize).min(b.len());
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..28]);
    h.update(&b[32..table_end]);
    let crc = h.finalize();
    b[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes every section checksum and the header checksum.
pub fn reseal(b: &mut [u8]) {
    for (i, mut e) in entries(b).into_iter().enumerate() {
        let (s, l) = (e.offset as usize, e.length as usize);
        if let Some(bytes) = s.checked_add(l).and_then(|end| b.get(s..end)) {
            e.crc = crc32fast::hash(bytes);
            set_entry(b, i, e);
        }
    }
    reseal_header(b);
}

/// The bytes range of the section of `kind`.
pub fn section(b: &[u8], kind: u32) -> std::ops::Range<usize> {
    let e = entries(b).into_iter().find(|e| e.kind == kind).expect("section present");
    e.offset as usize..(e.offset + e.length) as usize
}

/// Rebuilds a file from its sections, appending `extra` sections `(kind, flags, payload)`.
pub fn relayout(b: &[u8], extra: &[(u32, u32, Vec<u8>)]) -> Vec<u8> {
    let mut secs: Vec<(u32, u32, Vec<u8>)> = entries(b)
        .iter()
        .map(|e| (e.kind, e.flags, b[e.offset as usize..(e.offset + e.length) as usize].to_vec()))
        .collect();
    secs.extend(extra.iter().cloned());
    let table_end = 32 + 32 * secs.len();
    let mut out = b[..32].to_vec();
    out.resize(table_end, 0);
    let mut table = Vec::new();
    for (kind, flags, bytes) in &secs {
        let offset = out.len().div_ceil(64) * 64;
        out.resize(offset, 0);
        out.extend_from_slice(bytes);
        table.push(Entry {
            kind: *kind,
            flags: *flags,
            offset: offset as u64,
            length: bytes.len() as u64,
            crc: crc32fast::hash(bytes),
        });
    }
    out[12..16].copy_from_slice(&(secs.len() as u32).to_le_bytes());
    let len = out.len() as u64;
    out[16..24].copy_from_slice(&len.to_le_bytes());
    for (i, e) in table.into_iter().enumerate() {
        set_entry(&mut out, i, e);
    }
    reseal_header(&mut out);
    out
}

/// Fixed-seed xorshift64 (no rand crate).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Canonical Huffman code words for `lengths`, built as SPEC.md describes (not from the crate).
pub fn spec_codes(lengths: &[u8]) -> Vec<u32> {
    let mut count = [0u32; 17];
    for &l in lengths {
        if l != 0 {
            count[l as usize] += 1;
        }
    }
    let mut next = [0u32; 17];
    let mut code = 0;
    for len in 1..17 {
        code = (code + count[len - 1]) << 1;
        next[len] = code;
    }
    lengths
        .iter()
        .map(|&l| {
            let c = next[l as usize];
            next[l as usize] += 1;
            c
        })
        .collect()
}

/// A Huffman index blob as SPEC.md lays it out: header (`bit_count`, `symbols`, reserved 0),
/// `lengths`, then the code words of `symbols_seq` MSB-first (no validation: tests feed it junk).
pub fn spec_huffman_blob(lengths: &[u8], symbols_seq: &[u8]) -> Vec<u8> {
    let codes = spec_codes(lengths);
    let mut bits: Vec<bool> = Vec::new();
    for &s in symbols_seq {
        let (c, l) = (codes[s as usize], lengths[s as usize]);
        for k in (0..l).rev() {
            bits.push(c >> k & 1 == 1);
        }
    }
    let mut out = (bits.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&(lengths.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(lengths);
    for chunk in bits.chunks(8) {
        out.push(chunk.iter().enumerate().fold(0u8, |b, (i, &bit)| b | (bit as u8) << (7 - i)));
    }
    out
}

/// One `ConstRec` (36 bytes) as SPEC.md describes it: `(encoding, [data, centroids, scales] blobs)`.
fn const_rec(b: &[u8], at: usize) -> (u8, [(u32, u32); 3]) {
    let blob = |o: usize| (u32_at(b, at + o), u32_at(b, at + o + 4));
    (b[at + 4], [blob(12), blob(20), blob(28)])
}

/// Rebuilds a file with constant `index`'s data blob replaced by `data` and its encoding set to
/// `encoding` (DATA is re-laid out, every blob at a 64-byte boundary); `minor` is written to the
/// header. Checksums are recomputed.
pub fn replace_const_data(b: &[u8], index: usize, encoding: u8, data: &[u8], minor: u16) -> Vec<u8> {
    let consts = section(b, 10);
    let old_data = section(b, 12);
    let mut recs = b[consts.clone()].to_vec();
    let mut new_data: Vec<u8> = Vec::new();
    for i in 0..recs.len() / 36 {
        let (_, blobs) = const_rec(&recs, i * 36);
        for (k, (off, len)) in blobs.into_iter().enumerate() {
            let bytes = if i == index && k == 0 {
                data.to_vec()
            } else {
                let s = old_data.start + off as usize;
                b[s..s + len as usize].to_vec()
            };
            let (off, len) = if bytes.is_empty() {
                (0, 0)
            } else {
                let off = new_data.len().div_ceil(64) * 64;
                new_data.resize(off, 0);
                new_data.extend_from_slice(&bytes);
                (off as u32, bytes.len() as u32)
            };
            let at = i * 36 + 12 + 8 * k;
            recs[at..at + 4].copy_from_slice(&off.to_le_bytes());
            recs[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
        }
        if i == index {
            recs[i * 36 + 4] = encoding;
        }
    }
    replace_sections(b, &[(10, recs), (12, new_data)], minor)
}

/// Rebuilds a file with the payloads of the given section kinds replaced and `minor` in the header.
pub fn replace_sections(b: &[u8], replaced: &[(u32, Vec<u8>)], minor: u16) -> Vec<u8> {
    let mut base = b[..32].to_vec();
    base[10..12].copy_from_slice(&minor.to_le_bytes());
    let table = entries(b);
    base.resize(32 + 32 * table.len(), 0);
    let mut out = base;
    let mut new_table = Vec::new();
    for e in &table {
        let bytes = match replaced.iter().find(|(k, _)| *k == e.kind) {
            Some((_, v)) => v.clone(),
            None => b[e.offset as usize..(e.offset + e.length) as usize].to_vec(),
        };
        let offset = out.len().div_ceil(64) * 64;
        out.resize(offset, 0);
        out.extend_from_slice(&bytes);
        new_table.push(Entry {
            kind: e.kind,
            flags: e.flags,
            offset: offset as u64,
            length: bytes.len() as u64,
            crc: crc32fast::hash(&bytes),
        });
    }
    let len = out.len() as u64;
    out[16..24].copy_from_slice(&len.to_le_bytes());
    for (i, e) in new_table.into_iter().enumerate() {
        set_entry(&mut out, i, e);
    }
    reseal_header(&mut out);
    out
}
