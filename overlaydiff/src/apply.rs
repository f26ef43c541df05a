//! Applying an OCI layer tar to a directory: onto an overlay upperdir
//! (whiteouts become overlay whiteouts) or onto a plain tree (whiteouts
//! delete).
//!
//! The tar is read by strata-tarsplit's reader, the one that writes the
//! layer's tar-split metadata, so the names the files are stored under are
//! exactly the names a later reassembly asks for.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::sync::{Arc, OnceLock};
use std::io::{self, BufRead, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;

use cap_std::fs::Dir;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};
use strata_tarsplit::{HeaderInfo, MetadataWriter, Payload, SplitSink, Time};

use crate::idmap::IdMapping;
use crate::known::{KnownContent, KnownFile};
use crate::lower::LowerView;
use crate::meta;
use crate::options::XattrNamespace;
use crate::writers::{FileMeta, FileWriters};
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

fn invalid(path: &[u8], reason: impl Into<String>) -> Error {
    Error::InvalidEntry {
        path: String::from_utf8_lossy(path).into_owned(),
        reason: reason.into(),
    }
}

/// A tar path as components, refusing absolute paths and `..`. Empty for
/// the root itself (`.`, `./`).
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
    Ok(parts)
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

/// Extracts a layer entry by entry, as a [`SplitSink`] of strata-tarsplit:
/// plug it into [`strata_tarsplit::split`] to extract while writing the
/// tar-split metadata in the same pass, then call [`finish`](Self::finish).
///
/// Nothing is ever created outside the root: absolute names and `..` are
/// refused, and a path whose parent is a symlink, a file or a device is an
/// error (a layer never writes through a link).
#[derive(Debug)]
pub struct Extractor {
    root: Dir,
    whiteouts: Whiteouts,
    root_metadata: bool,
    owners: bool,
    /// Paths this layer created (an opaque marker spares them).
    created: HashSet<Vec<u8>>,
    dir_times: Vec<(Vec<u8>, Time)>,
    /// The directories from the root down to the last parent opened, each
    /// by name: entries come depth first, so the next parent is on this
    /// path or just below it, and is opened without walking from the root.
    open_dirs: Vec<(Vec<u8>, Parent)>,
    /// The root as a parent, once its group is known.
    root_parent: Option<Parent>,
    /// Who creates the files: what a new file is owned by without chown.
    euid: u32,
    egid: u32,
    entries: u64,
    /// The layers below, for directories the tar implies but does not list.
    lowers: Option<LowerView>,
    /// Files whose content coming entries repeat.
    known: Option<KnownContent>,
    /// The owners the tar names, as stored on disk.
    ids: IdMapping,
    /// Threads writing regular files (0: the extracting thread does).
    writer_threads: usize,
    writers: Option<FileWriters>,
    /// Directories this extraction made (mkdir succeeded): a name in one
    /// is free unless this layer created it.
    made_dirs: HashSet<Vec<u8>>,
    /// Files writers are to create, since they last finished everything,
    /// by a hash of their path: a collision costs only a wait, and a
    /// layer of 200 000 files does not hold their names twice. (A file
    /// handed over open is there already: links and removals see it.)
    handed: HashSet<u64>,
}

impl Extractor {
    /// Extracts into `root`. Ownership is applied when running as root.
    pub fn new(root: Dir, whiteouts: Whiteouts) -> Self {
        Extractor {
            root,
            whiteouts,
            root_metadata: false,
            owners: rustix::process::geteuid().is_root(),
            created: HashSet::new(),
            dir_times: Vec::new(),
            open_dirs: Vec::new(),
            root_parent: None,
            euid: rustix::process::geteuid().as_raw(),
            egid: rustix::process::getegid().as_raw(),
            entries: 0,
            lowers: None,
            known: None,
            ids: IdMapping::default(),
            writer_threads: default_writers(),
            writers: None,
            made_dirs: HashSet::new(),
            handed: HashSet::new(),
        }
    }

