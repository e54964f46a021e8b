//! The model's side of SparseLoRA (SPEC sections 4-6): which channels of the frozen projections a
//! sparse forward computes, and which tokens take the dense path.
//!
//! The model does not know how channels are chosen. It asks a [`ChannelSelector`] once per layer
//! and block, handing it the block's normalised input and the block's projections
//! ([`AttentionProjections`], [`MlpProjections`]: plain [`LoraLinear`]s, so an oracle can run the
//! true projections and a selector needs no model type), and computes the block on the returned
//! channels:
//!
//! - attention: q/k/v output channels (`x W[idx,:]^T`, scattered back into full width so RoPE and
//!   the attention scores see zeros in the dropped channels) and o_proj input channels;
//! - MLP: one set of intermediate channels for gate rows, up rows and down columns, compact end to
//!   end when no projection of the block carries an adapter.
//!
//! A projection carrying a LoRA adapter adds the dense (full-width) adapter output on top of the
//! sliced base output. Gradients through the frozen slices are exact by default
//! ([`SparseForward::drop_sliced_input_grad`] reproduces the reference code's dropped gradient).

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use lora::LoraLinear;

/// The two blocks of a decoder layer, as a sparsity config names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Block {
    /// The SwiGLU MLP (gate/up rows, down columns).
    Mlp,
    /// Self-attention (q/k/v rows, o columns).
    Attn,
}

impl Block {
    /// The name used in configs and tables: `mlp` or `self_attn`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mlp => "mlp",
            Self::Attn => "self_attn",
        }
    }
}

/// Fraction of channels dropped in each block of one layer (0 = dense).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LayerSparsity {
    /// MLP intermediate channels dropped.
    pub mlp: f64,
    /// Attention channels dropped (Q/K and V/O alike).
    pub attn: f64,
}

impl LayerSparsity {
    /// The ratio of `block`.
    pub fn of(&self, block: Block) -> f64 {
        match block {
            Block::Mlp => self.mlp,
            Block::Attn => self.attn,
        }
    }
}

/// Per-layer, per-block sparsity ratios of a whole model; layers not set are dense.
#[derive(Debug, Clone, PartialEq)]
pub struct SparsityPlan {
    layers: Vec<LayerSparsity>,
}

/// A sparsity ratio or layer that the model cannot take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SparsityPlanError {
    /// A layer index past the model's last layer.
    #[error("layer {layer} is out of range: the model has {num_layers} layers (0..={last})", last = num_layers.saturating_sub(1))]
    LayerOutOfRange {
        /// The index asked for.
        layer: usize,
        /// The model's layer count.
        num_layers: usize,
    },
    /// A ratio outside `[0, 1)`.
    #[error("sparsity {ratio} of {block} in layer {layer} is outside [0, 1)")]
    RatioOutOfRange {
        /// The layer.
        layer: usize,
        /// `mlp` or `self_attn`.
        block: &'static str,
        /// The ratio given.
        ratio: f64,
    },
}

impl SparsityPlan {
    /// Every layer dense.
    pub fn dense(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerSparsity::default(); num_layers],
        }
    }

    /// Sets one block of one layer.
    ///
    /// # Errors
    /// A layer out of range or a ratio outside `[0, 1)` (NaN included).
    pub fn set(&mut self, layer: usize, block: Block, ratio: f64) -> Result<(), SparsityPlanError> {
        let num_layers = self.layers.len();
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or(SparsityPlanError::LayerOutOfRange { layer, num_layers })?;
        if !(0.0..1.0).contains(&ratio) {
            return Err(SparsityPlanError::RatioOutOfRange {
                layer,
                block: block.name(),
                ratio,
            });
        }
        match block {
            Block::Mlp => slot.mlp = ratio,
            Block::Attn => slot.attn = ratio,
        }
        Ok(())
    }

    /// The model's layer count.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The ratios of `layer` (dense past the end).
    pub fn layer(&self, layer: usize) -> LayerSparsity {
        self.layers.get(layer).copied().unwrap_or_default()
    }

    /// The ratio of `block` in `layer`.
    pub fn ratio(&self, layer: usize, block: Block) -> f64 {
        self.layer(layer).of(block)
    }

    /// Whether no block of any layer is sparse.
    pub fn is_dense(&self) -> bool {
        self.layers.iter().all(|l| l.mlp == 0.0 && l.attn == 0.0)
    }
}

