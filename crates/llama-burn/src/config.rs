//! LLaMA hyper-parameters, read from an HF `config.json` or taken from a named preset.
//!
//! Field names follow HF `LlamaConfig` so a `config.json` deserialises directly. Both the
//! transformers 4.x layout (`rope_theta`, `rope_scaling`) and the 5.x layout (`rope_parameters`)
//! are accepted.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{LlamaError, Result};

/// Frequency scaling of RoPE. Only LLaMA-3.1's `llama3` rule (and none) is supported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// `rope_type` (or the legacy `type`): `"llama3"` or `"default"`.
    #[serde(alias = "type")]
    pub rope_type: String,
    /// Overall context extension factor (8 for LLaMA-3.1).
    #[serde(default = "one")]
    pub factor: f64,
    /// Wavelengths longer than `original_max_position_embeddings / low_freq_factor` are divided by `factor`.
    #[serde(default = "one")]
    pub low_freq_factor: f64,
    /// Wavelengths shorter than `original_max_position_embeddings / high_freq_factor` are kept.
    #[serde(default = "four")]
    pub high_freq_factor: f64,
    /// The context length the model was pre-trained with.
    #[serde(default = "original_ctx")]
    pub original_max_position_embeddings: usize,
}

fn one() -> f64 {
    1.0
}
fn four() -> f64 {
    4.0
}
fn original_ctx() -> usize {
    8192
}

/// `eos_token_id` is an int in LLaMA-2 configs and a list in LLaMA-3.1 ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids (any of them ends generation).
    Many(Vec<u32>),
}

impl TokenIds {
    /// All ids as a vector.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// transformers 5.x moves `rope_theta` and the scaling rule under `rope_parameters`.
#[derive(Debug, Clone, Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    #[serde(flatten)]
    scaling: Option<RopeScaling>,
}

