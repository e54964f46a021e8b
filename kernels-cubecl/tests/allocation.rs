//! The allocator's size cache (`kernels_cubecl::allocation`) on burn-wgpu (lavapipe on a machine
//! without a GPU): cubecl-runtime's memory management is the same code for wgpu and CUDA, so
//! this is where CI checks that a step run in the persistent mode takes its buffers there and
//! that later steps reuse them, with results identical to the default pool's.
#![cfg(feature = "wgpu")]

mod common;

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, Wgpu};
use burn::tensor::{Tensor, TensorData};
use common::data;
use kernels_cubecl::allocation::{cached_by_size, pool_usage};
use kernels_cubecl::{rms_norm, swiglu};

type AW = Autodiff<Wgpu>;

/// One training-like step on inputs drawn from `seed`: RMSNorm, a product, SwiGLU, a sum as the
/// loss, and the gradients of the input and the weight. Returns the loss and both gradients.
fn step(seed: u64, device: &WgpuDevice) -> Vec<Vec<f32>> {
    let load = |d: TensorData| Tensor::<AW, 2>::from_data(d, device);
    let x = load(data([48, 64], seed, 1.0, 0.0)).require_grad();
    let w = load(data([64, 128], seed + 1, 0.2, 0.0)).require_grad();
    let norm_w = Tensor::<AW, 1>::from_data(data([64], seed + 2, 0.1, 1.0), device);
    let h = rms_norm(x.clone().unsqueeze_dim::<3>(0), norm_w, 1e-5).squeeze_dim::<2>(0);
    let z = h.matmul(w.clone());
    let out = swiglu(z.clone().narrow(1, 0, 64), z.narrow(1, 64, 64));
    let loss = out.sum();
    let grads = loss.backward();
    let values = |t: Tensor<Wgpu, 2>| t.into_data().to_vec::<f32>().unwrap();
    vec![
        loss.into_data().to_vec::<f32>().unwrap(),
        values(x.grad(&grads).unwrap()),
        values(w.grad(&grads).unwrap()),
    ]
}

fn reserved(device: &WgpuDevice) -> u64 {
    let (in_use, reserved) = pool_usage::<AW>(device).expect("cubecl's pool on wgpu");
    assert!(
        in_use <= reserved,
        "{in_use} bytes in use of {reserved} reserved"
    );
    reserved
}

#[test]
fn a_cached_step_moves_its_buffers_to_the_exact_size_pool_and_later_steps_reuse_them() {
    let device = WgpuDevice::default();
    // The default pool first: the reference values, and pages big enough for the step.
    let want: Vec<Vec<Vec<f32>>> = (0..3).map(|i| step(10 * i, &device)).collect();
    let before = reserved(&device);

    let first = cached_by_size::<AW, _>(&device, || step(0, &device));
    let after_cached = reserved(&device);
    let rest: Vec<Vec<Vec<f32>>> = (1..3).map(|i| step(10 * i, &device)).collect();
    let after_rest = reserved(&device);

    // In the default mode the step would have fitted in the pages the reference steps left free;
    // in the persistent mode each of its buffers is a new block of its exact size.
    assert!(
        after_cached > before,
        "the cached step reserved nothing new ({before} bytes before and after)"
    );
    // The later steps' sizes are known to the exact-size pool: served from its free blocks.
    assert_eq!(
        after_rest, after_cached,
        "steps after the cached one reserved more memory"
    );
    assert_eq!(
        first, want[0],
        "the cached step's values differ from the default pool's"
    );
    assert_eq!(
        rest,
        want[1..],
        "a later step's values differ from the default pool's"
    );
}
