//! Causal multi-head self-attention, GPT-2 style (no rotary embedding, no grouped KV heads), with
//! its four projections as `lora::LoraLinear`s so that LoRA and SparseLoRA can reach them.

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{backend::Backend, Bool, Tensor, TensorData};
use lora::sparse::{AttentionProjections, AttnChannels, SparseForward};
use lora::LoraLinear;

/// The additive mask value of a key a query may not read (finite, so a fully padded row is a
/// uniform average instead of NaN).
const MASKED: f32 = -1e9;

/// The attention block of one layer.
#[derive(Module, Debug)]
pub struct CausalSelfAttention<B: Backend> {
    /// `[d_model, d_model]`
    pub q_proj: LoraLinear<B>,
    /// `[d_model, d_model]`
    pub k_proj: LoraLinear<B>,
    /// `[d_model, d_model]`
    pub v_proj: LoraLinear<B>,
    /// `[d_model, d_model]`
    pub o_proj: LoraLinear<B>,
    /// Heads.
    pub n_heads: usize,
}

impl<B: Backend> CausalSelfAttention<B> {
    /// Random projections for `n_heads` heads over `d_model` channels.
    pub fn new(d_model: usize, n_heads: usize, device: &B::Device) -> Self {
        Self {
            q_proj: LoraLinear::new(d_model, d_model, device),
            k_proj: LoraLinear::new(d_model, d_model, device),
            v_proj: LoraLinear::new(d_model, d_model, device),
            o_proj: LoraLinear::new(d_model, d_model, device),
            n_heads,
        }
    }

    /// The projections and head layout, as a `lora::sparse::ChannelSelector` reads them.
    pub fn projections(&self) -> AttentionProjections<'_, B> {
        AttentionProjections {
            q_proj: &self.q_proj,
            k_proj: &self.k_proj,
            v_proj: &self.v_proj,
            o_proj: &self.o_proj,
            n_heads: self.n_heads,
            n_kv_heads: self.n_heads,
            head_dim: self.q_proj.dims().0 / self.n_heads,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, seq, d_model]` (normalised), `tokens`: `[batch, seq]` (false on padding)
    /// - output: `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<B, 3>, tokens: &Tensor<B, 2, Bool>) -> Tensor<B, 3> {
        let q = self.q_proj.forward(x.clone());
        let k = self.k_proj.forward(x.clone());
        let v = self.v_proj.forward(x);
        self.o_proj.forward(self.attend(q, k, v, tokens))
    }

    /// The block on `channels` only: q/k/v keep their chosen output channels (zeros elsewhere)
    /// and o_proj reads its chosen input channels, in masked-dense form
    /// (`LoraLinear::forward_out_masked` / `forward_in_masked`, the same values and gradients as
    /// the sliced products); token rows on the dense path of `sparse` keep every channel.
    ///
    /// # Shapes
    /// - as [`Self::forward`]
    pub fn forward_sparse(
        &self,
        x: Tensor<B, 3>,
        tokens: &Tensor<B, 2, Bool>,
        channels: &AttnChannels<B>,
        sparse: &SparseForward<'_, B>,
    ) -> Tensor<B, 3> {
        let [b, s, d] = x.dims();
        let (dtype, drop) = (x.dtype(), sparse.drop_sliced_input_grad);
        let rows = x.reshape([b * s, d]);
        let masked = |p: &LoraLinear<B>, kept| {
            let keep = sparse.channel_keep(kept, d, dtype);
            p.forward_out_masked(rows.clone(), &keep, drop)
                .reshape([b, s, d])
        };
        let q = masked(&self.q_proj, &channels.q);
        let k = masked(&self.k_proj, &channels.k);
        let v = masked(&self.v_proj, &channels.v);
        let heads = self.attend(q, k, v, tokens).reshape([b * s, d]);
        let keep = sparse.channel_keep(&channels.o, d, dtype);
        self.o_proj
            .forward_in_masked(heads, &keep, drop)
            .reshape([b, s, d])
    }

    /// Softmax attention of projected q/k/v (`[b, s, d]`): query `i` reads key `j <= i` on a real
    /// token. Returns the heads side by side, `[b, s, d]`.
    fn attend(
        &self,
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        tokens: &Tensor<B, 2, Bool>,
    ) -> Tensor<B, 3> {
        let [b, s, d] = q.dims();
        let (h, hd, device) = (self.n_heads, d / self.n_heads, q.device());
        let split = |t: Tensor<B, 3>| t.reshape([b, s, h, hd]).swap_dims(1, 2); // [b, h, s, hd]
        let (q, k, v) = (split(q), split(k), split(v));
        let scores = q.matmul(k.swap_dims(2, 3)) / (hd as f64).sqrt(); // [b, h, s, s]
        let future: Vec<f32> = (0..s * s)
            .map(|i| if i % s > i / s { MASKED } else { 0.0 })
            .collect();
        let causal = Tensor::<B, 4>::from_data(TensorData::new(future, [1, 1, s, s]), &device);
        let padding = (tokens.clone().float() - 1.0).reshape([b, 1, 1, s]) * -MASKED; // [b, 1, 1, s]
        let weights = softmax(scores + causal + padding, 3);
        weights
            .matmul(v) // [b, h, s, hd]
            .swap_dims(1, 2)
            .reshape([b, s, d])
    }
}
