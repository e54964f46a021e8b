//! `y = x W^T` for a weight stored `[out, in]`: the dense projection every layer uses.
//!
//! This is the seam where an accelerated GEMM replaces burn's matmul: with the `cuda` feature,
//! burn-cuda tensors (plain or under `Autodiff`) go through cuBLASLt ([`crate::cublaslt`]);
//! every other backend, and whatever cuBLASLt does not take, runs the portable body below.

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
    let x = reshaped(x, [rows, d_in]);
    #[cfg(feature = "cuda")]
    let (x, weight) = match crate::cublaslt::dispatch_linear(x, weight) {
        Ok(y) => return reshaped(y, out_dims),
        Err(inputs) => inputs,
    };
    // [rows, in] x [in, out]; the transpose is a stride swap, not a copy, on burn's backends.
    reshaped(x.matmul(weight.transpose()), out_dims)
}

/// `addend + x W^T` (a projection whose output is added onto a tensor, as attention's and the
/// MLP's outputs onto the residual stream), in the addend's shape.
///
/// On burn-cuda with GEMMs ordered on cubecl's stream the add is the product's epilogue (cuBLASLt's
/// `D = A B + C` with `C` the addend, kept: the next norm's backward reads it), forward and
/// backward (the addend's gradient is `dY` itself); elsewhere [`linear`] and an add. `x` and the
/// addend may have different ranks (token rows against `[batch, seq, out]`): the addend is not
/// reshaped by a separate op, so that its gradient share reaches the norm that also reads it in
/// time to be summed there (`kernels_cubecl::gradient_sum`).
///
/// # Shapes
/// - `x`: `[..., in]`, `weight`: `[out, in]`, `addend` and output `[..., out]`, with as many rows
///   (the product of the leading dimensions) as `x`
pub fn linear_onto<B: Backend, const D: usize, const E: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    addend: Tensor<B, E>,
) -> Tensor<B, E> {
    let (x_dims, dims) = (x.dims(), addend.dims());
    let [d_out, d_in] = weight.dims();
    let rows: usize = x_dims[..D - 1].iter().product();
    assert!(
        x_dims[D - 1] == d_in
            && dims[E - 1] == d_out
            && dims[..E - 1].iter().product::<usize>() == rows,
        "linear_onto: input {x_dims:?}, weight [out={d_out}, in={d_in}] and addend {dims:?} disagree"
    );
    let x = reshaped(x, [rows, d_in]);
    #[cfg(feature = "cuda")]
    let (x, weight, addend) = match crate::cublaslt::dispatch_linear_onto(x, weight, addend) {
        Ok(y) => return reshaped(y, dims),
        Err(inputs) => inputs,
    };
    addend + reshaped(linear(x, weight), dims)
}

/// `t.reshape(dims)`, but `t` itself when it already has that shape: under `Autodiff` a reshape
/// is a new node even then, and projections that read one `[rows, in]` tensor must share its
/// node for their input gradients to be summed inside their GEMMs
/// ([`kernels_cubecl::gradient_sum`]) rather than by burn after each reshape's backward.
pub fn reshaped<B: Backend, const D: usize, const D2: usize>(
    t: Tensor<B, D>,
    dims: [usize; D2],
) -> Tensor<B, D2> {
    if D == D2 && t.dims()[..] == dims[..] {
        Tensor::from_primitive(t.into_primitive())
    } else {
        t.reshape(dims)
    }
}

/// A batch of matrix products, `out[i] = a[i] b[i]`: attention's `Q K^T` and `P V` per head.
///
/// On burn-cuda with GEMMs ordered on cubecl's stream this is one strided-batched cuBLASLt call
/// (forward and backward), reading transposed views in place; elsewhere burn's batched matmul.
///
/// # Shapes
/// - `a`: `[batch, m, k]`, `b`: `[batch, k, n]`, output `[batch, m, n]`
pub fn matmul_batched<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
    #[cfg(feature = "cuda")]
    let (a, b) = match crate::cublaslt::dispatch_matmul_batched(a, b) {
        Ok(c) => return c,
        Err(inputs) => inputs,
    };
    a.matmul(b)
}

