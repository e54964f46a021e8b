//! The routing behind [`crate::linear`]: on burn-cuda (plain or under `Autodiff`), products go
//! through cuBLASLt, forward and backward (the input gradient, and the weight gradient of a
//! trainable weight such as LoRA's `A` and `B`). When the GEMMs are queued on cubecl's own stream
//! (`tensor.rs`) every product does; when they need host waits, only those large enough to pay for
//! them ([`min_flops`]). Everything else keeps burn's matmul.
//!
//! The backend is recognised by `TypeId` (burn's `Backend` is `'static`), so the generic seam
//! needs no extra trait bound and other backends pay one comparison.

use std::any::{Any, TypeId};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::cuda::CudaDevice;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};
use burn::tensor::{Shape, Tensor, TensorPrimitive};
use kernels_cubecl::gradient_sum::register_summed;

use super::error::GemmError;
use super::tensor::{
    linear_forward, matmul_accumulate, matmul_add, matmul_batched_primitive,
    matmul_blocks_primitive, matmul_primitive, stream_ordered, CudaBackend, Primitive,
};

/// With host-wait ordering (when cubecl's stream is not known), products below this many FLOPs
/// (`2 m n k`) stay on burn's matmul: the two host waits per call (43-238 µs on the H200) cost
/// more than cuBLASLt saves there. 2^35 (34 GFLOP) is the crossover `cargo xtask bench gemm`
/// measured on the H200 (`docs/perf.md`). Ordered on cubecl's stream a GEMM costs no wait, and
/// the cuBLASLt kernel beat burn's matmul on every shape measured, so then all products go
/// through it.
pub const DEFAULT_MIN_FLOPS: u64 = 1 << 35;

static MIN_FLOPS: AtomicU64 = AtomicU64::new(DEFAULT_MIN_FLOPS);
static WARNED: AtomicBool = AtomicBool::new(false);

/// The FLOP count from which [`crate::linear`] takes the cuBLASLt path when GEMMs need host waits.
pub fn min_flops() -> u64 {
    MIN_FLOPS.load(Ordering::Relaxed)
}

/// Sets the FLOP count from which [`crate::linear`] takes the cuBLASLt path when GEMMs need host
/// waits (`0`: always; checks use it to send small odd shapes through the seam).
pub fn set_min_flops(flops: u64) {
    MIN_FLOPS.store(flops, Ordering::Relaxed);
}

type AutodiffCuda = Autodiff<CudaBackend>;

/// `x W^T` through cuBLASLt when `B` is burn-cuda and the product is worth it (module
/// documentation); otherwise (or when cuBLASLt fails, which is reported once) gives
/// `(x, weight)` back untouched.
///
/// # Shapes
/// - `x`: `[rows, in]`, `weight`: `[out, in]`, output `[rows, out]`
pub(crate) fn linear<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, (Tensor<B, 2>, Tensor<B, 2>)> {
    let backend = TypeId::of::<B>();
    let (plain, autodiff) = (
        backend == TypeId::of::<CudaBackend>(),
        backend == TypeId::of::<AutodiffCuda>(),
    );
    if !plain && !autodiff {
        return Err((x, weight));
    }
    let ([rows, d_in], [d_out, _]) = (x.dims(), weight.dims());
    let device: CudaDevice = cast(x.device());
    let ordered = stream_ordered(&device);
    if !ordered && flops(rows, d_out, d_in) < min_flops() {
        return Err((x, weight));
    }
    let y = if plain {
        linear_forward(cast(x.clone()), cast(weight.clone())).map(cast)
    } else {
        let xa: Tensor<AutodiffCuda, 2> = cast(x.clone());
        let wa: Tensor<AutodiffCuda, 2> = cast(weight.clone());
        let (xa, wa) = (xa.into_primitive().tensor(), wa.into_primitive().tensor());
        if wa.is_tracked() && !ordered {
            // A trainable weight's gradient with host waits would cost more than it saves.
            return Err((x, weight));
        }
        tracked(xa, wa).map(|y| {
            cast(Tensor::<AutodiffCuda, 2>::from_primitive(
                TensorPrimitive::Float(y),
            ))
        })
    };
    y.map_err(|e| {
        warn_once(&e);
        (x, weight)
    })
}

