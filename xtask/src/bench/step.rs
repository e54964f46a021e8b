//! `cargo xtask bench step`: the time and memory of one LoRA / SparseLoRA training step on a
//! random-weight model of a preset's shape, on the workload of the official SparseLoRA speed
//! benchmark (and of `../shared/peer/peft_lora_bench.py`): batch 8 x 512 tokens, ids 100..611, no
//! padding, labels on the last 3 (`csr`) or 128 (`math`) tokens; LoRA r32 alpha 64 on q,k,v,o;
//! AdamW lr 3e-4, global-norm clipping at 1.0.
//!
//! A step is the training loop's own ([`trainer::step`]): forward and loss, backward, clipping
//! and AdamW, with no host read inside. The headline figures synchronise the device once at the
//! end of each step, as the peer does; `--breakdown` then runs up to 10 more steps that also
//! synchronise between forward, backward and optimizer (and around the estimator) to split the
//! step, which costs some overlap, so the split is reported beside the headline, not in it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use burn::optim::GradientsAccumulator;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};
use clap::{Args, ValueEnum};
use llama_burn::loss::{LossTargets, IGNORE_INDEX};
use llama_burn::{LlamaConfig, LlamaForCausalLM, LlamaProjection};
use lora::LoraConfig;
use serde_json::{json, Value};
use sparselora::flops::{FlopsCounter, StepFlops, StepTokens};
use sparselora::{FactorCache, SparseSetup};
use trainer::grad_norm::IntoScalarF64;
use trainer::optim::{ClippedOptimizer, FusedAdamWConfig};
use trainer::step::{apply_gradients, backward_into, micro_batch_loss};
use trainer::{ReplaySelector, SparseTraining, TimedSelector, TrainBatch};

use super::step_gemms::StepGemms;
use crate::backend::{BackendKind, TrainJob};
use crate::finetune::sparse_setup;
use crate::model_args::ModelArgs;

/// The official benchmark's two workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Commonsense reasoning: 3 answer tokens per sequence.
    Csr,
    /// Math10K: 128 answer tokens per sequence.
    Math,
}

impl Workload {
    fn answer_len(self) -> usize {
        match self {
            Workload::Csr => 3,
            Workload::Math => 128,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Csr => "csr",
            Workload::Math => "math",
        }
    }
}

/// Times LoRA (or, with `--sparsity`, SparseLoRA) training steps on a random model of a preset's
/// shape.
#[derive(Args, Debug, Clone)]
#[command(mut_arg("model", |a| a.default_value("llama3-8b").help(super::PRESET_HELP)))]
#[command(mut_arg("backend", |a| a.default_value("cuda")))]
#[command(mut_arg("model_dir", |a| a.hide(true)))]
pub struct StepBench {
    #[command(flatten)]
    pub model: ModelArgs,
    /// `csr` (3 answer tokens) or `math` (128).
    #[arg(long, value_enum, default_value = "csr")]
    pub workload: Workload,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512)]
    pub seq: usize,
    /// Answer (labelled) tokens at the end of each sequence; default: the workload's.
    #[arg(long)]
    pub out_len: Option<usize>,
    /// Timed steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Untimed steps first (JIT compilation, plan caches, memory pools).
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Steps run last with no synchronisation at all (the host queues ahead), for
    /// `unsynced_mean_ms`; default: as many as `--steps`.
    #[arg(long)]
    pub unsynced_steps: Option<usize>,
    /// A SparseLoRA sparsity config (configs/sparsity/*.toml): sparse from step 0.
    #[arg(long)]
    pub sparsity: Option<PathBuf>,
    /// Keep the estimator's SVD factors of the random model in this file and reuse them when it
    /// matches (same preset, dtype and rank): runs of one device call then pay for the SVD once.
    #[arg(long)]
    pub svd_cache: Option<PathBuf>,
    /// LoRA rank.
    #[arg(long, default_value_t = 32)]
    pub lora_r: usize,
    /// LoRA alpha.
    #[arg(long, default_value_t = 64.0)]
    pub lora_alpha: f64,
    /// LoRA targets, comma-separated (q,k,v,o,gate,up,down).
    #[arg(long, default_value = "q,k,v,o")]
    pub lora_targets: String,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Global gradient-norm clip.
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Also run up to 10 steps that synchronise between forward, backward and optimizer, to
    /// report the split (kept out of the headline figures).
    #[arg(long)]
    pub breakdown: bool,
    /// With `--sparsity`: also time `--steps` pairs of steps, one that runs the estimator and one
    /// that replays its last channels (the same sparse compute, no selection), alternating so
    /// that clocks and power drift alike on both; the difference is the estimator's end-to-end
    /// cost (`estimator_overhead`), overlap with the rest of the step included.
    #[arg(long)]
    pub estimator_overhead: bool,
    /// The peer's JSON lines (`peft_lora_bench.py --json`) from the same device session: its
    /// figures for the same model and workload are stored beside ours, with the ratios.
    #[arg(long)]
    pub peft: Option<PathBuf>,
    /// After the measured steps, run `--steps` more (no synchronisation) under a sampling
    /// profiler of the host and write its report to this file (and the folded stacks beside it,
    /// `.folded`): where the CPU time of a launch-bound step goes.
    #[arg(long)]
    pub host_profile: Option<PathBuf>,
    /// After everything else, run one more step inside a CUDA profiler range
    /// (`cuProfilerStart`/`Stop`, queued in order with the kernels): `ncu --profile-from-start off`
    /// then times that step's kernels only (scripts/gpu/ncu-step.sh).
    #[arg(long)]
    pub cuda_profiler_step: bool,
    /// A label stored in the result.
    #[arg(long, default_value = "")]
    pub tag: String,
    /// Where the JSON result goes.
    #[arg(long, default_value = "bench/results")]
    pub output_dir: PathBuf,
}

