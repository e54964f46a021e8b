//! SparseLoRA's grouped-query channel expansion (SPEC 5): the query channels (q_proj's output
//! rows, o_proj's input columns) that go with kept KV channels. In burn int ops that is ~6
//! launches per expansion (an `arange`, a division, a remainder, products and broadcast adds),
//! twice per sparse attention block and step; here one kernel, one unit per output index.

mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::dispatch::{cast, on_route, route, Cube};

/// How the query channels of a KV channel are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvGroups {
    /// HF's `repeat_kv`: KV channel `m * head_dim + d` is read by channel `d` of each query
    /// head `m * groups + r`, i.e. query channel `(m * groups + r) * head_dim + d`.
    Heads {
        /// Width of one head.
        head_dim: usize,
    },
    /// The reference SparseLoRA code's expansion: KV channel `c` to query channels
    /// `c * groups + r`.
    Consecutive,
}

/// For each KV channel `kv[i]`, its `groups` query channels (`r = 0..groups`, as [`KvGroups`]
/// says), at `i * groups + r`: `[k * groups]`, in `kv`'s int dtype.
///
/// On burn-wgpu/burn-cuda one kernel; elsewhere the [reference](reference::query_channels_of).
///
/// # Shapes
/// - `kv`: `[k]`; output `[k * groups]`
pub fn query_channels_of<B: Backend>(
    kv: Tensor<B, 1, Int>,
    groups: usize,
    layout: KvGroups,
) -> Tensor<B, 1, Int> {
    let [k] = kv.dims();
    let fits = k * groups > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        return reference::query_channels_of(kv, groups, layout);
    };
    on_route!(route, C =>
        plain: cast(plain::<C>(cast(kv), groups, layout)),
        // Int tensors carry no gradient: the kernel runs on the inner tensor.
        autodiff: {
            let kv: Tensor<Autodiff<C>, 1, Int> = cast(kv);
            cast(Tensor::<Autodiff<C>, 1, Int>::from_inner(plain::<C>(kv.inner(), groups, layout)))
        },
    )
}

fn plain<C: Cube>(kv: Tensor<C, 1, Int>, groups: usize, layout: KvGroups) -> Tensor<C, 1, Int> {
    let out = kernel::forward(C::int_into(kv.into_primitive()), groups, layout);
    Tensor::from_primitive(C::int_from(out))
}
