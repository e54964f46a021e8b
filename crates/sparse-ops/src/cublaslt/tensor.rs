//! GEMMs on burn-cuda tensors: strided views read in place, the output allocated by cubecl, and
//! cuBLASLt run on the same device memory, ordered against cubecl's stream.
//!
//! # Ordering
//! cubecl 0.10 queues a thread's kernels on a CUDA stream of its own that it does not expose.
//! Two ways to order a GEMM against it, tried in this order:
//! 1. **On cubecl's stream** (`stream.rs` finds and verifies it once per thread): the launch is a
//!    closure submitted to cubecl's device thread, which runs it in the same FIFO as kernel
//!    launches. It fetches the operands' device addresses there and enqueues `cublasLtMatmul` on
//!    cubecl's stream: ordered after the kernels that produced the inputs and before those that
//!    read the output, with no host wait, exactly as PyTorch orders cuBLAS. The closure holds the
//!    operands' handles until the launch is queued; later reuse of the memory is queued after it
//!    on the same stream. A launch that fails there cannot return its error: it fills the output
//!    with NaNs (so the loss shows it), is reported once, and later GEMMs use the second way.
//! 2. **Host waits** (when the stream cannot be established): the GEMM runs on a stream of our own
//!    between `client.sync()` (the inputs are complete and the output buffer is no longer read)
//!    and `cuStreamSynchronize` (work queued afterwards sees the result). Correct, but two host
//!    round trips per call and no host/GPU overlap across it: see `docs/perf.md`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use burn::tensor::{DType, Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::cuda::CudaRuntime;
use cubecl::server::ComputeServer;
use cubecl::stream_id::StreamId;
use cudarc::driver::sys::CUstream;

use super::error::GemmError;
use super::layout::{alignment, Problem, View};
use super::lt::{self, PlanUse, Pointers, Scaling};
use super::stream;

/// Bytes of `ordinal`'s device memory in use (total minus free, as `cuMemGetInfo` reports).
///
/// # Errors
/// When the driver cannot be set up on that device.
pub fn device_memory_used(ordinal: usize) -> Result<u64, GemmError> {
    lt::memory_in_use(ordinal)
}

/// Bytes of `ordinal`'s device memory in all.
///
/// # Errors
/// When the driver cannot be set up on that device.
pub fn device_memory_total(ordinal: usize) -> Result<u64, GemmError> {
    lt::memory_info(ordinal).map(|(_, total)| total)
}

/// burn-cuda's backend without fusion: what `burn::backend::Cuda` is in this workspace.
pub type CudaBackend = CubeBackend<CudaRuntime, f32, i32, u8>;

/// A burn-cuda float tensor primitive.
pub(crate) type Primitive = CubeTensor<CudaRuntime>;

/// GEMMs run through cuBLASLt since the process started.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// How many GEMMs have run through cuBLASLt in this process (forward and backward): lets a
/// check tell the fast path from a silent fallback.
pub fn calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

/// GEMMs that accumulated into an existing output since the process started.
static ACCUMULATED: AtomicU64 = AtomicU64::new(0);

/// How many of [`calls`] accumulated into an existing output (`beta = 1`, see
/// [`crate::lora_linear`]) instead of writing a new one: lets a check tell the fused op from its
/// fallback (a product and an add).
pub fn accumulating_calls() -> u64 {
    ACCUMULATED.load(Ordering::Relaxed)
}

/// `A B` through cuBLASLt: `a` `[m, k]`, `b` `[k, n]`, both f32, f16 or bf16 (the same), any
/// strides; f32 accumulation, output `[m, n]` contiguous in the inputs' dtype. Transposed
/// views, row blocks and column blocks are read in place; other layouts are copied first.
///
/// # Errors
/// [`GemmError`] when the shapes, dtypes or devices do not fit, or when cuBLASLt or the driver
/// cannot run it (no `libcublasLt`, for one); nothing has been written then.
pub fn matmul(
    a: Tensor<CudaBackend, 2>,
    b: Tensor<CudaBackend, 2>,
) -> Result<Tensor<CudaBackend, 2>, GemmError> {
    let c = matmul_primitive(a.into_primitive().tensor(), b.into_primitive().tensor())?;
    Ok(Tensor::from_primitive(TensorPrimitive::Float(c)))
}

