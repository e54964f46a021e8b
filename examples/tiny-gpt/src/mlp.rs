//! The feed-forward block: a SiLU-gated MLP, `down(silu(gate(x)) * up(x))`. SparseLoRA's SVD
//! estimator scores MLP channels by `|silu(gate) * up|`, so its MLP selection assumes this gate.

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{backend::Backend, Int, Tensor};
use lora::sparse::{MlpProjections, SparseForward};
use lora::LoraLinear;

/// The MLP of one layer.
#[derive(Module, Debug)]
pub struct GatedMlp<B: Backend> {
    /// `[d_ff, d_model]`
    pub gate_proj: LoraLinear<B>,
    /// `[d_ff, d_model]`
    pub up_proj: LoraLinear<B>,
    /// `[d_model, d_ff]`
    pub down_proj: LoraLinear<B>,
}

impl<B: Backend> GatedMlp<B> {
    /// Random projections, `d_model -> d_ff -> d_model`.
    pub fn new(d_model: usize, d_ff: usize, device: &B::Device) -> Self {
        Self {
            gate_proj: LoraLinear::new(d_model, d_ff, device),
            up_proj: LoraLinear::new(d_model, d_ff, device),
            down_proj: LoraLinear::new(d_ff, d_model, device),
        }
    }

    /// The projections, as a `lora::sparse::ChannelSelector` reads them.
    pub fn projections(&self) -> MlpProjections<'_, B> {
        MlpProjections {
            gate_proj: &self.gate_proj,
            up_proj: &self.up_proj,
            down_proj: &self.down_proj,
        }
    }

    /// # Shapes
    /// - `x`: `[..., d_model]` (normalised), output the same
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let hidden = silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x); // [.., d_ff]
        self.down_proj.forward(hidden)
    }

    /// The block on the intermediate channels `kept` only: gate and up compute those rows of
    /// their weights, down reads those columns; adapters stay dense on top. Token rows on the
    /// dense path of `sparse` run [`Self::forward`].
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`, `kept`: `[k]` in `0..d_ff`, output `[batch, seq, d_model]`
    pub fn forward_sparse(
        &self,
        x: Tensor<B, 3>,
        kept: &Tensor<B, 1, Int>,
        sparse: &SparseForward<'_, B>,
    ) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let drop = sparse.drop_sliced_input_grad;
        let sliced = |x: Tensor<B, 2>| {
            let gate = self.gate_proj.forward_out_sliced(x.clone(), kept, drop); // [n, d_ff]
            let up = self.up_proj.forward_out_sliced(x, kept, drop);
            self.down_proj
                .forward_in_sliced(silu(gate) * up, kept, drop)
        };
        sparse
            .rows(x.reshape([b * s, d]), sliced, |x| self.forward(x))
            .reshape([b, s, d])
    }
}