impl StepBench {
    pub fn run(self) -> anyhow::Result<()> {
        if self.steps == 0 {
            bail!("--steps must be at least 1");
        }
        if self.estimator_overhead && self.sparsity.is_none() {
            bail!("--estimator-overhead needs --sparsity (a dense step runs no estimator)");
        }
        let out_len = self.out_len.unwrap_or(self.workload.answer_len());
        if out_len == 0 || out_len >= self.seq {
            bail!(
                "--out-len {out_len} must be between 1 and --seq - 1 ({})",
                self.seq - 1
            );
        }
        self.model.clone().dispatch_autodiff(self)
    }

    fn answer_len(&self) -> usize {
        self.out_len.unwrap_or(self.workload.answer_len())
    }

    fn lora_config(&self) -> anyhow::Result<LoraConfig> {
        let targets = LlamaProjection::parse_list(&self.lora_targets)
            .map_err(|e| anyhow::anyhow!("--lora-targets: {e}"))?;
        let config = LoraConfig::new()
            .with_r(self.lora_r)
            .with_alpha(self.lora_alpha)
            .with_dropout(0.0)
            .with_targets(LlamaProjection::target_modules(&targets));
        config.validate()?;
        Ok(config)
    }
}

/// The peer's batch: ids `100..100 + seq` (mod vocab) in every row, no padding, labels on the
/// last `answer_len` positions.
pub(crate) fn workload_batch<B: Backend>(
    batch: usize,
    seq: usize,
    answer_len: usize,
    vocab: usize,
    device: &B::Device,
) -> TrainBatch<B> {
    let row: Vec<i64> = (0..seq).map(|t| ((100 + t) % vocab) as i64).collect();
    let ids: Vec<i64> = row.iter().copied().cycle().take(batch * seq).collect();
    let labels: Vec<i64> = (0..batch * seq)
        .map(|i| {
            if i % seq >= seq - answer_len {
                ids[i]
            } else {
                IGNORE_INDEX
            }
        })
        .collect();
    let answer_tokens = labels.iter().map(|&l| l != IGNORE_INDEX).collect();
    TrainBatch {
        input_ids: Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [batch, seq]), device),
        attention_mask: Tensor::<B, 2, Bool>::from_data(
            TensorData::new(vec![true; batch * seq], [batch, seq]),
            device,
        ),
        labels: Tensor::<B, 2, Int>::from_data(
            TensorData::new(labels.clone(), [batch, seq]),
            device,
        ),
        loss_targets: LossTargets::from_labels(&labels, batch, seq, device),
        answer_tokens,
    }
}

/// Per-step times (ms) of one phase.
#[derive(Default)]
struct Series(Vec<f64>);

impl Series {
    fn push(&mut self, seconds: f64) {
        self.0.push(seconds * 1e3);
    }

    fn quantile(&self, q: f64) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let pos = q * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
    }

    fn median(&self) -> Option<f64> {
        self.quantile(0.5)
    }
}

fn sync<B: Backend>(device: &B::Device) -> anyhow::Result<()> {
    B::sync(device).map_err(|e| anyhow::anyhow!("device error: {e:?}"))
}

