//! `adapter_config.json`, PEFT's description of a LoRA adapter folder.
//!
//! We write the fields PEFT 0.21 writes for a plain LoRA (it fills every other field with its
//! defaults on load). On read, an option we do not implement (rsLoRA, DoRA, trained biases,
//! per-module ranks, layer subsets, ...) is rejected by name rather than silently ignored: any
//! field not listed below must hold its "off" value (`null`, `false`, `{}`, `[]`).

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::config::LoraConfig;
use crate::error::{LoraError, Result};
use crate::target::TargetModules;

/// The config file's name inside an adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";

/// Fields that are bookkeeping only, or that matter only at initialisation time in ways that
/// leave a standard adapter behind, so any value is accepted.
const IGNORED: &[&str] = &[
    "auto_mapping",
    "base_model_name_or_path",
    "ensure_weight_tying",
    "inference_mode",
    "layers_pattern",
    "megatron_core",
    "peft_version",
    "qalora_group_size",
    "revision",
];

/// Fields read and checked by [`parse_config`].
const PARSED: &[&str] = &[
    "peft_type",
    "task_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "bias",
    "init_lora_weights",
];

/// The JSON object PEFT reads back as this adapter's `LoraConfig`.
pub fn config_json(config: &LoraConfig, base_model_name_or_path: &str) -> Value {
    let alpha = if config.alpha.fract() == 0.0 && config.alpha.abs() < 1e15 {
        json!(config.alpha as i64) // PEFT writes integer alphas as integers
    } else {
        json!(config.alpha)
    };
    json!({
        "alpha_pattern": {},
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": alpha,
        "lora_bias": false,
        "lora_dropout": config.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": config.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": config.targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false,
    })
}

/// Whether a value means "feature not used".
fn is_off(value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Number(_) | Value::Bool(true) => false,
    }
}

