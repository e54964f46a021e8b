//! The causal softmax kernels: one plane (warp) per row of scores (one query's keys), several rows
//! per cube, the row strided over the plane's units in vectors, the max and sum in f32 within the
//! plane, where the runtime allows; else one cube per row, reducing through shared memory. No mask
//! tensor exists: the causal part is the key index against the query's, the padding part reads
//! `key_valid`.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{
    address_type, count_launch, lane_max, lane_sum, plane_row_launch, row_max, row_sum, vector_size,
};

/// The masked f32 logits of the loaded vector `s` (keys `j0..j0 + N` of query `query`, read only
/// when `j0 <= query`): `f32(F(s * scale))` where the key is allowed, `masked` elsewhere. `valid`
/// is the keys' vector of `key_valid`.
#[cube]
fn logits<F: Float, M: Int, N: Size>(
    s: Vector<F, N>,
    valid: Vector<M, N>,
    j0: usize,
    query: usize,
    scale: F,
    masked: f32,
) -> Vector<f32, N> {
    let s = Vector::<f32, N>::cast_from(s * Vector::new(scale));
    // Mostly every key of a vector may be read (all valid, none after the query): the mask is
    // then a few ANDs, not a compare and a select per key. The kernels are bound by instruction
    // issue (Nsight Compute on the H200: 84% of issue slots busy), not by memory; this took ~1 us
    // of the forward's 74 at 512 keys, so most of the integer work is elsewhere (docs/perf.md).
    let mut all_valid = valid[0];
    #[unroll]
    for k in 1..N::value() {
        all_valid &= valid[k];
    }
    let mut x = s;
    if j0 + N::value() > query + 1 || u32::cast_from(all_valid) == 0 {
        x = Vector::<f32, N>::new(masked);
        #[unroll]
        for k in 0..N::value() {
            if j0 + k <= query && u32::cast_from(valid[k]) != 0 {
                x[k] = s[k];
            }
        }
    }
    x
}

/// Vectors of a row that each unit holds at most: rows of up to `block * MAX_HELD_VECTORS`
/// vectors are loaded once, every load of a unit in flight together, and kept in registers for
/// the second pass ([`held_vectors`]); longer rows are streamed twice in a loop. Streamed, the
/// H200 ran the 512-key rows of LLaMA's attention at ~1.5 TB/s, each unit waiting on one load
/// after another and then again on the second pass's reloads.
pub(crate) const MAX_HELD_VECTORS: usize = 8;

/// Vectors each unit holds for rows of `vectors` vectors over `block` units, or 0 when a row is
/// too long to hold and the kernels stream it.
fn held_vectors(vectors: usize, block: usize) -> usize {
    let per_unit = vectors.div_ceil(block);
    if per_unit <= MAX_HELD_VECTORS {
        per_unit
    } else {
        0
    }
}

