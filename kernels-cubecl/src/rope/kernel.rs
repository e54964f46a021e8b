//! The RoPE kernel: one unit per pair `(j, j + hd/2)` of a row (in vectors along `j`), reading `x`,
//! `cos` and `sin` through their strides (so a transposed view of `x` is not copied first), and
//! writing either `[b, h, s, hd]` or the grouped `[b, h / groups, s, groups * hd]` layout (or, in
//! the backward, reading the grouped one).

use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch, elementwise_launch, vector_size};

/// Whether `x` (`[b, h, s, hd]`) is a view of a contiguous `[b, s, h, hd]`: the model's
/// `reshape([b, s, h, hd]).swap_dims(1, 2)` of a projection's output.
pub(crate) fn is_sequence_major<R: CubeRuntime>(x: &CubeTensor<R>) -> bool {
    let (shape, strides) = (x.meta.shape(), x.meta.strides());
    let (seq, heads, hd) = (shape[2], shape[1], shape[3]);
    strides[3] == 1
        && strides[1] == hd
        && strides[2] == heads * hd
        && strides[0] == seq * heads * hd
}

/// Strides, in elements, of the rows `[b, h, s, ..]` that a launch reads or writes, with the head
/// split as `h = kv * groups + gi`: `[batch, kv, group, seq]`. The same rows are then addressed
/// alike in a `[b, h, s, hd]` tensor and in the grouped `[b, h / groups, s, groups * hd]` one.
type RowStrides = [usize; 4];

/// [`RowStrides`] of a `[b, h, s, hd]` tensor, its heads split into groups of `groups`.
fn head_rows<R: CubeRuntime>(t: &CubeTensor<R>, groups: usize) -> RowStrides {
    let strides = t.meta.strides();
    [strides[0], groups * strides[1], strides[1], strides[2]]
}

/// [`RowStrides`] of a grouped `[b, h / groups, s, groups * hd]` tensor: group `gi` of a KV head
/// is its columns `gi * hd..(gi + 1) * hd`.
fn grouped_rows<R: CubeRuntime>(t: &CubeTensor<R>, hd: usize) -> RowStrides {
    let strides = t.meta.strides();
    [strides[0], strides[1], hd * strides[3], strides[2]]
}

/// Forward (`transpose = false`), per pair `lo = x[j]`, `hi = x[j + half]`:
/// `out[j] = lo cos[j] - hi sin[j]`, `out[j + half] = hi cos[j + half] + lo sin[j + half]`.
///
/// Transposed (`transpose = true`, the backward with `x` the output's gradient):
/// `out[j] = lo cos[j] + hi sin[j + half]`, `out[j + half] = hi cos[j + half] - lo sin[j]`.
///
/// Rows are `(bi, h, si)` with the head `h = kv * groups + gi`, one unit per vector of a pair,
/// ordered `(bi, kv, si, gi, j)` (with `groups = 1`, `(bi, h, si, j)`). A row starts in `x` at
/// `bi x_batch + kv x_kv + gi x_group + si x_seq` and runs along `x`'s own last stride; in `out`
/// at the same with the `out_` strides, and runs along a unit stride. So `x` and `out` can each
/// be a `[b, h, s, hd]` tensor of any strides (`x_kv = groups x_group`) or a grouped
/// `[b, h / groups, s, groups * hd]` one (`x_group = hd` times its last stride).
///
/// `x` (unit last stride when `N > 1`) and `out` (unit last stride) hold those rows; `cos`, `sin`:
/// `[b or 1, 1, s, hd]`, any strides; `cos_batch`, `sin_batch`: the batch strides of `cos` and
/// `sin` (0 for a batch of one). `units = b h s half / N` with `h = kv_heads groups`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn rope_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    cos: &Tensor<Vector<F, N>>,
    sin: &Tensor<Vector<F, N>>,
    out: &mut Tensor<Vector<F, N>>,
    units: usize,
    kv_heads: usize,
    groups: usize,
    seq: usize,
    half: usize,
    cos_batch: usize,
    sin_batch: usize,
    x_batch: usize,
    x_kv: usize,
    x_group: usize,
    x_seq: usize,
    out_batch: usize,
    out_kv: usize,
    out_group: usize,
    out_seq: usize,
    #[comptime] transpose: bool,
    #[define(F)] _dtype: StorageType,
) {
    let unit = ABSOLUTE_POS;
    if unit >= units {
        terminate!();
    }
    let n = x.vector_size();
    let half_v = half / n;
    let j = (unit % half_v) * n;
    let row = unit / half_v;
    let gi = row % groups;
    let rest = row / groups;
    let si = rest % seq;
    let rest = rest / seq;
    let kv = rest % kv_heads;
    let bi = rest / kv_heads;

    let xs = x.stride(3);
    let x_at = bi * x_batch + kv * x_kv + gi * x_group + si * x_seq + j * xs;
    let lo = Vector::<f32, N>::cast_from(x[x_at / n]);
    let hi = Vector::<f32, N>::cast_from(x[(x_at + half * xs) / n]);

    let cs = cos.stride(3);
    let c_at = bi * cos_batch + si * cos.stride(2) + j * cs;
    let c_lo = Vector::<f32, N>::cast_from(cos[c_at / n]);
    let c_hi = Vector::<f32, N>::cast_from(cos[(c_at + half * cs) / n]);
    let ss = sin.stride(3);
    let s_at = bi * sin_batch + si * sin.stride(2) + j * ss;
    let s_lo = Vector::<f32, N>::cast_from(sin[s_at / n]);
    let s_hi = Vector::<f32, N>::cast_from(sin[(s_at + half * ss) / n]);

    let o_at = bi * out_batch + kv * out_kv + gi * out_group + si * out_seq + j;
    if transpose {
        out[o_at / n] = Vector::<F, N>::cast_from(lo * c_lo + hi * s_hi);
        out[(o_at + half) / n] = Vector::<F, N>::cast_from(hi * c_hi - lo * s_lo);
    } else {
        out[o_at / n] = Vector::<F, N>::cast_from(lo * c_lo - hi * s_lo);
        out[(o_at + half) / n] = Vector::<F, N>::cast_from(hi * c_hi + lo * s_hi);
    }
}

