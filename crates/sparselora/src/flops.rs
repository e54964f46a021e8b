//! Analytic FLOPs of one training step (SPEC section 9), for dense LoRA and for a SparseLoRA plan,
//! so a run can report its compute saving beside the measured wall-clock speed-up.
//!
//! A multiply-add counts 2 FLOPs; only matrix products are counted (norms, RoPE, SiLU, softmax,
//! residual adds, gathers and scatters are ignored). With `T = batch x seq` positions, of which
//! `T_d` take the dense path (answer tokens) in a sparse block and `T_s = T - T_d` the sparse one:
//!
//! - **Frozen projections, forward**: `2 x rows x weight elements used`. Full weights for dense
//!   blocks and dense-path rows; for sparse rows, q/k/v/gate/up keep `k` of their output rows and
//!   o/down `k` of their input columns. MLP: `k = kept_channels(d_ff, s)` for gate, up and down.
//!   Attention: `k_kv = kept_channels(n_kv x hd, s)` rows of k and v, and the query channels that
//!   read them, `k_kv x n_q / n_kv`, of q (rows) and o (columns), as the GQA selection expands
//!   them (SPEC 4).
//! - **Frozen projections, backward**: input gradients only (frozen weights get none), the same
//!   count as their forward; none where the input does not depend on a trainable parameter (the
//!   q/k/v inputs of layer 0 with attention adapters), and none through the sparse rows of a
//!   sliced projection carrying an adapter in reference-compat mode (its dropped gradient).
//! - **Attention core**: `QK^T` and `PV` are `2 x b x s^2 x n_q x hd` each, counted over the
//!   full `s x s` square (the implementation computes the masked square; a causal kernel would
//!   halve it). Sparsity does not change it (dropped q/k channels are zeros, not removed).
//!   Backward: `dQ`, `dK`, `dP`, `dV`, one forward matmul each when needed, so 2x the forward.
//! - **LoRA** on every target, always dense: forward `2 x T x r x (in + out)`; backward the
//!   weight gradients and input gradients, 2x the forward (the input gradient is skipped where
//!   the input needs none).
//! - **LM head**: only at the positions whose logits the loss takes (those predicting an answer
//!   token), `2 x positions x d x vocab`, forward and input-gradient backward.
//! - **Estimator** (sparse blocks, sparse steps): `2 x rows x (in x r + r x out)` per estimated
//!   projection: q, k, v on all `T` positions; gate and up on the `b` sequence means. Oracle
//!   mode runs the true projections there (`in x out`); random selection costs nothing.

use std::fmt;
use std::ops::AddAssign;

use llama_burn::{LlamaConfig, LlamaProjection};
use lora::sparse::{kept_channels, SparsityPlan};
use lora::LoraConfig;

use crate::sparsity_config::{SparsityConfig, DEFAULT_ESTIMATOR_RANK};
use crate::SelectionMode;

/// The token counts of one forward/backward pass (a micro-batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTokens {
    /// Sequences in the batch.
    pub sequences: usize,
    /// Length every sequence is computed at (padded length).
    pub seq_len: usize,
    /// Tokens with a label (not ignored): the answer tokens.
    pub answer_tokens: usize,
    /// Positions whose logits the loss computes (those that predict an answer token).
    pub logit_tokens: usize,
    /// Tokens that take the dense path in a sparse block.
    pub dense_tokens: usize,
}

impl StepTokens {
    /// A batch as the reference's speed benchmark builds it: `sequences x seq_len` tokens, the
    /// last `answer_len` of each sequence the answer (dense, and predicted by the loss).
    pub fn synthetic(sequences: usize, seq_len: usize, answer_len: usize) -> Self {
        let answer = sequences * answer_len.min(seq_len);
        Self {
            sequences,
            seq_len,
            answer_tokens: answer,
            logit_tokens: sequences * answer_len.min(seq_len.saturating_sub(1)),
            dense_tokens: answer,
        }
    }

