//! Interoperability with the Go `tar-split` tool (Debian package
//! `tar-split`), in both directions: on real root-filesystem tars of more
//! than 100 MB, and on generated archives with every odd entry kind.

mod common;

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;
use std::process::Command;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use common::{gunzip, have_tool, run, scratch};
use strata_tarsplit::sample::{RawTar, pattern};
use strata_tarsplit::{
    DirGetter, DiscardPutter, MemoryFiles, assemble, disassemble, gzip_metadata, open_metadata,
};

fn tools() -> bool {
    have_tool("tar-split", "tar-split") && have_tool("tar", "tar")
}

fn strata_disasm(tar: &Path, meta: &Path) {
    let mut metadata = gzip_metadata(File::create(meta).expect("create"));
    disassemble(
        File::open(tar).expect("open tar"),
        io::sink(),
        &mut metadata,
        &mut DiscardPutter,
    )
    .expect("disassemble");
    metadata.finish().expect("finish").finish().expect("gzip");
}

fn strata_asm(meta: &Path, root: &Path, out: &Path) {
    let dir = Dir::open_ambient_dir(root, ambient_authority()).expect("root");
    let entries = open_metadata(File::open(meta).expect("open meta")).expect("metadata");
    let out = BufWriter::new(File::create(out).expect("create"));
    assemble(entries, &mut DirGetter::new(dir), out).expect("assemble");
}

fn go_disasm(tar: &Path, meta: &Path) {
    run(Command::new("tar-split")
        .arg("disasm")
        .arg("--no-stdout")
        .arg("--output")
        .arg(meta)
        .arg(tar));
}

fn go_asm(meta: &Path, root: &Path, out: &Path) {
    run(Command::new("tar-split")
        .arg("asm")
        .arg("--input")
        .arg(meta)
        .arg("--path")
        .arg(root)
        .arg("--output")
        .arg(out));
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    // Large files: compare in chunks without holding both in memory.
    use std::io::Read;
    let (mut fa, mut fb) = (File::open(a).expect("open"), File::open(b).expect("open"));
    if fa.metadata().expect("meta").len() != fb.metadata().expect("meta").len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).expect("read");
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).expect("read");
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

/// Both directions on one tar whose files are extracted under `root`.
fn both_directions(dir: &Path, tar: &Path, root: &Path) {
    let (go_meta, our_meta) = (dir.join("go.json.gz"), dir.join("strata.json.gz"));
    go_disasm(tar, &go_meta);
    strata_disasm(tar, &our_meta);
    assert!(
        gunzip(&go_meta) == gunzip(&our_meta),
        "metadata differs from tar-split's for {}",
        tar.display()
    );

    let ours_from_go = dir.join("strata-asm-of-go-disasm.tar");
    strata_asm(&go_meta, root, &ours_from_go);
    assert!(
        same_bytes(&ours_from_go, tar),
        "strata asm of tar-split's metadata differs"
    );

    let go_from_ours = dir.join("go-asm-of-strata-disasm.tar");
    go_asm(&our_meta, root, &go_from_ours);
    assert!(
        same_bytes(&go_from_ours, tar),
        "tar-split asm of strata's metadata differs"
    );
}

fn rootfs_tar(format: &str, dirs: &[&str], min_size: u64) {
    if !tools() {
        return;
    }
    let dir = scratch(&format!("rootfs-{format}"));
    let tar = dir.join("rootfs.tar");
    let mut cmd = Command::new("tar");
    cmd.arg(format!("--format={format}"))
        .arg("-cf")
        .arg(&tar)
        .args(["-C", "/"])
        .args(dirs);
    if format == "pax" {
        cmd.arg("--xattrs");
    }
    run(&mut cmd);
    let size = std::fs::metadata(&tar).expect("tar").len();
    assert!(size >= min_size, "{} is only {size} bytes", tar.display());
    let root = dir.join("root");
    std::fs::create_dir(&root).expect("root dir");
    run(Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&root));
    both_directions(&dir, &tar, &root);
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn gnu_rootfs_tar_over_100mb_both_directions() {
    rootfs_tar("gnu", &["usr/bin", "usr/share/doc"], 100 << 20);
}

