//! What a differ reports, and the tar writer both differs share.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;

use crate::meta::{Kind, Meta};

/// One change, with its path relative to the layer root (no leading `/` or
/// `./`, no trailing `/`).
pub enum Change<'a> {
    /// Add or replace an entry. Regular files come with their content.
    Entry {
        path: &'a [u8],
        meta: &'a Meta,
        content: Option<&'a mut dyn Read>,
    },
    /// A second name of a file already emitted at `target`.
    HardLink {
        path: &'a [u8],
        target: &'a [u8],
        meta: &'a Meta,
    },
    /// The name was deleted.
    Whiteout {
        path: &'a [u8],
        meta: Option<&'a Meta>,
    },
    /// Everything the lower layers had under this directory is hidden.
    Opaque { dir: &'a [u8], meta: &'a Meta },
}

impl std::fmt::Debug for Change<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = |p: &[u8]| String::from_utf8_lossy(p).into_owned();
        match self {
            Change::Entry { path, meta, .. } => write!(f, "Entry({}, {:?})", text(path), meta.kind),
            Change::HardLink { path, target, .. } => {
                write!(f, "HardLink({} -> {})", text(path), text(target))
            }
            Change::Whiteout { path, .. } => write!(f, "Whiteout({})", text(path)),
            Change::Opaque { dir, .. } => write!(f, "Opaque({})", text(dir)),
        }
    }
}

/// Receives changes in order: parents before children.
pub trait ChangeSink {
    fn change(&mut self, change: Change<'_>) -> io::Result<()>;
}

/// Writes changes as an OCI layer tar: PAX xattrs, GNU long names, OCI
/// whiteouts, mtimes in whole seconds, no user or group names.
pub struct TarSink<W: Write> {
    builder: tar::Builder<W>,
}

impl<W: Write> std::fmt::Debug for TarSink<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TarSink")
    }
}

impl<W: Write> TarSink<W> {
    pub fn new(out: W) -> Self {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Complete);
        TarSink { builder }
    }

    /// Writes the end-of-archive marker and returns the writer.
    pub fn finish(self) -> io::Result<W> {
        self.builder.into_inner()
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// `dir/.wh.name` for a deleted `dir/name`.
pub(crate) fn whiteout_name(path: &[u8]) -> Vec<u8> {
    match path.iter().rposition(|&b| b == b'/') {
        Some(slash) => join(&path[..slash], &[b".wh.", &path[slash + 1..]].concat()),
        None => [b".wh.", path].concat(),
    }
}

fn header_for(meta: &Meta) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(meta.mode);
    h.set_uid(u64::from(meta.uid));
    h.set_gid(u64::from(meta.gid));
    h.set_mtime(meta.mtime.max(0) as u64);
    h.set_size(0);
    h
}

impl<W: Write> TarSink<W> {
    fn xattrs(&mut self, meta: &Meta) -> io::Result<()> {
        let records: Vec<(String, &[u8])> = meta
            .exported_xattrs()
            .map(|(n, v)| {
                (
                    format!("SCHILY.xattr.{}", String::from_utf8_lossy(n.as_bytes())),
                    v.as_slice(),
                )
            })
            .collect();
        if !records.is_empty() {
            self.builder
                .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        Ok(())
    }
}

impl<W: Write> ChangeSink for TarSink<W> {
    fn change(&mut self, change: Change<'_>) -> io::Result<()> {
        match change {
            Change::Entry {
                path,
                meta,
                content,
            } => {
                let mut h = header_for(meta);
                let path = OsStr::from_bytes(path);
                self.xattrs(meta)?;
                match &meta.kind {
                    Kind::File => {
                        h.set_entry_type(tar::EntryType::Regular);
                        h.set_size(meta.size);
                        let content = content
                            .ok_or_else(|| io::Error::other("regular file without content"))?;
                        // The header promised `size` bytes: give exactly that
                        // many, or fail if the file shrank meanwhile.
                        let mut limited = content.take(meta.size);
                        let mut counted = CountingReader {
                            inner: &mut limited,
                            count: 0,
                        };
                        self.builder.append_data(&mut h, path, &mut counted)?;
                        if counted.count != meta.size {
                            return Err(io::Error::other("file changed size while being read"));
                        }
                    }
                    Kind::Dir => {
                        h.set_entry_type(tar::EntryType::Directory);
                        self.builder.append_data(&mut h, path, io::empty())?;
                    }
                    Kind::Symlink(target) => {
                        h.set_entry_type(tar::EntryType::Symlink);
                        self.builder.append_link(&mut h, path, target)?;
                    }
                    Kind::Char(rdev) | Kind::Block(rdev) => {
                        h.set_entry_type(if matches!(meta.kind, Kind::Char(_)) {
                            tar::EntryType::Char
                        } else {
                            tar::EntryType::Block
                        });
                        h.set_device_major(rustix::fs::major(*rdev))?;
                        h.set_device_minor(rustix::fs::minor(*rdev))?;
                        self.builder.append_data(&mut h, path, io::empty())?;
                    }
                    Kind::Fifo => {
                        h.set_entry_type(tar::EntryType::Fifo);
                        self.builder.append_data(&mut h, path, io::empty())?;
                    }
                    Kind::Socket => {}
                }
            }
            Change::HardLink { path, target, meta } => {
                let mut h = header_for(meta);
                h.set_entry_type(tar::EntryType::Link);
                self.builder.append_link(
                    &mut h,
                    OsStr::from_bytes(path),
                    OsStr::from_bytes(target),
                )?;
            }
            Change::Whiteout { path, meta } => {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0);
                h.set_size(0);
                if let Some(m) = meta {
                    h.set_uid(u64::from(m.uid));
                    h.set_gid(u64::from(m.gid));
                    h.set_mtime(m.mtime.max(0) as u64);
                }
                self.builder.append_data(
                    &mut h,
                    OsStr::from_bytes(&whiteout_name(path)),
                    io::empty(),
                )?;
            }
            Change::Opaque { dir, meta } => {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(meta.mode & 0o777);
                h.set_uid(u64::from(meta.uid));
                h.set_gid(u64::from(meta.gid));
                h.set_mtime(0);
                h.set_size(0);
                self.builder.append_data(
                    &mut h,
                    OsStr::from_bytes(&join(dir, b".wh..wh..opq")),
                    io::empty(),
                )?;
            }
        }
        Ok(())
    }
}

struct CountingReader<'a, R: Read> {
    inner: &'a mut R,
    count: u64,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}
