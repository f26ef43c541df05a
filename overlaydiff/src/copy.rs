//! Copying a whole tree, metadata included: what a vfs-style store does to
//! start a layer from its parent.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsFd;

use cap_std::fs::Dir;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timestamps};

use crate::meta;

/// Copies everything inside `src` into `dst` (an existing, empty
/// directory): files (through `copy_file_range`, so reflinks where the
/// filesystem has them), directories, symlinks, devices, fifos, hard links
/// as hard links, owners (when running as root), modes, xattrs and times.
/// `dst` itself gets `src`'s mode, owner, xattrs and times.
pub fn copy_tree(src: &Dir, dst: &Dir) -> io::Result<()> {
    let mut links = HashMap::new();
    let owners = rustix::process::geteuid().is_root();
    copy_dir(src, dst, &mut links, owners)?;
    copy_metadata(src, dst, OsStr::new("."), OsStr::new("."), owners)
}

type Links = HashMap<(u64, u64), (Dir, OsString)>;

fn copy_dir(src: &Dir, dst: &Dir, links: &mut Links, owners: bool) -> io::Result<()> {
    for name in meta::sorted_names(src)? {
        let st = rustix::fs::statat(src.as_fd(), &name, AtFlags::SYMLINK_NOFOLLOW)?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::Directory && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some((dir, first)) = links.get(&key) {
                rustix::fs::linkat(dir.as_fd(), first, dst.as_fd(), &name, AtFlags::empty())?;
                continue;
            }
            links.insert(key, (dst.try_clone()?, name.clone()));
        }
        match kind {
            FileType::Directory => {
                rustix::fs::mkdirat(dst.as_fd(), &name, Mode::from_raw_mode(0o700))?;
                let (from, to) = (meta::open_dir(src, &name)?, meta::open_dir(dst, &name)?);
                copy_dir(&from, &to, links, owners)?;
            }
            FileType::RegularFile => {
                let mut from = meta::open_file(src, &name)?;
                let fd = rustix::fs::openat(
                    dst.as_fd(),
                    &name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )?;
                io::copy(&mut from, &mut std::fs::File::from(fd))?;
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(src.as_fd(), &name, Vec::new())?;
                rustix::fs::symlinkat(target.as_c_str(), dst.as_fd(), &name)?;
            }
            FileType::CharacterDevice | FileType::BlockDevice | FileType::Fifo => {
                rustix::fs::mknodat(dst.as_fd(), &name, kind, Mode::from_raw_mode(0o600), st.st_rdev)?;
            }
            FileType::Socket | FileType::Unknown => continue, // not layer content
        }
        copy_metadata(src, dst, &name, &name, owners)?;
    }
    Ok(())
}

fn copy_metadata(src: &Dir, dst: &Dir, from: &OsStr, to: &OsStr, owners: bool) -> io::Result<()> {
    let st = rustix::fs::statat(src.as_fd(), from, AtFlags::SYMLINK_NOFOLLOW)?;
    let symlink = FileType::from_raw_mode(st.st_mode) == FileType::Symlink;
    if owners {
        rustix::fs::chownat(
            dst.as_fd(),
            to,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    for (attr, value) in meta::read_xattrs(src, from)? {
        if let Some(attr) = attr.to_str() {
            meta::set_xattr(dst, to, attr, &value)?;
        }
    }
    if !symlink {
        rustix::fs::chmodat(
            dst.as_fd(),
            to,
            Mode::from_raw_mode(st.st_mode & 0o7777),
            AtFlags::empty(),
        )?;
    }
    let time = |secs: i64, nanos: u64| rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: nanos as _,
    };
    rustix::fs::utimensat(
        dst.as_fd(),
        to,
        &Timestamps {
            last_access: time(st.st_atime, st.st_atime_nsec as u64),
            last_modification: time(st.st_mtime, st.st_mtime_nsec as u64),
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}
