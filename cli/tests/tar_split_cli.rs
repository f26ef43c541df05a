//! `strata tar-split` from the outside: round trips, and bad input that
//! must fail with one clear line and touch nothing outside the target.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use strata_tarsplit::sample::{self, RawTar};

fn strata() -> Command {
    Command::new(env!("CARGO_BIN_EXE_strata"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("cli")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    dir
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("run strata")
}

/// The command failed with exactly one line on stderr containing `needle`.
fn assert_fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line, got: {stderr}"
    );
    assert!(stderr.starts_with("strata: error: "), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

fn disasm(dir: &Path, tar: &[u8]) -> (Output, PathBuf) {
    let tar_path = dir.join("in.tar");
    std::fs::write(&tar_path, tar).expect("write tar");
    let meta = dir.join("meta.json.gz");
    let out = output(
        strata()
            .args(["tar-split", "disasm", "--output"])
            .arg(&meta)
            .arg(&tar_path),
    );
    (out, meta)
}

fn asm(meta: &Path, root: &Path, out_path: &Path) -> Output {
    output(
        strata()
            .args(["tar-split", "asm", "--input"])
            .arg(meta)
            .arg("--path")
            .arg(root)
            .arg("--output")
            .arg(out_path),
    )
}

/// Writes plain metadata lines (as the JSON tar-split uses).
fn write_metadata(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("metadata");
}

#[test]
fn round_trip_through_stdout_and_files() {
    let dir = scratch("round-trip");
    let tar = sample::every_entry_kind();
    let (out, meta) = disasm(&dir, &tar);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, tar, "disasm copies the tar to stdout");

    // Extract payloads the way a layer store would have them on disk.
    let root = dir.join("root");
    let mut files = strata_tarsplit::MemoryFiles::default();
    let mut m = strata_tarsplit::MetadataWriter::new(std::io::sink());
    strata_tarsplit::disassemble(&tar[..], std::io::sink(), &mut m, &mut files).expect("split");
    for (name, content) in &files.files {
        let path = root.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, content).expect("write");
    }
    let rebuilt = dir.join("out.tar");
    let out = asm(&meta, &root, &rebuilt);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&rebuilt).expect("read"), tar);

    let out = output(
        strata()
            .args(["tar-split", "asm", "--input"])
            .arg(&meta)
            .arg("--path")
            .arg(&root),
    );
    assert!(out.status.success());
    assert_eq!(out.stdout, tar, "asm writes to stdout by default");
}

#[test]
fn truncated_tar_is_refused_and_leaves_no_metadata() {
    let dir = scratch("truncated");
    let mut t = RawTar::new();
    t.file(b"a", &sample::pattern(5000, 1));
    let tar = t.finish(0);
    for cut in [300, 512 + 2000] {
        let (out, meta) = disasm(&dir, &tar[..cut]);
        assert_fails_with(&out, "ends early");
        assert!(!meta.exists(), "no metadata file after a failure");
    }
}

#[test]
fn corrupt_header_checksum_is_refused() {
    let dir = scratch("checksum");
    let mut t = RawTar::new();
    t.file(b"a", b"abc").file(b"b", b"def");
    let mut tar = t.finish(0);
    tar[1024 + 10] ^= 0x40; // inside the second header
    let (out, _) = disasm(&dir, &tar);
    assert_fails_with(
        &out,
        "invalid tar header at byte 1024: header checksum mismatch",
    );
}

#[test]
fn missing_file_is_named() {
    let dir = scratch("missing");
    let (out, meta) = disasm(&dir, &{
        let mut t = RawTar::new();
        t.file(b"etc/present", b"here").file(b"etc/absent", b"gone");
        t.finish(0)
    });
    assert!(out.status.success());
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    std::fs::write(root.join("etc/present"), b"here").expect("write");
    let dest = dir.join("out.tar");
    let out = asm(&meta, &root, &dest);
    assert_fails_with(&out, "cannot get file \"etc/absent\"");
    assert!(!dest.exists(), "no partial output after a failure");
}

#[test]
fn changed_payload_fails_its_checksum() {
    let dir = scratch("crc");
    let (_, meta) = disasm(&dir, &{
        let mut t = RawTar::new();
        t.file(b"f", b"original");
        t.finish(0)
    });
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::write(root.join("f"), b"tampered").expect("write");
    let out = asm(&meta, &root, &dir.join("out.tar"));
    assert_fails_with(&out, "checksum mismatch for \"f\"");
    std::fs::write(root.join("f"), b"short").expect("write");
    let out = asm(&meta, &root, &dir.join("out.tar"));
    assert_fails_with(&out, "size mismatch for \"f\"");
}

/// Metadata whose names lead out of the root: `..`, an absolute path, or a
/// symlink inside the root that points out. A file with the right content
/// waits outside, so reading it would make assembly succeed: it must fail.
#[test]
fn names_that_escape_the_root_are_refused() {
    let dir = scratch("escape");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let secret = dir.join("secret");
    std::fs::write(&secret, b"hello\n").expect("secret");
    std::os::unix::fs::symlink(&dir, root.join("link-out")).expect("symlink");
    std::os::unix::fs::symlink("../secret", root.join("relative-out")).expect("symlink");
    // CRC-64/GO-ISO of "hello\n", as tar-split stores it.
    let crc = "YUw+7uLYEAA=";
    let secret_abs = secret.display().to_string();
    for (name, reason) in [
        ("../secret", "climbs out of the root"),
        (secret_abs.as_str(), "absolute path"),
        ("link-out/secret", "cannot get file"),
        ("relative-out", "cannot get file"),
    ] {
        let meta = dir.join("meta.json");
        write_metadata(
            &meta,
            &[format!(
                r#"{{"type":1,"name":{},"size":6,"payload":"{crc}","position":0}}"#,
                serde_json_string(name)
            )],
        );
        let dest = dir.join("out.tar");
        let out = asm(&meta, &root, &dest);
        assert_fails_with(&out, reason);
        assert!(!dest.exists(), "{name}: no output after a failure");
    }
    assert_eq!(std::fs::read(&secret).expect("secret"), b"hello\n");
}

fn serde_json_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[test]
fn unreadable_metadata_is_named() {
    let dir = scratch("bad-metadata");
    let root = dir.join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let meta = dir.join("meta.json");
    write_metadata(
        &meta,
        &[
            r#"{"type":2,"payload":"AAAA","position":0}"#.into(),
            r#"{"type":7}"#.into(),
        ],
    );
    assert_fails_with(
        &asm(&meta, &root, &dir.join("o.tar")),
        "invalid tar-split metadata at entry 1: unknown entry type 7",
    );
    write_metadata(&meta, &[r#"{"type":2,"payload":"AAA"#.into()]);
    assert_fails_with(
        &asm(&meta, &root, &dir.join("o.tar")),
        "invalid tar-split metadata at entry 0",
    );
}

#[test]
fn demo_runs() {
    let out = output(strata().args(["demo", "--tar-split"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("result    identical"));
}
