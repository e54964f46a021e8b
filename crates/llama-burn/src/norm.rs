//! RMSNorm as HF `LlamaRMSNorm`: normalise in f32, cast back, then scale.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{backend::Backend, Tensor};

/// Root-mean-square layer norm with a learned per-channel scale.
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    /// `[d_model]`
    pub weight: Param<Tensor<B, 1>>,
    /// Added to the mean square before the square root.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// A norm of width `d_model` with unit scale.
    pub fn new(d_model: usize, eps: f64, device: &B::Device) -> Self {
        Self {
            weight: Initializer::Ones.init([d_model], device),
            eps,
        }
    }

    /// # Shapes
    /// - `x`: `[..., d_model]`, output the same
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        // One fused kernel (forward and backward) on burn's cubecl backends; elsewhere the same
        // computation in tensor ops: x * rsqrt(mean(x^2) + eps) in f32, cast back, times weight.
        kernels_cubecl::rms_norm(x, self.weight.val(), self.eps)
    }
}
