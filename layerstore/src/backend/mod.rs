//! Where a layer's files live: the [`StoreBackend`] trait and its two
//! implementations, the vfs and overlay drivers' on-disk layouts.

pub(crate) mod overlay;
mod staging;
mod vfs;

use std::path::PathBuf;

use cap_std::fs::Dir;
use strata_overlaydiff::{ChangeSink, Whiteouts};

pub use overlay::Overlay;
pub use staging::Staged;
pub(crate) use staging::{clean_side_files, clean_stale, side_file_name};
pub use vfs::Vfs;

use crate::Result;

/// How a new layer's tree is filled from a tar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyMode {
    pub whiteouts: Whiteouts,
    /// Whether the tar's `.` entry sets the layer root's metadata.
    pub root_metadata: bool,
}

/// A storage driver's layer directories.
///
/// Layers are built off to the side: [`stage`](Self::stage) makes a private
/// staging tree (empty, or the parent's content for a driver that stores
/// whole trees), the caller fills it without holding any store lock, and
/// [`publish`](Self::publish) moves it into place under its ID, which is
/// quick. Records, locking and recovery are the store's business, not the
/// backend's.
pub trait StoreBackend: Send + Sync + std::fmt::Debug {
    /// The driver name, as in `<graphroot>/<name>-layers`.
    fn name(&self) -> &'static str;
    /// How tar entries become files in a staged tree.
    fn apply_mode(&self) -> ApplyMode;
    /// A staging tree for a new layer on `parent` (or from `template`'s
    /// content when given instead).
    fn stage(&self, parent: Option<&str>, template: Option<&str>) -> Result<Staged>;
    /// Moves a staged tree into place as layer `id` on `parent`.
    fn publish(&self, staged: Staged, id: &str, parent: Option<&str>) -> Result<()>;
    /// Removes layer `id`'s directories (absent ones are no error).
    fn remove(&self, id: &str) -> Result<()>;
    /// Moves layer `id`'s directory to `into` (an empty directory on the
    /// same filesystem, which it replaces) and undoes what links to it, so
    /// that deleting its files, which takes long, can run without the
    /// store's lock. A backend that cannot move removes in place (the
    /// default). An absent layer directory is no error.
    fn detach(&self, id: &str, into: &std::path::Path) -> Result<()> {
        let _ = into;
        self.remove(id)
    }
    fn exists(&self, id: &str) -> bool;
    /// The layer directories present on disk.
    fn list(&self) -> Result<Vec<String>>;
    /// Makes the layer's merged tree visible; returns where.
    fn mount(&self, id: &str, read_only: bool) -> Result<PathBuf>;
    /// Undoes the last [`mount`](Self::mount) of `id`.
    fn unmount(&self, id: &str) -> Result<()>;
    /// Called when no layer of the store is mounted any more.
    fn release(&self) {}
    /// The directories a stored file of layer `id` is looked up in, in
    /// order (for reassembling the layer's tar).
    fn content_dirs(&self, id: &str) -> Result<Vec<Dir>>;
    /// The directories of the layers below a new layer on `parent`, where
    /// the extractor looks up directories a tar implies but does not list
    /// (only drivers that store diffs need them).
    fn lowers_for(&self, _parent: Option<&str>) -> Result<Vec<Dir>> {
        Ok(Vec::new())
    }
    /// The layer's changes against its parent, as OCI layer changes.
    fn changes(&self, id: &str, parent: Option<&str>, sink: &mut dyn ChangeSink) -> Result<()>;
}

pub(crate) fn remove_tree_pub(path: &std::path::Path) -> std::io::Result<()> {
    staging::remove_tree(path)
}

pub(crate) fn is_mount_point_pub(path: &std::path::Path) -> bool {
    overlay::is_mount_point(path).unwrap_or(false)
}

/// strata's staging directory inside a driver's home (hidden: drivers
/// skip dot names, and it is on the same mount as the layer directories).
pub(crate) const STAGING_DIR: &str = ".strata-staging";
