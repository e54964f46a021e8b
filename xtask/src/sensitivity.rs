//! `cargo xtask sensitivity`: how much the held-out loss rises when one block of one layer runs
//! sparse while the rest of the model stays dense (SPEC 6), and a sparsity config derived from
//! it for a FLOPs budget (SPEC 9). See `docs/sensitivity.md`.
//!
//! The measuring, the proposal rule and the config writer are `sparselora::sensitivity`'s; this
//! command parses the arguments, loads the model and the held-out data, shows progress and
//! writes the reports.
//!
//! Outputs in `--output`: `sensitivity.csv`, `sensitivity.json`, `sensitivity.png` (heat map)
//! and `proposed.toml` (see `sparselora::sensitivity::propose` for the rule).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use burn::tensor::backend::Backend;
use burn::tensor::DType;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use llama_burn::{LlamaConfig, LlamaForCausalLM, LlamaTokenizer};
use lora::sparse::{Block, SparsityPlan, TokenSplit};
use lora::LoraConfig;
use serde_json::json;
use sparselora::flops::{FlopsCounter, StepTokens};
use sparselora::sensitivity::{
    held_out_loss, measure, propose, HeldOutBatch, Measurement, Proposal, SweepPlan,
};
use sparselora::{FactorCache, FactorOrigin, LayerSet, SelectionMode, SparsityConfig};
use svd_estimator::{SelectorOptions, SvdCache};
use trainer::{
    load_records, pad_left, tokenize_records, CollateConfig, PaddedBatch, Task, TokenizeConfig,
};

use crate::backend::BackendJob;
use crate::finetune::report_factors;
use crate::heatmap::{draw_heat_map, HeatMap};
use crate::model_args::{BaseModel, ModelArgs, TINY};
use crate::model_source::ModelSource;

/// Per-layer sensitivity to sparsity: held-out loss with one block sparse at a time, a heat map,
/// and a proposed sparsity config for a FLOPs budget.
#[derive(Args, Debug, Clone)]
#[command(mut_arg("model", |a| a.default_value(TINY)))]
pub struct Sensitivity {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A PEFT adapter folder (e.g. `runs/tiny-csr170k/adapter` from a brief `cargo xtask
    /// finetune`): measure the fine-tuned model. Without it, the base model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Task of the data: `csr170k` (response = answer) or `math10k` (response = output).
    #[arg(long, default_value = "csr170k")]
    pub task: String,
    /// LLM-Adapters JSON or JSONL; default: the task's shipped sample under datasets/ (which
    /// `cargo xtask finetune` also trains on). For a strict held-out set pass a file that was
    /// not trained on.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Held-out records, taken from the END of the data file (all of them if it has fewer).
    #[arg(long, default_value_t = 64)]
    pub held_out: usize,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Pad each batch's length up to a multiple of this (fewer distinct shapes for JIT backends).
    #[arg(long, default_value_t = 8)]
    pub pad_to_multiple_of: usize,
    /// Blocks to sweep, comma-separated: `mlp`, `self_attn`.
    #[arg(long, default_value = "mlp,self_attn")]
    pub blocks: String,
    /// MLP sparsity ratios to try (fraction of intermediate channels dropped), each in (0, 1).
    /// The largest is the one proposed.toml uses.
    #[arg(long, default_value = "0.5,0.9,0.97")]
    pub mlp_ratios: String,
    /// Attention sparsity ratios to try (fraction of q/k/v/o channels dropped), each in (0, 1).
    /// The largest is the one proposed.toml uses.
    #[arg(long, default_value = "0.25,0.5,0.75")]
    pub attn_ratios: String,
    /// One ratio list for both blocks, replacing --mlp-ratios and --attn-ratios.
    #[arg(long)]
    pub ratios: Option<String>,
    /// Layers to sweep: `all`, or 0-based ranges like `0-5,10`. Layers not swept stay dense in
    /// the proposal.
    #[arg(long, default_value = "all")]
    pub layers: String,
    /// Rank of the SVD estimator.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// How channels are chosen: the SVD estimator, the oracle (true activations) or at random.
    #[arg(long, value_enum, default_value = "estimated")]
    pub selection: SelectionMode,
    /// SVD cache file; default: `sparselora-svd-r<rank>.safetensors` next to the weights
    /// (reused when valid, else rebuilt and written). `tiny` builds it in memory unless given.
    #[arg(long)]
    pub svd_cache: Option<PathBuf>,
    /// FLOPs budget of proposed.toml: the analytic FLOPs of a training step, sparse over dense
    /// LoRA (SPEC 9), in (0, 1].
    #[arg(long, default_value_t = 0.7)]
    pub budget: f64,
    /// Seed of `tiny`'s random weights (42 as in configs/train/tiny-default.toml, so that a
    /// tiny adapter from `cargo xtask finetune` fits) and of `--selection random`.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output folder; default `runs/sensitivity-<model>`.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Only redraw the heat map (and print the table) from an earlier run's `sensitivity.json`,
    /// into `sensitivity.png` beside it: e.g. on a machine with fonts, for a run made on a
    /// headless GPU box without them.
    #[arg(long)]
    pub replot: Option<PathBuf>,
}

