//! Channel-sliced projections of SparseLoRA (SPEC section 5), as burn tensor ops: the reference
//! that fast kernels must match, and the portable path on every backend.
//!
//! - Output slicing (gate/up/q/k/v): `y_kept = x W[idx, :]^T`, only the kept output channels.
//! - Input slicing (down/o): `y = x[:, idx] W[:, idx]^T`, reading only the kept input channels.
//!
//! Built from `select` and `matmul`, so under an autodiff backend the input gradient is exact:
//! `dX = dY_kept W[idx, :]` for output slicing and `dX[:, idx] = dY W[:, idx]` (zero elsewhere)
//! for input slicing. The frozen weight receives no gradient as long as it does not require one.

use burn::tensor::{backend::Backend, Int, Tensor};

use crate::{linear, linear_onto, reshaped};

/// `x W[idx, :]^T`: the kept output channels only.
///
/// # Shapes
/// - `x`: `[..., in]`, `weight`: `[out, in]`, `idx`: `[k]` (indices into `0..out`)
/// - output: `[..., k]`
pub fn linear_out_sliced<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
) -> Tensor<B, D> {
    linear(x, weight.select(0, idx))
}

/// `x[..., idx] W[:, idx]^T`: a projection that reads only the kept input channels.
///
/// The kept columns of `x` and of the frozen weight are gathered by one kernel each on
/// burn-wgpu/burn-cuda (`kernels_cubecl::channel_scatter::gather_columns`, whose backward
/// scatters `dX`'s kept columns, and [`kernels_cubecl::gather_padded`]; `select` elsewhere),
/// both padded with zero channels to [`padded_width`]: the product runs on aligned operands and
/// the padding adds nothing.
///
/// # Shapes
/// - `x`: `[..., in]` (full width), `weight`: `[out, in]`, `idx`: `[k]` (indices into `0..in`)
/// - output: `[..., out]`
pub fn linear_in_sliced<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    dims[D - 1] = weight.dims()[0];
    let (x_kept, weight_kept) = kept_columns(x, weight, idx);
    reshaped(linear(x_kept, weight_kept), dims)
}

/// `addend + x[:, idx] W[:, idx]^T` ([`linear_in_sliced`] added onto a tensor by the product's
/// epilogue where the seam can, as [`crate::linear_onto`]), in the addend's shape.
///
/// # Shapes
/// - `x`: `[n, in]`, `weight`: `[out, in]`, `idx`: `[k]`, `addend` and output `[..., out]` with
///   `n` rows
pub fn linear_in_sliced_onto<B: Backend, const E: usize>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
    addend: Tensor<B, E>,
) -> Tensor<B, E> {
    let (x_kept, weight_kept) = kept_columns(x, weight, idx);
    linear_onto(x_kept, weight_kept, addend)
}

/// The kept input channels `idx` of `x` (as token rows) and of `weight`, both padded with zero
/// channels to [`padded_width`] (aligned GEMM operands; the padding meets zeros on both sides):
/// `[n, width]` and `[out, width]`.
fn kept_columns<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product();
    let x = reshaped(x, [rows, dims[D - 1]]);
    let width = padded_width(idx.dims()[0]);
    let x_kept = kernels_cubecl::channel_scatter::gather_columns(x, idx.clone(), width);
    let weight_kept = kernels_cubecl::gather_padded::gather_columns_padded(weight, idx, width);
    (x_kept, weight_kept)
}

/// [`linear_in_sliced`] when the input is already compact (`x_kept = x[..., idx]`), as in the
/// compact MLP where gate/up produce only the kept channels.
///
/// # Shapes
/// - `x_kept`: `[..., k]`, `weight`: `[out, in]`, `idx`: `[k]`
/// - output: `[..., out]`
pub fn linear_in_compact<B: Backend, const D: usize>(
    x_kept: Tensor<B, D>,
    weight: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
) -> Tensor<B, D> {
    linear(x_kept, weight.select(1, idx))
}

/// The width a compact sliced product over `k` kept channels runs at: `k` rounded up to a
/// multiple of 8, the extra channels zero.
///
/// A row of `k` bf16 values is 16-byte aligned only when `k` is a multiple of 8; cuBLASLt's
/// vectorised kernels need 16-byte aligned leading dimensions, and without them the H200 ran the
/// 143- and 819-wide slices at 0.78-0.85x torch (docs/perf.md). Zero channels change no result
/// (see [`linear_out_sliced_padded`] and [`linear_in_compact_padded`]).
pub fn padded_width(k: usize) -> usize {
    k.next_multiple_of(8)
}

