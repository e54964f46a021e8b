//! The example end to end: a seeded [`TinyGpt`], LoRA on every linear layer, optionally
//! SparseLoRA (a sparsity config, SVD factors of the frozen weights, the selector), and
//! `trainer::train` on the counting task.

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use lora::{LoraConfig, LoraError, TargetModules};
use sparselora::{SparsityConfig, SparsityConfigError};
use svd_estimator::{SelectorError, SelectorOptions, SvdCache, SvdChannelSelector};
use trainer::metrics::StepMetrics;
use trainer::{
    CollateConfig, ExampleBatches, RunOptions, SparseTraining, StepObserver, TrainConfig,
    TrainError,
};

use crate::counting::{ChannelCounter, ChannelCounts};
use crate::data::counting_examples;
use crate::model::{TinyGpt, TinyGptConfig};

/// The example's SparseLoRA config, in the format of `configs/sparsity/` (docs/sparsity.md):
/// block 0 dense, block 1's MLP at 50% and its attention at 25%, the first 10% of the steps
/// dense, answer tokens dense.
pub const SPARSITY_TOML: &str = r#"
start_step = 0.1
dense_answer_tokens = true

[[mlp]]
layers = "1"
sparsity = 0.5

[[self_attn]]
layers = "1"
sparsity = 0.25
"#;

/// The model the example fine-tunes: 2 blocks of width 32, 4 heads, MLP width 64, 32 tokens.
pub fn model_config() -> TinyGptConfig {
    TinyGptConfig::new(32, 32, 2, 4, 64)
}

/// How to run the example.
#[derive(Debug, Clone)]
pub struct FineTune {
    /// Optimizer steps.
    pub steps: usize,
    /// Seed of the model, the adapters, the data order and dropout.
    pub seed: u64,
    /// Checkpoints and `metrics.jsonl` go here.
    pub out: PathBuf,
    /// SparseLoRA's config; `None` trains plain LoRA.
    pub sparsity: Option<SparsityConfig>,
    /// Print each step's loss.
    pub verbose: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The loss of every optimizer step.
    pub losses: Vec<f64>,
    /// Which steps ran sparse.
    pub sparse: Vec<bool>,
    /// The channels the sparse steps computed (SparseLoRA runs).
    pub channels: Option<ChannelCounts>,
}

/// Why the example failed.
#[derive(Debug, thiserror::Error)]
pub enum FineTuneError {
    /// Adding LoRA.
    #[error(transparent)]
    Lora(#[from] LoraError),
    /// The sparsity config does not fit the model.
    #[error(transparent)]
    Sparsity(#[from] SparsityConfigError),
    /// The selector could not be built.
    #[error(transparent)]
    Selector(#[from] SelectorError),
    /// Training stopped.
    #[error(transparent)]
    Train(#[from] TrainError),
}

/// Collects (and optionally prints) each step's loss.
struct StepLog {
    report: Report,
    verbose: bool,
}

impl StepObserver for StepLog {
    fn on_step(&mut self, m: &StepMetrics, total_steps: usize) {
        self.report.losses.push(m.loss);
        self.report.sparse.push(m.sparse);
        if self.verbose {
            let path = if m.sparse { "sparse" } else { "dense" };
            println!(
                "step {:>3}/{total_steps}  loss {:.4}  ({path})",
                m.step, m.loss
            );
        }
    }
}

impl FineTune {
    /// Plain LoRA for `steps` steps, seed 42, writing under `out`.
    pub fn new(steps: usize, out: impl Into<PathBuf>) -> Self {
        Self {
            steps,
            seed: 42,
            out: out.into(),
            sparsity: None,
            verbose: false,
        }
    }

    /// SparseLoRA with `config`.
    pub fn with_sparsity(mut self, config: SparsityConfig) -> Self {
        self.sparsity = Some(config);
        self
    }

    /// Printing each step.
    pub fn with_verbose(mut self, verbose: bool) -> Self {
        self.verbose = verbose;
        self
    }

    /// The LoRA hyper-parameters: rank 8, alpha 16, every linear layer but the output head.
    pub fn lora_config() -> LoraConfig {
        LoraConfig::new()
            .with_r(8)
            .with_alpha(16.0)
            .with_targets(TargetModules::AllLinear)
    }

    /// The model with fresh adapters, as every run starts: seeded, so LoRA and SparseLoRA runs
    /// start from the same weights.
    ///
    /// # Errors
    /// An invalid LoRA config.
    pub fn initial_model<B: AutodiffBackend>(
        &self,
        device: &B::Device,
    ) -> Result<TinyGpt<B>, LoraError> {
        B::seed(device, self.seed);
        model_config()
            .init::<B>(device)
            .with_lora(&Self::lora_config(), device)
    }

    /// Trains; returns the trained model and what happened.
    ///
    /// # Errors
    /// See [`FineTuneError`].
    pub fn run<B: AutodiffBackend>(
        &self,
        device: &B::Device,
    ) -> Result<(TinyGpt<B>, Report), FineTuneError> {
        let model = self.initial_model::<B>(device)?;
        let config = model.config.clone();
        let examples = counting_examples(64, config.vocab_size, 6);
        let data = ExampleBatches::new(examples, 8, self.seed, CollateConfig::new(0));
        let train_config = TrainConfig {
            learning_rate: 3e-2,
            epochs: 0,
            max_steps: Some(self.steps),
            batch_size: 8,
            micro_batch_size: None,
            max_seq_len: config.max_seq_len,
            warmup_ratio: 0.0,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            adam_epsilon: 1e-8,
            seed: self.seed,
            save_every: self.steps,
            keep_checkpoints: 1,
        };
        let run = RunOptions {
            out: self.out.clone(),
            resume: false,
            stop_after: None,
            base_model_name: "tiny-gpt-example".into(),
        };
        let mut log = StepLog {
            report: Report {
                losses: Vec::new(),
                sparse: Vec::new(),
                channels: None,
            },
            verbose: self.verbose,
        };
        let Some(sparsity) = &self.sparsity else {
            let (model, _) =
                trainer::train(model, &data, &train_config, &run, None, &mut log, device)?;
            return Ok((model, log.report));
        };

        // SparseLoRA: the plan for this model's depth, the estimator's factors of the frozen
        // weights (the adapters do not change them), and the selector the model will call.
        let plan = sparsity.plan(config.n_layers)?;
        let cache = SvdCache::from_weights(model.estimator_weights(), sparsity.estimator_rank);
        let options = SelectorOptions::default()
            .with_mode(sparsity.mode)
            .with_reference_compat(sparsity.reference_compat)
            .with_seed(self.seed);
        let selector = SvdChannelSelector::new(&cache, plan, &config, options)?;
        let counter = ChannelCounter::new(&selector);
        let sparse = SparseTraining {
            selector: &counter,
            start_step: sparsity.start_step,
            dense_answer_tokens: sparsity.dense_answer_tokens,
            sparse_answer_fraction: sparsity.sparse_answer_fraction,
            drop_sliced_input_grad: sparsity.reference_compat,
            flops: None,
        };
        let (model, _) = trainer::train(
            model,
            &data,
            &train_config,
            &run,
            Some(&sparse),
            &mut log,
            device,
        )?;
        log.report.channels = Some(counter.counts());
        Ok((model, log.report))
    }
}
