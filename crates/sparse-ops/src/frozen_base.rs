//! What [`crate::lora_linear`] adds LoRA's update onto, and a member of
//! [`crate::lora_linear_group`] (their own module so that the portable ops and their CUDA
//! implementations both name them without importing each other).

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

/// One adapted projection of [`crate::lora_linear_group`]: what [`crate::lora_linear`] takes
/// besides `x`.
#[derive(Debug, Clone)]
pub struct GroupMember<B: Backend> {
    /// The frozen weight, or the base output already computed.
    pub base: FrozenBase<B>,
    /// `[r, in]`, in `x`'s dtype.
    pub lora_a: Tensor<B, 2>,
    /// `[out, r]`, in `x`'s dtype.
    pub lora_b: Tensor<B, 2>,
    /// The adapter's scaling.
    pub scaling: f64,
}
