//! [`crate::lora_linear`] on burn-cuda: the adapter's last product of each chain accumulates into
//! the first one's output (`beta = 1`) with the LoRA scaling as its `alpha` (see `crate::lora`),
//! forward and backward. Only when GEMMs are ordered on cubecl's stream (an accumulating GEMM
//! cannot be ordered by host waits); otherwise the inputs go back to the reference.

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::cuda::CudaDevice;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{DType, Tensor, TensorPrimitive};

use super::dispatch::{accumulate_into, cast, warn_once};
use super::error::GemmError;
use super::tensor::{matmul_accumulate, matmul_scaled, stream_ordered, CudaBackend, Primitive};
use crate::frozen_base::FrozenBase;
use kernels_cubecl::gradient_sum::register_summed;

type AutodiffCuda = Autodiff<CudaBackend>;

/// The four inputs of [`crate::lora_linear`], given back when the fused op does not apply.
type Inputs<B> = (FrozenBase<B>, Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>);

/// [`crate::lora_linear`] fused on burn-cuda (plain or `Autodiff`) with stream-ordered GEMMs, the
/// same dtype everywhere and a frozen weight; otherwise the inputs back. Once it applies it always
/// gives the output: a product that cuBLASLt cannot run falls back to burn's matmul (reported
/// once).
pub(crate) fn lora_linear<B: Backend>(
    base: FrozenBase<B>,
    x: Tensor<B, 2>,
    lora_a: Tensor<B, 2>,
    lora_b: Tensor<B, 2>,
    scaling: f64,
) -> Result<Tensor<B, 2>, Inputs<B>> {
    let backend = TypeId::of::<B>();
    let plain = backend == TypeId::of::<CudaBackend>();
    let autodiff = backend == TypeId::of::<AutodiffCuda>();
    let dtype = x.dtype();
    let fits = (plain || autodiff)
        && frozen_in(&base, dtype)
        && factors_fit(&lora_a, &lora_b, dtype)
        && stream_ordered(&cast::<_, CudaDevice>(x.device()));
    if !fits {
        return Err((base, x, lora_a, lora_b));
    }
    let scaling = scaling as f32;
    if plain {
        let p = |t: Tensor<B, 2>| {
            cast::<_, Tensor<CudaBackend, 2>>(t)
                .into_primitive()
                .tensor()
        };
        let (y, _, _, _) = forward(
            Frozen::from_base(base, p),
            p(x),
            p(lora_a),
            p(lora_b),
            scaling,
        );
        return Ok(cast(Tensor::<CudaBackend, 2>::from_primitive(
            TensorPrimitive::Float(y),
        )));
    }
    let p = |t: Tensor<B, 2>| {
        cast::<_, Tensor<AutodiffCuda, 2>>(t)
            .into_primitive()
            .tensor()
    };
    let y = tracked(
        Frozen::from_base(base, p),
        p(x),
        p(lora_a),
        p(lora_b),
        scaling,
    );
    Ok(cast(Tensor::<AutodiffCuda, 2>::from_primitive(
        TensorPrimitive::Float(y),
    )))
}

/// Whether the adapter's factors are what the fused ops take for an input in `dtype`: in `dtype`,
/// or both in f32 (master weights) for a bf16/f16 input, whose products then run in `dtype` with
/// the factors cast to it (as [`crate::lora::reference::lora_linear`] does) and whose gradients
/// come out of the GEMMs in f32.
pub(super) fn factors_fit<B: Backend>(a: &Tensor<B, 2>, b: &Tensor<B, 2>, dtype: DType) -> bool {
    let half = matches!(dtype, DType::BF16 | DType::F16);
    a.dtype() == b.dtype() && (a.dtype() == dtype || (half && a.dtype() == DType::F32))
}

