//! The cuBLASLt state of each GPU: library handle, stream, workspace and a cache of prepared
//! problems, and the raw launch on device addresses. All `unsafe` FFI of the crate is in this
//! module (and its `split_k`).
//!
//! Everything runs in the device's primary context, which cubecl uses too, so the addresses
//! cubecl hands out are valid here. GEMMs run on a stream of our own; `tensor.rs` orders them
//! against cubecl's stream.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::DType;
use cudarc::cublaslt::{result as lt, sys as lts};
use cudarc::driver::{result as drv, sys as drvs};

use super::error::GemmError;
use super::layout::{alignment, Operand, Problem};

mod split_k;

/// cuBLASLt's recommended workspace: 32 MiB on Hopper and newer, 4 MiB before.
const WORKSPACE_HOPPER: usize = 32 << 20;
const WORKSPACE_OLDER: usize = 4 << 20;

/// The functions we call, checked once so that an incomplete library is an error, not a panic.
const SYMBOLS: [&str; 18] = [
    "cublasLtCreate",
    "cublasLtGetVersion",
    "cublasLtMatmul",
    "cublasLtMatmulAlgoCapGetAttribute",
    "cublasLtMatmulAlgoCheck",
    "cublasLtMatmulAlgoConfigSetAttribute",
    "cublasLtMatmulAlgoGetHeuristic",
    "cublasLtMatmulAlgoGetIds",
    "cublasLtMatmulAlgoInit",
    "cublasLtMatmulDescCreate",
    "cublasLtMatmulDescDestroy",
    "cublasLtMatmulDescSetAttribute",
    "cublasLtMatmulPreferenceCreate",
    "cublasLtMatmulPreferenceDestroy",
    "cublasLtMatmulPreferenceSetAttribute",
    "cublasLtMatrixLayoutCreate",
    "cublasLtMatrixLayoutDestroy",
    "cublasLtMatrixLayoutSetAttribute",
];

/// Per device ordinal: the ready state, or why it could not be made (not retried).
static DEVICES: Mutex<Vec<Option<Result<DeviceGemm, GemmError>>>> = Mutex::new(Vec::new());

/// Runs `f` with device `ordinal`'s cuBLASLt state, creating it on first use.
pub(crate) fn with_device<T>(
    ordinal: usize,
    f: impl FnOnce(&mut DeviceGemm) -> Result<T, GemmError>,
) -> Result<T, GemmError> {
    let mut devices = DEVICES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if devices.len() <= ordinal {
        devices.resize_with(ordinal + 1, || None);
    }
    let slot = devices[ordinal].get_or_insert_with(|| DeviceGemm::new(ordinal));
    let gemm = slot.as_mut().map_err(|e| e.clone())?;
    gemm.make_current()?;
    f(gemm)
}

/// The device's name and the loaded cuBLASLt's version number (e.g. 130000).
pub(crate) fn device_info(ordinal: usize) -> Result<(String, usize), GemmError> {
    with_device(ordinal, |gemm| {
        let name = drv::device::get_name(gemm.device).map_err(driver("cuDeviceGetName"))?;
        // SAFETY: the library is loaded and has the symbol (checked in `DeviceGemm::new`).
        Ok((name, unsafe { lts::cublasLtGetVersion() }))
    })
}

/// Bytes of device `ordinal`'s memory in use (by every process; on a GPU of its own, this
/// process's CUDA context, libraries and cubecl's memory pools).
pub(crate) fn memory_in_use(ordinal: usize) -> Result<u64, GemmError> {
    memory_info(ordinal).map(|(used, _)| used)
}

/// `(bytes in use, bytes in total)` of device `ordinal`'s memory, as `cuMemGetInfo` reports.
pub(crate) fn memory_info(ordinal: usize) -> Result<(u64, u64), GemmError> {
    with_device(ordinal, |_| {
        let (free, total) = drv::mem_get_info().map_err(driver("cuMemGetInfo"))?;
        Ok((total.saturating_sub(free) as u64, total as u64))
    })
}

/// Fills `bytes` at `ptr` with NaNs of `dtype`, on `stream`: what a GEMM that failed where its
/// error cannot be returned (cubecl's device thread) leaves in its output, so that the failure
/// shows up as a non-finite loss instead of silently wrong numbers.
///
/// # Safety
/// `ptr..ptr + bytes` must be device memory nothing else uses meanwhile.
pub(crate) unsafe fn fill_nan(ptr: u64, bytes: usize, dtype: DType, stream: drvs::CUstream) {
    let _ = match dtype {
        DType::F32 => drvs::cuMemsetD32Async(ptr, 0x7fc0_0000, bytes / 4, stream),
        DType::F16 => drvs::cuMemsetD16Async(ptr, 0x7e00, bytes / 2, stream),
        _ => drvs::cuMemsetD16Async(ptr, 0x7fc0, bytes / 2, stream),
    };
}

