//! The offline part of the estimator, built once per model and cached on disk (SPEC section 4):
//! for each frozen projection that a sparsity config makes sparse (gate, up, q, k, v), the rank-r
//! factors `w1` (`in x r`) and `w2` (`r x out`) of `W^T`, stored as safetensors under the
//! projection's name (LLaMA: `model.layers.{i}.mlp.gate_proj.w1` / `.w2`, same for up_proj and
//! self_attn.{q,k,v}_proj; another model: the names its [`ModelLayout`] gives).
//!
//! The file records the rank and an identity string of the model it was computed from; loading
//! checks both, so a cache made for another checkpoint or rank is refused instead of silently
//! estimating with the wrong weights. [`SvdCache::load_or_build`] is the entry point a run uses:
//! it reuses a valid cache and rebuilds (and rewrites) a missing, stale, incomplete or corrupt one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use llama_burn::{LlamaForCausalLM, LlamaProjection};
use lora::sparse::SparsityPlan;

use crate::layout::{EstimatedProjection, ModelLayout};
use crate::svd::{estimator_factors, FACTOR_TOLERANCE};

/// Projections the estimator needs factors for: the output-sliced ones (LLaMA's names of
/// [`EstimatedProjection::ALL`]).
pub const ESTIMATED: [LlamaProjection; 5] = [
    LlamaProjection::Gate,
    LlamaProjection::Up,
    LlamaProjection::Q,
    LlamaProjection::K,
    LlamaProjection::V,
];

/// v2: factors from the converged SVD (v1 caches hold 2-iteration factors, 23-112% off the exact
/// truncation on SmolLM2, and are rebuilt).
const FORMAT: &str = "sparselora-svd-v2";

/// Why a cache could not be written or used.
#[derive(Debug, thiserror::Error)]
pub enum SvdCacheError {
    /// Filesystem error.
    #[error("SVD cache {path}: {source}")]
    Io {
        /// The cache file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Not a valid cache file.
    #[error("SVD cache {path} is not usable: {message}")]
    Invalid {
        /// The cache file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The cache was made for another model or rank.
    #[error("SVD cache {path} is stale: it was built for {found}, this run needs {expected}; delete it or run `cargo xtask svd` to rebuild")]
    Stale {
        /// The cache file.
        path: PathBuf,
        /// `model=..., rank=...` recorded in the file.
        found: String,
        /// `model=..., rank=...` of this run.
        expected: String,
    },
    /// The cache had to be rebuilt (missing, stale, incomplete or corrupt) and the new one could
    /// not be written.
    #[error("SVD cache {path} {reason}; rebuilding it failed: {source}. Make its folder writable or choose another cache path")]
    RebuildFailed {
        /// The cache file.
        path: PathBuf,
        /// Why it was rebuilt ([`BuildReason`]'s text).
        reason: String,
        /// The error writing the rebuilt cache.
        source: Box<SvdCacheError>,
    },
}

/// What a cache lacks for a model and sparsity plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoverageError {
    /// A projection the plan makes sparse has no factors.
    #[error("no estimator factors for `{module}`, which the sparsity plan makes sparse")]
    Missing {
        /// Module path, `model.layers.3.mlp.gate_proj`.
        module: String,
    },
    /// Factors whose shapes do not fit the projection.
    #[error("estimator factors of `{module}` are w1 {w1:?}, w2 {w2:?}; the model needs w1 [{d_in}, r], w2 [r, {d_out}]")]
    Shape {
        /// Module path.
        module: String,
        /// Shape of `w1` found.
        w1: [usize; 2],
        /// Shape of `w2` found.
        w2: [usize; 2],
        /// The projection's input width.
        d_in: usize,
        /// The projection's output width.
        d_out: usize,
    },
}

/// Where the cache [`SvdCache::load_or_build`] returned came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOrigin {
    /// A valid cache file, reused.
    Reused,
    /// Computed now and written to the cache path, for the reason given.
    Built(BuildReason),
}

