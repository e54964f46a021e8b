//! The top-k entry point, which picks the kernel ([`super::Method`]), and the counting kernel:
//! rank by counting. Each score's rank is the number of scores that come before
//! it in the order (higher, or equal at a lower index); a score whose rank is below `k` writes
//! its index at its rank. The ranks are a permutation of `0..n`, so every output slot is written
//! exactly once: no atomics, no second pass, nothing read back to the host.
//!
//! The `n²` comparisons: a cube ranks [`LANES`] scores, one per lane of each of its [`PARTS`]
//! rows of units (one warp each on CUDA), and walks over all `n` scores in tiles of
//! [`TILE_VECTORS`] vectors of [`VECTOR`] f32 in shared memory. Every unit loads a few scores of
//! a tile from global memory (coalesced, mapped to f32 with NaN as `-inf` once per cube), the
//! loads of the next tile issued before the current one is counted; row `p` then counts its
//! lanes' scores against the `p`-th slice of the tile, every lane reading the same vector (one
//! broadcast load serves [`VECTOR`] comparisons, each into its own counter), the loop unrolled by
//! [`UNROLL`] vectors. The tie rule costs nothing per comparison: a slice wholly before the cube's
//! scores counts `>=`, one wholly after counts `>`, and only the one slice per cube that holds
//! its own scores compares indices. The rows' partial counts are summed through shared memory.
//!
//! History (`docs/perf.md`): one unit per score gave 14,336 MLP scores 56 cubes (a third of the
//! H200's multiprocessors) and ~280 us per call; the count split over 8 warps, each reading its
//! slice from global memory one score at a time (a load, the NaN mapping and the full tie test
//! per comparison), gave 448 cubes and ~112 us (Nsight Compute, H200; ~6 us for 1024 scores).
//! This tiled form keeps the 448 cubes and the 1,792 comparisons per unit for 14,336 scores
//! (~37 us; the radix select of [`super::radix`] now takes such sizes).

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use super::{radix, Method};
use crate::common::{address_type, count_launch};

/// Scores ranked per cube (one per lane of a row of units).
const LANES: usize = 32;
/// Rows of units per cube, each counting over one slice of every tile.
const PARTS: usize = 8;
/// f32 per vector of the shared tile (one broadcast load, this many comparisons).
const VECTOR: usize = 4;
/// Vectors per tile: 2,048 scores, 8 KiB of shared memory; two vectors loaded per unit.
const TILE_VECTORS: usize = 512;
/// Vectors counted per step of the (unrolled) counting loop; divides a row's slice of a tile.
const UNROLL: usize = 8;

/// A slice of a tile wholly before the cube's scores (every index lower): a score there comes
/// before the cube's score `s[i]` when `>= s[i]`.
const BEFORE: u32 = 0;
/// A slice wholly after the cube's scores (every index higher, or padding past `n`): a score
/// there comes before `s[i]` when `> s[i]`.
const AFTER: u32 = 1;
/// The slice that holds the cube's scores: `> s[i]`, or `== s[i]` at an index below `i`.
const MIXED: u32 = 2;

/// A score as the kernel orders it: in f32, NaN as `nan_as` (negative infinity).
#[cube]
fn ordered<F: Float>(score: F, nan_as: f32) -> f32 {
    let value = f32::cast_from(score);
    select(value.is_nan(), nan_as, value)
}

/// The scores `at..at + N` as the kernel orders them, `nan_as` (negative infinity) past `n`.
/// Padding counts nowhere: only [`AFTER`] and [`MIXED`] slices reach past `n`, where the index
/// is above every `i` and `-inf > s[i]` holds for no score.
#[cube]
fn load_vector<F: Float, N: Size>(
    scores: &Tensor<F>,
    at: usize,
    n: usize,
    nan_as: f32,
) -> Vector<f32, N> {
    let mut v = Vector::<f32, N>::new(nan_as);
    #[unroll]
    for c in 0..N::value() {
        if at + c < n {
            v[c] = ordered::<F>(scores[at + c], nan_as);
        }
    }
    v
}

