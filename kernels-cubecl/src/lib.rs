//! Fused `#[cube]` kernels for the LLaMA training step, each with its own backward, and a device
//! top-k for SparseLoRA's channel selection.
//!
//! Every kernel replaces a chain of burn tensor ops that the model runs today. Each of those ops is
//! one pass over HBM (read its inputs, write its output) and, under `Autodiff`, keeps its inputs
//! alive until the backward; the fused kernel reads its inputs once, writes its output once, and
//! keeps only what its hand-written backward needs.
//!
//! | function | fuses | forward passes: today → fused | kept for the backward |
//! | --- | --- | --- | --- |
//! | [`rms_norm`] | cast to f32, square, mean, `+ eps`, sqrt, recip, multiply, cast back, `* weight` | ~9 → 1 | `x`, `weight` (no f32 copies) |
//! | [`swiglu`] | `silu(gate) * up` (sigmoid in f32, casts, two products) | ~8 → 1 | `gate`, `up` |
//! | [`rope`] | two slices, negation, concatenation, `x * cos + rot * sin` (and the copy of a strided `x`) | ~6 → 1 | `cos`, `sin` |
//! | [`causal_softmax`] | `* scale`, cast to f32, causal/padding mask, max, exp, sum, divide, cast back | ~8 → 1 | the probabilities `P`, in the scores' dtype (inside [`grouped_causal_attention`]: only each row's max and `1 / sum`) |
//! | [`top_k`] | `argsort_descending` (a host read-back on burn-cubecl) and `narrow` | read-back + sort + upload → 1 launch | nothing (int output) |
//! | [`gather_padded`] | `select` of a frozen weight's kept rows/columns and `cat` of zeros | 2 → 1 | nothing (frozen weight, no backward) |
//! | [`head_layout`] | burn's copy of a strided `[b, h, s, hd]` view (attention's head transposes) | 1 → 1 (a faster copy) | nothing |
//! | [`gram_norms`] | the SVD estimator's attention channel norms from a Gram matrix: product, multiply, column sum, clamp, square root | 5 → 1 | nothing (no gradient) |
//! | [`kv_channels`] | SparseLoRA's grouped-query channel expansion (KV channels to their query channels): `arange`, division, remainder, products, broadcast adds | ~6 → 1 | nothing (int output) |
//! | [`mlp_scores`] | SparseLoRA's MLP channel score: casts, `silu(gate) * up`, square, column sum, square root | ~11 → 1 | nothing (no gradient) |
//! | [`row_merge`] | the token split's `select` of the dense rows, and their merge back (row mask, `select_assign` into zeros, multiply, add) | 4 full passes → 1 over the moved rows | the row indices |
//!
//! The last matters most for memory: the model's attention builds an f32 `[b, h, s, kv]` score
//! tensor (and an f32 mask of `[b, 1, s, kv]`), and autodiff keeps f32 intermediates of that size
//! for the backward. [`causal_softmax`] reads the scores in their dtype, does the masking and the
//! f32 max/sum reductions in registers and shared memory, and saves only `P` (in the scores'
//! dtype); its backward computes `dS = scale * P * (dP - sum_j dP P)` from `P` alone. The causal
//! part of the mask is never materialised: key positions after the query are not even read.
//!
//! Under `Autodiff`, the backwards that make a gradient also add it to the share another consumer
//! of the same tensor registered before (RMSNorm's backward kernel, the row gather's backward,
//! and through [`gradient_sum`] the GEMM seam's `beta = 1` products in `sparse-ops`), so burn does
//! not add the shares in separate passes.
//!
//! [`top_k`] is SparseLoRA's channel selection (the `k` highest channel scores of a sparse layer).
//! burn-cubecl 0.21 has no device sort: its `argsort` reads the scores back to the host, which
//! synchronises the GPU at every sparse layer of every step. One kernel writes the indices
//! entirely on the device: for the MLP's thousands of channels a radix select (the `k`-th score
//! found from histograms of its bits, then the kept scores ranked among themselves), for fewer
//! channels every score ranked by counting the scores before it; ties go to the lower index and
//! NaN ranks last, in both kernels and the reference alike.
//!
//! # Dispatch
//! Each function is generic over the backend, so model code stays generic. The fused path runs
//! when the backend is one of burn's cubecl backends without fusion (recognised by `TypeId`):
//! `burn::backend::Wgpu` (feature `wgpu`, on by default) and `burn::backend::Cuda` (feature
//! `cuda`), plain or under `burn::backend::Autodiff` with its default checkpointing. On any other
//! backend (Flex, NdArray, a fusion backend, ...), for a dtype other than f32/f16/bf16, or for
//! an input the kernel does not cover (a trainable RMSNorm weight, say), the function runs its
//! burn-tensor reference instead, which is the model's code of today, so results never depend on
//! the path beyond rounding. [`fused_available`] says whether a backend has the fast path; the
//! references are in [`reference`].
//!
//! All kernels do their arithmetic in f32 and round once to the tensors' dtype; the references
//! round after each op in half precision (see each function for the differences this makes).
//!
//! # Tests
//! `tests/kernels.rs` compares every kernel, forward and gradients, with its reference on random
//! inputs (odd sizes, strided views, fully masked attention rows; top-k exactly, with ties and
//! NaN) on burn-wgpu in f32 (lavapipe on a machine without a GPU), and counts launches ([`fused_launches`]) so that a silent fallback
//! fails. `tests/cuda.rs` (feature `cuda`, needs an NVIDIA GPU) does the same on burn-cuda in f32,
//! f16 and bf16 against the f32 reference; on an H200 the fused kernels' bf16 errors were at or
//! below those of the same references run in bf16.
#![warn(missing_docs)]
#![cfg_attr(
    not(any(feature = "wgpu", feature = "cuda")),
    allow(dead_code, unused_imports)
)]

