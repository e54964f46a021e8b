//! `--model`, `--model-dir`, `--backend`, `--dtype`: the arguments of every command that loads a
//! model, and the one resolver that says what `--model` names.
//!
//! Each command flattens [`ModelArgs`] and sets its own defaults on top, e.g.
//! `#[command(mut_arg("model", |a| a.default_value("tiny")))]` (finetune and sensitivity start
//! from `tiny`, the benchmarks from `llama3-8b` on CUDA, the rest from `smollm2-135m` on the CPU).
//! [`ModelArgs::resolve`] is the only place that reads `--model` as a model to load.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::module::Param;
use burn::tensor::{backend::Backend, DType};
use clap::Args;
use llama_burn::{LlamaConfig, LlamaForCausalLM, LlamaTokenizer};

use crate::backend::{parse_dtype, BackendJob, BackendKind, TrainJob};
use crate::fetch_model;
use crate::model_source::{build_weights, ModelSource};

/// Environment variable naming a folder that holds HF checkpoints by preset name
/// (`$SPARSELORA_MODEL_DIR/llama3-8b/config.json`, ...).
pub const MODEL_DIR_ENV: &str = "SPARSELORA_MODEL_DIR";

/// `--model tiny`: the 2-layer preset with random weights and SmolLM2's tokenizer.
pub const TINY: &str = "tiny";

/// The model's checkpoint that `fetch-model` downloads (its tokenizer also serves `tiny`).
const SMOLLM2: &str = "smollm2-135m";

/// `--model` of the commands that read a checkpoint (not `tiny`): `generate`, `svd`.
pub const CHECKPOINT_HELP: &str = "`smollm2-135m` (fetched into the cache on first use), a LLaMA \
                                   preset (its HF folder under --model-dir), an HF folder or a `.gguf`";

/// How much larger than `nn.Linear`'s draw `tiny`'s output head is.
///
/// A head drawn uniform in +-1/sqrt(64) has rows of norm ~0.58, so after the final RMSNorm (fixed,
/// frozen) no hidden state gives any token a logit above ~4.6: against 49,152 tokens that caps what
/// LoRA on the attention projections can learn at a loss of ~6.4, and the default run learnt no
/// answer format at all. A trained model's head has large rows; x8 (logits up to ~37) lets the
/// tiny model learn the answer format within the default run's 120 steps.
pub const TINY_OUTPUT_HEAD_SCALE: f64 = 8.0;

/// Which model a command loads and where it runs.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// `tiny` (random weights, SmolLM2's tokenizer), `smollm2-135m` (fetched into the cache on
    /// first use), a LLaMA preset (its HF folder under --model-dir), an HF folder or a `.gguf`.
    #[arg(id = "model", long = "model", value_name = "MODEL", default_value = SMOLLM2)]
    pub name: String,
    /// Folder holding HF checkpoints by preset name (default: $SPARSELORA_MODEL_DIR).
    #[arg(id = "model_dir", long = "model-dir", value_name = "MODEL_DIR")]
    pub dir: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendKind,
    /// Weight dtype: f32, bf16 or f16 (LoRA adapters stay f32); default bf16 on CUDA, f32
    /// elsewhere.
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<DType>,
}

/// What `--model` names: [`ModelArgs::resolve`].
#[derive(Debug, Clone)]
pub enum BaseModel {
    /// `tiny`: random weights, drawn when loaded, over the vocabulary of SmolLM2's tokenizer.
    Tiny {
        /// SmolLM2's `tokenizer.json`.
        tokenizer: PathBuf,
    },
    /// A checkpoint on disk.
    Checkpoint(ModelSource),
}

impl ModelArgs {
    /// The resolver: `tiny`; an existing path (an HF folder or a `.gguf` file); `smollm2-135m`
    /// (its GGUF, fetched into the cache on first use); a LLaMA preset, found as
    /// `<--model-dir or $SPARSELORA_MODEL_DIR>/<preset>/`.
    pub fn resolve(&self) -> anyhow::Result<BaseModel> {
        let model = self.name.as_str();
        if model == TINY {
            let smollm2 = fetch_model::ensure_smollm2()?;
            return Ok(BaseModel::Tiny {
                tokenizer: smollm2.tokenizer,
            });
        }
        let path = Path::new(model);
        if path.exists() {
            let tokenizer = if path.is_dir() {
                path.join("tokenizer.json")
            } else {
                path.with_file_name("tokenizer.json")
            };
            return Ok(BaseModel::Checkpoint(ModelSource {
                weights: path.to_owned(),
                tokenizer,
            }));
        }
        if model == SMOLLM2 {
            let files = fetch_model::ensure_smollm2()?;
            return Ok(BaseModel::Checkpoint(ModelSource {
                weights: files.gguf,
                tokenizer: files.tokenizer,
            }));
        }
        if llama_burn::PRESETS.contains(&model) {
            let dir = self.preset_dir()?;
            return Ok(BaseModel::Checkpoint(ModelSource {
                tokenizer: dir.join("tokenizer.json"),
                weights: dir,
            }));
        }
        bail!(
            "--model `{model}` is neither an existing path nor a known model ({})",
            llama_burn::PRESETS.join(", ")
        )
    }

    /// The checkpoint of `--model`, for commands that read weight files (`tiny` has none).
    pub fn checkpoint(&self) -> anyhow::Result<ModelSource> {
        match self.resolve()? {
            BaseModel::Checkpoint(source) => Ok(source),
            BaseModel::Tiny { .. } => bail!(
                "--model {TINY} has random weights and no checkpoint: this command needs one \
                 (smollm2-135m, a preset, an HF folder or a .gguf)"
            ),
        }
    }

