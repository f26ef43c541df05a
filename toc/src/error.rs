use std::io;

/// Why a blob or its TOC was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Tar(#[from] strata_tarsplit::Error),
    #[error("bad footer: {0}")]
    BadFooter(&'static str),
    #[error("bad annotation {key}: {reason}")]
    BadAnnotation { key: String, reason: String },
    #[error("{what} at {offset}+{len} lies outside the {blob_len}-byte blob")]
    OutOfBounds {
        what: &'static str,
        offset: u64,
        len: u64,
        blob_len: u64,
    },
    #[error("{what} is {len} bytes, more than the {limit}-byte limit")]
    TooLarge {
        what: &'static str,
        len: u64,
        limit: u64,
    },
    #[error("{what} digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("cannot decompress {what}: {reason}")]
    Decompress { what: &'static str, reason: String },
    #[error("invalid TOC: {0}")]
    InvalidToc(String),
    #[error("invalid TOC entry {index} ({name}): {reason}")]
    InvalidEntry {
        index: usize,
        name: String,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
