//! Fine-tuning with LoRA/SparseLoRA (any [`CausalLm`]; LLaMA implements it): LLM-Adapters records, the reference's prompts
//! (SPEC section 8), tokenised and left-padded batches, a resumable seeded sampler, the training
//! loop (AdamW, cosine schedule, global-norm clipping, accumulation, atomic checkpoints, exact
//! resume, JSONL metrics), and answer extraction for evaluation.
//!
//! ```no_run
//! use std::path::Path;
//! use trainer::{load_records, tokenize_records, Task, TokenizeConfig};
//! let tokenizer = llama_burn::LlamaTokenizer::from_file(Path::new("tokenizer.json")).unwrap();
//! let records = load_records(Path::new("datasets/train/commonsense.jsonl")).unwrap();
//! let examples = tokenize_records(
//!     &tokenizer,
//!     &records,
//!     Task::Csr170k.response_field(),
//!     &TokenizeConfig::new(2),
//! )
//! .unwrap();
//! ```
#![warn(missing_docs)]

pub mod batch;
pub mod causal_lm;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod eval_extract;
pub mod evaluate;
pub mod example_batches;
pub mod grad_norm;
pub mod metrics;
pub mod optim;
pub mod sampler;
pub mod schedule;
pub mod sparse_step;
pub mod step;
pub mod task;
pub mod template;
pub mod tokenize;
pub mod train;
pub mod train_config;

pub use batch::{collate, pad_left, CollateConfig, PaddedBatch, TrainBatch};
pub use causal_lm::CausalLm;
pub use data::{load_records, parse_records, Record, ResponseField};
pub use error::{DataError, Result};
pub use eval_extract::{response_text, Extraction, Prediction};
pub use evaluate::{evaluate, PromptSeam, TaskAccuracy};
pub use example_batches::ExampleBatches;
pub use sampler::{Sampler, SamplerState};
pub use sparse_step::{ReplaySelector, SparseTraining, TimedSelector};
pub use task::Task;
pub use template::{eval_prompt, training_prompt, training_text};
pub use tokenize::{
    check_examples, tokenize_pair, tokenize_record, tokenize_records, TokenizeConfig, TrainExample,
    IGNORE_INDEX,
};
pub use train::{train, MicroBatches, RunOptions, StepObserver, TrainError};
pub use train_config::TrainConfig;