impl TrainJob for StepBench {
    fn run<B: AutodiffBackend>(self, device: B::Device, dtype: DType) -> anyhow::Result<()> {
        let config = self.model.preset()?;
        let lora = self.lora_config()?;
        let answer_len = self.answer_len();
        let memory = DeviceMemory::new(self.model.backend);
        let start = Instant::now();
        let (model, setup) = self.build::<B>(&config, &lora, dtype, &device)?;
        let built = Built {
            seconds: start.elapsed().as_secs_f64(),
            used: memory.used(),
            pool: memory.pool(),
        };
        let training = setup
            .as_ref()
            .map(|setup| SparseTraining::from_setup(setup, &config, &lora));
        let batch =
            workload_batch::<B>(self.batch, self.seq, answer_len, config.vocab_size, &device);
        eprintln!(
            "bench step: {} {} {}, batch {} x {}, {answer_len} answer tokens, LoRA r{} on {}; model built in {:.1} s",
            self.model.name,
            self.workload.name(),
            self.mode(),
            self.batch,
            self.seq,
            lora.r,
            self.lora_targets,
            built.seconds,
        );
        let measured = self.measure(model, &batch, training.as_ref(), &memory, &device)?;
        let tokens = StepTokens::synthetic(self.batch, self.seq, answer_len);
        let tokens = match &training {
            Some(t) if t.dense_answer_tokens => tokens.with_dense_tokens(self.batch * answer_len),
            _ => tokens,
        };
        let counter = match &setup {
            Some(setup) => FlopsCounter::new(&config, &lora).with_sparsity_config(&setup.config),
            None => FlopsCounter::new(&config, &lora),
        };
        let flops = counter.step(&tokens, setup.as_ref().map(|s| &s.plan));
        let doc = self.result(dtype, &lora, &measured, &flops, &memory, &built)?;
        print_summary(&doc);
        if !measured.gemms.is_empty() {
            println!("{}", measured.gemms.summary(GEMM_PLANS_PRINTED));
        }
        self.write(&doc)
    }
}

/// The model's build: how long it took and the memory in use right after.
struct Built {
    seconds: f64,
    used: Option<u64>,
    pool: Option<(u64, u64)>,
}

/// What the steps measured.
struct Measured {
    /// The timed steps (one synchronisation each).
    total: Series,
    /// Their losses.
    losses: Vec<f64>,
    /// The device memory in use at their peak, in bytes (0 when unknown).
    peak_bytes: u64,
    /// The mean time of the steps run without synchronisation.
    unsynced_mean_ms: Option<f64>,
    /// `--estimator-overhead`'s paired steps.
    estimator_overhead: Option<EstimatorOverhead>,
    /// The `--breakdown` split.
    phases: Phases,
    pool: PoolPeaks,
    /// The cuBLASLt plans launched by the timed steps.
    gemms: StepGemms,
}

