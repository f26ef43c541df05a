//! Entries whose content a local file already holds: hard-linked when asked
//! and the metadata matches, cloned on a filesystem with reflinks, written
//! otherwise; the tar-split metadata written meanwhile still rebuilds the
//! original tar byte for byte.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use cap_std::fs::Dir;
use strata_overlaydiff::{Extractor, KnownContent, KnownFile, Whiteouts};
use strata_tarsplit::{DirGetter, MetadataReader, MetadataWriter, assemble, split};
use strata_test_support::LoopFs;

const MTIME: u64 = 1_700_000_000;

fn content(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8).collect()
}

fn open(path: &Path) -> Dir {
    Dir::open_ambient_dir(path, cap_std::ambient_authority()).expect("open dir")
}

/// A source file as an earlier layer holds it.
fn source(dir: &Path, name: &str, bytes: &[u8], mode: u32) {
    let path = dir.join(name);
    fs::write(&path, bytes).expect("write source");
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode)).expect("chmod");
    let t = rustix::fs::Timespec { tv_sec: MTIME as i64, tv_nsec: 0 };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        &path,
        &rustix::fs::Timestamps { last_access: t, last_modification: t },
        rustix::fs::AtFlags::empty(),
    )
    .expect("utimens");
}

fn tar_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_mtime(MTIME);
    dir.set_size(0);
    dir.set_cksum();
    builder.append_data(&mut dir, "usr/", &[][..]).expect("dir");
    for (name, bytes, mode) in files {
        let mut h = tar::Header::new_ustar();
        h.set_mode(*mode);
        h.set_mtime(MTIME);
        h.set_size(bytes.len() as u64);
        h.set_uid(u64::from(rustix::process::geteuid().as_raw()));
        h.set_gid(u64::from(rustix::process::getegid().as_raw()));
        h.set_cksum();
        builder.append_data(&mut h, name, *bytes).expect("file");
    }
    builder.into_inner().expect("tar")
}

/// Extracts `tar` into `dest` with `known`; checks that the tar-split
/// metadata and the extracted files rebuild the tar.
fn extract(tar: &[u8], dest: &Path, known: KnownContent) {
    let mut extractor = Extractor::new(open(dest), Whiteouts::Remove).known_content(known);
    let mut metadata = MetadataWriter::new(Vec::new());
    split(tar, std::io::sink(), &mut metadata, &mut extractor).expect("split and extract");
    extractor.finish().expect("finish");
    let metadata = metadata.finish().expect("metadata");
    let mut rebuilt = Vec::new();
    assemble(MetadataReader::new(&metadata[..]), &mut DirGetter::new(open(dest)), &mut rebuilt).expect("assemble");
    assert!(rebuilt == tar, "the layer rebuilds to its tar");
}

fn announce(known: &KnownContent, src: &Path, entries: &[(&str, &str, usize)]) {
    let root = Arc::new(open(src));
    for (entry, path, size) in entries {
        known.announce(entry.as_bytes(), *size as u64, KnownFile { root: root.clone(), path: (*path).into() });
    }
}

#[test]
fn hard_links_only_files_whose_metadata_matches() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    fs::create_dir_all(&src).expect("src");
    fs::create_dir_all(&dest).expect("dest");
    let (a, b, c) = (content(300_000, 1), content(70_000, 2), content(5_000, 3));
    source(&src, "a", &a, 0o644);
    source(&src, "b", &b, 0o600);
    source(&src, "c", &c, 0o644);
    let tar = tar_of(&[("usr/a", &a, 0o644), ("usr/b", &b, 0o644), ("usr/c", &c[..4_000], 0o644), ("usr/d", &a, 0o644)]);
    let known = KnownContent::new(true);
    announce(&known, &src, &[("usr/a", "a", a.len()), ("usr/b", "b", b.len()), ("usr/c", "c", 4_000)]);
    extract(&tar, &dest, known);

    let ino = |p: &Path| fs::metadata(p).expect("stat").ino();
    assert_eq!(ino(&dest.join("usr/a")), ino(&src.join("a")), "same owner, mode and time: linked");
    assert_ne!(ino(&dest.join("usr/b")), ino(&src.join("b")), "another mode: not linked");
    assert_eq!(fs::metadata(dest.join("usr/b")).expect("stat").mode() & 0o7777, 0o644, "the entry's mode");
    assert_eq!(fs::read(dest.join("usr/c")).expect("c"), &c[..4_000], "a size mismatch: written from the tar");
    assert_eq!(fs::read(dest.join("usr/d")).expect("d"), a, "not announced: written");
    assert_eq!(fs::read(src.join("b")).expect("b"), b, "the source is untouched");
    assert_eq!(fs::metadata(src.join("b")).expect("stat").mode() & 0o7777, 0o600, "and keeps its mode");
}

#[test]
fn without_reflinks_or_hard_links_files_are_written() {
    let Some(fs_) = LoopFs::new("ext4", 64) else { return };
    let (src, dest) = (fs_.path().join("src"), fs_.path().join("dest"));
    fs::create_dir_all(&src).expect("src");
    fs::create_dir_all(&dest).expect("dest");
    let a = content(200_000, 4);
    source(&src, "a", &a, 0o644);
    let known = KnownContent::new(false);
    announce(&known, &src, &[("usr/a", "a", a.len())]);
    extract(&tar_of(&[("usr/a", &a, 0o644)]), &dest, known.clone());
    assert_ne!(fs::metadata(dest.join("usr/a")).expect("a").ino(), fs::metadata(src.join("a")).expect("a").ino());
    assert_eq!(fs::read(dest.join("usr/a")).expect("a"), a);
    assert!(!known.wanted(), "ext4 cannot clone: announcing stops");
}

#[test]
fn on_xfs_files_are_cloned_not_copied() {
    let Some(fs_) = LoopFs::new("xfs", 512) else { return };
    let (src, dest) = (fs_.path().join("src"), fs_.path().join("dest"));
    fs::create_dir_all(&src).expect("src");
    fs::create_dir_all(&dest).expect("dest");
    let big = content(32 << 20, 5);
    source(&src, "big", &big, 0o755);
    rustix::fs::sync();
    let before = fs_.free_bytes();
    let known = KnownContent::new(false);
    announce(&known, &src, &[("usr/big", "big", big.len())]);
    extract(&tar_of(&[("usr/big", &big, 0o644)]), &dest, known.clone());
    rustix::fs::sync();
    let used = before.saturating_sub(fs_.free_bytes());
    assert!(used < 4 << 20, "a 32 MiB clone took {used} bytes of space");
    assert!(known.wanted(), "xfs clones");
    assert_eq!(fs::read(dest.join("usr/big")).expect("big"), big);
    assert_eq!(fs::metadata(dest.join("usr/big")).expect("stat").mode() & 0o7777, 0o644, "its own mode");
    assert_eq!(fs::metadata(src.join("big")).expect("stat").mode() & 0o7777, 0o755, "the source keeps its own");
}
