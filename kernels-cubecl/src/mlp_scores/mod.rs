//! SparseLoRA's MLP channel score (SPEC 4): for each intermediate channel, the L2 norm over the
//! sequences of `silu(gate) * up`, from the estimated gate and up projections of the sequence
//! means. In burn ops that is ~11 launches on `[batch, d_ff]` tensors (casts, the sigmoid's
//! steps, two products, the square, the column sum, the square root), each a few microseconds,
//! in every sparse MLP block of every step; here one kernel, one unit per channel.

mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};

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

/// [`mlp_channel_scores`] of the low-rank estimates `gate = z[:, ..r_g] w_gate` and
/// `up = z[:, r_g..] w_up` (the estimator's sequence means through its SVD factors, both
/// projections' `w1` side by side), without forming them: on burn-wgpu/burn-cuda one kernel,
/// each channel's unit taking its `rows x (r_g + r_u)` dot products itself, for f32 inputs of
/// any strides and ranks up to [`MAX_FACTOR_RANK`] together; elsewhere the
/// [reference](reference::mlp_channel_scores_of_factors), the two products then
/// [`mlp_channel_scores`]. This replaces a `[rows, r] x [r, 2 d_ff]` product (a launch and a
/// `[rows, 2 d_ff]` f32 tensor) per sparse MLP block and step.
///
/// # Shapes
/// - `z`: `[rows, r_g + r_u]`, `w_gate`: `[r_g, d_ff]`, `w_up`: `[r_u, d_ff]`; output `[d_ff]`
pub fn mlp_channel_scores_of_factors<B: Backend>(
    z: Tensor<B, 2>,
    w_gate: Tensor<B, 2>,
    w_up: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let ([rows, r], [r_g, d_ff], [r_u, d_ff2]) = (z.dims(), w_gate.dims(), w_up.dims());
    let fits = [&z, &w_gate, &w_up].iter().all(|t| t.dtype() == DType::F32)
        && r == r_g + r_u
        && r <= MAX_FACTOR_RANK
        && d_ff == d_ff2
        && rows * d_ff > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        return reference::mlp_channel_scores_of_factors(z, w_gate, w_up);
    };
    on_route!(route, C =>
        plain: cast(plain_of_factors::<C>([cast(z), cast(w_gate), cast(w_up)])),
        autodiff: {
            let inputs: [Tensor<Autodiff<C>, 2>; 3] = [cast(z), cast(w_gate), cast(w_up)];
            cast(Tensor::<Autodiff<C>, 1>::from_inner(plain_of_factors::<C>(inputs.map(|t| t.inner()))))
        },
    )
}

/// The largest `r_g + r_u` the factor kernel takes: each unit holds its channel's factor
/// columns in registers (the estimator's ranks are 8-16 per projection).
pub const MAX_FACTOR_RANK: usize = 64;

fn plain_of_factors<C: Cube>(inputs: [Tensor<C, 2>; 3]) -> Tensor<C, 1> {
    let [z, w_gate, w_up] = inputs.map(|t| C::float_into(t.into_primitive().tensor()));
    let scores = kernel::forward_of_factors(z, w_gate, w_up);
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(scores)))
}

fn plain<C: Cube>(gate: Tensor<C, 2>, up: Tensor<C, 2>) -> Tensor<C, 1> {
    let scores = kernel::forward(
        C::float_into(gate.into_primitive().tensor()),
        C::float_into(up.into_primitive().tensor()),
    );
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(scores)))
}