    /// How many threads create and write regular files while the tar is
    /// read; 0 writes them on the extracting thread. By default one per
    /// core beyond the first, at least 2 and at most 4 (none on one core):
    /// creating and writing files is most of an extraction's time, all of
    /// it in the kernel. On two cores, `strata layers apply` of a 209 MB
    /// tar of 7474 files took 0.44 s with one writer thread and 0.50 s
    /// without (medians of 5, overlay store on ext4).
    ///
    /// Two on two cores, not one: where the kernel's page-cache pages are
    /// slow to come by (a VM whose host takes freed memory back and makes
    /// the guest fault it in again, as this project's machines do), the
    /// one writer was busy throughout a pull's update while the other
    /// core idled half the time. There, updates took 0.88 s with two
    /// writers against 1.03 s with one (means of the slow runs among 42
    /// each); where pages came fast, the two were within noise (medians
    /// 0.505 and 0.49 s).
    pub fn file_writers(mut self, threads: usize) -> Self {
        self.writer_threads = threads;
        self
    }

    /// Stores the tar's owners under other IDs (a user namespace's); an
    /// owner outside the map is an error. Applies when owners are set
    /// (running as root).
    pub fn id_mapping(mut self, ids: IdMapping) -> Self {
        self.ids = ids;
        self
    }

    /// Files whose content coming entries repeat, announced by the tar's
    /// writer: such an entry is cloned from its file (or hard-linked, when
    /// allowed and its metadata matches) instead of written.
    pub fn known_content(mut self, known: KnownContent) -> Self {
        self.known = Some(known);
        self
    }

    /// The layers below an overlay upperdir. A directory the tar implies
    /// (`etc/passwd` without `etc/`) is then created with the metadata it
    /// has in the lowers, so the merged view keeps it, as extracting the
    /// layers in order would.
    pub fn lowers(mut self, lowers: LowerView) -> Self {
        self.lowers = Some(lowers);
        self
    }

    /// Whether the tar's `.` entry sets the root's mode, owner and times
    /// (containers-storage's vfs driver does; its overlay driver keeps the
    /// layer root as it created it). Off by default.
    pub fn root_metadata(mut self, apply: bool) -> Self {
        self.root_metadata = apply;
        self
    }

    /// Whether entries get the tar's uid and gid (default: when running as
    /// root; without privileges chown would fail).
    pub fn preserve_owners(mut self, preserve: bool) -> Self {
        self.owners = preserve;
        self
    }

    /// Sets directory times (creating children changed them). Returns the
    /// number of entries applied.
    pub fn finish(mut self) -> Result<u64> {
        self.open_dirs.clear();
        // Every file is closed before its directory's time is set.
        if let Some(writers) = self.writers.take() {
            writers.join()?;
        }
        for (path, mtime) in std::mem::take(&mut self.dir_times).iter().rev() {
            let parts = components(path)?;
            match parts.split_last() {
                None => set_times(&self.root, OsStr::new("."), *mtime),
                Some((name, parents)) => match self.parent(parents, path, false)? {
                    Some(parent) => set_times(&parent.dir, OsStr::from_bytes(name), *mtime),
                    None => Ok(()),
                },
            }
            .map_err(|e| io_err(path, e))?;
        }
        Ok(self.entries)
    }

