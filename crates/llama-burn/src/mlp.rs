//! The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.

use burn::module::Module;
use burn::tensor::{backend::Backend, Int, Tensor};
use kernels_cubecl::swiglu;
use lora::sparse::{MlpProjections, SparseForward};
use lora::LoraLinear;

use crate::config::LlamaConfig;

/// The MLP of one decoder layer.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    /// `[d_ff, d_model]`
    pub gate_proj: LoraLinear<B>,
    /// `[d_ff, d_model]`
    pub up_proj: LoraLinear<B>,
    /// `[d_model, d_ff]`
    pub down_proj: LoraLinear<B>,
}

impl<B: Backend> LlamaMlp<B> {
    /// Randomly initialised MLP of `config`'s shape.
    pub fn new(config: &LlamaConfig, device: &B::Device) -> Self {
        let (d, ff) = (config.hidden_size, config.intermediate_size);
        Self {
            gate_proj: LoraLinear::new(d, ff, device),
            up_proj: LoraLinear::new(d, ff, device),
            down_proj: LoraLinear::new(ff, d, device),
        }
    }

    /// The projections, as a channel selector reads them.
    pub fn projections(&self) -> MlpProjections<'_, B> {
        MlpProjections {
            gate_proj: &self.gate_proj,
            up_proj: &self.up_proj,
            down_proj: &self.down_proj,
        }
    }

    /// # Shapes
    /// - `x`: `[..., d_model]` (already normalised), output the same
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let hidden = swiglu(self.gate_proj.forward(x.clone()), self.up_proj.forward(x)); // [.., d_ff]
        self.down_proj.forward(hidden)
    }

    /// The MLP on the intermediate channels `idx` only (SPEC 5). With no adapter on any of its
    /// projections the block stays compact end to end (gate/up produce `k` channels, down reads
    /// them); otherwise gate/up are sliced and scattered to full width so their adapters can add
    /// on top, and down's base reads only `idx` while its adapter reads everything.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`, `idx`: `[k]` in `0..d_ff`, output `[batch, seq, d_model]`
    pub fn forward_sparse(
        &self,
        x: Tensor<B, 3>,
        idx: &Tensor<B, 1, Int>,
        sparse: &SparseForward<'_, B>,
    ) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let drop = sparse.drop_sliced_input_grad;
        let compact = [&self.gate_proj, &self.up_proj, &self.down_proj]
            .iter()
            .all(|p| p.lora.is_none());
        let sparse_rows = |x: Tensor<B, 2>| {
            if compact {
                let gate = sparse_ops::linear_out_sliced(
                    x.clone(),
                    self.gate_proj.weight.val(),
                    idx.clone(),
                );
                let up = sparse_ops::linear_out_sliced(x, self.up_proj.weight.val(), idx.clone());
                sparse_ops::linear_in_compact(
                    swiglu(gate, up),
                    self.down_proj.weight.val(),
                    idx.clone(),
                )
            } else {
                let gate = self.gate_proj.forward_out_sliced(x.clone(), idx, drop);
                let up = self.up_proj.forward_out_sliced(x, idx, drop);
                self.down_proj
                    .forward_in_sliced(swiglu(gate, up), idx, drop)
            }
        };
        sparse
            .rows(x.reshape([b * s, d]), sparse_rows, |x| self.forward(x))
            .reshape([b, s, d])
    }
}