/// What to sweep, parsed from the arguments before anything is loaded.
#[derive(Debug, Clone, PartialEq)]
struct Sweep {
    /// Each swept block with its ratios (ascending, distinct).
    blocks: Vec<(Block, Vec<f64>)>,
    /// `None`: every layer.
    layers: Option<LayerSet>,
}

/// Parses `--blocks`.
fn parse_blocks(text: &str) -> anyhow::Result<Vec<Block>> {
    let mut blocks = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let block = match name {
            "mlp" => Block::Mlp,
            "self_attn" | "attn" => Block::Attn,
            other => bail!("--blocks: unknown block `{other}` (mlp, self_attn)"),
        };
        if !blocks.contains(&block) {
            blocks.push(block);
        }
    }
    ensure!(
        !blocks.is_empty(),
        "--blocks: no block given (mlp, self_attn)"
    );
    Ok(blocks)
}

/// Parses a ratio list (`--mlp-ratios` ...): each in (0, 1), sorted, repeats removed.
fn parse_ratios(option: &str, text: &str) -> anyhow::Result<Vec<f64>> {
    let mut ratios = Vec::new();
    for part in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ratio: f64 = part
            .parse()
            .map_err(|_| anyhow::anyhow!("{option}: `{part}` is not a number"))?;
        if !(0.0..1.0).contains(&ratio) {
            bail!("{option}: sparsity {part} is outside [0, 1) (the fraction of channels dropped)");
        }
        if ratio == 0.0 {
            bail!("{option}: sparsity 0 keeps the block dense; give ratios in (0, 1)");
        }
        ratios.push(ratio);
    }
    ensure!(!ratios.is_empty(), "{option}: no ratio given");
    ratios.sort_by(f64::total_cmp);
    ratios.dedup();
    Ok(ratios)
}

/// Parses `--layers`: `all` or a layer list.
fn parse_layers(text: &str) -> anyhow::Result<Option<LayerSet>> {
    if text.trim().eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    let set: LayerSet = text.parse().map_err(|e| anyhow::anyhow!("--layers: {e}"))?;
    ensure!(!set.is_empty(), "--layers: no layer given");
    Ok(Some(set))
}

/// The swept layers of a model of `num_layers` layers.
fn resolve_layers(layers: Option<&LayerSet>, num_layers: usize) -> anyhow::Result<Vec<usize>> {
    match layers {
        None => Ok((0..num_layers).collect()),
        Some(set) => {
            if let Some(&bad) = set.layers().iter().find(|&&l| l >= num_layers) {
                bail!(
                    "--layers: layer {bad} is out of range: the model has {num_layers} layers \
                     (0..={})",
                    num_layers.saturating_sub(1)
                );
            }
            Ok(set.layers().to_vec())
        }
    }
}

