//! The attention's masked softmax (causal + key padding, no KV cache) in one pass per row, forward
//! and backward, keeping only the probabilities for the backward.

mod backward;
mod kernel;
pub mod reference;

/// The kernels on cubecl tensors that the attention's recomputing backward calls: the forward
/// that also keeps each row's max and `1 / sum`, and the backward that rebuilds `P` from them.
pub(crate) use kernel::{forward_keeping_stats, recompute_backward, RowLayout};

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, BoolStore, DType, Tensor, TensorPrimitive};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// Attention probabilities: softmax over keys (dim 3) of `(scores * scale).cast(F32) + mask`, the
/// additive mask 0 where key `j <= i` (query `i`) and `key_valid[b, j]`, `f32::MIN` elsewhere;
/// output in the scores' dtype. As in the model (and `transformers`' eager attention), a query
/// whose keys are all masked gets a uniform row, not NaN.
///
/// On burn-wgpu/burn-cuda (plain or `Autodiff`) one kernel, one cube per row: the mask is never
/// materialised (keys after the query are not even read), max and sum run in f32, and no f32
/// `[b, h, s, kv]` tensor exists. Under `Autodiff` only the output `P` (in the scores' dtype) is
/// kept; the backward is one kernel, `dS = scale * P * (dP - sum_j dP P)` per row. Other backends,
/// dtypes other than f32/f16/bf16 and shapes other than below take the
/// [reference](reference::causal_softmax).
///
/// Differences from the reference: a masked key's logit is exactly `f32::MIN` rather than
/// `f32::MIN + score * scale` (the same number unless `|score * scale|` exceeds ~1e31, and a NaN or
/// infinite score at a masked key does not reach the row); the f32 sums run in another order.
///
/// # Shapes
/// - `scores`: `[b, h, s, kv]` (`kv == s` in the model; keys are numbered as queries from 0);
///   `key_valid`: `[b, kv]`; output as `scores`
pub fn causal_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
    scale: f64,
) -> Tensor<B, 4> {
    let Some(route) = route::<B>() else {
        return reference::causal_softmax(scores, key_valid, scale);
    };
    let [b, _, _, kv] = scores.dims();
    let fits = float_dtype(scores.dtype())
        && matches!(
            key_valid.dtype(),
            DType::Bool(BoolStore::U8 | BoolStore::U32)
        )
        && key_valid.dims() == [b, kv]
        && scores.shape().num_elements() > 0;
    if !fits {
        return reference::causal_softmax(scores, key_valid, scale);
    }
    on_route!(route, C =>
        plain: cast(plain::<C>(cast(scores), cast(key_valid), scale)),
        autodiff: cast(tracked::<C>(cast(scores), cast(key_valid), scale)),
    )
}

fn plain<C: Cube>(scores: Tensor<C, 4>, key_valid: Tensor<C, 2, Bool>, scale: f64) -> Tensor<C, 4> {
    let probs = kernel::forward(
        C::float_into(scores.into_primitive().tensor()),
        C::bool_into(key_valid.into_primitive()),
        scale,
    );
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(probs)))
}

fn tracked<C: Cube>(
    scores: Tensor<Autodiff<C>, 4>,
    key_valid: Tensor<Autodiff<C>, 2, Bool>,
    scale: f64,
) -> Tensor<Autodiff<C>, 4> {
    let probs = backward::forward::<C>(
        scores.into_primitive().tensor(),
        key_valid.into_primitive(),
        scale,
    );
    Tensor::from_primitive(TensorPrimitive::Float(probs))
}
