//! The Alpaca-style prompts of LLM-Adapters and the SparseLoRA reference (SPEC section 8), byte
//! for byte, odd whitespace included: the model is evaluated on exactly the text it was trained on.
//!
//! Training (`spft/data.py` `generate_prompt_csr170k`/`_math10k`): two spaces after "request.",
//! 16-space indents, and a line of 16 spaces between instruction and response; the prompt is the
//! text up to and including the indent after `### Response:\n`, the response follows directly.
//!
//! Evaluation (`spft/test/main.py` `generate_prompt`): one space after "request.", a truly empty
//! line before `### Response:`, ending with `### Response:\n` and 16 spaces.
//!
//! A non-empty `input` (SPEC gives only the no-input form, and no LLM-Adapters file has one) gets
//! an `### Input:` section the way LLM-Adapters' `generate_prompt` writes it: the "paired with an
//! input that provides further context" preamble and the section between instruction and
//! response. For training we mirror the no-input form's whitespace (two spaces after "request.",
//! 16-space blank lines; LLM-Adapters `finetune.py` has the same layout, with a stray
//! `  # noqa: E501` inside the string where we have the two spaces). For evaluation we copy
//! LLM-Adapters `commonsense_evaluate.py` exactly: no space after "request.", empty blank lines.
//! The SparseLoRA reference itself drops `input` altogether; for the shipped data, all of whose
//! inputs are empty, every choice gives the same text.

/// Every line after the first starts with this (the f-string's source indentation).
pub const INDENT: &str = "                ";

const PREAMBLE: &str = "Below is an instruction that describes a task. Write a response that \
                        appropriately completes the request.";

const PREAMBLE_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with \
                                   an input that provides further context. Write a response \
                                   that appropriately completes the request.";

/// The training prompt: everything before the response, ending in `### Response:\n` + 16 spaces.
///
/// `instruction` is inserted verbatim (LLM-Adapters instructions keep their own trailing spaces
/// and newlines).
pub fn training_prompt(instruction: &str, input: &str) -> String {
    let i = INDENT;
    if input.is_empty() {
        format!("{PREAMBLE}  \n\n{i}### Instruction:\n{i}{instruction}\n{i}\n{i}### Response:\n{i}")
    } else {
        format!(
            "{PREAMBLE_WITH_INPUT}  \n\n{i}### Instruction:\n{i}{instruction}\n{i}\n\
             {i}### Input:\n{i}{input}\n{i}\n{i}### Response:\n{i}"
        )
    }
}

/// The full training text: [`training_prompt`] followed directly by `response`.
pub fn training_text(instruction: &str, input: &str, response: &str) -> String {
    training_prompt(instruction, input) + response
}

/// The evaluation prompt, ending in `### Response:\n` + 16 spaces; generation continues it.
pub fn eval_prompt(instruction: &str, input: &str) -> String {
    let i = INDENT;
    if input.is_empty() {
        format!("{PREAMBLE} \n\n{i}### Instruction:\n{i}{instruction}\n\n{i}### Response:\n{i}")
    } else {
        format!(
            "{PREAMBLE_WITH_INPUT}\n\n{i}### Instruction:\n{i}{instruction}\n\n\
             {i}### Input:\n{i}{input}\n\n{i}### Response:\n{i}"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC.md section 8's training prompt, copied byte for byte.
    const SPEC_TRAINING: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n\n                ### Instruction:\n                {instruction}\n                \n                ### Response:\n                {response}";

    /// The reference `spft/test/main.py` `generate_prompt`, as SPEC describes it.
    const REFERENCE_EVAL: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n\n                ### Instruction:\n                {instruction}\n\n                ### Response:\n                ";

    /// LLM-Adapters `commonsense_evaluate.py` `generate_prompt` with an input.
    const LLM_ADAPTERS_EVAL_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n                ### Instruction:\n                {instruction}\n\n                ### Input:\n                {input}\n\n                ### Response:\n                ";

    #[test]
    fn training_text_is_the_spec_string() {
        let expected = SPEC_TRAINING
            .replace(
                "{instruction}",
                "Is water wet?\n\nAnswer format: true/false",
            )
            .replace("{response}", "true");
        assert_eq!(
            training_text("Is water wet?\n\nAnswer format: true/false", "", "true"),
            expected
        );
        assert_eq!(
            training_prompt("q", ""),
            SPEC_TRAINING
                .replace("{instruction}", "q")
                .replace("{response}", "")
        );
    }

    #[test]
    fn eval_prompt_is_the_reference_string() {
        let p = eval_prompt("What is 2 + 2?", "");
        assert_eq!(p, REFERENCE_EVAL.replace("{instruction}", "What is 2 + 2?"));
        assert!(p.contains("the request. \n\n"));
        assert!(p.contains("2?\n\n                ### Response:\n"));
        assert!(p.ends_with("### Response:\n                "));
    }

    #[test]
    fn training_and_eval_prompts_differ_only_in_whitespace() {
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(
            squash(&training_prompt("q", "")),
            squash(&eval_prompt("q", ""))
        );
        assert_ne!(training_prompt("q", ""), eval_prompt("q", ""));
    }

    #[test]
    fn input_gets_its_own_section() {
        assert_eq!(
            eval_prompt("Sum.", "1 2"),
            LLM_ADAPTERS_EVAL_INPUT
                .replace("{instruction}", "Sum.")
                .replace("{input}", "1 2")
        );
        let t = training_text("Sum.", "1 2", "3");
        assert!(t.starts_with(
            "Below is an instruction that describes a task, paired with an input that provides \
             further context. Write a response that appropriately completes the request.  \n\n"
        ));
        assert!(t.ends_with(
            "Sum.\n                \n                ### Input:\n                1 2\n                \n                ### Response:\n                3"
        ));
    }
}
