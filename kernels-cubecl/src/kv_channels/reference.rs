//! The grouped-query channel expansion in burn int ops.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::KvGroups;

/// For each KV channel `kv[i]`, its `groups` query channels at `i * groups + r` (see
/// [`KvGroups`]).
///
/// # Shapes
/// - `kv`: `[k]`; output `[k * groups]`
pub fn query_channels_of<B: Backend>(
    kv: Tensor<B, 1, Int>,
    groups: usize,
    layout: KvGroups,
) -> Tensor<B, 1, Int> {
    let [k] = kv.dims();
    let offsets = Tensor::<B, 1, Int>::arange(0..groups as i64, &kv.device())
        .reshape([1, groups])
        .expand([k, groups]);
    let channels = match layout {
        KvGroups::Heads { head_dim } => {
            let hd = head_dim as i64;
            let head = kv.clone().div_scalar(hd); // m
            let dim = kv.remainder_scalar(hd); // d
                                               // (m * groups + r) * hd + d
            let first_head = head
                .mul_scalar(groups as i64)
                .reshape([k, 1])
                .expand([k, groups]);
            (first_head + offsets).mul_scalar(hd) + dim.reshape([k, 1]).expand([k, groups])
        }
        KvGroups::Consecutive => {
            kv.mul_scalar(groups as i64)
                .reshape([k, 1])
                .expand([k, groups])
                + offsets
        }
    };
    channels.reshape([k * groups])
}
