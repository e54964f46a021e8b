//! The kept rows (columns) of a frozen weight, padded with zero rows (columns) to a given count:
//! the operands of a channel-sliced product run at a padded width.
//!
//! A sliced product over `k` kept channels with `k` not a multiple of 8 has leading dimensions
//! that are not 16-byte aligned in bf16, which rules out cuBLASLt's vectorised kernels on the
//! H200 (docs/perf.md: `down[143] fwd` at 0.78x torch). Padding the gathered weight with zero
//! channels up to a multiple of 8 changes no result: a zero row of a gathered output-sliced weight
//! gives a zero output column, and a zero column of a gathered input-sliced weight adds nothing.
//!
//! The weights are frozen, so neither function has a backward: under `Autodiff` the kernel runs on
//! the inner tensors and the result is an untracked constant. A weight that is tracked (it needs a
//! gradient, or was computed from one that does) takes the [reference](reference), whose
//! `select` and `cat` carry the gradient back to it.

pub(crate) mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorPrimitive};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// Which side of the weight is gathered.
#[derive(Clone, Copy)]
enum Side {
    Rows,
    Columns,
}

/// Rows `idx` of `weight` (`[rows, cols]`; `idx`: `[k]`, each below `rows`), then zero rows up to
/// `rows_out`: row `i < k` of the `[rows_out, cols]` output is `weight[idx[i]]`, the rest zero.
///
/// On burn-wgpu/burn-cuda one kernel launch; elsewhere, for other dtypes, an empty output or no
/// index, and for a tracked weight under `Autodiff` (see the module), the
/// [reference](reference::gather_rows_padded). Indices outside `0..rows` are the caller's to rule
/// out (the kernel does not check).
///
/// # Panics
/// If `k > rows_out`.
pub fn gather_rows_padded<B: Backend>(
    weight: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
    rows_out: usize,
) -> Tensor<B, 2> {
    dispatch(Side::Rows, weight, idx, rows_out)
}

/// Columns `idx` of `weight` (`[rows, cols]`; `idx`: `[k]`, each below `cols`), then zero columns
/// up to `cols_out`: column `j < k` of the `[rows, cols_out]` output (contiguous, row-major) is
/// `weight[:, idx[j]]`, the rest zero. Dispatch as [`gather_rows_padded`].
///
/// # Panics
/// If `k > cols_out`.
pub fn gather_columns_padded<B: Backend>(
    weight: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
    cols_out: usize,
) -> Tensor<B, 2> {
    dispatch(Side::Columns, weight, idx, cols_out)
}

fn dispatch<B: Backend>(
    side: Side,
    weight: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
    len: usize,
) -> Tensor<B, 2> {
    let [k] = idx.dims();
    assert!(
        k <= len,
        "gather padded: {k} indices do not fit in {len} channels"
    );
    let [rows, cols] = weight.dims();
    let fits = float_dtype(weight.dtype()) && k > 0 && rows * cols > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        return reference(side, weight, idx, len);
    };
    on_route!(route, C =>
        plain: cast(plain::<C>(side, cast(weight), cast(idx), len)),
        autodiff: cast(constant::<C>(side, cast(weight), cast(idx), len)),
    )
}

fn reference<B: Backend>(
    side: Side,
    weight: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
    len: usize,
) -> Tensor<B, 2> {
    match side {
        Side::Rows => reference::gather_rows_padded(weight, idx, len),
        Side::Columns => reference::gather_columns_padded(weight, idx, len),
    }
}

/// Under `Autodiff`: the kernel on the inner tensors, its result an untracked constant; a tracked
/// weight takes the reference, so that its gradient stays right.
fn constant<C: Cube>(
    side: Side,
    weight: Tensor<Autodiff<C>, 2>,
    idx: Tensor<Autodiff<C>, 1, Int>,
    len: usize,
) -> Tensor<Autodiff<C>, 2> {
    let weight = weight.into_primitive().tensor();
    if weight.is_tracked() {
        let weight = Tensor::from_primitive(TensorPrimitive::Float(weight));
        return reference(side, weight, idx, len);
    }
    let weight = Tensor::<C, 2>::from_primitive(TensorPrimitive::Float(weight.primitive));
    let idx = Tensor::<C, 1, Int>::from_primitive(idx.into_primitive());
    Tensor::from_inner(plain::<C>(side, weight, idx, len))
}

fn plain<C: Cube>(
    side: Side,
    weight: Tensor<C, 2>,
    idx: Tensor<C, 1, Int>,
    len: usize,
) -> Tensor<C, 2> {
    let weight = C::float_into(weight.into_primitive().tensor());
    let idx = C::int_into(idx.into_primitive());
    let out = match side {
        Side::Rows => kernel::gather_rows(weight, idx, len),
        Side::Columns => kernel::gather_columns(weight, idx, len),
    };
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(out)))
}
