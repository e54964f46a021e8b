//! SparseLoRA, the method (paper sections 3-4, SPEC sections 4, 6, 7 and 9) in one crate above
//! the model (`llama-burn`), the adapters (`lora`) and the estimator (`svd-estimator`), and below
//! the training loop (`trainer`) and the command line (`xtask`):
//!
//! - [`sparsity_config`]: the sensitivity settings read from `configs/sparsity/*.toml` (schema,
//!   validation, the paper's rows).
//! - [`flops`]: the analytic FLOPs of a training step, dense LoRA against a sparsity plan.
//! - [`sensitivity`]: the sensitivity sweep's library part: held-out loss, measurements, the
//!   greedy proposal for a FLOPs budget and the proposed config.
//! - [`setup`]: one entry point for a run, [`SparseSetup::from_config`]: the plan for the model,
//!   the estimator's SVD factors through one cache rule ([`FactorCache`]), the selector.
#![warn(missing_docs)]

pub mod flops;
pub mod sensitivity;
pub mod setup;
pub mod sparsity_config;

pub use setup::{FactorCache, FactorOrigin, SetupError, SparseSetup};
pub use sparsity_config::{
    BlockSparsity, LayerSet, SparsityConfig, SparsityConfigError, StartStep, DEFAULT_ESTIMATOR_RANK,
};
// The selector below needs the mode; re-exported so that a config user needs no second import.
pub use svd_estimator::SelectionMode;
