//! `cargo xtask svd`: precompute SparseLoRA's SVD estimator factors of a model and cache them next
//! to its weights.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::backend::Backend;
use burn::tensor::DType;
use clap::Args;
use svd_estimator::SvdCache;

use crate::backend::{parse_dtype, BackendJob, BackendKind};
use crate::model_source::ModelSource;

/// Build the estimator's SVD cache (gate, up, q, k, v of every layer).
#[derive(Args, Debug)]
pub struct Svd {
    /// Preset name, HF folder or `.gguf`.
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// Folder holding HF checkpoints by preset name.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// SVD rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Where to write the cache; default: next to the weights.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Compute backend (the SVD runs where the weights are).
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendKind,
    /// Weight dtype while loading; the SVD itself runs in f32.
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<DType>,
}

impl Svd {
    pub fn run(self) -> anyhow::Result<()> {
        let (backend, dtype) = (self.backend, self.dtype);
        backend.dispatch(dtype, self)
    }
}

impl BackendJob for Svd {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> anyhow::Result<()> {
        let source = ModelSource::resolve(&self.model, self.model_dir.as_deref())?;
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
