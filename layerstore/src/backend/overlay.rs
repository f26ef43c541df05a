//! The overlay driver: `<graphroot>/overlay/<id>/` holds the layer's own
//! files in `diff/` (overlay whiteout format), its short `link` name, the
//! `lower` chain of its ancestors' links, and `work/`, `merged/` (and
//! `empty/` for a base layer); `overlay/l/<link>` → `../<id>/diff`. Mounts
//! are kernel overlayfs mounts over the chain, as podman makes them, so
//! podman and strata mount each other's layers.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use strata_overlaydiff::{ChangeSink, LowerView, UpperDiffer, Whiteouts, XattrNamespace};

use super::{ApplyMode, Staged, StoreBackend, staging};
use crate::{Error, Result, check_id};

/// At most this many lowers fit one page of mount data with 26-char links.
const MAX_DEPTH: usize = 128;

#[derive(Debug)]
pub struct Overlay {
    home: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Whether the running kernel has overlayfs (and we may mount).
pub fn supported() -> bool {
    rustix::process::geteuid().is_root()
        && std::fs::read_to_string("/proc/filesystems")
            .is_ok_and(|s| s.lines().any(|l| l.split_whitespace().last() == Some("overlay")))
}

impl Overlay {
    /// The driver rooted at `<graphroot>/overlay`.
    pub fn new(graphroot: &Path) -> Result<Overlay> {
        let home = graphroot.join("overlay");
        crate::mkdir_mode(&home, 0o700)?;
        crate::mkdir_mode(&home.join("l"), 0o755)?;
        let marker = home.join(".has-mount-program");
        if !marker.exists() {
            // Tells podman that no layer here needs fuse-overlayfs, so it
            // does not scan the whole store for AUFS whiteouts.
            let dir = Dir::open_ambient_dir(&home, cap_std::ambient_authority()).map_err(io(&home))?;
            crate::files::write_atomic(&dir, ".has-mount-program", b"false", false).map_err(io(&marker))?;
        }
        Ok(Overlay { home })
    }

    /// The driver of a store opened read-only: nothing is created.
    pub fn existing(graphroot: &Path) -> Overlay {
        Overlay {
            home: graphroot.join("overlay"),
        }
    }

    fn layer_path(&self, id: &str) -> Result<PathBuf> {
        check_id(id)?;
        Ok(self.home.join(id))
    }

    /// Removes the layer's short link and any mount left on its `merged`.
    fn unlink(&self, dir: &Path) -> Result<()> {
        if let Some(link) = Self::read_small(&dir.join("link"))? {
            let link = link.trim();
            if !link.is_empty() && !link.contains('/') && !link.starts_with('.') {
                let _ = std::fs::remove_file(self.home.join("l").join(link));
            }
        }
        let merged = dir.join("merged");
        if is_mount_point(&merged).unwrap_or(false) {
            let _ = rustix::mount::unmount(&merged, UnmountFlags::DETACH);
        }
        Ok(())
    }

