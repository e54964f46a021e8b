//! The row ops under `Autodiff`: the kernels forward, recording [`GatherBackward`] (the output
//! gradient scattered into zeros), [`ReplaceBackward`] (the output gradient's replaced rows
//! gathered for the values, and zeroed for the base) and [`AddBackward`] (the rows gathered for
//! the values, the output gradient itself for the base).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::ops::FloatTensor;
use burn_cubecl::tensor::CubeTensor;

use super::kernel;
use crate::dispatch::Cube;
use crate::gradient_sum::register_summed;

/// The row indices, as the kernels take them.
type Rows<C> = CubeTensor<<C as Cube>::Runtime>;

/// Backward of `out = x[rows]`: `dx` zero but for `dx[rows] = dout`.
#[derive(Debug)]
struct GatherBackward;

impl<C: Cube> Backward<C, 1> for GatherBackward {
    /// The rows and `x`'s row count.
    type State = (Rows<C>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [Some(parent)] = ops.parents else {
            return;
        };
        let (rows, n) = ops.state;
        let dout = C::float_into(grads.consume::<C>(&ops.node));
        // The rows added into the other consumers' share of `dx` (the sparse path's, which reads
        // every row), touching only them, instead of a zero `[n, d]` that burn then adds: see
        // `crate::gradient_sum`.
        register_summed::<C>(
            grads,
            C::float_from(dout.clone()),
            |key| key.node = parent.clone(),
            |earlier| {
                let earlier = C::float_into(earlier);
                let fits = earlier.dtype == dout.dtype
                    && earlier.meta.shape()[..] == [n, dout.meta.shape()[1]];
                if fits {
                    Ok(C::float_from(kernel::add_rows(
                        earlier,
                        rows.clone(),
                        dout.clone(),
                    )))
                } else {
                    Err(Box::new(C::float_from(earlier)))
                }
            },
            || C::float_from(kernel::scatter_rows(dout.clone(), rows.clone(), n)),
        );
    }
}

/// The gathered rows of `x` (tracked or not), recording the backward when `x` needs a gradient.
pub(super) fn gather<C: Cube>(
    x: FloatTensor<Autodiff<C>>,
    rows: Rows<C>,
) -> FloatTensor<Autodiff<C>> {
    let inner = C::float_into(x.primitive.clone());
    let n = inner.meta.shape()[0];
    let out = C::float_from(kernel::gather_rows(inner, rows.clone()));
    match <GatherBackward as Backward<C, 1>>::prepare::<NoCheckpointing>(
        GatherBackward,
        [x.node.clone()],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((rows, n), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// Backward of `out = base` with `out[rows] = values`: `dbase = dout` with those rows zeroed,
/// `dvalues = dout[rows]`.
#[derive(Debug)]
struct ReplaceBackward;

impl<C: Cube> Backward<C, 2> for ReplaceBackward {
    /// The rows.
    type State = Rows<C>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let rows = ops.state;
        let [node_base, node_values] = ops.parents;
        let dout = C::float_into(grads.consume::<C>(&ops.node));
        // The gather is queued before the zeroing, which may write into `dout`'s own buffer.
        if let Some(node) = node_values {
            let dvalues = kernel::gather_rows(dout.clone(), rows.clone());
            grads.register::<C>(node.id, C::float_from(dvalues));
        }
        if let Some(node) = node_base {
            let dbase = kernel::set_rows(dout, rows, None);
            grads.register::<C>(node.id, C::float_from(dbase));
        }
    }
}

/// `base` with its rows replaced (either tracked or not), recording the backward when either
/// needs a gradient.
pub(super) fn replace<C: Cube>(
    base: FloatTensor<Autodiff<C>>,
    rows: Rows<C>,
    values: FloatTensor<Autodiff<C>>,
) -> FloatTensor<Autodiff<C>> {
    let (base_node, values_node) = (base.node.clone(), values.node.clone());
    // `base`'s primitive moves into the kernel, which writes into its buffer when it is the only
    // holder.
    let out = C::float_from(kernel::set_rows(
        C::float_into(base.primitive),
        rows.clone(),
        Some(C::float_into(values.primitive)),
    ));
    match <ReplaceBackward as Backward<C, 2>>::prepare::<NoCheckpointing>(
        ReplaceBackward,
        [base_node, values_node],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(rows, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}

/// Backward of `out = base` with `values` added to its rows `rows`: `dbase = dout`,
/// `dvalues = dout[rows]`.
#[derive(Debug)]
struct AddBackward;

impl<C: Cube> Backward<C, 2> for AddBackward {
    /// The rows.
    type State = Rows<C>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let rows = ops.state;
        let [node_base, node_values] = ops.parents;
        let dout = grads.consume::<C>(&ops.node);
        if let Some(node) = node_values {
            let dvalues = kernel::gather_rows(C::float_into(dout.clone()), rows);
            grads.register::<C>(node.id, C::float_from(dvalues));
        }
        if let Some(node) = node_base {
            grads.register::<C>(node.id, dout);
        }
    }
}

/// `base` with `values` added to its rows (either tracked or not), recording the backward when
/// either needs a gradient.
pub(super) fn add<C: Cube>(
    base: FloatTensor<Autodiff<C>>,
    rows: Rows<C>,
    values: FloatTensor<Autodiff<C>>,
) -> FloatTensor<Autodiff<C>> {
    let (base_node, values_node) = (base.node.clone(), values.node.clone());
    // `base`'s primitive moves into the kernel, which adds into its buffer when it is the only
    // holder.
    let out = C::float_from(kernel::add_rows(
        C::float_into(base.primitive),
        rows.clone(),
        C::float_into(values.primitive),
    ));
    match <AddBackward as Backward<C, 2>>::prepare::<NoCheckpointing>(
        AddBackward,
        [base_node, values_node],
    )
    .compute_bound()
    .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(rows, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}