/// Whether a product of `dtype` operands may be written in `out_dtype`: theirs, or f32 (what
/// cuBLASLt takes with f32 accumulation).
pub(crate) fn check_output_dtype(dtype: DType, out_dtype: DType) -> Result<(), GemmError> {
    if out_dtype == dtype || out_dtype == DType::F32 {
        Ok(())
    } else {
        Err(GemmError::DtypeMismatch {
            lhs: dtype,
            rhs: out_dtype,
        })
    }
}

/// cuBLASLt element type of a burn dtype.
pub(crate) fn data_type(dtype: DType) -> Result<lts::cudaDataType, GemmError> {
    match dtype {
        DType::F32 => Ok(lts::cudaDataType::CUDA_R_32F),
        DType::F16 => Ok(lts::cudaDataType::CUDA_R_16F),
        DType::BF16 => Ok(lts::cudaDataType::CUDA_R_16BF),
        other => Err(GemmError::Dtype(other)),
    }
}

/// `cuProfilerStart` or `cuProfilerStop` in the current context.
pub(crate) fn profiler_collect(on: bool) -> Result<(), GemmError> {
    if on {
        cudarc::driver::profiler_start().map_err(driver("cuProfilerStart"))
    } else {
        cudarc::driver::profiler_stop().map_err(driver("cuProfilerStop"))
    }
}

fn driver(call: &'static str) -> impl Fn(drv::DriverError) -> GemmError {
    move |e| GemmError::Driver {
        call,
        message: e.to_string(),
    }
}

fn cublas(call: &'static str) -> impl Fn(lt::CublasError) -> GemmError {
    move |e| GemmError::Cublas {
        call,
        status: format!("{:?}", e.0),
    }
}

/// What identifies a prepared problem: element types, shapes, layouts and operand alignments.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct PlanKey {
    /// The operands' element type.
    dtype: u32,
    /// The output's (and the addend's): the operands', or f32 for half operands.
    out_dtype: u32,
    problem: Problem,
    alignments: [u32; 3],
}

/// Device addresses of one GEMM: `d = alpha op(first) op(second) + beta c` (see [`Problem`]).
/// `c` has `d`'s layout; it is `d` itself for a plain or an in-place accumulating product, and
/// another buffer when the product is added onto a tensor that must survive (a residual stream).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pointers {
    pub first: u64,
    pub second: u64,
    pub c: u64,
    pub d: u64,
}

impl Pointers {
    /// The product written to `d` (and, with `beta != 0`, added onto `d`'s contents).
    pub fn in_place(first: u64, second: u64, d: u64) -> Self {
        Pointers {
            first,
            second,
            c: d,
            d,
        }
    }

    /// The alignments a plan is made for (`[first, second, d]`): `d`'s slot takes the smaller
    /// of `c`'s and `d`'s, which share one layout.
    pub fn alignments(&self) -> [u32; 3] {
        [
            alignment(self.first),
            alignment(self.second),
            alignment(self.c).min(alignment(self.d)),
        ]
    }
}

/// What a launch computes around the product: `D = alpha op(first) op(second) + beta C`.
/// `beta = 1` accumulates into the output's current contents (LoRA's update added onto the base
/// projection's output, one input gradient onto another) instead of writing a new tensor that an
/// element-wise add would then read again.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Scaling {
    pub alpha: f32,
    pub beta: f32,
}

impl Scaling {
    /// The plain product, `D = op(first) op(second)`.
    pub const PRODUCT: Scaling = Scaling {
        alpha: 1.0,
        beta: 0.0,
    };
}

/// One GPU's cuBLASLt state.
pub(crate) struct DeviceGemm {
    device: drvs::CUdevice,
    context: drvs::CUcontext,
    stream: drvs::CUstream,
    handle: lts::cublasLtHandle_t,
    workspace: drvs::CUdeviceptr,
    workspace_size: usize,
    plans: HashMap<PlanKey, Arc<Plan>>,
    /// Workspaces of the cubecl streams GEMMs were ordered on (`tensor.rs`), by stream handle.
    stream_workspaces: HashMap<u64, drvs::CUdeviceptr>,
}

// SAFETY: the raw handles are only used under the `DEVICES` mutex, and CUDA/cuBLASLt handles may
// be used from any thread once their context is made current (`make_current`).
unsafe impl Send for DeviceGemm {}

