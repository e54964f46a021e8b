//! What SparseLoRA's SVD estimator needs of [`TinyGpt`]: its layout (depth, heads, where each
//! estimated projection is, by module path) and the named frozen weights to factorise.

use burn::tensor::{backend::Backend, Tensor};
use lora::sparse::Block;
use lora::LoraLinear;
use svd_estimator::{EstimatedProjection, ModelLayout};

use crate::model::{TinyGpt, TinyGptConfig};

impl ModelLayout for TinyGptConfig {
    fn num_layers(&self) -> usize {
        self.n_layers
    }

    fn attention_heads(&self) -> (usize, usize) {
        (self.n_heads, self.n_heads)
    }

    fn projection_path(&self, layer: usize, which: EstimatedProjection) -> String {
        let block = match which.block() {
            Block::Attn => "attn",
            Block::Mlp => "mlp",
        };
        format!("h.{layer}.{block}.{}", which.name())
    }

    fn projection_shape(&self, _layer: usize, which: EstimatedProjection) -> [usize; 2] {
        match which.block() {
            Block::Attn => [self.d_model, self.d_model],
            Block::Mlp => [self.d_ff, self.d_model],
        }
    }
}

impl<B: Backend> TinyGpt<B> {
    /// The projection `which` of block `layer`.
    ///
    /// # Panics
    /// If `layer` is past the last block.
    pub fn estimated(&self, layer: usize, which: EstimatedProjection) -> &LoraLinear<B> {
        let block = &self.h[layer];
        match which {
            EstimatedProjection::Q => &block.attn.q_proj,
            EstimatedProjection::K => &block.attn.k_proj,
            EstimatedProjection::V => &block.attn.v_proj,
            EstimatedProjection::Gate => &block.mlp.gate_proj,
            EstimatedProjection::Up => &block.mlp.up_proj,
        }
    }

    /// The frozen `[out, in]` weights the estimator factorises, under the layout's names: the
    /// input of `svd_estimator::SvdCache::from_weights`.
    pub fn estimator_weights(&self) -> Vec<(String, Tensor<B, 2>)> {
        let layers = 0..self.config.n_layers;
        let all = layers.flat_map(|layer| EstimatedProjection::ALL.map(|p| (layer, p)));
        all.map(|(layer, p)| {
            let path = self.config.projection_path(layer, p);
            (path, self.estimated(layer, p).weight.val())
        })
        .collect()
    }
}
