//! The library part of SparseLoRA's sensitivity sweep (SPEC 6 and 9; `cargo xtask sensitivity`
//! runs it, `docs/sensitivity.md` describes it): the held-out loss with one block of one layer
//! sparse at a time while the rest of the model stays dense, the greedy proposal of a sparsity
//! config for a FLOPs budget ([`propose`]), and the proposal as a config file.
//!
//! For every swept layer, block (`mlp`, `self_attn`) and ratio, a plan with only that block
//! sparse drives an [`SvdChannelSelector`]; the answer tokens take the dense path as in training,
//! and the loss is training's answer-token loss, averaged over every answer token of the
//! held-out records. The difference to the dense model's loss is the block's sensitivity at that
//! ratio.

use std::fmt::Write as _;

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, ElementConversion, Int, Tensor};
use llama_burn::loss::LossTargets;
use llama_burn::LlamaForCausalLM;
use lora::sparse::{
    Block, ChannelSelector, SparseForward, SparsityPlan, SparsityPlanError, TokenSplit,
};
use svd_estimator::{SelectorError, SelectorOptions, SvdCache, SvdChannelSelector};

use crate::flops::StepTokens;
use crate::sparsity_config::{BlockSparsity, LayerSet, SparsityConfig};
use crate::SelectionMode;

/// One measurement: `block` of `layer` sparse at `ratio`, everything else dense.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// 0-based layer.
    pub layer: usize,
    /// The sparse block.
    pub block: Block,
    /// Its sparsity.
    pub ratio: f64,
    /// Held-out loss.
    pub loss: f64,
    /// `loss` minus the dense model's loss.
    pub delta: f64,
}

/// The sparsity config [`propose`] derives.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// The blocks made sparse, in the order they were added (least sensitive first).
    pub chosen: Vec<Measurement>,
    /// The candidates left dense, in the order they would have come.
    pub dense: Vec<Measurement>,
    /// The plan: `chosen` sparse, all else dense.
    pub plan: SparsityPlan,
    /// The plan's FLOPs over dense LoRA.
    pub flops_ratio: f64,
    /// The budget asked for.
    pub budget: f64,
}

/// The proposal rule. Candidates are the measured (layer, block) pairs at their block's largest
/// ratio in `rows`, with a finite loss. In increasing order of their loss increase (ties: the
/// deeper layer first, then MLP before attention), each is made sparse in turn until
/// `flops(plan)` (sparse over dense FLOPs of a training step) is at most `budget`; a candidate
/// that would not lower the FLOPs stays dense. The most sensitive blocks are thus the last to
/// go sparse, and stay dense whenever the budget allows. When every candidate is sparse and the
/// budget is still not met, the proposal says so ([`Proposal::budget_met`]).
pub fn propose(
    rows: &[Measurement],
    num_layers: usize,
    budget: f64,
    flops: impl Fn(&SparsityPlan) -> f64,
) -> Proposal {
    let mut largest: Vec<(Block, f64)> = Vec::new();
    for row in rows {
        match largest.iter_mut().find(|(b, _)| *b == row.block) {
            Some((_, r)) => *r = r.max(row.ratio),
            None => largest.push((row.block, row.ratio)),
        }
    }
    let is_largest = |row: &Measurement| {
        largest
            .iter()
            .any(|&(b, r)| b == row.block && r == row.ratio)
    };
    let mut candidates: Vec<Measurement> = rows
        .iter()
        .filter(|r| is_largest(r) && r.loss.is_finite() && r.delta.is_finite())
        .copied()
        .collect();
    let block_order = |b: Block| usize::from(b != Block::Mlp);
    candidates.sort_by(|a, b| {
        a.delta
            .total_cmp(&b.delta)
            .then(b.layer.cmp(&a.layer))
            .then(block_order(a.block).cmp(&block_order(b.block)))
    });
    let mut plan = SparsityPlan::dense(num_layers);
    let mut ratio = flops(&plan);
    let (mut chosen, mut dense) = (Vec::new(), Vec::new());
    for candidate in candidates {
        if ratio <= budget {
            dense.push(candidate);
            continue;
        }
        let mut next = plan.clone();
        if next
            .set(candidate.layer, candidate.block, candidate.ratio)
            .is_err()
        {
            dense.push(candidate);
            continue;
        }
        let next_ratio = flops(&next);
        if next_ratio < ratio {
            plan = next;
            ratio = next_ratio;
            chosen.push(candidate);
        } else {
            dense.push(candidate);
        }
    }
    Proposal {
        chosen,
        dense,
        plan,
        flops_ratio: ratio,
        budget,
    }
}

