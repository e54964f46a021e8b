//! The fine-tuning loop: micro-batches, forward and loss, backward, accumulate, clip, AdamW step,
//! log, checkpoint. Generic over the backend and the model (any [`CausalLm`]); dense LoRA and
//! SparseLoRA share it.
//!
//! Resuming is exact: the schedule is a pure function of the step, the data order a pure function
//! of (seed, epoch), dropout is reseeded from (seed, micro-step), adapter parameters carry ids
//! derived from their names so the saved optimizer state finds them again, and checkpoints hold
//! the adapter in f32.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleMapper, Param, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::{backend::AutodiffBackend, backend::Backend, Tensor};

use crate::batch::TrainBatch;
use crate::causal_lm::CausalLm;
use crate::checkpoint::{latest_checkpoint, save_checkpoint, TrainState};
use crate::grad_norm::IntoScalarF64;
use crate::metrics::{MetricsLog, StepMetrics};
use crate::optim::{FusedAdamW, FusedAdamWConfig};
use crate::schedule::CosineSchedule;
use crate::sparse_step::{SparseTraining, TimedSelector};
use crate::step::{apply_gradients, backward_into};
use crate::train_config::TrainConfig;

/// Training data as the loop sees it: an epoch-indexed, deterministic sequence of micro-batches.
pub trait MicroBatches<B: Backend> {
    /// Micro-batches in one epoch.
    fn batches_per_epoch(&self) -> usize;
    /// Micro-batch `index` of epoch `epoch` (shuffled by the source's seed and `epoch`), with
    /// its number of real (non-padding) tokens.
    fn batch(&self, epoch: usize, index: usize, device: &B::Device) -> (TrainBatch<B>, usize);
}

/// Why training stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error("loss is {loss} at step {step} (epoch {epoch}, batch {batch}); stopping. The last good checkpoint in {out} is kept: lower the learning rate or check the data, then --resume")]
    NonFiniteLoss {
        /// Optimizer step being computed.
        step: usize,
        /// Epoch of the bad micro-batch.
        epoch: usize,
        /// Index of the bad micro-batch within its epoch.
        batch: usize,
        /// The value.
        loss: f64,
        /// The output folder.
        out: PathBuf,
    },
    /// The data yields no batch.
    #[error("the training data is empty")]
    NoData,
    /// Checkpoint I/O failed.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// Loading or saving the adapter failed.
    #[error(transparent)]
    Adapter(#[from] lora::LoraError),
    /// Anything else on disk (metrics, optimizer state).
    #[error("{context}: {message}")]
    Io {
        /// What was being done.
        context: String,
        /// What failed.
        message: String,
    },
}

fn io_error(context: &str, message: impl std::fmt::Display) -> TrainError {
    TrainError::Io {
        context: context.into(),
        message: message.to_string(),
    }
}

/// Sparse steps whose channel selection is timed: one in this many.
pub const ESTIMATOR_TIMING_EVERY: usize = 10;

/// Where and how a run happens, beyond the hyper-parameters.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Output folder (checkpoints, metrics, final adapter).
    pub out: PathBuf,
    /// Continue from the newest checkpoint in `out`.
    pub resume: bool,
    /// Stop (as if killed) after this many optimizer steps of this invocation, right after
    /// checkpointing; used to test resumption.
    pub stop_after: Option<usize>,
    /// Name recorded as `base_model_name_or_path` in the saved adapters.
    pub base_model_name: String,
}

/// Called after each optimizer step (progress bars, live logs).
pub trait StepObserver {
    /// A step finished.
    fn on_step(&mut self, metrics: &StepMetrics, total_steps: usize);
}

impl StepObserver for () {
    fn on_step(&mut self, _: &StepMetrics, _: usize) {}
}

