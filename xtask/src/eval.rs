//! `cargo xtask eval`: task accuracy of a model, optionally with a PEFT adapter.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::tensor::backend::Backend;
use burn::tensor::DType;
use clap::Args;
use llama_burn::{LlamaForCausalLM, LlamaTokenizer};
use trainer::{evaluate, load_records, PromptSeam, Task, TaskAccuracy};

use crate::backend::BackendJob;
use crate::model_args::ModelArgs;

/// Which records to evaluate on.
#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Tasks, comma-separated (boolq, piqa, social_i_qa, winogrande, ARC-Easy, ARC-Challenge,
    /// openbookqa, gsm8k, SVAMP, mawps, ...).
    #[arg(
        long = "task",
        default_value = "boolq,piqa,social_i_qa,winogrande,ARC-Easy,ARC-Challenge,openbookqa"
    )]
    pub tasks: String,
    /// Evaluate only the first N records of each task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// LLM-Adapters data root (holding `dataset/<task>/test.json`); default: the shipped samples.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Prompts generated together.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// How the prompt's closing indent is tokenized: `training` (as in the training text, where
    /// the response's first token takes its last space) or `reference` (the prompt alone, the
    /// reference evaluation's exact token ids).
    #[arg(long, value_enum, default_value = "training")]
    pub prompt_seam: PromptSeam,
}

/// Evaluate a model (and adapter) on downstream tasks.
#[derive(Args, Debug, Clone)]
pub struct Eval {
    #[command(flatten)]
    model: ModelArgs,
    /// For `--model tiny`: the seed its random base was drawn with (the training config's
    /// `seed`; 42 in `configs/train/tiny-default.toml`).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A PEFT adapter folder to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    select: EvalArgs,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Eval {
    pub fn run(self) -> anyhow::Result<()> {
        self.model.clone().dispatch(self)
    }
}

impl BackendJob for Eval {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> anyhow::Result<()> {
        let base = self.model.resolve()?;
        let tokenizer = base.tokenizer()?;
        let mut model = base.load::<B>(&tokenizer, dtype, self.seed, &device)?;
        if let Some(adapter) = &self.adapter {
            model = model
                .load_peft_adapter(adapter, &device)
                .with_context(|| format!("loading adapter {}", adapter.display()))?;
        }
        let results = run_eval(&model, &tokenizer, &self.select)?;
        print_table(&results);
        if let Some(path) = &self.json {
            std::fs::write(path, serde_json::to_string_pretty(&results)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }
}

/// The records of `task`: from `data_dir/<task>/test.json` or the shipped sample.
fn task_records(task: Task, data_dir: Option<&Path>) -> anyhow::Result<Vec<trainer::Record>> {
    let path = match data_dir {
        Some(dir) => dir.join(task.data_file()),
        None => crate::repo::shipped(
            Path::new("datasets").join(task.sample_file().context("no shipped sample")?),
        ),
    };
    load_records(&path).with_context(|| format!("evaluation data of {task}"))
}

/// Evaluates every selected task.
pub fn run_eval<B: Backend>(
    model: &LlamaForCausalLM<B>,
    tokenizer: &LlamaTokenizer,
    args: &EvalArgs,
) -> anyhow::Result<Vec<TaskAccuracy>> {
    let mut results = Vec::new();
    for name in args
        .tasks
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let task: Task = name
            .parse()
            .map_err(|e| anyhow::anyhow!("--task {name}: {e}"))?;
        let mut records = task_records(task, args.data_dir.as_deref())?;
        if let Some(limit) = args.limit {
            records.truncate(limit);
        }
        let start = std::time::Instant::now();
        let result = evaluate(
            model,
            tokenizer,
            task,
            &records,
            args.batch_size,
            args.prompt_seam,
        )?;
        eprintln!(
            "{:<14} {:>5}/{:<5} {:6.1}%  ({:.1} s)",
            result.task,
            result.correct,
            result.total,
            100.0 * result.accuracy,
            start.elapsed().as_secs_f64()
        );
        results.push(result);
    }
    Ok(results)
}

/// The most frequent prediction of `r` with its share, e.g. `true (55%)`.
fn most_predicted(r: &TaskAccuracy) -> String {
    r.predictions
        .iter()
        .max_by_key(|(_, &n)| n)
        .map(|(label, &n)| format!("{label} ({:.0}%)", 100.0 * n as f64 / r.total.max(1) as f64))
        .unwrap_or_default()
}

/// The share of `r`'s predictions that are an answer of the task's label set (not `none`).
fn answered(r: &TaskAccuracy) -> f64 {
    let none = r.predictions.get("none").copied().unwrap_or(0);
    1.0 - none as f64 / r.total.max(1) as f64
}

/// The accuracy table of a run before and after training, task by task: accuracy, how many
/// generations gave an answer of the task's label set, and the most frequent prediction.
pub fn print_before_after(before: &[TaskAccuracy], after: &[TaskAccuracy]) {
    println!(
        "| task | records | majority class | accuracy before | after | in the label set before | after | most predicted before | after |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (b, a) in before.iter().zip(after) {
        println!(
            "| {} | {} | {:.1}% | {:.1}% | **{:.1}%** | {:.0}% | **{:.0}%** | {} | {} |",
            a.task,
            a.total,
            100.0 * a.majority_baseline,
            100.0 * b.accuracy,
            100.0 * a.accuracy,
            100.0 * answered(b),
            100.0 * answered(a),
            most_predicted(b),
            most_predicted(a),
        );
    }
}

/// Prints the accuracy table with the macro average, each task's majority-class baseline and its
/// most frequent prediction (a model that answers one label everywhere scores the baseline).
pub fn print_table(results: &[TaskAccuracy]) {
    println!(
        "| task | correct | total | accuracy | majority class | most predicted |\n|---|---|---|---|---|---|"
    );
    for r in results {
        let top = most_predicted(r);
        println!(
            "| {} | {} | {} | {:.1}% | {:.1}% | {} |",
            r.task,
            r.correct,
            r.total,
            100.0 * r.accuracy,
            100.0 * r.majority_baseline,
            top
        );
    }
    if !results.is_empty() {
        let n = results.len() as f64;
        let avg = results.iter().map(|r| r.accuracy).sum::<f64>() / n;
        let base = results.iter().map(|r| r.majority_baseline).sum::<f64>() / n;
        println!(
            "| average | | | {:.1}% | {:.1}% | |",
            100.0 * avg,
            100.0 * base
        );
    }
}
