//! The column norms from a Gram matrix in burn tensor ops: `(gram w) * w`, summed over the rows,
//! clamped at zero, square root.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor};

/// `sqrt(max(0, w[:, c]^T gram w[:, c]))` per column `c` of `w`, `[1, out]`.
///
/// # Shapes
/// - `gram`: `[k, k]`, `w`: `[k, out]`; output `[1, out]`
pub fn quadratic_form_norms<B: Backend>(gram: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    (gram.matmul(w.clone()) * w)
        .sum_dim(0)
        .clamp_min(0.0)
        .sqrt()
}

/// `z^T z` in f32 over the rows of `z` whose token is real (`tokens` true) when `mask_padding`,
/// over every row otherwise: the Gram matrix of the estimator's projections of the token rows.
///
/// # Shapes
/// - `z`: `[n, k]`, `tokens`: `[batch, seq]` with `batch * seq = n` (row-major); output `[k, k]`
pub fn masked_gram<B: Backend>(
    z: Tensor<B, 2>,
    tokens: Tensor<B, 2, Bool>,
    mask_padding: bool,
) -> Tensor<B, 2> {
    let [n, _] = z.dims();
    let z = z.cast(DType::F32);
    let z = if mask_padding {
        z * tokens.float().cast(DType::F32).reshape([n, 1])
    } else {
        z
    };
    z.clone().transpose().matmul(z)
}
