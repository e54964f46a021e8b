//! Batched greedy generation with a KV cache and left padding, as `transformers`' `generate`
//! with `do_sample=False`.
//!
//! Prompts of different lengths are left-padded so every row's next token sits in the last
//! column; positions count real tokens only (HF: `cumsum(attention_mask) - 1`), so a padded row
//! produces exactly what it would alone.

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use crate::error::{LlamaError, Result};
use crate::model::LlamaForCausalLM;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    /// Upper bound on new tokens per row.
    pub max_new_tokens: usize,
    /// A row stops after producing any of these (not included in its output).
    pub eos_ids: Vec<u32>,
    /// Fills the left padding and the rows that already stopped.
    pub pad_id: u32,
    /// Left-pad prompts to a multiple of this length (1: to the longest prompt). JIT backends
    /// compile and autotune kernels per shape; rounding lengths up keeps the shapes few across
    /// batches at the cost of some masked padding.
    pub pad_to_multiple_of: usize,
}

impl GenerationConfig {
    /// Greedy decoding of up to `max_new_tokens`.
    pub fn new(max_new_tokens: usize, eos_ids: Vec<u32>, pad_id: u32) -> Self {
        Self {
            max_new_tokens,
            eos_ids,
            pad_id,
            pad_to_multiple_of: 1,
        }
    }

    /// Rounds prompt lengths up to a multiple of `multiple` (see the field).
    pub fn with_pad_to_multiple_of(mut self, multiple: usize) -> Self {
        self.pad_to_multiple_of = multiple.max(1);
        self
    }
}

/// Greedily continues every prompt; returns each row's new tokens (without the EOS).
pub fn generate_greedy<B: Backend>(
    model: &LlamaForCausalLM<B>,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
) -> Result<Vec<Vec<u32>>> {
    let batch = prompts.len();
    if batch == 0 || config.max_new_tokens == 0 {
        return Ok(vec![Vec::new(); batch]);
    }
    let longest = check_prompts(model, prompts, config)?;
    let device = model.device();
    // Padding adds masked slots only; positions still count real tokens.
    let prompt_len = longest.next_multiple_of(config.pad_to_multiple_of.max(1));
    let capacity = prompt_len + config.max_new_tokens;
    let (ids, positions, valid) = left_padded(prompts, prompt_len, capacity, config.pad_id);
    let mask = bool_tensor::<B>(&valid, &device);
    let mut next_position: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();

    let mut cache = model.new_cache(batch, capacity);
    let mut input = int_tensor::<B>(ids, [batch, prompt_len], &device);
    let mut pos = int_tensor::<B>(positions, [batch, prompt_len], &device);
    let mut outputs = vec![Vec::new(); batch];
    let mut finished = vec![false; batch];
    for step in 0..config.max_new_tokens {
        let logits = model.forward_cached(input, pos, mask.clone(), &mut cache); // [b, vocab]
        let next = logits.argmax(1).into_data(); // [b, 1]
        let next: Vec<i64> = next
            .convert::<i64>()
            .into_vec()
            .map_err(|e| LlamaError::InvalidInput(format!("argmax readback: {e:?}")))?;
        record(&next, &config.eos_ids, &mut finished, &mut outputs);
        if finished.iter().all(|&f| f) || step + 1 == config.max_new_tokens {
            break;
        }
        // Feed each row's choice (pads for finished rows: their output no longer matters).
        let fed: Vec<i64> = next
            .iter()
            .zip(&finished)
            .map(|(&t, &done)| if done { config.pad_id as i64 } else { t })
            .collect();
        input = int_tensor::<B>(fed, [batch, 1], &device);
        pos = int_tensor::<B>(next_position.clone(), [batch, 1], &device);
        for p in next_position.iter_mut() {
            *p += 1;
        }
    }
    Ok(outputs)
}

/// Refuses empty prompts, token ids outside the vocabulary and generations longer than the
/// model's positions; returns the longest prompt's length.
fn check_prompts<B: Backend>(
    model: &LlamaForCausalLM<B>,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
) -> Result<usize> {
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(LlamaError::InvalidInput(format!("prompt {i} is empty")));
    }
    let vocab = model.config.vocab_size as u32;
    if let Some(id) = prompts.iter().flatten().find(|&&id| id >= vocab) {
        return Err(LlamaError::InvalidInput(format!(
            "token id {id} is outside the vocabulary of {vocab}"
        )));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest + config.max_new_tokens > model.config.max_position_embeddings {
        return Err(LlamaError::InvalidInput(format!(
            "prompt ({longest}) + new tokens ({}) exceed max_position_embeddings {}",
            config.max_new_tokens, model.config.max_position_embeddings
        )));
    }
    Ok(longest)
}

/// The prompts left-padded to `prompt_len` (row i starts with `prompt_len - len_i` pads): their
/// ids and positions `[batch * prompt_len]`, and per row which of the `capacity` cache slots hold
/// real tokens.
fn left_padded(
    prompts: &[Vec<u32>],
    prompt_len: usize,
    capacity: usize,
    pad_id: u32,
) -> (Vec<i64>, Vec<i64>, Vec<Vec<bool>>) {
    let batch = prompts.len();
    let mut ids = Vec::with_capacity(batch * prompt_len);
    let mut positions = Vec::with_capacity(batch * prompt_len);
    let mut valid = Vec::with_capacity(batch);
    for prompt in prompts {
        let pad = prompt_len - prompt.len();
        ids.extend(std::iter::repeat_n(pad_id as i64, pad));
        ids.extend(prompt.iter().map(|&t| t as i64));
        // HF gives padding position 1; it never matters since padded keys are masked.
        positions.extend(std::iter::repeat_n(1, pad));
        positions.extend(0..prompt.len() as i64);
        // The mask spans the whole cache and never changes: slots after the current position
        // are hidden by causality, so generated tokens become visible as they are written.
        valid.push((0..capacity).map(|j| j >= pad).collect::<Vec<_>>());
    }
    (ids, positions, valid)
}

/// Appends each unfinished row's `next` token to its output, or marks the row finished when the
/// token is an EOS.
fn record(next: &[i64], eos_ids: &[u32], finished: &mut [bool], outputs: &mut [Vec<u32>]) {
    for (row, &token) in next.iter().enumerate() {
        if finished[row] {
            continue;
        }
        let token = token as u32;
        if eos_ids.contains(&token) {
            finished[row] = true;
        } else {
            outputs[row].push(token);
        }
    }
}

fn int_tensor<B: Backend>(
    values: Vec<i64>,
    shape: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn bool_tensor<B: Backend>(rows: &[Vec<bool>], device: &B::Device) -> Tensor<B, 2, Bool> {
    let width = rows.first().map_or(0, Vec::len);
    let flat: Vec<bool> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), width]), device)
}
