//! SparseLoRA's place in the training loop (SPEC 6): which steps are sparse, which tokens stay
//! dense, and how long the channel selection takes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use burn::tensor::{backend::Backend, Bool, Int, Tensor};
use llama_burn::LlamaConfig;
use lora::sparse::{
    AttentionProjections, AttnChannels, ChannelSelector, MlpProjections, SparseForward, TokenSplit,
};
use lora::LoraConfig;
use sparselora::flops::{FlopsCounter, StepTokens};
use sparselora::{SparseSetup, StartStep};

use crate::batch::TrainBatch;
use crate::sampler::{splitmix, GOLDEN_GAMMA};

/// How a run uses SparseLoRA.
pub struct SparseTraining<'a, B: Backend> {
    /// Chooses each layer's channels (the SVD estimator, its oracle, or random).
    pub selector: &'a dyn ChannelSelector<B>,
    /// When the sparse path starts; steps before it train dense.
    pub start_step: StartStep,
    /// Answer tokens (label not ignored) take the dense path; false sends every token sparse.
    pub dense_answer_tokens: bool,
    /// Fraction of answer tokens sent through the sparse path anyway, drawn per micro-batch.
    pub sparse_answer_fraction: f64,
    /// Reference-compat: no input gradient through sliced frozen bases that carry adapters.
    pub drop_sliced_input_grad: bool,
    /// Counts a sparse micro-batch's analytic FLOPs: `(as computed, as dense LoRA)`; the step
    /// log reports their ratio.
    pub flops: Option<BatchFlops<'a, B>>,
}

/// See [`SparseTraining::flops`].
pub type BatchFlops<'a, B> = Box<dyn Fn(&TrainBatch<B>, &SparseForward<'_, B>) -> (f64, f64) + 'a>;

impl<'a, B: Backend> SparseTraining<'a, B> {
    /// The loop's view of `setup`; the step log's FLOPs are counted for `model` with `lora`.
    pub fn from_setup(
        setup: &'a SparseSetup<B>,
        model: &'a LlamaConfig,
        lora: &'a LoraConfig,
    ) -> Self {
        let counter = FlopsCounter::new(model, lora).with_sparsity_config(&setup.config);
        let plan = &setup.plan;
        let flops: BatchFlops<'a, B> = Box::new(move |batch, forward| {
            let [sequences, seq_len] = batch.input_ids.dims();
            let tokens = StepTokens {
                sequences,
                seq_len,
                answer_tokens: batch.answer_tokens.iter().filter(|&&a| a).count(),
                logit_tokens: batch.loss_targets.count,
                dense_tokens: forward.split.as_ref().map_or(0, |s| s.n_dense()),
            };
            let step = counter.step(&tokens, Some(plan));
            (step.sparse.total() as f64, step.dense.total() as f64)
        });
        Self {
            selector: &setup.selector,
            start_step: setup.config.start_step,
            dense_answer_tokens: setup.config.dense_answer_tokens,
            sparse_answer_fraction: setup.config.sparse_answer_fraction,
            drop_sliced_input_grad: setup.config.reference_compat,
            flops: Some(flops),
        }
    }
}

impl<B: Backend> SparseTraining<'_, B> {
    /// Whether optimizer step `step` (0-based) of a run of `total_steps` runs sparse.
    pub fn is_sparse_at(&self, step: usize, total_steps: usize) -> bool {
        step >= self.start_step.dense_steps(total_steps)
    }

    /// The sparse forward of one micro-batch: `answer_tokens` is the batch's row-major answer
    /// mask; `draw` seeds the choice of answer tokens sent sparse (same draw on a resumed run).
    pub fn forward_for<'s>(
        &'s self,
        selector: &'s dyn ChannelSelector<B>,
        answer_tokens: &[bool],
        draw: u64,
        device: &B::Device,
    ) -> SparseForward<'s, B> {
        let split = self.dense_answer_tokens.then(|| {
            let dense: Vec<bool> = answer_tokens
                .iter()
                .enumerate()
                .map(|(row, &answer)| {
                    answer && unit_interval(draw, row as u64) >= self.sparse_answer_fraction
                })
                .collect();
            TokenSplit::from_dense_mask(&dense, device)
        });
        SparseForward {
            selector,
            split,
            drop_sliced_input_grad: self.drop_sliced_input_grad,
        }
    }
}

