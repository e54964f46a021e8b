//! Answer extraction and scoring of generated text (SPEC section 8), as the SparseLoRA reference's
//! `spft/test/main.py` `extract_answer` and LLM-Adapters' `extract_answer_letter` do it.
//!
//! 1. The response is the text after the first `"### Response:"`, up to a second one if the model
//!    wrote one (Python's `text.split("### Response:")[1]`). Text with no marker (the decoded
//!    continuation alone) is the response as a whole.
//! 2. It is trimmed and lower-cased (except for [`Extraction::Letter`], see there).
//! 3. Commonsense: the first match of the task's alternatives (`true|false`, or a digit range for
//!    `solution{d}`, `answer{d}`, `ending{d}`, `option{d}`) is the prediction, compared exactly with
//!    the record's `answer`. No match predicts nothing, which is wrong.
//! 4. Math: commas are dropped, the last match of `-?\d+\.?\d*` is parsed as a number, correct when
//!    within 0.001 of the `answer` parsed as a number (`|pred - gold| <= 0.001`). No match is
//!    wrong, as are a gold `answer` that is not a number and non-finite values.

use std::sync::LazyLock;

use regex::Regex;

/// The marker the evaluation prompt ends with; the response follows it.
pub const RESPONSE_MARKER: &str = "### Response:";

/// The absolute tolerance of math answers.
pub const MATH_TOLERANCE: f64 = 0.001;

/// How an answer is read from generated text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Extraction {
    /// BoolQ: the first `true` or `false`.
    TrueFalse,
    /// Multiple choice: the first digit in `1..=max`, written as `{prefix}{digit}` (PIQA
    /// `solution1|2`, SIQA/ARC/OBQA `answer1..5`, HellaSwag `ending1..4`, WinoGrande `option1|2`).
    Choice {
        /// The label prefix of the data set's answers.
        prefix: &'static str,
        /// The largest digit accepted (2 to 9).
        max: u8,
    },
    /// Arithmetic: the last number, compared within [`MATH_TOLERANCE`].
    Number,
    /// AQuA/MathQA: the first capital `A`-`E` of the trimmed response, NOT lower-cased (LLM-Adapters
    /// `extract_answer_letter` uses `re.findall(r'A|B|C|D|E', sentence.strip())`; lower-casing
    /// first would make the `e` of every "the" an answer).
    Letter,
}

/// What was read from a response.
#[derive(Debug, Clone, PartialEq)]
pub enum Prediction {
    /// A label such as `true`, `answer3` or `C`.
    Label(String),
    /// A number (math).
    Number(f64),
    /// Nothing matched; always wrong.
    Nothing,
}

static TRUE_FALSE: LazyLock<Regex> = LazyLock::new(|| regex(r"true|false"));
static NUMBER: LazyLock<Regex> = LazyLock::new(|| regex(r"-?\d+\.?\d*"));
static LETTER: LazyLock<Regex> = LazyLock::new(|| regex(r"A|B|C|D|E"));

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("the extraction patterns are valid regular expressions")
}

/// The response part of a generated text: after the first [`RESPONSE_MARKER`], up to the next one;
/// the whole text if it has no marker. Not trimmed.
pub fn response_text(generated: &str) -> &str {
    match generated.split_once(RESPONSE_MARKER) {
        Some((_, rest)) => rest.split(RESPONSE_MARKER).next().unwrap_or(rest),
        None => generated,
    }
}

impl Extraction {
    /// Reads the answer out of `generated` (a decoded prompt plus continuation, or the
    /// continuation alone).
    pub fn extract(self, generated: &str) -> Prediction {
        let raw = response_text(generated).trim();
        let lower = raw.to_lowercase();
        let label = |m: Option<regex::Match>| {
            m.map_or(Prediction::Nothing, |m| {
                Prediction::Label(m.as_str().into())
            })
        };
        match self {
            Self::TrueFalse => label(TRUE_FALSE.find(&lower)),
            Self::Letter => label(LETTER.find(raw)),
            Self::Choice { prefix, max } => lower
                .chars()
                .find(|c| ('1'..=char::from(b'0' + max.min(9))).contains(c))
                .map_or(Prediction::Nothing, |d| {
                    Prediction::Label(format!("{prefix}{d}"))
                }),
            Self::Number => {
                let text = lower.replace(',', "");
                NUMBER
                    .find_iter(&text)
                    .last()
                    .and_then(|m| m.as_str().parse::<f64>().ok())
                    .map_or(Prediction::Nothing, Prediction::Number)
            }
        }
    }

    /// Whether `prediction` matches the record's gold `answer`.
    pub fn is_correct(self, prediction: &Prediction, answer: &str) -> bool {
        match prediction {
            Prediction::Nothing => false,
            Prediction::Label(label) => label == answer,
            Prediction::Number(value) => answer
                .trim()
                .parse::<f64>()
                .is_ok_and(|gold| (value - gold).abs() <= MATH_TOLERANCE),
        }
    }