impl StepBench {
    fn mode(&self) -> &'static str {
        if self.sparsity.is_some() {
            "sparse"
        } else {
            "dense"
        }
    }

    /// The random model of the preset (seed 0) with its adapters, and with `--sparsity`
    /// SparseLoRA's set-up; the build's freed buffers are handed back to the driver.
    fn build<B: AutodiffBackend>(
        &self,
        config: &LlamaConfig,
        lora: &LoraConfig,
        dtype: DType,
        device: &B::Device,
    ) -> anyhow::Result<(LlamaForCausalLM<B>, Option<SparseSetup<B>>)> {
        B::seed(device, 0);
        let base = crate::model_source::build_weights::<B, _>(device, || {
            config.init_random::<B>(device).with_dtype(dtype)
        });
        let setup = match &self.sparsity {
            Some(path) => {
                let factors = match &self.svd_cache {
                    Some(file) => FactorCache::File {
                        path: file.clone(),
                        // The weights are a function of the preset, the seed (0) and the dtype.
                        identity: format!("random {} seed 0 {dtype:?}", self.model.name),
                    },
                    None => FactorCache::InMemory,
                };
                Some(sparse_setup(path, &base, &self.model.name, 0, |_| {
                    Ok(factors)
                })?)
            }
            None => None,
        };
        let model = base.with_lora(lora, device);
        sync::<B>(device)?;
        // The SVD's work buffers are free but still held by cubecl's pool: hand them back.
        B::memory_cleanup(device);
        sync::<B>(device)?;
        Ok((model, setup))
    }

    /// The steps run under a profiler, after every measured one (numbered from `first`):
    /// `--host-profile`'s and `--cuda-profiler-step`'s.
    fn profiled_steps<B: AutodiffBackend, O: ClippedOptimizer<LlamaForCausalLM<B>, B>>(
        &self,
        stepper: &mut Stepper<'_, B, O>,
        first: usize,
    ) -> anyhow::Result<()> {
        let device = stepper.device;
        if let Some(path) = &self.host_profile {
            let profile = super::host_profile::HostProfile::start()?;
            for step in first..first + self.steps {
                stepper.step(step, false)?;
            }
            sync::<B>(device)?;
            profile.finish(path, self.steps)?;
            println!("host profile: {}", path.display());
        }
        if self.cuda_profiler_step {
            sync::<B>(device)?;
            profiler_collect(self.model.backend, true)?;
            stepper.step(first + self.steps, false)?;
            profiler_collect(self.model.backend, false)?;
            sync::<B>(device)?;
        }
        Ok(())
    }

    /// The steps, in order: `--warmup` untimed, `--steps` timed (one synchronisation at the end
    /// of each, as the peer does), `--unsynced-steps` with none, and with `--breakdown` up to
    /// [`BREAKDOWN_STEPS`] synchronised between phases.
    fn measure<B: AutodiffBackend>(
        &self,
        model: LlamaForCausalLM<B>,
        batch: &TrainBatch<B>,
        training: Option<&SparseTraining<'_, B>>,
        memory: &DeviceMemory,
        device: &B::Device,
    ) -> anyhow::Result<Measured> {
        let replay = training.map(|t| ReplaySelector::new(t.selector));
        let timed = replay.as_ref().map(|r| TimedSelector::new(r, device));
        let mut optim = peer_adamw().init::<B, LlamaForCausalLM<B>>();
        let mut stepper = Stepper {
            model: Some(model),
            optim: &mut optim,
            batch,
            answer_tokens: &batch.answer_tokens,
            training,
            timed: timed.as_ref(),
            lr: self.lr,
            max_grad_norm: self.max_grad_norm,
            device,
            times: Phases::default(),
            memory,
            pool: PoolPeaks::default(),
        };
        stepper.warm_up(self.warmup)?;
        let timed = self.warmup..self.warmup + self.steps;
        let ((total, losses, peak_bytes), gemms) =
            StepGemms::around(self.model.backend, self.steps, || stepper.timed(timed))?;
        // The same number of steps with no synchronisation at all: the host queues ahead.
        let unsynced = self.unsynced_steps.unwrap_or(self.steps);
        let t0 = Instant::now();
        for step in self.warmup + self.steps..self.warmup + self.steps + unsynced {
            stepper.step(step, false)?;
        }
        sync::<B>(device)?;
        let unsynced_mean_ms =
            (unsynced > 0).then(|| t0.elapsed().as_secs_f64() * 1e3 / unsynced as f64);
        let estimator_overhead = match &replay {
            Some(replay) if self.estimator_overhead => Some(stepper.estimator_overhead(
                replay,
                self.warmup + self.steps + unsynced,
                self.steps,
            )?),
            _ => None,
        };
        let first_after = self.warmup + self.steps + unsynced + 2 * self.steps;
        // The split, from steps of their own: its synchronisations stay out of the headline.
        if self.breakdown {
            for step in first_after..first_after + self.steps.min(BREAKDOWN_STEPS) {
                stepper.step(step, true)?;
            }
        }
        self.profiled_steps(&mut stepper, first_after + BREAKDOWN_STEPS)?;
        memory.check_not_exhausted(peak_bytes)?;
        let losses: Vec<f64> = losses
            .into_iter()
            .map(IntoScalarF64::into_scalar_f64)
            .collect();
        if losses.iter().any(|l| !l.is_finite()) {
            bail!("a timed step produced a non-finite loss: {losses:?}");
        }
        Ok(Measured {
            total,
            losses,
            peak_bytes,
            unsynced_mean_ms,
            estimator_overhead,
            phases: stepper.times,
            pool: stepper.pool,
            gemms,
        })
    }

    /// The result document: the run, its figures, and with `--peft` the peer's beside them.
    fn result(
        &self,
        dtype: DType,
        lora: &LoraConfig,
        measured: &Measured,
        flops: &StepFlops,
        memory: &DeviceMemory,
        built: &Built,
    ) -> anyhow::Result<Value> {
        let executed = if self.sparsity.is_some() {
            flops.sparse.total()
        } else {
            flops.dense.total()
        } as f64;
        let dense = flops.dense.total() as f64;
        let median = measured.total.median().context("no timed step")?;
        let baseline = memory.baseline.unwrap_or(0);
        let peak_bytes = measured.peak_bytes;
        let losses = &measured.losses;
        let mut doc = json!({
            "kind": "step",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "date": super::utc_timestamp(),
            "gpu": super::svd::gpu_name().unwrap_or_else(|| format!("{:?}", self.model.backend)),
            "git_commit": super::git_commit(),
            "tag": self.tag,
            "model": self.model.name,
            "workload": self.workload.name(),
            "mode": self.mode(),
            "sparsity": self.sparsity.as_ref().map(|p| p.display().to_string()),
            "dtype": format!("{dtype:?}").to_lowercase(),
            "batch": self.batch,
            "seq": self.seq,
            "out_len": self.answer_len(),
            "lora": { "r": lora.r, "alpha": lora.alpha, "targets": self.lora_targets },
            "warmup": self.warmup,
            "steps": self.steps,
            "median_ms": median,
            "p10_ms": measured.total.quantile(0.1),
            "p90_ms": measured.total.quantile(0.9),
            "unsynced_mean_ms": measured.unsynced_mean_ms,
            "breakdown": self.breakdown.then(|| measured.phases.to_json()),
            "estimator_overhead": measured.estimator_overhead.as_ref().map(EstimatorOverhead::to_json),
            "peak_memory_gib": (peak_bytes > 0).then(|| gib(peak_bytes.saturating_sub(baseline))),
            "tokens_per_s": (self.batch * self.seq) as f64 / (median / 1e3),
            "flops_step": executed,
            "flops_step_dense": dense,
            "flops_ratio": executed / dense,
            "achieved_tflops": executed / (median / 1e3) / 1e12,
            "loss_first": losses.first(),
            "loss_last": losses.last(),
            "model_build_s": built.seconds,
            "memory": memory.pool.map(|_| measured.pool.to_json(built, baseline)),
            "fused_kernel_launches": kernels_cubecl::fused_launches(),
            "cublaslt_gemms": crate::backend::gemm_calls(),
            "gemm_plans": (!measured.gemms.is_empty()).then(|| measured.gemms.to_json()),
            // The switches that change the fast path (A/B runs), so a result says what it ran.
            "env": std::env::vars()
                .filter(|(name, _)| name.starts_with("SPARSELORA_") && name != "SPARSELORA_CACHE")
                .collect::<std::collections::BTreeMap<_, _>>(),
        });
        if let Some(path) = &self.peft {
            if let Some(peft) = peer_result(path, &self.model.name, self.workload.name())? {
                let peft_ms = peft.get("median_ms").and_then(Value::as_f64);
                doc["peft"] = peft;
                doc["speedup_vs_peft"] = json!(peft_ms.map(|p| p / median));
            }
        }
        Ok(doc)
    }

    /// Writes `doc` into `--output-dir` as `step-<model>-<workload>-<mode>-<date>-<gpu>.json`.
    fn write(&self, doc: &Value) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.output_dir)?;
        let (date, gpu) = (doc["date"].as_str(), doc["gpu"].as_str());
        let path = self.output_dir.join(format!(
            "step-{}-{}-{}-{}-{}.json",
            self.model.name,
            self.workload.name(),
            self.mode(),
            date.unwrap_or_default().replace(':', ""),
            super::slug(gpu.unwrap_or_default())
        ));
        std::fs::write(&path, serde_json::to_string_pretty(doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("-> {}", path.display());
        Ok(())
    }
}

