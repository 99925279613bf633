//! Weight rows packed depth-major for the NEON GEMM tiles, in a buffer each thread keeps.
//!
//! A register tile of `R` filters multiplies, at each depth step, `R` weights into a few vectors
//! of the input. Read from rows `k` floats apart, each weight is its own broadcast load (`LD1R`):
//! `R` loads per step beside the input's. Packed depth-major (the `R` weights of one depth side
//! by side), they are `R / 4` vector loads, applied by lane (`FMLA` by element): the same fused
//! multiply-adds in the same order, so the same bits. `llvm-mca`'s models put the 8×8 fused tile
//! at 1.13 against 2.38 cycles per multiply-add on the Cortex-A55 (not timed; see the
//! forty-eighth session in `docs/kernels.md`).

use std::arch::aarch64::*;
use std::cell::RefCell;

thread_local! {
    /// This thread's buffer for [`with_packed`], kept between calls: one allocation per thread
    /// that grows to the largest panel it has packed (a pointwise panel is 48 filters of `k`
    /// weights: 245 KB for `k` = 1280).
    static PACKED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with every whole block of `R` rows of `a` (rows of `k` weights, `R` a multiple of
/// 4) packed by [`pack_blocks`] if `pack`: `R * k` floats per block, the rows past the last
/// whole block left out; `None` without packing (a call over too few columns to repay it).
/// Uses this thread's buffer, or (if a caller up the stack holds it) a new one.
pub(super) fn with_packed<const R: usize, T>(
    a: &[f32],
    k: usize,
    pack: bool,
    f: impl FnOnce(Option<&[f32]>) -> T,
) -> T {
    if !pack {
        return f(None);
    }
    let need = a.len() / (R * k).max(1) * R * k;
    let run = |buf: &mut Vec<f32>| {
        if buf.len() < need {
            buf.resize(need, 0.0);
        }
        let packed = &mut buf[..need];
        pack_blocks::<R>(a, k, packed);
        f(Some(packed))
    };
    PACKED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => run(&mut buf),
        Err(_) => run(&mut Vec::new()),
    })
}

/// Packs each whole block of `R` rows of `a` depth-major: block `t`'s weights of depth `p` are
/// the `R` floats at `packed[(t * k + p) * R ..]`. Four rows by four depths at a time go through
/// a register transpose (`llvm-mca`: 1.44 against 3.00 cycles per weight on the A55 model for
/// element-by-element copies), the depths past the last whole four one by one.
fn pack_blocks<const R: usize>(a: &[f32], k: usize, packed: &mut [f32]) {
    const { assert!(R.is_multiple_of(4) && R > 0) };
    if k == 0 {
        return;
    }
    let whole = k / 4 * 4;
    for (block, out) in a.chunks_exact(R * k).zip(packed.chunks_exact_mut(R * k)) {
        for quad in 0..R / 4 {
            let rows: [&[f32]; 4] = std::array::from_fn(|i| &block[(4 * quad + i) * k..][..k]);
            for p in (0..whole).step_by(4) {
                // SAFETY: NEON is part of the aarch64 baseline (this module is compiled for
                // aarch64 only, and its tables are handed out after detecting it); every load
                // and store goes through a slice of the 4 floats it touches.
                unsafe {
                    let [r0, r1, r2, r3] = rows.map(|r| vld1q_f32(r[p..p + 4].as_ptr()));
                    // Rows 0|1 and 2|3 interleaved, then their 64-bit halves: column j of the
                    // 4×4 block in vector j.
                    let (t0, t1) = (vtrn1q_f32(r0, r1), vtrn2q_f32(r0, r1));
                    let (t2, t3) = (vtrn1q_f32(r2, r3), vtrn2q_f32(r2, r3));
                    let [t0, t1, t2, t3] = [t0, t1, t2, t3].map(|t| vreinterpretq_f64_f32(t));
                    let cols =
                        [vzip1q_f64(t0, t2), vzip1q_f64(t1, t3), vzip2q_f64(t0, t2), vzip2q_f64(t1, t3)];
                    for (j, c) in cols.into_iter().enumerate() {
                        vst1q_f32(out[(p + j) * R + 4 * quad..][..4].as_mut_ptr(), vreinterpretq_f32_f64(c));
                    }
                }
            }
        }
        for p in whole..k {
            for r in 0..R {
                out[p * R + r] = block[r * k + p];
            }
        }
    }
}

