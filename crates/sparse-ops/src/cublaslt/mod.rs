//! cuBLASLt GEMMs on burn-cuda tensors (feature `cuda`): the fast path under [`crate::linear`].
//!
//! - [`matmul`], [`linear_forward`] (`x W^T`) and [`linear_input_grad`] (`dY W`) take burn-cuda
//!   tensors of any strides (bf16, f16 or f32; f32 accumulation; output in the input dtype) and
//!   run cuBLASLt on the same device memory. A transposed weight, a row block `W[a..b, :]` and a
//!   column block are read in place; gathered rows (`select`) arrive as a contiguous copy.
//! - [`crate::linear`] routes through them on `burn::backend::Cuda` and `Autodiff<Cuda>` (the
//!   input gradient of a frozen weight too) for products of at least [`min_flops`] FLOPs, and
//!   keeps burn's matmul on every other backend, for a weight that requires a gradient, and
//!   whenever cuBLASLt cannot run (reported once on stderr).
//! - `libcublasLt` and `libcuda` are loaded at run time; `SPARSELORA_CUBLASLT=0` turns the path
//!   off. How the GEMM is ordered against cubecl's stream, and what that costs: `tensor.rs` and
//!   `docs/perf.md`.

mod dispatch;
mod error;
mod layout;
mod lt;
mod tensor;

pub(crate) use dispatch::linear as dispatch_linear;
pub use dispatch::{min_flops, set_min_flops, DEFAULT_MIN_FLOPS};
pub use error::GemmError;
pub use tensor::{
    calls, device_info, kernel_seconds, linear_forward, linear_input_grad, matmul, reads_in_place,
    CudaBackend,
};
