//! A frozen, bias-free projection with the weight in PyTorch layout `[out, in]`.
//!
//! The `[out, in]` layout makes output-channel slicing (gate/up/q/k/v under SparseLoRA) a
//! contiguous row gather, and lets HF weights load without a transpose.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{backend::Backend, Tensor};

/// `y = x W^T`, `W: [out, in]`.
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    /// `[out, in]`
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Projection<B> {
    /// A projection with weights drawn like PyTorch's `nn.Linear` (uniform +-1/sqrt(in)).
    pub fn new(d_in: usize, d_out: usize, device: &B::Device) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        // Lazy: a loader that overwrites the weight never pays for the random draw.
        let weight = Initializer::Uniform {
            min: -bound,
            max: bound,
        }
        .init([d_out, d_in], device);
        Self { weight }
    }

    /// # Shapes
    /// - `x`: `[..., in]`, output `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        sparse_ops::linear(x, self.weight.val())
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        let [out, d_in] = self.weight.dims();
        (out, d_in)
    }
}