impl Sensitivity {
    pub fn run(self) -> anyhow::Result<()> {
        if let Some(json) = &self.replot {
            return replot(json);
        }
        let sweep = self.sweep()?;
        ensure!(self.held_out > 0, "--held-out must be at least 1");
        ensure!(self.batch_size > 0, "--batch-size must be at least 1");
        ensure!(self.rank > 0, "--rank must be at least 1");
        ensure!(
            self.budget > 0.0 && self.budget <= 1.0,
            "--budget {} is outside (0, 1]: it is the FLOPs of a sparse step over a dense one",
            self.budget
        );
        self.model.clone().dispatch(Job { args: self, sweep })
    }

    fn sweep(&self) -> anyhow::Result<Sweep> {
        let (mlp, attn) = match &self.ratios {
            Some(both) => (
                parse_ratios("--ratios", both)?,
                parse_ratios("--ratios", both)?,
            ),
            None => (
                parse_ratios("--mlp-ratios", &self.mlp_ratios)?,
                parse_ratios("--attn-ratios", &self.attn_ratios)?,
            ),
        };
        let blocks = parse_blocks(&self.blocks)?
            .into_iter()
            .map(|b| {
                let ratios = match b {
                    Block::Mlp => mlp.clone(),
                    Block::Attn => attn.clone(),
                };
                (b, ratios)
            })
            .collect();
        Ok(Sweep {
            blocks,
            layers: parse_layers(&self.layers)?,
        })
    }

    fn output_dir(&self) -> PathBuf {
        self.output
            .clone()
            .unwrap_or_else(|| default_output(&self.model.name))
    }
}

/// `runs/sensitivity-<model>`, the model's file or folder name when it is a path.
fn default_output(model: &str) -> PathBuf {
    let name = Path::new(model.trim_end_matches('/'))
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| model.to_owned());
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from("runs").join(format!("sensitivity-{name}"))
}

struct Job {
    args: Sensitivity,
    sweep: Sweep,
}

/// The held-out records, tokenised and batched on the device, fixed for the whole sweep.
struct HeldOut<B: Backend> {
    task: Task,
    data_path: PathBuf,
    records: usize,
    answer_tokens: usize,
    batches: Vec<HeldOutBatch<B>>,
    /// The shape of a training step like the held-out batches, for the proposal's FLOPs.
    step_tokens: StepTokens,
}

/// The training data's task and file (`--task`, `--data`).
fn data_file(args: &Sensitivity) -> anyhow::Result<(Task, PathBuf)> {
    let task: Task = args
        .task
        .parse()
        .map_err(|e| anyhow::anyhow!("--task: {e}"))?;
    ensure!(
        task.is_training(),
        "--task {task} is an evaluation set; use csr170k or math10k"
    );
    let data_path = match &args.data {
        Some(p) => crate::repo::shipped(p),
        None => crate::repo::shipped(
            Path::new("datasets").join(
                task.sample_file()
                    .context("the task has no shipped sample")?,
            ),
        ),
    };
    Ok((task, data_path))
}

/// The last `--held-out` records of the data, as batches of `--batch-size` for `config`'s model.
fn held_out<B: Backend>(
    args: &Sensitivity,
    (task, data_path): (Task, PathBuf),
    tokenizer: &LlamaTokenizer,
    config: &LlamaConfig,
    device: &B::Device,
) -> anyhow::Result<HeldOut<B>> {
    let records = load_records(&data_path)?;
    ensure!(
        !records.is_empty(),
        "{} holds no records: nothing to measure the loss on",
        data_path.display()
    );
    let n_held = args.held_out.min(records.len());
    if n_held < args.held_out {
        eprintln!(
            "warning: {} has only {} records; using all of them (--held-out {})",
            data_path.display(),
            records.len(),
            args.held_out
        );
    }
    let held = &records[records.len() - n_held..];
    let eos = config.eos_ids().first().copied().unwrap_or(0);
    let tokenize = TokenizeConfig::new(eos);
    let examples = tokenize_records(tokenizer, held, task.response_field(), &tokenize)?;
    let answer_tokens: usize = examples.iter().map(|e| e.num_targets()).sum();
    ensure!(
        answer_tokens > 0,
        "the {n_held} held-out records have no answer tokens (all cut off?)"
    );
    let collate =
        CollateConfig::new(config.pad_id()).with_pad_to_multiple_of(args.pad_to_multiple_of);
    let padded: Vec<PaddedBatch> = examples
        .chunks(args.batch_size)
        .map(|chunk| pad_left(chunk, &collate))
        .collect::<Result<_, _>>()?;
    let batches = padded
        .iter()
        .map(|p| {
            let t = p.to_tensors::<B>(device);
            HeldOutBatch {
                split: TokenSplit::from_dense_mask(&t.answer_tokens, device),
                input_ids: t.input_ids,
                attention_mask: t.attention_mask,
                loss_targets: t.loss_targets,
            }
        })
        .collect();
    // A training step shaped like the held-out batches.
    let mean_seq = padded.iter().map(|p| p.seq).sum::<usize>() as f64 / padded.len() as f64;
    let mean_answer = answer_tokens as f64 / examples.len() as f64;
    let step_tokens = StepTokens::synthetic(
        args.batch_size,
        mean_seq.round().max(1.0) as usize,
        mean_answer.round().max(1.0) as usize,
    );
    Ok(HeldOut {
        task,
        data_path,
        records: n_held,
        answer_tokens,
        batches,
        step_tokens,
    })
}

