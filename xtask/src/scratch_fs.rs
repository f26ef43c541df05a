//! A fresh ext4 on a loop device for the benchmarks' stores and trees.
//!
//! This VM's disk is ext4 without a journal: there, creating files soon
//! after many were deleted scans past every recently freed inode (for up to
//! minutes), so a benchmark that deletes between runs times the deletions.
//! A new filesystem per benchmark (with a journal, as hosts have) starts
//! clean every time and is gone, with everything in it, at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;

pub struct ScratchFs {
    image: PathBuf,
    mount: PathBuf,
    mounted: bool,
}

impl ScratchFs {
    /// A filesystem of `gib` GiB mounted under `dir` (its image file beside
    /// it). Without root or loop devices, a plain directory instead.
    pub fn new(dir: &Path, gib: u64) -> Result<ScratchFs, Error> {
        ScratchFs::with_kind(dir, "ext4", gib)
    }

    /// The same with another filesystem: `ext4`, or `xfs` (with reflinks).
    pub fn with_kind(dir: &Path, kind: &str, gib: u64) -> Result<ScratchFs, Error> {
        std::fs::create_dir_all(dir)?;
        let image = dir.join(format!("scratch.{kind}"));
        let mount = dir.join("scratch");
        let _ = Command::new("umount").arg("-R").arg(&mount).stderr(Stdio::null()).status();
        let _ = std::fs::remove_file(&image);
        let _ = std::fs::remove_dir_all(&mount);
        std::fs::create_dir_all(&mount)?;
        let made = std::fs::File::create(&image)
            .and_then(|f| f.set_len(gib << 30))
            .is_ok()
            && Command::new(format!("mkfs.{kind}"))
                .args(match kind {
                    "xfs" => &["-q", "-f", "-m", "reflink=1"][..],
                    _ => &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"][..],
                })
                .arg(&image)
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            && Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&mount)
                .status()
                .is_ok_and(|s| s.success());
        if !made {
            eprintln!("no loop-mounted scratch filesystem (needs root and loop devices): using {}", mount.display());
            let _ = std::fs::remove_file(&image);
        }
        Ok(ScratchFs {
            image,
            mount,
            mounted: made,
        })
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }
}

impl Drop for ScratchFs {
    fn drop(&mut self) {
        // Overlay mounts made inside go first.
        let _ = Command::new("umount").arg("-R").arg(&self.mount).stderr(Stdio::null()).status();
        if self.mounted {
            let _ = std::fs::remove_file(&self.image);
        }
        let _ = std::fs::remove_dir_all(&self.mount);
    }
}
