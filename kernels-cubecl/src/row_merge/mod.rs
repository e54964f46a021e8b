//! Moving whole rows between an `[n, d]` activation and an `[m, d]` one (`m` much smaller): the
//! merge of SparseLoRA's token split (issue #10). The sparse path runs on all `n` token rows, the
//! dense path on the `m` answer rows gathered out, and the dense results replace the sparse ones
//! in place, or are added onto them (a correction of the sparse path's result on those rows).
//!
//! In burn ops ([`reference`]) the gather's backward is `select_assign` into zeros, and the
//! replacement a 0/1 row mask multiplied in plus the values `select_assign`ed into zeros and
//! added: four passes over the full activation forward, three backward, and burn-cubecl's
//! `select_assign` runs one thread per column looping over the rows. Here each op touches only the
//! `m` rows it moves (vectorised, one unit per vector), writing into its input's buffer when
//! nothing else holds it; the one full pass left is the copy of a shared gradient.

mod backward;
mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorPrimitive};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// The rows `rows` of `x` (`[m, d]`). Its gradient scatters the output gradient into a zero
/// `[n, d]` at those rows (rows distinct).
///
/// On burn-wgpu/burn-cuda (plain or `Autodiff`) one kernel each way; elsewhere the
/// [reference](reference::gather_rows). Row indices must be distinct and below `n` (not
/// checked).
///
/// # Shapes
/// - `x`: `[n, d]`, `rows`: `[m]`; output `[m, d]`
pub fn gather_rows<B: Backend>(x: Tensor<B, 2>, rows: Tensor<B, 1, Int>) -> Tensor<B, 2> {
    let [n, d] = x.dims();
    let fits = float_dtype(x.dtype()) && n * d * rows.dims()[0] > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        return reference::gather_rows(x, rows);
    };
    on_route!(route, C =>
        plain: cast(plain_gather::<C>(cast(x), cast(rows))),
        autodiff: {
            let x: Tensor<Autodiff<C>, 2> = cast(x);
            let rows: Tensor<Autodiff<C>, 1, Int> = cast(rows);
            let out = backward::gather::<C>(x.into_primitive().tensor(), C::int_into(rows.into_primitive()));
            cast(Tensor::<Autodiff<C>, 2>::from_primitive(TensorPrimitive::Float(out)))
        },
    )
}

fn plain_gather<C: Cube>(x: Tensor<C, 2>, rows: Tensor<C, 1, Int>) -> Tensor<C, 2> {
    let out = kernel::gather_rows(
        C::float_into(x.into_primitive().tensor()),
        C::int_into(rows.into_primitive()),
    );
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(out)))
}

/// `base` with row `rows[i]` replaced by `values[i]`: in `base`'s own buffer when nothing else
/// holds it. Gradients: `base`'s is the output gradient with those rows zeroed, `values`' the
/// output gradient's rows `rows`.
///
/// On burn-wgpu/burn-cuda (plain or `Autodiff`) one kernel over the `m` rows forward (plus a copy
/// of `base` when it is shared), a gather and a row-zeroing kernel backward; elsewhere the
/// [reference](reference::replace_rows). Row indices must be distinct and below `n` (not
/// checked).
///
/// # Shapes
/// - `base`: `[n, d]`, `rows`: `[m]`, `values`: `[m, d]`; output `[n, d]`
pub fn replace_rows<B: Backend>(
    base: Tensor<B, 2>,
    rows: Tensor<B, 1, Int>,
    values: Tensor<B, 2>,
) -> Tensor<B, 2> {
    merge_rows(base, rows, values, Merge::Replace)
}

/// `base` with `values[i]` added to its row `rows[i]`: in `base`'s own buffer when nothing else
/// holds it. Gradients: `base`'s is the output gradient, `values`' the output gradient's rows
/// `rows`. A correction of the dense rows of a token split made on top of the sparse path's
/// output (o_proj's sliced input, `llama_burn`'s attention).
///
/// On burn-wgpu/burn-cuda (plain or `Autodiff`) one kernel over the `m` rows forward (plus a
/// copy of `base` when it is shared) and a gather backward; elsewhere the
/// [reference](reference::add_rows). Row indices must be distinct and below `n` (not checked).
///
/// # Shapes
/// - `base`: `[n, d]`, `rows`: `[m]`, `values`: `[m, d]`; output `[n, d]`
pub fn add_rows<B: Backend>(
    base: Tensor<B, 2>,
    rows: Tensor<B, 1, Int>,
    values: Tensor<B, 2>,
) -> Tensor<B, 2> {
    merge_rows(base, rows, values, Merge::Add)
}

/// How [`merge_rows`] writes a row of `values` into `base`.
#[derive(Clone, Copy)]
enum Merge {
    Replace,
    Add,
}

/// [`replace_rows`] or [`add_rows`]: one dispatch, the kernels and backward of `merge`.
fn merge_rows<B: Backend>(
    base: Tensor<B, 2>,
    rows: Tensor<B, 1, Int>,
    values: Tensor<B, 2>,
    merge: Merge,
) -> Tensor<B, 2> {
    let [n, d] = base.dims();
    let [m] = rows.dims();
    let fits = float_dtype(base.dtype())
        && values.dtype() == base.dtype()
        && values.dims() == [m, d]
        && n * d * m > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        return match merge {
            Merge::Replace => reference::replace_rows(base, rows, values),
            Merge::Add => reference::add_rows(base, rows, values),
        };
    };
    on_route!(route, C =>
        plain: {
            let base: Tensor<C, 2> = cast(base);
            let rows: Tensor<C, 1, Int> = cast(rows);
            let values: Tensor<C, 2> = cast(values);
            let (base, rows, values) = (
                C::float_into(base.into_primitive().tensor()),
                C::int_into(rows.into_primitive()),
                C::float_into(values.into_primitive().tensor()),
            );
            let out = match merge {
                Merge::Replace => kernel::set_rows(base, rows, Some(values)),
                Merge::Add => kernel::add_rows(base, rows, values),
            };
            cast(Tensor::<C, 2>::from_primitive(TensorPrimitive::Float(C::float_from(out))))
        },
        autodiff: {
            let base: Tensor<Autodiff<C>, 2> = cast(base);
            let rows: Tensor<Autodiff<C>, 1, Int> = cast(rows);
            let values: Tensor<Autodiff<C>, 2> = cast(values);
            let (base, rows, values) = (
                base.into_primitive().tensor(),
                C::int_into(rows.into_primitive()),
                values.into_primitive().tensor(),
            );
            let out = match merge {
                Merge::Replace => backward::replace::<C>(base, rows, values),
                Merge::Add => backward::add::<C>(base, rows, values),
            };
            cast(Tensor::<Autodiff<C>, 2>::from_primitive(TensorPrimitive::Float(out)))
        },
    )
}
