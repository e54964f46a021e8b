//! One pre-norm block: two residual lines, attention then MLP (GPT-2's layout), each asking the
//! SparseLoRA hook for its channels when the forward is sparse.

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::{backend::Backend, Bool, Tensor};
use lora::sparse::SparseForward;
use lora::LoraLinear;

use crate::attention::CausalSelfAttention;
use crate::mlp::GatedMlp;

/// A decoder block; its fields are the module path segments (`h.0.attn.q_proj`).
#[derive(Module, Debug)]
pub struct GptBlock<B: Backend> {
    /// Norm before attention.
    pub ln_1: LayerNorm<B>,
    /// Self-attention.
    pub attn: CausalSelfAttention<B>,
    /// Norm before the MLP.
    pub ln_2: LayerNorm<B>,
    /// The gated MLP.
    pub mlp: GatedMlp<B>,
}

impl<B: Backend> GptBlock<B> {
    /// A random block.
    pub fn new(d_model: usize, n_heads: usize, d_ff: usize, device: &B::Device) -> Self {
        Self {
            ln_1: LayerNormConfig::new(d_model).init(device),
            attn: CausalSelfAttention::new(d_model, n_heads, device),
            ln_2: LayerNormConfig::new(d_model).init(device),
            mlp: GatedMlp::new(d_model, d_ff, device),
        }
    }

    /// The block's linear layers with their paths inside the block, in a fixed order: what LoRA
    /// targets and what the PEFT adapter names.
    pub fn linears(&self) -> [(&'static str, &LoraLinear<B>); 7] {
        let (a, m) = (&self.attn, &self.mlp);
        [
            ("attn.q_proj", &a.q_proj),
            ("attn.k_proj", &a.k_proj),
            ("attn.v_proj", &a.v_proj),
            ("attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ]
    }

    /// [`Self::linears`], mutably.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut LoraLinear<B>); 7] {
        let (a, m) = (&mut self.attn, &mut self.mlp);
        [
            ("attn.q_proj", &mut a.q_proj),
            ("attn.k_proj", &mut a.k_proj),
            ("attn.v_proj", &mut a.v_proj),
            ("attn.o_proj", &mut a.o_proj),
            ("mlp.gate_proj", &mut m.gate_proj),
            ("mlp.up_proj", &mut m.up_proj),
            ("mlp.down_proj", &mut m.down_proj),
        ]
    }

    /// `x + attn(ln_1(x))`, then `h + mlp(ln_2(h))`. With `sparse`, each sub-block asks
    /// `sparse.selector` for its channels (layer `layer`), handing it the normalised input
    /// detached, and runs sparse when it gets some.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`, `tokens`: `[batch, seq]`, output as `x`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        tokens: &Tensor<B, 2, Bool>,
        layer: usize,
        sparse: Option<&SparseForward<'_, B>>,
    ) -> Tensor<B, 3> {
        let a = self.ln_1.forward(x.clone());
        let chosen = sparse.and_then(|s| {
            let projections = self.attn.projections();
            let channels =
                s.selector
                    .attention(layer, projections, a.clone().detach(), tokens.clone());
            channels.map(|c| (s, c))
        });
        let attn = match chosen {
            Some((s, channels)) => self.attn.forward_sparse(a, tokens, &channels, s),
            None => self.attn.forward(a, tokens),
        };
        let h = x + attn;

        let m = self.ln_2.forward(h.clone());
        let chosen = sparse.and_then(|s| {
            let projections = self.mlp.projections();
            let kept = s
                .selector
                .mlp(layer, projections, m.clone().detach(), tokens.clone());
            kept.map(|k| (s, k))
        });
        let mlp = match chosen {
            Some((s, kept)) => self.mlp.forward_sparse(m, &kept, s),
            None => self.mlp.forward(m),
        };
        h + mlp
    }
}
