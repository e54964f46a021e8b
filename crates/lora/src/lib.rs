//! LoRA adapters for the frozen projections of `llama-burn` models, with PEFT-format I/O.
//!
//! - [`LoraConfig`]: rank, alpha, dropout and [`LoraTarget`]s (defaults: r 32, alpha 64, q/k/v/o).
//! - [`LoraAdapter`]: `lora_a [r, in]`, `lora_b [out, r]`, `scaling = alpha / r`, initialised and
//!   applied exactly as PEFT's `lora.Linear` (`scaling * B A x`), always in f32.
//! - [`save_peft`] / [`load_peft`]: `adapter_config.json` + `adapter_model.safetensors`, which
//!   `peft.PeftModel.from_pretrained` loads and `save_pretrained` writes.
//!
//! The model decides where adapters go (`llama_burn::LlamaForCausalLM::with_lora`); this crate
//! knows nothing of LLaMA beyond the projection names.
#![warn(missing_docs)]

pub mod adapter;
pub mod config;
pub mod error;
pub mod peft;
pub mod peft_config;
pub mod target;

pub use adapter::LoraAdapter;
pub use config::LoraConfig;
pub use error::{LoraError, Result};
pub use peft::{load_peft, peft_tensor_names, save_peft, LoraWeights, PeftAdapter};
pub use target::LoraTarget;