/// [`linear_out_sliced`] on `width_out >= k` output channels: the `k` kept ones, then
/// `width_out - k` zero channels (the product with zero rows of the gathered weight).
///
/// Under an autodiff backend the input gradient equals [`linear_out_sliced`]'s: the zero rows add
/// nothing to `dX = dY_padded W_padded`. The gather ([`kernels_cubecl::gather_padded`]) is one
/// launch on burn-wgpu/burn-cuda and, for a frozen weight, carries no gradient.
///
/// # Shapes
/// - `x`: `[..., in]`, `weight`: `[out, in]`, `idx`: `[k]` (indices into `0..out`)
/// - output: `[..., width_out]`, zero from channel `k` on
///
/// # Panics
/// If `k > width_out`.
pub fn linear_out_sliced_padded<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
    width_out: usize,
) -> Tensor<B, D> {
    linear(
        x,
        kernels_cubecl::gather_padded::gather_rows_padded(weight, idx, width_out),
    )
}

/// [`linear_in_compact`] on an input padded past its `k` kept channels (as
/// [`linear_out_sliced_padded`] makes it): the padding meets zero columns of the gathered weight,
/// so it adds nothing to the output and gets a zero gradient.
///
/// # Shapes
/// - `x_kept`: `[..., width]` (`width >= k`), `weight`: `[out, in]`, `idx`: `[k]`
/// - output: `[..., out]`
///
/// # Panics
/// If `k > width`.
pub fn linear_in_compact_padded<B: Backend, const D: usize>(
    x_kept: Tensor<B, D>,
    weight: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
) -> Tensor<B, D> {
    let width = x_kept.dims()[D - 1];
    linear(
        x_kept,
        kernels_cubecl::gather_padded::gather_columns_padded(weight, idx, width),
    )
}

