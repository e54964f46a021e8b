//! Training examples as token ids and labels, the way LLM-Adapters `finetune.py` and the SparseLoRA
//! reference (`spft/data.py` `tokenize`, `generate_and_tokenize_prompt_*`) build them with
//! `train_on_inputs=False`:
//!
//! 1. `ids` = the full text ([`training_text`]: prompt followed by response) encoded in one piece,
//!    with the tokenizer's special tokens (the LLaMA tokenizers' BOS; SmolLM2's adds none), and
//!    cut to its first `cutoff_len` tokens (HF `truncation=True, max_length=cutoff_len`).
//! 2. EOS is appended when the last id is not already EOS and `ids.len() < cutoff_len`, so a cut
//!    example ends without EOS and no example exceeds `cutoff_len`.
//! 3. `prompt_len` = the length of the prompt alone ([`training_prompt`], same special tokens,
//!    same cut), and `labels` = `ids` with the first `prompt_len` set to [`IGNORE_INDEX`].
//!
//! Encoding the text in one piece, rather than concatenating separately encoded prompt and
//! response, is the reference's choice; it matters at the seam, where the prompt ends in 16
//! spaces. A byte-level BPE (SmolLM2, LLaMA-3) encodes the prompt alone with all 16 spaces in its
//! last token(s), but in the full text the last space joins the response's first word (` the`),
//! so `prompt_len` can in general differ from where the prompt really ends in `ids` (unmasking a
//! whitespace token or masking the response's first token). With SmolLM2's tokenizer the counts
//! agree (`"\n" + 16 spaces` alone, `"\n" + 15 spaces` then `" the"` in the full text), so the mask
//! ends exactly where the response begins; the test `seam_between_prompt_and_response_on_smollm2`
//! pins this. We keep the reference's rule: it is what the paper's numbers were trained with.

use llama_burn::LlamaTokenizer;

use crate::data::{Record, ResponseField};
use crate::error::{DataError, Result};
use crate::template::{training_prompt, training_text};

/// The label of a position left out of the loss (PyTorch's `CrossEntropyLoss` default).
pub const IGNORE_INDEX: i64 = -100;

/// LLM-Adapters' and the reference's `cutoff_len`.
pub const DEFAULT_CUTOFF_LEN: usize = 256;

/// How training examples are tokenised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizeConfig {
    /// The most tokens an example keeps (EOS included).
    pub cutoff_len: usize,
    /// The end-of-sequence id appended to each example that fits.
    pub eos_id: u32,
    /// Whether the tokenizer's own special tokens (a LLaMA BOS) are added, as HF's
    /// `tokenizer(prompt)` does.
    pub add_special_tokens: bool,
}

impl TokenizeConfig {
    /// `cutoff_len` 256 and the tokenizer's special tokens, with `eos_id`.
    pub fn new(eos_id: u32) -> Self {
        Self {
            cutoff_len: DEFAULT_CUTOFF_LEN,
            eos_id,
            add_special_tokens: true,
        }
    }

    /// The same with another `cutoff_len`.
    pub fn with_cutoff_len(mut self, cutoff_len: usize) -> Self {
        self.cutoff_len = cutoff_len;
        self
    }
}

/// One tokenised training example.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrainExample {
    /// Token ids, at most `cutoff_len`.
    pub input_ids: Vec<u32>,
    /// One label per id: the id itself, or [`IGNORE_INDEX`] on the prompt.
    pub labels: Vec<i64>,
}