/// `probs = softmax(logits)` per row, from the (max, sum) of each unit combined over the cube;
/// with `with_stats`, also the row's `(max, 1 / sum)` into `stats` (`[rows, 2]`).
///
/// `scores`, `probs`: `[rows, kv]` contiguous, rows in `(b, h, s)` order, or `(b, h, s, g)` with
/// `groups = g` consecutive rows per query; `key_valid`: `[b, kv]` contiguous, read in vectors of
/// `N` as the scores (one load per vector instead of `N`); `kv_v = kv / N`. A row is read and
/// written only up to the end of its query's key block (`key_block`, a multiple of `N`, or `kv`):
/// beyond it the scores were not computed and the probabilities are not read. `held`: vectors a
/// unit holds in registers ([`held_vectors`]), 0 to stream the row.
///
/// Fast math: CUDA's `__expf` (one special-function instruction and a multiply) instead of
/// `expf`'s range reduction, a few ulp at the logits' range, far below the rounding of a bf16
/// probability. The logits are finite or `masked`, never NaN; `exp(masked - max)` is 0 either way.
#[cube(
    launch_unchecked,
    address_type = "dynamic",
    fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
)]
#[allow(clippy::too_many_arguments)]
fn causal_softmax_forward_kernel<F: Float, M: Int, N: Size>(
    scores: &Tensor<Vector<F, N>>,
    key_valid: &Tensor<Vector<M, N>>,
    probs: &mut Tensor<Vector<F, N>>,
    stats: &mut Tensor<f32>,
    rows: usize,
    rows_per_cube: usize,
    heads_seq: usize,
    seq: usize,
    groups: usize,
    key_block: usize,
    kv_v: usize,
    scale: f32,
    masked: f32,
    #[comptime] block: usize,
    #[comptime] plane: bool,
    #[comptime] with_stats: bool,
    #[comptime] held: usize,
    #[define(F, M)] _dtypes: [StorageType; 2],
) {
    // A whole plane shares a row, so a plane that stops here stops together.
    let row = CUBE_POS * rows_per_cube + UNIT_POS_Y as usize;
    if row >= rows {
        terminate!();
    }
    let n = scores.vector_size();
    let query = (row / groups) % seq;
    let limit_v = key_limit(query, key_block, kv_v, n);
    let valid_at = (row / heads_seq) * kv_v;
    let base = row * kv_v;
    let scale = F::cast_from(scale);
    let mut shared = SharedMemory::<f32>::new(block);
    // The vectors after the one holding the query's own key are wholly masked: they add nothing
    // to the sum unless the whole row is masked (a uniform row, below), and are not read.
    let end = min(limit_v, query / n + 1);
    let unit = UNIT_POS_X as usize;

    // Each unit's logits: loaded once into `x` (all loads issued before any is used), or, for
    // rows too long to hold, a running max and sum of `exp(x - max)` over a loop.
    let mut x = Array::<Vector<f32, N>>::new(comptime!(held.max(1)));
    let mut max_ = masked;
    let mut sum = 0.0f32;
    if comptime!(held > 0) {
        let mut raw = Array::<Vector<F, N>>::new(held);
        let mut valid = Array::<Vector<M, N>>::new(held);
        #[unroll]
        for v in 0..held {
            let i = unit + v * block;
            if i < end {
                raw[v] = scores[base + i];
                valid[v] = key_valid[valid_at + i];
            }
        }
        #[unroll]
        for v in 0..held {
            let i = unit + v * block;
            x[v] = Vector::new(masked);
            if i < end {
                x[v] = logits::<F, M, N>(raw[v], valid[v], i * n, query, scale, masked);
            }
            max_ = max(max_, lane_max::<N>(x[v]));
        }
    } else {
        let mut i = unit;
        while i < end {
            let y = logits::<F, M, N>(
                scores[base + i],
                key_valid[valid_at + i],
                i * n,
                query,
                scale,
                masked,
            );
            let new_max = max(max_, lane_max::<N>(y));
            sum = sum * (max_ - new_max).exp() + lane_sum::<N>((y - Vector::new(new_max)).exp());
            max_ = new_max;
            i += block;
        }
    }
    let largest = row_max(max_, &mut shared, plane);
    if comptime!(held > 0) {
        // One exp per logit, kept for the write; none past `end`, where every key is masked.
        #[unroll]
        for v in 0..held {
            if unit + v * block < end {
                x[v] = (x[v] - Vector::new(largest)).exp();
                sum += lane_sum::<N>(x[v]);
            }
        }
    } else {
        sum *= (max_ - largest).exp();
    }
    let total = row_sum(sum, &mut shared, plane);
    // A row with no readable key attends uniformly to every key (of its key block), as under the
    // reference's finite additive mask.
    let uniform = largest == masked;
    let inv_total = Vector::<f32, N>::new(1.0f32 / total);
    if with_stats && UNIT_POS_X == 0 {
        // What the recomputing backward needs to rebuild this row's P (`largest == masked`
        // marks a uniform row).
        stats[row * 2] = largest;
        stats[row * 2 + 1] = 1.0f32 / total;
    }
    let spread = Vector::<F, N>::new(F::cast_from(1.0f32 / (limit_v * n) as f32));
    let zero = Vector::<F, N>::new(F::new(0.0));

    if comptime!(held > 0) {
        #[unroll]
        for v in 0..held {
            let i = unit + v * block;
            if i < limit_v {
                if uniform {
                    probs[base + i] = spread;
                } else if i < end {
                    probs[base + i] = Vector::<F, N>::cast_from(x[v] * inv_total);
                } else {
                    probs[base + i] = zero;
                }
            }
        }
    } else {
        let mut i = unit;
        while i < limit_v {
            if uniform {
                probs[base + i] = spread;
            } else if i < end {
                let y = logits::<F, M, N>(
                    scores[base + i],
                    key_valid[valid_at + i],
                    i * n,
                    query,
                    scale,
                    masked,
                );
                probs[base + i] =
                    Vector::<F, N>::cast_from((y - Vector::new(largest)).exp() * inv_total);
            } else {
                probs[base + i] = zero;
            }
            i += block;
        }
    }
}

