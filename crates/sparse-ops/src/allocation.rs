//! How a training step's device buffers are allocated: cached by exact size after the first step.
//!
//! cubecl-runtime 0.10's default pool for CUDA carves buffers out of shared pages; each
//! reservation merges the free neighbours of every page and scans its slices, and every kernel
//! launch reserves twice (its output and its metadata). Profiled on the H200 at LLaMA3-8B shapes
//! that was half of cubecl's device thread, 20-45 ms of CPU a step, and it grows with the pool's
//! fragmentation. cubecl also has a *persistent* pool that keeps a free list per exact size; a
//! reservation there is a hash lookup. Once a size has a slot in it, cubecl sends every later
//! request of that size there, whatever the mode. A training step repeats the same sizes, so
//! running one step with the persistent mode on moves all of the step's buffers into it for
//! the rest of the run, the way PyTorch's caching allocator keeps blocks by size.
//!
//! The price is memory: a freed block serves only its own size, so the run holds, per size, the
//! most blocks of that size ever alive at once (`bench step` reports the pool's peak; see
//! `docs/perf.md`). Sizes first seen later (another batch shape) stay on the sliced pool.

use burn::tensor::backend::Backend;

/// Runs `step` with `device`'s new allocations made in cubecl's exact-size (persistent) pool, so
/// that the sizes `step` allocates are served from it from then on (module documentation).
/// Only burn-cuda's devices (feature `cuda`) are affected, and only with
/// `SPARSELORA_ALLOCATION_CACHE=1`: until its step times and peak memory are measured on the H200
/// against the sliced pool (`docs/gpu.md`), the default stays cubecl's. Otherwise this just runs
/// `step`.
pub fn with_allocations_cached_by_size<B: Backend, R>(
    device: &B::Device,
    step: impl FnOnce() -> R,
) -> R {
    #[cfg(feature = "cuda")]
    if let Some(device) = (device as &dyn std::any::Any)
        .downcast_ref::<cubecl::cuda::CudaDevice>()
        .filter(|_| std::env::var("SPARSELORA_ALLOCATION_CACHE").as_deref() == Ok("1"))
    {
        let _mode = cuda::PersistentMode::on(device);
        return step();
    }
    let _ = device;
    step()
}

#[cfg(feature = "cuda")]
mod cuda {
    use cubecl::client::ComputeClient;
    use cubecl::cuda::{CudaDevice, CudaRuntime};
    use cubecl::{MemoryAllocationMode, Runtime};

    /// The persistent allocation mode of the calling thread's stream, back to automatic when
    /// dropped (a panicking step included).
    pub(super) struct PersistentMode(ComputeClient<CudaRuntime>);

    impl PersistentMode {
        pub(super) fn on(device: &CudaDevice) -> Self {
            let client = CudaRuntime::client(device);
            // SAFETY: cubecl's caveat is that the mode belongs to the calling thread's stream and
            // that persistent blocks are kept; the mode is set and reset on this one thread, and
            // keeping the step's blocks is the point.
            unsafe { client.allocation_mode(MemoryAllocationMode::Persistent) };
            Self(client)
        }
    }

    impl Drop for PersistentMode {
        fn drop(&mut self) {
            // SAFETY: as in `on`, on the same thread.
            unsafe { self.0.allocation_mode(MemoryAllocationMode::Auto) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn runs_the_step_once_and_returns_its_value_off_cuda() {
        let mut runs = 0;
        let value = with_allocations_cached_by_size::<Flex, _>(&Default::default(), || {
            runs += 1;
            41 + runs
        });
        assert_eq!((runs, value), (1, 42));
    }
}
