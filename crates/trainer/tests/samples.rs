//! Every data sample shipped in `datasets/` loads, templates and tokenises (SmolLM2's tokenizer,
//! skipped when absent), and a malformed file is reported by file, record and field.

use std::path::{Path, PathBuf};

use llama_burn::LlamaTokenizer;
use trainer::tokenize::DEFAULT_CUTOFF_LEN;
use trainer::{
    eval_prompt, load_records, tokenize_records, training_text, DataError, Extraction, Record,
    Task, TokenizeConfig, IGNORE_INDEX,
};

const SMOLLM2_TOKENIZER: &str =
    "/work/shared/data/models/smollm2-135m-instruct-q4_1/tokenizer.json";
/// SmolLM2's `<|im_end|>`.
const EOS: u32 = 2;

fn datasets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

fn tokenizer() -> Option<LlamaTokenizer> {
    let path = Path::new(SMOLLM2_TOKENIZER);
    if path.is_file() {
        Some(LlamaTokenizer::from_file(path).unwrap())
    } else {
        eprintln!("skipping tokenisation: {SMOLLM2_TOKENIZER} not found");
        None
    }
}

fn shipped() -> Vec<(Task, Vec<Record>)> {
    let tasks: Vec<Task> = Task::ALL
        .into_iter()
        .filter(|t| t.sample_file().is_some())
        .collect();
    assert_eq!(tasks.len(), 12, "tasks with a shipped sample: {tasks:?}");
    tasks
        .into_iter()
        .map(|task| {
            let path = datasets_dir().join(task.sample_file().unwrap());
            let records = load_records(&path).unwrap_or_else(|e| panic!("{e}"));
            (task, records)
        })
        .collect()
}

#[test]
fn every_sample_loads_with_the_documented_size() {
    for (task, records) in shipped() {
        let expected = match task {
            Task::Csr170k => 500,
            Task::Math10k => 400,
            _ => 100,
        };
        assert_eq!(records.len(), expected, "{task}");
        for (i, r) in records.iter().enumerate() {
            assert!(!r.instruction.trim().is_empty(), "{task} record {i}");
            assert!(r.input.is_empty(), "{task} record {i}");
            assert!(!r.answer.is_empty(), "{task} record {i}");
            if task.is_training() {
                assert!(
                    !r.response(task.response_field()).is_empty(),
                    "{task} record {i}"
                );
            }
        }
    }
}

#[test]
fn every_gold_answer_is_readable_by_its_extraction_rule() {
    for (task, records) in shipped() {
        let Some(rule) = task.extraction() else {
            continue;
        };
        for (i, r) in records.iter().enumerate() {
            let generated = format!(
                "{}the correct answer is {}",
                eval_prompt(&r.instruction, &r.input),
                r.answer
            );
            assert!(
                rule.score(&generated, &r.answer),
                "{task} record {i}: {:?}",
                r.answer
            );
            if rule == Extraction::Number {
                // A wrong number in the response, with the instruction's numbers before it.
                let wrong: f64 = r.answer.parse::<f64>().unwrap() + 1.0;
                let generated = format!("{}{wrong}", eval_prompt(&r.instruction, &r.input));
                assert!(!rule.score(&generated, &r.answer), "{task} record {i}");
            }
        }
    }
}

#[test]
fn every_sample_templates_and_tokenises_within_the_cutoff() {
    let Some(tok) = tokenizer() else { return };
    let config = TokenizeConfig::new(EOS);
    for (task, records) in shipped() {
        let field = task.response_field();
        let examples = tokenize_records(&tok, &records, field, &config).unwrap();
        let mut cut = 0;
        let mut nothing_learnt = 0;
        let mut longest_eval_prompt = 0;
        for (i, (r, ex)) in records.iter().zip(&examples).enumerate() {
            assert!(
                !ex.is_empty() && ex.len() <= DEFAULT_CUTOFF_LEN,
                "{task} record {i}"
            );
            assert_eq!(ex.labels.len(), ex.len(), "{task} record {i}");
            assert_eq!(ex.labels[0], IGNORE_INDEX, "{task} record {i}");
            if ex.num_targets() == 0 {
                // In the training samples, only HellaSwag's long prompts (four endings) fill the
                // whole cutoff (as in the reference, they then teach nothing).
                assert!(
                    !task.is_training()
                        || r.instruction
                            .starts_with("Please choose the correct ending"),
                    "{task} record {i}: nothing to learn"
                );
                nothing_learnt += 1;
            }
            let prompt = tok
                .encode(&eval_prompt(&r.instruction, &r.input), true)
                .unwrap();
            longest_eval_prompt = longest_eval_prompt.max(prompt.len());
            let full = tok.encode(
                &training_text(&r.instruction, &r.input, r.response(field)),
                true,
            );
            if full.unwrap().len() >= DEFAULT_CUTOFF_LEN {
                cut += 1;
                assert_eq!(ex.len(), DEFAULT_CUTOFF_LEN);
            } else {
                assert_eq!(*ex.input_ids.last().unwrap(), EOS, "{task} record {i}");
            }
            // The learnt tokens decode to the response (a prefix of it when cut).
            let targets: Vec<u32> = ex
                .labels
                .iter()
                .filter(|&&l| l != IGNORE_INDEX)
                .map(|&l| l as u32)
                .collect();
            let learnt = tok.decode(&targets, true).unwrap();
            // A cut can split a multi-byte character, which decodes as U+FFFD.
            let learnt = learnt.trim().trim_end_matches('\u{fffd}');
            let response = r.response(field);
            assert!(
                response.trim_start().starts_with(learnt),
                "{task} record {i}: learns {learnt:?} of {response:?}"
            );
        }
        let mean = examples.iter().map(|e| e.len()).sum::<usize>() as f64 / examples.len() as f64;
        eprintln!(
            "{task}: {} records, mean {mean:.1} tokens, {cut} cut at {DEFAULT_CUTOFF_LEN}, \
             {nothing_learnt} with nothing to learn; longest eval prompt {longest_eval_prompt}",
            records.len()
        );
    }
}

#[test]
fn malformed_record_in_a_file_is_named() {
    let dir = std::env::temp_dir().join(format!("trainer-samples-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.jsonl");
    std::fs::write(
        &path,
        "{\"instruction\": \"a\", \"answer\": \"true\"}\n{\"instruction\": \"b\", \"answer\": [1]}\n",
    )
    .unwrap();
    let err = load_records(&path).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        matches!(
            &err,
            DataError::BadField {
                record: 1,
                field: "answer",
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("bad.jsonl: record 1: field `answer`"),
        "{message}"
    );
}
