//! RoPE in burn tensor ops: the model's `RopeAngles::apply` (HF LLaMA's `apply_rotary_pos_emb`).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `x * cos + rotate_half(x) * sin`, `rotate_half(x) = cat([-x[.., hd/2..], x[.., ..hd/2]])`.
///
/// # Shapes
/// - `x`: `[b, h, s, hd]`; `cos`, `sin`: `[b, 1, s, hd]` (broadcast over heads); output as `x`
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, s, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..s, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..s, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos + rotated * sin
}

/// [`rope`] in the grouped, position-major layout of grouped-query attention (what
/// [`rope_grouped`](crate::rope::rope_grouped) computes): the `groups` heads of each KV head side by
/// side in one row per position.
///
/// # Shapes
/// - `x`: `[b, h, s, hd]`, `h` divisible by `groups`; `cos`, `sin` as [`rope`]; output
///   `[b, h / groups, s, groups * hd]`
///
/// # Panics
/// If `groups` is 0 or does not divide `h`.
pub fn rope_grouped<B: Backend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
    groups: usize,
) -> Tensor<B, 4> {
    let [b, h, s, hd] = x.dims();
    check_groups(h, groups);
    let kv = h / groups;
    rope(x, cos, sin)
        .reshape([b, kv, groups, s, hd])
        .swap_dims(2, 3)
        .reshape([b, kv, s, groups * hd])
}

/// Panics unless `groups` splits `heads` evenly (and is not 0).
pub(crate) fn check_groups(heads: usize, groups: usize) {
    assert!(
        groups > 0 && heads.is_multiple_of(groups),
        "rope_grouped: {heads} heads do not split into groups of {groups}"
    );
}
