//! Per-step training metrics, appended as JSON Lines to `metrics.jsonl` in the output folder
//! (one object per optimizer step), so a run can be plotted or compared while it runs and after
//! it was resumed.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer step (1-based: the number of steps done after this one).
    pub step: usize,
    /// Epoch the step's micro-batches came from.
    pub epoch: usize,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real (non-padding) tokens processed in the step.
    pub tokens: usize,
    /// Real tokens per second of wall-clock time.
    pub tokens_per_s: f64,
    /// Wall-clock time of the step, seconds.
    pub step_time_s: f64,
    /// Whether the step ran the SparseLoRA path.
    #[serde(default)]
    pub sparse: bool,
    /// Seconds of the step spent choosing channels (the estimator's share of `step_time_s`),
    /// on the sparse steps where it is measured (one in `ESTIMATOR_TIMING_EVERY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimator_s: Option<f64>,
    /// Analytic FLOPs of the step relative to the same step under dense LoRA (SPEC 9); `None`
    /// for dense runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flops_ratio: Option<f64>,
}

/// Appends [`StepMetrics`] to a JSONL file.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens (appending) `dir/metrics.jsonl`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(Self { path, file })
    }

    /// Appends one line and flushes it.
    pub fn write(&mut self, m: &StepMetrics) -> std::io::Result<()> {
        let line = serde_json::to_string(m).map_err(std::io::Error::other)?;
        writeln!(self.file, "{line}")?;
        self.file.flush()
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads a metrics file back (for plots and tests), skipping steps that a resumed run
    /// repeated so each step appears once (the last write wins).
    pub fn read(path: &Path) -> std::io::Result<Vec<StepMetrics>> {
        let text = std::fs::read_to_string(path)?;
        let mut by_step = std::collections::BTreeMap::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let m: StepMetrics = serde_json::from_str(line).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}:{}: {e}", path.display(), i + 1),
                )
            })?;
            by_step.insert(m.step, m);
        }
        Ok(by_step.into_values().collect())
    }
}