/// `y = x W^T` for a weight stored `[out, in]` (the forward of a projection): `x` `[rows, in]`.
///
/// # Errors
/// As [`matmul`].
pub fn linear_forward(
    x: Tensor<CudaBackend, 2>,
    weight: Tensor<CudaBackend, 2>,
) -> Result<Tensor<CudaBackend, 2>, GemmError> {
    matmul(x, weight.transpose())
}

/// `dX = dY W` for a weight stored `[out, in]` (the input gradient of a projection): `dy`
/// `[rows, out]`.
///
/// # Errors
/// As [`matmul`].
pub fn linear_input_grad(
    dy: Tensor<CudaBackend, 2>,
    weight: Tensor<CudaBackend, 2>,
) -> Result<Tensor<CudaBackend, 2>, GemmError> {
    matmul(dy, weight)
}

/// `A B` queued from cubecl's device thread on a stream of ours, with no ordering at all against
/// cubecl's stream: deliberately racy. Only for checking that an ordering test detects
/// misordering (`cargo xtask bench gemm --check`); never use it for results, and call
/// [`wait_own_stream`] before anything else runs.
///
/// # Errors
/// As [`matmul`].
#[doc(hidden)]
pub fn matmul_unordered(
    a: Tensor<CudaBackend, 2>,
    b: Tensor<CudaBackend, 2>,
) -> Result<Tensor<CudaBackend, 2>, GemmError> {
    let gemm = Prepared::new(a.into_primitive().tensor(), b.into_primitive().tensor())?;
    let own = lt::with_device(gemm.out.device.index, |device| {
        Ok(device.own_stream() as u64)
    })?;
    let c = gemm.run_on_cubecl_stream(own)?;
    Ok(Tensor::from_primitive(TensorPrimitive::Float(c)))
}

/// Blocks until the GEMMs queued by [`matmul_unordered`] on `device` have finished.
///
/// # Errors
/// When the driver reports an error.
#[doc(hidden)]
pub fn wait_own_stream(device: &burn::backend::cuda::CudaDevice) -> Result<(), GemmError> {
    lt::with_device(device.index, |d| d.synchronize())
}

/// Whether cuBLASLt reads `tensor` in place (no copy before the GEMM).
pub fn reads_in_place(tensor: &Tensor<CudaBackend, 2>) -> bool {
    let primitive = tensor.clone().into_primitive().tensor();
    view_of(&primitive).is_some()
}

/// Turns the CUDA profiler's collection on (`cuProfilerStart`) or off (`cuProfilerStop`) at this
/// point of `device`'s cubecl queue: the kernels queued before are outside the range, those queued
/// after inside, whichever thread launches them (for `ncu --profile-from-start off`, which then
/// times one training step among the warm-up's thousands of kernels). A failure is a warning: a
/// profiler range never changes what the program computes.
pub fn profiler_collect(device: &burn::backend::cuda::CudaDevice, on: bool) {
    let ordinal = device.index;
    stream::device_handle(device).submit(move |_server: &mut stream::Server| {
        let result = lt::with_device(ordinal, |_| lt::profiler_collect(on));
        if let Err(e) = result {
            eprintln!("warning: sparse-ops: CUDA profiler range not set: {e}");
        }
    });
}