/// `dscores = F(P (dP - sum(dP P))) * F(scale)` per row.
///
/// `P` is the causal forward's: exactly zero after the query's key unless the row attends
/// uniformly (no readable key), which its last element tells (nonzero only then, or for the last
/// query). So a row reads `P` and `dP` up to the vector holding the query's key and writes zeros
/// after it, as the forward does; a uniform row is read whole. `seq`: queries per `(b, h)`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn causal_softmax_backward_kernel<F: Float, N: Size>(
    probs: &Tensor<Vector<F, N>>,
    dprobs: &Tensor<Vector<F, N>>,
    dscores: &mut Tensor<Vector<F, N>>,
    rows: usize,
    rows_per_cube: usize,
    seq: usize,
    kv_v: usize,
    scale: f32,
    #[comptime] block: usize,
    #[comptime] plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS * rows_per_cube + UNIT_POS_Y as usize;
    if row >= rows {
        terminate!();
    }
    let n = probs.vector_size();
    let base = row * kv_v;
    let mut shared = SharedMemory::<f32>::new(block);
    let last = probs[base + kv_v - 1];
    let uniform = f32::cast_from(last[n - 1]) != 0.0f32;
    let end = select(uniform, kv_v, min(kv_v, (row % seq) / n + 1));

    let mut dots = Vector::<f32, N>::new(0.0f32);
    let mut i = UNIT_POS_X as usize;
    while i < end {
        let p = Vector::<f32, N>::cast_from(probs[base + i]);
        let dp = Vector::<f32, N>::cast_from(dprobs[base + i]);
        dots += p * dp;
        i += block;
    }
    let dot = row_sum(lane_sum::<N>(dots), &mut shared, plane);
    let scale = Vector::<F, N>::new(F::cast_from(scale));

    let mut i = UNIT_POS_X as usize;
    while i < kv_v {
        if i < end {
            let p = Vector::<f32, N>::cast_from(probs[base + i]);
            let dp = Vector::<f32, N>::cast_from(dprobs[base + i]);
            let d = Vector::<F, N>::cast_from(p * (dp - Vector::new(dot)));
            dscores[base + i] = d * scale;
        } else {
            dscores[base + i] = Vector::<F, N>::new(F::new(0.0));
        }
        i += block;
    }
}