#[test]
fn pax_rootfs_tar_over_100mb_both_directions() {
    rootfs_tar(
        "pax",
        &[
            "usr/share/doc",
            "usr/sbin",
            "usr/lib/x86_64-linux-gnu/perl-base",
        ],
        100 << 20,
    );
}

/// Generated archives: GNU long names and links, PAX paths, globals,
/// non-UTF-8 and JSON-escaped names, header-only entries with a size, no
/// end marker, trailing garbage, old-GNU and PAX 0.1 sparse files.
fn generated_archives() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let long = format!("dir/{}/name", "x".repeat(150));
    let mut t = RawTar::new();
    t.gnu_long_name(long.as_bytes())
        .file(&long.as_bytes()[..100], b"long");
    t.gnu_long(b'K', long.as_bytes())
        .header(&strata_tarsplit::sample::Fields {
            linkname: b"short",
            ..strata_tarsplit::sample::Fields::new(b"link", b'2', 0)
        });
    t.pax(
        b'x',
        &[("path", "pax/ünïcödé/\u{2028}<&>\"\\\t\u{1}".as_bytes())],
    )
    .file(b"placeholder", b"pax");
    t.pax(b'g', &[("comment", b"global")]);
    t.file(b"latin1-\xe9", b"raw name");
    t.header(&strata_tarsplit::sample::Fields::new(
        b"hardlink-with-size",
        b'1',
        7,
    ));
    t.old_gnu_sparse(
        b"sparse-old",
        100_000,
        &[(10, b"abc"), (50_000, &pattern(3000, 1))],
    );
    out.push(("odd entries", t.finish(10240)));

    let mut t = RawTar::new();
    t.file(b"a", &pattern(1000, 2));
    let mut no_marker = t.finish(0);
    no_marker.truncate(512 + 1024);
    out.push(("no end-of-archive marker", no_marker));

    let mut t = RawTar::new();
    t.file(b"a", b"abc");
    let mut trailing = t.finish(0);
    trailing.extend_from_slice(&pattern(5000, 3));
    out.push(("trailing garbage", trailing));

    let mut t = RawTar::new();
    let (map, real) = ("2,1000,5000,3".to_string(), "9000".to_string());
    t.pax(
        b'x',
        &[
            ("GNU.sparse.numblocks", b"2"),
            ("GNU.sparse.map", map.as_bytes()),
            ("GNU.sparse.name", b"sparse-01"),
            ("GNU.sparse.realsize", real.as_bytes()),
        ],
    );
    t.file(b"GNUSparseFile.0/sparse-01", &pattern(1003, 4));
    out.push(("PAX 0.1 sparse", t.finish(0)));

    out.push(("strata sample without 1.0 sparse", {
        let mut t = RawTar::new();
        t.file(b"usr/hello.txt", b"hello\n")
            .file(b"usr/a&b<c>", b"x");
        t.finish(10240)
    }));
    out
}

#[test]
fn generated_archives_give_the_same_metadata_as_tar_split() {
    if !tools() {
        return;
    }
    let dir = scratch("generated");
    for (what, tar) in generated_archives() {
        let path = dir.join("in.tar");
        std::fs::write(&path, &tar).expect("write");
        let (go_meta, our_meta) = (dir.join("go.json.gz"), dir.join("strata.json.gz"));
        go_disasm(&path, &go_meta);
        strata_disasm(&path, &our_meta);
        assert!(
            gunzip(&go_meta) == gunzip(&our_meta),
            "{what}: metadata differs\n go: {}\n us: {}",
            String::from_utf8_lossy(&gunzip(&go_meta)),
            String::from_utf8_lossy(&gunzip(&our_meta))
        );
        // And strata reassembles tar-split's metadata exactly, sparse included.
        let mut files = MemoryFiles::default();
        let mut m = strata_tarsplit::MetadataWriter::new(io::sink());
        disassemble(&tar[..], io::sink(), &mut m, &mut files).expect("disassemble");
        let mut out = Vec::new();
        assemble(
            open_metadata(File::open(&go_meta).expect("open")).expect("meta"),
            &mut files,
            &mut out,
        )
        .expect("assemble");
        assert!(
            out == tar,
            "{what}: strata asm of tar-split metadata differs"
        );
    }
}
