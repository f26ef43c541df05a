#![doc = include_str!("../README.md")]

mod apply;
mod change;
mod copy;
mod idmap;
mod known;
mod lower;
mod meta;
mod mount;
pub mod options;
mod upper;
mod walk;
mod writers;

use std::ffi::OsString;

pub use apply::{Extractor, Whiteouts, apply_layer};
pub use change::{Change, ChangeSink, TarSink};
pub use copy::copy_tree;
pub use idmap::{IdMapping, IdRange};
pub use known::{KnownContent, KnownFile};
pub use lower::LowerView;
pub use meta::{Kind, Meta};
pub use mount::ReadOnlyOverlay;
pub use options::{MountOptions, OptionsError, XattrNamespace};
pub use upper::UpperDiffer;
pub use walk::WalkDiffer;

/// What went wrong while diffing or applying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The upperdir uses `redirect_dir` or `metacopy`: its contents are not
    /// the whole change. Use the walking differ instead.
    #[error("{path} has {xattr}: this upperdir needs the walking differ")]
    NeedsWalk { path: String, xattr: String },
    #[error("unsafe path in layer: {path} ({reason})")]
    UnsafePath { path: String, reason: &'static str },
    #[error("invalid layer entry {path}: {reason}")]
    InvalidEntry { path: String, reason: String },
    #[error(transparent)]
    Options(#[from] OptionsError),
}

impl Error {
    pub(crate) fn io_at(path: &[OsString], source: std::io::Error) -> Self {
        let path = upper::display(path);
        Error::Io {
            path: if path.is_empty() { ".".into() } else { path },
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
