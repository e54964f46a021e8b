//! `cargo xtask finetune`: LoRA fine-tuning. With no arguments it runs the embedded default: the
//! `tiny` model on the shipped commonsense sample, on the CPU, then evaluates the adapter.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::DType;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use llama_burn::{LlamaConfig, LlamaForCausalLM, LlamaProjection, LlamaTokenizer};
use lora::sparse::Block;
use lora::LoraConfig;
use sparselora::{FactorCache, FactorOrigin, SetupError, SparseSetup, SparsityConfig};
use trainer::checkpoint::TrainState;
use trainer::metrics::StepMetrics;
use trainer::sparse_step::SparseTraining;
use trainer::{
    check_examples, load_records, tokenize_records, CollateConfig, ExampleBatches, RunOptions,
    StepObserver, Task, TaskAccuracy, TokenizeConfig, TrainConfig,
};

use crate::backend::TrainJob;
use crate::eval::{print_before_after, print_table, run_eval, EvalArgs};
use crate::model_args::{ModelArgs, TINY};
use crate::model_source::ModelSource;

/// Fine-tune with LoRA, or with SparseLoRA given `--sparsity`.
#[derive(Args, Debug, Clone)]
#[command(mut_arg("model", |a| a.default_value(TINY)))]
pub struct Finetune {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Training task: `csr170k` (response = answer) or `math10k` (response = output).
    #[arg(long, default_value = "csr170k")]
    pub task: String,
    /// Training data (LLM-Adapters JSON or JSONL); default: the shipped sample of the task.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Training hyper-parameters (TOML, see configs/train/).
    #[arg(long, default_value = "configs/train/tiny-default.toml")]
    pub config: PathBuf,
    /// Override the config's step count.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Sequences per forward pass (the config's batch is reached by accumulation).
    #[arg(long)]
    pub micro_batch_size: Option<usize>,
    /// Output folder: checkpoints, metrics.jsonl, the final adapter, eval results.
    #[arg(long, default_value = "runs/tiny-csr170k")]
    pub output: PathBuf,
    /// Continue from the newest checkpoint in --output.
    #[arg(long)]
    pub resume: bool,
    /// Plain LoRA, the same code path without sparsity (the default when no --sparsity is given).
    #[arg(long, conflicts_with = "sparsity")]
    pub dense: bool,
    /// SparseLoRA: a sparsity config (TOML, see configs/sparsity/ and docs/sparsity.md).
    #[arg(long)]
    pub sparsity: Option<PathBuf>,
    /// LoRA targets, comma-separated (q,k,v,o,gate,up,down).
    #[arg(long, default_value = "q,k,v,o")]
    pub lora_targets: String,
    /// LoRA rank.
    #[arg(long, default_value_t = 32)]
    pub lora_rank: usize,
    /// LoRA alpha (scale = alpha / rank).
    #[arg(long, default_value_t = 64.0)]
    pub lora_alpha: f64,
    /// Evaluate after training on these tasks (comma-separated; `none` to skip).
    #[arg(long, default_value = "boolq,ARC-Easy")]
    pub eval_tasks: String,
    /// Records per evaluation task (from the shipped samples unless --eval-data-dir).
    #[arg(long, default_value_t = 20)]
    pub eval_limit: usize,
    /// LLM-Adapters data root with the full evaluation sets; default: the shipped samples.
    #[arg(long)]
    pub eval_data_dir: Option<PathBuf>,
    /// Pad each batch's length up to a multiple of this (fewer distinct shapes for JIT backends).
    #[arg(long, default_value_t = 1)]
    pub pad_to_multiple_of: usize,
    /// Prompts generated together during evaluation.
    #[arg(long, default_value_t = 16)]
    pub eval_batch_size: usize,
    /// Evaluate the base model too, before training, for the closing before/after table
    /// (`--eval-before false` skips it).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub eval_before: bool,
    /// Stop after this many steps as if killed (testing resumption).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

impl Finetune {
    pub fn run(self) -> anyhow::Result<()> {
        self.model.clone().dispatch_autodiff(FinetuneJob(self))
    }

    /// `--task`, which must be a training set.
    fn task(&self) -> anyhow::Result<Task> {
        let task: Task = self
            .task
            .parse()
            .map_err(|e| anyhow::anyhow!("--task: {e}"))?;
        if !task.is_training() {
            bail!("--task {task} is an evaluation set; train on csr170k or math10k");
        }
        Ok(task)
    }

