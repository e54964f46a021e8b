//! The seven linear projections of a LLaMA decoder layer, by name: what LoRA targets, what
//! SparseLoRA's estimator factorises, and the short names the command line accepts (`q`, ...,
//! `down`) mapped to HF's module names (`q_proj`, ..., `down_proj`).

use std::fmt;
use std::str::FromStr;

use burn::tensor::{backend::Backend, Tensor};
use lora::{LoraError, TargetModules};

use crate::model::LlamaForCausalLM;

/// A projection of a LLaMA decoder layer (each one a [`lora::LoraLinear`]).
///
/// Parses from the short name (`q`) or HF's module name (`q_proj`), case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LlamaProjection {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
}

impl LlamaProjection {
    /// Every projection, in layer order.
    pub const ALL: [LlamaProjection; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// The attention projections: SparseLoRA's (and `lora::LoraConfig`'s) default LoRA targets.
    pub const ATTENTION: [LlamaProjection; 4] = [Self::Q, Self::K, Self::V, Self::O];

    /// The HF / PEFT module name: `q_proj`, ..., `down_proj`.
    pub fn module_name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// The short name: `q`, ..., `down`.
    pub fn short_name(self) -> &'static str {
        let name = self.module_name();
        &name[..name.len() - "_proj".len()]
    }

    /// Whether the projection belongs to the attention block (else to the MLP).
    pub fn is_attention(self) -> bool {
        matches!(self, Self::Q | Self::K | Self::V | Self::O)
    }

    /// The HF module path of this projection in `layer`: `model.layers.{layer}.self_attn.q_proj`.
    pub fn path(self, layer: usize) -> String {
        let block = if self.is_attention() {
            "self_attn"
        } else {
            "mlp"
        };
        format!("model.layers.{layer}.{block}.{}", self.module_name())
    }

    /// Parses a comma-separated list such as `"q,k,v,o"` or `"q_proj, v_proj"`; returns the
    /// projections in layer order without repeats.
    ///
    /// # Errors
    /// [`LoraError::UnknownTarget`] naming the first unknown entry, or
    /// [`LoraError::InvalidConfig`] when the list is empty.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, LoraError> {
        let mut parsed = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Self>, _>>()?;
        parsed.sort();
        parsed.dedup();
        if parsed.is_empty() {
            return Err(LoraError::InvalidConfig(format!(
                "no LoRA targets in `{list}`"
            )));
        }
        Ok(parsed)
    }

    /// LoRA's `target_modules` for `projections`: their HF module names, in the order given.
    pub fn target_modules(projections: &[Self]) -> TargetModules {
        TargetModules::names(projections.iter().map(|p| p.module_name()))
    }
}

impl FromStr for LlamaProjection {
    type Err = LoraError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let short = lower.strip_suffix("_proj").unwrap_or(&lower);
        Self::ALL
            .into_iter()
            .find(|t| t.short_name() == short)
            .ok_or_else(|| LoraError::UnknownTarget {
                name: s.to_owned(),
                hint: "expected q, k, v, o, gate, up, down or q_proj, ..., down_proj".into(),
            })
    }
}

impl fmt::Display for LlamaProjection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

impl<B: Backend> LlamaForCausalLM<B> {
    /// The frozen `[out, in]` weights of the projections `which` of every layer that `wanted`
    /// accepts, each under its HF module path (`model.layers.3.mlp.gate_proj`), layer by layer
    /// and in the order of `which`: the named weights a model-agnostic consumer (SparseLoRA's
    /// estimator) builds from. Lazy, so a consumer's work interleaves with the reads as if it
    /// walked the model itself.
    pub fn projection_weights<'a>(
        &'a self,
        which: &'a [LlamaProjection],
        wanted: impl Fn(usize, LlamaProjection) -> bool + 'a,
    ) -> impl Iterator<Item = (String, Tensor<B, 2>)> + 'a {
        let wanted = std::rc::Rc::new(wanted);
        self.model
            .layers
            .iter()
            .enumerate()
            .flat_map(move |(i, layer)| {
                let wanted = wanted.clone();
                which
                    .iter()
                    .filter(move |&&p| wanted(i, p))
                    .map(move |&p| (p.path(i), layer.projection(p).weight.val()))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_short_and_module_names() {
        assert_eq!(
            LlamaProjection::parse_list("q,k,v,o").unwrap(),
            LlamaProjection::ATTENTION.to_vec()
        );
        assert_eq!(
            LlamaProjection::parse_list("down_proj, q_proj,q").unwrap(),
            vec![LlamaProjection::Q, LlamaProjection::Down]
        );
        assert_eq!(
            "Gate".parse::<LlamaProjection>().unwrap(),
            LlamaProjection::Gate
        );
        for t in LlamaProjection::ALL {
            assert_eq!(t.module_name().parse::<LlamaProjection>().unwrap(), t);
            assert_eq!(t.to_string().parse::<LlamaProjection>().unwrap(), t);
        }
    }

    #[test]
    fn rejects_unknown_and_empty() {
        let err = LlamaProjection::parse_list("q,lm_head").unwrap_err();
        assert!(err.to_string().contains("`lm_head`"), "{err}");
        assert!(LlamaProjection::parse_list(" , ").is_err());
    }

    #[test]
    fn short_names_map_to_module_names_that_target_their_paths() {
        let targets =
            LlamaProjection::target_modules(&LlamaProjection::parse_list("q,down").unwrap());
        assert_eq!(targets, TargetModules::names(["q_proj", "down_proj"]));
        assert!(targets.matches(&LlamaProjection::Q.path(3)));
        assert!(targets.matches(&LlamaProjection::Down.path(0)));
        assert!(!targets.matches(&LlamaProjection::K.path(0)));
        assert_eq!(LlamaProjection::Up.path(2), "model.layers.2.mlp.up_proj");
    }
}
