//! The optimizer kernels: the AdamW update (elementwise, in vectors, f32) and per-tensor sums of
//! squares (a few cubes per tensor, each writing its partial sum to a slot of a shared buffer),
//! each over several tensors in one launch, and the reduction of those slots into the global
//! norm and the clip factor (one cube).

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

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

/// One AdamW step (burn 0.21's `AdamW` without AMSGrad or cautious decay) for each of several
/// parameters, elementwise, written over each parameter and its moments (each element is read
/// once, then written, by the same unit):
///
/// ```text
/// g  = grad * scale
/// m' = m beta_1 + g (1 - beta_1)
/// v' = v beta_2 + g^2 (1 - beta_2)
/// p' = p decay - (m' / bias_1) / (sqrt(v' / bias_2) + epsilon) lr
/// ```
///
/// in the order of burn's tensor ops. One row of cubes per parameter (`CUBE_POS_Y`; unit
/// `CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X` takes vector `i` of it), the parameter picked by a
/// branch per parameter as in [`sums_of_squares_kernel`]. The parameters share the step's
/// scalars; the four sequences hold their tensors in one order, and a parameter's four tensors
/// have one length.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn adamw_multi_kernel<N: Size>(
    params: &mut Sequence<Tensor<Vector<f32, N>>>,
    grads: &Sequence<Tensor<Vector<f32, N>>>,
    moments_1: &mut Sequence<Tensor<Vector<f32, N>>>,
    moments_2: &mut Sequence<Tensor<Vector<f32, N>>>,
    grad_scale: &Tensor<f32>,
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
    let tensor = CUBE_POS_Y as usize;
    let i = CUBE_POS_X as usize * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    let count = params.len().comptime();
    #[unroll]
    for t in 0..count {
        if tensor == t {
            let param = params.index_mut(t);
            if i < param.len() {
                let moment_1 = moments_1.index_mut(t);
                let moment_2 = moments_2.index_mut(t);
                let g = grads[t][i] * Vector::<f32, N>::new(grad_scale[0]);
                let m = moment::<N>(moment_1[i], g, beta_1, one_minus_beta_1);
                let v = moment::<N>(moment_2[i], g * g, beta_2, one_minus_beta_2);
                param[i] = stepped::<N>(param[i], m, v, bias_1, bias_2, epsilon, decay, lr);
                moment_1[i] = m;
                moment_2[i] = v;
            }
        }
    }
}

