//! RMSNorm under `Autodiff`: the fused forward, recording [`RmsNormBackward`] (`dx` only).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;

use super::kernel;
use crate::dispatch::Cube;
use crate::gradient_sum::register_summed;

/// Backward of the fused RMSNorm with respect to `x` (the weight is frozen).
#[derive(Debug)]
pub(super) struct RmsNormBackward {
    pub(super) eps: f64,
}

impl<C: Cube> Backward<C, 1> for RmsNormBackward {
    /// `(x, weight)`, in their dtype.
    type State = (FloatTensor<C>, FloatTensor<C>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [Some(parent)] = ops.parents else {
            return;
        };
        let (x, weight) = ops.state;
        let eps = self.eps;
        let dy = grads.consume::<C>(&ops.node);
        let (x, weight, dy) = (C::float_into(x), C::float_into(weight), C::float_into(dy));
        // The residual stream's other share (the residual add's, registered first) is summed in
        // the kernel: see `crate::gradient_sum`.
        register_summed::<C>(
            grads,
            C::float_from(dy.clone()),
            |key| key.node = parent.clone(),
            |earlier| {
                let earlier = C::float_into(earlier);
                if !kernel::fits_summed(&x, &earlier) {
                    return Err(Box::new(C::float_from(earlier)));
                }
                let (x, weight, dy) = (x.clone(), weight.clone(), dy.clone());
                let dx = kernel::backward_summed(x, weight, dy, earlier, eps);
                Ok(C::float_from(dx))
            },
            || C::float_from(kernel::backward(x.clone(), weight.clone(), dy.clone(), eps)),
        );
    }
}

/// The fused forward of `x` (tracked or not) with an untracked `weight`, recording the backward
/// when `x` needs a gradient.
pub(super) fn forward<C: Cube>(
    x: FloatTensor<Autodiff<C>>,
    weight: FloatTensor<C>,
    eps: f64,
) -> FloatTensor<Autodiff<C>> {
    let out = C::float_from(kernel::forward(
        C::float_into(x.primitive.clone()),
        C::float_into(weight.clone()),
        eps,
    ));
    match <RmsNormBackward as Backward<C, 1>>::prepare::<NoCheckpointing>(
        RmsNormBackward { eps },
        [x.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((x.primitive, weight), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}
