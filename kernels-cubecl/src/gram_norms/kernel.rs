//! One unit per column of `w`: the quadratic form `w[:, c]^T gram w[:, c]` over the `k x k` Gram
//! matrix (k is the estimator's stacked rank, 24-48), then the clamped square root.
//!
//! The estimator's `w` is block-diagonal (q, k and v each read only their own `r` rows of the
//! stacked `z`), so each unit first finds the rows its column is nonzero on and sums the form
//! over that range only: `r²` products instead of `k²` (9x fewer at three blocks), the rows
//! outside adding exact zeros (for finite Gram entries). One unit per column does the whole sum,
//! a serial chain of dependent loads and multiply-adds, so its length is the kernel's time: on
//! the H200 for LLaMA3-8B's 6,144 channels (rank 8 each for q, k and v), ~24 us over the full
//! `24 x 24` form, 7.6 us over the `8 x 8` blocks.

use burn::tensor::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, block_sum, count_launch, elementwise_launch};

/// `norms[c] = sqrt(max(0, sum_i w[i, c] sum_j gram[i, j] w[j, c]))`, `i` and `j` over the rows
/// from the first to the last nonzero of column `c`.
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
    // The column's nonzero rows: `first..last` (empty for a zero column).
    let mut first = k;
    let mut last = 0usize;
    for i in 0..k {
        if w[i * w.stride(0) + c * w.stride(1)] != 0.0f32 {
            first = min(first, i);
            last = i + 1;
        }
    }
    let mut total = 0.0f32;
    for i in first..last {
        let mut row = 0.0f32;
        for j in first..last {
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
    // SAFETY: `c < columns` and `i, j < last <= k` index `gram` and `w` through their strides
    // within their shapes; `c` indexes `norms`.
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

/// Units per cube of [`masked_gram_kernel`], each summing every `GRAM_BLOCK`-th row.
const GRAM_BLOCK: usize = 256;

/// `gram[i, j] = sum over rows r (real ones when masked) of f32(z[r, i]) f32(z[r, j])`: one cube
/// per entry, its units over the rows, summed through shared memory.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn masked_gram_kernel<F: Float, M: Int>(
    z: &Tensor<F>,
    tokens: &Tensor<M>,
    gram: &mut Tensor<f32>,
    n: usize,
    k: usize,
    #[comptime] mask_padding: bool,
    #[define(F, M)] _dtypes: [StorageType; 2],
) {
    let mut shared = SharedMemory::<f32>::new(GRAM_BLOCK);
    let entry = CUBE_POS;
    let (i, j) = (entry / k, entry % k);
    let mut acc = 0.0f32;
    let mut r = UNIT_POS as usize;
    while r < n {
        let mut real = true;
        if mask_padding {
            real = u32::cast_from(tokens[r]) != 0;
        }
        if real {
            let row = r * z.stride(0);
            acc +=
                f32::cast_from(z[row + i * z.stride(1)]) * f32::cast_from(z[row + j * z.stride(1)]);
        }
        r += GRAM_BLOCK;
    }
    let total = block_sum(acc, &mut shared);
    if UNIT_POS == 0 {
        gram[entry] = total;
    }
}

/// `z` `[n, k]` of a float dtype, any strides; `tokens` `[n]` contiguous, stored as u8 or u32;
/// output `[k, k]` f32, contiguous.
pub(crate) fn masked_gram<R: CubeRuntime>(
    z: CubeTensor<R>,
    tokens: CubeTensor<R>,
    mask_padding: bool,
) -> CubeTensor<R> {
    let shape = z.meta.shape();
    let (n, k) = (shape[0], shape[1]);
    let gram = empty_device_contiguous_dtype(
        z.client.clone(),
        z.device.clone(),
        Shape::new([k, k]),
        DType::F32,
    );
    let address = address_type(&[&z, &tokens, &gram]);
    let dtypes = [z.dtype.into(), tokens.dtype.into()];
    let client = z.client.clone();
    count_launch();
    // SAFETY: one cube per entry `entry < k * k` of `gram`, so `i, j < k`; rows `r < n`; `z` is
    // indexed through its strides within `[n, k]` and `tokens` (contiguous) within `n`.
    unsafe {
        masked_gram_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static((k * k) as u32, 1, 1),
            CubeDim::new_1d(GRAM_BLOCK as u32),
            address,
            z.into_tensor_arg(),
            tokens.into_tensor_arg(),
            gram.clone().into_tensor_arg(),
            n,
            k,
            mask_padding,
            dtypes,
        )
    };
    gram
}
