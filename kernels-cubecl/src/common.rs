//! What the kernels share: the float dtypes they take, launch geometry, vector sizes, and the
//! block reductions of the row kernels.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::{calculate_cube_count_elemwise, CubeCount, CubeDim};

/// Threads per cube of the row kernels, at most (the row is strided over them).
const MAX_ROW_BLOCK: usize = 256;

/// Threads per cube of the elementwise kernels.
const ELEMWISE_BLOCK: u32 = 256;

/// Kernel launches since the process started (see [`crate::fused_launches`]).
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// Counts one kernel launch.
pub(crate) fn count_launch() {
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
}

/// Kernel launches since the process started.
pub(crate) fn launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

/// The dtypes the kernels are written for (generic over cubecl's `Float`).
pub(crate) fn float_dtype(dtype: DType) -> bool {
    matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// The widest vector (in elements) that the runtime loads well for `dtype`, that divides every
/// length in `divides`, and at which every tensor in `tensors` starts aligned.
pub(crate) fn vector_size<R: CubeRuntime>(
    tensors: &[&CubeTensor<R>],
    dtype: DType,
    divides: &[usize],
) -> usize {
    let elem = dtype.size();
    let client = &tensors[0].client;
    client
        .io_optimized_vector_sizes(elem)
        .find(|&v| {
            divides.iter().all(|len| len % v == 0)
                && tensors
                    .iter()
                    .all(|t| t.handle.offset_start.unwrap_or(0) % (v * elem) as u64 == 0)
        })
        .unwrap_or(1)
}

/// The address width that indexes every tensor in `tensors`.
pub(crate) fn address_type<R: CubeRuntime>(tensors: &[&CubeTensor<R>]) -> AddressType {
    tensors
        .iter()
        .map(|t| t.required_address_type())
        .max()
        .unwrap_or_default()
}

/// Launch geometry of a row kernel: `block` threads striding over each row, `rows_per_cube` rows
/// per cube (one per `UNIT_POS_Y`; the row is `CUBE_POS * rows_per_cube + UNIT_POS_Y`, its units
/// `UNIT_POS_X`).
pub(crate) struct RowLaunch {
    /// Threads per row (a power of two; also the size of the reduction's shared memory).
    pub block: usize,
    /// Rows per cube: 1 with shared-memory reductions, [`PLANE_ROWS_PER_CUBE`] with plane ones.
    pub rows_per_cube: usize,
    /// Whether the cube is one plane (warp), so that [`row_max`] and [`row_sum`] reduce with
    /// plane operations instead of through shared memory.
    pub plane: bool,
    pub cube_dim: CubeDim,
    pub cube_count: CubeCount,
}

/// One cube per row for `rows` rows of `vectors` vectors each.
pub(crate) fn row_launch<R: CubeRuntime>(
    tensor: &CubeTensor<R>,
    rows: usize,
    vectors: usize,
) -> RowLaunch {
    let hardware = &tensor.client.properties().hardware;
    let cap = MAX_ROW_BLOCK
        .min(hardware.max_units_per_cube as usize)
        .min(hardware.max_cube_dim.0 as usize);
    // The largest power of two within the hardware's limit.
    let cap = 1usize << (usize::BITS - 1 - cap.max(1).leading_zeros());
    let block = vectors.next_power_of_two().clamp(32.min(cap), cap);
    let cube_dim = CubeDim::new_1d(block as u32);
    // `rows * block` units in cubes of `block`: exactly `rows` cubes, spread over the grid's
    // dimensions when there are more than one dimension holds; `CUBE_POS` numbers them.
    let cube_count = calculate_cube_count_elemwise(&tensor.client, rows * block, cube_dim);
    RowLaunch {
        block,
        rows_per_cube: 1,
        plane: false,
        cube_dim,
        cube_count,
    }
}

/// Rows (planes) per cube of [`plane_row_launch`]: a cube of one plane limits an SM to as many
/// planes as it may hold cubes (32 on Hopper, half its 64 resident warps), which left the
/// attention's softmax, a latency-bound kernel, at a fraction of the H200's bandwidth.
pub(crate) const PLANE_ROWS_PER_CUBE: usize = 8;

/// One plane (warp) per row, [`PLANE_ROWS_PER_CUBE`] rows per cube, where the runtime has plane
/// operations and a fixed plane size of 16 to [`MAX_ROW_BLOCK`] units (CUDA's 32); [`row_launch`]
/// elsewhere (lavapipe, whose
/// subgroups are narrower). For rows short enough that a cube's shared-memory reductions, with a
/// barrier per level, cost more than the row's loads: the attention's softmax rows (512 keys at
/// the paper's sequence length) ran at a quarter of the H200's bandwidth that way.
pub(crate) fn plane_row_launch<R: CubeRuntime>(
    tensor: &CubeTensor<R>,
    rows: usize,
    vectors: usize,
) -> RowLaunch {
    let properties = tensor.client.properties();
    let hardware = &properties.hardware;
    let size = hardware.plane_size_min as usize;
    let fixed = properties
        .features
        .plane
        .contains(cubecl::ir::features::Plane::Ops)
        && hardware.plane_size_min == hardware.plane_size_max
        && (16..=MAX_ROW_BLOCK).contains(&size)
        && size.is_power_of_two();
    if !fixed {
        return row_launch(tensor, rows, vectors);
    }
    let per_cube = PLANE_ROWS_PER_CUBE;
    let cube_dim = CubeDim::new_2d(size as u32, per_cube as u32);
    let cubes = rows.div_ceil(per_cube);
    RowLaunch {
        block: size,
        rows_per_cube: per_cube,
        plane: true,
        cube_dim,
        cube_count: calculate_cube_count_elemwise(
            &tensor.client,
            cubes * size * per_cube,
            cube_dim,
        ),
    }
}

/// Launch geometry of an elementwise kernel over `units` work items (`ABSOLUTE_POS`).
pub(crate) fn elementwise_launch<R: CubeRuntime>(
    tensor: &CubeTensor<R>,
    units: usize,
) -> (CubeDim, CubeCount) {
    let hardware = &tensor.client.properties().hardware;
    let block = ELEMWISE_BLOCK.min(hardware.max_units_per_cube);
    let cube_dim = CubeDim::new_1d(block);
    let cube_count = calculate_cube_count_elemwise(&tensor.client, units, cube_dim);
    (cube_dim, cube_count)
}

/// The sum of `value` over the cube's units, returned to every unit. `shared` holds one f32 per
/// unit (the cube is one-dimensional, its size a power of two).
#[cube]
pub(crate) fn block_sum(value: f32, shared: &mut SharedMemory<f32>) -> f32 {
    let unit = UNIT_POS as usize;
    shared[unit] = value;
    sync_cube();
    let mut stride = (CUBE_DIM / 2) as usize;
    while stride > 0 {
        if unit < stride {
            shared[unit] += shared[unit + stride];
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    // Every unit has read the total before the memory is reused.
    sync_cube();
    total
}

/// The maximum of `value` over the cube's units, returned to every unit (as [`block_sum`]).
#[cube]
pub(crate) fn block_max(value: f32, shared: &mut SharedMemory<f32>) -> f32 {
    let unit = UNIT_POS as usize;
    shared[unit] = value;
    sync_cube();
    let mut stride = (CUBE_DIM / 2) as usize;
    while stride > 0 {
        if unit < stride {
            shared[unit] = max(shared[unit], shared[unit + stride]);
        }
        sync_cube();
        stride /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// The maximum of `value` over the row's cube: a plane reduction when the cube is one plane
/// ([`plane_row_launch`]), else [`block_max`].
#[cube]
pub(crate) fn row_max(value: f32, shared: &mut SharedMemory<f32>, #[comptime] plane: bool) -> f32 {
    if plane {
        plane_max(value)
    } else {
        block_max(value, shared)
    }
}

/// The sum of `value` over the row's cube, as [`row_max`].
#[cube]
pub(crate) fn row_sum(value: f32, shared: &mut SharedMemory<f32>, #[comptime] plane: bool) -> f32 {
    if plane {
        plane_sum(value)
    } else {
        block_sum(value, shared)
    }
}

/// The largest of a vector's lanes.
#[cube]
pub(crate) fn lane_max<N: Size>(value: Vector<f32, N>) -> f32 {
    let mut largest = value[0];
    #[unroll]
    for lane in 1..N::value() {
        largest = max(largest, value[lane]);
    }
    largest
}

/// The sum of a vector's lanes.
#[cube]
pub(crate) fn lane_sum<N: Size>(value: Vector<f32, N>) -> f32 {
    let mut total = 0.0f32;
    #[unroll]
    for lane in 0..N::value() {
        total += value[lane];
    }
    total
}