impl Proposal {
    /// Whether the plan reaches the budget.
    pub fn budget_met(&self) -> bool {
        self.flops_ratio <= self.budget
    }

    /// The proposal as a sparsity config for `model`: one `[[mlp]]` / `[[self_attn]]` entry per
    /// ratio used, with the estimator `rank` and `selection` the sweep measured with.
    pub fn to_config(&self, model: &str, rank: usize, selection: SelectionMode) -> SparsityConfig {
        let entries = |block: Block| -> Vec<BlockSparsity> {
            let mut by_ratio: Vec<(f64, Vec<usize>)> = Vec::new();
            for row in self.chosen.iter().filter(|r| r.block == block) {
                match by_ratio.iter_mut().find(|(r, _)| *r == row.ratio) {
                    Some((_, layers)) => layers.push(row.layer),
                    None => by_ratio.push((row.ratio, vec![row.layer])),
                }
            }
            by_ratio.sort_by(|a, b| a.0.total_cmp(&b.0));
            by_ratio
                .into_iter()
                .map(|(sparsity, layers)| BlockSparsity {
                    layers: LayerSet::new(layers),
                    sparsity,
                })
                .collect()
        };
        SparsityConfig {
            model: Some(model.to_owned()),
            estimator_rank: rank,
            mode: selection,
            mlp: entries(Block::Mlp),
            self_attn: entries(Block::Attn),
            ..SparsityConfig::default()
        }
    }

    /// The comment block at the top of proposed.toml: the rule, the swept blocks' `largest`
    /// ratios, the data it came from (`source`) and the step shape of the FLOPs (`tokens`).
    pub fn toml_header(
        &self,
        largest: &[(Block, f64)],
        source: &str,
        tokens: &StepTokens,
    ) -> String {
        let largest: Vec<String> = largest
            .iter()
            .map(|(b, r)| format!("{} {r}", b.name()))
            .collect();
        let mut h = String::new();
        let _ = writeln!(h, "# Proposed by `cargo xtask sensitivity` from {source}.");
        let _ = writeln!(
        h,
        "# Rule: each swept (layer, block) was made sparse alone, at its block's largest ratio \
         ({}),\n# and the rise of the held-out loss measured (sensitivity.csv). Blocks were then \
         made sparse in\n# increasing order of that rise (least sensitive first; ties: deeper \
         layer first) until the\n# analytic FLOPs of a training step (sparselora::flops; {} \
         sequences x {} tokens, {} answer tokens\n# each, on the dense path) fell to the budget \
         of {:.3} of dense LoRA. The most sensitive blocks\n# stay dense; layers not swept stay \
         dense.",
        largest.join(", "),
        tokens.sequences,
        tokens.seq_len,
        tokens.answer_tokens / tokens.sequences.max(1),
        self.budget
    );
        let _ = writeln!(
            h,
            "# Result: {} blocks sparse, FLOPs {:.3} of dense LoRA ({}).",
            self.chosen.len(),
            self.flops_ratio,
            if self.budget_met() {
                "budget met"
            } else {
                "budget NOT met: every candidate is sparse"
            }
        );
        let describe =
            |r: &Measurement| format!("layer {} {} ({:+.4})", r.layer, r.block.name(), r.delta);
        if let Some(last) = self.chosen.last() {
            let _ = writeln!(h, "# Most sensitive block made sparse: {}.", describe(last));
        }
        if let Some(first) = self.dense.first() {
            let _ = writeln!(
                h,
                "# Least sensitive block left dense: {}.",
                describe(first)
            );
        }
        h
    }
}

/// A held-out batch on the device, with its answer tokens on the dense path.
#[derive(Debug, Clone)]
pub struct HeldOutBatch<B: Backend> {
    /// `[batch, seq]` token ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq]`, `false` on padding.
    pub attention_mask: Tensor<B, 2, Bool>,
    /// The positions and tokens the loss takes (the answer tokens).
    pub loss_targets: LossTargets<B>,
    /// The answer tokens, on the dense path as in training.
    pub split: TokenSplit<B>,
}

