//! The per-row cross-entropy in burn tensor ops: `log_softmax` in f32, then the target's entry.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};

/// The negative log-likelihood of `targets` under `softmax(logits)`, per row, in f32:
/// `logsumexp(logits[r]) - logits[r, targets[r]]`.
///
/// # Shapes
/// - `logits`: `[n, vocab]`; `targets`: `[n]` in `0..vocab`; output `[n]`
pub fn row_nll<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let logp = log_softmax(logits.cast(DType::F32), 1); // [n, vocab]
    logp.gather(1, targets.unsqueeze_dim::<2>(1)) // [n, 1]
        .squeeze_dim::<1>(1)
        .neg()
}
