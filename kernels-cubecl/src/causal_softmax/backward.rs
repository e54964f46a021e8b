//! The causal softmax under `Autodiff`: the fused forward, recording [`CausalSoftmaxBackward`],
//! whose only state is the output `P` in the scores' dtype.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::{BoolTensor, FloatTensor};

use super::kernel;
use crate::dispatch::Cube;

/// Backward of the fused causal softmax with respect to the scores:
/// `dS = scale * P * (dP - sum_j dP P)` per row (masked keys have `P = 0`, so `dS = 0`).
#[derive(Debug)]
pub(super) struct CausalSoftmaxBackward {
    pub(super) scale: f64,
}

impl<C: Cube> Backward<C, 1> for CausalSoftmaxBackward {
    /// The probabilities `P`, in the scores' dtype.
    type State = FloatTensor<C>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let probs = ops.state;
        let scale = self.scale;
        unary::<C, _>(ops.parents, ops.node, grads, |dprobs| {
            C::float_from(kernel::backward(
                C::float_into(probs),
                C::float_into(dprobs),
                scale,
            ))
        });
    }
}

/// The fused forward of `scores` (tracked or not), recording the backward (keeping `P`) when the
/// scores need a gradient.
pub(super) fn forward<C: Cube>(
    scores: FloatTensor<Autodiff<C>>,
    key_valid: BoolTensor<C>,
    scale: f64,
) -> FloatTensor<Autodiff<C>> {
    let probs = C::float_from(kernel::forward(
        C::float_into(scores.primitive),
        C::bool_into(key_valid),
        scale,
    ));
    match <CausalSoftmaxBackward as Backward<C, 1>>::prepare::<NoCheckpointing>(
        CausalSoftmaxBackward { scale },
        [scores.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(probs.clone(), probs),
        OpsKind::UnTracked(prep) => prep.finish(probs),
    }
}
