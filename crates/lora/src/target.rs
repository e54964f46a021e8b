//! Which modules of a model carry an adapter, with PEFT's `target_modules` semantics.
//!
//! PEFT accepts a list of names, where a module is targeted when its path equals a name or ends
//! with `.name` (`"q_proj"` targets `model.layers.3.self_attn.q_proj`), or the string
//! `"all-linear"`: every linear layer except the output head. (PEFT's third form, a regex string,
//! is not supported.) The model decides which of its modules are linear layers and asks
//! [`TargetModules::matches`] for each; this crate knows no model's module names.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::LoraError;

/// PEFT's spelling of [`TargetModules::AllLinear`].
pub const ALL_LINEAR: &str = "all-linear";

/// The modules that carry an adapter (PEFT's `target_modules`).
///
/// Serialises as PEFT writes it: a list of names, or the string `"all-linear"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetModules {
    /// Modules whose path equals one of these names or ends with `.name`.
    Names(Vec<String>),
    /// Every linear layer of the model except the output head. The model applies the exception:
    /// it never asks about its head.
    AllLinear,
}

impl TargetModules {
    /// A list of names, repeats removed (first occurrence kept, so the order given is the order
    /// written to `adapter_config.json`).
    pub fn names<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        let mut out: Vec<String> = Vec::new();
        for name in names {
            let name = name.into();
            if !out.contains(&name) {
                out.push(name);
            }
        }
        Self::Names(out)
    }

    /// Parses `"all-linear"` or a comma-separated list of names (`"q_proj, v_proj"`).
    ///
    /// # Errors
    /// [`LoraError::InvalidConfig`] when the list holds no name.
    pub fn parse_list(list: &str) -> Result<Self, LoraError> {
        if list.trim() == ALL_LINEAR {
            return Ok(Self::AllLinear);
        }
        let targets = Self::names(list.split(',').map(str::trim).filter(|s| !s.is_empty()));
        if targets.is_empty() {
            return Err(LoraError::InvalidConfig(format!(
                "no LoRA target modules in `{list}`"
            )));
        }
        Ok(targets)
    }

    /// Whether the module at `path` (e.g. `model.layers.3.self_attn.q_proj`) is targeted: its
    /// path equals a name or ends with `.name`; any path under [`Self::AllLinear`].
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::AllLinear => true,
            Self::Names(names) => names.iter().any(|name| {
                path.strip_suffix(name.as_str())
                    .is_some_and(|head| head.is_empty() || head.ends_with('.'))
            }),
        }
    }

    /// Whether the list names no module ([`Self::AllLinear`] is never empty).
    pub fn is_empty(&self) -> bool {
        matches!(self, Self::Names(names) if names.is_empty())
    }

    /// The names that match none of `paths` (a model's adaptable modules): PEFT refuses such a
    /// config, since a misspelt name would otherwise silently train nothing.
    pub fn unmatched<'a>(&self, paths: impl IntoIterator<Item = &'a str> + Clone) -> Vec<&str> {
        match self {
            Self::AllLinear => Vec::new(),
            Self::Names(names) => names
                .iter()
                .filter(|name| {
                    let one = Self::Names(vec![(*name).clone()]);
                    !paths.clone().into_iter().any(|path| one.matches(path))
                })
                .map(String::as_str)
                .collect(),
        }
    }
}

impl std::fmt::Display for TargetModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AllLinear => f.write_str(ALL_LINEAR),
            Self::Names(names) => write!(f, "{names:?}"),
        }
    }
}

impl Serialize for TargetModules {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::AllLinear => serializer.serialize_str(ALL_LINEAR),
            Self::Names(names) => names.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for TargetModules {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            List(Vec<String>),
        }
        match Raw::deserialize(deserializer)? {
            Raw::One(s) if s == ALL_LINEAR => Ok(Self::AllLinear),
            Raw::One(s) => Err(serde::de::Error::custom(format!(
                "target modules `{s}`: expected a list of names or \"{ALL_LINEAR}\""
            ))),
            Raw::List(names) => Ok(Self::names(names)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_whole_path_components() {
        let t = TargetModules::names(["q_proj", "mlp.down_proj"]);
        assert!(t.matches("model.layers.3.self_attn.q_proj"));
        assert!(t.matches("q_proj"));
        assert!(t.matches("model.layers.0.mlp.down_proj"));
        assert!(!t.matches("model.layers.0.self_attn.qq_proj"));
        assert!(!t.matches("model.layers.0.other.down_proj"));
        assert!(TargetModules::AllLinear.matches("anything.at.all"));
    }

    #[test]
    fn parses_lists_and_all_linear() {
        assert_eq!(
            TargetModules::parse_list("q_proj, v_proj,q_proj").unwrap(),
            TargetModules::names(["q_proj", "v_proj"])
        );
        assert_eq!(
            TargetModules::parse_list(" all-linear ").unwrap(),
            TargetModules::AllLinear
        );
        assert!(TargetModules::parse_list(" , ").is_err());
    }

    #[test]
    fn unmatched_names_are_reported() {
        let t = TargetModules::names(["q_proj", "lm_head"]);
        let paths = [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.mlp.up_proj",
        ];
        assert_eq!(t.unmatched(paths), vec!["lm_head"]);
        assert!(TargetModules::AllLinear.unmatched(paths).is_empty());
    }

    #[test]
    fn serde_round_trips_both_forms() {
        for (t, json) in [
            (TargetModules::AllLinear, r#""all-linear""#),
            (
                TargetModules::names(["down_proj", "q_proj"]),
                r#"["down_proj","q_proj"]"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&t).unwrap(), json);
            assert_eq!(serde_json::from_str::<TargetModules>(json).unwrap(), t);
        }
        assert!(serde_json::from_str::<TargetModules>(r#"".*proj""#).is_err());
    }
}
