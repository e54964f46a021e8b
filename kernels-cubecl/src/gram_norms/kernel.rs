//! One unit per column of `w`: the quadratic form `w[:, c]^T gram w[:, c]` over the `k x k` Gram
//! matrix (k is the estimator's stacked rank, 24-48), then the clamped square root.

use burn::tensor::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch, elementwise_launch};

/// `norms[c] = sqrt(max(0, sum_i w[i, c] sum_j gram[i, j] w[j, c]))`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn quadratic_form_norms_kernel(
    gram: &Tensor<f32>,
    w: &Tensor<f32>,
    norms: &mut Tensor<f32>,
    k: usize,
    columns: usize,
) {
    let c = ABSOLUTE_POS;
    if c >= columns {
        terminate!();
    }
    let mut total = 0.0f32;
    for i in 0..k {
        let mut row = 0.0f32;
        for j in 0..k {
            row += gram[i * gram.stride(0) + j * gram.stride(1)]
                * w[j * w.stride(0) + c * w.stride(1)];
        }
        total += w[i * w.stride(0) + c * w.stride(1)] * row;
    }
    norms[c] = max(total, 0.0f32).sqrt();
}

/// `gram` `[k, k]` and `w` `[k, out]` in f32, any strides; output `[1, out]` f32, contiguous.
pub(crate) fn forward<R: CubeRuntime>(gram: CubeTensor<R>, w: CubeTensor<R>) -> CubeTensor<R> {
    let shape = w.meta.shape();
    let (k, columns) = (shape[0], shape[1]);
    let norms = empty_device_contiguous_dtype(
        w.client.clone(),
        w.device.clone(),
        Shape::new([1, columns]),
        DType::F32,
    );
    let (dim, count) = elementwise_launch(&norms, columns);
    let address = address_type(&[&gram, &w, &norms]);
    let client = w.client.clone();
    count_launch();
    // SAFETY: `c < columns` and `i, j < k` index `gram` and `w` through their strides within
    // their shapes; `c` indexes `norms`.
    unsafe {
        quadratic_form_norms_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address,
            gram.into_tensor_arg(),
            w.into_tensor_arg(),
            norms.clone().into_tensor_arg(),
            k,
            columns,
        )
    };
    norms
}
