//! Comparisons against reference outputs recorded by other implementations: the HF `transformers`
//! fixtures made by `scripts/make_tiny_llama_fixture.py`, and the float64 forward of the real
//! SmolLM2-135M-Instruct checkpoint recorded in `golden_forward.json`.
//!
//! The tests run these on the CPU; `cargo xtask verify` runs the same code on any backend (the GPU
//! check), so both report from one implementation.

use std::path::Path;

use burn::tensor::{
    activation::log_softmax, backend::Backend, Bool, DType, Int, Tensor, TensorData,
};
use serde::Deserialize;

use crate::error::{LlamaError, Result};
use crate::generate::{generate_greedy, GenerationConfig};
use crate::model::LlamaForCausalLM;
use crate::tokenizer::LlamaTokenizer;

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| LlamaError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| LlamaError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// `max |a - b| / max |b|`: the normwise relative error of `ours` against `expected`.
pub fn relative_error(ours: &[f32], expected: &[f64]) -> f64 {
    let scale = expected
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-30);
    let diff = ours
        .iter()
        .zip(expected)
        .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - b).abs()));
    diff / scale
}

fn to_f32_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec()
        .unwrap_or_default()
}

/// Mean next-token NLL over positions where the token and its successor are both real.
///
/// # Shapes
/// - `logits`: `[batch, seq, vocab]`; `ids`, `mask`: `[batch, seq]`
pub fn mean_next_token_nll<B: Backend>(
    logits: Tensor<B, 3>,
    ids: &[Vec<u32>],
    mask: &[Vec<bool>],
) -> f64 {
    let [b, s, v] = logits.dims();
    let logp = to_f32_vec(log_softmax(logits.cast(DType::F32), 2));
    let (mut total, mut count) = (0.0f64, 0usize);
    for row in 0..b {
        for pos in 0..s.saturating_sub(1) {
            if mask[row][pos] && mask[row][pos + 1] {
                let next = ids[row][pos + 1] as usize;
                total -= logp[(row * s + pos) * v + next] as f64;
                count += 1;
            }
        }
    }
    total / count.max(1) as f64
}

fn batch_tensors<B: Backend>(
    ids: &[Vec<u32>],
    mask: &[Vec<bool>],
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Bool>) {
    let (b, s) = (ids.len(), ids.first().map_or(0, Vec::len));
    let flat_ids: Vec<i64> = ids.iter().flatten().map(|&t| t as i64).collect();
    let flat_mask: Vec<bool> = mask.iter().flatten().copied().collect();
    (
        Tensor::from_data(TensorData::new(flat_ids, [b, s]), device),
        Tensor::from_data(TensorData::new(flat_mask, [b, s]), device),
    )
}

#[derive(Deserialize)]
struct HfFixture {
    input_ids: Vec<Vec<u32>>,
    attention_mask: Vec<Vec<u8>>,
    logits: Vec<Vec<Vec<f64>>>,
    mean_nll: f64,
    layer_inputs_l0: Vec<Vec<f64>>,
    generate: HfGenerate,
}

#[derive(Deserialize)]
struct HfGenerate {
    prompt_ids: Vec<Vec<u32>>,
    prompt_mask: Vec<Vec<u8>>,
    new_tokens: Vec<Vec<u32>>,
}

/// The fixture's input batch: ids `[batch, seq]` and attention mask.
pub fn fixture_batch<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(Tensor<B, 2, Int>, Tensor<B, 2, Bool>)> {
    let fixture: HfFixture = read_json(&dir.join("expected.json"))?;
    let mask = fixture_mask(&fixture);
    Ok(batch_tensors(&fixture.input_ids, &mask, device))
}

fn fixture_mask(fixture: &HfFixture) -> Vec<Vec<bool>> {
    fixture
        .attention_mask
        .iter()
        .map(|r| r.iter().map(|&m| m != 0).collect())
        .collect()
}

/// How our model compares with one `transformers` fixture folder.
#[derive(Debug, Clone)]
pub struct FixtureReport {
    /// Normwise relative error of all logits (padded positions included).
    pub logits_rel_err: f64,
    /// Normwise relative error of the first layer's normalised attention input.
    pub layer_input_rel_err: f64,
    /// Our mean next-token NLL and the fixture's.
    pub nll: (f64, f64),
    /// Our greedy continuation of the left-padded prompts and the fixture's.
    pub generated: (Vec<Vec<u32>>, Vec<Vec<u32>>),
}

