//! A LoRA-adapted projection's products in one op: the frozen product and the adapter's two
//! low-rank products, with the adapter's scaling and its add onto the base output done by the
//! GEMMs themselves.
//!
//! Composed of separate products, `x W^T + s (x A^T) B^T` costs three element-wise passes over
//! the `[n, out]` output beyond the GEMMs (the scaling, the add, and in the backward the scaling
//! of `dY` again), and the input gradient two `[n, in]` tensors that autodiff then adds. On
//! burn-cuda with GEMMs ordered on cubecl's stream ([`crate::cublaslt`]) the last product of each
//! chain accumulates into the first one's output instead (cuBLASLt's `D = alpha A B + beta C` with
//! `beta = 1`), with the scaling as its `alpha`: forward `y = x W^T`, then `y += s h B^T` with
//! `h = x A^T`; backward `g = s dY B`, `dX = dY W`, then `dX += g A`, `dA = g^T x`,
//! `dB = s dY^T h`. Everywhere else (and whenever the fused op cannot run) the
//! [`reference`] composition of [`crate::linear`] calls computes the same values.

use burn::tensor::{backend::Backend, Tensor};

pub use crate::frozen_base::{FrozenBase, GroupMember};

/// `base + scaling (x A^T) B^T`, where `base` is `x W^T` for [`FrozenBase::Weight`].
///
/// `lora_a` and `lora_b` are in `x`'s dtype, or both in f32 (the adapter's master weights) for a
/// bf16/f16 `x`: the products then run in `x`'s dtype with the factors cast to it, as PEFT under
/// autocast, and the factors' gradients are f32. The fused op writes those gradients in f32
/// straight from the GEMMs (cuBLASLt's half-precision operands with an f32 output) where a cast
/// of each factor's half-precision gradient would otherwise follow.
///
/// # Shapes
/// - `x`: `[n, in]`, `lora_a`: `[r, in]`, `lora_b`: `[out, r]`, base weight `[out, in]` or output
///   `[n, out]`; output `[n, out]`
pub fn lora_linear<B: Backend>(
    base: FrozenBase<B>,
    x: Tensor<B, 2>,
    lora_a: Tensor<B, 2>,
    lora_b: Tensor<B, 2>,
    scaling: f64,
) -> Tensor<B, 2> {
    #[cfg(feature = "cuda")]
    let (base, x, lora_a, lora_b) =
        match crate::cublaslt::dispatch_lora_linear(base, x, lora_a, lora_b, scaling) {
            Ok(y) => return y,
            Err(inputs) => inputs,
        };
    reference::lora_linear(base, x, lora_a, lora_b, scaling)
}

/// [`lora_linear`] of three projections that read the same `x` (q, k and v): the same values
/// and gradients. On burn-cuda under `Autodiff` (stream-ordered GEMMs, one dtype) the adapters'
/// products with `x` are taken together, so that `x` is read once for the three down products
/// forward, once for their `dA` backward, and `dX` gets their share in one pass (see
/// `cublaslt/lora_group.rs`); elsewhere it is three [`lora_linear`] calls.
///
/// Every output must reach the loss (as attention's q, k and v do): the adapters' gradients are
/// computed once the backward of each tracked output has run.
///
/// # Shapes
/// - `x`: `[n, in]`; each member as in [`lora_linear`]; outputs `[n, out_i]`
pub fn lora_linear_group<B: Backend>(
    x: Tensor<B, 2>,
    members: [GroupMember<B>; 3],
) -> [Tensor<B, 2>; 3] {
    #[cfg(feature = "cuda")]
    let (x, members) = match crate::cublaslt::dispatch_lora_linear_group(x, members) {
        Ok(outputs) => return outputs,
        Err(inputs) => inputs,
    };
    members.map(|m| lora_linear(m.base, x.clone(), m.lora_a, m.lora_b, m.scaling))
}

/// The fused op's definition in separate products and element-wise ops.
pub mod reference {
    use super::FrozenBase;
    use burn::tensor::{backend::Backend, Tensor};

