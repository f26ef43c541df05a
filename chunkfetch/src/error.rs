use std::io;

/// What can go wrong fetching blob bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused a request for this many ranges (HTTP 400, 416
    /// or 501 to a multi-range request): merge ranges and try again.
    #[error("{url}: the server refused a request for {ranges} byte ranges (HTTP {status}); merge them and retry")]
    RangesRefused { url: String, status: u16, ranges: usize },
    /// A range reaches past the end of the blob.
    #[error("byte range {offset}+{length} reaches past the end of the blob ({size} bytes)")]
    OutOfBounds { offset: u64, length: u64, size: u64 },
    /// The caller asked for ranges no source can serve.
    #[error("invalid byte ranges: {0}")]
    BadRanges(String),
    /// The server answered, but not in a way the protocol allows.
    #[error("{url}: {reason}")]
    Protocol { url: String, reason: String },
    /// An HTTP error status.
    #[error("{url}: HTTP {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Http { url: String, status: u16, message: String },
    /// The connection failed (after the retries).
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{what}: not found")]
    NotFound { what: String },
    #[error("{what}: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    /// The range consumer failed; its error, unchanged.
    #[error(transparent)]
    Sink(io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl std::fmt::Display, source: io::Error) -> Error {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }

    pub(crate) fn protocol(url: &str, reason: impl Into<String>) -> Error {
        Error::Protocol {
            url: url.to_owned(),
            reason: reason.into(),
        }
    }

    /// Worth another try: the connection broke or the server was briefly
    /// unable (not a refusal, not a lie).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Http { status, .. } => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }
}