    /// The counts of a batch of `sequences x seq_len` tokens from its row-major answer mask
    /// (`true` where the label is not ignored): answer tokens all on the dense path, logits taken
    /// at the positions that predict one (an answer at a sequence's first position has none).
    pub fn from_answer_mask(sequences: usize, seq_len: usize, answer: &[bool]) -> Self {
        let labelled = |i: usize| answer.get(i).copied().unwrap_or(false);
        let answers = (0..sequences * seq_len).filter(|&i| labelled(i)).count();
        let logits = (0..sequences)
            .flat_map(|row| (1..seq_len).map(move |t| row * seq_len + t))
            .filter(|&i| labelled(i))
            .count();
        Self {
            sequences,
            seq_len,
            answer_tokens: answers,
            logit_tokens: logits,
            dense_tokens: answers,
        }
    }

    /// Sets the tokens on the dense path (at most every token).
    pub fn with_dense_tokens(mut self, dense_tokens: usize) -> Self {
        self.dense_tokens = dense_tokens.min(self.tokens());
        self
    }

    /// The dense-path tokens a config sends on average: the answer tokens less
    /// `sparse_answer_fraction` of them, none without `dense_answer_tokens`.
    pub fn with_answer_policy(self, config: &SparsityConfig) -> Self {
        let dense = config.expected_dense_tokens(self.answer_tokens);
        self.with_dense_tokens(dense)
    }

    /// All positions, `sequences x seq_len`.
    pub fn tokens(&self) -> usize {
        self.sequences * self.seq_len
    }
}

/// FLOPs of one pass, by part (see the module documentation for each formula).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flops {
    /// Frozen projections (q, k, v, o, gate, up, down), forward.
    pub base_forward: u128,
    /// Input gradients through the frozen projections.
    pub base_backward: u128,
    /// Attention scores and weighted sum, forward.
    pub attention_forward: u128,
    /// Their backward.
    pub attention_backward: u128,
    /// LoRA adapters, forward.
    pub lora_forward: u128,
    /// Adapter weight and input gradients.
    pub lora_backward: u128,
    /// LM head at the loss positions, forward.
    pub lm_head_forward: u128,
    /// Its input gradient.
    pub lm_head_backward: u128,
    /// Channel selection (the SVD estimator, or the oracle's true projections).
    pub estimator: u128,
}

impl Flops {
    /// Every part.
    pub fn total(&self) -> u128 {
        self.forward() + self.backward() + self.estimator
    }

    /// The forward parts (estimator excluded).
    pub fn forward(&self) -> u128 {
        self.base_forward + self.attention_forward + self.lora_forward + self.lm_head_forward
    }

    /// The backward parts.
    pub fn backward(&self) -> u128 {
        self.base_backward + self.attention_backward + self.lora_backward + self.lm_head_backward
    }
}

impl AddAssign for Flops {
    fn add_assign(&mut self, o: Self) {
        self.base_forward += o.base_forward;
        self.base_backward += o.base_backward;
        self.attention_forward += o.attention_forward;
        self.attention_backward += o.attention_backward;
        self.lora_forward += o.lora_forward;
        self.lora_backward += o.lora_backward;
        self.lm_head_forward += o.lm_head_forward;
        self.lm_head_backward += o.lm_head_backward;
        self.estimator += o.estimator;
    }
}

/// The FLOPs of a step for dense LoRA and for the sparse run; add micro-batches with `+=`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepFlops {
    /// Dense LoRA on the same tokens.
    pub dense: Flops,
    /// The sparse step, estimator included.
    pub sparse: Flops,
}

impl StepFlops {
    /// `sparse / dense` (1 when there is nothing to count).
    pub fn ratio(&self) -> f64 {
        ratio(self.sparse.total(), self.dense.total(), 1.0)
    }

    /// `dense / sparse`: how many times fewer FLOPs the sparse step takes.
    pub fn speedup(&self) -> f64 {
        ratio(self.dense.total(), self.sparse.total(), 1.0)
    }