/// FNV-1a: a hash that is stable across Rust versions, for parameter ids stored in checkpoints.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Gives every adapter parameter (`...lora_a`, `...lora_b`) an id derived from its module path,
/// so optimizer state saved by one process is found by the next.
pub fn assign_stable_adapter_ids<B: Backend, M: Module<B>>(model: M) -> M {
    struct StableIds {
        path: Vec<String>,
    }
    impl<B: Backend> ModuleMapper<B> for StableIds {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_owned());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let path = self.path.join(".");
            if !path.contains("lora") {
                return param;
            }
            let (_, tensor, mapper) = param.consume();
            Param::from_mapped_value(ParamId::from(stable_hash(&path)), tensor, mapper)
        }
    }
    model.map(&mut StableIds { path: Vec::new() })
}

/// The run's optimizer steps: `epochs` over the data, capped by `max_steps` (alone when
/// `epochs` is 0).
fn total_steps(config: &TrainConfig, batches_per_epoch: usize) -> usize {
    let steps_per_epoch = batches_per_epoch.div_ceil(config.grad_accum());
    let total = steps_per_epoch * config.epochs;
    match config.max_steps {
        Some(max) if config.epochs == 0 => max,
        Some(max) => total.min(max),
        None => total,
    }
}

/// How checkpoints store the optimizer state (full precision: the f32 moments are state).
type CheckpointRecorder = NamedMpkFileRecorder<FullPrecisionSettings>;

/// Runs (or resumes) fine-tuning; returns the trained model and the final state. With `sparse`,
/// steps from its `dense_steps` on take the SparseLoRA path.
pub fn train<B, M, D, O>(
    model: M,
    data: &D,
    config: &TrainConfig,
    run: &RunOptions,
    sparse: Option<&SparseTraining<'_, B>>,
    observer: &mut O,
    device: &B::Device,
) -> Result<(M, TrainState), TrainError>
where
    B: AutodiffBackend,
    M: CausalLm<B> + AutodiffModule<B>,
    D: MicroBatches<B>,
    O: StepObserver,
{
    let per_epoch = data.batches_per_epoch();
    if per_epoch == 0 {
        return Err(TrainError::NoData);
    }
    let total_steps = total_steps(config, per_epoch);
    let schedule = CosineSchedule::new(config.learning_rate, config.warmup_ratio, total_steps);
    let recorder = CheckpointRecorder::new();
    let (mut model, mut optim, mut state) =
        start_or_resume(model, config, run, &recorder, total_steps, device)?;
    let mut metrics =
        MetricsLog::open(&run.out).map_err(|e| io_error("opening metrics.jsonl", e))?;
    let started_at = state.step;
    let timed = sparse.map(|s| TimedSelector::new(s.selector, device));
    let mut size_cache = SizeCache::default();
    while state.step < total_steps {
        let start = Instant::now();
        let sparse_now = sparse.filter(|s| s.is_sparse_at(state.step, total_steps));
        // The estimator's time is measured on one step in ten (measuring synchronises the device).
        let timed_step = (state.step + 1).is_multiple_of(ESTIMATOR_TIMING_EVERY);
        timed.iter().for_each(|t| t.set_timing(timed_step));
        let lr = schedule.lr(state.step);
        let (stepped, grad_norm, (loss_sum, tokens, flops_ratio)) =
            size_cache.step::<B, _>(sparse_now.is_some(), device, || {
                let micro = (sparse_now, timed.as_ref());
                let step = accumulate(&model, data, config, run, &mut state, micro, device)?;
                let summary = (step.loss_sum, step.tokens, step.flops_ratio());
                let (stepped, norm) =
                    apply_gradients(model, &mut optim, step.grads, lr, config.max_grad_norm);
                Ok::<_, TrainError>((stepped, norm, summary))
            })?;
        model = stepped;
        state.step += 1;
        state.last_loss = loss_sum / config.grad_accum() as f64;
        let elapsed = start.elapsed().as_secs_f64();
        let m = StepMetrics {
            step: state.step,
            epoch: state.epoch,
            loss: state.last_loss,
            lr,
            grad_norm: grad_norm.into_scalar_f64(),
            tokens,
            tokens_per_s: tokens as f64 / elapsed.max(1e-9),
            step_time_s: elapsed,
            sparse: sparse_now.is_some(),
            estimator_s: (timed.as_ref())
                .filter(|_| timed_step && sparse_now.is_some())
                .map(|t| t.take_elapsed().as_secs_f64()),
            flops_ratio: sparse.map(|_| flops_ratio),
        };
        metrics
            .write(&m)
            .map_err(|e| io_error("writing metrics.jsonl", e))?;
        observer.on_step(&m, total_steps);

        let killed = run.stop_after.is_some_and(|n| state.step - started_at >= n);
        if state.step.is_multiple_of(config.save_every) || state.step == total_steps || killed {
            checkpoint(&model, &optim, &recorder, &state, config, run)?;
        }
        if killed {
            break;
        }
    }
    Ok((model, state))
}