    /// `--config` with `--max-steps` and `--micro-batch-size` applied.
    fn train_config(&self) -> anyhow::Result<TrainConfig> {
        let mut config = TrainConfig::from_toml_file(&crate::repo::shipped(&self.config))?;
        if let Some(steps) = self.max_steps {
            config.max_steps = Some(steps);
        }
        if let Some(mb) = self.micro_batch_size {
            config.micro_batch_size = Some(mb);
            config.validate()?;
        }
        Ok(config)
    }

    fn lora_config(&self) -> anyhow::Result<LoraConfig> {
        // LLaMA's short names (`q`, ..., `down`) become LoRA's module names (`q_proj`, ...).
        let targets = LlamaProjection::parse_list(&self.lora_targets)
            .map_err(|e| anyhow::anyhow!("--lora-targets: {e}"))?;
        let config = LoraConfig {
            r: self.lora_rank,
            alpha: self.lora_alpha,
            targets: LlamaProjection::target_modules(&targets),
            ..LoraConfig::default()
        };
        config.validate().context("LoRA config")?;
        Ok(config)
    }

    /// `--data`, or the task's shipped sample.
    fn data_path(&self, task: Task) -> anyhow::Result<PathBuf> {
        Ok(match &self.data {
            Some(p) => crate::repo::shipped(p),
            None => crate::repo::shipped(
                Path::new("datasets")
                    .join(task.sample_file().context("task has no shipped sample")?),
            ),
        })
    }

    /// With `--sparsity`: SparseLoRA set up for `base`, its estimator factors cached next to the
    /// checkpoint's weights (in memory for `tiny`).
    fn setup_sparsity<B: Backend>(
        &self,
        base: &LlamaForCausalLM<B>,
        source: Option<&ModelSource>,
        seed: u64,
    ) -> anyhow::Result<Option<SparseSetup<B>>> {
        let Some(path) = &self.sparsity else {
            return Ok(None);
        };
        let cache = |rank| match source {
            Some(source) => source.factor_cache(rank),
            None => Ok(FactorCache::InMemory),
        };
        Ok(Some(sparse_setup(
            path,
            base,
            &self.model.name,
            seed,
            cache,
        )?))
    }

    /// The run in one line: model, backend, dtype, LoRA and mode.
    fn describe(&self, dtype: DType, lora: &LoraConfig) -> String {
        let mode = match &self.sparsity {
            Some(path) => format!("SparseLoRA ({})", path.display()),
            None => "dense LoRA".into(),
        };
        format!(
            "model {} ({:?}, {dtype:?}) | LoRA r={} alpha={} on {} | {mode} mode",
            self.model.name, self.model.backend, lora.r, lora.alpha, self.lora_targets,
        )
    }

