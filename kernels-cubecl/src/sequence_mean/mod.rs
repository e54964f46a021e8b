//! The mean of each sequence over its real tokens: what the SVD estimator projects for the MLP
//! (SPEC 4). burn's ops cast the whole `[batch, seq, d]` input to f32, weight it by the mask and
//! reduce over the sequence (docs/perf.md: 112 row reductions of ~160 us in a sparse LLaMA3-8B
//! step); here one or two kernels read the input once in its own dtype and sum in f32.

mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, BoolStore, DType, Tensor, TensorPrimitive};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// The mean of each sequence, `[batch, d]` in f32: over its real tokens (`tokens` true) when
/// `mask_padding` (a sequence without any is all zeros), over every position otherwise.
///
/// On burn-wgpu/burn-cuda one kernel for a narrow input (up to 32 vectors of channels: a cube per
/// sequence) or two for a wide one (partial sums over chunks of 32 positions, then their sum
/// over the count); elsewhere, and for other dtypes or shapes, the
/// [reference](reference::sequence_means). Not differentiable: the estimator's input is never
/// trained through (under `Autodiff` the result carries no gradient either way).
///
/// # Shapes
/// - `x`: `[batch, seq, d]`, `tokens`: `[batch, seq]`; output `[batch, d]`
pub fn sequence_means<B: Backend>(
    x: Tensor<B, 3>,
    tokens: Tensor<B, 2, Bool>,
    mask_padding: bool,
) -> Tensor<B, 2> {
    let [b, s, d] = x.dims();
    let fits = float_dtype(x.dtype())
        && matches!(tokens.dtype(), DType::Bool(BoolStore::U8 | BoolStore::U32))
        && tokens.dims() == [b, s]
        && b * s * d > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        return reference::sequence_means(x, tokens, mask_padding);
    };
    on_route!(route, C =>
        plain: cast(plain::<C>(cast(x), cast(tokens), mask_padding)),
        // Under `Autodiff` on the inner tensors: the mean is an estimator input, not trained.
        autodiff: {
            let x: Tensor<Autodiff<C>, 3> = cast(x);
            let tokens: Tensor<Autodiff<C>, 2, Bool> = cast(tokens);
            let tokens = Tensor::<C, 2, Bool>::from_primitive(tokens.into_primitive());
            let means = plain::<C>(x.inner(), tokens, mask_padding);
            cast(Tensor::<Autodiff<C>, 2>::from_inner(means))
        },
    )
}

fn plain<C: Cube>(x: Tensor<C, 3>, tokens: Tensor<C, 2, Bool>, mask_padding: bool) -> Tensor<C, 2> {
    let means = kernel::forward(
        C::float_into(x.into_primitive().tensor()),
        C::bool_into(tokens.into_primitive()),
        mask_padding,
    );
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(means)))
}