/// A deterministic draw in `[0, 1)` from `(seed, index)`: the SplitMix64 output at position
/// `index` of the stream seeded with `seed`.
fn unit_interval(seed: u64, index: u64) -> f64 {
    let z = splitmix(seed.wrapping_add(index.wrapping_mul(GOLDEN_GAMMA)));
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Wraps a selector and adds up the wall-clock time of its calls. The device is synchronised
/// before and after each call, so on asynchronous backends (CUDA, wgpu) the time is the
/// selection's own work, not the queue in front of it.
///
/// Synchronising stalls the device's queue, so only steps that ask for it are timed
/// ([`Self::set_timing`]); the others run the selector untouched.
pub struct TimedSelector<'a, B: Backend> {
    inner: &'a dyn ChannelSelector<B>,
    device: B::Device,
    elapsed: Cell<Duration>,
    timing: Cell<bool>,
}

impl<'a, B: Backend> TimedSelector<'a, B> {
    /// Times `inner` on `device`.
    pub fn new(inner: &'a dyn ChannelSelector<B>, device: &B::Device) -> Self {
        Self {
            inner,
            device: device.clone(),
            elapsed: Cell::new(Duration::ZERO),
            timing: Cell::new(true),
        }
    }

    /// Whether the next calls are timed (and the device synchronised around them).
    pub fn set_timing(&self, on: bool) {
        self.timing.set(on);
    }

    /// Time spent in selections since the last call, and resets it.
    pub fn take_elapsed(&self) -> Duration {
        self.elapsed.replace(Duration::ZERO)
    }

    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        if !self.timing.get() {
            return f();
        }
        // A failed sync only makes the timing less precise; the training step reports the error
        // itself at its next read of a tensor.
        let _ = B::sync(&self.device);
        let start = Instant::now();
        let out = f();
        let _ = B::sync(&self.device);
        self.elapsed.set(self.elapsed.get() + start.elapsed());
        out
    }
}

impl<B: Backend> ChannelSelector<B> for TimedSelector<'_, B> {
    fn attention(
        &self,
        layer: usize,
        attn: AttentionProjections<'_, B>,
        x: Tensor<B, 3>,
        tokens: Tensor<B, 2, Bool>,
    ) -> Option<AttnChannels<B>> {
        self.timed(|| self.inner.attention(layer, attn, x, tokens))
    }

    fn mlp(
        &self,
        layer: usize,
        mlp: MlpProjections<'_, B>,
        x: Tensor<B, 3>,
        tokens: Tensor<B, 2, Bool>,
    ) -> Option<Tensor<B, 1, Int>> {
        self.timed(|| self.inner.mlp(layer, mlp, x, tokens))
    }
}

/// Wraps a selector and, when asked to, replays the channels it last chose for each layer and
/// block instead of running it: the same sparse compute with none of the selection's work. Timing
/// steps with and without replay measures what the estimator costs a step end to end, overlap
/// with the rest of the step included (`cargo xtask bench step --estimator-overhead`); the
/// synchronised split of [`TimedSelector`] instead charges the estimator the idle time its
/// synchronisations cause.
///
/// A layer with no recorded choice yet asks the inner selector even while replaying.
pub struct ReplaySelector<'a, B: Backend> {
    inner: &'a dyn ChannelSelector<B>,
    replay: Cell<bool>,
    attention: RefCell<HashMap<usize, Option<AttnChannels<B>>>>,
    mlp: RefCell<HashMap<usize, Option<Tensor<B, 1, Int>>>>,
}

impl<'a, B: Backend> ReplaySelector<'a, B> {
    /// Records what `inner` chooses; replays nothing until [`Self::set_replay`].
    pub fn new(inner: &'a dyn ChannelSelector<B>) -> Self {
        Self {
            inner,
            replay: Cell::new(false),
            attention: RefCell::new(HashMap::new()),
            mlp: RefCell::new(HashMap::new()),
        }
    }

    /// Whether the next calls replay the recorded channels (true) or ask the inner selector and
    /// record its answer (false).
    pub fn set_replay(&self, on: bool) {
        self.replay.set(on);
    }

