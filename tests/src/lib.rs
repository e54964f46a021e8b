//! Shared helpers of the end-to-end tests: where the fixtures are, and scratch folders.

use std::path::{Path, PathBuf};

/// The CPU backend the tests run on.
pub type TestBackend = burn::backend::Flex;

/// `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The repository's sibling `shared/` folder (data that is not committed here).
pub fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared")
        .join(rel)
}

/// A fresh, empty scratch folder unique to `name` (removed first if left over).
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sparselora-tests-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// The SmolLM2 GGUF and tokenizer: `$SMOLLM2_GGUF`, else the `cargo xtask fetch-model` cache.
/// `None` (the test skips) unless `SPARSELORA_REQUIRE_SMOLLM2` is set, which CI does.
pub fn smollm2_files() -> Option<(PathBuf, PathBuf)> {
    let gguf = std::env::var_os("SMOLLM2_GGUF")
        .map(PathBuf::from)
        .or_else(|| {
            let cache = std::env::var_os("SPARSELORA_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sparselora-rs"))
                })?;
            Some(cache.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"))
        });
    match gguf.filter(|p| p.is_file()) {
        Some(gguf) => {
            let tokenizer = gguf.with_file_name("tokenizer.json");
            Some((gguf, tokenizer))
        }
        None if std::env::var_os("SPARSELORA_REQUIRE_SMOLLM2").is_some() => {
            panic!("SmolLM2 GGUF not found: run `cargo xtask fetch-model smollm2-135m` first")
        }
        None => {
            eprintln!("skipping: SmolLM2 GGUF not fetched (cargo xtask fetch-model smollm2-135m)");
            None
        }
    }
}

/// One tensor of a safetensors file, owned.
#[derive(Clone)]
pub struct RawTensor {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: safetensors::Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// An f32 tensor.
    pub fn f32(name: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            name: name.to_owned(),
            dtype: safetensors::Dtype::F32,
            shape,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

/// Every tensor of a safetensors file, sorted by name.
pub fn read_safetensors(path: &Path) -> Vec<RawTensor> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<RawTensor> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| RawTensor {
            name,
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            bytes: view.data().to_vec(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Writes `tensors` as a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[RawTensor]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            let view =
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap();
            (t.name.clone(), view)
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}
