//! Grouped-query self-attention as HF `LlamaAttention` (eager): RoPE on q/k, KV heads repeated
//! per query group (`repeat_kv`), scores softmaxed in f32 under an additive mask.

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{backend::Backend, Bool, DType, Tensor};

use lora::sparse::{AttentionProjections, AttnChannels, SparseForward};
use lora::LoraLinear;

use kernels_cubecl::attention::reference::{grouped_mix, grouped_scores};
use sparse_ops::SeamMatmul;

use crate::cache::LayerKvCache;
use crate::config::LlamaConfig;
use crate::rope::RopeAngles;

/// Which keys each query may read.
#[derive(Debug, Clone)]
pub enum AttentionMask<B: Backend> {
    /// Training and scoring without a KV cache: query `i` reads key `j` when `j <= i` and
    /// `key_valid[b, j]` (`[batch, seq]`, false for padding). The fused causal softmax applies
    /// it without materialising a mask; a query with no readable key attends uniformly, as
    /// `transformers`' eager attention does with its finite mask.
    Causal(Tensor<B, 2, Bool>),
    /// Decoding with a KV cache: an additive f32 mask `[batch, 1, seq, kv_len]`, 0 where a key
    /// may be read and `f32::MIN` elsewhere (see [`kernels_cubecl::reference::additive_causal_mask`]).
    Additive(Tensor<B, 4>),
}

