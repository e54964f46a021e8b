//! The optimizer kernels: the AdamW update (elementwise, in vectors, f32), per-tensor sums of
//! squares (a few cubes per tensor, each writing its partial sum to a slot of a shared buffer),
//! and the reduction of those slots into the global norm and the clip factor (one cube).

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::{calculate_cube_count_elemwise, CubeCount, CubeDim};

use super::Scalars;
use crate::common::{address_type, block_sum, vector_size};

/// Units per cube, at most (a power of two: the reductions halve it).
const BLOCK: u32 = 256;

/// Elements a cube of the sum-of-squares kernel covers, about: sets how many cubes (and slots)
/// a tensor gets. Eight per unit: a LoRA factor of LLaMA3-8B (131k elements) gets 64 cubes. At
/// 16k per cube (8 cubes) Nsight Compute timed 8.9 us a launch on the H200, latency-bound, 256
/// launches a step.
const ELEMENTS_PER_CUBE: usize = 2 * 1024;

/// Most cubes (slots) one tensor's sum of squares is split over.
const MAX_PARTS: usize = 1024;

/// Kernel launches of this module since the process started.
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

fn count_launch() {
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
}

/// Kernel launches of this module since the process started (see [`super::fused_launches`]).
pub(crate) fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

/// `old beta + x (1 - beta)`: a moment's update (burn's op order).
#[cube]
fn moment<N: Size>(
    old: Vector<f32, N>,
    x: Vector<f32, N>,
    beta: f32,
    one_minus_beta: f32,
) -> Vector<f32, N> {
    old * Vector::<f32, N>::new(beta) + x * Vector::<f32, N>::new(one_minus_beta)
}

/// `p decay - (m / bias_1) / (sqrt(v / bias_2) + epsilon) lr` (burn's op order).
#[cube]
#[allow(clippy::too_many_arguments)]
fn stepped<N: Size>(
    p: Vector<f32, N>,
    m: Vector<f32, N>,
    v: Vector<f32, N>,
    bias_1: f32,
    bias_2: f32,
    epsilon: f32,
    decay: f32,
    lr: f32,
) -> Vector<f32, N> {
    let m_hat = m / Vector::<f32, N>::new(bias_1);
    let v_hat = v / Vector::<f32, N>::new(bias_2);
    let delta = m_hat / (v_hat.sqrt() + Vector::<f32, N>::new(epsilon));
    p * Vector::<f32, N>::new(decay) - delta * Vector::<f32, N>::new(lr)
}

/// One AdamW step, elementwise (burn 0.21's `AdamW` without AMSGrad or cautious decay), written
/// over `param`, `moment_1` and `moment_2` (each element is read once, then written, by the same
/// unit):
///
/// ```text
/// g  = grad * scale
/// m' = m beta_1 + g (1 - beta_1)
/// v' = v beta_2 + g^2 (1 - beta_2)
/// p' = p decay - (m' / bias_1) / (sqrt(v' / bias_2) + epsilon) lr
/// ```
///
/// in the order of burn's tensor ops. `len` counts vectors of `N` elements.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn adamw_in_place_kernel<N: Size>(
    param: &mut Tensor<Vector<f32, N>>,
    grad: &Tensor<Vector<f32, N>>,
    moment_1: &mut Tensor<Vector<f32, N>>,
    moment_2: &mut Tensor<Vector<f32, N>>,
    grad_scale: &Tensor<f32>,
    len: usize,
    beta_1: f32,
    one_minus_beta_1: f32,
    beta_2: f32,
    one_minus_beta_2: f32,
    bias_1: f32,
    bias_2: f32,
    epsilon: f32,
    decay: f32,
    lr: f32,
) {
    let i = ABSOLUTE_POS;
    if i >= len {
        terminate!();
    }
    let g = grad[i] * Vector::<f32, N>::new(grad_scale[0]);
    let m = moment::<N>(moment_1[i], g, beta_1, one_minus_beta_1);
    let v = moment::<N>(moment_2[i], g * g, beta_2, one_minus_beta_2);
    param[i] = stepped::<N>(param[i], m, v, bias_1, bias_2, epsilon, decay, lr);
    moment_1[i] = m;
    moment_2[i] = v;
}

