//! SparseLoRA's online channel selection (SPEC 4): per layer, block and batch, which channels of
//! the frozen projections the sparse forward computes. [`SvdChannelSelector`] implements the
//! [`ChannelSelector`] hook (`lora::sparse`) from the SVD estimator factors ([`SvdCache`]), from
//! the true projections (oracle), or at random (a baseline), with the HF-correct GQA mappings or
//! the reference code's (see [`crate::scoring`]). It knows a model only through its
//! [`ModelLayout`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use burn::tensor::{backend::Backend, Bool, DType, Int, Tensor, TensorData};
use lora::sparse::{
    kept_channels, AttentionProjections, AttnChannels, Block, ChannelSelector, MlpProjections,
    SparsityPlan,
};
use lora::LoraLinear;
use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::SplitMix64;

use crate::cache::{CoverageError, SvdCache};
use crate::layout::{EstimatedProjection, ModelLayout};
use crate::mode::SelectionMode;
use crate::scoring::{
    channel_norms, mlp_scores, mlp_scores_of_factors, output_channels, qk_scores, query_channels,
    sequence_means, token_rows, top_k, AttnShape, GqaMapping,
};

/// How an [`SvdChannelSelector`] chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SelectorOptions {
    /// Estimated (default), oracle or random.
    pub mode: SelectionMode,
    /// Reproduce the official z-lab/sparselora code instead of the HF-correct rules: its two GQA
    /// index mappings ([`GqaMapping::ReferenceCompat`]) and its statistics over every position,
    /// padding included (the MLP's sequence means and the Q/K/V norms).
    pub reference_compat: bool,
    /// Seed of the random mode's draws (ignored by the others).
    pub seed: u64,
}

impl SelectorOptions {
    /// The same options with `mode`.
    pub fn with_mode(mut self, mode: SelectionMode) -> Self {
        self.mode = mode;
        self
    }

    /// The same options with the random mode's seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The same options with reference compatibility on or off.
    pub fn with_reference_compat(mut self, reference_compat: bool) -> Self {
        self.reference_compat = reference_compat;
        self
    }

    fn mapping(&self) -> GqaMapping {
        if self.reference_compat {
            GqaMapping::ReferenceCompat
        } else {
            GqaMapping::Hf
        }
    }
}

/// Why a selector cannot be built for a model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectorError {
    /// The plan was made for a model of another depth.
    #[error("the sparsity plan covers {plan} layers but the model has {model}")]
    PlanLayers {
        /// Layers in the plan.
        plan: usize,
        /// Layers in the model.
        model: usize,
    },
    /// The SVD cache lacks factors the plan needs (estimated mode).
    #[error("{0}; rebuild the SVD cache (`cargo xtask svd`)")]
    Factors(#[from] CoverageError),
    /// An attention layout the GQA mapping cannot take.
    #[error("{n_heads} query heads cannot share {n_kv_heads} KV heads evenly")]
    Heads {
        /// Query heads.
        n_heads: usize,
        /// KV heads.
        n_kv_heads: usize,
    },
}

/// SparseLoRA's channel selector: for each sparse block of the plan, the top-k channels by the
/// SPEC 4 scores of the current batch (`k = floor(width * (1 - sparsity))`), one set for the
/// whole batch, computed on the model's device without gradients; `None` (dense) where the plan
/// says 0.
///
/// - MLP: per sequence, the mean of the normalised input over its real tokens; `g`, `u` its gate
///   and up projections; channel score `||silu(g) * u||` over the batch. One set for gate rows,
///   up rows and down columns.
/// - Q/K: per-channel norms of q and k over the real tokens; KV channel score = (query norm
///   averaged over the channel's GQA group) x key norm; K keeps the top k KV channels, Q their
///   query channels in every head of the group.
/// - V/O: per-channel norm of v; V keeps the top k, O the matching channels of every query head
///   reading them.
///
/// Indices come in descending score order (K and V), Q and O grouped by KV channel.
///
/// On an autodiff backend the inputs arrive detached and the weights are read detached, so no
/// graph is recorded.
#[derive(Debug)]
pub struct SvdChannelSelector<B: Backend> {
    plan: SparsityPlan,
    options: SelectorOptions,
    /// The factors of each sparse block's projections (q/k/v, gate/up) stacked, so that one
    /// product estimates them all (estimated mode; empty otherwise).
    stacked: HashMap<(usize, Block), StackedFactors<B>>,
    /// Random mode: calls so far, so that every batch draws afresh.
    draws: AtomicU64,
}