/// How many of `width` channels a block keeps at sparsity `ratio`: `floor(width * (1 - ratio))`
/// (SPEC 4), at least one.
pub fn kept_channels(width: usize, ratio: f64) -> usize {
    ((width as f64 * (1.0 - ratio)).floor() as usize).clamp(1, width.max(1))
}

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

/// The projections of one grouped-query attention block, as a [`ChannelSelector`] sees them.
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
    /// Key/value heads; query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
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

/// Which flattened token rows (`batch * seq`, row-major) take the dense path and which the sparse
/// one (SPEC 6: the answer tokens stay dense).
///
/// The sparse path runs on every row and the few dense rows are then recomputed densely and
/// written over it (in the paper's workloads 3 or 128 of every 512 tokens are dense). Gathering
/// the sparse rows out and scattering them back would cost two full copies of the activation per
/// block, and burn's row scatter (`select_assign`) runs one thread per column, looping over the
/// rows: 0.8 ms per call at 4096 x 4096 on an H200, 200 ms per LLaMA3-8B step (docs/perf.md).
#[derive(Debug, Clone)]
pub struct TokenSplit<B: Backend> {
    /// The dense rows and two `[n, 1]` f32 columns, 1 on the dense rows and 1 on the sparse rows
    /// (made once per batch, not per block); `None` when no row is dense (no zero-size buffer is
    /// ever allocated: cubecl-cuda 0.10 cannot allocate one, and the failed allocation leaves a
    /// handle that panics its device thread at every later use).
    dense: Option<DenseRows<B>>,
    n_dense: usize,
    n_sparse: usize,
}

impl<B: Backend> TokenSplit<B> {
    /// From a row-major `[batch * seq]` mask, true where the token takes the dense path.
    pub fn from_dense_mask(dense: &[bool], device: &B::Device) -> Self {
        let rows: Vec<i64> = (0..dense.len() as i64)
            .filter(|&i| dense[i as usize])
            .collect();
        let (n_dense, n) = (rows.len(), dense.len());
        let column = |want: bool| -> Tensor<B, 2> {
            let values: Vec<f32> = dense
                .iter()
                .map(|&d| f32::from(u8::from(d == want)))
                .collect();
            Tensor::from_data(TensorData::new(values, [n, 1]), device)
        };
        Self {
            dense: (n_dense > 0).then(|| DenseRows {
                rows: Tensor::from_data(TensorData::new(rows, [n_dense]), device),
                is_dense: column(true),
                is_sparse: column(false),
            }),
            n_dense,
            n_sparse: n - n_dense,
        }
    }

    /// Rows on the dense path.
    pub fn n_dense(&self) -> usize {
        self.n_dense
    }

    /// Rows on the sparse path.
    pub fn n_sparse(&self) -> usize {
        self.n_sparse
    }

    /// `sparse_fn` on the rows of the sparse path and `dense_fn` on those of the dense path of
    /// `x` (`[n, in]`), in row order (`[n, out]`). `sparse_fn` sees every row (see the type's
    /// doc); `dense_fn` only the dense ones.
    pub fn apply(
        &self,
        x: Tensor<B, 2>,
        sparse_fn: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
        dense_fn: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let Some(DenseRows {
            rows, is_sparse, ..
        }) = &self.dense
        else {
            return sparse_fn(x);
        };
        if self.n_sparse == 0 {
            return dense_fn(x);
        }
        let dense = dense_fn(x.clone().select(0, rows.clone()));
        let sparse = sparse_fn(x);
        // Rows of `sparse` kept where the column is 0, replaced by `dense` where it is 1: exact
        // (x * 1 + 0, x * 0 + d), and the scatter moves only the dense rows.
        let keep = is_sparse.clone().cast(sparse.dtype());
        let written = sparse.zeros_like().select_assign(
            0,
            rows.clone(),
            dense,
            burn::tensor::IndexingUpdateOp::Add,
        );
        sparse * keep + written
    }

