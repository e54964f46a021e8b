//! RMSNorm as HF `LlamaRMSNorm`: normalise in f32, cast back, then scale.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{backend::Backend, DType, Tensor};

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
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let mean_square = x.clone().square().mean_dim(D - 1);
        let normed = x * (mean_square + self.eps).sqrt().recip();
        normed.cast(dtype) * self.weight.val().unsqueeze()
    }
}
