//! Instruction-set-specific inner loops, chosen once at run time.
//!
//! Every path implements the same small set of micro-kernels ([`Isa`]); [`scalar`] is the reference
//! every other path is tested against. [`Isa::detect`] picks the best path the CPU supports, and the
//! `PITH_KERNEL` environment variable (`scalar`, `avx2`, `avx512`, `neon`) forces one.
//!
//! The function pointers of a SIMD path are only handed out by [`Isa::detect`] / [`Isa::by_name`]
//! after the CPU features they need were detected; that is what makes calling them safe.

#[cfg(test)]
mod conformance;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use crate::KernelError;

/// One instruction-set path: a name and its micro-kernels.
#[derive(Clone, Copy)]
pub struct Isa {
    /// "scalar", "avx2", "avx512" or "neon".
    pub name: &'static str,
    /// `c[i * ldc + j] += sum_p a[i * k + p] * b[p * ldb + j]` for `i < a.len() / k`, `j < n`.
    /// `a` holds decoded weight rows (row-major, `k` each); `b` is `k` rows of activations.
    /// Rows of `b` may overlap (`ldb < n`: depthwise conv passes shifted views of one image row,
    /// `ldb` = dilation); rows of `c` may not when there are several.
    #[allow(clippy::type_complexity)] // the full signature documents the contract best
    pub gemm_rows: fn(a: &[f32], k: usize, b: &[f32], ldb: usize, n: usize, c: &mut [f32], ldc: usize),
    /// Dot product over the common length.
    pub dot: fn(a: &[f32], b: &[f32]) -> f32,
    /// `y[i] += a * x[i]` over the common length.
    pub axpy: fn(y: &mut [f32], a: f32, x: &[f32]),
    /// Dot product of `x` with a packed index row decoded through `lut`:
    /// `sum_i lut[index_i] * x[i]` for `i < x.len()`, indices packed LSB-first at `bits` bits in `row`.
    /// `lut` has `2^bits` entries (unused entries zero), so no index can fall outside it.
    pub dot_packed: fn(row: &[u8], bits: u8, lut: &[f32], x: &[f32]) -> f32,
}

impl std::fmt::Debug for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Isa").field("name", &self.name).finish()
    }
}

impl PartialEq for Isa {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Isa {
    /// The portable reference path.
    pub fn scalar() -> Isa {
        scalar::ISA
    }

    /// Every path this CPU can run, best last.
    pub fn available() -> Vec<Isa> {
        #[allow(unused_mut)]
        let mut paths = vec![Isa::scalar()];
        #[cfg(target_arch = "aarch64")]
        paths.extend(neon::neon());
        #[cfg(target_arch = "x86_64")]
        paths.extend(x86::avx2().into_iter().chain(x86::avx512()));
        paths
    }

    /// The path named `name`, if this CPU can run it; an error names what is missing.
    pub fn by_name(name: &str) -> Result<Isa, KernelError> {
        const KNOWN: [&str; 4] = ["scalar", "avx2", "avx512", "neon"];
        if !KNOWN.contains(&name) {
            return Err(KernelError::Params(format!(
                "unknown kernel path '{name}' (expected one of {KNOWN:?})"
            )));
        }
        Isa::available().into_iter().find(|i| i.name == name).ok_or_else(|| {
            KernelError::Params(format!("kernel path '{name}' is not supported by this CPU or build"))
        })
    }

    /// `PITH_KERNEL` if set (an error if the CPU lacks it), else the best available path.
    pub fn detect() -> Result<Isa, KernelError> {
        match std::env::var("PITH_KERNEL") {
            Ok(name) if !name.is_empty() => Isa::by_name(&name),
            _ => Ok(*Isa::available().last().expect("scalar is always available")),
        }
    }
}