/// How many extra steps `--breakdown` runs to split the step (after the headline's).
const BREAKDOWN_STEPS: usize = 10;

/// The cuBLASLt plans listed on the console after a run (the JSON has them all).
const GEMM_PLANS_PRINTED: usize = 16;

/// Per-phase times of the `--breakdown` steps.
#[derive(Default)]
struct Phases {
    forward: Series,
    backward: Series,
    optimizer: Series,
    estimator: Series,
}

impl Phases {
    /// The median of each phase, and the estimator's share of the step.
    fn to_json(&self) -> Value {
        let (f, b, o, e) = (
            self.forward.median(),
            self.backward.median(),
            self.optimizer.median(),
            self.estimator.median(),
        );
        json!({
            "forward_ms": f,
            "backward_ms": b,
            "optimizer_ms": o,
            "estimator_ms": e,
            "estimator_share": e.zip(f.zip(b).zip(o)).map(|(e, ((f, b), o))| e / (f + b + o)),
        })
    }
}

/// `--estimator-overhead`'s paired steps: with the estimator, and replaying its channels.
#[derive(Default)]
struct EstimatorOverhead {
    selected: Series,
    replayed: Series,
}

impl EstimatorOverhead {
    /// Both medians, and the median of the pairs' differences as the estimator's cost (robust
    /// to a slow step on either side), with its share of the estimator steps' median.
    fn to_json(&self) -> Value {
        let diffs = Series(
            self.selected
                .0
                .iter()
                .zip(&self.replayed.0)
                .map(|(s, r)| s - r)
                .collect(),
        );
        let (selected, replayed, cost) = (
            self.selected.median(),
            self.replayed.median(),
            diffs.median(),
        );
        json!({
            "pairs": diffs.0.len(),
            "with_estimator_median_ms": selected,
            "replayed_channels_median_ms": replayed,
            "overhead_ms": cost,
            "overhead_p10_ms": diffs.quantile(0.1),
            "overhead_p90_ms": diffs.quantile(0.9),
            "share": cost.zip(selected).map(|(c, s)| c / s),
        })
    }
}

/// A step's loss, still on the device.
type Loss<B> = Tensor<<B as AutodiffBackend>::InnerBackend, 1>;

