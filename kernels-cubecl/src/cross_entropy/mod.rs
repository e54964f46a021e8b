//! The cross-entropy at the answer positions: the per-row negative log-likelihood of a target
//! token under the softmax of a row of logits, forward and backward, each one kernel.
//!
//! The loss reads logits only where a label is (a few dozen rows of the vocabulary's width,
//! 128,256 at LLaMA3); burn's `log_softmax` + `gather` there costs three row reductions of one
//! cube per row (2.5 ms each on the H200, docs/perf.md) plus an f32 `[n, vocab]` copy.

mod backward;
mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorPrimitive};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// The negative log-likelihood of `targets` under `softmax(logits)`, per row, in f32:
/// `logsumexp(logits[r]) - logits[r, targets[r]]`.
///
/// On burn-wgpu/burn-cuda (plain or `Autodiff`) one kernel, one cube per row: the max and the sum
/// of exponentials run in f32 over the logits in their own dtype, no f32 copy of the logits
/// exists, and only the row's log-sum-exp (`[n]` f32) is kept for the backward, which is one
/// kernel: `dlogits = dnll * (softmax(logits) - onehot(targets))`, in the logits' dtype. Other
/// backends and dtypes take the [reference](reference::row_nll). Targets outside `0..vocab` are
/// the caller's to rule out (the kernel reads `logits[r, targets[r]]` unchecked).
///
/// # Shapes
/// - `logits`: `[n, vocab]`; `targets`: `[n]`; output `[n]`
pub fn row_nll<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let Some(route) = route::<B>() else {
        return reference::row_nll(logits, targets);
    };
    let [n, vocab] = logits.dims();
    let fits = float_dtype(logits.dtype()) && targets.dims() == [n] && n > 0 && vocab > 0;
    if !fits {
        return reference::row_nll(logits, targets);
    }
    on_route!(route, C =>
        plain: cast(plain::<C>(cast(logits), cast(targets))),
        autodiff: cast(tracked::<C>(cast(logits), cast(targets))),
    )
}

fn plain<C: Cube>(logits: Tensor<C, 2>, targets: Tensor<C, 1, Int>) -> Tensor<C, 1> {
    let (nll, _) = kernel::forward(
        C::float_into(logits.into_primitive().tensor()),
        C::int_into(targets.into_primitive()),
    );
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(nll)))
}

fn tracked<C: Cube>(
    logits: Tensor<Autodiff<C>, 2>,
    targets: Tensor<Autodiff<C>, 1, Int>,
) -> Tensor<Autodiff<C>, 1> {
    let nll = backward::forward::<C>(logits.into_primitive().tensor(), targets.into_primitive());
    Tensor::from_primitive(TensorPrimitive::Float(nll))
}
