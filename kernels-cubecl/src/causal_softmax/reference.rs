//! The model's masked attention softmax in burn tensor ops (`additive_causal_mask` with no KV cache,
//! then `softmax(scores.cast(F32) + mask, 3).cast(dtype)`).

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor};

/// Softmax over keys of `scores * scale` (scaled in the scores' dtype) in f32 under an additive
/// mask: 0 where key `j <= i` (query `i`) and `key_valid[b, j]`, `f32::MIN` elsewhere; cast back
/// to the scores' dtype. A query with every key masked gets a uniform row (not NaN).
///
/// # Shapes
/// - `scores`: `[b, h, s, kv]`; `key_valid`: `[b, kv]`; output as `scores`
pub fn causal_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
    scale: f64,
) -> Tensor<B, 4> {
    let dtype = scores.dtype();
    let [batch, _, seq, kv_len] = scores.dims();
    let device = scores.device();
    let shape = [batch, 1, seq, kv_len];
    let query_pos = Tensor::<B, 1, Int>::arange(0..seq as i64, &device)
        .reshape([1, 1, seq, 1])
        .expand(shape);
    let key_pos = Tensor::<B, 1, Int>::arange(0..kv_len as i64, &device)
        .reshape([1, 1, 1, kv_len])
        .expand(shape);
    let allowed = key_pos
        .lower_equal(query_pos)
        .bool_and(key_valid.reshape([batch, 1, 1, kv_len]).expand(shape));
    let mask =
        Tensor::<B, 4>::zeros(shape, (&device, DType::F32)).mask_fill(allowed.bool_not(), f32::MIN);
    softmax((scores * scale).cast(DType::F32) + mask, 3).cast(dtype)
}
