//! The per-sequence mean: for a wide input in two kernels, partial sums over chunks of the sequence
//! (each unit one vector of channels of one sequence and chunk, with the chunk's token count), then
//! the sum of the chunks divided by the count; for a narrow one (the MLP estimator's `[b, s, 2r]`
//! product) in one kernel, a cube per sequence.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch, elementwise_launch, vector_size};

/// Positions of the sequence one unit of the first kernel sums over.
const CHUNK: usize = 32;

/// `partial[b, c, v] = sum over positions t of chunk c of sequence b with a real token (every
/// position without `mask_padding`) of f32(x[b, t, v])`, and `counts[b, c]` the number of those
/// positions (written by the unit of vector 0).
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn partial_sums_kernel<F: Float, M: Int, N: Size>(
    x: &Tensor<Vector<F, N>>,
    tokens: &Tensor<M>,
    partial: &mut Tensor<Vector<f32, N>>,
    counts: &mut Tensor<f32>,
    batch: usize,
    seq: usize,
    chunks: usize,
    d_v: usize,
    #[comptime] mask_padding: bool,
    #[define(F, M)] _dtypes: [StorageType; 2],
) {
    let at = ABSOLUTE_POS;
    if at >= batch * chunks * d_v {
        terminate!();
    }
    let v = at % d_v;
    let bc = at / d_v;
    let (b, c) = (bc / chunks, bc % chunks);
    let start = c * CHUNK;
    let end = min(start + CHUNK, seq);
    let mut acc = Vector::<f32, N>::new(0.0f32);
    let mut count = 0.0f32;
    for t in start..end {
        let mut real = true;
        if mask_padding {
            real = u32::cast_from(tokens[b * tokens.stride(0) + t * tokens.stride(1)]) != 0;
        }
        if real {
            acc += Vector::<f32, N>::cast_from(x[(b * seq + t) * d_v + v]);
            count += 1.0;
        }
    }
    partial[at] = acc;
    if v == 0 {
        counts[bc] = count;
    }
}

/// `means[b, v] = sum over chunks of partial[b, c, v] / max(1, sum over chunks of counts[b, c])`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn finish_kernel<N: Size>(
    partial: &Tensor<Vector<f32, N>>,
    counts: &Tensor<f32>,
    means: &mut Tensor<Vector<f32, N>>,
    batch: usize,
    chunks: usize,
    d_v: usize,
) {
    let at = ABSOLUTE_POS;
    if at >= batch * d_v {
        terminate!();
    }
    let (b, v) = (at / d_v, at % d_v);
    let mut acc = Vector::<f32, N>::new(0.0f32);
    let mut count = 0.0f32;
    for c in 0..chunks {
        acc += partial[(b * chunks + c) * d_v + v];
        count += counts[b * chunks + c];
    }
    means[at] = acc / Vector::new(max(count, 1.0f32));
}

/// Units of a cube of [`sequence_kernel`].
const SEQUENCE_UNITS: usize = 256;

/// Vectors of channels at most for which [`sequence_kernel`] takes the mean (at least 8 of its
/// units then share each vector). At 16 channels the two chunked kernels had 256 units in all,
/// each summing 32 positions one load after another, then 16 units summing the chunks: 11.6 +
/// 5.2 us on the H200 for what one cube per sequence reads in one pass.
const SEQUENCE_MAX_VECTORS: usize = 32;

/// `means[b, v]` for sequence `b = CUBE_POS`: `lanes` units per vector of channels (`lanes *
/// d_v <= SEQUENCE_UNITS`), each summing every `lanes`-th position, then a tree sum over the
/// lanes in shared memory, divided by the count of real tokens (at least 1).
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn sequence_kernel<F: Float, M: Int, N: Size>(
    x: &Tensor<Vector<F, N>>,
    tokens: &Tensor<M>,
    means: &mut Tensor<Vector<f32, N>>,
    seq: usize,
    d_v: usize,
    lanes: usize,
    #[comptime] mask_padding: bool,
    #[define(F, M)] _dtypes: [StorageType; 2],
) {
    let b = CUBE_POS;
    let unit = UNIT_POS as usize;
    let (lane, v) = (unit / d_v, unit % d_v);
    let mut sums = SharedMemory::<Vector<f32, N>>::new(SEQUENCE_UNITS);
    let mut counts = SharedMemory::<f32>::new(SEQUENCE_UNITS);
    let mut acc = Vector::<f32, N>::new(0.0f32);
    let mut count = 0.0f32;
    if lane < lanes {
        let mut t = lane;
        while t < seq {
            let mut real = true;
            if mask_padding {
                real = u32::cast_from(tokens[b * tokens.stride(0) + t * tokens.stride(1)]) != 0;
            }
            if real {
                acc += Vector::<f32, N>::cast_from(x[(b * seq + t) * d_v + v]);
                count += 1.0;
            }
            t += lanes;
        }
    }
    sums[unit] = acc;
    counts[unit] = count;
    sync_cube();
    let mut stride = lanes / 2;
    while stride > 0 {
        if lane < stride {
            sums[unit] = sums[unit] + sums[unit + stride * d_v];
            counts[unit] += counts[unit + stride * d_v];
        }
        sync_cube();
        stride /= 2;
    }
    if lane == 0 {
        means[b * d_v + v] = sums[unit] / Vector::new(max(counts[unit], 1.0f32));
    }
}