/// The recomputing backward of the causal softmax in one pass per row: `P` rebuilt from the
/// recomputed `scores` and the forward's `stats` (`[rows, 2]`: max and `1 / sum`, max `masked`
/// for a uniform row), exactly as the forward computed it, then written for `dV = P^T dO`
/// alongside `dscores = F(P (dP - sum(dP P))) * F(scale)`. It replaces a second forward pass (its
/// max and sum reductions, and a write of `P` that the old backward read back). `held`: as in
/// the forward; held, `P` and `dP` are read once. Fast math as the forward's, so that `P` is
/// rebuilt with the same `exp`.
#[cube(
    launch_unchecked,
    address_type = "dynamic",
    fast_math = FastMath::ReducedPrecision | FastMath::NotNaN | FastMath::NotInf
)]
#[allow(clippy::too_many_arguments)]
fn causal_softmax_recompute_backward_kernel<F: Float, M: Int, N: Size>(
    scores: &Tensor<Vector<F, N>>,
    key_valid: &Tensor<Vector<M, N>>,
    stats: &Tensor<f32>,
    dprobs: &Tensor<Vector<F, N>>,
    probs: &mut Tensor<Vector<F, N>>,
    dscores: &mut Tensor<Vector<F, N>>,
    rows: usize,
    rows_per_cube: usize,
    heads_seq: usize,
    seq: usize,
    groups: usize,
    key_block: usize,
    kv_v: usize,
    scale: f32,
    masked: f32,
    #[comptime] block: usize,
    #[comptime] plane: bool,
    #[comptime] held: usize,
    #[define(F, M)] _dtypes: [StorageType; 2],
) {
    let row = CUBE_POS * rows_per_cube + UNIT_POS_Y as usize;
    if row >= rows {
        terminate!();
    }
    let n = scores.vector_size();
    let query = (row / groups) % seq;
    let limit_v = key_limit(query, key_block, kv_v, n);
    let valid_at = (row / heads_seq) * kv_v;
    let base = row * kv_v;
    let f_scale = F::cast_from(scale);
    let mut shared = SharedMemory::<f32>::new(block);
    let largest = stats[row * 2];
    let inv_total = Vector::<f32, N>::new(stats[row * 2 + 1]);
    let uniform = largest == masked;
    let spread = Vector::<F, N>::new(F::cast_from(1.0f32 / (limit_v * n) as f32));
    let end = select(uniform, limit_v, min(limit_v, query / n + 1));
    let unit = UNIT_POS_X as usize;
    let zero = Vector::<F, N>::new(F::new(0.0));

    // Held: each unit's scores and `dP`, loaded once (all loads issued before any is used),
    // then `P` and `dP` kept in f32 for the write (each cast once: the conversions run on the
    // integer pipe, the busiest).
    let slots = comptime!(held.max(1));
    let mut pf_held = Array::<Vector<f32, N>>::new(slots);
    let mut dpf_held = Array::<Vector<f32, N>>::new(slots);
    let mut dots = Vector::<f32, N>::new(0.0f32);
    if comptime!(held > 0) {
        let mut s_held = Array::<Vector<F, N>>::new(held);
        let mut dp_held = Array::<Vector<F, N>>::new(held);
        let mut valid = Array::<Vector<M, N>>::new(held);
        #[unroll]
        for v in 0..held {
            let i = unit + v * block;
            if i < end {
                s_held[v] = scores[base + i];
                valid[v] = key_valid[valid_at + i];
                dp_held[v] = dprobs[base + i];
            }
        }
        #[unroll]
        for v in 0..held {
            let i = unit + v * block;
            // Past `end`, `P` and `dS` are zero.
            pf_held[v] = Vector::new(0.0f32);
            dpf_held[v] = Vector::new(0.0f32);
            if i < end {
                let p = recomputed_probs::<F, M, N>(
                    s_held[v],
                    valid[v],
                    i * n,
                    query,
                    f_scale,
                    masked,
                    largest,
                    inv_total,
                    uniform,
                    spread,
                );
                pf_held[v] = Vector::<f32, N>::cast_from(p);
                dpf_held[v] = Vector::<f32, N>::cast_from(dp_held[v]);
                dots += pf_held[v] * dpf_held[v];
            }
        }
    } else {
        let mut i = unit;
        while i < end {
            let p = recomputed_probs::<F, M, N>(
                scores[base + i],
                key_valid[valid_at + i],
                i * n,
                query,
                f_scale,
                masked,
                largest,
                inv_total,
                uniform,
                spread,
            );
            dots += Vector::<f32, N>::cast_from(p) * Vector::<f32, N>::cast_from(dprobs[base + i]);
            i += block;
        }
    }
    let dot = Vector::<f32, N>::new(row_sum(lane_sum::<N>(dots), &mut shared, plane));
    let out_scale = Vector::<F, N>::new(F::cast_from(scale));

    if comptime!(held > 0) {
        #[unroll]
        for v in 0..held {
            let i = unit + v * block;
            if i < limit_v {
                let pf = pf_held[v];
                probs[base + i] = Vector::<F, N>::cast_from(pf);
                dscores[base + i] = Vector::<F, N>::cast_from(pf * (dpf_held[v] - dot)) * out_scale;
            }
        }
    } else {
        let mut i = unit;
        while i < limit_v {
            if i < end {
                let p = recomputed_probs::<F, M, N>(
                    scores[base + i],
                    key_valid[valid_at + i],
                    i * n,
                    query,
                    f_scale,
                    masked,
                    largest,
                    inv_total,
                    uniform,
                    spread,
                );
                let dp = Vector::<f32, N>::cast_from(dprobs[base + i]);
                let pf = Vector::<f32, N>::cast_from(p);
                probs[base + i] = p;
                dscores[base + i] = Vector::<F, N>::cast_from(pf * (dp - dot)) * out_scale;
            } else {
                probs[base + i] = zero;
                dscores[base + i] = zero;
            }
            i += block;
        }
    }
}