/// Runs training steps of the benchmark's model on its one batch.
struct Stepper<'a, B: AutodiffBackend, O> {
    /// Taken out for the optimizer step (which consumes it) and put back.
    model: Option<LlamaForCausalLM<B>>,
    optim: &'a mut O,
    batch: &'a TrainBatch<B>,
    answer_tokens: &'a [bool],
    training: Option<&'a SparseTraining<'a, B>>,
    timed: Option<&'a TimedSelector<'a, B>>,
    lr: f64,
    max_grad_norm: f64,
    device: &'a B::Device,
    times: Phases,
    memory: &'a DeviceMemory,
    pool: PoolPeaks,
}

impl<B: AutodiffBackend, O: ClippedOptimizer<LlamaForCausalLM<B>, B>> Stepper<'_, B, O> {
    /// One step; with `breakdown`, synchronised after each phase and timed. Returns the loss,
    /// still on the device.
    fn step(&mut self, step: usize, breakdown: bool) -> anyhow::Result<Loss<B>> {
        if let Some(timed) = self.timed {
            timed.set_timing(breakdown);
        }
        let model = self
            .model
            .take()
            .context("the model was lost in an earlier step")?;
        let t0 = Instant::now();
        let forward = match (self.training, self.timed) {
            (Some(training), Some(timed)) => {
                Some(training.forward_for(timed, self.answer_tokens, step as u64, self.device))
            }
            _ => None,
        };
        let loss = micro_batch_loss(&model, self.batch.clone(), forward.as_ref());
        if breakdown {
            sync::<B>(self.device)?;
            self.times.forward.push(t0.elapsed().as_secs_f64());
            if let Some((in_use, _)) = self.memory.pool() {
                self.pool.in_use_after_forward = self.pool.in_use_after_forward.max(in_use);
            }
            if let Some(timed) = self.timed {
                self.times
                    .estimator
                    .push(timed.take_elapsed().as_secs_f64());
            }
        }
        let t1 = Instant::now();
        let mut accumulator = GradientsAccumulator::<LlamaForCausalLM<B>>::new();
        let loss = backward_into(&model, loss, 1, &mut accumulator);
        if breakdown {
            sync::<B>(self.device)?;
            self.times.backward.push(t1.elapsed().as_secs_f64());
        }
        let t2 = Instant::now();
        let (model, _norm) = apply_gradients(
            model,
            self.optim,
            accumulator.grads(),
            self.lr,
            self.max_grad_norm,
        );
        self.model = Some(model);
        if breakdown {
            sync::<B>(self.device)?;
            self.times.optimizer.push(t2.elapsed().as_secs_f64());
        }
        Ok(loss)
    }

    /// The untimed steps `0..steps`, the first with the allocator caching its buffer sizes for
    /// the run as the training loop does (`kernels_cubecl::with_allocations_cached_by_size`); ends
    /// synchronised.
    fn warm_up(&mut self, steps: usize) -> anyhow::Result<()> {
        for step in 0..steps {
            if step == 0 {
                let device = self.device;
                kernels_cubecl::with_allocations_cached_by_size::<B, _>(device, || {
                    self.step(step, false)
                })?;
            } else {
                self.step(step, false)?;
            }
        }
        sync::<B>(self.device)
    }

    /// `pairs` pairs of steps numbered from `first`, each timed to a synchronisation at its end:
    /// one that runs the selector (recording its channels), then one that replays them.
    fn estimator_overhead(
        &mut self,
        replay: &ReplaySelector<'_, B>,
        first: usize,
        pairs: usize,
    ) -> anyhow::Result<EstimatorOverhead> {
        let mut overhead = EstimatorOverhead::default();
        for pair in 0..pairs {
            for (offset, replaying) in [(0, false), (1, true)] {
                replay.set_replay(replaying);
                let t0 = Instant::now();
                self.step(first + 2 * pair + offset, false)?;
                sync::<B>(self.device)?;
                let series = if replaying {
                    &mut overhead.replayed
                } else {
                    &mut overhead.selected
                };
                series.push(t0.elapsed().as_secs_f64());
            }
        }
        replay.set_replay(false);
        Ok(overhead)
    }

    /// The steps `steps`, each timed to a synchronisation at its end: their times, losses (on
    /// the device) and the peak device memory (bytes, 0 when unknown); the pool's peaks are kept
    /// in `self.pool`.
    fn timed(
        &mut self,
        steps: std::ops::Range<usize>,
    ) -> anyhow::Result<(Series, Vec<Loss<B>>, u64)> {
        let (mut total, mut losses, mut peak_bytes) = (Series::default(), Vec::new(), 0u64);
        for step in steps {
            let t0 = Instant::now();
            let loss = self.step(step, false)?;
            sync::<B>(self.device)?;
            total.push(t0.elapsed().as_secs_f64());
            if let Some(used) = self.memory.used() {
                peak_bytes = peak_bytes.max(used);
            }
            if let Some((in_use, reserved)) = self.memory.pool() {
                self.pool.in_use_after_step = self.pool.in_use_after_step.max(in_use);
                self.pool.reserved = self.pool.reserved.max(reserved);
            }
            losses.push(loss);
        }
        Ok((total, losses, peak_bytes))
    }
}