/// How many of the tile's vectors `from..from + vectors` (scores `j0..`, in order) come before
/// the score `mine` at index `i`, compared as `mode` says ([`BEFORE`], [`AFTER`], [`MIXED`]).
#[cube]
#[allow(clippy::too_many_arguments)]
fn count_slice<N: Size>(
    tile: &SharedMemory<Vector<f32, N>>,
    from: usize,
    mine: f32,
    i: usize,
    j0: usize,
    #[comptime] vectors: usize,
    #[comptime] unroll: usize,
    #[comptime] mode: u32,
) -> u32 {
    // One counter per vector component: independent adds, not one chain.
    let mut counts = Vector::<u32, N>::new(0u32);
    for step in 0..vectors / unroll {
        #[unroll]
        for u in 0..unroll {
            let q = step * unroll + u;
            let other = tile[from + q];
            #[unroll]
            for c in 0..N::value() {
                let hit = if mode == BEFORE {
                    other[c] >= mine
                } else if mode == AFTER {
                    other[c] > mine
                } else {
                    other[c] > mine || (other[c] == mine && j0 + q * N::value() + c < i)
                };
                counts[c] += select(hit, 1u32, 0u32);
            }
        }
    }
    let mut total = 0u32;
    #[unroll]
    for c in 0..N::value() {
        total += counts[c];
    }
    total
}

/// `out[rank(i)] = i` for every `i < n` with `rank(i) < k`, where `rank(i)` counts the `j` with
/// `s[j] > s[i]`, or `s[j] == s[i]` and `j < i`.
///
/// `scores`: `[n]` contiguous; `out`: `[k]`. Cube `c` (of `ceil(n / lanes)`; any further cubes of
/// the grid stop at once) ranks scores `c * lanes ..`, one per `lane`; tiles of `tile` vectors of
/// `V` scores each; unit `(lane, part)` counts over the `part`-th of `parts` slices of each tile.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn top_k_kernel<F: Float, I: Int, V: Size>(
    scores: &Tensor<F>,
    out: &mut Tensor<I>,
    n: usize,
    k: usize,
    nan_as: f32,
    #[comptime] lanes: usize,
    #[comptime] parts: usize,
    #[comptime] tile: usize,
    #[comptime] unroll: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let first = CUBE_POS * lanes;
    // The whole cube stops together, before any barrier.
    if first >= n {
        terminate!();
    }
    let lane = UNIT_POS_X as usize;
    let part = UNIT_POS_Y as usize;
    let unit = part * lanes + lane;
    let i = first + lane;
    let width = V::value();
    let units = comptime!(lanes * parts);
    let loads = comptime!(tile / (lanes * parts));
    let slice = comptime!(tile / parts);
    let tile_len = tile * width;
    let slice_len = slice * width;

    // Units past `n` count (harmlessly) and take part in the barriers, but write nothing.
    let mine = if i < n {
        ordered::<F>(scores[i], nan_as)
    } else {
        nan_as
    };
    let mut shared = SharedMemory::<Vector<f32, V>>::new(tile);
    // The unit's vectors of the next tile, loaded while the current one is counted.
    let mut staged = Array::<Vector<f32, V>>::new(loads);
    #[unroll]
    for s in 0..loads {
        staged[s] = load_vector::<F, V>(scores, (unit + s * units) * width, n, nan_as);
    }
    let tiles = n.div_ceil(tile_len);
    let mut rank = 0u32;
    for t in 0..tiles {
        #[unroll]
        for s in 0..loads {
            shared[unit + s * units] = staged[s];
        }
        sync_cube();
        let next = (t + 1) * tile_len;
        if next < n {
            #[unroll]
            for s in 0..loads {
                staged[s] =
                    load_vector::<F, V>(scores, next + (unit + s * units) * width, n, nan_as);
            }
        }
        // The same for every unit of the row: the scores `lo..lo + slice_len` against the
        // cube's `first..first + lanes`.
        let lo = t * tile_len + part * slice_len;
        let from = part * slice;
        if lo + slice_len <= first {
            rank += count_slice::<V>(&shared, from, mine, i, lo, slice, unroll, BEFORE);
        } else if lo >= first + lanes {
            rank += count_slice::<V>(&shared, from, mine, i, lo, slice, unroll, AFTER);
        } else {
            rank += count_slice::<V>(&shared, from, mine, i, lo, slice, unroll, MIXED);
        }
        // Every row has counted the tile before it is overwritten.
        sync_cube();
    }

    let mut partial = SharedMemory::<u32>::new(comptime!(lanes * parts));
    partial[unit] = rank;
    sync_cube();
    if part == 0 && i < n {
        let mut total = 0u32;
        #[unroll]
        for p in 0..parts {
            total += partial[p * lanes + lane];
        }
        let total = usize::cast_from(total);
        if total < k {
            out[total] = I::cast_from(i);
        }
    }
}

