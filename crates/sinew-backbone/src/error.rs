//! One error type for the backbone; every message is one line naming the file and key.

use std::path::{Path, PathBuf};

/// What can go wrong loading or running the backbone.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `config.json` is malformed or describes an unsupported model.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
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
    /// Downloading or unpacking the model package failed.
    #[error("fetching {what}: {message}")]
    Fetch {
        /// What was being fetched.
        what: String,
        /// What went wrong.
        message: String,
    },
    /// The caller passed something unusable.
    #[error("{0}")]
    Input(String),
}

impl BackboneError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Result with [`BackboneError`].
pub type Result<T, E = BackboneError> = std::result::Result<T, E>;
