//! Setting SparseLoRA up for a model: the sparsity config checked against it, the estimator's
//! SVD factors found or built (SPEC 4), and the channel selector. Every command that runs sparse
//! (`finetune`, `sensitivity`, `bench step`, `check-step`) gets its factors through
//! [`FactorCache::load`], so they all follow one rule:
//!
//! - oracle and random selection read no factors: none are built or read;
//! - [`FactorCache::InMemory`]: the factors the plan needs are built for this run only;
//! - [`FactorCache::File`]: a valid file is reused, a missing, stale, incomplete or corrupt one is
//!   rebuilt and rewritten ([`SvdCache::load_or_build`]); when the rebuilt file cannot be
//!   written (a read-only model folder), the factors are only a cache, so the run goes on with
//!   factors built in memory and says why ([`FactorOrigin::Unsaved`]). A file that exists but
//!   cannot be read is an error.
//!
//! The randomized SVD draws from the backend's generator: seed it before [`FactorCache::load`] or
//! [`SparseSetup::from_config`] for reproducible factors.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::tensor::backend::Backend;
use llama_burn::LlamaForCausalLM;
use lora::sparse::SparsityPlan;
use svd_estimator::{
    plan_needs, BuildReason, CacheOrigin, SelectorError, SelectorOptions, SvdCache, SvdCacheError,
    SvdChannelSelector,
};

use crate::sparsity_config::{SparsityConfig, SparsityConfigError};
use crate::SelectionMode;

/// Where the estimator's SVD factors are kept between runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FactorCache {
    /// Nowhere: built for this run only (a random-weight model drawn afresh per run).
    InMemory,
    /// A safetensors file, valid only for the weights named by `identity` (a checkpoint's file
    /// names and sizes, or a random model's preset and seed).
    File {
        /// The cache file.
        path: PathBuf,
        /// What the factors were computed from.
        identity: String,
    },
}

/// Where the factors of a setup came from, for the run's log.
#[derive(Debug)]
pub enum FactorOrigin {
    /// Oracle and random selection read no factors.
    NotNeeded,
    /// Built in memory for this run ([`FactorCache::InMemory`]).
    InMemory,
    /// A valid cache file, reused.
    Reused(PathBuf),
    /// Rebuilt and written to the cache file, for the reason given.
    Built {
        /// The cache file.
        path: PathBuf,
        /// Why it was rebuilt.
        reason: BuildReason,
    },
    /// Rebuilt, but the file could not be written: the run uses factors built in memory.
    Unsaved(SvdCacheError),
}

/// Why SparseLoRA cannot be set up for a model.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The config does not fit the model (a layer past its last, a ratio out of range).
    #[error(transparent)]
    Config(#[from] SparsityConfigError),
    /// The SVD cache file exists but cannot be read.
    #[error(transparent)]
    Cache(#[from] SvdCacheError),
    /// The selector cannot be built (uneven GQA groups, factors that do not fit).
    #[error(transparent)]
    Selector(#[from] SelectorError),
}

impl FactorCache {
    /// The estimator's factors of `rank` for the projections `plan` makes sparse under `mode`
    /// (the module documentation gives the rule), and where they came from.
    ///
    /// # Errors
    /// [`SetupError::Cache`] for a cache file that exists but cannot be read.
    pub fn load<B: Backend>(
        &self,
        model: &LlamaForCausalLM<B>,
        rank: usize,
        mode: SelectionMode,
        plan: &SparsityPlan,
    ) -> Result<(SvdCache<B>, FactorOrigin), SetupError> {
        let in_memory = || SvdCache::build(model, rank, |layer, t| plan_needs(plan, layer, t));
        if mode != SelectionMode::Estimated {
            let none = SvdCache {
                rank,
                factors: BTreeMap::new(),
                unconverged: BTreeMap::new(),
            };
            return Ok((none, FactorOrigin::NotNeeded));
        }
        let (path, identity) = match self {
            Self::InMemory => return Ok((in_memory(), FactorOrigin::InMemory)),
            Self::File { path, identity } => (path, identity),
        };
        match SvdCache::load_or_build(path, identity, rank, model, plan) {
            Ok((cache, CacheOrigin::Reused)) => Ok((cache, FactorOrigin::Reused(path.clone()))),
            Ok((cache, CacheOrigin::Built(reason))) => {
                let origin = FactorOrigin::Built {
                    path: path.clone(),
                    reason,
                };
                Ok((cache, origin))
            }
            Err(e @ SvdCacheError::RebuildFailed { .. }) => {
                Ok((in_memory(), FactorOrigin::Unsaved(e)))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// What a SparseLoRA run needs beside the model: its config, the plan for this model, and the
/// channel selector (holding the stacked factors it reads; the cache itself is not kept).
#[derive(Debug)]
pub struct SparseSetup<B: Backend> {
    /// The sparsity config.
    pub config: SparsityConfig,
    /// The config's plan for this model.
    pub plan: SparsityPlan,
    /// Chooses each sparse block's channels.
    pub selector: SvdChannelSelector<B>,
    /// Where the estimator's factors came from.
    pub factors: FactorOrigin,
    /// Projections whose factors stayed above SPEC 4's tolerance, with their error bound (see
    /// [`SvdCache::unconverged`]).
    pub unconverged: BTreeMap<String, f64>,
    /// Projections with factors.
    pub factor_count: usize,
}

impl<B: Backend> SparseSetup<B> {
    /// Checks `config` against `model`, gets the SVD factors through `cache` (see
    /// [`FactorCache::load`]) and builds the selector; `seed` seeds random selection.
    ///
    /// # Errors
    /// A config that does not fit the model, an unreadable cache file, or a selector that cannot
    /// be built.
    pub fn from_config(
        config: SparsityConfig,
        model: &LlamaForCausalLM<B>,
        cache: &FactorCache,
        seed: u64,
    ) -> Result<Self, SetupError> {
        let plan = config.plan(model.config.num_hidden_layers)?;
        let (factors, origin) = cache.load(model, config.estimator_rank, config.mode, &plan)?;
        let options = SelectorOptions::default()
            .with_mode(config.mode)
            .with_seed(seed)
            .with_reference_compat(config.reference_compat);
        let selector = SvdChannelSelector::new(&factors, plan.clone(), &model.config, options)?;
        Ok(Self {
            config,
            plan,
            selector,
            factors: origin,
            factor_count: factors.factors.len(),
            unconverged: factors.unconverged,
        })
    }
}