/// Which kinds of step have run with the allocator caching their buffer sizes
/// ([`kernels_cubecl::with_allocations_cached_by_size`]): the first dense and the first sparse step
/// of the process do (their buffers differ); the rest reuse those sizes.
#[derive(Default)]
struct SizeCache {
    dense_seen: bool,
    sparse_seen: bool,
}

impl SizeCache {
    /// Runs one step of its kind, under the size cache when it is the first of that kind.
    fn step<B: Backend, R>(
        &mut self,
        sparse: bool,
        device: &B::Device,
        f: impl FnOnce() -> R,
    ) -> R {
        if self.first_of_its_kind(sparse) {
            kernels_cubecl::with_allocations_cached_by_size::<B, _>(device, f)
        } else {
            f()
        }
    }

    /// Whether a step of this kind is the first; records that one has run.
    fn first_of_its_kind(&mut self, sparse: bool) -> bool {
        let seen = if sparse {
            &mut self.sparse_seen
        } else {
            &mut self.dense_seen
        };
        !std::mem::replace(seen, true)
    }
}

/// The optimizer and the state to start from: fresh, or the newest checkpoint in `run.out` when
/// resuming (adapter and optimizer state restored). Creates the output folder.
fn start_or_resume<B, M>(
    model: M,
    config: &TrainConfig,
    run: &RunOptions,
    recorder: &CheckpointRecorder,
    total_steps: usize,
    device: &B::Device,
) -> Result<(M, FusedAdamW<M, B>, TrainState), TrainError>
where
    B: AutodiffBackend,
    M: CausalLm<B> + AutodiffModule<B>,
{
    let mut optim = FusedAdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(config.adam_epsilon as f32)
        .with_weight_decay(config.weight_decay as f32)
        .init::<B, M>();
    std::fs::create_dir_all(&run.out).map_err(|e| {
        io_error(
            "creating the output folder",
            format!("{}: {e}", run.out.display()),
        )
    })?;
    let mut model = assign_stable_adapter_ids(model);
    let mut state = TrainState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        seed: config.seed,
        total_steps,
        last_loss: f64::NAN,
    };
    if run.resume {
        if let Some((dir, saved)) = latest_checkpoint(&run.out)? {
            model = assign_stable_adapter_ids(model.load_adapter(&dir, device)?);
            let record = recorder.load(dir.join("optimizer"), device).map_err(|e| {
                io_error("loading optimizer state", format!("{}: {e}", dir.display()))
            })?;
            optim = optim.load_record(record);
            state = TrainState {
                total_steps,
                ..saved
            };
            eprintln!("resuming from {} (step {})", dir.display(), state.step);
        }
    }
    Ok((model, optim, state))
}

/// One optimizer step's micro-batches, before the update.
struct Accumulated {
    grads: GradientsParams,
    loss_sum: f64,
    tokens: usize,
    /// Analytic FLOPs (this step, the same step dense); zeros when not counted.
    flops: (f64, f64),
}

impl Accumulated {
    fn flops_ratio(&self) -> f64 {
        if self.flops.1 > 0.0 {
            self.flops.0 / self.flops.1
        } else {
            1.0
        }
    }
}