    /// The factor that zeroes the channels outside `kept` on the sparse rows of an `[n, width]`
    /// activation, in `dtype`: `[n, width]` (dense rows keep every channel), or `[1, width]`
    /// when every row is sparse.
    pub fn channel_keep(
        &self,
        kept: &Tensor<B, 1, Int>,
        width: usize,
        dtype: burn::tensor::DType,
    ) -> Tensor<B, 2> {
        match &self.dense {
            None => kept_channels_row(kept, width, dtype),
            Some(_) if self.n_sparse == 0 => Tensor::ones([1, width], (&kept.device(), dtype)),
            Some(DenseRows { is_dense, .. }) => {
                let n = self.n_dense + self.n_sparse;
                let channels = sparse_ops::channel_mask(kept.clone(), width).reshape([1, width]);
                is_dense
                    .clone()
                    .expand([n, width])
                    .max_pair(channels.expand([n, width]))
                    .cast(dtype)
            }
        }
    }
}

/// `[1, width]` in `dtype`: 1 on the channels `kept`, 0 elsewhere.
fn kept_channels_row<B: Backend>(
    kept: &Tensor<B, 1, Int>,
    width: usize,
    dtype: burn::tensor::DType,
) -> Tensor<B, 2> {
    sparse_ops::channel_mask(kept.clone(), width)
        .reshape([1, width])
        .cast(dtype)
}

/// The dense rows of a [`TokenSplit`].
#[derive(Debug, Clone)]
struct DenseRows<B: Backend> {
    /// Their indices, `[n_dense]`.
    rows: Tensor<B, 1, Int>,
    /// `[n, 1]` f32, 1 on the dense rows.
    is_dense: Tensor<B, 2>,
    /// `[n, 1]` f32, 1 on the sparse rows.
    is_sparse: Tensor<B, 2>,
}

/// What a sparse forward pass needs besides the batch.
pub struct SparseForward<'a, B: Backend> {
    /// Chooses the channels of each layer.
    pub selector: &'a dyn ChannelSelector<B>,
    /// Tokens on the dense path (the answer tokens); `None` sends every token through the sparse
    /// path (as the GLUE configuration does).
    pub split: Option<TokenSplit<B>>,
    /// Reference-compat: no input gradient through the frozen base of a sliced projection that
    /// carries an adapter (the official code's behaviour; only the adapter's input gradient flows).
    pub drop_sliced_input_grad: bool,
}

impl<B: Backend> SparseForward<'_, B> {
    /// Runs `sparse_fn` / `dense_fn` on the token rows of each path (all rows sparse without a
    /// split); see [`TokenSplit::apply`].
    pub(crate) fn rows(
        &self,
        x: Tensor<B, 2>,
        sparse_fn: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
        dense_fn: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        match &self.split {
            Some(split) => split.apply(x, sparse_fn, dense_fn),
            None => sparse_fn(x),
        }
    }

    /// See [`TokenSplit::channel_keep`]; `[1, width]` without a split.
    pub(crate) fn channel_keep(
        &self,
        kept: &Tensor<B, 1, Int>,
        width: usize,
        dtype: burn::tensor::DType,
    ) -> Tensor<B, 2> {
        match &self.split {
            Some(split) => split.channel_keep(kept, width, dtype),
            None => kept_channels_row(kept, width, dtype),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_validates_layers_and_ratios() {
        let mut plan = SparsityPlan::dense(4);
        assert!(plan.is_dense());
        plan.set(3, Block::Mlp, 0.9).unwrap();
        assert_eq!(plan.ratio(3, Block::Mlp), 0.9);
        assert_eq!(plan.ratio(3, Block::Attn), 0.0);
        assert!(!plan.is_dense());
        let err = plan.set(4, Block::Attn, 0.5).unwrap_err();
        assert!(err.to_string().contains("0..=3"), "{err}");
        assert!(plan.set(0, Block::Attn, 1.0).is_err());
        assert!(plan.set(0, Block::Attn, -0.1).is_err());
        assert!(plan.set(0, Block::Attn, f64::NAN).is_err());
    }

    #[test]
    fn kept_channels_floors_and_keeps_one() {
        assert_eq!(kept_channels(14336, 0.99), 143);
        assert_eq!(kept_channels(14336, 0.97), 430);
        assert_eq!(kept_channels(1024, 0.75), 256);
        assert_eq!(kept_channels(176, 0.999), 1);
        assert_eq!(kept_channels(64, 0.0), 64);
    }
}
