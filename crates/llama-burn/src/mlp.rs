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
        self.forward_with(x, None)
    }

    /// `residual + self.forward(x)`, the add done by down's product
    /// ([`LoraLinear::forward_onto`]).
    ///
    /// # Shapes
    /// - `x`, `residual` and output: `[..., d_model]`
    pub fn forward_onto<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Tensor<B, D>,
    ) -> Tensor<B, D> {
        self.forward_with(x, Some(residual))
    }

    fn forward_with<const D: usize>(
        &self,
        x: Tensor<B, D>,
        residual: Option<Tensor<B, D>>,
    ) -> Tensor<B, D> {
        let mut dims = x.dims();
        let d = dims[D - 1];
        let rows: usize = dims[..D - 1].iter().product();
        // One `[rows, d]` tensor read by gate and up (one autodiff node), so that their input
        // gradients are summed inside their GEMMs: `kernels_cubecl::gradient_sum`.
        let x = sparse_ops::reshaped(x, [rows, d]);
        let hidden = swiglu(self.gate_proj.forward(x.clone()), self.up_proj.forward(x)); // [rows, d_ff]
        match residual {
            Some(residual) => self.down_proj.forward_onto(hidden, residual),
            None => {
                dims[D - 1] = self.down_proj.dims().0;
                sparse_ops::reshaped(self.down_proj.forward(hidden), dims)
            }
        }
    }

    /// The MLP on the intermediate channels `idx` only (SPEC 5). With no adapter on any of its
    /// projections the block stays compact end to end (gate/up produce `k` channels, padded with
    /// zero channels to [`sparse_ops::padded_width`], down reads them); otherwise gate/up are
    /// sliced and scattered to full width so their adapters can add on top, and down's base reads
    /// only `idx` while its adapter reads everything.
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
        // The compact products run on the kept width rounded up to a multiple of 8 (aligned
        // GEMM layouts): the extra channels are zero in gate and up, so silu(0) * 0 = 0 in the
        // hidden state, and meet zero columns of down; the output and dX are unchanged.
        let width = sparse_ops::padded_width(idx.dims()[0]);
        let sparse_rows = |x: Tensor<B, 2>| {
            if compact {
                let (gate, up) = (self.gate_proj.weight.val(), self.up_proj.weight.val());
                // [n, width], zero from channel k on
                let gate =
                    sparse_ops::linear_out_sliced_padded(x.clone(), gate, idx.clone(), width);
                let up = sparse_ops::linear_out_sliced_padded(x, up, idx.clone(), width);
                sparse_ops::linear_in_compact_padded(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unused_selector::UnusedSelector;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    type TestBackend = burn::backend::Autodiff<burn::backend::Flex>;

    #[test]
    fn compact_sparse_mlp_at_padded_width_matches_unpadded_products() {
        let device = Default::default();
        let config = LlamaConfig::preset("tiny").unwrap();
        let mlp = LlamaMlp::<TestBackend>::new(&config, &device);
        let (d, ff) = (config.hidden_size, config.intermediate_size);
        // 37 of the 176 channels, scrambled: padded to 40.
        let kept: Vec<i64> = (0..37).map(|i| (i * 53 + 11) % ff as i64).collect();
        let idx = Tensor::<TestBackend, 1, Int>::from_data(
            TensorData::new(kept.clone(), [kept.len()]),
            &device,
        );
        let x =
            Tensor::<TestBackend, 3>::random([2, 5, d], Distribution::Normal(0.0, 1.0), &device);
        let dy =
            Tensor::<TestBackend, 3>::random([2, 5, d], Distribution::Normal(0.0, 1.0), &device);
        let sparse = SparseForward {
            selector: &UnusedSelector,
            split: None,
            drop_sliced_input_grad: false,
        };

        let x1 = x.clone().require_grad();
        let y = mlp.forward_sparse(x1.clone(), &idx, &sparse);
        let dx = x1.grad(&(y.clone() * dy.clone()).sum().backward()).unwrap();

        let x2 = x.require_grad();
        let gate =
            sparse_ops::linear_out_sliced(x2.clone(), mlp.gate_proj.weight.val(), idx.clone());
        let up = sparse_ops::linear_out_sliced(x2.clone(), mlp.up_proj.weight.val(), idx.clone());
        let y_ref =
            sparse_ops::linear_in_compact(swiglu(gate, up), mlp.down_proj.weight.val(), idx);
        let dx_ref = x2.grad(&(y_ref.clone() * dy).sum().backward()).unwrap();

        y.into_data()
            .assert_approx_eq::<f32>(&y_ref.into_data(), Tolerance::default());
        dx.into_data()
            .assert_approx_eq::<f32>(&dx_ref.into_data(), Tolerance::default());
    }
}