/// `[b, h, s, hd]` of `dtype` on `like`'s device, contiguous, or with `sequence_major` stored as a
/// contiguous `[b, s, h, hd]` (the layout of the projections' output that the forward's `x` is a
/// view of): the backward's `dx` in that layout needs no copy on its way back to the projection.
fn empty_heads<R: CubeRuntime>(
    like: &CubeTensor<R>,
    [b, heads, seq, hd]: [usize; 4],
    sequence_major: bool,
) -> CubeTensor<R> {
    let (client, device) = (like.client.clone(), like.device.clone());
    if sequence_major {
        let stored = [b, seq, heads, hd].into();
        let mut out = empty_device_contiguous_dtype(client, device, stored, like.dtype);
        out.meta.swap(1, 2);
        out
    } else {
        empty_device_contiguous_dtype(client, device, [b, heads, seq, hd].into(), like.dtype)
    }
}

/// `rope(x, cos, sin)` (`transpose = false`) or its transpose applied to `x` (the backward).
///
/// `x`: `[b, h, s, hd]` (`hd` even), any strides; `cos`, `sin`: `[b or 1, 1, s, hd]`, any strides,
/// all of one float dtype. Output `[b, h, s, hd]`, contiguous, or with `sequence_major` stored as
/// a contiguous `[b, s, h, hd]` (see [`empty_heads`]).
pub(crate) fn launch<R: CubeRuntime>(
    x: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    transpose: bool,
    sequence_major: bool,
) -> CubeTensor<R> {
    let shape = x.meta.shape().clone();
    let dims = [shape[0], shape[1], shape[2], shape[3]];
    let out = empty_heads(&x, dims, sequence_major);
    let (x_rows, out_rows) = (head_rows(&x, 1), head_rows(&out, 1));
    run(x, x_rows, cos, sin, out, out_rows, dims, 1, transpose)
}

/// `rope(x, cos, sin)` written grouped: `x` `[b, h, s, hd]` (`hd` even, `h` divisible by
/// `groups`), any strides; `cos`, `sin` as in [`launch`]. Output `[b, h / groups, s, groups * hd]`,
/// contiguous, head `kv * groups + gi` in columns `gi * hd..(gi + 1) * hd` of KV head `kv`.
pub(crate) fn launch_grouped<R: CubeRuntime>(
    x: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    groups: usize,
) -> CubeTensor<R> {
    let shape = x.meta.shape().clone();
    let (b, heads, seq, hd) = (shape[0], shape[1], shape[2], shape[3]);
    let grouped = [b, heads / groups, seq, groups * hd].into();
    let out = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), grouped, x.dtype);
    let (x_rows, out_rows) = (head_rows(&x, groups), grouped_rows(&out, hd));
    let dims = [b, heads, seq, hd];
    run(x, x_rows, cos, sin, out, out_rows, dims, groups, false)
}