/// Seconds per GEMM of `A B` for `iters` back-to-back cuBLASLt launches on our stream, timed
/// with CUDA events: the kernels alone, without the per-call ordering (for benchmarks).
///
/// # Errors
/// As [`matmul`].
pub fn kernel_seconds(
    a: Tensor<CudaBackend, 2>,
    b: Tensor<CudaBackend, 2>,
    iters: usize,
) -> Result<f64, GemmError> {
    let gemm = Prepared::new(a.into_primitive().tensor(), b.into_primitive().tensor())?;
    gemm.run(|device, problem, dtype, ptrs| {
        // SAFETY: `run` holds the buffers and has ordered them against cubecl's stream.
        unsafe { device.time_launches(problem, dtype, ptrs, iters) }
    })
    .map(|(seconds, _)| seconds)
}

/// How each GEMM plan of `device` has been used so far: shapes, launches and tuned times (see
/// [`PlanUse`]). Read after a synchronisation, the launch counts include every GEMM queued
/// before it.
///
/// # Errors
/// When cuBLASLt or the driver cannot be set up on `device`.
pub fn plan_uses(device: &burn::backend::cuda::CudaDevice) -> Result<Vec<PlanUse>, GemmError> {
    lt::with_device(device.index, |gemm| Ok(gemm.plan_uses()))
}

/// The device's name and the loaded cuBLASLt's version (e.g. 130000 for 13.0.0).
///
/// # Errors
/// When cuBLASLt or the driver cannot be set up on `device`.
pub fn device_info(device: &burn::backend::cuda::CudaDevice) -> Result<(String, usize), GemmError> {
    lt::device_info(device.index)
}

/// [`matmul`] on primitives.
pub(crate) fn matmul_primitive(a: Primitive, b: Primitive) -> Result<Primitive, GemmError> {
    run_prepared(Prepared::new(a, b)?)
}

/// `alpha A B` in `out_dtype` through cuBLASLt: the operands' dtype, or f32 for half operands
/// (a gradient of f32 master weights from half-precision products, with no cast). Ordered on
/// cubecl's stream, or with host waits for a plain product in the operands' dtype only (anything
/// else is [`GemmError::NotWritable`] there, as an accumulating product is).
pub(crate) fn matmul_scaled(
    a: Primitive,
    b: Primitive,
    alpha: f32,
    out_dtype: DType,
) -> Result<Primitive, GemmError> {
    let mut gemm = Prepared::new_in(a, b, out_dtype)?;
    gemm.scaling = Scaling { alpha, beta: 0.0 };
    run_prepared(gemm)
}

/// `C + alpha A B`, written into `c`'s own buffer and returned, through cuBLASLt ordered on
/// cubecl's stream: the element-wise add of two products' results done by the second product.
///
/// # Errors
/// With `c` given back, nothing written: [`GemmError::NotWritable`] when `c` is not a contiguous
/// `[m, n]` tensor of the operands' dtype that nothing else references (its buffer is written),
/// or when the GEMMs are not ordered on cubecl's stream; otherwise as [`matmul`].
pub(crate) fn matmul_accumulate(
    a: Primitive,
    b: Primitive,
    alpha: f32,
    c: Primitive,
) -> Result<Primitive, Box<(GemmError, Primitive)>> {
    let writable = c.handle.can_mut() && ordered_stream(&c.device).is_some();
    if !writable {
        return Err(Box::new((GemmError::NotWritable, c)));
    }
    // Past the check, a second reference costs nothing: it only gives `c` back on an error,
    // when nothing has been written.
    let mut gemm = match Prepared::with_output(a, b, Some(c.clone())) {
        Ok(gemm) => gemm,
        Err(e) => return Err(Box::new((e, c))),
    };
    gemm.scaling = Scaling { alpha, beta: 1.0 };
    let out = run_prepared(gemm).map_err(|e| Box::new((e, c)))?;
    ACCUMULATED.fetch_add(1, Ordering::Relaxed);
    Ok(out)
}

