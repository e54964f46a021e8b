//! The padded gathers in burn tensor ops: a `select` of the kept rows (columns), then zeros
//! concatenated after them.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// Rows `idx` of `weight` (`[rows, cols]`), then zero rows up to `rows_out`: `[rows_out, cols]`.
///
/// # Panics
/// If `idx` holds more than `rows_out` indices.
pub fn gather_rows_padded<B: Backend>(
    weight: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
    rows_out: usize,
) -> Tensor<B, 2> {
    gather_padded(weight, idx, rows_out, 0)
}

/// Columns `idx` of `weight` (`[rows, cols]`), then zero columns up to `cols_out`:
/// `[rows, cols_out]`.
///
/// # Panics
/// If `idx` holds more than `cols_out` indices.
pub fn gather_columns_padded<B: Backend>(
    weight: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
    cols_out: usize,
) -> Tensor<B, 2> {
    gather_padded(weight, idx, cols_out, 1)
}

/// `weight.select(dim, idx)` followed by zeros along `dim` up to `len`.
fn gather_padded<B: Backend>(
    weight: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
    len: usize,
    dim: usize,
) -> Tensor<B, 2> {
    let [k] = idx.dims();
    assert!(
        k <= len,
        "gather padded: {k} indices do not fit in {len} channels"
    );
    let mut pad = weight.dims();
    pad[dim] = len - k;
    let zeros = || Tensor::<B, 2>::zeros(pad, (&weight.device(), weight.dtype()));
    if k == 0 {
        return zeros();
    }
    let kept = weight.clone().select(dim, idx);
    if k == len {
        return kept;
    }
    Tensor::cat(vec![kept, zeros()], dim)
}
