//! Top-k by radix select, in one kernel: every cube finds the `k`-th score, keeps the `k` scores
//! at or above it, and ranks its share of them among the kept ones.
//!
//! Every score becomes an order-preserving `u32` key (see [`order_key`]), and every score the pair
//! (key, `!index`): pairs are distinct, and the higher pair is the one that comes first in the
//! order (higher score, or equal score at the lower index). So the top `k` are the pairs at or
//! above the `k`-th highest pair, and the kernel never compares floats.
//!
//! Each cube of [`UNITS`] units loads all `n` keys once, `n / UNITS` a unit, into a local array
//! (L1). It finds the `k`-th pair [`DIGIT_BITS`] bits at a time, highest first: each pass counts
//! the 256 digits of the pairs that share the bits found so far (a histogram in shared memory,
//! integer atomics) and keeps the bin in which the `k`-th pair falls, until that bin holds just
//! the wanted pairs or at most [`FEW`] (usually after two passes; the index's digits count only
//! when equal keys straddle the `k`-th place). Those few are ranked among themselves in shared
//! memory, which gives the `k`-th pair itself. One more scan marks each unit's kept pairs (bit
//! masks), and a prefix sum of the units' counts puts them in one order, the same in every cube:
//! the first [`TILE`] in shared memory, the rest in the cube's part of a scratch buffer.
//!
//! Cube `c` then ranks the kept pairs `c * LANES ..` of that order by counting the kept pairs
//! above each (`k` comparisons, split over [`PARTS`] rows of units, tile by tile) and writes its
//! index at its rank. Every cube repeats the select, so the kernel needs no grid-wide
//! synchronisation: its `ceil(k / LANES)` cubes run side by side, and the select costs the time
//! of one. That time is the units' chain of dependent instructions (8 warps a cube hide little
//! latency): on an H200, ~11 us for 14336 scores and k = 143, ~12-13 us for k = 430, ~16-19 us
//! for k = 1434 (Nsight Compute). History: a select that re-read the scores from global memory in
//! each pass, then a second kernel to rank, took ~30 us; keys in registers with unrolled scans,
//! ~16 us, the warps stalled on instruction fetches of the unrolled code.

use burn::tensor::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch, vector_size};

/// Units per cube; also the number of bins (one unit per bin).
const UNITS: usize = 256;
/// Bits of the pair found per pass.
const DIGIT_BITS: u32 = 8;
/// Bins of a pass's histogram.
const BINS: usize = 1 << DIGIT_BITS;
/// A digit's bits, at the bottom.
const DIGIT_MASK: u32 = (BINS - 1) as u32;
/// Copies of the histogram: unit `u` counts into copy `u % COPIES`, so that equal digits in one
/// warp (scores close together share their high digits) contend for `32 / COPIES` counters at
/// most, not for one.
const COPIES: usize = 8;
/// Counters between two copies of a bin: one more than the bins, so that the copies of a bin lie
/// in different banks of shared memory.
const COPY_STRIDE: usize = BINS + 1;
/// Bins (or units) per group of the two-level sums over 256 counts.
const GROUP: usize = 16;
/// Groups of [`GROUP`].
const GROUPS: usize = BINS / GROUP;
/// Pairs in a bin few enough to be ranked among themselves (one per unit).
const FEW: u32 = UNITS as u32;
/// Vectors of scores loaded together.
const LOAD_BATCH: usize = 8;
/// Keys per unit at most: `n <= UNITS * MAX_PER_UNIT` (512 bytes of local array a unit).
const MAX_PER_UNIT: usize = 128;

/// Kept pairs ranked per cube (one per lane of a row of units).
const LANES: usize = 32;
/// Rows of units, each counting over one slice of every tile.
const PARTS: usize = UNITS / LANES;
/// Kept pairs per tile staged in shared memory (keys and indices: 4 KiB).
const TILE: usize = 512;