impl<B: Backend> SvdChannelSelector<B> {
    /// A selector for the model laid out as `layout` (a LLaMA's `LlamaConfig`, or another
    /// model's [`ModelLayout`]) under `plan`. The estimated mode takes its factors from `cache`
    /// by the layout's projection paths (the tensors are shared, not copied); the oracle and
    /// random modes ignore it.
    ///
    /// # Errors
    /// A plan of another depth than the model, a GQA layout with uneven groups, or (estimated
    /// mode) a cache lacking or misshaping a projection the plan makes sparse.
    pub fn new(
        cache: &SvdCache<B>,
        plan: SparsityPlan,
        layout: &(impl ModelLayout + ?Sized),
        options: SelectorOptions,
    ) -> Result<Self, SelectorError> {
        if plan.num_layers() != layout.num_layers() {
            return Err(SelectorError::PlanLayers {
                plan: plan.num_layers(),
                model: layout.num_layers(),
            });
        }
        let (n_heads, n_kv_heads) = layout.attention_heads();
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(SelectorError::Heads {
                n_heads,
                n_kv_heads,
            });
        }
        let mut stacked = HashMap::new();
        if options.mode == SelectionMode::Estimated {
            cache.check_covers(layout, &plan)?;
            for layer in 0..plan.num_layers() {
                for block in [Block::Attn, Block::Mlp] {
                    if plan.ratio(layer, block) <= 0.0 {
                        continue;
                    }
                    // Q, K, V or gate, up, in that order. Constants: no autodiff history may
                    // reach the estimates (see `SvdCache::from_weights`).
                    let parts: Option<Vec<_>> = EstimatedProjection::ALL
                        .into_iter()
                        .filter(|p| p.block() == block)
                        .map(|target| {
                            let (w1, w2) =
                                cache.factors.get(&layout.projection_path(layer, target))?;
                            Some((w1.clone().detach(), w2.clone().detach()))
                        })
                        .collect();
                    if let Some(parts) = parts {
                        // The attention norms read the stacked `w2`; the MLP scores each
                        // projection's own.
                        let stack_w2 = block == Block::Attn;
                        stacked.insert((layer, block), StackedFactors::new(parts, stack_w2));
                    }
                }
            }
        }
        Ok(Self {
            plan,
            options,
            stacked,
            draws: AtomicU64::new(0),
        })
    }

    /// The plan this selector follows.
    pub fn plan(&self) -> &SparsityPlan {
        &self.plan
    }

    /// The options it was built with.
    pub fn options(&self) -> SelectorOptions {
        self.options
    }

    /// `rows` (`[n, in]`, f32) through the true `projection` (oracle mode): `[n, out]` in f32.
    fn project_exactly(projection: &LoraLinear<B>, rows: Tensor<B, 2>) -> Tensor<B, 2> {
        let weight = projection.weight.val().detach();
        let y = rows.cast(weight.dtype()).matmul(weight.transpose());
        y.cast(DType::F32)
    }

    /// The L2 norms over the token rows of `x` (`[b, s, d_model]`; padding rows left out unless
    /// reference-compat) of the output channels of q_proj, k_proj and v_proj of `layer`:
    /// `[q_width]`, `[kv_width]`, `[kv_width]`.
    ///
    /// The estimated mode never forms the `[n, out]` estimates: with the block's factors stacked
    /// (`w1 = [w1_q w1_k w1_v]`, `w2` block-diagonal), `z = rows w1` and its Gram matrix
    /// `g = z^T z`, the squared norm of channel `c` is `w2[:, c]^T g w2[:, c]`: one skinny
    /// product and two tiny ones for the whole block, instead of three `[n, out]` f32 tensors
    /// and their column reductions (equal up to f32 rounding). The skinny product reads `x` in
    /// its own dtype (bf16 in training, with f32 accumulation, `w1` rounded to bf16) and the
    /// padding rows are left out of the Gram matrix of `z` (`[n, 3r]`), so the `[n, d_model]`
    /// input is never copied: an f32 copy and a masking pass of it cost ~0.1 ms per sparse
    /// attention block at LLaMA3-8B's 4096 tokens.
    fn attention_norms(
        &self,
        layer: usize,
        attn: AttentionProjections<'_, B>,
        x: Tensor<B, 3>,
        tokens: Tensor<B, 2, Bool>,
    ) -> Option<[Tensor<B, 1>; 3]> {
        let mask_padding = !self.options.reference_compat;
        if self.options.mode == SelectionMode::Oracle {
            let rows = token_rows(x, tokens, mask_padding);
            return Some(
                [attn.q_proj, attn.k_proj, attn.v_proj]
                    .map(|p| channel_norms(Self::project_exactly(p, rows.clone()))),
            );
        }
        let stacked = self.stacked.get(&(layer, Block::Attn))?;
        let [b, s, d] = x.dims();
        let w1 = stacked.w1_in(x.dtype());
        let z = sparse_ops::linear(x.reshape([b * s, d]), w1.transpose()); // [n, 3r]

        // `z^T z` over the real rows, in f32: one kernel on burn's cubecl backends (burn's
        // matmul gave this [3r, 3r] output of a 4096-long reduction one cube, ~110 us on the
        // H200; cuBLASLt an f32 split-K SIMT GEMM after a cast and a masking pass, ~18 us).
        let gram = kernels_cubecl::gram_norms::masked_gram(z, tokens, mask_padding); // [3r, 3r]

        // The channel norms, one kernel on burn's cubecl backends, made 1-D before they are cut
        // so that each projection's part is a contiguous view (cutting the `[1, width]` row and
        // then reshaping each part copied it: three launches per block).
        let norms = kernels_cubecl::gram_norms::quadratic_form_norms(gram, stacked.w2.clone()?);
        let [_, width] = norms.dims();
        let norms = stacked.split_channels(norms.reshape([width]));
        norms.try_into().ok()
    }

    /// `k` distinct channels of `0..width`, uniformly at random (random mode).
    fn random_channels(
        &self,
        seed: u64,
        layer: usize,
        stream: u64,
        width: usize,
        k: usize,
        device: &B::Device,
    ) -> Tensor<B, 1, Int> {
        let draw = self.draws.fetch_add(1, Ordering::Relaxed);
        let mut rng = SplitMix64::seed_from_u64(seed ^ mix(layer as u64, stream, draw));
        let channels = random_subset(&mut rng, width, k);
        let n = channels.len();
        Tensor::from_data(TensorData::new(channels, [n]), device)
    }
}

