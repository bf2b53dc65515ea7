//! The one error type of the data layer: every message is one line naming the file, row or
//! package.

/// Errors of the data layer: one line naming the file (and line or row).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or row that cannot be read as its format says.
    #[error("{path}: {}", one_line(message))]
    File {
        /// The file (`archive!member` inside a package, `file:line` for a row).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Fetching failed.
    #[error("fetching {what}: {}", one_line(message))]
    Fetch {
        /// The package.
        what: String,
        /// Why.
        message: String,
    },
    /// A file or folder could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file or folder.
        path: std::path::PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// Writing a file atomically or checksumming it failed.
    #[error(transparent)]
    Files(#[from] sinew_backbone::BackboneError),
}

impl DataError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            error: source,
        }
    }
}

/// `text` with its line breaks escaped: a message may quote a file's content, and an error is one
/// line.
pub(crate) fn one_line(text: &str) -> String {
    text.replace('\r', "\\r").replace('\n', "\\n")
}