/// Writes `kept` (`[..., k]`, or `[..., k_padded]` from a product run at a padded width: the
/// padding channels are dropped) into the channels `idx` (`[k]`) of a zero tensor of width
/// `width` (`[..., width]`): the sliced output in place, e.g. to add a full-width LoRA output to
/// it.
///
/// On burn-wgpu/burn-cuda this is `kernels_cubecl`'s column scatter (one pass over the output,
/// a gather backward) instead of burn's `scatter`, which runs one thread per column there.
pub fn scatter_channels<B: Backend, const D: usize>(
    kept: Tensor<B, D>,
    idx: Tensor<B, 1, Int>,
    width: usize,
) -> Tensor<B, D> {
    let mut dims = kept.dims();
    let k_padded = dims[D - 1];
    dims[D - 1] = width;
    let rows: usize = dims[..D - 1].iter().product();
    kernels_cubecl::channel_scatter::scatter_columns(kept.reshape([rows, k_padded]), idx, width)
        .reshape(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type B = burn::backend::Autodiff<burn::backend::Flex>;

    fn idx(values: &[i64]) -> Tensor<B, 1, Int> {
        Tensor::from_data(
            TensorData::new(values.to_vec(), [values.len()]),
            &Default::default(),
        )
    }

    /// A 0/1 mask over `width` channels with ones at `kept`.
    fn mask(kept: &[i64], width: usize) -> Tensor<B, 1> {
        let mut m = vec![0f32; width];
        for &i in kept {
            m[i as usize] = 1.0;
        }
        Tensor::from_data(TensorData::new(m, [width]), &Default::default())
    }

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    #[test]
    fn output_slicing_matches_masked_dense_forward_and_input_gradient() {
        let (x, w) = (random([2, 3, 6]).require_grad(), random([5, 6]));
        let kept = [4i64, 0, 2];
        let y = linear_out_sliced(x.clone(), w.clone(), idx(&kept));
        let dy = random([2, 3, 3]);
        let grads = (y.clone() * dy.clone()).sum().backward();
        let dx = x.grad(&grads).unwrap();

        // Masked dense: all outputs, then keep the chosen columns in the chosen order.
        let x2 = x.detach().require_grad();
        let dense = linear(x2.clone(), w.clone());
        let y_ref = dense.select(2, idx(&kept));
        y.into_data()
            .assert_approx_eq::<f32>(&y_ref.clone().into_data(), Tolerance::default());
        let grads = (y_ref * dy).sum().backward();
        dx.into_data()
            .assert_approx_eq::<f32>(&x2.grad(&grads).unwrap().into_data(), Tolerance::default());
    }

    #[test]
    fn input_slicing_matches_masked_dense_forward_and_input_gradient() {
        let (x, w) = (random([2, 3, 6]).require_grad(), random([4, 6]));
        let kept = [1i64, 5, 3];
        let y = linear_in_sliced(x.clone(), w.clone(), idx(&kept));
        let dy = random([2, 3, 4]);
        let grads = (y.clone() * dy.clone()).sum().backward();
        let dx = x.grad(&grads).unwrap();

        let x2 = x.detach().require_grad();
        let masked = x2.clone() * mask(&kept, 6).reshape([1, 1, 6]);
        let y_ref = linear(masked, w.clone());
        y.into_data()
            .assert_approx_eq::<f32>(&y_ref.clone().into_data(), Tolerance::default());
        let grads = (y_ref * dy).sum().backward();
        let dx_ref = x2.grad(&grads).unwrap();
        dx.into_data()
            .assert_approx_eq::<f32>(&dx_ref.into_data(), Tolerance::default());
    }

    #[test]
    fn padded_width_rounds_up_to_a_multiple_of_8() {
        let widths: Vec<usize> = [0, 1, 8, 143, 256, 819, 3276].map(padded_width).into();
        assert_eq!(widths, [0, 8, 8, 144, 256, 824, 3280]);
    }

    #[test]
    fn padded_chain_matches_unpadded_forward_and_input_gradient() {
        // k = 5 kept intermediate channels of 11, padded to 8.
        let (x, w_up, w_down) = (
            random([2, 3, 6]).require_grad(),
            random([11, 6]),
            random([4, 11]),
        );
        let kept = [7i64, 0, 10, 3, 5];
        let width = padded_width(kept.len());
        assert_eq!(width, 8);
        let dy = random([2, 3, 4]);

        let hidden = linear_out_sliced_padded(x.clone(), w_up.clone(), idx(&kept), width);
        assert_eq!(hidden.dims(), [2, 3, width]);
        let padding: Vec<f32> = hidden
            .clone()
            .slice([0..2, 0..3, kept.len()..width])
            .into_data()
            .to_vec()
            .unwrap();
        assert!(padding.iter().all(|&v| v == 0.0), "padding: {padding:?}");
        let y = linear_in_compact_padded(hidden.clone(), w_down.clone(), idx(&kept));
        let grads = (y.clone() * dy.clone()).sum().backward();
        let dx = x.grad(&grads).unwrap();

        let x2 = x.detach().require_grad();
        let hidden_ref = linear_out_sliced(x2.clone(), w_up, idx(&kept));
        hidden
            .slice([0..2, 0..3, 0..kept.len()])
            .into_data()
            .assert_approx_eq::<f32>(&hidden_ref.clone().into_data(), Tolerance::default());
        let y_ref = linear_in_compact(hidden_ref, w_down, idx(&kept));
        y.into_data()
            .assert_approx_eq::<f32>(&y_ref.clone().into_data(), Tolerance::default());
        let grads = (y_ref * dy).sum().backward();
        dx.into_data()
            .assert_approx_eq::<f32>(&x2.grad(&grads).unwrap().into_data(), Tolerance::default());
    }

    #[test]
    fn padded_output_slice_input_gradient_matches_unpadded() {
        // The padded channels' output gradient is nonzero here: their weight rows, not the
        // gradient, keep them out of dX.
        let (x, w) = (random([2, 3, 6]).require_grad(), random([9, 6]));
        let kept = [8i64, 1, 4];
        let y = linear_out_sliced_padded(x.clone(), w.clone(), idx(&kept), 8);
        let dy = random([2, 3, 8]);
        let grads = (y * dy.clone()).sum().backward();
        let dx = x.grad(&grads).unwrap();

        let x2 = x.detach().require_grad();
        let y_ref = linear_out_sliced(x2.clone(), w, idx(&kept));
        let grads = (y_ref * dy.slice([0..2, 0..3, 0..3])).sum().backward();
        dx.into_data()
            .assert_approx_eq::<f32>(&x2.grad(&grads).unwrap().into_data(), Tolerance::default());
    }

    #[test]
    fn keeping_every_channel_is_the_dense_projection() {
        let (x, w) = (random([2, 4, 6]), random([5, 6]));
        let all_out: Vec<i64> = (0..5).collect();
        let all_in: Vec<i64> = (0..6).collect();
        let dense = linear(x.clone(), w.clone()).into_data();
        linear_out_sliced(x.clone(), w.clone(), idx(&all_out))
            .into_data()
            .assert_approx_eq::<f32>(&dense, Tolerance::default());
        linear_in_sliced(x, w, idx(&all_in))
            .into_data()
            .assert_approx_eq::<f32>(&dense, Tolerance::default());
    }

    #[test]
    fn compact_input_and_scatter_agree_with_full_width_forms() {
        let (x, w) = (random([2, 3, 6]), random([4, 6]));
        let kept = [5i64, 2];
        let compact = x.clone().select(2, idx(&kept));
        linear_in_compact(compact.clone(), w.clone(), idx(&kept))
            .into_data()
            .assert_approx_eq::<f32>(
                &linear_in_sliced(x.clone(), w, idx(&kept)).into_data(),
                Tolerance::default(),
            );
        // Scattering the compact channels back equals masking the full tensor.
        let scattered = scatter_channels(compact, idx(&kept), 6);
        let masked = x * mask(&kept, 6).reshape([1, 1, 6]);
        scattered
            .into_data()
            .assert_approx_eq::<f32>(&masked.into_data(), Tolerance::default());
    }
}