/// One depth step `p` of an `R`-row register tile: `acc[r] += a[r * k + p] * bv` for every row,
/// by lane from `packed` (the tile's `R` rows as one block of [`with_packed`]) when there is
/// one, else one broadcast per row from the rows as given. The same fused multiply-adds in the
/// same order either way.
///
/// # Safety
/// NEON available; `a` holds `R` rows of `k` floats, `packed` (if any) `R * k` floats with `R`
/// a multiple of 4; `p < k`.
#[inline(always)]
pub(super) unsafe fn fma_step<const R: usize, const V: usize>(
    acc: &mut [[float32x4_t; V]; R],
    a: *const f32,
    packed: Option<*const f32>,
    k: usize,
    p: usize,
    bv: &[float32x4_t; V],
) {
    // SAFETY: the reads stay in the rows or the packed block (the caller's contract); register
    // arithmetic on NEON.
    unsafe {
        match packed {
            Some(w) => {
                for (quad, rows) in acc.chunks_exact_mut(4).enumerate() {
                    let wv = vld1q_f32(w.add(p * R + 4 * quad));
                    for (r, row) in rows.iter_mut().enumerate() {
                        for (x, &b) in row.iter_mut().zip(bv) {
                            *x = match r {
                                0 => vfmaq_laneq_f32::<0>(*x, b, wv),
                                1 => vfmaq_laneq_f32::<1>(*x, b, wv),
                                2 => vfmaq_laneq_f32::<2>(*x, b, wv),
                                _ => vfmaq_laneq_f32::<3>(*x, b, wv),
                            };
                        }
                    }
                }
            }
            None => {
                for (r, row) in acc.iter_mut().enumerate() {
                    let w = *a.add(r * k + p);
                    for (x, &b) in row.iter_mut().zip(bv) {
                        *x = vfmaq_n_f32(*x, b, w);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    #[test]
    fn blocks_are_depth_major_and_partial_blocks_left_out() {
        let mut rng = Rng::new(61);
        for (rows, k) in [(8, 1), (8, 3), (16, 4), (17, 9), (4, 13), (3, 5), (12, 64)] {
            let a = rng.vec(rows * k);
            let got8 = with_packed::<8, _>(&a, k, true, |p| p.expect("packed").to_vec());
            let got4 = with_packed::<4, _>(&a, k, true, |p| p.expect("packed").to_vec());
            for (got, r) in [(got8, 8), (got4, 4)] {
                assert_eq!(got.len(), rows / r * r * k, "rows {rows} k {k} block {r}");
                for (i, v) in got.iter().enumerate() {
                    let (t, p, j) = (i / (r * k), i / r % k, i % r);
                    assert_eq!(v.to_bits(), a[(t * r + j) * k + p].to_bits(), "rows {rows} k {k} at {i}");
                }
            }
        }
        // A caller holding the buffer (a nested use) gets its own.
        let a = rng.vec(8 * 5);
        let nested = with_packed::<8, _>(&a, 5, true, |outer| {
            with_packed::<4, _>(&a, 5, true, |inner| (outer.map(<[f32]>::len), inner.map(<[f32]>::len)))
        });
        assert_eq!(nested, (Some(40), Some(40)));
        // Not asked to pack: nothing packed.
        assert!(with_packed::<4, _>(&a, 5, false, |p| p.is_none()));
    }
}
