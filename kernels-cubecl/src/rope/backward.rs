//! RoPE under `Autodiff`: the fused forward, recording [`RopeBackward`] (`dx` only).
//!
//! RoPE is linear in `x`: `out = cos ⊙ x + sin ⊙ (R x)` with `R = rotate_half`, so
//! `dx = cos ⊙ dy + R^T (sin ⊙ dy)`, and `R^T = -R` (`R` moves the second half to the first with a
//! minus sign, `R^T` moves the first half to the second with one). Per pair `(j, j + half)`:
//! `dx[j] = cos[j] dy[j] + sin[j + half] dy[j + half]`,
//! `dx[j + half] = cos[j + half] dy[j + half] - sin[j] dy[j]`:
//! RoPE of `dy` with `sin` negated, the two halves of `sin` trading places (for LLaMA's angles,
//! whose halves are equal, exactly `rope(dy, cos, -sin)`).
//!
//! For `rope_grouped` the output's regrouping is a permutation, whose transpose the kernel applies
//! by reading `dy` through the grouped layout: one launch as well.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;

use super::kernel;
use crate::dispatch::Cube;

/// Backward of the fused RoPE with respect to `x` (`cos` and `sin` get no gradient): of
/// [`rope`](super::rope) with `groups` `None`, of [`rope_grouped`](super::rope_grouped) with
/// `Some(groups)` (its `dy` then in the grouped layout `[b, h / groups, s, groups * hd]`).
#[derive(Debug)]
pub(super) struct RopeBackward {
    groups: Option<usize>,
}

impl<C: Cube> Backward<C, 1> for RopeBackward {
    /// `(cos, sin, whether the forward's x was a sequence-major view)`: `dx` is written in the
    /// layout `x` had, so that it goes back through the view without a copy.
    type State = (FloatTensor<C>, FloatTensor<C>, bool);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, sin, sequence_major) = ops.state;
        let groups = self.groups;
        unary::<C, _>(ops.parents, ops.node, grads, |dy| {
            let (dy, cos, sin) = (C::float_into(dy), C::float_into(cos), C::float_into(sin));
            C::float_from(match groups {
                None => kernel::launch(dy, cos, sin, true, sequence_major),
                Some(groups) => {
                    kernel::launch_grouped_transposed(dy, cos, sin, groups, sequence_major)
                }
            })
        });
    }
}

/// The fused forward of `x` (tracked or not) with untracked `cos` and `sin`, recording the
/// backward when `x` needs a gradient: `rope` with `groups` `None`, `rope_grouped` with
/// `Some(groups)`.
pub(super) fn forward<C: Cube>(
    x: FloatTensor<Autodiff<C>>,
    cos: FloatTensor<C>,
    sin: FloatTensor<C>,
    groups: Option<usize>,
) -> FloatTensor<Autodiff<C>> {
    let x_inner = C::float_into(x.primitive);
    let sequence_major = kernel::is_sequence_major(&x_inner);
    let (cos_inner, sin_inner) = (C::float_into(cos.clone()), C::float_into(sin.clone()));
    let out = C::float_from(match groups {
        None => kernel::launch(x_inner, cos_inner, sin_inner, false, false),
        Some(groups) => kernel::launch_grouped(x_inner, cos_inner, sin_inner, groups),
    });
    match <RopeBackward as Backward<C, 1>>::prepare::<NoCheckpointing>(
        RopeBackward { groups },
        [x.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((cos, sin, sequence_major), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}
