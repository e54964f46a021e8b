//! One unit per output index: `out[i * groups + r]` from `kv[i]`.

use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::KvGroups;
use crate::common::{address_type, count_launch, elementwise_launch};

/// `out[i * groups + r] = (kv[i] / head_dim * groups + r) * head_dim + kv[i] % head_dim` for
/// `heads`, else `kv[i] * groups + r`.
#[cube(launch_unchecked, address_type = "dynamic")]
#[allow(clippy::too_many_arguments)]
fn kv_channels_kernel<I: Int>(
    kv: &Tensor<I>,
    out: &mut Tensor<I>,
    total: usize,
    groups: usize,
    head_dim: usize,
    #[comptime] heads: bool,
    #[define(I)] _dtype: StorageType,
) {
    let at = ABSOLUTE_POS;
    if at >= total {
        terminate!();
    }
    let (i, r) = (at / groups, at % groups);
    let c = usize::cast_from(kv[i]);
    let mut channel = c * groups + r;
    if heads {
        channel = (c / head_dim * groups + r) * head_dim + c % head_dim;
    }
    out[at] = I::cast_from(channel);
}

/// `kv`: `[k]` of an int dtype; output `[k * groups]` in that dtype, contiguous.
pub(crate) fn forward<R: CubeRuntime>(
    kv: CubeTensor<R>,
    groups: usize,
    layout: KvGroups,
) -> CubeTensor<R> {
    let kv = into_contiguous(kv);
    let total = kv.meta.shape()[0] * groups;
    let out = empty_device_contiguous_dtype(
        kv.client.clone(),
        kv.device.clone(),
        Shape::new([total]),
        kv.dtype,
    );
    let (heads, head_dim) = match layout {
        KvGroups::Heads { head_dim } => (true, head_dim.max(1)),
        KvGroups::Consecutive => (false, 1),
    };
    let (dim, count) = elementwise_launch(&out, total);
    let address = address_type(&[&kv, &out]);
    let (client, dtype) = (kv.client.clone(), kv.dtype);
    count_launch();
    // SAFETY: `at < total` indexes `out`; `i = at / groups < k` indexes `kv`.
    unsafe {
        kv_channels_kernel::launch_unchecked::<R>(
            &client,
            count,
            dim,
            address,
            kv.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            total,
            groups,
            head_dim,
            heads,
            dtype.into(),
        )
    };
    out
}
