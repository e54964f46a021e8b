//! The row kernels: one unit per vector of the `m` rows moved (never a pass over all `n` rows),
//! gathering `x[rows]`, writing `values` into `dst[rows]`, or zeroing `dst[rows]`.

use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::{empty_device_contiguous_dtype, zeros_client};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch, elementwise_launch, vector_size};

/// What a unit does with row `rows[j]` of `big` and row `j` of `small`, vector `c`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RowMove {
    /// `small[j] = big[rows[j]]`.
    Gather,
    /// `big[rows[j]] = small[j]`.
    Write,
    /// `big[rows[j]] = 0` (`small` is not read).
    Zero,
}

/// One unit per vector of `N` elements of the `m` rows; `big` `[n, d]` and `small` `[m, d]` with
/// unit column strides and any row strides (cubecl may pad rows: a bf16 row of 576 is allocated
/// 640 wide on CUDA), `N` dividing both; `width_vectors = d / N`, `len = m * width_vectors`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn row_kernel<F: Float, N: Size, I: Int>(
    big: &mut Tensor<Vector<F, N>>,
    small: &mut Tensor<Vector<F, N>>,
    rows: &Tensor<I>,
    len: usize,
    width_vectors: usize,
    #[comptime] op: u32,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let i = ABSOLUTE_POS;
    if i >= len {
        terminate!();
    }
    let n = big.vector_size();
    let (j, c) = (i / width_vectors, i % width_vectors);
    let at = usize::cast_from(rows[j * rows.stride(0)]) * big.stride(0) / n + c;
    let here = j * small.stride(0) / n + c;
    if op == 0 {
        small[here] = big[at];
    } else if op == 1 {
        big[at] = small[here];
    } else {
        big[at] = Vector::<F, N>::new(F::new(0.0));
    }
}

fn op_code(op: RowMove) -> u32 {
    match op {
        RowMove::Gather => 0,
        RowMove::Write => 1,
        RowMove::Zero => 2,
    }
}

/// Launches [`row_kernel`]: `big` `[n, d]` and `small` `[m, d]` with unit column strides,
/// `rows` `[m]`.
fn launch<R: CubeRuntime>(
    big: &CubeTensor<R>,
    small: &CubeTensor<R>,
    rows: &CubeTensor<R>,
    op: RowMove,
) {
    let m = rows.meta.shape()[0];
    let d = big.meta.shape()[1];
    let dtype = big.dtype;
    let row_strides = [d, big.meta.strides()[0], small.meta.strides()[0]];
    let vector = vector_size(&[big, small], dtype, &row_strides);
    let len = m * d / vector;
    if len == 0 {
        return;
    }
    let (dim, count) = elementwise_launch(big, len);
    let client = big.client.clone();
    count_launch();
    // SAFETY: units past `len` return before any access; `j < m` indexes `rows` and `small`, and
    // the caller guarantees every row index is below `n`.
    unsafe {
        row_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address_type(&[big, small, rows]),
            vector,
            big.clone().into_tensor_arg(),
            small.clone().into_tensor_arg(),
            rows.clone().into_tensor_arg(),
            len,
            d / vector,
            op_code(op),
            [dtype.into(), rows.dtype.into()],
        )
    };
}

/// `x[rows]`, `[m, d]` contiguous.
pub(crate) fn gather_rows<R: CubeRuntime>(x: CubeTensor<R>, rows: CubeTensor<R>) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let (m, d) = (rows.meta.shape()[0], x.meta.shape()[1]);
    let out = empty_device_contiguous_dtype(
        x.client.clone(),
        x.device.clone(),
        Shape::new([m, d]),
        x.dtype,
    );
    launch(&x, &out, &rows, RowMove::Gather);
    out
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
        Some(values) => launch(&dst, &into_contiguous(values), &rows, RowMove::Write),
        // `small` is not read; a one-row stand-in (not `dst` itself: a buffer bound twice for
        // writing is invalid on wgpu).
        None => {
            let d = dst.meta.shape()[1];
            let unused = empty_device_contiguous_dtype(
                dst.client.clone(),
                dst.device.clone(),
                Shape::new([1, d]),
                dst.dtype,
            );
            launch(&dst, &unused, &rows, RowMove::Zero)
        }
    }
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