/// The model of `--model`, with `--adapter` attached when given, and its LoRA config.
fn load_model<B: Backend>(
    args: &Sensitivity,
    base: &BaseModel,
    tokenizer: &LlamaTokenizer,
    dtype: DType,
    device: &B::Device,
) -> anyhow::Result<(LlamaForCausalLM<B>, LoraConfig, Option<ModelSource>)> {
    let model = base.load::<B>(tokenizer, dtype, args.seed, device)?;
    let source = base.source().cloned();
    let Some(dir) = &args.adapter else {
        return Ok((model, LoraConfig::new(), source));
    };
    let peft =
        lora::load_peft(dir).with_context(|| format!("reading adapter {}", dir.display()))?;
    let lora = peft.config.clone();
    let model = model
        .apply_peft_adapter(peft, device)
        .with_context(|| format!("attaching adapter {}", dir.display()))?;
    Ok((model, lora, source))
}

/// The estimator's factors for every swept block: `--svd-cache`, else next to the checkpoint;
/// `tiny` builds them in memory unless given a file.
fn factors<B: Backend>(
    args: &Sensitivity,
    model: &LlamaForCausalLM<B>,
    source: Option<&ModelSource>,
    plan: &SweepPlan,
    device: &B::Device,
) -> anyhow::Result<SvdCache<B>> {
    let factor_cache = match (&args.svd_cache, source) {
        (Some(path), _) => FactorCache::File {
            path: path.clone(),
            identity: match source {
                Some(s) => s.identity()?,
                None => format!("tiny(seed={},vocab={})", args.seed, model.config.vocab_size),
            },
        },
        (None, Some(s)) => s.factor_cache(args.rank)?,
        (None, None) => FactorCache::InMemory,
    };
    let needs = plan.factor_plan(model.config.num_hidden_layers)?;
    B::seed(device, 0);
    let t = Instant::now();
    let (cache, origin) = factor_cache.load(model, args.rank, args.selection, &needs)?;
    match origin {
        FactorOrigin::InMemory => eprintln!(
            "SVD factors (rank {}) built in memory in {:.1} s",
            args.rank,
            t.elapsed().as_secs_f64()
        ),
        other => report_factors(&other, args.rank),
    }
    Ok(cache)
}