/// `a b` for 3-D tensors (a batch of products) through cuBLASLt when `B` is burn-cuda and the
/// GEMMs are ordered on cubecl's stream; otherwise gives `(a, b)` back untouched.
///
/// # Shapes
/// - `a`: `[batch, m, k]`, `b`: `[batch, k, n]`, output `[batch, m, n]`
pub(crate) fn matmul_batched<B: Backend>(
    a: Tensor<B, 3>,
    b: Tensor<B, 3>,
) -> Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 3>)> {
    let backend = TypeId::of::<B>();
    let (plain, autodiff) = (
        backend == TypeId::of::<CudaBackend>(),
        backend == TypeId::of::<AutodiffCuda>(),
    );
    if (!plain && !autodiff) || !stream_ordered(&cast::<_, CudaDevice>(a.device())) {
        return Err((a, b));
    }
    let y = if plain {
        let (pa, pb): (Tensor<CudaBackend, 3>, Tensor<CudaBackend, 3>) =
            (cast(a.clone()), cast(b.clone()));
        matmul_batched_primitive(pa.into_primitive().tensor(), pb.into_primitive().tensor()).map(
            |c| {
                cast(Tensor::<CudaBackend, 3>::from_primitive(
                    TensorPrimitive::Float(c),
                ))
            },
        )
    } else {
        let (pa, pb): (Tensor<AutodiffCuda, 3>, Tensor<AutodiffCuda, 3>) =
            (cast(a.clone()), cast(b.clone()));
        tracked_batched(pa.into_primitive().tensor(), pb.into_primitive().tensor()).map(|c| {
            cast(Tensor::<AutodiffCuda, 3>::from_primitive(
                TensorPrimitive::Float(c),
            ))
        })
    };
    y.map_err(|e| {
        warn_once(&e);
        (a, b)
    })
}

/// The blocks of a batched product ([`kernels_cubecl::BatchedMatmul::matmul_blocks`]) through
/// cuBLASLt, one strided-batch GEMM per block writing in place, when `B` is burn-cuda (no
/// `Autodiff`: attention calls it on the inner backend) and the GEMMs are ordered on cubecl's
/// stream; otherwise gives `(a, b)` back untouched.
pub(crate) fn matmul_blocks<B: Backend>(
    a: Tensor<B, 3>,
    b: Tensor<B, 3>,
    blocks: &[kernels_cubecl::ProductBlock],
) -> Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 3>)> {
    if TypeId::of::<B>() != TypeId::of::<CudaBackend>()
        || !stream_ordered(&cast::<_, CudaDevice>(a.device()))
    {
        return Err((a, b));
    }
    let (pa, pb): (Tensor<CudaBackend, 3>, Tensor<CudaBackend, 3>) =
        (cast(a.clone()), cast(b.clone()));
    matmul_blocks_primitive(
        pa.into_primitive().tensor(),
        pb.into_primitive().tensor(),
        blocks,
    )
    .map(|c| {
        cast(Tensor::<CudaBackend, 3>::from_primitive(
            TensorPrimitive::Float(c),
        ))
    })
    .map_err(|e| {
        warn_once(&e);
        (a, b)
    })
}

/// The batched product under `Autodiff`, recording [`BatchedGrads`] as its backward.
fn tracked_batched(
    a: FloatTensor<AutodiffCuda>,
    b: FloatTensor<AutodiffCuda>,
) -> Result<FloatTensor<AutodiffCuda>, GemmError> {
    let (a_tracked, b_tracked) = (a.is_tracked(), b.is_tracked());
    let c = matmul_batched_primitive(a.primitive.clone(), b.primitive.clone())?;
    let state = (
        b_tracked.then(|| a.primitive.clone()),
        a_tracked.then(|| b.primitive.clone()),
    );
    Ok(record(BatchedGrads, [&a, &b], state, c))
}

