//! Building a [`LlamaForCausalLM`] from a llama.cpp GGUF file (architecture `llama`).
//!
//! Quantised blocks are dequantised to f32 on load (this is a training library: the frozen base
//! runs in f32/bf16, not in the quantised format). llama.cpp's converter permutes q/k rows for its
//! interleaved RoPE; they are permuted back so the weights use HF's rotate-half layout, which is
//! what our RoPE and SparseLoRA's channel indices assume.

use std::path::Path;

use burn::module::Param;
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use crate::config::{LlamaConfig, TokenIds};
use crate::error::{LlamaError, Result};
use crate::gguf::{unpermute_rope_rows, GgufFile, GgufValue};
use crate::model::LlamaForCausalLM;

/// Reads the architecture from the GGUF metadata (`llama.*` keys).
pub fn gguf_config(file: &GgufFile) -> Result<LlamaConfig> {
    let meta = file.metadata();
    let arch = meta
        .get("general.architecture")
        .and_then(GgufValue::as_str)
        .unwrap_or("");
    if arch != "llama" {
        return Err(LlamaError::UnsupportedConfig(format!(
            "{}: GGUF architecture `{arch}` (only `llama`)",
            file.path().display()
        )));
    }
    let int = |key: &str| -> Result<usize> {
        meta.get(key)
            .and_then(GgufValue::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| {
                LlamaError::UnsupportedConfig(format!(
                    "{}: missing GGUF key {key}",
                    file.path().display()
                ))
            })
    };
    let float = |key: &str| meta.get(key).and_then(GgufValue::as_f64);
    let id = |key: &str| meta.get(key).and_then(GgufValue::as_u64).map(|v| v as u32);
    let n_heads = int("llama.attention.head_count")?;
    let hidden = int("llama.embedding_length")?;
    let vocab = match int("llama.vocab_size") {
        Ok(v) => v,
        Err(_) => meta
            .get("tokenizer.ggml.tokens")
            .and_then(GgufValue::as_array)
            .map(<[GgufValue]>::len)
            .ok_or_else(|| LlamaError::UnsupportedConfig("GGUF has no vocabulary size".into()))?,
    };
    let config = LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: int("llama.feed_forward_length")?,
        num_hidden_layers: int("llama.block_count")?,
        num_attention_heads: n_heads,
        num_key_value_heads: Some(int("llama.attention.head_count_kv").unwrap_or(n_heads)),
        head_dim: Some(int("llama.rope.dimension_count").unwrap_or(hidden / n_heads)),
        rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: float("llama.rope.freq_base").unwrap_or(10_000.0),
        rope_scaling: None,
        max_position_embeddings: int("llama.context_length").unwrap_or(4096),
        tie_word_embeddings: file.tensor_info("output.weight").is_err(),
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_id: id("tokenizer.ggml.eos_token_id").map(TokenIds::One),
        pad_token_id: id("tokenizer.ggml.padding_token_id"),
        hidden_act: "silu".into(),
        attention_bias: false,
        mlp_bias: false,
    };
    config.validate()?;
    Ok(config)
}

/// Loads a GGUF checkpoint, dequantised and cast to `dtype`.
pub fn load_gguf<B: Backend>(
    path: &Path,
    dtype: DType,
    device: &B::Device,
) -> Result<LlamaForCausalLM<B>> {
    if !path.is_file() {
        return Err(LlamaError::MissingFile {
            path: path.to_owned(),
            hint: "GGUF checkpoint (`cargo xtask fetch-model smollm2-135m` downloads one)".into(),
        });
    }
    let file = GgufFile::open(path)?;
    let config = gguf_config(&file)?;
    let mut model = config.init::<B>(device);
    let reader = Reader {
        file: &file,
        dtype,
        device,
    };
    let (nq, nkv) = (config.num_attention_heads, config.n_kv_heads());
    reader.load(
        &mut model.model.embed_tokens.weight,
        "token_embd.weight",
        None,
    )?;
    reader.load(&mut model.model.norm.weight, "output_norm.weight", None)?;
    if let Some(head) = model.lm_head.as_mut() {
        reader.load(&mut head.weight, "output.weight", None)?;
    }
    for (i, layer) in model.model.layers.iter_mut().enumerate() {
        let name = |part: &str| format!("blk.{i}.{part}.weight");
        reader.load(&mut layer.input_layernorm.weight, &name("attn_norm"), None)?;
        reader.load(
            &mut layer.post_attention_layernorm.weight,
            &name("ffn_norm"),
            None,
        )?;
        let attn = &mut layer.self_attn;
        reader.load(&mut attn.q_proj.weight, &name("attn_q"), Some(nq))?;
        reader.load(&mut attn.k_proj.weight, &name("attn_k"), Some(nkv))?;
        reader.load(&mut attn.v_proj.weight, &name("attn_v"), None)?;
        reader.load(&mut attn.o_proj.weight, &name("attn_output"), None)?;
        let mlp = &mut layer.mlp;
        reader.load(&mut mlp.gate_proj.weight, &name("ffn_gate"), None)?;
        reader.load(&mut mlp.up_proj.weight, &name("ffn_up"), None)?;
        reader.load(&mut mlp.down_proj.weight, &name("ffn_down"), None)?;
    }
    Ok(model)
}

struct Reader<'a, B: Backend> {
    file: &'a GgufFile,
    dtype: DType,
    device: &'a B::Device,
}

impl<B: Backend> Reader<'_, B> {
    /// Replaces `target` with the tensor `name`, its rows un-permuted for RoPE when `rope_heads`
    /// is given, after checking the shape against the one the config implies.
    fn load<const D: usize>(
        &self,
        target: &mut Param<Tensor<B, D>>,
        name: &str,
        rope_heads: Option<usize>,
    ) -> Result<()> {
        let shape = self.file.tensor_info(name)?.row_major_shape();
        let expected = target.lazy_shape().to_vec();
        if shape != expected {
            return Err(LlamaError::ShapeMismatch {
                path: self.file.path().to_owned(),
                tensor: name.into(),
                expected,
                found: shape,
            });
        }
        let mut values = self.file.tensor_f32(name)?;
        if let Some(n_head) = rope_heads {
            values = unpermute_rope_rows(&values, shape[0], shape[1], n_head);
        }
        let tensor =
            Tensor::<B, D>::from_data(TensorData::new(values, shape), (self.device, DType::F32));
        *target = Param::from_tensor(tensor.cast(self.dtype));
        Ok(())
    }
}