/// `C + alpha A B` into a new tensor, `c` only read, through cuBLASLt ordered on cubecl's stream:
/// an add onto a tensor that must survive (the residual stream, which the next norm's backward
/// reads) done by the product's epilogue (`D = alpha A B + C`, `C != D`).
///
/// # Errors
/// [`GemmError::NotWritable`] when `c` is not a contiguous `[m, n]` tensor of the operands'
/// dtype on their device, or when the GEMMs are not ordered on cubecl's stream; otherwise as
/// [`matmul`].
pub(crate) fn matmul_add(
    a: Primitive,
    b: Primitive,
    alpha: f32,
    c: Primitive,
) -> Result<Primitive, GemmError> {
    if ordered_stream(&c.device).is_none() {
        return Err(GemmError::NotWritable);
    }
    let mut gemm = Prepared::with_buffers(a, b, None, Some(c))?;
    gemm.scaling = Scaling { alpha, beta: 1.0 };
    let out = run_prepared(gemm)?;
    ACCUMULATED.fetch_add(1, Ordering::Relaxed);
    Ok(out)
}

/// Queues a prepared GEMM, ordered on cubecl's stream when it is known, else with host waits
/// (plain products in the operands' dtype only: that launch takes one dtype for all).
fn run_prepared(gemm: Prepared) -> Result<Primitive, GemmError> {
    let out = match ordered_stream(&gemm.out.device) {
        Some(stream) => gemm.run_on_cubecl_stream(stream)?,
        None if gemm.scaling != Scaling::PRODUCT || gemm.out.dtype != gemm.a.dtype => {
            return Err(GemmError::NotWritable)
        }
        None => {
            gemm.run(|device, problem, dtype, ptrs| {
                // SAFETY: `run` holds the buffers and has ordered them against cubecl's stream.
                unsafe { device.launch(problem, dtype, ptrs) }
            })?
            .1
        }
    };
    CALLS.fetch_add(1, Ordering::Relaxed);
    Ok(out)
}

/// Whether GEMMs on `device` from this thread are queued on cubecl's own stream (no host waits):
/// then even small products pay for themselves (see `dispatch.rs`).
pub fn stream_ordered(device: &burn::backend::cuda::CudaDevice) -> bool {
    ordered_stream(device).is_some()
}

/// The first failure of a GEMM launched on cubecl's device thread, if any.
static ORDERED_FAILURE: Mutex<Option<GemmError>> = Mutex::new(None);

/// cubecl's stream for this thread on `device`, unless a launch there has failed before.
fn ordered_stream(device: &burn::backend::cuda::CudaDevice) -> Option<u64> {
    let failure = ORDERED_FAILURE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(error) = failure {
        if !FAILURE_REPORTED.swap(true, Ordering::Relaxed) {
            eprintln!(
                "warning: sparse-ops: a cuBLASLt GEMM on cubecl's stream failed ({error}); its \
                 output was filled with NaNs and later GEMMs wait on the host instead"
            );
        }
        return None;
    }
    stream::cubecl_stream(device)
}

static FAILURE_REPORTED: AtomicBool = AtomicBool::new(false);

/// The alignment cuBLASLt may assume for a tensor's device address: that of its byte offset in a
/// cubecl allocation (allocations themselves are aligned to at least 256 bytes, which the launch
/// checks).
fn offset_alignment(t: &Primitive) -> u32 {
    alignment(t.handle.offset_start.unwrap_or(0))
}

/// `(rows, cols, strides)` of a 2-D primitive.
fn dims(t: &Primitive) -> ([usize; 2], [usize; 2]) {
    let (shape, strides) = (t.meta.shape(), t.meta.strides());
    ([shape[0], shape[1]], [strides[0], strides[1]])
}

fn view_of(t: &Primitive) -> Option<View> {
    if t.meta.shape().len() != 2 {
        return None;
    }
    let (shape, strides) = dims(t);
    View::from_strides(shape, strides)
}

