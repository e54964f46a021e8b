//! Top-k channel selection on the device: the indices of the `k` highest scores, in one kernel
//! and without reading the scores back to the host.
//!
//! burn-cubecl 0.21 has no device sort: `argsort` reads the tensor back, sorts on the host and
//! uploads the indices, which synchronises the GPU. SparseLoRA picks channels per sparse layer
//! and step, so today's `argsort_descending(0).narrow(0, 0, k)` stalls the device twice per layer.

mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{get_device_settings, Int, Tensor};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// The indices of the `min(k, n)` highest scores, in descending order of score: equal scores in
/// ascending order of index, NaN ranked as negative infinity (below every number, tied with
/// `-inf`), scores compared in f32 (so `-0.0` equals `0.0`). The [reference](reference::top_k)
/// gives exactly the same indices.
///
/// On burn-wgpu/burn-cuda (plain or `Autodiff`; the scores are constants, nothing is recorded)
/// one kernel that ranks every score by counting the scores before it: `n²` comparisons (2·10⁸
/// for 14336 channels), 32 scores per cube against tiles of the scores staged in shared memory,
/// each score's count spread over 8 warps, with no host read-back. Other backends
/// and dtypes other than f32/f16/bf16 take the reference (a sort, which on burn-cubecl reads the
/// scores back to the host).
///
/// # Panics
/// If `k` or the number of scores is 0 (no zero-size tensor is ever made).
///
/// # Shapes
/// - `scores`: `[n]`; output `[min(k, n)]`, in the device's default int dtype (i32 on burn-wgpu
///   and burn-cuda)
pub fn top_k<B: Backend>(scores: Tensor<B, 1>, k: usize) -> Tensor<B, 1, Int> {
    let [n] = scores.dims();
    assert!(
        n > 0 && k > 0,
        "top_k of {k} among {n} scores: both must be at least 1"
    );
    let Some(route) = route::<B>() else {
        return reference::top_k(scores, k);
    };
    if !float_dtype(scores.dtype()) {
        return reference::top_k(scores, k);
    }
    on_route!(route, C =>
        plain: cast(plain::<C>(cast(scores), k)),
        autodiff: cast(untracked::<C>(cast(scores), k)),
    )
}

fn plain<C: Cube>(scores: Tensor<C, 1>, k: usize) -> Tensor<C, 1, Int> {
    let [n] = scores.dims();
    let int_dtype = get_device_settings::<C>(&scores.device()).int_dtype;
    let out = kernel::top_k(
        C::float_into(scores.into_primitive().tensor()),
        k.min(n),
        int_dtype.into(),
    );
    Tensor::from_primitive(C::int_from(out))
}

/// Under `Autodiff`: int outputs carry no gradient, so the kernel runs on the inner tensor.
fn untracked<C: Cube>(scores: Tensor<Autodiff<C>, 1>, k: usize) -> Tensor<Autodiff<C>, 1, Int> {
    Tensor::from_inner(plain::<C>(scores.inner(), k))
}
