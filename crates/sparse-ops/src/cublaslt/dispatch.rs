//! The routing behind [`crate::linear`]: on burn-cuda (plain or under `Autodiff`), products large
//! enough to pay for the ordering go through cuBLASLt, forward and input gradient; everything else
//! keeps burn's matmul.
//!
//! The backend is recognised by `TypeId` (burn's `Backend` is `'static`), so the generic seam
//! needs no extra trait bound and other backends pay one comparison.

use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Tensor, TensorPrimitive};

use super::error::GemmError;
use super::tensor::{linear_forward, matmul_primitive, CudaBackend, Primitive};

/// Products below this many FLOPs (`2 m n k`) stay on burn's matmul: cuBLASLt's per-call
/// ordering (two host waits, see `tensor.rs`; 43-238 µs per call on the H200) costs more than it
/// saves there. 2^35 (34 GFLOP) is the crossover `cargo xtask bench gemm` measured on the H200
/// (`docs/perf.md`): from there on cuBLASLt beat burn on every shape.
pub const DEFAULT_MIN_FLOPS: u64 = 1 << 35;

static MIN_FLOPS: AtomicU64 = AtomicU64::new(DEFAULT_MIN_FLOPS);
static WARNED: AtomicBool = AtomicBool::new(false);

/// The FLOP count from which [`crate::linear`] takes the cuBLASLt path.
pub fn min_flops() -> u64 {
    MIN_FLOPS.load(Ordering::Relaxed)
}

/// Sets the FLOP count from which [`crate::linear`] takes the cuBLASLt path (`0`: always; checks
/// use it to send small odd shapes through the seam).
pub fn set_min_flops(flops: u64) {
    MIN_FLOPS.store(flops, Ordering::Relaxed);
}

type AutodiffCuda = Autodiff<CudaBackend>;

/// `x W^T` through cuBLASLt when `B` is burn-cuda and the product is large enough; otherwise (or
/// when cuBLASLt fails, which is reported once) gives `(x, weight)` back untouched.
///
/// # Shapes
/// - `x`: `[rows, in]`, `weight`: `[out, in]`, output `[rows, out]`
pub(crate) fn linear<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, (Tensor<B, 2>, Tensor<B, 2>)> {
    let ([rows, d_in], [d_out, _]) = (x.dims(), weight.dims());
    if flops(rows, d_out, d_in) < min_flops() {
        return Err((x, weight));
    }
    let backend = TypeId::of::<B>();
    let y = if backend == TypeId::of::<CudaBackend>() {
        linear_forward(cast(x.clone()), cast(weight.clone())).map(cast)
    } else if backend == TypeId::of::<AutodiffCuda>() {
        let xa: Tensor<AutodiffCuda, 2> = cast(x.clone());
        let wa: Tensor<AutodiffCuda, 2> = cast(weight.clone());
        let (xa, wa) = (xa.into_primitive().tensor(), wa.into_primitive().tensor());
        if wa.is_tracked() {
            // A trainable weight needs its own gradient: burn's matmul provides it.
            return Err((x, weight));
        }
        tracked(xa, wa).map(|y| {
            cast(Tensor::<AutodiffCuda, 2>::from_primitive(
                TensorPrimitive::Float(y),
            ))
        })
    } else {
        return Err((x, weight));
    };
    y.map_err(|e| {
        warn_once(&e);
        (x, weight)
    })
}

fn flops(m: usize, n: usize, k: usize) -> u64 {
    2 * m as u64 * n as u64 * k as u64
}

/// Moves a value into the type `T` that it has already been checked to be.
fn cast<S: 'static, T: 'static>(value: S) -> T {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
    {
        Some(value) => value,
        None => unreachable!("the caller compared the TypeIds"),
    }
}

/// The forward under `Autodiff`, recording [`InputGrad`] as the backward of `x`.
fn tracked(
    x: FloatTensor<AutodiffCuda>,
    weight: FloatTensor<AutodiffCuda>,
) -> Result<FloatTensor<AutodiffCuda>, GemmError> {
    let w = weight.primitive;
    let y = matmul_primitive(x.primitive.clone(), CudaBackend::float_transpose(w.clone()))?;
    Ok(
        match InputGrad
            .prepare::<NoCheckpointing>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(w, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        },
    )
}

/// Backward of `y = x W^T` with a frozen `W` (the state): `dX = dY W`, through cuBLASLt when it
/// can, else burn's matmul.
#[derive(Debug)]
struct InputGrad;

impl Backward<CudaBackend, 1> for InputGrad {
    type State = Primitive;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let weight = ops.state;
        unary::<CudaBackend, _>(ops.parents, ops.node, grads, |dy| {
            let [rows, d_out] = dy.meta.shape().dims();
            let [_, d_in] = weight.meta.shape().dims();
            if flops(rows, d_in, d_out) >= min_flops() {
                match matmul_primitive(dy.clone(), weight.clone()) {
                    Ok(dx) => return dx,
                    Err(e) => warn_once(&e),
                }
            }
            CudaBackend::float_matmul(dy, weight)
        });
    }
}

/// Says once per process why the cuBLASLt path fell back to burn's matmul.
fn warn_once(error: &GemmError) {
    if !WARNED.swap(true, Ordering::Relaxed) {
        eprintln!(
            "warning: sparse-ops: cuBLASLt GEMM unavailable, using burn's matmul instead: {error}"
        );
    }
}
