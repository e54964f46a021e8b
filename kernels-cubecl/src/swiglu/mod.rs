//! SwiGLU (`silu(gate) * up`) in one elementwise pass, forward and backward.

mod backward;
mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// `silu(gate) * up` (burn's [`silu`](burn::tensor::activation::silu)), elementwise.
///
/// On burn-wgpu/burn-cuda (plain or `Autodiff`) one kernel, f32 math inside, output in the inputs'
/// dtype; under `Autodiff` its backward is one kernel giving both `d_gate` and `d_up`, keeping only
/// `gate` and `up` for it. Other backends, dtypes other than f32/f16/bf16, and inputs whose
/// shapes or dtypes differ take the [reference](reference::swiglu).
///
/// Difference from the reference: in f16/bf16 the reference rounds `sigmoid(gate)`, `silu(gate)`
/// and the product each to the dtype; the kernel rounds once (f32 is the same up to rounding).
///
/// # Shapes
/// - `gate`, `up`: the same shape, output the same
pub fn swiglu<B: Backend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    let Some(route) = route::<B>() else {
        return reference::swiglu(gate, up);
    };
    let fits = float_dtype(gate.dtype())
        && up.dtype() == gate.dtype()
        && up.dims() == gate.dims()
        && gate.shape().num_elements() > 0;
    if !fits {
        return reference::swiglu(gate, up);
    }
    on_route!(route, C =>
        plain: cast(plain::<C, D>(cast(gate), cast(up))),
        autodiff: cast(tracked::<C, D>(cast(gate), cast(up))),
    )
}

fn plain<C: Cube, const D: usize>(gate: Tensor<C, D>, up: Tensor<C, D>) -> Tensor<C, D> {
    let out = kernel::forward(
        C::float_into(gate.into_primitive().tensor()),
        C::float_into(up.into_primitive().tensor()),
    );
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(out)))
}

fn tracked<C: Cube, const D: usize>(
    gate: Tensor<Autodiff<C>, D>,
    up: Tensor<Autodiff<C>, D>,
) -> Tensor<Autodiff<C>, D> {
    let out = backward::forward::<C>(gate.into_primitive().tensor(), up.into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