/// Forward, loss and backward of each micro-batch of the step `state.step`, gradients
/// accumulated; advances `state`'s position in the data. `micro` is the sparse path of this step
/// (when it is sparse) and the timed selector.
fn accumulate<B, M, D>(
    model: &M,
    data: &D,
    config: &TrainConfig,
    run: &RunOptions,
    state: &mut TrainState,
    (sparse_now, timed): (
        Option<&SparseTraining<'_, B>>,
        Option<&TimedSelector<'_, B>>,
    ),
    device: &B::Device,
) -> Result<Accumulated, TrainError>
where
    B: AutodiffBackend,
    M: CausalLm<B> + AutodiffModule<B>,
    D: MicroBatches<B>,
{
    let (accum, per_epoch) = (config.grad_accum(), data.batches_per_epoch());
    let mut accumulator = GradientsAccumulator::<M>::new();
    let (mut loss_sum, mut tokens, mut flops) = (0.0, 0, (0.0, 0.0));
    for micro in 0..accum {
        let (epoch, index) = (state.epoch, state.batch_in_epoch);
        let (batch, batch_tokens) = data.batch(epoch, index, device);
        state.batch_in_epoch += 1;
        if state.batch_in_epoch == per_epoch {
            state.batch_in_epoch = 0;
            state.epoch += 1;
        }
        // Dropout masks (and the answer tokens sent sparse) depend only on (seed,
        // micro-step): a resumed run draws the same ones.
        let draw = config.seed ^ ((state.step * accum + micro) as u64).wrapping_mul(0x9E37_79B9);
        B::seed(device, draw);
        tokens += batch_tokens;
        // Logits only where an answer token is predicted: same loss as HF's, far less work.
        let forward = match (sparse_now, timed) {
            (Some(s), Some(timed)) => {
                let forward = s.forward_for(timed, &batch.answer_tokens, draw, device);
                if let Some(count) = &s.flops {
                    let (step, dense) = count(&batch, &forward);
                    flops = (flops.0 + step, flops.1 + dense);
                }
                Some(forward)
            }
            _ => None,
        };
        let loss = model.loss(batch, forward.as_ref());
        let value = backward_into(model, loss, accum, &mut accumulator).into_scalar_f64();
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                step: state.step,
                epoch,
                batch: index,
                loss: value,
                out: run.out.clone(),
            });
        }
        loss_sum += value;
    }
    Ok(Accumulated {
        grads: accumulator.grads(),
        loss_sum,
        tokens,
        flops,
    })
}

/// Saves the adapter and the optimizer state as the checkpoint of `state.step`.
fn checkpoint<B, M>(
    model: &M,
    optim: &FusedAdamW<M, B>,
    recorder: &CheckpointRecorder,
    state: &TrainState,
    config: &TrainConfig,
    run: &RunOptions,
) -> Result<(), TrainError>
where
    B: AutodiffBackend,
    M: CausalLm<B> + AutodiffModule<B>,
{
    save_checkpoint(&run.out, state, config.keep_checkpoints, |dir: &Path| {
        model
            .save_adapter(dir, &run.base_model_name)
            .map_err(|e| e.to_string())?;
        recorder
            .record(optim.to_record(), dir.join("optimizer"))
            .map_err(|e| format!("optimizer state: {e}"))
    })?;
    Ok(())
}

#[cfg(test)]
mod size_cache_tests {
    use super::SizeCache;

    #[test]
    fn the_first_dense_and_the_first_sparse_step_are_cached_once_each() {
        let mut cache = SizeCache::default();
        // A SparseLoRA run: dense steps first (SPEC's dense start), then sparse ones.
        let kinds = [false, false, true, true, false, true];
        let firsts: Vec<bool> = kinds.iter().map(|&s| cache.first_of_its_kind(s)).collect();
        assert_eq!(firsts, [true, false, true, false, false, false]);
    }
}