    /// The estimator's share of the sparse step's FLOPs.
    pub fn estimator_share(&self) -> f64 {
        ratio(self.sparse.estimator, self.sparse.total(), 0.0)
    }

    /// `sparse / dense` over a whole run of `total_steps` whose first `dense_steps` are dense.
    pub fn run_ratio(&self, dense_steps: usize, total_steps: usize) -> f64 {
        let dense_steps = dense_steps.min(total_steps) as u128;
        let sparse_steps = total_steps as u128 - dense_steps;
        let run = dense_steps * self.dense.total() + sparse_steps * self.sparse.total();
        ratio(run, total_steps as u128 * self.dense.total(), 1.0)
    }
}

impl AddAssign for StepFlops {
    fn add_assign(&mut self, o: Self) {
        self.dense += o.dense;
        self.sparse += o.sparse;
    }
}

impl fmt::Display for StepFlops {
    /// `FLOPs 0.657 of dense LoRA (1.52x fewer), estimator 0.02%`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FLOPs {:.3} of dense LoRA ({:.2}x fewer), estimator {:.2}%",
            self.ratio(),
            self.speedup(),
            100.0 * self.estimator_share()
        )
    }
}

fn ratio(num: u128, den: u128, empty: f64) -> f64 {
    if den == 0 {
        empty
    } else {
        num as f64 / den as f64
    }
}

/// Counts the FLOPs of a model, its LoRA adapters and a channel-selection setup.
#[derive(Debug, Clone)]
pub struct FlopsCounter<'a> {
    /// The architecture.
    pub model: &'a LlamaConfig,
    /// The adapters (targets and rank).
    pub lora: &'a LoraConfig,
    /// How channels are chosen (what the selection costs).
    pub selection: SelectionMode,
    /// The SVD estimator's rank.
    pub estimator_rank: usize,
    /// Reference-compat: no input gradient through sliced projections carrying an adapter.
    pub drop_sliced_input_grad: bool,
}

/// Rows of one projection on the full weight and on its slice.
#[derive(Clone, Copy)]
struct Rows {
    full: u128,
    sliced: u128,
}

/// The widths and token counts [`FlopsCounter::count`] multiplies.
#[derive(Clone, Copy)]
struct Dims {
    /// `hidden_size`.
    d: u128,
    /// `intermediate_size`.
    d_ff: u128,
    /// Head width, query heads' total width, key/value heads' total width.
    hd: usize,
    dq: u128,
    dkv: u128,
    /// Key/value heads, and query heads per key/value head.
    nkv: usize,
    group: usize,
    /// Sequences, their length, tokens in all, tokens on the dense path.
    b: u128,
    s: u128,
    n: u128,
    n_dense: u128,
}

impl Dims {
    fn new(m: &LlamaConfig, tokens: &StepTokens) -> Self {
        let c = |x: usize| x as u128;
        let (hd, nq, nkv) = (m.head_dim(), m.num_attention_heads, m.n_kv_heads().max(1));
        let n = c(tokens.tokens());
        Self {
            d: c(m.hidden_size),
            d_ff: c(m.intermediate_size),
            hd,
            dq: c(nq * hd),
            dkv: c(nkv * hd),
            nkv,
            group: (nq / nkv).max(1),
            b: c(tokens.sequences),
            s: c(tokens.seq_len),
            n,
            n_dense: c(tokens.dense_tokens).min(n),
        }
    }

    /// A sparse block computes its dense tokens on the full weight and the rest on the slice.
    fn rows(&self, sparse: bool) -> Rows {
        if sparse {
            Rows {
                full: self.n_dense,
                sliced: self.n - self.n_dense,
            }
        } else {
            Rows {
                full: self.n,
                sliced: 0,
            }
        }
    }
}

impl<'a> FlopsCounter<'a> {
    /// The SVD estimator at rank 8, exact gradients.
    pub fn new(model: &'a LlamaConfig, lora: &'a LoraConfig) -> Self {
        Self {
            model,
            lora,
            selection: SelectionMode::Estimated,
            estimator_rank: DEFAULT_ESTIMATOR_RANK,
            drop_sliced_input_grad: false,
        }
    }

