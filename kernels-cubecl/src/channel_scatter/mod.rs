//! Writing a channel slice's output back to full width: `kept` (`[rows, k]`, the output channels
//! `idx` of a sliced product) into the columns `idx` of a zero tensor, or added into a full-width
//! `base` (the dense LoRA output) — issue #10's scatter "fused with the dense LoRA output add".
//!
//! burn-cubecl 0.21's `scatter` runs one thread per column looping over the rows (docs/perf.md:
//! 203 ms in 244 calls at LLaMA3-8B), and a separate add would read and write the full width once
//! more. Here: a column -> kept-position map (two tiny launches), then one pass over the output,
//! each element reading its `base` value and, where its column is kept, its kept value. The
//! backward gathers the output gradient's kept columns (one pass over `[rows, k]`); the base's
//! gradient is the output's.
//!
//! The mirror op, [`gather_columns`], reads an input-sliced product's kept input channels
//! (o_proj's and down's `x[:, idx]`); its backward is the scatter, added into the gradient the
//! input's other readers registered when there is one (`crate::gradient_sum`).

mod backward;
mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorPrimitive};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// The first `k` columns of `kept` (`[rows, k_padded]`, `k_padded >= k`: a sliced product run
/// at a padded width, whose padding columns are dropped) written into the columns `idx` (`[k]`,
/// distinct, each below `width`) of a `[rows, width]` zero tensor; `kept`'s gradient is zero in
/// its padding columns. On burn-wgpu/burn-cuda three kernels forward and one backward;
/// elsewhere, for other dtypes or an empty input, the [reference](reference::scatter_columns).
/// Indices outside `0..width` or repeated are the caller's to rule out (the kernels do not check).
///
/// # Panics
/// If `idx` has more entries than `kept` has columns.
pub fn scatter_columns<B: Backend>(
    kept: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
    width: usize,
) -> Tensor<B, 2> {
    let [rows, k_padded] = kept.dims();
    let [k] = idx.dims();
    assert!(
        k <= k_padded,
        "scatter_columns: {k} indices for {k_padded} kept columns"
    );
    let fits = float_dtype(kept.dtype()) && rows * k > 0 && width > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        let kept = if k < k_padded {
            kept.slice([0..rows, 0..k])
        } else {
            kept
        };
        return reference::scatter_columns(kept, idx, width);
    };
    on_route!(route, C =>
        plain: cast(plain::<C>(None, cast(kept), cast(idx), width)),
        autodiff: {
            let kept: Tensor<Autodiff<C>, 2> = cast(kept);
            let idx: Tensor<Autodiff<C>, 1, Int> = cast(idx);
            let out = backward::scatter::<C>(
                kept.into_primitive().tensor(),
                idx.into_primitive(),
                width,
            );
            cast(Tensor::<Autodiff<C>, 2>::from_primitive(TensorPrimitive::Float(out)))
        },
    )
}

/// `base` (`[rows, width]`) with `kept` (`[rows, k]`, same dtype) added into its columns `idx`
/// (`[k]`, distinct, each below `width`). Dispatch as [`scatter_columns`].
pub fn scatter_add_columns<B: Backend>(
    base: Tensor<B, 2>,
    kept: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
) -> Tensor<B, 2> {
    let [rows, width] = base.dims();
    let [kept_rows, k] = kept.dims();
    let fits = float_dtype(kept.dtype())
        && base.dtype() == kept.dtype()
        && kept_rows == rows
        && idx.dims() == [k]
        && rows * k > 0
        && width > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        return reference::scatter_add_columns(base, kept, idx);
    };
    on_route!(route, C =>
        plain: cast(plain::<C>(Some(cast(base)), cast(kept), cast(idx), width)),
        autodiff: {
            let base: Tensor<Autodiff<C>, 2> = cast(base);
            let kept: Tensor<Autodiff<C>, 2> = cast(kept);
            let idx: Tensor<Autodiff<C>, 1, Int> = cast(idx);
            let out = backward::scatter_add::<C>(
                base.into_primitive().tensor(),
                kept.into_primitive().tensor(),
                idx.into_primitive(),
                width,
            );
            cast(Tensor::<Autodiff<C>, 2>::from_primitive(TensorPrimitive::Float(out)))
        },
    )
}

/// The columns `idx` (`[k]`, each below `x`'s width) of `x` (`[rows, width]`), then zero columns
/// up to `cols_out >= k` (a sliced product's input at a padded width): contiguous
/// `[rows, cols_out]`. Its gradient writes the output gradient's first `k` columns into the
/// columns `idx` of a zero `[rows, width]` (indices distinct), or adds them into the share of
/// `x`'s gradient another reader registered first. On burn-wgpu/burn-cuda one kernel each way;
/// elsewhere, for other dtypes or an empty input, the [reference](reference::gather_columns).
/// Indices outside `0..width` or repeated are the caller's to rule out (the kernels do not check).
///
/// # Panics
/// If `k > cols_out`.
pub fn gather_columns<B: Backend>(
    x: Tensor<B, 2>,
    idx: Tensor<B, 1, Int>,
    cols_out: usize,
) -> Tensor<B, 2> {
    let [rows, width] = x.dims();
    let [k] = idx.dims();
    assert!(
        k <= cols_out,
        "gather_columns: {k} indices do not fit in {cols_out} columns"
    );
    let fits = float_dtype(x.dtype()) && rows * k > 0 && width > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        return reference::gather_columns(x, idx, cols_out);
    };
    on_route!(route, C =>
        plain: {
            let x: Tensor<C, 2> = cast(x);
            let idx: Tensor<C, 1, Int> = cast(idx);
            let out = crate::gather_padded::kernel::gather_columns(
                C::float_into(x.into_primitive().tensor()),
                C::int_into(idx.into_primitive()),
                cols_out,
            );
            cast(Tensor::<C, 2>::from_primitive(TensorPrimitive::Float(C::float_from(out))))
        },
        autodiff: {
            let x: Tensor<Autodiff<C>, 2> = cast(x);
            let idx: Tensor<Autodiff<C>, 1, Int> = cast(idx);
            let out = backward::gather::<C>(
                x.into_primitive().tensor(),
                idx.into_primitive(),
                cols_out,
            );
            cast(Tensor::<Autodiff<C>, 2>::from_primitive(TensorPrimitive::Float(out)))
        },
    )
}

fn plain<C: Cube>(
    base: Option<Tensor<C, 2>>,
    kept: Tensor<C, 2>,
    idx: Tensor<C, 1, Int>,
    width: usize,
) -> Tensor<C, 2> {
    let out = kernel::forward(
        base.map(|b| C::float_into(b.into_primitive().tensor())),
        C::float_into(kept.into_primitive().tensor()),
        C::int_into(idx.into_primitive()),
        width,
    );
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(out)))
}
