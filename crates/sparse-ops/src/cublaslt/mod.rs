//! cuBLASLt GEMMs on burn-cuda tensors (feature `cuda`): the fast path under [`crate::linear`].
//!
//! - [`matmul`], [`linear_forward`] (`x W^T`) and [`linear_input_grad`] (`dY W`) take burn-cuda
//!   tensors of any strides (bf16, f16 or f32; f32 accumulation; output in the input dtype) and
//!   run cuBLASLt on the same device memory. A transposed weight, a row block `W[a..b, :]` and a
//!   column block are read in place; gathered rows (`select`) arrive as a contiguous copy.
//! - [`crate::linear`] routes through them on `burn::backend::Cuda` and `Autodiff<Cuda>`, forward
//!   and backward (input and weight gradients): every product when the GEMMs are queued on
//!   cubecl's own stream, else those of at least [`min_flops`] FLOPs with frozen weights; it keeps
//!   burn's matmul on every other backend and whenever cuBLASLt cannot run (reported once).
//! - `libcublasLt` and `libcuda` are loaded at run time; `SPARSELORA_CUBLASLT=0` turns the path
//!   off, `SPARSELORA_STREAM_ORDER=0` the ordering on cubecl's stream (for A/B runs). How a GEMM
//!   is ordered against cubecl's stream, and what that costs: `tensor.rs` and `docs/perf.md`.

mod dispatch;
mod error;
mod layout;
mod lora;
mod lora_group;
mod lt;
mod stream;
mod tensor;

pub(crate) use dispatch::{
    linear as dispatch_linear, linear_onto as dispatch_linear_onto,
    matmul_batched as dispatch_matmul_batched, matmul_blocks as dispatch_matmul_blocks,
};
pub use dispatch::{min_flops, set_min_flops, DEFAULT_MIN_FLOPS};
pub use error::GemmError;
pub(crate) use lora::lora_linear as dispatch_lora_linear;
pub(crate) use lora_group::lora_linear_group as dispatch_lora_linear_group;
pub use lt::PlanUse;
pub use tensor::{
    accumulating_calls, calls, device_info, device_memory_total, device_memory_used,
    kernel_seconds, linear_forward, linear_input_grad, matmul, matmul_batched, matmul_unordered,
    plan_uses, profiler_collect, reads_in_place, stream_ordered, wait_own_stream, CudaBackend,
};
