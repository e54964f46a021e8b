//! The column scatter under `Autodiff`: the fused forward, recording [`ScatterBackward`] (no
//! base) or [`ScatterAddBackward`], whose state is the indices: the base's gradient is the
//! output's, the kept values' is the output gradient's kept columns. The column gather records
//! [`GatherBackward`], a scatter.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::{FloatTensor, IntTensor};

use super::kernel;
use crate::dispatch::Cube;
use crate::gather_padded::kernel::gather_columns;
use crate::gradient_sum::register_summed;

/// Backward of `out = scatter(kept, idx)`: `dkept = dout[:, idx]`, zero in `kept`'s padding
/// columns.
#[derive(Debug)]
pub(super) struct ScatterBackward;

impl<C: Cube> Backward<C, 1> for ScatterBackward {
    /// The kept columns' indices and `kept`'s width.
    type State = (IntTensor<C>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (idx, k_padded) = ops.state;
        unary::<C, _>(ops.parents, ops.node, grads, |dout| {
            C::float_from(gather_columns(
                C::float_into(dout),
                C::int_into(idx),
                k_padded,
            ))
        });
    }
}

/// Backward of `out = base + scatter(kept, idx)`: `dbase = dout`, `dkept = dout[:, idx]`.
#[derive(Debug)]
pub(super) struct ScatterAddBackward;

impl<C: Cube> Backward<C, 2> for ScatterAddBackward {
    /// The kept columns' indices.
    type State = IntTensor<C>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let idx = ops.state;
        let dout = grads.consume::<C>(&ops.node);
        let [base_node, kept_node] = ops.parents;
        if let Some(node) = kept_node {
            let dkept = kept_columns(C::float_into(dout.clone()), C::int_into(idx));
            grads.register::<C>(node.id, C::float_from(dkept));
        }
        if let Some(node) = base_node {
            grads.register::<C>(node.id, dout);
        }
    }
}

/// `dout`'s columns `idx`, contiguous `[rows, k]`: the padded gather with no padding.
fn kept_columns<R: burn_cubecl::CubeRuntime>(
    dout: burn_cubecl::tensor::CubeTensor<R>,
    idx: burn_cubecl::tensor::CubeTensor<R>,
) -> burn_cubecl::tensor::CubeTensor<R> {
    let k = idx.meta.shape()[0];
    gather_columns(dout, idx, k)
}

/// The fused `scatter(kept, idx)` (tracked or not; `kept` may be padded past `idx`'s length).
pub(super) fn scatter<C: Cube>(
    kept: FloatTensor<Autodiff<C>>,
    idx: IntTensor<C>,
    width: usize,
) -> FloatTensor<Autodiff<C>> {
    let kept_inner = C::float_into(kept.primitive.clone());
    let k_padded = kept_inner.meta.shape()[1];
    let out = C::float_from(kernel::forward(
        None,
        kept_inner,
        C::int_into(idx.clone()),
        width,
    ));
    match <ScatterBackward as Backward<C, 1>>::prepare::<NoCheckpointing>(
        ScatterBackward,
        [kept.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((idx, k_padded), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// The fused `base + scatter(kept, idx)` (tracked or not).
pub(super) fn scatter_add<C: Cube>(
    base: FloatTensor<Autodiff<C>>,
    kept: FloatTensor<Autodiff<C>>,
    idx: IntTensor<C>,
    width: usize,
) -> FloatTensor<Autodiff<C>> {
    let out = C::float_from(kernel::forward(
        Some(C::float_into(base.primitive.clone())),
        C::float_into(kept.primitive.clone()),
        C::int_into(idx.clone()),
        width,
    ));
    match <ScatterAddBackward as Backward<C, 2>>::prepare::<NoCheckpointing>(
        ScatterAddBackward,
        [base.node.clone(), kept.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(idx, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// Backward of `out = x[:, idx]` (padded): `dx` zero but for `dx[:, idx] = dout` (its first
/// `k` columns), added into the share of `dx` another reader of `x` registered first when there
/// is one (one pass instead of a scatter and burn's add).
#[derive(Debug)]
pub(super) struct GatherBackward;

impl<C: Cube> Backward<C, 1> for GatherBackward {
    /// The gathered columns' indices and `x`'s width.
    type State = (IntTensor<C>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [Some(parent)] = ops.parents else {
            return;
        };
        let (idx, width) = ops.state;
        let idx = C::int_into(idx);
        let dout = C::float_into(grads.consume::<C>(&ops.node));
        register_summed::<C>(
            grads,
            C::float_from(dout.clone()),
            |key| key.node = parent.clone(),
            |earlier| {
                let earlier = C::float_into(earlier);
                let fits = earlier.dtype == dout.dtype
                    && earlier.meta.shape()[..] == [dout.meta.shape()[0], width];
                if fits {
                    let summed = kernel::forward(Some(earlier), dout.clone(), idx.clone(), width);
                    Ok(C::float_from(summed))
                } else {
                    Err(Box::new(C::float_from(earlier)))
                }
            },
            || C::float_from(kernel::forward(None, dout.clone(), idx.clone(), width)),
        );
    }
}

/// `x[:, idx]` padded with zero columns to `cols_out` (`x` tracked or not), recording the
/// backward when `x` needs a gradient.
pub(super) fn gather<C: Cube>(
    x: FloatTensor<Autodiff<C>>,
    idx: IntTensor<C>,
    cols_out: usize,
) -> FloatTensor<Autodiff<C>> {
    let inner = C::float_into(x.primitive.clone());
    let width = inner.meta.shape()[1];
    let out = C::float_from(gather_columns(inner, C::int_into(idx.clone()), cols_out));
    match <GatherBackward as Backward<C, 1>>::prepare::<NoCheckpointing>(
        GatherBackward,
        [x.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((idx, width), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}