mod common;
mod dispatch;

pub mod adamw;
pub mod allocation;
pub mod attention;
pub mod causal_softmax;
pub mod channel_mask;
pub mod channel_scatter;
pub mod cross_entropy;
pub mod gather_padded;
pub mod gradient_sum;
pub mod gram_norms;
pub mod head_layout;
pub mod kv_channels;
pub mod mlp_scores;
pub mod rms_norm;
pub mod rope;
pub mod row_merge;
pub mod sequence_mean;
pub mod swiglu;
pub mod top_k;

pub use allocation::with_allocations_cached_by_size;
pub use attention::{grouped_causal_attention, BatchedMatmul, BurnMatmul, ProductBlock};
pub use causal_softmax::causal_softmax;
pub use rms_norm::rms_norm;
pub use rope::{rope, rope_grouped};
pub use swiglu::swiglu;
pub use top_k::top_k;

/// The plain burn-tensor versions of the kernels: what the fused functions compute, and what they
/// run on backends without the fast path.
pub mod reference {
    pub use crate::attention::reference::{causal_attention, grouped_causal_attention};
    pub use crate::causal_softmax::reference::{additive_causal_mask, causal_softmax};
    pub use crate::channel_mask::reference::{drop_mask, keep_mask, mask_channels};
    pub use crate::channel_scatter::reference::{
        gather_columns, scatter_add_columns, scatter_columns,
    };
    pub use crate::cross_entropy::reference::row_nll;
    pub use crate::gather_padded::reference::{gather_columns_padded, gather_rows_padded};
    pub use crate::gram_norms::reference::{masked_gram, quadratic_form_norms};
    pub use crate::kv_channels::reference::query_channels_of;
    pub use crate::mlp_scores::reference::{mlp_channel_scores, mlp_channel_scores_of_factors};
    pub use crate::rms_norm::reference::rms_norm;
    pub use crate::rope::reference::{rope, rope_grouped};
    pub use crate::row_merge::reference::{add_rows, gather_rows, replace_rows};
    pub use crate::sequence_mean::reference::sequence_means;
    pub use crate::swiglu::reference::swiglu;
    pub use crate::top_k::reference::top_k;
}

/// Whether the fused kernels run on backend `B` (burn-wgpu or burn-cuda without fusion, plain or
/// under `Autodiff`, as this crate's features allow, unless `SPARSELORA_FUSED=0` is set). `false`
/// means every function of this crate runs its burn-tensor reference on `B`.
pub fn fused_available<B: burn::tensor::backend::Backend>() -> bool {
    dispatch::route::<B>().is_some()
}

/// How many fused kernels (forward or backward) this process has launched: lets a check tell the
/// fast path from a silent fallback to the references.
pub fn fused_launches() -> u64 {
    common::launches()
}
