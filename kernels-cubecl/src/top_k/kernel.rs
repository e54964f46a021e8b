//! The top-k kernel: rank by counting. Each score's rank is the number of scores that come before
//! it in the order (higher, or equal at a lower index); a score whose rank is below `k` writes
//! its index at its rank. The ranks are a permutation of `0..n`, so every output slot is written
//! exactly once: no atomics, no second pass, nothing read back to the host.
//!
//! The `n²` comparisons are spread over [`PARTS`] warps per score: a cube holds [`LANES`] scores
//! (one per lane) and [`PARTS`] warps, warp `p` counts over the `p`-th slice of the scores (every
//! lane of a warp reads the same score, one broadcast load), and the partial counts are summed
//! through shared memory. One unit per score, as first written, gave 14,336 MLP scores 56 cubes
//! (a third of the H200's multiprocessors) and ~280 us per call (`docs/perf.md`).

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch};

/// A score as the kernel orders it: in f32, NaN as `nan_as` (negative infinity).
#[cube]
fn ordered<F: Float>(score: F, nan_as: f32) -> f32 {
    let value = f32::cast_from(score);
    select(value.is_nan(), nan_as, value)
}

/// Scores per cube (one per lane of a warp).
const LANES: usize = 32;
/// Warps per cube, each counting over one slice of the scores.
const PARTS: usize = 8;

/// `out[rank(i)] = i` for every `i < n` with `rank(i) < k`, where `rank(i)` counts the `j` with
/// `s[j] > s[i]`, or `s[j] == s[i]` and `j < i`.
///
/// `scores`: `[n]` contiguous; `out`: `[k]`. Cube `c` ranks scores `c * lanes ..`; unit
/// `(lane, part)` counts over the `part`-th of `parts` slices of `0..n`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn top_k_kernel<F: Float, I: Int>(
    scores: &Tensor<F>,
    out: &mut Tensor<I>,
    n: usize,
    k: usize,
    nan_as: f32,
    #[comptime] lanes: usize,
    #[comptime] parts: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let lane = UNIT_POS_X as usize;
    let part = UNIT_POS_Y as usize;
    let i = CUBE_POS_X as usize * lanes + lane;
    // Units past `n` count (harmlessly) and take part in the barrier, but write nothing.
    let mine = if i < n {
        ordered::<F>(scores[i], nan_as)
    } else {
        nan_as
    };
    let chunk = n.div_ceil(parts);
    let start = part * chunk;
    let end = min(start + chunk, n);
    let mut rank = 0u32;
    let mut j = start;
    while j < end {
        let other = ordered::<F>(scores[j], nan_as);
        if other > mine || (other == mine && j < i) {
            rank += 1;
        }
        j += 1;
    }
    let mut partial = SharedMemory::<u32>::new(comptime!(lanes * parts));
    partial[part * lanes + lane] = rank;
    sync_cube();
    if part == 0 && i < n {
        let mut total = 0u32;
        for p in 0..parts {
            total += partial[p * lanes + lane];
        }
        let total = usize::cast_from(total);
        if total < k {
            out[total] = I::cast_from(i);
        }
    }
}

/// The indices of the `k` highest of `scores` (`[n]`, f32/f16/bf16, any strides), in descending
/// order of score, ties by lower index, NaN as negative infinity; `[k]`, contiguous, in
/// `int_dtype`. `1 <= k <= n`.
pub(crate) fn top_k<R: CubeRuntime>(
    scores: CubeTensor<R>,
    k: usize,
    int_dtype: DType,
) -> CubeTensor<R> {
    let scores = into_contiguous(scores);
    let dtype = scores.dtype;
    let n = scores.meta.shape().num_elements();
    let out = empty_device_contiguous_dtype(
        scores.client.clone(),
        scores.device.clone(),
        Shape::new([k]),
        int_dtype,
    );
    let cube_dim = CubeDim::new_2d(LANES as u32, PARTS as u32);
    let cube_count = CubeCount::new_1d(n.div_ceil(LANES) as u32);
    let address = address_type(&[&scores, &out]);
    let dtypes = [dtype.into(), int_dtype.into()];
    let client = scores.client.clone();
    count_launch();
    // SAFETY: scores are read below `n` only; the ranks of `0..n` are distinct and a unit writes
    // `out[rank]` only for `rank < k`, within `out`'s `k` elements.
    unsafe {
        top_k_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            address,
            scores.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            n,
            k,
            f32::NEG_INFINITY,
            LANES,
            PARTS,
            dtypes,
        )
    };
    out
}
