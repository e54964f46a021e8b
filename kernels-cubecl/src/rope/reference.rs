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
