//! The HF `tokenizer.json` tokenizer, through the `tokenizers` crate.

use std::path::{Path, PathBuf};

use crate::error::{LlamaError, Result};

/// A tokenizer plus the path it came from (for error messages).
#[derive(Debug, Clone)]
pub struct LlamaTokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
}

impl LlamaTokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(LlamaError::MissingFile {
                path: path.to_owned(),
                hint: "an HF tokenizer.json is needed to turn text into token ids".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| LlamaError::Tokenizer {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Self {
            inner,
            path: path.to_owned(),
        })
    }

    fn error(&self, e: tokenizers::Error) -> LlamaError {
        LlamaError::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Token ids of `text`, with the tokenizer's own special-token rules (post-processor) if
    /// `add_special_tokens`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens dropped when `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.error(e))
    }

    /// The id of a token string such as `"<|im_end|>"`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
