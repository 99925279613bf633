//! Graph rewrites run between import and weight compression, each in its own module.

pub(crate) mod affine;
pub(crate) mod attrs;
pub(crate) mod bn_fold;
pub(crate) mod dce;
pub(crate) mod fold;
pub(crate) mod hardswish;
pub(crate) mod identity;
pub(crate) mod topo;

#[cfg(test)]
pub(crate) mod test_util;
