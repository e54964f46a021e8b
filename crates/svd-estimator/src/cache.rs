//! The offline part of the estimator, built once per model and cached on disk (SPEC section 4):
//! for each frozen projection that a sparsity config makes sparse (gate, up, q, k, v), the rank-r
//! factors `w1` (`in x r`) and `w2` (`r x out`) of `W^T`, stored as safetensors under
//! `model.layers.{i}.mlp.gate_proj.w1` / `.w2` (same for up_proj and self_attn.{q,k,v}_proj).
//!
//! The file records the rank and an identity string of the model it was computed from; loading
//! checks both, so a cache made for another checkpoint or rank is refused instead of silently
//! estimating with the wrong weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType, Tensor, TensorData};
use llama_burn::adapters::module_path;
use llama_burn::LlamaForCausalLM;
use lora::LoraTarget;

use crate::svd::estimator_factors;

/// Projections the estimator needs factors for: the output-sliced ones.
pub const ESTIMATED: [LoraTarget; 5] = [
    LoraTarget::Gate,
    LoraTarget::Up,
    LoraTarget::Q,
    LoraTarget::K,
    LoraTarget::V,
];

const FORMAT: &str = "sparselora-svd-v1";

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
}

/// Estimator factors by HF module path (`model.layers.3.mlp.gate_proj`).
#[derive(Debug, Clone)]
pub struct SvdCache<B: Backend> {
    /// SVD rank.
    pub rank: usize,
    /// `(w1 [in, r], w2 [r, out])` per projection.
    pub factors: BTreeMap<String, (Tensor<B, 2>, Tensor<B, 2>)>,
}

impl<B: Backend> SvdCache<B> {
    /// Computes the factors of every projection in `ESTIMATED` of the layers `wanted` accepts,
    /// on the model's device.
    pub fn build(
        model: &LlamaForCausalLM<B>,
        rank: usize,
        wanted: impl Fn(usize, LoraTarget) -> bool,
    ) -> Self {
        let mut factors = BTreeMap::new();
        for (i, layer) in model.model.layers.iter().enumerate() {
            for target in ESTIMATED.into_iter().filter(|&t| wanted(i, t)) {
                let weight = layer.projection(target).weight.val();
                factors.insert(module_path(i, target), estimator_factors(weight, rank));
            }
        }
        Self { rank, factors }
    }

    /// Writes the cache (f32) with its identity and rank, atomically.
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
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
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
            return Err(invalid(format!("not a {FORMAT} file")));
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
        Ok(Self { rank, factors })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

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
    }
}
