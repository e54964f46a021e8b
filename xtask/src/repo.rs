//! Files the repository ships (`configs/`, `datasets/`), found from the repository root when a
//! command runs in another folder.
//!
//! Paths on the command line are the user's, relative to where they run the command; only a
//! relative path that does not exist there is looked up under the repository root, so
//! `cargo xtask finetune` works from any folder of the checkout and a user's own files keep
//! their meaning.

use std::path::{Path, PathBuf};

/// The root of this checkout (where the workspace `Cargo.toml` is), when the binary runs on the
/// machine it was built on.
pub fn root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    root.join("Cargo.toml")
        .is_file()
        .then(|| root.to_path_buf())
}

/// `path` itself, unless it is relative, missing from the current folder, and present under the
/// repository root: then that one.
pub fn shipped(path: impl AsRef<Path>) -> PathBuf {
    let path = path.as_ref();
    if path.is_relative() && !path.exists() {
        if let Some(candidate) = root().map(|root| root.join(path)) {
            if candidate.exists() {
                return candidate;
            }
        }
    }
    path.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_files_resolve_from_the_root_and_other_paths_stay() {
        let root = root().expect("tests run in the checkout");
        let config = Path::new("configs/train/tiny-default.toml");
        assert!(shipped(config).is_file());
        assert!(shipped(config).starts_with(&root) || config.is_file());
        let missing = Path::new("no/such/file.toml");
        assert_eq!(shipped(missing), missing);
        let absolute = root.join("README.md");
        assert_eq!(shipped(&absolute), absolute);
    }
}
