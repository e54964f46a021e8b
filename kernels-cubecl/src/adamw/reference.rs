//! The burn-tensor versions of the optimizer functions: burn 0.21's AdamW op by op, and the
//! gradient norm and clip factor (which `trainer::grad_norm::clip_global_norm_on_device` uses
//! for burn's own optimizers).

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use super::AdamWStep;

/// [`super::adamw_update`] in burn tensor ops, in the order of burn's `AdamW::step` (and its
/// `AdaptiveMomentumW::transform`), so that on one backend it gives burn's values exactly.
pub fn adamw_update<B: Backend, const D: usize>(
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    moment_1: Tensor<B, D>,
    moment_2: Tensor<B, D>,
    grad_scale: Tensor<B, 1>,
    hyper: AdamWStep,
) -> (Tensor<B, D>, Tensor<B, D>, Tensor<B, D>) {
    let scale = grad_scale.reshape([1; D]).cast(grad.dtype());
    let grad = grad * scale;
    let factor_1 = 1.0 - hyper.beta_1;
    let factor_2 = 1.0 - hyper.beta_2;
    let moment_1 = moment_1
        .mul_scalar(hyper.beta_1)
        .add(grad.clone().mul_scalar(factor_1));
    let moment_2 = moment_2
        .mul_scalar(hyper.beta_2)
        .add(grad.square().mul_scalar(factor_2));
    let time = hyper.time_i32();
    let moment_1_corrected = moment_1.clone().div_scalar(1f32 - hyper.beta_1.powi(time));
    let moment_2_corrected = moment_2.clone().div_scalar(1f32 - hyper.beta_2.powi(time));
    let delta = moment_1_corrected.div(moment_2_corrected.sqrt().add_scalar(hyper.epsilon));
    let decay_rate = hyper.lr * (hyper.weight_decay as f64);
    let decayed = if decay_rate == 0.0 {
        param
    } else {
        param.mul_scalar(1.0 - decay_rate)
    };
    (decayed - delta.mul_scalar(hyper.lr), moment_1, moment_2)
}

/// `sum(f32(t)^2)`, `[1]`, f32.
pub fn sum_of_squares<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    t.cast(DType::F32).square().sum()
}

/// `(norm, factor)` from the total sum of squares: `norm = sqrt(total)`, `factor =
/// min(max_norm / (norm + 1e-6), 1)`, or 1 where `norm` is not finite.
pub fn clip_factor<B: Backend>(total: Tensor<B, 1>, max_norm: f64) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let norm = total.sqrt();
    let finite = norm.clone().is_finite();
    let factor = (norm.clone() + 1e-6)
        .recip()
        .mul_scalar(max_norm)
        .clamp_max(1.0)
        .mask_fill(finite.bool_not(), 1.0);
    (norm, factor)
}
