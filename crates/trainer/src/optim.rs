//! AdamW with global-norm clipping in a few kernel launches for all parameters ([`FusedAdamW`]).
//!
//! burn's `AdamW` (through its `OptimizerAdaptor`) runs about 15 tensor ops per parameter, and
//! [`clip_global_norm_on_device`] 4 more; each op is one kernel launch, and on a GPU the host's
//! launch cost then dominates the step (~4,800 launches for the 256 LoRA tensors of LLaMA3-8B).
//! [`FusedAdamW`] computes the same step with `kernels-cubecl`'s fused kernels on burn-wgpu and
//! burn-cuda: sums of squares of up to 16 gradients per launch and one launch for the norm and
//! clip factor ([`GlobalNorm`]), then AdamW for up to 16 parameters per launch ([`AdamWBatch`])
//! that scales the gradients by the clip factor itself. Nothing is read back to the host. On
//! other backends the same functions run burn's ops in burn's order, so results equal burn's
//! AdamW exactly there.
//!
//! Its state is burn's: the record type is `OptimizerAdaptor<AdamW, M, B>`'s (a map from
//! parameter ids to `AdamWState`/`AdaptiveMomentumState`), so checkpoints written by either
//! optimizer resume with the other.

use std::marker::PhantomData;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::record::AdaptorRecord;
use burn::optim::{
    AdamW, AdamWState, AdaptiveMomentumState, GradientsParams, LearningRate, MultiGradientsParams,
    Optimizer, SimpleOptimizer,
};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor};
use kernels_cubecl::adamw::{adamw_update, AdamWBatch, AdamWStep, GlobalNorm};

use crate::grad_norm::clip_global_norm_on_device;

/// The optimizer state of [`FusedAdamW`]: the very type of burn's AdamW record
/// (`OptimizerAdaptor<AdamW, M, B>`), so either optimizer loads the other's checkpoints.
pub type FusedAdamWRecord<M, B> = <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record;

/// [`FusedAdamW`]'s hyper-parameters; the defaults are burn's `AdamWConfig`'s. burn's AMSGrad,
/// cautious weight decay and per-tensor gradient clipping are not offered (the training loop
/// uses none of them; global-norm clipping is [`ClippedOptimizer::clip_and_step`]'s).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusedAdamWConfig {
    /// Decay of the first moment (default 0.9).
    pub beta_1: f32,
    /// Decay of the second moment (default 0.999).
    pub beta_2: f32,
    /// Added to the square root of the second moment (default 1e-5).
    pub epsilon: f32,
    /// Decoupled weight decay (default 1e-4).
    pub weight_decay: f32,
}

impl Default for FusedAdamWConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl FusedAdamWConfig {
    /// burn's `AdamWConfig::new()` defaults.
    pub fn new() -> Self {
        Self {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-5,
            weight_decay: 1e-4,
        }
    }

    /// Sets `beta_1`.
    pub fn with_beta_1(mut self, beta_1: f32) -> Self {
        self.beta_1 = beta_1;
        self
    }

    /// Sets `beta_2`.
    pub fn with_beta_2(mut self, beta_2: f32) -> Self {
        self.beta_2 = beta_2;
        self
    }

    /// Sets `epsilon`.
    pub fn with_epsilon(mut self, epsilon: f32) -> Self {
        self.epsilon = epsilon;
        self
    }

    /// Sets `weight_decay`.
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// The optimizer for module `M`, with no state yet.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(&self) -> FusedAdamW<M, B> {
        FusedAdamW {
            config: *self,
            records: Default::default(),
            module: PhantomData,
        }
    }
}

/// An optimizer that clips the gradients to a global L2 norm before its step, and returns that
/// norm (before clipping) on the device.
pub trait ClippedOptimizer<M, B>: Optimizer<M, B>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
{
    /// Scales `grads` so that their global norm is at most `max_norm` (as
    /// [`clip_global_norm_on_device`]: factor `max_norm / (norm + 1e-6)` when below 1, none when
    /// the norm is not finite), applies one step at learning rate `lr`, and returns the module
    /// and the norm before clipping (`[1]`, f32, on the device; 0 when there is no gradient).
    fn clip_and_step(
        &mut self,
        lr: LearningRate,
        module: M,
        grads: GradientsParams,
        max_norm: f64,
    ) -> (M, Tensor<B::InnerBackend, 1>);
}

