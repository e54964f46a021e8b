//! What the kernel test files share: deterministic inputs and one-at-a-time execution.

// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};

use burn::tensor::TensorData;

/// Tests run one at a time, so that the launch counter counts only the running test's kernels.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Deterministic pseudo-random values, roughly normal (`scale` standard deviation), around
/// `offset`.
pub fn random(len: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..len)
        .map(|_| {
            // Irwin-Hall: the sum of 4 uniforms, centred, has variance 1/3.
            let sum: f32 = (0..4).map(|_| uniform()).sum();
            offset + scale * (sum - 2.0) * 3f32.sqrt()
        })
        .collect()
}

/// [`random`] values of `shape`.
pub fn data<const D: usize>(shape: [usize; D], seed: u64, scale: f32, offset: f32) -> TensorData {
    TensorData::new(random(shape.iter().product(), seed, scale, offset), shape)
}