/// `value[key]` with one decimal, `-` when it is not a number.
fn one_decimal(value: &Value, key: &str) -> String {
    value[key]
        .as_f64()
        .map_or("-".into(), |v| format!("{v:.1}"))
}

fn print_summary(doc: &Value) {
    let f = |key: &str| one_decimal(doc, key);
    println!(
        "{} {} {}: median {} ms (p10 {}, p90 {}), unsynced mean {} ms, {} tokens/s, {} TFLOP/s, peak {} GiB{}",
        doc["model"].as_str().unwrap_or(""),
        doc["workload"].as_str().unwrap_or(""),
        doc["mode"].as_str().unwrap_or(""),
        f("median_ms"),
        f("p10_ms"),
        f("p90_ms"),
        f("unsynced_mean_ms"),
        f("tokens_per_s"),
        f("achieved_tflops"),
        f("peak_memory_gib"),
        doc.get("peft")
            .map(|p| format!(
                "; PEFT {} ms, {} GiB (ours {:.2}x)",
                one_decimal(p, "median_ms"),
                one_decimal(p, "peak_memory_gib"),
                doc["speedup_vs_peft"].as_f64().unwrap_or(f64::NAN)
            ))
            .unwrap_or_default()
    );
    if let Some(m) = doc.get("memory").filter(|m| !m.is_null()) {
        let g = |key: &str| one_decimal(m, key);
        println!(
            "  memory (GiB): after build {} (pool in use {}); pool in use after forward {}, after step {}; pool reserved {}",
            g("after_build_gib"),
            g("pool_in_use_after_build_gib"),
            g("pool_in_use_after_forward_gib"),
            g("pool_in_use_after_step_gib"),
            g("pool_reserved_gib")
        );
    }
    if let Some(b) = doc.get("breakdown").filter(|b| !b.is_null()) {
        let g = |key: &str| one_decimal(b, key);
        println!(
            "  breakdown (synchronised): forward {} ms, backward {} ms, optimizer {} ms, estimator {} ms",
            g("forward_ms"),
            g("backward_ms"),
            g("optimizer_ms"),
            g("estimator_ms")
        );
    }
    if let Some(e) = doc.get("estimator_overhead").filter(|e| !e.is_null()) {
        let g = |key: &str| one_decimal(e, key);
        println!(
            "  estimator end to end ({} pairs): {} ms with it, {} ms replaying its channels, overhead {} ms (p10 {}, p90 {}), {:.2}% of the step",
            e["pairs"],
            g("with_estimator_median_ms"),
            g("replayed_channels_median_ms"),
            g("overhead_ms"),
            g("overhead_p10_ms"),
            g("overhead_p90_ms"),
            e["share"].as_f64().unwrap_or(f64::NAN) * 100.0
        );
    }
}

/// The last line of the peer's JSON-lines file for this model and workload, with its figures
/// under our field names.
fn peer_result(
    path: &std::path::Path,
    model: &str,
    workload: &str,
) -> anyhow::Result<Option<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the peer's results {}", path.display()))?;
    let answer_len = match workload {
        "csr" => 3,
        _ => 128,
    };
    let mut found = None;
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        if v["model"] == model && v["out_len"].as_u64() == Some(answer_len) {
            found = Some(v);
        }
    }
    Ok(found.map(|v| {
        json!({
            "median_ms": v["ms_step_median"],
            "forward_ms": v["ms_fwd_median"],
            "backward_ms": v["ms_bwd_median"],
            "optimizer_ms": v["ms_opt_median"],
            "peak_memory_gib": v["peak_mem_alloc_gib"],
            "peak_memory_reserved_gib": v["peak_mem_reserved_gib"],
            "tokens_per_s": v["tokens_per_s"],
            "liger": v["liger_model_patch"],
            "versions": v["versions"],
        })
    }))
}

/// Reads the bytes this process holds on the device.
type UsedReader = fn() -> Option<u64>;
/// Reads cubecl's pool: `(bytes in live tensors, bytes reserved from the driver)`.
type PoolReader = fn() -> Option<(u64, u64)>;

/// Device memory held by this process, read after each step (the driver's reading on CUDA only;
/// cubecl's pools on CUDA and wgpu).
struct DeviceMemory {
    reader: Option<UsedReader>,
    pool: Option<PoolReader>,
    /// In use before the model was built (the CUDA context and libraries), subtracted.
    baseline: Option<u64>,
    /// The device's memory in all.
    total: Option<u64>,
}

