//! What [`crate::lora_linear`] adds LoRA's update onto (its own module so that the portable op
//! and its CUDA implementation both name it without importing each other).

use burn::tensor::{backend::Backend, Tensor};

/// The frozen part of an adapted projection: its weight, or its output already computed
/// (SparseLoRA's sliced and masked forms compute it their own way).
#[derive(Debug, Clone)]
pub enum FrozenBase<B: Backend> {
    /// `W: [out, in]`: the base output is `x W^T` (a frozen weight; one that needs a gradient
    /// takes the reference path).
    Weight(Tensor<B, 2>),
    /// The base output `[n, out]` itself; its gradient is `dY`.
    Output(Tensor<B, 2>),
}