/// The key of a score: `u32`s in the order of the scores in f32, NaN as `-inf`, `-0.0` as `0.0`.
/// Positive floats order as their bits do, negative ones in reverse: so set the sign bit of a
/// positive float and flip every bit of a negative one. The NaN and zero cases test the bits, not
/// the float, so that no float rule of the target (or its optimiser) can bend them.
#[cube]
fn order_key<F: Float>(score: F) -> u32 {
    let bits = u32::reinterpret(f32::cast_from(score));
    // All ones for a negative float (the arithmetic shift copies the sign), else the sign bit.
    let flip = u32::reinterpret(i32::reinterpret(bits) >> 31i32) | 0x8000_0000u32;
    let magnitude = bits & 0x7fff_ffffu32;
    // `-inf` is `0xff80_0000`, flipped.
    let key = select(magnitude > 0x7f80_0000u32, 0x007f_ffffu32, bits ^ flip);
    select(magnitude == 0u32, 0x8000_0000u32, key)
}

/// The sum of `counts[b]` over the 256 entries `b` after `at` (`above`) or before it: the
/// groups' sums from `group_sums`, then `at`'s own group entry by entry. Independent loads, no
/// loop-carried latency.
#[cube]
fn sum_beside(
    counts: &SharedMemory<u32>,
    group_sums: &SharedMemory<u32>,
    at: usize,
    #[comptime] above: bool,
) -> u32 {
    let group = at / GROUP;
    let mut sum = 0u32;
    #[unroll]
    for g in 0..GROUPS {
        let counted = if above { g > group } else { g < group };
        sum += select(counted, group_sums[g], 0u32);
    }
    let base = group * GROUP;
    #[unroll]
    for b in 0..GROUP {
        let counted = if above { base + b > at } else { base + b < at };
        sum += select(counted, counts[base + b], 0u32);
    }
    sum
}

/// `group_sums[g]` = the sum of `counts[g * GROUP ..][..GROUP]`, by the first [`GROUPS`] units.
/// Between barriers: `counts` written before, `group_sums` read after.
#[cube]
fn sum_groups(counts: &SharedMemory<u32>, group_sums: &mut SharedMemory<u32>, unit: usize) {
    if unit < GROUPS {
        let mut sum = 0u32;
        #[unroll]
        for b in 0..GROUP {
            sum += counts[unit * GROUP + b];
        }
        group_sums[unit] = sum;
    }
}

/// The index of the unit's key `t`: the `t % width`-th score of its vector `t / width`.
#[cube]
fn index_at(unit: usize, t: usize, #[comptime] width: usize) -> usize {
    (unit + t / width * UNITS) * width + t % width
}

/// The unit's key `t`.
#[cube]
fn key_at<V: Size>(keys: &Array<Vector<u32, V>>, t: usize, #[comptime] width: usize) -> u32 {
    let stored = keys[t / width];
    let mut key = 0u32;
    #[unroll]
    for c in 0..width {
        key = select(t % width == c, stored[c], key);
    }
    key
}