impl DeviceGemm {
    fn new(ordinal: usize) -> Result<Self, GemmError> {
        if std::env::var("SPARSELORA_CUBLASLT").is_ok_and(|v| v == "0") {
            return Err(GemmError::Disabled);
        }
        // SAFETY: `is_culib_present`/`culib` only open the shared library.
        let library = unsafe {
            if !lts::is_culib_present() {
                return Err(GemmError::Library("no libcublasLt.so* found".into()));
            }
            lts::culib()
        };
        for symbol in SYMBOLS {
            // SAFETY: looking a symbol up does not call it; the type is only a placeholder.
            if unsafe { library.get::<*const c_void>(symbol.as_bytes()) }.is_err() {
                return Err(GemmError::Library(format!("missing symbol {symbol}")));
            }
        }
        // SAFETY: plain driver calls on a device ordinal; the handles are owned by `Self`, whose
        // fields are set only once each call has succeeded.
        unsafe {
            drv::init().map_err(driver("cuInit"))?;
            let device = drv::device::get(ordinal as i32).map_err(driver("cuDeviceGet"))?;
            let context =
                drv::primary_ctx::retain(device).map_err(driver("cuDevicePrimaryCtxRetain"))?;
            drv::ctx::set_current(context).map_err(driver("cuCtxSetCurrent"))?;
            let major = drv::device::get_attribute(
                device,
                drvs::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            )
            .map_err(driver("cuDeviceGetAttribute"))?;
            let workspace_size = if major >= 9 {
                WORKSPACE_HOPPER
            } else {
                WORKSPACE_OLDER
            };
            let stream = drv::stream::create(drv::stream::StreamKind::NonBlocking)
                .map_err(driver("cuStreamCreate"))?;
            let mut gemm = DeviceGemm {
                device,
                context,
                stream,
                handle: std::ptr::null_mut(),
                workspace: 0,
                workspace_size,
                plans: HashMap::new(),
                stream_workspaces: HashMap::new(),
            };
            gemm.workspace = drv::malloc_sync(workspace_size).map_err(driver("cuMemAlloc"))?;
            gemm.handle = lt::create_handle().map_err(cublas("cublasLtCreate"))?;
            Ok(gemm)
        }
    }

    fn make_current(&self) -> Result<(), GemmError> {
        // SAFETY: the primary context was retained in `new` and is never released.
        unsafe { drv::ctx::set_current(self.context) }.map_err(driver("cuCtxSetCurrent"))
    }

    /// The prepared problem for `problem` on operands in `dtype` and an output in `out_dtype`
    /// (the same, or f32 for bf16/f16 operands), with operands at addresses of the given
    /// alignments (`[first, second, d]`, see [`alignment`]), made on first use and cached.
    pub fn plan(
        &mut self,
        problem: &Problem,
        dtype: DType,
        out_dtype: DType,
        alignments: [u32; 3],
    ) -> Result<Arc<Plan>, GemmError> {
        check_output_dtype(dtype, out_dtype)?;
        let key = PlanKey {
            dtype: data_type(dtype)? as u32,
            out_dtype: data_type(out_dtype)? as u32,
            problem: *problem,
            alignments,
        };
        if let Some(plan) = self.plans.get(&key) {
            return Ok(plan.clone());
        }
        let id = self.plans.len();
        // SAFETY: the handle is live for as long as `self`.
        let plan = Arc::new(unsafe {
            Plan::new(
                self.handle,
                [dtype, out_dtype],
                &key,
                self.workspace_size,
                id,
            )?
        });
        self.plans.insert(key, plan.clone());
        Ok(plan)
    }

    /// How each plan made so far has been used, in the order they were made.
    pub fn plan_uses(&self) -> Vec<PlanUse> {
        let mut uses: Vec<PlanUse> = self
            .plans
            .values()
            .map(|plan| {
                let p = &plan.problem;
                PlanUse {
                    id: plan.id,
                    m: p.cols,
                    n: p.rows,
                    k: p.depth,
                    batch: p.batch,
                    transposes: p.transposes(),
                    launches: plan.launches.load(Ordering::Relaxed),
                    tuned_ms: plan.tuned_ms.get().copied(),
                    split_k: plan.split_k_chosen.get().copied().unwrap_or(false),
                }
            })
            .collect();
        uses.sort_by_key(|u| u.id);
        uses
    }

    /// A workspace of cuBLASLt's recommended size for GEMMs on `stream` (one per stream, so that
    /// GEMMs on different streams never share one), allocated on first use.
    fn workspace_for(&mut self, stream: drvs::CUstream) -> Result<drvs::CUdeviceptr, GemmError> {
        if stream == self.stream {
            return Ok(self.workspace);
        }
        if let Some(&ws) = self.stream_workspaces.get(&(stream as u64)) {
            return Ok(ws);
        }
        // SAFETY: a plain allocation in the current (primary) context, owned by `self`.
        let ws = unsafe { drv::malloc_sync(self.workspace_size) }.map_err(driver("cuMemAlloc"))?;
        self.stream_workspaces.insert(stream as u64, ws);
        Ok(ws)
    }

