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
    dispatch(x, cos, sin, None)
}

/// [`rope`] written in the grouped, position-major layout of grouped-query attention: the `groups`
/// query heads of each KV head side by side in one row per position, so that a block of positions
/// of a KV head's queries is a contiguous block of rows `(position, group)`. The kernel writes
/// this layout directly, instead of `rope` and a copy; under `Autodiff` its backward reads `dy` in
/// it and writes `dx` in `x`'s layout (sequence-major for the model's heads view, as `rope`'s), in
/// one launch each. Falls back to the [reference](reference::rope_grouped) where `rope` does.
/// With `groups == 1` the result is `rope(x, cos, sin)`.
///
/// # Shapes
/// - `x`: `[b, h, s, hd]` (any strides, like `rope`), `h` divisible by `groups`; `cos`, `sin` as
///   `rope`; output `[b, h / groups, s, groups * hd]`, contiguous, with
///   `out[bi, kv, si, gi * hd + d] = rope(x, cos, sin)[bi, kv * groups + gi, si, d]`
///
/// # Panics
/// If `groups` is 0 or does not divide `h`.
pub fn rope_grouped<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    groups: usize,
) -> Tensor<B, 4> {
    reference::check_groups(x.dims()[1], groups);
    dispatch(x, cos, sin, Some(groups))
}

/// [`rope`] (`groups` `None`) or [`rope_grouped`] (`Some(groups)`, checked), on the fused path
/// where it runs, else on the reference.
fn dispatch<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    groups: Option<usize>,
) -> Tensor<B, 4> {
    let Some(route) = route::<B>() else {
        return on_reference(x, cos, sin, groups);
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
        return on_reference(x, cos, sin, groups);
    }
    on_route!(route, C =>
        plain: cast(plain::<C>(cast(x), cast(cos), cast(sin), groups)),
        autodiff: cast(tracked::<C>(cast(x), cast(cos), cast(sin), groups)),
    )
}

/// The reference of [`rope`] (`groups` `None`) or of [`rope_grouped`].
fn on_reference<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    groups: Option<usize>,
) -> Tensor<B, 4> {
    match groups {
        None => reference::rope(x, cos, sin),
        Some(groups) => reference::rope_grouped(x, cos, sin, groups),
    }
}

fn plain<C: Cube>(
    x: Tensor<C, 4>,
    cos: Tensor<C, 4>,
    sin: Tensor<C, 4>,
    groups: Option<usize>,
) -> Tensor<C, 4> {
    let x = C::float_into(x.into_primitive().tensor());
    let cos = C::float_into(cos.into_primitive().tensor());
    let sin = C::float_into(sin.into_primitive().tensor());
    let out = match groups {
        None => kernel::launch(x, cos, sin, false, false),
        Some(groups) => kernel::launch_grouped(x, cos, sin, groups),
    };
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(out)))
}

fn tracked<C: Cube>(
    x: Tensor<Autodiff<C>, 4>,
    cos: Tensor<Autodiff<C>, 4>,
    sin: Tensor<Autodiff<C>, 4>,
    groups: Option<usize>,
) -> Tensor<Autodiff<C>, 4> {
    let (cos, sin) = (cos.into_primitive().tensor(), sin.into_primitive().tensor());
    if cos.is_tracked() || sin.is_tracked() {
        // Angles computed from tracked tensors need their gradient too.
        let wrap = |t| Tensor::from_primitive(TensorPrimitive::Float(t));
        return on_reference(x, wrap(cos), wrap(sin), groups);
    }
    let out = backward::forward::<C>(
        x.into_primitive().tensor(),
        cos.primitive,
        sin.primitive,
        groups,
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