/// Backward of `C = A B` batched: `dA = dC B^T`, `dB = A^T dC`, each only when asked for.
#[derive(Debug)]
struct BatchedGrads;

impl Backward<CudaBackend, 2> for BatchedGrads {
    /// `(A if B needs a gradient, B if A needs one)`.
    type State = (Option<Primitive>, Option<Primitive>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, b) = ops.state;
        let batched =
            |x: Primitive, y: Primitive| match matmul_batched_primitive(x.clone(), y.clone()) {
                Ok(c) => c,
                Err(e) => {
                    warn_once(&e);
                    CudaBackend::float_matmul(x, y)
                }
            };
        binary::<CudaBackend, _, _>(
            ops.parents,
            ops.node,
            grads,
            |dc| {
                let b = b.expect("kept when A needs a gradient");
                batched(dc, CudaBackend::float_swap_dims(b, 1, 2))
            },
            |dc| {
                let a = a.expect("kept when B needs a gradient");
                batched(CudaBackend::float_swap_dims(a, 1, 2), dc)
            },
        );
    }
}

fn flops(m: usize, n: usize, k: usize) -> u64 {
    2 * m as u64 * n as u64 * k as u64
}

/// Moves a value into the type `T` that it has already been checked to be.
pub(super) fn cast<S: 'static, T: 'static>(value: S) -> T {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
    {
        Some(value) => value,
        None => unreachable!("the caller compared the TypeIds"),
    }
}

/// The forward under `Autodiff`, recording [`LinearGrads`] as its backward.
fn tracked(
    x: FloatTensor<AutodiffCuda>,
    weight: FloatTensor<AutodiffCuda>,
) -> Result<FloatTensor<AutodiffCuda>, GemmError> {
    let (x_tracked, w_tracked) = (x.is_tracked(), weight.is_tracked());
    let y = matmul_primitive(
        x.primitive.clone(),
        CudaBackend::float_transpose(weight.primitive.clone()),
    )?;
    // dX needs W, dW needs X: keep only what a requested gradient reads.
    let state = (
        w_tracked.then(|| x.primitive.clone()),
        x_tracked.then(|| weight.primitive.clone()),
    );
    Ok(record(LinearGrads, [&x, &weight], state, y))
}

