//! Grouped-query self-attention as HF `LlamaAttention` (eager): RoPE on q/k, KV heads repeated
//! per query group (`repeat_kv`), scores softmaxed in f32 under an additive mask.

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{backend::Backend, Bool, DType, Int, Tensor};

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

/// The largest fraction of q's channels kept for which a sparse attention block computes its
/// projections as sliced products (see [`LlamaAttention::forward_sparse`]); above it they run
/// masked-dense. The paper's attention sparsities keep 20-80% of the channels (LLaMA3-8B
/// math10k: 25%, csr170k: 80%).
pub const SLICED_MAX_KEPT: f64 = 0.5;

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
    /// Where at most [`SLICED_MAX_KEPT`] of q's channels are kept ([`Self::slices_pay`]), the
    /// frozen bases are sliced products on every row, the dense rows then completed with the
    /// dropped channels' products ([`Self::sliced_qkv_bases`], [`Self::sliced_o_onto`]); where
    /// more are kept they run dense and masked ([`LoraLinear::forward_out_masked`],
    /// [`LoraLinear::forward_in_masked_onto`]), which needs no gather of weights or inputs, no
    /// scatter to full width and no second product of the dense rows. Both forms give the sliced
    /// products' values and gradients (docs/perf.md has the measurements).
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
        let sliced = self.slices_pay(channels);
        let [q, k, v] = if sliced {
            let bases = self.sliced_qkv_bases(rows.clone(), channels, sparse);
            LoraLinear::add_adapters_group(projections, rows, bases)
        } else {
            let [keep_q, keep_k, keep_v] = [(0, &channels.q), (1, &channels.k), (2, &channels.v)]
                .map(|(i, idx)| sparse.channel_keep(idx, projections[i].dims().0, dtype));
            LoraLinear::forward_out_masked_group(
                projections,
                rows,
                [&keep_q, &keep_k, &keep_v],
                drop,
            )
        };
        let out = self.attend(q, k, v, [b, s], rope, mask, None);
        let width = out.dims()[2];
        let out = out.reshape([b * s, width]);
        if sliced {
            return self.sliced_o_onto(out, &channels.o, residual, sparse);
        }
        let keep = sparse.channel_keep(&channels.o, width, dtype);
        self.o_proj
            .forward_in_masked_onto(out, &keep, drop, residual)
    }

    /// Whether the block's projections run as sliced products on `channels`: at most
    /// [`SLICED_MAX_KEPT`] of q's channels kept. (The sliced products run at the kept counts
    /// rounded up to a multiple of 8, [`sparse_ops::padded_width`]: unpadded, LLaMA2-7B's
    /// math10k blocks, which keep 1,638 channels, ran 13.6 ms a step slower sliced than
    /// masked-dense, docs/perf.md.)
    fn slices_pay(&self, channels: &AttnChannels<B>) -> bool {
        let kept_q = channels.q.dims()[0] as f64;
        kept_q <= SLICED_MAX_KEPT * self.q_proj.dims().0 as f64
    }

    /// q/k/v's frozen base outputs (`[n, out_i]`, no adapter) of the rows `x` (`[n, d_model]`):
    /// on the sparse rows the sliced products ([`LoraLinear::sliced_out_base`]: zeros outside
    /// the kept channels), on the dense rows of `sparse.split` the full ones: the sliced
    /// products of every row, the dropped channels' products added on the dense rows
    /// ([`LoraLinear::dropped_out_channels_base`]; those rows gathered once for the three).
    /// Added, not written over: writing over would zero those rows of the output gradient, a
    /// copy of it, since the adapters' group op shares it.
    fn sliced_qkv_bases(
        &self,
        x: Tensor<B, 2>,
        channels: &AttnChannels<B>,
        sparse: &SparseForward<'_, B>,
    ) -> [Tensor<B, 2>; 3] {
        let drop = sparse.drop_sliced_input_grad;
        let projections = [&self.q_proj, &self.k_proj, &self.v_proj];
        let kept = [&channels.q, &channels.k, &channels.v];
        let bases = [0, 1, 2].map(|i| projections[i].sliced_out_base(x.clone(), kept[i], drop));
        sparse.add_to_dense_rows_each(bases, x, |x| {
            [0, 1, 2].map(|i| projections[i].dropped_out_channels_base(x.clone(), kept[i], drop))
        })
    }

    /// `residual + o_proj(x)` with o_proj's frozen base reading only the input channels `kept`
    /// on the sparse rows ([`LoraLinear::sliced_in_base_onto`]); the dense rows of
    /// `sparse.split` then get the product of the channels it dropped added
    /// ([`SparseForward::add_to_dense_rows`]: no gather of the residual, no second product of
    /// the kept channels), and the adapter reads every channel of every row.
    ///
    /// # Shapes
    /// - `x`: `[n, n_heads * head_dim]`, `kept`: `[k]`, `residual` and output `[b, s, d_model]`
    fn sliced_o_onto(
        &self,
        x: Tensor<B, 2>,
        kept: &Tensor<B, 1, Int>,
        residual: Tensor<B, 3>,
        sparse: &SparseForward<'_, B>,
    ) -> Tensor<B, 3> {
        let drop = sparse.drop_sliced_input_grad;
        let o = &self.o_proj;
        let n = x.dims()[0];
        let base = o.sliced_in_base_onto(x.clone(), kept, drop, residual);
        let [b, s, d] = base.dims();
        let base = sparse.add_to_dense_rows(base.reshape([n, d]), x.clone(), |x| {
            o.dropped_in_channels_base(x, kept, drop)
        });
        o.add_adapter_onto(base.reshape([b, s, d]), x)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{
        add_random_adapters, assert_compat_changes_only_sparse_rows, ints, rows_1_and_4_dense,
        scrambled, TestBackend,
    };
    use burn::tensor::{Distribution, TensorData, Tolerance};

    /// The tiny block with random adapters on q, k, v and o.
    fn block() -> LlamaAttention<TestBackend> {
        let config = LlamaConfig::preset("tiny").unwrap();
        let mut attn = LlamaAttention::new(&config, &Default::default());
        add_random_adapters([
            &mut attn.q_proj,
            &mut attn.k_proj,
            &mut attn.v_proj,
            &mut attn.o_proj,
        ]);
        attn
    }

    /// `(q, k, v, dx, every adapter's (dA, dB))` of `sum(probe_i * out_i)`.
    fn outputs_and_grads(
        attn: &LlamaAttention<TestBackend>,
        out: [Tensor<TestBackend, 2>; 3],
        probes: &[Tensor<TestBackend, 2>; 3],
        x: &Tensor<TestBackend, 2>,
    ) -> Vec<TensorData> {
        let loss = out
            .iter()
            .zip(probes)
            .map(|(y, probe)| (y.clone() * probe.clone()).sum())
            .reduce(|a, b| a + b)
            .unwrap();
        let grads = loss.backward();
        let mut data: Vec<TensorData> = out.into_iter().map(|y| y.into_data()).collect();
        data.push(x.grad(&grads).unwrap().into_data());
        for p in [&attn.q_proj, &attn.k_proj, &attn.v_proj] {
            let lora = p.lora.as_ref().unwrap();
            data.push(lora.lora_a.grad(&grads).unwrap().into_data());
            data.push(lora.lora_b.grad(&grads).unwrap().into_data());
        }
        data
    }

    /// The two forms `forward_sparse` picks between, under a token split (rows 1 and 4 dense):
    /// q/k/v bases sliced on every row with the dense rows recomputed in full, and masked-dense
    /// with the mask sparing the dense rows. Same outputs, same input and adapter gradients,
    /// with exact gradients and with the reference code's dropped base input gradient (on the
    /// sparse rows only).
    #[test]
    fn sliced_and_masked_qkv_agree_under_a_token_split() {
        let device = Default::default();
        let attn = block();
        let channels = AttnChannels {
            q: ints(&scrambled(64, 20, 7)),
            k: ints(&scrambled(32, 10, 5)),
            v: ints(&scrambled(32, 9, 11)),
            o: ints(&scrambled(64, 30, 13)),
        };
        let x = Tensor::<TestBackend, 2>::random([6, 64], Distribution::Normal(0.0, 1.0), &device);
        let projections = [&attn.q_proj, &attn.k_proj, &attn.v_proj];
        let probes = projections.map(|p| {
            Tensor::<TestBackend, 2>::random(
                [6, p.dims().0],
                Distribution::Normal(0.0, 1.0),
                &device,
            )
        });
        let mut dx = Vec::new();
        for drop in [false, true] {
            let sparse = rows_1_and_4_dense(drop);
            let x1 = x.clone().require_grad();
            let bases = attn.sliced_qkv_bases(x1.clone(), &channels, &sparse);
            let sliced = LoraLinear::add_adapters_group(projections, x1.clone(), bases);
            let sliced = outputs_and_grads(&attn, sliced, &probes, &x1);

            let x2 = x.clone().require_grad();
            let keeps = [(0, &channels.q), (1, &channels.k), (2, &channels.v)]
                .map(|(i, idx)| sparse.channel_keep(idx, projections[i].dims().0, DType::F32));
            let masked = LoraLinear::forward_out_masked_group(
                projections,
                x2.clone(),
                [&keeps[0], &keeps[1], &keeps[2]],
                drop,
            );
            let masked = outputs_and_grads(&attn, masked, &probes, &x2);

            let tol = Tolerance::<f32>::absolute(1e-4).set_relative(1e-4);
            for (got, want) in sliced.iter().zip(&masked) {
                got.assert_approx_eq::<f32>(want, tol);
            }
            dx.push(sliced[3].clone());
        }
        assert_compat_changes_only_sparse_rows(&dx[0], &dx[1]);
    }

    /// o_proj's two forms under a token split (rows 1 and 4 dense): the base reading only the
    /// kept input channels with the dense rows' dropped channels added, and masked-dense. Same
    /// output, same gradients of the input, the residual and the adapter, with exact gradients
    /// and with the reference code's dropped base input gradient (on the sparse rows only).
    #[test]
    fn sliced_and_masked_o_agree_under_a_token_split() {
        let device = Default::default();
        let attn = block();
        let kept = ints(&scrambled(64, 23, 13));
        let x = Tensor::<TestBackend, 2>::random([6, 64], Distribution::Normal(0.0, 1.0), &device);
        let residual =
            Tensor::<TestBackend, 3>::random([2, 3, 64], Distribution::Normal(0.0, 1.0), &device);
        let probe =
            Tensor::<TestBackend, 3>::random([2, 3, 64], Distribution::Normal(0.0, 1.0), &device);
        let mut dx = Vec::new();
        for drop in [false, true] {
            let sparse = rows_1_and_4_dense(drop);
            let run = |sliced: bool| {
                let x = x.clone().require_grad();
                let residual = residual.clone().require_grad();
                let y = if sliced {
                    attn.sliced_o_onto(x.clone(), &kept, residual.clone(), &sparse)
                } else {
                    let keep = sparse.channel_keep(&kept, 64, DType::F32);
                    attn.o_proj
                        .forward_in_masked_onto(x.clone(), &keep, drop, residual.clone())
                };
                let grads = (y.clone() * probe.clone()).sum().backward();
                let lora = attn.o_proj.lora.as_ref().unwrap();
                [
                    y.into_data(),
                    x.grad(&grads).unwrap().into_data(),
                    residual.grad(&grads).unwrap().into_data(),
                    lora.lora_a.grad(&grads).unwrap().into_data(),
                    lora.lora_b.grad(&grads).unwrap().into_data(),
                ]
            };
            let (sliced, masked) = (run(true), run(false));
            let tol = Tolerance::<f32>::absolute(1e-4).set_relative(1e-4);
            for (got, want) in sliced.iter().zip(&masked) {
                got.assert_approx_eq::<f32>(want, tol);
            }
            dx.push(sliced[1].clone());
        }
        assert_compat_changes_only_sparse_rows(&dx[0], &dx[1]);
    }
}
