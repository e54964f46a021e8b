//! How a sparse forward chooses its channels: the one `SelectionMode` of the workspace, read from
//! sparsity configs (`mode = "estimated"`), taken by the selector, the FLOPs model and the
//! command line (`--selection`, with the `clap` feature).

use serde::{Deserialize, Serialize};

/// Where the activations that score channels come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SelectionMode {
    /// The rank-r SVD factors: `x w1 w2 ~ x W^T` (SparseLoRA's estimator, SPEC 4).
    #[default]
    Estimated,
    /// The same metrics from the true projections `x W^T`: the best the estimator could do, to
    /// measure it against. Costs a dense projection per block.
    Oracle,
    /// Uniformly random channel sets of the sizes the plan gives, a fresh draw per call
    /// (deterministic in [`SelectorOptions::seed`](crate::SelectorOptions::seed), the layer, the
    /// block and the call count), mapped through the same GQA rules: the baseline an estimator
    /// must beat.
    Random,
}

impl SelectionMode {
    /// The name used in configs and on the command line: `estimated`, `oracle` or `random`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Estimated => "estimated",
            Self::Oracle => "oracle",
            Self::Random => "random",
        }
    }
}
