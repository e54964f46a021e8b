//! The per-sequence mean in burn tensor ops: cast to f32, weight by the token mask, sum over the
//! sequence, divide by the number of real tokens.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor};

/// The mean of each sequence, `[batch, d]` in f32: over its real tokens (`tokens` true) when
/// `mask_padding` (a sequence without any is all zeros), over every position otherwise.
///
/// # Shapes
/// - `x`: `[batch, seq, d]`, `tokens`: `[batch, seq]`; output `[batch, d]`
pub fn sequence_means<B: Backend>(
    x: Tensor<B, 3>,
    tokens: Tensor<B, 2, Bool>,
    mask_padding: bool,
) -> Tensor<B, 2> {
    let [b, _, d] = x.dims();
    let x = x.cast(DType::F32);
    if !mask_padding {
        return x.mean_dim(1).reshape([b, d]);
    }
    let weights = tokens.float().cast(DType::F32); // [b, s]
    let counts = weights.clone().sum_dim(1).clamp_min(1.0); // [b, 1]
    let sums = (x * weights.unsqueeze_dim::<3>(2))
        .sum_dim(1)
        .reshape([b, d]);
    sums / counts
}
