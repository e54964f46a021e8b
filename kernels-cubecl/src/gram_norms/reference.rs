//! The column norms from a Gram matrix in burn tensor ops: `(gram w) * w`, summed over the rows,
//! clamped at zero, square root.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

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
