//! The encoder's configuration, read straight from a HuggingFace `config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{BackboneError, ConfigError, Result};

/// Hyper-parameters of a BERT-family encoder, with HuggingFace's field names.
///
/// Unknown keys in `config.json` are ignored; a missing required key is an error naming it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// `bert`, `roberta`, `xlm-roberta`, … — decides how position ids are counted.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Size of the token vocabulary (rows of the word-embedding table).
    pub vocab_size: usize,
    /// Width of every hidden state.
    pub hidden_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Number of attention heads; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of the feed-forward inner layer.
    pub intermediate_size: usize,
    /// Longest sequence the position table covers.
    pub max_position_embeddings: usize,
    /// Rows of the token-type (segment) table.
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// Epsilon of every LayerNorm.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward layer; only exact (erf) `gelu` is supported.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Dropout after embeddings and each sub-layer (active only while training).
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities (active only while training).
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Id of the padding token (RoBERTa counts positions from it).
    #[serde(default)]
    pub pad_token_id: usize,
    /// Only `absolute` position embeddings are supported.
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
}

fn default_model_type() -> String {
    "bert".into()
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}
fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_position_embedding_type() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Reads and checks a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| BackboneError::io(path, e))?;
        Self::from_json(&text).map_err(|error| BackboneError::Config {
            path: path.to_path_buf(),
            error,
        })
    }

    /// Parses and checks the text of a `config.json`; the error is one line.
    pub fn from_json(text: &str) -> std::result::Result<Self, ConfigError> {
        let config: Self =
            serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), ConfigError> {
        let invalid = |key, problem| Err(ConfigError::Invalid { key, problem });
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return invalid(
                "hidden_size",
                format!(
                    "{} is not divisible by num_attention_heads {}",
                    self.hidden_size, self.num_attention_heads
                ),
            );
        }
        for (key, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return invalid(key, format!("{p} is not a probability in [0, 1]"));
            }
        }
        if self.hidden_act != "gelu" {
            return invalid(
                "hidden_act",
                format!("`{}` is not supported (only exact `gelu`)", self.hidden_act),
            );
        }
        if self.position_embedding_type != "absolute" {
            return invalid(
                "position_embedding_type",
                format!(
                    "`{}` is not supported (only `absolute`)",
                    self.position_embedding_type
                ),
            );
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// RoBERTa-style models count positions from `pad_token_id + 1` and skip padding.
    pub fn roberta_positions(&self) -> bool {
        self.model_type.contains("roberta")
    }

    /// Longest input, in tokens, the position table allows.
    pub(crate) fn max_tokens(&self) -> usize {
        if self.roberta_positions() {
            self.max_position_embeddings - self.pad_token_id - 1
        } else {
            self.max_position_embeddings
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"{"architectures":["BertModel"],"attention_probs_dropout_prob":0.1,
        "hidden_act":"gelu","hidden_dropout_prob":0.1,"hidden_size":384,"initializer_range":0.02,
        "intermediate_size":1536,"layer_norm_eps":1e-12,"max_position_embeddings":512,
        "model_type":"bert","num_attention_heads":12,"num_hidden_layers":6,"pad_token_id":0,
        "position_embedding_type":"absolute","type_vocab_size":2,"vocab_size":30522}"#;

    #[test]
    fn parses_minilm_and_ignores_unknown_keys() {
        let c = BertConfig::from_json(MINILM).unwrap();
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.head_dim()),
            (384, 6, 32)
        );
        assert!(!c.roberta_positions());
    }

    #[test]
    fn missing_required_key_is_named() {
        let text = MINILM.replace(r#""num_hidden_layers":6,"#, "");
        let err = BertConfig::from_json(&text).unwrap_err().to_string();
        assert!(err.contains("missing field `num_hidden_layers`"), "{err}");
    }

    #[test]
    fn dropout_outside_zero_one_is_named() {
        for (key, bad) in [
            ("hidden_dropout_prob", "1.5"),
            ("attention_probs_dropout_prob", "-0.1"),
        ] {
            let text = MINILM.replace(&format!(r#""{key}":0.1"#), &format!(r#""{key}":{bad}"#));
            let err = BertConfig::from_json(&text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn rejects_indivisible_heads() {
        let text = MINILM.replace(r#""num_attention_heads":12"#, r#""num_attention_heads":7"#);
        assert!(BertConfig::from_json(&text)
            .unwrap_err()
            .to_string()
            .contains("divisible"));
    }
}
