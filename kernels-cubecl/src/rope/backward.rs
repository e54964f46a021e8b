//! RoPE under `Autodiff`: the fused forward, recording [`RopeBackward`] (`dx` only).
//!
//! RoPE is linear in `x`: `out = cos ⊙ x + sin ⊙ (R x)` with `R = rotate_half`, so
//! `dx = cos ⊙ dy + R^T (sin ⊙ dy)`, and `R^T = -R` (`R` moves the second half to the first with a
//! minus sign, `R^T` moves the first half to the second with one). Per pair `(j, j + half)`:
//! `dx[j] = cos[j] dy[j] + sin[j + half] dy[j + half]`,
//! `dx[j + half] = cos[j + half] dy[j + half] - sin[j] dy[j]`:
//! RoPE of `dy` with `sin` negated, the two halves of `sin` trading places (for LLaMA's angles,
//! whose halves are equal, exactly `rope(dy, cos, -sin)`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;

use super::kernel;
use crate::dispatch::Cube;

/// Backward of the fused RoPE with respect to `x` (`cos` and `sin` get no gradient).
#[derive(Debug)]
pub(super) struct RopeBackward;

impl<C: Cube> Backward<C, 1> for RopeBackward {
    /// `(cos, sin, whether the forward's x was a sequence-major view)`: `dx` is written in the
    /// layout `x` had, so that it goes back through the view without a copy.
    type State = (FloatTensor<C>, FloatTensor<C>, bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, sin, sequence_major) = ops.state;
        unary::<C, _>(ops.parents, ops.node, grads, |dy| {
            C::float_from(kernel::launch(
                C::float_into(dy),
                C::float_into(cos),
                C::float_into(sin),
                true,
                sequence_major,
            ))
        });
    }
}

/// The fused forward of `x` (tracked or not) with untracked `cos` and `sin`, recording the
/// backward when `x` needs a gradient.
pub(super) fn forward<C: Cube>(
    x: FloatTensor<Autodiff<C>>,
    cos: FloatTensor<C>,
    sin: FloatTensor<C>,
) -> FloatTensor<Autodiff<C>> {
    let x_inner = C::float_into(x.primitive);
    let sequence_major = kernel::is_sequence_major(&x_inner);
    let out = C::float_from(kernel::launch(
        x_inner,
        C::float_into(cos.clone()),
        C::float_into(sin.clone()),
        false,
        false,
    ));
    match <RopeBackward as Backward<C, 1>>::prepare::<NoCheckpointing>(
        RopeBackward,
        [x.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((cos, sin, sequence_major), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}