/// Vectors of keys a row of query `query` covers: up to the end of the query's key block.
#[cube]
fn key_limit(query: usize, key_block: usize, kv_v: usize, n: usize) -> usize {
    min(kv_v, (query / key_block + 1) * key_block / n)
}

/// The forward's `P` of the loaded scores `s` (keys `j0..j0 + N`), from the row's max and
/// `1 / sum` (`uniform`: every key gets `spread`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn recomputed_probs<F: Float, M: Int, N: Size>(
    s: Vector<F, N>,
    valid: Vector<M, N>,
    j0: usize,
    query: usize,
    scale: F,
    masked: f32,
    largest: f32,
    inv_total: Vector<f32, N>,
    uniform: bool,
    spread: Vector<F, N>,
) -> Vector<F, N> {
    let mut p = spread;
    if !uniform {
        let x = logits::<F, M, N>(s, valid, j0, query, scale, masked);
        p = Vector::<F, N>::cast_from((x - Vector::new(largest)).exp() * inv_total);
    }
    p
}

/// `(rows, kv)` of a `[b, h, s, kv]` tensor.
fn rows_kv<R: CubeRuntime>(t: &CubeTensor<R>) -> (usize, usize) {
    let shape = t.meta.shape();
    (shape[0] * shape[1] * shape[2], shape[3])
}

/// How the rows of a `[b, h, s, kv]` scores tensor map to queries, and which of their keys were
/// computed: what attention's blocked products ([`crate::attention`]) hand the softmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowLayout {
    /// Consecutive rows that share one query: 1 when each `(b, h)` holds one head's queries in
    /// order; `g` when the `g` query heads of a KV head are stacked position-major (rows in
    /// `(b, kv, s, g)` order).
    pub groups: usize,
    /// The keys of query `i`'s row that were computed, and that are written: those below
    /// `min(kv, (i / key_block + 1) key_block)`. `kv` (or more): every key.
    pub key_block: usize,
}

impl RowLayout {
    /// One head's queries in order, every key computed.
    pub fn heads(kv: usize) -> RowLayout {
        RowLayout {
            groups: 1,
            key_block: kv.max(1),
        }
    }
}

/// The forward: `scores` `[b, h, s, kv]` of a float dtype, `key_valid` `[b, kv]` stored as u8 or
/// u32; output (the probabilities) contiguous in the scores' dtype.
pub(crate) fn forward<R: CubeRuntime>(
    scores: CubeTensor<R>,
    key_valid: CubeTensor<R>,
    scale: f64,
) -> CubeTensor<R> {
    let kv = scores.meta.shape()[3];
    forward_keeping_stats(scores, key_valid, scale, false, RowLayout::heads(kv)).0
}

