//! The device work of one optimizer step, shared by the training loop ([`crate::train`]) and
//! `cargo xtask bench step`: forward and loss (dense or SparseLoRA), backward into an
//! accumulator, global-norm clipping on the device, AdamW.
//!
//! Nothing here reads a value back to the host: the loss and the gradient norm come back as
//! device tensors, so a caller that does not look at them lets the host queue the next step while
//! the device still runs this one.

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use llama_burn::loss::causal_lm_loss_at_targets;
use llama_burn::LlamaForCausalLM;
use lora::sparse::SparseForward;

use crate::batch::TrainBatch;
use crate::optim::ClippedOptimizer;

/// The loss of one micro-batch: the dense forward, or SparseLoRA's when `sparse` is given, with
/// logits only at the positions that predict an answer token.
///
/// # Shapes
/// - output: `[1]`, f32
pub fn micro_batch_loss<B: Backend>(
    model: &LlamaForCausalLM<B>,
    batch: TrainBatch<B>,
    sparse: Option<&SparseForward<'_, B>>,
) -> Tensor<B, 1> {
    let hidden = match sparse {
        Some(forward) => {
            model.forward_hidden_sparse(batch.input_ids, batch.attention_mask, forward)
        }
        None => model.forward_hidden(batch.input_ids, batch.attention_mask),
    };
    causal_lm_loss_at_targets(model, hidden, &batch.loss_targets)
}

/// Backpropagates `loss / accum` and adds the model's parameter gradients to `accumulator`;
/// returns the (unscaled) loss, detached, still on the device.
pub fn backward_into<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    loss: Tensor<B, 1>,
    accum: usize,
    accumulator: &mut GradientsAccumulator<M>,
) -> Tensor<B::InnerBackend, 1> {
    let value = loss.clone().inner();
    let grads = (loss / accum as f64).backward();
    accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    value
}

/// Clips `grads` to global norm `max_norm` (PyTorch's `clip_grad_norm_`) and applies one
/// optimizer step at learning rate `lr`. Returns the updated model and the norm before clipping,
/// on the device.
pub fn apply_gradients<B, M, O>(
    model: M,
    optim: &mut O,
    grads: GradientsParams,
    lr: f64,
    max_norm: f64,
) -> (M, Tensor<B::InnerBackend, 1>)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    O: ClippedOptimizer<M, B>,
{
    // `FusedAdamW` folds the clipping into its update kernels; burn's optimizers clip first.
    optim.clip_and_step(lr, model, grads, max_norm)
}