impl DeviceMemory {
    fn new(backend: BackendKind) -> Self {
        let (reader, pool, total): (Option<UsedReader>, Option<PoolReader>, _) = match backend {
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => (
                Some(|| sparse_ops::cublaslt::device_memory_used(0).ok()),
                Some(|| {
                    let device = burn::backend::cuda::CudaDevice::new(0);
                    kernels_cubecl::allocation::pool_usage::<burn::backend::Cuda>(&device)
                }),
                sparse_ops::cublaslt::device_memory_total(0).ok(),
            ),
            // cubecl's pool on wgpu too (no driver-level reading there).
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => (
                None,
                Some(|| {
                    let device = burn::backend::wgpu::WgpuDevice::default();
                    kernels_cubecl::allocation::pool_usage::<burn::backend::Wgpu>(&device)
                }),
                None,
            ),
            _ => (None, None, None),
        };
        let baseline = reader.and_then(|read| read());
        Self {
            reader,
            pool,
            baseline,
            total,
        }
    }

    /// An error when `peak` (bytes in use) left less than [`EXHAUSTED_HEADROOM`] of the device
    /// free. cubecl's device thread fails the allocations it cannot make by panicking, and the
    /// step goes on queueing kernels that never run, so a run that filled the device finishes
    /// with figures that are not a training step's (seen at LLaMA3-8B, batch 8 x 2048).
    fn check_not_exhausted(&self, peak: u64) -> anyhow::Result<()> {
        match self.total {
            Some(total) if peak.saturating_add(EXHAUSTED_HEADROOM) >= total => bail!(
                "the step ran out of device memory ({:.1} of {:.1} GiB in use at its peak): its \
                 figures are not valid; try a smaller --batch or --seq",
                gib(peak),
                gib(total)
            ),
            _ => Ok(()),
        }
    }

    fn used(&self) -> Option<u64> {
        self.reader.and_then(|read| read())
    }

    fn pool(&self) -> Option<(u64, u64)> {
        self.pool.and_then(|read| read())
    }
}

/// AdamW as the peer configures it: betas 0.9 / 0.999, epsilon 1e-8, no weight decay.
fn peer_adamw() -> FusedAdamWConfig {
    FusedAdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(0.0)
}

/// Turns the CUDA profiler's collection on or off in order with the queued kernels
/// (`--cuda-profiler-step`); an error on a backend without one.
fn profiler_collect(backend: BackendKind, on: bool) -> anyhow::Result<()> {
    match backend {
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            sparse_ops::cublaslt::profiler_collect(&burn::backend::cuda::CudaDevice::new(0), on);
            Ok(())
        }
        _ => bail!("--cuda-profiler-step needs --backend cuda"),
    }
}

/// Free device memory under which a step is taken to have run out of it.
const EXHAUSTED_HEADROOM: u64 = 256 << 20;

/// Pool figures, each the largest seen, in bytes.
#[derive(Default, Clone, Copy)]
struct PoolPeaks {
    /// Live tensors right after the forward (the activations kept for the backward, plus the
    /// weights and optimizer state): `--breakdown` steps only.
    in_use_after_forward: u64,
    /// Live tensors after a step.
    in_use_after_step: u64,
    /// Reserved from the driver after a step.
    reserved: u64,
}

impl PoolPeaks {
    /// The memory after the build (less `baseline`, bytes in use before it) and these peaks.
    fn to_json(self, built: &Built, baseline: u64) -> Value {
        json!({
            "after_build_gib": built.used.map(|u| gib(u.saturating_sub(baseline))),
            "pool_in_use_after_build_gib": built.pool.map(|(u, _)| gib(u)),
            "pool_in_use_after_forward_gib": (self.in_use_after_forward > 0).then(|| gib(self.in_use_after_forward)),
            "pool_in_use_after_step_gib": gib(self.in_use_after_step),
            "pool_reserved_gib": gib(self.reserved),
        })
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_batch_matches_the_peer() {
        type B = burn::backend::Flex;
        let batch = workload_batch::<B>(2, 8, 3, 1000, &Default::default());
        let ids: Vec<i64> = batch
            .input_ids
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap();
        assert_eq!(&ids[..8], &[100, 101, 102, 103, 104, 105, 106, 107]);
        assert_eq!(&ids[8..], &ids[..8]);
        let labels: Vec<i64> = batch.labels.into_data().convert::<i64>().to_vec().unwrap();
        assert_eq!(&labels[..8], &[-100, -100, -100, -100, -100, 105, 106, 107]);
        assert_eq!(batch.loss_targets.count, 6);
        assert_eq!(batch.answer_tokens.iter().filter(|&&a| a).count(), 6);
    }

    #[test]
    fn quantiles_interpolate() {
        let s = Series(vec![4.0, 1.0, 3.0, 2.0]);
        assert_eq!(s.median(), Some(2.5));
        assert_eq!(s.quantile(0.0), Some(1.0));
        assert_eq!(s.quantile(1.0), Some(4.0));
    }
}
