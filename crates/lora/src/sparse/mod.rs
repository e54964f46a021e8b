//! The model's side of SparseLoRA (SPEC sections 4-6), for any model whose frozen projections are
//! [`LoraLinear`](crate::LoraLinear)s: which channels a sparse forward computes, and which tokens
//! take the dense path.
//!
//! The model does not know how channels are chosen. It asks a [`ChannelSelector`] once per layer
//! and block, handing it the block's normalised input and the block's projections
//! ([`AttentionProjections`], [`MlpProjections`]: plain `LoraLinear`s, so an oracle can run the
//! true projections and a selector needs no model type), and computes the block on the returned
//! channels:
//!
//! - attention: q/k/v output channels (`x W[idx,:]^T`, scattered back into full width so RoPE and
//!   the attention scores see zeros in the dropped channels) and o_proj input channels;
//! - MLP: one set of intermediate channels for gate rows, up rows and down columns, compact end to
//!   end when no projection of the block carries an adapter.
//!
//! A projection carrying a LoRA adapter adds the dense (full-width) adapter output on top of the
//! sliced base output (`LoraLinear::forward_out_sliced` and its siblings). Gradients through the
//! frozen slices are exact by default ([`SparseForward::drop_sliced_input_grad`] reproduces the
//! reference code's dropped gradient).
//!
//! - [`SparsityPlan`]: per layer and [`Block`], the fraction of channels dropped;
//!   [`kept_channels`] how many a block keeps.
//! - [`ChannelSelector`]: the hook a model calls per block (the SVD estimator implements it in
//!   `svd-estimator`).
//! - [`SparseForward`]: what a sparse forward pass needs besides the batch: the selector and the
//!   [`TokenSplit`] of the rows that stay dense.

mod forward;
mod plan;
mod selector;

pub use crate::channel_keep::ChannelKeep;
pub use forward::{SparseForward, TokenSplit};
pub use plan::{kept_channels, Block, LayerSparsity, SparsityPlan, SparsityPlanError};
pub use selector::{AttentionProjections, AttnChannels, ChannelSelector, MlpProjections};