    /// Enqueues the GEMM `plan` on `stream` (f32 accumulation and scaling).
    ///
    /// # Safety
    /// The pointers must address device buffers of the plan's shapes and dtype, with at least
    /// the plan's alignments, live until the GEMM has run and not written by other work
    /// meanwhile (with `scaling.beta != 0` the output's contents are read); `stream` must be a
    /// live stream of this device's primary context.
    pub unsafe fn launch_plan(
        &mut self,
        plan: &Plan,
        ptrs: Pointers,
        scaling: Scaling,
        stream: drvs::CUstream,
    ) -> Result<(), GemmError> {
        let workspace = self.workspace_for(stream)?;
        plan.launches.fetch_add(1, Ordering::Relaxed);
        let algo = match plan.chosen.get() {
            Some(algo) => *algo,
            None => {
                let algo = if scaling.beta == 0.0 || ptrs.c != ptrs.d {
                    self.fastest(plan, ptrs, stream, workspace)
                } else {
                    // Timing the candidates overwrites the output, which this launch reads: time
                    // them on a scratch output instead (once per plan).
                    self.fastest_on_scratch(plan, ptrs, stream, workspace)?
                };
                *plan.chosen.get_or_init(|| algo)
            }
        };
        self.enqueue(plan, &algo, ptrs, scaling, stream, workspace)
    }

    /// [`Self::fastest`] with the output redirected to a scratch buffer of the output's size,
    /// freed once the timing (which the host waits for) is over.
    ///
    /// # Safety
    /// As [`Self::enqueue`].
    unsafe fn fastest_on_scratch(
        &self,
        plan: &Plan,
        ptrs: Pointers,
        stream: drvs::CUstream,
        workspace: drvs::CUdeviceptr,
    ) -> Result<lts::cublasLtMatmulAlgo_t, GemmError> {
        let scratch = drv::malloc_sync(plan.d_bytes).map_err(driver("cuMemAlloc"))?;
        let on_scratch = Pointers::in_place(ptrs.first, ptrs.second, scratch);
        let algo = self.fastest(plan, on_scratch, stream, workspace);
        // The timing ended with a host wait on an event after the last launch.
        drv::stream::synchronize(stream).map_err(driver("cuStreamSynchronize"))?;
        drv::free_sync(scratch).map_err(driver("cuMemFree"))?;
        Ok(algo)
    }

    /// One GEMM of `plan` with algorithm `algo` on `stream`.
    ///
    /// # Safety
    /// As [`Self::launch_plan`]; `workspace` is the stream's.
    unsafe fn enqueue(
        &self,
        plan: &Plan,
        algo: &lts::cublasLtMatmulAlgo_t,
        ptrs: Pointers,
        scaling: Scaling,
        stream: drvs::CUstream,
        workspace: drvs::CUdeviceptr,
    ) -> Result<(), GemmError> {
        let Scaling { alpha, beta } = scaling;
        lt::matmul(
            self.handle,
            plan.desc,
            (&alpha as *const f32).cast(),
            (&beta as *const f32).cast(),
            ptrs.first as *const c_void,
            plan.first,
            ptrs.second as *const c_void,
            plan.second,
            ptrs.c as *const c_void,
            plan.d,
            ptrs.d as *mut c_void,
            plan.d,
            algo,
            workspace as *mut c_void,
            self.workspace_size,
            stream as lts::cudaStream_t,
        )
        .map_err(cublas("cublasLtMatmul"))
    }

    /// The fastest of `plan`'s candidates on these operands: each launched once untimed, then
    /// timed over [`TUNING_LAUNCHES`] launches between two events on `stream`, which the host
    /// waits for, in [`tuning_rounds()`] rounds that visit every candidate in turn; a candidate's
    /// time is its fastest round's (once per plan: the first step pays it). Several rounds keep
    /// one disturbed measurement (the clock settling, other work on the GPU) from deciding the
    /// choice, and interleaving them spreads a slow drift over every candidate alike. Every launch
    /// writes only the output, which the real launch then overwrites. A candidate that fails to
    /// launch or to time is dropped; the heuristic's first guess is kept when none can be timed.
    ///
    /// # Safety
    /// As [`Self::enqueue`].
    unsafe fn fastest(
        &self,
        plan: &Plan,
        ptrs: Pointers,
        stream: drvs::CUstream,
        workspace: drvs::CUdeviceptr,
    ) -> lts::cublasLtMatmulAlgo_t {
        let product = Scaling::PRODUCT;
        let mut times: Vec<Option<f32>> = vec![None; plan.candidates.len()];
        let mut failed = vec![false; plan.candidates.len()];
        for round in 0..tuning_rounds() {
            for (i, algo) in plan.candidates.iter().enumerate() {
                if failed[i] {
                    continue;
                }
                let warmed = if round == 0 {
                    self.enqueue(plan, algo, ptrs, product, stream, workspace)
                } else {
                    Ok(())
                };
                let timed = warmed.and_then(|()| {
                    time_on_stream(stream, || {
                        for _ in 0..TUNING_LAUNCHES {
                            self.enqueue(plan, algo, ptrs, product, stream, workspace)?;
                        }
                        Ok(())
                    })
                });
                match timed {
                    Ok(ms) => times[i] = Some(times[i].map_or(ms, |t| t.min(ms))),
                    Err(_) => {
                        failed[i] = true;
                        times[i] = None;
                    }
                }
            }
        }
        if log_choices() {
            let line = choice_line(plan.id, &plan.problem, plan.heuristic_candidates, &times);
            eprintln!("{line}");
        }
        match fastest_index(&times) {
            Some(i) => {
                let ms = times[i].unwrap_or_default();
                let _ = plan.tuned_ms.set(ms / TUNING_LAUNCHES as f32);
                let _ = plan.split_k_chosen.set(i >= plan.heuristic_candidates);
                plan.candidates[i]
            }
            None => plan.candidates[0],
        }
    }

