//! Grouped-query causal attention for training that keeps no `[b, h, s, s]` tensor for the
//! backward: the probabilities are recomputed from Q and K there, as flash attention does.
//!
//! Composed of burn tensor ops, attention keeps every layer's probabilities `P` (bf16,
//! `b * n_heads * s^2` values: 128 MiB per LLaMA3-8B layer at batch 8 x 512, 4 GiB a step, 2 GiB
//! per layer at 8 x 2048) alive from the forward to the backward, for `dV = P^T dO` and the
//! softmax's gradient. Here the forward keeps only Q, K and V, which the products' backward keeps
//! anyway, and each query row's softmax max and `1 / sum` (8 bytes a row, as flash attention
//! keeps its log-sum-exp). The backward recomputes `S = Q K^T` (one more product per layer) and
//! `dP = dO V^T`; one kernel then rebuilds `P` from `S` and the row statistics, exactly as the
//! forward computed it, and gives `dS = scale * P * (dP - rowsum(dP P))` in the same pass (no
//! second softmax with its max and sum reductions); then `dV = P^T dO`, `dQ = dS K`,
//! `dK = dS^T Q`. The transient `S`, `P`, `dP`, `dS` of one layer are freed before the next
//! layer's backward starts.
//!
//! The products are the caller's ([`BatchedMatmul`]): this crate sits below the GEMM seam
//! (`sparse-ops`), which implements the trait with cuBLASLt on burn-cuda.

mod backward;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bool, BoolStore, DType, Tensor, TensorPrimitive};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// A batch of matrix products, `out[i] = a[i] b[i]`, on any backend: how [`causal_attention`]
/// multiplies (forward and backward).
///
/// # Shapes
/// - `a`: `[n, m, k]`, `b`: `[n, k, p]` (either may be a transposed view), output `[n, m, p]`
pub trait BatchedMatmul: Send + Sync + std::fmt::Debug + 'static {
    /// `a b`, batched over the first dimension.
    fn matmul<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3>;
}

/// burn's own batched matmul.
#[derive(Debug, Clone, Copy, Default)]
pub struct BurnMatmul;

impl BatchedMatmul for BurnMatmul {
    fn matmul<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
        a.matmul(b)
    }
}

/// Whether `SPARSELORA_ATTENTION_RECOMPUTE=0` asked for the composed attention, which keeps the
/// probabilities for the backward (for A/B measurements of time and memory).
fn recompute_disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED
        .get_or_init(|| std::env::var("SPARSELORA_ATTENTION_RECOMPUTE").is_ok_and(|v| v == "0"))
}

/// `softmax(scale Q K^T + mask) V` per query head, query head `h` reading KV head
/// `h / (nq / nkv)`; the mask is [`crate::causal_softmax`]'s (causal, padding keys masked, a
/// query with no readable key attending uniformly).
///
/// Under `Autodiff` of burn-wgpu/burn-cuda the probabilities are recomputed in the backward
/// instead of kept (see the module). Every backend runs the fused softmax where it has one; the
/// values and gradients are those of [`reference::causal_attention`] up to its rounding.
///
/// On those backends the output is laid out `[b, s, nq, hd]` in memory (a view with shape
/// `[b, nq, s, hd]`), so that joining the heads (`swap_dims(1, 2)` then a reshape to
/// `[b, s, nq * hd]`) copies nothing; V's gradient comes back in V's layout when V was such a
/// view of `[b, s, nkv, hd]` rows.
///
/// # Shapes
/// - `q`: `[b, nq, s, hd]`, `k`, `v`: `[b, nkv, s, hd]` with `nkv` dividing `nq`, `key_valid`:
///   `[b, s]`; output `[b, nq, s, hd]`
pub fn causal_attention<B: Backend, M: BatchedMatmul>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
    scale: f64,
) -> Tensor<B, 4> {
    let [b, nq, s, hd] = q.dims();
    let [_, nkv, _, _] = k.dims();
    assert!(
        nkv > 0 && nq % nkv == 0 && k.dims() == [b, nkv, s, hd] && v.dims() == [b, nkv, s, hd],
        "causal_attention: q {:?}, k {:?}, v {:?} are not a grouped-query layout",
        q.dims(),
        k.dims(),
        v.dims()
    );
    let route = route::<B>().filter(|_| !recompute_disabled());
    let fits = float_dtype(q.dtype())
        && q.dtype() == k.dtype()
        && q.dtype() == v.dtype()
        && matches!(
            key_valid.dtype(),
            DType::Bool(BoolStore::U8 | BoolStore::U32)
        )
        && key_valid.dims() == [b, s]
        && q.shape().num_elements() > 0;
    match route {
        Some(route) if fits => on_route!(route, C =>
            plain: cast(plain::<C, M>(cast(q), cast(k), cast(v), cast(key_valid), scale)),
            autodiff: cast(tracked::<C, M>(cast(q), cast(k), cast(v), cast(key_valid), scale)),
        ),
        _ => composed::<B, M>(q, k, v, key_valid, scale),
    }
}