/// `factor` in `dtype` (a plain cast when it is not already: no graph node, the fused op's
/// backward gives the gradient in the factor's own dtype).
pub(super) fn in_dtype(factor: Primitive, dtype: DType) -> Primitive {
    if factor.dtype == dtype {
        factor
    } else {
        CudaBackend::float_cast(factor, dtype.into())
    }
}

/// Whether `base` is in `dtype` and, for a weight, frozen: what the fused ops take.
pub(super) fn frozen_in<B: Backend>(base: &FrozenBase<B>, dtype: DType) -> bool {
    match base {
        FrozenBase::Weight(w) => w.dtype() == dtype && !w.is_require_grad(),
        FrozenBase::Output(y) => y.dtype() == dtype,
    }
}

/// [`FrozenBase`] on primitives.
#[derive(Debug, Clone)]
pub(super) enum Frozen<T> {
    Weight(T),
    Output(T),
}

impl<T> Frozen<T> {
    /// `base` with its tensor converted by `convert`.
    pub(super) fn from_base<B: Backend>(
        base: FrozenBase<B>,
        convert: impl Fn(Tensor<B, 2>) -> T,
    ) -> Self {
        match base {
            FrozenBase::Weight(w) => Frozen::Weight(convert(w)),
            FrozenBase::Output(y) => Frozen::Output(convert(y)),
        }
    }
}

/// `(y, h, W, [A, B])`: `y = base + s h B^T` with `h = x A^T` (kept for `dB`), `y` written by
/// the last product into the base output's buffer; the weight of a [`Frozen::Weight`] base (for
/// `dX`); the factors in `x`'s dtype (for `dX`).
fn forward(
    base: Frozen<Primitive>,
    x: Primitive,
    a: Primitive,
    b: Primitive,
    scaling: f32,
) -> (Primitive, Primitive, Option<Primitive>, [Primitive; 2]) {
    let t = CudaBackend::float_transpose;
    let (a, b) = (in_dtype(a, x.dtype), in_dtype(b, x.dtype));
    let h = scaled(x.clone(), t(a.clone()), 1.0);
    let (y, weight) = match base {
        Frozen::Weight(w) => (scaled(x, t(w.clone()), 1.0), Some(w)),
        Frozen::Output(y) => (y, None),
    };
    let y = accumulate(h.clone(), t(b.clone()), scaling, y);
    (y, h, weight, [a, b])
}

/// `c + alpha a b`: into `c`'s buffer when it is ours alone, else (or when cuBLASLt cannot run it)
/// a product and an add.
pub(super) fn accumulate(a: Primitive, b: Primitive, alpha: f32, c: Primitive) -> Primitive {
    match matmul_accumulate(a.clone(), b.clone(), alpha, c) {
        Ok(c) => c,
        Err(failed) => {
            let (error, c) = *failed;
            if error != GemmError::NotWritable {
                warn_once(&error);
            }
            CudaBackend::float_add(c, scaled(a, b, alpha))
        }
    }
}

