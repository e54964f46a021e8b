//! The hook a sparse forward calls once per layer and block: [`ChannelSelector`], the projections
//! it is shown ([`AttentionProjections`], [`MlpProjections`]) and the channels it returns
//! ([`AttnChannels`] for attention, one index tensor for the MLP).

use burn::tensor::{backend::Backend, Bool, Int, Tensor};

use crate::linear::LoraLinear;

/// The channels one attention block computes (indices into each projection's channel axis).
#[derive(Debug, Clone)]
pub struct AttnChannels<B: Backend> {
    /// q_proj output channels, `[k_q]` in `0..n_heads * head_dim`.
    pub q: Tensor<B, 1, Int>,
    /// k_proj output channels, `[k_kv]` in `0..n_kv_heads * head_dim`.
    pub k: Tensor<B, 1, Int>,
    /// v_proj output channels, `[k_kv]` in `0..n_kv_heads * head_dim`.
    pub v: Tensor<B, 1, Int>,
    /// o_proj input channels, `[k_o]` in `0..n_heads * head_dim`.
    pub o: Tensor<B, 1, Int>,
}

/// The projections of one (grouped-query) attention block, as a [`ChannelSelector`] sees them.
#[derive(Debug, Clone, Copy)]
pub struct AttentionProjections<'a, B: Backend> {
    /// `[n_heads * head_dim, d_model]`
    pub q_proj: &'a LoraLinear<B>,
    /// `[n_kv_heads * head_dim, d_model]`
    pub k_proj: &'a LoraLinear<B>,
    /// `[n_kv_heads * head_dim, d_model]`
    pub v_proj: &'a LoraLinear<B>,
    /// `[d_model, n_heads * head_dim]`
    pub o_proj: &'a LoraLinear<B>,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (`n_heads` without grouped-query attention); query head `h` reads KV
    /// head `h / (n_heads / n_kv_heads)`.
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// The projections of one gated MLP block (`down(act(gate(x)) * up(x))`), as a
/// [`ChannelSelector`] sees them.
#[derive(Debug, Clone, Copy)]
pub struct MlpProjections<'a, B: Backend> {
    /// `[d_ff, d_model]`
    pub gate_proj: &'a LoraLinear<B>,
    /// `[d_ff, d_model]`
    pub up_proj: &'a LoraLinear<B>,
    /// `[d_model, d_ff]`
    pub down_proj: &'a LoraLinear<B>,
}

/// Chooses, per layer and batch, the channels a sparse forward computes. Implemented by the SVD
/// estimator (and its oracle mode) in the `svd-estimator` crate; the model only calls it.
///
/// Both methods receive the block's normalised input, detached from the autodiff graph, and
/// `tokens`, true for real (non-padding) positions. Returning `None` keeps the block dense.
pub trait ChannelSelector<B: Backend> {
    /// The attention channels of `layer`.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`, `tokens`: `[batch, seq]`
    fn attention(
        &self,
        layer: usize,
        attn: AttentionProjections<'_, B>,
        x: Tensor<B, 3>,
        tokens: Tensor<B, 2, Bool>,
    ) -> Option<AttnChannels<B>>;

    /// The MLP intermediate channels of `layer`, `[k]` in `0..d_ff`.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`, `tokens`: `[batch, seq]`
    fn mlp(
        &self,
        layer: usize,
        mlp: MlpProjections<'_, B>,
        x: Tensor<B, 3>,
        tokens: Tensor<B, 2, Bool>,
    ) -> Option<Tensor<B, 1, Int>>;
}
