//! The channel mask under `Autodiff`: the fused pass, recording [`MaskBackward`], whose state is
//! the mask (keep vector and dense rows): the input's gradient is the output gradient masked the
//! same way (the mask is 0/1, so it is its own derivative).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;

use super::kernel;
use crate::dispatch::Cube;

/// Backward of `out = mask(x)`: `dx = mask(dout)`.
#[derive(Debug)]
pub(super) struct MaskBackward;

impl<C: Cube> Backward<C, 1> for MaskBackward {
    /// The keep vector (`x`'s dtype) and the dense rows (f32), if any.
    type State = (FloatTensor<C>, Option<FloatTensor<C>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (keep, dense) = ops.state;
        unary::<C, _>(ops.parents, ops.node, grads, |dout| {
            C::float_from(kernel::mask_channels(
                C::float_into(dout),
                C::float_into(keep),
                dense.map(C::float_into),
            ))
        });
    }
}

/// The fused `mask(x)` (tracked or not); `keep` and `dense` are constants.
pub(super) fn mask<C: Cube>(
    x: FloatTensor<Autodiff<C>>,
    keep: FloatTensor<C>,
    dense: Option<FloatTensor<C>>,
) -> FloatTensor<Autodiff<C>> {
    let out = C::float_from(kernel::mask_channels(
        C::float_into(x.primitive.clone()),
        C::float_into(keep.clone()),
        dense.clone().map(C::float_into),
    ));
    match <MaskBackward as Backward<C, 1>>::prepare::<NoCheckpointing>(
        MaskBackward,
        [x.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((keep, dense), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}
