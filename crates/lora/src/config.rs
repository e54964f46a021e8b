//! The LoRA hyper-parameters: rank, alpha, dropout and which modules are adapted.
//!
//! Defaults are SparseLoRA's (rank 32, alpha 64, dropout 0, q/k/v/o), see SPEC.md section 3.

use serde::{Deserialize, Serialize};

use crate::error::{LoraError, Result};
use crate::target::TargetModules;

/// LoRA hyper-parameters, shared by every adapted projection of a model.
///
/// Deserialises from JSON/TOML with every field optional (missing fields take the defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r` of the update `B A`.
    pub r: usize,
    /// `alpha`; the update is scaled by `alpha / r`.
    pub alpha: f64,
    /// Dropout probability on the adapter input, in `[0, 1)`; active only while training (on
    /// an autodiff backend).
    pub dropout: f64,
    /// The adapted modules (PEFT's `target_modules`).
    pub targets: TargetModules,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 32,
            alpha: 64.0,
            dropout: 0.0,
            targets: TargetModules::names(["q_proj", "k_proj", "v_proj", "o_proj"]),
        }
    }
}

impl LoraConfig {
    /// The defaults: rank 32, alpha 64, dropout 0, targets `q_proj`, `k_proj`, `v_proj`,
    /// `o_proj` (the attention projections under HF's names).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the rank.
    pub fn with_r(mut self, r: usize) -> Self {
        self.r = r;
        self
    }

    /// Sets alpha.
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }

    /// Sets the dropout probability.
    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// Sets the targeted modules.
    pub fn with_targets(mut self, targets: TargetModules) -> Self {
        self.targets = targets;
        self
    }

    /// `alpha / r`, the factor applied to `B A x`.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Whether the module at `path` (`model.layers.3.self_attn.q_proj`) carries an adapter; see
    /// [`TargetModules::matches`].
    pub fn targets_module(&self, path: &str) -> bool {
        self.targets.matches(path)
    }

    /// Checks `r > 0`, a finite `alpha`, `dropout` in `[0, 1)` and at least one target.
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] naming the bad value.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(LoraError::InvalidConfig(msg));
        if self.r == 0 {
            return bad("rank r must be > 0".into());
        }
        if !self.alpha.is_finite() {
            return bad(format!("alpha must be finite, got {}", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.targets.is_empty() {
            return bad("no target modules".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_spec() {
        let c = LoraConfig::new();
        assert_eq!((c.r, c.alpha, c.dropout), (32, 64.0, 0.0));
        assert_eq!(
            c.targets,
            TargetModules::names(["q_proj", "k_proj", "v_proj", "o_proj"])
        );
        assert!(c.targets_module("model.layers.0.self_attn.k_proj"));
        assert!(!c.targets_module("model.layers.0.mlp.up_proj"));
        assert_eq!(c.scaling(), 2.0);
        c.validate().unwrap();
    }

    #[test]
    fn validation_names_the_bad_value() {
        let msg = |c: LoraConfig| c.validate().unwrap_err().to_string();
        assert!(msg(LoraConfig::new().with_r(0)).contains("rank"));
        assert!(msg(LoraConfig::new().with_dropout(1.0)).contains("dropout"));
        assert!(msg(LoraConfig::new().with_dropout(-0.1)).contains("dropout"));
        assert!(msg(LoraConfig::new().with_alpha(f64::NAN)).contains("alpha"));
        assert!(
            msg(LoraConfig::new().with_targets(TargetModules::names(Vec::<String>::new())))
                .contains("target")
        );
    }

    #[test]
    fn deserialises_with_defaults() {
        let c: LoraConfig =
            serde_json::from_str(r#"{"r": 8, "targets": ["q_proj", "v_proj"]}"#).unwrap();
        assert_eq!(c.r, 8);
        assert_eq!(c.alpha, 64.0);
        assert_eq!(c.targets, TargetModules::names(["q_proj", "v_proj"]));
        let c: LoraConfig = serde_json::from_str(r#"{"targets": "all-linear"}"#).unwrap();
        assert_eq!(c.targets, TargetModules::AllLinear);
        assert!(serde_json::from_str::<LoraConfig>(r#"{"rank": 8}"#).is_err());
    }
}
