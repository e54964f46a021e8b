//! The top-k kernel: rank by counting. Each unit owns one score and counts the scores that come
//! before it in the order (higher, or equal at a lower index), reading all `n` scores through
//! shared memory a tile at a time; a unit whose rank is below `k` writes its index at its rank.
//! The ranks are a permutation of `0..n`, so every output slot is written exactly once: no atomics,
//! no second pass, nothing read back to the host.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch, elementwise_launch};

/// A score as the kernel orders it: in f32, NaN as `nan_as` (negative infinity).
#[cube]
fn ordered<F: Float>(score: F, nan_as: f32) -> f32 {
    let value = f32::cast_from(score);
    select(value.is_nan(), nan_as, value)
}

/// `out[rank(i)] = i` for every `i < n` with `rank(i) < k`, where `rank(i)` counts the `j` with
/// `s[j] > s[i]`, or `s[j] == s[i]` and `j < i`.
///
/// `scores`: `[n]` contiguous; `out`: `[k]`. One unit per score; the cube's `tile` units load one
/// tile of scores into shared memory together, then each compares its score with the whole tile.
#[cube(launch_unchecked, address_type = "dynamic")]
fn top_k_kernel<F: Float, I: Int>(
    scores: &Tensor<F>,
    out: &mut Tensor<I>,
    n: usize,
    k: usize,
    nan_as: f32,
    #[comptime] tile: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let unit = UNIT_POS as usize;
    let i = CUBE_POS * tile + unit;
    let mut tile_scores = SharedMemory::<f32>::new(tile);
    // Units past `n` take part in loading the tiles (and in the barriers) but write nothing.
    let mine = if i < n {
        ordered::<F>(scores[i], nan_as)
    } else {
        nan_as
    };

    let mut rank = 0usize;
    let mut start = 0usize;
    while start < n {
        let j = start + unit;
        if j < n {
            tile_scores[unit] = ordered::<F>(scores[j], nan_as);
        }
        sync_cube();
        let len = min(tile, n - start);
        for t in 0..len {
            let other = tile_scores[t];
            if other > mine || (other == mine && start + t < i) {
                rank += 1;
            }
        }
        // Every unit has compared with this tile before the next overwrites it.
        sync_cube();
        start += tile;
    }

    if i < n && rank < k {
        out[rank] = I::cast_from(i);
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
    let (cube_dim, cube_count) = elementwise_launch(&scores, n);
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
            cube_dim.x as usize,
            dtypes,
        )
    };
    out
}