    /// Takes the selection mode, estimator rank and reference-compat switch of `config`.
    pub fn with_sparsity_config(mut self, config: &SparsityConfig) -> Self {
        self.selection = config.mode;
        self.estimator_rank = config.estimator_rank;
        self.drop_sliced_input_grad = config.reference_compat;
        self
    }

    /// Dense LoRA and the sparse step under `plan` (`None`: dense) on `tokens`.
    pub fn step(&self, tokens: &StepTokens, plan: Option<&SparsityPlan>) -> StepFlops {
        StepFlops {
            dense: self.count(tokens, None),
            sparse: self.count(tokens, plan),
        }
    }

    /// The FLOPs of one forward/backward pass under `plan` (`None`: dense LoRA). Layers past
    /// the end of the plan are dense.
    pub fn count(&self, tokens: &StepTokens, plan: Option<&SparsityPlan>) -> Flops {
        let dims = Dims::new(self.model, tokens);
        let mut fl = Flops::default();
        // Whether the residual stream depends on a trainable parameter (then gradients flow).
        let mut tracked = false;
        for layer in 0..self.model.num_hidden_layers {
            let ratios = plan.map(|p| p.layer(layer)).unwrap_or_default();
            tracked = self.attention(&mut fl, &dims, layer, ratios.attn, tracked);
            tracked = self.mlp(&mut fl, &dims, layer, ratios.mlp, tracked);
        }
        let head = 2 * tokens.logit_tokens as u128 * dims.d * self.model.vocab_size as u128;
        fl.lm_head_forward += head;
        if tracked {
            fl.lm_head_backward += head;
        }
        fl
    }

    /// Whether `target` of `layer` carries an adapter.
    fn has(&self, target: LlamaProjection, layer: usize) -> bool {
        self.lora.targets_module(&target.path(layer))
    }

    /// Adds the self-attention block of `layer` at sparsity `ratio` (its input `tracked` when it
    /// depends on a trainable parameter); returns whether its output does.
    fn attention(
        &self,
        fl: &mut Flops,
        dims: &Dims,
        layer: usize,
        ratio: f64,
        tracked: bool,
    ) -> bool {
        let Dims { d, dq, dkv, .. } = *dims;
        let has = |t: LlamaProjection| self.has(t, layer);
        let sparse = ratio > 0.0;
        let (k_q, k_kv) = if sparse {
            let k_kv = kept_channels(dims.nkv * dims.hd, ratio);
            ((k_kv * dims.group) as u128, k_kv as u128)
        } else {
            (dq, dkv)
        };
        let rows = dims.rows(sparse);
        let qkv = [
            (LlamaProjection::Q, dq, k_q),
            (LlamaProjection::K, dkv, k_kv),
            (LlamaProjection::V, dkv, k_kv),
        ]
        .map(|(target, out, kept)| {
            self.projection(fl, has(target), (d, out, kept * d), rows, tracked);
            tracked || has(target)
        });
        let core = 2 * dims.b * dims.s * dims.s * dq;
        fl.attention_forward += 2 * core;
        let [q_tr, k_tr, v_tr] = qkv;
        let needed = [q_tr, k_tr, q_tr || k_tr, v_tr]; // dQ, dK, dP, dV
        fl.attention_backward += core * needed.iter().filter(|&&x| x).count() as u128;
        let o_in_tracked = qkv.iter().any(|&x| x);
        let o = has(LlamaProjection::O);
        self.projection(fl, o, (dq, d, d * k_q), rows, o_in_tracked);
        if sparse {
            fl.estimator += 2 * dims.n * (self.estimate(d, dq) + 2 * self.estimate(d, dkv));
        }
        o_in_tracked || o
    }

