//! `cargo xtask svd`: precompute SparseLoRA's SVD estimator factors of a model and cache them next
//! to its weights.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::Backend;
use burn::tensor::DType;
use clap::Args;
use svd_estimator::SvdCache;

use crate::backend::BackendJob;
use crate::model_args::{ModelArgs, CHECKPOINT_HELP};

/// Build the estimator's SVD cache (gate, up, q, k, v of every layer).
#[derive(Args, Debug)]
#[command(mut_arg("model", |a| a.help(CHECKPOINT_HELP)))]
pub struct Svd {
    #[command(flatten)]
    model: ModelArgs,
    /// SVD rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Where to write the cache; default: next to the weights.
    #[arg(long)]
    output: Option<PathBuf>,
}

impl Svd {
    pub fn run(self) -> anyhow::Result<()> {
        self.model.clone().dispatch(self)
    }
}

impl BackendJob for Svd {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> anyhow::Result<()> {
        let source = self.model.checkpoint()?;
        let identity = source.identity()?;
        let path = self
            .output
            .clone()
            .unwrap_or_else(|| source.svd_cache_path(self.rank));
        let model = source.load::<B>(dtype, &device)?;
        B::seed(&device, 0);
        let start = std::time::Instant::now();
        let cache = SvdCache::build(&model, self.rank, |_, _| true);
        cache
            .save(&path, &identity)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "{} projections, rank {}, in {:.1} s -> {}",
            cache.factors.len(),
            self.rank,
            start.elapsed().as_secs_f64(),
            path.display()
        );
        Ok(())
    }
}
