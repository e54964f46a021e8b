//! SwiGLU in burn tensor ops: the model's `silu(gate) * up`.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `silu(gate) * up`, `silu(g) = g * sigmoid(g)`.
///
/// # Shapes
/// - `gate`, `up`: the same shape, output the same
pub fn swiglu<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    silu(gate) * up
}
