//! One error type for adapters; every message is one line naming the file and key.

use std::path::{Path, PathBuf};

/// What can go wrong building, loading or running adapters.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file's content is wrong: a config key, a tensor name or shape.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// The caller asked for something that does not exist or does not fit.
    #[error("{0}")]
    Input(String),
    /// The backbone failed.
    #[error(transparent)]
    Backbone(#[from] sinew_backbone::BackboneError),
}

impl AdapterError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Self::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Result with [`AdapterError`].
pub type Result<T, E = AdapterError> = std::result::Result<T, E>;
