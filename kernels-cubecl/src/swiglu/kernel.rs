//! The SwiGLU kernels: elementwise over contiguous tensors, in vectors, f32 math inside.

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use crate::common::{address_type, count_launch, elementwise_launch, vector_size};

/// `sigmoid(g)` in f32.
#[cube]
fn sigmoid<N: Size>(g: Vector<f32, N>) -> Vector<f32, N> {
    let one = Vector::<f32, N>::new(1.0f32);
    // `0 - g`, not `-g`: cubecl 0.10's CUDA code generation has no unary minus on vectors.
    let neg = Vector::<f32, N>::new(0.0f32) - g;
    one / (one + neg.exp())
}

/// `out = g sigmoid(g) u`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn swiglu_forward_kernel<F: Float, N: Size>(
    gate: &Tensor<Vector<F, N>>,
    up: &Tensor<Vector<F, N>>,
    out: &mut Tensor<Vector<F, N>>,
    len: usize,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= len {
        terminate!();
    }
    let g = Vector::<f32, N>::cast_from(gate[i]);
    let u = Vector::<f32, N>::cast_from(up[i]);
    out[i] = Vector::<F, N>::cast_from(g * sigmoid::<N>(g) * u);
}

/// `d_gate = dy u s (1 + g (1 - s))`, `d_up = dy g s` with `s = sigmoid(g)`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn swiglu_backward_kernel<F: Float, N: Size>(
    gate: &Tensor<Vector<F, N>>,
    up: &Tensor<Vector<F, N>>,
    dy: &Tensor<Vector<F, N>>,
    d_gate: &mut Tensor<Vector<F, N>>,
    d_up: &mut Tensor<Vector<F, N>>,
    len: usize,
    #[define(F)] _dtype: StorageType,
) {
    let i = ABSOLUTE_POS;
    if i >= len {
        terminate!();
    }
    let g = Vector::<f32, N>::cast_from(gate[i]);
    let u = Vector::<f32, N>::cast_from(up[i]);
    let d = Vector::<f32, N>::cast_from(dy[i]);
    let s = sigmoid::<N>(g);
    let one = Vector::<f32, N>::new(1.0f32);
    d_gate[i] = Vector::<F, N>::cast_from(d * u * s * (one + g * (one - s)));
    d_up[i] = Vector::<F, N>::cast_from(d * g * s);
}

/// The forward: `gate` and `up` of one shape and float dtype; output contiguous.
pub(crate) fn forward<R: CubeRuntime>(gate: CubeTensor<R>, up: CubeTensor<R>) -> CubeTensor<R> {
    let (gate, up) = (into_contiguous(gate), into_contiguous(up));
    let dtype = gate.dtype;
    let len = gate.meta.shape().num_elements();
    let out = empty_device_contiguous_dtype(
        gate.client.clone(),
        gate.device.clone(),
        gate.meta.shape().clone(),
        dtype,
    );
    let vector = vector_size(&[&gate, &up, &out], dtype, &[len]);
    let (cube_dim, cube_count) = elementwise_launch(&gate, len / vector);
    let address = address_type(&[&gate, &up, &out]);
    let client = gate.client.clone();
    count_launch();
    // SAFETY: units past `len / vector` vectors return before any access.
    unsafe {
        swiglu_forward_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            address,
            vector,
            gate.into_tensor_arg(),
            up.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            len / vector,
            dtype.into(),
        )
    };
    out
}

/// The backward: `(d_gate, d_up)` for `dy`, from the forward's inputs; outputs contiguous.
pub(crate) fn backward<R: CubeRuntime>(
    gate: CubeTensor<R>,
    up: CubeTensor<R>,
    dy: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (gate, up, dy) = (
        into_contiguous(gate),
        into_contiguous(up),
        into_contiguous(dy),
    );
    let dtype = gate.dtype;
    let len = gate.meta.shape().num_elements();
    let empty = || {
        empty_device_contiguous_dtype(
            gate.client.clone(),
            gate.device.clone(),
            gate.meta.shape().clone(),
            dtype,
        )
    };
    let (d_gate, d_up) = (empty(), empty());
    let vector = vector_size(&[&gate, &up, &dy, &d_gate, &d_up], dtype, &[len]);
    let (cube_dim, cube_count) = elementwise_launch(&gate, len / vector);
    let address = address_type(&[&gate, &up, &dy, &d_gate, &d_up]);
    let client = gate.client.clone();
    count_launch();
    // SAFETY: as in `forward`.
    unsafe {
        swiglu_backward_kernel::launch_unchecked::<R>(
            &client,
            cube_count,
            cube_dim,
            address,
            vector,
            gate.into_tensor_arg(),
            up.into_tensor_arg(),
            dy.into_tensor_arg(),
            d_gate.clone().into_tensor_arg(),
            d_up.clone().into_tensor_arg(),
            len / vector,
            dtype.into(),
        )
    };
    (d_gate, d_up)
}