/// `out[slot + c] = sum(f32(x)^2)` over the part of `input` that cube `c` of `parts` covers
/// (vectors `c * CUBE_DIM + unit`, strided by `parts * CUBE_DIM`). `len` counts vectors.
#[cube(launch_unchecked, address_type = "dynamic")]
fn sum_of_squares_kernel<F: Float, N: Size>(
    input: &Tensor<Vector<F, N>>,
    out: &mut Tensor<f32>,
    len: usize,
    slot: usize,
    #[comptime] block: usize,
    #[define(F)] _dtype: StorageType,
) {
    let mut shared = SharedMemory::<f32>::new(block);
    let part = CUBE_POS_X as usize;
    let stride = CUBE_COUNT_X as usize * block;
    let mut squares = Vector::<f32, N>::new(0.0f32);
    let mut i = part * block + UNIT_POS as usize;
    while i < len {
        let x = Vector::<f32, N>::cast_from(input[i]);
        squares += x * x;
        i += stride;
    }
    let mut total = 0.0f32;
    #[unroll]
    for lane in 0..N::value() {
        total += squares[lane];
    }
    let total = block_sum(total, &mut shared);
    if UNIT_POS == 0 {
        out[slot + part] = total;
    }
}

/// `norm = sqrt(sum(sums))`, `factor = min(max_norm / (norm + 1e-6), 1)`, or 1 when `norm` is
/// not finite (as `trainer::grad_norm::clip_global_norm_on_device`). One cube.
#[cube(launch_unchecked, address_type = "dynamic")]
fn clip_factor_kernel(
    sums: &Tensor<f32>,
    norm_out: &mut Tensor<f32>,
    factor_out: &mut Tensor<f32>,
    len: usize,
    max_norm: f32,
    #[comptime] block: usize,
) {
    let mut shared = SharedMemory::<f32>::new(block);
    let mut total = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < len {
        total += sums[i];
        i += block;
    }
    let total = block_sum(total, &mut shared);
    if UNIT_POS == 0 {
        let norm = total.sqrt();
        let mut factor = 1.0f32;
        if !(norm.is_nan() || norm.is_inf()) {
            factor = min((1.0f32 / (norm + 1e-6f32)) * max_norm, 1.0f32);
        }
        norm_out[0] = norm;
        factor_out[0] = factor;
    }
}

/// Units per cube on `tensor`'s device: [`BLOCK`] or the largest power of two the hardware
/// allows below it.
fn block<R: CubeRuntime>(tensor: &CubeTensor<R>) -> u32 {
    let hardware = &tensor.client.properties().hardware;
    let cap = BLOCK
        .min(hardware.max_units_per_cube)
        .min(hardware.max_cube_dim.0)
        .max(1);
    1 << (u32::BITS - 1 - cap.leading_zeros())
}

/// A new contiguous f32 tensor of `shape` on `like`'s device (uninitialised).
fn empty_f32<R: CubeRuntime>(like: &CubeTensor<R>, shape: Shape) -> CubeTensor<R> {
    empty_device_contiguous_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

/// One AdamW step over f32 tensors of one shape (`grad_scale`: one f32 element); returns
/// `(param, moment_1, moment_2)`, contiguous. The step writes over each of `param`, `moment_1`
/// and `moment_2` that is the only handle on its memory (burn's own test for in-place ops, what
/// training passes), and over a copy of one that is shared.
pub(crate) fn adamw<R: CubeRuntime>(
    param: CubeTensor<R>,
    grad: CubeTensor<R>,
    moment_1: CubeTensor<R>,
    moment_2: CubeTensor<R>,
    grad_scale: CubeTensor<R>,
    s: Scalars,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let [param, grad, moment_1, moment_2, grad_scale] =
        [param, grad, moment_1, moment_2, grad_scale].map(into_contiguous);
    let [param, moment_1, moment_2] =
        [param, moment_1, moment_2].map(|t| if t.can_mut() { t } else { t.copy() });
    let len = param.meta.shape().num_elements();
    let cube_dim = CubeDim::new_1d(block(&param));
    let client = param.client.clone();
    let tensors = [&param, &grad, &moment_1, &moment_2];
    let vector = vector_size(&tensors, DType::F32, &[len]);
    let address = address_type(&tensors).max(grad_scale.required_address_type());
    let cube_count = calculate_cube_count_elemwise(&client, len / vector, cube_dim);
    count_launch();
    // SAFETY: units past `len / vector` vectors return before any access; every tensor holds
    // `len` contiguous elements, `grad_scale` at least one; the three written tensors are each
    // the sole owner of their memory, so none aliases another binding.
    unsafe {
        adamw_in_place_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            address,
            vector,
            param.clone().into_tensor_arg(),
            grad.into_tensor_arg(),
            moment_1.clone().into_tensor_arg(),
            moment_2.clone().into_tensor_arg(),
            grad_scale.into_tensor_arg(),
            len / vector,
            s.beta_1,
            s.one_minus_beta_1,
            s.beta_2,
            s.one_minus_beta_2,
            s.bias_1,
            s.bias_2,
            s.epsilon,
            s.decay,
            s.lr,
        )
    };
    (param, moment_1, moment_2)
}