/// The dense baseline, then every swept block alone, with a progress bar; the baseline loss, the
/// measurements and the sweep's seconds.
fn run_sweep<B: Backend>(
    model: &LlamaForCausalLM<B>,
    held: &HeldOut<B>,
    factors: &SvdCache<B>,
    options: SelectorOptions,
    plan: &SweepPlan,
) -> anyhow::Result<(f64, Vec<Measurement>, f64)> {
    let t = Instant::now();
    let baseline = held_out_loss(model, &held.batches, None);
    ensure!(
        baseline.is_finite(),
        "the dense model's held-out loss is {baseline}: nothing to compare against"
    );
    eprintln!(
        "dense held-out loss {baseline:.4} ({:.2} s per pass)",
        t.elapsed().as_secs_f64()
    );
    let total = plan.len();
    let per_layer = total / plan.layers.len().max(1);
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .expect("valid template"),
    );
    let start = Instant::now();
    let mut done = 0;
    let rows = measure(
        model,
        &held.batches,
        factors,
        options,
        plan,
        baseline,
        |row| {
            done += 1;
            bar.inc(1);
            bar.set_message(format!(
                "layer {} {} {}",
                row.layer,
                row.block.name(),
                row.ratio
            ));
            if bar.is_hidden() && done % per_layer.max(1) == 0 {
                // No terminal (a log file): one line per layer instead of the bar.
                eprintln!(
                    "layer {} done ({done} of {total} evaluations, {:.1} s)",
                    row.layer,
                    start.elapsed().as_secs_f64()
                );
            }
        },
    )?;
    bar.finish_and_clear();
    let sweep_s = start.elapsed().as_secs_f64();
    eprintln!("{total} sparse evaluations in {sweep_s:.1} s");
    Ok((baseline, rows, sweep_s))
}

/// The proposal for `--budget` on the analytic FLOPs of a step like the held-out batches, and
/// proposed.toml's text (checked to read back as the proposed plan).
fn proposal(
    args: &Sensitivity,
    config: &LlamaConfig,
    lora: &LoraConfig,
    rows: &[Measurement],
    plan: &SweepPlan,
    tokens: &StepTokens,
    source: &str,
) -> anyhow::Result<(Proposal, String)> {
    let num_layers = config.num_hidden_layers;
    let counter = FlopsCounter {
        selection: args.selection,
        estimator_rank: args.rank,
        ..FlopsCounter::new(config, lora)
    };
    let flops = |plan: &SparsityPlan| counter.step(tokens, Some(plan)).ratio();
    let proposal = propose(rows, num_layers, args.budget, flops);
    let proposed = proposal.to_config(&args.model.name, args.rank, args.selection);
    let toml = format!(
        "{}\n{}",
        proposal.toml_header(&plan.largest_ratios(), source, tokens),
        proposed.to_toml_string()
    );
    // What we write must read back as the same plan.
    let reread = SparsityConfig::from_toml_str(&toml).context("the proposed config")?;
    ensure!(
        reread.plan(num_layers)? == proposal.plan,
        "internal error: proposed.toml does not read back as the proposed plan"
    );
    Ok((proposal, toml))
}

impl BackendJob for Job {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> anyhow::Result<()> {
        let Job { args, sweep } = self;
        let started = Instant::now();
        let data = data_file(&args)?;
        let base = args.model.resolve()?;
        let tokenizer = base.tokenizer()?;
        let (model, lora_config, source) =
            load_model::<B>(&args, &base, &tokenizer, dtype, &device)?;
        let config = model.config.clone();
        let plan = SweepPlan {
            blocks: sweep.blocks.clone(),
            layers: resolve_layers(sweep.layers.as_ref(), config.num_hidden_layers)?,
        };
        let held = held_out::<B>(&args, data, &tokenizer, &config, &device)?;
        let model_label = match &args.adapter {
            Some(a) => format!("{} + adapter {}", args.model.name, a.display()),
            None => args.model.name.clone(),
        };
        eprintln!(
            "{model_label} ({:?}, {dtype:?}) | {} held-out records from {} ({} answer tokens, {} \
             batches) | {} layers",
            args.model.backend,
            held.records,
            held.data_path.display(),
            held.answer_tokens,
            held.batches.len(),
            config.num_hidden_layers
        );
        let factors = factors(&args, &model, source.as_ref(), &plan, &device)?;
        let options = SelectorOptions::default()
            .with_mode(args.selection)
            .with_seed(args.seed);
        let (baseline, rows, sweep_s) = run_sweep(&model, &held, &factors, options, &plan)?;
        let source_text = format!(
            "{model_label}, {} held-out records of {}",
            held.records,
            held.data_path.display()
        );
        let (proposal, toml) = proposal(
            &args,
            &config,
            &lora_config,
            &rows,
            &plan,
            &held.step_tokens,
            &source_text,
        )?;
        let info = RunInfo {
            model: &args.model.name,
            model_label: &model_label,
            adapter: args.adapter.as_deref(),
            data: &held.data_path,
            task: held.task,
            held_out: held.records,
            answer_tokens: held.answer_tokens,
            baseline,
            args: &args,
            dtype,
            sweep_s,
        };
        write_outputs(&info, &rows, &plan, &proposal, &toml, &held.step_tokens)?;
        eprintln!("finished in {:.1} s", started.elapsed().as_secs_f64());
        Ok(())
    }
}

