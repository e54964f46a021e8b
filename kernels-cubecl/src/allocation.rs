//! How a training step's device buffers are allocated on burn's cubecl backends (the ones this
//! crate's kernels dispatch to): cached by exact size after the first step. Not a kernel, but
//! the same backends' runtime, so it lives beside their dispatch.
//!
//! cubecl-runtime 0.10's default pools (CUDA's, and wgpu's the same way) carve buffers out of shared pages; each
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
/// Only with `SPARSELORA_ALLOCATION_CACHE=1`: until its step times and peak memory are measured on
/// the H200 against the sliced pool (`docs/gpu.md`), the default stays cubecl's. Otherwise, and
/// on backends other than burn-wgpu and burn-cuda (as this crate's features allow), this just
/// runs `step`.
pub fn with_allocations_cached_by_size<B: Backend, R>(
    device: &B::Device,
    step: impl FnOnce() -> R,
) -> R {
    if std::env::var("SPARSELORA_ALLOCATION_CACHE").as_deref() == Ok("1") {
        cached_by_size::<B, R>(device, step)
    } else {
        step()
    }
}

/// [`with_allocations_cached_by_size`] whatever the environment says.
pub fn cached_by_size<B: Backend, R>(device: &B::Device, step: impl FnOnce() -> R) -> R {
    let device = device as &dyn std::any::Any;
    #[cfg(feature = "wgpu")]
    if let Some(device) = device.downcast_ref::<burn::backend::wgpu::WgpuDevice>() {
        let _mode = PersistentMode::<burn::backend::wgpu::WgpuRuntime>::on(device);
        return step();
    }
    #[cfg(feature = "cuda")]
    if let Some(device) = device.downcast_ref::<cubecl::cuda::CudaDevice>() {
        let _mode = PersistentMode::<cubecl::cuda::CudaRuntime>::on(device);
        return step();
    }
    let _ = device;
    step()
}

/// cubecl's accounting of `device`'s memory pools on burn-wgpu and burn-cuda: `(bytes in live
/// tensors, bytes reserved from the driver)`, the exact-size pool included; `None` on other
/// backends or when the runtime cannot say.
pub fn pool_usage<B: Backend>(device: &B::Device) -> Option<(u64, u64)> {
    let device = device as &dyn std::any::Any;
    #[cfg(feature = "wgpu")]
    if let Some(device) = device.downcast_ref::<burn::backend::wgpu::WgpuDevice>() {
        return usage::<burn::backend::wgpu::WgpuRuntime>(device);
    }
    #[cfg(feature = "cuda")]
    if let Some(device) = device.downcast_ref::<cubecl::cuda::CudaDevice>() {
        return usage::<cubecl::cuda::CudaRuntime>(device);
    }
    let _ = device;
    None
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn usage<R: cubecl::Runtime>(device: &R::Device) -> Option<(u64, u64)> {
    let usage = R::client(device).memory_usage().ok()?;
    Some((usage.bytes_in_use, usage.bytes_reserved))
}

/// The persistent allocation mode of the calling thread's stream on one device, back to
/// automatic when dropped (a panicking step included). Nested uses on the same device and thread
/// leave the mode to the outermost one.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
struct PersistentMode<R: cubecl::Runtime> {
    client: cubecl::client::ComputeClient<R>,
    device: DeviceKey,
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl<R: cubecl::Runtime> PersistentMode<R> {
    fn on(device: &R::Device) -> Self {
        use cubecl::device::Device;
        let id = device.to_id();
        let key = (id.type_id, id.index_id);
        let client = R::client(device);
        if nesting::enter(key) {
            // SAFETY: cubecl's caveat is that the mode belongs to the calling thread's stream
            // and that persistent blocks are kept; the mode is set and reset on this one
            // thread, and keeping the step's blocks is the point.
            unsafe { client.allocation_mode(cubecl::MemoryAllocationMode::Persistent) };
        }
        Self {
            client,
            device: key,
        }
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl<R: cubecl::Runtime> Drop for PersistentMode<R> {
    fn drop(&mut self) {
        if nesting::leave(self.device) {
            // SAFETY: as in `on`, on the same thread.
            unsafe {
                self.client
                    .allocation_mode(cubecl::MemoryAllocationMode::Auto)
            };
        }
    }
}

/// A device as cubecl identifies it: `(type, index)`.
#[cfg(any(feature = "wgpu", feature = "cuda", test))]
type DeviceKey = (u16, u16);

/// How deep each device's persistent mode is nested on this thread.
#[cfg(any(feature = "wgpu", feature = "cuda", test))]
mod nesting {
    use super::DeviceKey;
    use std::cell::RefCell;

    thread_local! {
        static DEPTH: RefCell<Vec<(DeviceKey, usize)>> = const { RefCell::new(Vec::new()) };
    }

    /// Records one more use on `device`; true for the outermost (which sets the mode).
    pub(super) fn enter(device: DeviceKey) -> bool {
        DEPTH.with_borrow_mut(|depth| match depth.iter_mut().find(|(d, _)| *d == device) {
            Some((_, n)) => {
                *n += 1;
                false
            }
            None => {
                depth.push((device, 1));
                true
            }
        })
    }

    /// Records one use less on `device`; true for the outermost (which resets the mode).
    pub(super) fn leave(device: DeviceKey) -> bool {
        DEPTH.with_borrow_mut(|depth| {
            let Some(i) = depth.iter().position(|(d, _)| *d == device) else {
                return false;
            };
            depth[i].1 -= 1;
            let outermost = depth[i].1 == 0;
            if outermost {
                depth.swap_remove(i);
            }
            outermost
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn runs_the_step_once_and_returns_its_value_off_cubecl() {
        let mut runs = 0;
        let value = cached_by_size::<Flex, _>(&Default::default(), || {
            runs += 1;
            41 + runs
        });
        assert_eq!((runs, value), (1, 42));
        assert_eq!(pool_usage::<Flex>(&Default::default()), None);
    }

    #[test]
    fn only_the_outermost_use_of_a_device_sets_and_resets_the_mode() {
        let (a, b) = ((1, 0), (1, 1));
        assert!(nesting::enter(a));
        assert!(!nesting::enter(a)); // nested on the same device
        assert!(nesting::enter(b)); // another device is its own
        assert!(!nesting::leave(a));
        assert!(nesting::leave(b));
        assert!(nesting::leave(a));
        assert!(!nesting::leave(a)); // nothing held: nothing to reset
        assert!(nesting::enter(a));
        assert!(nesting::leave(a));
    }
}
