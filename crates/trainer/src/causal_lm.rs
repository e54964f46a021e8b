//! What the training loop needs of a model, so that it fine-tunes any causal LM built from
//! `lora::LoraLinear`s, not only this repository's LLaMA: the loss of a batch (dense or through
//! a SparseLoRA hook) and its adapter on disk. The parameters the optimizer steps are the
//! module's own: a model frozen with `lora::freeze_base` trains only its adapters.

use std::path::Path;

use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};
use llama_burn::LlamaForCausalLM;
use lora::sparse::SparseForward;
use lora::LoraError;

use crate::batch::TrainBatch;
use crate::step::micro_batch_loss;

/// A causal language model that [`crate::train`] can fine-tune.
pub trait CausalLm<B: Backend>: Module<B> + Sized {
    /// The mean next-token loss of `batch` over its answer tokens, through SparseLoRA's channel
    /// selection when `sparse` is given (the model asks `sparse.selector` per block).
    ///
    /// # Shapes
    /// - output: `[1]`, f32
    fn loss(&self, batch: TrainBatch<B>, sparse: Option<&SparseForward<'_, B>>) -> Tensor<B, 1>;

    /// Writes the trained adapters (a PEFT adapter folder) to `dir`, recording
    /// `base_model_name` as the model they apply to.
    ///
    /// # Errors
    /// The model has no adapters, or the folder cannot be written.
    fn save_adapter(&self, dir: &Path, base_model_name: &str) -> Result<(), LoraError>;

    /// Replaces the adapters with those saved in `dir` by [`Self::save_adapter`] (resuming).
    ///
    /// # Errors
    /// The folder is missing, malformed, or does not fit the model.
    fn load_adapter(self, dir: &Path, device: &B::Device) -> Result<Self, LoraError>;
}

impl<B: Backend> CausalLm<B> for LlamaForCausalLM<B> {
    fn loss(&self, batch: TrainBatch<B>, sparse: Option<&SparseForward<'_, B>>) -> Tensor<B, 1> {
        micro_batch_loss(self, batch, sparse)
    }

    fn save_adapter(&self, dir: &Path, base_model_name: &str) -> Result<(), LoraError> {
        self.save_peft_adapter(dir, base_model_name)
    }

    fn load_adapter(self, dir: &Path, device: &B::Device) -> Result<Self, LoraError> {
        self.load_peft_adapter(dir, device)
    }
}
