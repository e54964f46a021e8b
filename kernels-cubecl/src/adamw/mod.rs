//! The optimizer step in a few launches for all parameters: burn 0.21's AdamW update fused into
//! one elementwise kernel, and the global gradient norm (for clipping) as sums of squares plus
//! one final launch for the norm and the clip factor; each kernel takes up to 16 tensors per
//! launch ([`AdamWBatch`], [`GlobalNorm`]).
//!
//! burn's `AdamW` runs about 15 tensor ops per parameter and global-norm clipping 4 more, each a
//! kernel launch; on a GPU the step is then bound by the host's launch cost, not by the device.
//! Here the clip factor stays on the device as a one-element tensor that the update multiplies
//! the gradient by, so clipping costs no launch per tensor, and nothing is read back to the
//! host. One launch per tensor was still 512 launches of 3-4 us for a LoRA model's 256 factors
//! on the H200 (Nsight Compute, `docs/perf.md`), where one per 16 tensors makes 32.
//!
//! # Dispatch
//! The fused path runs on burn's cubecl backends without fusion, recognised by `TypeId`:
//! `burn::backend::Wgpu` (feature `wgpu`) and `burn::backend::Cuda` (feature `cuda`). Optimizer
//! tensors are inner-backend tensors, so there is no `Autodiff` route. Other backends, and inputs
//! the kernels do not cover (see each function), run the burn-tensor versions in [`reference`],
//! which reproduce burn's op order, so the paths differ only by f32 rounding.
// Without a backend feature the routes are empty, and what they would use goes unused.
#![cfg_attr(
    not(any(feature = "wgpu", feature = "cuda")),
    allow(unused_variables, unreachable_code)
)]

mod kernel;
pub mod reference;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

#[cfg(feature = "cuda")]
use crate::dispatch::CudaCube;
#[cfg(feature = "wgpu")]
use crate::dispatch::WgpuCube;
use crate::dispatch::{self, cast};

/// The hyper-parameters of one AdamW step (burn's `AdamWConfig`, without AMSGrad or cautious
/// weight decay) at one learning rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment (burn's default 0.9).
    pub beta_1: f32,
    /// Decay of the second moment (burn's default 0.999).
    pub beta_2: f32,
    /// Added to the square root of the bias-corrected second moment.
    pub epsilon: f32,
    /// Decoupled weight decay: the parameter is first multiplied by `1 - lr * weight_decay`.
    pub weight_decay: f32,
    /// The 1-based count of this step, for the bias corrections `1 - beta^time` (burn's
    /// `AdaptiveMomentumState::time` after the step).
    pub time: usize,
}

impl AdamWStep {
    fn time_i32(&self) -> i32 {
        i32::try_from(self.time).unwrap_or(i32::MAX)
    }

    /// The kernel's scalars, rounded to f32 as burn's scalar ops round them.
    fn scalars(&self) -> Scalars {
        let time = self.time_i32();
        let decay_rate = self.lr * (self.weight_decay as f64);
        Scalars {
            beta_1: self.beta_1,
            one_minus_beta_1: 1.0 - self.beta_1,
            beta_2: self.beta_2,
            one_minus_beta_2: 1.0 - self.beta_2,
            bias_1: 1f32 - self.beta_1.powi(time),
            bias_2: 1f32 - self.beta_2.powi(time),
            epsilon: self.epsilon,
            // `p * 1.0` is `p`: the same as burn skipping the decay when the rate is 0.
            decay: if decay_rate == 0.0 {
                1.0
            } else {
                (1.0 - decay_rate) as f32
            },
            lr: self.lr as f32,
        }
    }
}

/// The scalars of the AdamW kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Scalars {
    beta_1: f32,
    one_minus_beta_1: f32,
    beta_2: f32,
    one_minus_beta_2: f32,
    bias_1: f32,
    bias_2: f32,
    epsilon: f32,
    decay: f32,
    lr: f32,
}

/// A backend with the fused path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    #[cfg(feature = "wgpu")]
    Wgpu,
    #[cfg(feature = "cuda")]
    Cuda,
}

