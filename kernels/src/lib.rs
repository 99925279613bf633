//! CPU kernels that compute on packed codebook weights, decoding a row at a time into a small scratch.
//!
//! Weights arrive as [`pith_format::TensorView`]s in their stored encoding (f32, f16, i64 or packed
//! codebook indices). A kernel never widens a whole weight tensor to f32: it decodes one row (a slice
//! along axis 0, e.g. one output channel's filter) at a time with [`WeightRows`] and accumulates from it.
//!
//! Entry point: [`Kernels`], chosen once per session, whose methods are the kernels:
//! * [`Kernels::conv2d`] — grouped / depthwise / pointwise 2-D convolution (ONNX `Conv` layout),
//! * [`Kernels::conv_transpose2d`] — grouped 2-D transposed convolution (ONNX `ConvTranspose` layout),
//! * [`Kernels::gemm`] — `y = a · W + bias` with `W` stored `[N, K]` or `[K, N]`.
//!
//! Each kernel takes a caller-owned scratch slice sized by its `*_scratch_len` method (a share per
//! worker thread), so the runtime can plan all memory up front. Every kernel can fuse an
//! [`Activation`] epilogue. Inner loops are the [`Isa`] micro-kernels of the chosen path; conv and
//! gemm split their output channels over the kernel set's persistent worker threads.

mod activation;
pub mod affinity;
pub mod arch;
pub mod blocked;
mod conv;
mod conv_int8;
mod conv_transpose;
mod decode;
mod gemm;
mod parallel;
mod pool;
#[cfg(test)]
mod testutil;
mod winograd;

pub use activation::{exp_neg_abs, sigmoid, Activation, ChannelActivation};
pub use blocked::Layout;
pub use conv::{Conv2dParams, ConvGeometry};
pub use conv_int8::Int8Filters;
pub use decode::{Int8RowTables, WeightRows};
pub use gemm::WeightLayout;
pub use parallel::recycle;

use std::sync::Arc;

use pool::WorkerPool;

use pith_format::TensorView;

pub use arch::Isa;

/// Errors a kernel reports instead of panicking: buffers or weights that do not match the parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KernelError {
    /// A buffer has the wrong number of elements.
    #[error("{what} has {got} elements, expected {expected}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Required length (minimum, for scratch).
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// The parameters themselves are inconsistent (zero stride, groups not dividing channels, ...).
    #[error("invalid parameters: {0}")]
    Params(String),
    /// The weight tensor's encoding is malformed or does not fit the expected matrix.
    #[error("weight: {0}")]
    Weight(String),
}

/// The kernel set, chosen once per session (instruction-set path, worker threads) and then used
/// for every call. Cloning shares the thread pool.
#[derive(Clone)]
pub struct Kernels {
    isa: Isa,
    threads: usize,
    /// Persistent workers (`threads - 1`: the caller's thread works too), present when `threads > 1`.
    pool: Option<Arc<WorkerPool>>,
    /// Multiply-adds below which work stays on one thread (handing out a task costs a little);
    /// tests lower it to exercise the split on small shapes.
    pub(crate) min_task_work: usize,
    /// Whether 1×1 convolutions quantize their input to u8 and run on int8 dot products.
    int8: bool,
    /// Whether 1×1 convolutions round weights and inputs to bf16 for their products.
    bf16: bool,
}

/// How a kernel set's threads spent the jobs split over several of them ([`Kernels::take_thread_work`]):
/// each thread running its tasks should take about the same time, and the caller should wait
/// little for the workers. A thread's share running slower than the whole job divided by the
/// threads (from a one-thread profile) is time lost inside the tasks: on 2-vCPU VMs mostly to
/// data that one core wrote and the other reads or overwrites.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadWork {
    /// Jobs that ran on several threads (jobs run on the caller alone are not counted).
    pub jobs: u64,
    /// Each thread's time running its tasks of those jobs: the caller's first, then each
    /// worker's.
    pub busy: Vec<std::time::Duration>,
    /// The caller's time waiting for workers' tasks after finishing its own.
    pub waited: std::time::Duration,
}