/// Runs `model` (loaded from the fixture folder `dir`) on the fixture's batch and compares.
pub fn compare_hf_fixture<B: Backend>(
    model: &LlamaForCausalLM<B>,
    dir: &Path,
) -> Result<FixtureReport> {
    let fixture: HfFixture = read_json(&dir.join("expected.json"))?;
    let device = model.device();
    let mask = fixture_mask(&fixture);
    let (ids, mask_t) = batch_tensors::<B>(&fixture.input_ids, &mask, &device);
    let out = model.forward_full(ids, mask_t, true);
    let expected: Vec<f64> = fixture.logits.iter().flatten().flatten().copied().collect();
    let logits_rel_err = relative_error(&to_f32_vec(out.logits.clone()), &expected);
    let nll = mean_next_token_nll(out.logits, &fixture.input_ids, &mask);

    let l0 = &fixture.layer_inputs_l0;
    let (rows, cols) = (l0.len(), l0.first().map_or(0, Vec::len));
    let ours = out.layer_inputs[0]
        .attn_input
        .clone()
        .slice([0..1, 0..rows, 0..cols]);
    let layer_input_rel_err = relative_error(&to_f32_vec(ours), &l0.concat());

    let gen = &fixture.generate;
    let prompts: Vec<Vec<u32>> = gen
        .prompt_ids
        .iter()
        .zip(&gen.prompt_mask)
        .map(|(ids, m)| {
            ids.iter()
                .zip(m)
                .filter(|(_, &m)| m != 0)
                .map(|(&t, _)| t)
                .collect()
        })
        .collect();
    let max_new = gen.new_tokens.first().map_or(0, Vec::len);
    let pad = model.config.pad_token_id.unwrap_or(0);
    let generated = generate_greedy(
        model,
        &prompts,
        &GenerationConfig::new(max_new, vec![], pad),
    )?;
    Ok(FixtureReport {
        logits_rel_err,
        layer_input_rel_err,
        nll: (nll, fixture.mean_nll),
        generated: (generated, gen.new_tokens.clone()),
    })
}

#[derive(Deserialize)]
struct Golden {
    tokenize: std::collections::BTreeMap<String, GoldenText>,
    forward: std::collections::BTreeMap<String, GoldenForward>,
}

#[derive(Deserialize)]
struct GoldenText {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct GoldenForward {
    mean_nll_next_token: f64,
    logits_last_first8: Vec<f64>,
    last_top10: Vec<(u32, f64)>,
    #[serde(default)]
    greedy_new_ids: Vec<u32>,
}

/// One prompt of the SmolLM2 golden file, ours beside the reference.
#[derive(Debug, Clone)]
pub struct GoldenPromptReport {
    /// Name of the prompt in the golden file.
    pub name: String,
    /// Our mean next-token NLL and the reference's.
    pub nll: (f64, f64),
    /// Normwise relative error of the first 8 logits at the last position.
    pub last_logits_rel_err: f64,
    /// Our top-10 ids at the last position and the reference's.
    pub top10: (Vec<u32>, Vec<u32>),
    /// Our greedy continuation and the reference's (empty when none was recorded).
    pub greedy: (Vec<u32>, Vec<u32>),
}

/// Token ids for each recorded text: ours beside the reference's.
pub type TokenizerReport = Vec<(String, Vec<u32>, Vec<u32>)>;

/// Encodes every recorded text with `tokenizer` (no special tokens added, as recorded).
pub fn compare_golden_tokenizer(
    tokenizer: &LlamaTokenizer,
    golden: &Path,
) -> Result<TokenizerReport> {
    let golden: Golden = read_json(golden)?;
    golden
        .tokenize
        .into_iter()
        .map(|(name, t)| Ok((name, tokenizer.encode(&t.text, false)?, t.ids)))
        .collect()
}

/// Runs every recorded prompt through `model` and compares with the float64 reference.
pub fn compare_golden_forward<B: Backend>(
    model: &LlamaForCausalLM<B>,
    golden: &Path,
) -> Result<Vec<GoldenPromptReport>> {
    let golden: Golden = read_json(golden)?;
    let device = model.device();
    let mut reports = Vec::new();
    for (name, expected) in golden.forward {
        let ids = golden
            .tokenize
            .get(&name)
            .ok_or_else(|| {
                LlamaError::InvalidInput(format!("golden prompt `{name}` has no token ids"))
            })?
            .ids
            .clone();
        let mask = vec![vec![true; ids.len()]];
        let (ids_t, mask_t) = batch_tensors::<B>(std::slice::from_ref(&ids), &mask, &device);
        let logits = model.forward(ids_t, mask_t);
        let [_, s, v] = logits.dims();
        let last = to_f32_vec(logits.clone().slice([0..1, s - 1..s, 0..v]));
        let nll = mean_next_token_nll(logits, std::slice::from_ref(&ids), &mask);
        let mut order: Vec<u32> = (0..v as u32).collect();
        order.sort_by(|&a, &b| last[b as usize].total_cmp(&last[a as usize]));
        let greedy = if expected.greedy_new_ids.is_empty() {
            Vec::new()
        } else {
            let config = GenerationConfig::new(expected.greedy_new_ids.len(), vec![], 0);
            generate_greedy(model, std::slice::from_ref(&ids), &config)?.remove(0)
        };
        reports.push(GoldenPromptReport {
            name,
            nll: (nll, expected.mean_nll_next_token),
            last_logits_rel_err: relative_error(&last[..8], &expected.logits_last_first8),
            top10: (
                order[..10].to_vec(),
                expected.last_top10.iter().map(|(id, _)| *id).collect(),
            ),
            greedy: (greedy, expected.greedy_new_ids),
        });
    }
    Ok(reports)
}