/// The optimizer's tensors are plain inner-backend tensors: only the non-autodiff routes of
/// [`dispatch::route`] apply (which also honours `SPARSELORA_FUSED=0`).
fn route<B: Backend>() -> Option<Route> {
    match dispatch::route::<B>()? {
        #[cfg(feature = "wgpu")]
        dispatch::Route::Wgpu => Some(Route::Wgpu),
        #[cfg(feature = "cuda")]
        dispatch::Route::Cuda => Some(Route::Cuda),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}

/// Runs `$body` with the type alias `$C` naming the cubecl backend that `$route` matched.
macro_rules! on_route {
    ($route:expr, $C:ident => $body:expr) => {
        match $route {
            #[cfg(feature = "wgpu")]
            Route::Wgpu => {
                type $C = WgpuCube;
                $body
            }
            #[cfg(feature = "cuda")]
            Route::Cuda => {
                type $C = CudaCube;
                $body
            }
        }
    };
}

/// The float primitive of a cubecl backend tensor.
fn primitive<R: CubeRuntime, C, const D: usize>(tensor: Tensor<C, D>) -> CubeTensor<R>
where
    C: Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    tensor.into_primitive().tensor()
}

/// A cubecl backend tensor from its float primitive.
fn tensor<R: CubeRuntime, C, const D: usize>(primitive: CubeTensor<R>) -> Tensor<C, D>
where
    C: Backend<FloatTensorPrimitive = CubeTensor<R>>,
{
    Tensor::from_primitive(TensorPrimitive::Float(primitive))
}

/// Whether the fused optimizer kernels run on backend `B` (burn-wgpu or burn-cuda without
/// fusion, as this crate's features allow; not `Autodiff`: optimizers work on inner tensors).
pub fn fused_available<B: Backend>() -> bool {
    route::<B>().is_some()
}

/// How many optimizer kernels this process has launched (lets a check tell the fused path from a
/// silent fallback to the references).
pub fn fused_launches() -> u64 {
    kernel::launches()
}

/// One AdamW step for one parameter: returns `(param, moment_1, moment_2)` after the step.
///
/// The gradient is first multiplied by `grad_scale` (one element, f32: the clip factor, 1 when
/// not clipping); then, as burn 0.21's `AdamW` (decoupled weight decay, no AMSGrad):
///
/// ```text
/// m' = beta_1 m + (1 - beta_1) g
/// v' = beta_2 v + (1 - beta_2) g^2
/// p' = p (1 - lr weight_decay) - lr (m' / (1 - beta_1^t)) / (sqrt(v' / (1 - beta_2^t)) + epsilon)
/// ```
///
/// with `t = hyper.time`. For burn's first step (no state yet) pass zero moments and `time` 1:
/// `0 * beta + x` is `x` exactly, so the result is burn's.
///
/// On burn-wgpu/burn-cuda, when all four tensors are f32 and of one shape, one kernel launch
/// (f32 math, the ops in burn's order; a GPU compiler may contract a product and a sum into
/// one rounding). Otherwise the [reference](reference::adamw_update), burn's ops. Many
/// parameters: [`AdamWBatch`].
///
/// # Shapes
/// - `param`, `grad`, `moment_1`, `moment_2`: one shape; outputs the same
/// - `grad_scale`: `[1]`
pub fn adamw_update<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    moment_1: Tensor<B, D>,
    moment_2: Tensor<B, D>,
    grad_scale: Tensor<B, 1>,
    hyper: AdamWStep,
) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
    let mut batch = AdamWBatch::new(grad_scale);
    let stepped = batch.push(param, grad, moment_1, moment_2, hyper);
    batch.finish();
    stepped
}

/// The AdamW steps of many parameters with one gradient scale (the clip factor), launched
/// together: [`adamw_update`]'s step for each parameter [pushed](Self::push), on
/// burn-wgpu/burn-cuda in one launch per run of up to 16 consecutive parameters that share the
/// step's scalars (their `time`) and a vector width (a LoRA model's 2 x 4 x 32 factors: 16
/// launches a step instead of 256; PyTorch's multi-tensor AdamW does the same). Elsewhere, and
/// for tensors the kernel does not take (see [`adamw_update`]), the
/// [reference](reference::adamw_update) runs at the push.
///
/// On the fused path the tensors [`push`](Self::push) returns are written by the launch:
/// [`finish`](Self::finish) the batch (dropping it finishes it too) before reading them.
pub struct AdamWBatch<B: Backend> {
    grad_scale: Tensor<B, 1>,
    pending: Option<(Route, Vec<PendingStep<B>>)>,
}

