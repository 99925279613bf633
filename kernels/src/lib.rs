//! CPU kernels that compute on packed codebook weights, decoding a row at a time into a small scratch.
