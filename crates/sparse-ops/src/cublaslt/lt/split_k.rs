//! Split-K candidates for the GEMMs whose output is too small to fill the GPU.
//!
//! LoRA's rank-32 products (`x A^T` over 4096 rows and 4096 inputs, `dA = dh^T x`, ...) have a
//! few dozen output tiles and a reduction of thousands: one tile per multiprocessor, a third of
//! the H200 busy, each reading its whole strip of the long operand. The plans' timing on the
//! H200 (`bench step`'s `gemm_plans`, docs/perf.md) put them at 1-2.5 TB/s of their minimal
//! traffic, 7-8 ms of a LLaMA3-8B step. cuBLASLt's heuristic proposed no split-K algorithm for
//! them; its algorithms can be configured to split the reduction over several tiles and reduce
//! the partial sums in f32 in the workspace, which fills the GPU. This module derives such
//! configurations; the plan times them beside the heuristic's own and keeps the fastest.
//!
//! Measured, the gain is small (see [`enabled`]): these products are bound by reading their long
//! operand once, which splitting does not change. So it is opt-in.

use cudarc::cublaslt::sys as lts;

use super::super::layout::Problem;

/// Reduction splits tried.
const SPLITS: [u32; 4] = [2, 4, 8, 16];

/// At most this many split-K configurations are timed per plan.
const MAX_VARIANTS: usize = 24;

/// Output tiles (of 128 x 128) under which a problem is worth splitting: twice the H200's 132
/// multiprocessors.
const FEW_TILES: u64 = 264;

/// Shortest reduction worth splitting.
const MIN_DEPTH: u64 = 1024;

/// Whether split-K configurations are tried: only with `SPARSELORA_GEMM_SPLIT_K=1`. On the
/// H200 they won the timing for most rank-32 products but by 5-15% only (these products are
/// bound by reading their 32 MiB operand, not by idle multiprocessors), 1.5 ms of a LLaMA3-8B
/// dense step's tuned GEMM time, within the run-to-run spread of the step (docs/perf.md).
pub(super) fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("SPARSELORA_GEMM_SPLIT_K").is_ok_and(|v| v == "1"))
}

/// Whether `problem` has so few output tiles for its reduction length that splitting the
/// reduction may pay: single products only (a batch fills the GPU with its matrices).
pub(super) fn worth_splitting(problem: &Problem) -> bool {
    let tiles = problem.rows.div_ceil(128) * problem.cols.div_ceil(128);
    problem.batch == 1 && tiles < FEW_TILES && problem.depth >= MIN_DEPTH
}

/// The matmul's descriptors, as the checks need them.
pub(super) struct Descriptors {
    pub handle: lts::cublasLtHandle_t,
    pub desc: lts::cublasLtMatmulDesc_t,
    pub first: lts::cublasLtMatrixLayout_t,
    pub second: lts::cublasLtMatrixLayout_t,
    pub d: lts::cublasLtMatrixLayout_t,
    /// The operands' element type.
    pub dtype: lts::cudaDataType,
    /// The output's.
    pub out_dtype: lts::cudaDataType,
    pub workspace_size: usize,
}

/// Split-K configurations for the problem of `descriptors`: first of the heuristic's
/// `candidates` that support it; when none does, of every algorithm cuBLASLt has for the types,
/// at each of its tile shapes. Each is validated by `cublasLtMatmulAlgoCheck` (fits the
/// workspace); the partial sums are reduced in f32 (`CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE`), so
/// the result is as precise as the unsplit product's. Ordered by how close cuBLASLt's wave
/// count is to one full wave, at most [`MAX_VARIANTS`].
///
/// # Safety
/// The descriptors must be live.
pub(super) unsafe fn variants(
    descriptors: &Descriptors,
    candidates: &[lts::cublasLtMatmulAlgo_t],
) -> Vec<lts::cublasLtMatmulAlgo_t> {
    let mut found: Vec<(f32, lts::cublasLtMatmulAlgo_t)> = Vec::new();
    for algo in candidates {
        if supports_split_k(algo) {
            for split in SPLITS {
                found.extend(split_config(descriptors, *algo, split));
            }
        }
    }
    if found.is_empty() {
        for id in algorithm_ids(descriptors) {
            let mut algo = std::mem::zeroed::<lts::cublasLtMatmulAlgo_t>();
            let init = lts::cublasLtMatmulAlgoInit(
                descriptors.handle,
                lts::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                lts::cudaDataType::CUDA_R_32F,
                descriptors.dtype,
                descriptors.dtype,
                descriptors.out_dtype,
                descriptors.out_dtype,
                id,
                &mut algo,
            );
            if init != lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS || !supports_split_k(&algo) {
                continue;
            }
            for tile in tile_ids(&algo) {
                let mut tiled = algo;
                if !set_config(
                    &mut tiled,
                    lts::cublasLtMatmulAlgoConfigAttributes_t::CUBLASLT_ALGO_CONFIG_TILE_ID,
                    tile,
                ) {
                    continue;
                }
                for split in [4, 8, 16] {
                    found.extend(split_config(descriptors, tiled, split));
                }
            }
        }
    }
    found.sort_by(|a, b| (a.0 - 1.0).abs().total_cmp(&(b.0 - 1.0).abs()));
    found.truncate(MAX_VARIANTS);
    found.into_iter().map(|(_, algo)| algo).collect()
}