/// sensitivity.{csv,json,png} and proposed.toml in the output folder, and the summary printed.
fn write_outputs(
    info: &RunInfo,
    rows: &[Measurement],
    plan: &SweepPlan,
    proposal: &Proposal,
    toml: &str,
    tokens: &StepTokens,
) -> anyhow::Result<()> {
    let args = info.args;
    let out = args.output_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    write("sensitivity.csv", &csv(rows))?;
    write(
        "sensitivity.json",
        &serde_json::to_string_pretty(&report_json(info, rows, proposal, tokens))?,
    )?;
    let toml_path = write("proposed.toml", toml)?;
    let png = out.join("sensitivity.png");
    let baseline = info.baseline;
    let title = format!(
        "Held-out loss rise, one block sparse at a time: {} (dense {baseline:.3})",
        info.model_label
    );
    draw_heat_map(&heat_map(rows, plan, &title), &png)?;

    print_summary(rows, plan, baseline);
    println!(
        "\nproposed for a FLOPs budget of {:.3}: {} of {} measured blocks sparse, FLOPs {:.3} \
         of dense LoRA{}",
        args.budget,
        proposal.chosen.len(),
        proposal.chosen.len() + proposal.dense.len(),
        proposal.flops_ratio,
        if proposal.budget_met() {
            ""
        } else {
            " (budget NOT met: every block is sparse)"
        }
    );
    println!("\n{toml}");
    eprintln!(
        "wrote {}/{{sensitivity.csv, sensitivity.json, sensitivity.png}} and {}",
        out.display(),
        toml_path.display(),
    );
    Ok(())
}

/// `layer,block,ratio,loss,delta_loss`, one line per measurement.
fn csv(rows: &[Measurement]) -> String {
    let mut text = String::from("layer,block,ratio,loss,delta_loss\n");
    for r in rows {
        let _ = writeln!(
            text,
            "{},{},{},{:.6},{:.6}",
            r.layer,
            r.block.name(),
            r.ratio,
            r.loss,
            r.delta
        );
    }
    text
}

/// What sensitivity.json records about the run.
struct RunInfo<'a> {
    model: &'a str,
    /// The model, and the adapter when one is attached.
    model_label: &'a str,
    adapter: Option<&'a Path>,
    data: &'a Path,
    task: Task,
    held_out: usize,
    answer_tokens: usize,
    baseline: f64,
    args: &'a Sensitivity,
    dtype: DType,
    sweep_s: f64,
}

fn report_json(
    info: &RunInfo,
    rows: &[Measurement],
    proposal: &Proposal,
    tokens: &StepTokens,
) -> serde_json::Value {
    let row = |r: &Measurement| {
        json!({
            "layer": r.layer,
            "block": r.block.name(),
            "ratio": r.ratio,
            "loss": r.loss,
            "delta_loss": r.delta,
        })
    };
    let args = info.args;
    json!({
        "model": info.model,
        "adapter": info.adapter.map(|a| a.display().to_string()),
        "data": info.data.display().to_string(),
        "task": info.task.name(),
        "held_out_records": info.held_out,
        "answer_tokens": info.answer_tokens,
        "batch_size": args.batch_size,
        "backend": format!("{:?}", args.model.backend).to_lowercase(),
        "dtype": format!("{:?}", info.dtype).to_lowercase(),
        "selection": args.selection.name(),
        "estimator_rank": args.rank,
        "baseline_loss": info.baseline,
        "sweep_seconds": info.sweep_s,
        "command_line": std::env::args().collect::<Vec<_>>(),
        "rows": rows.iter().map(row).collect::<Vec<_>>(),
        "proposal": {
            "budget": proposal.budget,
            "flops_ratio": proposal.flops_ratio,
            "budget_met": proposal.budget_met(),
            "flops_tokens": {
                "sequences": tokens.sequences,
                "seq_len": tokens.seq_len,
                "answer_tokens": tokens.answer_tokens,
            },
            "sparse_in_order": proposal.chosen.iter().map(row).collect::<Vec<_>>(),
            "dense_in_order": proposal.dense.iter().map(row).collect::<Vec<_>>(),
        },
    })
}

