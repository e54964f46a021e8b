//! Global gradient-norm clipping over all trainable parameters, as PyTorch's
//! `clip_grad_norm_` (the paper clips at 1.0). burn's own `GradientClipping::Norm` clips each
//! tensor by its own norm, which is a different rule, so the optimizer is built without it.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{backend::AutodiffBackend, DType, Tensor};
// The burn-ops norm and clip factor, shared with the fused optimizer's reference.
use kernels_cubecl::adamw::reference;

/// Sums the squares of every gradient present in `grads` for the parameters of a module.
struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sq = reference::sum_of_squares(grad);
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
}

/// Multiplies every gradient of a module's parameters by `scale`, a one-element device tensor.
struct Scale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    scale: Tensor<B::InnerBackend, 1>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let dtype = grad.dtype();
            let scale = self.scale.clone().reshape([1; D]).cast(dtype);
            self.grads.register(param.id, grad * scale);
        }
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`, entirely on the device
/// (no read-back); returns the norm before clipping, `[1]`, f32.
///
/// As `torch.nn.utils.clip_grad_norm_`: the factor is `max_norm / (norm + 1e-6)` when below 1.
/// A non-finite norm leaves the gradients as they are (the loop stops on a non-finite loss).
pub fn clip_global_norm_on_device<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> Tensor<B::InnerBackend, 1> {
    let mut visitor = SquaredNorm::<B> { grads, total: None };
    module.visit(&mut visitor);
    let Some(total) = visitor.total else {
        // No gradient at all: a zero norm on the device the module lives on.
        let device = module.devices().first().cloned().unwrap_or_default();
        return Tensor::zeros([1], (&device, DType::F32));
    };
    let (norm, scale) = reference::clip_factor(total, max_norm);
    module.visit(&mut Scale::<B> { grads, scale });
    norm
}

/// [`clip_global_norm_on_device`], with the norm read back to the host (one device-to-host read).
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    clip_global_norm_on_device(module, grads, max_norm).into_scalar_f64()
}

/// The first element of a tensor as an `f64` (NaN when it cannot be read).
pub trait IntoScalarF64 {
    /// Reads the value (a device-to-host copy).
    fn into_scalar_f64(self) -> f64;
}

impl<B: burn::tensor::backend::Backend> IntoScalarF64 for Tensor<B, 1> {
    fn into_scalar_f64(self) -> f64 {
        self.into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .ok()
            .and_then(|v| v.first().copied())
            .unwrap_or(f64::NAN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Module;
    use burn::tensor::TensorData;

    type B = burn::backend::Autodiff<burn::backend::Flex>;

    #[derive(Module, Debug)]
    struct Two<B: burn::tensor::backend::Backend> {
        a: Param<Tensor<B, 1>>,
        b: Param<Tensor<B, 2>>,
    }

    #[test]
    fn clips_by_the_global_norm_not_per_tensor() {
        let device = Default::default();
        let m = Two::<B> {
            a: Param::from_tensor(Tensor::from_data(TensorData::from([1.0f32, 1.0]), &device)),
            b: Param::from_tensor(Tensor::from_data(
                TensorData::from([[1.0f32, 1.0]]),
                &device,
            )),
        };
        let loss = m.a.val().sum() * 3.0 + m.b.val().sum() * 4.0;
        let mut grads = GradientsParams::from_grads(loss.backward(), &m);
        // grads: a = [3, 3], b = [[4, 4]] -> global norm sqrt(9+9+16+16) = sqrt(50)
        let norm = clip_global_norm(&m, &mut grads, 1.0);
        assert!((norm - 50f64.sqrt()).abs() < 1e-5);
        let ga: Vec<f32> = grads
            .get::<burn::backend::Flex, 1>(m.a.id)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        let gb: Vec<f32> = grads
            .get::<burn::backend::Flex, 2>(m.b.id)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        let clipped: f32 = ga.iter().chain(&gb).map(|g| g * g).sum::<f32>().sqrt();
        assert!((clipped - 1.0).abs() < 1e-4, "{clipped}");
        // The direction is kept: a and b scaled by the same factor.
        assert!((ga[0] / gb[0] - 0.75).abs() < 1e-5);
    }
}
