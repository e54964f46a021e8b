//! The model's masked attention softmax in burn tensor ops ([`additive_causal_mask`] with no KV cache,
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
    let seq = scores.dims()[2];
    let mask = additive_causal_mask(key_valid, 0, seq);
    softmax((scores * scale).cast(DType::F32) + mask, 3).cast(dtype)
}

/// The additive attention mask: 0 where query `past + i` may read key `j` (`j <= past + i` and key
/// `j` is not padding), the most negative f32 elsewhere. Keys run over the whole of `key_valid`
/// (with a KV cache: its capacity).
///
/// Using the finite minimum rather than -inf is what `transformers`' eager attention does: a row
/// with every key masked (a left-padding query) then softmaxes to a uniform row instead of NaN.
///
/// # Shapes
/// - `key_valid`: `[batch, kv_len]`, `kv_len >= past + seq`
/// - output: `[batch, 1, seq, kv_len]`, f32
pub fn additive_causal_mask<B: Backend>(
    key_valid: Tensor<B, 2, Bool>,
    past: usize,
    seq: usize,
) -> Tensor<B, 4> {
    let [batch, kv_len] = key_valid.dims();
    let device = key_valid.device();
    let shape = [batch, 1, seq, kv_len];
    let query_pos = Tensor::<B, 1, Int>::arange(past as i64..(past + seq) as i64, &device)
        .reshape([1, 1, seq, 1])
        .expand(shape);
    let key_pos = Tensor::<B, 1, Int>::arange(0..kv_len as i64, &device)
        .reshape([1, 1, 1, kv_len])
        .expand(shape);
    let allowed = key_pos
        .lower_equal(query_pos)
        .bool_and(key_valid.reshape([batch, 1, 1, kv_len]).expand(shape));
    Tensor::<B, 4>::zeros(shape, (&device, DType::F32)).mask_fill(allowed.bool_not(), f32::MIN)
}
