//! What the differs read about a directory entry, read relative to an open
//! directory so no path is ever joined as a string.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use cap_std::fs::Dir;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

/// An entry's kind, with what the tar needs for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink(OsString),
    Char(u64),
    Block(u64),
    Fifo,
    Socket,
}

/// Metadata of one entry, as lstat and the xattr calls report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits plus setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    /// Status change time: moves on every write, and cannot be set.
    pub ctime: (i64, i64),
    pub ino: u64,
    pub dev: u64,
    pub nlink: u64,
    /// All extended attributes, sorted by name.
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Meta {
    pub fn xattr(&self, name: &str) -> Option<&[u8]> {
        self.xattrs
            .iter()
            .find(|(n, _)| n.as_bytes() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    /// A character device 0:0: how overlayfs records a deleted name.
    pub fn is_whiteout(&self) -> bool {
        self.kind == Kind::Char(0)
    }

    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// The xattrs a layer carries: `security.capability`, `security.ima` and
    /// `user.*` except overlayfs's own `user.overlay.*`.
    pub fn exported_xattrs(&self) -> impl Iterator<Item = &(OsString, Vec<u8>)> {
        self.xattrs
            .iter()
            .filter(|(n, _)| exported_xattr(n.as_bytes()))
    }
}

pub fn exported_xattr(name: &[u8]) -> bool {
    name == b"security.capability"
        || name == b"security.ima"
        || (name.starts_with(b"user.") && !name.starts_with(b"user.overlay."))
}

fn kind_of(dir: &Dir, name: &OsStr, st: &Stat) -> io::Result<Kind> {
    Ok(match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink(OsString::from_vec(
            rustix::fs::readlinkat(dir.as_fd(), name, Vec::new())?.into_bytes(),
        )),
        FileType::CharacterDevice => Kind::Char(st.st_rdev),
        FileType::BlockDevice => Kind::Block(st.st_rdev),
        FileType::Fifo => Kind::Fifo,
        FileType::Socket => Kind::Socket,
        FileType::Unknown => return Err(io::Error::other("unknown file type")),
    })
}

/// The path through which a name in `dir` can be reached by the
/// path-based xattr calls: the kernel resolves the directory from its open
/// descriptor, and the single-component name cannot climb out of it.
fn proc_path(dir: &Dir, name: &OsStr) -> io::Result<CString> {
    if name.as_bytes().contains(&b'/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "name with a slash",
        ));
    }
    let mut path = format!("/proc/self/fd/{}/", dir.as_fd().as_raw_fd()).into_bytes();
    path.extend_from_slice(name.as_bytes());
    CString::new(path).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name with a NUL"))
}

/// All xattrs of `name` in `dir`, without following a final symlink.
pub fn read_xattrs(dir: &Dir, name: &OsStr) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let path = proc_path(dir, name)?;
    collect_xattrs(
        |names| rustix::fs::llistxattr(&path, names),
        |attr, value| rustix::fs::lgetxattr(&path, attr, value),
    )
}

/// All xattrs of an open file.
pub fn read_fd_xattrs(file: &File) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    collect_xattrs(
        |names| rustix::fs::flistxattr(file, names),
        |attr, value| rustix::fs::fgetxattr(file, attr, value),
    )
}

/// Lists then reads every xattr, growing the buffers as needed; sorted.
fn collect_xattrs(
    list: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
    get: impl Fn(&[u8], &mut [u8]) -> rustix::io::Result<usize>,
) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let mut names = vec![0u8; 1024];
    let len = loop {
        match list(&mut names) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for attr in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 256];
        let n = loop {
            match get(attr, &mut value) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(rustix::io::Errno::NODATA) => break usize::MAX,
                Err(e) => return Err(e.into()),
            }
        };
        if n == usize::MAX {
            continue; // removed meanwhile
        }
        value.truncate(n);
        out.push((OsString::from_vec(attr.to_vec()), value));
    }
    out.sort();
    Ok(out)
}

/// Sets an xattr on `name` in `dir` without following a final symlink.
pub fn set_xattr(dir: &Dir, name: &OsStr, attr: &str, value: &[u8]) -> io::Result<()> {
    let path = proc_path(dir, name)?;
    rustix::fs::lsetxattr(&path, attr, value, rustix::fs::XattrFlags::empty())?;
    Ok(())
}

/// lstat + readlink + xattrs of `name` in `dir`; `None` when it does not exist.
pub fn stat(dir: &Dir, name: &OsStr) -> io::Result<Option<Meta>> {
    let st = match rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let kind = kind_of(dir, name, &st)?;
    let xattrs = read_xattrs(dir, name)?;
    Ok(Some(Meta {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as i64,
        ctime: (st.st_ctime, st.st_ctime_nsec as i64),
        ino: st.st_ino,
        dev: st.st_dev,
        nlink: st.st_nlink,
        xattrs,
    }))
}

/// Opens a regular file in `dir` for reading, refusing a symlink.
pub fn open_file(dir: &Dir, name: &OsStr) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir.as_fd(),
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// The names in a directory, sorted by their bytes.
pub fn sorted_names(dir: &Dir) -> io::Result<Vec<OsString>> {
    let mut names: Vec<OsString> = dir
        .entries()?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Opens a subdirectory without following a symlink.
pub fn open_dir(dir: &Dir, name: &OsStr) -> io::Result<Dir> {
    let fd = rustix::fs::openat(
        dir.as_fd(),
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(Dir::from_std_file(File::from(fd)))
}
