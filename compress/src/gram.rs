//! Second-moment (Gram) statistics of the activations a weight's rows multiply, gathered on
//! calibration data. They turn weight error into *output* error: for a weight row `w` (one output
//! channel) quantised to `q`, the layer's mean squared output error on the calibration inputs is
//! `(w - q)ᵀ G (w - q) / count`, where `G` is the Gram matrix of the input patches the row sees.
//!
//! STUB: the interface is fixed; the accumulation is being written (see `add_conv_input`).

/// Geometry of a 2-D convolution, enough to cut input patches (ONNX `Conv` attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Strides along H and W.
    pub strides: [usize; 2],
    /// Pads: top, left, bottom, right.
    pub pads: [usize; 4],
    /// Dilations along H and W.
    pub dilations: [usize; 2],
    /// Number of groups (channels per group = C / group).
    pub group: usize,
}

/// Gram matrices of one weight's input patches, one per group.
///
/// For a Conv weight `[M, C/group, kh, kw]`, a row is one output channel of `row_len =
/// C/group·kh·kw` values, and rows `g·M/group .. (g+1)·M/group` see the patches of group `g`.
/// For a Gemm weight with `transB = 1` (`[N, K]`), `groups = 1` and `row_len = K`.
#[derive(Debug, Clone, PartialEq)]
pub struct RowGram {
    /// Number of groups.
    pub groups: usize,
    /// Length of one weight row (= one patch).
    pub row_len: usize,
    /// `groups · row_len · row_len` sums of `x xᵀ` over patches, row-major per group.
    pub sums: Vec<f64>,
    /// Number of patches accumulated per group.
    pub count: u64,
}

impl RowGram {
    /// An empty accumulator.
    pub fn new(groups: usize, row_len: usize) -> RowGram {
        RowGram { groups, row_len, sums: vec![0.0; groups * row_len * row_len], count: 0 }
    }

    /// The Gram matrix of group `g` (`row_len × row_len`, row-major).
    pub fn group(&self, g: usize) -> &[f64] {
        let n = self.row_len * self.row_len;
        &self.sums[g * n..(g + 1) * n]
    }

    /// Adds the patches of a Conv input `x` of shape `[N, C, H, W]`, at most `max_patches`
    /// output positions per image (chosen deterministically, spread over the image).
    pub fn add_conv_input(&mut self, x: &[f32], shape: &[usize], geom: &ConvGeometry, max_patches: usize) {
        let _ = (x, shape, geom, max_patches);
    }

    /// Adds the rows of a Gemm/MatMul activation `x` (`[.., K]`), each row one sample.
    pub fn add_rows(&mut self, x: &[f32], max_rows: usize) {
        let _ = (x, max_rows);
    }
}
