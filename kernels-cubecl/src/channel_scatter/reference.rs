//! The column scatter in burn tensor ops: a scatter-add of the kept columns into a zero (or
//! `base`) tensor; the column gather, a `select`.

use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor};

/// `kept` (`[rows, k]`) written into the columns `idx` of a `[rows, width]` zero tensor.
pub fn scatter_columns<B: Backend>(
    kept: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
    width: usize,
) -> Tensor<B, 2> {
    let [rows, _] = kept.dims();
    let zeros = Tensor::<B, 2>::zeros([rows, width], (&kept.device(), kept.dtype()));
    scatter_add_columns(zeros, kept, idx)
}

/// `base` (`[rows, width]`) with `kept` (`[rows, k]`) added into its columns `idx`.
pub fn scatter_add_columns<B: Backend>(
    base: Tensor<B, 2>,
    kept: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
) -> Tensor<B, 2> {
    let [rows, k] = kept.dims();
    let index = idx.reshape([1, k]).expand([rows, k]);
    base.scatter(1, index, kept, IndexingUpdateOp::Add)
}

/// The columns `idx` of `x` (`[rows, width]`), then zero columns up to `cols_out`:
/// `[rows, cols_out]`.
pub fn gather_columns<B: Backend>(
    x: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
    cols_out: usize,
) -> Tensor<B, 2> {
    let [rows, _] = x.dims();
    let [k] = idx.dims();
    let kept = x.select(1, idx);
    if cols_out == k {
        return kept;
    }
    let zeros = Tensor::zeros([rows, cols_out - k], (&kept.device(), kept.dtype()));
    Tensor::cat(vec![kept, zeros], 1)
}
