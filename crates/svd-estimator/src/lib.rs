//! SparseLoRA's training-free sparsity estimator (paper section 3, SPEC.md section 4): offline
//! truncated SVD of the frozen weights, and online per-batch channel selection.
//!
//! - Offline: [`truncated_svd`] (randomized subspace iteration on any burn backend) and
//!   [`estimator_factors`] turn a frozen `[out, in]` weight into the `w1` (`in x r`) / `w2`
//!   (`r x out`) factors with `x w1 w2 ~ x W^T`; [`SvdCache`] keeps them in a safetensors file
//!   with model-identity and rank checks, and [`SvdCache::load_or_build`] reuses a valid cache or
//!   rebuilds a missing, stale or corrupt one.
//! - Online: [`SvdChannelSelector`] implements the [`lora::sparse::ChannelSelector`] hook: per
//!   layer, block and batch, the top-k channels by the SPEC 4 scores, from the factors
//!   ([`SelectionMode::Estimated`]), the true projections ([`SelectionMode::Oracle`]) or at
//!   random ([`SelectionMode::Random`]), with HF-correct GQA mappings or, with
//!   [`SelectorOptions::reference_compat`], the official code's. The score arithmetic and the GQA
//!   index mappings are the pure functions of [`scoring`].
//! - Any model: the estimator knows a model through its [`ModelLayout`] (depth, attention heads,
//!   the path and shape of each [`EstimatedProjection`]); LLaMA's is its `LlamaConfig`, and
//!   [`SvdCache::from_weights`] builds factors from any named weights.
//!
//! ```no_run
//! # use burn::backend::Flex;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let model: llama_burn::LlamaForCausalLM<Flex> = todo!();
//! use lora::sparse::{Block, SparsityPlan};
//! use svd_estimator::{SelectorOptions, SvdCache, SvdChannelSelector};
//! let mut plan = SparsityPlan::dense(model.config.num_hidden_layers);
//! plan.set(20, Block::Mlp, 0.9)?;
//! let path = std::path::Path::new("sparselora-svd-r8.safetensors");
//! let (cache, _origin) = SvdCache::load_or_build(path, "my-model", 8, &model, &plan)?;
//! let selector = SvdChannelSelector::new(&cache, plan, &model.config, SelectorOptions::default())?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod cache;
mod jacobi;
mod layout;
mod mode;
pub mod scoring;
mod select;
mod svd;

pub use cache::{
    plan_needs, BuildReason, CacheOrigin, CoverageError, SvdCache, SvdCacheError, ESTIMATED,
};
pub use jacobi::symmetric_eigen;
pub use layout::{EstimatedProjection, ModelLayout};
pub use mode::SelectionMode;
pub use select::{SelectorError, SelectorOptions, SvdChannelSelector};
pub use svd::{
    estimator_factors, truncated_svd, EstimatorFactors, SvdOptions, TruncatedSvd, FACTOR_TOLERANCE,
};
