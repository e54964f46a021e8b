//! RMSNorm (HF `LlamaRMSNorm`) in one pass per row, forward and backward.

mod backward;
mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// RMSNorm over the last dimension, exactly as the model's norm:
/// `(x_f32 / sqrt(mean(x_f32^2) + eps)).cast(x.dtype()) * weight`.
///
/// On burn-wgpu/burn-cuda (plain or `Autodiff`) one kernel pass per row (a row is the last
/// dimension); under `Autodiff` its backward is one more kernel pass giving `dx` (f32 math, in
/// `x`'s dtype), keeping only `x` and `weight` for it. A `weight` that needs a gradient (a
/// trainable norm) takes the [reference](reference::rms_norm) path, as do other backends, dtypes
/// other than f32/f16/bf16, and a `weight` whose dtype differs from `x`'s.
///
/// Differences from the reference: the f32 sums run in another order (rounding only); under
/// `Autodiff`, `dx` comes from the closed form `r dn - x r^3 mean(dn x)`, `dn = dy * weight`.
///
/// # Shapes
/// - `x`: `[..., width]`, `weight`: `[width]`, output as `x`
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let Some(route) = route::<B>() else {
        return reference::rms_norm(x, weight, eps);
    };
    let width = x.dims()[D - 1];
    let fits = float_dtype(x.dtype())
        && weight.dtype() == x.dtype()
        && weight.dims() == [width]
        && x.shape().num_elements() > 0
        && !weight.is_require_grad();
    if !fits {
        return reference::rms_norm(x, weight, eps);
    }
    on_route!(route, C =>
        plain: cast(plain::<C, D>(cast(x), cast(weight), eps)),
        autodiff: cast(tracked::<C, D>(cast(x), cast(weight), eps)),
    )
}

fn plain<C: Cube, const D: usize>(x: Tensor<C, D>, weight: Tensor<C, 1>, eps: f64) -> Tensor<C, D> {
    let out = kernel::forward(
        C::float_into(x.into_primitive().tensor()),
        C::float_into(weight.into_primitive().tensor()),
        eps,
    );
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(out)))
}

fn tracked<C: Cube, const D: usize>(
    x: Tensor<Autodiff<C>, D>,
    weight: Tensor<Autodiff<C>, 1>,
    eps: f64,
) -> Tensor<Autodiff<C>, D> {
    let weight = weight.into_primitive().tensor();
    if weight.is_tracked() {
        // A weight computed from tracked tensors needs its gradient too.
        let weight = Tensor::from_primitive(TensorPrimitive::Float(weight));
        return reference::rms_norm(x, weight, eps);
    }
    let out = backward::forward::<C>(x.into_primitive().tensor(), weight.primitive, eps);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
