//! The LLM-Adapters training sets and benchmarks: where each file lies under a data root laid out
//! like the LLM-Adapters repository (`ft-training_set/`, `dataset/<name>/test.json`), which record
//! field a training example learns, which extraction rule scores it, and where the shipped sample
//! of it lies under `datasets/`.

use std::str::FromStr;

use crate::data::ResponseField;
use crate::error::DataError;
use crate::eval_extract::Extraction;

/// A training set or an evaluation benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// Commonsense training set (`commonsense_170k.json`): BoolQ, PIQA, SIQA, HellaSwag,
    /// WinoGrande, ARC-e/c and OBQA train; learns `answer`.
    Csr170k,
    /// Arithmetic training set (`math_10k.json`); learns `output` (a worked solution).
    Math10k,
    /// BoolQ dev (answers `true`/`false`).
    BoolQ,
    /// PIQA dev (`solution1`/`solution2`).
    Piqa,
    /// Social IQa dev (`answer1..3`).
    SocialIqa,
    /// HellaSwag val (`ending1..4`).
    HellaSwag,
    /// WinoGrande dev (`option1`/`option2`).
    WinoGrande,
    /// ARC-Easy test (`answer1..5`).
    ArcEasy,
    /// ARC-Challenge test (`answer1..5`).
    ArcChallenge,
    /// OpenBookQA test (`answer1..4`).
    OpenBookQa,
    /// GSM8K test (numeric answers such as `18.0`).
    Gsm8k,
    /// SVAMP (numeric).
    Svamp,
    /// MAWPS test (numeric).
    Mawps,
    /// AddSub (numeric).
    AddSub,
    /// MultiArith (numeric).
    MultiArith,
    /// SingleEq (numeric).
    SingleEq,
    /// AQuA (letters `A`-`E`; excluded from the paper's tables, see its section 5).
    Aqua,
    /// MathQA (letters `A`-`E`).
    MathQa,
}

impl Task {
    /// Every task.
    pub const ALL: [Task; 18] = [
        Task::Csr170k,
        Task::Math10k,
        Task::BoolQ,
        Task::Piqa,
        Task::SocialIqa,
        Task::HellaSwag,
        Task::WinoGrande,
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::OpenBookQa,
        Task::Gsm8k,
        Task::Svamp,
        Task::Mawps,
        Task::AddSub,
        Task::MultiArith,
        Task::SingleEq,
        Task::Aqua,
        Task::MathQa,
    ];

    /// The eight commonsense benchmarks of the paper's Table 1, in its column order.
    pub const COMMONSENSE_EVAL: [Task; 8] = [
        Task::BoolQ,
        Task::Piqa,
        Task::SocialIqa,
        Task::HellaSwag,
        Task::WinoGrande,
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::OpenBookQa,
    ];

    /// The three arithmetic benchmarks of the paper's Table 2, in its column order.
    pub const MATH_EVAL: [Task; 3] = [Task::Gsm8k, Task::Svamp, Task::Mawps];