/// Why [`SvdCache::load_or_build`] rebuilt a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildReason {
    /// No file at the cache path.
    Missing,
    /// Made for another model identity or rank (`found` vs `expected`, as `model=.., rank=..`).
    Stale {
        /// Identity and rank recorded in the file.
        found: String,
        /// Identity and rank of this run.
        expected: String,
    },
    /// Valid, but lacking or misshaping factors this model and plan need.
    Incomplete(String),
    /// Not readable as a cache (truncated, not safetensors, wrong format or tensors).
    Corrupt(String),
}

impl std::fmt::Display for BuildReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => write!(f, "is missing"),
            Self::Stale { found, expected } => {
                write!(f, "is stale (built for {found}, this run needs {expected})")
            }
            Self::Incomplete(what) => write!(f, "is incomplete ({what})"),
            Self::Corrupt(what) => write!(f, "is corrupt ({what})"),
        }
    }
}

/// Whether a sparsity plan needs factors of LLaMA's `target` in `layer`: gate/up where the MLP is
/// sparse, q/k/v where attention is ([`EstimatedProjection::needed_by`] by LLaMA's names).
pub fn plan_needs(plan: &SparsityPlan, layer: usize, target: LlamaProjection) -> bool {
    EstimatedProjection::ALL
        .into_iter()
        .any(|p| LlamaProjection::from(p) == target && p.needed_by(plan, layer))
}

/// Where [`SvdCache::save`] writes before renaming into place: unique per process, so two runs
/// rebuilding the same cache never write into one file.
fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{name}.{}.partial", std::process::id()))
}

/// Estimator factors by module path (`model.layers.3.mlp.gate_proj`).
#[derive(Debug, Clone)]
pub struct SvdCache<B: Backend> {
    /// SVD rank.
    pub rank: usize,
    /// `(w1 [in, r], w2 [r, out])` per projection.
    pub factors: BTreeMap<String, (Tensor<B, 2>, Tensor<B, 2>)>,
    /// Projections built here whose factors' error bound stayed above [`FACTOR_TOLERANCE`]
    /// (flat spectra at the cut: random weights always have them), with the bound; empty for a
    /// cache read from a file.
    pub unconverged: BTreeMap<String, f64>,
}

impl<B: Backend> SvdCache<B> {
    /// Computes the factors of every projection in `ESTIMATED` of the layers `wanted` accepts,
    /// on the model's device: [`Self::from_weights`] on the model's named projection weights.
    pub fn build(
        model: &LlamaForCausalLM<B>,
        rank: usize,
        wanted: impl Fn(usize, LlamaProjection) -> bool,
    ) -> Self {
        Self::from_weights(model.projection_weights(&ESTIMATED, wanted), rank)
    }

    /// Computes the rank-`rank` factors of each named `[out, in]` weight (in the order given: the
    /// randomized SVD draws from the backend's generator), keyed by its name (a module path such
    /// as `model.layers.3.mlp.gate_proj`, which the selector looks factors up by).
    pub fn from_weights(
        weights: impl IntoIterator<Item = (String, Tensor<B, 2>)>,
        rank: usize,
    ) -> Self {
        let (mut factors, mut unconverged) = (BTreeMap::new(), BTreeMap::new());
        for (name, weight) in weights {
            // Detached: the factors are constants. Built from a weight that still requires a
            // gradient (the base before LoRA freezes it), they would carry autodiff history,
            // and every estimate made with them would add backward steps to the graph that
            // no backward ever consumes: memory that grows every step (it ran an 8B
            // SparseLoRA run out of memory within 25 steps).
            let built = estimator_factors(weight.detach(), rank);
            if built.error_bound > FACTOR_TOLERANCE {
                unconverged.insert(name.clone(), built.error_bound);
            }
            factors.insert(name, (built.w1.detach(), built.w2.detach()));
        }
        Self {
            rank,
            factors,
            unconverged,
        }
    }

