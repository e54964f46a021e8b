//! What the estimator needs to know of a model, whatever its type ([`ModelLayout`]): its depth,
//! its attention heads, and the name and shape of each projection it factorises
//! ([`EstimatedProjection`]: the output-sliced q/k/v and gate/up of SPEC 4). LLaMA's layout is
//! its `LlamaConfig`; another model implements the trait for its own config.

use llama_burn::{LlamaConfig, LlamaProjection};
use lora::sparse::{Block, SparsityPlan};

/// A projection the estimator factorises: the ones SparseLoRA slices by output channel, named
/// as the fields of `lora::sparse::AttentionProjections` and `MlpProjections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EstimatedProjection {
    /// The attention's `q_proj`.
    Q,
    /// The attention's `k_proj`.
    K,
    /// The attention's `v_proj`.
    V,
    /// The MLP's `gate_proj`.
    Gate,
    /// The MLP's `up_proj`.
    Up,
}

impl EstimatedProjection {
    /// Every one, attention first (the order the selector stacks them in).
    pub const ALL: [Self; 5] = [Self::Q, Self::K, Self::V, Self::Gate, Self::Up];

    /// The block it belongs to.
    pub fn block(self) -> Block {
        match self {
            Self::Q | Self::K | Self::V => Block::Attn,
            Self::Gate | Self::Up => Block::Mlp,
        }
    }

    /// The field name: `q_proj`, `k_proj`, `v_proj`, `gate_proj` or `up_proj`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
        }
    }

    /// Whether `plan` makes its block of `layer` sparse, so that its factors are needed.
    pub fn needed_by(self, plan: &SparsityPlan, layer: usize) -> bool {
        plan.ratio(layer, self.block()) > 0.0
    }
}

impl From<EstimatedProjection> for LlamaProjection {
    fn from(p: EstimatedProjection) -> Self {
        match p {
            EstimatedProjection::Q => Self::Q,
            EstimatedProjection::K => Self::K,
            EstimatedProjection::V => Self::V,
            EstimatedProjection::Gate => Self::Gate,
            EstimatedProjection::Up => Self::Up,
        }
    }
}

/// A model as the estimator sees it: layers of one attention and one gated MLP block, the
/// attention's heads, and where each [`EstimatedProjection`] is. The selector
/// ([`crate::SvdChannelSelector::new`]) and the cache's checks
/// ([`crate::SvdCache::check_covers`], [`crate::SvdCache::load_or_build_with`]) take one.
pub trait ModelLayout {
    /// Decoder layers.
    fn num_layers(&self) -> usize;

    /// `(n_heads, n_kv_heads)`: query heads and key/value heads (equal without grouped-query
    /// attention).
    fn attention_heads(&self) -> (usize, usize);

    /// The name the factors of `which` in `layer` are kept under: the name its weight was given
    /// to [`crate::SvdCache::from_weights`] (a module path, `model.layers.3.self_attn.q_proj`).
    fn projection_path(&self, layer: usize, which: EstimatedProjection) -> String;

    /// `[out, in]` of the weight of `which` in `layer`.
    fn projection_shape(&self, layer: usize, which: EstimatedProjection) -> [usize; 2];
}

impl ModelLayout for LlamaConfig {
    fn num_layers(&self) -> usize {
        self.num_hidden_layers
    }

    fn attention_heads(&self) -> (usize, usize) {
        (self.num_attention_heads, self.n_kv_heads())
    }

    fn projection_path(&self, layer: usize, which: EstimatedProjection) -> String {
        LlamaProjection::from(which).path(layer)
    }

    fn projection_shape(&self, _layer: usize, which: EstimatedProjection) -> [usize; 2] {
        let (d, ff) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads * self.head_dim();
        let kv = self.n_kv_heads() * self.head_dim();
        match which {
            EstimatedProjection::Gate | EstimatedProjection::Up => [ff, d],
            EstimatedProjection::Q => [q, d],
            EstimatedProjection::K | EstimatedProjection::V => [kv, d],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_layout_names_and_shapes_its_projections() {
        let config = LlamaConfig::preset("tiny").unwrap();
        assert_eq!(config.num_layers(), 2);
        assert_eq!(
            config.projection_path(1, EstimatedProjection::Gate),
            "model.layers.1.mlp.gate_proj"
        );
        assert_eq!(
            config.projection_path(0, EstimatedProjection::K),
            "model.layers.0.self_attn.k_proj"
        );
        assert_eq!(
            config.projection_shape(0, EstimatedProjection::Up),
            [176, 64]
        );
        for p in EstimatedProjection::ALL {
            assert_eq!(LlamaProjection::from(p).module_name(), p.name());
            assert_eq!(
                LlamaProjection::from(p).is_attention(),
                p.block() == Block::Attn
            );
        }
    }
}
