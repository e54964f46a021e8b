//! Top-k channel selection on the device: the indices of the `k` highest scores, in one kernel
//! and without reading the scores back to the host.
//!
//! burn-cubecl 0.21 has no device sort: `argsort` reads the tensor back, sorts on the host and
//! uploads the indices, which synchronises the GPU. SparseLoRA picks channels per sparse layer
//! and step, so today's `argsort_descending(0).narrow(0, 0, k)` stalls the device twice per layer.

mod kernel;
mod radix;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{get_device_settings, Int, Tensor};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// Which kernel [`top_k_with`] runs on burn-wgpu/burn-cuda. Both give exactly the same indices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Method {
    /// The faster of the two for `n` scores and `k`, by the rule of [`top_k`].
    #[default]
    Auto,
    /// Every score ranked by counting the scores before it: `n²` comparisons over `n / 32` cubes.
    Counting,
    /// The radix select: the `k`-th score found by histograms of its bits, then the `k` kept
    /// scores ranked among themselves. For up to 32768 scores; more take [`Method::Counting`].
    RadixSelect,
}

/// The indices of the `min(k, n)` highest scores, in descending order of score: equal scores in
/// ascending order of index, NaN ranked as negative infinity (below every number, tied with
/// `-inf`), scores compared in f32 (so `-0.0` equals `0.0`). The [reference](reference::top_k)
/// gives exactly the same indices.
///
/// On burn-wgpu/burn-cuda (plain or `Autodiff`; the scores are constants, nothing is recorded)
/// one kernel launch, no host read-back, either of two kernels ([`Method`]):
/// - the radix select for `6144 <= n <= 32768` scores and `k <= n / 8`: every score becomes an
///   order-preserving `u32` key, paired with its index so that no two tie; histograms of the keys'
///   8-bit digits, highest first, narrow down the `k`-th pair until its bin holds only wanted
///   pairs or few enough (256) to rank among themselves; the `k` pairs at or above it are then
///   ranked by counting among themselves (`k²` comparisons). Each of its `ceil(k / 32)` cubes
///   repeats the select over all `n` keys (held in its units) and ranks 32 of the kept pairs, so
///   that no cube waits for another;
/// - otherwise ranking every score by counting the scores before it: `n²` comparisons (2·10⁸ for
///   14336 channels) over `n / 32` cubes.
///
/// Why that rule: the select's time grows with `n` (one cube of 256 units scans all `n` keys in
/// each pass) and with `k` (its ranking, and its cubes); counting's with `n²`, spread over the
/// whole GPU. On an H200 (Nsight Compute, f32 and bf16) counting takes ~4 us up to 2048 scores,
/// ~6 us for 4096, ~11 us for 6144, ~13.5 us for 8192 and ~37 us for 14336, whatever `k`; the
/// select ~5 us for 1024 scores, ~6-7 us for 4096 (k = 256), ~8-10 us for 6144 (k = 384, 768),
/// ~10-11 us for 8192 (k = 1024), and for 14336 ~11, ~12-13, ~16-19 and ~31-36 us with k = 143,
/// 430, 1434 and 4000. Above 32768 scores the keys outgrow what a cube's units hold. (History:
/// counting alone took ~37 us for LLaMA3-8B's 14336 MLP channels; `docs/perf.md`.)
///
/// Other backends and dtypes other than f32/f16/bf16 take the reference (a sort, which on
/// burn-cubecl reads the scores back to the host).
///
/// # Panics
/// If `k` or the number of scores is 0 (no zero-size tensor is ever made).
///
/// # Shapes
/// - `scores`: `[n]`; output `[min(k, n)]`, in the device's default int dtype (i32 on burn-wgpu
///   and burn-cuda)
pub fn top_k<B: Backend>(scores: Tensor<B, 1>, k: usize) -> Tensor<B, 1, Int> {
    top_k_with(scores, k, Method::Auto)
}

/// [`top_k`] with the kernel chosen by `method` instead of by its rule (for tests and
/// benchmarks: the indices are the same).
///
/// # Panics
/// If `k` or the number of scores is 0.
///
/// # Shapes
/// - `scores`: `[n]`; output `[min(k, n)]`, in the device's default int dtype
// Without a cubecl backend feature the kernel route is compiled out and only the reference runs.
#[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(unused_variables))]
pub fn top_k_with<B: Backend>(scores: Tensor<B, 1>, k: usize, method: Method) -> Tensor<B, 1, Int> {
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
        plain: cast(plain::<C>(cast(scores), k, method)),
        autodiff: cast(untracked::<C>(cast(scores), k, method)),
    )
}

fn plain<C: Cube>(scores: Tensor<C, 1>, k: usize, method: Method) -> Tensor<C, 1, Int> {
    let [n] = scores.dims();
    let int_dtype = get_device_settings::<C>(&scores.device()).int_dtype;
    let out = kernel::top_k(
        C::float_into(scores.into_primitive().tensor()),
        k.min(n),
        int_dtype.into(),
        method,
    );
    Tensor::from_primitive(C::int_from(out))
}

/// Under `Autodiff`: int outputs carry no gradient, so the kernel runs on the inner tensor.
fn untracked<C: Cube>(
    scores: Tensor<Autodiff<C>, 1>,
    k: usize,
    method: Method,
) -> Tensor<Autodiff<C>, 1, Int> {
    Tensor::from_inner(plain::<C>(scores.inner(), k, method))
}
