//! LLaMA-family causal language models in burn, computing what HF `transformers`'
//! `LlamaForCausalLM` computes: HF-folder (safetensors) and GGUF loading, the `tokenizers`
//! tokenizer, a padded training forward and batched greedy generation with a KV cache.
//!
//! The API, all at the crate root unless noted:
//! - the model: [`LlamaConfig`] (presets, HF `config.json`) builds a [`LlamaForCausalLM`]
//!   (`LlamaModel` of `LlamaDecoderLayer`s, each an attention and an MLP block between two
//!   `RmsNorm`s); its seven projections are `lora::LoraLinear`s, named by [`LlamaProjection`];
//! - loading: [`load_checkpoint`] (an HF folder or a `.gguf`, by what the path is),
//!   [`load_hf_folder`], [`load_gguf`], [`checkpoint_config`]; the GGUF reader is [`gguf`];
//! - text: [`LlamaTokenizer`]; greedy decoding in [`generate`];
//! - training: [`causal_lm_loss`] (HF's loss) and the answer-position loss in [`loss`];
//!   adapters attach by module path (`LlamaForCausalLM::with_lora`, `load_peft_adapter`,
//!   `save_peft_adapter`, `merge_lora`);
//! - SparseLoRA's side of the forward: [`sparsity`];
//! - with the `test-support` feature, `golden`: comparisons with the recorded references
//!   (`transformers` fixtures, the SmolLM2 golden file), shared by the tests and `cargo xtask
//!   verify`.
//!
//! ```no_run
//! # use burn::backend::Flex;
//! use llama_burn::{load_hf_folder, generate::{generate_greedy, GenerationConfig}};
//! let device = Default::default();
//! let model = load_hf_folder::<Flex>("path/to/hf-model".as_ref(), burn::tensor::DType::F32, &device).unwrap();
//! let out = generate_greedy(&model, &[vec![1, 2, 3]], &GenerationConfig::new(16, vec![2], 0)).unwrap();
//! ```
#![warn(missing_docs)]

mod adapters;
mod attention;
mod cache;
mod config;
mod error;
pub mod generate;
pub mod gguf;
mod gguf_load;
mod gguf_tokenizer;
#[cfg(feature = "test-support")]
pub mod golden;
mod hf_load;
pub mod loss;
mod mlp;
mod model;
mod norm;
mod projection;
mod rope;
pub mod sparsity;
#[cfg(test)]
mod test_support;
mod tokenizer;

pub use attention::{LlamaAttention, SLICED_MAX_KEPT};
pub use cache::KvCache;
pub use config::{LlamaConfig, RopeScaling, TokenIds, PRESETS};
pub use error::{LlamaError, Result};
pub use gguf_load::load_gguf;
pub use gguf_tokenizer::tokenizer_json_from_gguf;
pub use hf_load::{checkpoint_files, load_hf_folder};
pub use loss::causal_lm_loss;
pub use mlp::LlamaMlp;
pub use model::{ForwardOutput, LayerInputs, LlamaDecoderLayer, LlamaForCausalLM, LlamaModel};
pub use norm::RmsNorm;
pub use projection::LlamaProjection;
pub use sparsity::{
    AttentionProjections, AttnChannels, Block, ChannelSelector, LayerSparsity, MlpProjections,
    SparseForward, SparsityPlan, TokenSplit,
};
pub use tokenizer::LlamaTokenizer;

use std::path::Path;

/// Loads an HF folder or a `.gguf` file, by what `path` is.
pub fn load_checkpoint<B: burn::tensor::backend::Backend>(
    path: &Path,
    dtype: burn::tensor::DType,
    device: &B::Device,
) -> Result<LlamaForCausalLM<B>> {
    if path.is_dir() {
        load_hf_folder(path, dtype, device)
    } else {
        load_gguf(path, dtype, device)
    }
}

/// The architecture of an HF folder or a `.gguf` file, without loading weights.
pub fn checkpoint_config(path: &Path) -> Result<LlamaConfig> {
    if path.is_dir() {
        LlamaConfig::from_hf_json(&path.join("config.json"))
    } else {
        gguf_load::gguf_config(&gguf::GgufFile::open(path)?)
    }
}