    /// The architecture of preset `--model`, for the commands that draw random weights of a
    /// preset's shape (`bench`, `check-step --random-weights`): no files are read.
    pub fn preset(&self) -> anyhow::Result<LlamaConfig> {
        if self.dir.is_some() {
            bail!("--model-dir: this command builds random weights of a preset's shape, it reads no checkpoint");
        }
        LlamaConfig::preset(&self.name).with_context(|| format!("--model {}", self.name))
    }

    /// Runs `job` on `--backend` in `--dtype`.
    pub fn dispatch<J: BackendJob>(&self, job: J) -> anyhow::Result<J::Output> {
        self.backend.dispatch(self.dtype, job)
    }

    /// Runs `job` on the autodiff wrapper of `--backend`, base weights in `--dtype`.
    pub fn dispatch_autodiff<J: TrainJob>(&self, job: J) -> anyhow::Result<()> {
        self.backend.dispatch_autodiff(self.dtype, job)
    }

    /// `<model dir>/<preset>`: the HF folder of preset `--model`.
    fn preset_dir(&self) -> anyhow::Result<PathBuf> {
        let model = &self.name;
        let base = match &self.dir {
            Some(dir) => dir.to_owned(),
            None => std::env::var_os(MODEL_DIR_ENV)
                .map(PathBuf::from)
                .with_context(|| {
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
        Ok(dir)
    }
}

impl BaseModel {
    /// The tokenizer (`tiny` borrows SmolLM2's).
    pub fn tokenizer(&self) -> anyhow::Result<LlamaTokenizer> {
        let path = match self {
            BaseModel::Tiny { tokenizer } => tokenizer,
            BaseModel::Checkpoint(source) => &source.tokenizer,
        };
        Ok(LlamaTokenizer::from_file(path)?)
    }

    /// The checkpoint's files (`None` for `tiny`).
    pub fn source(&self) -> Option<&ModelSource> {
        match self {
            BaseModel::Tiny { .. } => None,
            BaseModel::Checkpoint(source) => Some(source),
        }
    }

    /// The frozen base model on `device` in `dtype`. For `tiny`: the backend is seeded with
    /// `seed` and the weights are drawn right away, over `tokenizer`'s vocabulary, with the output
    /// head scaled by [`TINY_OUTPUT_HEAD_SCALE`].
    pub fn load<B: Backend>(
        &self,
        tokenizer: &LlamaTokenizer,
        dtype: DType,
        seed: u64,
        device: &B::Device,
    ) -> anyhow::Result<LlamaForCausalLM<B>> {
        let BaseModel::Checkpoint(source) = self else {
            return tiny(tokenizer.vocab_size(), dtype, seed, device);
        };
        build_weights::<B, _>(device, || source.load::<B>(dtype, device))
    }
}

/// `tiny` of vocabulary `vocab`, drawn right after seeding the backend with `seed`.
fn tiny<B: Backend>(
    vocab: usize,
    dtype: DType,
    seed: u64,
    device: &B::Device,
) -> anyhow::Result<LlamaForCausalLM<B>> {
    B::seed(device, seed);
    let config = LlamaConfig {
        vocab_size: vocab,
        ..LlamaConfig::preset(TINY)?
    };
    Ok(build_weights::<B, _>(device, || {
        let mut model = config.init_random::<B>(device);
        if let Some(head) = model.lm_head.as_mut() {
            let scaled = (head.weight.val() * TINY_OUTPUT_HEAD_SCALE).detach();
            head.weight = Param::from_tensor(scaled).set_require_grad(false);
        }
        model.with_dtype(dtype)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    #[command(mut_arg("model", |a| a.default_value("tiny")))]
    struct Command {
        #[command(flatten)]
        model: ModelArgs,
    }

    #[test]
    fn a_command_sets_its_own_default_model_and_the_flags_keep_their_names() {
        let args = Command::parse_from(["cmd"]).model;
        assert_eq!(args.name, TINY);
        assert_eq!(args.backend, BackendKind::Cpu);
        assert_eq!(args.dtype, None);
        let args = Command::parse_from([
            "cmd",
            "--model",
            "llama3-8b",
            "--model-dir",
            "/models",
            "--dtype",
            "bf16",
        ])
        .model;
        assert_eq!(args.name, "llama3-8b");
        assert_eq!(args.dir.as_deref(), Some(Path::new("/models")));
        assert_eq!(args.dtype, Some(DType::BF16));
    }

    #[test]
    fn presets_resolve_under_the_model_dir_and_unknown_names_are_refused() {
        let dir = std::env::temp_dir().join(format!("model-args-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("llama3-8b")).unwrap();
        let args = |model: &str| ModelArgs {
            name: model.into(),
            dir: Some(dir.clone()),
            backend: BackendKind::Cpu,
            dtype: None,
        };
        let BaseModel::Checkpoint(source) = args("llama3-8b").resolve().unwrap() else {
            panic!("a preset with its folder is a checkpoint");
        };
        assert_eq!(source.weights, dir.join("llama3-8b"));
        assert_eq!(source.tokenizer, dir.join("llama3-8b/tokenizer.json"));
        let missing = args("llama2-7b").resolve().unwrap_err().to_string();
        assert!(
            missing.contains("no HF checkpoint for `llama2-7b`"),
            "{missing}"
        );
        let unknown = args("no-such-model").resolve().unwrap_err().to_string();
        assert!(unknown.contains("neither an existing path"), "{unknown}");
        assert!(
            args("llama3-8b").preset().is_err(),
            "--model-dir has no meaning for a shape"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
