//! The LLaMA causal LM (HF `LlamaForCausalLM`): embed, decoder blocks, final norm, LM head.
//!
//! Module fields carry the HF checkpoint names (`model.layers.3.self_attn.q_proj.weight`), so
//! safetensors checkpoints load without remapping.

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::{backend::Backend, Bool, DType, Int, Tensor};

use kernels_cubecl::reference::additive_causal_mask;
use lora::sparse::SparseForward;
use lora::{LoraConfig, LoraLinear};

use crate::attention::{AttentionMask, LlamaAttention};
use crate::cache::{KvCache, LayerKvCache};
use crate::config::LlamaConfig;
use crate::mlp::LlamaMlp;
use crate::norm::RmsNorm;
use crate::rope::{RopeAngles, RotaryEmbedding};

/// One pre-norm decoder block: two residual lines.
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer<B: Backend> {
    /// Attention block.
    pub self_attn: LlamaAttention<B>,
    /// Feed-forward block.
    pub mlp: LlamaMlp<B>,
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
}

/// The normalised inputs of one layer's two blocks: what SparseLoRA's estimator reads.
#[derive(Debug, Clone)]
pub struct LayerInputs<B: Backend> {
    /// `input_layernorm(x)`, the input of q/k/v: `[batch, seq, d_model]`.
    pub attn_input: Tensor<B, 3>,
    /// `post_attention_layernorm(h)`, the input of gate/up: `[batch, seq, d_model]`.
    pub mlp_input: Tensor<B, 3>,
}