/// How many slots [`sum_of_squares_into`] fills for a tensor of `len` elements.
pub(crate) fn parts(len: usize) -> usize {
    len.div_ceil(ELEMENTS_PER_CUBE).clamp(1, MAX_PARTS)
}

/// Writes the partial sums of squares of `input` (f32/f16/bf16), in f32, to the [`parts`] slots
/// of `out` (f32, contiguous) from `slot` on.
pub(crate) fn sum_of_squares_into<R: CubeRuntime>(
    input: CubeTensor<R>,
    out: &CubeTensor<R>,
    slot: usize,
) {
    let input = into_contiguous(input);
    let dtype = input.dtype;
    let len = input.meta.shape().num_elements();
    let parts = parts(len);
    debug_assert!(slot + parts <= out.meta.shape().num_elements());
    let vector = vector_size(&[&input], dtype, &[len]);
    let block = block(&input);
    let address = address_type(&[&input, out]);
    let client = input.client.clone();
    count_launch();
    // SAFETY: reads stay below `len / vector` vectors; cube `c` writes `out[slot + c]` only,
    // `c < parts`, within `out`.
    unsafe {
        sum_of_squares_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(parts as u32, 1, 1),
            CubeDim::new_1d(block),
            address,
            vector,
            input.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            len / vector,
            slot,
            block as usize,
            dtype.into(),
        )
    };
}

/// The sum of squares of `input` (f32/f16/bf16) as a new `[1]` f32 tensor (one cube).
pub(crate) fn sum_of_squares<R: CubeRuntime>(input: CubeTensor<R>) -> CubeTensor<R> {
    let input = into_contiguous(input);
    let dtype = input.dtype;
    let len = input.meta.shape().num_elements();
    let out = empty_f32(&input, Shape::new([1]));
    let vector = vector_size(&[&input], dtype, &[len]);
    let block = block(&input);
    let address = address_type(&[&input, &out]);
    let client = input.client.clone();
    count_launch();
    // SAFETY: reads stay below `len / vector` vectors; the one cube writes `out[0]`.
    unsafe {
        sum_of_squares_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(block),
            address,
            vector,
            input.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            len / vector,
            0,
            block as usize,
            dtype.into(),
        )
    };
    out
}

/// The global norm and clip factor of `tensors` (each f32/f16/bf16): `(norm, factor)`, `[1]` f32
/// each, in one sum-of-squares launch per tensor and one final launch. `tensors` is not empty.
pub(crate) fn global_norm_clip<R: CubeRuntime>(
    tensors: Vec<CubeTensor<R>>,
    max_norm: f32,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let slots: usize = tensors
        .iter()
        .map(|t| parts(t.meta.shape().num_elements()))
        .sum();
    let sums = empty_f32(&tensors[0], Shape::new([slots]));
    let mut slot = 0;
    for tensor in tensors {
        let n = parts(tensor.meta.shape().num_elements());
        sum_of_squares_into(tensor, &sums, slot);
        slot += n;
    }
    let norm = empty_f32(&sums, Shape::new([1]));
    let factor = empty_f32(&sums, Shape::new([1]));
    let block = block(&sums);
    let address = address_type(&[&sums, &norm, &factor]);
    let client = sums.client.clone();
    count_launch();
    // SAFETY: the one cube reads `sums[..slots]` and writes `norm[0]`, `factor[0]`.
    unsafe {
        clip_factor_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(block),
            address,
            sums.into_tensor_arg(),
            norm.clone().into_tensor_arg(),
            factor.clone().into_tensor_arg(),
            slots,
            max_norm,
            block as usize,
        )
    };
    (norm, factor)
}
