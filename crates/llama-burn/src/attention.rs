//! Grouped-query self-attention as HF `LlamaAttention` (eager): RoPE on q/k, KV heads repeated
//! per query group (`repeat_kv`), scores softmaxed in f32 under an additive mask.

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{backend::Backend, DType, Tensor};

use crate::cache::LayerKvCache;
use crate::config::LlamaConfig;
use crate::projection::Projection;
use crate::rope::RopeAngles;

/// The attention block of one decoder layer.
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    /// `[n_heads * head_dim, d_model]`
    pub q_proj: Projection<B>,
    /// `[n_kv_heads * head_dim, d_model]`
    pub k_proj: Projection<B>,
    /// `[n_kv_heads * head_dim, d_model]`
    pub v_proj: Projection<B>,
    /// `[d_model, n_heads * head_dim]`
    pub o_proj: Projection<B>,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads; query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl<B: Backend> LlamaAttention<B> {
    /// Randomly initialised attention of `config`'s shape.
    pub fn new(config: &LlamaConfig, device: &B::Device) -> Self {
        let (d, hd) = (config.hidden_size, config.head_dim());
        let (nq, nkv) = (config.num_attention_heads, config.n_kv_heads());
        Self {
            q_proj: Projection::new(d, nq * hd, device),
            k_proj: Projection::new(d, nkv * hd, device),
            v_proj: Projection::new(d, nkv * hd, device),
            o_proj: Projection::new(nq * hd, d, device),
            n_heads: nq,
            n_kv_heads: nkv,
            head_dim: hd,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` (already normalised)
    /// - `rope`: cos/sin `[batch, 1, seq, head_dim]` of the query positions
    /// - `mask`: additive f32 `[batch, 1, seq, kv_len]`, `kv_len = seq` without a cache, or the
    ///   cache capacity with one
    /// - output: `[batch, seq, d_model]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        mask: Tensor<B, 4>,
        cache: Option<&mut LayerKvCache<B>>,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let (nq, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
        let q = rope.apply(heads(self.q_proj.forward(x.clone()), nq)); // [b, nq, s, hd]
        let k = rope.apply(heads(self.k_proj.forward(x.clone()), nkv)); // [b, nkv, s, hd]
        let v = heads(self.v_proj.forward(x), nkv); // [b, nkv, s, hd]
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v), // [b, nkv, kv_len, hd]
            None => (k, v),
        };
        let k = repeat_kv(k, nq / nkv); // [b, nq, kv_len, hd]
        let v = repeat_kv(v, nq / nkv);

        let dtype = q.dtype();
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt()); // [b, nq, s, kv_len]
        let probs = softmax(scores.cast(DType::F32) + mask, 3).cast(dtype);
        let out = probs.matmul(v); // [b, nq, s, hd]
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([b, s, nq * hd]))
    }
}

/// Repeats each KV head `n_rep` times along the head axis (HF `repeat_kv`).
///
/// `[b, n_kv, t, hd]` -> `[b, n_kv * n_rep, t, hd]`, KV head `m` becoming heads `m*n_rep..(m+1)*n_rep`.
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, n_rep: usize) -> Tensor<B, 4> {
    if n_rep == 1 {
        return x;
    }
    let [b, nkv, t, hd] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, nkv, n_rep, t, hd])
        .reshape([b, nkv * n_rep, t, hd])
}
