//! How sparse each block of each layer is: the per-layer ratios a sparsity config resolves to
//! (SPEC 7), and how many channels a ratio keeps (SPEC 4).

/// The two blocks of a decoder layer, as a sparsity config names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Block {
    /// The gated MLP (gate/up rows, down columns).
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
