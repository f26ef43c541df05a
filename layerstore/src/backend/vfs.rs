//! The vfs driver: each layer is a whole tree, `<graphroot>/vfs/dir/<id>`,
//! copied from its parent and then changed. Works on any filesystem.

use std::path::{Path, PathBuf};

use cap_std::fs::Dir;
use strata_overlaydiff::{ChangeSink, WalkDiffer, Whiteouts};

use super::{ApplyMode, Staged, StoreBackend, staging};
use crate::{Error, Result, check_id};

#[derive(Debug)]
pub struct Vfs {
    home: PathBuf,
}

impl Vfs {
    /// The driver rooted at `<graphroot>/vfs`.
    pub fn new(graphroot: &Path) -> Result<Vfs> {
        let home = graphroot.join("vfs");
        for dir in [&home, &home.join("dir")] {
            crate::mkdir_mode(dir, 0o700)?;
        }
        Ok(Vfs { home })
    }

    /// The driver of a store opened read-only: nothing is created.
    pub fn existing(graphroot: &Path) -> Vfs {
        Vfs {
            home: graphroot.join("vfs"),
        }
    }

    fn layer_path(&self, id: &str) -> Result<PathBuf> {
        check_id(id)?;
        Ok(self.home.join("dir").join(id))
    }

    fn open(&self, id: &str) -> Result<Dir> {
        let path = self.layer_path(id)?;
        Dir::open_ambient_dir(&path, cap_std::ambient_authority()).map_err(|e| Error::io(&path, e))
    }
}

impl StoreBackend for Vfs {
    fn name(&self) -> &'static str {
        "vfs"
    }

    fn apply_mode(&self) -> ApplyMode {
        ApplyMode {
            whiteouts: Whiteouts::Remove,
            root_metadata: true,
        }
    }

    fn stage(&self, parent: Option<&str>, template: Option<&str>) -> Result<Staged> {
        let staged = Staged::new(&self.home.join(crate::backend::STAGING_DIR), 0o555)?;
        if let Some(source) = template.or(parent) {
            let from = self.open(source)?;
            let path = self.layer_path(source)?;
            strata_overlaydiff::copy_tree(&from, &staged.tree).map_err(|e| Error::io(&path, e))?;
        }
        Ok(staged)
    }

    fn publish(&self, staged: Staged, id: &str, _parent: Option<&str>) -> Result<()> {
        let target = self.layer_path(id)?;
        if target.exists() {
            staging::remove_tree(&target).map_err(|e| Error::io(&target, e))?;
        }
        std::fs::rename(staged.tree_path(), &target).map_err(|e| Error::io(&target, e))
    }

    fn remove(&self, id: &str) -> Result<()> {
        let path = self.layer_path(id)?;
        staging::remove_tree(&path).map_err(|e| Error::io(&path, e))
    }

    fn detach(&self, id: &str, into: &Path) -> Result<()> {
        let path = self.layer_path(id)?;
        match std::fs::rename(&path, into) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }

    fn exists(&self, id: &str) -> bool {
        self.layer_path(id).is_ok_and(|p| p.is_dir())
    }

    fn list(&self) -> Result<Vec<String>> {
        crate::list_dir_names(&self.home.join("dir"))
    }

    fn mount(&self, id: &str, _read_only: bool) -> Result<PathBuf> {
        // A vfs "mount" is the directory itself.
        let path = self.layer_path(id)?;
        if !path.is_dir() {
            return Err(Error::Corrupt {
                what: path.display().to_string(),
                reason: "layer directory is missing".into(),
            });
        }
        Ok(path)
    }

    fn unmount(&self, _id: &str) -> Result<()> {
        Ok(())
    }

    fn content_dirs(&self, id: &str) -> Result<Vec<Dir>> {
        Ok(vec![self.open(id)?])
    }

    fn changes(&self, id: &str, parent: Option<&str>, sink: &mut dyn ChangeSink) -> Result<()> {
        let new = self.open(id)?;
        let empty;
        let old = match parent {
            Some(p) => self.open(p)?,
            None => {
                empty = tempfile::tempdir().map_err(|e| Error::io(Path::new("/tmp"), e))?;
                Dir::open_ambient_dir(empty.path(), cap_std::ambient_authority())
                    .map_err(|e| Error::io(empty.path(), e))?
            }
        };
        WalkDiffer::new(&old, &new).diff(sink).map_err(Error::from)
    }
}