/// burn's optimizers: [`clip_global_norm_on_device`], then their own step.
impl<O, M, B> ClippedOptimizer<M, B> for OptimizerAdaptor<O, M, B>
where
    O: SimpleOptimizer<B::InnerBackend>,
    M: AutodiffModule<B>,
    B: AutodiffBackend,
{
    fn clip_and_step(
        &mut self,
        lr: LearningRate,
        module: M,
        mut grads: GradientsParams,
        max_norm: f64,
    ) -> (M, Tensor<B::InnerBackend, 1>) {
        let norm = clip_global_norm_on_device(&module, &mut grads, max_norm);
        (self.step(lr, module, grads), norm)
    }
}

/// burn 0.21's AdamW (`AdamWConfig` without AMSGrad or cautious decay) in fused kernels, with
/// global-norm clipping folded into the update (see the [module](self) documentation).
///
/// As burn's `OptimizerAdaptor`: parameters without a gradient are left as they are and keep
/// their state; a parameter's state starts at its first gradient (`time` 1), and its moments
/// follow the parameter's device.
pub struct FusedAdamW<M, B>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
{
    config: FusedAdamWConfig,
    records: FusedAdamWRecord<M, B>,
    module: PhantomData<M>,
}

impl<M, B> Clone for FusedAdamW<M, B>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
{
    fn clone(&self) -> Self {
        Self {
            config: self.config,
            records: self.records.clone(),
            module: PhantomData,
        }
    }
}

impl<M, B> FusedAdamW<M, B>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
{
    /// The hyper-parameters.
    pub fn config(&self) -> &FusedAdamWConfig {
        &self.config
    }

    /// One step with every gradient first multiplied by `scale` (`[1]`, f32; 1 when `None`).
    fn step_scaled(
        &mut self,
        lr: LearningRate,
        module: M,
        mut grads: GradientsParams,
        scale: Option<Tensor<B::InnerBackend, 1>>,
    ) -> M {
        let mut update = Update::<B, M> {
            config: &self.config,
            records: &mut self.records,
            grads: &mut grads,
            lr,
            scale,
            batch: None,
        };
        let module = module.map(&mut update);
        if let Some(batch) = update.batch.take() {
            batch.finish();
        }
        module
    }
}

impl<M, B> ClippedOptimizer<M, B> for FusedAdamW<M, B>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
{
    fn clip_and_step(
        &mut self,
        lr: LearningRate,
        module: M,
        grads: GradientsParams,
        max_norm: f64,
    ) -> (M, Tensor<B::InnerBackend, 1>) {
        let mut norm = SquaredNorm::<B> {
            grads: &grads,
            norm: GlobalNorm::new(),
        };
        module.visit(&mut norm);
        match norm.norm.clip(max_norm) {
            Some((norm, factor)) => (self.step_scaled(lr, module, grads, Some(factor)), norm),
            None => {
                // No gradient at all: nothing to update, and a zero norm on the module's device.
                let device = module.devices().first().cloned().unwrap_or_default();
                (module, Tensor::zeros([1], (&device, DType::F32)))
            }
        }
    }
}

impl<M, B> Optimizer<M, B> for FusedAdamW<M, B>
where
    M: AutodiffModule<B>,
    B: AutodiffBackend,
{
    type Record = FusedAdamWRecord<M, B>;

    /// One step without clipping (see [`ClippedOptimizer::clip_and_step`]).
    fn step(&mut self, lr: LearningRate, module: M, grads: GradientsParams) -> M {
        self.step_scaled(lr, module, grads, None)
    }

    fn step_multi(&mut self, lr: LearningRate, module: M, grads: MultiGradientsParams) -> M {
        let mut gather = Gather {
            from: grads,
            into: GradientsParams::new(),
        };
        module.visit(&mut gather);
        self.step(lr, module, gather.into)
    }

    fn to_record(&self) -> Self::Record {
        self.records.clone()
    }

    fn load_record(mut self, record: Self::Record) -> Self {
        self.records = record;
        self
    }
}

/// Pushes every gradient present in `grads` for a module's parameters into a [`GlobalNorm`], in
/// the module's order.
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    norm: GlobalNorm<B::InnerBackend>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.norm.push(grad);
        }
    }
}

