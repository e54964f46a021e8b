//! The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{backend::Backend, Tensor};

use crate::config::LlamaConfig;
use crate::projection::Projection;

/// The MLP of one decoder layer.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    /// `[d_ff, d_model]`
    pub gate_proj: Projection<B>,
    /// `[d_ff, d_model]`
    pub up_proj: Projection<B>,
    /// `[d_model, d_ff]`
    pub down_proj: Projection<B>,
}

impl<B: Backend> LlamaMlp<B> {
    /// Randomly initialised MLP of `config`'s shape.
    pub fn new(config: &LlamaConfig, device: &B::Device) -> Self {
        let (d, ff) = (config.hidden_size, config.intermediate_size);
        Self {
            gate_proj: Projection::new(d, ff, device),
            up_proj: Projection::new(d, ff, device),
            down_proj: Projection::new(ff, d, device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` (already normalised), output the same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x); // [b, s, d_ff]
        self.down_proj.forward(hidden)
    }
}
