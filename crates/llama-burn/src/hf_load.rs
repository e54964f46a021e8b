//! Loading an HF model folder: `config.json` plus `model.safetensors`, or sharded
//! `model-0000N-of-0000M.safetensors` listed in `model.safetensors.index.json`.
//!
//! Tensors are read through burn-store's safetensors store (memory-mapped); the module field
//! names are the HF names, so no remapping is needed. Every tensor of the model must come from the
//! checkpoint and every tensor of the checkpoint must be used, so a wrong or truncated checkpoint
//! fails loudly instead of leaving random weights behind.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType};
use burn_store::{ApplyError, ModuleSnapshot, SafetensorsStore};
use safetensors::SafeTensors;

use crate::config::LlamaConfig;
use crate::error::{LlamaError, Result};
use crate::model::LlamaForCausalLM;

/// Checkpoint tensors that HF code ignores on load.
fn is_ignorable(name: &str, config: &LlamaConfig) -> bool {
    name.ends_with("rotary_emb.inv_freq")
        || (config.tie_word_embeddings && name == "lm_head.weight")
}

/// Loads the model in `dir`, casting its weights to `dtype`.
pub fn load_hf_folder<B: Backend>(
    dir: &Path,
    dtype: DType,
    device: &B::Device,
) -> Result<LlamaForCausalLM<B>> {
    if !dir.is_dir() {
        return Err(LlamaError::MissingFile {
            path: dir.to_owned(),
            hint: "expected an HF model folder (config.json + model*.safetensors)".into(),
        });
    }
    let config = LlamaConfig::from_hf_json(&dir.join("config.json"))?;
    let shards = checkpoint_files(dir)?;
    let mut model = config.init::<B>(device);

    let mut applied = BTreeSet::new();
    let mut missing_everywhere: Option<BTreeSet<String>> = None;
    for shard in &shards {
        check_dtypes(shard)?;
        let mut store = SafetensorsStore::from_file(shard.clone())
            .allow_partial(true)
            .validate(false);
        let result = model.load_from(&mut store).map_err(|e| LlamaError::Store {
            path: shard.clone(),
            message: e.to_string(),
        })?;
        if let Some(error) = result.errors.first() {
            return Err(apply_error(shard, error));
        }
        if let Some(name) = result.unused.iter().find(|n| !is_ignorable(n, &config)) {
            return Err(LlamaError::UnexpectedTensor {
                path: shard.clone(),
                tensor: name.clone(),
            });
        }
        applied.extend(result.applied.iter().cloned());
        let missing: BTreeSet<String> = result.missing.iter().map(|(p, _)| p.clone()).collect();
        missing_everywhere = Some(match missing_everywhere {
            None => missing,
            Some(prev) => prev.intersection(&missing).cloned().collect(),
        });
    }
    if let Some(name) = missing_everywhere
        .unwrap_or_default()
        .into_iter()
        .find(|n| !applied.contains(n))
    {
        return Err(LlamaError::MissingTensor {
            path: dir.to_owned(),
            tensor: name,
        });
    }
    Ok(model.with_dtype(dtype))
}

/// The safetensors files of a folder: the single file, or the shards named by the index.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Err(LlamaError::MissingFile {
            path: single,
            hint: "neither model.safetensors nor model.safetensors.index.json is in the folder"
                .into(),
        });
    }
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(&index).map_err(|source| LlamaError::Io {
        path: index.clone(),
        source,
    })?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| LlamaError::Parse {
        path: index.clone(),
        message: e.to_string(),
    })?;
    let files: BTreeSet<&String> = parsed.weight_map.values().collect();
    files
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(LlamaError::MissingFile {
                    path,
                    hint: format!("shard listed in {}", index.display()),
                })
            }
        })
        .collect()
}

/// Rejects dtypes other than f32/f16/bf16 before burn-store sees them, naming the tensor.
fn check_dtypes(shard: &Path) -> Result<()> {
    let file = std::fs::File::open(shard).map_err(|source| LlamaError::Io {
        path: shard.to_owned(),
        source,
    })?;
    // SAFETY: the mapping is read-only and dropped before this function returns; a checkpoint
    // modified while we read its header at worst yields a parse error.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| LlamaError::Io {
        path: shard.to_owned(),
        source,
    })?;
    let tensors = SafeTensors::deserialize(&mmap).map_err(|e| LlamaError::Store {
        path: shard.to_owned(),
        message: format!("not a valid safetensors file: {e}"),
    })?;
    for (name, view) in tensors.tensors() {
        use safetensors::Dtype::{BF16, F16, F32};
        if !matches!(view.dtype(), F32 | F16 | BF16) {
            return Err(LlamaError::UnsupportedDtype {
                path: shard.to_owned(),
                tensor: name,
                dtype: format!("{:?}", view.dtype()),
            });
        }
    }
    Ok(())
}

fn apply_error(shard: &Path, error: &ApplyError) -> LlamaError {
    match error {
        ApplyError::ShapeMismatch {
            path,
            expected,
            found,
        } => LlamaError::ShapeMismatch {
            path: shard.to_owned(),
            tensor: path.clone(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        },
        other => LlamaError::Store {
            path: shard.to_owned(),
            message: other.to_string(),
        },
    }
}
