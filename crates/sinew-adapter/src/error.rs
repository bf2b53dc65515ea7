//! The errors of adapters: each variant carries what went wrong and where (file, key, tensor),
//! and displays as one line.

use std::path::{Path, PathBuf};

/// A setting that cannot be used, by the key it is under: in an `adapter_config.json`,
/// `head_config.json`, a PEFT config or a config built in code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A value of an AdapterHub or PEFT option that sinew does not implement.
    #[error("`{key}` = {value} is not supported")]
    Unsupported {
        /// The key.
        key: String,
        /// Its value, as JSON.
        value: String,
    },
    /// A value outside what the setting allows, or at odds with another setting or the backbone.
    #[error("`{key}` {problem}")]
    Invalid {
        /// The key.
        key: String,
        /// What is wrong with its value.
        problem: String,
    },
    /// A key that must be present is not.
    #[error("missing key `{key}`")]
    Missing {
        /// The key.
        key: String,
    },
    /// The object does not have the method's fields and types.
    #[error("config: {0}")]
    Json(String),
    /// No registered method has this `architecture`.
    #[error("`architecture` = \"{architecture}\" is not supported (sinew reads: {})", known.join(", "))]
    Architecture {
        /// The value read.
        architecture: String,
        /// The registered ones.
        known: &'static [&'static str],
    },
}

impl ConfigError {
    /// [`ConfigError::Unsupported`]; `value` is shown as JSON.
    pub fn unsupported(key: &str, value: impl std::fmt::Display) -> Self {
        Self::Unsupported {
            key: key.into(),
            value: value.to_string(),
        }
    }

    /// [`ConfigError::Invalid`].
    pub fn invalid(key: &str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// The same error about a setting inside `outer` (a union's part `configs[1]`): its key
    /// becomes `configs[1].r`.
    pub fn within(self, outer: &str) -> Self {
        let inner = |key: String| format!("{outer}.{key}");
        match self {
            Self::Unsupported { key, value } => Self::Unsupported {
                key: inner(key),
                value,
            },
            Self::Invalid { key, problem } => Self::Invalid {
                key: inner(key),
                problem,
            },
            Self::Missing { key } => Self::Missing { key: inner(key) },
            Self::Json(message) => Self::Invalid {
                key: outer.to_string(),
                problem: message,
            },
            Self::Architecture {
                architecture,
                known,
            } => Self::Invalid {
                key: inner("architecture".into()),
                problem: format!(
                    "= \"{architecture}\" is not supported (sinew reads: {})",
                    known.join(", ")
                ),
            },
        }
    }

    /// The key the error is about, where it has one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Unsupported { key, .. } | Self::Invalid { key, .. } | Self::Missing { key } => {
                Some(key)
            }
            Self::Architecture { .. } => Some("architecture"),
            Self::Json(_) => None,
        }
    }
}

/// What can go wrong building, loading or running adapters.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A file is not what its name says (not JSON, not a readable tensor file, an unsupported
    /// dtype).
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A config file holds a setting that cannot be used.
    #[error("{path}: {error}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The setting and what is wrong with it.
        error: ConfigError,
    },
    /// A config built in code holds a setting that cannot be used.
    #[error(transparent)]
    Settings(#[from] ConfigError),
    /// A weights file lacks a tensor the config calls for.
    #[error("{path}: missing tensor `{key}`")]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
    },
    /// A tensor's shape does not fit the config and the backbone.
    #[error("{path}: tensor `{key}` has shape {found:?}, the backbone needs {expected:?}")]
    Shape {
        /// The weights file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The shape the config and backbone call for.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor nothing reads: the file and its config disagree.
    #[error("{path}: tensor `{key}` does not fit the adapter's config or the backbone")]
    UnusedTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
    },
    /// `--adapter`-style spec that is neither a preset nor a config file.
    #[error("adapter `{spec}` is neither a preset ({}) nor a JSON config file", presets.join(", "))]
    UnknownPreset {
        /// What was asked for.
        spec: String,
        /// The presets there are.
        presets: Vec<&'static str>,
    },
    /// A PEFT folder was asked of an adapter of another method.
    #[error("`{name}` is not a LoRA adapter; PEFT folders hold LoRA only")]
    NotLora {
        /// The adapter.
        name: String,
    },
    /// The adapter cannot be folded into the backbone's weights.
    #[error("{reason}")]
    Unmergeable {
        /// Why.
        reason: &'static str,
    },
    /// A head that reads the pooler on a backbone without one.
    #[error("the head reads the pooler, but the model has none")]
    NoPooler,
    /// Training targets of a shape the head does not take.
    #[error("targets do not fit a {kind} head")]
    Targets {
        /// The head's kind.
        kind: String,
    },
    /// The backbone failed.
    #[error(transparent)]
    Backbone(#[from] sinew_backbone::BackboneError),
}

impl AdapterError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            error: source,
        }
    }

    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        Self::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// [`AdapterError::Config`] for `source` read from `path`.
    pub fn config(path: &Path, source: ConfigError) -> Self {
        Self::Config {
            path: path.to_path_buf(),
            error: source,
        }
    }

    /// A settings error ([`AdapterError::Settings`]) charged to the file it was read from.
    pub(crate) fn in_file(self, path: &Path) -> Self {
        match self {
            Self::Settings(error) => Self::config(path, error),
            e => e,
        }
    }
}

/// Result with [`AdapterError`].
pub type Result<T, E = AdapterError> = std::result::Result<T, E>;
