//! The RoPE kernel: one unit per pair `(j, j + hd/2)` of a row (in vectors along `j`), reading `x`,
//! `cos` and `sin` through their strides (so a transposed view of `x` is not copied first).

use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch, elementwise_launch, vector_size};

/// Whether `x` (`[b, h, s, hd]`) is a view of a contiguous `[b, s, h, hd]`: the model's
/// `reshape([b, s, h, hd]).swap_dims(1, 2)` of a projection's output.
pub(crate) fn is_sequence_major<R: CubeRuntime>(x: &CubeTensor<R>) -> bool {
    let (shape, strides) = (x.meta.shape(), x.meta.strides());
    let (seq, heads, hd) = (shape[2], shape[1], shape[3]);
    strides[3] == 1
        && strides[1] == hd
        && strides[2] == heads * hd
        && strides[0] == seq * heads * hd
}

/// Forward (`transpose = false`), per pair `lo = x[j]`, `hi = x[j + half]`:
/// `out[j] = lo cos[j] - hi sin[j]`, `out[j + half] = hi cos[j + half] + lo sin[j + half]`.
///
/// Transposed (`transpose = true`, the backward with `x` the output's gradient):
/// `out[j] = lo cos[j] + hi sin[j + half]`, `out[j + half] = hi cos[j + half] - lo sin[j]`.
///
/// `x`: `[b, h, s, hd]`, any strides (unit stride on `hd` when `N > 1`); `cos`, `sin`:
/// `[b or 1, 1, s, hd]`, any strides; `out`: `[b, h, s, hd]` with a unit stride on `hd`
/// (contiguous, or stored `[b, s, h, hd]`: see [`launch`]); `cos_batch`, `sin_batch`: the batch strides of `cos` and `sin` (0 for a batch of
/// one). `units = b h s half / N`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn rope_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    cos: &Tensor<Vector<F, N>>,
    sin: &Tensor<Vector<F, N>>,
    out: &mut Tensor<Vector<F, N>>,
    units: usize,
    heads: usize,
    seq: usize,
    half: usize,
    cos_batch: usize,
    sin_batch: usize,
    #[comptime] transpose: bool,
    #[define(F)] _dtype: StorageType,
) {
    let unit = ABSOLUTE_POS;
    if unit >= units {
        terminate!();
    }
    let n = x.vector_size();
    let half_v = half / n;
    let j = (unit % half_v) * n;
    let row = unit / half_v;
    let si = row % seq;
    let bh = row / seq;
    let hi = bh % heads;
    let bi = bh / heads;

    let xs = x.stride(3);
    let x_at = bi * x.stride(0) + hi * x.stride(1) + si * x.stride(2) + j * xs;
    let lo = Vector::<f32, N>::cast_from(x[x_at / n]);
    let hi_ = Vector::<f32, N>::cast_from(x[(x_at + half * xs) / n]);

    let cs = cos.stride(3);
    let c_at = bi * cos_batch + si * cos.stride(2) + j * cs;
    let c_lo = Vector::<f32, N>::cast_from(cos[c_at / n]);
    let c_hi = Vector::<f32, N>::cast_from(cos[(c_at + half * cs) / n]);
    let ss = sin.stride(3);
    let s_at = bi * sin_batch + si * sin.stride(2) + j * ss;
    let s_lo = Vector::<f32, N>::cast_from(sin[s_at / n]);
    let s_hi = Vector::<f32, N>::cast_from(sin[(s_at + half * ss) / n]);

    let o_at = bi * out.stride(0) + hi * out.stride(1) + si * out.stride(2) + j;
    if transpose {
        out[o_at / n] = Vector::<F, N>::cast_from(lo * c_lo + hi_ * s_hi);
        out[(o_at + half) / n] = Vector::<F, N>::cast_from(hi_ * c_hi - lo * s_lo);
    } else {
        out[o_at / n] = Vector::<F, N>::cast_from(lo * c_lo - hi_ * s_lo);
        out[(o_at + half) / n] = Vector::<F, N>::cast_from(hi_ * c_hi + lo * s_hi);
    }
}

/// `rope(x, cos, sin)` (`transpose = false`) or its transpose applied to `x` (the backward).
///
/// `x`: `[b, h, s, hd]` (`hd` even), any strides; `cos`, `sin`: `[b or 1, 1, s, hd]`, any strides,
/// all of one float dtype. Output `[b, h, s, hd]`, contiguous, or with `sequence_major` stored as
/// a contiguous `[b, s, h, hd]` (the layout of the projections' output that the forward's `x` is
/// a view of): the backward's `dx` in that layout needs no copy on its way back to the
/// projection.
pub(crate) fn launch<R: CubeRuntime>(
    x: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    transpose: bool,
    sequence_major: bool,
) -> CubeTensor<R> {
    let shape = x.meta.shape().clone();
    let (b, heads, seq, hd) = (shape[0], shape[1], shape[2], shape[3]);
    let half = hd / 2;
    let dtype = x.dtype;
    let out = if sequence_major {
        let stored = [b, seq, heads, hd].into();
        let mut out =
            empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), stored, dtype);
        out.meta.swap(1, 2);
        out
    } else {
        empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), shape, dtype)
    };

    // Vectors run along `hd`: they need unit strides there, and the half and every other stride
    // (of a dimension longer than one) divisible by the vector size.
    let tensors = [&x, &cos, &sin, &out];
    let unit_inner = tensors.iter().all(|t| t.meta.strides()[3] == 1);
    let mut divides = vec![half];
    for t in tensors {
        let (shape, strides) = (t.meta.shape(), t.meta.strides());
        divides.extend((0..3).filter(|&d| shape[d] > 1).map(|d| strides[d]));
    }
    let vector = if unit_inner {
        vector_size(&[&x, &cos, &sin, &out], dtype, &divides)
    } else {
        1
    };
    // A batch of one broadcasts over `b`.
    let batch_stride = |t: &CubeTensor<R>| match t.meta.shape()[0] {
        1 => 0,
        _ => t.meta.strides()[0],
    };
    let (cos_batch, sin_batch) = (batch_stride(&cos), batch_stride(&sin));

    let units = b * heads * seq * half / vector;
    let (cube_dim, cube_count) = elementwise_launch(&x, units);
    let address = address_type(&[&x, &cos, &sin, &out]);
    let client = x.client.clone();
    count_launch();
    // SAFETY: every index is a position of `x`, `cos`, `sin` or `out` within their shapes.
    unsafe {
        rope_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            address,
            vector,
            x.into_tensor_arg(),
            cos.into_tensor_arg(),
            sin.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            units,
            heads,
            seq,
            half,
            cos_batch,
            sin_batch,
            transpose,
            dtype.into(),
        )
    };
    out
}
