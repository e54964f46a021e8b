//! The channel mask kernels: a `[width]` 0/1 vector from the kept indices (clear, then one unit
//! per kept index), and one vectorised pass `out = x * keep[c]` (or `x` on a dense row).

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch, elementwise_launch, vector_size};

/// `keep[c] = 0` for every channel `c` (1 for the `dropped` vector).
#[cube(launch_unchecked, address_type = "dynamic")]
fn clear_kernel<F: Float>(
    keep: &mut Tensor<F>,
    width: usize,
    #[comptime] dropped: bool,
    #[define(F)] _dtype: StorageType,
) {
    let c = ABSOLUTE_POS;
    if c < width {
        keep[c] = if dropped { F::new(1.0) } else { F::new(0.0) };
    }
}

/// `keep[idx[j]] = 1` for every kept position `j` (0 for the `dropped` vector).
#[cube(launch_unchecked, address_type = "dynamic")]
fn set_kernel<F: Float, M: Int>(
    idx: &Tensor<M>,
    keep: &mut Tensor<F>,
    k: usize,
    #[comptime] dropped: bool,
    #[define(F, M)] _dtypes: [StorageType; 2],
) {
    let j = ABSOLUTE_POS;
    if j < k {
        let c = usize::cast_from(idx[j * idx.stride(0)]);
        keep[c] = if dropped { F::new(0.0) } else { F::new(1.0) };
    }
}

/// `out[i] = x[i] * keep[c]`, or `x[i]` where the row is dense (`dense[r] != 0`), over vectors of
/// `N` elements along the width (`width_vectors` per row).
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn mask_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    keep: &Tensor<Vector<F, N>>,
    dense: &Tensor<f32>,
    out: &mut Tensor<Vector<F, N>>,
    len: usize,
    width_vectors: usize,
    #[comptime] has_dense: bool,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= len {
        terminate!();
    }
    let (r, c) = (i / width_vectors, i % width_vectors);
    let mut dense_row = false;
    if has_dense {
        dense_row = dense[r] != 0.0f32;
    }
    if dense_row {
        out[i] = x[i];
    } else {
        out[i] = x[i] * keep[c];
    }
}

/// The `[width]` keep vector of `idx` (int, each below `width`) in `dtype`: 1 on `idx`, or with
/// `dropped` its complement (0 on `idx`, 1 elsewhere).
pub(crate) fn keep_mask<R: CubeRuntime>(
    idx: CubeTensor<R>,
    width: usize,
    dtype: DType,
    dropped: bool,
) -> CubeTensor<R> {
    let k = idx.meta.shape()[0];
    let keep = empty_device_contiguous_dtype(
        idx.client.clone(),
        idx.device.clone(),
        Shape::new([width]),
        dtype,
    );
    let client = idx.client.clone();
    let (dim, count) = elementwise_launch(&idx, width);
    count_launch();
    // SAFETY: `c < width` indexes the `[width]` output.
    unsafe {
        clear_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address_type(&[&keep]),
            keep.clone().into_tensor_arg(),
            width,
            dropped,
            dtype.into(),
        )
    };
    let (dim, count) = elementwise_launch(&idx, k.max(1));
    count_launch();
    // SAFETY: `j < k` indexes `idx`; the caller checked every index is below `width`.
    unsafe {
        set_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address_type(&[&idx, &keep]),
            idx.clone().into_tensor_arg(),
            keep.clone().into_tensor_arg(),
            k,
            dropped,
            [dtype.into(), idx.dtype.into()],
        )
    };
    keep
}

/// `x` (`[rows, width]`) times `keep` (`[width]`, `x`'s dtype) on every row where `dense`
/// (`[rows]` f32, if any) is 0; contiguous output.
pub(crate) fn mask_channels<R: CubeRuntime>(
    x: CubeTensor<R>,
    keep: CubeTensor<R>,
    dense: Option<CubeTensor<R>>,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let keep = into_contiguous(keep);
    let (rows, width) = (x.meta.shape()[0], x.meta.shape()[1]);
    let dtype = x.dtype;
    let out = empty_device_contiguous_dtype(
        x.client.clone(),
        x.device.clone(),
        Shape::new([rows, width]),
        dtype,
    );
    let has_dense = dense.is_some();
    // Without dense rows the kernel never reads them: `keep` stands in for the argument (its
    // dtype does not matter to an argument that is never read, but it must be f32 to bind).
    let dense = dense.map(into_contiguous);
    let vector = vector_size(&[&x, &keep, &out], dtype, &[width]);
    let len = rows * width / vector;
    let (dim, count) = elementwise_launch(&x, len);
    let mut tensors = vec![&x, &keep, &out];
    if let Some(d) = &dense {
        tensors.push(d);
    }
    let address = address_type(&tensors);
    let dense_arg = match &dense {
        Some(d) => d.clone(),
        None => placeholder_f32(&x),
    };
    let client = x.client.clone();
    count_launch();
    // SAFETY: units past `len` vectors return before any access; `c < width / vector` indexes
    // `keep`, and `r < rows` indexes `dense` (read only when given).
    unsafe {
        mask_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address,
            vector,
            x.into_tensor_arg(),
            keep.into_tensor_arg(),
            dense_arg.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            len,
            width / vector,
            has_dense,
            dtype.into(),
        )
    };
    out
}

/// A one-element f32 buffer for an argument the kernel does not read.
fn placeholder_f32<R: CubeRuntime>(like: &CubeTensor<R>) -> CubeTensor<R> {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::new([1]),
        DType::F32,
    )
}
