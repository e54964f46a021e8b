//! The channel mask in burn tensor ops: a 0/1 vector built by comparing every channel with every
//! kept index, and a multiply by the (row or column) mask materialised at full size.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};

/// `[width]` in `dtype`: 1 on the channels `idx`, 0 elsewhere.
pub fn keep_mask<B: Backend>(idx: Tensor<B, 1, Int>, width: usize, dtype: DType) -> Tensor<B, 1> {
    let [k] = idx.dims();
    let device = idx.device();
    let channels = Tensor::<B, 1, Int>::arange(0..width as i64, &device)
        .reshape([width, 1])
        .expand([width, k]);
    channels
        .equal(idx.reshape([1, k]).expand([width, k]))
        .any_dim(1)
        .reshape([width])
        .float()
        .cast(dtype)
}

/// `[width]` in `dtype`: 0 on the channels `idx`, 1 elsewhere.
pub fn drop_mask<B: Backend>(idx: Tensor<B, 1, Int>, width: usize, dtype: DType) -> Tensor<B, 1> {
    let keep = keep_mask(idx, width, dtype);
    keep.ones_like() - keep
}

/// `x * max(dense_rows[r], keep[c])`: the columns outside `keep` zeroed, except on the rows where
/// `dense_rows` is 1 (every row masked without it).
///
/// # Shapes
/// - `x`: `[rows, width]`, `keep`: `[width]` (0/1, any float dtype), `dense_rows`: `[rows]` (0/1)
pub fn mask_channels<B: Backend>(
    x: Tensor<B, 2>,
    keep: Tensor<B, 1>,
    dense_rows: Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    let [rows, width] = x.dims();
    let dtype = x.dtype();
    let keep = keep.cast(DType::F32).reshape([1, width]);
    let mask = match dense_rows {
        Some(dense) => dense
            .cast(DType::F32)
            .reshape([rows, 1])
            .expand([rows, width])
            .max_pair(keep.expand([rows, width])),
        None => keep,
    };
    x * mask.cast(dtype)
}