/// A tensor cuBLASLt can read, copied first when its strides are not a dense order.
fn readable(t: Primitive) -> (Primitive, View) {
    if let Some(view) = view_of(&t) {
        return (t, view);
    }
    let t = into_contiguous(t);
    let ([rows, cols], _) = dims(&t);
    (t, View::contiguous(rows, cols))
}

/// A 3-D tensor `[batch, rows, cols]` cuBLASLt can read as a strided batch of matrices: the view
/// of each matrix and the distance between them (copied first when not readable in place).
fn readable_batch(t: Primitive) -> (Primitive, View, usize) {
    let batch_view = |t: &Primitive| {
        let (shape, strides) = (t.meta.shape(), t.meta.strides());
        let view = View::from_strides([shape[1], shape[2]], [strides[1], strides[2]])?;
        Some((view, if shape[0] > 1 { strides[0] } else { 0 }))
    };
    if let Some((view, stride)) = batch_view(&t) {
        return (t, view, stride);
    }
    let t = into_contiguous(t);
    let shape = t.meta.shape();
    let (rows, cols) = (shape[1], shape[2]);
    (t, View::contiguous(rows, cols), rows * cols)
}

/// `A_i B_i` for every `i` of a batch through cuBLASLt: `a` `[batch, m, k]`, `b` `[batch, k, n]`,
/// both f32, f16 or bf16 (the same), any strides (a batch stride of 0 repeats one matrix);
/// output `[batch, m, n]` contiguous in the inputs' dtype.
///
/// # Errors
/// As [`matmul`].
pub fn matmul_batched(
    a: Tensor<CudaBackend, 3>,
    b: Tensor<CudaBackend, 3>,
) -> Result<Tensor<CudaBackend, 3>, GemmError> {
    let c = matmul_batched_primitive(a.into_primitive().tensor(), b.into_primitive().tensor())?;
    Ok(Tensor::from_primitive(TensorPrimitive::Float(c)))
}

/// [`matmul_batched`] on primitives.
pub(crate) fn matmul_batched_primitive(a: Primitive, b: Primitive) -> Result<Primitive, GemmError> {
    run_prepared(Prepared::batched(a, b)?)
}

/// The blocks `out[:, rows, cols] = a[:, rows, depth] b[:, depth, cols]` of a batched product, one
/// strided-batch GEMM each, written into one new `[batch, m, n]` tensor (contiguous, the inputs'
/// dtype); elements outside every block are left unwritten. Each block reads its parts of `a` and
/// `b` in place and writes its part of the output in place (cuBLASLt's `D` with the output's row
/// and batch strides).
///
/// # Errors
/// As [`matmul`]; [`GemmError::Shape`] also for a block outside the operands or an empty block.
pub(crate) fn matmul_blocks_primitive(
    a: Primitive,
    b: Primitive,
    blocks: &[kernels_cubecl::ProductBlock],
) -> Result<Primitive, GemmError> {
    let dtype = check_operands(&a, &b)?;
    let [batch, m, k, n] = batched_dims(&a, &b)?;
    let shape_error = GemmError::Shape { m, k, k2: k, n };
    let inside = |r: &std::ops::Range<usize>, len: usize| r.start < r.end && r.end <= len;
    if !blocks
        .iter()
        .all(|blk| inside(&blk.rows, m) && inside(&blk.cols, n) && inside(&blk.depth, k))
    {
        return Err(shape_error);
    }
    // Views whose strides cuBLASLt cannot read are copied once, not once per block.
    let (a, _, _) = readable_batch(a);
    let (b, _, _) = readable_batch(b);
    let out = empty_batch(&a, [batch, m, n], dtype);
    for blk in blocks {
        let part_a = sub_view(&a, [blk.rows.clone(), blk.depth.clone()]);
        let part_b = sub_view(&b, [blk.depth.clone(), blk.cols.clone()]);
        let part_out = sub_view(&out, [blk.rows.clone(), blk.cols.clone()]);
        let (part_a, va, stride_a) = readable_batch(part_a);
        let (part_b, vb, stride_b) = readable_batch(part_b);
        run_prepared(Prepared {
            problem: Problem::batched(va, stride_a, vb, stride_b, batch).into_block(n, m * n),
            a: part_a,
            b: part_b,
            out: part_out,
            addend: None,
            scaling: Scaling::PRODUCT,
        })?;
    }
    Ok(out)
}

