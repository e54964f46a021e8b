//! The cross-entropy kernels: one cube per row of logits, the row strided over its units in
//! vectors, the max and the sum of exponentials in f32 through shared memory.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{
    address_type, block_max, block_sum, count_launch, lane_max, lane_sum, row_launch, vector_size,
};

/// `nll[r] = lse[r] - logits[r, targets[r]]` and `lse[r] = logsumexp(logits[r])`, from the online
/// (max, sum) of each unit combined over the cube.
///
/// `logits`: `[rows, vocab]` contiguous; `targets`: `[rows]`, any stride; `nll`, `lse`: `[rows]`
/// f32; `vocab_v = vocab / N`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn cross_entropy_forward_kernel<F: Float, M: Int, N: Size>(
    logits: &Tensor<Vector<F, N>>,
    targets: &Tensor<M>,
    nll: &mut Tensor<f32>,
    lse: &mut Tensor<f32>,
    rows: usize,
    vocab_v: usize,
    lowest: f32,
    #[comptime] block: usize,
    #[define(F, M)] _dtypes: [StorageType; 2],
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let base = row * vocab_v;
    let mut shared = SharedMemory::<f32>::new(block);

    let mut max_ = lowest;
    let mut sum = 0.0f32;
    let mut i = UNIT_POS as usize;
    while i < vocab_v {
        let x = Vector::<f32, N>::cast_from(logits[base + i]);
        let new_max = max(max_, lane_max::<N>(x));
        sum = sum * (max_ - new_max).exp() + lane_sum::<N>((x - Vector::new(new_max)).exp());
        max_ = new_max;
        i += block;
    }
    let row_max = block_max(max_, &mut shared);
    let row_sum = block_sum(sum * (max_ - row_max).exp(), &mut shared);

    if UNIT_POS == 0 {
        let n = logits.vector_size();
        let target = usize::cast_from(targets[row * targets.stride(0)]);
        let picked = Vector::<f32, N>::cast_from(logits[base + target / n]);
        let lane = target % n;
        let mut x_t = picked[0];
        #[unroll]
        for k in 0..N::value() {
            if k == lane {
                x_t = picked[k];
            }
        }
        let row_lse = row_max + row_sum.ln();
        lse[row] = row_lse;
        nll[row] = row_lse - x_t;
    }
}

/// `dlogits[r, j] = F(dnll[r] * (exp(logits[r, j] - lse[r]) - [j == targets[r]]))`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn cross_entropy_backward_kernel<F: Float, M: Int, N: Size>(
    logits: &Tensor<Vector<F, N>>,
    targets: &Tensor<M>,
    lse: &Tensor<f32>,
    dnll: &Tensor<f32>,
    dlogits: &mut Tensor<Vector<F, N>>,
    rows: usize,
    vocab_v: usize,
    #[comptime] block: usize,
    #[define(F, M)] _dtypes: [StorageType; 2],
) {
    let row = CUBE_POS;
    if row >= rows {
        terminate!();
    }
    let n = logits.vector_size();
    let base = row * vocab_v;
    let target = usize::cast_from(targets[row * targets.stride(0)]);
    let row_lse = Vector::<f32, N>::new(lse[row]);
    let g = Vector::<f32, N>::new(dnll[row]);
    let mut i = UNIT_POS as usize;
    while i < vocab_v {
        let x = Vector::<f32, N>::cast_from(logits[base + i]);
        let mut d = (x - row_lse).exp();
        if i == target / n {
            let lane = target % n;
            #[unroll]
            for k in 0..N::value() {
                if k == lane {
                    d[k] -= 1.0;
                }
            }
        }
        dlogits[base + i] = Vector::<F, N>::cast_from(d * g);
        i += block;
    }
}

/// An f32 `[rows]` tensor on `like`'s device.
fn row_vector<R: CubeRuntime>(like: &CubeTensor<R>, rows: usize) -> CubeTensor<R> {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::new([rows]),
        DType::F32,
    )
}

/// The forward: `logits` `[rows, vocab]` of a float dtype, `targets` `[rows]` of an int dtype;
/// outputs `(nll, lse)`, both `[rows]` f32.
pub(crate) fn forward<R: CubeRuntime>(
    logits: CubeTensor<R>,
    targets: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let logits = into_contiguous(logits);
    let shape = logits.meta.shape();
    let (rows, vocab) = (shape[0], shape[1]);
    let dtype = logits.dtype;
    let (nll, lse) = (row_vector(&logits, rows), row_vector(&logits, rows));
    let vector = vector_size(&[&logits], dtype, &[vocab]);
    let launch = row_launch(&logits, rows, vocab / vector);
    let address = address_type(&[&logits, &targets, &nll, &lse]);
    let dtypes = [dtype.into(), targets.dtype.into()];
    let client = logits.client.clone();
    count_launch();
    // SAFETY: every index stays in its row of `rows * vocab` contiguous elements, in `targets`'
    // `rows` entries, or in the `rows` outputs; the caller checked `targets` lie in `0..vocab`.
    unsafe {
        cross_entropy_forward_kernel::launch_unchecked::<R>(
            &client,
            launch.cube_count,
            launch.cube_dim,
            address,
            vector,
            logits.into_tensor_arg(),
            targets.into_tensor_arg(),
            nll.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            rows,
            vocab / vector,
            f32::MIN,
            launch.block,
            dtypes,
        )
    };
    (nll, lse)
}

/// The backward: the logits' gradient (contiguous, in the logits' dtype) for the per-row
/// gradient `dnll` (`[rows]`, f32), from the forward's inputs and its `lse`.
pub(crate) fn backward<R: CubeRuntime>(
    logits: CubeTensor<R>,
    targets: CubeTensor<R>,
    lse: CubeTensor<R>,
    dnll: CubeTensor<R>,
) -> CubeTensor<R> {
    let (logits, dnll) = (into_contiguous(logits), into_contiguous(dnll));
    let shape = logits.meta.shape().clone();
    let (rows, vocab) = (shape[0], shape[1]);
    let dtype = logits.dtype;
    let dlogits =
        empty_device_contiguous_dtype(logits.client.clone(), logits.device.clone(), shape, dtype);
    let vector = vector_size(&[&logits, &dlogits], dtype, &[vocab]);
    let launch = row_launch(&logits, rows, vocab / vector);
    let address = address_type(&[&logits, &targets, &lse, &dnll, &dlogits]);
    let dtypes = [dtype.into(), targets.dtype.into()];
    let client = logits.client.clone();
    count_launch();
    // SAFETY: as in the forward.
    unsafe {
        cross_entropy_backward_kernel::launch_unchecked::<R>(
            &client,
            launch.cube_count,
            launch.cube_dim,
            address,
            vector,
            logits.into_tensor_arg(),
            targets.into_tensor_arg(),
            lse.into_tensor_arg(),
            dnll.into_tensor_arg(),
            dlogits.clone().into_tensor_arg(),
            rows,
            vocab / vector,
            launch.block,
            dtypes,
        )
    };
    dlogits
}
