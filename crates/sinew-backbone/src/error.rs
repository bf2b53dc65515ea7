//! One error type for the backbone; every message is one line naming the file and key.

use std::path::{Path, PathBuf};

/// What can go wrong loading or running the backbone.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// `config.json` is malformed or describes an unsupported model.
    #[error("{path}: {error}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the key.
        error: ConfigError,
    },
    /// The weights file is unreadable or does not fit the config.
    #[error("{path}: {message}")]
    Weights {
        /// The weights file.
        path: PathBuf,
        /// What is wrong, naming the tensor.
        message: String,
    },
    /// `tokenizer.json` is missing or malformed.
    #[error("{path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A model folder lacks one of its files.
    #[error("{path}: not found (a model folder needs config.json, model.safetensors and tokenizer.json)")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A maximum input length past the model's position table.
    #[error(
        "a maximum length of {requested} tokens exceeds the model's {limit} positions ({config})"
    )]
    MaxLen {
        /// The length asked for.
        requested: usize,
        /// The model's limit.
        limit: usize,
        /// The model's `config.json`.
        config: PathBuf,
    },
    /// The tokenizer failed on an input.
    #[error("tokenizing: {0}")]
    Tokenize(String),
}

/// What is wrong with a model's `config.json`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, or a missing or mistyped field.
    #[error("{0}")]
    Json(String),
    /// A value sinew cannot run, by its key.
    #[error("{key} {problem}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
}

impl BackboneError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            error: source,
        }
    }
}

/// Result with [`BackboneError`].
pub type Result<T, E = BackboneError> = std::result::Result<T, E>;
