//! The directory putter and getter stay inside their root.

mod common;

use std::io;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use common::scratch;
use strata_tarsplit::sample::RawTar;
use strata_tarsplit::{DirGetter, DirPutter, Error, FileGetter, MetadataWriter, disassemble};

fn put_all(root: &std::path::Path, tar: &[u8]) -> Result<(), Error> {
    let dir = Dir::open_ambient_dir(root, ambient_authority()).expect("root");
    let mut metadata = MetadataWriter::new(io::sink());
    disassemble(tar, io::sink(), &mut metadata, &mut DirPutter::new(dir)).map(|_| ())
}

#[test]
fn putter_refuses_names_outside_the_root() {
    let base = scratch("putter-escape");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("root");
    std::os::unix::fs::symlink(&base, root.join("link")).expect("symlink");
    let outside = base.join("escaped");
    for name in [&b"../escaped"[..], b"a/../../escaped", b"link/escaped"] {
        let mut t = RawTar::new();
        t.file(name, b"payload");
        let err = put_all(&root, &t.finish(0)).expect_err("must refuse");
        assert!(matches!(err, Error::Put { .. }), "{err}");
        assert!(
            !outside.exists(),
            "{}: wrote outside the root",
            String::from_utf8_lossy(name)
        );
    }
    let abs = format!("{}", outside.display());
    let mut t = RawTar::new();
    t.file(abs.as_bytes(), b"payload");
    let err = put_all(&root, &t.finish(0)).expect_err("must refuse");
    assert!(err.to_string().contains("absolute path"), "{err}");
    assert!(!outside.exists());
}

#[test]
fn putter_writes_below_the_root_and_not_through_symlinks() {
    let base = scratch("putter-ok");
    let root = base.join("root");
    std::fs::create_dir_all(&root).expect("root");
    let mut t = RawTar::new();
    t.file(b"./usr/bin/tool", b"binary")
        .file(b"etc/a/../b", b"cleaned");
    put_all(&root, &t.finish(0)).expect("put");
    assert_eq!(
        std::fs::read(root.join("usr/bin/tool")).expect("read"),
        b"binary"
    );
    assert_eq!(std::fs::read(root.join("etc/b")).expect("read"), b"cleaned");

    // A symlink planted at a file's name is not written through.
    std::fs::write(base.join("victim"), b"untouched").expect("victim");
    std::os::unix::fs::symlink(base.join("victim"), root.join("planted")).expect("symlink");
    let mut t = RawTar::new();
    t.file(b"planted", b"overwrite");
    assert!(put_all(&root, &t.finish(0)).is_err());
    assert_eq!(
        std::fs::read(base.join("victim")).expect("read"),
        b"untouched"
    );
}

#[test]
fn getter_refuses_fifos_without_blocking() {
    let base = scratch("getter-fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(base.join("pipe"))
        .status()
        .expect("mkfifo");
    assert!(status.success());
    let mut getter =
        DirGetter::new(Dir::open_ambient_dir(&base, ambient_authority()).expect("dir"));
    let err = getter.get(b"pipe").err().expect("a FIFO is not a payload");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}