/// The held-out loss: training's answer-token loss, averaged over every answer token of the
/// batches (each batch's mean weighted by its answer tokens). `selector`: the sparse forward
/// with answer tokens dense; `None`: the dense model.
pub fn held_out_loss<B: Backend>(
    model: &LlamaForCausalLM<B>,
    batches: &[HeldOutBatch<B>],
    selector: Option<&dyn ChannelSelector<B>>,
) -> f64 {
    let (mut sum, mut count) = (0.0, 0usize);
    for batch in batches {
        let (ids, mask) = (batch.input_ids.clone(), batch.attention_mask.clone());
        let hidden = match selector {
            Some(selector) => {
                let sparse = SparseForward {
                    selector,
                    split: Some(batch.split.clone()),
                    drop_sliced_input_grad: false,
                };
                model.forward_hidden_sparse(ids, mask, &sparse)
            }
            None => model.forward_hidden(ids, mask),
        };
        let loss = llama_burn::loss::causal_lm_loss_at_targets(model, hidden, &batch.loss_targets);
        let value: f64 = loss.into_scalar().elem();
        let n = batch.loss_targets.count;
        sum += value * n as f64;
        count += n;
    }
    if count == 0 {
        f64::NAN
    } else {
        sum / count as f64
    }
}

/// Why a sweep cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A swept layer or ratio the model cannot take.
    #[error(transparent)]
    Plan(#[from] SparsityPlanError),
    /// A selector cannot be built (uneven GQA groups, factors that do not fit).
    #[error(transparent)]
    Selector(#[from] SelectorError),
}

/// What one sweep measures: each of `layers` with each block at each of its ratios.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPlan {
    /// Each swept block with its ratios (ascending, distinct).
    pub blocks: Vec<(Block, Vec<f64>)>,
    /// The swept layers, 0-based.
    pub layers: Vec<usize>,
}

impl SweepPlan {
    /// The number of measurements.
    pub fn len(&self) -> usize {
        self.layers.len() * self.blocks.iter().map(|(_, r)| r.len()).sum::<usize>()
    }

    /// Whether nothing is measured.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The plan whose factors the sweep reads: every swept block of every swept layer sparse
    /// (at its smallest ratio), for a model of `num_layers` layers.
    ///
    /// # Errors
    /// A swept layer past the model's last, or a ratio out of range.
    pub fn factor_plan(&self, num_layers: usize) -> Result<SparsityPlan, SparsityPlanError> {
        let mut needs = SparsityPlan::dense(num_layers);
        for &layer in &self.layers {
            for (block, ratios) in &self.blocks {
                if let Some(&ratio) = ratios.first() {
                    needs.set(layer, *block, ratio)?;
                }
            }
        }
        Ok(needs)
    }

    /// Each block with its largest ratio (the one [`propose`] uses).
    pub fn largest_ratios(&self) -> Vec<(Block, f64)> {
        self.blocks
            .iter()
            .filter_map(|(b, r)| r.last().map(|&r| (*b, r)))
            .collect()
    }
}

