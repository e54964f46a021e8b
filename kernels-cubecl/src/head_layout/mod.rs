//! The head transposes of attention, `[b, s, h, hd]` <-> `[b, h, s, hd]`, as one vectorised copy.
//!
//! The projections produce and consume `[b, s, h * hd]` rows; the batched attention products
//! want each head's `[s, hd]` block contiguous. burn makes a strided view contiguous with its
//! generic copy kernel, which Nsight Compute timed at 65-68 us for LLaMA3-8B's attention output
//! (32 MiB, batch 8 x 512, bf16: ~1 TB/s on an H200) and ~13 us for a KV tensor: five such
//! copies per layer and step. [`contiguous`] is one unit per vector of the output, its source
//! found by 4-d index arithmetic.
//!
//! [`crate::grouped_causal_attention`] uses it to take V and its output gradient into the
//! heads-major layout, and to hand its output (and V's gradient) back laid out as rows
//! (`[b, s, h, hd]`), so that the model's `swap_dims(1, 2).reshape(..)` that joins the heads is a
//! view, not a copy.

pub(crate) mod kernel;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// `t` stored contiguously in its own dimension order (same values, same shape).
///
/// On burn-wgpu/burn-cuda without `Autodiff`, one kernel when `t` is a strided view with a unit
/// stride on its last dimension (`t` itself when it is contiguous already); elsewhere `t`
/// unchanged: burn copies a view when an op needs it contiguous (the
/// [reference](reference::contiguous)).
///
/// # Shapes
/// - `t`: `[d0, d1, d2, d3]`; output the same
pub fn contiguous<B: Backend>(t: Tensor<B, 4>) -> Tensor<B, 4> {
    let fits = float_dtype(t.dtype()) && t.shape().num_elements() > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        return reference::contiguous(t);
    };
    on_route!(route, C =>
        plain: cast(plain::<C>(cast(t))),
        // Under autodiff the view stays a view: burn copies it where a recorded op needs it.
        autodiff: {
            let t: Tensor<burn::backend::Autodiff<C>, 4> = cast(t);
            cast(reference::contiguous(t))
        },
    )
}

fn plain<C: Cube>(t: Tensor<C, 4>) -> Tensor<C, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(contiguous_primitive::<C>(
        t.into_primitive().tensor(),
    )))
}

/// [`contiguous`] on a 4-d primitive of a cubecl backend: the kernel when the last dimension has
/// a unit stride, burn's copy otherwise.
pub(crate) fn contiguous_primitive<C: Cube>(t: FloatTensor<C>) -> FloatTensor<C> {
    let t = C::float_into(t);
    C::float_from(if t.meta.strides()[3] == 1 {
        kernel::contiguous(t)
    } else {
        burn_cubecl::kernel::into_contiguous(t)
    })
}

/// A 4-d primitive `[d0, d1, d2, d3]` with its memory laid out `[d0, d2, d1, d3]` (the same
/// values and shape): for attention's `[b, h, s, hd]`, the `[b, s, h, hd]` rows the projections
/// read, so that `swap_dims(1, 2)` of it is contiguous. One copy kernel, none when `t` already is
/// laid out so; `t` unchanged when its last dimension is strided.
pub(crate) fn sequence_major<C: Cube>(t: FloatTensor<C>) -> FloatTensor<C> {
    let t = C::float_into(t);
    C::float_from(if t.meta.strides()[3] == 1 {
        kernel::swapped_layout(t)
    } else {
        t
    })
}

/// What [`contiguous`] stands for, in burn ops.
pub mod reference {
    use burn::tensor::backend::Backend;
    use burn::tensor::Tensor;

    /// `t` itself: a layout changes no value, and burn makes a view contiguous when an op needs
    /// it.
    pub fn contiguous<B: Backend>(t: Tensor<B, 4>) -> Tensor<B, 4> {
        t
    }
}
