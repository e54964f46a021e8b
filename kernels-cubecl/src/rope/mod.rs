//! Rotary position embedding (HF LLaMA) in one pass, forward and backward.

mod backward;
pub(crate) mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// `x * cos + rotate_half(x) * sin` with `rotate_half(x) = cat([-x[.., hd/2..], x[.., ..hd/2]])`
/// (HF LLaMA's `apply_rotary_pos_emb`).
///
/// On burn-wgpu/burn-cuda (plain or `Autodiff`) one kernel that reads `x` through its strides (the
/// model's `reshape([b, s, h, hd]).swap_dims(1, 2)` view is not copied first) and writes a
/// contiguous `[b, h, s, hd]`; f32 math inside, output in `x`'s dtype. Under `Autodiff` the
/// backward is the same kernel transposed (see `backward.rs`): `dx` only, keeping just `cos` and
/// `sin`. `cos`/`sin` that need a gradient, other backends, dtypes other than f32/f16/bf16, or
/// shapes other than below take the [reference](reference::rope).
///
/// Difference from the reference: in f16/bf16 the reference rounds each product and the sum to the
/// dtype; the kernel rounds once.
///
/// # Shapes
/// - `x`: `[b, h, s, hd]`, `hd` even; `cos`, `sin`: `[b, 1, s, hd]` (or `[1, 1, s, hd]`),
///   broadcast over heads; output `[b, h, s, hd]`
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let Some(route) = route::<B>() else {
        return reference::rope(x, cos, sin);
    };
    let [b, _, s, hd] = x.dims();
    let angles_fit = |t: &Tensor<B, 4>| {
        let [tb, th, ts, thd] = t.dims();
        (tb == b || tb == 1) && th == 1 && ts == s && thd == hd && t.dtype() == x.dtype()
    };
    let fits = float_dtype(x.dtype())
        && hd % 2 == 0
        && x.shape().num_elements() > 0
        && angles_fit(&cos)
        && angles_fit(&sin)
        && !cos.is_require_grad()
        && !sin.is_require_grad();
    if !fits {
        return reference::rope(x, cos, sin);
    }
    on_route!(route, C =>
        plain: cast(plain::<C>(cast(x), cast(cos), cast(sin))),
        autodiff: cast(tracked::<C>(cast(x), cast(cos), cast(sin))),
    )
}

fn plain<C: Cube>(x: Tensor<C, 4>, cos: Tensor<C, 4>, sin: Tensor<C, 4>) -> Tensor<C, 4> {
    let out = kernel::launch(
        C::float_into(x.into_primitive().tensor()),
        C::float_into(cos.into_primitive().tensor()),
        C::float_into(sin.into_primitive().tensor()),
        false,
        false,
    );
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(out)))
}

fn tracked<C: Cube>(
    x: Tensor<Autodiff<C>, 4>,
    cos: Tensor<Autodiff<C>, 4>,
    sin: Tensor<Autodiff<C>, 4>,
) -> Tensor<Autodiff<C>, 4> {
    let (cos, sin) = (cos.into_primitive().tensor(), sin.into_primitive().tensor());
    if cos.is_tracked() || sin.is_tracked() {
        // Angles computed from tracked tensors need their gradient too.
        let wrap = |t| Tensor::from_primitive(TensorPrimitive::Float(t));
        return reference::rope(x, wrap(cos), wrap(sin));
    }
    let out = backward::forward::<C>(x.into_primitive().tensor(), cos.primitive, sin.primitive);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
