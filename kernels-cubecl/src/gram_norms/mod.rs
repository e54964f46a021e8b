//! The SVD estimator's attention channel norms from a Gram matrix (SPEC 4): with the block's
//! projections estimated as `z w2` (`z = x w1`, `[n, k]`), the squared norm of output channel `c`
//! over the `n` token rows is `w2[:, c]^T (z^T z) w2[:, c]`. In burn ops: a `[k, k] x [k, out]`
//! product, a multiply, a column sum, a clamp and a square root (five launches per sparse
//! attention block, each a few microseconds); here one kernel, one unit per channel.

mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};

use crate::dispatch::{cast, on_route, route, Cube};

/// `sqrt(max(0, w[:, c]^T gram w[:, c]))` for every column `c` of `w`, `[1, out]` in f32: the L2
/// norms of the columns of `z w` given `gram = z^T z` (the clamp absorbs rounding below zero).
///
/// On burn-wgpu/burn-cuda one kernel for f32 inputs; elsewhere the
/// [reference](reference::quadratic_form_norms). Not differentiable (the norms only rank
/// channels).
///
/// # Shapes
/// - `gram`: `[k, k]`, `w`: `[k, out]`; output `[1, out]`
pub fn quadratic_form_norms<B: Backend>(gram: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    let [k, k2] = gram.dims();
    let [k3, out] = w.dims();
    let fits =
        gram.dtype() == DType::F32 && w.dtype() == DType::F32 && k == k2 && k == k3 && k * out > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        return reference::quadratic_form_norms(gram, w);
    };
    on_route!(route, C =>
        plain: cast(plain::<C>(cast(gram), cast(w))),
        autodiff: {
            let (gram, w): (Tensor<Autodiff<C>, 2>, Tensor<Autodiff<C>, 2>) = (cast(gram), cast(w));
            cast(Tensor::<Autodiff<C>, 2>::from_inner(plain::<C>(gram.inner(), w.inner())))
        },
    )
}

fn plain<C: Cube>(gram: Tensor<C, 2>, w: Tensor<C, 2>) -> Tensor<C, 2> {
    let norms = kernel::forward(
        C::float_into(gram.into_primitive().tensor()),
        C::float_into(w.into_primitive().tensor()),
    );
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(norms)))
}