    /// Opens the directory at `parts` below the root, creating missing ones
    /// when asked. `None` below an overlay whiteout.
    fn parent(&mut self, parts: &[&[u8]], full: &[u8], create: bool) -> Result<Option<Parent>> {
        let kept = self.open_dirs.iter().zip(parts).take_while(|((name, _), part)| name == *part).count();
        self.open_dirs.truncate(kept);
        for (i, part) in parts.iter().enumerate().skip(kept) {
            let dir = match self.open_dirs.last() {
                Some((_, parent)) => Arc::clone(&parent.dir),
                None => Arc::clone(&self.root_parent(full)?.dir),
            };
            let name = OsStr::from_bytes(part);
            let existing = match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => Some(st),
                Ok(st)
                    if FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice
                        && st.st_rdev == 0 =>
                {
                    return Ok(None);
                }
                Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Symlink => {
                    return Err(unsafe_path(full, "a parent is a symlink"));
                }
                Ok(_) => return Err(unsafe_path(full, "a parent is not a directory")),
                // A file handed over to a writer, not created yet.
                Err(rustix::io::Errno::NOENT) if self.handed.contains(&path_key(&parts[..=i].join(&b'/'))) => {
                    return Err(unsafe_path(full, "a parent is not a directory"));
                }
                Err(rustix::io::Errno::NOENT) if create => {
                    rustix::fs::mkdirat(dir.as_fd(), name, Mode::from_raw_mode(0o755))
                        .map_err(|e| io_err(full, e.into()))?;
                    self.implied_dir(&dir, name, &parts[..=i], full)?;
                    None
                }
                Err(e) => return Err(io_err(full, e.into())),
            };
            let opened = meta::open_dir(&dir, name).map_err(|e| io_err(full, e))?;
            // What was there is what was opened (nothing else renames in a
            // layer being made); a directory just made is asked.
            let (st, made) = match existing {
                Some(st) => (st, self.made_dirs.contains(&parts[..=i].join(&b'/'))),
                None => (rustix::fs::fstat(&opened).map_err(|e| io_err(full, e.into()))?, true),
            };
            let parent = self.parent_of(opened, &st, made);
            self.open_dirs.push((part.to_vec(), parent));
        }
        match self.open_dirs.last() {
            Some((_, parent)) => Ok(Some(parent.clone())),
            None => self.root_parent(full).map(Some),
        }
    }

    fn root_parent(&mut self, full: &[u8]) -> Result<Parent> {
        if let Some(parent) = &self.root_parent {
            return Ok(parent.clone());
        }
        let dir = self.root.try_clone().map_err(|e| io_err(full, e))?;
        let st = rustix::fs::fstat(&dir).map_err(|e| io_err(full, e.into()))?;
        let parent = self.parent_of(dir, &st, false);
        self.root_parent = Some(parent.clone());
        Ok(parent)
    }

    /// A directory as the parent of what is created in it, `st` being
    /// its status: what is created gets a set-group-ID directory's group.
    fn parent_of(&self, dir: Dir, st: &rustix::fs::Stat, made: bool) -> Parent {
        let set_gid = st.st_mode & 0o2000 != 0;
        Parent {
            dir: Arc::new(dir),
            new_gid: if set_gid { st.st_gid } else { self.egid },
            set_gid,
            made,
        }
    }

    /// Forgets the open directories from `parts` down: its mode or owner
    /// may change what is created in it.
    fn forget_dir(&mut self, parts: &[&[u8]]) {
        if parts.is_empty() {
            self.root_parent = None;
            self.open_dirs.clear();
            return;
        }
        let same = self.open_dirs.iter().zip(parts).take_while(|((name, _), part)| name == *part).count();
        if same == parts.len() {
            self.open_dirs.truncate(same - 1);
        }
    }

    /// Gives a directory created for an implied path the mode, owner,
    /// xattrs and time the lowers have for it.
    fn implied_dir(&mut self, dir: &Dir, name: &OsStr, parts: &[&[u8]], full: &[u8]) -> Result<()> {
        let path: Vec<&OsStr> = parts.iter().map(|p| OsStr::from_bytes(p)).collect();
        let meta = match &self.lowers {
            Some(lowers) => lowers.lookup(&path).map_err(|e| io_err(full, e))?,
            None => None,
        };
        let Some(meta) = meta else {
            // Made by root, which is the map's root in the layer.
            if self.owners && !self.ids.is_identity() {
                let (uid, gid) = (self.ids.uid(0).unwrap_or(0), self.ids.gid(0).unwrap_or(0));
                chown_at(dir, name, uid, gid, full)?;
            }
            return Ok(());
        };
        if !meta.is_dir() {
            return Ok(());
        }
        if self.owners {
            chown_at(dir, name, meta.uid, meta.gid, full)?;
        }
        for (attr, value) in meta.exported_xattrs() {
            if let Some(attr) = attr.to_str() {
                meta::set_xattr(dir, name, attr, value).map_err(|e| io_err(full, e))?;
            }
        }
        rustix::fs::chmodat(dir.as_fd(), name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
            .map_err(|e| io_err(full, e.into()))?;
        // Its time is set last, like a listed directory's.
        let time = Time {
            secs: meta.mtime,
            nanos: meta.mtime_nsec as u32,
        };
        self.dir_times.push((parts.join(&b'/'), time));
        Ok(())
    }

    /// Removes `name` in `dir` (`target` below the root) for the entry at
    /// `path`.
    fn remove(&mut self, dir: &Dir, name: &OsStr, path: &[u8], target: &[u8]) -> Result<()> {
        // A removed directory may be an open parent (or above one).
        self.open_dirs.clear();
        let pending = self.writers.as_ref().is_some_and(FileWriters::pending);
        match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
            // A file a writer is still to create is removed once it is.
            Err(rustix::io::Errno::NOENT) if self.handed.contains(&path_key(target)) => {
                self.sync_writers()?;
                remove_all(dir, name)
            }
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                // Files being created in it go first.
                if pending {
                    self.sync_writers()?;
                }
                dir.remove_dir_all(name)
            }
            // A writer still writing it holds it open: it leaves the tree
            // all the same.
            Ok(_) => dir.remove_file(name),
        }
        .map_err(|e| io_err(path, e))
    }

    /// The owner an entry must get, when creating it did not give it that
    /// one already (`new_gid`: the group a new entry in its directory gets).
    fn owner_to_set(&self, header: &HeaderInfo, path: &[u8], new_gid: Option<u32>) -> Result<Option<(u32, u32)>> {
        if !self.owners {
            return Ok(None);
        }
        let id = |v: i64, what| u32::try_from(v).map_err(|_| invalid(path, format!("{what} {v} out of range")));
        let (uid, gid) = (id(header.uid, "uid")?, id(header.gid, "gid")?);
        let uid = self.ids.uid(uid).ok_or_else(|| invalid(path, format!("uid {uid} is outside the layer's ID map")))?;
        let gid = self.ids.gid(gid).ok_or_else(|| invalid(path, format!("gid {gid} is outside the layer's ID map")))?;
        Ok((Some(gid) != new_gid || uid != self.euid).then_some((uid, gid)))
    }

    fn chown(&self, dir: &Dir, name: &OsStr, header: &HeaderInfo, path: &[u8]) -> Result<()> {
        self.chown_new(dir, name, header, path, None)
    }

    /// Chown of an entry just created in a directory whose new entries get
    /// group `new_gid`: nothing to do when they already have that owner.
    fn chown_new(&self, dir: &Dir, name: &OsStr, header: &HeaderInfo, path: &[u8], new_gid: Option<u32>) -> Result<()> {
        let Some((uid, gid)) = self.owner_to_set(header, path, new_gid)? else {
            return Ok(());
        };
        chown_at(dir, name, uid, gid, path)
    }

    fn whiteout(&mut self, header: &HeaderInfo, parents: &[&[u8]], name: &[u8]) -> Result<()> {
        let path = header.name.as_slice();
        let Some(Parent { dir: parent, .. }) = self.parent(parents, path, true)? else {
            return Ok(());
        };
        if name == OPAQUE_MARKER {
            match self.whiteouts {
                Whiteouts::Overlay(ns) => {
                    meta::set_xattr(&parent, OsStr::new("."), &ns.name("opaque"), b"y")
                        .map_err(|e| io_err(path, e))?;
                }
                Whiteouts::Remove => {
                    self.sync_writers()?;
                    let dir_path = parents.join(&b'/');
                    for child in meta::sorted_names(&parent).map_err(|e| io_err(path, e))? {
                        let mut child_path = dir_path.clone();
                        if !child_path.is_empty() {
                            child_path.push(b'/');
                        }
                        child_path.extend_from_slice(child.as_bytes());
                        if !self.created.contains(&child_path) {
                            self.remove(&parent, &child, path, &child_path)?;
                        }
                    }
                }
            }
            return Ok(());
        }
        if name.starts_with(b".wh..wh.") {
            return Ok(()); // AUFS metadata (its hard-link area): not content
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.is_empty() {
            return Err(invalid(path, "whiteout of no name"));
        }
        let mut target_path = parents.join(&b'/');
        if !target_path.is_empty() {
            target_path.push(b'/');
        }
        target_path.extend_from_slice(target);
        let target = OsStr::from_bytes(target);
        self.remove(&parent, target, path, &target_path)?;
        if let Whiteouts::Overlay(_) = self.whiteouts {
            rustix::fs::mknodat(parent.as_fd(), target, FileType::CharacterDevice, Mode::empty(), 0)
                .map_err(|e| io_err(path, e.into()))?;
            // A writer must not be given its name.
            self.created.insert(target_path);
            self.chown(&parent, target, header, path)?;
        }
        Ok(())
    }

    fn root_entry(&mut self, header: &HeaderInfo) -> Result<()> {
        if !self.root_metadata {
            return Ok(());
        }
        if header.typeflag != b'5' {
            return Err(invalid(&header.name, "the layer root is not a directory"));
        }
        let root = self.root.try_clone().map_err(|e| io_err(&header.name, e))?;
        self.metadata(&root, OsStr::new("."), header, &header.name, None)?;
        self.forget_dir(&[]);
        self.dir_times.push((Vec::new(), header.mtime));
        Ok(())
    }

    /// Owner, xattrs and mode of a new or replaced entry.
    fn metadata(&self, dir: &Dir, name: &OsStr, header: &HeaderInfo, path: &[u8], new_gid: Option<u32>) -> Result<()> {
        self.chown_new(dir, name, header, path, new_gid)?;
        set_xattrs(dir, name, header, path)?;
        if header.typeflag != b'2' {
            // After chown, which clears set-id bits.
            let mode = Mode::from_raw_mode((header.mode & 0o7777) as u32);
            rustix::fs::chmodat(dir.as_fd(), name, mode, AtFlags::empty())
                .map_err(|e| io_err(path, e.into()))?;
        }
        Ok(())
    }

    fn apply(&mut self, header: &HeaderInfo, payload: Option<&mut Payload<'_>>) -> Result<()> {
        if let Some(e) = self.writers.as_ref().and_then(FileWriters::failed) {
            return Err(e);
        }
        let path = header.name.as_slice();
        let parts = components(path)?;
        self.entries += 1;
        let Some((name, parents)) = parts.split_last() else {
            return self.root_entry(header);
        };
        if name.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(header, parents, name);
        }
        let clean: Vec<u8> = parts.join(&b'/');
        // An entry replacing a file handed over: that file must be there
        // first, to be replaced.
        if self.handed.contains(&path_key(&clean)) {
            self.sync_writers()?;
        }
        let Parent { dir: parent, new_gid, set_gid, made } = self
            .parent(parents, path, true)?
            .ok_or_else(|| unsafe_path(path, "below a whiteout"))?;
        // A directory made with its mode, and with the owner it gets by
        // being made, needs no chown or chmod (most of a layer's).
        let mut made_as_listed = false;
        let name = OsStr::from_bytes(name);
        let kind = header.typeflag;
        let fail = |e: rustix::io::Errno| io_err(path, e.into());
        // Created first, and only what is in the way is looked at: a new
        // layer's entries rarely replace anything.
        match kind {
            b'5' => {
                let mode = (header.mode & 0o7777) as u32;
                let as_listed = !set_gid
                    && mode & 0o7000 == 0
                    && umask().is_some_and(|m| mode & m == 0)
                    && self.owner_to_set(header, path, Some(new_gid))?.is_none();
                let made_mode = Mode::from_raw_mode(if as_listed { mode } else { 0o700 });
                match rustix::fs::mkdirat(parent.as_fd(), name, made_mode) {
                    Ok(()) => {
                        made_as_listed = as_listed;
                        self.made_dirs.insert(clean.clone());
                    }
                    Err(rustix::io::Errno::EXIST) => {
                        // Made for entries before it: writers creating
                        // files in it finish before its owner and mode
                        // change (which may shut them out).
                        if self.made_dirs.contains(&clean) {
                            self.sync_writers()?;
                        }
                        let st = rustix::fs::statat(parent.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW).map_err(fail)?;
                        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                            self.remove(&parent, name, path, &clean)?;
                            rustix::fs::mkdirat(parent.as_fd(), name, made_mode).map_err(fail)?;
                            made_as_listed = as_listed;
                            self.made_dirs.insert(clean.clone());
                        }
                    }
                    Err(e) => return Err(fail(e)),
                }
                // Its mode and owner may change what is created in it.
                self.forget_dir(&parts);
                self.dir_times.push((clean.clone(), header.mtime));
            }
            b'0' | b'7' | b'S' => {
                let mode = (header.mode & 0o7777) as u32;
                let source = match (&self.known, &payload) {
                    (Some(known), Some(p)) => known
                        .take(path, p.len())
                        .and_then(|f| open_known(&f, p.len()))
                        .map(|src| (known.clone(), src)),
                    _ => None,
                };
                if let Some((known, src)) = &source
                    && known.hard_links()
                    && self.may_link(src, header, path, new_gid)
                {
                    let linked = match link_to(src, &parent, name) {
                        Err(rustix::io::Errno::EXIST) => {
                            self.remove(&parent, name, path, &clean)?;
                            link_to(src, &parent, name)
                        }
                        other => other,
                    };
                    if linked.is_ok() {
                        // The inode is the other layer's: nothing of it may
                        // change, and nothing needs to.
                        self.created.insert(clean);
                        return Ok(());
                    }
                }
                // Where nothing but this layer's entries can hold the name,
                // and none did yet, a writer creates the file too: creating
                // is most of what writing a small file costs.
                if self.writer_threads > 0 && source.is_none() && made && !self.created.contains(&clean) {
                    let meta = self.file_meta(header, path, new_gid)?;
                    let writers = self.writers(path)?;
                    writers.create(Arc::clone(&parent), name.as_bytes(), mode, path)?;
                    if let Some(payload) = payload {
                        writers.data(payload, path)?;
                    }
                    writers.finish(meta)?;
                    self.handed.insert(path_key(&clean));
                    self.created.insert(clean);
                    return Ok(());
                }
                let create = || {
                    rustix::fs::openat(
                        parent.as_fd(),
                        name,
                        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::from_raw_mode(mode & 0o777),
                    )
                };
                let fd = match create() {
                    Err(rustix::io::Errno::EXIST) => {
                        self.remove(&parent, name, path, &clean)?;
                        create()
                    }
                    other => other,
                }
                .map_err(fail)?;
                let mut file = std::fs::File::from(fd);
                let cloned = match &source {
                    Some((known, src)) if known.reflinks() => match rustix::fs::ioctl_ficlone(&file, src) {
                        Ok(()) => true,
                        Err(e) => {
                            if matches!(
                                e,
                                rustix::io::Errno::OPNOTSUPP
                                    | rustix::io::Errno::NOTTY
                                    | rustix::io::Errno::INVAL
                                    | rustix::io::Errno::NOSYS
                            ) {
                                known.reflinks_unsupported();
                            }
                            false
                        }
                    },
                    _ => false,
                };
                // A clone holds the bytes already; the tar's copy of them
                // is read past (and still checked) by the split.
                if let Some(payload) = payload
                    && !cloned
                {
                    if self.writer_threads > 0 {
                        let meta = self.file_meta(header, path, new_gid)?;
                        let writers = self.writers(path)?;
                        writers.start(file, path)?;
                        writers.data(payload, path)?;
                        writers.finish(meta)?;
                        self.created.insert(clean);
                        return Ok(());
                    }
                    copy_payload(payload, &mut file).map_err(|e| io_err(path, e))?;
                }
                self.file_metadata(&file, header, path, new_gid)?;
                self.created.insert(clean);
                return Ok(());
            }
            b'2' => {
                if header.link_name.is_empty() {
                    return Err(invalid(path, "symlink without target"));
                }
                let target = OsStr::from_bytes(&header.link_name);
                match rustix::fs::symlinkat(target, parent.as_fd(), name) {
                    Err(rustix::io::Errno::EXIST) => {
                        self.remove(&parent, name, path, &clean)?;
                        rustix::fs::symlinkat(target, parent.as_fd(), name)
                    }
                    other => other,
                }
                .map_err(fail)?;
            }
            b'1' => {
                let target = header.link_name.as_slice();
                let target_parts = components(target)?;
                let Some((target_name, target_parents)) = target_parts.split_last() else {
                    return Err(unsafe_path(path, "hard link to the root"));
                };
                if self.handed.contains(&path_key(&target_parts.join(&b'/'))) {
                    self.sync_writers()?;
                }
                let target_dir = self
                    .parent(target_parents, target, false)?
                    .ok_or_else(|| unsafe_path(path, "hard link target below a whiteout"))?
                    .dir;
                let link = || {
                    rustix::fs::linkat(
                        target_dir.as_fd(),
                        OsStr::from_bytes(target_name),
                        parent.as_fd(),
                        name,
                        AtFlags::empty(),
                    )
                };
                match link() {
                    Err(rustix::io::Errno::EXIST) => {
                        if target_parents == parents && target_name == &name.as_bytes() {
                            return Err(invalid(path, "hard link to itself"));
                        }
                        self.remove(&parent, name, path, &clean)?;
                        link()
                    }
                    other => other,
                }
                .map_err(fail)?;
                self.created.insert(clean);
                return Ok(()); // a link shares its target's metadata
            }
            b'3' | b'4' | b'6' => {
                let file_type = match kind {
                    b'3' => FileType::CharacterDevice,
                    b'4' => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = rustix::fs::makedev(header.dev_major as u32, header.dev_minor as u32);
                let make = || rustix::fs::mknodat(parent.as_fd(), name, file_type, Mode::from_raw_mode(0o600), dev);
                match make() {
                    Err(rustix::io::Errno::EXIST) => {
                        self.remove(&parent, name, path, &clean)?;
                        make()
                    }
                    other => other,
                }
                .map_err(fail)?;
            }
            other => {
                return Err(invalid(
                    path,
                    format!("unsupported entry type {:?}", char::from(other)),
                ));
            }
        }
        // A directory's owner is always set: mkdir in a set-group-ID
        // directory also sets the new one's set-group-ID bit.
        let new_gid = (kind != b'5').then_some(new_gid);
        if made_as_listed {
            set_xattrs(&parent, name, header, path)?;
        } else {
            self.metadata(&parent, name, header, path, new_gid)?;
        }
        if kind != b'5' {
            set_times(&parent, name, header.mtime).map_err(|e| io_err(path, e))?;
        }
        self.created.insert(clean);
        Ok(())
    }

    /// Whether `src` has exactly the owner, mode, time and xattrs the entry
    /// would get, so a hard link to it is the entry.
    fn may_link(&self, src: &std::fs::File, header: &HeaderInfo, path: &[u8], new_gid: u32) -> bool {
        let Ok(st) = rustix::fs::fstat(src) else {
            return false;
        };
        let owner = match self.owner_to_set(header, path, Some(new_gid)) {
            Ok(Some(set)) => set,
            Ok(None) => (self.euid, new_gid),
            Err(_) => return false,
        };
        (st.st_uid, st.st_gid) == owner
            && i64::from(st.st_mode & 0o7777) == header.mode & 0o7777
            && (st.st_mtime, st.st_mtime_nsec as i64) == (header.mtime.secs, i64::from(header.mtime.nanos))
            && xattrs_are(src, header)
    }

    fn writers(&mut self, path: &[u8]) -> Result<&mut FileWriters> {
        if self.writers.is_none() {
            let writers = FileWriters::new(self.writer_threads).map_err(|e| io_err(path, e))?;
            self.writers = Some(writers);
        }
        Ok(self.writers.as_mut().expect("made above"))
    }

    /// Waits for the files handed over to be written: what comes next
    /// may replace, remove or link one of them.
    fn sync_writers(&mut self) -> Result<()> {
        self.handed.clear();
        match &mut self.writers {
            Some(writers) => writers.sync(),
            None => Ok(()),
        }
    }

    /// What a new regular file must get once written: owner, xattrs, mode
    /// (when creating it did not give it that one), time.
    fn file_meta(&self, header: &HeaderInfo, path: &[u8], new_gid: u32) -> Result<FileMeta> {
        let mode = (header.mode & 0o7777) as u32;
        Ok(FileMeta {
            size: u64::try_from(header.size).unwrap_or(0),
            owner: self.owner_to_set(header, path, Some(new_gid))?,
            xattrs: header
                .xattrs
                .iter()
                .filter(|(n, _)| meta::exported_xattr(n.as_bytes()))
                .cloned()
                .collect(),
            // Set-ID bits are not given at creation (and chown clears them);
            // the umask may have taken bits away.
            mode: (mode & 0o7000 != 0 || umask().is_none_or(|m| mode & m != 0)).then_some(mode),
            mtime: header.mtime,
        })
    }

    /// Owner, xattrs, mode and times of a regular file just written, through
    /// its descriptor; a file created with the owner and mode it must have
    /// needs neither chown nor chmod.
    fn file_metadata(&self, file: &std::fs::File, header: &HeaderInfo, path: &[u8], new_gid: u32) -> Result<()> {
        let meta = self.file_meta(header, path, new_gid)?;
        crate::writers::finish_file(file, meta.size, &meta).map_err(|e| io_err(path, e))
    }
}