impl<B: Backend> ChannelSelector<B> for SvdChannelSelector<B> {
    fn attention(
        &self,
        layer: usize,
        attn: AttentionProjections<'_, B>,
        x: Tensor<B, 3>,
        tokens: Tensor<B, 2, Bool>,
    ) -> Option<AttnChannels<B>> {
        let ratio = self.plan.ratio(layer, Block::Attn);
        if ratio <= 0.0 {
            return None;
        }
        let shape = AttnShape {
            n_heads: attn.n_heads,
            n_kv_heads: attn.n_kv_heads,
            head_dim: attn.head_dim,
        };
        let k = kept_channels(shape.kv_width(), ratio);
        let mapping = self.options.mapping();
        let (k_idx, v_idx) = match self.options.mode {
            SelectionMode::Random => {
                let (seed, device) = (self.options.seed, x.device());
                let width = shape.kv_width();
                (
                    self.random_channels(seed, layer, 1, width, k, &device),
                    self.random_channels(seed, layer, 2, width, k, &device),
                )
            }
            SelectionMode::Estimated | SelectionMode::Oracle => {
                let [nq, nk, nv] = self.attention_norms(layer, attn, x, tokens)?;
                (top_k(qk_scores(nq, nk, shape, mapping), k), top_k(nv, k))
            }
        };
        Some(AttnChannels {
            q: query_channels(k_idx.clone(), shape, mapping),
            k: k_idx,
            o: output_channels(v_idx.clone(), shape, mapping),
            v: v_idx,
        })
    }

