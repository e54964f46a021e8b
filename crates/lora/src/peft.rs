//! Reading and writing PEFT adapter folders: `adapter_config.json` plus
//! `adapter_model.safetensors`, the layout `PeftModel.save_pretrained` writes and
//! `PeftModel.from_pretrained` reads.
//!
//! Tensors are named `base_model.model.{module}.lora_A.weight` (`[r, in]`) and
//! `base_model.model.{module}.lora_B.weight` (`[out, r]`), where `{module}` is the HF module path
//! such as `model.layers.0.self_attn.q_proj`; we write them in f32 and read f32, f16 or bf16.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::adapter::LoraAdapter;
use crate::config::LoraConfig;
use crate::error::{LoraError, Result};
use crate::peft_config::{config_json, parse_config, CONFIG_FILE};

/// The weights file's name inside an adapter folder.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

const PREFIX: &str = "base_model.model.";

/// The PEFT tensor names of a module's A and B.
pub fn peft_tensor_names(module: &str) -> (String, String) {
    (
        format!("{PREFIX}{module}.lora_A.weight"),
        format!("{PREFIX}{module}.lora_B.weight"),
    )
}

/// The A and B of one module as read from a file, f32.
#[derive(Debug, Clone)]
pub struct LoraWeights {
    /// `[r, in]`
    pub a: TensorData,
    /// `[out, r]`
    pub b: TensorData,
}

/// A PEFT adapter folder, read into memory.
#[derive(Debug, Clone)]
pub struct PeftAdapter {
    /// The hyper-parameters from `adapter_config.json`.
    pub config: LoraConfig,
    /// `base_model_name_or_path`, when the file names one.
    pub base_model_name_or_path: Option<String>,
    /// Per HF module path (`model.layers.0.self_attn.q_proj`), its weights.
    pub weights: BTreeMap<String, LoraWeights>,
    /// The weights file, for error messages.
    pub weights_path: PathBuf,
}

/// Writes `adapters` as a PEFT adapter folder `dir` (created if needed), each file atomically
/// (a temporary file renamed into place).
///
/// `adapters` pairs each HF module path (`model.layers.0.self_attn.q_proj`) with its adapter.
///
/// # Errors
/// [`LoraError::InvalidConfig`] if the config is invalid, an adapter's rank or scaling differs
/// from it, or a module repeats; [`LoraError::Io`] / [`LoraError::Safetensors`] on write failure.
pub fn save_peft<B: Backend>(
    dir: &Path,
    config: &LoraConfig,
    base_model_name_or_path: &str,
    adapters: &[(String, &LoraAdapter<B>)],
) -> Result<()> {
    config.validate()?;
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (module, adapter) in adapters {
        if adapter.rank() != config.r || adapter.scaling != config.scaling() {
            return Err(LoraError::InvalidConfig(format!(
                "adapter of `{module}` has rank {} and scaling {}, the config says {} and {}",
                adapter.rank(),
                adapter.scaling,
                config.r,
                config.scaling()
            )));
        }
        let (a_name, b_name) = peft_tensor_names(module);
        for (name, param) in [(a_name, &adapter.lora_a), (b_name, &adapter.lora_b)] {
            let data = param.val().into_data().convert::<f32>();
            let bytes = data.as_slice::<f32>().map_err(|e| {
                LoraError::InvalidConfig(format!("tensor `{name}` is not readable as f32: {e:?}"))
            })?;
            let bytes: Vec<u8> = bytes.iter().flat_map(|v| v.to_le_bytes()).collect();
            if tensors
                .insert(name.clone(), (data.shape.to_vec(), bytes))
                .is_some()
            {
                return Err(LoraError::InvalidConfig(format!(
                    "module `{module}` is listed twice"
                )));
            }
        }
    }

    std::fs::create_dir_all(dir).map_err(|source| LoraError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let st_err = |message: String| LoraError::Safetensors {
        path: weights_path.clone(),
        message,
    };
    let views = tensors
        .iter()
        .map(|(name, (shape, bytes))| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| st_err(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = [("format".to_owned(), "pt".to_owned())]
        .into_iter()
        .collect();
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| st_err(e.to_string()))?;
    write_atomic(&weights_path, &bytes)?;

    let json = config_json(config, base_model_name_or_path);
    let mut text = serde_json::to_string_pretty(&json).expect("a JSON value serialises");
    text.push('\n');
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// Writes `path` through a temporary file in the same folder and a rename, so readers never see
/// a half-written file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| LoraError::Io { path: p, source }
    };
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        LoraError::Io {
            path: path.to_owned(),
            source,
        }
    })
}

