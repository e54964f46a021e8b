//! Zeroing the channels a SparseLoRA block drops, in masked-dense form (issue #10): a `[width]`
//! 0/1 keep vector from the kept indices, and `x * keep` on the sparse token rows (the dense rows,
//! the answer tokens, keep every channel).
//!
//! The burn-ops form ([`reference`]) built the keep vector by comparing every channel with every
//! index (`[width, k]`, 13 M comparisons and a reduction for a 4096-wide q_proj), and with a token
//! split materialised a `[rows, width]` f32 mask (64 MiB at LLaMA3-8B's 4096 tokens) and cast it,
//! for each of the four projections of every sparse attention block: on the H200 those were
//! ~12 ms of a SparseLoRA step (`docs/perf.md`). Here: two tiny launches for the vector, and one
//! vectorised pass over `x` that reads the vector and the dense-row flags, in the forward and
//! again (the same mask) in the backward.

mod backward;
mod kernel;
pub mod reference;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorPrimitive};

use crate::common::float_dtype;
use crate::dispatch::{cast, on_route, route, Cube};

/// `[width]` in `dtype`: 1 on the channels `idx` (`[k]`, each below `width`), 0 elsewhere. On
/// burn-wgpu/burn-cuda two kernels (a constant, also under `Autodiff`); elsewhere, or for other
/// dtypes, the [reference](reference::keep_mask). Indices outside `0..width` are the caller's
/// to rule out (the kernels do not check).
pub fn keep_mask<B: Backend>(idx: Tensor<B, 1, Int>, width: usize, dtype: DType) -> Tensor<B, 1> {
    channel_vector(idx, width, dtype, false)
}

/// `[width]` in `dtype`: 0 on the channels `idx`, 1 elsewhere; [`keep_mask`]'s complement, in
/// the same two kernels (what a dense row adds back to a product that read only `idx`).
pub fn drop_mask<B: Backend>(idx: Tensor<B, 1, Int>, width: usize, dtype: DType) -> Tensor<B, 1> {
    channel_vector(idx, width, dtype, true)
}

/// [`keep_mask`], or with `dropped` [`drop_mask`].
fn channel_vector<B: Backend>(
    idx: Tensor<B, 1, Int>,
    width: usize,
    dtype: DType,
    dropped: bool,
) -> Tensor<B, 1> {
    let [k] = idx.dims();
    let fits = float_dtype(dtype) && k > 0 && width > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        return if dropped {
            reference::drop_mask(idx, width, dtype)
        } else {
            reference::keep_mask(idx, width, dtype)
        };
    };
    on_route!(route, C =>
        plain: cast(plain_vector::<C>(cast(idx), width, dtype, dropped)),
        autodiff: {
            let idx: Tensor<Autodiff<C>, 1, Int> = cast(idx);
            let idx = Tensor::from_primitive(idx.into_primitive());
            let keep = plain_vector::<C>(idx, width, dtype, dropped);
            cast(Tensor::<Autodiff<C>, 1>::from_inner(keep))
        },
    )
}

fn plain_vector<C: Cube>(
    idx: Tensor<C, 1, Int>,
    width: usize,
    dtype: DType,
    dropped: bool,
) -> Tensor<C, 1> {
    let keep = kernel::keep_mask(C::int_into(idx.into_primitive()), width, dtype, dropped);
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(keep)))
}

/// `x` with the channels outside `keep` zeroed on every row where `dense_rows` is 0 (on every row
/// without it): `x * max(dense_rows[r], keep[c])`, exactly (a 0/1 factor). The gradient of `x` is
/// the output gradient masked the same way; `keep` and `dense_rows` are constants (no gradient).
///
/// On burn-wgpu/burn-cuda (plain or `Autodiff`) one vectorised kernel forward and one backward,
/// for `keep` in `x`'s dtype and `dense_rows` in f32 (as [`keep_mask`] and a token split make
/// them); anything else takes the [reference](reference::mask_channels).
///
/// # Shapes
/// - `x`: `[rows, width]`, `keep`: `[width]`, `dense_rows`: `[rows]`; output `[rows, width]`
pub fn mask_channels<B: Backend>(
    x: Tensor<B, 2>,
    keep: Tensor<B, 1>,
    dense_rows: Option<Tensor<B, 1>>,
) -> Tensor<B, 2> {
    let [rows, width] = x.dims();
    let fits = float_dtype(x.dtype())
        && keep.dtype() == x.dtype()
        && keep.dims() == [width]
        && dense_rows
            .as_ref()
            .is_none_or(|d| d.dtype() == DType::F32 && d.dims() == [rows])
        && rows * width > 0;
    let Some(route) = route::<B>().filter(|_| fits) else {
        return reference::mask_channels(x, keep, dense_rows);
    };
    on_route!(route, C =>
        plain: cast(plain_mask::<C>(cast(x), cast(keep), dense_rows.map(cast))),
        autodiff: {
            let x: Tensor<Autodiff<C>, 2> = cast(x);
            let keep: Tensor<Autodiff<C>, 1> = cast(keep);
            let dense: Option<Tensor<Autodiff<C>, 1>> = dense_rows.map(cast);
            let out = backward::mask::<C>(
                x.into_primitive().tensor(),
                keep.inner().into_primitive().tensor(),
                dense.map(|d| d.inner().into_primitive().tensor()),
            );
            cast(Tensor::<Autodiff<C>, 2>::from_primitive(TensorPrimitive::Float(out)))
        },
    )
}

fn plain_mask<C: Cube>(
    x: Tensor<C, 2>,
    keep: Tensor<C, 1>,
    dense: Option<Tensor<C, 1>>,
) -> Tensor<C, 2> {
    let out = kernel::mask_channels(
        C::float_into(x.into_primitive().tensor()),
        C::float_into(keep.into_primitive().tensor()),
        dense.map(|d| C::float_into(d.into_primitive().tensor())),
    );
    Tensor::from_primitive(TensorPrimitive::Float(C::float_from(out)))
}
