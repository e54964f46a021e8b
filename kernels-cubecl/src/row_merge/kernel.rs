//! The row kernels: one unit per vector of the `m` rows moved (never a pass over all `n` rows),
//! writing `values` into `dst[rows]` or zeroing `dst[rows]`; gathering `x[rows]` is
//! [`crate::gather_padded`]'s row gather with no padding rows.

use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::{empty_device_contiguous_dtype, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch, elementwise_launch, vector_size};

/// `dst[rows[j]] = values[j]`, `dst[rows[j]] += values[j]` with `add` (rows distinct), or
/// `dst[rows[j]] = 0` with `zero` (`values` is not read then): one unit per vector of `N`
/// elements of the `m` rows. `dst` `[n, d]` and `values` `[m, d]` have unit column strides and
/// any row strides (cubecl may pad rows: a bf16 row of 576 is allocated 640 wide on CUDA), `N`
/// dividing both; `width_vectors = d / N`, `len = m * width_vectors`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn row_kernel<F: Float, N: Size, I: Int>(
    dst: &mut Tensor<Vector<F, N>>,
    values: &Tensor<Vector<F, N>>,
    rows: &Tensor<I>,
    len: usize,
    width_vectors: usize,
    #[comptime] zero: bool,
    #[comptime] add: bool,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let i = ABSOLUTE_POS;
    if i >= len {
        terminate!();
    }
    let n = dst.vector_size();
    let (j, c) = (i / width_vectors, i % width_vectors);
    let at = usize::cast_from(rows[j * rows.stride(0)]) * dst.stride(0) / n + c;
    if zero {
        dst[at] = Vector::<F, N>::new(F::new(0.0));
    } else if add {
        let sum = Vector::<f32, N>::cast_from(dst[at])
            + Vector::<f32, N>::cast_from(values[j * values.stride(0) / n + c]);
        dst[at] = Vector::<F, N>::cast_from(sum);
    } else {
        dst[at] = values[j * values.stride(0) / n + c];
    }
}

/// What [`row_kernel`] writes into the rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RowWrite {
    Set,
    Add,
    Zero,
}

/// Launches [`row_kernel`]: `dst` `[n, d]` and `values` `[m, d]` with unit column strides,
/// `rows` `[m]`.
fn launch<R: CubeRuntime>(
    dst: &CubeTensor<R>,
    values: &CubeTensor<R>,
    rows: &CubeTensor<R>,
    mode: RowWrite,
) {
    let m = rows.meta.shape()[0];
    let d = dst.meta.shape()[1];
    let dtype = dst.dtype;
    let row_strides = [d, dst.meta.strides()[0], values.meta.strides()[0]];
    let vector = vector_size(&[dst, values], dtype, &row_strides);
    let len = m * d / vector;
    if len == 0 {
        return;
    }
    let (dim, count) = elementwise_launch(dst, len);
    let client = dst.client.clone();
    count_launch();
    // SAFETY: units past `len` return before any access; `j < m` indexes `rows` and `values`,
    // and the caller guarantees every row index is below `n`.
    unsafe {
        row_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address_type(&[dst, values, rows]),
            vector,
            dst.clone().into_tensor_arg(),
            values.clone().into_tensor_arg(),
            rows.clone().into_tensor_arg(),
            len,
            d / vector,
            mode == RowWrite::Zero,
            mode == RowWrite::Add,
            [dtype.into(), rows.dtype.into()],
        )
    };
}

/// `x[rows]`, `[m, d]` contiguous.
pub(crate) fn gather_rows<R: CubeRuntime>(x: CubeTensor<R>, rows: CubeTensor<R>) -> CubeTensor<R> {
    let m = rows.meta.shape()[0];
    crate::gather_padded::kernel::gather_rows(x, rows, m)
}

/// `dst` (`[n, d]`) with its rows `rows` replaced by `values` (`[m, d]`), or zeroed (`values`
/// `None`): in `dst`'s own buffer when nothing else holds it, else in a copy.
pub(crate) fn set_rows<R: CubeRuntime>(
    dst: CubeTensor<R>,
    rows: CubeTensor<R>,
    values: Option<CubeTensor<R>>,
) -> CubeTensor<R> {
    let dst = writable(dst);
    match values {
        Some(values) => launch(&dst, &into_contiguous(values), &rows, RowWrite::Set),
        // `values` is not read; a one-row stand-in (not `dst` itself: the same buffer bound
        // twice, once for writing, is invalid on wgpu).
        None => {
            let d = dst.meta.shape()[1];
            let unused = empty_device_contiguous_dtype(
                dst.client.clone(),
                dst.device.clone(),
                Shape::new([1, d]),
                dst.dtype,
            );
            launch(&dst, &unused, &rows, RowWrite::Zero)
        }
    }
    dst
}

/// `dst` (`[n, d]`) with `values` (`[m, d]`) added to its rows `rows` (distinct), in f32 with one
/// rounding: in `dst`'s own buffer when nothing else holds it, else in a copy.
pub(crate) fn add_rows<R: CubeRuntime>(
    dst: CubeTensor<R>,
    rows: CubeTensor<R>,
    values: CubeTensor<R>,
) -> CubeTensor<R> {
    let dst = writable(dst);
    launch(&dst, &into_contiguous(values), &rows, RowWrite::Add);
    dst
}

/// A zero `[n, d]` with `values` (`[m, d]`) in its rows `rows`.
pub(crate) fn scatter_rows<R: CubeRuntime>(
    values: CubeTensor<R>,
    rows: CubeTensor<R>,
    n: usize,
) -> CubeTensor<R> {
    let d = values.meta.shape()[1];
    let zeros = zeros_client(
        values.client.clone(),
        values.device.clone(),
        Shape::new([n, d]),
        values.dtype,
    );
    set_rows(zeros, rows, Some(values))
}

/// `t` with unit column strides and ours alone to write: itself when it is, else a copy (whose
/// rows may be padded: the kernel follows row strides).
fn writable<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    let t = into_contiguous(t);
    if t.handle.can_mut() {
        t
    } else {
        t.copy()
    }
}