/// Moves the (summed) gradients of a module's parameters from several devices into one
/// [`GradientsParams`], each on the device burn's adaptor would pick.
struct Gather {
    from: MultiGradientsParams,
    into: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some((grad, _device)) = self.from.remove::<B::InnerBackend, D>(param.id) {
            self.into.register(param.id, grad);
        }
    }
}

/// Steps every parameter that has a gradient: those on the clip factor's device through one
/// [`AdamWBatch`], others by [`adamw_update`].
struct Update<'a, B: AutodiffBackend, M: AutodiffModule<B>> {
    config: &'a FusedAdamWConfig,
    records: &'a mut FusedAdamWRecord<M, B>,
    grads: &'a mut GradientsParams,
    lr: LearningRate,
    /// The clip factor; created as 1 on first use when not clipping.
    scale: Option<Tensor<B::InnerBackend, 1>>,
    /// The steps of the parameters on the clip factor's device, launched together once every
    /// parameter is mapped.
    batch: Option<AdamWBatch<B::InnerBackend>>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> ModuleMapper<B> for Update<'_, B, M> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let device = grad.device();
        let require_grad = tensor.is_require_grad();
        let tensor = if tensor.device() != device {
            tensor.to_device(&device)
        } else {
            tensor
        };
        let scale = self
            .scale
            .get_or_insert_with(|| Tensor::ones([1], (&device, DType::F32)))
            .clone();

        let (key, record) = self.records.remove_entry(&id).unzip();
        let state = record.map(|record| record.into_state::<D>().momentum);
        let (time, moment_1, moment_2) = match state {
            Some(state) => (
                state.time + 1,
                state.moment_1.to_device(&device),
                state.moment_2.to_device(&device),
            ),
            // burn's first step sets `m = (1 - beta_1) g`: `beta_1 * 0 + (1 - beta_1) g` exactly.
            None => (1, grad.zeros_like(), grad.zeros_like()),
        };
        let hyper = AdamWStep {
            lr: self.lr,
            beta_1: self.config.beta_1,
            beta_2: self.config.beta_2,
            epsilon: self.config.epsilon,
            weight_decay: self.config.weight_decay,
            time,
        };
        let (updated, moment_1, moment_2) = if scale.device() == device {
            let batch = self.batch.get_or_insert_with(|| AdamWBatch::new(scale));
            batch.push(tensor.inner(), grad, moment_1, moment_2, hyper)
        } else {
            let scale = scale.to_device(&device);
            adamw_update(tensor.inner(), grad, moment_1, moment_2, scale, hyper)
        };
        let state = AdamWState::<B::InnerBackend, D> {
            momentum: AdaptiveMomentumState {
                time,
                moment_1,
                moment_2,
                max_moment_2: None,
            },
        };
        self.records
            .insert(key.unwrap_or(id), AdaptorRecord::from_state(state));

        let mut tensor = Tensor::from_inner(updated);
        if require_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex, Wgpu};
    use burn::module::Module;
    use burn::optim::AdamWConfig;
    use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
    use burn::tensor::backend::Backend;
    use burn::tensor::TensorData;

    #[derive(Module, Debug)]
    struct Small<B: Backend> {
        a: Param<Tensor<B, 2>>,
        b: Param<Tensor<B, 1>>,
        /// Not in the loss: no gradient, left alone.
        frozen: Param<Tensor<B, 2>>,
    }

    fn values(data: TensorData) -> Vec<f32> {
        data.convert::<f32>().to_vec().unwrap()
    }

    fn small<B: AutodiffBackend>(device: &B::Device) -> Small<B> {
        let a: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3).collect();
        Small {
            a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [4, 6]), device)),
            b: Param::from_tensor(Tensor::from_floats(
                [0.5, -1.0, 2.0, 0.25, 1.5, -0.75],
                device,
            )),
            frozen: Param::from_tensor(Tensor::from_floats([[1.0, 2.0]], device)),
        }
    }

    /// A loss whose gradients change with the step; step 1 has a large norm (clipped at
    /// `max_norm` 1), later steps smaller ones.
    fn loss<B: AutodiffBackend>(m: &Small<B>, step: usize) -> Tensor<B, 1> {
        let device = m.a.val().device();
        let k = [8.0, 0.3, 1.2, 0.05][step % 4];
        let x = Tensor::<B, 2>::from_data(
            TensorData::new(
                (0..12)
                    .map(|i| ((i + step) % 5) as f32 * 0.4 - 0.6)
                    .collect(),
                [2, 6],
            ),
            &device,
        );
        let h = x.matmul(m.a.val().transpose()).tanh();
        (h.sum() + m.b.val().powi_scalar(2).sum()) * k
    }

    fn params<B: AutodiffBackend>(m: &Small<B>) -> Vec<f32> {
        let mut v = values(m.a.val().into_data());
        v.extend(values(m.b.val().into_data()));
        v.extend(values(m.frozen.val().into_data()));
        v
    }

    fn config() -> (AdamWConfig, FusedAdamWConfig) {
        let (eps, wd) = (1e-8, 0.01);
        (
            AdamWConfig::new().with_epsilon(eps).with_weight_decay(wd),
            FusedAdamWConfig::new()
                .with_epsilon(eps)
                .with_weight_decay(wd),
        )
    }

    /// `steps` steps of burn's AdamW + `clip_global_norm_on_device` and of [`FusedAdamW`] from
    /// the same module; returns the largest difference of parameters and of norms over the steps.
    fn compare<B: AutodiffBackend>(device: &B::Device, steps: usize) -> (f32, f32) {
        let (burn_config, fused_config) = config();
        let mut reference = small::<B>(device);
        let mut fused = reference.clone();
        let mut burn_optim = burn_config.init::<B, Small<B>>();
        let mut fused_optim = fused_config.init::<B, Small<B>>();
        let (mut param_diff, mut norm_diff) = (0f32, 0f32);
        for step in 0..steps {
            let lr = 1e-2 * (step + 1) as f64;
            let max_norm = 1.0;
            let grads = GradientsParams::from_grads(loss(&reference, step).backward(), &reference);
            let norm_ref;
            (reference, norm_ref) = burn_optim.clip_and_step(lr, reference, grads, max_norm);
            let grads = GradientsParams::from_grads(loss(&fused, step).backward(), &fused);
            let norm_fused;
            (fused, norm_fused) = fused_optim.clip_and_step(lr, fused, grads, max_norm);
            let (a, b) = (values(norm_ref.into_data()), values(norm_fused.into_data()));
            if step == 0 {
                assert!(a[0] > 1.0, "step 1 is meant to clip: norm {}", a[0]);
            }
            norm_diff = norm_diff.max((a[0] - b[0]).abs() / a[0]);
            for (x, y) in params(&reference).iter().zip(params(&fused)) {
                param_diff = param_diff.max((x - y).abs());
            }
        }
        assert_eq!(params(&fused)[30..], [1.0, 2.0], "no gradient: unchanged");
        assert!(fused.a.val().is_require_grad() && fused.b.val().is_require_grad());
        (param_diff, norm_diff)
    }

    #[test]
    fn matches_burns_adamw_with_clipping_on_flex() {
        let (params, norms) = compare::<Autodiff<Flex>>(&Default::default(), 3);
        // The same ops in the same order: equal.
        assert_eq!((params, norms), (0.0, 0.0));
    }

    /// The tests that count kernel launches run one at a time.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[test]
    fn matches_burns_adamw_with_clipping_on_wgpu_kernels() {
        let _serial = serial();
        let before = kernels_cubecl::adamw::fused_launches();
        let (params, norms) = compare::<Autodiff<Wgpu>>(&Default::default(), 3);
        // Per step: 2 sums of squares + 1 clip factor + 2 updates.
        assert_eq!(kernels_cubecl::adamw::fused_launches() - before, 3 * 5);
        assert!(params <= 1e-6, "params differ by {params}");
        assert!(norms <= 1e-5, "norms differ by {norms}");
    }

    #[test]
    fn unclipped_step_matches_burns_adamw() {
        type B = Autodiff<Flex>;
        let device = Default::default();
        let (burn_config, fused_config) = config();
        let mut reference = small::<B>(&device);
        let mut fused = reference.clone();
        let mut burn_optim = burn_config.init::<B, Small<B>>();
        let mut fused_optim = fused_config.init::<B, Small<B>>();
        for step in 0..3 {
            let grads = GradientsParams::from_grads(loss(&reference, step).backward(), &reference);
            reference = burn_optim.step(3e-2, reference, grads);
            let grads = GradientsParams::from_grads(loss(&fused, step).backward(), &fused);
            fused = fused_optim.step(3e-2, fused, grads);
        }
        assert_eq!(params(&reference), params(&fused));
    }

    #[test]
    fn no_gradient_gives_a_zero_norm() {
        type B = Autodiff<Flex>;
        let m = small::<B>(&Default::default());
        let before = params(&m);
        let mut optim = FusedAdamWConfig::new().init::<B, Small<B>>();
        let (m, norm) = optim.clip_and_step(1e-2, m, GradientsParams::new(), 1.0);
        assert_eq!(values(norm.into_data()), [0.0]);
        assert_eq!(params(&m), before);
        assert!(optim.to_record().is_empty());
    }

    /// State saved by burn's AdamW resumes in [`FusedAdamW`] and the other way round, through the
    /// recorder the training loop uses, with the same result as running on uninterrupted.
    #[test]
    fn records_are_burns_and_resume_exactly() {
        type B = Autodiff<Flex>;
        let device = Default::default();
        let dir = std::env::temp_dir().join(format!("fused-adamw-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
        let (burn_config, fused_config) = config();
        let run = |m: Small<B>,
                   optim: &mut dyn FnMut(Small<B>, GradientsParams, usize) -> Small<B>,
                   steps: std::ops::Range<usize>| {
            let mut m = m;
            for step in steps {
                let grads = GradientsParams::from_grads(loss(&m, step).backward(), &m);
                m = optim(m, grads, step);
            }
            m
        };

        // Straight through with burn's optimizer.
        let mut burn_optim = burn_config.init::<B, Small<B>>();
        let straight = run(
            small::<B>(&device),
            &mut |m, g, _| burn_optim.clip_and_step(1e-2, m, g, 1.0).0,
            0..4,
        );

        // Two steps with burn's, saved; two more with the fused one, loaded from the file.
        let mut burn_optim = burn_config.init::<B, Small<B>>();
        let half = run(
            small::<B>(&device),
            &mut |m, g, _| burn_optim.clip_and_step(1e-2, m, g, 1.0).0,
            0..2,
        );
        recorder
            .record(burn_optim.to_record(), dir.join("burn"))
            .unwrap();
        let record = recorder.load(dir.join("burn"), &device).unwrap();
        let mut fused_optim = fused_config.init::<B, Small<B>>().load_record(record);
        let resumed = run(
            half,
            &mut |m, g, _| fused_optim.clip_and_step(1e-2, m, g, 1.0).0,
            2..4,
        );
        assert_eq!(params(&resumed), params(&straight));

        // And back: the fused optimizer's state, saved, continues in burn's.
        recorder
            .record(fused_optim.to_record(), dir.join("fused"))
            .unwrap();
        let record = recorder.load(dir.join("fused"), &device).unwrap();
        let mut burn_optim = burn_optim.load_record(record);
        let mut straight_optim = burn_config.init::<B, Small<B>>();
        let straight = run(
            small::<B>(&device),
            &mut |m, g, _| straight_optim.clip_and_step(1e-2, m, g, 1.0).0,
            0..5,
        );
        let continued = run(
            resumed,
            &mut |m, g, _| burn_optim.clip_and_step(1e-2, m, g, 1.0).0,
            4..5,
        );
        assert_eq!(params(&continued), params(&straight));
        std::fs::remove_dir_all(&dir).ok();
    }

    /// LoRA r32 on q, k, v, o of `layers` LLaMA3-8B layers (`A`: `[32, 4096]`, `B`: `[4096 or
    /// 1024, 32]`): three clipped steps of burn's AdamW and of [`FusedAdamW`] on the same random
    /// gradients must agree; then `timed` steps of each are timed (one sync at the end).
    #[derive(Module, Debug)]
    struct Lora<B: Backend> {
        params: Vec<Param<Tensor<B, 2>>>,
    }

    fn lora_steps<I: Backend>(device: &I::Device, layers: usize, timed: usize) {
        use burn::tensor::Distribution;
        use std::time::Instant;
        type A<I> = Autodiff<I>;
        let shapes: Vec<[usize; 2]> = (0..layers)
            .flat_map(|_| [4096, 1024, 1024, 4096])
            .flat_map(|out| [[32, 4096], [out, 32]])
            .collect();
        let normal = |std: f64| Distribution::Normal(0.0, std);
        let module = Lora::<A<I>> {
            params: shapes
                .iter()
                .map(|&s| Param::from_tensor(Tensor::random(s, normal(0.02), device)))
                .collect(),
        };
        // Gradient norm about 0.01 * sqrt(#elements): well above 1, so every step clips.
        let grads: Vec<Vec<Tensor<I, 2>>> = (0..3)
            .map(|_| {
                shapes
                    .iter()
                    .map(|&s| Tensor::random(s, normal(0.01), device))
                    .collect()
            })
            .collect();
        let gradients = |m: &Lora<A<I>>, step: usize| {
            let mut g = GradientsParams::new();
            for (p, t) in m.params.iter().zip(&grads[step % grads.len()]) {
                g.register(p.id, t.clone());
            }
            g
        };
        let (burn_config, fused_config) = config();
        let (mut reference, mut fused) = (module.clone(), module);
        let mut burn_optim = burn_config.init::<A<I>, Lora<A<I>>>();
        let mut fused_optim = fused_config.init::<A<I>, Lora<A<I>>>();
        let (lr, max_norm) = (3e-4, 1.0);
        let launches = kernels_cubecl::adamw::fused_launches();
        for step in 0..3 {
            let g = gradients(&reference, step);
            let norm_ref;
            (reference, norm_ref) = burn_optim.clip_and_step(lr, reference, g, max_norm);
            let g = gradients(&fused, step);
            let norm_fused;
            (fused, norm_fused) = fused_optim.clip_and_step(lr, fused, g, max_norm);
            let (a, b) = (values(norm_ref.into_data()), values(norm_fused.into_data()));
            assert!(a[0] > max_norm as f32, "norm {}", a[0]);
            assert!((a[0] - b[0]).abs() <= 1e-5 * a[0], "norms {a:?} vs {b:?}");
        }
        let launches = kernels_cubecl::adamw::fused_launches() - launches;
        if kernels_cubecl::adamw::fused_available::<I>() {
            // Per step: the sums of squares of 16 gradients a launch, the clip factor, and the
            // updates of as many parameters a launch as the device binds (16 on CUDA, 7 on
            // lavapipe); every tensor here is one vector width.
            let scale = Tensor::<I, 1>::ones([1], (device, DType::F32));
            let per_launch = AdamWBatch::new(scale).params_per_launch().unwrap() as u64;
            let n = shapes.len() as u64;
            assert_eq!(launches, 3 * (n.div_ceil(16) + 1 + n.div_ceil(per_launch)));
        }
        let mut diff = 0f32;
        for (p, q) in reference.params.iter().zip(&fused.params) {
            let (p, q) = (values(p.val().into_data()), values(q.val().into_data()));
            diff = p
                .iter()
                .zip(&q)
                .fold(diff, |d, (x, y)| d.max((x - y).abs()));
        }
        eprintln!(
            "{} tensors: params differ by at most {diff:e}; fused launches per step {}",
            shapes.len(),
            launches / 3
        );
        assert!(diff <= 1e-6, "params differ by {diff}");

        let ms = |start: Instant| start.elapsed().as_secs_f64() * 1e3 / timed.max(1) as f64;
        I::sync(device).unwrap();
        let start = Instant::now();
        for step in 0..timed {
            let g = gradients(&reference, step);
            reference = burn_optim.clip_and_step(lr, reference, g, max_norm).0;
        }
        I::sync(device).unwrap();
        let burn_ms = ms(start);
        let start = Instant::now();
        for step in 0..timed {
            let g = gradients(&fused, step);
            fused = fused_optim.clip_and_step(lr, fused, g, max_norm).0;
        }
        I::sync(device).unwrap();
        let fused_ms = ms(start);
        eprintln!(
            "clip + AdamW over {} tensors: burn {burn_ms:.2} ms/step, fused {fused_ms:.2} ms/step",
            shapes.len()
        );
    }

    #[test]
    fn lora_shaped_step_on_wgpu() {
        let _serial = serial();
        lora_steps::<Wgpu>(&Default::default(), 1, 1);
    }

    /// The LLaMA3-8B case (256 tensors) on burn-cuda: `cargo test -p trainer --features cuda
    /// --lib -- --ignored --nocapture lora_8b`.
    #[cfg(feature = "cuda")]
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn lora_8b_step_on_cuda() {
        lora_steps::<burn::backend::Cuda>(&Default::default(), 32, 20);
    }
}