/// `[batch, m, k, n]` of a batched product `a` `[batch, m, k]` times `b` `[batch, k, n]`, none of
/// them zero.
fn batched_dims(a: &Primitive, b: &Primitive) -> Result<[usize; 4], GemmError> {
    let (sa, sb) = (a.shape(), b.shape());
    let dim = |s: &Shape, i: usize| s.get(i).copied().unwrap_or(0);
    let (batch, m, k) = (dim(&sa, 0), dim(&sa, 1), dim(&sa, 2));
    let (batch_b, k2, n) = (dim(&sb, 0), dim(&sb, 1), dim(&sb, 2));
    if sa.num_dims() != 3 || sb.num_dims() != 3 || batch != batch_b || k != k2 {
        return Err(GemmError::Shape { m, k, k2, n });
    }
    if batch * m * n * k == 0 {
        return Err(GemmError::Shape { m, k, k2, n });
    }
    Ok([batch, m, k, n])
}

/// A new contiguous `[batch, m, n]` output on `like`'s device.
fn empty_batch(like: &Primitive, dims: [usize; 3], dtype: burn::tensor::DType) -> Primitive {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::new(dims),
        dtype,
    )
}

/// The view `t[:, rows, cols]` of a 3-D primitive (same strides, the handle offset to its first
/// element): no copy.
fn sub_view(t: &Primitive, [rows, cols]: [std::ops::Range<usize>; 2]) -> Primitive {
    let strides = t.meta.strides();
    let offset = rows.start * strides[1] + cols.start * strides[2];
    let mut view = t.clone();
    view.handle = view.handle.offset_start((offset * t.dtype.size()) as u64);
    let shape = view.meta.shape_mut();
    shape[1] = rows.len();
    shape[2] = cols.len();
    view
}

/// Operands checked and readable, the output allocated.
struct Prepared {
    a: Primitive,
    b: Primitive,
    out: Primitive,
    /// Read as `C` instead of `out` (`out = alpha a b + beta addend`), `out`'s layout.
    addend: Option<Primitive>,
    problem: Problem,
    /// `out = alpha a b + beta out` (or `+ beta addend`).
    scaling: Scaling,
}

/// The checks every GEMM's operands pass: same supported dtype, same device.
fn check_operands(a: &Primitive, b: &Primitive) -> Result<burn::tensor::DType, GemmError> {
    let (dtype, rhs) = (a.dtype(), b.dtype());
    if dtype != rhs {
        return Err(GemmError::DtypeMismatch { lhs: dtype, rhs });
    }
    lt::data_type(dtype)?;
    if a.device != b.device {
        return Err(GemmError::Device(
            format!("{:?}", a.device),
            format!("{:?}", b.device),
        ));
    }
    Ok(dtype)
}

impl Prepared {
    fn new(a: Primitive, b: Primitive) -> Result<Prepared, GemmError> {
        Self::with_buffers(a, b, None, None)
    }

    /// With `out` given, the product is written into it (it must be a contiguous `[m, n]` of the
    /// operands' dtype on their device: [`GemmError::NotWritable`] otherwise).
    fn with_output(
        a: Primitive,
        b: Primitive,
        out: Option<Primitive>,
    ) -> Result<Prepared, GemmError> {
        Self::with_buffers(a, b, out, None)
    }