/// Parses `adapter_config.json`'s text (read from `path`) into our config and the base model name.
///
/// # Errors
/// [`LoraError::Parse`] for malformed JSON or a field of the wrong type,
/// [`LoraError::Unsupported`] naming the first option we do not implement (a regex
/// `target_modules` included).
pub fn parse_config(path: &Path, text: &str) -> Result<(LoraConfig, Option<String>)> {
    let parse_err = |message: String| LoraError::Parse {
        path: path.to_owned(),
        message,
    };
    let unsupported = |option: &str, value: &Value| LoraError::Unsupported {
        path: path.to_owned(),
        option: option.to_owned(),
        value: value.to_string(),
    };
    let fields: Map<String, Value> = match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(parse_err("not a JSON object".into())),
        Err(e) => return Err(parse_err(e.to_string())),
    };
    for (key, value) in &fields {
        let known = IGNORED.contains(&key.as_str()) || PARSED.contains(&key.as_str());
        if !known && !is_off(value) {
            return Err(unsupported(key, value));
        }
    }
    let get = |key: &str| fields.get(key).filter(|v| !v.is_null());

    match get("peft_type") {
        Some(Value::String(s)) if s == "LORA" => {}
        Some(v) => return Err(unsupported("peft_type", v)),
        None => return Err(parse_err("`peft_type` is missing".into())),
    }
    match get("task_type") {
        None => {}
        Some(Value::String(s)) if s == "CAUSAL_LM" => {}
        Some(v) => return Err(unsupported("task_type", v)),
    }
    match get("bias") {
        None => {}
        Some(Value::String(s)) if s == "none" => {}
        Some(v) => return Err(unsupported("bias", v)),
    }
    // PiSSA/OLoRA/LoftQ/CorDA-style inits change the base weights too; only plain inits leave an
    // adapter that applies to the unmodified base model.
    match get("init_lora_weights") {
        None | Some(Value::Bool(_)) => {}
        Some(Value::String(s)) if s == "gaussian" => {}
        Some(v) => return Err(unsupported("init_lora_weights", v)),
    }

    // Missing numbers take PEFT's defaults (r = 8, lora_alpha = 8, lora_dropout = 0).
    let number = |key: &str, default: f64| match get(key) {
        None => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| parse_err(format!("`{key}` is not a number: {v}"))),
    };
    let r = match get("r") {
        None => 8,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| parse_err(format!("`r` is not a positive integer: {v}")))?
            as usize,
    };
    let alpha = number("lora_alpha", 8.0)?;
    let dropout = number("lora_dropout", 0.0)?;

    let targets = match get("target_modules") {
        Some(Value::Array(names)) => TargetModules::names(
            names
                .iter()
                .map(|n| {
                    n.as_str().ok_or_else(|| {
                        parse_err(format!("`target_modules` entry is not a string: {n}"))
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        Some(Value::String(s)) if s == crate::target::ALL_LINEAR => TargetModules::AllLinear,
        Some(v) => return Err(unsupported("target_modules", v)),
        None => return Err(parse_err("`target_modules` is missing".into())),
    };

    let config = LoraConfig {
        r,
        alpha,
        dropout,
        targets,
    };
    config.validate().map_err(|e| parse_err(e.to_string()))?;
    let base = get("base_model_name_or_path")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok((config, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<(LoraConfig, Option<String>)> {
        parse_config(Path::new("adapter_config.json"), &v.to_string())
    }

    #[test]
    fn written_config_parses_back() {
        let config = LoraConfig::new()
            .with_r(4)
            .with_alpha(12.0)
            .with_dropout(0.05)
            .with_targets(TargetModules::names(["q_proj", "down_proj"]));
        let json = config_json(&config, "base/model");
        assert_eq!(json["lora_alpha"], json!(12));
        assert_eq!(json["target_modules"], json!(["q_proj", "down_proj"]));
        let (back, base) = parse(json).unwrap();
        assert_eq!(back, config);
        assert_eq!(base.as_deref(), Some("base/model"));

        let config = config.with_targets(TargetModules::AllLinear);
        let json = config_json(&config, "base/model");
        assert_eq!(json["target_modules"], json!("all-linear"));
        assert_eq!(parse(json).unwrap().0, config);
    }

    #[test]
    fn unsupported_options_are_named() {
        let base = config_json(&LoraConfig::new(), "m");
        for (key, value) in [
            ("use_rslora", json!(true)),
            ("use_dora", json!(true)),
            ("bias", json!("all")),
            ("lora_bias", json!(true)),
            ("fan_in_fan_out", json!(true)),
            ("rank_pattern", json!({"q_proj": 4})),
            ("layers_to_transform", json!([0])),
            ("modules_to_save", json!(["lm_head"])),
            ("init_lora_weights", json!("pissa")),
            ("peft_type", json!("IA3")),
            ("target_modules", json!(".*proj")),
            ("some_future_option", json!(3)),
        ] {
            let mut v = base.clone();
            v[key] = value;
            let err = parse(v).unwrap_err();
            assert!(
                matches!(&err, LoraError::Unsupported { option, .. } if option == key),
                "{key}: {err}"
            );
        }
        // Off values of unknown options are fine.
        let mut v = base;
        v["some_future_option"] = json!(null);
        v["use_qalora"] = json!(false);
        parse(v).unwrap();
    }

    #[test]
    fn bad_values_are_parse_errors() {
        let base = config_json(&LoraConfig::new(), "m");
        for (key, value) in [
            ("r", json!(0)),
            ("r", json!("8")),
            ("lora_dropout", json!(1.5)),
            ("target_modules", json!([1])),
        ] {
            let mut v = base.clone();
            v[key] = value;
            assert!(matches!(parse(v), Err(LoraError::Parse { .. })), "{key}");
        }
        // Names are the model's to check (`lm_head` may well be a module of some model).
        let mut v = base;
        v["target_modules"] = json!(["q_proj", "lm_head"]);
        let (config, _) = parse(v).unwrap();
        assert_eq!(config.targets, TargetModules::names(["q_proj", "lm_head"]));
    }
}
