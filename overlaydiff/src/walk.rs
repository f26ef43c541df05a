//! The walking differ: compares the whole lower view with the whole merged
//! view. Slow (it reads every directory of the image), but it needs nothing
//! from overlayfs, so it is the fallback and the reference.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;

use cap_std::fs::Dir;

use crate::change::{Change, ChangeSink};
use crate::meta::{self, Kind, Meta};
use crate::upper::{rel_path, same_dir_metadata};
use crate::{Error, Result};

/// Diffs two trees: `old` (the lower view) and `new` (the merged view).
#[derive(Debug)]
pub struct WalkDiffer<'a> {
    old: &'a Dir,
    new: &'a Dir,
}

impl<'a> WalkDiffer<'a> {
    pub fn new(old: &'a Dir, new: &'a Dir) -> Self {
        WalkDiffer { old, new }
    }

    /// Emits what turns `old` into `new`: deletions as whiteouts (never an
    /// opaque marker), additions and modifications as entries.
    pub fn diff<S: ChangeSink + ?Sized>(&self, sink: &mut S) -> Result<()> {
        let mut links = HashMap::new();
        dir(Some(self.old), self.new, &mut Vec::new(), sink, &mut links)
    }
}

fn merged_names(old: Option<&Dir>, new: &Dir) -> std::io::Result<Vec<OsString>> {
    let mut names = meta::sorted_names(new)?;
    if let Some(old) = old {
        names.extend(meta::sorted_names(old)?);
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        names.dedup();
    }
    Ok(names)
}

fn dir<S: ChangeSink + ?Sized>(
    old: Option<&Dir>,
    new: &Dir,
    path: &mut Vec<OsString>,
    sink: &mut S,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<()> {
    for name in merged_names(old, new).map_err(|e| Error::io_at(path, e))? {
        path.push(name.clone());
        let result = entry(old, new, &name, path, sink, links);
        path.pop();
        result?;
    }
    Ok(())
}

fn entry<S: ChangeSink + ?Sized>(
    old: Option<&Dir>,
    new: &Dir,
    name: &OsStr,
    path: &mut Vec<OsString>,
    sink: &mut S,
    links: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<()> {
    let err = |e| Error::io_at(path, e);
    let before = match old {
        Some(d) => meta::stat(d, name).map_err(err)?,
        None => None,
    };
    let after = meta::stat(new, name).map_err(err)?;
    let rel = rel_path(path);
    let (before, after) = match (before, after) {
        (None, None) => return Ok(()),
        (Some(_), None) => {
            return sink
                .change(Change::Whiteout {
                    path: &rel,
                    meta: None,
                })
                .map_err(err);
        }
        (b, Some(a)) => (b, a),
    };
    if after.kind == Kind::Socket {
        return Ok(());
    }
    if after.is_dir() {
        let old_dir = before.as_ref().filter(|b| b.is_dir());
        if !old_dir.is_some_and(|b| same_dir_metadata(b, &after)) {
            sink.change(Change::Entry {
                path: &rel,
                meta: &after,
                content: None,
            })
            .map_err(err)?;
        }
        let old_sub = match (old, old_dir) {
            (Some(d), Some(_)) => Some(meta::open_dir(d, name).map_err(err)?),
            _ => None,
        };
        let new_sub = meta::open_dir(new, name).map_err(err)?;
        return dir(old_sub.as_ref(), &new_sub, path, sink, links);
    }
    if let (Some(b), Some(old)) = (&before, old)
        && same_entry(b, &after)
        && same_content(old, new, name, b, &after).map_err(err)?
    {
        return Ok(());
    }
    if after.nlink > 1 {
        let key = (after.dev, after.ino);
        if let Some(target) = links.get(&key) {
            let target = target.clone();
            return sink
                .change(Change::HardLink {
                    path: &rel,
                    target: &target,
                    meta: &after,
                })
                .map_err(err);
        }
        links.insert(key, rel.clone());
    }
    if after.kind == Kind::File {
        let mut file = meta::open_file(new, name).map_err(err)?;
        sink.change(Change::Entry {
            path: &rel,
            meta: &after,
            content: Some(&mut file),
        })
        .map_err(err)
    } else {
        sink.change(Change::Entry {
            path: &rel,
            meta: &after,
            content: None,
        })
        .map_err(err)
    }
}

/// Same kind, permissions, owner, size, mtime and exported xattrs.
fn same_entry(a: &Meta, b: &Meta) -> bool {
    a.kind == b.kind
        && a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.size == b.size
        && (a.mtime, a.mtime_nsec) == (b.mtime, b.mtime_nsec)
        && a.exported_xattrs().eq(b.exported_xattrs())
}

/// Regular files with equal metadata may still differ in content (a
/// write that kept size and mtime). The same inode with the same ctime has
/// not been written (every write moves ctime, and ctime cannot be set);
/// anything else is compared byte by byte.
fn same_content(old: &Dir, new: &Dir, name: &OsStr, a: &Meta, b: &Meta) -> std::io::Result<bool> {
    if a.kind != Kind::File || (a.ino, a.ctime) == (b.ino, b.ctime) {
        return Ok(true);
    }
    let (mut fa, mut fb) = (meta::open_file(old, name)?, meta::open_file(new, name)?);
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(fb.read(&mut bb[..1])? == 0);
        }
        if fb.read_exact(&mut bb[..n]).is_err() || ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}
