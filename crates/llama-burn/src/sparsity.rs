//! The model's side of SparseLoRA (SPEC sections 4-6). The types live in `lora::sparse`, below
//! this crate, so that any model built from `lora::LoraLinear`s can take the same hook; they are
//! re-exported here so that `llama_burn::sparsity::...` paths keep working.
//!
//! [`LlamaForCausalLM::forward_hidden_sparse`](crate::LlamaForCausalLM::forward_hidden_sparse)
//! asks the [`ChannelSelector`] once per layer and block and computes the block on the channels
//! returned (see `LlamaAttention::forward_sparse` and `LlamaMlp::forward_sparse`).

pub use lora::sparse::{
    kept_channels, AttentionProjections, AttnChannels, Block, ChannelSelector, LayerSparsity,
    MlpProjections, SparseForward, SparsityPlan, SparsityPlanError, TokenSplit,
};