/// Reads a PEFT adapter folder, checking it against its own config: every tensor is the A or B
/// of a targeted projection, each module has both, and the shapes have rank `r`.
///
/// Which modules exist (layers, widths) is checked by the model that applies the adapter.
///
/// # Errors
/// [`LoraError::MissingFile`], [`LoraError::Io`], the config errors of
/// [`parse_config`](crate::peft_config::parse_config), [`LoraError::Safetensors`],
/// [`LoraError::UnexpectedTensor`], [`LoraError::MissingTensor`],
/// [`LoraError::ShapeMismatch`], [`LoraError::UnsupportedDtype`].
pub fn load_peft(dir: &Path) -> Result<PeftAdapter> {
    let config_path = dir.join(CONFIG_FILE);
    let weights_path = dir.join(WEIGHTS_FILE);
    for (path, what) in [
        (&config_path, "the adapter's config"),
        (&weights_path, "the adapter's weights"),
    ] {
        if !path.is_file() {
            return Err(LoraError::MissingFile {
                path: path.clone(),
                hint: format!(
                    "{what}; expected a PEFT adapter folder ({CONFIG_FILE} + {WEIGHTS_FILE})"
                ),
            });
        }
    }
    let text = std::fs::read_to_string(&config_path).map_err(|source| LoraError::Io {
        path: config_path.clone(),
        source,
    })?;
    let (config, base_model_name_or_path) = parse_config(&config_path, &text)?;

    let bytes = std::fs::read(&weights_path).map_err(|source| LoraError::Io {
        path: weights_path.clone(),
        source,
    })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| LoraError::Safetensors {
        path: weights_path.clone(),
        message: format!("not a valid safetensors file: {e}"),
    })?;

    let unexpected = |tensor: &str, reason: String| LoraError::UnexpectedTensor {
        path: weights_path.clone(),
        tensor: tensor.to_owned(),
        reason,
    };
    let mut halves: BTreeMap<String, [Option<TensorData>; 2]> = BTreeMap::new();
    let mut names = file.names();
    names.sort();
    for name in names {
        let (module, which) = split_name(name).ok_or_else(|| {
            unexpected(
                name,
                format!("not of the form {PREFIX}<module>.lora_A.weight / .lora_B.weight"),
            )
        })?;
        if !config.targets_module(module) {
            let leaf = module.rsplit('.').next().unwrap_or(module);
            return Err(unexpected(
                name,
                format!("`{leaf}` is not among target_modules {}", config.targets),
            ));
        }
        let view = file.tensor(name).map_err(|e| LoraError::Safetensors {
            path: weights_path.clone(),
            message: format!("tensor `{name}`: {e}"),
        })?;
        let data = to_f32(&weights_path, name, &view)?;
        halves.entry(module.to_owned()).or_default()[which] = Some(data);
    }

    let mut weights = BTreeMap::new();
    for (module, [a, b]) in halves {
        let (a_name, b_name) = peft_tensor_names(&module);
        let missing = |tensor: String| LoraError::MissingTensor {
            path: weights_path.clone(),
            tensor,
        };
        let a = a.ok_or_else(|| missing(a_name.clone()))?;
        let b = b.ok_or_else(|| missing(b_name.clone()))?;
        check_rank(&weights_path, &a_name, &a, 0, config.r)?;
        check_rank(&weights_path, &b_name, &b, 1, config.r)?;
        weights.insert(module, LoraWeights { a, b });
    }
    Ok(PeftAdapter {
        config,
        base_model_name_or_path,
        weights,
        weights_path,
    })
}

/// `base_model.model.{module}.lora_A.weight` -> (`module`, 0); `lora_B` -> 1.
fn split_name(name: &str) -> Option<(&str, usize)> {
    let rest = name.strip_prefix(PREFIX)?;
    if let Some(module) = rest.strip_suffix(".lora_A.weight") {
        Some((module, 0))
    } else {
        rest.strip_suffix(".lora_B.weight").map(|m| (m, 1))
    }
}

/// Requires a 2-d tensor whose axis `axis` is `r` (A: `[r, in]`, B: `[out, r]`).
fn check_rank(path: &Path, name: &str, data: &TensorData, axis: usize, r: usize) -> Result<()> {
    let shape = data.shape.to_vec();
    if shape.len() == 2 && shape[axis] == r {
        return Ok(());
    }
    let mut expected = match shape.len() {
        2 => shape.clone(),
        _ => vec![0, 0],
    };
    expected[axis] = r;
    Err(LoraError::ShapeMismatch {
        path: path.to_owned(),
        tensor: name.to_owned(),
        expected,
        found: shape,
    })
}

/// Decodes an f32/f16/bf16 little-endian tensor into f32 `TensorData`.
fn to_f32(
    path: &Path,
    name: &str,
    view: &safetensors::tensor::TensorView<'_>,
) -> Result<TensorData> {
    let raw = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(LoraError::UnsupportedDtype {
                path: path.to_owned(),
                tensor: name.to_owned(),
                dtype: format!("{other:?}"),
            })
        }
    };
    Ok(TensorData::new(values, view.shape().to_vec()))
}
