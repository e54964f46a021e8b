//! The MLP channel score in burn tensor ops: `silu(gate) * up` in f32, squared, summed over the
//! rows, square root.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// `sqrt(sum over rows of (silu(gate) * up)^2)` per channel, `[d_ff]` in f32.
///
/// # Shapes
/// - `gate`, `up`: `[rows, d_ff]`; output `[d_ff]`
pub fn mlp_channel_scores<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 1> {
    let [_, d_ff] = gate.dims();
    let y = silu(gate.cast(DType::F32)) * up.cast(DType::F32);
    (y.clone() * y).sum_dim(0).sqrt().reshape([d_ff])
}

/// [`mlp_channel_scores`] of the estimates `z_gate w_gate` and `z_up w_up`.
///
/// # Shapes
/// - `z_gate`: `[rows, r_g]`, `w_gate`: `[r_g, d_ff]`, `z_up`: `[rows, r_u]`, `w_up`:
///   `[r_u, d_ff]`; output `[d_ff]`
pub fn mlp_channel_scores_of_factors<B: Backend>(
    z_gate: Tensor<B, 2>,
    w_gate: Tensor<B, 2>,
    z_up: Tensor<B, 2>,
    w_up: Tensor<B, 2>,
) -> Tensor<B, 1> {
    mlp_channel_scores(z_gate.matmul(w_gate), z_up.matmul(w_up))
}