/// Records `op` as the backward of `out`, computed from `parents`, keeping `state` for it when
/// any parent is tracked: the one way this module's ops enter the autodiff graph.
fn record<O: Backward<CudaBackend, N>, const N: usize>(
    op: O,
    parents: [&FloatTensor<AutodiffCuda>; N],
    state: O::State,
    out: Primitive,
) -> FloatTensor<AutodiffCuda> {
    match op
        .prepare::<NoCheckpointing>(parents.map(|t| t.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// Backward of `y = x W^T`: `dX = dY W` and `dW = dY^T X`, each only when asked for, through
/// cuBLASLt when it can, else burn's matmul.
#[derive(Debug)]
struct LinearGrads;

/// `(x if W needs a gradient, W if x needs one)`: what the backward of `x W^T` reads.
type LinearState = (Option<Primitive>, Option<Primitive>);

impl Backward<CudaBackend, 2> for LinearGrads {
    type State = LinearState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy: Primitive = grads.consume::<CudaBackend>(&ops.node);
        let [node_x, node_w] = ops.parents;
        let x_key = node_x.map(|node| move |key: &mut FloatTensor<AutodiffCuda>| key.node = node);
        linear_grads(ops.state, x_key, node_w.map(|node| node.id), dy, grads);
    }
}

/// The gradients of `y = x W^T` for `dy`: `dW = dY^T X` for the weight's node `w_id`, and
/// `dX = dY W` for the input's node, which `x_key` points a gradient key at; each only when
/// asked for.
fn linear_grads(
    (x, weight): LinearState,
    x_key: Option<impl FnOnce(&mut FloatTensor<AutodiffCuda>)>,
    w_id: Option<NodeId>,
    dy: Primitive,
    grads: &mut Gradients,
) {
    if let Some(id) = w_id {
        let x = x.expect("kept when W needs a gradient");
        let dw = gemm_or_burn(CudaBackend::float_transpose(dy.clone()), x);
        grads.register::<CudaBackend>(id, dw);
    }
    if let Some(x_key) = x_key {
        let weight = weight.expect("kept when x needs a gradient");
        // dX = dY W, accumulated into another consumer's share of dX when there is one
        // (q, k and v read one input): `kernels_cubecl::gradient_sum`.
        register_summed::<CudaBackend>(
            grads,
            dy.clone(),
            x_key,
            |earlier| accumulate_into(dy.clone(), weight.clone(), earlier),
            || gemm_or_burn(dy.clone(), weight.clone()),
        );
    }
}

/// `addend + x W^T` through cuBLASLt with the add done by the product's epilogue (`C != D`: the
/// addend, a residual stream, is read and kept), when `B` is burn-cuda, GEMMs are ordered on
/// cubecl's stream and the three share a dtype; otherwise (or when cuBLASLt cannot take it,
/// reported once) gives the inputs back untouched.
///
/// The addend keeps its own shape and is flattened to rows inside the op: a reshape node between
/// the residual stream and this op would register its gradient share only after the norm that
/// also reads the stream has run its backward (both would sit one step below the stream), so the
/// norm's kernel could not add it (`kernels_cubecl::gradient_sum`) and burn would, in one more
/// pass. As a direct parent, its share is registered when this op runs, before the norm's.
///
/// # Shapes
/// - `x`: `[rows, in]`, `weight`: `[out, in]`, `addend`: `[..., out]` with `rows` rows; output
///   `[rows, out]`
pub(crate) fn linear_onto<B: Backend, const E: usize>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    addend: Tensor<B, E>,
) -> Result<Tensor<B, 2>, LinearOntoInputs<B, E>> {
    let backend = TypeId::of::<B>();
    let (plain, autodiff) = (
        backend == TypeId::of::<CudaBackend>(),
        backend == TypeId::of::<AutodiffCuda>(),
    );
    let fits = (plain || autodiff)
        && x.dtype() == weight.dtype()
        && x.dtype() == addend.dtype()
        && stream_ordered(&cast::<_, CudaDevice>(x.device()));
    if !fits {
        return Err((x, weight, addend));
    }
    let y = if plain {
        let w = CudaBackend::float_transpose(primitive::<CudaBackend, _, 2>(weight.clone()));
        let c = rows_of(primitive::<CudaBackend, _, E>(addend.clone()));
        let x = primitive::<CudaBackend, _, 2>(x.clone());
        matmul_add(x, w, 1.0, c).map(from_primitive::<CudaBackend, B>)
    } else {
        tracked_onto(
            primitive::<AutodiffCuda, _, 2>(x.clone()),
            primitive::<AutodiffCuda, _, 2>(weight.clone()),
            primitive::<AutodiffCuda, _, E>(addend.clone()),
        )
        .map(from_primitive::<AutodiffCuda, B>)
    };
    y.map_err(|e| {
        if e != GemmError::NotWritable {
            warn_once(&e);
        }
        (x, weight, addend)
    })
}

/// The inputs of [`linear_onto`], given back when the fused op does not apply.
pub(crate) type LinearOntoInputs<B, const E: usize> = (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, E>);

/// The primitive of `t`, a tensor of `B` already checked to be of `C`.
fn primitive<C: Backend, B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<C> {
    cast::<_, Tensor<C, D>>(t).into_primitive().tensor()
}

/// The tensor of `B` (checked to be `C`) around a `[rows, out]` primitive of `C`.
fn from_primitive<C: Backend, B: Backend>(t: FloatTensor<C>) -> Tensor<B, 2> {
    cast(Tensor::<C, 2>::from_primitive(TensorPrimitive::Float(t)))
}

/// `t` (`[..., n]`) as `[rows, n]`: a view for a contiguous tensor.
fn rows_of(t: Primitive) -> Primitive {
    let shape = t.meta.shape();
    let n = shape
        .get(shape.num_dims().wrapping_sub(1))
        .copied()
        .unwrap_or(1);
    let rows = shape.num_elements() / n.max(1);
    CudaBackend::float_reshape(t, Shape::new([rows, n]))
}

/// [`linear_onto`] under `Autodiff`, recording [`LinearOntoGrads`] as its backward.
fn tracked_onto(
    x: FloatTensor<AutodiffCuda>,
    weight: FloatTensor<AutodiffCuda>,
    addend: FloatTensor<AutodiffCuda>,
) -> Result<FloatTensor<AutodiffCuda>, GemmError> {
    let (x_tracked, w_tracked) = (x.is_tracked(), weight.is_tracked());
    let addend_shape = addend.primitive.meta.shape().clone();
    let y = matmul_add(
        x.primitive.clone(),
        CudaBackend::float_transpose(weight.primitive.clone()),
        1.0,
        rows_of(addend.primitive.clone()),
    )?;
    let state = (
        w_tracked.then(|| x.primitive.clone()),
        x_tracked.then(|| weight.primitive.clone()),
    );
    Ok(record(
        LinearOntoGrads { addend_shape },
        [&x, &weight, &addend],
        state,
        y,
    ))
}

/// Backward of `y = addend + x W^T`: [`LinearGrads`]' two, and `dY` itself (in the addend's
/// shape) for the addend.
#[derive(Debug)]
struct LinearOntoGrads {
    addend_shape: Shape,
}

impl Backward<CudaBackend, 3> for LinearOntoGrads {
    type State = LinearState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy: Primitive = grads.consume::<CudaBackend>(&ops.node);
        let [node_x, node_w, node_addend] = ops.parents;
        let x_key = node_x.map(|node| move |key: &mut FloatTensor<AutodiffCuda>| key.node = node);
        linear_grads(
            ops.state,
            x_key,
            node_w.map(|node| node.id),
            dy.clone(),
            grads,
        );
        if let Some(node) = node_addend {
            let dy = CudaBackend::float_reshape(dy, self.addend_shape);
            grads.register::<CudaBackend>(node.id, dy);
        }
    }
}

