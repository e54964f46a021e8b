//! The RMSNorm kernels: one cube per row, the row strided over its units in vectors, the sums in
//! f32 through shared memory.

use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, block_sum, count_launch, lane_sum, row_launch, vector_size};

/// `out = F(x * r) * w` with `r = 1 / sqrt(sum(x^2) / width + eps)` per row.
///
/// `x`, `out`: `[rows, width]` contiguous; `w`: `[width]` contiguous; `width_v = width / N`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn rms_norm_forward_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<F, N>>,
    out: &mut Tensor<Vector<F, N>>,
    rows: usize,
    width_v: usize,
    width: f32,
    eps: f32,
    #[comptime] block: usize,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let base = row * width_v;
    let mut shared = SharedMemory::<f32>::new(block);

    let mut squares = Vector::<f32, N>::new(0.0f32);
    let mut i = UNIT_POS as usize;
    while i < width_v {
        let v = Vector::<f32, N>::cast_from(x[base + i]);
        squares += v * v;
        i += block;
    }
    let sum = block_sum(lane_sum::<N>(squares), &mut shared);
    let r = 1.0f32 / (sum / width + eps).sqrt();

    let mut i = UNIT_POS as usize;
    while i < width_v {
        let v = Vector::<f32, N>::cast_from(x[base + i]);
        let normed = Vector::<F, N>::cast_from(v * Vector::new(r));
        out[base + i] = normed * w[i];
        i += block;
    }
}

/// `dx = r dn - x r^3 sum(dn x) / width` with `dn = f32(F(dy * w))` per row (the gradient of
/// [`rms_norm_forward_kernel`] with respect to `x`), plus `earlier` when `summed` (another
/// consumer's share of `x`'s gradient, added in f32 before the one rounding).
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn rms_norm_backward_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<F, N>>,
    dy: &Tensor<Vector<F, N>>,
    earlier: &Tensor<Vector<F, N>>,
    dx: &mut Tensor<Vector<F, N>>,
    rows: usize,
    width_v: usize,
    width: f32,
    eps: f32,
    #[comptime] block: usize,
    #[comptime] summed: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let base = row * width_v;
    let mut shared = SharedMemory::<f32>::new(block);

    let mut squares = Vector::<f32, N>::new(0.0f32);
    let mut dots = Vector::<f32, N>::new(0.0f32);
    let mut i = UNIT_POS as usize;
    while i < width_v {
        let v = Vector::<f32, N>::cast_from(x[base + i]);
        let dn = Vector::<f32, N>::cast_from(dy[base + i] * w[i]);
        squares += v * v;
        dots += dn * v;
        i += block;
    }
    let sum = block_sum(lane_sum::<N>(squares), &mut shared);
    let dot = block_sum(lane_sum::<N>(dots), &mut shared);
    let r = 1.0f32 / (sum / width + eps).sqrt();
    let c = r * r * r * dot / width;

    let mut i = UNIT_POS as usize;
    while i < width_v {
        let v = Vector::<f32, N>::cast_from(x[base + i]);
        let dn = Vector::<f32, N>::cast_from(dy[base + i] * w[i]);
        let mut d = dn * Vector::new(r) - v * Vector::new(c);
        if summed {
            d += Vector::<f32, N>::cast_from(earlier[base + i]);
        }
        dx[base + i] = Vector::<F, N>::cast_from(d);
        i += block;
    }
}

/// Rows and width of `x` (`[..., width]`).
fn rows_width<R: CubeRuntime>(x: &CubeTensor<R>) -> (usize, usize) {
    let shape = x.meta.shape();
    let width = shape[shape.num_dims() - 1];
    (shape.num_elements() / width.max(1), width)
}

/// The forward: `x` `[..., width]`, `w` `[width]`, both of one float dtype; output contiguous.
pub(crate) fn forward<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    eps: f64,
) -> CubeTensor<R> {
    let (x, w) = (into_contiguous(x), into_contiguous(w));
    let (rows, width) = rows_width(&x);
    let dtype = x.dtype;
    let out = empty_device_contiguous_dtype(
        x.client.clone(),
        x.device.clone(),
        x.meta.shape().clone(),
        dtype,
    );
    let vector = vector_size(&[&x, &w, &out], dtype, &[width]);
    let launch = row_launch(&x, rows, width / vector);
    let address = address_type(&[&x, &w, &out]);
    let client = x.client.clone();
    count_launch();
    // SAFETY: every index stays in its row of `rows * width` contiguous elements, or in `w`.
    unsafe {
        rms_norm_forward_kernel::launch_unchecked::<R>(
            &client,
            launch.cube_count,
            launch.cube_dim,
            address,
            vector,
            x.into_tensor_arg(),
            w.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows,
            width / vector,
            width as f32,
            eps as f32,
            launch.block,
            dtype.into(),
        )
    };
    out
}

/// The backward: `dx` for `dy`, from the forward's `x` and `w`; output contiguous, `x`'s shape.
pub(crate) fn backward<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    dy: CubeTensor<R>,
    eps: f64,
) -> CubeTensor<R> {
    launch_backward(x, w, dy, None, eps)
}

/// [`backward`] plus `earlier` (another consumer's share of `x`'s gradient, of `x`'s shape and
/// dtype: see [`fits_summed`]) in the same pass.
pub(crate) fn backward_summed<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    dy: CubeTensor<R>,
    earlier: CubeTensor<R>,
    eps: f64,
) -> CubeTensor<R> {
    launch_backward(x, w, dy, Some(earlier), eps)
}

/// Whether [`backward_summed`] can add `earlier` into the gradient of `x`.
pub(crate) fn fits_summed<R: CubeRuntime>(x: &CubeTensor<R>, earlier: &CubeTensor<R>) -> bool {
    earlier.dtype == x.dtype && earlier.meta.shape() == x.meta.shape()
}

fn launch_backward<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    dy: CubeTensor<R>,
    earlier: Option<CubeTensor<R>>,
    eps: f64,
) -> CubeTensor<R> {
    let (x, w, dy) = (into_contiguous(x), into_contiguous(w), into_contiguous(dy));
    let summed = earlier.is_some();
    // Without a share to add, `dy` stands in for the unread input.
    let earlier = earlier.map_or_else(|| dy.clone(), into_contiguous);
    let (rows, width) = rows_width(&x);
    let dtype = x.dtype;
    let shape: Shape = x.meta.shape().clone();
    let dx = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), shape, dtype);
    let vector = vector_size(&[&x, &w, &dy, &earlier, &dx], dtype, &[width]);
    let launch = row_launch(&x, rows, width / vector);
    let address = address_type(&[&x, &w, &dy, &earlier, &dx]);
    let client = x.client.clone();
    count_launch();
    // SAFETY: as in `forward`.
    unsafe {
        rms_norm_backward_kernel::launch_unchecked::<R>(
            &client,
            launch.cube_count,
            launch.cube_dim,
            address,
            vector,
            x.into_tensor_arg(),
            w.into_tensor_arg(),
            dy.into_tensor_arg(),
            earlier.into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            rows,
            width / vector,
            width as f32,
            eps as f32,
            launch.block,
            summed,
            dtype.into(),
        )
    };
    dx
}