    /// Adds the MLP block of `layer` at sparsity `ratio` (its input `tracked` when it depends on
    /// a trainable parameter); returns whether its output does.
    fn mlp(&self, fl: &mut Flops, dims: &Dims, layer: usize, ratio: f64, tracked: bool) -> bool {
        let Dims { d, d_ff, .. } = *dims;
        let has = |t: LlamaProjection| self.has(t, layer);
        let sparse = ratio > 0.0;
        let k = if sparse {
            kept_channels(self.model.intermediate_size, ratio) as u128
        } else {
            d_ff
        };
        let rows = dims.rows(sparse);
        for target in [LlamaProjection::Gate, LlamaProjection::Up] {
            self.projection(fl, has(target), (d, d_ff, k * d), rows, tracked);
        }
        let h_tracked = tracked || has(LlamaProjection::Gate) || has(LlamaProjection::Up);
        let down = has(LlamaProjection::Down);
        self.projection(fl, down, (d_ff, d, d * k), rows, h_tracked);
        if sparse {
            fl.estimator += 2 * dims.b * 2 * self.estimate(d, d_ff);
        }
        h_tracked || down
    }

    /// One projection (`shape = (d_in, d_out, kept)`: `kept` weight elements on sliced rows) and
    /// its adapter when `adapter`.
    fn projection(
        &self,
        fl: &mut Flops,
        adapter: bool,
        (d_in, d_out, kept): (u128, u128, u128),
        rows: Rows,
        input_tracked: bool,
    ) {
        let full = d_in * d_out;
        fl.base_forward += 2 * (rows.full * full + rows.sliced * kept);
        if input_tracked {
            let sliced_grad = if self.drop_sliced_input_grad && adapter {
                0
            } else {
                kept
            };
            fl.base_backward += 2 * (rows.full * full + rows.sliced * sliced_grad);
        }
        if adapter {
            let n = rows.full + rows.sliced;
            let r = self.lora.r as u128;
            fl.lora_forward += 2 * n * r * (d_in + d_out);
            // dB and the gradient into the rank-r hidden (out each), dA (in), and the input
            // gradient (in) when the input needs one.
            let dx = if input_tracked { d_in } else { 0 };
            fl.lora_backward += 2 * n * r * (2 * d_out + d_in + dx);
        }
    }

