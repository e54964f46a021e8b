//! Rebuilding an HF `tokenizer.json` from a GGUF file's embedded vocabulary, so a GGUF checkpoint
//! is self-sufficient. Supports byte-level BPE (`tokenizer.ggml.model = gpt2`) with the pre-
//! tokenizers we know the exact HF equivalent of (`smollm`: individual digits, then byte-level).

use serde_json::{json, Value};

use crate::error::{LlamaError, Result};
use crate::gguf::{GgufFile, GgufValue};

/// GGUF token types that are special (added) tokens: 3 = control, 4 = user-defined.
const SPECIAL_TOKEN_TYPES: [u64; 2] = [3, 4];

fn unsupported(file: &GgufFile, what: String) -> LlamaError {
    LlamaError::Tokenizer {
        path: file.path().to_owned(),
        message: what,
    }
}

/// The `tokenizer.json` text equivalent to the GGUF's tokenizer.
pub fn tokenizer_json_from_gguf(file: &GgufFile) -> Result<String> {
    let meta = file.metadata();
    let get_str = |key: &str| meta.get(key).and_then(GgufValue::as_str).unwrap_or("");
    let get_array = |key: &str| {
        meta.get(key)
            .and_then(GgufValue::as_array)
            .ok_or_else(|| unsupported(file, format!("GGUF has no {key}")))
    };
    if get_str("tokenizer.ggml.model") != "gpt2" {
        return Err(unsupported(
            file,
            format!(
                "tokenizer model `{}` (only byte-level BPE, `gpt2`)",
                get_str("tokenizer.ggml.model")
            ),
        ));
    }
    let pre_tokenizer = match get_str("tokenizer.ggml.pre") {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]}),
        other => {
            return Err(unsupported(
                file,
                format!("pre-tokenizer `{other}` (only `smollm`)"),
            ))
        }
    };
    let tokens = get_array("tokenizer.ggml.tokens")?;
    let types = get_array("tokenizer.ggml.token_type")?;
    let merges = get_array("tokenizer.ggml.merges")?;

    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        let token = token
            .as_str()
            .ok_or_else(|| unsupported(file, format!("token {id} is not a string")))?;
        vocab.insert(token.to_owned(), json!(id));
        let kind = types.get(id).and_then(GgufValue::as_u64).unwrap_or(1);
        if SPECIAL_TOKEN_TYPES.contains(&kind) {
            added.push(
                json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}),
            );
        }
    }
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| {
            let text = m.as_str().unwrap_or("");
            match text.split_once(' ') {
                Some((a, b)) => Ok(json!([a, b])),
                None => Err(unsupported(file, format!("malformed merge `{text}`"))),
            }
        })
        .collect::<Result<_>>()?;
    let json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    let text = json.to_string();
    // Fail here, naming the GGUF, rather than later when the file is loaded.
    text.parse::<tokenizers::Tokenizer>()
        .map_err(|e| unsupported(file, format!("rebuilt tokenizer does not load: {e}")))?;
    Ok(text)
}