    fn mlp(
        &self,
        layer: usize,
        mlp: MlpProjections<'_, B>,
        x: Tensor<B, 3>,
        tokens: Tensor<B, 2, Bool>,
    ) -> Option<Tensor<B, 1, Int>> {
        let ratio = self.plan.ratio(layer, Block::Mlp);
        if ratio <= 0.0 {
            return None;
        }
        let d_ff = mlp.gate_proj.dims().0;
        let k = kept_channels(d_ff, ratio);
        match self.options.mode {
            SelectionMode::Random => {
                Some(self.random_channels(self.options.seed, layer, 0, d_ff, k, &x.device()))
            }
            SelectionMode::Estimated | SelectionMode::Oracle => {
                let mask_padding = !self.options.reference_compat;
                if self.options.mode == SelectionMode::Oracle {
                    let means = sequence_means(x, tokens, mask_padding);
                    let (gate, up) = (
                        Self::project_exactly(mlp.gate_proj, means.clone()),
                        Self::project_exactly(mlp.up_proj, means),
                    );
                    Some(top_k(mlp_scores(gate, up), k))
                } else {
                    let stacked = self.stacked.get(&(layer, Block::Mlp))?;
                    // `mean(x) w1` as `mean(x w1)` (equal by linearity): the skinny product
                    // reads `x` in its own dtype through the GEMM seam (bf16 in training, f32
                    // accumulation, `w1` rounded to bf16, as the attention norms above) and the
                    // means are taken over its `[b, s, 2r]` output. On the H200 the other order
                    // cost ~60 us per sparse MLP block: the means read all of `x` (~27 us) and
                    // cuBLASLt ran the `[b, d] x [d, 2r]` f32 product as a split-K SIMT kernel
                    // (~35 us); this one is ~15 us plus the means of a 256x smaller tensor.
                    let [b, s, d] = x.dims();
                    let w1 = stacked.w1_in(x.dtype());
                    let rank = w1.dims()[1];
                    let z = sparse_ops::linear(x.reshape([b * s, d]), w1.transpose());
                    let z = sequence_means(z.reshape([b, s, rank]), tokens, mask_padding);
                    // The scores straight from `z` and each projection's `w2` (one kernel on
                    // burn's cubecl backends): the `[b, 2 d_ff]` estimates are never formed.
                    let [gate_w2, up_w2]: [Tensor<B, 2>; 2] =
                        stacked.blocks.clone().try_into().ok()?;
                    Some(top_k(mlp_scores_of_factors(z, gate_w2, up_w2), k))
                }
            }
        }
    }
}

/// The estimator factors of one block's projections side by side: `w1 = [w1_a w1_b ...]`
/// (`[in, m r]`) and `w2` block-diagonal (`[m r, out_a + out_b + ...]`), so that
/// `x w1 w2 = [x w1_a w2_a, x w1_b w2_b, ...]` (the zero blocks add exact zeros).
#[derive(Debug)]
struct StackedFactors<B: Backend> {
    w1: Tensor<B, 2>,
    /// Block-diagonal; built for the attention blocks only.
    w2: Option<Tensor<B, 2>>,
    /// Output width of each projection, in order.
    widths: Vec<usize>,
    /// Each projection's own `w2` (`[rank, width]`, the diagonal blocks of `w2`).
    blocks: Vec<Tensor<B, 2>>,
    /// `w1` in the compute dtype of the first input that needed a cast (bf16 in training): made
    /// once, not at every selection (one launch per sparse block and step).
    w1_cast: OnceLock<Tensor<B, 2>>,
}

impl<B: Backend> StackedFactors<B> {
    /// With `stack_w2` the block-diagonal `w2` is built (`None` otherwise: memory the MLP's
    /// scores do not need).
    fn new(parts: Vec<(Tensor<B, 2>, Tensor<B, 2>)>, stack_w2: bool) -> Self {
        let ranks: Vec<usize> = parts.iter().map(|(w1, _)| w1.dims()[1]).collect();
        let widths: Vec<usize> = parts.iter().map(|(_, w2)| w2.dims()[1]).collect();
        let (rank, width): (usize, usize) = (ranks.iter().sum(), widths.iter().sum());
        let (device, dtype) = (parts[0].1.device(), parts[0].1.dtype());
        let w1 = Tensor::cat(parts.iter().map(|(w1, _)| w1.clone()).collect(), 1);
        let w2 = stack_w2.then(|| {
            let mut w2 = Tensor::<B, 2>::zeros([rank, width], (&device, dtype));
            let (mut row, mut col) = (0, 0);
            for ((_, part), (&r, &w)) in parts.iter().zip(ranks.iter().zip(&widths)) {
                w2 = w2.slice_assign([row..row + r, col..col + w], part.clone());
                (row, col) = (row + r, col + w);
            }
            w2
        });
        Self {
            w1,
            w2,
            widths,
            blocks: parts.into_iter().map(|(_, w2)| w2).collect(),
            w1_cast: OnceLock::new(),
        }
    }

