//! Which backends take the fused kernels, recognised by `TypeId` (burn's `Backend` is `'static`),
//! so the public functions need no bound beyond `Backend` and other backends pay one comparison.

use std::any::{Any, TypeId};

use burn::tensor::backend::Backend;
use burn::tensor::ops::{BoolTensor, FloatTensor, IntTensor};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

/// `burn::backend::Wgpu` without burn's `fusion` feature (as in this workspace).
#[cfg(feature = "wgpu")]
pub(crate) type WgpuCube = CubeBackend<burn::backend::wgpu::WgpuRuntime, f32, i32, u32>;

/// `burn::backend::Cuda` without burn's `fusion` feature (as in this workspace).
#[cfg(feature = "cuda")]
pub(crate) type CudaCube = CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;

/// A backend with the fused path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// [`WgpuCube`].
    #[cfg(feature = "wgpu")]
    Wgpu,
    /// `Autodiff<WgpuCube>`.
    #[cfg(feature = "wgpu")]
    WgpuAutodiff,
    /// [`CudaCube`].
    #[cfg(feature = "cuda")]
    Cuda,
    /// `Autodiff<CudaCube>`.
    #[cfg(feature = "cuda")]
    CudaAutodiff,
}

/// Whether `SPARSELORA_FUSED=0` turned the fused kernels off (the reference path, for A/B runs
/// and the reference side of correctness checks).
fn disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED.get_or_init(|| std::env::var("SPARSELORA_FUSED").is_ok_and(|v| v == "0"))
}

/// The fused route for backend `B`, if it has one.
pub(crate) fn route<B: Backend>() -> Option<Route> {
    if disabled() {
        return None;
    }
    #[allow(unused_variables)]
    let id = TypeId::of::<B>();
    #[cfg(feature = "wgpu")]
    {
        if id == TypeId::of::<WgpuCube>() {
            return Some(Route::Wgpu);
        }
        if id == TypeId::of::<burn::backend::Autodiff<WgpuCube>>() {
            return Some(Route::WgpuAutodiff);
        }
    }
    #[cfg(feature = "cuda")]
    {
        if id == TypeId::of::<CudaCube>() {
            return Some(Route::Cuda);
        }
        if id == TypeId::of::<burn::backend::Autodiff<CudaCube>>() {
            return Some(Route::CudaAutodiff);
        }
    }
    None
}

/// Runs `$plain` (for a plain cubecl backend) or `$autodiff` (for `Autodiff` of one) with the type
/// alias `$C` naming the cubecl backend that `$route` matched.
macro_rules! on_route {
    ($route:expr, $C:ident => plain: $plain:expr, autodiff: $autodiff:expr $(,)?) => {
        match $route {
            #[cfg(feature = "wgpu")]
            $crate::dispatch::Route::Wgpu => {
                type $C = $crate::dispatch::WgpuCube;
                $plain
            }
            #[cfg(feature = "wgpu")]
            $crate::dispatch::Route::WgpuAutodiff => {
                type $C = $crate::dispatch::WgpuCube;
                $autodiff
            }
            #[cfg(feature = "cuda")]
            $crate::dispatch::Route::Cuda => {
                type $C = $crate::dispatch::CudaCube;
                $plain
            }
            #[cfg(feature = "cuda")]
            $crate::dispatch::Route::CudaAutodiff => {
                type $C = $crate::dispatch::CudaCube;
                $autodiff
            }
        }
    };
}
pub(crate) use on_route;

/// Moves a value into the type `T` that it has already been checked to be (by [`route`]).
pub(crate) fn cast<S: 'static, T: 'static>(value: S) -> T {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
    {
        Some(value) => value,
        None => unreachable!("the caller compared the TypeIds"),
    }
}

/// A cubecl backend: its float, int and bool primitives are [`CubeTensor`]s of one runtime.
pub(crate) trait Cube: Backend {
    /// The cubecl runtime.
    type Runtime: CubeRuntime;

    /// The float primitive as the [`CubeTensor`] it is.
    fn float_into(tensor: FloatTensor<Self>) -> CubeTensor<Self::Runtime>;

    /// A [`CubeTensor`] as the float primitive it is.
    fn float_from(tensor: CubeTensor<Self::Runtime>) -> FloatTensor<Self>;

    /// The bool primitive as the [`CubeTensor`] it is.
    fn bool_into(tensor: BoolTensor<Self>) -> CubeTensor<Self::Runtime>;

    /// The int primitive as the [`CubeTensor`] it is.
    fn int_into(tensor: IntTensor<Self>) -> CubeTensor<Self::Runtime>;

    /// A [`CubeTensor`] as the int primitive it is.
    fn int_from(tensor: CubeTensor<Self::Runtime>) -> IntTensor<Self>;
}

impl<R, F, I, BT> Cube for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    type Runtime = R;

    fn float_into(tensor: FloatTensor<Self>) -> CubeTensor<R> {
        tensor
    }

    fn float_from(tensor: CubeTensor<R>) -> FloatTensor<Self> {
        tensor
    }

    fn bool_into(tensor: BoolTensor<Self>) -> CubeTensor<R> {
        tensor
    }

    fn int_into(tensor: IntTensor<Self>) -> CubeTensor<R> {
        tensor
    }

    fn int_from(tensor: CubeTensor<R>) -> IntTensor<Self> {
        tensor
    }
}
