//! The upperdir differ: the layer is what the upperdir holds, read without
//! walking the lower layers (they are only asked about names the upperdir
//! mentions).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use cap_std::fs::Dir;

use crate::change::{Change, ChangeSink};
use crate::lower::LowerView;
use crate::meta::{self, Meta};
use crate::options::XattrNamespace;
use crate::{Error, Result};

/// Diffs an upperdir against its lower layers.
#[derive(Debug)]
pub struct UpperDiffer<'a> {
    upper: &'a Dir,
    lower: &'a LowerView,
    xattrs: XattrNamespace,
}

struct Walk<'s, S: ChangeSink + ?Sized> {
    sink: &'s mut S,
    /// (dev, inode) of multiply-linked files → the name first emitted.
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl<'a> UpperDiffer<'a> {
    pub fn new(upper: &'a Dir, lower: &'a LowerView, xattrs: XattrNamespace) -> Self {
        UpperDiffer {
            upper,
            lower,
            xattrs,
        }
    }

    /// Emits the layer's changes into `sink`, parents before children, names
    /// in byte order within each directory.
    ///
    /// Upperdirs made with `redirect_dir` or `metacopy` are refused
    /// ([`Error::NeedsWalk`]): their contents are not the whole change, and
    /// the caller must fall back to the walking differ.
    pub fn diff<S: ChangeSink + ?Sized>(&self, sink: &mut S) -> Result<()> {
        let mut walk = Walk {
            sink,
            links: HashMap::new(),
        };
        self.dir(self.upper, &mut Vec::new(), false, &mut walk)
    }

    /// Checks, without writing anything, whether [`UpperDiffer::diff`] would
    /// refuse this upperdir ([`Error::NeedsWalk`]): a caller can then choose
    /// the walking differ before any output exists.
    pub fn check(&self) -> Result<()> {
        struct Discard;
        impl ChangeSink for Discard {
            fn change(&mut self, _: Change<'_>) -> std::io::Result<()> {
                Ok(())
            }
        }
        self.diff(&mut Discard)
    }

    fn dir<S: ChangeSink + ?Sized>(
        &self,
        dir: &Dir,
        path: &mut Vec<OsString>,
        below_opaque: bool,
        walk: &mut Walk<'_, S>,
    ) -> Result<()> {
        for name in meta::sorted_names(dir).map_err(|e| Error::io_at(path, e))? {
            path.push(name.clone());
            let entry = self.entry(dir, &name, path, below_opaque, walk);
            path.pop();
            entry?;
        }
        Ok(())
    }

    fn lower_meta(&self, path: &[OsString], below_opaque: bool) -> Result<Option<Meta>> {
        if below_opaque || self.lower.is_empty() {
            return Ok(None);
        }
        let parts: Vec<&OsStr> = path.iter().map(OsString::as_os_str).collect();
        self.lower.lookup(&parts).map_err(|e| Error::io_at(path, e))
    }

    fn entry<S: ChangeSink + ?Sized>(
        &self,
        dir: &Dir,
        name: &OsStr,
        path: &mut Vec<OsString>,
        below_opaque: bool,
        walk: &mut Walk<'_, S>,
    ) -> Result<()> {
        let Some(meta) = meta::stat(dir, name).map_err(|e| Error::io_at(path, e))? else {
            return Ok(()); // removed meanwhile
        };
        for attr in ["redirect", "metacopy"] {
            if meta.xattr(&self.xattrs.name(attr)).is_some() {
                return Err(Error::NeedsWalk {
                    path: display(path),
                    xattr: self.xattrs.name(attr),
                });
            }
        }
        let rel = rel_path(path);
        let sink_err = |e| Error::io_at(path, e);
        if meta.is_whiteout() {
            // Only a name the lower layers have needs deleting.
            if let Some(lower) = self.lower_meta(path, below_opaque)? {
                let _ = lower;
                walk.sink
                    .change(Change::Whiteout {
                        path: &rel,
                        meta: Some(&meta),
                    })
                    .map_err(sink_err)?;
            }
            return Ok(());
        }
        match meta.kind {
            meta::Kind::Socket => Ok(()),
            meta::Kind::Dir => {
                let opaque = meta.xattr(&self.xattrs.name("opaque")) == Some(b"y");
                let lower = self.lower_meta(path, below_opaque)?;
                let lower_dir = lower.as_ref().filter(|l| l.is_dir());
                // A directory copied up only because something below it
                // changed, with nothing of its own changed, is left out.
                let same_as_lower = lower_dir.is_some_and(|l| same_dir_metadata(l, &meta));
                if opaque || !same_as_lower {
                    walk.sink
                        .change(Change::Entry {
                            path: &rel,
                            meta: &meta,
                            content: None,
                        })
                        .map_err(sink_err)?;
                }
                if opaque && lower_dir.is_some() {
                    walk.sink
                        .change(Change::Opaque {
                            dir: &rel,
                            meta: &meta,
                        })
                        .map_err(sink_err)?;
                }
                let sub = meta::open_dir(dir, name).map_err(sink_err)?;
                self.dir(
                    &sub,
                    path,
                    below_opaque || opaque || lower_dir.is_none(),
                    walk,
                )
            }
            _ => {
                if meta.nlink > 1 && !meta.is_dir() {
                    let key = (meta.dev, meta.ino);
                    if let Some(target) = walk.links.get(&key) {
                        let target = target.clone();
                        walk.sink
                            .change(Change::HardLink {
                                path: &rel,
                                target: &target,
                                meta: &meta,
                            })
                            .map_err(sink_err)?;
                        return Ok(());
                    }
                    walk.links.insert(key, rel.clone());
                }
                if meta.kind == meta::Kind::File {
                    let mut file = meta::open_file(dir, name).map_err(sink_err)?;
                    walk.sink
                        .change(Change::Entry {
                            path: &rel,
                            meta: &meta,
                            content: Some(&mut file),
                        })
                        .map_err(sink_err)
                } else {
                    walk.sink
                        .change(Change::Entry {
                            path: &rel,
                            meta: &meta,
                            content: None,
                        })
                        .map_err(sink_err)
                }
            }
        }
    }
}

/// The directory metadata a layer carries: mode, owner and exported xattrs
/// (overlay's own and trusted.* never travel).
pub(crate) fn same_dir_metadata(a: &Meta, b: &Meta) -> bool {
    a.mode == b.mode
        && a.uid == b.uid
        && a.gid == b.gid
        && a.exported_xattrs().eq(b.exported_xattrs())
}

pub(crate) fn rel_path(path: &[OsString]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in path.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(p.as_bytes());
    }
    out
}

pub(crate) fn display(path: &[OsString]) -> String {
    String::from_utf8_lossy(&rel_path(path)).into_owned()
}