    fn read_small(path: &Path) -> Result<Option<String>> {
        match std::fs::read(path) {
            Ok(b) if b.len() <= 64 << 10 => String::from_utf8(b).map(Some).map_err(|_| Error::Corrupt {
                what: path.display().to_string(),
                reason: "not UTF-8".into(),
            }),
            Ok(_) => Err(Error::Corrupt {
                what: path.display().to_string(),
                reason: "unreasonably large".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// The `lower` entries of layer `id` (`l/XXXX`, nearest first).
    fn lowers(&self, id: &str) -> Result<Vec<String>> {
        let path = self.layer_path(id)?.join("lower");
        let Some(text) = Self::read_small(&path)? else {
            return Ok(Vec::new());
        };
        let lowers: Vec<String> = text.split(':').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        if lowers.len() > MAX_DEPTH {
            return Err(Error::Corrupt {
                what: path.display().to_string(),
                reason: format!("{} lowers: max depth exceeded", lowers.len()),
            });
        }
        for l in &lowers {
            let name = l.strip_prefix("l/").unwrap_or_default();
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(Error::Corrupt {
                    what: path.display().to_string(),
                    reason: format!("bad lower entry {l:?}"),
                });
            }
        }
        Ok(lowers)
    }

    /// Absolute `l/XXXX` paths of the lowers, checked to exist.
    fn lower_paths(&self, id: &str) -> Result<Vec<PathBuf>> {
        self.lowers(id)?
            .iter()
            .map(|l| {
                let p = self.home.join(l);
                if p.is_dir() {
                    Ok(p)
                } else {
                    Err(Error::Corrupt {
                        what: p.display().to_string(),
                        reason: format!("lower of layer {id} is missing"),
                    })
                }
            })
            .collect()
    }

    fn new_link(&self) -> Result<String> {
        const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        loop {
            let mut bytes = [0u8; 17];
            getrandom::fill(&mut bytes).map_err(|e| Error::io(&self.home, std::io::Error::other(e)))?;
            // base32 of 17 bytes, cut to 26 characters.
            let mut out = String::with_capacity(28);
            let (mut acc, mut bits) = (0u32, 0);
            for b in bytes {
                acc = (acc << 8) | u32::from(b);
                bits += 8;
                while bits >= 5 {
                    bits -= 5;
                    out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
                }
                acc &= (1 << bits) - 1;
            }
            out.truncate(26);
            if !self.home.join("l").join(&out).exists() {
                return Ok(out);
            }
        }
    }

    /// podman makes the driver home a private bind mount of itself before
    /// mounting layers; without it podman's next bind would hide our mounts.
    fn ensure_private_home(&self) -> Result<()> {
        if is_mount_point(&self.home)? {
            return Ok(());
        }
        rustix::mount::mount_bind(&self.home, &self.home).map_err(|e| Error::io(&self.home, e.into()))?;
        rustix::mount::mount_change(&self.home, MountPropagationFlags::PRIVATE)
            .map_err(|e| Error::io(&self.home, e.into()))
    }

}

/// Whether `path` is a mount point, per /proc/self/mountinfo.
pub(crate) fn is_mount_point(path: &Path) -> Result<bool> {
    let canonical = std::fs::canonicalize(path).map_err(io(path))?;
    let info = std::fs::read("/proc/self/mountinfo").map_err(io(Path::new("/proc/self/mountinfo")))?;
    let want = canonical.as_os_str().as_bytes();
    Ok(info.split(|&b| b == b'\n').any(|line| {
        line.split(|&b| b == b' ').nth(4).is_some_and(|mp| unescape_octal(mp) == want)
    }))
}

fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 3 < s.len() && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

impl StoreBackend for Overlay {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn apply_mode(&self) -> ApplyMode {
        ApplyMode {
            whiteouts: Whiteouts::Overlay(XattrNamespace::Trusted),
            root_metadata: false,
        }
    }

    fn stage(&self, parent: Option<&str>, template: Option<&str>) -> Result<Staged> {
        use std::os::unix::fs::MetadataExt;
        // A child's diff root copies its parent's mode; a base layer's is 0555.
        let mode = match parent {
            Some(p) => {
                let diff = self.layer_path(p)?.join("diff");
                std::fs::metadata(&diff).map_err(io(&diff))?.mode() & 0o7777
            }
            None => 0o555,
        };
        // Not `staging/`: podman 4.3 empties that at every start.
        let staged = Staged::new(&self.home.join(crate::backend::STAGING_DIR), mode)?;
        if let Some(t) = template {
            let from = self.layer_path(t)?.join("diff");
            let src = Dir::open_ambient_dir(&from, cap_std::ambient_authority()).map_err(io(&from))?;
            strata_overlaydiff::copy_tree(&src, &staged.tree).map_err(io(&from))?;
        }
        Ok(staged)
    }

    fn publish(&self, staged: Staged, id: &str, parent: Option<&str>) -> Result<()> {
        let dir = self.layer_path(id)?;
        if dir.exists() {
            self.remove(id)?;
        }
        let lower = match parent {
            Some(p) => {
                let pdir = self.layer_path(p)?;
                let link = Self::read_small(&pdir.join("link"))?.ok_or_else(|| Error::Corrupt {
                    what: pdir.display().to_string(),
                    reason: "parent layer has no link file".into(),
                })?;
                let mut lower = format!("l/{}", link.trim());
                if let Some(pl) = Self::read_small(&pdir.join("lower"))? {
                    lower.push(':');
                    lower.push_str(&pl);
                }
                if lower.split(':').count() > MAX_DEPTH {
                    return Err(Error::Corrupt {
                        what: dir.display().to_string(),
                        reason: format!("more than {MAX_DEPTH} layers deep"),
                    });
                }
                Some(lower)
            }
            None => None,
        };
        std::fs::create_dir(&dir).map_err(io(&dir))?;
        crate::set_mode(&dir, 0o700)?;
        let diff = dir.join("diff");
        std::fs::rename(staged.tree_path(), &diff).map_err(io(&diff))?;
        let link = self.new_link()?;
        let link_path = self.home.join("l").join(&link);
        std::os::unix::fs::symlink(format!("../{id}/diff"), &link_path).map_err(io(&link_path))?;
        std::fs::write(dir.join("link"), &link).map_err(io(&dir))?;
        crate::mkdir_mode(&dir.join("work"), 0o700)?;
        crate::mkdir_mode(&dir.join("merged"), 0o700)?;
        match lower {
            Some(lower) => std::fs::write(dir.join("lower"), lower).map_err(io(&dir))?,
            None => crate::mkdir_mode(&dir.join("empty"), 0o700)?,
        }
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<()> {
        let dir = self.layer_path(id)?;
        self.unlink(&dir)?;
        staging::remove_tree(&dir).map_err(io(&dir))
    }

    fn detach(&self, id: &str, into: &Path) -> Result<()> {
        let dir = self.layer_path(id)?;
        self.unlink(&dir)?;
        match std::fs::rename(&dir, into) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&dir)(e)),
            _ => Ok(()),
        }
    }

    fn exists(&self, id: &str) -> bool {
        self.layer_path(id).is_ok_and(|p| p.join("diff").is_dir())
    }

    fn list(&self) -> Result<Vec<String>> {
        Ok(crate::list_dir_names(&self.home)?
            .into_iter()
            .filter(|n| !matches!(n.as_str(), "l" | "staging" | "tempdirs" | "backingFsBlockDev") && !n.starts_with('.'))
            .collect())
    }

    fn mount(&self, id: &str, read_only: bool) -> Result<PathBuf> {
        let dir = self.layer_path(id)?;
        let lowers = self.lower_paths(id)?;
        let join = |paths: &[PathBuf]| -> Vec<u8> {
            let mut out = Vec::new();
            for (i, p) in paths.iter().enumerate() {
                if i > 0 {
                    out.push(b':');
                }
                out.extend_from_slice(p.as_os_str().as_bytes());
            }
            out
        };
        let diff = dir.join("diff");
        let mut data = b"lowerdir=".to_vec();
        if read_only {
            let mut all = vec![diff];
            all.extend(lowers);
            data.extend(join(&all));
        } else {
            if lowers.is_empty() {
                data.extend(dir.join("empty").as_os_str().as_bytes());
            } else {
                data.extend(join(&lowers));
            }
            data.extend(b",upperdir=");
            data.extend(diff.as_os_str().as_bytes());
            data.extend(b",workdir=");
            data.extend(dir.join("work").as_os_str().as_bytes());
        }
        let page = 4096; // the smallest page size podman allows for
        if data.len() >= page {
            return Err(Error::Unsupported(format!(
                "mount options for layer {id} exceed a page ({} bytes)",
                data.len()
            )));
        }
        self.ensure_private_home()?;
        let merged = dir.join("merged");
        crate::mkdir_mode(&merged, 0o700)?;
        let _ = std::fs::remove_file(dir.join("work/work/incompat/volatile"));
        let flags = if read_only { MountFlags::RDONLY } else { MountFlags::empty() };
        let data = std::ffi::CString::new(data).map_err(|_| Error::Unsupported("NUL in a path".into()))?;
        rustix::mount::mount("overlay", &merged, "overlay", flags, Some(data.as_c_str()))
            .map_err(|e| Error::io(&merged, e.into()))?;
        Ok(merged)
    }

    fn unmount(&self, id: &str) -> Result<()> {
        let merged = self.layer_path(id)?.join("merged");
        match rustix::mount::unmount(&merged, UnmountFlags::DETACH) {
            Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(Error::io(&merged, e.into())),
        }
        let _ = std::fs::remove_dir(&merged);
        Ok(())
    }

    /// Undoes the home bind mount, as podman does at shutdown when nothing
    /// is mounted.
    fn release(&self) {
        if is_mount_point(&self.home).unwrap_or(false) {
            let _ = rustix::mount::unmount(&self.home, UnmountFlags::DETACH);
        }
    }

    fn content_dirs(&self, id: &str) -> Result<Vec<Dir>> {
        let diff = self.layer_path(id)?.join("diff");
        let mut dirs = vec![Dir::open_ambient_dir(&diff, cap_std::ambient_authority()).map_err(io(&diff))?];
        for p in self.lower_paths(id)? {
            dirs.push(Dir::open_ambient_dir(&p, cap_std::ambient_authority()).map_err(io(&p))?);
        }
        Ok(dirs)
    }

    fn lowers_for(&self, parent: Option<&str>) -> Result<Vec<Dir>> {
        match parent {
            Some(p) => self.content_dirs(p),
            None => Ok(Vec::new()),
        }
    }

    fn changes(&self, id: &str, _parent: Option<&str>, sink: &mut dyn ChangeSink) -> Result<()> {
        let mut dirs = self.content_dirs(id)?;
        let upper = dirs.remove(0);
        let lower = LowerView::new(dirs, XattrNamespace::Trusted);
        UpperDiffer::new(&upper, &lower, XattrNamespace::Trusted)
            .diff(sink)
            .map_err(Error::from)
    }
}
