//! The padded gather kernels: one pass over the output, each element reading its kept weight
//! value or writing a zero. Rows are copied in vectors (a row of `weight` is contiguous); columns
//! are written in vectors but read one element at a time (neighbouring kept columns are not
//! neighbours in `weight`).

use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch, elementwise_launch, vector_size};

/// `out[i, v] = weight[idx[i], v]` for `i < k`, zero for `k <= i < rows_out`; a row is `cols_v`
/// vectors of `N`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn gather_rows_kernel<F: Float, M: Int, N: Size>(
    weight: &Tensor<Vector<F, N>>,
    idx: &Tensor<M>,
    out: &mut Tensor<Vector<F, N>>,
    rows_out: usize,
    cols_v: usize,
    k: usize,
    #[define(F, M)] _dtypes: [StorageType; 2],
) {
    let at = ABSOLUTE_POS;
    if at >= rows_out * cols_v {
        terminate!();
    }
    let (i, v) = (at / cols_v, at % cols_v);
    if i < k {
        let r = usize::cast_from(idx[i * idx.stride(0)]);
        out[at] = weight[r * cols_v + v];
    } else {
        out[at] = Vector::<F, N>::new(F::new(0.0));
    }
}

/// `out[r, j] = weight[r, idx[j]]` for `j < k`, zero for `k <= j < cols_out`; a unit writes a
/// vector of `N` output columns, gathering its values one by one.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn gather_columns_kernel<F: Float, M: Int, N: Size>(
    weight: &Tensor<F>,
    idx: &Tensor<M>,
    out: &mut Tensor<Vector<F, N>>,
    rows: usize,
    cols: usize,
    cols_out_v: usize,
    k: usize,
    #[define(F, M)] _dtypes: [StorageType; 2],
) {
    let at = ABSOLUTE_POS;
    if at >= rows * cols_out_v {
        terminate!();
    }
    let (r, jv) = (at / cols_out_v, at % cols_out_v);
    let mut value = Vector::<F, N>::new(F::new(0.0));
    #[unroll]
    for i in 0..N::value() {
        let j = jv * N::value() + i;
        if j < k {
            let c = usize::cast_from(idx[j * idx.stride(0)]);
            value[i] = weight[r * cols + c];
        }
    }
    out[at] = value;
}

/// Rows `idx` (`[k]`, each below `weight`'s row count) of `weight` (`[rows, cols]`, float), then
/// zero rows: contiguous `[rows_out, cols]`, `rows_out >= k`.
pub(crate) fn gather_rows<R: CubeRuntime>(
    weight: CubeTensor<R>,
    idx: CubeTensor<R>,
    rows_out: usize,
) -> CubeTensor<R> {
    let weight = into_contiguous(weight);
    let cols = weight.meta.shape()[1];
    let k = idx.meta.shape()[0];
    let dtype = weight.dtype;
    let out = empty_device_contiguous_dtype(
        weight.client.clone(),
        weight.device.clone(),
        Shape::new([rows_out, cols]),
        dtype,
    );
    let vector = vector_size(&[&weight, &out], dtype, &[cols]);
    let cols_v = cols / vector;
    let client = weight.client.clone();
    let (dim, count) = elementwise_launch(&out, rows_out * cols_v);
    let address = address_type(&[&weight, &idx, &out]);
    let dtypes = [dtype.into(), idx.dtype.into()];
    count_launch();
    // SAFETY: `at < rows_out * cols_v` indexes `out`; `i < k` indexes `idx`; each `idx[i]` is a
    // row of `weight` (the caller's to ensure), so `r * cols_v + v` indexes it.
    unsafe {
        gather_rows_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address,
            vector,
            weight.into_tensor_arg(),
            idx.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows_out,
            cols_v,
            k,
            dtypes,
        )
    };
    out
}

/// Columns `idx` (`[k]`, each below `weight`'s column count) of `weight` (`[rows, cols]`,
/// float), then zero columns: contiguous `[rows, cols_out]`, `cols_out >= k`.
pub(crate) fn gather_columns<R: CubeRuntime>(
    weight: CubeTensor<R>,
    idx: CubeTensor<R>,
    cols_out: usize,
) -> CubeTensor<R> {
    let weight = into_contiguous(weight);
    let (rows, cols) = (weight.meta.shape()[0], weight.meta.shape()[1]);
    let k = idx.meta.shape()[0];
    let dtype = weight.dtype;
    let out = empty_device_contiguous_dtype(
        weight.client.clone(),
        weight.device.clone(),
        Shape::new([rows, cols_out]),
        dtype,
    );
    let vector = vector_size(&[&out], dtype, &[cols_out]);
    let cols_out_v = cols_out / vector;
    let client = weight.client.clone();
    let (dim, count) = elementwise_launch(&out, rows * cols_out_v);
    let address = address_type(&[&weight, &idx, &out]);
    let dtypes = [dtype.into(), idx.dtype.into()];
    count_launch();
    // SAFETY: `at < rows * cols_out_v` indexes `out` in vectors; `j < k` indexes `idx`; each
    // `idx[j]` is a column of `weight` (the caller's to ensure), so `r * cols + c` indexes it.
    unsafe {
        gather_columns_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address,
            vector,
            weight.into_tensor_arg(),
            idx.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows,
            cols,
            cols_out_v,
            k,
            dtypes,
        )
    };
    out
}