    /// Enqueues `d = op(first) op(second)` on our own stream (f32 accumulation and scaling).
    ///
    /// # Safety
    /// The pointers must address device buffers of the problem's shapes and `dtype`, live until
    /// the GEMM has run, and not be written by other work meanwhile.
    pub unsafe fn launch(
        &mut self,
        problem: &Problem,
        dtype: DType,
        ptrs: Pointers,
    ) -> Result<(), GemmError> {
        let plan = self.plan(problem, dtype, dtype, ptrs.alignments())?;
        self.launch_plan(&plan, ptrs, Scaling::PRODUCT, self.stream)
    }

    /// Our own stream (the host-wait ordering's).
    pub fn own_stream(&self) -> drvs::CUstream {
        self.stream
    }

    /// Blocks until every GEMM enqueued on our stream has finished.
    pub fn synchronize(&self) -> Result<(), GemmError> {
        // SAFETY: the stream is ours and alive.
        unsafe { drv::stream::synchronize(self.stream) }.map_err(driver("cuStreamSynchronize"))
    }

    /// Seconds per GEMM of `iters` back-to-back launches, timed with CUDA events on our stream:
    /// the kernels alone, without the ordering against cubecl's stream.
    ///
    /// # Safety
    /// As [`DeviceGemm::launch`].
    pub unsafe fn time_launches(
        &mut self,
        problem: &Problem,
        dtype: DType,
        ptrs: Pointers,
        iters: usize,
    ) -> Result<f64, GemmError> {
        self.launch(problem, dtype, ptrs)?; // plan and warm-up outside the timed span
        let stream = self.stream;
        let ms = time_on_stream(stream, || {
            for _ in 0..iters {
                self.launch(problem, dtype, ptrs)?;
            }
            Ok(())
        })?;
        Ok(ms as f64 * 1e-3 / iters.max(1) as f64)
    }
}

/// Milliseconds of device time that the work `enqueue` puts on `stream` takes, between two CUDA
/// events, which the host waits for.
///
/// # Safety
/// `stream` must be a live stream of the current context, and `enqueue` must only enqueue work
/// that is safe to run there.
unsafe fn time_on_stream(
    stream: drvs::CUstream,
    enqueue: impl FnOnce() -> Result<(), GemmError>,
) -> Result<f32, GemmError> {
    let flags = drvs::CUevent_flags::CU_EVENT_DEFAULT;
    let start = drv::event::create(flags).map_err(driver("cuEventCreate"))?;
    let end = match drv::event::create(flags).map_err(driver("cuEventCreate")) {
        Ok(end) => end,
        Err(e) => {
            let _ = drv::event::destroy(start);
            return Err(e);
        }
    };
    let timed = (|| {
        drv::event::record(start, stream).map_err(driver("cuEventRecord"))?;
        enqueue()?;
        drv::event::record(end, stream).map_err(driver("cuEventRecord"))?;
        drv::event::synchronize(end).map_err(driver("cuEventSynchronize"))?;
        drv::event::elapsed(start, end).map_err(driver("cuEventElapsedTime"))
    })();
    let _ = drv::event::destroy(start);
    let _ = drv::event::destroy(end);
    timed
}

/// How many of cuBLASLt's heuristic candidates a plan times on its first launch, at most: the
/// padded sliced products (widths 144, 432) found no candidate within 0.9x of PyTorch among the
/// first 8 on the H200 (docs/perf.md). `SPARSELORA_GEMM_CANDIDATES=n` changes it (1-64).
const CANDIDATES: usize = 32;

/// [`CANDIDATES`], or `SPARSELORA_GEMM_CANDIDATES` when set to a number in 1..=64.
fn candidates() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| count_from_env("SPARSELORA_GEMM_CANDIDATES", 1..=64, CANDIDATES))
}

/// The environment variable `name` as a number in `range`, else `default`.
fn count_from_env(name: &str, range: std::ops::RangeInclusive<usize>, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| range.contains(n))
        .unwrap_or(default)
}

