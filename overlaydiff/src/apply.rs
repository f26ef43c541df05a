//! Applying an OCI layer tar to a directory: onto an overlay upperdir
//! (whiteouts become overlay whiteouts) or onto a plain tree (whiteouts
//! delete).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use cap_std::fs::Dir;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};

use crate::meta;
use crate::options::XattrNamespace;
use crate::{Error, Result};

/// What OCI whiteouts turn into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whiteouts {
    /// Into overlay whiteouts: `.wh.NAME` → a 0:0 character device,
    /// `.wh..wh..opq` → the opaque xattr. For an overlay upperdir.
    Overlay(XattrNamespace),
    /// Applied: `.wh.NAME` deletes NAME, `.wh..wh..opq` deletes what the
    /// directory held before this layer. For a plain directory tree.
    Remove,
}

const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const WHITEOUT_PREFIX: &[u8] = b".wh.";

fn unsafe_path(path: &[u8], reason: &'static str) -> Error {
    Error::UnsafePath {
        path: String::from_utf8_lossy(path).into_owned(),
        reason,
    }
}

fn io_err(path: &[u8], source: io::Error) -> Error {
    Error::Io {
        path: String::from_utf8_lossy(path).into_owned(),
        source,
    }
}

/// A tar path as components, refusing absolute paths and `..`.
fn components(path: &[u8]) -> Result<Vec<&[u8]>> {
    if path.first() == Some(&b'/') {
        return Err(unsafe_path(path, "absolute path"));
    }
    let mut parts = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(unsafe_path(path, "path contains ..")),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return Err(unsafe_path(path, "names the root"));
    }
    Ok(parts)
}

/// Opens the directory at `parts` below `root`, creating missing ones. A
/// component that exists but is not a directory (a symlink included) is an
/// error, so nothing is ever created outside the root.
fn open_parent(root: &Dir, parts: &[&[u8]], full: &[u8], create: bool) -> Result<Option<Dir>> {
    let mut dir = root.try_clone().map_err(|e| io_err(full, e))?;
    for part in parts {
        let name = OsStr::from_bytes(part);
        match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
            Ok(st)
                if FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice
                    && st.st_rdev == 0 =>
            {
                return Ok(None); // below an overlay whiteout: nothing to do
            }
            Ok(_) => return Err(unsafe_path(full, "a parent is not a directory")),
            Err(rustix::io::Errno::NOENT) if create => {
                rustix::fs::mkdirat(dir.as_fd(), name, Mode::from_raw_mode(0o755))
                    .map_err(|e| io_err(full, e.into()))?;
            }
            Err(e) => return Err(io_err(full, e.into())),
        }
        dir = meta::open_dir(&dir, name).map_err(|e| io_err(full, e))?;
    }
    Ok(Some(dir))
}

fn remove_all(dir: &Dir, name: &OsStr) -> io::Result<()> {
    match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            dir.remove_dir_all(name)
        }
        Ok(_) => dir.remove_file(name),
    }
}

