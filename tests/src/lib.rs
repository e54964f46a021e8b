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