impl ThreadWork {
    /// Adds `other`'s jobs and times to these (thread by thread).
    pub fn add(&mut self, other: &ThreadWork) {
        self.jobs += other.jobs;
        if self.busy.len() < other.busy.len() {
            self.busy.resize(other.busy.len(), std::time::Duration::ZERO);
        }
        for (mine, theirs) in self.busy.iter_mut().zip(&other.busy) {
            *mine += *theirs;
        }
        self.waited += other.waited;
    }
}

/// Default of [`Kernels::min_task_work`]: about 2 µs of multiply-adds. Workers spin between jobs
/// (see `pool`), so handing out a task costs about a cache-line transfer, not a wake-up. With
/// rayon's sleeping workers this had to be 2^22 (at 2^18 BlazeFace ran 1.8x slower on 2 threads
/// than on 1); with the spinning pool 2^16..2^18 first measured alike on BlazeFace (2 vCPU EPYC).
/// Once its kernels got faster, 2^16 beat 2^17 at 2 threads (Zen 3, alternating runs: 0.744-0.763
/// against 0.754-0.768 ms; 2^15 and 2^14 no better, 2^18 0.78-0.81), MobileNetV2 and V3 alike.
const MIN_TASK_WORK: usize = 1 << 16;

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels")
            .field("isa", &self.isa.name)
            .field("threads", &self.threads)
            .field("int8", &self.int8)
            .field("bf16", &self.bf16)
            .finish()
    }
}

impl PartialEq for Kernels {
    fn eq(&self, other: &Self) -> bool {
        self.isa == other.isa
            && self.threads == other.threads
            && self.int8 == other.int8
            && self.bf16 == other.bf16
    }
}

impl Default for Kernels {
    /// The best path this CPU supports (ignoring `PITH_KERNEL`), on the caller's thread.
    fn default() -> Self {
        let isa = *Isa::available().last().expect("scalar is always available");
        Kernels { isa, threads: 1, pool: None, min_task_work: MIN_TASK_WORK, int8: false, bf16: false }
    }
}

impl Kernels {
    /// The path [`Isa::detect`] picks (`PITH_KERNEL` or the best supported), with up to `threads`
    /// worker threads (0 is treated as 1). Errors if `PITH_KERNEL` names an unknown or unsupported
    /// path, or the worker threads cannot be started.
    pub fn new(threads: usize) -> Result<Kernels, KernelError> {
        Kernels::with_isa(Isa::detect()?, threads)
    }

    /// Path `isa` with up to `threads` worker threads (0 is treated as 1), the caller's included.
    /// With more than one, a pool of `threads - 1` persistent workers is started here, once; one
    /// thread uses none.
    pub fn with_isa(isa: Isa, threads: usize) -> Result<Kernels, KernelError> {
        Kernels::with_isa_on_cpus(isa, threads, None)
    }

    /// [`Kernels::with_isa`], the worker threads kept, if `worker_cpus` is given, to those of
    /// its logical CPUs they may run on (a phone's fast cores: see
    /// [`affinity::pin_current_thread`]; Linux and Android, elsewhere ignored). The caller's
    /// thread, which takes part in every job, keeps its own.
    pub fn with_isa_on_cpus(
        isa: Isa,
        threads: usize,
        worker_cpus: Option<Arc<[usize]>>,
    ) -> Result<Kernels, KernelError> {
        let threads = threads.max(1);
        let pool = if threads > 1 {
            let pool = WorkerPool::on_cpus(threads - 1, worker_cpus).map_err(|e| {
                KernelError::Params(format!("cannot start {} worker threads: {e}", threads - 1))
            })?;
            Some(Arc::new(pool))
        } else {
            None
        };
        Ok(Kernels { isa, threads, pool, min_task_work: MIN_TASK_WORK, int8: false, bf16: false })
    }

