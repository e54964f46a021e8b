//! `cargo xtask bench svd`: how long the offline SVD of SparseLoRA's estimator takes on a model of
//! a preset's shape (every layer's gate/up/q/k/v at rank r), with random weights, so it can be
//! measured where no checkpoint can be downloaded. The SVD iterates until its error bound
//! converges (docs/sparsity.md); random weights have flat spectra at the cut and run to its cap
//! of 64 products per matrix, so this times the worst case.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use burn::tensor::backend::Backend;
use burn::tensor::DType;
use clap::Args;
use llama_burn::LlamaConfig;
use serde_json::json;
use svd_estimator::SvdCache;

use crate::backend::{parse_dtype, BackendJob, BackendKind};

/// Times the estimator's offline SVD on a random model of a preset's shape.
#[derive(Args, Debug)]
pub struct SvdBench {
    /// Model preset (`llama3-8b`, `llama2-7b`, `llama2-13b`, `smollm2-135m`, `tiny`, ...).
    #[arg(long, default_value = "llama3-8b")]
    model: String,
    /// Estimator rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "cuda")]
    backend: BackendKind,
    /// Weight dtype; default bf16 on CUDA, f32 elsewhere.
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<DType>,
    /// Where the JSON result goes.
    #[arg(long, default_value = "bench/results")]
    output_dir: PathBuf,
}

impl SvdBench {
    pub fn run(self) -> anyhow::Result<()> {
        let (backend, dtype) = (self.backend, self.dtype);
        backend.dispatch(dtype, self)
    }
}

impl BackendJob for SvdBench {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> anyhow::Result<()> {
        let config = LlamaConfig::preset(&self.model)?;
        B::seed(&device, 0);
        let start = Instant::now();
        let model = config.init_random::<B>(&device).with_dtype(dtype);
        B::sync(&device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let init_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let cache = SvdCache::build(&model, self.rank, |_, _| true);
        B::sync(&device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let svd_s = start.elapsed().as_secs_f64();
        let gpu = gpu_name().unwrap_or_else(|| format!("{:?}", self.backend));
        println!(
            "{}: {} projections of {} layers at rank {} in {svd_s:.1} s on {gpu} ({dtype:?}; random init {init_s:.1} s)",
            self.model,
            cache.factors.len(),
            config.num_hidden_layers,
            self.rank
        );
        let date = super::utc_timestamp();
        let doc = json!({
            "kind": "svd",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "date": date,
            "gpu": gpu,
            "git_commit": super::git_commit(),
            "model": self.model,
            "layers": config.num_hidden_layers,
            "projections": cache.factors.len(),
            "rank": self.rank,
            "dtype": format!("{dtype:?}").to_lowercase(),
            "svd_seconds": svd_s,
            "random_init_seconds": init_s,
        });
        std::fs::create_dir_all(&self.output_dir)?;
        let path = self.output_dir.join(format!(
            "svd-{}-{}-{}.json",
            self.model,
            date.replace(':', ""),
            super::slug(&gpu)
        ));
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("-> {}", path.display());
        Ok(())
    }
}

/// The GPU's name from `nvidia-smi`, when there is one.
pub(super) fn gpu_name() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader"])
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .to_owned();
    (out.status.success() && !name.is_empty()).then_some(name)
}