impl<B: Backend> LlamaDecoderLayer<B> {
    fn new(config: &LlamaConfig, device: &B::Device) -> Self {
        let (d, eps) = (config.hidden_size, config.rms_norm_eps);
        Self {
            self_attn: LlamaAttention::new(config, device),
            mlp: LlamaMlp::new(config, device),
            input_layernorm: RmsNorm::new(d, eps, device),
            post_attention_layernorm: RmsNorm::new(d, eps, device),
        }
    }

    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`, output the same
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &RopeAngles<B>,
        mask: AttentionMask<B>,
        cache: Option<&mut LayerKvCache<B>>,
        inputs: Option<&mut Vec<LayerInputs<B>>>,
        sparse: Option<LayerSparseStep<'_, B>>,
    ) -> Tensor<B, 3> {
        let attn_input = self.input_layernorm.forward(x.clone());
        let channels = sparse.as_ref().and_then(|s| {
            let x = attn_input.clone().detach();
            s.forward
                .selector
                .attention(s.layer, self.self_attn.projections(), x, s.tokens.clone())
        });
        // Each block's output is added onto the residual stream by its last product.
        let h = match (&sparse, channels) {
            (Some(s), Some(channels)) => self.self_attn.forward_sparse(
                attn_input.clone(),
                x,
                rope,
                mask,
                &channels,
                s.forward,
            ),
            _ => self
                .self_attn
                .forward(attn_input.clone(), x, rope, mask, cache),
        };
        let mlp_input = self.post_attention_layernorm.forward(h.clone());
        if let Some(inputs) = inputs {
            inputs.push(LayerInputs {
                attn_input,
                mlp_input: mlp_input.clone(),
            });
        }
        let channels = sparse.as_ref().and_then(|s| {
            let x = mlp_input.clone().detach();
            s.forward
                .selector
                .mlp(s.layer, self.mlp.projections(), x, s.tokens.clone())
        });
        match (&sparse, channels) {
            (Some(s), Some(idx)) => self.mlp.forward_sparse_onto(mlp_input, &idx, s.forward, h),
            _ => self.mlp.forward_onto(mlp_input, h),
        }
    }
}

/// One layer's view of a sparse forward pass.
struct LayerSparseStep<'a, B: Backend> {
    forward: &'a SparseForward<'a, B>,
    layer: usize,
    /// `[batch, seq]`, true for real tokens.
    tokens: Tensor<B, 2, Bool>,
}

/// The decoder stack (HF `LlamaModel`).
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    /// `[vocab, d_model]`
    pub embed_tokens: Embedding<B>,
    /// Decoder blocks.
    pub layers: Vec<LlamaDecoderLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
}

/// A LLaMA-family causal language model.
#[derive(Module, Debug)]
pub struct LlamaForCausalLM<B: Backend> {
    /// The decoder stack.
    pub model: LlamaModel<B>,
    /// `[vocab, d_model]`; `None` when tied to `model.embed_tokens`.
    pub lm_head: Option<LoraLinear<B>>,
    /// The architecture this model was built from.
    #[module(skip)]
    pub config: LlamaConfig,
    #[module(skip)]
    rope: RotaryEmbedding,
    /// The LoRA hyper-parameters of the attached adapters (see `adapters.rs`).
    #[module(skip)]
    pub(crate) lora_config: Option<LoraConfig>,
}

// The constructors live beside the model they build, so that `config.rs` (which every block
// reads) does not import the model: no import cycle inside the crate.
impl LlamaConfig {
    /// Builds a model whose weights are initialised lazily, on first use: loaders overwrite them
    /// without ever drawing random numbers.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LlamaForCausalLM<B> {
        LlamaForCausalLM::new(self, device)
    }

    /// Builds a model with random weights drawn now, in a fixed order, from the backend's
    /// generator: seed the backend first (`B::seed`) and the model is reproducible, whatever
    /// else later draws random numbers (lazy weights would take their values from whatever the
    /// generator holds at their first use).
    pub fn init_random<B: Backend>(&self, device: &B::Device) -> LlamaForCausalLM<B> {
        struct Materialize;
        impl<B: Backend> burn::module::ModuleVisitor<B> for Materialize {
            fn visit_float<const D: usize>(
                &mut self,
                param: &burn::module::Param<burn::tensor::Tensor<B, D>>,
            ) {
                let _ = param.val();
            }
        }
        let model = self.init::<B>(device);
        burn::module::Module::visit(&model, &mut Materialize);
        model
    }
}

/// Everything one forward pass can return.
#[derive(Debug, Clone)]
pub struct ForwardOutput<B: Backend> {
    /// `[batch, seq, vocab]`
    pub logits: Tensor<B, 3>,
    /// Per layer, the normalised block inputs (when asked for).
    pub layer_inputs: Vec<LayerInputs<B>>,
}

impl<B: Backend> LlamaForCausalLM<B> {
    /// A randomly initialised model of `config`'s shape; see [`LlamaConfig::init`].
    pub fn new(config: &LlamaConfig, device: &B::Device) -> Self {
        let layers = (0..config.num_hidden_layers)
            .map(|_| LlamaDecoderLayer::new(config, device))
            .collect();
        let embed_tokens = EmbeddingConfig::new(config.vocab_size, config.hidden_size).init(device);
        let lm_head = (!config.tie_word_embeddings)
            .then(|| LoraLinear::new(config.hidden_size, config.vocab_size, device));
        Self {
            model: LlamaModel {
                embed_tokens,
                layers,
                norm: RmsNorm::new(config.hidden_size, config.rms_norm_eps, device),
            },
            lm_head,
            config: config.clone(),
            rope: RotaryEmbedding::new(config),
            lora_config: None,
        }
    }

    /// The float dtype of the weights (that of the embedding matrix).
    pub fn dtype(&self) -> DType {
        self.model.embed_tokens.weight.val().dtype()
    }

    /// The device the weights live on.
    pub fn device(&self) -> B::Device {
        self.model.embed_tokens.weight.device()
    }

    /// Casts every base weight to `dtype` (e.g. bf16 on a GPU, f32 on CPU); LoRA adapters stay
    /// f32.
    pub fn with_dtype(self, dtype: DType) -> Self {
        lora::cast_base(self, dtype)
    }

    /// The training/scoring forward over a padded batch.
    ///
    /// Positions run `0..seq` in every row, as in `transformers` when no `position_ids` are given;
    /// padded keys are masked out.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]`
    /// - `attention_mask`: `[batch, seq]`, true for real tokens, false for padding
    /// - output: logits `[batch, seq, vocab]`
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Bool>,
    ) -> Tensor<B, 3> {
        self.forward_full(input_ids, attention_mask, false).logits
    }

    /// [`Self::forward`], optionally also returning every layer's normalised block inputs.
    pub fn forward_full(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Bool>,
        collect_layer_inputs: bool,
    ) -> ForwardOutput<B> {
        let positions = training_positions(&input_ids);
        let mut layer_inputs = Vec::new();
        let hidden = self.run(
            input_ids,
            positions,
            attention_mask,
            None,
            collect_layer_inputs.then_some(&mut layer_inputs),
            None,
        );
        ForwardOutput {
            logits: self.lm_head(hidden),
            layer_inputs,
        }
    }

    /// The training forward without the LM head: final-normed hidden states `[batch, seq, d_model]`.
    ///
    /// With [`Self::lm_head`] on gathered rows this lets a loss compute logits only where it needs them (the
    /// answer tokens), which on a 128k vocabulary is most of a step's memory and much of its time.
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Bool>,
    ) -> Tensor<B, 3> {
        let positions = training_positions(&input_ids);
        self.run(input_ids, positions, attention_mask, None, None, None)
    }

    /// [`Self::forward_hidden`] under SparseLoRA: every layer asks `sparse.selector` for its
    /// channels and computes its blocks on them (dense where the selector says `None`), with the
    /// token rows of `sparse.split`'s dense path kept dense.
    ///
    /// # Shapes
    /// - as [`Self::forward_hidden`]; `sparse.split` covers `batch * seq` rows, row-major
    pub fn forward_hidden_sparse(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Bool>,
        sparse: &SparseForward<'_, B>,
    ) -> Tensor<B, 3> {
        let positions = training_positions(&input_ids);
        self.run(
            input_ids,
            positions,
            attention_mask,
            None,
            None,
            Some(sparse),
        )
    }

    /// The LM head (tied to the embedding when the config says so).
    ///
    /// # Shapes
    /// - `hidden`: `[..., d_model]` (e.g. `[batch, seq, d]`, or `[n, d]` gathered rows)
    /// - output: `[..., vocab]`
    pub fn lm_head<const D: usize>(&self, hidden: Tensor<B, D>) -> Tensor<B, D> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => sparse_ops::linear(hidden, self.model.embed_tokens.weight.val()),
        }
    }

    /// One step of incremental decoding: appends `input_ids` to `cache` and returns the logits
    /// of the last position of each row.
    ///
    /// # Shapes
    /// - `input_ids`, `positions`: `[batch, chunk]`
    /// - `attention_mask`: `[batch, cache.capacity()]`, false for (left) padding; slots not
    ///   written yet are hidden by causality whatever their value
    /// - output: `[batch, vocab]`
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Bool>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 2> {
        let [_, width] = attention_mask.dims();
        assert_eq!(
            width,
            cache.capacity(),
            "decoding mask must span the whole KV cache"
        );
        let hidden = self.run(
            input_ids,
            positions,
            attention_mask,
            Some(cache),
            None,
            None,
        );
        let [b, s, d] = hidden.dims();
        let last = hidden.slice([0..b, s - 1..s, 0..d]);
        self.lm_head(last).reshape([b, self.config.vocab_size])
    }

    /// An empty KV cache able to hold `capacity` positions for `batch` rows.
    pub fn new_cache(&self, batch: usize, capacity: usize) -> KvCache<B> {
        let shape = [
            batch,
            self.config.n_kv_heads(),
            capacity,
            self.config.head_dim(),
        ];
        let (dtype, device) = (self.dtype(), self.device());
        KvCache {
            layers: (0..self.config.num_hidden_layers)
                .map(|_| LayerKvCache::new(shape, dtype, &device))
                .collect(),
        }
    }

    /// Embeds, runs every block and the final norm; returns `[batch, seq, d_model]`.
    fn run(
        &self,
        input_ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Bool>,
        mut cache: Option<&mut KvCache<B>>,
        mut layer_inputs: Option<&mut Vec<LayerInputs<B>>>,
        sparse: Option<&SparseForward<'_, B>>,
    ) -> Tensor<B, 3> {
        let sparse = sparse.map(|forward| (forward, attention_mask.clone()));
        let [_, seq] = input_ids.dims();
        let mask = match cache.as_ref() {
            None => AttentionMask::Causal(attention_mask),
            Some(c) => AttentionMask::Additive(additive_causal_mask(attention_mask, c.len(), seq)),
        };
        let rope = self.rope.angles(positions, self.dtype());
        let mut x = self.model.embed_tokens.forward(input_ids); // [b, s, d]
        for (i, layer) in self.model.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(
                x,
                &rope,
                mask.clone(),
                layer_cache,
                layer_inputs.as_deref_mut(),
                sparse.as_ref().map(|(forward, tokens)| LayerSparseStep {
                    forward,
                    layer: i,
                    tokens: tokens.clone(),
                }),
            );
        }
        self.model.norm.forward(x)
    }
}

/// Positions `0..seq` in every row, as `transformers` uses when no `position_ids` are given.
fn training_positions<B: Backend>(input_ids: &Tensor<B, 2, Int>) -> Tensor<B, 2, Int> {
    let [batch, seq] = input_ids.dims();
    Tensor::<B, 1, Int>::arange(0..seq as i64, &input_ids.device())
        .unsqueeze::<2>()
        .expand([batch, seq])
}
