//! Task accuracy by batched greedy generation (SPEC section 8): each record's evaluation prompt is
//! continued greedily with the KV cache, the answer is extracted from the text after
//! "### Response:" by the task's rule, and compared with the record's `answer`.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use llama_burn::generate::{generate_greedy, GenerationConfig};
use llama_burn::{LlamaForCausalLM, LlamaTokenizer};
use serde::Serialize;

use crate::data::Record;
use crate::error::{DataError, Result};
use crate::eval_extract::Prediction;
use crate::task::Task;
use crate::template::eval_prompt;

/// The accuracy of one task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskAccuracy {
    /// Task name (`boolq`, `gsm8k`, ...).
    pub task: String,
    /// Records answered correctly.
    pub correct: usize,
    /// Records evaluated.
    pub total: usize,
    /// `correct / total`.
    pub accuracy: f64,
    /// The first few generations with their gold answers, for inspection.
    pub samples: Vec<(String, String)>,
    /// How often each answer was predicted (`none` when nothing could be extracted). A model that
    /// learnt the answer format but not the task predicts one label for everything.
    pub predictions: BTreeMap<String, usize>,
    /// The accuracy of always answering the most frequent gold answer (commonsense tasks; 0 for
    /// math): the bar a classifier must clear to have learnt more than the label prior.
    pub majority_baseline: f64,
}

/// How the evaluation prompt's last characters are tokenized.
///
/// Both prompts end in `### Response:\n` and a 16-space indent. In training the response follows
/// that indent directly, and a BPE tokenizer splits the indent's last space off into the
/// response's first token (`"\n" + 15 spaces`, `" the"`); the evaluation prompt alone ends in a
/// `"\n" + 16 spaces` token instead, one the model never saw there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum PromptSeam {
    /// Tokenize the prompt as training did at that point
    /// ([`LlamaTokenizer::encode_for_continuation`]): the model continues from the tokens it was
    /// trained to continue from. The prompt text is the same.
    #[default]
    Training,
    /// Tokenize the prompt alone, as the reference evaluation code does (its token ids exactly).
    Reference,
}

/// Evaluates `model` on `records` of `task`, `batch_size` prompts at a time.
pub fn evaluate<B: Backend>(
    model: &LlamaForCausalLM<B>,
    tokenizer: &LlamaTokenizer,
    task: Task,
    records: &[Record],
    batch_size: usize,
    seam: PromptSeam,
) -> Result<TaskAccuracy> {
    let extraction = task.extraction().ok_or_else(|| {
        DataError::UnknownTask(format!(
            "{} is a training set, not an evaluation task",
            task.name()
        ))
    })?;
    let eos = model.config.eos_ids();
    let pad = model.config.pad_id();
    // Prompt lengths rounded up to 32 keep the number of distinct shapes (and so of kernel
    // compilations on JIT backends) small over a whole test set.
    let config = GenerationConfig::new(task.max_new_tokens(), eos, pad).with_pad_to_multiple_of(32);
    let (mut correct, mut samples) = (0, Vec::new());
    let mut predictions = BTreeMap::new();
    for chunk in records.chunks(batch_size.max(1)) {
        let prompts: Vec<String> = chunk
            .iter()
            .map(|r| eval_prompt(&r.instruction, &r.input))
            .collect();
        // Each prompt's ids and the length of the prompt text they spell.
        let (ids, covered): (Vec<Vec<u32>>, Vec<usize>) = prompts
            .iter()
            .map(|p| match seam {
                PromptSeam::Training => tokenizer.encode_for_continuation(p, true),
                PromptSeam::Reference => tokenizer.encode(p, true).map(|ids| (ids, p.len())),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        let outputs = generate_greedy(model, &ids, &config)?;
        for (((prompt, covered), out), record) in
            prompts.iter().zip(covered).zip(outputs).zip(chunk)
        {
            // Extraction reads the text after "### Response:", so score prompt + continuation
            // (the continuation starts where the prompt's ids stopped).
            let generated = format!("{}{}", &prompt[..covered], tokenizer.decode(&out, true)?);
            let prediction = extraction.extract(&generated);
            if extraction.is_correct(&prediction, &record.answer) {
                correct += 1;
            }
            if !matches!(prediction, Prediction::Number(_)) {
                let label = match prediction {
                    Prediction::Label(label) => label,
                    _ => "none".to_owned(),
                };
                *predictions.entry(label).or_insert(0) += 1;
            }
            if samples.len() < 5 {
                samples.push((
                    crate::eval_extract::response_text(&generated)
                        .trim()
                        .to_owned(),
                    record.answer.clone(),
                ));
            }
        }
    }
    let total = records.len();
    Ok(TaskAccuracy {
        task: task.name().to_owned(),
        correct,
        total,
        accuracy: correct as f64 / total.max(1) as f64,
        samples,
        predictions,
        majority_baseline: majority_baseline(task, records),
    })
}

/// The share of the most frequent gold answer among `records` (0 for math tasks, whose answers
/// are numbers, not classes).
pub fn majority_baseline(task: Task, records: &[Record]) -> f64 {
    if task.is_math() || records.is_empty() {
        return 0.0;
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in records {
        *counts.entry(r.answer.as_str()).or_insert(0) += 1;
    }
    counts.values().copied().max().unwrap_or(0) as f64 / records.len() as f64
}
