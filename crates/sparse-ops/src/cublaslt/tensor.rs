//! GEMMs on burn-cuda tensors: strided views read in place, the output allocated by cubecl, and
//! cuBLASLt run on the same device memory, ordered against cubecl's stream.
//!
//! # Ordering
//! cubecl 0.10 does not expose the CUDA stream a tensor's work is queued on, so the GEMM runs on a
//! stream of our own between two host-side waits:
//! 1. `client.sync()` blocks until every kernel queued on the calling thread's cubecl stream has
//!    finished; fetching the buffers first (`get_resource`) makes that stream wait for any other
//!    stream that last wrote them. The inputs are then complete, and the output buffer, which
//!    cubecl's pool may hand out as soon as an earlier reader is queued, is no longer read.
//! 2. After the launch, `cuStreamSynchronize` on our stream: work that cubecl queues afterwards
//!    sees the result, and inputs dropped after the call can be reused at once.
//!
//! The cost per call is two host round trips while the GPU drains (tens of microseconds), and
//! the loss of host/GPU overlap across the call: see `docs/perf.md` and `MIN_FLOPS` in
//! `dispatch.rs`.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{Shape, Tensor, TensorMetadata, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::cuda::CudaRuntime;

use super::error::GemmError;
use super::layout::{Problem, View};
use super::lt::{self, Pointers};

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

/// Whether cuBLASLt reads `tensor` in place (no copy before the GEMM).
pub fn reads_in_place(tensor: &Tensor<CudaBackend, 2>) -> bool {
    let primitive = tensor.clone().into_primitive().tensor();
    view_of(&primitive).is_some()
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

/// The device's name and the loaded cuBLASLt's version (e.g. 130000 for 13.0.0).
///
/// # Errors
/// When cuBLASLt or the driver cannot be set up on `device`.
pub fn device_info(device: &burn::backend::cuda::CudaDevice) -> Result<(String, usize), GemmError> {
    lt::device_info(device.index)
}

/// [`matmul`] on primitives.
pub(crate) fn matmul_primitive(a: Primitive, b: Primitive) -> Result<Primitive, GemmError> {
    let gemm = Prepared::new(a, b)?;
    let ((), out) = gemm.run(|device, problem, dtype, ptrs| {
        // SAFETY: `run` holds the buffers and has ordered them against cubecl's stream.
        unsafe { device.launch(problem, dtype, ptrs) }
    })?;
    CALLS.fetch_add(1, Ordering::Relaxed);
    Ok(out)
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

/// Operands checked and readable, the output allocated.
struct Prepared {
    a: Primitive,
    b: Primitive,
    out: Primitive,
    problem: Problem,
}

impl Prepared {
    fn new(a: Primitive, b: Primitive) -> Result<Prepared, GemmError> {
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
        let (sa, sb) = (a.shape(), b.shape());
        let [m, k] = two_d(&sa);
        let [k2, n] = two_d(&sb);
        if sa.num_dims() != 2 || sb.num_dims() != 2 || k != k2 || m * n * k == 0 {
            return Err(GemmError::Shape { m, k, k2, n });
        }
        let (a, va) = readable(a);
        let (b, vb) = readable(b);
        let out = empty_device_contiguous_dtype(
            a.client.clone(),
            a.device.clone(),
            Shape::new([m, n]),
            dtype,
        );
        Ok(Prepared {
            problem: Problem::new(va, vb),
            a,
            b,
            out,
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
        let ptrs = Pointers {
            first: rb.resource().ptr,
            second: ra.resource().ptr,
            d: rd.resource().ptr,
        };
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

/// The first two dimensions of `shape` (zeros where it has fewer).
fn two_d(shape: &Shape) -> [usize; 2] {
    [0, 1].map(|i| shape.get(i).copied().unwrap_or(0))
}
