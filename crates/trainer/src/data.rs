//! LLM-Adapters records `{instruction, input, output, answer}` (Hu et al., EMNLP 2023), read from a
//! JSON array file (the LLM-Adapters `dataset/*/test.json`, `math_10k.json`, ...) or from JSON
//! Lines (the pyreft subsets), told apart by the first non-blank character: `[` or `{`.
//!
//! `instruction` is required and must be a string. `input`, `output` and `answer` may be missing or
//! `null` (read as empty): MAWPS and MathQA have an empty `output`, every shipped file an empty
//! `input`. `answer` may also be a JSON number (written out with serde_json's formatting). Other
//! fields are ignored. A malformed record is an error naming the file, the 0-based record index
//! and the field.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{DataError, Result};

/// One LLM-Adapters example.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The question, with its answer format (`Answer format: true/false`).
    pub instruction: String,
    /// Extra context; empty in every LLM-Adapters file.
    pub input: String,
    /// A worked response (math chain of thought, or `the correct answer is answer2`).
    pub output: String,
    /// The gold answer (`true`, `answer2`, `ending4`, `18.0`, `C`).
    pub answer: String,
}

/// Which field of a [`Record`] a training example learns to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseField {
    /// `answer`: commonsense reasoning (the model learns to say `answer2`).
    Answer,
    /// `output`: math (the model learns the worked solution).
    Output,
}

impl Record {
    /// The text of `field`.
    pub fn response(&self, field: ResponseField) -> &str {
        match field {
            ResponseField::Answer => &self.answer,
            ResponseField::Output => &self.output,
        }
    }
}

/// Reads all records of a JSON array or JSON Lines file.
///
/// # Errors
/// [`DataError::Io`] if the file cannot be read, otherwise as [`parse_records`].
pub fn load_records(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_records(&text, path)
}

/// Parses the text of a JSON array or JSON Lines file; `path` only names the file in errors.
///
/// An empty (or all-blank) text is an empty data set.
///
/// # Errors
/// [`DataError::UnknownFormat`], [`DataError::Json`], [`DataError::JsonLine`], [`DataError::NotAnObject`] or
/// [`DataError::BadField`], naming the record (0-based) and field at fault.
pub fn parse_records(text: &str, path: &Path) -> Result<Vec<Record>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match text.trim_start().chars().next() {
        None => Ok(Vec::new()),
        Some('[') => {
            let values: Vec<Value> = serde_json::from_str(text).map_err(|e| DataError::Json {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
            values
                .iter()
                .enumerate()
                .map(|(i, v)| record_from_value(v, path, i))
                .collect()
        }
        Some('{') => {
            let lines = text
                .lines()
                .enumerate()
                .filter(|(_, line)| !line.trim().is_empty());
            lines
                .enumerate()
                .map(|(record, (line_index, line))| {
                    let value: Value =
                        serde_json::from_str(line).map_err(|e| DataError::JsonLine {
                            path: path.to_owned(),
                            record,
                            line: line_index + 1,
                            message: e.to_string(),
                        })?;
                    record_from_value(&value, path, record)
                })
                .collect()
        }
        Some(c) => Err(DataError::UnknownFormat {
            path: path.to_owned(),
            found: format!("{c:?}"),
        }),
    }
}

fn record_from_value(value: &Value, path: &Path, record: usize) -> Result<Record> {
    let Value::Object(map) = value else {
        return Err(DataError::NotAnObject {
            path: path.to_owned(),
            record,
            found: json_type(value),
        });
    };
    let field = |name: &'static str, required: bool, numbers: bool| {
        string_field(map, name, required, numbers).map_err(|problem| DataError::BadField {
            path: path.to_owned(),
            record,
            field: name,
            problem,
        })
    };
    Ok(Record {
        instruction: field("instruction", true, false)?,
        input: field("input", false, false)?,
        output: field("output", false, false)?,
        answer: field("answer", false, true)?,
    })
}

/// A string field; `Err` holds what is wrong with it.
fn string_field(
    map: &Map<String, Value>,
    name: &str,
    required: bool,
    numbers: bool,
) -> std::result::Result<String, String> {
    match map.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) if numbers => Ok(n.to_string()),
        None | Some(Value::Null) if !required => Ok(String::new()),
        None => Err("is missing".into()),
        Some(v) => Err(format!("must be a string, found {}", json_type(v))),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Record>> {
        parse_records(text, Path::new("test.json"))
    }

    #[test]
    fn reads_a_json_array_with_missing_and_null_fields() {
        let records = parse(
            r#"[{"instruction": "q1", "input": "", "output": "o", "answer": "true"},
                {"instruction": "q2", "answer": 18},
                {"instruction": "q3", "output": null, "extra": [1]}]"#,
        )
        .unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].answer, "true");
        assert_eq!(records[0].response(ResponseField::Output), "o");
        assert_eq!(records[1].answer, "18");
        assert_eq!(records[1].output, "");
        assert_eq!(records[2].instruction, "q3");
        assert_eq!(records[2].answer, "");
    }

    #[test]
    fn reads_json_lines_with_blank_lines_and_crlf() {
        let text =
            "{\"instruction\": \"a\", \"answer\": \"x\"}\r\n\n  \n{\"instruction\": \"b\"}\n";
        let records = parse(text).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].answer, "x");
        assert_eq!(records[1].instruction, "b");
    }

    #[test]
    fn empty_text_is_an_empty_data_set() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse(" \n").unwrap().is_empty());
        assert!(parse("[]").unwrap().is_empty());
    }

    #[test]
    fn malformed_records_name_file_record_and_field() {
        let err = parse(r#"[{"instruction": "a"}, {"input": "b"}]"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.json: record 1: field `instruction` is missing"
        );
        let err = parse(r#"[{"instruction": "a", "output": 3}]"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.json: record 0: field `output` must be a string, found a number"
        );
        let err = parse("{\"instruction\": \"a\"}\n\n{\"instruction\": [\"b\"]}").unwrap_err();
        assert!(matches!(
            err,
            DataError::BadField {
                record: 1,
                field: "instruction",
                ..
            }
        ));
        let err = parse(r#"[{"instruction": "a"}, 7]"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.json: record 1 is not a JSON object (found a number)"
        );
    }

    #[test]
    fn broken_json_is_reported_with_its_record_and_line() {
        let err = parse("{\"instruction\": \"a\"}\n\n{\"instruction\": \"b\"\n").unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("test.json: invalid JSON in record 1 (line 3)"),
            "{message}"
        );
        assert!(matches!(
            parse("[{\"instruction\": }]"),
            Err(DataError::Json { .. })
        ));
        assert!(matches!(
            parse("instruction,answer"),
            Err(DataError::UnknownFormat { .. })
        ));
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let err = load_records(Path::new("/nonexistent/boolq/test.json")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/boolq/test.json"));
    }
}