/// `[param, grad, moment_1, moment_2]` of one step.
type StepTensors<B> = [FloatTensor<B>; 4];

/// A pushed step on the fused path: its tensors as the launch takes them
/// (`kernel::adamw_prepared`), its vector width and scalars.
struct PendingStep<B: Backend> {
    tensors: StepTensors<B>,
    vector: usize,
    scalars: Scalars,
}

impl<B: Backend> AdamWBatch<B> {
    /// No step yet; every gradient will be multiplied by `grad_scale` (`[1]`, f32).
    pub fn new(grad_scale: Tensor<B, 1>) -> Self {
        let pending = route::<B>().map(|route| (route, Vec::new()));
        Self {
            grad_scale,
            pending,
        }
    }

    /// Adds one parameter's step; returns `(param, moment_1, moment_2)` as they are after it
    /// (see the type's documentation for when they can be read). Shapes as [`adamw_update`].
    pub fn push<const D: usize>(
        &mut self,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        moment_1: Tensor<B, D>,
        moment_2: Tensor<B, D>,
        hyper: AdamWStep,
    ) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
        let dims = param.dims();
        let scale = &self.grad_scale;
        let fits = [&param, &grad, &moment_1, &moment_2]
            .iter()
            .all(|t| t.dtype() == DType::F32 && t.dims() == dims)
            && scale.dtype() == DType::F32
            && scale.dims() == [1]
            && scale.device() == param.device()
            && param.shape().num_elements() > 0;
        let (route, steps) = match &mut self.pending {
            Some((route, steps)) if fits => (*route, steps),
            _ => {
                let scale = scale.clone();
                return reference::adamw_update(param, grad, moment_1, moment_2, scale, hyper);
            }
        };
        let scalars = hyper.scalars();
        on_route!(route, C => {
            let (tensors, vector) = kernel::adamw_prepared(
                primitive(cast::<_, Tensor<C, D>>(param)),
                primitive(cast::<_, Tensor<C, D>>(grad)),
                primitive(cast::<_, Tensor<C, D>>(moment_1)),
                primitive(cast::<_, Tensor<C, D>>(moment_2)),
            );
            let [p, _, m, v] = &tensors;
            let stepped = (
                cast(tensor::<_, C, D>(p.clone())),
                cast(tensor::<_, C, D>(m.clone())),
                cast(tensor::<_, C, D>(v.clone())),
            );
            steps.push(PendingStep {
                tensors: cast::<StepTensors<C>, _>(tensors),
                vector,
                scalars,
            });
            stepped
        })
    }

    /// How many parameters share a launch at most on the device of the gradient scale (16, or
    /// fewer where the device binds fewer buffers); `None` off the fused path.
    pub fn params_per_launch(&self) -> Option<usize> {
        let (route, _) = self.pending.as_ref()?;
        on_route!(*route, C => {
            let scale = primitive(cast::<_, Tensor<C, 1>>(self.grad_scale.clone()));
            Some(kernel::adamw_group_size(&scale))
        })
    }

    /// Launches the pushed steps.
    pub fn finish(mut self) {
        self.launch();
    }

    fn launch(&mut self) {
        let Some((route, steps)) = &mut self.pending else {
            return;
        };
        let steps = std::mem::take(steps);
        if steps.is_empty() {
            return;
        }
        on_route!(*route, C => {
            // Every pushed step is on the scale's device (`push` checks it).
            let scale = primitive(cast::<_, Tensor<C, 1>>(self.grad_scale.clone()));
            let most = kernel::adamw_group_size(&scale);
            let keyed = steps.into_iter().map(|step| {
                let tensors = cast::<StepTensors<B>, StepTensors<C>>(step.tensors);
                ((step.scalars, step.vector), tensors)
            });
            for ((scalars, vector), group) in kernel::runs(keyed, most) {
                kernel::adamw_multi(group, vector, scale.clone(), scalars);
            }
        })
    }
}