impl TrainExample {
    /// An example whose first `prompt_len` tokens are prompt (no loss) and the rest response.
    pub fn with_prompt_len(input_ids: Vec<u32>, prompt_len: usize) -> Self {
        let labels = input_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                if i < prompt_len {
                    IGNORE_INDEX
                } else {
                    i64::from(id)
                }
            })
            .collect();
        Self { input_ids, labels }
    }

    /// The number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether it holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// The number of positions that count in the loss.
    pub fn num_targets(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// Tokenises a prompt/response pair by the rule in the module documentation; `prompt` must be
/// a prefix of `full`.
///
/// # Errors
/// [`crate::DataError::Tokenizer`] if the tokenizer fails.
pub fn tokenize_pair(
    tokenizer: &LlamaTokenizer,
    prompt: &str,
    full: &str,
    config: &TokenizeConfig,
) -> Result<TrainExample> {
    let cutoff = config.cutoff_len;
    let mut input_ids = tokenizer.encode(full, config.add_special_tokens)?;
    input_ids.truncate(cutoff);
    if input_ids.last() != Some(&config.eos_id) && input_ids.len() < cutoff {
        input_ids.push(config.eos_id);
    }
    let prompt_len = tokenizer
        .encode(prompt, config.add_special_tokens)?
        .len()
        .min(input_ids.len());
    Ok(TrainExample::with_prompt_len(input_ids, prompt_len))
}

/// Tokenises one record: [`training_text`] with `field` as the response.
///
/// # Errors
/// [`crate::DataError::Tokenizer`] if the tokenizer fails.
pub fn tokenize_record(
    tokenizer: &LlamaTokenizer,
    record: &Record,
    field: ResponseField,
    config: &TokenizeConfig,
) -> Result<TrainExample> {
    let prompt = training_prompt(&record.instruction, &record.input);
    let full = training_text(&record.instruction, &record.input, record.response(field));
    tokenize_pair(tokenizer, &prompt, &full, config)
}

/// Tokenises every record, in order.
///
/// # Errors
/// [`crate::DataError::Tokenizer`] if the tokenizer fails.
pub fn tokenize_records(
    tokenizer: &LlamaTokenizer,
    records: &[Record],
    field: ResponseField,
    config: &TokenizeConfig,
) -> Result<Vec<TrainExample>> {
    records
        .iter()
        .map(|r| tokenize_record(tokenizer, r, field, config))
        .collect()
}

/// Checks tokenised examples against the model that will train on them: every id must be below
/// `vocab` (else the embedding lookup would fail deep inside the backend), and at least one
/// example must keep an answer token after truncation to `cutoff_len` (else every step's loss
/// is zero and the adapter never moves). Returns how many examples keep no answer token.
///
/// # Errors
/// [`DataError::TokenOutOfVocab`] for the first id out of range, [`DataError::NoAnswerTokens`]
/// when no example has a target.
pub fn check_examples(examples: &[TrainExample], vocab: usize, cutoff_len: usize) -> Result<usize> {
    for (example, e) in examples.iter().enumerate() {
        if let Some(&id) = e.input_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(DataError::TokenOutOfVocab { example, id, vocab });
        }
    }
    let without_answer = examples
        .iter()
        .filter(|e| e.labels.iter().all(|&l| l == IGNORE_INDEX))
        .count();
    if without_answer == examples.len() {
        return Err(DataError::NoAnswerTokens {
            examples: examples.len(),
            cutoff_len,
        });
    }
    Ok(without_answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::eval_prompt;

    #[test]
    fn check_examples_refuses_foreign_ids_and_answerless_data() {
        let ok = TrainExample::with_prompt_len(vec![1, 2, 3], 2);
        let no_answer = TrainExample::with_prompt_len(vec![1, 2, 3], 3);
        assert_eq!(
            check_examples(&[ok.clone(), no_answer.clone()], 10, 3).unwrap(),
            1
        );
        let err = check_examples(&[no_answer.clone(), no_answer], 10, 3).unwrap_err();
        assert!(matches!(
            err,
            DataError::NoAnswerTokens {
                examples: 2,
                cutoff_len: 3
            }
        ));
        assert!(err.to_string().contains("max_seq_len"), "{err}");
        let foreign = TrainExample::with_prompt_len(vec![1, 19798, 3], 1);
        let err = check_examples(&[ok, foreign], 301, 256).unwrap_err();
        assert!(matches!(
            err,
            DataError::TokenOutOfVocab {
                example: 1,
                id: 19798,
                vocab: 301
            }
        ));
        assert!(err.to_string().contains("tokenizer"), "{err}");
    }
    use std::path::Path;

    const SMOLLM2_TOKENIZER: &str =
        "/work/shared/data/models/smollm2-135m-instruct-q4_1/tokenizer.json";
    /// SmolLM2's `<|im_end|>`, its generation EOS.
    const EOS: u32 = 2;

    fn tokenizer() -> Option<LlamaTokenizer> {
        let path = Path::new(SMOLLM2_TOKENIZER);
        if !path.is_file() {
            eprintln!("skipping: {SMOLLM2_TOKENIZER} not found");
            return None;
        }
        Some(LlamaTokenizer::from_file(path).unwrap())
    }

    fn record(instruction: &str, answer: &str) -> Record {
        Record {
            instruction: instruction.into(),
            answer: answer.into(),
            ..Record::default()
        }
    }

    #[test]
    fn short_example_masks_the_prompt_and_ends_with_eos() {
        let Some(tok) = tokenizer() else { return };
        let config = TokenizeConfig::new(EOS);
        let r = record("Is the sky blue?\n\nAnswer format: true/false", "true");
        let ex = tokenize_record(&tok, &r, ResponseField::Answer, &config).unwrap();
        let full = training_text(&r.instruction, "", "true");
        let mut expected = tok.encode(&full, true).unwrap();
        expected.push(EOS);
        assert_eq!(ex.input_ids, expected);
        assert_eq!(ex.labels.len(), ex.len());
        let prompt_len = tok
            .encode(&training_prompt(&r.instruction, ""), true)
            .unwrap()
            .len();
        assert!(ex.labels[..prompt_len].iter().all(|&l| l == IGNORE_INDEX));
        let targets: Vec<u32> = ex.labels[prompt_len..].iter().map(|&l| l as u32).collect();
        assert_eq!(targets, ex.input_ids[prompt_len..]);
        // The answer and EOS are learnt: the decoded targets end in "true" + EOS.
        assert_eq!(*ex.labels.last().unwrap(), i64::from(EOS));
        let text = tok.decode(&targets, false).unwrap();
        assert!(text.ends_with("true<|im_end|>"), "{text:?}");
    }

    #[test]
    fn long_example_is_cut_at_cutoff_without_eos() {
        let Some(tok) = tokenizer() else { return };
        let config = TokenizeConfig::new(EOS);
        let long = "word ".repeat(400);
        let r = Record {
            output: long.clone(),
            ..record("Count the words.", "")
        };
        let ex = tokenize_record(&tok, &r, ResponseField::Output, &config).unwrap();
        assert_eq!(ex.len(), DEFAULT_CUTOFF_LEN);
        assert_ne!(*ex.input_ids.last().unwrap(), EOS);
        let full = tok
            .encode(&training_text(&r.instruction, "", &long), true)
            .unwrap();
        assert_eq!(ex.input_ids, full[..DEFAULT_CUTOFF_LEN]);
        // A prompt longer than the cutoff leaves nothing to learn.
        let r = record(&long, "true");
        let ex = tokenize_record(&tok, &r, ResponseField::Answer, &config).unwrap();
        assert_eq!((ex.len(), ex.num_targets()), (DEFAULT_CUTOFF_LEN, 0));
    }

    #[test]
    fn eos_is_appended_only_when_it_fits() {
        let Some(tok) = tokenizer() else { return };
        let r = record("q", "yes");
        let full = tok.encode(&training_text("q", "", "yes"), true).unwrap();
        let n = full.len();
        // Exactly at the cutoff: no room for EOS.
        let at = tokenize_record(
            &tok,
            &r,
            ResponseField::Answer,
            &TokenizeConfig::new(EOS).with_cutoff_len(n),
        )
        .unwrap();
        assert_eq!(at.input_ids, full);
        // One more: EOS fits.
        let above = tokenize_record(
            &tok,
            &r,
            ResponseField::Answer,
            &TokenizeConfig::new(EOS).with_cutoff_len(n + 1),
        )
        .unwrap();
        assert_eq!(above.len(), n + 1);
        assert_eq!(above.input_ids[n], EOS);
        // A response already ending in EOS gets no second one.
        let r = record("q", "yes<|im_end|>");
        let ex =
            tokenize_record(&tok, &r, ResponseField::Answer, &TokenizeConfig::new(EOS)).unwrap();
        assert_eq!(ex.input_ids.iter().filter(|&&id| id == EOS).count(), 1);
    }

    #[test]
    fn seam_between_prompt_and_response_on_smollm2() {
        // SmolLM2 encodes the prompt alone with "\n" + 16 spaces as its last token; in the full
        // text that token is "\n" + 15 spaces and the 16th space starts the response (" the").
        // The counts agree, so the mask ends exactly where the response begins.
        let Some(tok) = tokenizer() else { return };
        let alone = tok.encode(&training_prompt("q", ""), true).unwrap();
        let r = record("q", "the correct answer is true");
        let ex =
            tokenize_record(&tok, &r, ResponseField::Answer, &TokenizeConfig::new(EOS)).unwrap();
        let n = alone.len();
        assert_eq!(ex.input_ids[..n - 1], alone[..n - 1]);
        let decode = |ids: &[u32]| tok.decode(ids, false).unwrap();
        assert_eq!(decode(&alone[n - 1..]), format!("\n{}", " ".repeat(16)));
        assert_eq!(
            decode(&ex.input_ids[n - 1..n]),
            format!("\n{}", " ".repeat(15))
        );
        assert_eq!(ex.labels[n - 1], IGNORE_INDEX);
        assert_eq!(decode(&[ex.labels[n] as u32]), " the");
        assert_eq!(ex.num_targets(), ex.len() - n);
        // The evaluation prompt alone also ends in the 16-space token: generation would start
        // from "\n" + 16 spaces, where training saw 15 + " the".
        let prompt = eval_prompt("q", "");
        let eval = tok.encode(&prompt, true).unwrap();
        assert_eq!(eval.last(), alone.last());
        // Encoded for continuation it ends as training's prompt does, one space short of the
        // text, which the first generated token (" the") carries.
        let (open, covered) = tok.encode_for_continuation(&prompt, true).unwrap();
        assert_eq!(covered, prompt.len() - 1);
        assert_eq!(decode(&open), prompt[..covered]);
        assert_eq!(
            decode(&open[open.len() - 1..]),
            format!("\n{}", " ".repeat(15))
        );
        assert_eq!(open[..open.len() - 1], eval[..eval.len() - 1]);
        // The same holds for the training prompt: its ids for continuation are the training
        // text's own up to the response.
        let (train_open, train_covered) = tok
            .encode_for_continuation(&training_prompt("q", ""), true)
            .unwrap();
        assert_eq!(train_open, ex.input_ids[..n]);
        assert_eq!(train_covered, training_prompt("q", "").len() - 1);
        // A prompt that does not end in whitespace is encoded whole.
        let (whole, all) = tok
            .encode_for_continuation("Question: 2+2 =", true)
            .unwrap();
        assert_eq!(all, "Question: 2+2 =".len());
        assert_eq!(whole, tok.encode("Question: 2+2 =", true).unwrap());
    }
}
