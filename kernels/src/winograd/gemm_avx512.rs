//! AVX-512 products of the Winograd pass, `M_ξ = U_ξ · V_ξ`, on filters packed for it: each
//! block of 8 filters stored input channel by input channel (`[ic][8]`), so a register tile of
//! 8 filters × 48 tiles broadcasts its 8 weights of one input channel from one 32-byte row with
//! constant offsets, and overwrites its outputs (no zeroed accumulator). The shared
//! [`Isa::gemm_rows`] reads each filter's weights a row apart and adds into its output: on
//! PP-OCRv4 det's 96→24 products over 40 tiles it ran at 53 G multiply-adds/s where this runs at
//! 64 (Xeon, one thread, all operands in L1).
//!
//! [`Isa::gemm_rows`]: crate::arch::Isa::gemm_rows

use std::arch::x86_64::*;

use crate::arch::x86::lane_mask;

/// Filters per packed block.
pub(super) const BLOCK: usize = 8;

/// Tiles per register strip (three vectors).
const STRIP: usize = 48;

/// `c[r * ldc + j] = Σ_p u[p * 8 + r] · v[p * ldv + j]` for the first `rows` (at most 8) of a
/// packed block of 8 filters (`u`: `k` rows of 8 weights) and columns `j < n`.
///
/// # Panics
/// If an operand is too short for these sizes, `rows > 8` or `ldv < n` with `k > 1`.
#[allow(clippy::too_many_arguments)]
pub(super) fn block_product(
    u: &[f32],
    k: usize,
    v: &[f32],
    ldv: usize,
    n: usize,
    c: &mut [f32],
    ldc: usize,
    rows: usize,
) {
    if n == 0 || rows == 0 {
        return;
    }
    assert!(rows <= BLOCK && u.len() >= k * BLOCK, "packed block of {} weights for depth {k}", u.len());
    assert!(k == 0 || (ldv >= n && v.len() >= (k - 1) * ldv + n), "V of {} values", v.len());
    assert!(ldc >= n && c.len() >= (rows - 1) * ldc + n, "products of {} values", c.len());
    let mut j = 0;
    while j < n {
        let w = (n - j).min(STRIP);
        // SAFETY: `Transforms` hands the packed layout out only on the AVX-512 path, after
        // AVX-512 F was detected; the assertions cover rows `k` of `u` and `v` and `rows` rows of
        // `c` at columns j .. j + w <= n.
        unsafe {
            let (vp, cp) = (v.as_ptr().add(j), c.as_mut_ptr().add(j));
            match w.div_ceil(16) {
                3 => strip::<3>(u.as_ptr(), k, vp, ldv, w, cp, ldc, rows),
                2 => strip::<2>(u.as_ptr(), k, vp, ldv, w, cp, ldc, rows),
                _ => strip::<1>(u.as_ptr(), k, vp, ldv, w, cp, ldc, rows),
            }
        }
        j += w;
    }
}

/// One strip of [`block_product`]: `w <= 16 * V` columns.
///
/// # Safety
/// AVX-512 F available; `u` holds `k` rows of 8 weights, `v` `k` rows of `w` values `ldv` apart
/// and `c` `rows <= 8` rows of `w` values `ldc` apart.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn strip<const V: usize>(
    u: *const f32,
    k: usize,
    v: *const f32,
    ldv: usize,
    w: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
) {
    let masks: [__mmask16; V] = std::array::from_fn(|q| lane_mask(w.saturating_sub(16 * q)));
    let mut acc = [[_mm512_setzero_ps(); V]; BLOCK];
    let (mut up, mut vp) = (u, v);
    for _ in 0..k {
        // SAFETY: row p of `v` (the lanes the masks keep) and of `u`, as the contract says.
        let b: [__m512; V] =
            std::array::from_fn(|q| unsafe { _mm512_maskz_loadu_ps(masks[q], vp.add(16 * q)) });
        for (r, acc) in acc.iter_mut().enumerate() {
            // SAFETY: weight r < 8 of the row.
            let a = _mm512_set1_ps(unsafe { *up.add(r) });
            for (acc, &b) in acc.iter_mut().zip(&b) {
                *acc = _mm512_fmadd_ps(a, b, *acc);
            }
        }
        // The pointers step past the last row only after its use (never dereferenced there).
        up = up.wrapping_add(BLOCK);
        vp = vp.wrapping_add(ldv);
    }
    for (r, acc) in acc.iter().enumerate().take(rows) {
        for (q, &a) in acc.iter().enumerate() {
            // SAFETY: row r < rows of `c`, the lanes the mask keeps.
            unsafe { _mm512_mask_storeu_ps(c.add(r * ldc + 16 * q), masks[q], a) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;

    #[test]
    fn block_product_matches_a_plain_product() {
        if crate::arch::x86::avx512().is_none() {
            return;
        }
        let mut rng = Rng::new(61);
        for (k, n, rows) in
            [(1, 1, 1), (3, 7, 8), (16, 16, 5), (96, 40, 8), (33, 49, 3), (8, 97, 8), (0, 5, 2)]
        {
            let ldv = n + 3;
            let (u, v) = (rng.vec(k * BLOCK), rng.vec(k * ldv));
            let ldc = n + 2;
            let mut c = vec![f32::NAN; rows * ldc];
            block_product(&u, k, &v, ldv, n, &mut c, ldc, rows);
            for r in 0..rows {
                for j in 0..n {
                    let want: f32 = (0..k).map(|p| u[p * BLOCK + r] * v[p * ldv + j]).sum();
                    let got = c[r * ldc + j];
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "k {k} n {n} r {r} j {j}: {got} vs {want}"
                    );
                }
                // Columns past n are not written.
                assert!(c[r * ldc + n..(r * ldc + ldc).min(c.len())].iter().all(|x| x.is_nan()));
            }
        }
    }
}