/// `algo` reducing over `splits` slices, with its wave count, if cuBLASLt accepts it here.
unsafe fn split_config(
    descriptors: &Descriptors,
    mut algo: lts::cublasLtMatmulAlgo_t,
    splits: u32,
) -> Option<(f32, lts::cublasLtMatmulAlgo_t)> {
    use lts::cublasLtMatmulAlgoConfigAttributes_t as Config;
    let scheme = lts::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
    if !set_config(&mut algo, Config::CUBLASLT_ALGO_CONFIG_SPLITK_NUM, splits)
        || !set_config(
            &mut algo,
            Config::CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
            scheme,
        )
    {
        return None;
    }
    let mut result = std::mem::zeroed::<lts::cublasLtMatmulHeuristicResult_t>();
    let checked = lts::cublasLtMatmulAlgoCheck(
        descriptors.handle,
        descriptors.desc,
        descriptors.first,
        descriptors.second,
        descriptors.d,
        descriptors.d,
        &algo,
        &mut result,
    );
    (checked == lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS
        && result.state == lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS
        && result.workspaceSize <= descriptors.workspace_size)
        .then_some((result.wavesCount, algo))
}

/// Whether `algo` can split its reduction.
unsafe fn supports_split_k(algo: &lts::cublasLtMatmulAlgo_t) -> bool {
    let mut support: i32 = 0;
    let mut written = 0usize;
    let status = lts::cublasLtMatmulAlgoCapGetAttribute(
        algo,
        lts::cublasLtMatmulAlgoCapAttributes_t::CUBLASLT_ALGO_CAP_SPLITK_SUPPORT,
        (&mut support as *mut i32).cast(),
        std::mem::size_of::<i32>(),
        &mut written,
    );
    status == lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS && support != 0
}

/// The tile shapes `algo` offers (none when it cannot say).
unsafe fn tile_ids(algo: &lts::cublasLtMatmulAlgo_t) -> Vec<u32> {
    use lts::cublasLtMatmulAlgoCapAttributes_t as Cap;
    // A null buffer of size 0 asks for the size.
    let mut bytes = 0usize;
    let sized = lts::cublasLtMatmulAlgoCapGetAttribute(
        algo,
        Cap::CUBLASLT_ALGO_CAP_TILE_IDS,
        std::ptr::null_mut(),
        0,
        &mut bytes,
    );
    if sized != lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS || bytes == 0 {
        return Vec::new();
    }
    let mut ids = vec![0u32; bytes.div_ceil(std::mem::size_of::<u32>())];
    let mut written = 0usize;
    let status = lts::cublasLtMatmulAlgoCapGetAttribute(
        algo,
        Cap::CUBLASLT_ALGO_CAP_TILE_IDS,
        ids.as_mut_ptr().cast(),
        ids.len() * std::mem::size_of::<u32>(),
        &mut written,
    );
    if status != lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Vec::new();
    }
    ids.truncate(written / std::mem::size_of::<u32>());
    ids
}

/// The algorithm ids cuBLASLt has for bf16/f16/f32 products of the descriptors' type.
unsafe fn algorithm_ids(descriptors: &Descriptors) -> Vec<i32> {
    let mut ids = vec![0i32; 256];
    let mut count = 0i32;
    let status = lts::cublasLtMatmulAlgoGetIds(
        descriptors.handle,
        lts::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        lts::cudaDataType::CUDA_R_32F,
        descriptors.dtype,
        descriptors.dtype,
        descriptors.out_dtype,
        descriptors.out_dtype,
        ids.len() as i32,
        ids.as_mut_ptr(),
        &mut count,
    );
    if status != lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        return Vec::new();
    }
    ids.truncate(count.max(0) as usize);
    ids
}

/// Sets one `u32` configuration attribute of `algo`; whether cuBLASLt took it.
unsafe fn set_config(
    algo: &mut lts::cublasLtMatmulAlgo_t,
    attr: lts::cublasLtMatmulAlgoConfigAttributes_t,
    value: u32,
) -> bool {
    lts::cublasLtMatmulAlgoConfigSetAttribute(
        algo,
        attr,
        (&value as *const u32).cast(),
        std::mem::size_of::<u32>(),
    ) == lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cublaslt::layout::Operand;

    /// `C[m, n] = A[m, k] B[k, n]`, `batch` times, in cuBLASLt's terms.
    fn problem(m: u64, n: u64, k: u64, batch: u64) -> Problem {
        let operand = |rows: u64, cols: u64| Operand {
            rows,
            cols,
            ld: rows as i64,
            trans: false,
            batch_stride: (rows * cols) as i64,
        };
        Problem {
            first: operand(n, k),
            second: operand(k, m),
            rows: n,
            cols: m,
            depth: k,
            batch,
            out_ld: n,
            out_batch_stride: m * n,
        }
    }

    #[test]
    fn only_few_tiles_over_a_long_reduction_are_split() {
        // LoRA's rank-32 products over 4096 tokens: x A^T, dA = dh^T x.
        assert!(worth_splitting(&problem(4096, 32, 4096, 1)));
        assert!(worth_splitting(&problem(32, 4096, 4096, 1)));
        assert!(worth_splitting(&problem(1024, 32, 4096, 1)));
        // The q/k/v group's 96 columns still leave 32 x 1 tiles.
        assert!(worth_splitting(&problem(4096, 96, 4096, 1)));
        // B's product: a short reduction.
        assert!(!worth_splitting(&problem(4096, 4096, 32, 1)));
        // A projection: 32 x 32 tiles fill the GPU.
        assert!(!worth_splitting(&problem(4096, 4096, 4096, 1)));
        // Attention's batched products fill it with their matrices.
        assert!(!worth_splitting(&problem(1024, 128, 2048, 64)));
    }
}
