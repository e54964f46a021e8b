//! `y = x W^T` for a weight stored `[out, in]`: the dense projection every layer uses.
//!
//! This is the seam where an accelerated GEMM (cuBLASLt on CUDA) will replace burn's matmul; the
//! body below is the portable reference.

use burn::tensor::{backend::Backend, Tensor};

/// Applies a bias-free linear map with a PyTorch-layout weight.
///
/// # Shapes
/// - `x`: `[..., in]` (any rank `D >= 2`)
/// - `weight`: `[out, in]`
/// - output: `[..., out]`
pub fn linear<B: Backend, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 2>) -> Tensor<B, D> {
    let dims = x.dims();
    let d_in = dims[D - 1];
    let [d_out, w_in] = weight.dims();
    assert_eq!(
        d_in, w_in,
        "linear: input width {d_in} does not match weight [out={d_out}, in={w_in}]"
    );
    let rows: usize = dims[..D - 1].iter().product();
    let mut out_dims = dims;
    out_dims[D - 1] = d_out;
    // [rows, in] x [in, out]; the transpose is a stride swap, not a copy, on burn's backends.
    x.reshape([rows, d_in])
        .matmul(weight.transpose())
        .reshape(out_dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    type TestBackend = burn::backend::Flex;

    #[test]
    fn matches_explicit_sum_of_products() {
        let device = Default::default();
        let x = Tensor::<TestBackend, 3>::random([2, 3, 5], Distribution::Default, &device);
        let w = Tensor::<TestBackend, 2>::random([4, 5], Distribution::Default, &device);
        let y = linear(x.clone(), w.clone());
        assert_eq!(y.dims(), [2, 3, 4]);
        // y[b, s, o] = sum_i x[b, s, i] * w[o, i]
        let expected = (x.unsqueeze_dim::<4>(2) * w.unsqueeze_dims::<4>(&[0, 1])).sum_dim(3);
        y.into_data().assert_approx_eq::<f32>(
            &expected.squeeze_dim::<3>(3).into_data(),
            Tolerance::default(),
        );
    }
}
