//! What a writer of files (the puller) does about fs-verity.

use std::os::fd::AsFd;

use crate::Digest;
use crate::kernel::{Error, enable, measure};

/// Whether to enable fs-verity on files written to a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Never touch fs-verity.
    #[default]
    Disabled,
    /// Enable it where the filesystem can; skip silently where it cannot.
    IfSupported,
    /// Enable it, and fail where the filesystem cannot.
    Required,
}

impl Policy {
    /// Applies the policy to a file opened read-only with no writers. Returns
    /// the kernel's digest when verity was enabled, `None` when the policy
    /// or the filesystem left it off.
    pub fn apply<Fd: AsFd>(self, file: Fd) -> Result<Option<Digest>, Error> {
        match self {
            Policy::Disabled => Ok(None),
            Policy::IfSupported => match enable(&file) {
                Ok(()) => measure(&file).map(Some),
                Err(e) if e.is_not_supported() => Ok(None),
                Err(e) => Err(e),
            },
            Policy::Required => {
                enable(&file)?;
                measure(&file).map(Some)
            }
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disabled" | "off" => Ok(Policy::Disabled),
            "if-supported" => Ok(Policy::IfSupported),
            "required" => Ok(Policy::Required),
            other => Err(format!(
                "unknown fs-verity policy {other:?} (disabled, if-supported, required)"
            )),
        }
    }
}
