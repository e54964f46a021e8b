//! A checkpoint's files on disk (what [`crate::model_args::ModelArgs::resolve`] finds for
//! `--model`), and loading its weights.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::{backend::Backend, DType};
use llama_burn::{LlamaForCausalLM, LlamaTokenizer};
use sparselora::FactorCache;

/// Runs `build` (which creates or loads the frozen weights) with cubecl's persistent allocation
/// mode, then hands the build's freed temporaries back to the driver.
///
/// Weights live for the whole run; in the default pool they share size-class pages with the
/// activations, and on an H200 LLaMA3-8B's two 1 GiB embedding matrices claim a 9.4 GB page, while
/// the f32 draws or file buffers the build frees stay reserved. Persistent buffers are exact-size.
/// This covers tensors a loader creates from file data; random initialisation toggles the mode
/// itself per parameter (burn's lazy init), which is why `LlamaForCausalLM::with_dtype` also casts
/// into persistent memory. The figures are in docs/perf.md.
/// On backends without such a pool (Flex, NdArray) it only calls `build`.
pub fn build_weights<B: Backend, T: Send>(device: &B::Device, build: impl Fn() -> T + Send) -> T {
    let built = B::memory_persistent_allocations(device, (), move |()| build());
    B::memory_cleanup(device);
    built
}

/// Where a model's weights and tokenizer are.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// An HF folder or a `.gguf` file.
    pub weights: PathBuf,
    /// The `tokenizer.json`.
    pub tokenizer: PathBuf,
}

impl ModelSource {
    /// Loads the weights onto `device` in `dtype`.
    pub fn load<B: Backend>(
        &self,
        dtype: DType,
        device: &B::Device,
    ) -> anyhow::Result<LlamaForCausalLM<B>> {
        llama_burn::load_checkpoint(&self.weights, dtype, device)
            .with_context(|| format!("loading {}", self.weights.display()))
    }

    /// Loads the tokenizer.
    pub fn tokenizer(&self) -> anyhow::Result<LlamaTokenizer> {
        Ok(LlamaTokenizer::from_file(&self.tokenizer)?)
    }

    /// A string that changes when the weights do: each weight file's name and size (cheap to
    /// compute for multi-GB checkpoints; a re-downloaded identical file keeps its identity).
    pub fn identity(&self) -> anyhow::Result<String> {
        let files: Vec<PathBuf> = if self.weights.is_dir() {
            llama_burn::checkpoint_files(&self.weights)?
        } else {
            vec![self.weights.clone()]
        };
        let parts = files
            .iter()
            .map(|f| {
                let size = std::fs::metadata(f)
                    .with_context(|| format!("reading {}", f.display()))?
                    .len();
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Ok(format!("{name}:{size}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(parts.join(","))
    }

    /// The SVD estimator cache of rank `rank` of these weights: a file next to them, keyed by
    /// [`Self::identity`].
    pub fn factor_cache(&self, rank: usize) -> anyhow::Result<FactorCache> {
        Ok(FactorCache::File {
            path: self.svd_cache_path(rank),
            identity: self.identity()?,
        })
    }

    /// Where the SVD estimator cache of rank `rank` lives: next to the weights.
    pub fn svd_cache_path(&self, rank: usize) -> PathBuf {
        let name = format!("sparselora-svd-r{rank}.safetensors");
        if self.weights.is_dir() {
            self.weights.join(name)
        } else {
            self.weights.with_file_name(name)
        }
    }
}
