//! [`ChannelKeep`]: which channels a masked-dense SparseLoRA projection keeps on which token rows.
//! Its own module, below both `linear` (which applies it) and `sparse` (which builds it), so that
//! neither imports the other for it.

use burn::tensor::{backend::Backend, DType, Int, Tensor};

/// Which channels a masked-dense projection keeps on which token rows
/// (`SparseForward::channel_keep`): applied to an `[n, width]` activation it zeroes the
/// channels outside the kept set on the sparse rows and leaves the dense rows whole, exactly
/// (a 0/1 factor), with the same masking of the gradient. On burn-wgpu/burn-cuda one kernel
/// (`sparse_ops::mask_channels`): no `[n, width]` mask is ever built.
#[derive(Debug, Clone)]
pub struct ChannelKeep<B: Backend> {
    /// `[width]` 0/1 in the activation's dtype; `None` when every row is dense.
    keep: Option<Tensor<B, 1>>,
    /// `[n]` f32, 1 on the dense rows; `None` when every row is sparse.
    dense_rows: Option<Tensor<B, 1>>,
}

impl<B: Backend> ChannelKeep<B> {
    /// The channels `keep` (`[width]`, 0/1) on every row, or on the rows where `dense_rows`
    /// (`[n]` f32) is 0.
    pub fn new(keep: Tensor<B, 1>, dense_rows: Option<Tensor<B, 1>>) -> Self {
        Self {
            keep: Some(keep),
            dense_rows,
        }
    }

    /// The channels outside `kept` on every row, those in it zeroed: what a dense row adds to
    /// an input-sliced product that read only `kept` (`llama_burn`'s sliced o_proj).
    pub fn complement_of(kept: Tensor<B, 1, Int>, width: usize, dtype: DType) -> Self {
        Self::new(sparse_ops::drop_mask(kept, width, dtype), None)
    }

    /// Every channel on every row (all rows dense).
    pub fn all() -> Self {
        Self {
            keep: None,
            dense_rows: None,
        }
    }

    /// `x` (`[n, width]`) as the input of a frozen base whose input gradient the reference code
    /// drops (reference-compat, SPEC 5): no gradient through it on the sparse rows, the exact one
    /// on the dense rows, which the reference runs through the dense layer. The values are
    /// `x`'s exactly.
    pub fn detach_sparse_rows(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match (&self.keep, &self.dense_rows) {
            (None, _) => x,
            (Some(_), None) => x.detach(),
            (Some(_), Some(dense_rows)) => {
                let n = x.dims()[0];
                let dense = dense_rows.clone().reshape([n, 1]).cast(x.dtype());
                let frozen = x.clone().detach();
                // `x - frozen` is zero: only its gradient, on the dense rows, remains.
                frozen.clone() + (x - frozen) * dense
            }
        }
    }

    /// `x` (`[n, width]`) with the dropped channels zeroed on the sparse rows.
    pub fn apply(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.keep {
            Some(keep) => sparse_ops::mask_channels(x, keep.clone(), self.dense_rows.clone()),
            None => x,
        }
    }
}
