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

    /// Token ids of `prompt` as they are when text follows it, and the byte length of the prompt
    /// prefix they cover.
    ///
    /// A BPE tokenizer splits a trailing whitespace run differently at the end of the text than
    /// before a word: SmolLM2's tokenizes `"\n" + 16 spaces` alone as one token, but
    /// `"\n" + 16 spaces + "the"` as `"\n" + 15 spaces`, `" the"`. A model trained on prompt +
    /// response never saw the first form, so a prompt that is to be continued is tokenized with a
    /// word after it, and the tokens that reach into that word are left out: the continuation
    /// produces them (here `" the"`, carrying the prompt's last space). `prompt[..covered]` is the
    /// text the ids spell (the whole prompt when nothing was left out).
    pub fn encode_for_continuation(
        &self,
        prompt: &str,
        add_special_tokens: bool,
    ) -> Result<(Vec<u32>, usize)> {
        // Any word does: what matters is that it starts with a letter, as responses do.
        let text = format!("{prompt}x");
        let encoding = self
            .inner
            .encode(text.as_str(), add_special_tokens)
            .map_err(|e| self.error(e))?;
        let mut ids = Vec::with_capacity(encoding.len());
        let mut covered = 0;
        for (&id, &(_, end)) in encoding.get_ids().iter().zip(encoding.get_offsets()) {
            if end > prompt.len() {
                break;
            }
            ids.push(id);
            covered = covered.max(end);
        }
        Ok((ids, covered))
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
