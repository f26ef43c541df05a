use std::path::Path;

/// What went wrong in a store operation. Messages name the file, layer or
/// tar entry at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// A store file or directory is damaged; nothing was changed.
    #[error("{what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} is ambiguous: it is a prefix of several IDs")]
    Ambiguous(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0}")]
    InUse(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The layer tar itself is bad or unsafe.
    #[error("layer tar: {0}")]
    Layer(#[from] strata_overlaydiff::Error),
    #[error("layer tar: {0}")]
    TarSplit(#[from] strata_tarsplit::Error),
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("the store at {0} is read-only")]
    ReadOnly(String),
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