    /// Extracts from `generated` and scores against `answer`.
    pub fn score(self, generated: &str, answer: &str) -> bool {
        self.is_correct(&self.extract(generated), answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Task;

    fn extract(task: Task, text: &str) -> Prediction {
        task.extraction().unwrap().extract(text)
    }

    fn label(s: &str) -> Prediction {
        Prediction::Label(s.into())
    }

    #[test]
    fn response_is_after_the_first_marker_up_to_the_next() {
        assert_eq!(response_text("q 12 ### Response: a"), " a");
        assert_eq!(
            response_text("p ### Response:\n x ### Response: y"),
            "\n x "
        );
        assert_eq!(response_text("no marker"), "no marker");
        assert_eq!(response_text(""), "");
    }

    #[test]
    fn boolq_takes_the_first_true_or_false_lower_cased() {
        let t = Task::BoolQ;
        assert_eq!(extract(t, "the answer is true, not false"), label("true"));
        assert_eq!(extract(t, "### Response:\n   FALSE. True?"), label("false"));
        assert_eq!(extract(t, "Untrue"), label("true"));
        assert_eq!(extract(t, "yes"), Prediction::Nothing);
        assert!(!t.extraction().unwrap().score("yes", "true"));
        // An instruction before the marker that says "true/false" is not read.
        let prompt = "Answer format: true/false\n\n                ### Response:\n                ";
        assert!(
            Extraction::TrueFalse.score(&format!("{prompt}the correct answer is false"), "false")
        );
        assert!(!Extraction::TrueFalse.score(prompt, "true"));
    }

    #[test]
    fn piqa_and_winogrande_take_the_first_1_or_2() {
        assert_eq!(extract(Task::Piqa, "solution2"), label("solution2"));
        assert_eq!(
            extract(Task::Piqa, "Solution 2 beats solution1"),
            label("solution2")
        );
        assert_eq!(extract(Task::Piqa, "the 3rd, or 1st"), label("solution1"));
        assert_eq!(extract(Task::Piqa, "solution3"), Prediction::Nothing);
        assert_eq!(extract(Task::WinoGrande, "OPTION2"), label("option2"));
        assert_eq!(extract(Task::WinoGrande, "option"), Prediction::Nothing);
        let prompt = "Option1: Sarah Option2: Maria ### Response: the correct answer is option1";
        assert!(Task::WinoGrande
            .extraction()
            .unwrap()
            .score(prompt, "option1"));
    }

    #[test]
    fn multiple_choice_takes_the_first_digit_in_range() {
        for task in [
            Task::SocialIqa,
            Task::ArcEasy,
            Task::ArcChallenge,
            Task::OpenBookQa,
        ] {
            assert_eq!(
                extract(task, "the correct answer is answer4"),
                label("answer4")
            );
            assert_eq!(extract(task, "Answer5"), label("answer5"));
            assert_eq!(extract(task, "answer 0 or 7, then 3"), label("answer3"));
            assert_eq!(extract(task, "answer10"), label("answer1"));
            assert_eq!(extract(task, "none"), Prediction::Nothing);
        }
        assert_eq!(
            extract(Task::HellaSwag, "ending5 then ending4"),
            label("ending4")
        );
        assert_eq!(extract(Task::HellaSwag, "Ending3"), label("ending3"));
        // Exact match: a right digit with another data set's prefix convention still scores.
        let e = Task::ArcEasy.extraction().unwrap();
        assert!(e.score("Answer1: sunlight ### Response: answer2", "answer2"));
        assert!(!e.score("answer2", "answer1"));
    }

    #[test]
    fn math_takes_the_last_number_without_commas() {
        let t = Task::Gsm8k;
        assert_eq!(
            extract(t, "Answer: 1,234.5 apples"),
            Prediction::Number(1234.5)
        );
        assert_eq!(extract(t, "it went down to -3."), Prediction::Number(-3.0));
        assert_eq!(
            extract(t, "from 5 to -12 degrees"),
            Prediction::Number(-12.0)
        );
        assert_eq!(extract(t, "3 - 5 = -2"), Prediction::Number(-2.0));
        assert_eq!(extract(t, "The answer is 18.\n"), Prediction::Number(18.0));
        assert_eq!(extract(t, "about 0.5%"), Prediction::Number(0.5));
        assert_eq!(extract(t, "no numbers here"), Prediction::Nothing);
        let e = t.extraction().unwrap();
        assert!(e.score("The answer is 18.", "18.0"));
        assert!(e.score("x = 2.0004", "2"));
        assert!(!e.score("x = 2.002", "2"));
        assert!(e.score("Answer: 1,234.5 apples", "1234.5"));
        assert!(!e.score("nothing", "0"));
        assert!(!e.score("42", "not a number"));
        // Numbers in the prompt before the marker are not read.
        assert!(!e.score(
            "Tom has 5 apples and eats 2. ### Response: I do not know",
            "3"
        ));
        assert!(e.score("Tom has 5 apples and eats 2. ### Response: 5 - 2 = 3", "3"));
        // Only the first response segment counts.
        assert!(!e.score("p ### Response: 4 ### Response: 3", "3"));
    }

    #[test]
    fn letters_are_capitals_of_the_unlowered_response() {
        let t = Task::Aqua;
        assert_eq!(extract(t, "The answer is (C) 35"), label("C"));
        assert_eq!(extract(t, "the answer is b"), Prediction::Nothing);
        assert_eq!(extract(t, "  E. none"), label("E"));
        assert!(t
            .extraction()
            .unwrap()
            .score("Answer Choices: (A) 1 ### Response: B", "B"));
    }

    #[test]
    fn every_task_has_an_extraction_that_reads_its_own_answers() {
        for task in Task::ALL.iter().filter(|t| !t.is_training()) {
            let e = task.extraction().unwrap();
            let gold = match e {
                Extraction::TrueFalse => "false".to_string(),
                Extraction::Choice { prefix, max } => format!("{prefix}{max}"),
                Extraction::Number => "-7.25".to_string(),
                Extraction::Letter => "D".to_string(),
            };
            let text = format!("### Response:\n                the correct answer is {gold}");
            assert!(e.score(&text, &gold), "{task:?} cannot read {gold}");
        }
    }
}