/// The indices of the `k` highest pairs of `scores` (`[n]`, contiguous, in vectors of `V`) at
/// their ranks in `out` (`[k]`). `scratch`: `[cubes * 2k]`, cube `c`'s kept pairs at `c * 2k ..`
/// (keys, then indices; the slots past the first [`TILE`]); `index_digits`: [`DIGIT_BITS`]-bit
/// digits of `n - 1` (at least 1); `n <= UNITS * per_unit`, `per_unit` a multiple of `V`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn radix_top_k_kernel<F: Float, I: Int, V: Size>(
    scores: &Tensor<Vector<F, V>>,
    scratch: &mut Tensor<u32>,
    out: &mut Tensor<I>,
    n: usize,
    k: usize,
    index_digits: u32,
    #[comptime] per_unit: usize,
    #[define(F, I)] _dtypes: [StorageType; 2],
) {
    let unit = UNIT_POS as usize;
    let hist_len = comptime!(COPIES * COPY_STRIDE);
    // The histogram's copies, then the count of the last bin's pairs.
    let hist = SharedMemory::<Atomic<u32>>::new(comptime!(COPIES * COPY_STRIDE + 1));
    let mut counts = SharedMemory::<u32>::new(BINS);
    let mut group_sums = SharedMemory::<u32>::new(GROUPS);
    // The pass's bin, the pairs in higher bins, the pairs in the bin; or the `k`-th pair.
    let mut picked = SharedMemory::<u32>::new(3usize);
    // The kept pairs by tiles; first the few pairs of the last bin.
    let mut tile_keys = SharedMemory::<u32>::new(TILE);
    let mut tile_indices = SharedMemory::<u32>::new(TILE);

    // Unit `u` holds the keys of the vectors `u + v * UNITS` of `width` scores (coalesced
    // loads). The scans over them are loops, not unrolled: unrolled, the kernel's code ran to
    // thousands of instructions, each run once per warp, and the warps waited on instruction
    // fetches more than on anything else (Nsight Compute, H200). So the keys live in a local
    // array (in L1), not in registers.
    let width = V::value();
    let mut keys = Array::<Vector<u32, V>>::new(comptime!(per_unit / width));
    // A bound the compiler cannot see, so that it does not unroll the scans after all.
    let vectors = (n / width).div_ceil(UNITS);
    // The loads in batches of `LOAD_BATCH` vectors, all in flight together: one at a time, each
    // waited for its round trip to L2.
    let mut batch = Array::<Vector<F, V>>::new(LOAD_BATCH);
    let mut first = 0usize;
    while first < vectors {
        #[unroll]
        for b in 0..LOAD_BATCH {
            let at = unit + (first + b) * UNITS;
            // Past `n`: padding, key 0 (from 0.0, overwritten below).
            if at * width < n {
                batch[b] = scores[at];
            }
        }
        #[unroll]
        for b in 0..LOAD_BATCH {
            let at = unit + (first + b) * UNITS;
            if first + b < vectors {
                let mut stored = Vector::<u32, V>::new(0u32);
                if at * width < n {
                    let vector = batch[b];
                    #[unroll]
                    for c in 0..width {
                        stored[c] = order_key::<F>(vector[c]);
                    }
                }
                keys[first + b] = stored;
            }
        }
        first += LOAD_BATCH;
    }
    let mut at = unit;
    while at <= hist_len {
        hist[at].store(0u32);
        at += UNITS;
    }
    sync_cube();

    let copy = (unit % COPIES) * COPY_STRIDE;
    // The pair's bits found so far: the key's high bits, then `!index`'s. Every index is below
    // `2^(DIGIT_BITS * index_digits)`, so `!index`'s bits above those digits are all set: the
    // low prefix starts with them found.
    let mut key_mask = 0u32;
    let mut key_prefix = 0u32;
    let index_bits = index_digits * DIGIT_BITS;
    let mut low_mask = select(
        index_bits < 32u32,
        !((1u32 << index_bits.min(31u32)) - 1u32),
        0u32,
    );
    let mut low_prefix = low_mask;
    // How many of the pairs in the prefix are still wanted, and how many there are.
    let mut wanted = u32::cast_from(k);
    let mut in_bin = u32::cast_from(n);
    let passes = 4u32 + index_digits;
    let mut pass = 0u32;
    // Passes until the bin holds just the wanted pairs, or few enough to rank among themselves.
    // (The bound on the passes only guards against a hang: the last one leaves a single pair.)
    while in_bin != wanted && in_bin > FEW && pass < passes {
        let shift = select(
            pass < 4u32,
            (3u32 - pass.min(3u32)) * DIGIT_BITS,
            (passes - 1u32 - pass) * DIGIT_BITS,
        );
        // Padding (key 0) counts in the first pass's bin 0, where it can make the pass look
        // unsettled, never settled: the bin's real pairs number at least `wanted`.
        if pass == 0u32 {
            // Every pair shares the empty prefix: no test, no branch.
            for v in 0..vectors {
                let stored = keys[v];
                #[unroll]
                for c in 0..width {
                    let digit = stored[c] >> (32u32 - DIGIT_BITS);
                    hist[copy + usize::cast_from(digit)].fetch_add(1u32);
                }
            }
        } else if pass < 4u32 {
            for v in 0..vectors {
                let stored = keys[v];
                #[unroll]
                for c in 0..width {
                    let key = stored[c];
                    if (key & key_mask) == key_prefix {
                        let digit = (key >> shift) & DIGIT_MASK;
                        hist[copy + usize::cast_from(digit)].fetch_add(1u32);
                    }
                }
            }
        } else {
            for v in 0..vectors {
                let stored = keys[v];
                let first = (unit + v * UNITS) * width;
                #[unroll]
                for c in 0..width {
                    let low = !u32::cast_from(first + c);
                    if stored[c] == key_prefix && (low & low_mask) == low_prefix {
                        let digit = (low >> shift) & DIGIT_MASK;
                        hist[copy + usize::cast_from(digit)].fetch_add(1u32);
                    }
                }
            }
        }
        sync_cube();

        // Unit `b` owns bin `b`: it sums the copies and clears them for the next pass.
        let mut count = 0u32;
        #[unroll]
        for c in 0..COPIES {
            count += hist[c * COPY_STRIDE + unit].swap(0u32);
        }
        counts[unit] = count;
        sync_cube();
        sum_groups(&counts, &mut group_sums, unit);
        sync_cube();
        let above = sum_beside(&counts, &group_sums, unit, true);
        // Exactly one bin holds the `wanted`-th pair: the prefix holds at least `wanted`.
        if above < wanted && wanted <= above + count {
            picked[0] = u32::cast_from(unit);
            picked[1] = above;
            picked[2] = count;
        }
        sync_cube();
        let bin = picked[0];
        wanted -= picked[1];
        in_bin = picked[2];
        if pass < 4u32 {
            key_mask |= DIGIT_MASK << shift;
            key_prefix |= bin << shift;
        } else {
            low_mask |= DIGIT_MASK << shift;
            low_prefix |= bin << shift;
        }
        pass += 1u32;
        // `picked`, `counts` and `group_sums` are written again only after two barriers.
    }

    // One scan sorts the unit's pairs into bit masks (bit `t` for key `t`): above the bin, and
    // in it. The prefixes' bits below their masks are 0 and `!index`'s above the index digits
    // all set, so the bin's highest pair is the prefixes with every bit below the masks set.
    // Padding (past `n`) is in no bin; its key 0 is above none.
    let key_top = key_prefix | !key_mask;
    let low_top = low_prefix | !low_mask;
    let words = comptime!(per_unit.div_ceil(32));
    let mut kept_bits = Array::<u32>::new(words);
    let mut bin_bits = Array::<u32>::new(words);
    #[unroll]
    for w in 0..words {
        kept_bits[w] = 0u32;
        bin_bits[w] = 0u32;
    }
    // The index digits are looked at only when equal keys straddle the `k`-th place; without
    // them the tests are on keys alone.
    let keys_only = pass <= 4u32;
    for v in 0..vectors {
        let stored = keys[v];
        let first = (unit + v * UNITS) * width;
        let mut above_flags = 0u32;
        let mut bin_flags = 0u32;
        if keys_only {
            #[unroll]
            for c in 0..width {
                let key = stored[c];
                above_flags |= select(key > key_top, 1u32 << c as u32, 0u32);
                bin_flags |= select((key & key_mask) == key_prefix, 1u32 << c as u32, 0u32);
            }
        } else {
            #[unroll]
            for c in 0..width {
                let key = stored[c];
                let low = !u32::cast_from(first + c);
                let above = key > key_prefix || (key == key_prefix && low > low_top);
                let in_prefix = key == key_prefix && (low & low_mask) == low_prefix;
                above_flags |= select(above, 1u32 << c as u32, 0u32);
                bin_flags |= select(in_prefix, 1u32 << c as u32, 0u32);
            }
        }
        // `n` is a whole number of vectors: a vector past it is all padding.
        bin_flags = select(first < n, bin_flags, 0u32);
        let word = v * width / 32;
        let bit = u32::cast_from(v * width % 32);
        kept_bits[word] |= above_flags << bit;
        bin_bits[word] |= bin_flags << bit;
    }

    if in_bin == wanted {
        // The whole bin is kept.
        #[unroll]
        for w in 0..words {
            kept_bits[w] |= bin_bits[w];
        }
    } else {
        // The bin's few pairs in shared memory, in any order, each ranked among them: the one
        // with `wanted - 1` above it is the last kept.
        for w in 0..words {
            let mut bits = bin_bits[w];
            while bits != 0u32 {
                let t = w * 32 + usize::cast_from(bits.trailing_zeros());
                bits &= bits - 1u32;
                let slot = usize::cast_from(hist[hist_len].fetch_add(1u32));
                tile_keys[slot] = key_at(&keys, t, width);
                tile_indices[slot] = !u32::cast_from(index_at(unit, t, width));
            }
        }
        sync_cube();
        let few = usize::cast_from(hist[hist_len].load());
        if unit < few {
            let key = tile_keys[unit];
            let low = tile_indices[unit];
            let mut above = 0u32;
            for q in 0..few {
                let other = tile_keys[q];
                let higher = other > key || (other == key && tile_indices[q] > low);
                above += select(higher, 1u32, 0u32);
            }
            if above + 1u32 == wanted {
                picked[0] = key;
                picked[1] = low;
            }
        }
        sync_cube();
        let last_key = picked[0];
        let last_low = picked[1];
        for w in 0..words {
            let mut bits = bin_bits[w];
            let mut kept = kept_bits[w];
            while bits != 0u32 {
                let b = bits.trailing_zeros();
                bits &= bits - 1u32;
                let t = w * 32 + usize::cast_from(b);
                let key = key_at(&keys, t, width);
                let low = !u32::cast_from(index_at(unit, t, width));
                if key > last_key || (key == last_key && low >= last_low) {
                    kept |= 1u32 << b;
                }
            }
            kept_bits[w] = kept;
        }
    }

    let mut kept = 0u32;
    #[unroll]
    for w in 0..words {
        kept += kept_bits[w].count_ones();
    }
    counts[unit] = kept;
    sync_cube();
    sum_groups(&counts, &mut group_sums, unit);
    sync_cube();
    // The first tile of kept pairs stays in shared memory (all of them when `k <= TILE`); the
    // rest go to the cube's part of `scratch`.
    let region = CUBE_POS * 2 * k;
    let mut slot = usize::cast_from(sum_beside(&counts, &group_sums, unit, false));
    for w in 0..words {
        let mut bits = kept_bits[w];
        while bits != 0u32 {
            let t = w * 32 + usize::cast_from(bits.trailing_zeros());
            bits &= bits - 1u32;
            let key = key_at(&keys, t, width);
            let j = u32::cast_from(index_at(unit, t, width));
            if slot < TILE {
                tile_keys[slot] = key;
                tile_indices[slot] = j;
            } else {
                scratch[region + slot] = key;
                scratch[region + k + slot] = j;
            }
            slot += 1;
        }
    }
    // The cube's kept pairs are written (and `counts` read) before anyone reads them.
    sync_storage();

    // Unit `(lane, part)` counts, for the cube's `lane`-th pair, the kept pairs above it among
    // the `part`-th slice of each tile.
    let lane = unit % LANES;
    let part = unit / LANES;
    let target = CUBE_POS * LANES + lane;
    let mut my_key = 0u32;
    let mut my_index = 0xffff_ffffu32;
    if target < k {
        if target < TILE {
            my_key = tile_keys[target];
            my_index = tile_indices[target];
        } else {
            my_key = scratch[region + target];
            my_index = scratch[region + k + target];
        }
    }
    let slice = comptime!(TILE / PARTS);
    let from = part * slice;
    let mut rank = 0u32;
    let mut start = 0usize;
    while start < k {
        // The row's slice, cut at the tile's last kept pair (a bound the compiler cannot see,
        // which keeps the loop a loop).
        let end = (from + slice).min(k - start);
        if start > 0 {
            #[unroll]
            for s in 0..TILE / UNITS {
                let at = unit + s * UNITS;
                let c = start + at;
                if c < k {
                    tile_keys[at] = scratch[region + c];
                    tile_indices[at] = scratch[region + k + c];
                }
            }
            sync_cube();
        }
        for q in from..end {
            let key = tile_keys[q];
            let above = key > my_key || (key == my_key && tile_indices[q] < my_index);
            rank += select(above, 1u32, 0u32);
        }
        // Every row has counted the tile before it is overwritten.
        sync_cube();
        start += TILE;
    }
    counts[unit] = rank;
    sync_cube();
    if part == 0 && target < k {
        let mut total = 0u32;
        #[unroll]
        for p in 0..PARTS {
            total += counts[p * LANES + lane];
        }
        out[usize::cast_from(total)] = I::cast_from(my_index);
    }
}

