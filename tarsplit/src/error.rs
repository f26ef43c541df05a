use std::fmt;
use std::io;

/// A tar entry name as raw bytes, shown quoted with invalid UTF-8 escaped.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Name(pub Vec<u8>);

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                write!(f, "{}", c.escape_debug())?;
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_str("\"")
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<&[u8]> for Name {
    fn from(bytes: &[u8]) -> Self {
        Name(bytes.to_vec())
    }
}

/// Everything that can go wrong while splitting or reassembling a tar.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Io(#[from] io::Error),

    #[error("invalid tar header at byte {offset}: {reason}")]
    InvalidTar { offset: u64, reason: &'static str },

    #[error("tar stream ends early at byte {offset}: {what} is cut off")]
    Truncated { offset: u64, what: &'static str },

    #[error("duplicate path in archive: {name} (tar-split cannot represent it)")]
    DuplicatePath { name: Name },

    #[error("invalid tar-split metadata at entry {index}: {reason}")]
    InvalidMetadata { index: u64, reason: String },

    #[error(
        "checksum mismatch for {name}: metadata has crc64 {expected}, file content has {actual}"
    )]
    ChecksumMismatch {
        name: Name,
        expected: String,
        actual: String,
    },

    #[error("size mismatch for {name}: metadata says {expected} bytes, file has {actual}")]
    SizeMismatch {
        name: Name,
        expected: u64,
        actual: String,
    },

    #[error("cannot get file {name}: {source}")]
    Get { name: Name, source: io::Error },

    #[error("cannot put file {name}: {source}")]
    Put { name: Name, source: io::Error },

    #[error("unsafe path {name}: {reason}")]
    UnsafePath { name: Name, reason: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_show_escaped() {
        assert_eq!(Name(b"a\n\xff/b".to_vec()).to_string(), "\"a\\n\\xff/b\"");
    }
}
