#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use strata_overlaydiff::{
    LowerView, TarSink, UpperDiffer, WalkDiffer, Whiteouts, XattrNamespace, apply_layer,
};

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether overlay mounts can be tested here; says why not when they cannot.
pub fn can_mount_overlay() -> bool {
    if !is_root() {
        eprintln!("SKIPPED: mounting overlayfs needs root");
        return false;
    }
    let ok = fs::read_to_string("/proc/filesystems")
        .is_ok_and(|s| s.lines().any(|l| l.ends_with("\toverlay")));
    if !ok {
        eprintln!("SKIPPED: this kernel has no overlayfs");
    }
    ok
}

pub fn open(path: &Path) -> Dir {
    Dir::open_ambient_dir(path, ambient_authority()).expect("open dir")
}

/// An overlay mount over one lower dir, unmounted on drop.
pub struct Overlay {
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    mounted: bool,
}

impl Overlay {
    pub fn new(base: &Path) -> Self {
        let o = Overlay {
            lower: base.join("lower"),
            upper: base.join("upper"),
            work: base.join("work"),
            merged: base.join("merged"),
            mounted: false,
        };
        for d in [&o.lower, &o.upper, &o.work, &o.merged] {
            fs::create_dir_all(d).expect("mkdir");
        }
        o
    }

    pub fn mount(&mut self) {
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.lower.display(),
            self.upper.display(),
            self.work.display()
        );
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&self.merged)
            .status()
            .expect("mount");
        assert!(st.success(), "mount overlay");
        self.mounted = true;
    }

    pub fn unmount(&mut self) {
        if self.mounted {
            unmount(&self.merged);
            self.mounted = false;
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
        }
    }
}

pub use strata_test_support::unmount;

/// What a tree holds, as the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub content: Vec<u8>,
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, Node>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let m = fs::symlink_metadata(&path).expect("lstat");
        let ft = m.file_type();
        let (kind, content) = if ft.is_symlink() {
            (
                "symlink".to_string(),
                fs::read_link(&path)
                    .expect("readlink")
                    .into_os_string()
                    .into_vec(),
            )
        } else if ft.is_dir() {
            ("dir".to_string(), Vec::new())
        } else if ft.is_file() {
            ("file".to_string(), fs::read(&path).expect("read"))
        } else if ft.is_char_device() {
            (format!("char {}", m.rdev()), Vec::new())
        } else if ft.is_block_device() {
            (format!("block {}", m.rdev()), Vec::new())
        } else if ft.is_fifo() {
            ("fifo".to_string(), Vec::new())
        } else {
            ("other".to_string(), Vec::new())
        };
        let xattrs = user_xattrs(&path);
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .as_os_str()
            .as_bytes()
            .to_vec();
        let mode = if ft.is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        };
        out.insert(
            rel,
            Node {
                kind,
                mode,
                uid: m.uid(),
                gid: m.gid(),
                content,
                xattrs,
            },
        );
        if ft.is_dir() {
            walk(root, &path, out);
        }
    }
}

fn user_xattrs(path: &Path) -> Vec<(OsString, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(path, &mut names) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names[..n]
        .split(|&b| b == 0)
        .filter(|n| n.starts_with(b"user.") && !n.starts_with(b"user.overlay."))
    {
        let mut value = vec![0u8; 4096];
        if let Ok(len) = rustix::fs::lgetxattr(path, name, &mut value) {
            out.push((OsString::from_vec(name.to_vec()), value[..len].to_vec()));
        }
    }
    out.sort();
    out
}

pub fn upper_layer(lower: &Path, upper: &Path) -> Vec<u8> {
    let (lower, upper) = (open(lower), open(upper));
    let view = LowerView::new(vec![lower], XattrNamespace::Trusted);
    let mut sink = TarSink::new(Vec::new());
    UpperDiffer::new(&upper, &view, XattrNamespace::Trusted)
        .diff(&mut sink)
        .expect("upper diff");
    sink.finish().expect("tar")
}

pub fn walk_layer(old: &Path, new: &Path) -> Vec<u8> {
    let (old, new) = (open(old), open(new));
    let mut sink = TarSink::new(Vec::new());
    WalkDiffer::new(&old, &new)
        .diff(&mut sink)
        .expect("walk diff");
    sink.finish().expect("tar")
}

/// A copy of `lower` with `layer` applied, OCI style.
pub fn applied(base: &Path, name: &str, lower: &Path, layer: &[u8]) -> PathBuf {
    let dest = base.join(name);
    fs::create_dir_all(&dest).expect("mkdir");
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", lower.display()))
        .arg(&dest)
        .status()
        .expect("cp");
    assert!(st.success(), "cp -a");
    apply_layer(layer, &open(&dest), Whiteouts::Remove).expect("apply layer");
    dest
}

/// Entry names in a layer tar, with whiteouts and opaque markers as such.
pub fn layer_names(layer: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(layer);
    archive
        .entries()
        .expect("entries")
        .map(|e| String::from_utf8_lossy(&e.expect("entry").path_bytes()).into_owned())
        .collect()
}
