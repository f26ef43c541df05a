/// What can go wrong in a whole-stack operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Fetch(#[from] strata_chunkfetch::Error),
    #[error(transparent)]
    Store(#[from] strata_layerstore::Error),
    #[error("layer {digest}: {source}")]
    Toc { digest: String, source: strata_toc::Error },
    #[error("layer {digest}: {reason}")]
    Layer { digest: String, reason: String },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