/// The transpose of [`launch_grouped`] applied to `dy` (its backward): `dy`
/// `[b, h / groups, s, groups * hd]`, any strides. Output `dx` `[b, h, s, hd]`, contiguous or
/// sequence-major as in [`launch`].
pub(crate) fn launch_grouped_transposed<R: CubeRuntime>(
    dy: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    groups: usize,
    sequence_major: bool,
) -> CubeTensor<R> {
    let shape = dy.meta.shape().clone();
    let (b, kv_heads, seq, hd) = (shape[0], shape[1], shape[2], shape[3] / groups);
    let dims = [b, kv_heads * groups, seq, hd];
    let out = empty_heads(&dy, dims, sequence_major);
    let (x_rows, out_rows) = (grouped_rows(&dy, hd), head_rows(&out, groups));
    run(dy, x_rows, cos, sin, out, out_rows, dims, groups, true)
}

/// Launches [`rope_kernel`] over the rows of `dims` (`[b, h, s, hd]`), found in `x` and `out`
/// through `x_rows` and `out_rows` (`out`'s last stride is one).
#[allow(clippy::too_many_arguments)]
fn run<R: CubeRuntime>(
    x: CubeTensor<R>,
    x_rows: RowStrides,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    out: CubeTensor<R>,
    out_rows: RowStrides,
    [b, heads, seq, hd]: [usize; 4],
    groups: usize,
    transpose: bool,
) -> CubeTensor<R> {
    debug_assert_eq!(
        out.meta.strides()[3],
        1,
        "rope: out runs along a unit stride"
    );
    let half = hd / 2;
    let kv_heads = heads / groups;
    let dtype = x.dtype;

    // Vectors run along `hd`: they need unit strides there, and the half and every other stride
    // (of a dimension longer than one) divisible by the vector size.
    let tensors = [&x, &cos, &sin, &out];
    let unit_inner = tensors.iter().all(|t| t.meta.strides()[3] == 1);
    let mut divides = vec![half];
    let row_lens = [b, kv_heads, groups, seq];
    for rows in [x_rows, out_rows] {
        let longer = row_lens.iter().zip(rows).filter(|&(&len, _)| len > 1);
        divides.extend(longer.map(|(_, stride)| stride));
    }
    for t in [&cos, &sin] {
        let (shape, strides) = (t.meta.shape(), t.meta.strides());
        divides.extend((0..3).filter(|&d| shape[d] > 1).map(|d| strides[d]));
    }
    let vector = if unit_inner {
        vector_size(&tensors, dtype, &divides)
    } else {
        1
    };
    // A batch of one broadcasts over `b`.
    let batch_stride = |t: &CubeTensor<R>| match t.meta.shape()[0] {
        1 => 0,
        _ => t.meta.strides()[0],
    };
    let (cos_batch, sin_batch) = (batch_stride(&cos), batch_stride(&sin));

    let units = b * heads * seq * half / vector;
    let (cube_dim, cube_count) = elementwise_launch(&x, units);
    let address = address_type(&tensors);
    let client = x.client.clone();
    let [x_batch, x_kv, x_group, x_seq] = x_rows;
    let [out_batch, out_kv, out_group, out_seq] = out_rows;
    count_launch();
    // SAFETY: every index is a position of `x`, `cos`, `sin` or `out` within their shapes: the
    // row strides address `[b, h, s, hd]` rows that each tensor holds.
    unsafe {
        rope_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            address,
            vector,
            x.into_tensor_arg(),
            cos.into_tensor_arg(),
            sin.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            units,
            kv_heads,
            groups,
            seq,
            half,
            cos_batch,
            sin_batch,
            x_batch,
            x_kv,
            x_group,
            x_seq,
            out_batch,
            out_kv,
            out_group,
            out_seq,
            transpose,
            dtype.into(),
        )
    };
    out
}