    /// What to evaluate after training (and before, with `--eval-before`).
    fn eval_args(&self) -> EvalArgs {
        EvalArgs {
            tasks: self.eval_tasks.clone(),
            limit: Some(self.eval_limit),
            data_dir: self.eval_data_dir.clone(),
            batch_size: self.eval_batch_size,
            prompt_seam: trainer::PromptSeam::default(),
        }
    }
}

struct FinetuneJob(Finetune);

struct Progress(ProgressBar);

impl StepObserver for Progress {
    fn on_step(&mut self, m: &StepMetrics, total: usize) {
        self.0.set_length(total as u64);
        self.0.set_position(m.step as u64);
        self.0.set_message(format!(
            "loss {:.4}  lr {:.2e}  |g| {:.3}  {:.0} tok/s",
            m.loss, m.lr, m.grad_norm, m.tokens_per_s
        ));
        if m.step == 1 || m.step.is_multiple_of(10) || m.step == total {
            // Sparse steps: analytic FLOPs relative to dense LoRA, and the channel selection's
            // share of the step's wall-clock time.
            let estimator = m.estimator_s.map_or(String::new(), |s| {
                format!(
                    ", estimator {:.1}% of step",
                    100.0 * s / m.step_time_s.max(1e-9)
                )
            });
            let sparse = match m.flops_ratio {
                Some(ratio) if m.sparse => {
                    format!("  sparse: FLOPs x{ratio:.2} of dense{estimator}")
                }
                Some(_) => "  dense start".into(),
                None => String::new(),
            };
            let line = format!(
                "step {:>6}/{total}  loss {:.4}  lr {:.3e}  grad-norm {:.3}  {:.0} tok/s  {:.2} s{sparse}",
                m.step, m.loss, m.lr, m.grad_norm, m.tokens_per_s, m.step_time_s
            );
            if self.0.is_hidden() {
                // No terminal (a log file, CI): the bar draws nothing, so print the line itself.
                eprintln!("{line}");
            } else {
                self.0.println(line);
            }
        }
    }
}

impl TrainJob for FinetuneJob {
    fn run<B: AutodiffBackend>(self, device: B::Device, dtype: DType) -> anyhow::Result<()> {
        let args = self.0;
        let task = args.task()?;
        let config = args.train_config()?;
        let lora_config = args.lora_config()?;
        let data_path = args.data_path(task)?;
        let base_model = args.model.resolve()?;
        let tokenizer = base_model.tokenizer()?;
        let base = base_model.load::<B>(&tokenizer, dtype, config.seed, &device)?;
        let data = training_batches(&args, task, &data_path, &config, &tokenizer, &base.config)?;
        let examples = data.examples().len();
        eprintln!(
            "{examples} examples from {} | {}",
            data_path.display(),
            args.describe(dtype, &lora_config)
        );
        let eval = args.eval_args();
        let before = evaluate_before(&args, &base, &tokenizer, &eval)?;
        let sparsity = args.setup_sparsity(&base, base_model.source(), config.seed)?;
        B::seed(&device, config.seed);
        let model_config = base.config.clone();
        let model = base.with_lora(&lora_config, &device);
        let sparse_training = sparsity
            .as_ref()
            .map(|setup| SparseTraining::from_setup(setup, &model_config, &lora_config));
        let started = Instant::now();
        let (model, state) = train_with_progress(&args, model, &data, &config, sparse_training)?;
        report_training(&args, &model, &state, task, started)?;
        if args.stop_after.is_some() && state.step < state.total_steps {
            eprintln!("stopped early (--stop-after); continue with --resume");
            return Ok(());
        }
        if args.eval_tasks != "none" {
            evaluate_after(&args, &model.valid(), &tokenizer, &eval, before.as_deref())?;
        }
        Ok(())
    }
}

/// The training examples, tokenized, checked against the model, and batched (shuffled from the
/// config's seed); warns about examples whose answer truncation removes.
fn training_batches(
    args: &Finetune,
    task: Task,
    data_path: &Path,
    config: &TrainConfig,
    tokenizer: &LlamaTokenizer,
    model: &LlamaConfig,
) -> anyhow::Result<ExampleBatches> {
    let eos = model.eos_ids().first().copied().unwrap_or(0);
    let records = load_records(data_path)?;
    let tokenize = TokenizeConfig::new(eos).with_cutoff_len(config.max_seq_len.min(256));
    let examples = tokenize_records(tokenizer, &records, task.response_field(), &tokenize)?;
    let answerless = check_examples(&examples, model.vocab_size, tokenize.cutoff_len)
        .with_context(|| format!("training data {}", data_path.display()))?;
    if answerless > 0 {
        eprintln!(
            "warning: {answerless} of {} examples lose their whole answer to truncation at {} \
             tokens and contribute nothing",
            examples.len(),
            tokenize.cutoff_len
        );
    }
    let collate =
        CollateConfig::new(model.pad_id()).with_pad_to_multiple_of(args.pad_to_multiple_of.max(1));
    Ok(ExampleBatches::new(
        examples,
        config.micro_batch(),
        config.seed,
        collate,
    ))
}

/// With `--eval-before` and tasks to evaluate: the base model's accuracy, also written to
/// `eval-before.json`.
fn evaluate_before<B: AutodiffBackend>(
    args: &Finetune,
    base: &LlamaForCausalLM<B>,
    tokenizer: &LlamaTokenizer,
    eval: &EvalArgs,
) -> anyhow::Result<Option<Vec<TaskAccuracy>>> {
    if !args.eval_before || args.eval_tasks == "none" {
        return Ok(None);
    }
    eprintln!("evaluating the base model before training");
    let results = run_eval(&base.valid(), tokenizer, eval)?;
    std::fs::create_dir_all(&args.output)?;
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(args.output.join("eval-before.json"), json)?;
    Ok(Some(results))
}

/// The trained model's accuracy, beside the base model's when it was evaluated, also written to
/// `eval.json`.
fn evaluate_after<B: Backend>(
    args: &Finetune,
    model: &LlamaForCausalLM<B>,
    tokenizer: &LlamaTokenizer,
    eval: &EvalArgs,
    before: Option<&[TaskAccuracy]>,
) -> anyhow::Result<()> {
    let results = run_eval(model, tokenizer, eval)?;
    match before {
        Some(before) => print_before_after(before, &results),
        None => print_table(&results),
    }
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(args.output.join("eval.json"), json)?;
    Ok(())
}

/// `trainer::train` into `--output`, with a progress bar.
fn train_with_progress<B: AutodiffBackend>(
    args: &Finetune,
    model: LlamaForCausalLM<B>,
    data: &ExampleBatches,
    config: &TrainConfig,
    sparse: Option<SparseTraining<'_, B>>,
) -> anyhow::Result<(LlamaForCausalLM<B>, TrainState)> {
    let run = RunOptions {
        out: args.output.clone(),
        resume: args.resume,
        stop_after: args.stop_after,
        base_model_name: args.model.name.clone(),
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .expect("valid template"),
    );
    let device = model.device();
    let trained = trainer::train(
        model,
        data,
        config,
        &run,
        sparse.as_ref(),
        &mut Progress(bar.clone()),
        &device,
    )?;
    bar.finish_and_clear();
    Ok(trained)
}

/// Saves the adapter into `--output/adapter`, says how long the training since `started` took,
/// and draws the loss curve (`loss.png`).
fn report_training<B: AutodiffBackend>(
    args: &Finetune,
    model: &LlamaForCausalLM<B>,
    state: &TrainState,
    task: Task,
    started: Instant,
) -> anyhow::Result<()> {
    let adapter_dir = args.output.join("adapter");
    model.save_peft_adapter(&adapter_dir, &args.model.name)?;
    eprintln!(
        "trained {} steps in {:.1} s; final loss {:.4}; adapter saved to {}",
        state.step,
        started.elapsed().as_secs_f64(),
        state.last_loss,
        adapter_dir.display()
    );
    let metrics = trainer::metrics::MetricsLog::read(&args.output.join("metrics.jsonl"))?;
    let plot = args.output.join("loss.png");
    let title = format!("LoRA on {} ({})", args.model.name, task.name());
    crate::plot::plot_loss(&metrics, &title, &plot)?;
    eprintln!("loss curve: {}", plot.display());
    Ok(())
}

/// `--sparsity path`: reads the config, warns when it names another model, sets SparseLoRA up
/// for `base` with its factors kept as `cache(rank)` says, and reports what it did.
pub(crate) fn sparse_setup<B: Backend>(
    path: &Path,
    base: &LlamaForCausalLM<B>,
    base_name: &str,
    seed: u64,
    cache: impl FnOnce(usize) -> anyhow::Result<FactorCache>,
) -> anyhow::Result<SparseSetup<B>> {
    let config = SparsityConfig::from_file(&crate::repo::shipped(path))?;
    if let Some(warning) = config.model_warning(base_name) {
        eprintln!("warning: {warning}");
    }
    let cache = cache(config.estimator_rank)?;
    let start = std::time::Instant::now();
    let setup = match SparseSetup::from_config(config, base, &cache, seed) {
        Err(SetupError::Config(e)) => {
            return Err(anyhow::Error::new(e)
                .context(format!("{} does not fit {base_name}", path.display())))
        }
        other => other?,
    };
    report_factors(&setup.factors, setup.config.estimator_rank);
    if let Some((worst, bound)) = setup.unconverged.iter().max_by(|a, b| a.1.total_cmp(b.1)) {
        eprintln!(
            "warning: the estimator factors of {} of {} projections stayed above SPEC 4's {:.0e} (worst {bound:.1e}, {worst}): their spectra are flat at the cut beyond what f32 resolves (random weights always are)",
            setup.unconverged.len(),
            setup.factor_count,
            svd_estimator::FACTOR_TOLERANCE,
        );
    }
    let (plan, config) = (&setup.plan, &setup.config);
    eprintln!(
        "SparseLoRA: {} sparse MLP and {} sparse attention blocks, {} selection{}, dense start {:?} ({:.1} s to set up)",
        (0..plan.num_layers()).filter(|&l| plan.ratio(l, Block::Mlp) > 0.0).count(),
        (0..plan.num_layers()).filter(|&l| plan.ratio(l, Block::Attn) > 0.0).count(),
        config.mode.name(),
        if config.reference_compat { " (reference-compat)" } else { "" },
        config.start_step,
        start.elapsed().as_secs_f64()
    );
    Ok(setup)
}

/// One line on where the estimator's factors came from (nothing when none were needed).
pub(crate) fn report_factors(origin: &FactorOrigin, rank: usize) {
    match origin {
        // The sweep times an in-memory build itself; a run's set-up line gives its time.
        FactorOrigin::NotNeeded | FactorOrigin::InMemory => {}
        FactorOrigin::Reused(path) => {
            eprintln!("SVD factors (rank {rank}): reused {}", path.display())
        }
        FactorOrigin::Built { path, reason } => eprintln!(
            "SVD factors (rank {rank}): built ({reason}), saved to {}",
            path.display()
        ),
        FactorOrigin::Unsaved(error) => {
            eprintln!("warning: {error}; using factors built in memory instead")
        }
    }
}
