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

/// [`mlp_channel_scores`] of the estimates `z[:, ..r_g] w_gate` and `z[:, r_g..] w_up`.
///
/// # Shapes
/// - `z`: `[rows, r_g + r_u]`, `w_gate`: `[r_g, d_ff]`, `w_up`: `[r_u, d_ff]`; output `[d_ff]`
pub fn mlp_channel_scores_of_factors<B: Backend>(
    z: Tensor<B, 2>,
    w_gate: Tensor<B, 2>,
    w_up: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let (r_g, r_u) = (w_gate.dims()[0], w_up.dims()[0]);
    mlp_channel_scores(
        z.clone().narrow(1, 0, r_g).matmul(w_gate),
        z.narrow(1, r_g, r_u).matmul(w_up),
    )
}
