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