    /// `layer`'s recorded choice in `book` when replaying and there is one; otherwise `ask`'s
    /// answer, recorded.
    fn recall<T: Clone>(
        &self,
        book: &RefCell<HashMap<usize, Option<T>>>,
        layer: usize,
        ask: impl FnOnce() -> Option<T>,
    ) -> Option<T> {
        if self.replay.get() {
            if let Some(channels) = book.borrow().get(&layer) {
                return channels.clone();
            }
        }
        let channels = ask();
        book.borrow_mut().insert(layer, channels.clone());
        channels
    }
}

impl<B: Backend> ChannelSelector<B> for ReplaySelector<'_, B> {
    fn attention(
        &self,
        layer: usize,
        attn: AttentionProjections<'_, B>,
        x: Tensor<B, 3>,
        tokens: Tensor<B, 2, Bool>,
    ) -> Option<AttnChannels<B>> {
        self.recall(&self.attention, layer, || {
            self.inner.attention(layer, attn, x, tokens)
        })
    }

    fn mlp(
        &self,
        layer: usize,
        mlp: MlpProjections<'_, B>,
        x: Tensor<B, 3>,
        tokens: Tensor<B, 2, Bool>,
    ) -> Option<Tensor<B, 1, Int>> {
        self.recall(&self.mlp, layer, || self.inner.mlp(layer, mlp, x, tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestBackend = burn::backend::Flex;

    /// Answers every MLP call with one channel, the number of calls so far; no attention.
    struct Counting(Cell<i64>);

    impl ChannelSelector<TestBackend> for Counting {
        fn attention(
            &self,
            _: usize,
            _: AttentionProjections<'_, TestBackend>,
            _: Tensor<TestBackend, 3>,
            _: Tensor<TestBackend, 2, Bool>,
        ) -> Option<AttnChannels<TestBackend>> {
            None
        }

        fn mlp(
            &self,
            _: usize,
            _: MlpProjections<'_, TestBackend>,
            _: Tensor<TestBackend, 3>,
            _: Tensor<TestBackend, 2, Bool>,
        ) -> Option<Tensor<TestBackend, 1, Int>> {
            let call = self.0.get();
            self.0.set(call + 1);
            Some(Tensor::from_data([call], &Default::default()))
        }
    }

    #[test]
    fn replay_returns_the_last_recorded_channels_without_asking_again() {
        let device = Default::default();
        let config = LlamaConfig::preset("tiny").unwrap();
        let model = llama_burn::LlamaForCausalLM::<TestBackend>::new(&config, &device);
        let layer = &model.model.layers[0];
        let x = Tensor::<TestBackend, 3>::zeros([1, 2, config.hidden_size], &device);
        let tokens = Tensor::<TestBackend, 2, Bool>::from_data([[true, true]], &device);
        let inner = Counting(Cell::new(0));
        let replay = ReplaySelector::new(&inner);
        let ask = |layer_index: usize| -> i64 {
            let idx = replay
                .mlp(
                    layer_index,
                    layer.mlp.projections(),
                    x.clone(),
                    tokens.clone(),
                )
                .unwrap();
            idx.into_data().convert::<i64>().into_vec::<i64>().unwrap()[0]
        };
        // Recording: every call asks the inner selector.
        assert_eq!((ask(0), ask(0)), (0, 1));
        replay.set_replay(true);
        // Layer 0 replays its last choice; layer 1 was never recorded, so it is asked (and
        // recorded).
        assert_eq!((ask(0), ask(0), ask(1), ask(1)), (1, 1, 2, 2));
        replay.set_replay(false);
        assert_eq!(ask(0), 3);
        assert_eq!(inner.0.get(), 4);
    }

    #[test]
    fn unit_interval_is_uniform_enough_and_deterministic() {
        let draws: Vec<f64> = (0..10_000).map(|i| unit_interval(42, i)).collect();
        assert!(draws.iter().all(|&d| (0.0..1.0).contains(&d)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        assert_eq!(unit_interval(42, 7), unit_interval(42, 7));
        assert_ne!(unit_interval(42, 7), unit_interval(43, 7));
    }

    #[test]
    fn unit_interval_is_pinned() {
        // Values as first written: a change of generator would change which answer tokens a
        // run sends sparse.
        assert_eq!(
            [
                unit_interval(42, 0),
                unit_interval(42, 17),
                unit_interval(7, 1 << 33)
            ],
            [0.7415648787718233, 0.49549865814924343, 0.5402433805093944]
        );
    }
}
