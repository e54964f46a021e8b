//! Training checkpoints: the adapter (PEFT layout), the optimizer state, and the loop's position
//! (step, data position, seed), written atomically so that a crash never leaves a half-written
//! checkpoint under a final name and never loses the previous good one.
//!
//! Layout of an output folder:
//! ```text
//! out/checkpoint-000200/{adapter_config.json, adapter_model.safetensors, optimizer.mpk, state.json}
//! out/latest                 # name of the newest complete checkpoint
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of checkpoint I/O; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Filesystem error.
    #[error("checkpoint I/O on {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `state.json` is unreadable.
    #[error("checkpoint state {path} is corrupt: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Writing the checkpoint's content failed.
    #[error("writing checkpoint {path}: {message}")]
    Write {
        /// The temporary folder being written.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the training loop stands: everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Epoch of the next micro-batch.
    pub epoch: usize,
    /// Index, within that epoch's shuffled order, of the next micro-batch.
    pub batch_in_epoch: usize,
    /// The run's seed (shuffling, dropout and initialisation derive from it).
    pub seed: u64,
    /// Optimizer steps the run will make in total.
    pub total_steps: usize,
    /// Loss of the last step, for the log.
    pub last_loss: f64,
}

/// Name of the file in the output folder that names the newest complete checkpoint.
pub const LATEST: &str = "latest";
/// Name of the state file inside a checkpoint.
pub const STATE_FILE: &str = "state.json";

/// Writes a checkpoint for `state.step` into `out`: `write_tensors` fills a temporary folder
/// (adapter, optimizer), the state is added, the folder is renamed into place, then `latest` is
/// updated (also by rename). Keeps the newest `keep` checkpoints and removes older ones.
pub fn save_checkpoint<E: std::fmt::Display>(
    out: &Path,
    state: &TrainState,
    keep: usize,
    write_tensors: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<PathBuf, CheckpointError> {
    let name = format!("checkpoint-{:06}", state.step);
    let tmp = out.join(format!(".{name}.partial"));
    let dir = out.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    write_tensors(&tmp).map_err(|e| CheckpointError::Write {
        path: tmp.clone(),
        message: e.to_string(),
    })?;
    let json = serde_json::to_string_pretty(state).expect("TrainState serialises");
    std::fs::write(tmp.join(STATE_FILE), json).map_err(io(&tmp))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    let latest_tmp = out.join(".latest.partial");
    std::fs::write(&latest_tmp, &name).map_err(io(&latest_tmp))?;
    std::fs::rename(&latest_tmp, out.join(LATEST)).map_err(io(out))?;
    prune(out, keep)?;
    Ok(dir)
}

/// Removes all but the newest `keep` (at least one) complete checkpoints.
fn prune(out: &Path, keep: usize) -> Result<(), CheckpointError> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .map_err(io(out))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("checkpoint-"))
        })
        .collect();
    dirs.sort();
    let excess = dirs.len().saturating_sub(keep.max(1));
    for old in &dirs[..excess] {
        std::fs::remove_dir_all(old).map_err(io(old))?;
    }
    Ok(())
}

/// The newest complete checkpoint in `out`, if any, with its state.
pub fn latest_checkpoint(out: &Path) -> Result<Option<(PathBuf, TrainState)>, CheckpointError> {
    let latest = out.join(LATEST);
    if !latest.is_file() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&latest).map_err(io(&latest))?;
    let dir = out.join(name.trim());
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
    let state = serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt {
        path: state_path.clone(),
        message: e.to_string(),
    })?;
    Ok(Some((dir, state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize) -> TrainState {
        TrainState {
            step,
            epoch: 0,
            batch_in_epoch: step * 2,
            seed: 42,
            total_steps: 10,
            last_loss: 1.5,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("trainer-ckpt-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn saves_atomically_keeps_newest_and_finds_latest() {
        let out = scratch("keep");
        assert!(latest_checkpoint(&out).unwrap().is_none());
        for step in [2, 4, 6] {
            save_checkpoint(&out, &state(step), 2, |dir| {
                std::fs::write(dir.join("adapter"), "x")
            })
            .unwrap();
        }
        let (dir, s) = latest_checkpoint(&out).unwrap().unwrap();
        assert_eq!(s, state(6));
        assert!(dir.join("adapter").is_file());
        assert!(!out.join("checkpoint-000002").exists(), "oldest pruned");
        assert!(out.join("checkpoint-000004").exists());
    }

    #[test]
    fn a_failed_write_leaves_the_previous_checkpoint_latest() {
        let out = scratch("fail");
        save_checkpoint(&out, &state(2), 3, |_| Ok::<(), String>(())).unwrap();
        let err =
            save_checkpoint(&out, &state(4), 3, |_| Err("disk full".to_string())).unwrap_err();
        assert!(err.to_string().contains("disk full"));
        assert_eq!(latest_checkpoint(&out).unwrap().unwrap().1.step, 2);
        assert!(!out.join("checkpoint-000004").exists());
    }
}
