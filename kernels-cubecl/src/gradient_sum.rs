//! Gradient sums done by a backward's own kernel or GEMM instead of by burn.
//!
//! When a tensor feeds several ops (the normalised input of q, k and v, or of gate and up; the
//! residual stream, read by the next RMSNorm and by the residual add), burn's autodiff sums the
//! input gradients itself: `Gradients::register` adds each new share to the one registered
//! before it, one more pass over the tensor per extra consumer. On a LLaMA3-8B step that is 160
//! passes over `[4096, 4096]` bf16 tensors, about 24 µs each on an H200 (docs/perf.md). A backward
//! that can fold the sum into what it writes anyway (the RMSNorm backward kernel reading one more
//! input, a GEMM with `beta = 1`) registers through [`register_summed`]: it takes the earlier share
//! out, adds it in, and registers the total, which the next consumer's backward finds in turn.
//!
//! burn runs the backward steps deepest first, so for the residual stream the add's share is
//! registered before the RMSNorm's backward runs: that kernel does the sum. Among ops of one depth
//! (q, k, v) the first registers and the others accumulate.

use burn::backend::autodiff::grads::Gradients;
use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;

/// Registers a backward's share of a parent's gradient: `sum(earlier)` (a kernel or GEMM that
/// computes the share and adds `earlier` into it) when another consumer registered a share
/// `earlier` before, `own()` alone otherwise.
///
/// burn does not export its node type, so the parent is named through `point_at_parent`, which
/// sets the `node` of a key tensor: `|key| key.node = parent.clone()`. `like` is any tensor of the
/// inner backend (a handle, not read): the key needs a primitive to exist.
///
/// `sum` may decline, giving `earlier` back (e.g. for a layout or dtype it cannot read); then the
/// share is computed alone and burn adds the two, as without this module.
pub fn register_summed<B: Backend>(
    grads: &mut Gradients,
    like: FloatTensor<B>,
    point_at_parent: impl FnOnce(&mut FloatTensor<Autodiff<B>>),
    sum: impl FnOnce(FloatTensor<B>) -> Result<FloatTensor<B>, Box<FloatTensor<B>>>,
    own: impl FnOnce() -> FloatTensor<B>,
) {
    let mut key = <Autodiff<B> as AutodiffBackend>::from_inner(like);
    point_at_parent(&mut key);
    let total = match grads.remove::<B>(&key) {
        Some(earlier) => match sum(earlier) {
            Ok(total) => total,
            Err(earlier) => B::float_add(own(), *earlier),
        },
        None => own(),
    };
    grads.register::<B>(key.node.id, total);
}