/// Whether the radix select takes `n` scores: each unit holds `n / UNITS` keys.
pub(crate) fn fits(n: usize) -> bool {
    n <= UNITS * MAX_PER_UNIT
}

/// Whether the radix select beats ranking all `n` scores by counting, by the rule of
/// [`Method::Auto`](super::Method::Auto).
pub(crate) fn pays(n: usize, k: usize) -> bool {
    fits(n) && n >= MIN_SCORES && k * MAX_KEPT_FRACTION <= n
}

/// Scores below which ranking all of them by counting is the faster.
const MIN_SCORES: usize = 6144;
/// Kept scores at most `n / MAX_KEPT_FRACTION` for the radix select.
const MAX_KEPT_FRACTION: usize = 8;

/// The indices of the `k` highest of `scores` (`[n]`, contiguous, f32/f16/bf16), in descending
/// order of score, ties by lower index, NaN as negative infinity, into `out` (`[k]`, contiguous,
/// `int_dtype`). `1 <= k <= n`, and `n` [fits](fits).
pub(crate) fn top_k<R: CubeRuntime>(
    scores: CubeTensor<R>,
    out: &CubeTensor<R>,
    k: usize,
    int_dtype: DType,
) {
    let dtype = scores.dtype;
    let n = scores.meta.shape().num_elements();
    assert!(fits(n), "radix top_k over {n} scores");
    let client = scores.client.clone();
    let cubes = k.div_ceil(LANES);
    let scratch = empty_device_contiguous_dtype(
        client.clone(),
        scores.device.clone(),
        Shape::new([cubes * 2 * k]),
        DType::U32,
    );
    let vector = vector_size(&[&scores], dtype, &[n]);
    let per_unit = n.div_ceil(UNITS).next_power_of_two().max(4).max(vector);
    let largest = (n - 1) as u32;
    let index_digits = (u32::BITS - largest.leading_zeros())
        .div_ceil(DIGIT_BITS)
        .max(1);
    let address = address_type(&[&scores, &scratch, out]);
    count_launch();
    // SAFETY: scores are read below `n`; the histogram below `COPIES * COPY_STRIDE` (`copy +
    // digit` with `digit < BINS`, `c * COPY_STRIDE + unit` with `unit < UNITS = BINS`), the
    // counts below `BINS = UNITS`, the group sums below `GROUPS`, the tiles below `TILE`. Exactly
    // `k` pairs are kept, so cube `c` writes `scratch` within its `c * 2k .. (c + 1) * 2k`; the
    // kept pairs are distinct, so their ranks are `0..k`, each written once, by one cube.
    unsafe {
        radix_top_k_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(cubes as u32, 1, 1),
            CubeDim::new_1d(UNITS as u32),
            address,
            vector,
            scores.into_tensor_arg(),
            scratch.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            n,
            k,
            index_digits,
            per_unit,
            [dtype.into(), int_dtype.into()],
        )
    };
}

// One unit per bin; the groups and the tiles split evenly.
const _: () = assert!(UNITS == BINS && BINS.is_multiple_of(GROUP) && UNITS.is_multiple_of(LANES));
const _: () = assert!(TILE.is_multiple_of(UNITS) && TILE.is_multiple_of(PARTS));
// Shared memory within 16 KiB per cube (lavapipe allows 32).
const _: () = assert!(FEW as usize <= TILE);
const _: () = assert!((COPIES * COPY_STRIDE + 1 + BINS + GROUPS + 3 + 2 * TILE) * 4 <= 16 * 1024);
