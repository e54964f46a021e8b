//! `cargo xtask finetune`: LoRA fine-tuning. With no arguments it runs the embedded default: the
//! `tiny` model on the shipped commonsense sample, on the CPU, then evaluates the adapter.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::DType;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use llama_burn::{LlamaForCausalLM, LlamaProjection};
use lora::sparse::Block;
use lora::LoraConfig;
use sparselora::{FactorCache, FactorOrigin, SetupError, SparseSetup, SparsityConfig};
use trainer::metrics::StepMetrics;
use trainer::sparse_step::SparseTraining;
use trainer::{
    check_examples, load_records, tokenize_records, CollateConfig, ExampleBatches, RunOptions,
    StepObserver, Task, TokenizeConfig, TrainConfig,
};

use crate::backend::{parse_dtype, BackendKind, TrainJob};
use crate::eval::{print_before_after, print_table, run_eval, EvalArgs};
use crate::model_source::{load_base, tokenizer_for};

/// Fine-tune with LoRA, or with SparseLoRA given `--sparsity`.
#[derive(Args, Debug, Clone)]
pub struct Finetune {
    /// `tiny` (random weights, SmolLM2 tokenizer), `smollm2-135m`, a LLaMA preset, an HF folder or a `.gguf`.
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Folder holding HF checkpoints by preset name.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Training task: `csr170k` (response = answer) or `math10k` (response = output).
    #[arg(long, default_value = "csr170k")]
    pub task: String,
    /// Training data (LLM-Adapters JSON or JSONL); default: the shipped sample of the task.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Training hyper-parameters (TOML, see configs/train/).
    #[arg(long, default_value = "configs/train/tiny-default.toml")]
    pub config: PathBuf,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendKind,
    /// Base-weight dtype (adapters are always f32); default bf16 on CUDA, f32 elsewhere.
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<DType>,
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
        let (backend, dtype) = (self.backend, self.dtype);
        backend.dispatch_autodiff(dtype, FinetuneJob(self))
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
        let task: Task = args
            .task
            .parse()
            .map_err(|e| anyhow::anyhow!("--task: {e}"))?;
        if !task.is_training() {
            bail!("--task {task} is an evaluation set; train on csr170k or math10k");
        }
        let mut config = TrainConfig::from_toml_file(&crate::repo::shipped(&args.config))?;
        if let Some(steps) = args.max_steps {
            config.max_steps = Some(steps);
        }
        if let Some(mb) = args.micro_batch_size {
            config.micro_batch_size = Some(mb);
            config.validate()?;
        }
        let lora_config = args.lora_config()?;
        let data_path = match &args.data {
            Some(p) => crate::repo::shipped(p),
            None => crate::repo::shipped(
                Path::new("datasets")
                    .join(task.sample_file().context("task has no shipped sample")?),
            ),
        };
        let tokenizer = tokenizer_for(&args.model, args.model_dir.as_deref())?;
        let (base, source) = load_base::<B>(
            &args.model,
            args.model_dir.as_deref(),
            tokenizer.vocab_size(),
            dtype,
            config.seed,
            &device,
        )?;
        let base_name = args.model.clone();
        let eos = base.config.eos_ids().first().copied().unwrap_or(0);
        let pad = base.config.pad_id();

        let records = load_records(&data_path)?;
        let tokenize = TokenizeConfig::new(eos).with_cutoff_len(config.max_seq_len.min(256));
        let examples = tokenize_records(&tokenizer, &records, task.response_field(), &tokenize)?;
        let answerless = check_examples(&examples, base.config.vocab_size, tokenize.cutoff_len)
            .with_context(|| format!("training data {}", data_path.display()))?;
        if answerless > 0 {
            eprintln!(
                "warning: {answerless} of {} examples lose their whole answer to truncation at {} \
                 tokens and contribute nothing",
                examples.len(),
                tokenize.cutoff_len
            );
        }
        eprintln!(
            "{} examples from {} | model {base_name} ({:?}, {:?}) | LoRA r={} alpha={} on {} | {} mode",
            examples.len(),
            data_path.display(),
            args.backend,
            dtype,
            lora_config.r,
            lora_config.alpha,
            args.lora_targets,
            match &args.sparsity {
                Some(path) => format!("SparseLoRA ({})", path.display()),
                None => "dense LoRA".into(),
            },
        );
        let collate =
            CollateConfig::new(pad).with_pad_to_multiple_of(args.pad_to_multiple_of.max(1));
        let data = ExampleBatches::new(examples, config.micro_batch(), config.seed, collate);
        let eval = EvalArgs {
            tasks: args.eval_tasks.clone(),
            limit: Some(args.eval_limit),
            data_dir: args.eval_data_dir.clone(),
            batch_size: args.eval_batch_size,
            prompt_seam: trainer::PromptSeam::default(),
        };
        let before = if args.eval_before && args.eval_tasks != "none" {
            eprintln!("evaluating the base model before training");
            let results = run_eval(&base.valid(), &tokenizer, &eval)?;
            std::fs::create_dir_all(&args.output)?;
            let json = serde_json::to_string_pretty(&results)?;
            std::fs::write(args.output.join("eval-before.json"), json)?;
            Some(results)
        } else {
            None
        };

        let sparsity = match &args.sparsity {
            Some(path) => Some(sparse_setup(
                path,
                &base,
                &base_name,
                config.seed,
                |rank| match &source {
                    Some(source) => source.factor_cache(rank),
                    None => Ok(FactorCache::InMemory),
                },
            )?),
            None => None,
        };

        B::seed(&device, config.seed);
        let model_config = base.config.clone();
        let model = base.with_lora(&lora_config, &device);
        let sparse_training = sparsity
            .as_ref()
            .map(|setup| SparseTraining::from_setup(setup, &model_config, &lora_config));
        let run = RunOptions {
            out: args.output.clone(),
            resume: args.resume,
            stop_after: args.stop_after,
            base_model_name: base_name,
        };
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .expect("valid template"),
        );
        let start = std::time::Instant::now();
        let (model, state) = trainer::train(
            model,
            &data,
            &config,
            &run,
            sparse_training.as_ref(),
            &mut Progress(bar.clone()),
            &device,
        )?;
        bar.finish_and_clear();
        let adapter_dir = args.output.join("adapter");
        model.save_peft_adapter(&adapter_dir, &run.base_model_name)?;
        eprintln!(
            "trained {} steps in {:.1} s; final loss {:.4}; adapter saved to {}",
            state.step,
            start.elapsed().as_secs_f64(),
            state.last_loss,
            adapter_dir.display()
        );
        let metrics = trainer::metrics::MetricsLog::read(&args.output.join("metrics.jsonl"))?;
        let plot = args.output.join("loss.png");
        let title = format!("LoRA on {} ({})", args.model, task.name());
        crate::plot::plot_loss(&metrics, &title, &plot)?;
        eprintln!("loss curve: {}", plot.display());
        if args.stop_after.is_some() && state.step < state.total_steps {
            eprintln!("stopped early (--stop-after); continue with --resume");
            return Ok(());
        }
        if args.eval_tasks != "none" {
            let model = model.valid();
            let results = run_eval(&model, &tokenizer, &eval)?;
            match &before {
                Some(before) => print_before_after(before, &results),
                None => print_table(&results),
            }
            let json = serde_json::to_string_pretty(&results)?;
            std::fs::write(args.output.join("eval.json"), json)?;
        }
        Ok(())
    }
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