/// Measures every `(layer, block, ratio)` of `sweep` against the dense `baseline` loss, layer by
/// layer, with channels chosen under `options` from `factors` (which must cover
/// [`SweepPlan::factor_plan`] in estimated mode). `on_measured` sees each measurement as it
/// comes (for progress output).
///
/// # Errors
/// A swept layer or ratio the model cannot take, or a selector that cannot be built.
pub fn measure<B: Backend>(
    model: &LlamaForCausalLM<B>,
    batches: &[HeldOutBatch<B>],
    factors: &SvdCache<B>,
    options: SelectorOptions,
    sweep: &SweepPlan,
    baseline: f64,
    mut on_measured: impl FnMut(&Measurement),
) -> Result<Vec<Measurement>, SweepError> {
    let num_layers = model.config.num_hidden_layers;
    let mut rows = Vec::with_capacity(sweep.len());
    for &layer in &sweep.layers {
        for (block, ratios) in &sweep.blocks {
            for &ratio in ratios {
                let mut plan = SparsityPlan::dense(num_layers);
                plan.set(layer, *block, ratio)?;
                let selector = SvdChannelSelector::new(factors, plan, &model.config, options)?;
                let loss = held_out_loss(model, batches, Some(&selector));
                let row = Measurement {
                    layer,
                    block: *block,
                    ratio,
                    loss,
                    delta: loss - baseline,
                };
                on_measured(&row);
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measurement(layer: usize, block: Block, ratio: f64, delta: f64) -> Measurement {
        Measurement {
            layer,
            block,
            ratio,
            loss: 2.0 + delta,
            delta,
        }
    }

    /// 4 layers; MLP swept at 0.5 and 0.9, attention at 0.5.
    fn table() -> Vec<Measurement> {
        use Block::{Attn, Mlp};
        vec![
            measurement(0, Mlp, 0.5, 0.30),
            measurement(0, Mlp, 0.9, 2.00),
            measurement(0, Attn, 0.5, 0.50),
            measurement(1, Mlp, 0.5, 0.01),
            measurement(1, Mlp, 0.9, 0.20),
            measurement(1, Attn, 0.5, 0.05),
            measurement(2, Mlp, 0.5, 0.00),
            measurement(2, Mlp, 0.9, 0.02),
            measurement(2, Attn, 0.5, f64::NAN),
            measurement(3, Mlp, 0.5, -0.01),
            measurement(3, Mlp, 0.9, 0.02),
            measurement(3, Attn, 0.5, 0.10),
        ]
    }

    /// Each sparse MLP saves 0.1 of the FLOPs, each sparse attention 0.05.
    fn toy_flops(plan: &SparsityPlan) -> f64 {
        let mut f = 1.0;
        for l in 0..plan.num_layers() {
            if plan.ratio(l, Block::Mlp) > 0.0 {
                f -= 0.1;
            }
            if plan.ratio(l, Block::Attn) > 0.0 {
                f -= 0.05;
            }
        }
        f
    }

    #[test]
    fn proposal_makes_the_least_sensitive_blocks_sparse_first() {
        let p = propose(&table(), 4, 0.76, toy_flops);
        // At MLP 0.9: layer 3 (0.02) before layer 2 (0.02, tie: deeper first), then layer 1
        // attention (0.05) ... until 0.76 is reached: 1 - 0.1 - 0.1 - 0.05 = 0.75.
        let order: Vec<(usize, Block)> = p.chosen.iter().map(|r| (r.layer, r.block)).collect();
        assert_eq!(
            order,
            vec![(3, Block::Mlp), (2, Block::Mlp), (1, Block::Attn)]
        );
        assert!((p.flops_ratio - 0.75).abs() < 1e-12);
        assert!(p.budget_met());
        assert_eq!(p.plan.ratio(3, Block::Mlp), 0.9);
        assert_eq!(p.plan.ratio(1, Block::Attn), 0.5);
        assert_eq!(p.plan.ratio(0, Block::Mlp), 0.0);
        // Left dense, least sensitive first; the non-finite layer-2 attention is no candidate.
        let dense: Vec<(usize, Block)> = p.dense.iter().map(|r| (r.layer, r.block)).collect();
        assert_eq!(
            dense,
            vec![
                (3, Block::Attn),
                (1, Block::Mlp),
                (0, Block::Attn),
                (0, Block::Mlp)
            ]
        );
        let config = p.to_config("toy", 8, SelectionMode::Estimated);
        let text = config.to_toml_string();
        let back = SparsityConfig::from_toml_str(&text).unwrap();
        assert_eq!(back.plan(4).unwrap(), p.plan);
        assert_eq!(back.mlp.len(), 1);
        assert_eq!(back.mlp[0].layers.to_string(), "2-3");
        assert_eq!(back.self_attn[0].layers.to_string(), "1");
    }

    #[test]
    fn proposal_edge_cases() {
        // A budget the dense model meets: nothing sparse.
        let p = propose(&table(), 4, 1.0, toy_flops);
        assert!(p.chosen.is_empty() && p.budget_met());
        assert!(p
            .to_config("toy", 8, SelectionMode::Oracle)
            .plan(4)
            .unwrap()
            .is_dense());
        // An unreachable budget: every finite candidate sparse, reported as not met.
        let p = propose(&table(), 4, 0.1, toy_flops);
        assert_eq!(p.chosen.len(), 7);
        assert!(!p.budget_met());
        assert!((p.flops_ratio - (1.0 - 0.4 - 0.15)).abs() < 1e-12);
        // A block whose sparsity saves nothing stays dense.
        let no_attn_saving = |plan: &SparsityPlan| {
            1.0 - 0.1
                * (0..plan.num_layers())
                    .filter(|&l| plan.ratio(l, Block::Mlp) > 0.0)
                    .count() as f64
        };
        let p = propose(&table(), 4, 0.1, no_attn_saving);
        assert!(p.chosen.iter().all(|r| r.block == Block::Mlp));
        assert_eq!(p.chosen.len(), 4);
        let header = p.toml_header(
            &[(Block::Mlp, 0.9)],
            "a test",
            &StepTokens::synthetic(2, 10, 3),
        );
        assert!(header.contains("budget NOT met") && header.contains("mlp 0.9"));
        assert!(header.lines().all(|l| l.starts_with('#')), "{header}");
    }
}