    /// The name LLM-Adapters uses (its `dataset/` folder, or the training file's stem).
    pub fn name(self) -> &'static str {
        match self {
            Task::Csr170k => "commonsense_170k",
            Task::Math10k => "math_10k",
            Task::BoolQ => "boolq",
            Task::Piqa => "piqa",
            Task::SocialIqa => "social_i_qa",
            Task::HellaSwag => "hellaswag",
            Task::WinoGrande => "winogrande",
            Task::ArcEasy => "ARC-Easy",
            Task::ArcChallenge => "ARC-Challenge",
            Task::OpenBookQa => "openbookqa",
            Task::Gsm8k => "gsm8k",
            Task::Svamp => "SVAMP",
            Task::Mawps => "mawps",
            Task::AddSub => "AddSub",
            Task::MultiArith => "MultiArith",
            Task::SingleEq => "SingleEq",
            Task::Aqua => "AQuA",
            Task::MathQa => "mathqa",
        }
    }

    /// Other accepted spellings (compared after [`normalise`]).
    fn aliases(self) -> &'static [&'static str] {
        match self {
            Task::Csr170k => &["csr170k", "commonsense", "commonsense170k"],
            Task::Math10k => &["math10k", "math"],
            Task::SocialIqa => &["siqa"],
            Task::ArcEasy => &["arce"],
            Task::ArcChallenge => &["arcc"],
            Task::OpenBookQa => &["obqa"],
            _ => &[],
        }
    }

    /// The data file, relative to a data root laid out like the LLM-Adapters repository.
    ///
    /// Not every file is in every copy: `/work/shared/data/llm-adapters` lacks the training
    /// sets and HellaSwag's (they are 4 MiB or larger); loading one then fails naming the path.
    pub fn data_file(self) -> &'static str {
        match self {
            Task::Csr170k => "ft-training_set/commonsense_170k.json",
            Task::Math10k => "ft-training_set/math_10k.json",
            Task::BoolQ => "dataset/boolq/test.json",
            Task::Piqa => "dataset/piqa/test.json",
            Task::SocialIqa => "dataset/social_i_qa/test.json",
            Task::HellaSwag => "dataset/hellaswag/test.json",
            Task::WinoGrande => "dataset/winogrande/test.json",
            Task::ArcEasy => "dataset/ARC-Easy/test.json",
            Task::ArcChallenge => "dataset/ARC-Challenge/test.json",
            Task::OpenBookQa => "dataset/openbookqa/test.json",
            Task::Gsm8k => "dataset/gsm8k/test.json",
            Task::Svamp => "dataset/SVAMP/test.json",
            Task::Mawps => "dataset/mawps/test.json",
            Task::AddSub => "dataset/AddSub/test.json",
            Task::MultiArith => "dataset/MultiArith/test.json",
            Task::SingleEq => "dataset/SingleEq/test.json",
            Task::Aqua => "dataset/AQuA/test.json",
            Task::MathQa => "dataset/mathqa/test.json",
        }
    }

    /// The shipped sample of this task, relative to the repository's `datasets/` folder (see its
    /// README for how each was drawn), if one is shipped.
    pub fn sample_file(self) -> Option<&'static str> {
        Some(match self {
            Task::Csr170k => "train/commonsense.jsonl",
            Task::Math10k => "train/math.jsonl",
            Task::BoolQ => "eval/boolq.json",
            Task::Piqa => "eval/piqa.json",
            Task::SocialIqa => "eval/social_i_qa.json",
            Task::WinoGrande => "eval/winogrande.json",
            Task::ArcEasy => "eval/ARC-Easy.json",
            Task::ArcChallenge => "eval/ARC-Challenge.json",
            Task::OpenBookQa => "eval/openbookqa.json",
            Task::Gsm8k => "eval/gsm8k.json",
            Task::Svamp => "eval/SVAMP.json",
            Task::Mawps => "eval/mawps.json",
            _ => return None,
        })
    }

    /// Whether this is a training set (no extraction rule) rather than a benchmark.
    pub fn is_training(self) -> bool {
        matches!(self, Task::Csr170k | Task::Math10k)
    }

    /// Whether this is arithmetic (trained on `output`, generating up to 256 tokens).
    pub fn is_math(self) -> bool {
        !matches!(
            self,
            Task::Csr170k
                | Task::BoolQ
                | Task::Piqa
                | Task::SocialIqa
                | Task::HellaSwag
                | Task::WinoGrande
                | Task::ArcEasy
                | Task::ArcChallenge
                | Task::OpenBookQa
        )
    }

    /// The record field a training example on this task's data learns: `answer` for
    /// commonsense, `output` for math (SPEC section 8).
    pub fn response_field(self) -> ResponseField {
        if self.is_math() {
            ResponseField::Output
        } else {
            ResponseField::Answer
        }
    }

    /// How generated text is scored against the record's `answer`; `None` for the training sets,
    /// whose records come from several benchmarks.
    pub fn extraction(self) -> Option<Extraction> {
        let choice = |prefix, max| Some(Extraction::Choice { prefix, max });
        match self {
            Task::Csr170k | Task::Math10k => None,
            Task::BoolQ => Some(Extraction::TrueFalse),
            Task::Piqa => choice("solution", 2),
            Task::WinoGrande => choice("option", 2),
            Task::HellaSwag => choice("ending", 4),
            Task::SocialIqa | Task::ArcEasy | Task::ArcChallenge | Task::OpenBookQa => {
                choice("answer", 5)
            }
            Task::Aqua | Task::MathQa => Some(Extraction::Letter),
            Task::Gsm8k
            | Task::Svamp
            | Task::Mawps
            | Task::AddSub
            | Task::MultiArith
            | Task::SingleEq => Some(Extraction::Number),
        }
    }

    /// Greedy generation length at evaluation: 32 new tokens for commonsense, 256 for math.
    pub fn max_new_tokens(self) -> usize {
        if self.is_math() {
            256
        } else {
            32
        }
    }
}