/// The columns of the table: every swept block with each of its ratios.
fn columns(sweep: &SweepPlan) -> Vec<(Block, f64)> {
    sweep
        .blocks
        .iter()
        .flat_map(|(b, ratios)| ratios.iter().map(move |&r| (*b, r)))
        .collect()
}

/// The delta of `(layer, block, ratio)`, NaN if not measured.
fn delta_at(rows: &[Measurement], layer: usize, block: Block, ratio: f64) -> f64 {
    rows.iter()
        .find(|r| r.layer == layer && r.block == block && r.ratio == ratio)
        .map_or(f64::NAN, |r| r.delta)
}

fn heat_map<'a>(rows: &[Measurement], sweep: &SweepPlan, title: &'a str) -> HeatMap<'a> {
    let layers = &sweep.layers;
    let cols = columns(sweep);
    HeatMap {
        title,
        rows: layers.iter().map(ToString::to_string).collect(),
        columns: cols.iter().map(|(_, r)| r.to_string()).collect(),
        column_groups: sweep
            .blocks
            .iter()
            .map(|(b, ratios)| (b.name().to_string(), ratios.len()))
            .collect(),
        values: layers
            .iter()
            .map(|&l| cols.iter().map(|&(b, r)| delta_at(rows, l, b, r)).collect())
            .collect(),
        x_desc: "sparse block, sparsity (fraction of its channels dropped)",
        y_desc: "layer",
        scale_label: "Δ loss (nats)",
    }
}

fn print_summary(rows: &[Measurement], sweep: &SweepPlan, baseline: f64) {
    let layers = &sweep.layers;
    let cols = columns(sweep);
    println!("dense held-out loss: {baseline:.4}; each cell: loss rise with that block sparse\n");
    let mut header = String::from("| layer |");
    let mut rule = String::from("|---|");
    for (b, r) in &cols {
        let _ = write!(header, " {} {r} |", b.name());
        rule.push_str("---|");
    }
    println!("{header}\n{rule}");
    for &layer in layers {
        let mut line = format!("| {layer} |");
        for &(b, r) in &cols {
            let _ = write!(line, " {:+.4} |", delta_at(rows, layer, b, r));
        }
        println!("{line}");
    }
}

