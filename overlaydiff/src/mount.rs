//! Read-only overlay mounts, for the walking differ's two views.

use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use crate::options::MountOptions;

/// A read-only merged view of directories (top-most first), unmounted on
/// drop. A single directory is its own view and is not mounted. Needs
/// CAP_SYS_ADMIN.
#[derive(Debug)]
pub struct ReadOnlyOverlay {
    path: PathBuf,
    mountpoint: Option<tempfile::TempDir>,
}

impl ReadOnlyOverlay {
    pub fn mount(layers: &[PathBuf]) -> io::Result<Self> {
        match layers {
            [] => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no layers to view",
            )),
            [only] => Ok(ReadOnlyOverlay {
                path: only.clone(),
                mountpoint: None,
            }),
            _ => {
                let dir = tempfile::Builder::new().prefix("strata-view-").tempdir()?;
                let options = MountOptions {
                    lowers: layers.to_vec(),
                    ..MountOptions::default()
                }
                .to_string();
                let data = std::ffi::CString::new(options).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "NUL in a layer path")
                })?;
                rustix::mount::mount(
                    "overlay",
                    dir.path(),
                    "overlay",
                    MountFlags::RDONLY,
                    Some(data.as_c_str()),
                )?;
                Ok(ReadOnlyOverlay {
                    path: dir.path().to_path_buf(),
                    mountpoint: Some(dir),
                })
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ReadOnlyOverlay {
    fn drop(&mut self) {
        if self.mountpoint.is_some() {
            let _ = rustix::mount::unmount(&self.path, UnmountFlags::DETACH);
        }
    }
}
