//! Every file of `configs/sparsity/` parses and fits its model's preset; the paper's rows match
//! SPEC section 7.

use std::path::{Path, PathBuf};

use llama_burn::LlamaConfig;
use lora::sparse::{Block, SparsityPlan};

use super::*;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/sparsity")
}

#[test]
fn every_shipped_config_fits_its_model() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let config = SparsityConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
        let model = config
            .model
            .as_deref()
            .unwrap_or_else(|| panic!("{}: names no model", path.display()));
        let preset =
            LlamaConfig::preset(model).unwrap_or_else(|e| panic!("{}: model: {e}", path.display()));
        let plan = config
            .plan(preset.num_hidden_layers)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!plan.is_dense(), "{}: no sparse layer", path.display());
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            stem.starts_with(&format!("{model}-")),
            "{stem}: file name does not start with its model `{model}`"
        );
        assert_eq!(config.model_warning(model), None);
        names.push(stem);
    }
    names.sort();
    let expected = [
        "llama2-13b-csr170k",
        "llama2-13b-math10k",
        "llama2-7b-codefeedback",
        "llama2-7b-csr170k",
        "llama2-7b-math10k",
        "llama3-8b-csr170k",
        "llama3-8b-glue",
        "llama3-8b-math10k",
        "llama3.1-8b-codefeedback",
        "llama3.1-8b-wizardlm",
        "smollm2-135m-csr",
        "tiny-demo",
    ];
    for name in expected {
        assert!(names.iter().any(|n| n == name), "missing {name}.toml");
    }
}

/// (file, MLP entries, attention entries, start_step, answer tokens dense), as SPEC 7 reads.
type Row = (
    &'static str,
    &'static [(&'static str, f64)],
    &'static [(&'static str, f64)],
    f64,
    bool,
);

const A3: &str = "17-19, 21-23, 25-29";
const A14: &str = "14-19, 21-23, 25-29";
const SPEC7: &[Row] = &[
    (
        "llama3-8b-csr170k",
        &[("17-30", 0.97)],
        &[(A3, 0.2)],
        0.05,
        true,
    ),
    (
        "llama3-8b-math10k",
        &[("3-30", 0.99)],
        &[(A14, 0.75)],
        0.05,
        true,
    ),
    (
        "llama3-8b-glue",
        &[("17-30", 0.95), ("31", 0.5)],
        &[("17-29", 0.75)],
        0.05,
        false,
    ),
    (
        "llama2-7b-csr170k",
        &[("13-29", 0.9)],
        &[(A3, 0.5)],
        0.05,
        true,
    ),
    (
        "llama2-7b-math10k",
        &[("13-29", 0.9)],
        &[(A3, 0.6)],
        0.05,
        true,
    ),
    (
        "llama2-13b-csr170k",
        &[("13-36", 0.97)],
        &[("17-36", 0.2)],
        0.1,
        true,
    ),
    (
        "llama2-13b-math10k",
        &[("13-36", 0.97)],
        &[("17-36", 0.25)],
        0.05,
        true,
    ),
    (
        "llama2-7b-codefeedback",
        &[("3-30", 0.99)],
        &[(A14, 0.25)],
        0.05,
        true,
    ),
    (
        "llama3.1-8b-codefeedback",
        &[("3-30", 0.99)],
        &[(A14, 0.4)],
        0.05,
        true,
    ),
    (
        "llama3.1-8b-wizardlm",
        &[("3-30", 0.99)],
        &[(A14, 0.4)],
        0.05,
        true,
    ),
];

#[test]
fn paper_configs_match_spec_section_7() {
    for &(name, mlp, attn, start, dense_answers) in SPEC7 {
        let config = SparsityConfig::from_file(&dir().join(format!("{name}.toml"))).unwrap();
        let layers = LlamaConfig::preset(config.model.as_deref().unwrap())
            .unwrap()
            .num_hidden_layers;
        let mut want = SparsityPlan::dense(layers);
        for (block, entries) in [(Block::Mlp, mlp), (Block::Attn, attn)] {
            for (range, ratio) in entries {
                for &l in range.parse::<LayerSet>().unwrap().layers() {
                    want.set(l, block, *ratio).unwrap();
                }
            }
        }
        assert_eq!(config.plan(layers).unwrap(), want, "{name}");
        assert_eq!(config.start_step, StartStep::Fraction(start), "{name}");
        assert_eq!(config.dense_answer_tokens, dense_answers, "{name}");
        assert_eq!(config.sparse_answer_fraction, 0.0, "{name}");
        assert_eq!(config.estimator_rank, 8, "{name}");
        assert_eq!(config.mode, SelectionMode::Estimated, "{name}");
        assert!(!config.reference_compat, "{name}");
    }
}
