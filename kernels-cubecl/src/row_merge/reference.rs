//! Gathering, replacing and adding to rows in burn tensor ops (`select`, `select_assign`).

use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor};

/// The rows `rows` of `x`, in that order.
///
/// # Shapes
/// - `x`: `[n, d]`, `rows`: `[m]`; output `[m, d]`
pub fn gather_rows<B: Backend>(x: Tensor<B, 2>, rows: Tensor<B, 1, Int>) -> Tensor<B, 2> {
    x.select(0, rows)
}

/// `base` with row `rows[i]` replaced by `values[i]` (rows distinct): the rows are first set to
/// zero by a 0/1 multiply, then the values added in.
///
/// # Shapes
/// - `base`: `[n, d]`, `rows`: `[m]`, `values`: `[m, d]`; output `[n, d]`
pub fn replace_rows<B: Backend>(
    base: Tensor<B, 2>,
    rows: Tensor<B, 1, Int>,
    values: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let [n, _] = base.dims();
    let [m] = rows.dims();
    let device = base.device();
    let dtype = base.dtype();
    let marked = Tensor::<B, 2>::zeros([n, 1], (&device, dtype)).select_assign(
        0,
        rows.clone(),
        Tensor::ones([m, 1], (&device, dtype)),
        IndexingUpdateOp::Add,
    );
    let cleared = marked.neg() + 1.0; // 0 on the replaced rows, 1 elsewhere
    let written = base
        .zeros_like()
        .select_assign(0, rows, values, IndexingUpdateOp::Add);
    base * cleared + written
}

/// `base` with `values[i]` added to its row `rows[i]` (rows distinct).
///
/// # Shapes
/// - `base`: `[n, d]`, `rows`: `[m]`, `values`: `[m, d]`; output `[n, d]`
pub fn add_rows<B: Backend>(
    base: Tensor<B, 2>,
    rows: Tensor<B, 1, Int>,
    values: Tensor<B, 2>,
) -> Tensor<B, 2> {
    base.select_assign(0, rows, values, IndexingUpdateOp::Add)
}
