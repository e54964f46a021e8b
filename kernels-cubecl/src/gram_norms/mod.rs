//! The SVD estimator's attention channel norms from a Gram matrix (SPEC 4): with the block's
//! projections estimated as `z w2` (`z = x w1`, `[n, k]`), the squared norm of output channel `c`
//! over the `n` token rows is `w2[:, c]^T (z^T z) w2[:, c]`. In burn ops: a `[k, k] x [k, out]`
//! product, a multiply, a column sum, a clamp and a square root (five launches per sparse
//! attention block, each a few microseconds); here one kernel, one unit per channel.

mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, BoolStore, DType, Tensor, TensorPrimitive};

use crate::common::float_dtype;
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

/// `z^T z` in f32 over the token rows of `z` that are real (`tokens` true) when `mask_padding`,
/// over every row otherwise: the Gram matrix [`quadratic_form_norms`] takes, from the
/// estimator's skinny product `z = x w1` in its own dtype.
///
/// On burn-wgpu/burn-cuda one kernel (one cube per entry, f32 sums) in place of a cast of `z`, a
/// mask and its multiply, and an f32 product that cuBLASLt runs as a split-K SIMT GEMM plus its
/// reduction (five launches, ~18 us per sparse attention block on the H200); elsewhere the
/// [reference](reference::masked_gram). Not differentiable (an estimator input).
///
/// # Shapes
/// - `z`: `[n, k]`, `tokens`: `[batch, seq]` with `batch * seq = n`; output `[k, k]`
// Without a cubecl backend feature the kernel route is compiled out and only the reference runs.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(unused_variables))]
pub fn masked_gram<B: Backend>(
    z: Tensor<B, 2>,
    tokens: Tensor<B, 2, Bool>,
    mask_padding: bool,
) -> Tensor<B, 2> {
    let [n, k] = z.dims();
    let [b, s] = tokens.dims();
    let fits = float_dtype(z.dtype())
        && matches!(tokens.dtype(), DType::Bool(BoolStore::U8 | BoolStore::U32))
        && b * s == n
        && n * k > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        return reference::masked_gram(z, tokens, mask_padding);
    };
    let tokens = tokens.reshape([n]);
    on_route!(route, C =>
        plain: cast(plain_gram::<C>(cast(z), cast(tokens), mask_padding)),
        autodiff: {
            let z: Tensor<Autodiff<C>, 2> = cast(z);
            let tokens: Tensor<Autodiff<C>, 1, Bool> = cast(tokens);
            let tokens = Tensor::<C, 1, Bool>::from_primitive(tokens.into_primitive());
            cast(Tensor::<Autodiff<C>, 2>::from_inner(plain_gram::<C>(z.inner(), tokens, mask_padding)))
        },
    )
}

fn plain_gram<C: Cube>(
    z: Tensor<C, 2>,
    tokens: Tensor<C, 1, Bool>,
    mask_padding: bool,
) -> Tensor<C, 2> {
    let tokens = C::bool_into(tokens.into_primitive());
    let tokens = burn_cubecl::kernel::into_contiguous(tokens);
    let gram = kernel::masked_gram(
        C::float_into(z.into_primitive().tensor()),
        tokens,
        mask_padding,
    );
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(gram)))
}