    /// [`Self::with_output`], and with `addend` given, `C` read from it instead of from `out`
    /// (the same requirements as a given `out`).
    fn with_buffers(
        a: Primitive,
        b: Primitive,
        out: Option<Primitive>,
        addend: Option<Primitive>,
    ) -> Result<Prepared, GemmError> {
        let dtype = check_operands(&a, &b)?;
        Self::build(a, b, out, addend, dtype)
    }

    /// The product of half-precision (or f32) operands written as a new tensor of `out_dtype`:
    /// theirs, or f32 (LoRA's factor gradients, for the f32 master weights, without a cast).
    fn new_in(a: Primitive, b: Primitive, out_dtype: DType) -> Result<Prepared, GemmError> {
        lt::check_output_dtype(check_operands(&a, &b)?, out_dtype)?;
        Self::build(a, b, None, None, out_dtype)
    }

    /// [`Self::with_buffers`] with a new output (when none is given) in `out_dtype`; a given
    /// output and addend must be in `out_dtype`.
    fn build(
        a: Primitive,
        b: Primitive,
        out: Option<Primitive>,
        addend: Option<Primitive>,
        out_dtype: DType,
    ) -> Result<Prepared, GemmError> {
        let (sa, sb) = (a.shape(), b.shape());
        let [m, k] = two_d(&sa);
        let [k2, n] = two_d(&sb);
        if sa.num_dims() != 2 || sb.num_dims() != 2 || k != k2 || m * n * k == 0 {
            return Err(GemmError::Shape { m, k, k2, n });
        }
        let fits = |c: &Primitive| {
            c.dtype == out_dtype
                && c.device == a.device
                && c.meta.shape().num_dims() == 2
                && dims(c) == ([m, n], [n, 1])
        };
        if !out.iter().chain(&addend).all(fits) {
            return Err(GemmError::NotWritable);
        }
        let out = match out {
            Some(c) => c,
            None => empty_device_contiguous_dtype(
                a.client.clone(),
                a.device.clone(),
                Shape::new([m, n]),
                out_dtype,
            ),
        };
        let (a, va) = readable(a);
        let (b, vb) = readable(b);
        Ok(Prepared {
            problem: Problem::new(va, vb),
            a,
            b,
            out,
            addend,
            scaling: Scaling::PRODUCT,
        })
    }

    fn batched(a: Primitive, b: Primitive) -> Result<Prepared, GemmError> {
        let dtype = check_operands(&a, &b)?;
        let [batch, m, _, n] = batched_dims(&a, &b)?;
        let (a, va, stride_a) = readable_batch(a);
        let (b, vb, stride_b) = readable_batch(b);
        let out = empty_batch(&a, [batch, m, n], dtype);
        Ok(Prepared {
            problem: Problem::batched(va, stride_a, vb, stride_b, batch),
            a,
            b,
            out,
            addend: None,
            scaling: Scaling::PRODUCT,
        })
    }

    /// Runs `launch` on our stream with the operands' device addresses, ordered against
    /// cubecl's stream as the module documentation says; returns its result and the output.
    fn run<T>(
        self,
        launch: impl FnOnce(
            &mut lt::DeviceGemm,
            &Problem,
            burn::tensor::DType,
            Pointers,
        ) -> Result<T, GemmError>,
    ) -> Result<(T, Primitive), GemmError> {
        let client = self.out.client.clone();
        let resource = |t: &Primitive| {
            client
                .get_resource(t.handle.clone())
                .map_err(|e| GemmError::Runtime(format!("{e:?}")))
        };
        // Held until our stream has finished: they keep cubecl from reusing the buffers.
        let (ra, rb, rd) = (resource(&self.a)?, resource(&self.b)?, resource(&self.out)?);
        cubecl::future::block_on(client.sync())
            .map_err(|e| GemmError::Runtime(format!("{e:?}")))?;
        // Only plain products wait on the host (`run_prepared`): no addend here.
        let ptrs = Pointers::in_place(rb.resource().ptr, ra.resource().ptr, rd.resource().ptr);
        let dtype = self.out.dtype;
        let value = lt::with_device(self.out.device.index, |device| {
            let value = launch(device, &self.problem, dtype, ptrs);
            // Wait even when the launch failed: an earlier GEMM may still be running.
            device.synchronize()?;
            value
        })?;
        drop((ra, rb, rd));
        Ok((value, self.out))
    }
}

