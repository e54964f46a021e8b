//! LoRA for burn models, computing what PEFT's `tuners/lora` computes, with PEFT-format I/O.
//!
//! - [`LoraLinear`]: a frozen `[out, in]` linear layer with an optional adapter, its dense and
//!   SparseLoRA (sliced / masked) forwards through `sparse_ops`, and merge/unmerge through one
//!   [`LoraAdapter::delta_weight`].
//! - [`LoraAdapter`]: `lora_a [r, in]`, `lora_b [out, r]`, `scaling = alpha / r`, initialised and
//!   applied exactly as PEFT's `lora.Linear` (`scaling * B A x`), always in f32.
//! - [`LoraConfig`]: rank, alpha, dropout and [`TargetModules`] (PEFT's `target_modules`: names
//!   matched against module paths, or `all-linear`; defaults: r 32, alpha 64, the attention
//!   projections).
//! - [`freeze_base`] / [`cast_base`]: freeze or cast every parameter of any burn module outside
//!   its adapters.
//! - [`sparse`]: SparseLoRA's model-side types for any model built from `LoraLinear`s: the
//!   [`sparse::SparsityPlan`], the [`sparse::ChannelSelector`] hook a model calls per block, and
//!   [`sparse::SparseForward`] (the selector and the token rows that stay dense).
//! - [`save_peft`] / [`load_peft`]: `adapter_config.json` + `adapter_model.safetensors`, which
//!   `peft.PeftModel.from_pretrained` loads and `save_pretrained` writes.
//!
//! The model decides where adapters go: it holds `LoraLinear`s and asks
//! [`LoraConfig::targets_module`] with each one's module path (`llama_burn::LlamaForCausalLM::with_lora`).
#![warn(missing_docs)]

pub mod adapter;
pub mod base;
mod channel_keep;
pub mod config;
pub mod error;
pub mod linear;
pub mod peft;
pub mod peft_config;
pub mod sparse;
pub mod target;

pub use adapter::LoraAdapter;
pub use base::{cast_base, freeze_base};
pub use config::LoraConfig;
pub use error::{LoraError, Result};
pub use linear::LoraLinear;
pub use peft::{load_peft, peft_tensor_names, save_peft, LoraWeights, PeftAdapter};
pub use target::TargetModules;
