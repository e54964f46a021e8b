//! The column scatter kernels: a column -> kept-position map (`-1` where a column is not kept),
//! then one pass over the output, in vectors of columns, that reads `base` and the kept value of
//! each column. The backward gathers the output gradient's kept columns with `gather_padded`'s
//! kernel (no padding).

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch, elementwise_launch, vector_size};

/// `positions[c] = -1` for every column `c`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn clear_positions_kernel(positions: &mut Tensor<i32>, width: usize) {
    let c = ABSOLUTE_POS;
    if c < width {
        positions[c] = -1i32;
    }
}

/// `positions[idx[j]] = j` for every kept position `j` (the indices are distinct).
#[cube(launch_unchecked, address_type = "dynamic")]
fn set_positions_kernel<M: Int>(
    idx: &Tensor<M>,
    positions: &mut Tensor<i32>,
    k: usize,
    #[define(M)] _dtype: StorageType,
) {
    let j = ABSOLUTE_POS;
    if j < k {
        let c = usize::cast_from(idx[j * idx.stride(0)]);
        positions[c] = i32::cast_from(j);
    }
}

/// `out[r, c] = base[r, c] + kept[r, positions[c]]` (no `base` term without one; no `kept` term
/// where `positions[c] < 0`), a vector of `N` columns a unit: `base` and `out` are read and
/// written in vectors, the kept values gathered one by one (neighbouring columns' kept values
/// are not neighbours in `kept`).
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn scatter_forward_kernel<F: Float, N: Size>(
    base: &Tensor<Vector<F, N>>,
    kept: &Tensor<F>,
    positions: &Tensor<i32>,
    out: &mut Tensor<Vector<F, N>>,
    rows: usize,
    width_v: usize,
    k: usize,
    #[comptime] has_base: bool,
    #[define(F)] _dtype: StorageType,
) {
    let at = ABSOLUTE_POS;
    if at >= rows * width_v {
        terminate!();
    }
    let (r, cv) = (at / width_v, at % width_v);
    let mut value = Vector::<F, N>::new(F::new(0.0));
    if has_base {
        value = base[at];
    }
    #[unroll]
    for i in 0..N::value() {
        let p = positions[cv * N::value() + i];
        if p >= 0 {
            value[i] = value[i] + kept[r * k + usize::cast_from(p)];
        }
    }
    out[at] = value;
}

/// The column -> kept-position map of `idx` over `width` columns, `[width]` i32.
fn positions<R: CubeRuntime>(idx: &CubeTensor<R>, width: usize) -> CubeTensor<R> {
    let k = idx.meta.shape()[0];
    let positions = empty_device_contiguous_dtype(
        idx.client.clone(),
        idx.device.clone(),
        Shape::new([width]),
        DType::I32,
    );
    let client = idx.client.clone();
    let (dim, count) = elementwise_launch(idx, width);
    count_launch();
    // SAFETY: `c < width` indexes the `[width]` output.
    unsafe {
        clear_positions_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address_type(&[&positions]),
            positions.clone().into_tensor_arg(),
            width,
        )
    };
    let (dim, count) = elementwise_launch(idx, k.max(1));
    count_launch();
    // SAFETY: `j < k` indexes `idx`; the caller checked every index is below `width`.
    unsafe {
        set_positions_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address_type(&[idx, &positions]),
            idx.clone().into_tensor_arg(),
            positions.clone().into_tensor_arg(),
            k,
            idx.dtype.into(),
        )
    };
    positions
}

/// The forward: `kept` `[rows, k_padded]` (float; columns past `idx`'s length are padding, never
/// read), `idx` `[k]` (int, distinct, each below `width`), `base` `[rows, width]` in `kept`'s
/// dtype or none; output contiguous `[rows, width]`.
pub(crate) fn forward<R: CubeRuntime>(
    base: Option<CubeTensor<R>>,
    kept: CubeTensor<R>,
    idx: CubeTensor<R>,
    width: usize,
) -> CubeTensor<R> {
    let kept = into_contiguous(kept);
    // `k` here is `kept`'s row length (its stride in the kernel), padding included.
    let (rows, k) = (kept.meta.shape()[0], kept.meta.shape()[1]);
    let dtype = kept.dtype;
    let positions = positions(&idx, width);
    let out = empty_device_contiguous_dtype(
        kept.client.clone(),
        kept.device.clone(),
        Shape::new([rows, width]),
        dtype,
    );
    let has_base = base.is_some();
    let base = base.map(into_contiguous);
    let vector = vector_size(&[base.as_ref().unwrap_or(&out), &out], dtype, &[width]);
    let width_v = width / vector;
    // Without a base the kernel never reads it: a one-vector stand-in (not `out`: the same
    // buffer bound twice, once for writing, is invalid on wgpu).
    let base = base.unwrap_or_else(|| {
        empty_device_contiguous_dtype(
            kept.client.clone(),
            kept.device.clone(),
            Shape::new([vector]),
            dtype,
        )
    });
    let client = kept.client.clone();
    let (dim, count) = elementwise_launch(&out, rows * width_v);
    let address = address_type(&[&base, &kept, &positions, &out]);
    count_launch();
    // SAFETY: `at < rows * width_v` indexes `base` and `out` in vectors, `cv * N + i < width`
    // indexes `positions`; `positions[c]`, when set, is below `k`, so `r * k + p` indexes `kept`.
    unsafe {
        scatter_forward_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address,
            vector,
            base.into_tensor_arg(),
            kept.into_tensor_arg(),
            positions.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows,
            width_v,
            k,
            has_base,
            dtype.into(),
        )
    };
    out
}