/// Lower case, without `-`, `_`, `.` and spaces: `ARC-Easy`, `arc_easy` and `arc easy` agree.
fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '-' | '_' | '.' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

impl FromStr for Task {
    type Err = DataError;

    /// Parses [`Task::name`] in any case and punctuation, or an alias (`csr170k`, `math10k`,
    /// `arc-e`, `arc-c`, `obqa`, `siqa`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = normalise(s);
        Task::ALL
            .into_iter()
            .find(|t| normalise(t.name()) == wanted || t.aliases().contains(&wanted.as_str()))
            .ok_or_else(|| DataError::UnknownTask(s.to_owned()))
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_parse() {
        for task in Task::ALL {
            assert_eq!(task.name().parse::<Task>().unwrap(), task);
            assert_eq!(
                task.to_string().to_uppercase().parse::<Task>().unwrap(),
                task
            );
        }
        assert_eq!("arc_easy".parse::<Task>().unwrap(), Task::ArcEasy);
        assert_eq!("ARC-c".parse::<Task>().unwrap(), Task::ArcChallenge);
        assert_eq!("social-iqa".parse::<Task>().unwrap(), Task::SocialIqa);
        assert_eq!("csr170k".parse::<Task>().unwrap(), Task::Csr170k);
        assert_eq!("Math10K".parse::<Task>().unwrap(), Task::Math10k);
        let err = "glue".parse::<Task>().unwrap_err().to_string();
        assert!(err.starts_with("unknown task `glue` (known: commonsense_170k, math_10k, boolq"));
    }

    #[test]
    fn fields_and_rules_follow_the_spec() {
        assert_eq!(Task::Csr170k.response_field(), ResponseField::Answer);
        assert_eq!(Task::Math10k.response_field(), ResponseField::Output);
        assert_eq!(Task::HellaSwag.response_field(), ResponseField::Answer);
        assert_eq!(Task::Gsm8k.response_field(), ResponseField::Output);
        assert_eq!(Task::Csr170k.extraction(), None);
        assert_eq!(
            Task::Piqa.extraction(),
            Some(Extraction::Choice {
                prefix: "solution",
                max: 2
            })
        );
        assert_eq!(Task::Svamp.extraction(), Some(Extraction::Number));
        assert_eq!(Task::BoolQ.max_new_tokens(), 32);
        assert_eq!(Task::Mawps.max_new_tokens(), 256);
        for task in Task::COMMONSENSE_EVAL {
            assert!(!task.is_math() && !task.is_training());
        }
        for task in Task::MATH_EVAL {
            assert!(task.is_math() && !task.is_training());
        }
    }

    #[test]
    fn every_benchmark_file_is_a_test_split_under_dataset() {
        for task in Task::ALL.into_iter().filter(|t| !t.is_training()) {
            assert_eq!(
                task.data_file(),
                format!("dataset/{}/test.json", task.name())
            );
        }
    }
}