    /// With `on`, [`Kernels::conv2d_int8`] runs 1×1 convolutions (the bulk of the multiply-adds
    /// of MobileNet-style models) on their input quantized to 8 bits on the fly and the CPU's
    /// int8 dot-product instructions (dynamic-range quantization): several times the
    /// multiply-adds per instruction, at the cost of 8-bit activation error. 4-bit GEMVs take
    /// int8 products too. On x86 without AVX-512 VNNI only the GEMVs do (AVX2 `vpmaddubsw`; see
    /// [`arch::int8::Int8Kernels::conv`]). Errors if this path has no int8 kernels
    /// (aarch64 without dotprod).
    pub fn with_int8_activations(mut self, on: bool) -> Result<Kernels, KernelError> {
        if on && self.isa.int8.is_none() {
            return Err(KernelError::Params(format!(
                "int8 activations need int8 dot-product instructions (x86 AVX2 or NEON dotprod); \
                 the '{}' kernel path has none",
                self.isa.name
            )));
        }
        self.int8 = on;
        Ok(self)
    }

    /// Whether 1×1 convolutions run on int8 activations (see [`Kernels::with_int8_activations`]).
    pub fn int8_activations(&self) -> bool {
        self.int8
    }

    /// With `on`, 1×1 convolutions (planar ones, however split; channel-blocked ones with a
    /// blocked input, through [`Kernels::conv2d_blocked`]) multiply weights and
    /// inputs rounded to bf16 (8 significant bits: a relative error of at most 2^-8 per factor),
    /// summed in f32, by the CPU's bf16 dot products: twice the multiply-adds per instruction of
    /// f32 (AMD Zen 4/5; on Intel Xeons `vdpbf16ps` issues at about a third of the FMA's rate,
    /// and this is slower than f32). Errors if this path has none (x86 without AVX-512 BF16,
    /// aarch64, scalar).
    pub fn with_bf16_products(mut self, on: bool) -> Result<Kernels, KernelError> {
        if on && self.isa.bf16.is_none() {
            return Err(KernelError::Params(format!(
                "bf16 products need bf16 dot-product instructions (x86 AVX-512 BF16); the '{}' \
                 kernel path has none",
                self.isa.name
            )));
        }
        self.bf16 = on;
        Ok(self)
    }

    /// Whether 1×1 convolutions multiply in bf16 (see [`Kernels::with_bf16_products`]).
    pub fn bf16_products(&self) -> bool {
        self.bf16
    }

    /// The int8 kernels, when int8 activations are on.
    pub(crate) fn int8_kernels(&self) -> Option<arch::int8::Int8Kernels> {
        self.isa.int8.filter(|_| self.int8)
    }

