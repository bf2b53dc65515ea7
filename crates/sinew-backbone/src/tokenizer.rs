//! Tokenization with the model's `tokenizer.json` and sinew's own padding and truncation.
//!
//! Checkpoints often carry padding and truncation fixed for their training (all-MiniLM-L6-v2:
//! always pad to 128, cut at 128). sinew replaces both: pad to the longest text of each batch and
//! truncate at `max_len`, warning about each text that was cut.

use std::path::Path;

use burn::prelude::*;
use tokenizers::{
    EncodeInput, Encoding, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{BackboneError, Result};
use crate::model::EncoderInput;

/// A HuggingFace tokenizer set up for dynamic padding.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
}

/// A padded batch of token ids, row-major `[batch][token]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// Token ids.
    pub input_ids: Vec<Vec<u32>>,
    /// Segment ids.
    pub token_type_ids: Vec<Vec<u32>>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
    /// Indices of the texts that were cut at `max_len`.
    pub truncated: Vec<usize>,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, truncating inputs at `max_len` tokens.
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let err = |message: String| BackboneError::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(err("not found".into()));
        }
        let mut inner = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        let (pad_id, pad_type_id, pad_token) = match inner.get_padding() {
            Some(p) => (p.pad_id, p.pad_type_id, p.pad_token.clone()),
            None => {
                let token = "[PAD]";
                let id = inner.token_to_id(token).ok_or_else(|| {
                    err("no padding settings and no `[PAD]` token in the vocabulary".into())
                })?;
                (id, 0, token.to_string())
            }
        };
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id,
            pad_token,
        }));
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| err(e.to_string()))?;
        Ok(Self { inner, max_len })
    }

    /// Longest input kept, in tokens (special tokens included).
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokenizes single texts.
    pub fn encode<S: AsRef<str>>(&self, texts: &[S]) -> Result<TokenBatch> {
        let inputs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let encodings = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| BackboneError::Tokenize(e.to_string()))?;
        Ok(Self::collect(encodings))
    }

    /// Tokenizes texts with an optional second text each: a pair is `[CLS] a [SEP] b [SEP]`
    /// (segment ids 0 then 1), a text alone `[CLS] a [SEP]`; one batch may mix both.
    pub fn encode_pairs<S: AsRef<str>>(&self, pairs: &[(S, Option<S>)]) -> Result<TokenBatch> {
        let inputs: Vec<EncodeInput> = pairs
            .iter()
            .map(|(a, b)| match b {
                Some(b) => (a.as_ref().to_string(), b.as_ref().to_string()).into(),
                None => a.as_ref().to_string().into(),
            })
            .collect();
        let encodings = self
            .inner
            .encode_batch(inputs, true)
            .map_err(|e| BackboneError::Tokenize(e.to_string()))?;
        Ok(Self::collect(encodings))
    }

    fn collect(encodings: Vec<Encoding>) -> TokenBatch {
        let truncated = encodings
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.get_overflowing().is_empty())
            .map(|(i, _)| i)
            .collect();
        TokenBatch {
            input_ids: encodings.iter().map(|e| e.get_ids().to_vec()).collect(),
            token_type_ids: encodings
                .iter()
                .map(|e| e.get_type_ids().to_vec())
                .collect(),
            attention_mask: encodings
                .iter()
                .map(|e| e.get_attention_mask().to_vec())
                .collect(),
            truncated,
        }
    }
}

impl TokenBatch {
    /// Number of texts.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether the batch holds no text.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// The batch as tensors on `device`.
    pub fn to_input<B: Backend>(&self, device: &B::Device) -> EncoderInput<B> {
        let tensor = |rows: &Vec<Vec<u32>>| {
            let batch = rows.len();
            let seq = rows.first().map_or(0, Vec::len);
            let flat: Vec<i64> = rows.iter().flatten().map(|&v| i64::from(v)).collect();
            Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [batch, seq]), device)
        };
        EncoderInput {
            input_ids: tensor(&self.input_ids),
            token_type_ids: tensor(&self.token_type_ids),
            attention_mask: tensor(&self.attention_mask),
        }
    }
}
