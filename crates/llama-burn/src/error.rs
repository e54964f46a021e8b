//! Errors of model loading and configuration. Every variant names the file, tensor or value at fault.

use std::path::PathBuf;

/// What went wrong while reading a config, a checkpoint or a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    /// A file that must exist does not.
    #[error("missing file {path}: {hint}")]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
        /// What the file is and where it usually comes from.
        hint: String,
    },
    /// A file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON file (config, index) could not be parsed.
    #[error("cannot parse {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The config asks for something this model does not implement.
    #[error("unsupported config: {0}")]
    UnsupportedConfig(String),
    /// The checkpoint lacks a tensor the model needs.
    #[error("checkpoint {path} is missing tensor `{tensor}`")]
    MissingTensor {
        /// The checkpoint (file or folder).
        path: PathBuf,
        /// The HF name of the tensor.
        tensor: String,
    },
    /// The checkpoint holds a tensor the model does not know.
    #[error(
        "checkpoint {path} has unexpected tensor `{tensor}` (is this a LLaMA-architecture model?)"
    )]
    UnexpectedTensor {
        /// The checkpoint (file or folder).
        path: PathBuf,
        /// The HF name of the tensor.
        tensor: String,
    },
    /// A tensor's shape differs from what the config implies.
    #[error("tensor `{tensor}` in {path} has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        /// The checkpoint (file or folder).
        path: PathBuf,
        /// The HF name of the tensor.
        tensor: String,
        /// The shape the model expects.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype we cannot load.
    #[error("tensor `{tensor}` in {path} has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The checkpoint (file or folder).
        path: PathBuf,
        /// The HF name of the tensor.
        tensor: String,
        /// The dtype found.
        dtype: String,
    },
    /// The safetensors / burn-store layer reported an error.
    #[error("cannot load {path}: {message}")]
    Store {
        /// The checkpoint file.
        path: PathBuf,
        /// What the store said.
        message: String,
    },
    /// A GGUF file could not be read.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    /// The tokenizer could not be loaded or failed to encode/decode.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What the tokenizers crate said.
        message: String,
    },
    /// An input given to the model is malformed (empty batch, wrong lengths, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, LlamaError>;
