//! SparseLoRA's sensitivity settings (SPEC sections 6 and 7), read from `configs/sparsity/*.toml`:
//! which layers of which block run sparse and how sparse, when sparsity starts, which tokens stay
//! dense, and how channels are chosen. The schema is documented in `docs/sparsity.md`.
//!
//! ```toml
//! model = "llama3-8b"
//! start_step = 0.05
//!
//! [[mlp]]
//! layers = "17-30"
//! sparsity = 0.97
//!
//! [[self_attn]]
//! layers = "17-19,21-23,25-29"
//! sparsity = 0.2
//! ```
//!
//! Parsing checks everything a config can get wrong on its own (syntax, unknown keys or blocks,
//! ratios, a layer given twice); [`SparsityConfig::plan`] checks the layers against the model.

use std::path::{Path, PathBuf};

use lora::sparse::{Block, SparsityPlan, SparsityPlanError};
use serde::{Deserialize, Serialize};
use svd_estimator::SelectionMode;

mod layer_set;
#[cfg(test)]
mod shipped;
mod start_step;

pub use layer_set::LayerSet;
pub use start_step::StartStep;

/// Per-layer, per-block sparsity and the token/step rules of a SparseLoRA run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparsityConfig {
    /// The model the config was written for (informational: a mismatch with the model in use is
    /// a warning, see [`Self::model_warning`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Steps trained dense before sparsity starts (default 5% of the run).
    #[serde(default)]
    pub start_step: StartStep,
    /// Answer tokens (label not ignored) take the dense path (default true); false sends every
    /// token through the sparse path, as the paper's GLUE configuration does.
    #[serde(default = "yes")]
    pub dense_answer_tokens: bool,
    /// Fraction of the answer tokens, drawn at random, sent through the sparse path anyway
    /// (default 0), in `[0, 1]`. Only meaningful with `dense_answer_tokens`.
    #[serde(default)]
    pub sparse_answer_fraction: f64,
    /// Rank of the SVD estimator (default 8).
    #[serde(default = "default_rank")]
    pub estimator_rank: usize,
    /// How channels are chosen (default [`SelectionMode::Estimated`]).
    #[serde(default)]
    pub mode: SelectionMode,
    /// Reproduce the reference code's GQA index mappings and its dropped input gradient through
    /// sliced projections that carry an adapter (default false: the correct behaviour).
    #[serde(default)]
    pub reference_compat: bool,
    /// Sparse layers of the MLP blocks; layers not listed are dense.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mlp: Vec<BlockSparsity>,
    /// Sparse layers of the self-attention blocks; layers not listed are dense.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub self_attn: Vec<BlockSparsity>,
}

fn yes() -> bool {
    true
}

/// The default estimator rank (SPEC 4).
pub const DEFAULT_ESTIMATOR_RANK: usize = 8;

fn default_rank() -> usize {
    DEFAULT_ESTIMATOR_RANK
}

impl Default for SparsityConfig {
    /// Every default, no sparse layer (a dense run with SparseLoRA's settings).
    fn default() -> Self {
        Self {
            model: None,
            start_step: StartStep::default(),
            dense_answer_tokens: true,
            sparse_answer_fraction: 0.0,
            estimator_rank: DEFAULT_ESTIMATOR_RANK,
            mode: SelectionMode::default(),
            reference_compat: false,
            mlp: Vec::new(),
            self_attn: Vec::new(),
        }
    }
}

/// One `[[mlp]]` or `[[self_attn]]` entry: a ratio for a set of layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockSparsity {
    /// The layers, 0-based: `"17-30"`, `"17-19,21-23,25-29"`, `"31"` or `31`.
    pub layers: LayerSet,
    /// Fraction of channels dropped, in `[0, 1)`.
    pub sparsity: f64,
}

/// A sparsity config that cannot be read or does not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum SparsityConfigError {
    /// The file could not be read.
    #[error("cannot read sparsity config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML does not parse, or has an unknown key or block, or a value of the wrong type.
    #[error("cannot parse sparsity config: {0}")]
    Parse(String),
    /// A value is out of range, or a layer is given twice for one block.
    #[error("invalid sparsity config: {0}")]
    Invalid(String),
    /// An error in a file, with the file named.
    #[error("{}: {error}", .path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: Box<SparsityConfigError>,
    },
    /// A layer or ratio that the model cannot take.
    #[error("{block}: {source}")]
    Plan {
        /// `mlp` or `self_attn`.
        block: &'static str,
        /// The model-side error (naming the layer and the model's layer count).
        source: SparsityPlanError,
    },
}