impl<B: Backend> Drop for AdamWBatch<B> {
    fn drop(&mut self) {
        self.launch();
    }
}

/// Whether the sum-of-squares kernel reads `dtype` directly.
fn squares_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// `sum(f32(t)^2)`, `[1]`, f32.
///
/// On burn-wgpu/burn-cuda one launch (one cube; f32/f16/bf16 read directly, other dtypes cast to
/// f32 first); elsewhere the [reference](reference::sum_of_squares),
/// `t.cast(F32).square().sum()`. The kernel sums in another order than burn's reduction.
pub fn sum_of_squares<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    let Some(route) = route::<B>() else {
        return reference::sum_of_squares(t);
    };
    let t = if squares_dtype(t.dtype()) {
        t
    } else {
        t.cast(DType::F32)
    };
    on_route!(route, C => {
        let out = kernel::sum_of_squares(primitive(cast::<_, Tensor<C, D>>(t)));
        cast(tensor::<_, C, 1>(out))
    })
}

/// The global L2 norm of a set of tensors (gradients) and the factor that clips it, as
/// `torch.nn.utils.clip_grad_norm_` (and `trainer::grad_norm::clip_global_norm_on_device`):
/// `norm = sqrt(sum over tensors of sum(f32(t)^2))`, `factor = min(max_norm / (norm + 1e-6), 1)`,
/// and `factor = 1` when the norm is not finite.
///
/// [`push`](Self::push) each tensor, then [`clip`](Self::clip). On burn-wgpu/burn-cuda that is
/// one launch per run of up to 16 consecutive tensors of one dtype and vector width (their
/// partial sums of squares go to slots of one buffer) and one final launch; elsewhere burn's
/// ops, in the order `clip_global_norm_on_device` runs them.
pub struct GlobalNorm<B: Backend> {
    parts: Parts<B>,
}

enum Parts<B: Backend> {
    /// The running total of the per-tensor sums of squares.
    Reference(Option<Tensor<B, 1>>),
    /// The tensors, launched together by [`GlobalNorm::clip`].
    Fused(Route, Vec<FloatTensor<B>>),
}

impl<B: Backend> Default for GlobalNorm<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> GlobalNorm<B> {
    /// No tensor yet.
    pub fn new() -> Self {
        let parts = match route::<B>() {
            Some(route) => Parts::Fused(route, Vec::new()),
            None => Parts::Reference(None),
        };
        Self { parts }
    }

    /// Adds `t`'s squares to the norm.
    pub fn push<const D: usize>(&mut self, t: Tensor<B, D>) {
        match &mut self.parts {
            Parts::Reference(total) => {
                let sq = reference::sum_of_squares(t);
                *total = Some(match total.take() {
                    Some(total) => total + sq,
                    None => sq,
                });
            }
            Parts::Fused(_, tensors) => {
                let t = if squares_dtype(t.dtype()) {
                    t
                } else {
                    t.cast(DType::F32)
                };
                tensors.push(t.into_primitive().tensor());
            }
        }
    }

    /// Whether no tensor was pushed.
    pub fn is_empty(&self) -> bool {
        match &self.parts {
            Parts::Reference(total) => total.is_none(),
            Parts::Fused(_, tensors) => tensors.is_empty(),
        }
    }

    /// `(norm, factor)`, `[1]` f32 each, on the device of the first tensor; `None` when no tensor
    /// was pushed.
    pub fn clip(self, max_norm: f64) -> Option<(Tensor<B, 1>, Tensor<B, 1>)> {
        match self.parts {
            Parts::Reference(total) => Some(reference::clip_factor(total?, max_norm)),
            Parts::Fused(_, tensors) if tensors.is_empty() => None,
            Parts::Fused(route, tensors) => Some(on_route!(route, C => {
                let tensors: Vec<FloatTensor<C>> = cast(tensors);
                let (norm, factor) = kernel::global_norm_clip(tensors, max_norm as f32);
                (
                    cast(tensor::<_, C, 1>(norm)),
                    cast(tensor::<_, C, 1>(factor)),
                )
            })),
        }
    }
}