    /// Multiply-adds per row of estimating an `[out, in]` projection.
    fn estimate(&self, d_in: u128, d_out: u128) -> u128 {
        match self.selection {
            SelectionMode::Estimated => self.estimator_rank as u128 * (d_in + d_out),
            SelectionMode::Oracle => d_in * d_out,
            SelectionMode::Random => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lora::sparse::Block;
    use std::path::Path;

    /// d = 4, d_ff = 8, 2 query heads sharing 1 KV head of width 2, 1 layer, vocab 10.
    fn toy() -> LlamaConfig {
        LlamaConfig {
            vocab_size: 10,
            hidden_size: 4,
            intermediate_size: 8,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: Some(1),
            head_dim: None,
            ..LlamaConfig::preset("tiny").unwrap()
        }
    }

    fn toy_plan() -> SparsityPlan {
        let mut plan = SparsityPlan::dense(1);
        plan.set(0, Block::Attn, 0.5).unwrap();
        plan.set(0, Block::Mlp, 0.5).unwrap();
        plan
    }

    #[test]
    fn hand_checked_toy_model() {
        let model = toy();
        assert_eq!(model.head_dim(), 2);
        let lora = LoraConfig::new()
            .with_r(1)
            .with_targets(LlamaProjection::target_modules(&[LlamaProjection::Q]));
        // One sequence of 3 tokens, the last one the answer.
        let tokens = StepTokens::synthetic(1, 3, 1);
        assert_eq!((tokens.answer_tokens, tokens.logit_tokens), (1, 1));
        let counter = FlopsCounter {
            estimator_rank: 1,
            ..FlopsCounter::new(&model, &lora)
        };
        let f = counter.step(&tokens, Some(&toy_plan()));

        // Dense. q [4x4], k, v [2x4], o [4x4], gate/up [8x4], down [4x8]; 3 rows.
        // Forward: 2*3*(16 + 8 + 8 + 16 + 32*3) = 864.
        // Backward: layer 0's q/k/v read the embeddings (no gradient needed): o + MLP = 672.
        // Attention core: 2*1*3*3*(2*2) = 72 per matmul; forward 144; backward dQ + dP (only q
        // carries an adapter) = 144.
        // LoRA on q (r = 1): forward 2*3*(4+4) = 48; backward 2*3*(2*4 + 4) = 72 (no dx).
        // LM head at 1 position: 2*1*4*10 = 80 each way.
        let dense = Flops {
            base_forward: 864,
            base_backward: 672,
            attention_forward: 144,
            attention_backward: 144,
            lora_forward: 48,
            lora_backward: 72,
            lm_head_forward: 80,
            lm_head_backward: 80,
            estimator: 0,
        };
        assert_eq!(f.dense, dense);
        assert_eq!(f.dense.total(), 2104);

        // Sparse: 1 dense row, 2 sparse rows. Attention 0.5: k_kv = 1 of 2 KV channels, so
        // k_q = 2 of 4 query channels (2 query heads per KV head). MLP 0.5: 4 of 8 channels.
        // q: 2*(1*16 + 2*2*4) = 64; k, v: 2*(1*8 + 2*1*4) = 32 each; o: 2*(16 + 2*4*2) = 64;
        // gate/up/down: 2*(32 + 2*16) = 128 each. Forward 576; backward o + MLP = 448.
        // Estimator (rank 1): q, k, v on 3 rows: 2*3*(8 + 2*6) = 120; gate, up on 1 sequence
        // mean: 2*1*2*(4 + 8) = 48.
        let sparse = Flops {
            base_forward: 576,
            base_backward: 448,
            estimator: 168,
            ..dense
        };
        assert_eq!(f.sparse, sparse);
        assert_eq!(f.sparse.total(), 1760);
        assert!((f.ratio() - 1760.0 / 2104.0).abs() < 1e-12);
        assert!((f.estimator_share() - 168.0 / 1760.0).abs() < 1e-12);
        assert_eq!(f.sparse.forward(), 576 + 144 + 48 + 80);
        assert_eq!(f.sparse.backward(), 448 + 144 + 72 + 80);
    }

    #[test]
    fn dense_plan_gives_ratio_one() {
        let model = LlamaConfig::preset("llama3-8b").unwrap();
        let lora = LoraConfig::new();
        let counter = FlopsCounter::new(&model, &lora);
        let tokens = StepTokens::synthetic(8, 512, 3);
        let dense = SparsityPlan::dense(32);
        for plan in [None, Some(&dense)] {
            let f = counter.step(&tokens, plan);
            assert_eq!(f.sparse, f.dense);
            assert_eq!(f.ratio(), 1.0);
            assert_eq!(f.estimator_share(), 0.0);
            assert_eq!(f.run_ratio(10, 100), 1.0);
        }
        // Nothing to count.
        let f = counter.step(&StepTokens::synthetic(0, 0, 0), None);
        assert_eq!(
            (f.ratio(), f.speedup(), f.estimator_share()),
            (1.0, 1.0, 0.0)
        );
        assert_eq!(f.run_ratio(0, 0), 1.0);
    }

    #[test]
    fn selection_mode_and_reference_compat_change_the_count() {
        let model = toy();
        let lora = LoraConfig::new()
            .with_r(1)
            .with_targets(LlamaProjection::target_modules(&[
                LlamaProjection::Q,
                LlamaProjection::O,
            ]));
        let tokens = StepTokens::synthetic(1, 3, 1);
        let plan = toy_plan();
        let base = FlopsCounter {
            estimator_rank: 1,
            ..FlopsCounter::new(&model, &lora)
        };
        let f = base.step(&tokens, Some(&plan));
        // o carries an adapter: with the reference's dropped gradient its 2 sparse rows send no
        // input gradient through the frozen slice, 2*2*(4*2) = 32 fewer.
        let compat = FlopsCounter {
            drop_sliced_input_grad: true,
            ..base.clone()
        }
        .step(&tokens, Some(&plan));
        assert_eq!(f.sparse.base_backward - compat.sparse.base_backward, 32);
        assert_eq!(compat.dense, f.dense);
        // Oracle: true projections, q [4x4] k, v [2x4] on 3 rows, gate/up [8x4] on 1 mean.
        let oracle = FlopsCounter {
            selection: SelectionMode::Oracle,
            ..base.clone()
        }
        .step(&tokens, Some(&plan));
        assert_eq!(oracle.sparse.estimator, 2 * 3 * (16 + 8 + 8) + 2 * 2 * 32);
        let random = FlopsCounter {
            selection: SelectionMode::Random,
            ..base.clone()
        }
        .step(&tokens, Some(&plan));
        assert_eq!(random.sparse.estimator, 0);
        // From a config.
        let config = SparsityConfig {
            mode: SelectionMode::Random,
            estimator_rank: 4,
            reference_compat: true,
            ..SparsityConfig::default()
        };
        let from = FlopsCounter::new(&model, &lora).with_sparsity_config(&config);
        assert_eq!(from.selection, SelectionMode::Random);
        assert_eq!(from.estimator_rank, 4);
        assert!(from.drop_sliced_input_grad);
    }

    #[test]
    fn dense_tokens_use_full_weights() {
        let model = toy();
        let lora = LoraConfig::new().with_r(1);
        let counter = FlopsCounter::new(&model, &lora);
        let plan = toy_plan();
        let all_sparse = StepTokens::synthetic(1, 3, 1).with_dense_tokens(0);
        let all_dense = StepTokens::synthetic(1, 3, 1).with_dense_tokens(99);
        assert_eq!(all_dense.dense_tokens, 3);
        let (s, d) = (
            counter.step(&all_sparse, Some(&plan)),
            counter.step(&all_dense, Some(&plan)),
        );
        assert!(s.sparse.base_forward < d.sparse.base_forward);
        assert_eq!(d.sparse.base_forward, d.dense.base_forward);
        // Every token dense still pays for the estimator.
        assert!(d.ratio() > 1.0);
        let glue = SparsityConfig {
            dense_answer_tokens: false,
            ..SparsityConfig::default()
        };
        let t = StepTokens::synthetic(2, 4, 2).with_answer_policy(&glue);
        assert_eq!((t.answer_tokens, t.dense_tokens), (4, 0));
        let t = StepTokens::synthetic(2, 4, 2).with_answer_policy(&SparsityConfig::default());
        assert_eq!(t.dense_tokens, 4);
    }

    #[test]
    fn counts_tokens_of_a_labelled_batch() {
        // Labels [ig, ig, 5, 6 | 7, ig, ig, 8].
        let answer = [false, false, true, true, true, false, false, true];
        let t = StepTokens::from_answer_mask(2, 4, &answer);
        // Answer tokens 5, 6, 7, 8; the label at position 0 (7) is predicted by no position.
        assert_eq!(t.tokens(), 8);
        assert_eq!((t.answer_tokens, t.logit_tokens, t.dense_tokens), (4, 3, 4));
        let t = StepTokens::synthetic(2, 3, 5);
        assert_eq!((t.answer_tokens, t.logit_tokens), (6, 4));
    }

    #[test]
    fn micro_batches_add_up_and_runs_average() {
        let model = toy();
        let lora = LoraConfig::new().with_r(1);
        let counter = FlopsCounter::new(&model, &lora);
        let plan = toy_plan();
        let one = counter.step(&StepTokens::synthetic(1, 3, 1), Some(&plan));
        let mut two = one;
        two += one;
        assert_eq!(two.sparse.total(), 2 * one.sparse.total());
        assert_eq!(two.ratio(), one.ratio());
        let r = one.ratio();
        assert!((one.run_ratio(25, 100) - (0.25 + 0.75 * r)).abs() < 1e-12);
        assert_eq!(one.run_ratio(200, 100), 1.0);
        assert!((one.run_ratio(0, 100) - r).abs() < 1e-12);
        let text = one.to_string();
        assert!(
            text.starts_with("FLOPs ") && text.contains("of dense LoRA ("),
            "{text}"
        );
    }

    fn shipped(name: &str) -> (LlamaConfig, SparsityConfig, SparsityPlan) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../configs/sparsity")
            .join(format!("{name}.toml"));
        let config = SparsityConfig::from_file(&path).unwrap();
        let model = LlamaConfig::preset(config.model.as_deref().unwrap()).unwrap();
        let plan = config.plan(model.num_hidden_layers).unwrap();
        (model, config, plan)
    }

    /// SPEC 9's benchmark shape (batch 8, seq 512, answers of 3 tokens for commonsense, 128 for
    /// math; we use 3 for GLUE's short labels and 128 for code and chat), default LoRA (q, k, v,
    /// o at rank 32).
    fn benchmark(name: &str, answer_len: usize) -> StepFlops {
        let (model, config, plan) = shipped(name);
        let lora = LoraConfig::new();
        let tokens = StepTokens::synthetic(8, 512, answer_len).with_answer_policy(&config);
        FlopsCounter::new(&model, &lora)
            .with_sparsity_config(&config)
            .step(&tokens, Some(&plan))
    }

    #[test]
    fn llama3_8b_csr170k_ratio_is_plausible() {
        let f = benchmark("llama3-8b-csr170k", 3);
        println!(
            "llama3-8b csr170k, 8 x 512, 3 answer tokens: sparse/dense {:.4} ({:.3}x fewer), \
             estimator {:.4}% of the sparse step, dense {:.3e} / sparse {:.3e} FLOPs",
            f.ratio(),
            f.speedup(),
            100.0 * f.estimator_share(),
            f.dense.total() as f64,
            f.sparse.total() as f64
        );
        // The paper reports about 1.3-1.6x fewer FLOPs for commonsense reasoning.
        assert!((1.3..1.7).contains(&f.speedup()), "{f}");
        assert!(f.estimator_share() < 0.01, "{f}");
        // With the first 5% of steps dense the run saves a little less.
        assert!(f.run_ratio(50, 1000) > f.ratio());
    }

    /// Every paper config at the benchmark shape, beside the paper's Table 12 "#FLOPs" column.
    /// Rows whose shipped config is the paper's (commonsense and math; GLUE) agree within 0.03;
    /// llama3-8b math10k ships the reference code's config, more aggressive than the paper's
    /// table row, and code/chat answers are longer than the benchmark's 128 tokens, so those
    /// rows are only printed.
    #[test]
    fn every_paper_config_saves_flops() {
        let rows = [
            ("llama3-8b-csr170k", 3, 0.65, true),
            ("llama3-8b-math10k", 128, 0.60, false),
            ("llama3-8b-glue", 3, 0.61, true),
            ("llama2-7b-csr170k", 3, 0.65, true),
            ("llama2-7b-math10k", 128, 0.73, true),
            ("llama2-13b-csr170k", 3, 0.61, true),
            ("llama2-13b-math10k", 128, 0.70, true),
            ("llama2-7b-codefeedback", 128, 0.73, false),
            ("llama3.1-8b-codefeedback", 128, 0.66, false),
            ("llama3.1-8b-wizardlm", 128, 0.53, false),
        ];
        for (name, answer_len, paper, close) in rows {
            let f = benchmark(name, answer_len);
            println!("{name:>26} answer {answer_len:>3}: {f} (paper: {paper:.2})");
            assert!(f.ratio() > 0.2 && f.ratio() < 0.95, "{name}: {f}");
            if close {
                assert!(
                    (f.ratio() - paper).abs() < 0.03,
                    "{name}: {f}, paper {paper}"
                );
            }
        }
    }
}