/// Opens an announced file: a regular file of exactly `size` bytes, else
/// nothing (the entry is then written from the tar).
fn open_known(known: &KnownFile, size: u64) -> Option<std::fs::File> {
    let file = known.root.open(&known.path).ok()?.into_std();
    let st = rustix::fs::fstat(&file).ok()?;
    (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && st.st_size as u64 == size).then_some(file)
}

/// Hard-links the open file `src` as `name` in `dir`: by its descriptor,
/// which needs CAP_DAC_READ_SEARCH, else through its /proc magic link.
fn link_to(src: &std::fs::File, dir: &Dir, name: &OsStr) -> rustix::io::Result<()> {
    match rustix::fs::linkat(src, c"", dir.as_fd(), name, AtFlags::EMPTY_PATH) {
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM) => {
            let proc = format!("/proc/self/fd/{}", src.as_fd().as_raw_fd());
            rustix::fs::linkat(rustix::fs::CWD, proc.as_str(), dir.as_fd(), name, AtFlags::SYMLINK_FOLLOW)
        }
        other => other,
    }
}

/// Whether the xattrs of `file` are exactly those the entry carries into
/// the tree (a file with others, an SELinux label say, is never shared).
fn xattrs_are(file: &std::fs::File, header: &HeaderInfo) -> bool {
    let mut want: Vec<(&[u8], &[u8])> = header
        .xattrs
        .iter()
        .filter(|(n, _)| meta::exported_xattr(n.as_bytes()))
        .map(|(n, v)| (n.as_bytes(), v.as_slice()))
        .collect();
    want.sort();
    match meta::read_fd_xattrs(file) {
        Ok(have) => have.iter().map(|(n, v)| (n.as_bytes(), v.as_slice())).eq(want),
        Err(_) => false,
    }
}