/// Redraws `sensitivity.png` beside `json` (a `sensitivity.json`) and prints its table.
fn replot(json: &std::path::Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let report: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", json.display()))?;
    let field = |v: &serde_json::Value, key: &str| -> anyhow::Result<f64> {
        v[key]
            .as_f64()
            .with_context(|| format!("{}: a row lacks the number `{key}`", json.display()))
    };
    let mut rows = Vec::new();
    for v in report["rows"].as_array().context("no `rows` array")? {
        let block = match v["block"].as_str() {
            Some("mlp") => Block::Mlp,
            Some("self_attn") => Block::Attn,
            other => anyhow::bail!("{}: unknown block {other:?}", json.display()),
        };
        rows.push(Measurement {
            layer: field(v, "layer")? as usize,
            block,
            ratio: field(v, "ratio")?,
            loss: field(v, "loss")?,
            delta: field(v, "delta_loss")?,
        });
    }
    ensure!(!rows.is_empty(), "{} holds no measurements", json.display());
    let baseline = field(&report, "baseline_loss")?;
    let mut blocks: Vec<(Block, Vec<f64>)> = Vec::new();
    for r in &rows {
        match blocks.iter_mut().find(|(b, _)| *b == r.block) {
            Some((_, ratios)) if !ratios.contains(&r.ratio) => ratios.push(r.ratio),
            Some(_) => {}
            None => blocks.push((r.block, vec![r.ratio])),
        }
    }
    for (_, ratios) in &mut blocks {
        ratios.sort_by(f64::total_cmp);
    }
    let mut layers: Vec<usize> = rows.iter().map(|r| r.layer).collect();
    layers.sort_unstable();
    layers.dedup();
    let sweep = SweepPlan { blocks, layers };
    let mut label = report["model"].as_str().unwrap_or("model").to_owned();
    if report["adapter"].is_string() {
        label.push_str(" + adapter");
    }
    let title =
        format!("Held-out loss rise, one block sparse at a time: {label} (dense {baseline:.3})");
    let png = json.with_file_name("sensitivity.png");
    draw_heat_map(&heat_map(&rows, &sweep, &title), &png)?;
    print_summary(&rows, &sweep, baseline);
    eprintln!("wrote {}", png.display());
    Ok(())
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

    #[test]
    fn arguments_are_checked() {
        assert_eq!(
            parse_blocks("mlp, self_attn,mlp").unwrap(),
            vec![Block::Mlp, Block::Attn]
        );
        let e = parse_blocks("mlp,ffn").unwrap_err().to_string();
        assert!(e.contains("unknown block `ffn`"), "{e}");
        assert!(parse_blocks(" , ").is_err());
        assert_eq!(
            parse_ratios("--ratios", "0.9,0.5,0.9").unwrap(),
            vec![0.5, 0.9]
        );
        for bad in ["1.0", "1.5", "-0.1", "nan"] {
            let e = parse_ratios("--mlp-ratios", bad).unwrap_err().to_string();
            assert!(e.contains("outside [0, 1)"), "{bad}: {e}");
        }
        assert!(parse_ratios("--ratios", "0")
            .unwrap_err()
            .to_string()
            .contains("dense"));
        assert!(parse_ratios("--ratios", "x")
            .unwrap_err()
            .to_string()
            .contains("not a number"));
        assert_eq!(parse_layers("all").unwrap(), None);
        let set = parse_layers("0-2,5").unwrap();
        assert_eq!(resolve_layers(set.as_ref(), 6).unwrap(), vec![0, 1, 2, 5]);
        let e = resolve_layers(set.as_ref(), 4).unwrap_err().to_string();
        assert!(
            e.contains("layer 5 is out of range") && e.contains("0..=3"),
            "{e}"
        );
        assert_eq!(resolve_layers(None, 3).unwrap(), vec![0, 1, 2]);
        assert!(parse_layers("3-").is_err());
        assert_eq!(
            default_output("/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
            PathBuf::from("runs/sensitivity-SmolLM2-135M-Instruct.Q4_1")
        );
        assert_eq!(
            default_output("tiny"),
            PathBuf::from("runs/sensitivity-tiny")
        );
    }

    #[test]
    fn csv_and_heat_map_layout() {
        let rows = [
            measurement(0, Block::Mlp, 0.5, 0.30),
            measurement(0, Block::Mlp, 0.9, 2.00),
            measurement(0, Block::Attn, 0.5, 0.50),
            measurement(1, Block::Mlp, 0.5, 0.01),
            measurement(1, Block::Mlp, 0.9, 0.20),
            measurement(1, Block::Attn, 0.5, 0.05),
            measurement(2, Block::Attn, 0.5, f64::NAN),
        ];
        let text = csv(&rows);
        assert!(
            text.starts_with("layer,block,ratio,loss,delta_loss\n0,mlp,0.5,2.300000,0.300000\n")
        );
        assert_eq!(text.lines().count(), rows.len() + 1);
        let sweep = SweepPlan {
            blocks: vec![(Block::Mlp, vec![0.5, 0.9]), (Block::Attn, vec![0.5])],
            layers: vec![0, 1, 2, 3],
        };
        let map = heat_map(&rows, &sweep, "t");
        assert_eq!(map.columns, vec!["0.5", "0.9", "0.5"]);
        assert_eq!(
            map.column_groups,
            vec![("mlp".to_string(), 2), ("self_attn".to_string(), 1)]
        );
        assert_eq!(map.values[1], vec![0.01, 0.20, 0.05]);
        assert!(map.values[2][2].is_nan());
    }
}
