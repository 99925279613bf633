//! Test helpers: a fixed-seed xorshift generator, random weights in every encoding, and buffers
//! placed against no-access pages ([`Guarded`]) so that reads past them fault.

use half::f16;
use pith_format::ir::{row_stride, Centroids, CodebookKind, CodebookTensor, TensorData};

/// xorshift64* generator with a fixed seed, so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `[-1, 1)`.
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

/// A weight storage encoding to test.
#[derive(Debug, Clone, Copy)]
pub enum WeightKind {
    F32,
    F16,
    /// bits, sharing scheme, f16 centroids.
    Codebook(u8, CodebookKind, bool),
}

impl WeightKind {
    /// F32, F16 and every codebook bit width × kind, alternating centroid precision.
    pub fn all() -> Vec<WeightKind> {
        let mut v = vec![WeightKind::F32, WeightKind::F16];
        for bits in 1..=8u8 {
            for (i, kind) in [CodebookKind::PerTensor, CodebookKind::PerRow, CodebookKind::SharedScaled]
                .into_iter()
                .enumerate()
            {
                v.push(WeightKind::Codebook(bits, kind, (bits as usize + i) % 2 == 1));
            }
        }
        v
    }
}

/// Random `rows` × `row_len` weights in encoding `kind`.
pub fn random_weight(rng: &mut Rng, kind: WeightKind, rows: usize, row_len: usize) -> TensorData {
    match kind {
        WeightKind::F32 => TensorData::F32(rng.vec(rows * row_len)),
        WeightKind::F16 => TensorData::F16((0..rows * row_len).map(|_| f16::from_f32(rng.f32())).collect()),
        WeightKind::Codebook(bits, kind, half) => {
            // Use fewer entries than 2^bits sometimes, as the compressor may.
            let max = 1usize << bits;
            let entries = if max > 2 && rng.below(2) == 0 { max - 1 } else { max };
            let n_centroids = if kind == CodebookKind::PerRow { rows * entries } else { entries };
            let vals = rng.vec(n_centroids);
            let centroids = if half {
                Centroids::F16(vals.iter().map(|&v| f16::from_f32(v)).collect())
            } else {
                Centroids::F32(vals)
            };
            let scales = if kind == CodebookKind::SharedScaled {
                (0..rows).map(|_| rng.f32() * 2.0).collect()
            } else {
                Vec::new()
            };
            let stride = row_stride(row_len, bits);
            let mut indices = vec![0u8; rows * stride];
            for r in 0..rows {
                for i in 0..row_len {
                    let idx = rng.below(entries);
                    for b in 0..bits as usize {
                        if idx >> b & 1 == 1 {
                            let bit = i * bits as usize + b;
                            indices[r * stride + bit / 8] |= 1 << (bit % 8);
                        }
                    }
                }
            }
            TensorData::Codebook(CodebookTensor {
                bits,
                rows,
                row_len,
                entries,
                kind,
                centroids,
                scales,
                f16_scales: false,
                indices,
            })
        }
    }
}

/// Every weight of `data` as f32 (`rows` rows) through the format crate's reference decode.
pub fn decode_all(data: &TensorData, rows: usize) -> Vec<f32> {
    let view = data.view();
    let n = view.numel();
    let row_len = n / rows;
    let mut out = vec![0.0; n];
    for r in 0..rows {
        view.decode_row(rows, r, &mut out[r * row_len..(r + 1) * row_len]);
    }
    out
}

/// Asserts two float slices agree within a tolerance scaled to their magnitude.
pub fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_close_within(got, want, 0.0, what);
}

/// [`assert_close`] with `range` times the largest `|want|` added to every element's tolerance:
/// for algorithms whose rounding error follows the magnitude of the whole computation rather
/// than of each result (Winograd's transforms mix every tile's inputs, so a small output next to
/// large ones carries their error).
pub fn assert_close_within(got: &[f32], want: &[f32], range: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let slack = range * want.iter().fold(0.0f32, |m, w| m.max(w.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()) + slack, "{what}: element {i}: got {g}, want {w}");
    }
}

/// Every available instruction-set path with 1, 2 and 3 worker threads, splitting even tiny
/// shapes; prints the paths this CPU lacks so test logs say what was skipped.
pub fn kernel_sets() -> Vec<crate::Kernels> {
    kernel_sets_up_to(3)
}

/// [`kernel_sets`] with 1 to `max_threads` worker threads per path.
pub fn kernel_sets_up_to(max_threads: usize) -> Vec<crate::Kernels> {
    let paths = crate::Isa::available();
    for name in ["avx2", "avx512", "neon"] {
        if !paths.iter().any(|i| i.name == name) {
            eprintln!("kernel path '{name}' not available on this CPU/build, skipped");
        }
    }
    let mut sets = Vec::new();
    for isa in paths {
        for threads in 1..=max_threads {
            let mut k = crate::Kernels::with_isa(isa, threads).expect("worker threads start");
            k.min_task_work = 1;
            // Tests check how work is split; a stall (common under qemu) must not send it all
            // to one thread.
            if let Some(pool) = k.pool() {
                pool.ignore_stalls();
            }
            sets.push(k);
        }
    }
    sets
}

