//! Turning `--model` (a preset name, an HF folder or a GGUF file) into files on disk.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::module::Param;
use burn::tensor::{backend::Backend, DType};
use llama_burn::{LlamaConfig, LlamaForCausalLM, LlamaTokenizer};
use sparselora::FactorCache;

use crate::fetch_model;

/// Environment variable naming a folder that holds HF checkpoints by preset name
/// (`$SPARSELORA_MODEL_DIR/llama3-8b/config.json`, ...).
pub const MODEL_DIR_ENV: &str = "SPARSELORA_MODEL_DIR";

/// `--model tiny`: the 2-layer preset with random weights and SmolLM2's tokenizer.
pub const TINY: &str = "tiny";

/// The tokenizer of `--model` (`tiny` borrows SmolLM2's).
pub fn tokenizer_for(model: &str, model_dir: Option<&Path>) -> anyhow::Result<LlamaTokenizer> {
    let name = if model == TINY { "smollm2-135m" } else { model };
    ModelSource::resolve(name, model_dir)?.tokenizer()
}

/// How much larger than `nn.Linear`'s draw `tiny`'s output head is.
///
/// A head drawn uniform in +-1/sqrt(64) has rows of norm ~0.58, so after the final RMSNorm (fixed,
/// frozen) no hidden state gives any token a logit above ~4.6: against 49,152 tokens that caps what
/// LoRA on the attention projections can learn at a loss of ~6.4, and the default run learnt no
/// answer format at all. A trained model's head has large rows; x8 (logits up to ~37) lets the
/// tiny model learn the answer format within the default run's 120 steps.
pub const TINY_OUTPUT_HEAD_SCALE: f64 = 8.0;

/// The base model of `--model`: a checkpoint with its source, or for `tiny` random weights drawn
/// right after seeding the backend with `seed`, over the tokenizer's vocabulary, with its output
/// head scaled by [`TINY_OUTPUT_HEAD_SCALE`] (no source).
pub fn load_base<B: Backend>(
    model: &str,
    model_dir: Option<&Path>,
    tokenizer_vocab: usize,
    dtype: DType,
    seed: u64,
    device: &B::Device,
) -> anyhow::Result<(LlamaForCausalLM<B>, Option<ModelSource>)> {
    if model == TINY {
        B::seed(device, seed);
        let config = LlamaConfig {
            vocab_size: tokenizer_vocab,
            ..LlamaConfig::preset(TINY)?
        };
        let model = build_weights::<B, _>(device, || {
            let mut model = config.init_random::<B>(device);
            if let Some(head) = model.lm_head.as_mut() {
                let scaled = (head.weight.val() * TINY_OUTPUT_HEAD_SCALE).detach();
                head.weight = Param::from_tensor(scaled).set_require_grad(false);
            }
            model.with_dtype(dtype)
        });
        return Ok((model, None));
    }
    let source = ModelSource::resolve(model, model_dir)?;
    let model = build_weights::<B, _>(device, || source.load::<B>(dtype, device))?;
    Ok((model, Some(source)))
}

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
    /// Resolves `--model`: a path, `smollm2-135m` (fetched into the cache on first use), or a LLaMA
    /// preset found under `model_dir` / `$SPARSELORA_MODEL_DIR`.
    pub fn resolve(model: &str, model_dir: Option<&Path>) -> anyhow::Result<Self> {
        let path = Path::new(model);
        if path.exists() {
            let tokenizer = if path.is_dir() {
                path.join("tokenizer.json")
            } else {
                path.with_file_name("tokenizer.json")
            };
            return Ok(Self {
                weights: path.to_owned(),
                tokenizer,
            });
        }
        if model == "smollm2-135m" {
            let files = fetch_model::ensure_smollm2()?;
            return Ok(Self {
                weights: files.gguf,
                tokenizer: files.tokenizer,
            });
        }
        if llama_burn::PRESETS.contains(&model) {
            let base = match model_dir {
                Some(dir) => dir.to_owned(),
                None => std::env::var_os(MODEL_DIR_ENV).map(PathBuf::from).with_context(|| {
                    format!(
                        "`{model}` needs its HF checkpoint: pass --model-dir DIR (holding {model}/) \
                         or set {MODEL_DIR_ENV}, or give the folder's path as --model"
                    )
                })?,
            };
            let dir = base.join(model);
            if !dir.is_dir() {
                bail!("no HF checkpoint for `{model}` at {}", dir.display());
            }
            return Ok(Self {
                tokenizer: dir.join("tokenizer.json"),
                weights: dir,
            });
        }
        bail!(
            "--model `{model}` is neither an existing path nor a known model ({})",
            llama_burn::PRESETS.join(", ")
        )
    }

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
