//! SwiGLU under `Autodiff`: the fused forward, recording [`SwigluBackward`] (both gradients from
//! one kernel).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;

use super::kernel;
use crate::dispatch::Cube;

/// Backward of the fused SwiGLU with respect to `gate` and `up`.
#[derive(Debug)]
pub(super) struct SwigluBackward;

impl<C: Cube> Backward<C, 2> for SwigluBackward {
    /// `(gate, up)`, in their dtype.
    type State = (FloatTensor<C>, FloatTensor<C>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (gate, up) = ops.state;
        let dy = grads.consume::<C>(&ops.node);
        let [gate_node, up_node] = ops.parents;
        if gate_node.is_none() && up_node.is_none() {
            return;
        }
        // One kernel gives both gradients; each is registered where a parent needs it.
        let (d_gate, d_up) =
            kernel::backward(C::float_into(gate), C::float_into(up), C::float_into(dy));
        if let Some(node) = gate_node {
            grads.register::<C>(node.id, C::float_from(d_gate));
        }
        if let Some(node) = up_node {
            grads.register::<C>(node.id, C::float_from(d_up));
        }
    }
}

/// The fused forward of `gate` and `up` (tracked or not), recording the backward when either
/// needs a gradient.
pub(super) fn forward<C: Cube>(
    gate: FloatTensor<Autodiff<C>>,
    up: FloatTensor<Autodiff<C>>,
) -> FloatTensor<Autodiff<C>> {
    let out = C::float_from(kernel::forward(
        C::float_into(gate.primitive.clone()),
        C::float_into(up.primitive.clone()),
    ));
    match <SwigluBackward as Backward<C, 2>>::prepare::<NoCheckpointing>(
        SwigluBackward,
        [gate.node.clone(), up.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((gate.primitive, up.primitive), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}
