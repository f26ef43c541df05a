//! Private staging directories, where a layer is built before it is
//! published. Each is held by a lock; a staging directory whose lock nobody
//! holds was left by a dead process and is removed.

use std::io;
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;

use crate::lock::{LockGuard, LockKind};
use crate::{Error, Result};

const PREFIX: &str = "strata-";

/// A layer under construction: `tree` is what the layer's files go into.
/// Dropping it removes whatever is still in the staging directory.
#[derive(Debug)]
pub struct Staged {
    /// `strata-<random>`: names the directory, its lock and side files.
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) tree: Dir,
    lock_path: PathBuf,
    _lock: LockGuard,
}

impl Staged {
    /// Makes `<staging>/strata-<random>/tree` (mode `tree_mode`).
    pub(crate) fn new(staging: &Path, tree_mode: u32) -> Result<Staged> {
        crate::mkdir_mode(staging, 0o700)?;
        let name = format!("{PREFIX}{}", &crate::files::random_id().map_err(|e| Error::io(staging, e))?[..20]);
        let path = staging.join(&name);
        let lock_path = staging.join(format!("{name}.lock"));
        // The lock file appears under its name already locked: a cleaner
        // that finds it free knows its owner is gone, never that it has
        // not started yet.
        let fresh = staging.join(format!(".{name}.lock.new"));
        let lock = LockGuard::acquire(&fresh, LockKind::Exclusive, true).map_err(|e| Error::io(&fresh, e))?;
        std::fs::rename(&fresh, &lock_path).map_err(|e| Error::io(&lock_path, e))?;
        std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
        let dir = Dir::open_ambient_dir(&path, cap_std::ambient_authority()).map_err(|e| Error::io(&path, e))?;
        dir.create_dir("tree").map_err(|e| Error::io(&path, e))?;
        let tree = dir.open_dir("tree").map_err(|e| Error::io(&path, e))?;
        rustix::fs::chmod(path.join("tree"), rustix::fs::Mode::from_raw_mode(tree_mode))
            .map_err(|e| Error::io(&path, e.into()))?;
        Ok(Staged {
            name,
            path,
            tree,
            lock_path,
            _lock: lock,
        })
    }

    /// The directory of the tree to fill.
    pub fn tree(&self) -> &Dir {
        &self.tree
    }

    pub(crate) fn tree_path(&self) -> PathBuf {
        self.path.join("tree")
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = remove_tree(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}

/// `rm -rf`, making read-only directories writable on the way (a layer's
/// root may be 0555 and its subdirectories anything).
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            // As root the mode never stops us; without privileges, open up
            // directories and retry.
            fn open_up(p: &Path) {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(md) = std::fs::symlink_metadata(p)
                    && md.is_dir()
                {
                    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
                    if let Ok(entries) = std::fs::read_dir(p) {
                        for e in entries.flatten() {
                            open_up(&e.path());
                        }
                    }
                }
            }
            open_up(path);
            std::fs::remove_dir_all(path)
        }
    }
}

/// A side file of a staging directory kept elsewhere (a tar-split in the
/// layers directory, which may be another mount): `.tmp-<staging>.<suffix>`.
pub(crate) fn side_file_name(staged: &str, suffix: &str) -> String {
    format!(".tmp-{staged}.{suffix}")
}

/// Removes side files (see [`side_file_name`]) in `dir` whose staging
/// directory's lock is free: their owner died.
pub(crate) fn clean_side_files(dir: &Path, staging: &Path) -> Result<usize> {
    let mut removed = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(staged) = name.strip_prefix(".tmp-").and_then(|n| n.split('.').next()) else {
            continue;
        };
        if !staged.starts_with(PREFIX) {
            continue;
        }
        let lock_path = staging.join(format!("{staged}.lock"));
        // The owner takes the lock before it creates the file: a free (or
        // missing) lock means nobody will finish it.
        if let Ok(Some(_held)) = LockGuard::try_acquire(&lock_path, LockKind::Exclusive, true) {
            let _ = std::fs::remove_file(entry.path());
            if !staging.join(staged).exists() {
                let _ = std::fs::remove_file(&lock_path);
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// Removes staging directories whose owner died (their lock is free).
pub(crate) fn clean_stale(staging: &Path) -> Result<usize> {
    let entries = match std::fs::read_dir(staging) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(staging, e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(base) = name.strip_prefix(PREFIX).and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        let lock_path = staging.join(name);
        if let Ok(Some(_held)) = LockGuard::try_acquire(&lock_path, LockKind::Exclusive, true) {
            remove_tree(&staging.join(format!("{PREFIX}{base}"))).map_err(|e| Error::io(&lock_path, e))?;
            let _ = std::fs::remove_file(&lock_path);
            removed += 1;
        }
    }
    Ok(removed)
}
