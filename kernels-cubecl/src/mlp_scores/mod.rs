//! SparseLoRA's MLP channel score (SPEC 4): for each intermediate channel, the L2 norm over the
//! sequences of `silu(gate) * up`, from the estimated gate and up projections of the sequence
//! means. In burn ops that is ~11 launches on `[batch, d_ff]` tensors (casts, the sigmoid's
//! steps, two products, the square, the column sum, the square root), each a few microseconds,
//! in every sparse MLP block of every step; here one kernel, one unit per channel.

mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// `sqrt(sum over rows of (silu(gate) * up)^2)` per channel, `[d_ff]` in f32, computed in f32.
///
/// On burn-wgpu/burn-cuda one kernel reading `gate` and `up` in place (any strides: they are
/// usually the two halves of one stacked product); elsewhere, and for other dtypes, the
/// [reference](reference::mlp_channel_scores). Not differentiable: the scores only rank channels
/// (under `Autodiff` the result carries no gradient either way).
///
/// # Shapes
/// - `gate`, `up`: `[rows, d_ff]`; output `[d_ff]`
pub fn mlp_channel_scores<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 1> {
    let [rows, d_ff] = gate.dims();
    let fits = float_dtype(gate.dtype())
        && gate.dtype() == up.dtype()
        && up.dims() == [rows, d_ff]
        && rows * d_ff > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        return reference::mlp_channel_scores(gate, up);
    };
    on_route!(route, C =>
        plain: cast(plain::<C>(cast(gate), cast(up))),
        autodiff: {
            let (gate, up): (Tensor<Autodiff<C>, 2>, Tensor<Autodiff<C>, 2>) = (cast(gate), cast(up));
            cast(Tensor::<Autodiff<C>, 1>::from_inner(plain::<C>(gate.inner(), up.inner())))
        },
    )
}

fn plain<C: Cube>(gate: Tensor<C, 2>, up: Tensor<C, 2>) -> Tensor<C, 1> {
    let scores = kernel::forward(
        C::float_into(gate.into_primitive().tensor()),
        C::float_into(up.into_primitive().tensor()),
    );
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(scores)))
}
