//! [`TinyGpt`] as `trainer`'s [`CausalLm`]: the loss of a batch (dense, or through the SparseLoRA
//! hook the trainer hands in) and its adapter on disk. This is all `trainer::train` needs.

use std::path::Path;

use burn::tensor::activation::log_softmax;
use burn::tensor::{backend::Backend, Int, Tensor};
use lora::sparse::SparseForward;
use lora::LoraError;
use trainer::{CausalLm, TrainBatch, IGNORE_INDEX};

use crate::model::TinyGpt;

impl<B: Backend> CausalLm<B> for TinyGpt<B> {
    fn loss(&self, batch: TrainBatch<B>, sparse: Option<&SparseForward<'_, B>>) -> Tensor<B, 1> {
        let logits = self.forward(batch.input_ids, batch.attention_mask, sparse);
        next_token_loss(logits, batch.labels)
    }

    fn save_adapter(&self, dir: &Path, base_model_name: &str) -> Result<(), LoraError> {
        self.save_peft_adapter(dir, base_model_name)
    }

    fn load_adapter(self, dir: &Path, device: &B::Device) -> Result<Self, LoraError> {
        self.load_peft_adapter(dir, device)
    }
}

/// Mean cross-entropy of the logits at position `t` against the label at `t + 1`, over the
/// labels that are not [`IGNORE_INDEX`] (prompt and padding); 0 when every label is ignored.
///
/// # Shapes
/// - `logits`: `[batch, seq, vocab]`, `labels`: `[batch, seq]`, output `[1]`
pub fn next_token_loss<B: Backend>(
    logits: Tensor<B, 3>,
    labels: Tensor<B, 2, Int>,
) -> Tensor<B, 1> {
    let [b, s, v] = logits.dims();
    let predict = logits.slice([0..b, 0..s - 1, 0..v]); // [b, s-1, v]
    let targets = labels.slice([0..b, 1..s]); // [b, s-1]
    let ignored = targets.clone().equal_elem(IGNORE_INDEX);
    let safe = targets.mask_fill(ignored.clone(), 0).unsqueeze_dim::<3>(2); // [b, s-1, 1]
    let nll = -log_softmax(predict, 2).gather(2, safe).squeeze_dim::<2>(2); // [b, s-1]
    let counted = ignored.bool_not().float();
    (nll * counted.clone()).sum() / counted.sum().clamp_min(1.0)
}