    /// Worker threads this kernel set may use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The instruction-set path in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub(crate) fn pool(&self) -> Option<&WorkerPool> {
        self.pool.as_deref()
    }

    /// The pool and the threads to cut work for now: none and 1 while the pool's jobs run on
    /// the caller alone after a stalled worker ([`WorkerPool::backed_off`]), so the work goes
    /// as one task, as on one thread.
    pub(crate) fn pool_now(&self) -> (Option<&WorkerPool>, usize) {
        match self.pool() {
            Some(pool) if !pool.backed_off() => (Some(pool), self.threads),
            _ => (None, 1),
        }
    }

    /// With `on`, this kernel set's work runs on the caller's thread alone, as with one thread,
    /// until called again with `false` (the worker threads stay, and park once idle). For a
    /// caller that measured its work to be faster that way (see the runtime's thread tuner);
    /// without worker threads it does nothing.
    pub fn set_serial(&self, on: bool) {
        if let Some(pool) = self.pool() {
            pool.set_serial(on);
        }
    }

    /// Starts or stops counting how the threads spend the jobs they share (see
    /// [`Kernels::take_thread_work`]); nothing without worker threads.
    pub fn count_thread_work(&self, on: bool) {
        if let Some(pool) = self.pool() {
            pool.set_counting(on);
        }
    }

    /// The time the threads spent on jobs split over several of them since the last call
    /// (while [`Kernels::count_thread_work`] is on), counting again from zero; `None` without
    /// worker threads.
    pub fn take_thread_work(&self) -> Option<ThreadWork> {
        self.pool().map(WorkerPool::take_counts)
    }

    /// The threads to cut work for now: [`Kernels::threads`], or 1 while the work runs on the
    /// caller alone ([`Kernels::set_serial`], or a back-off after a stalled worker). Choices of
    /// how to split a layer read this, so that a serial run computes as one thread would, where
    /// that gives the same bits (a projection split by depth does not, and splits by
    /// [`Kernels::threads`] instead); scratch stays sized for [`Kernels::threads`].
    pub(crate) fn threads_now(&self) -> usize {
        self.pool_now().1
    }

    /// Runs `f(start, part)` over contiguous parts of `out` on this kernel set's threads, for
    /// element-wise work outside the kernels (the runtime's arithmetic and activations): one part
    /// per thread when each gets at least `min_len` elements, else one call on the caller's
    /// thread. `part` is `out[start..start + part.len()]`; parts start at multiples of 16.
    pub fn for_each_part(&self, out: &mut [f32], min_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
        parallel::split_elements(self, out, min_len, f)
    }

    /// [`Kernels::for_each_part`] for row-wise work: parts are whole rows of `row_len`
    /// elements (`part` starts at element `start`, a multiple of `row_len`).
    pub fn for_each_rows(
        &self,
        out: &mut [f32],
        row_len: usize,
        min_len: usize,
        f: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        parallel::split_aligned(self, out, row_len, min_len, f)
    }

    /// Applies `act` to `xs` in place with this kernel set's path (the runtime's element-wise
    /// ops use it for their fused activations).
    pub fn activate(&self, act: Activation, xs: &mut [f32]) {
        (self.isa.activate)(act, xs)
    }

    /// `ys = softmax(xs[..ys.len()])` over one contiguous row with this kernel set's path.
    pub fn softmax_row(&self, xs: &[f32], ys: &mut [f32]) {
        (self.isa.softmax_row)(xs, ys)
    }

    /// Whether layer `p` runs with its input in `x_layout` and its output in `y_layout` through
    /// [`Kernels::conv2d_blocked`] on this kernel set (see [`blocked::supports`]).
    pub fn blocked_supports(&self, p: &Conv2dParams, x_layout: Layout, y_layout: Layout) -> bool {
        blocked::supports(&self.isa, p, x_layout, y_layout)
    }

    /// [`Kernels::conv2d_add`] with the input in `x_layout` and the output (and the residual) in
    /// `y_layout`, at least one of them [`Layout::Blocked`] (see [`blocked`]); scratch as
    /// [`Kernels::conv2d_scratch_len`]; `input_scale` as [`Kernels::conv2d_scaled_input`] (a 1×1
    /// layer's only). Errors where [`Kernels::blocked_supports`] is false.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_blocked(
        &self,
        x: &[f32],
        x_layout: Layout,
        w: &TensorView<'_>,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        input_scale: Option<&[f32]>,
        p: &Conv2dParams,
        act: Activation,
        y: &mut [f32],
        y_layout: Layout,
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        blocked::conv2d(self, x, x_layout, w, bias, residual, input_scale, p, act, y, y_layout, scratch)
    }

    /// f32 scratch elements [`Kernels::conv2d`] needs for `p`: one share per worker thread.
    pub fn conv2d_scratch_len(&self, p: &Conv2dParams) -> usize {
        conv::scratch_len(p) * self.threads
    }

    /// 2-D convolution, NCHW: `y = act(conv(x, w) + bias)`.
    ///
    /// * `x`: `[batch, in_c, in_h, in_w]`; `y`: `[batch, out_c, out_h, out_w]`, fully overwritten.
    /// * `w`: ONNX layout `[out_c, in_c / groups, k_h, k_w]`, any encoding; row `oc` is one filter.
    /// * `bias`: `out_c` values, or `None`.
    /// * `act`: an [`Activation`], or a [`ChannelActivation`] (a `PRelu` slope per output channel).
    /// * `scratch`: at least [`Kernels::conv2d_scratch_len`] elements.
    ///
    /// `out_h`/`out_w` are taken as given; taps falling outside the input read zero padding.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d<'a>(
        &self,
        x: &[f32],
        w: &TensorView<'_>,
        bias: Option<&[f32]>,
        p: &Conv2dParams,
        act: impl Into<ChannelActivation<'a>>,
        y: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        conv::conv2d(self, None, x, w, bias, None, None, p, act.into(), y, scratch)
    }

    /// [`Kernels::conv2d`] followed by a residual add, in one pass over the output:
    /// `y = act(conv(x, w) + bias + residual)` (a network's skip connection; the add and the
    /// activation happen while each output tile is in cache, instead of in two more passes over
    /// the tensor).
    ///
    /// `residual` is `[batch, rc, out_h, out_w]` for some `rc <= out_c`: output channels from `rc`
    /// on get no residual, as if it had been zero-padded to `out_c` channels (BlazeFace pads its
    /// skip connections' channels; the padding need not be materialised).
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_add<'a>(
        &self,
        x: &[f32],
        w: &TensorView<'_>,
        bias: Option<&[f32]>,
        residual: &[f32],
        p: &Conv2dParams,
        act: impl Into<ChannelActivation<'a>>,
        y: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        conv::conv2d(self, None, x, w, bias, Some(residual), None, p, act.into(), y, scratch)
    }

    /// A 1×1 convolution (stride 1, unpadded, ungrouped) of its input scaled per channel:
    /// `y = act(conv(x ⊙ s, w) + bias + residual)`, `s` (`input_scale`) holding `in_c` factors per
    /// image (`[batch, in_c]`, a squeeze-excite gate), `residual` as [`Kernels::conv2d_add`]. The
    /// factors multiply the decoded filters' columns (`W (s ⊙ x) = (W diag(s)) x`), so the scaled
    /// input is never written: one pass over the input instead of three. Errors for any other
    /// layer and on a scale of the wrong length; scratch as [`Kernels::conv2d_scratch_len`].
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_scaled_input<'a>(
        &self,
        x: &[f32],
        input_scale: &[f32],
        w: &TensorView<'_>,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        p: &Conv2dParams,
        act: impl Into<ChannelActivation<'a>>,
        y: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        conv::conv2d(self, None, x, w, bias, residual, Some(input_scale), p, act.into(), y, scratch)
    }

    /// The geometry of layer `p` on this kernel path, for [`Kernels::conv2d_prepared`]: what
    /// [`Kernels::conv2d`] would otherwise derive on every call (tap masks, slab extents). Errors
    /// on parameters [`Conv2dParams::check`] rejects.
    pub fn conv_geometry(&self, p: &Conv2dParams) -> Result<ConvGeometry, KernelError> {
        p.check()?;
        Ok(ConvGeometry::new(self.isa, p))
    }

    /// [`Kernels::conv2d`] of the layer `geometry` describes (made by
    /// [`Kernels::conv_geometry`]), with [`Kernels::conv2d_add`]'s residual and
    /// [`Kernels::conv2d_scaled_input`]'s input scale where given: the same sums without
    /// deriving the geometry again.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_prepared<'a>(
        &self,
        geometry: &ConvGeometry,
        x: &[f32],
        w: &TensorView<'_>,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        input_scale: Option<&[f32]>,
        act: impl Into<ChannelActivation<'a>>,
        y: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let p = geometry.params();
        conv::conv2d(self, Some(geometry), x, w, bias, residual, input_scale, p, act.into(), y, scratch)
    }

    /// Whether [`Kernels::conv2d_int8`] runs layer `p`: int8 activations on (see
    /// [`Kernels::with_int8_activations`]) and an ungrouped convolution: 1×1 (stride 1,
    /// unpadded) over more than one pixel, or any other that does not take Winograd.
    pub fn int8_applies(&self, p: &Conv2dParams) -> bool {
        conv_int8::applies(self, p)
    }

    /// [`Kernels::conv2d`] (with [`Kernels::conv2d_add`]'s residual, if given) of a layer where
    /// [`Kernels::int8_applies`], on `filters` prepared from its weights: the input is quantized
    /// to u8 on the fly (a 1×1 layer per block of 256 pixels over all channels, any other per
    /// image, with zero on a level so that padding stays zero), and multiplied on int8 dot
    /// products. Errors if the layer does not qualify or the filters do not fit it. Scratch:
    /// [`Kernels::conv2d_scratch_len`].
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_int8<'a>(
        &self,
        x: &[f32],
        filters: &Int8Filters,
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        p: &Conv2dParams,
        act: impl Into<ChannelActivation<'a>>,
        y: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        conv_int8::conv(self, x, filters, bias, residual, p, act.into(), y, scratch)
    }

    /// f32 scratch elements [`Kernels::conv_transpose2d`] needs for `p`: one share per worker thread.
    pub fn conv_transpose2d_scratch_len(&self, p: &Conv2dParams) -> usize {
        conv_transpose::scratch_len(p) * self.threads
    }

    /// 2-D transposed convolution, NCHW: `y = act(scale * conv_transpose(x, w) + bias)`.
    ///
    /// `p.in_*` describe `x` and `p.out_*` describe `y` (the caller folds `output_padding` and
    /// `output_shape` into `out_h`/`out_w`); `pad_top`/`pad_left` are the begin pads of ONNX `pads`.
    /// `w`: ONNX layout `[in_c, out_c / groups, k_h, k_w]`; row `ic` holds input channel `ic`'s taps.
    /// Input pixel `(iy, ix)` reaches output `(iy * stride_h - pad_top + ky * dil_h, ...)`.
    /// `scale` (one factor per output channel, or `None` for 1) multiplies each channel's decoded
    /// weights: a BatchNormalization after the layer folded in at run time, where the stored
    /// codebook rows, which run along input channels, keep their values.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_transpose2d(
        &self,
        x: &[f32],
        w: &TensorView<'_>,
        scale: Option<&[f32]>,
        bias: Option<&[f32]>,
        p: &Conv2dParams,
        act: Activation,
        y: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        conv_transpose::conv_transpose2d(self, x, w, scale, bias, p, act, y, scratch)
    }

    /// f32 scratch elements [`Kernels::gemm`] needs: one share per worker thread.
    pub fn gemm_scratch_len(&self, k: usize, n: usize, layout: WeightLayout) -> usize {
        gemm::scratch_len(k, n, layout) * self.threads
    }

    /// Matrix product `y[m, n] = act(sum_k a[m, k] * W[k, n] + bias[n])`.
    ///
    /// * `a`: `[m, k]` row-major; `y`: `[m, n]`, fully overwritten.
    /// * `w`: `k * n` weights in any encoding, laid out as `layout` says.
    /// * `bias`: `n` values, or `None`.
    /// * `act`: an [`Activation`], or a [`ChannelActivation`] (a `PRelu` slope per output column).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm<'a>(
        &self,
        a: &[f32],
        m: usize,
        k: usize,
        n: usize,
        w: &TensorView<'_>,
        layout: WeightLayout,
        bias: Option<&[f32]>,
        act: impl Into<ChannelActivation<'a>>,
        y: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        gemm::gemm(self, a, m, k, n, w, layout, None, bias, act.into(), y, scratch)
    }

    /// [`Kernels::gemm`] of `[N, K]` weights `w` whose int8 GEMV tables were prepared once
    /// ([`Int8RowTables::new`] on the same `w`, `n`, `k`): with int8 activations on, a single
    /// input row then skips rounding every row's codebook. The same results as [`Kernels::gemm`];
    /// errors if the tables are not `n` rows.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_int8<'a>(
        &self,
        a: &[f32],
        m: usize,
        k: usize,
        n: usize,
        w: &TensorView<'_>,
        tables: &Int8RowTables,
        bias: Option<&[f32]>,
        act: impl Into<ChannelActivation<'a>>,
        y: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        gemm::gemm(self, a, m, k, n, w, WeightLayout::NK, Some(tables), bias, act.into(), y, scratch)
    }
}

