//! Grouped-query causal attention in burn tensor ops: `softmax(Q K^T) V` per query head, each
//! query head reading its group's KV head, the products through the caller's [`BatchedMatmul`].

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

use super::BatchedMatmul;

/// `Q K^T` per query head without repeating K: the `groups` query heads of KV head `m` are
/// stacked as one `[groups * s, hd]` matrix, so the whole product is one batch of `b * n_kv`
/// matrix products (`transformers`' `repeat_kv` then `Q K^T`, without the copies).
///
/// # Shapes
/// - `q`: `[b, nq, s, hd]`, `k`: `[b, nkv, t, hd]`, output `[b, nq, s, t]`
pub fn grouped_scores<B: Backend, M: BatchedMatmul>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, nq, s, hd] = q.dims();
    let [_, nkv, t, _] = k.dims();
    let groups = nq / nkv;
    let q = q.reshape([b * nkv, groups * s, hd]);
    let kt = k.reshape([b * nkv, t, hd]).swap_dims(1, 2);
    M::matmul(q, kt).reshape([b, nq, s, t])
}

/// `P V` per query head with V shared by each group of query heads (see [`grouped_scores`]).
///
/// # Shapes
/// - `probs`: `[b, nq, s, t]`, `v`: `[b, nkv, t, hd]`, output `[b, nq, s, hd]`
pub fn grouped_mix<B: Backend, M: BatchedMatmul>(
    probs: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, nq, s, t] = probs.dims();
    let [_, nkv, _, hd] = v.dims();
    let groups = nq / nkv;
    let probs = probs.reshape([b * nkv, groups * s, t]);
    M::matmul(probs, v.reshape([b * nkv, t, hd])).reshape([b, nq, s, hd])
}

/// `softmax(scale Q K^T + mask) V` (see [`crate::causal_softmax`] for the mask): the two grouped
/// products and the masked softmax's [reference](crate::reference::causal_softmax), all burn ops.
///
/// # Shapes
/// - `q`: `[b, nq, s, hd]`, `k`, `v`: `[b, nkv, s, hd]`, `key_valid`: `[b, s]`; output
///   `[b, nq, s, hd]`
pub fn causal_attention<B: Backend, M: BatchedMatmul>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
    scale: f64,
) -> Tensor<B, 4> {
    let scores = grouped_scores::<B, M>(q, k);
    let probs = crate::causal_softmax::reference::causal_softmax(scores, key_valid, scale);
    grouped_mix::<B, M>(probs, v)
}

/// Query heads `[b, nkv * g, s, hd]` from their grouped, position-major layout
/// `[b, nkv, s, g * hd]` (see [`crate::attention::grouped_causal_attention`]).
pub fn heads_from_grouped<B: Backend>(q: Tensor<B, 4>, hd: usize) -> Tensor<B, 4> {
    let [b, nkv, s, width] = q.dims();
    let g = width / hd;
    q.reshape([b, nkv, s, g, hd])
        .swap_dims(2, 3)
        .reshape([b, nkv * g, s, hd])
}

/// The grouped, position-major layout `[b, nkv, s, g * hd]` of query heads `[b, nkv * g, s, hd]`
/// (the inverse of [`heads_from_grouped`]).
pub fn grouped_from_heads<B: Backend>(q: Tensor<B, 4>, nkv: usize) -> Tensor<B, 4> {
    let [b, nq, s, hd] = q.dims();
    let g = nq / nkv;
    q.reshape([b, nkv, g, s, hd])
        .swap_dims(2, 3)
        .reshape([b, nkv, s, g * hd])
}

/// [`causal_attention`] with the query heads (and the output) in the grouped, position-major
/// layout of [`crate::attention::grouped_causal_attention`].
///
/// # Shapes
/// - `q`: `[b, nkv, s, g * hd]`, `k`, `v`: `[b, nkv, s, hd]`, `key_valid`: `[b, s]`; output
///   `[b, nkv, s, g * hd]`
pub fn grouped_causal_attention<B: Backend, M: BatchedMatmul>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
    scale: f64,
) -> Tensor<B, 4> {
    let [_, nkv, _, hd] = k.dims();
    let out = causal_attention::<B, M>(heads_from_grouped(q, hd), k, v, key_valid, scale);
    grouped_from_heads(out, nkv)
}