/// The indices of the `k` highest of `scores` (`[n]`, f32/f16/bf16, any strides), in descending
/// order of score, ties by lower index, NaN as negative infinity; `[k]`, contiguous, in
/// `int_dtype`. `1 <= k <= n`. The radix select or [`rank_all`], as `method` says.
pub(crate) fn top_k<R: CubeRuntime>(
    scores: CubeTensor<R>,
    k: usize,
    int_dtype: DType,
    method: Method,
) -> CubeTensor<R> {
    let scores = into_contiguous(scores);
    let n = scores.meta.shape().num_elements();
    let out = empty_device_contiguous_dtype(
        scores.client.clone(),
        scores.device.clone(),
        Shape::new([k]),
        int_dtype,
    );
    let radix = match method {
        Method::Auto => radix::pays(n, k),
        Method::Counting => false,
        Method::RadixSelect => radix::fits(n),
    };
    if radix {
        radix::top_k(scores, &out, k, int_dtype);
    } else {
        rank_all(scores, &out, k, int_dtype);
    }
    out
}

/// [`top_k_kernel`] over all `n` scores (`[n]`, contiguous) into `out` (`[k]`, contiguous).
fn rank_all<R: CubeRuntime>(
    scores: CubeTensor<R>,
    out: &CubeTensor<R>,
    k: usize,
    int_dtype: DType,
) {
    let dtype = scores.dtype;
    let n = scores.meta.shape().num_elements();
    let cube_dim = CubeDim::new_2d(LANES as u32, PARTS as u32);
    // `ceil(n / LANES)` cubes, spread over the grid's dimensions when one does not hold them.
    let cube_count =
        calculate_cube_count_elemwise(&scores.client, n.div_ceil(LANES) * LANES * PARTS, cube_dim);
    let address = address_type(&[&scores, out]);
    let dtypes = [dtype.into(), int_dtype.into()];
    let client = scores.client.clone();
    count_launch();
    // SAFETY: scores are read below `n` only; the shared tile is indexed below `TILE_VECTORS`
    // (`unit + s * LANES * PARTS` for `s < TILE_VECTORS / (LANES * PARTS)`, and row `p`'s slice
    // `p * TILE_VECTORS / PARTS ..` of `TILE_VECTORS / PARTS`), the partial counts below
    // `LANES * PARTS`; the ranks of `0..n` are distinct and a unit writes `out[rank]` only for
    // `rank < k`, within `out`'s `k` elements.
    unsafe {
        top_k_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            address,
            VECTOR,
            scores.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            n,
            k,
            f32::NEG_INFINITY,
            LANES,
            PARTS,
            TILE_VECTORS,
            UNROLL,
            dtypes,
        )
    };
}

// The tile is shared by whole numbers of loads per unit and of unrolled steps per row.
const _: () = assert!(
    TILE_VECTORS.is_multiple_of(LANES * PARTS) && (TILE_VECTORS / PARTS).is_multiple_of(UNROLL)
);
// A cube's scores lie in one slice of a tile (so that one slice per cube is MIXED); lavapipe
// allows 32 KiB of shared memory: keep the tile and the counts within 16 KiB.
const _: () = assert!((TILE_VECTORS / PARTS * VECTOR).is_multiple_of(LANES));
const _: () = assert!(TILE_VECTORS * VECTOR * 4 + LANES * PARTS * 4 <= 16 * 1024);