/// `c + a b` written into `c` by a `beta = 1` GEMM; `c` back when the GEMM cannot write it
/// (shared, strided, another dtype, host-wait ordering), for burn to add instead.
pub(super) fn accumulate_into(
    a: Primitive,
    b: Primitive,
    c: Primitive,
) -> Result<Primitive, Box<Primitive>> {
    matmul_accumulate(a, b, 1.0, c).map_err(|failed| {
        let (error, c) = *failed;
        if error != GemmError::NotWritable {
            warn_once(&error);
        }
        Box::new(c)
    })
}

/// `a b` through cuBLASLt when worth it (see [`linear`]), else burn's matmul.
fn gemm_or_burn(a: Primitive, b: Primitive) -> Primitive {
    let ([m, k], [_, n]) = (a.meta.shape().dims(), b.meta.shape().dims());
    if stream_ordered(&a.device) || flops(m, n, k) >= min_flops() {
        match matmul_primitive(a.clone(), b.clone()) {
            Ok(c) => return c,
            Err(e) => warn_once(&e),
        }
    }
    CudaBackend::float_matmul(a, b)
}

/// Says once per process why the cuBLASLt path fell back to burn's matmul.
pub(super) fn warn_once(error: &GemmError) {
    if !WARNED.swap(true, Ordering::Relaxed) {
        eprintln!(
            "warning: sparse-ops: cuBLASLt GEMM unavailable, using burn's matmul instead: {error}"
        );
    }
}
