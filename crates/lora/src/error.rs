//! Errors of LoRA configuration, PEFT adapter I/O and merging. Every variant names the file,
//! tensor, option or module at fault.

use std::path::PathBuf;

/// What went wrong while configuring, loading, saving or merging a LoRA adapter.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// A LoRA configuration value is out of range.
    #[error("invalid LoRA config: {0}")]
    InvalidConfig(String),
    /// A `target_modules` name matches no adaptable module of the model.
    #[error("LoRA target module `{name}` matches none of the model's adaptable modules ({hint})")]
    UnknownTarget {
        /// The name as given.
        name: String,
        /// What the model offers, e.g. `q_proj, k_proj, ..., down_proj`.
        hint: String,
    },
    /// A file that must exist does not.
    #[error("missing file {path}: {hint}")]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
        /// What the file is.
        hint: String,
    },
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `adapter_config.json` is not valid JSON or has a field of the wrong type.
    #[error("cannot parse {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `adapter_config.json` asks for a PEFT feature this crate does not implement.
    #[error("{path}: `{option}` = {value} is not supported (plain LoRA only)")]
    Unsupported {
        /// The config file.
        path: PathBuf,
        /// The PEFT option name, e.g. `use_rslora`.
        option: String,
        /// Its value, as JSON.
        value: String,
    },
    /// The safetensors file could not be parsed or written.
    #[error("safetensors {path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the safetensors crate said.
        message: String,
    },
    /// A tensor the adapter needs is not in the file.
    #[error("{path} is missing tensor `{tensor}`")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The PEFT tensor name.
        tensor: String,
    },
    /// The file holds a tensor that is not a LoRA A/B of a targeted module.
    #[error("{path} has unexpected tensor `{tensor}`: {reason}")]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The PEFT tensor name.
        tensor: String,
        /// Why it is unexpected.
        reason: String,
    },
    /// A tensor's shape differs from what the config or the model implies.
    #[error("tensor `{tensor}` in {path} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The PEFT tensor name.
        tensor: String,
        /// The shape implied by the config and the model.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype other than f32/f16/bf16.
    #[error("tensor `{tensor}` in {path} has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The PEFT tensor name.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
    /// Merging an adapter produced NaN or infinite weights.
    #[error("merging the LoRA adapter of `{module}` gives non-finite weights")]
    NonFinite {
        /// The HF module path, e.g. `model.layers.0.self_attn.q_proj`.
        module: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, LoraError>;