/// Launches per candidate when timing them (after one untimed launch each).
const TUNING_LAUNCHES: usize = 3;

/// Rounds of timing over all of a plan's candidates, each candidate keeping its fastest, so that
/// one disturbed measurement does not pick the algorithm. On the H200, processes tuned with one
/// round or three chose alike wherever the choice matters (plans above 50 us, docs/perf.md); the
/// rounds cost the first step a few milliseconds. `SPARSELORA_GEMM_TUNING_ROUNDS=n` changes it
/// (1-16).
const TUNING_ROUNDS: usize = 3;

/// [`TUNING_ROUNDS`], or `SPARSELORA_GEMM_TUNING_ROUNDS` when set to a number in 1..=16.
fn tuning_rounds() -> usize {
    static ROUNDS: OnceLock<usize> = OnceLock::new();
    *ROUNDS.get_or_init(|| count_from_env("SPARSELORA_GEMM_TUNING_ROUNDS", 1..=16, TUNING_ROUNDS))
}

/// The index of the fastest timed candidate, if any was timed.
fn fastest_index(times: &[Option<f32>]) -> Option<usize> {
    times
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((i, (*t)?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

/// Whether `SPARSELORA_GEMM_LOG=1` asked for one line on stderr per plan: its problem and the
/// time of each candidate when it was tuned (to compare the choices of two processes, whose
/// step times can differ by 10%, docs/perf.md).
fn log_choices() -> bool {
    static LOG: OnceLock<bool> = OnceLock::new();
    *LOG.get_or_init(|| std::env::var("SPARSELORA_GEMM_LOG").is_ok_and(|v| v == "1"))
}

/// The line [`log_choices`] asks for: plan `id` (as in [`PlanUse`]), `problem` as `m x n x k`
/// (our `C[m, n] = A[m, k] B[k, n]`), its batch and cuBLASLt's transposes, the index of the
/// fastest candidate, how many came from the heuristic (the first `heuristic`) and how many are
/// split-K configurations, and each candidate's milliseconds for [`TUNING_LAUNCHES`] launches,
/// the fastest of its rounds (`-` where it could not be timed).
fn choice_line(id: usize, problem: &Problem, heuristic: usize, times: &[Option<f32>]) -> String {
    let fastest = fastest_index(times).map_or_else(|| "none".to_owned(), |i| i.to_string());
    let times: Vec<String> = times
        .iter()
        .map(|t| t.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.4}")))
        .collect();
    let p = problem;
    let count = match times.len().saturating_sub(heuristic) {
        0 => times.len().to_string(),
        split => format!("{heuristic} + {split} split-K"),
    };
    format!(
        "[gemm-plan] #{id} {}x{}x{} batch {} {}: candidate {fastest} of {count}; ms per {TUNING_LAUNCHES}: {}",
        p.cols,
        p.rows,
        p.depth,
        p.batch,
        p.transposes(),
        times.join(" ")
    )
}

/// Whether `SPARSELORA_GEMM_AUTOTUNE=0` asked for the heuristic's first choice, untimed.
fn autotune_disabled() -> bool {
    static DISABLED: OnceLock<bool> = OnceLock::new();
    *DISABLED.get_or_init(|| std::env::var("SPARSELORA_GEMM_AUTOTUNE").is_ok_and(|v| v == "0"))
}

/// How one prepared problem has been used: what a step's GEMM time is made of, shape by shape.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanUse {
    /// Its place among the device's plans, in the order they were made (as in the
    /// `SPARSELORA_GEMM_LOG=1` lines).
    pub id: usize,
    /// Rows of the product `C[m, n] = A[m, k] B[k, n]`.
    pub m: u64,
    /// Columns of the product.
    pub n: u64,
    /// The reduction length.
    pub k: u64,
    /// Products in a strided batch (1: a single product).
    pub batch: u64,
    /// cuBLASLt's transposes of its two operands (`N` or `T` each).
    pub transposes: String,
    /// Launches so far, the tuning's own excluded.
    pub launches: u64,
    /// The chosen algorithm's milliseconds per launch when it was tuned, alone on the GPU with
    /// its operands in cache: a lower bound on what it costs inside a step (`None` when it was
    /// not timed: a single candidate, or `SPARSELORA_GEMM_AUTOTUNE=0`).
    pub tuned_ms: Option<f32>,
    /// Whether the tuning chose a split-K configuration (the reduction split over several tiles
    /// and summed in f32) over the heuristic's algorithms.
    pub split_k: bool,
}

impl PlanUse {
    /// Floating-point operations of one launch.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64 * self.batch as f64
    }
}

/// A prepared problem: descriptors, the candidate algorithms cuBLASLt's heuristic proposes (best
/// guess first), and the one chosen by timing them on the first launch.
///
/// The heuristic's first guess is not always the fastest: on the sparse step's shapes with an
/// odd width (143 or 819 kept channels, leading dimensions that are not multiples of 8) it ran at
/// 0.76-0.88x of PyTorch on the H200 (`bench gemm`, docs/perf.md), so each plan times up to
/// [`candidates()`] of them once, on the real operands, and keeps the fastest.
pub(crate) struct Plan {
    desc: lts::cublasLtMatmulDesc_t,
    first: lts::cublasLtMatrixLayout_t,
    second: lts::cublasLtMatrixLayout_t,
    d: lts::cublasLtMatrixLayout_t,
    candidates: Vec<lts::cublasLtMatmulAlgo_t>,
    chosen: std::sync::OnceLock<lts::cublasLtMatmulAlgo_t>,
    /// Bytes of the output (all of a batch).
    d_bytes: usize,
    /// The problem, for [`log_choices`]' lines and [`PlanUse`].
    problem: Problem,
    /// Its place among the device's plans, in the order they were made.
    id: usize,
    /// Launches of it so far (the tuning's own excluded).
    launches: AtomicU64,
    /// How many of `candidates` came from cuBLASLt's heuristic (the rest are split-K
    /// configurations, `split_k`).
    heuristic_candidates: usize,
    /// The chosen algorithm's milliseconds per launch when it was tuned (unset when untimed).
    tuned_ms: OnceLock<f32>,
    /// Whether the tuning chose a split-K configuration.
    split_k_chosen: OnceLock<bool>,
}

impl Plan {
    /// The plan of `key` for operands of `element` type and an output of `out_element` type.
    ///
    /// # Safety
    /// `handle` must be a live cuBLASLt handle.
    unsafe fn new(
        handle: lts::cublasLtHandle_t,
        [element, out_element]: [DType; 2],
        key: &PlanKey,
        workspace_size: usize,
        id: usize,
    ) -> Result<Plan, GemmError> {
        let dtype = data_type(element)?;
        let out_dtype = data_type(out_element)?;
        let p = &key.problem;
        // Null until created; `Drop` destroys whatever was made if a later step fails.
        let mut plan = Plan {
            desc: std::ptr::null_mut(),
            first: std::ptr::null_mut(),
            second: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            candidates: Vec::new(),
            chosen: std::sync::OnceLock::new(),
            d_bytes: p.out_span() as usize * out_element.size(),
            problem: *p,
            id,
            launches: AtomicU64::new(0),
            heuristic_candidates: 0,
            tuned_ms: OnceLock::new(),
            split_k_chosen: OnceLock::new(),
        };
        // f32 accumulation for every input type; f32 inputs stay full f32 (no TF32).
        plan.desc = lt::create_matmul_desc(
            lts::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            lts::cudaDataType::CUDA_R_32F,
        )
        .map_err(cublas("cublasLtMatmulDescCreate"))?;
        for (attr, operand) in [
            (
                lts::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &p.first,
            ),
            (
                lts::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                &p.second,
            ),
        ] {
            let op: i32 = operand.trans.into(); // CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
            set(
                plan.desc,
                attr,
                &op,
                lt::set_matmul_desc_attribute,
                "cublasLtMatmulDescSetAttribute",
            )?;
        }
        plan.first = layout(dtype, &p.first, p.batch)?;
        plan.second = layout(dtype, &p.second, p.batch)?;
        plan.d = layout(
            out_dtype,
            &Operand {
                rows: p.rows,
                cols: p.cols,
                ld: p.out_ld as i64,
                trans: false,
                batch_stride: p.out_batch_stride as i64,
            },
            p.batch,
        )?;
        let pref =
            Preference(lt::create_matmul_pref().map_err(cublas("cublasLtMatmulPreferenceCreate"))?);
        let pref_attr =
            lts::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES;
        let bytes = workspace_size as u64;
        set(
            pref.0,
            pref_attr,
            &bytes,
            lt::set_matmul_pref_attribute,
            "cublasLtMatmulPreferenceSetAttribute",
        )?;
        use lts::cublasLtMatmulPreferenceAttributes_t as Pref;
        let [first, second, d] = key.alignments;
        for (attr, align) in [
            (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, first),
            (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, second),
            (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, d),
            (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, d),
        ] {
            set(
                pref.0,
                attr,
                &align,
                lt::set_matmul_pref_attribute,
                "cublasLtMatmulPreferenceSetAttribute",
            )?;
        }
        let wanted = candidates();
        let mut results = vec![std::mem::zeroed::<lts::cublasLtMatmulHeuristicResult_t>(); wanted];
        let mut found = 0i32;
        lts::cublasLtMatmulAlgoGetHeuristic(
            handle,
            plan.desc,
            plan.first,
            plan.second,
            plan.d,
            plan.d,
            pref.0,
            wanted as i32,
            results.as_mut_ptr(),
            &mut found,
        )
        .result()
        .map_err(cublas("cublasLtMatmulAlgoGetHeuristic"))?;
        plan.candidates = results[..(found.max(0) as usize).min(wanted)]
            .iter()
            .filter(|r| {
                r.state == lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                    && r.workspaceSize <= workspace_size
            })
            .map(|r| r.algo)
            .collect();
        plan.heuristic_candidates = plan.candidates.len();
        if !plan.candidates.is_empty()
            && split_k::worth_splitting(p)
            && split_k::enabled()
            && !autotune_disabled()
        {
            let descriptors = split_k::Descriptors {
                handle,
                desc: plan.desc,
                first: plan.first,
                second: plan.second,
                d: plan.d,
                dtype,
                out_dtype,
                workspace_size,
            };
            let variants = split_k::variants(&descriptors, &plan.candidates);
            plan.candidates.extend(variants);
        }
        if plan.candidates.is_empty() {
            return Err(GemmError::Cublas {
                call: "cublasLtMatmulAlgoGetHeuristic",
                status: "CUBLAS_STATUS_NOT_SUPPORTED (no algorithm)".into(),
            });
        }
        if plan.candidates.len() == 1 || autotune_disabled() {
            let _ = plan.chosen.set(plan.candidates[0]);
        }
        Ok(plan)
    }
}

// SAFETY: a plan is immutable once made; cuBLASLt descriptors may be read from any thread, and
// the one that launches it (the caller, or cubecl's device thread) holds the `DEVICES` lock.
unsafe impl Send for Plan {}
unsafe impl Sync for Plan {}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle is either null or was created by `Plan::new` and not freed since.
        unsafe {
            for layout in [self.first, self.second, self.d] {
                if !layout.is_null() {
                    let _ = lt::destroy_matrix_layout(layout);
                }
            }
            if !self.desc.is_null() {
                let _ = lt::destroy_matmul_desc(self.desc);
            }
        }
    }
}

