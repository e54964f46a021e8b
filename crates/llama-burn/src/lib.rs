//! LLaMA-family causal language models in burn, computing what HF `transformers`'
//! `LlamaForCausalLM` computes: HF-folder (safetensors) and GGUF loading, the `tokenizers`
//! tokenizer, a padded training forward and batched greedy generation with a KV cache.
//! Its projections are `lora::LoraLinear`s; adapters attach by module path (`LlamaForCausalLM::with_lora`,
//! `load_peft_adapter`, `merge_lora`, see [`adapters`]), and [`causal_lm_loss`] is HF's training
//! loss.
//!
//! ```no_run
//! # use burn::backend::Flex;
//! use llama_burn::{load_hf_folder, generate::{generate_greedy, GenerationConfig}};
//! let device = Default::default();
//! let model = load_hf_folder::<Flex>("path/to/hf-model".as_ref(), burn::tensor::DType::F32, &device).unwrap();
//! let out = generate_greedy(&model, &[vec![1, 2, 3]], &GenerationConfig::new(16, vec![2], 0)).unwrap();
//! ```
#![warn(missing_docs)]

pub mod adapters;
pub mod attention;
pub mod cache;
pub mod config;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gguf_load;
pub mod gguf_tokenizer;
pub mod golden;
pub mod hf_load;
pub mod loss;
pub mod mlp;
pub mod model;
pub mod norm;
pub mod projection;
pub mod rope;
pub mod sparsity;
pub mod tokenizer;

pub use config::{LlamaConfig, PRESETS};
pub use error::{LlamaError, Result};
pub use gguf_load::load_gguf;
pub use hf_load::load_hf_folder;
pub use loss::causal_lm_loss;
pub use model::{ForwardOutput, LayerInputs, LlamaForCausalLM};
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