/// Applies the layer in `tar` to `root`. Returns the number of entries.
pub fn apply_layer<R: Read>(tar: R, root: &Dir, whiteouts: Whiteouts) -> Result<u64> {
    let mut archive = tar::Archive::new(tar);
    let mut created: HashSet<Vec<u8>> = HashSet::new();
    let mut dir_times: Vec<(Vec<u8>, i64)> = Vec::new();
    let mut count = 0;
    // Raw entries: the tar crate's own PAX parsing cuts values at newlines,
    // which binary xattrs (security.capability) contain.
    let mut ext = Extensions::default();
    for entry in archive
        .entries()
        .map_err(|e| io_err(b"<layer>", e))?
        .raw(true)
    {
        let mut entry = entry.map_err(|e| io_err(b"<layer>", e))?;
        if ext.absorb(&mut entry)? {
            continue;
        }
        let taken = std::mem::take(&mut ext);
        let path = taken
            .path
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let link_name = taken
            .link
            .or_else(|| entry.link_name_bytes().map(|l| l.into_owned()));
        if taken
            .size
            .is_some_and(|size| size != entry.header().size().unwrap_or(0))
        {
            return Err(Error::InvalidEntry {
                path: String::from_utf8_lossy(&path).into(),
                reason: "PAX size beyond the header's size field is not supported".into(),
            });
        }
        let parts = components(&path)?;
        let (name, parents) = parts.split_last().expect("components are not empty");
        let clean: Vec<u8> = parts.join(&b'/');
        count += 1;

        if name.starts_with(WHITEOUT_PREFIX) {
            let Some(parent) = open_parent(root, parents, &path, true)? else {
                continue;
            };
            if *name == OPAQUE_MARKER {
                match whiteouts {
                    Whiteouts::Overlay(ns) => {
                        meta::set_xattr(&parent, OsStr::from_bytes(b"."), &ns.name("opaque"), b"y")
                            .map_err(|e| io_err(&path, e))?
                    }
                    Whiteouts::Remove => {
                        let dir_path = parents.join(&b'/');
                        for child in meta::sorted_names(&parent).map_err(|e| io_err(&path, e))? {
                            let mut child_path = dir_path.clone();
                            if !child_path.is_empty() {
                                child_path.push(b'/');
                            }
                            child_path.extend_from_slice(child.as_bytes());
                            if !created.contains(&child_path) {
                                remove_all(&parent, &child).map_err(|e| io_err(&path, e))?;
                            }
                        }
                    }
                }
                continue;
            }
            if name.starts_with(b".wh..wh.") {
                continue; // AUFS metadata (hard-link area): not content
            }
            let target = &name[WHITEOUT_PREFIX.len()..];
            if target.is_empty() {
                return Err(Error::InvalidEntry {
                    path: String::from_utf8_lossy(&path).into(),
                    reason: "whiteout of no name".into(),
                });
            }
            let target = OsStr::from_bytes(target);
            remove_all(&parent, target).map_err(|e| io_err(&path, e))?;
            if let Whiteouts::Overlay(_) = whiteouts {
                rustix::fs::mknodat(
                    parent.as_fd(),
                    target,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    0,
                )
                .map_err(|e| io_err(&path, e.into()))?;
                let header = entry.header();
                let (uid, gid) = (
                    header.uid().unwrap_or(0) as u32,
                    header.gid().unwrap_or(0) as u32,
                );
                chown(&parent, target, uid, gid).map_err(|e| io_err(&path, e))?;
            }
            continue;
        }

        let parent = open_parent(root, parents, &path, true)?
            .ok_or_else(|| unsafe_path(&path, "below a whiteout"))?;
        let name = OsStr::from_bytes(name);
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (
            header.uid().unwrap_or(0) as u32,
            header.gid().unwrap_or(0) as u32,
        );
        let mtime = header.mtime().unwrap_or(0) as i64;
        let xattrs = taken.xattrs;

        let existing = rustix::fs::statat(parent.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW).ok();
        let existing_dir = existing
            .as_ref()
            .is_some_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory);
        if existing.is_some() && !(existing_dir && kind.is_dir()) {
            remove_all(&parent, name).map_err(|e| io_err(&path, e))?;
        }
        let fail = |e: rustix::io::Errno| io_err(&path, e.into());
        match kind {
            tar::EntryType::Directory => {
                if !existing_dir {
                    rustix::fs::mkdirat(parent.as_fd(), name, Mode::from_raw_mode(0o700))
                        .map_err(fail)?;
                }
                dir_times.push((clean.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = rustix::fs::openat(
                    parent.as_fd(),
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(fail)?;
                let mut file = std::fs::File::from(fd);
                io::copy(&mut entry, &mut file).map_err(|e| io_err(&path, e))?;
            }
            tar::EntryType::Symlink => {
                let target = link_name
                    .clone()
                    .ok_or_else(|| unsafe_path(&path, "symlink without target"))?;
                rustix::fs::symlinkat(OsStr::from_bytes(&target), parent.as_fd(), name)
                    .map_err(fail)?;
            }
            tar::EntryType::Link => {
                let target = link_name
                    .clone()
                    .ok_or_else(|| unsafe_path(&path, "hard link without target"))?;
                let target_parts = components(&target)?;
                let (target_name, target_parents) = target_parts.split_last().expect("not empty");
                let target_dir = open_parent(root, target_parents, &target, false)?
                    .ok_or_else(|| unsafe_path(&path, "hard link target below a whiteout"))?;
                rustix::fs::linkat(
                    target_dir.as_fd(),
                    OsStr::from_bytes(target_name),
                    parent.as_fd(),
                    name,
                    AtFlags::empty(),
                )
                .map_err(fail)?;
                created.insert(clean);
                continue; // a link shares its target's metadata
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let file_type = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = rustix::fs::makedev(
                    header.device_major().ok().flatten().unwrap_or(0),
                    header.device_minor().ok().flatten().unwrap_or(0),
                );
                rustix::fs::mknodat(
                    parent.as_fd(),
                    name,
                    file_type,
                    Mode::from_raw_mode(0o600),
                    dev,
                )
                .map_err(fail)?;
            }
            other => {
                return Err(Error::InvalidEntry {
                    path: String::from_utf8_lossy(&path).into(),
                    reason: format!("unsupported entry type {other:?}"),
                });
            }
        }
        chown(&parent, name, uid, gid).map_err(|e| io_err(&path, e))?;
        for (attr, value) in &xattrs {
            meta::set_xattr(&parent, name, attr, value).map_err(|e| io_err(&path, e))?;
        }
        if kind != tar::EntryType::Symlink {
            rustix::fs::chmodat(
                parent.as_fd(),
                name,
                Mode::from_raw_mode(mode),
                AtFlags::empty(),
            )
            .map_err(fail)?;
        }
        if kind != tar::EntryType::Directory {
            set_mtime(&parent, name, mtime).map_err(|e| io_err(&path, e))?;
        }
        created.insert(clean);
    }
    // Directory times last: creating their children changed them.
    for (path, mtime) in dir_times.iter().rev() {
        let parts = components(path)?;
        let (name, parents) = parts.split_last().expect("not empty");
        if let Some(parent) = open_parent(root, parents, path, false)? {
            set_mtime(&parent, OsStr::from_bytes(name), *mtime).map_err(|e| io_err(path, e))?;
        }
    }
    Ok(count)
}

/// What PAX and GNU extension headers say about the entry that follows.
#[derive(Default)]
struct Extensions {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Extensions {
    /// Takes in an extension header; false for an ordinary entry.
    fn absorb<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<bool> {
        let kind = entry.header().entry_type();
        if !matches!(
            kind,
            tar::EntryType::XHeader
                | tar::EntryType::XGlobalHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(false);
        }
        let mut data = Vec::new();
        entry
            .take(1 << 20)
            .read_to_end(&mut data)
            .map_err(|e| io_err(b"<extension header>", e))?;
        let c_string = |d: &[u8]| d.split(|&b| b == 0).next().unwrap_or_default().to_vec();
        match kind {
            tar::EntryType::GNULongName => self.path = Some(c_string(&data)),
            tar::EntryType::GNULongLink => self.link = Some(c_string(&data)),
            tar::EntryType::XHeader => {
                let records = strata_tarsplit::parse_pax_records(&data).map_err(|reason| {
                    Error::InvalidEntry {
                        path: "<PAX header>".into(),
                        reason: reason.into(),
                    }
                })?;
                for (key, value) in records {
                    match key.as_slice() {
                        b"path" => self.path = Some(value),
                        b"linkpath" => self.link = Some(value),
                        b"size" => {
                            self.size = std::str::from_utf8(&value)
                                .ok()
                                .and_then(|v| v.parse().ok())
                        }
                        k => {
                            if let Some(name) = k
                                .strip_prefix(b"SCHILY.xattr.")
                                .filter(|n| meta::exported_xattr(n))
                            {
                                self.xattrs
                                    .push((String::from_utf8_lossy(name).into_owned(), value));
                            }
                        }
                    }
                }
            }
            _ => {} // global headers carry nothing an extraction uses
        }
        Ok(true)
    }
}

fn chown(dir: &Dir, name: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let (uid, gid) = (
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    );
    rustix::fs::chownat(
        dir.as_fd(),
        name,
        Some(uid),
        Some(gid),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

fn set_mtime(dir: &Dir, name: &OsStr, mtime: i64) -> io::Result<()> {
    let t = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        dir.as_fd(),
        name,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}