    /// `w1` in `dtype`, the input's, for the skinny product that reads the input in its own
    /// dtype.
    fn w1_in(&self, dtype: DType) -> Tensor<B, 2> {
        if self.w1.dtype() == dtype {
            return self.w1.clone();
        }
        let cast = self.w1_cast.get_or_init(|| self.w1.clone().cast(dtype));
        if cast.dtype() == dtype {
            cast.clone()
        } else {
            self.w1.clone().cast(dtype)
        }
    }

    /// `[sum of widths]` cut into one `[width]` per projection (views).
    fn split_channels(&self, stacked: Tensor<B, 1>) -> Vec<Tensor<B, 1>> {
        let mut start = 0;
        self.widths
            .iter()
            .map(|&w| {
                let part = stacked.clone().narrow(0, start, w);
                start += w;
                part
            })
            .collect()
    }
}

// The random baseline draws from SplitMix64 (`rand_xoshiro`, Steele, Lea & Flood): reproducible
// draws, not cryptographic ones, and never from the backend's generator (training reseeds that
// for dropout).

/// Uniform in `0..bound` (`bound > 0`); the modulo bias is below 2^-40 for the widths here.
fn below(rng: &mut SplitMix64, bound: usize) -> usize {
    (rng.next_u64() % bound as u64) as usize
}

/// One seed from a layer, a stream (which projection) and a draw count.
fn mix(layer: u64, stream: u64, draw: u64) -> u64 {
    let state = layer.wrapping_mul(0x1000_0000_01B3) ^ (stream << 48) ^ draw;
    SplitMix64::seed_from_u64(state).next_u64()
}

