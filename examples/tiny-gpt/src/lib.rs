//! A burn user's model fine-tuned with LoRA and SparseLoRA through the library crates' public
//! API, with nothing from `llama-burn` (docs/library.md walks through it):
//!
//! - [`model`], [`block`], [`attention`], [`mlp`]: a small GPT-style causal LM whose linear
//!   layers are `lora::LoraLinear`s, with a sparse forward that asks a
//!   `lora::sparse::ChannelSelector` per block;
//! - [`adapters`]: LoRA on it (`LoraConfig::targets_module`, `lora::freeze_base`, PEFT folders);
//! - [`layout`]: what the SVD estimator needs (`svd_estimator::ModelLayout`, named weights);
//! - [`causal_lm`]: `trainer::CausalLm`, so that `trainer::train` runs it;
//! - [`finetune`]: the example end to end, dense or sparse; [`counting`] counts the channels
//!   the sparse forward computed; [`data`] a synthetic task.
//!
//! ```no_run
//! use tiny_gpt_example::{FineTune, TrainBackend};
//! let device = Default::default();
//! let (_model, report) = FineTune::new(20, "runs/tiny-gpt").run::<TrainBackend>(&device).unwrap();
//! println!("{:?}", report.losses);
//! ```
#![warn(missing_docs)]

pub mod adapters;
pub mod attention;
pub mod block;
pub mod causal_lm;
pub mod counting;
pub mod data;
pub mod finetune;
pub mod layout;
pub mod mlp;
pub mod model;

pub use counting::{ChannelCount, ChannelCounter, ChannelCounts};
pub use finetune::{model_config, FineTune, FineTuneError, Report, SPARSITY_TOML};
pub use model::{TinyGpt, TinyGptConfig};

/// The CPU backend the example trains on: burn-flex under autodiff.
pub type TrainBackend = burn::backend::Autodiff<burn::backend::Flex>;