    /// `base + scaling (x A^T) B^T` as [`super::lora_linear`], one [`crate::linear`] per
    /// product (the factors cast to `x`'s dtype first when they are not in it).
    pub fn lora_linear<B: Backend>(
        base: FrozenBase<B>,
        x: Tensor<B, 2>,
        lora_a: Tensor<B, 2>,
        lora_b: Tensor<B, 2>,
        scaling: f64,
    ) -> Tensor<B, 2> {
        let dtype = x.dtype();
        let in_dtype = |t: Tensor<B, 2>| if t.dtype() == dtype { t } else { t.cast(dtype) };
        let (lora_a, lora_b) = (in_dtype(lora_a), in_dtype(lora_b));
        let base = match base {
            FrozenBase::Weight(weight) => crate::linear(x.clone(), weight),
            FrozenBase::Output(output) => output,
        };
        base + crate::linear(crate::linear(x, lora_a), lora_b) * scaling
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    type TestBackend = burn::backend::Flex;

    /// Off CUDA the op is its reference: `x (W + s B A)^T`, and the output form adds onto the
    /// given base.
    #[test]
    fn equals_the_merged_weight_product() {
        let device = Default::default();
        let random = |dims: [usize; 2]| {
            Tensor::<TestBackend, 2>::random(dims, Distribution::Default, &device)
        };
        let (x, w, a, b) = (
            random([5, 6]),
            random([4, 6]),
            random([2, 6]),
            random([4, 2]),
        );
        let merged = w.clone() + b.clone().matmul(a.clone()) * 0.5;
        let expected = crate::linear(x.clone(), merged);
        let y = lora_linear(
            FrozenBase::Weight(w.clone()),
            x.clone(),
            a.clone(),
            b.clone(),
            0.5,
        );
        y.into_data()
            .assert_approx_eq::<f32>(&expected.clone().into_data(), Tolerance::default());
        let base = crate::linear(x.clone(), w);
        let y = lora_linear(FrozenBase::Output(base), x, a, b, 0.5);
        y.into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::default());
    }

    /// f32 master factors with a half-precision input: the products run in the input's dtype
    /// (the factors cast to it, as when the caller casts them), the factors' gradients are f32.
    #[test]
    fn f32_factors_of_a_half_input_are_cast_and_get_f32_gradients() {
        type Ad = burn::backend::Autodiff<TestBackend>;
        let device = Default::default();
        let random =
            |dims: [usize; 2]| Tensor::<Ad, 2>::random(dims, Distribution::Default, &device);
        let half = burn::tensor::DType::F16;
        let (x, w) = (random([5, 6]).cast(half), random([4, 6]).cast(half));
        let (a, b) = (random([2, 6]), random([4, 2]));
        let (a1, b1) = (a.clone().require_grad(), b.clone().require_grad());
        let y = lora_linear(
            FrozenBase::Weight(w.clone()),
            x.clone(),
            a1.clone(),
            b1.clone(),
            0.5,
        );
        assert_eq!(y.dtype(), half);
        let grads = y.clone().cast(burn::tensor::DType::F32).sum().backward();
        let (a2, b2) = (a.require_grad(), b.require_grad());
        let expected = lora_linear(
            FrozenBase::Weight(w),
            x,
            a2.clone().cast(half),
            b2.clone().cast(half),
            0.5,
        );
        let grads_expected = expected
            .clone()
            .cast(burn::tensor::DType::F32)
            .sum()
            .backward();
        y.into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::default());
        for (ours, reference) in [
            (a1.grad(&grads).unwrap(), a2.grad(&grads_expected).unwrap()),
            (b1.grad(&grads).unwrap(), b2.grad(&grads_expected).unwrap()),
        ] {
            assert_eq!(ours.dtype(), burn::tensor::DType::F32);
            ours.into_data()
                .assert_approx_eq::<f32>(&reference.into_data(), Tolerance::default());
        }
    }
}