/// A random stride-1 depthwise layer over one channel whose input rows are `in_w` wide like its
/// output's (what `DepthwisePlane` describes): filters up to `max_k`, dilation 1-2, pads up to
/// past the filter, planes smaller than the filter, up to `max_in_h` input rows; `None` when no
/// output row is left.
pub fn same_width_depthwise(
    rng: &mut Rng,
    max_k: [usize; 2],
    in_w: usize,
    max_in_h: usize,
) -> Option<crate::Conv2dParams> {
    let (k_h, k_w) = (1 + rng.below(max_k[0]), 1 + rng.below(max_k[1]));
    let (dil_h, dil_w) = (1 + rng.below(2), 1 + rng.below(2));
    let in_h = 1 + rng.below(max_in_h);
    // Columns: left + right pad = the filter's reach, so rows keep their width.
    let pad_left = rng.below((k_w - 1) * dil_w + 1);
    let (pad_top, pad_bottom) = (rng.below(k_h * dil_h + 1), rng.below(k_h * dil_h + 1));
    let out_h = (in_h + pad_top + pad_bottom).checked_sub((k_h - 1) * dil_h).filter(|&h| h > 0)?;
    Some(crate::Conv2dParams {
        batch: 1,
        in_c: 1,
        in_h,
        in_w,
        out_c: 1,
        out_h,
        out_w: in_w,
        k_h,
        k_w,
        stride_h: 1,
        stride_w: 1,
        pad_top,
        pad_left,
        dil_h,
        dil_w,
        groups: 1,
    })
}

/// A 1×1, stride-1, unpadded, ungrouped layer over `h × w` planes.
pub fn pointwise(batch: usize, in_c: usize, out_c: usize, [h, w]: [usize; 2]) -> crate::Conv2dParams {
    crate::Conv2dParams {
        batch,
        in_c,
        in_h: h,
        in_w: w,
        out_c,
        out_h: h,
        out_w: w,
        k_h: 1,
        k_w: 1,
        stride_h: 1,
        stride_w: 1,
        pad_top: 0,
        pad_left: 0,
        dil_h: 1,
        dil_w: 1,
        groups: 1,
    }
}

/// Which end of a [`Guarded`] buffer touches its no-access page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// The first element follows a no-access page.
    Start,
    /// The last element precedes a no-access page.
    End,
}

/// A copy of some values placed against a page the process may not read or write, so a kernel
/// that reads a single element before or past them faults (SIGSEGV) instead of reading whatever
/// lies there: masked-off lanes of an out-of-bounds load give the right answer and leave no other
/// trace. Both neighbouring pages are no-access; [`Edge`] says which one the data touches.
pub struct Guarded<T> {
    /// The whole mapping: guard page, data pages, guard page.
    base: *mut libc::c_void,
    /// Bytes mapped.
    mapped: usize,
    /// The first element.
    data: *mut T,
    /// Elements.
    len: usize,
}

impl<T: bytemuck::Pod> Guarded<T> {
    /// `values` copied against the guard page at `edge`.
    pub fn new(values: &[T], edge: Edge) -> Guarded<T> {
        // SAFETY: `sysconf` has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let bytes = std::mem::size_of_val(values);
        let data_pages = bytes.div_ceil(page).max(1) * page;
        let mapped = data_pages + 2 * page;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing; checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(base != libc::MAP_FAILED, "mmap of {mapped} bytes failed");
        let start = base as usize + page;
        let data = match edge {
            Edge::Start => start,
            Edge::End => start + data_pages - bytes,
        } as *mut T;
        assert!(data.is_aligned(), "a {}-byte element is less aligned than its size", size_of::<T>());
        // SAFETY: both guard pages lie in the mapping just made; `data .. data + len` lies in its
        // data pages (aligned, as just checked), which nothing else references.
        unsafe {
            assert_eq!(libc::mprotect(base, page, libc::PROT_NONE), 0, "mprotect failed");
            let after = (start + data_pages) as *mut libc::c_void;
            assert_eq!(libc::mprotect(after, page, libc::PROT_NONE), 0, "mprotect failed");
            std::ptr::copy_nonoverlapping(values.as_ptr(), data, values.len());
        }
        Guarded { base, mapped, data, len: values.len() }
    }

    /// The copied values.
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `new` copied `len` elements to `data`, readable until `drop`.
        unsafe { std::slice::from_raw_parts(self.data, self.len) }
    }

    /// The copied values, to be written: a write past either end faults too.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.data, self.len) }
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made; no slice of it outlives `self`.
        unsafe { libc::munmap(self.base, self.mapped) };
    }
}

/// Whether the byte at `p` is readable: a pipe copies it from user memory, so `write` fails with
/// EFAULT (and does not fault) where it is not.
fn readable<T>(p: *const T) -> bool {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe failed");
    // SAFETY: `write` only reads the byte at `p` and reports EFAULT where it cannot; both
    // descriptors are ours and closed here.
    unsafe {
        let written = libc::write(fds[1], p.cast(), 1);
        libc::close(fds[0]);
        libc::close(fds[1]);
        written == 1
    }
}

#[test]
fn guarded_data_reads_back_and_its_neighbours_cannot_be_read() {
    let values: Vec<f32> = (0..37).map(|i| i as f32).collect();
    for edge in [Edge::Start, Edge::End] {
        let g = Guarded::new(&values, edge);
        assert_eq!(g.as_slice(), &values[..]);
        let range = g.as_slice().as_ptr_range();
        assert!(readable(range.start) && readable(range.end.wrapping_sub(1)), "{edge:?}: data readable");
        let neighbour = match edge {
            Edge::Start => range.start.wrapping_sub(1),
            Edge::End => range.end,
        };
        assert!(!readable(neighbour), "{edge:?}: the element beside the data must not be readable");
    }
    // Bytes too: the last one touches the guard.
    let g = Guarded::new(&[1u8, 2, 3], Edge::End);
    let end = g.as_slice().as_ptr_range().end;
    assert!(readable(end.wrapping_sub(1)) && !readable(end), "bytes against the end");
}