impl SparsityConfig {
    /// Reads and validates a TOML file; errors name the file.
    ///
    /// # Errors
    /// [`SparsityConfigError::Io`], or [`SparsityConfigError::InFile`] around a parse or
    /// validation error.
    pub fn from_file(path: &Path) -> Result<Self, SparsityConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| SparsityConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|error| SparsityConfigError::InFile {
            path: path.to_owned(),
            error: Box::new(error),
        })
    }

    /// Parses and validates TOML text (see [`Self::validate`]).
    ///
    /// # Errors
    /// [`SparsityConfigError::Parse`] (the parser's message names the line and the unknown key
    /// or block) or [`SparsityConfigError::Invalid`].
    pub fn from_toml_str(text: &str) -> Result<Self, SparsityConfigError> {
        let config: Self =
            toml::from_str(text).map_err(|e| SparsityConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML (what [`Self::from_toml_str`] reads back).
    pub fn to_toml_string(&self) -> String {
        // Every field serialises to TOML (no maps with non-string keys, no top-level arrays of
        // mixed types), so this cannot fail; an empty string would only signal a bug.
        toml::to_string(self).unwrap_or_default()
    }

    /// The entries of `block`.
    pub fn entries(&self, block: Block) -> &[BlockSparsity] {
        match block {
            Block::Mlp => &self.mlp,
            Block::Attn => &self.self_attn,
        }
    }

    /// Checks the values that do not depend on the model: every ratio in `[0, 1)`, no layer
    /// given twice for one block, `sparse_answer_fraction` in `[0, 1]`, `estimator_rank > 0`,
    /// `start_step` as [`StartStep`] describes.
    ///
    /// # Errors
    /// [`SparsityConfigError::Invalid`] naming the block, layers and value at fault.
    pub fn validate(&self) -> Result<(), SparsityConfigError> {
        let bad = |msg: String| Err(SparsityConfigError::Invalid(msg));
        for block in [Block::Mlp, Block::Attn] {
            let mut seen: Vec<(usize, &LayerSet)> = Vec::new();
            for entry in self.entries(block) {
                if !(0.0..1.0).contains(&entry.sparsity) {
                    return bad(format!(
                        "{} layers \"{}\": sparsity {} is outside [0, 1)",
                        block.name(),
                        entry.layers,
                        entry.sparsity
                    ));
                }
                if entry.layers.is_empty() {
                    return bad(format!("{}: an entry has no layers", block.name()));
                }
                for &layer in entry.layers.layers() {
                    if let Some((_, first)) = seen.iter().find(|(l, _)| *l == layer) {
                        return bad(format!(
                            "layer {layer} is given twice for {} (in layers \"{first}\" and \
                             \"{}\")",
                            block.name(),
                            entry.layers
                        ));
                    }
                    seen.push((layer, &entry.layers));
                }
            }
        }
        if !(0.0..=1.0).contains(&self.sparse_answer_fraction) {
            return bad(format!(
                "sparse_answer_fraction {} is outside [0, 1]",
                self.sparse_answer_fraction
            ));
        }
        if self.estimator_rank == 0 {
            return bad("estimator_rank must be > 0".into());
        }
        match self.start_step {
            StartStep::Fraction(f) if !(0.0..=1.0).contains(&f) => {
                bad(format!("start_step fraction {f} is outside [0, 1]"))
            }
            StartStep::Steps(n) if n <= 1 => bad(format!(
                "start_step of {n} steps: an absolute step count must be > 1 (write a fraction \
                 <= 1 instead)"
            )),
            _ => Ok(()),
        }
    }

    /// The per-layer plan for a model of `num_layers` layers (layers not listed are dense).
    ///
    /// # Errors
    /// [`SparsityConfigError::Invalid`] as [`Self::validate`], or [`SparsityConfigError::Plan`]
    /// for a layer past the model's last (naming the layer and the model's layer count).
    pub fn plan(&self, num_layers: usize) -> Result<SparsityPlan, SparsityConfigError> {
        self.validate()?;
        let mut plan = SparsityPlan::dense(num_layers);
        for block in [Block::Mlp, Block::Attn] {
            for entry in self.entries(block) {
                for &layer in entry.layers.layers() {
                    plan.set(layer, block, entry.sparsity).map_err(|source| {
                        SparsityConfigError::Plan {
                            block: block.name(),
                            source,
                        }
                    })?;
                }
            }
        }
        Ok(plan)
    }

    /// Optimizer steps trained dense at the start of a run of `total_steps`
    /// (see [`StartStep::dense_steps`]).
    pub fn dense_steps(&self, total_steps: usize) -> usize {
        self.start_step.dense_steps(total_steps)
    }

    /// Whether the 0-based optimizer step `step` of a run of `total_steps` runs sparse.
    pub fn is_sparse_step(&self, step: usize, total_steps: usize) -> bool {
        step >= self.dense_steps(total_steps)
    }

    /// The probability that an answer token takes the sparse path: 1 without
    /// `dense_answer_tokens`, else `sparse_answer_fraction`. Context tokens always do.
    pub fn sparse_answer_probability(&self) -> f64 {
        if self.dense_answer_tokens {
            self.sparse_answer_fraction
        } else {
            1.0
        }
    }

    /// The expected number of the `answer_tokens` that take the dense path.
    pub fn expected_dense_tokens(&self, answer_tokens: usize) -> usize {
        let dense = answer_tokens as f64 * (1.0 - self.sparse_answer_probability());
        (dense.round().max(0.0) as usize).min(answer_tokens)
    }

    /// A warning when the config names a model other than `model_in_use` (a preset name or a
    /// model folder); `None` when they agree or the config names none. Names are compared
    /// without case and punctuation, either containing the other (`llama3-8b` agrees with
    /// `Meta-Llama-3-8B`, not with `Meta-Llama-3.1-8B`).
    pub fn model_warning(&self, model_in_use: &str) -> Option<String> {
        let want = self.model.as_deref()?;
        let key = |s: &str| -> String {
            let base = Path::new(s.trim_end_matches('/'))
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| s.to_owned());
            base.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
                .map(|c| c.to_ascii_lowercase())
                .collect::<String>()
        };
        // `.` is kept, so that `3.1-8b` neither reads as `31-8b` nor contains `3-8b`.
        let (a, b) = (key(want), key(model_in_use));
        let agree = !a.is_empty() && !b.is_empty() && (a.contains(&b) || b.contains(&a));
        (!agree).then(|| {
            format!(
                "the sparsity config was written for model `{want}`, but the model in use is \
                 `{model_in_use}`; its layer choice may not suit this model"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SparsityConfig, String> {
        SparsityConfig::from_toml_str(text).map_err(|e| e.to_string())
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("expected an error, parsed {c:?}"),
            Err(e) => e,
        }
    }

    const CSR: &str = r#"
        model = "llama3-8b"
        [[mlp]]
        layers = "17-30"
        sparsity = 0.97
        [[self_attn]]
        layers = "17-19,21-23,25-29"
        sparsity = 0.2
    "#;

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, SparsityConfig::default());
        assert_eq!(c.start_step, StartStep::Fraction(0.05));
        assert!(c.dense_answer_tokens);
        assert_eq!(c.sparse_answer_fraction, 0.0);
        assert_eq!(c.estimator_rank, 8);
        assert_eq!(c.mode, SelectionMode::Estimated);
        assert!(!c.reference_compat);
        assert!(c.model.is_none());
        assert!(c.plan(4).unwrap().is_dense());
    }

    #[test]
    fn every_key_parses() {
        let c = parse(
            r#"
            model = "tiny"
            start_step = 100
            dense_answer_tokens = false
            sparse_answer_fraction = 0.25
            estimator_rank = 16
            mode = "oracle"
            reference_compat = true
            [[mlp]]
            layers = 1
            sparsity = 0.5
            "#,
        )
        .unwrap();
        assert_eq!(c.model.as_deref(), Some("tiny"));
        assert_eq!(c.start_step, StartStep::Steps(100));
        assert!(!c.dense_answer_tokens);
        assert_eq!(c.sparse_answer_fraction, 0.25);
        assert_eq!(c.estimator_rank, 16);
        assert_eq!(c.mode, SelectionMode::Oracle);
        assert!(c.reference_compat);
        assert_eq!(c.mlp[0].layers.layers(), &[1]);
        assert_eq!(
            parse("mode = \"random\"").unwrap().mode,
            SelectionMode::Random
        );
        assert_eq!(SelectionMode::Random.name(), "random");
    }

    #[test]
    fn builds_the_plan() {
        let c = parse(CSR).unwrap();
        let plan = c.plan(32).unwrap();
        for layer in 0..32 {
            let mlp = if (17..=30).contains(&layer) {
                0.97
            } else {
                0.0
            };
            let attn = if [17, 18, 19, 21, 22, 23, 25, 26, 27, 28, 29].contains(&layer) {
                0.2
            } else {
                0.0
            };
            assert_eq!(plan.ratio(layer, Block::Mlp), mlp, "layer {layer}");
            assert_eq!(plan.ratio(layer, Block::Attn), attn, "layer {layer}");
        }
        assert_eq!(c.entries(Block::Attn).len(), 1);
    }

    #[test]
    fn several_entries_per_block() {
        let c = parse(
            "[[mlp]]\nlayers = \"17-30\"\nsparsity = 0.95\n[[mlp]]\nlayers = \"31\"\nsparsity = 0.5\n",
        )
        .unwrap();
        let plan = c.plan(32).unwrap();
        assert_eq!(plan.ratio(30, Block::Mlp), 0.95);
        assert_eq!(plan.ratio(31, Block::Mlp), 0.5);
        assert_eq!(plan.ratio(16, Block::Mlp), 0.0);
    }

    #[test]
    fn layer_given_twice_is_an_error() {
        let e = err(
            "[[self_attn]]\nlayers = \"17-29\"\nsparsity = 0.75\n[[self_attn]]\nlayers = \"20\"\nsparsity = 0.5\n",
        );
        assert!(
            e.contains("layer 20 is given twice for self_attn")
                && e.contains("\"17-29\"")
                && e.contains("\"20\""),
            "{e}"
        );
        let e = err("[[mlp]]\nlayers = \"3-5,5\"\nsparsity = 0.5\n");
        assert!(e.contains("layer 5 is listed twice"), "{e}");
        // The same layer in different blocks is fine.
        parse("[[mlp]]\nlayers = 3\nsparsity = 0.5\n[[self_attn]]\nlayers = 3\nsparsity = 0.5\n")
            .unwrap();
    }

    #[test]
    fn layer_out_of_range_names_the_layer_and_the_model() {
        let c = parse(CSR).unwrap();
        let e = c.plan(28).unwrap_err().to_string();
        assert!(e.starts_with("mlp: layer 28 is out of range"), "{e}");
        assert!(e.contains("the model has 28 layers (0..=27)"), "{e}");
        let c = parse("[[self_attn]]\nlayers = \"2\"\nsparsity = 0.25\n").unwrap();
        let e = c.plan(2).unwrap_err().to_string();
        assert!(
            e.starts_with("self_attn: layer 2 is out of range") && e.contains("2 layers"),
            "{e}"
        );
        assert!(matches!(
            c.plan(2),
            Err(SparsityConfigError::Plan {
                block: "self_attn",
                source: SparsityPlanError::LayerOutOfRange {
                    layer: 2,
                    num_layers: 2
                }
            })
        ));
    }

    #[test]
    fn ratio_outside_range_is_an_error() {
        for ratio in ["1.0", "1.5", "-0.1", "nan"] {
            let e = err(&format!("[[mlp]]\nlayers = \"3-4\"\nsparsity = {ratio}\n"));
            assert!(
                e.contains("invalid sparsity config: mlp layers \"3-4\": sparsity")
                    && e.contains("is outside [0, 1)"),
                "{ratio}: {e}"
            );
        }
        // 0 is allowed: an explicitly dense entry.
        assert!(parse("[[mlp]]\nlayers = 3\nsparsity = 0.0\n")
            .unwrap()
            .plan(4)
            .unwrap()
            .is_dense());
        // A config built in code is checked by plan() too.
        let mut c = SparsityConfig::default();
        c.self_attn.push(BlockSparsity {
            layers: LayerSet::new([1]),
            sparsity: 1.0,
        });
        let e = c.plan(2).unwrap_err().to_string();
        assert!(
            e.contains("self_attn layers \"1\": sparsity 1 is outside"),
            "{e}"
        );
    }

    #[test]
    fn bad_range_syntax_is_an_error() {
        let cases = [
            ("17-", "in `17-`: a layer number is missing"),
            ("a-3", "`a` is not a layer number"),
            ("-3", "in `-3`: a layer number is missing"),
            ("3-1", "range `3-1` runs backwards"),
            ("1-2-3", "`2-3` is not a layer number"),
            ("17,,18", "empty entry"),
            ("", "empty entry"),
            ("x", "`x` is not a layer number"),
            ("+3", "`+3` is not a layer number"),
        ];
        for (layers, problem) in cases {
            let e = err(&format!("[[mlp]]\nlayers = \"{layers}\"\nsparsity = 0.5\n"));
            assert!(
                e.contains(&format!("bad layer list \"{layers}\"")) && e.contains(problem),
                "{layers}: {e}"
            );
        }
        let e = err("[[mlp]]\nlayers = 70000\nsparsity = 0.5\n");
        assert!(e.contains("layer 70000 is past 65535"), "{e}");
        let e = err("[[mlp]]\nlayers = -1\nsparsity = 0.5\n");
        assert!(e.contains("layer -1 is negative"), "{e}");
        let e = err("[[mlp]]\nlayers = 1.5\nsparsity = 0.5\n");
        assert!(e.contains("expected a layer list"), "{e}");
    }

    #[test]
    fn empty_layer_set_built_in_code_is_an_error() {
        let mut c = SparsityConfig::default();
        c.mlp.push(BlockSparsity {
            layers: LayerSet::default(),
            sparsity: 0.5,
        });
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("mlp: an entry has no layers"), "{e}");
    }

    #[test]
    fn unknown_keys_and_blocks_are_named() {
        let e = err("[[mlps]]\nlayers = \"1\"\nsparsity = 0.5\n");
        assert!(
            e.contains("cannot parse sparsity config") && e.contains("mlps"),
            "{e}"
        );
        let e = err("start_stpe = 0.1\n");
        assert!(e.contains("start_stpe"), "{e}");
        let e = err("[[mlp]]\nlayers = \"1\"\nratio = 0.5\n");
        assert!(e.contains("ratio"), "{e}");
        let e = err("[[mlp]]\nlayers = \"1\"\n");
        assert!(e.contains("sparsity"), "{e}");
        let e = err("mode = \"svd\"\n");
        assert!(e.contains("svd") && e.contains("estimated"), "{e}");
        let e = err("this is not toml");
        assert!(e.contains("cannot parse sparsity config"), "{e}");
    }

    #[test]
    fn start_step_rules() {
        let start = |v: &str| parse(&format!("start_step = {v}")).map(|c| c.start_step);
        assert_eq!(start("0.05").unwrap(), StartStep::Fraction(0.05));
        assert_eq!(start("1").unwrap(), StartStep::Fraction(1.0));
        assert_eq!(start("1.0").unwrap(), StartStep::Fraction(1.0));
        assert_eq!(start("0").unwrap(), StartStep::Fraction(0.0));
        assert_eq!(start("2").unwrap(), StartStep::Steps(2));
        assert_eq!(start("250.0").unwrap(), StartStep::Steps(250));
        let e = start("1.5").unwrap_err();
        assert!(
            e.contains("start_step 1.5") && e.contains("whole number"),
            "{e}"
        );
        let e = start("-0.1").unwrap_err();
        assert!(e.contains("start_step -0.1 must be"), "{e}");
        assert!(start("nan").unwrap_err().contains("start_step NaN"));
        assert!(start("\"5%\"").is_err());
        // Values built in code are checked too.
        let c = SparsityConfig {
            start_step: StartStep::Steps(1),
            ..SparsityConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("must be > 1"), "{e}");
        let c = SparsityConfig {
            start_step: StartStep::Fraction(1.5),
            ..SparsityConfig::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("fraction 1.5"));
    }

    #[test]
    fn dense_steps_resolve_start_step() {
        let with = |s: StartStep| SparsityConfig {
            start_step: s,
            ..SparsityConfig::default()
        };
        assert_eq!(SparsityConfig::default().dense_steps(1000), 50);
        assert_eq!(SparsityConfig::default().dense_steps(10), 0); // floor(0.5)
        assert_eq!(SparsityConfig::default().dense_steps(39), 1); // floor(1.95)
        assert_eq!(with(StartStep::Fraction(0.1)).dense_steps(21_255), 2125);
        assert_eq!(with(StartStep::Fraction(0.29)).dense_steps(100), 29);
        assert_eq!(with(StartStep::Fraction(0.07)).dense_steps(100), 7);
        assert_eq!(with(StartStep::Fraction(1.0)).dense_steps(77), 77);
        assert_eq!(with(StartStep::Fraction(0.0)).dense_steps(77), 0);
        assert_eq!(with(StartStep::Steps(30)).dense_steps(1000), 30);
        assert_eq!(with(StartStep::Steps(30)).dense_steps(10), 30);
        let c = with(StartStep::Steps(30));
        assert!(!c.is_sparse_step(29, 100) && c.is_sparse_step(30, 100));
        assert_eq!(StartStep::Steps(3).to_string(), "3 steps");
        assert_eq!(StartStep::Fraction(0.05).to_string(), "0.05 of the steps");
    }

    #[test]
    fn answer_token_rules() {
        let c = SparsityConfig::default();
        assert_eq!(c.sparse_answer_probability(), 0.0);
        assert_eq!(c.expected_dense_tokens(24), 24);
        let c = parse("sparse_answer_fraction = 0.25").unwrap();
        assert_eq!(c.sparse_answer_probability(), 0.25);
        assert_eq!(c.expected_dense_tokens(24), 18);
        let c = parse("dense_answer_tokens = false\nsparse_answer_fraction = 0.25").unwrap();
        assert_eq!(c.sparse_answer_probability(), 1.0);
        assert_eq!(c.expected_dense_tokens(24), 0);
        assert!(parse("sparse_answer_fraction = 1.0").is_ok());
        for v in ["1.01", "-0.5", "nan"] {
            let e = err(&format!("sparse_answer_fraction = {v}"));
            assert!(
                e.contains("sparse_answer_fraction") && e.contains("outside [0, 1]"),
                "{e}"
            );
        }
    }

    #[test]
    fn estimator_rank_must_be_positive() {
        let e = err("estimator_rank = 0");
        assert!(e.contains("estimator_rank must be > 0"), "{e}");
        assert!(err("estimator_rank = -1").contains("estimator_rank"));
    }

    #[test]
    fn model_mismatch_is_a_warning() {
        let c = parse(CSR).unwrap();
        assert_eq!(c.model_warning("llama3-8b"), None);
        assert_eq!(c.model_warning("/models/Meta-Llama-3-8B/"), None);
        assert_eq!(c.model_warning("LLAMA3-8B"), None);
        let w = c.model_warning("/models/Meta-Llama-3.1-8B").unwrap();
        assert!(
            w.contains("`llama3-8b`") && w.contains("Meta-Llama-3.1-8B"),
            "{w}"
        );
        assert!(c.model_warning("llama2-7b").is_some());
        assert!(c.model_warning("").is_some());
        let c = parse("model = \"smollm2-135m\"").unwrap();
        assert_eq!(c.model_warning("HuggingFaceTB/SmolLM2-135M-Instruct"), None);
        assert_eq!(SparsityConfig::default().model_warning("anything"), None);
    }

    #[test]
    fn round_trips_through_toml() {
        let mut c = parse(CSR).unwrap();
        c.start_step = StartStep::Steps(40);
        c.mode = SelectionMode::Random;
        let text = c.to_toml_string();
        assert!(text.contains("layers = \"17-19,21-23,25-29\""), "{text}");
        assert!(text.contains("start_step = 40\n"), "{text}");
        assert_eq!(parse(&text).unwrap(), c);
        let d = SparsityConfig::default();
        assert_eq!(parse(&d.to_toml_string()).unwrap(), d);
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("sparsity-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "[[mlp]]\nlayers = \"17-\"\nsparsity = 0.9\n").unwrap();
        let e = SparsityConfig::from_file(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: cannot parse", path.display())) && e.contains("17-"),
            "{e}"
        );
        std::fs::write(&path, "[[mlp]]\nlayers = \"1\"\nsparsity = 1.0\n").unwrap();
        let e = SparsityConfig::from_file(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: invalid sparsity config", path.display())),
            "{e}"
        );
        std::fs::write(&path, CSR).unwrap();
        assert_eq!(
            SparsityConfig::from_file(&path).unwrap(),
            parse(CSR).unwrap()
        );
        let missing = dir.join("missing.toml");
        let e = SparsityConfig::from_file(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "cannot read sparsity config {}",
                missing.display()
            )),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