impl Prepared {
    /// Queues the GEMM on cubecl's `stream` from its device thread (module documentation, way 1)
    /// and returns the output at once.
    fn run_on_cubecl_stream(self, stream: u64) -> Result<Primitive, GemmError> {
        let (dtype, out_dtype) = (self.a.dtype, self.out.dtype);
        let ordinal = self.out.device.index;
        let assumed = [
            offset_alignment(&self.b),
            offset_alignment(&self.a),
            offset_alignment(&self.out)
                .min(self.addend.as_ref().map_or(u32::MAX, offset_alignment)),
        ];
        let (problem, scaling) = (self.problem, self.scaling);
        // Planned here, where an error can still be returned.
        let plan = lt::with_device(ordinal, |device| {
            device.plan(&problem, dtype, out_dtype, assumed)
        })?;
        let sid = StreamId::current();
        // Bindings, as a queued cubecl kernel holds them: they keep the memory from reuse until
        // the closure has run, without counting as holders for `can_mut`, so an in-place op
        // queued after this GEMM (on the output, say) may write where it is safe to: later on the
        // same stream.
        let (a, b, d) = (
            self.a.handle.clone().binding(),
            self.b.handle.clone().binding(),
            self.out.handle.clone().binding(),
        );
        let c = self.addend.as_ref().map(|c| c.handle.clone().binding());
        let out_bytes = self.out.meta.shape().num_elements() * out_dtype.size();
        stream::device_handle(&self.out.device).submit(move |server: &mut stream::Server| {
            let mut d_ptr = None;
            let result = (|| -> Result<(), GemmError> {
                let mut address = |binding: &cubecl::server::Binding| {
                    server
                        .get_resource(binding.clone(), sid)
                        .map(|r| r.resource().ptr)
                        .map_err(|e| GemmError::Runtime(format!("{e:?}")))
                };
                let d_address = address(&d)?;
                let ptrs = Pointers {
                    first: address(&b)?,
                    second: address(&a)?,
                    c: c.as_ref().map_or(Ok(d_address), &mut address)?,
                    d: d_address,
                };
                d_ptr = Some(ptrs.d);
                let actual = ptrs.alignments();
                lt::with_device(ordinal, |device| {
                    let plan = if actual.iter().zip(assumed).all(|(&got, want)| got >= want) {
                        plan
                    } else {
                        device.plan(&problem, dtype, out_dtype, actual)?
                    };
                    // SAFETY: the bindings captured by this closure keep the three buffers alive
                    // until the launch is queued; it is queued on the stream every kernel that
                    // reads or writes them is queued on, in program order.
                    unsafe { device.launch_plan(&plan, ptrs, scaling, stream as CUstream) }
                })
            })();
            if let Err(error) = result {
                if let Some(ptr) = d_ptr {
                    // SAFETY: the output buffer is alive (held by `d`) and written only here.
                    unsafe { lt::fill_nan(ptr, out_bytes, out_dtype, stream as CUstream) };
                }
                let mut failure = ORDERED_FAILURE.lock().unwrap_or_else(|p| p.into_inner());
                failure.get_or_insert(error);
            }
            // `a`, `b`, `c` and `d` are dropped here: their memory may be reused by work queued
            // later on the same stream, i.e. after this GEMM.
            drop((a, b, c, d));
        });
        Ok(self.out)
    }
}

/// The first two dimensions of `shape` (zeros where it has fewer).
fn two_d(shape: &Shape) -> [usize; 2] {
    [0, 1].map(|i| shape.get(i).copied().unwrap_or(0))
}
