//! A small GPT-style causal language model written in burn, sharing nothing with this
//! repository's LLaMA: token and position embeddings, pre-norm blocks (LayerNorm, causal
//! attention, a gated MLP), a final LayerNorm and an output head. Its linear layers are
//! `lora::LoraLinear`s, the one type it takes from the library.

use burn::config::Config;
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig};
use burn::tensor::{backend::Backend, Bool, Int, Tensor};
use lora::sparse::SparseForward;
use lora::{LoraConfig, LoraLinear};

use crate::block::GptBlock;

/// The architecture.
#[derive(Config, Debug)]
pub struct TinyGptConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub d_model: usize,
    /// Decoder blocks.
    pub n_layers: usize,
    /// Attention heads (`d_model` must be a multiple).
    pub n_heads: usize,
    /// MLP width.
    pub d_ff: usize,
    /// Longest sequence (positions are learned).
    #[config(default = 64)]
    pub max_seq_len: usize,
}

/// The model. Module paths follow the fields: `h.{i}.attn.q_proj`, `h.{i}.mlp.up_proj`.
#[derive(Module, Debug)]
pub struct TinyGpt<B: Backend> {
    /// Token embeddings, `[vocab, d_model]`.
    pub wte: Embedding<B>,
    /// Position embeddings, `[max_seq_len, d_model]`.
    pub wpe: Embedding<B>,
    /// The blocks.
    pub h: Vec<GptBlock<B>>,
    /// Final norm.
    pub ln_f: LayerNorm<B>,
    /// `[vocab, d_model]`; never adapted (PEFT's `all-linear` leaves the output layer out too).
    pub lm_head: LoraLinear<B>,
    /// The architecture.
    #[module(skip)]
    pub config: TinyGptConfig,
    /// The hyper-parameters of the attached adapters (`crate::adapters`).
    #[module(skip)]
    pub lora_config: Option<LoraConfig>,
}

impl TinyGptConfig {
    /// A model with random weights drawn now from the backend's generator (seed it first for a
    /// reproducible model).
    ///
    /// # Panics
    /// If `d_model` is not a multiple of `n_heads`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> TinyGpt<B> {
        assert_eq!(
            self.d_model % self.n_heads,
            0,
            "d_model {} is not a multiple of n_heads {}",
            self.d_model,
            self.n_heads
        );
        let d = self.d_model;
        let model = TinyGpt {
            wte: EmbeddingConfig::new(self.vocab_size, d).init(device),
            wpe: EmbeddingConfig::new(self.max_seq_len, d).init(device),
            h: (0..self.n_layers)
                .map(|_| GptBlock::new(d, self.n_heads, self.d_ff, device))
                .collect(),
            ln_f: LayerNormConfig::new(d).init(device),
            lm_head: LoraLinear::new(d, self.vocab_size, device),
            config: self.clone(),
            lora_config: None,
        };
        // burn draws parameters lazily, at first use: draw them now, in a fixed order.
        model.visit(&mut DrawNow);
        model
    }
}

/// Reads every parameter once, which draws a lazily initialised one.
struct DrawNow;

impl<B: Backend> ModuleVisitor<B> for DrawNow {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
    }
}

impl<B: Backend> TinyGpt<B> {
    /// Logits of every position, dense or through SparseLoRA's hook (`sparse`). Positions count
    /// from 0 at the first (possibly padded) token, so `seq` may not exceed `max_seq_len`.
    ///
    /// # Shapes
    /// - `input_ids`, `tokens`: `[batch, seq]` (`tokens` false on padding)
    /// - output: `[batch, seq, vocab]`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        tokens: Tensor<B, 2, Bool>,
        sparse: Option<&SparseForward<'_, B>>,
    ) -> Tensor<B, 3> {
        let [b, s] = input_ids.dims();
        let positions = Tensor::<B, 1, Int>::arange(0..s as i64, &input_ids.device())
            .reshape([1, s])
            .repeat_dim(0, b); // [b, s]
        let mut x = self.wte.forward(input_ids) + self.wpe.forward(positions); // [b, s, d]
        for (layer, block) in self.h.iter().enumerate() {
            x = block.forward(x, &tokens, layer, sparse);
        }
        self.lm_head.forward(self.ln_f.forward(x))
    }
}