/// `k` distinct values of `0..width` (all of them when `k >= width`), by a partial
/// Fisher-Yates shuffle.
fn random_subset(rng: &mut SplitMix64, width: usize, k: usize) -> Vec<i64> {
    let mut all: Vec<i64> = (0..width as i64).collect();
    let k = k.min(width);
    for i in 0..k {
        let j = i + below(rng, width - i);
        all.swap(i, j);
    }
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Distribution;
    use llama_burn::LlamaForCausalLM;
    use std::collections::BTreeMap;

    type B = Flex;

    fn tiny<Bk: Backend>(kv_heads: usize) -> LlamaForCausalLM<Bk> {
        let device = Default::default();
        Bk::seed(&device, 11);
        let mut config = llama_burn::LlamaConfig::preset("tiny").unwrap();
        config.num_key_value_heads = Some(kv_heads);
        config.init_random::<Bk>(&device)
    }

    fn plan(layers: usize, mlp: f64, attn: f64) -> SparsityPlan {
        let mut plan = SparsityPlan::dense(layers);
        plan.set(1, Block::Mlp, mlp).unwrap();
        plan.set(1, Block::Attn, attn).unwrap();
        plan
    }

    /// A batch of two sequences, the second left-padded by 3.
    fn batch<Bk: Backend>(seq: usize) -> (Tensor<Bk, 3>, Tensor<Bk, 2, Bool>) {
        let device = Default::default();
        let x = Tensor::random([2, seq, 64], Distribution::Normal(0.0, 1.0), &device);
        let mask: Vec<bool> = (0..2 * seq).map(|i| i < seq || i >= seq + 3).collect();
        let tokens = Tensor::from_data(TensorData::new(mask, [2, seq]), &device);
        (x, tokens)
    }

    fn sorted(t: Tensor<B, 1, Int>) -> Vec<i64> {
        let mut v: Vec<i64> = t.into_data().convert::<i64>().into_vec().unwrap();
        v.sort_unstable();
        v
    }

    fn selector(
        model: &LlamaForCausalLM<B>,
        cache: &SvdCache<B>,
        mode: SelectionMode,
        compat: bool,
    ) -> SvdChannelSelector<B> {
        let options = SelectorOptions::default()
            .with_mode(mode)
            .with_reference_compat(compat)
            .with_seed(3);
        SvdChannelSelector::new(cache, plan(2, 0.75, 0.5), &model.config, options).unwrap()
    }

    fn channels(
        selector: &SvdChannelSelector<B>,
        model: &LlamaForCausalLM<B>,
        layer: usize,
        x: &Tensor<B, 3>,
        tokens: &Tensor<B, 2, Bool>,
    ) -> Option<[Vec<i64>; 5]> {
        let l = &model.model.layers[layer];
        let attn =
            selector.attention(layer, l.self_attn.projections(), x.clone(), tokens.clone())?;
        let mlp = selector.mlp(layer, l.mlp.projections(), x.clone(), tokens.clone())?;
        Some([
            sorted(attn.q),
            sorted(attn.k),
            sorted(attn.v),
            sorted(attn.o),
            sorted(mlp),
        ])
    }

    #[test]
    fn full_rank_estimate_selects_what_the_oracle_selects() {
        // At rank = d_model the factors reproduce W, so the estimate is the truth: the same
        // channel norms up to f32 rounding (the estimate goes through the Gram matrix of
        // `x w1`), hence the same channels but for near-ties at the cut.
        let model = tiny::<B>(2);
        let cache = SvdCache::build(&model, 64, |_, _| true);
        let (x, tokens) = batch::<B>(7);
        for compat in [false, true] {
            let est = selector(&model, &cache, SelectionMode::Estimated, compat);
            let oracle = selector(&model, &cache, SelectionMode::Oracle, compat);
            let attn = model.model.layers[1].self_attn.projections();
            let norms = |s: &SvdChannelSelector<B>| {
                s.attention_norms(1, attn, x.clone(), tokens.clone())
                    .unwrap()
            };
            for ((name, got), want) in ["q", "k", "v"]
                .into_iter()
                .zip(norms(&est))
                .zip(norms(&oracle))
            {
                let err = (got - want.clone()).abs().max().into_scalar() / want.max().into_scalar();
                assert!(err < 1e-4, "{name} norms differ by {err}");
            }
            let [q, k, v, o, mlp] = channels(&est, &model, 1, &x, &tokens).unwrap();
            let want = channels(&oracle, &model, 1, &x, &tokens).unwrap();
            for (got, want) in [&q, &k, &v, &o, &mlp].into_iter().zip(&want) {
                let shared = got.iter().filter(|c| want.contains(c)).count();
                assert!(
                    shared + 2 >= want.len(),
                    "{shared} of {} channels shared",
                    want.len()
                );
            }
            // tiny: 4 query heads over 2 KV heads of 16; d_ff 176.
            assert_eq!(k.len(), 16);
            assert_eq!(v.len(), 16);
            assert_eq!(q.len(), 32);
            assert_eq!(o.len(), if compat { 16 } else { 32 });
            assert_eq!(mlp.len(), 44);
            // Layer 0 is dense.
            assert!(channels(&est, &model, 0, &x, &tokens).is_none());
        }
    }

    #[test]
    fn hf_mapping_keeps_query_heads_of_the_kept_kv_channels() {
        let model = tiny::<B>(2);
        let cache = SvdCache::build(&model, 4, |_, _| true);
        let (x, tokens) = batch::<B>(5);
        let est = selector(&model, &cache, SelectionMode::Estimated, false);
        let [q, k, v, o, _] = channels(&est, &model, 1, &x, &tokens).unwrap();
        // KV channel (m, d) -> query channels (2m, d), (2m + 1, d) for head_dim 16.
        let expand = |kv: &[i64]| {
            let mut out: Vec<i64> = kv
                .iter()
                .flat_map(|&c| (0..2).map(move |r| ((c / 16) * 2 + r) * 16 + c % 16))
                .collect();
            out.sort_unstable();
            out
        };
        assert_eq!(q, expand(&k));
        assert_eq!(o, expand(&v));
    }

    #[test]
    fn without_gqa_reference_compat_matches_except_for_padding() {
        let model = tiny::<B>(4);
        let cache = SvdCache::build(&model, 4, |_, _| true);
        // No padding: compat differs only in the GQA mappings, which coincide without GQA.
        let device = Default::default();
        let x = Tensor::<B, 3>::random([2, 6, 64], Distribution::Normal(0.0, 1.0), &device);
        let tokens =
            Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; 12], [2, 6]), &device);
        let hf = selector(&model, &cache, SelectionMode::Estimated, false);
        let compat = selector(&model, &cache, SelectionMode::Estimated, true);
        assert_eq!(
            channels(&hf, &model, 1, &x, &tokens),
            channels(&compat, &model, 1, &x, &tokens)
        );
    }

    #[test]
    fn random_mode_draws_fresh_sets_of_the_planned_sizes() {
        let model = tiny::<B>(2);
        let cache = SvdCache {
            rank: 0,
            factors: BTreeMap::new(),
            unconverged: BTreeMap::new(),
        };
        let (x, tokens) = batch::<B>(4);
        let random = selector(&model, &cache, SelectionMode::Random, false);
        let first = channels(&random, &model, 1, &x, &tokens).unwrap();
        let second = channels(&random, &model, 1, &x, &tokens).unwrap();
        assert_ne!(first, second);
        for set in [&first, &second] {
            assert_eq!(set.each_ref().map(Vec::len), [32, 16, 16, 32, 44]);
            for s in set {
                assert!(s.windows(2).all(|w| w[0] < w[1]), "distinct: {s:?}");
            }
        }
        // Reproducible from the seed.
        let again = selector(&model, &cache, SelectionMode::Random, false);
        assert_eq!(channels(&again, &model, 1, &x, &tokens).unwrap(), first);
    }

    #[test]
    fn construction_checks_plan_depth_and_factors() {
        let model = tiny::<B>(2);
        let cache = SvdCache::build(&model, 4, |layer, _| layer == 0);
        let options = SelectorOptions::default();
        let err =
            SvdChannelSelector::new(&cache, plan(3, 0.5, 0.5), &model.config, options).unwrap_err();
        assert_eq!(err, SelectorError::PlanLayers { plan: 3, model: 2 });
        // Layer 1 is sparse but the cache only has layer 0.
        let err =
            SvdChannelSelector::new(&cache, plan(2, 0.5, 0.0), &model.config, options).unwrap_err();
        assert!(
            err.to_string().contains("model.layers.1.mlp.gate_proj"),
            "{err}"
        );
        // The oracle needs no factors.
        SvdChannelSelector::new(
            &cache,
            plan(2, 0.5, 0.5),
            &model.config,
            options.with_mode(SelectionMode::Oracle),
        )
        .unwrap();
    }

    #[test]
    fn drives_the_sparse_forward_on_an_autodiff_backend() {
        type Ad = Autodiff<Flex>;
        let model = tiny::<Ad>(2);
        let cache = SvdCache::build(&model, 4, |_, _| true);
        let selector = SvdChannelSelector::new(
            &cache,
            plan(2, 0.9, 0.5),
            &model.config,
            SelectorOptions::default(),
        )
        .unwrap();
        let device = Default::default();
        let ids = Tensor::<Ad, 2, Int>::from_data(
            TensorData::new(vec![0i64, 0, 5, 6, 7, 8, 9, 10], [2, 4]),
            &device,
        );
        let mask = Tensor::<Ad, 2, Bool>::from_data(
            TensorData::new(
                vec![false, false, true, true, true, true, true, true],
                [2, 4],
            ),
            &device,
        );
        let sparse = lora::sparse::SparseForward {
            selector: &selector,
            split: None,
            drop_sliced_input_grad: false,
        };
        let hidden = model.forward_hidden_sparse(ids, mask, &sparse);
        assert_eq!(hidden.dims(), [2, 4, 64]);
        let values: Vec<f32> = hidden.into_data().convert::<f32>().into_vec().unwrap();
        assert!(values.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn random_subsets_are_distinct_and_complete_at_full_width() {
        let mut rng = SplitMix64::seed_from_u64(7);
        let mut all = random_subset(&mut rng, 10, 10);
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        let mut some = random_subset(&mut rng, 1000, 100);
        some.sort_unstable();
        some.dedup();
        assert_eq!(some.len(), 100);
    }

    #[test]
    fn random_draws_are_pinned() {
        // Values of the generator as first written: a change of generator would change every
        // random-mode run's channels.
        let mut rng = SplitMix64::seed_from_u64(7);
        assert_eq!(
            random_subset(&mut rng, 1000, 8),
            [487, 727, 212, 720, 842, 285, 158, 580]
        );
        assert_eq!(
            [mix(0, 0, 0), mix(3, 2, 5), mix(27, 1, 1 << 40)],
            [
                16294208416658607535,
                10397674022174128698,
                4808898591678650855
            ]
        );
    }
}