/// The vector size of a row pass over `tensors` (`kv` keys a row, blocks of `layout.key_block`).
fn row_vector<R: CubeRuntime>(tensors: &[&CubeTensor<R>], kv: usize, layout: RowLayout) -> usize {
    let dtype = tensors[0].dtype;
    vector_size(tensors, dtype, &[kv, layout.key_block.min(kv)])
}

/// [`forward`], plus with `keep_stats` each row's max and `1 / sum` (`[rows * 2]` f32), from
/// which [`recompute_backward`] rebuilds the probabilities; rows mapped to queries and keys by
/// `layout`.
pub(crate) fn forward_keeping_stats<R: CubeRuntime>(
    scores: CubeTensor<R>,
    key_valid: CubeTensor<R>,
    scale: f64,
    keep_stats: bool,
    layout: RowLayout,
) -> (CubeTensor<R>, Option<CubeTensor<R>>) {
    let scores = into_contiguous(scores);
    let shape: Shape = scores.meta.shape().clone();
    let (heads, seq) = (shape[1], shape[2]);
    let (rows, kv) = rows_kv(&scores);
    let dtype = scores.dtype;
    let (client, device) = (scores.client.clone(), scores.device.clone());
    let probs = empty_device_contiguous_dtype(client.clone(), device.clone(), shape, dtype);
    // Without stats the kernel writes none: a one-pair stand-in.
    let stat_rows = if keep_stats { rows } else { 1 };
    let stats =
        empty_device_contiguous_dtype(client.clone(), device, [stat_rows * 2].into(), DType::F32);
    let vector = row_vector(&[&scores, &probs], kv, layout);
    let key_valid = aligned_mask(key_valid, vector);
    let launch = plane_row_launch(&scores, rows, kv / vector);
    let address = address_type(&[&scores, &key_valid, &probs]);
    let dtypes = [dtype.into(), key_valid.dtype.into()];
    count_launch();
    // SAFETY: every index stays in its row of `rows * kv` contiguous elements, in `key_valid`,
    // or (with stats) in the row's pair of `stats`.
    unsafe {
        causal_softmax_forward_kernel::launch_unchecked::<R>(
            &client,
            launch.cube_count,
            launch.cube_dim,
            address,
            vector,
            scores.into_tensor_arg(),
            key_valid.into_tensor_arg(),
            probs.clone().into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            rows,
            launch.rows_per_cube,
            heads * seq,
            seq,
            layout.groups,
            layout.key_block,
            kv / vector,
            scale as f32,
            f32::MIN,
            launch.block,
            launch.plane,
            keep_stats,
            held_vectors(kv / vector, launch.block),
            dtypes,
        )
    };
    (probs, keep_stats.then_some(stats))
}

