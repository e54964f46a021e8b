//! The cross-entropy under `Autodiff`: the fused forward, recording [`CrossEntropyBackward`],
//! whose state is the logits, the targets and each row's log-sum-exp.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::{FloatTensor, IntTensor};

use super::kernel;
use crate::dispatch::Cube;

/// Backward of the per-row NLL with respect to the logits:
/// `dlogits[r, j] = dnll[r] * (softmax(logits[r])[j] - [j == targets[r]])`.
#[derive(Debug)]
pub(super) struct CrossEntropyBackward;

impl<C: Cube> Backward<C, 1> for CrossEntropyBackward {
    /// The logits (their dtype), the targets and the log-sum-exp of each row (f32).
    type State = (FloatTensor<C>, IntTensor<C>, FloatTensor<C>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (logits, targets, lse) = ops.state;
        unary::<C, _>(ops.parents, ops.node, grads, |dnll| {
            C::float_from(kernel::backward(
                C::float_into(logits),
                C::int_into(targets),
                C::float_into(lse),
                C::float_into(dnll),
            ))
        });
    }
}

/// The fused forward of `logits` (tracked or not), recording the backward when the logits need
/// a gradient.
pub(super) fn forward<C: Cube>(
    logits: FloatTensor<Autodiff<C>>,
    targets: IntTensor<C>,
) -> FloatTensor<Autodiff<C>> {
    let (nll, lse) = kernel::forward(
        C::float_into(logits.primitive.clone()),
        C::int_into(targets.clone()),
    );
    let (nll, lse) = (C::float_from(nll), C::float_from(lse));
    match <CrossEntropyBackward as Backward<C, 1>>::prepare::<NoCheckpointing>(
        CrossEntropyBackward,
        [logits.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((logits.primitive, targets, lse), nll),
        OpsKind::UnTracked(prep) => prep.finish(nll),
    }
}