    /// Writes the cache (f32) with its identity and rank, atomically (a temporary file renamed
    /// into place), creating the folder if needed.
    pub fn save(&self, path: &Path, model_identity: &str) -> Result<(), SvdCacheError> {
        let io = |source| SvdCacheError::Io {
            path: path.to_owned(),
            source,
        };
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, (w1, w2)) in &self.factors {
            for (suffix, t) in [("w1", w1), ("w2", w2)] {
                let dims = t.dims().to_vec();
                let values: Vec<f32> = t
                    .clone()
                    .cast(DType::F32)
                    .into_data()
                    .convert::<f32>()
                    .into_vec()
                    .unwrap_or_default();
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                tensors.push((format!("{name}.{suffix}"), dims, bytes));
            }
        }
        let views = tensors
            .iter()
            .map(|(name, dims, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, dims.clone(), bytes)
                    .map(|view| (name.clone(), view))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SvdCacheError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let metadata = std::collections::HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("model".to_string(), model_identity.to_string()),
            ("rank".to_string(), self.rank.to_string()),
        ]);
        let bytes =
            safetensors::serialize(views, Some(metadata)).map_err(|e| SvdCacheError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        if let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).map_err(io)?;
        }
        let tmp = partial_path(path);
        let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            // Best effort: a failed write must not leave a half file behind.
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(io)
    }

    /// Checks that the cache holds factors of the right shapes for every projection of the
    /// model laid out as `layout` that `plan` makes sparse (LLaMA's layout is its `LlamaConfig`).
    ///
    /// # Errors
    /// The first projection missing or misshapen.
    pub fn check_covers(
        &self,
        layout: &(impl ModelLayout + ?Sized),
        plan: &SparsityPlan,
    ) -> Result<(), CoverageError> {
        for layer in 0..layout.num_layers() {
            let needed = EstimatedProjection::ALL
                .into_iter()
                .filter(|p| p.needed_by(plan, layer));
            for target in needed {
                let module = layout.projection_path(layer, target);
                let Some((w1, w2)) = self.factors.get(&module) else {
                    return Err(CoverageError::Missing { module });
                };
                let [d_out, d_in] = layout.projection_shape(layer, target);
                let (s1, s2) = (w1.dims(), w2.dims());
                if s1[0] != d_in || s2[1] != d_out || s1[1] != s2[0] {
                    return Err(CoverageError::Shape {
                        module,
                        w1: s1,
                        w2: s2,
                        d_in,
                        d_out,
                    });
                }
            }
        }
        Ok(())
    }

    /// The cache a LLaMA run uses: [`Self::load_or_build_with`] on the model's config and
    /// its gate/up/q/k/v weights, on the model's device.
    ///
    /// # Errors
    /// As [`Self::load_or_build_with`].
    pub fn load_or_build(
        path: &Path,
        model_identity: &str,
        rank: usize,
        model: &LlamaForCausalLM<B>,
        plan: &SparsityPlan,
    ) -> Result<(Self, CacheOrigin), SvdCacheError> {
        let weights = || model.projection_weights(&ESTIMATED, |_, _| true);
        let (config, device) = (&model.config, &model.device());
        Self::load_or_build_with(path, model_identity, rank, config, plan, device, weights)
    }

    /// The cache a run uses: the file at `path` when it was built for `model_identity` at `rank`
    /// and covers every projection `plan` makes sparse in the model laid out as `layout`;
    /// otherwise [`Self::from_weights`] on `weights()` (every layer's gate/up/q/k/v, so one
    /// cache serves any plan), written to `path` atomically. A corrupt file is treated like a
    /// stale one: it is rebuilt and replaced, since nothing in it can be trusted. A file read is
    /// placed on `device`.
    ///
    /// The randomized SVD draws from the backend's generator: seed it first for a bit-identical
    /// rebuild.
    ///
    /// # Errors
    /// [`SvdCacheError::RebuildFailed`] when the cache had to be rebuilt and could not be
    /// written (read-only folder, disk full), naming why it was rebuilt; [`SvdCacheError::Io`]
    /// when the file exists but cannot be read.
    pub fn load_or_build_with<W>(
        path: &Path,
        model_identity: &str,
        rank: usize,
        layout: &(impl ModelLayout + ?Sized),
        plan: &SparsityPlan,
        device: &B::Device,
        weights: impl FnOnce() -> W,
    ) -> Result<(Self, CacheOrigin), SvdCacheError>
    where
        W: IntoIterator<Item = (String, Tensor<B, 2>)>,
    {
        let reason = match Self::load(path, model_identity, rank, device) {
            Ok(cache) => match cache.check_covers(layout, plan) {
                Ok(()) => return Ok((cache, CacheOrigin::Reused)),
                Err(gap) => BuildReason::Incomplete(gap.to_string()),
            },
            Err(SvdCacheError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                BuildReason::Missing
            }
            Err(SvdCacheError::Stale {
                found, expected, ..
            }) => BuildReason::Stale { found, expected },
            Err(SvdCacheError::Invalid { message, .. }) => BuildReason::Corrupt(message),
            Err(other) => return Err(other),
        };
        let cache = Self::from_weights(weights(), rank);
        cache
            .save(path, model_identity)
            .map_err(|source| SvdCacheError::RebuildFailed {
                path: path.to_owned(),
                reason: reason.to_string(),
                source: Box::new(source),
            })?;
        Ok((cache, CacheOrigin::Built(reason)))
    }

    /// Loads a cache, refusing one made for another model identity or rank.
    pub fn load(
        path: &Path,
        model_identity: &str,
        rank: usize,
        device: &B::Device,
    ) -> Result<Self, SvdCacheError> {
        let invalid = |message: String| SvdCacheError::Invalid {
            path: path.to_owned(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|source| SvdCacheError::Io {
            path: path.to_owned(),
            source,
        })?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| invalid(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            let found = meta.get("format").map_or("no format", String::as_str);
            return Err(invalid(format!("not a {FORMAT} file ({found})")));
        }
        let found = format!(
            "model={}, rank={}",
            meta.get("model").map_or("?", String::as_str),
            meta.get("rank").map_or("?", String::as_str)
        );
        let expected = format!("model={model_identity}, rank={rank}");
        if found != expected {
            return Err(SvdCacheError::Stale {
                path: path.to_owned(),
                found,
                expected,
            });
        }
        let file =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| invalid(e.to_string()))?;
        let mut parts: BTreeMap<String, [Option<Tensor<B, 2>>; 2]> = BTreeMap::new();
        for (name, view) in file.tensors() {
            let (module, which) = match name.rsplit_once('.') {
                Some((m, "w1")) => (m.to_owned(), 0),
                Some((m, "w2")) => (m.to_owned(), 1),
                _ => return Err(invalid(format!("unexpected tensor `{name}`"))),
            };
            let shape = view.shape().to_vec();
            if view.dtype() != safetensors::Dtype::F32 || shape.len() != 2 {
                return Err(invalid(format!("tensor `{name}` is not a 2-d f32 matrix")));
            }
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let tensor = Tensor::from_data(
                TensorData::new(values, [shape[0], shape[1]]),
                (device, DType::F32),
            );
            parts.entry(module).or_default()[which] = Some(tensor);
        }
        let mut factors = BTreeMap::new();
        for (module, [w1, w2]) in parts {
            match (w1, w2) {
                (Some(w1), Some(w2)) => {
                    factors.insert(module, (w1, w2));
                }
                _ => return Err(invalid(format!("`{module}` lacks w1 or w2"))),
            }
        }
        Ok(Self {
            rank,
            factors,
            unconverged: BTreeMap::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lora::sparse::Block;

    type B = burn::backend::Flex;

    #[test]
    fn factors_carry_no_autodiff_history_even_from_trainable_weights() {
        type Ad = burn::backend::Autodiff<B>;
        let device = Default::default();
        let model = llama_burn::LlamaConfig::preset("tiny")
            .unwrap()
            .init_random::<Ad>(&device);
        let weight = model.model.layers[0].mlp.gate_proj.weight.val();
        assert!(
            weight.is_require_grad(),
            "the probe needs a trainable weight"
        );
        let cache = SvdCache::build(&model, 4, |_, _| true);
        for (name, (w1, w2)) in &cache.factors {
            assert!(
                !w1.is_require_grad() && !w2.is_require_grad(),
                "{name} is tracked"
            );
        }
        // An estimate made with them is untracked too: nothing is added to the graph.
        let (w1, w2) = cache.factors.values().next().unwrap();
        let x = Tensor::<Ad, 2>::random(
            [3, w1.dims()[0]],
            burn::tensor::Distribution::Default,
            &device,
        );
        assert!(!x.matmul(w1.clone()).matmul(w2.clone()).is_require_grad());
    }

    fn tiny() -> LlamaForCausalLM<B> {
        let device = Default::default();
        B::seed(&device, 5);
        llama_burn::LlamaConfig::preset("tiny")
            .unwrap()
            .init_random::<B>(&device)
    }

    #[test]
    fn builds_saves_and_loads_with_identity_checks() {
        let model = tiny();
        // SPEC keys: gate/up of the MLP, q/k/v of attention; only the layers asked for.
        let cache = SvdCache::build(&model, 4, |layer, _| layer == 1);
        assert_eq!(cache.factors.len(), 5);
        let (w1, w2) = &cache.factors["model.layers.1.mlp.gate_proj"];
        assert_eq!((w1.dims(), w2.dims()), ([64, 4], [4, 176]));
        assert!(cache
            .factors
            .contains_key("model.layers.1.self_attn.k_proj"));

        let dir = std::env::temp_dir().join(format!("svd-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("svd-r4.safetensors");
        cache.save(&path, "tiny@seed5").unwrap();
        let loaded = SvdCache::<B>::load(&path, "tiny@seed5", 4, &Default::default()).unwrap();
        assert_eq!(loaded.factors.len(), 5);
        let (l1, _) = &loaded.factors["model.layers.1.mlp.gate_proj"];
        l1.clone()
            .into_data()
            .assert_eq(&w1.clone().into_data(), true);

        for (identity, rank) in [("other-model", 4), ("tiny@seed5", 8)] {
            let err = SvdCache::<B>::load(&path, identity, rank, &Default::default()).unwrap_err();
            assert!(matches!(err, SvdCacheError::Stale { .. }), "{err}");
            assert!(err.to_string().contains("tiny@seed5"), "{err}");
        }
        std::fs::write(&path, b"garbage").unwrap();
        let err = SvdCache::<B>::load(&path, "tiny@seed5", 4, &Default::default()).unwrap_err();
        assert!(matches!(err, SvdCacheError::Invalid { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("svd-cache-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mlp_sparse_in_layer_1() -> SparsityPlan {
        let mut plan = SparsityPlan::dense(2);
        plan.set(1, Block::Mlp, 0.5).unwrap();
        plan
    }

    #[test]
    fn load_or_build_reuses_valid_caches_and_rebuilds_stale_ones() {
        let model = tiny();
        let plan = mlp_sparse_in_layer_1();
        let dir = scratch("reuse");
        let path = dir.join("svd-r4.safetensors");
        let load = |identity: &str, rank: usize| {
            SvdCache::load_or_build(&path, identity, rank, &model, &plan).unwrap()
        };

        let (built, origin) = load("tiny@seed5", 4);
        assert_eq!(origin, CacheOrigin::Built(BuildReason::Missing));
        // Every layer, not only the plan's: one cache serves any plan.
        assert_eq!(built.factors.len(), 2 * ESTIMATED.len());
        let (reused, origin) = load("tiny@seed5", 4);
        assert_eq!(origin, CacheOrigin::Reused);
        let key = "model.layers.1.mlp.up_proj";
        reused.factors[key]
            .1
            .clone()
            .into_data()
            .assert_eq(&built.factors[key].1.clone().into_data(), true);

        let (_, origin) = load("tiny@seed6", 4);
        assert!(
            matches!(&origin, CacheOrigin::Built(BuildReason::Stale { found, .. }) if found.contains("tiny@seed5")),
            "{origin:?}"
        );
        let (rank8, origin) = load("tiny@seed6", 8);
        assert!(
            matches!(origin, CacheOrigin::Built(BuildReason::Stale { .. })),
            "{origin:?}"
        );
        assert_eq!(rank8.factors[key].0.dims(), [64, 8]);
        assert_eq!(load("tiny@seed6", 8).1, CacheOrigin::Reused);

        // A valid file lacking a layer the plan needs (built for layer 0 only).
        SvdCache::build(&model, 8, |layer, _| layer == 0)
            .save(&path, "tiny@seed6")
            .unwrap();
        let (_, origin) = load("tiny@seed6", 8);
        assert!(
            matches!(&origin, CacheOrigin::Built(BuildReason::Incomplete(what)) if what.contains("model.layers.1.mlp.gate_proj")),
            "{origin:?}"
        );
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["svd-r4.safetensors"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_or_build_replaces_a_corrupt_cache_or_says_why_it_cannot() {
        let model = tiny();
        let plan = mlp_sparse_in_layer_1();
        let dir = scratch("corrupt");
        let path = dir.join("svd-r4.safetensors");
        std::fs::write(&path, b"not a safetensors file").unwrap();
        // A folder that does not exist yet is created.
        let nested = dir.join("new/folder/svd-r4.safetensors");
        let (_, origin) = SvdCache::load_or_build(&nested, "tiny", 4, &model, &plan).unwrap();
        assert_eq!(origin, CacheOrigin::Built(BuildReason::Missing));
        assert!(nested.is_file());
        let (_, origin) = SvdCache::load_or_build(&path, "tiny", 4, &model, &plan).unwrap();
        assert!(
            matches!(origin, CacheOrigin::Built(BuildReason::Corrupt(_))),
            "{origin:?}"
        );
        SvdCache::<B>::load(&path, "tiny", 4, &Default::default()).unwrap();

        // Unwritable: a folder squats on the temporary name (permissions would not stop root).
        std::fs::write(&path, b"truncated").unwrap();
        std::fs::create_dir_all(partial_path(&path)).unwrap();
        let err = SvdCache::load_or_build(&path, "tiny", 4, &model, &plan).unwrap_err();
        assert!(matches!(err, SvdCacheError::RebuildFailed { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("is corrupt"), "{message}");
        assert!(message.contains("svd-r4.safetensors"), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn coverage_names_missing_and_misshapen_factors() {
        let model = tiny();
        let config = &model.config;
        let plan = mlp_sparse_in_layer_1();
        let mut cache = SvdCache::build(&model, 4, |layer, _| layer == 1);
        cache.check_covers(config, &plan).unwrap();
        // Attention of layer 1 is dense: its factors are not needed.
        cache.factors.remove("model.layers.1.self_attn.q_proj");
        cache.check_covers(config, &plan).unwrap();
        let (w1, _) = cache.factors["model.layers.1.mlp.gate_proj"].clone();
        let up = cache.factors.get_mut("model.layers.1.mlp.up_proj").unwrap();
        up.1 = w1;
        let err = cache.check_covers(config, &plan).unwrap_err();
        assert!(matches!(err, CoverageError::Shape { .. }), "{err}");
        cache.factors.remove("model.layers.1.mlp.gate_proj");
        let err = cache.check_covers(config, &plan).unwrap_err();
        assert_eq!(
            err,
            CoverageError::Missing {
                module: "model.layers.1.mlp.gate_proj".into()
            }
        );
    }
}