/// The recomputing backward: from the recomputed `scores` (`[b, h, s, kv]`), `key_valid`, the
/// forward's `stats` ([`forward_keeping_stats`]) and `dprobs`, the probabilities again (for
/// `dV = P^T dO`) and the scores' gradient, both contiguous in the scores' dtype, written (and
/// `scores`, `dprobs` read) only where `layout` says the products computed them.
pub(crate) fn recompute_backward<R: CubeRuntime>(
    scores: CubeTensor<R>,
    key_valid: CubeTensor<R>,
    stats: CubeTensor<R>,
    dprobs: CubeTensor<R>,
    scale: f64,
    layout: RowLayout,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (scores, dprobs) = (into_contiguous(scores), into_contiguous(dprobs));
    let stats = into_contiguous(stats);
    let shape: Shape = scores.meta.shape().clone();
    let (heads, seq) = (shape[1], shape[2]);
    let (rows, kv) = rows_kv(&scores);
    let dtype = scores.dtype;
    let (client, device) = (scores.client.clone(), scores.device.clone());
    let probs = empty_device_contiguous_dtype(client.clone(), device.clone(), shape.clone(), dtype);
    let dscores = empty_device_contiguous_dtype(client.clone(), device, shape, dtype);
    let vector = row_vector(&[&scores, &dprobs, &probs, &dscores], kv, layout);
    let key_valid = aligned_mask(key_valid, vector);
    let launch = plane_row_launch(&scores, rows, kv / vector);
    let address = address_type(&[&scores, &key_valid, &dprobs, &probs, &dscores]);
    let dtypes = [dtype.into(), key_valid.dtype.into()];
    count_launch();
    // SAFETY: as in `forward_keeping_stats`; `stats` holds a pair per row.
    unsafe {
        causal_softmax_recompute_backward_kernel::launch_unchecked::<R>(
            &client,
            launch.cube_count,
            launch.cube_dim,
            address,
            vector,
            scores.into_tensor_arg(),
            key_valid.into_tensor_arg(),
            stats.into_tensor_arg(),
            dprobs.into_tensor_arg(),
            probs.clone().into_tensor_arg(),
            dscores.clone().into_tensor_arg(),
            rows,
            launch.rows_per_cube,
            heads * seq,
            seq,
            layout.groups,
            layout.key_block,
            kv / vector,
            scale as f32,
            f32::MIN,
            launch.block,
            launch.plane,
            held_vectors(kv / vector, launch.block),
            dtypes,
        )
    };
    (probs, dscores)
}

/// `key_valid` contiguous and starting on a boundary of `vector` elements (the kernel loads it in
/// vectors): itself when it is (the model's masks are), else a copy into a fresh buffer.
fn aligned_mask<R: CubeRuntime>(key_valid: CubeTensor<R>, vector: usize) -> CubeTensor<R> {
    let key_valid = into_contiguous(key_valid);
    let boundary = (vector * key_valid.dtype.size()) as u64;
    if key_valid
        .handle
        .offset_start
        .unwrap_or(0)
        .is_multiple_of(boundary)
    {
        return key_valid;
    }
    let (client, device, dtype) = (
        key_valid.client.clone(),
        key_valid.device.clone(),
        key_valid.dtype,
    );
    let copy = cubecl::std::tensor::into_contiguous(&client, key_valid.binding(), dtype.into());
    CubeTensor::new(client, copy.handle, *copy.metadata, device, dtype)
}

/// The backward: the scores' gradient for `dprobs`, from the forward's output `probs`; output
/// contiguous in the probabilities' dtype.
pub(crate) fn backward<R: CubeRuntime>(
    probs: CubeTensor<R>,
    dprobs: CubeTensor<R>,
    scale: f64,
) -> CubeTensor<R> {
    let (probs, dprobs) = (into_contiguous(probs), into_contiguous(dprobs));
    let (rows, kv) = rows_kv(&probs);
    let seq = probs.meta.shape()[2];
    let dtype = probs.dtype;
    let dscores = empty_device_contiguous_dtype(
        probs.client.clone(),
        probs.device.clone(),
        probs.meta.shape().clone(),
        dtype,
    );
    let vector = vector_size(&[&probs, &dprobs, &dscores], dtype, &[kv]);
    let launch = plane_row_launch(&probs, rows, kv / vector);
    let address = address_type(&[&probs, &dprobs, &dscores]);
    let client = probs.client.clone();
    count_launch();
    // SAFETY: every index stays in its row of `rows * kv` contiguous elements.
    unsafe {
        causal_softmax_backward_kernel::launch_unchecked::<R>(
            &client,
            launch.cube_count,
            launch.cube_dim,
            address,
            vector,
            probs.into_tensor_arg(),
            dprobs.into_tensor_arg(),
            dscores.clone().into_tensor_arg(),
            rows,
            launch.rows_per_cube,
            seq,
            kv / vector,
            scale as f32,
            launch.block,
            launch.plane,
            dtype.into(),
        )
    };
    dscores
}
