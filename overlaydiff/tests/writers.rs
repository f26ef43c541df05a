//! Files written by writer threads come out exactly as the extracting
//! thread writes them: contents, sizes, modes (set-ID bits included),
//! times, xattrs, hard links to files still being written, and a file the
//! layer replaces.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use cap_std::fs::Dir;
use strata_overlaydiff::{Extractor, Whiteouts};
use strata_tarsplit::{MetadataWriter, split};

fn layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8], mode: u32, mtime: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(mtime);
        b.append_data(&mut h, name, data).expect("append");
    };
    for i in 0..300u32 {
        let len = (i as usize * 7919) % 20_000;
        let data: Vec<u8> = (0..len).map(|j| (j as u32 ^ i) as u8).collect();
        let mode = [0o644, 0o600, 0o755, 0o4755, 0o2711][i as usize % 5];
        add(&format!("d{}/f{i}", i % 7), &data, mode, 1_600_000_000 + u64::from(i));
    }
    // Larger than a handed-over piece, with a hole in the middle.
    let mut big = vec![9u8; 3 << 20];
    big[1 << 20..2 << 20].fill(0);
    add("big", &big, 0o640, 1_700_000_000);
    add("again", b"second, longer", 0o600, 2);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "link-to-big", "big").expect("link");
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    h.set_mtime(5);
    b.append_pax_extensions([("SCHILY.xattr.user.note", &b"kept"[..])]).expect("pax");
    b.append_data(&mut h, "with-xattr", &b"abc"[..]).expect("append");
    b.into_inner().expect("tar")
}

fn extract(tar: &[u8], dir: &Path, writers: usize) {
    // A file the layer replaces.
    std::fs::write(dir.join("again"), "first").expect("write");
    let root = Dir::open_ambient_dir(dir, cap_std::ambient_authority()).expect("open");
    let mut extractor = Extractor::new(root, Whiteouts::Remove).file_writers(writers);
    let mut metadata = MetadataWriter::new(std::io::sink());
    split(tar, std::io::sink(), &mut metadata, &mut extractor).expect("extract");
    extractor.finish().expect("finish");
}

/// Every entry below `dir`: path, mode, size, mtime, link count, content
/// digest, xattrs.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let rel = path.strip_prefix(dir).expect("under").display().to_string();
            if meta.is_dir() {
                stack.push(path.clone());
                // No time: the tar implies these directories, so they get
                // the time they were made, which two extractions need not
                // share to the second.
                out.push(format!("{rel} dir {:o}", meta.mode()));
                continue;
            }
            let content = std::fs::read(&path).expect("read");
            let sum: u64 = content.iter().enumerate().map(|(i, &b)| (i as u64 + 1) * u64::from(b)).sum();
            let xattr = rustix::fs::getxattr(&path, "user.note", &mut [0u8; 16]).ok();
            out.push(format!(
                "{rel} {:o} {} {}.{} links={} sum={sum} xattr={xattr:?}",
                meta.mode(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec(),
                meta.nlink()
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn writer_threads_write_what_the_extracting_thread_writes() {
    let tar = layer();
    let base = tempfile::tempdir().expect("tempdir");
    let (one, many) = (base.path().join("one"), base.path().join("many"));
    std::fs::create_dir(&one).expect("mkdir");
    std::fs::create_dir(&many).expect("mkdir");
    extract(&tar, &one, 0);
    extract(&tar, &many, 3);
    let expected = listing(&one);
    assert_eq!(listing(&many), expected);
    assert!(expected.iter().any(|l| l.starts_with("d0/f0 ")), "{expected:?}");
    assert!(expected.iter().any(|l| l.starts_with("big 100640 3145728 ") && l.contains("links=2")), "{expected:?}");
    assert!(expected.iter().any(|l| l.starts_with("again 100600 14 2.0")), "{expected:?}");
    assert!(expected.iter().any(|l| l.starts_with("with-xattr") && l.contains("Some(4)")), "{expected:?}");
    if rustix::process::geteuid().is_root() {
        assert!(expected.iter().any(|l| l.contains(" 104755 ")), "set-user-ID kept: {expected:?}");
    }
}

/// Entries that replace, link to or remove a file a writer
/// may not have created yet, in a directory the layer makes (where writers
/// create the files themselves), behind enough files to keep them busy.
fn tricky_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let file = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, name, data).expect("append");
    };
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    h.set_mtime(7);
    b.append_data(&mut h, "m/", &[][..]).expect("dir");
    for i in 0..200u32 {
        file(&mut b, &format!("m/fill{i}"), &vec![i as u8 | 1; 20_000]);
    }
    file(&mut b, "m/a", b"linked to");
    file(&mut b, "m/c", &vec![3u8; 3 << 20]);
    file(&mut b, "m/d", b"removed by a whiteout");
    file(&mut b, "m/.wh.d", b"");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "m/c-link", "m/c").expect("link");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "m/a-link", "m/a").expect("link");
    b.into_inner().expect("tar")
}

#[test]
fn entries_touching_files_being_written_see_them_written() {
    let tar = tricky_layer();
    let base = tempfile::tempdir().expect("tempdir");
    let mut listings = Vec::new();
    for writers in [0, 1, 3] {
        let dir = base.path().join(writers.to_string());
        std::fs::create_dir(&dir).expect("mkdir");
        let root = Dir::open_ambient_dir(&dir, cap_std::ambient_authority()).expect("open");
        let mut extractor = Extractor::new(root, Whiteouts::Remove).file_writers(writers);
        let mut metadata = MetadataWriter::new(std::io::sink());
        split(&tar[..], std::io::sink(), &mut metadata, &mut extractor).expect("extract");
        extractor.finish().expect("finish");
        assert_eq!(std::fs::read(dir.join("m/a-link")).expect("a"), b"linked to", "{writers} writers");
        assert_eq!(std::fs::metadata(dir.join("m/c-link")).expect("link").nlink(), 2, "{writers} writers");
        assert!(!dir.join("m/d").exists(), "{writers} writers: whiteout applied");
        listings.push(listing(&dir));
    }
    assert_eq!(listings[0], listings[1]);
    assert_eq!(listings[0], listings[2]);
}

#[test]
fn a_file_being_written_is_no_parent() {
    let mut b = tar::Builder::new(Vec::new());
    for name in ["m/p", "m/p/x"] {
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &b"x"[..]).expect("append");
    }
    let tar = b.into_inner().expect("tar");
    for writers in [0, 1] {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Dir::open_ambient_dir(dir.path(), cap_std::ambient_authority()).expect("open");
        let mut extractor = Extractor::new(root, Whiteouts::Remove).file_writers(writers);
        let mut metadata = MetadataWriter::new(std::io::sink());
        let err = split(&tar[..], std::io::sink(), &mut metadata, &mut extractor)
            .err()
            .map(|e| e.to_string())
            .expect("a file as a parent fails");
        assert!(err.contains("m/p/x") && err.contains("a parent is not a directory"), "{writers} writers: {err}");
    }
}