/// The forward under `Autodiff`, recording [`LoraBackward`].
fn tracked(
    base: Frozen<FloatTensor<AutodiffCuda>>,
    x: FloatTensor<AutodiffCuda>,
    a: FloatTensor<AutodiffCuda>,
    b: FloatTensor<AutodiffCuda>,
    scaling: f32,
) -> FloatTensor<AutodiffCuda> {
    // The base output's primitive moves into the op (its buffer is written); only its node stays.
    let (first, base) = match base {
        Frozen::Weight(w) => (w.node, Frozen::Weight(w.primitive)),
        Frozen::Output(y) => (y.node, Frozen::Output(y.primitive)),
    };
    let factor_dtype = a.primitive.dtype;
    let (y, h, weight, [a_in, b_in]) =
        forward(base, x.primitive.clone(), a.primitive, b.primitive, scaling);
    let backward = LoraBackward {
        scaling,
        base_is_output: weight.is_none(),
        factor_dtype,
    };
    match backward
        .prepare::<NoCheckpointing>([first, x.node, a.node, b.node])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let state = State {
                x: x.primitive,
                h,
                a: a_in,
                b: b_in,
                weight,
            };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

/// What the backward reads: `x` (for `dA`), `h = x A^T` (for `dB`), `A` and `B` in `x`'s dtype,
/// and the frozen weight (for `dX`) when the op computed the base product.
#[derive(Debug, Clone)]
struct State {
    x: Primitive,
    h: Primitive,
    a: Primitive,
    b: Primitive,
    weight: Option<Primitive>,
}

/// Backward of the fused op with respect to the base output (when given), `x`, `A` and `B`.
#[derive(Debug)]
struct LoraBackward {
    scaling: f32,
    base_is_output: bool,
    /// The factors' own dtype, their gradients' (f32 master weights of a half-precision op).
    factor_dtype: DType,
}

impl Backward<CudaBackend, 4> for LoraBackward {
    type State = State;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_base, node_x, node_a, node_b] = ops.parents;
        let dy: Primitive = grads.consume::<CudaBackend>(&ops.node);
        let State { x, h, a, b, weight } = ops.state;
        let s = self.scaling;
        let t = CudaBackend::float_transpose;
        // g = s dY B: the gradient of h, shared by dX and dA.
        let g = (node_x.is_some() || node_a.is_some()).then(|| scaled(dy.clone(), b, s));
        let factor = self.factor_dtype;
        if let Some(node) = node_b {
            grads.register::<CudaBackend>(node.id, scaled_in(t(dy.clone()), h, s, factor));
        }
        if let (Some(node), Some(g)) = (node_a, &g) {
            grads.register::<CudaBackend>(node.id, scaled_in(t(g.clone()), x, 1.0, factor));
        }
        if let (Some(node), Some(g)) = (node_x, g) {
            // dX = dY W (or nothing for a given base output), then dX += g A in the same buffer;
            // both accumulate into another consumer's share of dX when there is one (q, k and v
            // read one input): `kernels_cubecl::gradient_sum`.
            register_summed::<CudaBackend>(
                grads,
                dy.clone(),
                |key| key.node = node.clone(),
                |earlier| {
                    let base = match &weight {
                        Some(w) => accumulate_into(dy.clone(), w.clone(), earlier)?,
                        None => earlier,
                    };
                    Ok(accumulate(g.clone(), a.clone(), 1.0, base))
                },
                || {
                    let (g, a) = (g.clone(), a.clone());
                    match &weight {
                        Some(w) => accumulate(g, a, 1.0, scaled(dy.clone(), w.clone(), 1.0)),
                        None => scaled(g, a, 1.0),
                    }
                },
            );
        }
        if let (Some(node), true) = (node_base, self.base_is_output) {
            grads.register::<CudaBackend>(node.id, dy);
        }
    }
}

/// `alpha a b` in `out_dtype` (the operands', or f32): written so by cuBLASLt, or burn's matmul,
/// a scalar multiply and a cast as needed if it cannot run (reported once).
pub(super) fn scaled_in(a: Primitive, b: Primitive, alpha: f32, out_dtype: DType) -> Primitive {
    match matmul_scaled(a.clone(), b.clone(), alpha, out_dtype) {
        Ok(c) => c,
        Err(e) => {
            warn_once(&e);
            let c = CudaBackend::float_matmul(a, b);
            let c = if alpha == 1.0 {
                c
            } else {
                CudaBackend::float_mul_scalar(c, alpha.into())
            };
            if c.dtype == out_dtype {
                c
            } else {
                CudaBackend::float_cast(c, out_dtype.into())
            }
        }
    }
}

/// `alpha a b` in the operands' dtype: [`scaled_in`].
pub(super) fn scaled(a: Primitive, b: Primitive, alpha: f32) -> Primitive {
    let dtype = a.dtype;
    scaled_in(a, b, alpha, dtype)
}