/// A heuristic preference, destroyed when dropped.
struct Preference(lts::cublasLtMatmulPreference_t);

impl Drop for Preference {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_pref` and freed only here.
        unsafe {
            let _ = lt::destroy_matmul_pref(self.0);
        }
    }
}

/// A column-major matrix layout of `operand`'s stored shape, repeated `batch` times at its batch
/// stride when `batch > 1`.
unsafe fn layout(
    dtype: lts::cudaDataType,
    operand: &Operand,
    batch: u64,
) -> Result<lts::cublasLtMatrixLayout_t, GemmError> {
    let layout = lt::create_matrix_layout(dtype, operand.rows, operand.cols, operand.ld)
        .map_err(cublas("cublasLtMatrixLayoutCreate"))?;
    if batch > 1 {
        use lts::cublasLtMatrixLayoutAttribute_t as Attr;
        let count = batch as i32;
        let stride = operand.batch_stride;
        let batched = set(
            layout,
            Attr::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
            &count,
            lt::set_matrix_layout_attribute,
            "cublasLtMatrixLayoutSetAttribute",
        )
        .and_then(|()| {
            set(
                layout,
                Attr::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                &stride,
                lt::set_matrix_layout_attribute,
                "cublasLtMatrixLayoutSetAttribute",
            )
        });
        if let Err(e) = batched {
            let _ = lt::destroy_matrix_layout(layout);
            return Err(e);
        }
    }
    Ok(layout)
}

/// Sets one descriptor attribute to `value`.
unsafe fn set<H, A, T>(
    handle: H,
    attr: A,
    value: &T,
    setter: unsafe fn(H, A, *const c_void, usize) -> Result<(), lt::CublasError>,
    call: &'static str,
) -> Result<(), GemmError> {
    setter(
        handle,
        attr,
        (value as *const T).cast(),
        std::mem::size_of::<T>(),
    )
    .map_err(cublas(call))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_choice_reads_as_one_line() {
        let operand = |rows, cols, trans| Operand {
            rows,
            cols,
            ld: rows as i64,
            trans,
            batch_stride: 0,
        };
        let problem = Problem {
            first: operand(4096, 144, true),
            second: operand(144, 4096, false),
            rows: 4096,
            cols: 4096,
            depth: 144,
            batch: 1,
            out_ld: 4096,
            out_batch_stride: 4096 * 4096,
        };
        let line = choice_line(7, &problem, 3, &[Some(0.05), None, Some(0.0312)]);
        assert_eq!(
            line,
            "[gemm-plan] #7 4096x4096x144 batch 1 TN: candidate 2 of 3; ms per 3: 0.0500 - 0.0312"
        );
        assert!(choice_line(0, &problem, 1, &[None]).contains("candidate none of 1"));
        let split = choice_line(1, &problem, 1, &[Some(0.05), Some(0.02), Some(0.03)]);
        assert!(split.contains("candidate 1 of 1 + 2 split-K;"), "{split}");
    }
}
