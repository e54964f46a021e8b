//! Sliced (channel-sparse) matrix products for SparseLoRA, and the GEMM seam every projection goes
//! through.
//!
//! Frozen base weights are stored PyTorch-style, `W: [out, in]`, so that slicing output channels
//! (rows) is a contiguous gather. Every function here has a plain burn-tensor implementation; fast
//! backends plug in behind the same signatures: with the `cuda` feature, [`linear`] runs cuBLASLt
//! on burn-cuda tensors ([`cublaslt`]).
#![warn(missing_docs)]

#[cfg(feature = "cuda")]
pub mod cublaslt;
mod frozen_base;
mod linear;
pub mod lora;
mod sliced;

// The masked-dense form of a channel slice: a keep vector and the masking pass (kernels on
// burn-wgpu/burn-cuda, burn ops elsewhere).
pub use kernels_cubecl::channel_mask::{drop_mask, keep_mask, mask_channels};
// The token split's row moves: the dense rows gathered out, their results written back over the
// sparse ones or added onto them (kernels on burn-wgpu/burn-cuda, burn ops elsewhere).
pub use kernels_cubecl::row_merge::{add_rows, gather_rows, replace_rows};
pub use linear::{linear, linear_onto, matmul_batched, reshaped, SeamMatmul};
pub use lora::{lora_linear, lora_linear_group, FrozenBase, GroupMember};
pub use sliced::{
    linear_in_compact, linear_in_compact_padded, linear_in_sliced, linear_in_sliced_onto,
    linear_out_sliced, linear_out_sliced_padded, padded_width, scatter_channels,
};