/// [`matmul_batched`] as the products of `kernels_cubecl`'s attention, forward and backward
/// (cuBLASLt on burn-cuda, burn's matmul elsewhere).
#[derive(Debug, Clone, Copy, Default)]
pub struct SeamMatmul;

impl kernels_cubecl::BatchedMatmul for SeamMatmul {
    fn matmul<B: Backend>(a: Tensor<B, 3>, b: Tensor<B, 3>) -> Tensor<B, 3> {
        matmul_batched(a, b)
    }

    /// On burn-cuda one cuBLASLt GEMM per block, each writing its block of the output in place;
    /// elsewhere the blocks by parts.
    fn matmul_blocks<B: Backend>(
        a: Tensor<B, 3>,
        b: Tensor<B, 3>,
        blocks: &[kernels_cubecl::ProductBlock],
    ) -> Tensor<B, 3> {
        #[cfg(feature = "cuda")]
        let (a, b) = match crate::cublaslt::dispatch_matmul_blocks(a, b, blocks) {
            Ok(c) => return c,
            Err(inputs) => inputs,
        };
        kernels_cubecl::attention::matmul_blocks_by_parts::<B, Self>(a, b, blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    type TestBackend = burn::backend::Flex;
    type Ad = burn::backend::Autodiff<TestBackend>;

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

    /// The seam on a backend without a fast path is exactly burn's matmul, forward and both
    /// gradients (what the cuBLASLt path is checked against on the GPU).
    #[test]
    fn fallback_matches_plain_matmul_forward_and_backward() {
        let device = Default::default();
        let x = Tensor::<Ad, 3>::random([2, 3, 5], Distribution::Default, &device);
        let w = Tensor::<Ad, 2>::random([4, 5], Distribution::Default, &device);
        let dy = Tensor::<Ad, 3>::random([2, 3, 4], Distribution::Default, &device);
        #[cfg(feature = "cuda")]
        let calls = crate::cublaslt::calls();

        let (x1, w1) = (x.clone().require_grad(), w.clone().require_grad());
        let grads = (linear(x1.clone(), w1.clone()) * dy.clone())
            .sum()
            .backward();
        let (x2, w2) = (x.require_grad(), w.require_grad());
        let reference = x2.clone().reshape([6, 5]).matmul(w2.clone().transpose());
        let ref_grads = (reference.reshape([2, 3, 4]) * dy).sum().backward();

        for (ours, theirs) in [
            (
                x1.grad(&grads).unwrap().into_data(),
                x2.grad(&ref_grads).unwrap().into_data(),
            ),
            (
                w1.grad(&grads).unwrap().into_data(),
                w2.grad(&ref_grads).unwrap().into_data(),
            ),
        ] {
            ours.assert_approx_eq::<f32>(&theirs, Tolerance::default());
        }
        #[cfg(feature = "cuda")]
        assert_eq!(crate::cublaslt::calls(), calls, "no cuBLASLt call off CUDA");
    }

    /// A frozen weight (the projections' case) gives the input gradient alone.
    #[test]
    fn frozen_weight_gives_the_input_gradient_only() {
        let device = Default::default();
        let x = Tensor::<Ad, 2>::random([3, 5], Distribution::Default, &device).require_grad();
        let w = Tensor::<Ad, 2>::random([4, 5], Distribution::Default, &device);
        let grads = linear(x.clone(), w.clone()).sum().backward();
        // d/dx sum(x W^T) = 1 W: every row is the column sums of W.
        let expected = Tensor::<Ad, 2>::ones([3, 4], &device).matmul(w.clone());
        x.grad(&grads)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::default());
        assert!(w.grad(&grads).is_none());
    }
}
