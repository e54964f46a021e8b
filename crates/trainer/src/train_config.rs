//! Training hyper-parameters, read from `configs/train/*.toml` (paper Table 11).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Hyper-parameters of one fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Passes over the training data.
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides `epochs` when smaller).
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Sequences per optimizer step (micro-batch size x accumulation).
    pub batch_size: usize,
    /// Sequences per forward/backward pass; `batch_size` must be a multiple of it.
    #[serde(default)]
    pub micro_batch_size: Option<usize>,
    /// Longest training sequence in tokens (paper Table 11 "Seq. Len").
    pub max_seq_len: usize,
    /// Fraction of the steps spent warming the learning rate up.
    #[serde(default = "default_warmup")]
    pub warmup_ratio: f64,
    /// Global gradient-norm clip.
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    /// AdamW decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// AdamW epsilon.
    #[serde(default = "default_eps")]
    pub adam_epsilon: f64,
    /// Seed of shuffling, initialisation and dropout.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Write a checkpoint every this many optimizer steps (and at the end).
    #[serde(default = "default_save_every")]
    pub save_every: usize,
    /// Complete checkpoints kept in the output folder.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
}

fn default_warmup() -> f64 {
    0.04
}
fn default_clip() -> f64 {
    1.0
}
fn default_eps() -> f64 {
    1e-8
}
fn default_seed() -> u64 {
    42
}
fn default_save_every() -> usize {
    200
}
fn default_keep() -> usize {
    2
}

/// A training config that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum TrainConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid training config: {0}")]
    Invalid(String),
}

impl TrainConfig {
    /// Reads and validates a TOML file.
    pub fn from_toml_file(path: &Path) -> Result<Self, TrainConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| TrainConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Sequences per forward/backward pass.
    pub fn micro_batch(&self) -> usize {
        self.micro_batch_size.unwrap_or(self.batch_size)
    }

    /// Micro-batches accumulated per optimizer step.
    pub fn grad_accum(&self) -> usize {
        self.batch_size / self.micro_batch().max(1)
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), TrainConfigError> {
        let bad = |msg: String| Err(TrainConfigError::Invalid(msg));
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad(format!(
                "learning_rate {} must be positive",
                self.learning_rate
            ));
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("epochs is 0 and no max_steps is set".into());
        }
        if self.batch_size == 0 || self.micro_batch() == 0 {
            return bad("batch_size and micro_batch_size must be positive".into());
        }
        if !self.batch_size.is_multiple_of(self.micro_batch()) {
            return bad(format!(
                "batch_size {} is not a multiple of micro_batch_size {}",
                self.batch_size,
                self.micro_batch()
            ));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "warmup_ratio {} must be in [0, 1)",
                self.warmup_ratio
            ));
        }
        if self.max_grad_norm <= 0.0 || self.max_seq_len == 0 || self.save_every == 0 {
            return bad("max_grad_norm, max_seq_len and save_every must be positive".into());
        }
        Ok(())
    }
}
