//! Top-k in burn tensor ops: the model's `argsort_descending` and `narrow`, with ties put in
//! index order and NaN ranked as negative infinity, so that the result is fully defined.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, IntDType, Tensor};

/// The indices of the `min(k, n)` highest scores, in descending order of score; equal scores in
/// ascending order of index; NaN ranks as negative infinity (below every number, tied with
/// `-inf`). Scores are compared in f32 (exact for f16/bf16), so `-0.0` equals `0.0`.
///
/// burn's `argsort_descending` is unstable: it leaves equal scores in an unspecified order (on
/// Flex, index order for up to 20 scores, not beyond). Here each sorted position gets the number
/// of distinct scores before it (a cumulative sum over "differs from the previous"), and one sort
/// of `group * n + index`, keys that are all distinct, puts every group in index order.
///
/// # Panics
/// If `k` or the number of scores is 0.
///
/// # Shapes
/// - `scores`: `[n]`; output `[min(k, n)]`, in the device's default int dtype
pub fn top_k<B: Backend>(scores: Tensor<B, 1>, k: usize) -> Tensor<B, 1, Int> {
    let [n] = scores.dims();
    assert!(
        n > 0 && k > 0,
        "top_k of {k} among {n} scores: both must be at least 1"
    );
    let scores = scores.cast(DType::F32);
    let scores = scores.clone().mask_fill(scores.is_nan(), f32::NEG_INFINITY);
    let order = scores.clone().argsort_descending(0);
    let sorted = scores.gather(0, order.clone());
    // burn rolls toward lower indices: `roll_dim(-1)` puts `sorted[p - 1]` at `p`, and the last
    // score at 0, which adds the same 0 or 1 to every group.
    let group = sorted
        .clone()
        .not_equal(sorted.roll_dim(-1, 0))
        .int()
        .cumsum(0);
    // Keys reach `n (n + 1) - 1`: 32-bit ints hold them for up to 46340 scores.
    let int_dtype: IntDType = order.dtype().into();
    let key_dtype = if n * (n + 1) - 1 > i32::MAX as usize {
        IntDType::I64
    } else {
        int_dtype
    };
    let n = n as i64;
    let keys = group.cast(key_dtype).mul_scalar(n) + order.cast(key_dtype);
    keys.sort(0)
        .narrow(0, 0, k.min(n as usize))
        .remainder_scalar(n)
        .cast(int_dtype)
}
