//! Which projections of a LLaMA layer carry an adapter, under PEFT's module names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::LoraError;

/// A projection of a LLaMA decoder layer that can carry a LoRA adapter.
///
/// Parses from the short name (`q`) or PEFT's module name (`q_proj`); serialises as the short
/// name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraTarget {
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

impl LoraTarget {
    /// Every target, in layer order.
    pub const ALL: [LoraTarget; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// The default of SparseLoRA and of this crate: the attention projections.
    pub const ATTENTION: [LoraTarget; 4] = [Self::Q, Self::K, Self::V, Self::O];

    /// The PEFT / HF module name: `q_proj`, ..., `down_proj`.
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

    /// Parses a comma-separated list such as `"q,k,v,o"` or `"q_proj, v_proj"`; returns the
    /// targets in layer order without repeats.
    ///
    /// # Errors
    /// [`LoraError::UnknownTarget`] naming the first unknown entry, or
    /// [`LoraError::InvalidConfig`] when the list is empty.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, LoraError> {
        let parsed = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Self>, _>>()?;
        let targets = canonical(parsed);
        if targets.is_empty() {
            return Err(LoraError::InvalidConfig(format!(
                "no LoRA targets in `{list}`"
            )));
        }
        Ok(targets)
    }
}

/// Sorts targets into layer order and removes repeats.
pub(crate) fn canonical(mut targets: Vec<LoraTarget>) -> Vec<LoraTarget> {
    targets.sort();
    targets.dedup();
    targets
}

impl FromStr for LoraTarget {
    type Err = LoraError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let short = lower.strip_suffix("_proj").unwrap_or(&lower);
        Self::ALL
            .into_iter()
            .find(|t| t.short_name() == short)
            .ok_or_else(|| LoraError::UnknownTarget(s.to_owned()))
    }
}

impl fmt::Display for LoraTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

impl Serialize for LoraTarget {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.short_name())
    }
}

impl<'de> Deserialize<'de> for LoraTarget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_short_and_peft_names() {
        assert_eq!(
            LoraTarget::parse_list("q,k,v,o").unwrap(),
            LoraTarget::ATTENTION.to_vec()
        );
        assert_eq!(
            LoraTarget::parse_list("down_proj, q_proj,q").unwrap(),
            vec![LoraTarget::Q, LoraTarget::Down]
        );
        assert_eq!("Gate".parse::<LoraTarget>().unwrap(), LoraTarget::Gate);
        for t in LoraTarget::ALL {
            assert_eq!(t.module_name().parse::<LoraTarget>().unwrap(), t);
            assert_eq!(t.to_string().parse::<LoraTarget>().unwrap(), t);
        }
    }

    #[test]
    fn rejects_unknown_and_empty() {
        let err = LoraTarget::parse_list("q,lm_head").unwrap_err();
        assert!(err.to_string().contains("`lm_head`"), "{err}");
        assert!(LoraTarget::parse_list(" , ").is_err());
    }

    #[test]
    fn serde_uses_short_names() {
        let json = serde_json::to_string(&[LoraTarget::Q, LoraTarget::Down]).unwrap();
        assert_eq!(json, r#"["q","down"]"#);
        let back: Vec<LoraTarget> = serde_json::from_str(r#"["q_proj","up"]"#).unwrap();
        assert_eq!(back, vec![LoraTarget::Q, LoraTarget::Up]);
    }
}