/// Checks that buffer `what` has exactly `expected` elements.
pub(crate) fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), KernelError> {
    if got != expected {
        return Err(KernelError::Length { what, expected, got });
    }
    Ok(())
}

/// Checks that buffer `what` has at least `expected` elements.
pub(crate) fn check_min_len(what: &'static str, got: usize, expected: usize) -> Result<(), KernelError> {
    if got < expected {
        return Err(KernelError::Length { what, expected, got });
    }
    Ok(())
}

/// Sets every element of `xs` to 0.0 with one `memset`. (`fill(0.0)` on f32 slices was
/// compiled as a 16-byte store loop, measured at a quarter of BlazeFace's conv setup time.)
pub(crate) fn zero(xs: &mut [f32]) {
    // SAFETY: `xs` is a valid, exclusively borrowed region of `xs.len()` f32s, and the all-zero
    // bit pattern is the f32 value 0.0, so every element is left initialised to 0.0.
    unsafe { std::ptr::write_bytes(xs.as_mut_ptr(), 0, xs.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_work_adds_thread_by_thread() {
        let ms = std::time::Duration::from_millis;
        let mut a = ThreadWork { jobs: 2, busy: vec![ms(3)], waited: ms(1) };
        a.add(&ThreadWork { jobs: 5, busy: vec![ms(4), ms(7)], waited: ms(2) });
        assert_eq!(a, ThreadWork { jobs: 7, busy: vec![ms(7), ms(7)], waited: ms(3) });
        a.add(&ThreadWork::default());
        assert_eq!(a, ThreadWork { jobs: 7, busy: vec![ms(7), ms(7)], waited: ms(3) });
    }

    #[test]
    fn a_serial_kernel_set_cuts_work_for_one_thread_until_released() {
        let k = Kernels::with_isa(*Isa::available().last().unwrap(), 2).unwrap();
        assert_eq!(k.pool_now().1, 2);
        // Clones share the pool, as a session's ops share its kernel set.
        k.clone().set_serial(true);
        assert!(k.pool_now().0.is_none() && k.pool_now().1 == 1);
        k.set_serial(false);
        assert_eq!(k.pool_now().1, 2);
        // Without workers it changes nothing.
        let one = Kernels::default();
        one.set_serial(true);
        assert_eq!(one.pool_now().1, 1);
    }

    #[test]
    fn zero_clears_exactly_the_slice() {
        let mut v = [f32::NAN; 37];
        zero(&mut v[3..30]);
        assert!(v[3..30].iter().all(|&x| x == 0.0 && x.is_sign_positive()));
        assert!(v[..3].iter().chain(&v[30..]).all(|x| x.is_nan()));
        zero(&mut []);
    }

    #[test]
    fn kernel_sets_report_their_path_and_threads() {
        let best = *Isa::available().last().unwrap();
        assert_eq!(Kernels::default().isa(), best);
        assert_eq!(Kernels::default().threads(), 1);
        let one = Kernels::with_isa(Isa::scalar(), 0).unwrap();
        assert_eq!((one.threads(), one.pool().is_none()), (1, true));
        let three = Kernels::with_isa(best, 3).unwrap();
        assert_eq!((three.threads(), three.pool().map(|p| p.workers())), (3, Some(2)));
        assert!(format!("{three:?}").contains(best.name));
        // Scratch is one share per worker.
        assert_eq!(
            three.gemm_scratch_len(5, 7, WeightLayout::NK),
            3 * one.gemm_scratch_len(5, 7, WeightLayout::NK)
        );
    }
}
