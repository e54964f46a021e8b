//! One unit per channel: it walks the rows of `gate` and `up` (any strides), summing
//! `(silu(g) * u)^2` in f32.

use burn::tensor::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch, elementwise_launch};

/// `scores[c] = sqrt(sum_r (silu(gate[r, c]) * up[r, c])^2)`, `silu(g) = g / (1 + exp(-g))`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn mlp_scores_kernel<F: Float>(
    gate: &Tensor<F>,
    up: &Tensor<F>,
    scores: &mut Tensor<f32>,
    rows: usize,
    channels: usize,
    #[define(F)] _dtype: StorageType,
) {
    let c = ABSOLUTE_POS;
    if c >= channels {
        terminate!();
    }
    let mut sum = 0.0f32;
    for r in 0..rows {
        let g = f32::cast_from(gate[r * gate.stride(0) + c * gate.stride(1)]);
        let u = f32::cast_from(up[r * up.stride(0) + c * up.stride(1)]);
        let y = g / (1.0f32 + (-g).exp()) * u;
        sum += y * y;
    }
    scores[c] = sum.sqrt();
}

/// `gate`, `up`: `[rows, d_ff]` of one float dtype, any strides; output `[d_ff]` f32,
/// contiguous.
pub(crate) fn forward<R: CubeRuntime>(gate: CubeTensor<R>, up: CubeTensor<R>) -> CubeTensor<R> {
    let shape = gate.meta.shape();
    let (rows, channels) = (shape[0], shape[1]);
    let scores = empty_device_contiguous_dtype(
        gate.client.clone(),
        gate.device.clone(),
        Shape::new([channels]),
        DType::F32,
    );
    let (dim, count) = elementwise_launch(&scores, channels);
    let address = address_type(&[&gate, &up, &scores]);
    let (client, dtype) = (gate.client.clone(), gate.dtype);
    count_launch();
    // SAFETY: `c < channels` and `r < rows` index `gate` and `up` through their own strides
    // within their `[rows, channels]` shapes; `c` indexes `scores`.
    unsafe {
        mlp_scores_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address,
            gate.into_tensor_arg(),
            up.into_tensor_arg(),
            scores.clone().into_tensor_arg(),
            rows,
            channels,
            dtype.into(),
        )
    };
    scores
}

/// `scores[c] = sqrt(sum_r (silu(g) * u)^2)` with `g = z[r, ..rank_gate] . w_gate[:, c]` and
/// `u = z[r, rank_gate..] . w_up[:, c]`: the estimates formed per channel, never stored. The
/// channel's factor columns are loaded once into registers (the ranks are compile-time sizes)
/// and reused by every row; the rows of `z` are the same for every unit (broadcast loads).
#[cube(launch_unchecked, address_type = "dynamic")]
fn mlp_scores_of_factors_kernel(
    z: &Tensor<f32>,
    w_gate: &Tensor<f32>,
    w_up: &Tensor<f32>,
    scores: &mut Tensor<f32>,
    rows: usize,
    channels: usize,
    #[comptime] rank_gate: usize,
    #[comptime] rank_up: usize,
) {
    let c = ABSOLUTE_POS;
    if c >= channels {
        terminate!();
    }
    let mut wg = Array::<f32>::new(rank_gate);
    #[unroll]
    for i in 0..rank_gate {
        wg[i] = w_gate[i * w_gate.stride(0) + c * w_gate.stride(1)];
    }
    let mut wu = Array::<f32>::new(rank_up);
    #[unroll]
    for i in 0..rank_up {
        wu[i] = w_up[i * w_up.stride(0) + c * w_up.stride(1)];
    }
    let mut sum = 0.0f32;
    for r in 0..rows {
        let row = r * z.stride(0);
        let mut g = 0.0f32;
        #[unroll]
        for i in 0..rank_gate {
            g += z[row + i * z.stride(1)] * wg[i];
        }
        let mut u = 0.0f32;
        #[unroll]
        for i in 0..rank_up {
            u += z[row + (rank_gate + i) * z.stride(1)] * wu[i];
        }
        let y = g / (1.0f32 + (-g).exp()) * u;
        sum += y * y;
    }
    scores[c] = sum.sqrt();
}

/// `z` `[rows, r_g + r_u]`, `w_gate` `[r_g, d_ff]`, `w_up` `[r_u, d_ff]`, all f32, any strides;
/// output `[d_ff]` f32, contiguous.
pub(crate) fn forward_of_factors<R: CubeRuntime>(
    z: CubeTensor<R>,
    w_gate: CubeTensor<R>,
    w_up: CubeTensor<R>,
) -> CubeTensor<R> {
    let rows = z.meta.shape()[0];
    let rank_gate = w_gate.meta.shape()[0];
    let (rank_up, channels) = (w_up.meta.shape()[0], w_up.meta.shape()[1]);
    let scores = empty_device_contiguous_dtype(
        w_gate.client.clone(),
        w_gate.device.clone(),
        Shape::new([channels]),
        DType::F32,
    );
    let (dim, count) = elementwise_launch(&scores, channels);
    let address = address_type(&[&z, &w_gate, &w_up, &scores]);
    let client = w_gate.client.clone();
    count_launch();
    // SAFETY: `c < channels`, `r < rows` and `i < rank_gate` / `rank_up` index `z`
    // (`[rows, rank_gate + rank_up]`), `w_gate` and `w_up` through their own strides within
    // their shapes (checked by the caller); `c` indexes `scores`.
    unsafe {
        mlp_scores_of_factors_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address,
            z.into_tensor_arg(),
            w_gate.into_tensor_arg(),
            w_up.into_tensor_arg(),
            scores.clone().into_tensor_arg(),
            rows,
            channels,
            rank_gate,
            rank_up,
        )
    };
    scores
}
