//! The copy kernel: one unit per vector of the contiguous output, its source found through the
//! input's strides (the index arithmetic of a 4-d tensor, no loop over dimensions).

use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch, elementwise_launch, vector_size};

/// `out[i0, i1, i2, j] = x[i0, i1, i2, j]`, `out` contiguous `[d0, d1, d2, d3]`, `x` with a unit
/// stride on `d3` and any others; one unit per vector of `N` elements (`N` divides `d3` and every
/// stride of `x`). `d3_v = d3 / N`, `len = d0 d1 d2 d3_v`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn contiguous_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    out: &mut Tensor<Vector<F, N>>,
    len: usize,
    d1: usize,
    d2: usize,
    d3_v: usize,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= len {
        terminate!();
    }
    let n = x.vector_size();
    let c = i % d3_v;
    let row = i / d3_v;
    let i2 = row % d2;
    let i1 = (row / d2) % d1;
    let i0 = row / (d2 * d1);
    let at = (i0 * x.stride(0) + i1 * x.stride(1) + i2 * x.stride(2)) / n + c;
    out[i] = x[at];
}

/// Whether `x` (4-d) is stored contiguously in its own dimension order, the strides of
/// dimensions of size one aside. burn's `CubeTensor::is_contiguous` also requires those to be
/// canonical, which would copy for nothing a swapped view with such a dimension (the
/// `[b, 1, h, hd]` of a one-token step).
fn is_contiguous<R: CubeRuntime>(x: &CubeTensor<R>) -> bool {
    let (shape, strides) = (x.meta.shape(), x.meta.strides());
    let mut expected = 1;
    for dim in (0..4).rev() {
        if shape[dim] > 1 && strides[dim] != expected {
            return false;
        }
        expected *= shape[dim];
    }
    true
}

/// `x` (4-d, a unit stride on the last dimension) copied contiguous in one kernel; `x` itself when
/// it already is contiguous.
pub(crate) fn contiguous<R: CubeRuntime>(x: CubeTensor<R>) -> CubeTensor<R> {
    if is_contiguous(&x) {
        return x;
    }
    let shape = x.meta.shape().clone();
    let (d1, d2, d3) = (shape[1], shape[2], shape[3]);
    let dtype = x.dtype;
    let out = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), shape, dtype);
    let strides = x.meta.strides();
    let vector = vector_size(
        &[&x, &out],
        dtype,
        &[d3, strides[0], strides[1], strides[2]],
    );
    let len = out.meta.shape().num_elements() / vector;
    if len == 0 {
        return out;
    }
    let (dim, count) = elementwise_launch(&out, len);
    let address = address_type(&[&x, &out]);
    let client = out.client.clone();
    count_launch();
    // SAFETY: units at or past `len` return first; unit `i` writes `out[i]` (`len` vectors) and
    // reads `x` at an in-bounds index `(i0, i1, i2)` with `i0 < d0`, `i1 < d1`, `i2 < d2`.
    unsafe {
        contiguous_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address,
            vector,
            x.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            len,
            d1,
            d2,
            d3 / vector,
            dtype.into(),
        )
    };
    out
}

/// `x` (`[d0, d1, d2, d3]`, unit stride on `d3`) with its memory laid out `[d0, d2, d1, d3]`,
/// returned as a `[d0, d1, d2, d3]` view: the layout in which `swap_dims(1, 2)` is contiguous.
/// `x` itself when it already is laid out so.
pub(crate) fn swapped_layout<R: CubeRuntime>(x: CubeTensor<R>) -> CubeTensor<R> {
    let swapped = contiguous(swap_1_2(x));
    swap_1_2(swapped)
}

/// The view of `x` with dimensions 1 and 2 exchanged (no copy).
fn swap_1_2<R: CubeRuntime>(mut x: CubeTensor<R>) -> CubeTensor<R> {
    x.meta.swap(1, 2);
    x
}
