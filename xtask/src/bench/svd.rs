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
use serde_json::json;
use svd_estimator::SvdCache;

use crate::backend::BackendJob;
use crate::model_args::ModelArgs;

/// Times the estimator's offline SVD on a random model of a preset's shape.
#[derive(Args, Debug)]
#[command(mut_arg("model", |a| a.default_value("llama3-8b").help(super::PRESET_HELP)))]
#[command(mut_arg("backend", |a| a.default_value("cuda")))]
#[command(mut_arg("model_dir", |a| a.hide(true)))]
pub struct SvdBench {
    #[command(flatten)]
    model: ModelArgs,
    /// Estimator rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Where the JSON result goes.
    #[arg(long, default_value = "bench/results")]
    output_dir: PathBuf,
}

impl SvdBench {
    pub fn run(self) -> anyhow::Result<()> {
        self.model.clone().dispatch(self)
    }
}

impl BackendJob for SvdBench {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> anyhow::Result<()> {
        let config = self.model.preset()?;
        B::seed(&device, 0);
        let start = Instant::now();
        let model = config.init_random::<B>(&device).with_dtype(dtype);
        B::sync(&device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let init_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let cache = SvdCache::build(&model, self.rank, |_, _| true);
        B::sync(&device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let svd_s = start.elapsed().as_secs_f64();
        let gpu = gpu_name().unwrap_or_else(|| format!("{:?}", self.model.backend));
        println!(
            "{}: {} projections of {} layers at rank {} in {svd_s:.1} s on {gpu} ({dtype:?}; random init {init_s:.1} s)",
            self.model.name,
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
            "model": self.model.name,
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
            self.model.name,
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
