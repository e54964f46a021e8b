//! Choosing the burn backend at run time: every backend compiled in is one `--backend` value.

use burn::tensor::{backend::Backend, DType};
use clap::ValueEnum;

/// The compute backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// burn-flex on the CPU (f32).
    Cpu,
    /// burn-wgpu (Vulkan/Metal/lavapipe; f32).
    #[cfg(feature = "wgpu")]
    Wgpu,
    /// burn-cuda on an NVIDIA GPU (bf16 by default).
    #[cfg(feature = "cuda")]
    Cuda,
}

/// Work that runs on whichever backend the user chose.
pub trait BackendJob {
    /// What the job returns.
    type Output;
    /// Runs on backend `B`, with weights in `dtype`.
    fn run<B: Backend>(self, device: B::Device, dtype: DType) -> anyhow::Result<Self::Output>;
}

/// Work that trains, on the autodiff version of whichever backend the user chose.
pub trait TrainJob {
    /// Runs on autodiff backend `B`, with base weights in `dtype`.
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        self,
        device: B::Device,
        dtype: DType,
    ) -> anyhow::Result<()>;
}

impl BackendKind {
    /// The default weight dtype: bf16 on CUDA, f32 elsewhere (lavapipe and the CPU have no bf16 matmul).
    pub fn default_dtype(self) -> DType {
        match self {
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => DType::BF16,
            _ => DType::F32,
        }
    }

    /// Runs `job` on this backend's default device.
    pub fn dispatch<J: BackendJob>(
        self,
        dtype: Option<DType>,
        job: J,
    ) -> anyhow::Result<J::Output> {
        let dtype = dtype.unwrap_or(self.default_dtype());
        match self {
            BackendKind::Cpu => job.run::<burn::backend::Flex>(Default::default(), dtype),
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => job.run::<burn::backend::Wgpu>(Default::default(), dtype),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => job.run::<burn::backend::Cuda>(Default::default(), dtype),
        }
    }
}

impl BackendKind {
    /// Runs `job` on the autodiff wrapper of this backend.
    pub fn dispatch_autodiff<J: TrainJob>(
        self,
        dtype: Option<DType>,
        job: J,
    ) -> anyhow::Result<()> {
        use burn::backend::Autodiff;
        let dtype = dtype.unwrap_or(self.default_dtype());
        match self {
            BackendKind::Cpu => job.run::<Autodiff<burn::backend::Flex>>(Default::default(), dtype),
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => {
                job.run::<Autodiff<burn::backend::Wgpu>>(Default::default(), dtype)
            }
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => {
                job.run::<Autodiff<burn::backend::Cuda>>(Default::default(), dtype)
            }
        }
    }
}

/// Parses `f32`, `bf16` or `f16`.
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        other => Err(format!("unknown dtype `{other}` (f32, bf16, f16)")),
    }
}

/// cuBLASLt GEMMs run so far (0 without the `cuda` feature).
pub(crate) fn gemm_calls() -> u64 {
    #[cfg(feature = "cuda")]
    {
        sparse_ops::cublaslt::calls()
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
}

/// One cuBLASLt plan of the GPU: its shape, launches so far and tuned time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GemmPlan {
    /// Its number among the device's plans (as in the `SPARSELORA_GEMM_LOG=1` lines).
    pub id: usize,
    /// `m x n x k`, the batch when above 1, and cuBLASLt's transposes.
    pub shape: String,
    /// Floating-point operations of one launch.
    pub flops: f64,
    /// Launches so far.
    pub launches: u64,
    /// Milliseconds per launch when it was tuned, alone on the GPU.
    pub tuned_ms: Option<f64>,
}

/// The cuBLASLt plans made so far on `backend`'s device 0 (none off CUDA, or when cuBLASLt is
/// not in use).
pub(crate) fn gemm_plans(backend: BackendKind) -> Vec<GemmPlan> {
    match backend {
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            let device = burn::backend::cuda::CudaDevice::new(0);
            sparse_ops::cublaslt::plan_uses(&device)
                .unwrap_or_default()
                .into_iter()
                .map(|p| GemmPlan {
                    id: p.id,
                    shape: format!(
                        "{}x{}x{}{} {}{}",
                        p.m,
                        p.n,
                        p.k,
                        match p.batch {
                            1 => String::new(),
                            b => format!(" batch {b}"),
                        },
                        p.transposes,
                        if p.split_k { " split-K" } else { "" }
                    ),
                    flops: p.flops(),
                    launches: p.launches,
                    tuned_ms: p.tuned_ms.map(f64::from),
                })
                .collect()
        }
        _ => Vec::new(),
    }
}