/// Chown of `name` in `dir`, not following a final symlink.
fn chown_at(dir: &Dir, name: &OsStr, uid: u32, gid: u32, path: &[u8]) -> Result<()> {
    rustix::fs::chownat(
        dir.as_fd(),
        name,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err(path, e.into()))
}

/// The tar's xattrs an entry carries into the tree.
fn set_xattrs(dir: &Dir, name: &OsStr, header: &HeaderInfo, path: &[u8]) -> Result<()> {
    for (attr, value) in &header.xattrs {
        if meta::exported_xattr(attr.as_bytes()) {
            meta::set_xattr(dir, name, attr, value).map_err(|e| io_err(path, e))?;
        }
    }
    Ok(())
}

/// An open directory new entries go into.
#[derive(Clone, Debug)]
struct Parent {
    dir: Arc<Dir>,
    /// The group an entry created in it gets.
    new_gid: u32,
    /// Whether it is set-group-ID: a directory made in it is too.
    set_gid: bool,
    /// Whether this extraction made it.
    made: bool,
}

fn path_key(path: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut hasher);
    hasher.finish()
}

fn default_writers() -> usize {
    match std::thread::available_parallelism().map_or(1, |n| n.get()) {
        0 | 1 => 0,
        n => (n - 1).clamp(2, 4),
    }
}