/// The grouped products around [`crate::causal_softmax`] (fused where the backend allows; under
/// `Autodiff` it keeps the probabilities for the backward).
fn composed<B: Backend, M: BatchedMatmul>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
    scale: f64,
) -> Tensor<B, 4> {
    let scores = reference::grouped_scores::<B, M>(q, k);
    let probs = crate::causal_softmax(scores, key_valid, scale);
    reference::grouped_mix::<B, M>(probs, v)
}

/// [`composed`] on a cubecl backend without `Autodiff`: V made heads-major by
/// [`crate::head_layout`]'s copy, the output laid out as rows ([`composed_rows`]), as under
/// `Autodiff`.
fn plain<C: Cube, M: BatchedMatmul>(
    q: Tensor<C, 4>,
    k: Tensor<C, 4>,
    v: Tensor<C, 4>,
    key_valid: Tensor<C, 2, Bool>,
    scale: f64,
) -> Tensor<C, 4> {
    let v_heads = crate::head_layout::contiguous_primitive::<C>(v.into_primitive().tensor());
    let v_heads = Tensor::from_primitive(TensorPrimitive::Float(v_heads));
    let (out, _) = composed_rows::<C, M>(q, k, v_heads, key_valid, scale, false);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// [`composed`] with its output laid out `[b, s, nq, hd]` (shape `[b, nq, s, hd]`): the layout
/// contract of [`causal_attention`] on the cubecl backends, plain or under `Autodiff`. With
/// `keep_stats`, also the softmax's max and `1 / sum` per query row, from which the backward
/// rebuilds the probabilities.
fn composed_rows<C: Cube, M: BatchedMatmul>(
    q: Tensor<C, 4>,
    k: Tensor<C, 4>,
    v_heads: Tensor<C, 4>,
    key_valid: Tensor<C, 2, Bool>,
    scale: f64,
    keep_stats: bool,
) -> (FloatTensor<C>, Option<FloatTensor<C>>) {
    let scores = reference::grouped_scores::<C, M>(q, k)
        .into_primitive()
        .tensor();
    // `causal_attention` checked what `crate::causal_softmax` would before running its kernel.
    let (probs, stats) = crate::causal_softmax::forward_keeping_stats::<C::Runtime>(
        C::float_into(scores),
        C::bool_into(key_valid.into_primitive()),
        scale,
        keep_stats,
    );
    let probs = Tensor::from_primitive(TensorPrimitive::Float(C::float_from(probs)));
    let out = reference::grouped_mix::<C, M>(probs, v_heads);
    let out = crate::head_layout::sequence_major::<C>(out.into_primitive().tensor());
    (out, stats.map(C::float_from))
}

fn tracked<C: Cube, M: BatchedMatmul>(
    q: Tensor<Autodiff<C>, 4>,
    k: Tensor<Autodiff<C>, 4>,
    v: Tensor<Autodiff<C>, 4>,
    key_valid: Tensor<Autodiff<C>, 2, Bool>,
    scale: f64,
) -> Tensor<Autodiff<C>, 4> {
    let out = backward::forward::<C, M>(
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
        key_valid.into_primitive(),
        scale,
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
