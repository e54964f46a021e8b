//! Errors of data loading, tokenisation and batching. Every variant names the file, record, field
//! or value at fault.

use std::path::PathBuf;

/// What went wrong while reading, tokenising or batching training and evaluation data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A data file could not be read.
    #[error("cannot read data file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is neither a JSON array nor JSON Lines.
    #[error(
        "{path}: not LLM-Adapters data: expected a JSON array (`[`) or JSON Lines (`{{` per line), \
         found {found}"
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// What the file starts with.
        found: String,
    },
    /// A JSON array file is not valid JSON.
    #[error("{path}: invalid JSON: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A line of a JSON Lines file is not valid JSON.
    #[error("{path}: invalid JSON in record {record} (line {line}): {message}")]
    JsonLine {
        /// The file.
        path: PathBuf,
        /// The 0-based record index (blank lines are not records).
        record: usize,
        /// The 1-based line of the file.
        line: usize,
        /// What the parser said.
        message: String,
    },
    /// A record is not a JSON object.
    #[error("{path}: record {record} is not a JSON object (found {found})")]
    NotAnObject {
        /// The file.
        path: PathBuf,
        /// The 0-based record index.
        record: usize,
        /// The JSON type found instead.
        found: &'static str,
    },
    /// A record's field is missing or has the wrong type.
    #[error("{path}: record {record}: field `{field}` {problem}")]
    BadField {
        /// The file.
        path: PathBuf,
        /// The 0-based record index.
        record: usize,
        /// The field name (`instruction`, `input`, `output`, `answer`).
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A task name that is not one of [`crate::Task`]'s.
    #[error("unknown task `{0}` (known: {known})", known = crate::Task::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "))]
    UnknownTask(String),
    /// Tokenisation failed.
    #[error(transparent)]
    Tokenizer(#[from] llama_burn::LlamaError),
    /// A batch was asked of no examples, or of examples that hold no tokens.
    #[error("cannot build a batch from {0}")]
    EmptyBatch(&'static str),
    /// A sampler state does not fit the data set it is resumed on.
    #[error("sampler state {state} does not fit a data set of {len} examples: {problem}")]
    BadSamplerState {
        /// The state, as `seed/epoch/position`.
        state: String,
        /// The data set size.
        len: usize,
        /// What does not fit.
        problem: &'static str,
    },
    /// The tokenizer produced an id the model has no embedding for.
    #[error(
        "example {example} holds token id {id}, outside the model's vocabulary of {vocab}: the \
         tokenizer does not belong to this model (use the checkpoint's own tokenizer.json)"
    )]
    TokenOutOfVocab {
        /// The 0-based example index.
        example: usize,
        /// The offending id.
        id: u32,
        /// The model's vocabulary size.
        vocab: usize,
    },
    /// No example keeps an answer token after truncation: training would learn nothing.
    #[error(
        "none of the {examples} examples keeps an answer token after truncation to {cutoff_len} \
         tokens (the prompts are longer than that): raise `max_seq_len` in the training config \
         or use shorter prompts"
    )]
    NoAnswerTokens {
        /// How many examples there are.
        examples: usize,
        /// The truncation length.
        cutoff_len: usize,
    },
}

/// Results of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