/// The process's umask, read once without changing it (`umask(2)` can only
/// set it, and another thread may be creating files meanwhile).
fn umask() -> Option<u32> {
    static UMASK: OnceLock<Option<u32>> = OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("Umask:"))?;
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).ok()
    })
}

impl SplitSink for Extractor {
    fn raw(&mut self, _: &[u8]) -> strata_tarsplit::Result<()> {
        Ok(())
    }

    fn entry(&mut self, header: &HeaderInfo, payload: Option<&mut Payload<'_>>) -> io::Result<()> {
        self.apply(header, payload).map_err(io::Error::other)
    }
}

/// Writes a payload into a new, empty file; blocks of zeros are left as
/// holes.
fn copy_payload(payload: &mut Payload<'_>, out: &mut std::fs::File) -> io::Result<()> {
    let mut pos = 0u64;
    let mut written_end = 0u64;
    loop {
        let chunk = payload.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len();
        written_end = crate::writers::write_skipping_zeros(out, pos, chunk, written_end)?;
        pos += n as u64;
        payload.consume(n);
    }
    // A file that ends in a hole still has its size.
    if written_end < pos {
        out.set_len(pos)?;
    }
    Ok(())
}

/// Applies the layer in `tar` to `root` (the tar's `.` entry is skipped).
/// Returns the number of entries.
pub fn apply_layer<R: Read>(tar: R, root: &Dir, whiteouts: Whiteouts) -> Result<u64> {
    let root = root.try_clone().map_err(|e| io_err(b".", e))?;
    let mut extractor = Extractor::new(root, whiteouts);
    let mut metadata = MetadataWriter::new(io::sink());
    strata_tarsplit::split(tar, io::sink(), &mut metadata, &mut extractor).map_err(from_split)?;
    extractor.finish()
}

/// The extractor's own error when it caused the split to fail.
pub(crate) fn from_split(e: strata_tarsplit::Error) -> Error {
    match e {
        strata_tarsplit::Error::Put { name, source } => match source.downcast::<Error>() {
            Ok(inner) => inner,
            Err(source) => Error::Io {
                path: name.to_string(),
                source,
            },
        },
        other => Error::InvalidEntry {
            path: "<layer>".into(),
            reason: other.to_string(),
        },
    }
}

fn set_times(dir: &Dir, name: &OsStr, mtime: Time) -> io::Result<()> {
    let t = rustix::fs::Timespec {
        tv_sec: mtime.secs,
        tv_nsec: mtime.nanos.into(),
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