/// The attention block of one decoder layer.
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    /// `[n_heads * head_dim, d_model]`
    pub q_proj: LoraLinear<B>,
    /// `[n_kv_heads * head_dim, d_model]`
    pub k_proj: LoraLinear<B>,
    /// `[n_kv_heads * head_dim, d_model]`
    pub v_proj: LoraLinear<B>,
    /// `[d_model, n_heads * head_dim]`
    pub o_proj: LoraLinear<B>,
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
            q_proj: LoraLinear::new(d, nq * hd, device),
            k_proj: LoraLinear::new(d, nkv * hd, device),
            v_proj: LoraLinear::new(d, nkv * hd, device),
            o_proj: LoraLinear::new(nq * hd, d, device),
            n_heads: nq,
            n_kv_heads: nkv,
            head_dim: hd,
        }
    }

    /// The projections and head layout, as a channel selector reads them.
    pub fn projections(&self) -> AttentionProjections<'_, B> {
        AttentionProjections {
            q_proj: &self.q_proj,
            k_proj: &self.k_proj,
            v_proj: &self.v_proj,
            o_proj: &self.o_proj,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// `residual` plus the block's output on `x`: the add onto the residual stream is done by
    /// o_proj's product ([`LoraLinear::forward_onto`]).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` (already normalised), `residual` the same
    /// - `rope`: cos/sin `[batch, 1, seq, head_dim]` of the query positions
    /// - `mask`: see [`AttentionMask`] (`kv_len` = the cache capacity with a cache)
    /// - output: `[batch, seq, d_model]`
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        mask: AttentionMask<B>,
        cache: Option<&mut LayerKvCache<B>>,
    ) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        // One `[rows, d]` tensor read by the three projections (one autodiff node), so that
        // their input gradients are summed inside their GEMMs: `kernels_cubecl::gradient_sum`.
        // The adapters' products with it are taken together (`LoraLinear::forward_group`).
        let rows = x.reshape([b * s, d]);
        let [q, k, v] = LoraLinear::forward_group([&self.q_proj, &self.k_proj, &self.v_proj], rows);
        let out = self.attend(q, k, v, [b, s], rope, mask, cache); // [b, s, nq * hd]
        self.o_proj.forward_onto(out, residual)
    }

    /// The block on the channels `channels` only (SPEC 5): q/k/v keep only their chosen output
    /// channels (zeros elsewhere, so RoPE and the scores see the dropped channels as zero), o_proj
    /// reads only its chosen input channels; adapters add their dense outputs on top. Token rows
    /// on the dense path of `sparse.split` keep every channel. No KV cache (training only).
    ///
    /// The projections run dense and masked ([`LoraLinear::forward_out_masked`]): the paper's
    /// attention sparsities keep 25-80% of the channels, where a sliced product saves less than
    /// gathering the weight rows and scattering the output back costs (docs/perf.md). The values
    /// and gradients are those of the sliced products.
    ///
    /// # Shapes
    /// - as [`Self::forward`]
    pub(crate) fn forward_sparse(
        &self,
        x: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        mask: AttentionMask<B>,
        channels: &AttnChannels<B>,
        sparse: &SparseForward<'_, B>,
    ) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let dtype = x.dtype();
        let rows = x.reshape([b * s, d]);
        let drop = sparse.drop_sliced_input_grad;
        let projections = [&self.q_proj, &self.k_proj, &self.v_proj];
        let [keep_q, keep_k, keep_v] = [(0, &channels.q), (1, &channels.k), (2, &channels.v)]
            .map(|(i, idx)| sparse.channel_keep(idx, projections[i].dims().0, dtype));
        let [q, k, v] = LoraLinear::forward_out_masked_group(
            projections,
            rows,
            [&keep_q, &keep_k, &keep_v],
            drop,
        );
        let out = self.attend(q, k, v, [b, s], rope, mask, None);
        let width = out.dims()[2];
        let keep = sparse.channel_keep(&channels.o, width, dtype);
        self.o_proj
            .forward_in_masked_onto(out.reshape([b * s, width]), &keep, drop, residual)
    }

    /// Scaled dot-product attention of projected q/k/v (token rows `[b * s, heads * hd]`), RoPE
    /// applied here; returns the heads concatenated, `[b, s, n_heads * head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: Tensor<B, 2>,
        k: Tensor<B, 2>,
        v: Tensor<B, 2>,
        [b, s]: [usize; 2],
        rope: &RopeAngles<B>,
        mask: AttentionMask<B>,
        cache: Option<&mut LayerKvCache<B>>,
    ) -> Tensor<B, 3> {
        let (nq, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |t: Tensor<B, 2>, n: usize| t.reshape([b, s, n, hd]).swap_dims(1, 2);
        let k = rope.apply(heads(k, nkv)); // [b, nkv, s, hd]
        let v = heads(v, nkv); // [b, nkv, s, hd]
        let scale = 1.0 / (hd as f64).sqrt();
        match (mask, cache) {
            // Training and scoring: the query heads of each KV head stacked position-major by
            // RoPE, so that the causal products skip the masked blocks; the fused softmax, and
            // on burn-cuda/burn-wgpu under autodiff no probabilities kept for the backward
            // (recomputed there from q and k). See kernels_cubecl::attention.
            (AttentionMask::Causal(key_valid), None) => {
                // q and the output: [b, nkv, s, g * hd]; on cubecl backends the output is
                // laid out as the rows [b, s, nq * hd].
                let q = rope.apply_grouped(heads(q, nq), nq / nkv);
                let out = kernels_cubecl::grouped_causal_attention::<B, SeamMatmul>(
                    q, k, v, key_valid, scale,
                );
                out.swap_dims(1, 2).reshape([b, s, nq * hd])
            }
            (mask, cache) => {
                let q = rope.apply(heads(q, nq)); // [b, nq, s, hd]
                let (k, v) = match cache {
                    Some(cache) => cache.append(k, v), // [b, nkv, kv_len, hd]
                    None => (k, v),
                };
                let probs = match mask {
                    AttentionMask::Causal(key_valid) => {
                        let scores = grouped_scores::<B, SeamMatmul>(q, k);
                        kernels_cubecl::causal_softmax(scores, key_valid, scale)
                    }
                    AttentionMask::Additive(mask) => {
                        // [b, nq, s, kv_len]
                        let scores = grouped_scores::<B, SeamMatmul>(q, k) * scale;
                        let dtype = scores.dtype();
                        softmax(scores.cast(DType::F32) + mask, 3).cast(dtype)
                    }
                };
                grouped_mix::<B, SeamMatmul>(probs, v) // [b, nq, s, hd]
                    .swap_dims(1, 2)
                    .reshape([b, s, nq * hd])
            }
        }
    }
}