fn f32_tensor<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

/// `x` `[batch, seq, d]` of a float dtype, `tokens` `[batch, seq]` stored as u8 or u32; output
/// `[batch, d]` f32, contiguous.
pub(crate) fn forward<R: CubeRuntime>(
    x: CubeTensor<R>,
    tokens: CubeTensor<R>,
    mask_padding: bool,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let shape = x.meta.shape();
    let (batch, seq, d) = (shape[0], shape[1], shape[2]);
    let dtype = x.dtype;
    let means = f32_tensor(&x, Shape::new([batch, d]));
    // The f32 buffers share `x`'s vector width (f32 vectors of N elements are always aligned).
    let vector = vector_size(&[&x], dtype, &[d]);
    let d_v = d / vector;
    let client = x.client.clone();
    if d_v <= SEQUENCE_MAX_VECTORS {
        // The largest power of two of lanes that fits the cube.
        let lanes = 1usize << (SEQUENCE_UNITS / d_v).ilog2();
        let address = address_type(&[&x, &tokens, &means]);
        let dtypes = [dtype.into(), tokens.dtype.into()];
        count_launch();
        // SAFETY: `b < batch` (one cube each) and `t < seq`, `v < d_v`: `(b * seq + t) * d_v + v`
        // indexes `x`, `b * d_v + v` `means`; shared indices stay below `lanes * d_v <=
        // SEQUENCE_UNITS`.
        unsafe {
            sequence_kernel::launch_unchecked::<R>(
                &client,
                CubeCount::Static(batch as u32, 1, 1),
                CubeDim::new_1d(SEQUENCE_UNITS as u32),
                address,
                vector,
                x.into_tensor_arg(),
                tokens.into_tensor_arg(),
                means.clone().into_tensor_arg(),
                seq,
                d_v,
                lanes,
                mask_padding,
                dtypes,
            )
        };
        return means;
    }
    let chunks = seq.div_ceil(CHUNK);
    let partial = f32_tensor(&x, Shape::new([batch, chunks, d]));
    let counts = f32_tensor(&x, Shape::new([batch, chunks]));

    let (dim, count) = elementwise_launch(&x, batch * chunks * d_v);
    let address = address_type(&[&x, &tokens, &partial, &counts]);
    let dtypes = [dtype.into(), tokens.dtype.into()];
    count_launch();
    // SAFETY: `at < batch * chunks * d_v` indexes `partial`; positions stay below `seq`, so
    // `(b * seq + t) * d_v + v` indexes `x`, and `bc < batch * chunks` indexes `counts`.
    unsafe {
        partial_sums_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address,
            vector,
            x.into_tensor_arg(),
            tokens.into_tensor_arg(),
            partial.clone().into_tensor_arg(),
            counts.clone().into_tensor_arg(),
            batch,
            seq,
            chunks,
            d_v,
            mask_padding,
            dtypes,
        )
    };
    let (dim, count) = elementwise_launch(&means, batch * d_v);
    let address = address_type(&[&partial, &counts, &means]);
    count_launch();
    // SAFETY: `at < batch * d_v` indexes `means`; `(b * chunks + c) * d_v + v` indexes `partial`
    // and `b * chunks + c` indexes `counts`.
    unsafe {
        finish_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address,
            vector,
            partial.into_tensor_arg(),
            counts.into_tensor_arg(),
            means.clone().into_tensor_arg(),
            batch,
            chunks,
            d_v,
        )
    };
    means
}
