#![doc = include_str!("../README.md")]

mod apply;
mod pgzip;
pub mod backend;
mod error;
mod export;
mod files;
mod fsck;
mod images;
mod index;
mod json;
pub mod lock;
mod mounts;
mod records;
mod store;
mod verity;

use std::path::Path;

pub use apply::{Compression, DIFF_ID_UNCHECKED, LayerOptions, SourceBlob, SplitObserver, SplitObserverHandle, TarOutput};
pub use backend::{ApplyMode, Overlay, StoreBackend, Vfs};
pub use error::{Error, Result};
pub use export::DiffOptions;
pub use images::ImageOptions;
pub use json::{rfc3339, to_go_json};
pub use records::{IdMap, ImageRecord as Image, LayerRecord as Layer, MountRecord, valid_digest, valid_id};
pub use store::{Driver, Problem, Store, StoreOptions, chain_id};
pub use strata_fsverity::Policy as FsVerity;
pub use strata_overlaydiff::{KnownContent, KnownFile};
pub use verity::FS_VERITY_DIGESTS;

/// The overlay backend can work here: overlayfs in the kernel and the
/// privilege to mount it.
pub fn overlay_supported() -> bool {
    backend::overlay::supported()
}

/// An ID read from a store file is used as a path component: refuse
/// anything that could name another directory.
pub(crate) fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id == "." || id == ".." || id.contains(['/', '\0', ' ']) || id.len() > 255 {
        return Err(Error::Corrupt {
            what: format!("layer or image ID {id:?}"),
            reason: "not a usable ID".into(),
        });
    }
    Ok(())
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    rustix::fs::chmod(path, rustix::fs::Mode::from_raw_mode(mode)).map_err(|e| Error::io(path, e.into()))
}

/// `mkdir -p` with `mode` for the last component (ignoring the umask).
pub(crate) fn mkdir_mode(path: &Path, mode: u32) -> Result<()> {
    match std::fs::create_dir(path) {
        Ok(()) => set_mode(path, mode),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                mkdir_mode(parent, 0o700)?;
            }
            mkdir_mode(path, mode)
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

pub(crate) fn list_dir_names(path: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io(path, e))?;
        if e.file_type().is_ok_and(|t| t.is_dir())
            && let Ok(name) = e.file_name().into_string()
        {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}