/// `out[slot + t * parts + c] = sum(f32(x)^2)` over the part of tensor `t` of `inputs` that cube
/// `(c, t)` covers (vectors `c * CUBE_DIM + unit`, strided by `parts * CUBE_DIM`): the partial
/// sums of several tensors in one launch, one row of cubes per tensor. A sequence is indexed by
/// compile-time positions only, so the kernel has one branch per tensor and picks its tensor by
/// comparing `CUBE_POS_Y` with each ([`GROUP`] bounds the branches).
#[cube(launch_unchecked, address_type = "dynamic")]
fn sums_of_squares_kernel<F: Float, N: Size>(
    inputs: &Sequence<Tensor<Vector<F, N>>>,
    out: &mut Tensor<f32>,
    slot: usize,
    parts: usize,
    #[comptime] block: usize,
    #[define(F)] _dtype: StorageType,
) {
    let mut shared = SharedMemory::<f32>::new(block);
    let tensor = CUBE_POS_Y as usize;
    let part = CUBE_POS_X as usize;
    let stride = parts * block;
    let mut squares = Vector::<f32, N>::new(0.0f32);
    let count = inputs.len().comptime();
    #[unroll]
    for t in 0..count {
        if tensor == t {
            let input = &inputs[t];
            let len = input.len();
            let mut i = part * block + UNIT_POS as usize;
            while i < len {
                let x = Vector::<f32, N>::cast_from(input[i]);
                squares += x * x;
                i += stride;
            }
        }
    }
    let mut total = 0.0f32;
    #[unroll]
    for lane in 0..N::value() {
        total += squares[lane];
    }
    let total = block_sum(total, &mut shared);
    if UNIT_POS == 0 {
        out[slot + tensor * parts + part] = total;
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

/// One parameter's AdamW step for [`adamw_multi`]: `[param, grad, moment_1, moment_2]`, f32,
/// contiguous, of one length; param and moments each the only handle on its memory (the launch
/// writes over them) but for the clones the caller keeps as the step's results.
pub(crate) type AdamWTensors<R> = [CubeTensor<R>; 4];

/// `(param, moment_1, moment_2)` ready for [`adamw_multi`]: contiguous, and copied where another
/// handle shares their memory, so that writing over them changes nothing else; returned with
/// the contiguous gradient as the launch takes them, and the vector width they allow.
pub(crate) fn adamw_prepared<R: CubeRuntime>(
    param: CubeTensor<R>,
    grad: CubeTensor<R>,
    moment_1: CubeTensor<R>,
    moment_2: CubeTensor<R>,
) -> (AdamWTensors<R>, usize) {
    let [param, grad, moment_1, moment_2] = [param, grad, moment_1, moment_2].map(into_contiguous);
    let [param, moment_1, moment_2] =
        [param, moment_1, moment_2].map(|t| if t.can_mut() { t } else { t.copy() });
    let len = param.meta.shape().num_elements();
    let tensors = [param, grad, moment_1, moment_2];
    let vector = vector_size(&tensors.each_ref(), DType::F32, &[len]);
    (tensors, vector)
}

/// Parameters one AdamW launch takes on `like`'s device: [`GROUP`], or fewer where the device
/// binds fewer buffers (four per parameter, the clip factor and cubecl's metadata besides).
pub(crate) fn adamw_group_size<R: CubeRuntime>(like: &CubeTensor<R>) -> usize {
    let bindings = like.client.properties().hardware.max_bindings as usize;
    (bindings.saturating_sub(3) / 4).clamp(1, GROUP)
}

/// One AdamW step for each of `steps` (prepared by [`adamw_prepared`] at vector width `vector`,
/// at most [`adamw_group_size`] of them), written over their params and moments in one launch;
/// `grad_scale` is one f32 element on their device.
pub(crate) fn adamw_multi<R: CubeRuntime>(
    steps: Vec<AdamWTensors<R>>,
    vector: usize,
    grad_scale: CubeTensor<R>,
    s: Scalars,
) {
    let grad_scale = into_contiguous(grad_scale);
    let longest = steps
        .iter()
        .map(|[p, ..]| p.meta.shape().num_elements())
        .max()
        .unwrap_or(0);
    let refs: Vec<&CubeTensor<R>> = steps.iter().flatten().chain([&grad_scale]).collect();
    let address = address_type(&refs);
    let block = block(&grad_scale);
    let client = grad_scale.client.clone();
    let count = steps.len() as u32;
    let cubes = (longest / vector).div_ceil(block as usize).max(1) as u32;
    let [mut params, mut grads, mut moments_1, mut moments_2] = [(); 4].map(|_| SequenceArg::new());
    for [p, g, m, v] in steps {
        params.push(p.into_tensor_arg());
        grads.push(g.into_tensor_arg());
        moments_1.push(m.into_tensor_arg());
        moments_2.push(v.into_tensor_arg());
    }
    count_launch();
    // SAFETY: unit `i` of row `t` touches vector `i` of parameter `t`'s four tensors only when
    // `i` is below that parameter's length (all four have it, `vector` divides it); params and
    // moments are each the sole owner of their memory (`adamw_prepared`), so no written binding
    // aliases another.
    unsafe {
        adamw_multi_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(cubes, count, 1),
            CubeDim::new_1d(block),
            address,
            vector,
            params,
            grads,
            moments_1,
            moments_2,
            grad_scale.into_tensor_arg(),
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
}

/// How many cubes (slots) the sum of squares of a tensor of `len` elements is split over.
fn parts(len: usize) -> usize {
    len.div_ceil(ELEMENTS_PER_CUBE).clamp(1, MAX_PARTS)
}

/// Tensors one multi-tensor launch takes, at most: its kernel has a branch per tensor.
const GROUP: usize = 16;

/// Tensors (contiguous, one dtype) read by one launch of the sum-of-squares kernel, at one
/// vector width.
struct SquaresGroup<R: CubeRuntime> {
    tensors: Vec<CubeTensor<R>>,
    vector: usize,
    /// Cubes per tensor: the most any of them needs.
    parts: usize,
}

impl<R: CubeRuntime> SquaresGroup<R> {
    fn slots(&self) -> usize {
        self.tensors.len() * self.parts
    }
}

/// `tensors` (f32/f16/bf16) made contiguous and split into launch groups of one dtype and vector
/// width each, at most [`GROUP`] tensors (fewer where the device binds fewer buffers), in order.
fn squares_groups<R: CubeRuntime>(tensors: Vec<CubeTensor<R>>) -> Vec<SquaresGroup<R>> {
    let Some(first) = tensors.first() else {
        return Vec::new();
    };
    // The output and cubecl's metadata take bindings besides the inputs.
    let bindings = first.client.properties().hardware.max_bindings as usize;
    let most = bindings.saturating_sub(4).clamp(1, GROUP);
    let keyed = tensors.into_iter().map(|tensor| {
        let tensor = into_contiguous(tensor);
        let len = tensor.meta.shape().num_elements();
        let vector = vector_size(&[&tensor], tensor.dtype, &[len]);
        ((tensor.dtype, vector), tensor)
    });
    runs(keyed, most)
        .into_iter()
        .map(|((_, vector), tensors)| {
            let lens = tensors.iter().map(|t| t.meta.shape().num_elements());
            let parts = lens.map(parts).max().unwrap_or(1);
            SquaresGroup {
                tensors,
                vector,
                parts,
            }
        })
        .collect()
}

/// `items` in order, cut into runs of consecutive items with one key, at most `most` items each:
/// the launch groups of the multi-tensor kernels (one key: one dtype, vector width and scalars).
pub(crate) fn runs<K: PartialEq, T>(
    items: impl IntoIterator<Item = (K, T)>,
    most: usize,
) -> Vec<(K, Vec<T>)> {
    let mut runs: Vec<(K, Vec<T>)> = Vec::new();
    for (key, item) in items {
        match runs.last_mut() {
            Some((run_key, run)) if *run_key == key && run.len() < most => run.push(item),
            _ => runs.push((key, vec![item])),
        }
    }
    runs
}

/// Writes the partial sums of squares of `group`, in f32, to its [`SquaresGroup::slots`] slots of
/// `out` (f32, contiguous) from `slot` on: one launch.
fn sums_of_squares_into<R: CubeRuntime>(group: SquaresGroup<R>, out: &CubeTensor<R>, slot: usize) {
    let SquaresGroup {
        tensors,
        vector,
        parts,
    } = group;
    let dtype = tensors[0].dtype;
    let block = block(&tensors[0]);
    let refs: Vec<&CubeTensor<R>> = tensors.iter().chain([out]).collect();
    let address = address_type(&refs);
    let client = out.client.clone();
    let count = tensors.len();
    let mut inputs = SequenceArg::new();
    for tensor in tensors {
        inputs.push(tensor.into_tensor_arg());
    }
    count_launch();
    // SAFETY: each tensor is read below its own length (in vectors of `vector`, which divides
    // it); cube `(c, t)` writes `out[slot + t * parts + c]` only, `c < parts`, `t < count`,
    // within the slots the caller sized `out` for.
    unsafe {
        sums_of_squares_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(parts as u32, count as u32, 1),
            CubeDim::new_1d(block),
            address,
            vector,
            inputs,
            out.clone().into_tensor_arg(),
            slot,
            parts,
            block as usize,
            dtype.into(),
        )
    };
}

/// The sum of squares of `input` (f32/f16/bf16) as a new `[1]` f32 tensor (one cube).
pub(crate) fn sum_of_squares<R: CubeRuntime>(input: CubeTensor<R>) -> CubeTensor<R> {
    let out = empty_f32(&input, Shape::new([1]));
    let mut groups = squares_groups(vec![input]);
    let group = groups.pop().expect("one group for one tensor");
    sums_of_squares_into(SquaresGroup { parts: 1, ..group }, &out, 0);
    out
}

/// The global norm and clip factor of `tensors` (each f32/f16/bf16): `(norm, factor)`, `[1]` f32
/// each, in one sum-of-squares launch per group of up to [`GROUP`] tensors and one final launch.
/// `tensors` is not empty.
pub(crate) fn global_norm_clip<R: CubeRuntime>(
    tensors: Vec<CubeTensor<R>>,
    max_norm: f32,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let groups = squares_groups(tensors);
    let slots: usize = groups.iter().map(SquaresGroup::slots).sum();
    let sums = empty_f32(&groups[0].tensors[0], Shape::new([slots]));
    let mut slot = 0;
    for group in groups {
        let n = group.slots();
        sums_of_squares_into(group, &sums, slot);
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