/// The architecture of a LLaMA-family causal LM (HF `LlamaConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size (rows of `embed_tokens`).
    pub vocab_size: usize,
    /// Model width `d_model`.
    pub hidden_size: usize,
    /// MLP width `d_ff`.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (GQA); defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Epsilon of every RMSNorm.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// RoPE frequency scaling (LLaMA-3.1).
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// Longest supported position (size of the RoPE tables).
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence id(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// Padding id, when the checkpoint defines one.
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    /// Must be `"silu"`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Must be false: LLaMA projections carry no bias.
    #[serde(default)]
    pub attention_bias: bool,
    /// Must be false.
    #[serde(default)]
    pub mlp_bias: bool,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

/// The names accepted by [`LlamaConfig::preset`].
pub const PRESETS: &[&str] = &[
    "llama2-7b",
    "llama2-13b",
    "llama3-8b",
    "llama3.1-8b",
    "smollm2-135m",
    "tiny",
];

impl LlamaConfig {
    /// A LLaMA-2 style config (MHA, theta 1e4, vocab 32000) of the given size.
    fn llama2(hidden: usize, inter: usize, layers: usize, heads: usize) -> Self {
        Self {
            vocab_size: 32_000,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(heads),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_id: Some(TokenIds::One(2)),
            pad_token_id: None,
            hidden_act: default_act(),
            attention_bias: false,
            mlp_bias: false,
        }
    }

    /// The architecture of a named model; see [`PRESETS`].
    ///
    /// Presets carry the architecture only: weights come from an HF folder or a GGUF file.
    pub fn preset(name: &str) -> Result<Self> {
        let config = match name {
            "llama2-7b" => Self::llama2(4096, 11_008, 32, 32),
            "llama2-13b" => Self::llama2(5120, 13_824, 40, 40),
            "llama3-8b" => Self {
                vocab_size: 128_256,
                intermediate_size: 14_336,
                num_key_value_heads: Some(8),
                rope_theta: 500_000.0,
                max_position_embeddings: 8192,
                bos_token_id: Some(128_000),
                eos_token_id: Some(TokenIds::One(128_001)),
                ..Self::llama2(4096, 14_336, 32, 32)
            },
            "llama3.1-8b" => Self {
                rope_scaling: Some(RopeScaling {
                    rope_type: "llama3".into(),
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position_embeddings: 8192,
                }),
                max_position_embeddings: 131_072,
                eos_token_id: Some(TokenIds::Many(vec![128_001, 128_008, 128_009])),
                ..Self::preset("llama3-8b")?
            },
            "smollm2-135m" => Self {
                vocab_size: 49_152,
                num_key_value_heads: Some(3),
                head_dim: Some(64),
                rope_theta: 100_000.0,
                max_position_embeddings: 8192,
                tie_word_embeddings: true,
                bos_token_id: Some(1),
                eos_token_id: Some(TokenIds::One(2)),
                pad_token_id: Some(2),
                ..Self::llama2(576, 1536, 30, 9)
            },
            "tiny" => Self {
                vocab_size: 512,
                num_key_value_heads: Some(2),
                max_position_embeddings: 512,
                ..Self::llama2(64, 176, 2, 4)
            },
            other => {
                return Err(LlamaError::UnsupportedConfig(format!(
                    "unknown model preset `{other}`; known presets: {}",
                    PRESETS.join(", ")
                )))
            }
        };
        Ok(config)
    }

    /// Reads and validates an HF `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => LlamaError::MissingFile {
                path: path.to_owned(),
                hint: "an HF model folder needs its config.json".into(),
            },
            _ => LlamaError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
        Self::from_hf_str(&text).map_err(|e| match e {
            LlamaError::Parse { message, .. } => LlamaError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates the text of an HF `config.json`.
    pub fn from_hf_str(text: &str) -> Result<Self> {
        let parse_err = |e: serde_json::Error| LlamaError::Parse {
            path: "config.json".into(),
            message: e.to_string(),
        };
        let raw: serde_json::Value = serde_json::from_str(text).map_err(parse_err)?;
        if let Some(model_type) = raw.get("model_type").and_then(|v| v.as_str()) {
            if model_type != "llama" {
                return Err(LlamaError::UnsupportedConfig(format!(
                    "model_type `{model_type}` (only `llama` is supported)"
                )));
            }
        }
        let mut config: Self = serde_json::from_value(raw.clone()).map_err(parse_err)?;
        if let Some(params) = raw.get("rope_parameters").filter(|v| !v.is_null()) {
            let params: RopeParameters =
                serde_json::from_value(params.clone()).map_err(parse_err)?;
            if let Some(theta) = params.rope_theta {
                config.rope_theta = theta;
            }
            if config.rope_scaling.is_none() {
                config.rope_scaling = params.scaling;
            }
        }
        if config
            .rope_scaling
            .as_ref()
            .is_some_and(|s| s.rope_type == "default")
        {
            config.rope_scaling = None;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks that the config describes a model this crate implements.
    pub fn validate(&self) -> Result<()> {
        let unsupported = |msg: String| Err(LlamaError::UnsupportedConfig(msg));
        if self.hidden_act != "silu" {
            return unsupported(format!("hidden_act `{}` (only silu)", self.hidden_act));
        }
        if self.attention_bias || self.mlp_bias {
            return unsupported("projection biases (attention_bias / mlp_bias)".into());
        }
        if let Some(s) = &self.rope_scaling {
            if s.rope_type != "llama3" {
                return unsupported(format!("rope_scaling type `{}` (only llama3)", s.rope_type));
            }
        }
        let dims = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.n_kv_heads()),
            ("head_dim", self.head_dim()),
        ];
        if let Some((name, _)) = dims.iter().find(|(_, v)| *v == 0) {
            return unsupported(format!("{name} is 0"));
        }
        if !self.num_attention_heads.is_multiple_of(self.n_kv_heads()) {
            return unsupported(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.n_kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return unsupported(format!("odd head_dim {}", self.head_dim()));
        }
        Ok(())
    }

    /// Number of key/value heads.
    pub fn n_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// End-of-sequence ids (empty when the config names none).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// The id that fills padding: `pad_token_id`, else the first EOS id (what most LLaMA
    /// fine-tuning code does for checkpoints without a pad token), else 0. Padding is always
    /// masked, so the choice never changes results.
    pub fn pad_id(&self) -> u32 {
        self.pad_token_id
            .or(self.eos_ids().first().copied())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_validates() {
        for name in PRESETS {
            LlamaConfig::preset(name).unwrap().validate().unwrap();
        }
        assert!(LlamaConfig::preset("gpt2").is_err());
    }

    #[test]
    fn reads_llama31_config_with_rope_scaling() {
        let json = r#"{"model_type":"llama","vocab_size":128256,"hidden_size":4096,
            "intermediate_size":14336,"num_hidden_layers":32,"num_attention_heads":32,
            "num_key_value_heads":8,"rms_norm_eps":1e-5,"rope_theta":500000.0,
            "max_position_embeddings":131072,"eos_token_id":[128001,128008,128009],
            "rope_scaling":{"factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192,"rope_type":"llama3"}}"#;
        let c = LlamaConfig::from_hf_str(json).unwrap();
        assert_eq!(
            c,
            LlamaConfig::preset("llama3.1-8b")
                .unwrap()
                .with_eps_and_bos(&c)
        );
        assert_eq!(c.eos_ids(), vec![128_001, 128_008, 128_009]);
        assert_eq!(c.head_dim(), 128);
    }

    impl LlamaConfig {
        fn with_eps_and_bos(mut self, other: &Self) -> Self {
            self.bos_token_id = other.bos_token_id;
            self
        }
    }

    #[test]
    fn reads_transformers5_rope_parameters() {
        let json = r#"{"model_type":"llama","vocab_size":100,"hidden_size":64,
            "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,
            "rope_parameters":{"rope_theta":12345.0,"rope_type":"default"}}"#;
        let c = LlamaConfig::from_hf_str(json).unwrap();
        assert_eq!(c.rope_theta, 12345.0);
        assert!(c.rope_scaling.is_none());
        assert_eq!(c.n_kv_heads(), 4);
    }

    #[test]
    fn rejects_unsupported_configs() {
        let base =
            r#""vocab_size":100,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2"#;
        let bad = [
            format!(r#"{{"model_type":"mistral",{base},"num_attention_heads":4}}"#),
            format!(r#"{{{base},"num_attention_heads":4,"hidden_act":"gelu"}}"#),
            format!(r#"{{{base},"num_attention_heads":4,"num_key_value_heads":3}}"#),
            format!(r#"{{{base},"num_attention_heads":4,"rope_scaling":{{"type":"yarn"}}}}"#),
            format!(r#"{{{base}}}"#),
            "not json".to_string(),
        ];
        for json in bad {
            assert!(LlamaConfig::from_hf_str(&json).is_err(), "{json}");
        }
    }
}
