//! RMSNorm in burn tensor ops: the model's `RmsNorm::forward` (HF `LlamaRMSNorm`).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// `x / sqrt(mean(x^2) + eps)` over the last dimension, computed in f32 and cast back to `x`'s
/// dtype, then `* weight` in that dtype.
///
/// # Shapes
/// - `x`: `[..., width]`, `weight`: `[width]`, output as `x`
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let mean_square = x.clone().square().mean_dim(D - 1);
    let normed = x * (mean_square + eps).sqrt().recip();
    normed.cast(dtype) * weight.unsqueeze()
}
